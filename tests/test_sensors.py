"""``build_failed_run_sensor`` over a storage path holding real Ray Train runs (V2 with
RunRecorder failing and succeeding, V2 without recorder, V1 failing and succeeding), on local
disk, on the moto S3 server over HTTP, and on GCS and Azure (gcp-storage-emulator, Azurite). Sensors are evaluated against a real
``DagsterInstance``; cursors go round through their JSON string between ticks; alerts go
to a real HTTP receiver through ``WebhookAlertSink``."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from alert_receiver import AlertReceiver
from conftest import SECRET_KEY
from s3_proxy import S3Proxy

import trainresults_dagster as trd
from trainresults_dagster import storage
from trainresults_dagster.alerts.scan import scan_failed_runs
from trainresults_dagster.dagster._wiring import s3_settings
from trainresults_dagster.runs.record import JOURNAL_DIR, journal_key, read_record

SEED_V2 = ("failure", "failure_before_ckpt", "failure_plain", "success", "nan_losses")
EXPECTED_FAILED = {"failure", "failure_before_ckpt", "v1_failure"}


@pytest.fixture(scope="module")
def seed(v2_runs, v1_runs, tmp_path_factory) -> Path:
    """A storage path: a few real V2 runs, their failure journal, and both V1 experiments."""
    root = tmp_path_factory.mktemp("seed") / "storage"
    v2_root = os.path.dirname(v2_runs["failure"])
    for name in SEED_V2:
        shutil.copytree(v2_runs[name], root / name)
    shutil.copytree(os.path.join(v2_root, JOURNAL_DIR), root / JOURNAL_DIR)
    for name, trial in v1_runs.items():
        shutil.copytree(os.path.dirname(trial), root / name)
    return root


class LocalBackend:
    name = "local"
    s3_key = None
    keys: dict[str, str] = {}

    def __init__(self, root: Path) -> None:
        self.root = root
        self.storage_path = str(root)

    def resources(self, sink: Any) -> dict[str, Any]:
        return {"alert_sink": sink}

    def uri(self, *parts: str) -> str:
        return "/".join([self.storage_path, *parts])

    def put_dir(self, local: str, name: str) -> None:
        shutil.copytree(local, self.root / name)

    def put_file(self, rel: str, data: bytes) -> None:
        (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (self.root / rel).write_bytes(data)

    def requests(self) -> int | None:
        return None


class S3Backend:
    name = "s3"
    s3_key = "s3"
    keys = {"s3_key": "s3"}

    def __init__(self, moto: Any, seed: Path) -> None:
        self.moto = moto
        self.bucket = moto.new_bucket("sensor")
        self.storage_path = moto.upload_dir(str(seed), self.bucket, "storage")
        self.proxy = S3Proxy(moto.endpoint_url)

    def s3_resource(self) -> Any:
        from dagster_aws.s3 import S3Resource

        return S3Resource(endpoint_url=self.proxy.endpoint_url, region_name=self.moto.region,
                          aws_access_key_id=self.moto.access_key,
                          aws_secret_access_key=self.moto.secret_key)

    def resources(self, sink: Any) -> dict[str, Any]:
        return {"alert_sink": sink, "s3": self.s3_resource()}

    def uri(self, *parts: str) -> str:
        return "/".join([self.storage_path, *parts])

    def put_dir(self, local: str, name: str) -> None:
        self.moto.upload_dir(local, self.bucket, f"storage/{name}")

    def put_file(self, rel: str, data: bytes) -> None:
        self.moto.client().put_object(Bucket=self.bucket, Key=f"storage/{rel}", Body=data)

    def requests(self) -> int:
        return self.proxy.stats["requests"]


class CloudBackend:
    """GCS or Azure through its emulator, configured by a resource under key ``store``."""

    s3_key = None

    def __init__(self, name: str, emulator: Any, seed: Path) -> None:
        self.name, self.emulator = name, emulator
        self.keys = {"gcs_key" if name == "gcs" else "azure_key": "store"}
        self.container = (emulator.new_bucket("sensor") if name == "gcs"
                          else emulator.new_container("sensor"))
        self.fs = emulator.filesystem()
        self.storage_path = emulator.upload_dir(str(seed), self.container, "storage")

    def resources(self, sink: Any) -> dict[str, Any]:
        return {"alert_sink": sink, "store": self.emulator.resource()}

    def uri(self, *parts: str) -> str:
        return "/".join([self.storage_path, *parts])

    def put_dir(self, local: str, name: str) -> None:
        self.emulator.upload_dir(local, self.container, f"storage/{name}")

    def put_file(self, rel: str, data: bytes) -> None:
        storage.write_bytes_atomic(self.fs, f"{self.container}/storage/{rel}", data)

    def requests(self) -> int | None:
        return None


@pytest.fixture(params=["local", "s3", "gcs", "azure"])
def backend(request, seed, tmp_path):
    if request.param == "local":
        root = tmp_path / "storage"
        shutil.copytree(seed, root)
        yield LocalBackend(root)
    elif request.param in ("gcs", "azure"):
        fixture = "gcs_emulator" if request.param == "gcs" else "azurite"
        yield CloudBackend(request.param, request.getfixturevalue(fixture), seed)
    else:
        b = S3Backend(request.getfixturevalue("moto"), seed)
        yield b
        b.proxy.stop()


@pytest.fixture
def receiver():
    rx = AlertReceiver()
    yield rx
    rx.stop()


@pytest.fixture(scope="module")
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def tick(sensor: dg.SensorDefinition, instance: Any, cursor: str | None, resources: dict) -> Any:
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        return sensor.evaluate_tick(context)


def add_failed_run(backend: Any, v2_runs: dict, name: str, *, when: float | None = None) -> str:
    """A real failed run appears: its folder first, then its journal entry (RunRecorder's order)."""
    backend.put_dir(v2_runs["failure"], name)
    when = time.time() if when is None else when
    entry = {"run_name": name, "run_uri": backend.uri(name), "error_type": "WorkerGroupError",
             "message": "Training failed due to worker errors", "time": when}
    backend.put_file(f"{JOURNAL_DIR}/{journal_key(when, name)}", json.dumps(entry).encode())
    return backend.uri(name)


def by_run(requests: list) -> dict[str, dict]:
    return {r.json["run_name"]: r.json for r in requests}


def test_first_tick_alerts_every_failed_run_once(backend, receiver, instance, v2_runs, v1_runs):
    sensor = trd.build_failed_run_sensor("failed_runs", storage_path=backend.storage_path, **backend.keys)
    resources = backend.resources(trd.WebhookAlertSink(url=receiver.url, secret="k"))

    first = tick(sensor, instance, None, resources)
    alerts = by_run(receiver.requests)
    assert set(alerts) == EXPECTED_FAILED  # success, nan_losses, v1_success: no alert
    assert "1 failed run" not in (first.skip_message or "")

    failure = alerts["failure"]
    expected = trd.TrainResult.from_path(v2_runs["failure"])
    assert failure["kind"] == "ray_run_failed"
    assert failure["run_uri"] == backend.uri("failure")
    assert failure["error_type"] == "WorkerGroupError"
    assert failure["worker_failures"] == {
        str(rank): text for rank, text in sorted(expected.error.worker_failures.items())
    }
    assert failure["last_checkpoint_uri"] == backend.uri("failure", expected.checkpoint.name)
    assert failure["last_metrics"] == expected.metrics
    assert failure["journal_key"].endswith("-failure.json")

    before_ckpt = alerts["failure_before_ckpt"]
    assert before_ckpt["last_checkpoint_uri"] is None
    assert before_ckpt["last_metrics"] == {"epoch": 0, "warmup": 1.0}  # metric-only report
    assert "failed before any checkpoint" in before_ckpt["worker_failures"]["1"]

    v1 = alerts["v1_failure"]
    trial = os.path.basename(v1_runs["v1_failure"])
    assert v1["run_uri"] == backend.uri("v1_failure", trial)
    assert (v1["error_type"], v1["message"]) == ("ValueError", "v1 boom at epoch 2")
    assert v1["last_checkpoint_uri"] == backend.uri("v1_failure", trial, "checkpoint_000002")

    # The cursor goes round as a string; the next ticks (and a rebuilt sensor, as after a
    # daemon restart) send nothing again.
    cursor = json.loads(json.dumps(first.cursor))
    second = tick(sensor, instance, cursor, resources)
    rebuilt = trd.build_failed_run_sensor("failed_runs", storage_path=backend.storage_path, **backend.keys)
    third = tick(rebuilt, instance, second.cursor, resources)
    assert len(receiver.requests) == 3
    assert third.skip_message.startswith("no new failed runs")
    # On S3 the sensor holds the S3Resource's credentials: none reach alerts or the cursor.
    assert all(SECRET_KEY not in r.body.decode() for r in receiver.requests)
    assert SECRET_KEY not in first.cursor


def test_new_failures_are_found_incrementally(backend, receiver, instance, v2_runs):
    sensor = trd.build_failed_run_sensor("failed_runs", storage_path=backend.storage_path, **backend.keys,
                                         include_v1=False)
    resources = backend.resources(trd.WebhookAlertSink(url=receiver.url))
    cursor = tick(sensor, instance, None, resources).cursor
    assert len(receiver.requests) == 2

    before = backend.requests()
    idle = tick(sensor, instance, cursor, resources)
    if before is not None:  # on S3 an idle tick is one LIST of the journal, whatever is stored
        assert backend.requests() - before == 1

    new_uri = add_failed_run(backend, v2_runs, f"late-{uuid.uuid4().hex[:6]}")
    backend.put_dir(v2_runs["success"], "another-success")
    result = tick(sensor, instance, idle.cursor, resources)
    assert [r.json["run_uri"] for r in receiver.requests[2:]] == [new_uri]
    assert "1 failed run(s) found" in result.skip_message


def test_job_requests_one_retraining_run_per_failed_run(backend, receiver, instance, v2_runs):
    @dg.asset
    def model() -> None: ...

    retrain = dg.define_asset_job("retrain", selection=[model])
    sensor = trd.build_failed_run_sensor("failed_runs", storage_path=backend.storage_path, **backend.keys, job=retrain)
    resources = backend.resources(trd.WebhookAlertSink(url=receiver.url))
    first = tick(sensor, instance, None, resources)
    keys = sorted(r.run_key for r in first.run_requests)
    assert keys == sorted(r.json["run_uri"] for r in receiver.requests)
    request = next(r for r in first.run_requests if r.run_key == backend.uri("failure"))
    assert request.tags["trainresults/run_uri"] == backend.uri("failure")
    assert request.tags["trainresults/error_type"] == "WorkerGroupError"
    assert not tick(sensor, instance, first.cursor, resources).run_requests
    # Definitions load with the job and the sink wired, as a user would write them.
    dg.Definitions(assets=[model], jobs=[retrain], sensors=[sensor], resources=resources)


def test_unreadable_run_is_retried_and_reported(backend, receiver, instance, v2_runs, tmp_path):
    sensor = trd.build_failed_run_sensor("failed_runs", storage_path=backend.storage_path, **backend.keys,
                                         include_v1=False)
    resources = backend.resources(trd.WebhookAlertSink(url=receiver.url))
    cursor = tick(sensor, instance, None, resources).cursor

    torn = tmp_path / "torn"
    shutil.copytree(v2_runs["failure"], torn)
    (torn / "trainresults_run.json").write_text('{"schema": "trainresults.run/1", "rep')
    name = f"torn-{uuid.uuid4().hex[:6]}"
    add_failed_run(backend, {"failure": str(torn)}, name)
    result = tick(sensor, instance, cursor, resources)  # must not raise
    assert "problem" in result.skip_message
    assert name not in by_run(receiver.requests)
    pending = json.loads(result.cursor)["pending"]
    (key,) = [k for k in pending if k.endswith(f"-{name}.json")]
    assert pending[key]["reads"] == 1 and "CorruptRunError" in pending[key]["error"]

    # The writer finishes the file (an old-format record, next to the new one): the next
    # tick alerts, once.
    whole = read_record(*storage.resolve(v2_runs["failure"]))
    (torn / "trainresults_run.json").write_text(json.dumps(whole.to_dict()))
    backend.put_file(f"{name}/trainresults_run.json", (torn / "trainresults_run.json").read_bytes())
    cursor = tick(sensor, instance, result.cursor, resources).cursor
    cursor = tick(sensor, instance, cursor, resources).cursor
    assert [r.json["run_name"] for r in receiver.requests].count(name) == 1
    assert by_run(receiver.requests)[name]["worker_failures"]["0"].startswith("ValueError")


def test_undeliverable_alert_is_resent_next_tick(backend, instance):
    sensor = trd.build_failed_run_sensor("failed_runs", storage_path=backend.storage_path, **backend.keys,
                                         include_v1=False)
    down = AlertReceiver(statuses=[503] * 2)
    try:
        sink = trd.WebhookAlertSink(url=down.url, retries=0)
        first = tick(sensor, instance, None, backend.resources(sink))  # the sink fails: no crash
        assert "problem" in first.skip_message
        assert len(down.requests) == 2
        second = tick(sensor, instance, first.cursor, backend.resources(sink))
        third = tick(sensor, instance, second.cursor, backend.resources(sink))
    finally:
        down.stop()
    delivered = down.requests[2:]
    assert len(delivered) == 2 and third.skip_message.startswith("no new failed runs")
    assert {r.headers["X-Alert-ID"] for r in delivered} == {r.headers["X-Alert-ID"] for r in down.requests[:2]}


def test_late_journal_entry_inside_the_overlap_window_is_found(backend, receiver, instance, v2_runs):
    sensor = trd.build_failed_run_sensor("failed_runs", storage_path=backend.storage_path, **backend.keys,
                                         include_v1=False, overlap_seconds=600)
    resources = backend.resources(trd.WebhookAlertSink(url=receiver.url))
    add_failed_run(backend, v2_runs, "newest")
    cursor = tick(sensor, instance, None, resources).cursor
    # Another controller's clock is 2 minutes behind: its entry sorts before "newest".
    late = add_failed_run(backend, v2_runs, "skewed", when=time.time() - 120)
    tick(sensor, instance, cursor, resources)
    assert [r.json["run_uri"] for r in receiver.requests[3:]] == [late]


def test_new_v1_failure_is_found_and_only_it_is_read(backend, receiver, instance, v1_runs):
    sensor = trd.build_failed_run_sensor("failed_runs", storage_path=backend.storage_path, **backend.keys)
    resources = backend.resources(trd.WebhookAlertSink(url=receiver.url))
    cursor = tick(sensor, instance, None, resources).cursor
    backend.put_dir(os.path.dirname(v1_runs["v1_failure"]), "v1_again")
    if isinstance(backend, CloudBackend):
        fs = backend.fs
    else:
        fs, _ = storage.filesystem_for(backend.storage_path, s3_settings(resources.get("s3")))
    client = resources["s3"].get_client() if "s3" in resources else None
    # New V1 experiments are looked for every v1_rescan_seconds (default 5 minutes).
    not_due = scan_failed_runs(backend.storage_path, cursor, filesystem=fs, s3_client=client)
    assert not not_due.found and not_due.stats["v1_folders_opened"] == 0
    outcome = scan_failed_runs(backend.storage_path, cursor, filesystem=fs, s3_client=client,
                               v1_rescan_seconds=0)
    assert [f.alert["run_name"] for f in outcome.found] == ["v1_again"]
    assert outcome.stats["runs_read"] == 1


def test_bad_configuration_and_cursor_fail_clearly(tmp_path, instance):
    with pytest.raises(ValueError, match="storage_path"):
        trd.build_failed_run_sensor("s", storage_path="")
    with pytest.raises(ValueError, match="alert_sink_key, a job, or both"):
        trd.build_failed_run_sensor("s", storage_path=str(tmp_path), alert_sink_key=None)
    sensor = trd.build_failed_run_sensor("s", storage_path=str(tmp_path))
    sink = trd.WebhookAlertSink(url="http://127.0.0.1:9/never")
    with pytest.raises(Exception, match="clear the cursor"):
        tick(sensor, instance, "not-json", {"alert_sink": sink})
    # An empty or missing storage path is simply quiet.
    assert tick(sensor, instance, None, {"alert_sink": sink}).skip_message == "no new failed runs"


def test_scan_reads_at_most_max_runs_and_gives_up_reading_with_what_it_knows(v2_runs, tmp_path):
    backend = LocalBackend(tmp_path / "storage")
    for name in ("a", "b"):
        add_failed_run(backend, v2_runs, name)
    when = time.time()
    entry = {"run_name": "gone", "error_type": "PreemptionError", "message": "node lost",
             "time": when}
    backend.put_file(f"{JOURNAL_DIR}/{journal_key(when, 'gone')}", json.dumps(entry).encode())

    first = scan_failed_runs(backend.storage_path, max_runs=1, max_read_attempts=2)
    second = scan_failed_runs(backend.storage_path, first.cursor, max_runs=1, max_read_attempts=2)
    assert [f.alert["run_name"] for f in first.found + second.found] == ["a", "b"]
    third = scan_failed_runs(backend.storage_path, second.cursor, max_read_attempts=2)
    assert not third.found and "attempt 1/2" in third.problems[0]  # the run folder is missing
    fourth = scan_failed_runs(backend.storage_path, third.cursor, max_read_attempts=2)
    (gone,) = fourth.found
    assert gone.alert["error_type"] == "PreemptionError" and gone.alert["message"] == "node lost"
    assert "RunNotFoundError" in gone.alert["context_error"]
    assert json.loads(fourth.cursor)["pending"] == {}
    assert not scan_failed_runs(backend.storage_path, fourth.cursor).found


class FileAlertSink(dg.ConfigurableResource):
    """A sink of the user's own: any resource with send(alert) works (Slack, PagerDuty...)."""

    path: str

    def send(self, alert: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(alert) + "\n")


def test_any_resource_with_send_is_a_sink(seed, tmp_path, instance):
    root = tmp_path / "storage"
    shutil.copytree(seed, root)
    out = tmp_path / "alerts.jsonl"
    sensor = trd.build_failed_run_sensor("failed_runs", storage_path=str(root),
                                         alert_sink_key="pager")
    tick(sensor, instance, None, {"pager": FileAlertSink(path=str(out))})
    alerts = [json.loads(line) for line in out.read_text().splitlines()]
    assert {a["run_name"] for a in alerts} == EXPECTED_FAILED
    with pytest.raises(Exception, match="expected the resource 'pager' to be an alert sink"):
        tick(sensor, instance, None, {"pager": dg.ResourceDefinition.hardcoded_resource(42)})
