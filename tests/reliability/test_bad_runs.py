"""Bad-input catalogue for reading runs: each case gets a typed error naming the path and
what was expected, or a documented safe behaviour. Never a silent wrong answer."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import pytest

import trainresults_dagster as trd
from trainresults_dagster.runs import read as readers

SNAP = "checkpoint_manager_snapshot.json"


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(readers, "SNAPSHOT_PAUSE_SECONDS", 0.01)


def _snapshot(run: str) -> dict:
    with open(os.path.join(run, SNAP)) as fh:
        return json.load(fh)


def _write_snapshot(run: str, data) -> None:
    with open(os.path.join(run, SNAP), "w") as fh:
        fh.write(data if isinstance(data, str) else json.dumps(data))


@pytest.mark.parametrize(
    "content",
    ["", '{"ray_version": "2.60.0", "checkpoint_res', "\x00\x01garbage", "[1, 2, 3]"],
    ids=["empty", "truncated", "binary", "not-an-object"],
)
def test_torn_or_invalid_snapshot_names_the_file(copy_run, content):
    run = copy_run("success_plain")
    _write_snapshot(run, content)
    with pytest.raises(trd.CorruptRunError) as info:
        trd.TrainResult.from_path(run)
    assert os.path.join(run, SNAP) in str(info.value)


def test_non_utf8_snapshot(copy_run):
    run = copy_run("success_plain")
    with open(os.path.join(run, SNAP), "wb") as fh:
        fh.write(b"\xff\xfe{\x00")
    with pytest.raises(trd.CorruptRunError, match=SNAP):
        trd.TrainResult.from_path(run)


def test_snapshot_rewritten_in_place_while_reading_is_retried(copy_run):
    """Ray truncates then writes the snapshot; a reader that catches it empty retries."""
    run = copy_run("success_plain")
    good = json.dumps(_snapshot(run))
    _write_snapshot(run, "")

    def finish_write():
        time.sleep(0.03)
        _write_snapshot(run, good)

    t = threading.Thread(target=finish_write)
    t.start()
    result = trd.TrainResult.from_path(run)
    t.join()
    assert result.checkpoint is not None


def test_future_snapshot_fields_are_ignored(copy_run):
    run = copy_run("success_plain")
    snap = _snapshot(run)
    snap["ray_version"] = "9.99.0"
    snap["brand_new_field"] = {"x": 1}
    for entry in snap["checkpoint_results"]:
        entry["version"] = 7
        entry["another_new_field"] = True
    _write_snapshot(run, snap)
    result = trd.TrainResult.from_path(run)
    assert result.ray_version == "9.99.0" and len(result.best_checkpoints) == len(
        snap["checkpoint_results"]
    )


def test_deleted_checkpoint_folder(copy_run):
    run = copy_run("success_plain")
    victim = _snapshot(run)["checkpoint_results"][0]["checkpoint_dir_name"]
    shutil.rmtree(os.path.join(run, victim))
    with pytest.raises(trd.CheckpointMissingError) as info:
        trd.TrainResult.from_path(run)
    assert victim in str(info.value) and run in str(info.value)
    dropped = trd.TrainResult.from_path(run, missing_checkpoints="drop")
    assert dropped.missing_checkpoints == [victim]
    assert victim not in {c.name for c in dropped.checkpoints}


def test_stale_snapshot_is_re_read(copy_run):
    """Ray writes the new snapshot, then deletes evicted folders: a reader holding the old
    snapshot sees a missing folder; re-reading gives the new consistent state."""
    run = copy_run("success_plain")
    snap = _snapshot(run)
    stale = json.loads(json.dumps(snap))
    stale["checkpoint_results"].insert(
        0, {"version": 0, "checkpoint_dir_name": "checkpoint_evicted", "metrics": {"loss": 9}}
    )
    stale["checkpoint_report_indices"].insert(0, 0)
    _write_snapshot(run, stale)

    def ray_finishes():
        time.sleep(0.02)
        _write_snapshot(run, snap)

    t = threading.Thread(target=ray_finishes)
    t.start()
    result = trd.TrainResult.from_path(run)
    t.join()
    assert "checkpoint_evicted" not in {c.name for c in result.checkpoints}
    assert result.missing_checkpoints == []


# ("a/b" is legal: Ray writes nested checkpoint_dir_name values as nested folders.)
@pytest.mark.parametrize("bad", ["../../etc", "/etc/passwd", "a/../..", "a//b", "", "..", None, 5])
def test_unsafe_checkpoint_names_rejected(copy_run, bad):
    run = copy_run("success_plain")
    snap = _snapshot(run)
    snap["checkpoint_results"][0]["checkpoint_dir_name"] = bad
    _write_snapshot(run, snap)
    with pytest.raises(trd.UnsafePathError) as info:
        trd.TrainResult.from_path(run)
    assert repr(bad) in str(info.value)


def test_wrong_shapes_are_typed_errors(copy_run):
    run = copy_run("success_plain")
    snap = _snapshot(run)
    snap["checkpoint_results"][0]["metrics"] = "loss=1"
    _write_snapshot(run, snap)
    with pytest.raises(trd.CorruptRunError, match="metrics"):
        trd.TrainResult.from_path(run)
    snap["checkpoint_results"] = {"not": "a list"}
    _write_snapshot(run, snap)
    with pytest.raises(trd.CorruptRunError, match="checkpoint_results"):
        trd.TrainResult.from_path(run)


def test_not_a_run_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(trd.NotARunDirectoryError, match="checkpoint_manager_snapshot.json") as info:
        trd.TrainResult.from_path(tmp_path)
    assert "notes.txt" in str(info.value)


def test_run_directory_that_is_a_file(tmp_path):
    f = tmp_path / "run"
    f.write_text("{}")
    with pytest.raises(trd.NotARunDirectoryError, match="is a file"):
        trd.TrainResult.from_path(f)


def test_missing_run(tmp_path):
    with pytest.raises(trd.RunNotFoundError, match="nothing is there"):
        trd.TrainResult.from_path(tmp_path / "nope")


def test_s3_uri_without_bucket():
    with pytest.raises(ValueError, match="names no bucket"):
        trd.TrainResult.from_path("s3:///run")


def test_torn_old_format_record_is_a_clear_error(copy_run):
    run = copy_run("success")
    with open(os.path.join(run, "trainresults_run.json"), "w") as fh:
        fh.write('{"schema": "trainresults.run/1", "reports": [')
    with pytest.raises(trd.CorruptRunError, match="trainresults_run.json"):
        trd.TrainResult.from_path(run)


def test_unknown_record_schema(copy_run):
    run = copy_run("success")
    with open(os.path.join(run, "trainresults_run.json"), "w") as fh:
        json.dump({"schema": "something-else/3"}, fh)
    with pytest.raises(trd.CorruptRunError, match="schema"):
        trd.TrainResult.from_path(run)
    run = copy_run("success")
    folder = os.path.join(run, "trainresults_record")
    segment = sorted(os.listdir(folder))[0]
    with open(os.path.join(folder, segment), "r+b") as fh:
        data = fh.read().replace(b"trainresults.record/2", b"someone-else/9", 1)
        fh.seek(0)
        fh.write(data)
    with pytest.raises(trd.CorruptRunError, match="trainresults_record"):
        trd.TrainResult.from_path(run)


def test_v1_torn_last_line_is_dropped_not_fatal(v1_runs, tmp_path):
    exp = os.path.dirname(v1_runs["v1_success"])
    copy = tmp_path / "exp"
    shutil.copytree(exp, copy)
    trial = copy / os.path.basename(v1_runs["v1_success"])
    with open(trial / "result.json", "a") as fh:
        fh.write('{"epoch": 4, "loss": 0.')
    result = trd.TrainResult.from_path(trial)
    assert result.torn_tail and result.metrics["epoch"] == 3


def test_v1_torn_middle_line_is_an_error(v1_runs, tmp_path):
    exp = os.path.dirname(v1_runs["v1_success"])
    copy = tmp_path / "exp"
    shutil.copytree(exp, copy)
    trial = copy / os.path.basename(v1_runs["v1_success"])
    lines = (trial / "result.json").read_text().splitlines()
    lines[1] = lines[1][:10]
    (trial / "result.json").write_text("\n".join(lines) + "\n")
    with pytest.raises(trd.CorruptRunError, match="line 2"):
        trd.TrainResult.from_path(trial)
