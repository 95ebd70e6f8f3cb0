"""RunRecorder in real Ray Train V2 runs (the session's local Ray): attached through
``RunConfig(callbacks=...)`` (the ``v2_runs`` jobs) and through ``RAY_TRAIN_CALLBACKS``
alone (``retried_env_run``); retried failures recorded as retried, a terminal one as
terminal, and the final status as Ray's controller reached it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import trainresults_dagster as trd
from trainresults_dagster.runs.record import JOURNAL_DIR, RECORD_DIR


def test_env_var_alone_attaches_the_recorder_and_retries_are_not_terminal(retried_env_run):
    result = trd.TrainResult.from_path(retried_env_run)
    record = result.record
    assert record is not None and record.format == 2 and record.writers == 1
    assert result.status == "finished" and result.error is None
    # Attempt 1 died like a preempted worker (Ray's preemption budget, unlimited by default),
    # attempt 2 raised (max_failures=1 allows one): Ray retried both.
    assert [f.terminal for f in record.failures] == [False, False]
    assert [d["kind"] for d in record.failure_details] == ["preemption", "worker_group"]
    assert [d["decision"] for d in record.failure_details] == ["RETRY", "RETRY"]
    assert [d["state"] for d in record.failure_details] == ["RestartingState", "RestartingState"]
    assert [f.attempt for f in record.failures] == [1, 2]
    assert "WorkerHealthCheckFailedError: node preempted" in record.failures[0].worker_failures[0]
    assert "ValueError: transient failure on attempt 2" in record.failures[1].worker_failures[0]
    # The worker's own traceback, not only Ray's one-line summary.
    assert 'raise ValueError("transient failure on attempt 2")' in record.failures[1].traceback
    # Every report of every attempt, metric-only ones included.
    assert [(h["metrics"]["attempt"], h["metrics"]["step"]) for h in result.history] == [
        (1, 0), (2, 0), (3, 0), (3, 1)]
    assert result.history[-1]["checkpoint_dir_name"] == result.checkpoint.name
    assert record.failure_config["max_failures"] == 1
    storage_path = Path(retried_env_run).parent
    assert not (storage_path / JOURNAL_DIR).exists()  # nothing terminal, nothing to alert


def test_terminal_failure_via_runconfig(v2_runs):
    result = trd.TrainResult.from_path(v2_runs["failure"])
    record = result.record
    assert record is not None and record.format == 2
    assert result.status == "failed"
    assert [f.terminal for f in record.failures] == [True]
    assert record.failure_details == [{"kind": "worker_group", "decision": "RAISE",
                                       "state": "ShuttingDownState"}]
    assert result.error.worker_failures.keys() == {0, 1}
    assert "[Rank 1]" in result.error.traceback and "boom at epoch 2 on rank 1" in result.error.traceback
    journal = Path(v2_runs["failure"]).parent / JOURNAL_DIR
    entries = [json.loads(p.read_text()) for p in journal.iterdir()]
    assert [e["run_name"] for e in entries].count("failure") == 1
    assert {"run_uri", "run_name", "error_type", "message", "time"} <= set(entries[0])


def test_finished_and_metric_only_reports_via_runconfig(v2_runs):
    result = trd.TrainResult.from_path(v2_runs["success"])
    assert result.status == "finished" and result.record.failures == []
    assert len(result.history) == 8  # 4 metric-only + 4 with a checkpoint
    assert os.listdir(Path(v2_runs["success"]) / RECORD_DIR)  # the new format, on disk
    plain = trd.TrainResult.from_path(v2_runs["success_plain"])
    assert plain.record is None and plain.status == "unknown"


def test_cli_inspect_shows_status_and_retries(retried_env_run, v2_runs):
    cli = [sys.executable, "-m", "trainresults_dagster.cli", "inspect"]
    out = subprocess.run([*cli, retried_env_run], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "status finished" in out.stdout
    assert "retried    2 failure(s) Ray retried" in out.stdout
    assert "attempt 1: WorkerGroupError" in out.stdout
    as_json = subprocess.run([*cli, "--json", v2_runs["failure"]], capture_output=True,
                             text=True, timeout=60)
    summary = json.loads(as_json.stdout)
    assert summary["status"] == "failed" and summary["record"]["format"] == 2
    assert summary["record"]["failures"][0]["decision"] == "RAISE"
    plain = subprocess.run([*cli, v2_runs["failure_plain"]], capture_output=True, text=True,
                           timeout=60)
    assert "status unknown (no RunRecorder record" in plain.stdout


JOB_SCRIPT = r"""
import os, sys
import ray, ray.train
from ray.train import RunConfig, ScalingConfig
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

def loop(config):
    for step in range(3):
        ray.train.report({"step": step})

ray.init()  # RAY_ADDRESS comes from the job supervisor
assert os.environ["RAY_TRAIN_CALLBACKS"] == "trainresults_dagster.ray.RunRecorder"
DataParallelTrainer(loop, scaling_config=ScalingConfig(num_workers=1),
                    run_config=RunConfig(name="job_run", storage_path=sys.argv[1])).fit()
print("JOB DONE")
"""


def test_ray_job_runtime_env_alone_attaches_the_recorder(ray_session, tmp_path, monkeypatch):
    """The README's Ray Job recipe: the variable only in the job's runtime_env."""
    import time

    import ray
    from ray.job_submission import JobStatus, JobSubmissionClient

    monkeypatch.delenv("RAY_TRAIN_CALLBACKS", raising=False)
    script = tmp_path / "train.py"
    script.write_text(JOB_SCRIPT)
    dashboard = "http://" + ray._private.worker.global_worker.node.address_info["webui_url"]
    client = JobSubmissionClient(dashboard)
    job = client.submit_job(
        entrypoint=f"{sys.executable} {script} {tmp_path / 'storage'}",
        runtime_env={"env_vars": {"RAY_TRAIN_CALLBACKS": "trainresults_dagster.ray.RunRecorder"}},
    )
    deadline = time.time() + 240
    status = client.get_job_status(job)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.time() < deadline, f"job {job} still {status}"
        time.sleep(1)
        status = client.get_job_status(job)
    logs = client.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED and "JOB DONE" in logs, logs[-3000:]
    result = trd.TrainResult.from_path(tmp_path / "storage" / "job_run")
    assert result.status == "finished"
    assert [h["metrics"]["step"] for h in result.history] == [0, 1, 2]
