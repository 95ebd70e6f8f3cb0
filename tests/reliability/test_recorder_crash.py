"""RunRecorder survives SIGKILL at random points, within its stated durability bound.

A child process drives the recorder's real hooks (with Ray's real state and error objects)
as a controller would, and acknowledges on stdout each hook that returned. After the kill:

* the record reads back as a prefix of what was reported (no gap, no torn line kept);
* at most ``flush_every_reports - 1`` acknowledged reports are missing (the README's
  bound for ``kill -9`` of the controller);
* every acknowledged failure is there, as not terminal (Ray retried it);
* a second recorder on the same run name continues the record, and readers still work.
"""

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

EVERY = 10

WRITER = r"""
import sys, types
from ray.train import RunConfig, FailureConfig
from ray.train.v2._internal.execution.controller.state import RestartingState, RunningState
from ray.train.v2.api.exceptions import WorkerGroupError
from trainresults_dagster.ray import RunRecorder

storage_path, name, every = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = types.SimpleNamespace(run_id="crashtest", run_config=RunConfig(
    name=name, storage_path=storage_path, failure_config=FailureConfig(max_failures=10**9)))
rec = RunRecorder(flush_every_reports=every, flush_every_seconds=3600)
rec.after_controller_start(ctx)
out = sys.stdout
out.write("ready\n"); out.flush()
report = types.SimpleNamespace(checkpoint=None, metrics={})
i = 0
while True:
    rec.after_report(report, [{"step": i, "loss": 1.0 / (i + 1), "pad": "x" * 2000}])
    out.write(f"r{i}\n"); out.flush()
    if i % 7 == 3:
        error = WorkerGroupError("transient", {0: RuntimeError(f"transient {i}")})
        rec.after_controller_state_update(RunningState(), RestartingState(training_failed_error=error))
        out.write(f"f{i}\n"); out.flush()
    i += 1
"""


def _run_and_kill(storage_path: str, name: str, seconds: float) -> list[str]:
    env = dict(os.environ, RAY_TRAIN_V2_ENABLED="1")
    proc = subprocess.Popen([sys.executable, "-c", WRITER, storage_path, name, str(EVERY)],
                            stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(seconds)
    proc.send_signal(signal.SIGKILL)
    acks = proc.stdout.read().decode().split()
    proc.wait()
    return acks


def _kill_and_check(tmp_path, seed: int) -> int:
    rng = random.Random(seed)
    name = f"run{seed}"
    acks = _run_and_kill(str(tmp_path), name, rng.uniform(0.05, 0.6))
    reported = sum(a.startswith("r") for a in acks)
    failed = {int(a[1:]) for a in acks if a.startswith("f")}
    fs, run = storage.resolve(tmp_path / name)
    record = read_record(fs, run)
    assert record is not None  # the start line is written before the first report
    steps = [r["metrics"]["step"] for r in record.reports]
    assert steps == list(range(len(steps)))  # a prefix of what was reported, no gaps
    assert reported - (EVERY - 1) <= len(steps) <= reported + 1
    messages = [f.worker_failures.get(0, "") for f in record.failures]
    assert {i for i in failed} <= {int(m.rsplit(" ", 1)[-1]) for m in messages}
    assert all(not f.terminal for f in record.failures)
    assert record.status == "running" and record.torn_lines <= 1
    return len(steps)


@pytest.mark.parametrize("seed", range(2))
def test_recorder_survives_sigkill(tmp_path, seed):
    first = _kill_and_check(tmp_path, seed)
    # The next recorder on the same run name continues the record, and readers still work.
    _run_and_kill(str(tmp_path), f"run{seed}", 0.3)
    result = trd.TrainResult.from_path(tmp_path / f"run{seed}")
    assert result.record is not None and result.record.writers == 2
    indices = [h["report_index"] for h in result.history]
    assert indices == list(range(len(indices))) and len(indices) >= first
    steps = result.metrics_dataframe["step"].tolist()
    assert steps[:first] == list(range(first))  # the first writer's reports are kept
    assert steps[first:first + 1] in ([], [0])  # the second writer counts on after them


@pytest.mark.stress
@pytest.mark.parametrize("seed", range(100, 160))
def test_recorder_survives_sigkill_many_seeds(tmp_path, seed):
    _kill_and_check(tmp_path, seed)
