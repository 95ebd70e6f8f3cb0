"""Training as a Ray Job on a real cluster (issue #15): ``RayJobTrainer`` through dagster-ray.

One Ray cluster for the whole file, started by ``ray start --head`` in its own processes
with token auth on (``tests/ray_cluster.py``), reached only over its dashboard's Job
Submission API. Real jobs run ``tests/ray_job_scripts/train.py``; the assets go through the
real ``RayTrainResultIOManager`` in one on-disk ``DagsterInstance``. Covered: a run that
succeeds (metrics in metadata, best checkpoint selectable), one that raises on both ranks
(stored failure, step fails with per-rank context, the storage sensor alerts once), one
that dies before training, a cancelled Dagster run (job STOPPED, no process left), a
timeout, the example pipeline's job path, and secrets kept out of every job and event.
"""

# No "from __future__ import annotations": Dagster reads the real annotations of the assets.
import json
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pytest
from conftest import ACCESS_KEY, SECRET_KEY
from counting_proxy import CountingProxy
from dagster._serdes import serialize_value
from ray_cluster import RayCluster, alive

import trainresults_dagster as trd
from trainresults_dagster.dagster.sensors import TRAINING_TAG

SCRIPT = Path(__file__).parent / "ray_job_scripts" / "train.py"
#: Job end -> asset materialised, one entry per successful job (printed at the end).
LATENCIES: list[float] = []


@pytest.fixture(scope="module")
def cluster():
    # The cluster's own identity for storage, as a real cluster has: it must never reach a
    # job's submission, the step's logs or Dagster's events.
    ray = RayCluster({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY})
    yield ray
    ray.stop()
    if LATENCIES:
        print(f"\njob end -> materialised: median {statistics.median(LATENCIES):.2f}s over "
              f"{len(LATENCIES)} jobs: {[round(x, 2) for x in LATENCIES]}")


@pytest.fixture(scope="module")
def instance(tmp_path_factory):
    with dg.instance_for_test(temp_dir=str(tmp_path_factory.mktemp("dagster_home"))) as inst:
        yield inst


def trainer(cluster, **overrides):
    settings = {"address": cluster.address, "auth_token": cluster.token,
                "poll_interval_seconds": 0.25, **overrides}
    return trd.RayJobTrainer(**settings)


def training_asset(storage, mode, pid_dir=""):
    command = f"{sys.executable} {SCRIPT} {mode} {pid_dir}".strip()

    @dg.asset(name="trained", io_manager_key="ray_results", tags={TRAINING_TAG: "true"})
    def trained(context: dg.AssetExecutionContext, ray_job: trd.RayJobTrainer) -> trd.TrainResult:
        return ray_job.run(context, entrypoint=command, storage_uri=str(storage))

    return trained


def resources(tmp_path, cluster, **trainer_overrides):
    return {
        "ray_results": trd.RayTrainResultIOManager(base_path=str(tmp_path / "results"),
                                                   on_error="fail"),
        trd.JSON_IO_MANAGER_KEY: trd.JsonIOManager(base_path=str(tmp_path / "values")),
        "ray_job": trainer(cluster, **trainer_overrides),
    }


def job_of(result):
    [mat] = [e for e in result.get_asset_materialization_events()
             if e.asset_key == dg.AssetKey("trained")]
    return mat.materialization.metadata


def failure_text(result):
    failures = [e for e in result.all_events if e.is_step_failure]
    assert failures, "expected the training step to fail"
    error = failures[0].step_failure_data.error
    parts = []
    while error is not None:
        parts.append(error.message + "".join(error.stack))
        error = error.cause
    return "\n".join(parts)


def only_job(cluster, run_id):
    jobs = [j for j in cluster.client().list_jobs()
            if (j.metadata or {}).get("dagster/run-id") == run_id]
    assert len(jobs) == 1, [j.metadata for j in jobs]
    return jobs[0]


def pids_gone(pid_dir, timeout=30):
    pids = [int(p.read_text()) for p in Path(pid_dir).glob("*.pid")]
    deadline = time.time() + timeout
    while any(alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.25)
    return pids, [p for p in pids if alive(p)]


