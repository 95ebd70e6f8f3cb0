"""The registry under concurrency and crashes, with real processes.

* Several processes register and promote at the same moments, round after round: no two
  versions share a number, none is lost, every compare-and-set winner is in the history in
  order, and every unchecked promotion is recorded.
* A register SIGKILLed in the middle of copying a large checkpoint leaves no visible
  version; the next register succeeds; ``collect_garbage`` removes the partial copy.

Both on a local folder and on S3 (moto over HTTP). ``-m stress`` runs many more rounds.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pyarrow.fs as pafs
import pytest
import registry_workers

from trainresults_dagster import storage

HERE = os.path.dirname(os.path.abspath(__file__))


def _spec(kind: str, tmp_path, request) -> dict[str, Any]:
    if kind == "local":
        return {"base": str(tmp_path / "registry"), "model": "racer"}
    moto = request.getfixturevalue("moto")
    bucket = moto.new_bucket("race")
    return {
        "base": f"s3://{bucket}/reg",
        "model": "racer",
        "s3": {"endpoint_url": moto.endpoint_url, "access_key": moto.access_key,
               "secret_key": moto.secret_key, "region": moto.region},
    }


def _sources(tmp_path, workers: int, rounds: int) -> list[list[str]]:
    out = []
    for w in range(workers):
        row = []
        for r in range(rounds):
            d = tmp_path / f"src-w{w}-r{r}"
            d.mkdir()
            (d / "weights.bin").write_bytes(f"worker {w} round {r}".encode() * 64)
            row.append(str(d))
        out.append(row)
    return out


def _race(spec: dict[str, Any], workers: int, rounds: int, tmp_path) -> list[dict[str, Any]]:
    spec = {**spec, "sources": _sources(tmp_path, workers, rounds)}
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers, timeout=120)
    results = ctx.Queue()
    procs = [ctx.Process(target=registry_workers.race_worker, args=(spec, w, barrier, results))
             for w in range(workers)]
    for p in procs:
        p.start()
    outs = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
    errors = [e for o in outs for e in o["errors"]]
    assert not errors, errors
    return outs


def _check_race(spec: dict[str, Any], outs: list[dict[str, Any]], workers: int, rounds: int):
    reg = registry_workers.open_registry(spec)
    model = spec["model"]

    # Versions: exactly 1..N, one per register call, none shared, none lost.
    versions = reg.versions(model)
    assert [v.version for v in versions] == list(range(1, workers * rounds + 1))
    assert sorted(v for o in outs for v in o["registered"]) == [v.version for v in versions]
    owners = {(v.lineage["worker"], v.lineage["round"]) for v in versions}
    assert owners == {(w, r) for w in range(workers) for r in range(rounds)}
    for v in versions:
        assert v.metrics == {"worker": v.lineage["worker"], "round": v.lineage["round"]}

    # Compare-and-set: every winner recorded once, in a consistent chain; losers changed nothing.
    won = [w for o in outs for w in o["won"]]
    lost = sum(o["lost"] for o in outs)
    assert len(won) + lost == workers * rounds
    assert len(won) >= rounds  # at least one winner per round
    history = reg.history(model)
    assert [e.seq for e in history] == list(range(1, len(won) + 1))
    assert sorted(e.reason for e in history) == sorted(w["reason"] for w in won)
    by_reason = {w["reason"]: w for w in won}
    previous = None
    for event in history:
        assert event.previous_version == previous  # nobody overwrote a move unseen
        assert by_reason[event.reason]["expected"] == previous
        assert event.version == by_reason[event.reason]["version"]
        previous = event.version
    assert reg.get(model).version == history[-1].version

    # Unchecked promotions: none lost (a lost race is retried on the new state).
    unchecked = reg.history(model, "unchecked")
    assert len(unchecked) == workers * rounds
    assert sorted(e.reason for e in unchecked) == sorted(r for o in outs for r in o["unchecked"])
    assert [e.previous_version for e in unchecked[1:]] == [e.version for e in unchecked[:-1]]


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_processes_racing_to_register_and_promote(kind, tmp_path, request):
    spec = _spec(kind, tmp_path, request)
    workers, rounds = 4, 4
    outs = _race(spec, workers, rounds, tmp_path)
    _check_race({**spec}, outs, workers, rounds)


@pytest.mark.stress
@pytest.mark.parametrize("kind", ["local", "s3"])
def test_processes_racing_stress(kind, tmp_path, request):
    spec = _spec(kind, tmp_path, request)
    workers, rounds = 8, 40
    outs = _race(spec, workers, rounds, tmp_path)
    _check_race(spec, outs, workers, rounds)


# --------------------------------------------------------------------------------------
# SIGKILL mid-copy
# --------------------------------------------------------------------------------------


def _big_checkpoint(path, files: int, file_size: int) -> None:
    os.makedirs(path)
    block = os.urandom(1 << 20)
    for i in range(files):
        with open(os.path.join(path, f"shard-{i:03d}.bin"), "wb") as fh:
            for _ in range(file_size // len(block)):
                fh.write(block)
            fh.write(block[: file_size % len(block)])


def _data_files(fs: pafs.FileSystem, data_root: str) -> list[pafs.FileInfo]:
    return [i for i in storage.list_dir(fs, data_root, recursive=True)
            if i.type == pafs.FileType.File]


def _kill_mid_copy(spec, model, source, fs, data_root, expected_files) -> bool:
    """Start a register in a subprocess and SIGKILL it once its copy has begun. True if the
    kill landed mid-copy (some but not all files copied)."""
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "registry_workers.py"), json.dumps(spec), model,
         source],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if _data_files(fs, data_root):
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    copied = len(_data_files(fs, data_root))
    return proc.returncode == -signal.SIGKILL and 0 < copied < expected_files


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_sigkill_mid_copy_leaves_no_visible_version(kind, tmp_path, request):
    spec = _spec(kind, tmp_path, request)
    reg = registry_workers.open_registry(spec)
    model = "big"
    source = str(tmp_path / "big-checkpoint")
    if kind == "local":
        files, size = 48, 8 << 20  # 384 MiB: a copy takes long enough to be interrupted
        _big_checkpoint(source, files, size)
    else:
        files, size = 160, 64 << 10  # many objects: one CopyObject each on the server
        _big_checkpoint(source, files, size)
        moto = request.getfixturevalue("moto")
        bucket = spec["base"][5:].split("/", 1)[0]
        moto.upload_dir(source, bucket, "src/big")
        source = f"{bucket}/src/big"
        spec = {**spec, "source_on_s3": True}
    data_root = f"{reg.base}/{model}/data"

    interrupted = any(
        _kill_mid_copy(spec, model, source, reg.filesystem, data_root, files) for _ in range(3)
    )
    assert interrupted, "could not SIGKILL the register mid-copy in 3 attempts"
    partial = _data_files(reg.filesystem, data_root)
    assert partial  # the half-written copy is there ...
    assert reg.versions(model) == []  # ... but no version is visible
    with pytest.raises(LookupError):
        reg.get_version(model, 1)

    if kind == "s3":
        from trainresults_dagster.runs.checkpoint import Checkpoint

        done = reg.register(model, Checkpoint(source, reg.filesystem), metrics={"loss": 0.1})
    else:
        done = reg.register(model, source, metrics={"loss": 0.1})
    assert done.version == 1 and done.num_files == files and done.size_bytes == files * size
    removed = reg.collect_garbage(model, older_than_seconds=0)
    assert removed and all(done.uri != r for r in removed)
    left = _data_files(reg.filesystem, data_root)
    manifests = [i.path for i in left if i.path.endswith(".files.json")]
    assert manifests == [done.checkpoint.path + ".files.json"]  # the orphan had none yet
    remaining = {i.path.rsplit("/", 1)[0] for i in left if i.path not in manifests}
    assert remaining == {done.checkpoint.path}
    assert len(_data_files(reg.filesystem, done.checkpoint.path)) == files
