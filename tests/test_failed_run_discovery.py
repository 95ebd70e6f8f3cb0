"""Failed runs the failure journal does not list (its write failed, ``journal=False``, run
folders synced in from elsewhere, nested ``RunConfig.name``) are found from the run folders'
own records, on local disk, on the moto S3 server and on GCS and Azure (emulators); one
failure gives one alert whichever
source sees it first. Real Ray runs (the session fixtures), a real ``DagsterInstance``, a
real HTTP receiver."""

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

import trainresults_dagster as trd
import trainresults_dagster.storage as storage
from trainresults_dagster.alerts.alert import alert_id
from trainresults_dagster.alerts.scan import scan_failed_runs
from trainresults_dagster.runs.record import JOURNAL_DIR, journal_key, read_record


class Local:
    name = "local"
    keys: dict[str, str] = {}

    def __init__(self, root: Path) -> None:
        self.root = root
        self.storage_path = str(root)
        root.mkdir(parents=True, exist_ok=True)

    def put_dir(self, src: str, rel: str) -> None:
        shutil.copytree(src, self.root / rel)

    def put_file(self, rel: str, data: bytes) -> None:
        (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (self.root / rel).write_bytes(data)

    def resources(self, sink: Any) -> dict[str, Any]:
        return {"alert_sink": sink}

    def scan_args(self) -> dict[str, Any]:
        return {}


class S3:
    name = "s3"
    keys = {"s3_key": "s3"}

    def __init__(self, moto: Any) -> None:
        self.moto = moto
        self.bucket = moto.new_bucket("disc")
        self.storage_path = f"s3://{self.bucket}/storage"

    def put_dir(self, src: str, rel: str) -> None:
        self.moto.upload_dir(src, self.bucket, f"storage/{rel}")

    def put_file(self, rel: str, data: bytes) -> None:
        self.moto.client().put_object(Bucket=self.bucket, Key=f"storage/{rel}", Body=data)

    def resources(self, sink: Any) -> dict[str, Any]:
        return {"alert_sink": sink, "s3": self.moto.s3_resource()}

    def scan_args(self) -> dict[str, Any]:
        return {"filesystem": self.moto.filesystem(), "s3_client": self.moto.client()}


class Cloud:
    """GCS or Azure through its emulator, its resource under key ``store``."""

    def __init__(self, name: str, emulator: Any) -> None:
        self.name, self.emulator = name, emulator
        self.keys = {"gcs_key" if name == "gcs" else "azure_key": "store"}
        self.container = (emulator.new_bucket("disc") if name == "gcs"
                          else emulator.new_container("disc"))
        self.fs = emulator.filesystem()
        self.storage_path = f"{'gs' if name == 'gcs' else 'abfs'}://{self.container}/storage"

    def put_dir(self, src: str, rel: str) -> None:
        self.emulator.upload_dir(src, self.container, f"storage/{rel}")

    def put_file(self, rel: str, data: bytes) -> None:
        storage.write_bytes_atomic(self.fs, f"{self.container}/storage/{rel}", data)

    def resources(self, sink: Any) -> dict[str, Any]:
        return {"alert_sink": sink, "store": self.emulator.resource()}

    def scan_args(self) -> dict[str, Any]:
        return {"filesystem": self.fs}


@pytest.fixture(params=["local", "s3", "gcs", "azure"])
def backend(request, tmp_path):
    if request.param == "local":
        return Local(tmp_path / "storage")
    if request.param == "gcs":
        return Cloud("gcs", request.getfixturevalue("gcs_emulator"))
    if request.param == "azure":
        return Cloud("azure", request.getfixturevalue("azurite"))
    return S3(request.getfixturevalue("moto"))


@pytest.fixture
def receiver():
    rx = AlertReceiver()
    yield rx
    rx.stop()


def tick(sensor: dg.SensorDefinition, instance: Any, cursor: str | None, resources: dict) -> Any:
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        return sensor.evaluate_tick(context)


def as_format_1(run_dir: Path) -> Path:
    """Rewrite a run's RunRecorder record in the first format (one ``trainresults_run.json``),
    as runs recorded before the append-only format have it."""
    import shutil

    from trainresults_dagster.runs.record import RECORD_DIR, RECORD_FILE

    record = read_record(storage.resolve(str(run_dir))[0], str(run_dir))
    assert record is not None
    (run_dir / RECORD_FILE).write_text(json.dumps(record.to_dict()))
    shutil.rmtree(run_dir / RECORD_DIR, ignore_errors=True)
    return run_dir / RECORD_FILE


def failure_time(run_dir: str) -> float:
    record = read_record(storage.resolve(run_dir)[0], run_dir)
    assert record is not None and record.error is not None and record.error.time is not None
    return record.error.time


def test_unjournaled_failure_with_a_nested_name_is_alerted_once(backend, receiver, v2_runs):
    """``RunRecorder(journal=False)``, or a journal write that failed: only the record says so."""
    backend.put_dir(v2_runs["failure"], "team-a/exp1")  # RunConfig.name="team-a/exp1"
    backend.put_dir(v2_runs["success"], "team-a/fine")
    backend.put_dir(v2_runs["failure_plain"], "no-recorder")  # no record: cannot be known
    sensor = trd.build_failed_run_sensor("discovery", storage_path=backend.storage_path,
                                         **backend.keys, include_v1=False)
    resources = backend.resources(trd.WebhookAlertSink(url=receiver.url))
    with dg.instance_for_test() as instance:
        first = tick(sensor, instance, None, resources)
        (request,) = receiver.requests
        alert = request.json
        run_uri = f"{backend.storage_path}/team-a/exp1"
        assert (alert["run_uri"], alert["run_name"], alert["found_by"]) == (
            run_uri, "team-a/exp1", "run_record")
        expected = trd.TrainResult.from_path(v2_runs["failure"])
        assert alert["worker_failures"] == {
            str(k): v for k, v in sorted(expected.error.worker_failures.items())
        }
        assert alert["last_metrics"] == expected.metrics
        # The id the journal entry RunRecorder would have written gives.
        when = failure_time(v2_runs["failure"])
        assert alert["alert_id"] == alert_id("ray_run_failed", run_uri,
                                             journal_key(when, "team-a/exp1"))

        # The journal entry shows up late (e.g. synced after the folder): no second alert.
        entry = {"run_name": "team-a/exp1", "run_uri": run_uri, "error_type": "WorkerGroupError",
                 "message": "late", "time": when}
        backend.put_file(f"{JOURNAL_DIR}/{journal_key(when, 'team-a/exp1')}",
                         json.dumps(entry).encode())
        second = tick(sensor, instance, first.cursor, resources)
        third = tick(sensor, instance, second.cursor, resources)
    assert len(receiver.requests) == 1
    assert third.skip_message.startswith("no new failed runs")


def test_journaled_nested_name_is_alerted_by_the_journal_only(backend, receiver, v2_runs):
    when = time.time()
    backend.put_dir(v2_runs["failure"], "team-b/exp2")
    entry = {"run_name": "team-b/exp2", "error_type": "WorkerGroupError", "message": "boom",
             "time": when}
    backend.put_file(f"{JOURNAL_DIR}/{journal_key(when, 'team-b/exp2')}", json.dumps(entry).encode())
    outcome = scan_failed_runs(backend.storage_path, include_v1=False, **backend.scan_args())
    (found,) = outcome.found
    assert found.alert["run_uri"] == f"{backend.storage_path}/team-b/exp2"
    assert found.alert["journal_key"] == journal_key(when, "team-b/exp2")
    assert outcome.stats["records_read"] == 1  # read, and left to the journal


def test_only_changed_records_are_read_and_the_pass_is_spaced(backend, v2_runs):
    for name in ("a", "b", "c"):
        backend.put_dir(v2_runs["success"], f"ok/{name}")
    args = backend.scan_args()
    first = scan_failed_runs(backend.storage_path, include_v1=False, **args)
    assert first.stats["run_folders_found"] == 3 and first.stats["records_read"] == 3
    idle = scan_failed_runs(backend.storage_path, first.cursor, include_v1=False,
                            records_rescan_seconds=0, **args)
    assert idle.stats["records_read"] == 0 and not idle.found

    backend.put_dir(v2_runs["failure"], f"synced-{uuid.uuid4().hex[:6]}")
    # Not due yet: the discovery pass runs every records_rescan_seconds (default 300 s).
    not_due = scan_failed_runs(backend.storage_path, idle.cursor, include_v1=False, **args)
    assert not not_due.found and not_due.stats["run_folders_found"] == 0
    due = scan_failed_runs(backend.storage_path, not_due.cursor, include_v1=False,
                           records_rescan_seconds=0, **args)
    assert [f.alert["found_by"] for f in due.found] == ["run_record"]
    assert due.stats["records_read"] == 1


def test_a_copy_that_keeps_old_times_is_still_found(tmp_path, v2_runs):
    """rsync -a / cp -p keep the source's mtimes; the record's ctime still moves."""
    root = Local(tmp_path / "storage")
    root.put_dir(v2_runs["success"], "ok")
    cursor = scan_failed_runs(root.storage_path, include_v1=False).cursor
    root.put_dir(v2_runs["failure"], "old/copied")
    day_ago = time.time() - 86400
    for path in sorted((root.root / "old/copied").rglob("*"), reverse=True):
        os.utime(path, (day_ago, day_ago))
    os.utime(root.root / "old/copied", (day_ago, day_ago))
    outcome = scan_failed_runs(root.storage_path, cursor, include_v1=False,
                               records_rescan_seconds=0)
    assert [f.alert["run_name"] for f in outcome.found] == ["old/copied"]


def test_torn_record_is_retried_then_alerted(tmp_path, v2_runs):
    root = Local(tmp_path / "storage")
    root.put_dir(v2_runs["failure"], "torn")
    as_format_1(root.root / "torn")  # format 2 drops a torn last line by design
    good = (root.root / "torn/trainresults_run.json").read_bytes()
    (root.root / "torn/trainresults_run.json").write_bytes(good[: len(good) // 2])
    first = scan_failed_runs(root.storage_path, include_v1=False)
    assert not first.found and "attempt 1/" in " ".join(first.problems)
    (root.root / "torn/trainresults_run.json").write_bytes(good)
    second = scan_failed_runs(root.storage_path, first.cursor, include_v1=False)
    assert [f.alert["run_name"] for f in second.found] == ["torn"]
    assert json.loads(second.cursor)["pending"] == {}
    assert not scan_failed_runs(root.storage_path, second.cursor, include_v1=False,
                                records_rescan_seconds=0).found


def test_run_folders_inside_hidden_or_journal_folders_and_past_the_depth_are_ignored(tmp_path, v2_runs):
    root = Local(tmp_path / "storage")
    root.put_dir(v2_runs["failure"], ".hidden/run")
    root.put_dir(v2_runs["failure"], f"{JOURNAL_DIR}/run")
    root.put_dir(v2_runs["failure"], "/".join(["d"] * 9) + "/run")
    root.put_dir(v2_runs["failure"], "/".join(["d"] * 7) + "/run")  # depth 8: found
    outcome = scan_failed_runs(root.storage_path, include_v1=False)
    assert [f.alert["run_name"] for f in outcome.found] == ["/".join(["d"] * 7) + "/run"]


def test_include_records_false_turns_the_pass_off(tmp_path, v2_runs):
    root = Local(tmp_path / "storage")
    root.put_dir(v2_runs["failure"], "unjournaled")
    assert not scan_failed_runs(root.storage_path, include_v1=False, include_records=False).found