def test_a_job_that_succeeds_is_materialised_with_its_metrics(cluster, instance, tmp_path):
    storage = tmp_path / "ray"
    trained = training_asset(storage, "ok")
    best = trd.build_best_checkpoint_asset("best", result_asset=trained, metric="loss", mode="min")
    result = dg.materialize([trained, best], resources=resources(tmp_path, cluster),
                            instance=instance)
    assert result.success
    metadata = job_of(result)
    assert metadata["metrics/loss"].value == 0.5  # the final metric, a float Dagster plots
    assert metadata["ray_job_status"].value == "SUCCEEDED"
    chosen = result.output_for_node("best")
    assert chosen.metrics["loss"] == 0.4 and chosen.metrics["epoch"] == 1
    [run_dir] = [p for p in storage.iterdir() if p.name.startswith("trained-")]
    assert trd.TrainResult.from_path(run_dir).status == "finished"  # RunRecorder was attached

    job = only_job(cluster, result.run_id)
    assert job.status == "SUCCEEDED"
    env_vars = job.runtime_env["env_vars"]
    assert env_vars["RAY_TRAIN_CALLBACKS"] == "trainresults_dagster.ray.RunRecorder"
    event = instance.get_latest_materialization_event(dg.AssetKey("trained"))
    LATENCIES.append(event.timestamp - job.end_time / 1000)


def test_user_env_vars_and_callbacks_are_kept(cluster):
    resource = trainer(cluster, runtime_env={"env_vars": {
        "RAY_TRAIN_CALLBACKS": "my.Callback", "MY_FLAG": "1"}})
    env = resource.job_runtime_env("/s", "r", {"env_vars": {"OTHER": "2"}, "pip": ["x"]})
    assert env["env_vars"]["RAY_TRAIN_CALLBACKS"] == (
        "trainresults_dagster.ray.RunRecorder,my.Callback")
    assert env["env_vars"]["MY_FLAG"] == "1" and env["env_vars"]["OTHER"] == "2"
    assert env["pip"] == ["x"]
    assert resource.runtime_env["env_vars"] == {"RAY_TRAIN_CALLBACKS": "my.Callback",
                                                "MY_FLAG": "1"}  # not mutated


def test_a_job_that_raises_fails_the_step_with_per_rank_context(cluster, instance, tmp_path):
    storage = tmp_path / "ray"
    result = dg.materialize([training_asset(storage, "raise")],
                            resources=resources(tmp_path, cluster), instance=instance,
                            raise_on_error=False)
    assert not result.success
    text = failure_text(result)
    assert "diverged at epoch 1 on rank 0" in text and "diverged at epoch 1 on rank 1" in text

    [run_dir] = [p for p in storage.iterdir() if p.name.startswith("trained-")]
    stored = trd.TrainResult.from_path(run_dir)
    assert stored.status == "failed" and sorted(stored.error.worker_failures) == [0, 1]
    assert len(stored.checkpoints) == 1  # epoch 0 survived the failure
    assert only_job(cluster, result.run_id).status == "FAILED"

    alerts = tmp_path / "alerts.jsonl"

    class FileSink(dg.ConfigurableResource):
        path: str

        def send(self, alert: dict) -> None:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(alert) + "\n")

    sensor = trd.build_failed_run_sensor("failed_runs", storage_path=str(storage))
    cursor = None
    for _ in range(2):
        with dg.build_sensor_context(instance=instance, cursor=cursor,
                                     resources={"alert_sink": FileSink(path=str(alerts))}) as ctx:
            cursor = sensor.evaluate_tick(ctx).cursor
    [alert] = [json.loads(line) for line in alerts.read_text().splitlines()]
    assert alert["kind"] == "ray_run_failed" and alert["run_uri"] == str(run_dir)
    assert sorted(alert["worker_failures"]) == ["0", "1"]


def test_a_job_that_dies_before_training_reports_its_status_and_logs(cluster, instance, tmp_path):
    result = dg.materialize([training_asset(tmp_path / "ray", "die")],
                            resources=resources(tmp_path, cluster), instance=instance,
                            raise_on_error=False)
    assert not result.success
    text = failure_text(result)
    assert "RayJobFailed" in text and "giving up before training" in text


@pytest.fixture
def flaky_dashboard(cluster):
    """The cluster's dashboard behind a proxy whose first ``stop`` request gets 503 (a busy
    head, a proxy hiccup): the job must still be stopped, by a retry."""
    proxy = CountingProxy.for_url(cluster.address)
    proxy.fail_first(rb"POST /api/jobs/[^/ ]+/stop ", times=1)
    yield proxy
    proxy.close()


