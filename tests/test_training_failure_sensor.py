"""``build_training_failure_sensor`` against real failed Dagster runs in a real instance.

The training asset fails the way the IO manager makes it fail (``dg.Failure`` whose metadata
is the ``training_context`` of a real failed Ray run); another fails with the plain
exception ``trainer.fit()`` raises; a non-training asset fails too and must not alert.
Alerts go to a real HTTP receiver through ``WebhookAlertSink``.
"""

from __future__ import annotations

import dagster as dg
import pytest
from alert_receiver import AlertReceiver

import trainresults_dagster as trd
from trainresults_dagster.dagster.metadata import METADATA_PREFIX
from trainresults_dagster.runs.result import training_context

BASE_URL = "http://dagster.example:3000"


def failure_metadata(context: dict) -> dict:
    """What the IO manager attaches to its dg.Failure (json for the two structured keys)."""
    md = {METADATA_PREFIX + k: v for k, v in context.items() if v is not None}
    md[METADATA_PREFIX + "worker_failures"] = dg.MetadataValue.json(context["worker_failures"])
    md[METADATA_PREFIX + "last_metrics"] = dg.MetadataValue.json(context["last_metrics"])
    return md


@pytest.fixture(scope="module")
def failed_result(v2_runs):
    return trd.TrainResult.from_path(v2_runs["failure"])


@pytest.fixture(scope="module")
def defs(failed_result):
    metadata = failure_metadata(training_context(failed_result))
    fit_error = failed_result.error  # the real TrainingFailedError text RunRecorder kept

    @dg.asset
    def train() -> None:
        raise dg.Failure(description="training failed", metadata=metadata)

    @dg.asset(kinds={"ray"})
    def train_plain() -> None:
        raise RuntimeError(fit_error.message)

    @dg.asset(tags={"trainresults/training": "true"})
    def train_tagged() -> None:
        raise ValueError("tagged training asset failed")

    @dg.asset
    def report() -> None:
        raise RuntimeError("not a training step")

    @dg.asset
    def healthy() -> int:
        return 1

    train_job = dg.define_asset_job("train_job", selection=[train])
    sensor = trd.build_training_failure_sensor("training_failures", webserver_base_url=BASE_URL)
    only_train_job = trd.build_training_failure_sensor("only_train_job", monitored_jobs=[train_job])
    return dg.Definitions(
        assets=[train, train_plain, train_tagged, report, healthy],
        jobs=[train_job],
        sensors=[sensor, only_train_job],
        resources={"alert_sink": trd.WebhookAlertSink(url="http://127.0.0.1:9/unused")},
    )


@pytest.fixture
def receiver():
    rx = AlertReceiver()
    yield rx
    rx.stop()


def tick(defs, name, instance, cursor, sink) -> dg.SensorEvaluationContext:
    sensor = defs.resolve_sensor_def(name)
    with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                 resources={"alert_sink": sink}) as context:
        return sensor.evaluate_tick(context)


def launch(defs, instance, *keys: str) -> str:
    """Run assets as the UI does (the implicit ``__ASSET_JOB``); returns the run id."""
    job = defs.resolve_implicit_global_asset_job_def()
    result = job.execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey(k) for k in keys], raise_on_error=False
    )
    assert job.name == "__ASSET_JOB"
    return result.run_id


