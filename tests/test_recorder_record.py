"""The append-only run record: flush policy, constant cost, torn lines, the old format, S3
PUTs (moto server over HTTP), storage errors, and the recorder's hooks driven directly
(no Ray cluster; ``test_recorder_runs.py`` has the real runs)."""

from __future__ import annotations

import json
import os
import threading
import time
import types
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest

import trainresults_dagster as trd
import trainresults_dagster.storage as storage
from trainresults_dagster.errors import CorruptRunError
from trainresults_dagster.runs.failure import TrainingError
from trainresults_dagster.runs.record import (
    RECORD_DIR,
    RECORD_FILE,
    RunRecord,
    parse_lines,
    read_record,
    segment_name,
    writer_name,
)
from trainresults_dagster.runs.record_writer import FlushPolicy, RecordWriter


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _writer(fs: pafs.FileSystem, run: str, policy: FlushPolicy, clock: Clock | None = None,
            token: str = "w1") -> RecordWriter:
    clock = clock or Clock()
    writer = RecordWriter(fs, run, writer_name(clock(), token), policy, clock=clock)
    writer.write({"event": "start", "schema": "trainresults.record/2", "time": clock(),
                  "run_name": "run", "run_uri": run, "flush": policy.to_dict()}, durable=True)
    return writer


def _segments(run: Path) -> list[str]:
    return sorted(os.listdir(run / RECORD_DIR))


# ------------------------------------------------------------------------------ policy


def test_flush_policy_by_count_time_and_heartbeat(tmp_path):
    fs, run = storage.resolve(tmp_path / "run")
    clock = Clock()
    writer = _writer(fs, run, FlushPolicy(every_reports=10, every_seconds=5, heartbeat_seconds=30), clock)
    assert writer.stats["writes"] == 1  # the start line, at once
    for i in range(25):
        writer.report({"step": i}, None)
    assert writer.stats["writes"] == 3  # 10, 20; 5 still buffered
    assert len(read_record(fs, run).reports) == 20
    clock.now += 4.9
    writer.tick()
    assert writer.stats["writes"] == 3
    clock.now += 0.2
    writer.tick()  # the oldest buffered report is 5 s old
    assert writer.stats["writes"] == 4 and len(read_record(fs, run).reports) == 25
    clock.now += 29
    writer.tick()
    assert writer.stats["writes"] == 4
    clock.now += 2
    writer.tick()  # 30 s of silence: a heartbeat line
    record = read_record(fs, run)
    assert writer.stats["writes"] == 5 and record.updated_at == clock.now
    assert record.status == "running" and record.status_at(clock.now) == "running"
    # A reader that hears nothing for 3 heartbeats + 60 s calls the run unknown.
    assert record.status_at(clock.now + 3 * 30 + 61) == "unknown"
    writer.write({"event": "status", "time": clock.now, "status": "finished"}, durable=True)
    assert read_record(fs, run).status_at(clock.now + 10**6) == "finished"


def test_flush_policy_validated_at_construction(monkeypatch):
    from trainresults_dagster.ray import RunRecorder

    with pytest.raises(ValueError, match="every_reports to be an int >= 1, got 0"):
        FlushPolicy(every_reports=0)
    with pytest.raises(ValueError, match="every_seconds to be a number > 0"):
        RunRecorder(flush_every_seconds=-1)
    monkeypatch.setenv("TRAINRESULTS_RECORD_FLUSH_REPORTS", "lots")
    with pytest.raises(ValueError, match="TRAINRESULTS_RECORD_FLUSH_REPORTS to be a int, got 'lots'"):
        RunRecorder()
    monkeypatch.setenv("TRAINRESULTS_RECORD_FLUSH_REPORTS", "7")
    assert RunRecorder().policy.every_reports == 7  # how a zero-code attach sets the policy
    assert RunRecorder(flush_every_reports=3).policy.every_reports == 3


def test_bytes_written_are_the_record_once_locally(tmp_path):
    fs, run = storage.resolve(tmp_path / "run")
    writer = _writer(fs, run, FlushPolicy(every_reports=100))
    for i in range(5000):
        writer.report({"step": i, "loss": 1 / (i + 1)}, None)
    writer.close()
    size = sum(os.path.getsize(tmp_path / "run" / RECORD_DIR / n) for n in _segments(tmp_path / "run"))
    assert writer.stats["bytes"] == size  # appends only: every byte written once
    assert writer.stats["writes"] == 51
    assert len(read_record(fs, run).reports) == 5000


# ------------------------------------------------------------------------------ reading