def test_terminating_the_dagster_run_stops_the_job(cluster, instance, tmp_path, flaky_dashboard):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    asset = training_asset(tmp_path / "ray", "sleep", pid_dir)

    def interrupt_once_training():
        # What `dagster run terminate` does to a run worker: SIGINT, turned by Dagster into
        # DagsterExecutionInterruptedError in the step; dagster-ray then stops the job.
        deadline = time.time() + 120
        while time.time() < deadline and not list(pid_dir.glob("worker*.pid")):
            time.sleep(0.25)
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_training, daemon=True).start()
    result = dg.materialize([asset], resources=resources(tmp_path, cluster,
                                                         address=flaky_dashboard.endpoint_url),
                            instance=instance, raise_on_error=False)
    assert not result.success
    assert flaky_dashboard.injected == 1  # the first stop was refused, the retry went through
    job = only_job(cluster, result.run_id)
    assert cluster.client().get_job_status(job.submission_id) == "STOPPED"
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "DagsterExecutionInterruptedError" in str(failure.event_specific_data.error), (
        "the interruption must stay the step's outcome")
    pids, left = pids_gone(pid_dir)
    assert len(pids) == 2 and not left, f"orphans: {left}"


def test_a_job_past_its_timeout_is_stopped_and_reported(cluster, instance, tmp_path,
                                                        flaky_dashboard):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    result = dg.materialize([training_asset(tmp_path / "ray", "sleep", pid_dir)],
                            resources=resources(tmp_path, cluster, timeout_seconds=10,
                                                address=flaky_dashboard.endpoint_url),
                            instance=instance, raise_on_error=False)
    assert not result.success
    assert flaky_dashboard.injected == 1  # the first stop was refused, the retry went through
    text = failure_text(result)
    assert "RayJobTimeout" in text and "exceeded timeout_seconds=10" in text
    assert only_job(cluster, result.run_id).status == "STOPPED"
    _, left = pids_gone(pid_dir)
    assert not left, f"orphans: {left}"


def test_the_example_pipeline_trains_through_a_ray_job(cluster, instance, tmp_path, monkeypatch):
    import importlib

    monkeypatch.setenv("TRAINRESULTS_STORAGE", str(tmp_path / "store"))
    monkeypatch.setenv("TRAINRESULTS_EPOCHS", "2")
    monkeypatch.setenv("TRAINRESULTS_SEED", "7")
    monkeypatch.setenv("TRAINRESULTS_RAY_JOB_ADDRESS", cluster.address)
    monkeypatch.setenv("TRAINRESULTS_RAY_JOB_TOKEN", cluster.token)
    import trainresults_dagster.examples.definitions as example

    example = importlib.reload(example)
    try:
        assert example.defs.resources["ray_job"].address == cluster.address
        result = dg.materialize(
            [example.training_data, example.trained_model, example.best_checkpoint],
            resources=example.resources(), instance=instance,
        )
        assert result.success
        [mat] = [e.materialization for e in result.get_asset_materialization_events()
                 if e.asset_key == dg.AssetKey("trained_model")]
        assert mat.metadata["ray_job_status"].value == "SUCCEEDED"
        assert "metrics/val_loss" in mat.metadata
        assert result.output_for_node("best_checkpoint").metrics["val_loss"] > 0
        job = only_job(cluster, result.run_id)
        event = instance.get_latest_materialization_event(dg.AssetKey("trained_model"))
        LATENCIES.append(event.timestamp - job.end_time / 1000)
    finally:
        monkeypatch.undo()
        importlib.reload(example)


def test_no_secret_reaches_jobs_logs_or_events(cluster, instance):
    """Runs last: scans everything the tests above submitted and recorded."""
    client = cluster.client()
    jobs = client.list_jobs()
    assert jobs
    seen = []
    for job in jobs:
        seen.append(json.dumps({"entrypoint": job.entrypoint, "metadata": job.metadata,
                                "runtime_env": job.runtime_env, "message": job.message}))
        seen.append(client.get_job_logs(job.submission_id))
    for record in instance.get_run_records():
        seen.append(serialize_value(record.dagster_run))
        for entry in instance.all_logs(record.dagster_run.run_id):
            seen.append(serialize_value(entry))
    blob = "\n".join(seen)
    assert "dagster/run-id" in blob  # the scan does see the jobs and the runs
    for secret in (SECRET_KEY, cluster.token):
        assert secret not in blob
