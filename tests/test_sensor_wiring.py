"""The sensors the documented Dagster ways: invoked directly with
``dg.build_run_status_sensor_context(..., resources=...)`` / ``dg.build_sensor_context``,
S3 through the default AWS chain (``AWS_*`` environment, moto server, no ``s3`` resource),
Ray's own ``WorkerGroupError`` text parsed per rank, and exactly-once delivery recorded
through the instance's public dynamic-partitions API (a tick re-run from a stale cursor,
as after a daemon killed before its commit, sends nothing twice)."""

from __future__ import annotations

import json
import shutil
import time
import traceback

import dagster as dg
import pytest
from alert_receiver import AlertReceiver

import trainresults_dagster as trd
from trainresults_dagster.dagster.sensors import DeliveryLedger
from trainresults_dagster.runs.failure import rank_failures_from_message
from trainresults_dagster.runs.record import JOURNAL_DIR, journal_key


@pytest.fixture
def receiver():
    rx = AlertReceiver()
    yield rx
    rx.stop()


def ray_worker_group_error():
    """A ``WorkerGroupError`` built by Ray's own code, as ``fit()`` raises it: ranks 0 and 1
    fail alike (Ray groups them into one snippet), rank 2 differently."""
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2._internal.execution.worker_group.poll import (
        WorkerGroupPollStatus,
        WorkerStatus,
    )

    statuses = {}
    for rank in (0, 1, 2):
        try:
            if rank < 2:
                raise ValueError(f"boom at epoch 2 on rank {rank}")
            raise KeyError("missing shard")
        except Exception as exc:  # noqa: BLE001
            error = UserExceptionWithTraceback(exc, traceback.format_exc())
        statuses[rank] = WorkerStatus(running=False, error=error)
    return WorkerGroupPollStatus(worker_statuses=statuses).get_worker_group_error()


def test_ray_rank_snippets_become_worker_failures():
    error = ray_worker_group_error()
    assert "[Rank 0,1 Error Snippet]:" in str(error)
    assert rank_failures_from_message(str(error)) == {
        0: "ValueError: boom at epoch 2 on rank 0",
        1: "ValueError: boom at epoch 2 on rank 0",  # Ray shows the group's first error
        2: "KeyError: 'missing shard'",
    }
    # Our own recorder's format still parses.
    assert rank_failures_from_message("x:\n[Rank 3]: OSError: disk full") == {3: "OSError: disk full"}
    assert rank_failures_from_message("no ranks here") == {}


@pytest.mark.filterwarnings("ignore::dagster.BetaWarning")  # repository_def: beta, needed here
def test_training_failure_sensor_invoked_directly_with_resources(receiver):
    error = ray_worker_group_error()

    @dg.asset(kinds={"ray"})
    def train() -> None:
        raise error

    sensor = trd.build_training_failure_sensor("training_failures")
    defs = dg.Definitions(assets=[train], sensors=[sensor],
                          resources={"alert_sink": trd.WebhookAlertSink(url="http://127.0.0.1:9")})
    with dg.instance_for_test() as instance:
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, raise_on_error=False)
        run_failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
        context = dg.build_run_status_sensor_context(
            sensor_name="training_failures",
            dagster_instance=instance,
            dagster_run=result.dagster_run,
            dagster_event=run_failure,
            resources={"alert_sink": trd.WebhookAlertSink(url=receiver.url)},
            repository_def=defs.get_repository_def(),
        )
        sensor(context)
        sensor(context)  # invoked again: the ledger says it was delivered
        delivered = instance.get_dynamic_partitions("trainresults.delivered.training_failures")
    (request,) = receiver.requests
    alert = request.json
    assert alert["error_type"] == "WorkerGroupError"
    assert alert["worker_failures"] == {
        "0": "ValueError: boom at epoch 2 on rank 0",
        "1": "ValueError: boom at epoch 2 on rank 0",
        "2": "KeyError: 'missing shard'",
    }
    assert [k.split("|", 1)[1] for k in delivered] == [alert["alert_id"]]


def failed_storage(tmp_path, v2_runs, names=("first", "second")):
    root = tmp_path / "storage"
    (root / JOURNAL_DIR).mkdir(parents=True)
    for i, name in enumerate(names):
        shutil.copytree(v2_runs["failure"], root / name)
        when = time.time() - 60 + i
        entry = {"run_name": name, "error_type": "WorkerGroupError", "message": "boom", "time": when}
        (root / JOURNAL_DIR / journal_key(when, name)).write_text(json.dumps(entry))
    return root


def test_failed_run_sensor_invoked_directly_and_re_run_from_a_stale_cursor(tmp_path, v2_runs, receiver):
    root = failed_storage(tmp_path, v2_runs)
    sensor = trd.build_failed_run_sensor("failed_runs", storage_path=str(root), include_v1=False)
    sink = trd.WebhookAlertSink(url=receiver.url)
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, resources={"alert_sink": sink}) as context:
            first = sensor(context)  # direct invocation, Dagster's documented test path
        assert len(receiver.requests) == 2
        # The daemon died before committing `first.cursor`: the tick runs again from None.
        with dg.build_sensor_context(instance=instance, cursor=None,
                                     resources={"alert_sink": sink}) as context:
            again = sensor.evaluate_tick(context)
        assert len(receiver.requests) == 2
        assert json.loads(again.cursor)["hw"] == json.loads(first.cursor)["hw"]
        ledger = DeliveryLedger(instance, "failed_runs")
        assert len(instance.get_dynamic_partitions(ledger.partitions_name)) == 2
        ledger.deliver(sink, receiver.requests[0].json)  # known: skipped, not sent
        assert len(receiver.requests) == 2 and ledger.skipped
        assert ledger.prune(now=time.time() + DeliveryLedger.RETENTION_SECONDS + 1) == 2
        assert instance.get_dynamic_partitions(ledger.partitions_name) == []


def test_failed_run_sensor_on_s3_uses_the_default_aws_chain(moto, monkeypatch, tmp_path, v2_runs, receiver):
    """No s3 resource and no s3_key: credentials and endpoint come from the AWS_* environment."""
    for key, value in moto.env().items():
        monkeypatch.setenv(key, value)
    root = failed_storage(tmp_path, v2_runs, names=("only",))
    bucket = moto.new_bucket("chain")
    uri = moto.upload_dir(str(root), bucket, "storage")
    sensor = trd.build_failed_run_sensor("failed_runs", storage_path=uri, include_v1=False)
    assert sensor.required_resource_keys == {"alert_sink"}
    with dg.instance_for_test() as instance, dg.build_sensor_context(
        instance=instance, resources={"alert_sink": trd.WebhookAlertSink(url=receiver.url)}
    ) as context:
        result = sensor.evaluate_tick(context)
    (request,) = receiver.requests
    assert request.json["run_uri"] == f"{uri}/only"
    assert moto.secret_key not in result.cursor and moto.secret_key not in request.body.decode()


def test_resource_keys_must_be_identifiers():
    with pytest.raises(ValueError, match="Python identifier"):
        trd.build_training_failure_sensor("s", alert_sink_key="alert-sink")
    with pytest.raises(ValueError, match="Python identifier"):
        trd.build_failed_run_sensor("s", storage_path="s3://b/p", s3_key="my s3")