def test_torn_last_line_is_dropped_and_a_torn_middle_line_is_an_error(tmp_path):
    fs, run = storage.resolve(tmp_path / "run")
    writer = _writer(fs, run, FlushPolicy(every_reports=1))
    for i in range(3):
        writer.report({"step": i}, None)
    path = tmp_path / "run" / RECORD_DIR / _segments(tmp_path / "run")[0]
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"event":"report","metrics":{"st')  # an append caught half-way
    record = read_record(fs, run)
    assert [r["metrics"]["step"] for r in record.reports] == [0, 1, 2] and record.torn_lines == 1
    result = trd.TrainResult.from_path(tmp_path / "run")
    assert result.metrics_dataframe["step"].tolist() == [0, 1, 2]
    lines = whole.split(b"\n")
    lines[2] = lines[2][:10]
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(CorruptRunError, match="line 3 of .* only the last line"):
        read_record(fs, run)
    assert parse_lines(b'{"a": 1}', where="x") == ([{"a": 1}], 0)  # complete, newline not yet


def test_concurrent_reader_never_fails_while_the_writer_appends(tmp_path):
    fs, run = storage.resolve(tmp_path / "run")
    writer = _writer(fs, run, FlushPolicy(every_reports=1))
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            writer.report({"step": i, "pad": "x" * 3000}, None)  # lines > a pipe buffer
            i += 1

    thread = threading.Thread(target=write)
    thread.start()
    seen, errors = [], []
    deadline = time.time() + 1.0
    while time.time() < deadline:
        try:
            steps = [r["metrics"]["step"] for r in read_record(fs, run).reports]
            seen.append(len(steps))
            assert steps == list(range(len(steps)))
        except Exception as exc:  # noqa: BLE001 - any failure is the bug we look for
            errors.append(exc)
    stop.set()
    thread.join()
    assert errors == [] and len(seen) > 10 and seen == sorted(seen) and seen[-1] > 0


def test_old_format_still_reads_and_a_resumed_run_reads_as_one_record(copy_run):
    run = Path(copy_run("failure"))
    fs, path = storage.resolve(run)
    new = read_record(fs, path)
    assert new is not None and new.format == 2
    # The same run as the previous version wrote it: trainresults_run.json only.
    old = RunRecord(run_name="failure", run_uri=str(run), status="failed",
                    reports=new.reports, failures=new.failures,
                    checkpoint_config=new.checkpoint_config, updated_at=new.updated_at)
    (run / RECORD_FILE).write_text(json.dumps(old.to_dict()))
    fresh = run.parent / "old-format"
    fresh.mkdir()
    for name in os.listdir(run):
        if name != RECORD_DIR:
            os.rename(run / name, fresh / name)
    result = trd.TrainResult.from_path(fresh)
    assert result.record.format == 1 and result.status == "failed"
    assert result.error == new.failures[-1] and len(result.history) == len(new.reports)
    assert result.record_summary()["format"] == 1
    # ... then resumed under the same name by the new recorder: one record, old part first.
    (fresh / RECORD_DIR).mkdir()
    fs2, path2 = storage.resolve(fresh)
    writer = _writer(fs2, path2, FlushPolicy(), token="resumed")
    writer.report({"epoch": 99}, None)
    writer.write({"event": "status", "time": time.time(), "status": "finished"}, durable=True)
    both = trd.TrainResult.from_path(fresh)
    assert both.record.format == 2 and both.status == "finished" and both.error is None
    assert [h["metrics"].get("epoch") for h in both.history][-1] == 99
    assert len(both.history) == len(new.reports) + 1
    assert len(both.record.failures) == len(new.failures)  # the old failure is history now


def test_old_format_torn_file_is_still_a_clear_error(copy_run):
    run = Path(copy_run("success"))
    (run / RECORD_FILE).write_text('{"schema": "trainresults.run/1", "reports": [')
    with pytest.raises(trd.CorruptRunError, match="trainresults_run.json"):
        trd.TrainResult.from_path(run)


def test_a_lost_tail_is_refilled_from_rays_snapshot(copy_run):
    """kill -9 can lose unflushed reports; the checkpoint reports among them are still in
    Ray's snapshot and come back, in order."""
    run = Path(copy_run("success"))
    full = trd.TrainResult.from_path(run)
    (segment,) = _segments(run)
    path = run / RECORD_DIR / segment
    lines = path.read_bytes().split(b"\n")
    keep = [ln for ln in lines if b'"event":"report"' not in ln][:1]  # the start line only
    keep += [ln for ln in lines if b'"event":"report"' in ln][:3]
    path.write_bytes(b"\n".join(keep) + b"\n")
    cut = trd.TrainResult.from_path(run)
    names = [h["checkpoint_dir_name"] for h in cut.history]
    assert len(cut.history) < len(full.history)
    survivors = {c.name for c in full.checkpoints}
    assert survivors <= set(names)  # every checkpoint the snapshot knows is in the history
    assert cut.record.status == "running"  # no final status: the run may still be going


# ------------------------------------------------------------------------------ S3


@pytest.fixture(scope="module")
def s3fs(moto):
    return moto.filesystem()


def _puts(moto: Any, bucket: str, before: int) -> list[str]:
    time.sleep(0.2)  # moto logs a request after answering it
    return [ln for ln in moto.request_log()[before:] if "PUT" in ln and f"/{bucket}/" in ln
            and RECORD_DIR in ln]


def test_s3_puts_are_bounded_by_the_policy_and_the_record_reads_in_one_get(moto, s3fs):
    bucket = moto.new_bucket("rec")
    policy = FlushPolicy(every_reports=250, every_seconds=3600, heartbeat_seconds=3600)
    before = len(moto.request_log())
    started = time.time()
    writer = _writer(s3fs, f"{bucket}/run", policy)
    n = 2000
    for i in range(n):
        writer.report({"step": i, "loss": 1 / (i + 1)}, None)
    writer.write({"event": "status", "time": time.time(), "status": "finished"}, durable=True)
    writer.close()
    puts = _puts(moto, bucket, before)
    bound = policy.max_writes(n, time.time() - started, events=3)  # start, status, compacted
    assert len(puts) == writer.stats["writes"] <= bound
    assert len(puts) == 1 + n // 250 + 1 + 1
    names = [o["Key"] for o in moto.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(name.endswith(".all.jsonl") for name in names)
    before = len(moto.request_log())
    record = read_record(s3fs, f"{bucket}/run")
    time.sleep(0.2)
    gets = [ln for ln in moto.request_log()[before:] if "GET" in ln and ".jsonl" in ln]
    assert record.segments_read == 1 and len(gets) == 1
    assert [r["metrics"]["step"] for r in record.reports] == list(range(n))
    assert record.status == "finished"
    # Bytes written: every segment once plus the compacted copy = 2x the record.
    compacted = [o["Size"] for o in moto.client().list_objects_v2(Bucket=bucket)["Contents"]
                 if o["Key"].endswith(".all.jsonl")][0]
    assert writer.stats["bytes"] == 2 * compacted


def test_s3_live_run_reads_every_segment(moto, s3fs):
    bucket = moto.new_bucket("live")
    writer = _writer(s3fs, f"{bucket}/run", FlushPolicy(every_reports=10))
    for i in range(95):
        writer.report({"step": i}, None)
    record = read_record(s3fs, f"{bucket}/run")  # not closed: segments only
    assert len(record.reports) == 90 and record.segments_read == 10 and record.status == "running"


def test_storage_errors_are_logged_kept_and_written_later(moto, s3fs, caplog):
    """The bucket does not exist yet: nothing raises, lines wait; once it exists they land."""
    bucket = f"later-{os.getpid()}-{int(time.time())}"
    clock = Clock()
    writer = _writer(s3fs, f"{bucket}/run", FlushPolicy(every_reports=5), clock)
    for i in range(40):
        writer.report({"step": i}, None)
    # The start line failed; the reports then wait out the backoff instead of one failing
    # request per report.
    assert writer.stats["errors"] == 1 and writer.stats["writes"] == 0
    assert "kept for the next flush" in caplog.text
    clock.now += 1.5
    writer.report({"step": 40}, None)
    assert writer.stats["errors"] == 2  # one more try after the backoff, still no bucket
    moto.client().create_bucket(Bucket=bucket)
    clock.now += 2.5
    writer.report({"step": 41}, None)
    record = read_record(s3fs, f"{bucket}/run")
    assert writer.stats["writes"] == 1 and [r["metrics"]["step"] for r in record.reports] == list(range(42))


def test_reports_dropped_under_a_long_outage_leave_a_gap_not_a_shift(tmp_path, monkeypatch):
    import trainresults_dagster.runs.record_writer as rw

    monkeypatch.setattr(rw, "MAX_PENDING_BYTES", 2000)
    fs = pafs.LocalFileSystem()
    run = str(tmp_path / "run")
    writer = _writer(fs, run, FlushPolicy(every_reports=1000))
    (tmp_path / "run" / RECORD_DIR / _segments(tmp_path / "run")[0]).unlink()
    os.rmdir(tmp_path / "run" / RECORD_DIR)
    (tmp_path / "run" / RECORD_DIR).write_text("not a folder")  # every append fails
    writer._fd = None
    for i in range(100):
        writer.report({"step": i, "pad": "x" * 50}, None)
    writer.write({"event": "failure", "time": 0.0, "failure": TrainingError("E", "m").to_dict()},
                 durable=True)
    assert writer.stats["dropped_reports"] > 0
    (tmp_path / "run" / RECORD_DIR).unlink()
    writer.report({"step": 100}, None)
    writer.flush()
    record = read_record(fs, run)
    assert record.reports[-1]["metrics"]["step"] == 100
    assert record.reports[-1]["report_index"] == 100  # indices stay Ray's despite the gap
    assert [f.error_type for f in record.failures] == ["E"]


# ------------------------------------------------------------------------------ hooks


def _context(tmp_path: Path, name: str = "run", **run_config: Any) -> Any:
    from ray.train import RunConfig

    return types.SimpleNamespace(run_id=f"ctl{name}", run_config=RunConfig(
        name=name, storage_path=str(tmp_path), **run_config))


def _report(metrics: dict[str, Any], checkpoint: Any = None) -> Any:
    return types.SimpleNamespace(checkpoint=checkpoint, metrics=metrics)


def test_hooks_record_reports_checkpoint_names_and_finish(tmp_path):
    from ray.train.v2._internal.execution.controller.state import (
        FinishedState,
        RunningState,
        ShuttingDownState,
    )

    from trainresults_dagster.ray import RunRecorder

    recorder = RunRecorder(flush_every_reports=2)
    ctx = _context(tmp_path)
    recorder.after_controller_start(ctx)
    run = f"{tmp_path}/run"
    recorder.after_report(_report({}), [{"step": 0, "rank": 0}, {"step": 0, "rank": 1}])
    nested = types.SimpleNamespace(path=f"{run}/ckpts/epoch-1")
    recorder.after_report(_report({}, nested), [{"step": 1, "rank": 0}, {"step": 1, "rank": 1}])
    recorder.after_controller_state_update(RunningState(), ShuttingDownState(next_state=FinishedState()))
    recorder.after_controller_state_update(ShuttingDownState(next_state=FinishedState()), FinishedState())
    record = read_record(pafs.LocalFileSystem(), run)
    assert [r["metrics"] for r in record.reports] == [{"step": 0, "rank": 0}, {"step": 1, "rank": 0}]
    assert record.reports[1]["checkpoint_dir_name"] == "ckpts/epoch-1"  # nested names survive
    assert record.status == "finished" and record.controller_id == "ctlrun"
    recorder.after_controller_finish(types.SimpleNamespace(error=None))
    assert read_record(pafs.LocalFileSystem(), run).status == "finished"  # once, not twice
    assert sum(b'"status"' in ln for ln in (tmp_path / "run" / RECORD_DIR).joinpath(
        _segments(tmp_path / "run")[0]).read_bytes().split(b"\n")) == 1


def test_a_second_recorder_on_the_same_run_stays_idle(tmp_path):
    """RunConfig(callbacks=[RunRecorder()]) and RAY_TRAIN_CALLBACKS at once: one record."""
    from trainresults_dagster.ray import RunRecorder

    ctx = _context(tmp_path)
    first, second = RunRecorder(), RunRecorder()
    first.after_controller_start(ctx)
    second.after_controller_start(ctx)
    for recorder in (first, second):
        recorder.after_report(_report({}), [{"step": 0}])
    first.after_controller_finish(types.SimpleNamespace(error=None))
    second.after_controller_finish(types.SimpleNamespace(error=None))
    record = read_record(pafs.LocalFileSystem(), f"{tmp_path}/run")
    assert record.writers == 1 and len(record.reports) == 1 and second.writer is None


def test_hooks_never_raise(tmp_path, caplog):
    """Whatever goes wrong inside a hook is logged; Ray would fail the run on a raise."""
    from trainresults_dagster.ray import RunRecorder

    recorder = RunRecorder()
    recorder.after_report(_report({}), [{"step": 0}])  # before start: nothing to do
    recorder.after_controller_start(types.SimpleNamespace(run_id="x", run_config=None))
    assert "after_controller_start failed" in caplog.text
    recorder.after_controller_start(_context(tmp_path))
    recorder.after_report(_report({}, checkpoint=object()), [{"step": 0}])  # no .path: logged
    recorder.after_controller_state_update(None, object())
    recorder.after_controller_finish(object())
    assert "after_report failed" in caplog.text


def test_recorder_pickles_without_its_runtime_state(tmp_path):
    import pickle

    from trainresults_dagster.ray import RunRecorder

    recorder = RunRecorder(flush_every_reports=5, journal=False)
    recorder.after_controller_start(_context(tmp_path))
    copy = pickle.loads(pickle.dumps(recorder))
    assert copy.writer is None and copy.policy.every_reports == 5 and copy.journal is False


def test_segment_names_sort_by_writer_then_seq():
    a, b = writer_name(1.0, "ctl-1"), writer_name(2.0, "ctl0")
    names = [segment_name(b, 0), segment_name(a, 10), segment_name(a, 2), segment_name(a, 9, compacted=True)]
    from trainresults_dagster.runs.record import _plan

    assert _plan(names) == [(a, [segment_name(a, 9, compacted=True), segment_name(a, 10)]),
                            (b, [segment_name(b, 0)])]