def test_alert_carries_the_training_context_and_a_link(defs, receiver, failed_result):
    sink = trd.WebhookAlertSink(url=receiver.url, secret="sig")
    with dg.instance_for_test() as instance:
        cursor = tick(defs, "training_failures", instance, None, sink).cursor  # initialises
        run_ids = {k: launch(defs, instance, k)
                   for k in ("train", "train_plain", "train_tagged", "report", "healthy")}
        data = tick(defs, "training_failures", instance, cursor, sink)
        assert all(r.error is None for r in data.dagster_run_reactions)
        again = tick(defs, "training_failures", instance, data.cursor, sink)
        assert not again.dagster_run_reactions

    alerts = {r.json["step_key"]: r.json for r in receiver.requests}
    assert set(alerts) == {"train", "train_plain", "train_tagged"}  # not "report"

    train = alerts["train"]
    context = training_context(failed_result)
    assert train["kind"] == "dagster_run_failed"
    assert train["dagster_run_id"] == run_ids["train"]
    assert train["dagster_run_url"] == f"{BASE_URL}/runs/{run_ids['train']}"
    assert train["dagster_job_name"] == "__ASSET_JOB"
    for key in ("run_uri", "error_type", "message", "worker_failures", "last_checkpoint_uri",
                "last_metrics"):
        assert train[key] == context[key], key
    assert f"<{BASE_URL}/runs/{run_ids['train']}|open in Dagster>" in train["text"]

    plain = alerts["train_plain"]  # no metadata: what the step's error says, per rank
    assert plain["error_type"] == "RuntimeError"
    # From the message alone: Ray groups ranks whose errors share a snippet
    # ("[Rank 0,1 Error Snippet]:"), so each rank gets its group's error line.
    expected = {str(k): v for k, v in failed_result.error.worker_failures.items()}
    assert set(plain["worker_failures"]) == set(expected)
    assert all(v.startswith("ValueError: boom at epoch 2") for v in plain["worker_failures"].values())
    assert plain["run_uri"] is None and plain["asset_keys"] == ["train_plain"]
    assert alerts["train_tagged"]["message"] == "tagged training asset failed"


def test_monitored_jobs_limits_the_runs_watched(defs, receiver):
    sink = trd.WebhookAlertSink(url=receiver.url)
    with dg.instance_for_test() as instance:
        cursor = tick(defs, "only_train_job", instance, None, sink).cursor
        launch(defs, instance, "train")  # __ASSET_JOB: not monitored by this sensor
        job_run = defs.resolve_job_def("train_job").execute_in_process(
            instance=instance, raise_on_error=False
        )
        tick(defs, "only_train_job", instance, cursor, sink)
    assert [r.json["dagster_run_id"] for r in receiver.requests] == [job_run.run_id]
    assert receiver.requests[0].json["dagster_job_name"] == "train_job"


def test_undeliverable_alert_fails_the_tick_visibly(defs):
    down = AlertReceiver(statuses=[500] * 5)
    try:
        sink = trd.WebhookAlertSink(url=down.url, retries=1, backoff_seconds=0.01)
        with dg.instance_for_test() as instance:
            cursor = tick(defs, "training_failures", instance, None, sink).cursor
            launch(defs, instance, "train")
            data = tick(defs, "training_failures", instance, cursor, sink)
    finally:
        down.stop()
    (reaction,) = data.dagster_run_reactions
    assert reaction.error is not None
    assert "could not deliver 1 training-failure alert" in reaction.error.to_string()
    assert "HTTP 500" in reaction.error.to_string()


def test_bad_webserver_url_fails_at_definition_time():
    with pytest.raises(ValueError, match="webserver_base_url"):
        trd.build_training_failure_sensor("s", webserver_base_url="localhost:3000")


def test_io_manager_failure_reaches_the_alert(failed_result, receiver, tmp_path):
    """The IO manager's on_error="fail" dg.Failure carries the context the sensor reads."""

    @dg.asset(io_manager_key="ray_results", kinds={"ray"})
    def trained() -> trd.TrainResult:
        return failed_result

    sink = trd.WebhookAlertSink(url=receiver.url)
    io_defs = dg.Definitions(
        assets=[trained],
        sensors=[trd.build_training_failure_sensor("training_failures")],
        resources={"ray_results": trd.RayTrainResultIOManager(base_path=str(tmp_path),
                                                              on_error="fail"),
                   "alert_sink": sink},
    )
    with dg.instance_for_test() as instance:
        cursor = tick(io_defs, "training_failures", instance, None, sink).cursor
        run_id = launch(io_defs, instance, "trained")
        tick(io_defs, "training_failures", instance, cursor, sink)
    (request,) = receiver.requests
    alert = request.json
    assert alert["dagster_run_id"] == run_id
    for key, value in training_context(failed_result).items():
        assert alert[key] == value, key
