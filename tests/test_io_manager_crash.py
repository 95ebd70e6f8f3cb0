"""A ``kill -9`` during ``handle_output`` leaves the previous materialisation loadable.

The writer runs ``dagster.materialize`` in a subprocess and is killed with SIGKILL either at
an exact step of the write (the moment a file would be renamed into place: the manifest,
the pointer) or from outside while it copies checkpoints. Then the parent loads
the asset through the IO manager and must get the previous result, complete.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

import trainresults_dagster as trd
from trainresults_dagster.runs import store as result_store
from trainresults_dagster.runs.store import ResultStore
from trainresults_dagster.storage import resolve

WRITER = textwrap.dedent(
    """
    import os, signal, sys
    base, run, mode, kill_at = sys.argv[1:5]
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        # Fault injection: die the moment this file would become visible.
        if os.path.basename(dst) == kill_at:
            if "ray" in sys.modules:  # storing a result must not need ray: exit 3, not -9
                os._exit(3)
            os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace
    import dagster as dg
    import trainresults_dagster as trd

    @dg.asset(name="train")
    def train():
        return trd.TrainResult.from_path(run)

    dg.materialize([train], resources={
        "io_manager": trd.RayTrainResultIOManager(base_path=base, checkpoints=mode)})
    """
)


def start_writer(base: Path, run: str, mode: str, kill_at: str = "-") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(base), run, mode, kill_at],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )


def load(base: Path) -> trd.TrainResult:
    seen: dict[str, Any] = {}

    @dg.asset(name="train")
    def train() -> trd.TrainResult:
        raise AssertionError("not run: only loaded")

    @dg.asset
    def reader(train: trd.TrainResult) -> None:
        seen["result"] = train

    io = trd.RayTrainResultIOManager(base_path=str(base))
    assert dg.materialize([train, reader], resources={"io_manager": io},
                          selection=["reader"]).success
    return seen["result"]


def materialise_in_process(base: Path, run: str) -> None:
    @dg.asset(name="train")
    def train() -> trd.TrainResult:
        return trd.TrainResult.from_path(run)

    assert dg.materialize([train], resources={
        "io_manager": trd.RayTrainResultIOManager(base_path=str(base))}).success


def assert_complete(result: trd.TrainResult, run: str) -> None:
    expected = trd.TrainResult.from_path(run)
    assert result.uri == run and result.to_dict()["metrics"] == expected.to_dict()["metrics"]
    assert len(result.metrics_dataframe) == len(expected.metrics_dataframe)
    assert all(c.exists() for c in result.checkpoints)


# Killing before the pointer's rename covers every earlier step; killing at the manifest
# catches a pointer written too early.
@pytest.mark.parametrize("kill_at", ["manifest.json", "CURRENT.json"])
def test_kill_at_each_write_step(v2_runs, tmp_path, kill_at):
    base = tmp_path / "io"
    materialise_in_process(base, v2_runs["success"])
    before = load(base)

    proc = start_writer(base, v2_runs["custom_names"], "copy", kill_at)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]

    root = base / "train"
    store = ResultStore(*resolve(str(root)), filesystem_for=resolve)
    current = store.current_version()
    orphans = [p for p in root.iterdir() if p.name.startswith("v-") and p.name != current]
    assert len(orphans) == 1 and (orphans[0] / "checkpoints").is_dir()  # it did get going
    after = load(base)
    assert after.to_dict() == before.to_dict()
    assert_complete(after, v2_runs["success"])
    # The next materialisation works, and garbage collection later removes the orphan.
    materialise_in_process(base, v2_runs["nan_losses"])
    assert load(base).uri == v2_runs["nan_losses"]
    deleted = store.collect_garbage(keep={store.current_version()},
                                    now=time.time() + result_store.GC_MIN_AGE_SECONDS)
    assert orphans[0].name in deleted and not orphans[0].exists()


def test_kill_from_outside_while_copying(copy_run, v2_runs, tmp_path):
    base = tmp_path / "io"
    materialise_in_process(base, v2_runs["success"])
    big = copy_run("custom_names")
    for ckpt in trd.TrainResult.from_path(big).checkpoints:  # enough files to take a while
        for i in range(1500):
            Path(ckpt.path, f"shard-{i:05d}.bin").write_bytes(os.urandom(2048))
    root = base / "train"
    known = {p.name for p in root.iterdir()}

    proc = start_writer(base, big, "copy")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        fresh = [p for p in root.iterdir() if p.name not in known]
        if any((p / "checkpoints").exists() for p in fresh):
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]  # killed mid-write

    assert_complete(load(base), v2_runs["success"])
