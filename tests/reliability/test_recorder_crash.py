"""RunRecorder writes survive SIGKILL at random points: afterwards the record reads back as
a consistent state (every report up to some point), never a torn file; a new recorder
continues the same record."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

import trainresults_dagster as trd
from trainresults_dagster import storage
from trainresults_dagster.runs.record import read_record

WRITER = r"""
import sys, types
from ray.train import RunConfig, FailureConfig
from trainresults_dagster.ray import RunRecorder

storage_path, name = sys.argv[1], sys.argv[2]
ctx = types.SimpleNamespace(run_id="crash-test", run_config=RunConfig(
    name=name, storage_path=storage_path, failure_config=FailureConfig(max_failures=10**9)))
rec = RunRecorder()
print("ready", flush=True)
i = 0
while True:
    rec.after_report(ctx, [{"step": i, "loss": 1.0 / (i + 1), "pad": "x" * 2000}], None)
    if i % 7 == 3:
        rec.after_exception(ctx, {0: RuntimeError(f"transient {i}")})
    i += 1
"""


def _kill_and_check(tmp_path, seed: int) -> int:
    rng = random.Random(seed)
    name = f"run{seed}"
    env = dict(os.environ, RAY_TRAIN_V2_ENABLED="1")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), name],
                            stdout=subprocess.PIPE, env=env)
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(rng.uniform(0.05, 0.6))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    fs, run = storage.resolve(tmp_path / name)
    record = read_record(fs, run)
    if record is None:  # killed before the first write completed: nothing half-written
        return 0
    steps = [r["metrics"]["step"] for r in record.reports]
    assert steps == list(range(len(steps)))  # a prefix of what was written, no gaps
    assert all(not f.terminal for f in record.failures)
    return len(steps)


@pytest.mark.parametrize("seed", range(2))
def test_recorder_survives_sigkill(tmp_path, seed):
    first = _kill_and_check(tmp_path, seed)
    (tmp_path / f"run{seed}").mkdir(exist_ok=True)
    # The next recorder on the same run name continues the record, and readers still work.
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), f"run{seed}"],
                            stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = trd.TrainResult.from_path(tmp_path / f"run{seed}")
    indices = [h["report_index"] for h in result.history]
    assert indices == list(range(len(indices))) and len(indices) >= first
    steps = result.metrics_dataframe["step"].tolist()
    assert steps[:first] == list(range(first))  # the first writer's reports are kept


@pytest.mark.stress
@pytest.mark.parametrize("seed", range(100, 160))
def test_recorder_survives_sigkill_many_seeds(tmp_path, seed):
    _kill_and_check(tmp_path, seed)
