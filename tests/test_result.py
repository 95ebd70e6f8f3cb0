"""TrainResult.from_path agrees with ray.train.Result.from_path on real runs, local and S3."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pyarrow.fs as pafs
import pytest
import ray_jobs

import trainresults_dagster as trd
from trainresults_dagster.dagster._wiring import s3_settings

V2_WITH_SNAPSHOT = ["success", "success_plain", "failure", "failure_plain", "nan_losses",
                    "custom_names"]


def _same_metrics(a: dict, b: dict) -> bool:
    """Equal, treating NaN == NaN (Ray's snapshot may hold NaN or null for NaN)."""
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            if not (isinstance(y, dict) and _same_metrics(x, y)):
                return False
        elif isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            continue
        elif x != y:
            return False
    return True


def assert_agrees_with_ray(ours: trd.TrainResult, theirs) -> None:
    assert _same_metrics(ours.metrics, theirs.metrics)
    assert ours.checkpoint.path == theirs.checkpoint.path
    assert [c.path for c, _ in ours.best_checkpoints] == [c.path for c, _ in theirs.best_checkpoints]
    for (_, m1), (_, m2) in zip(ours.best_checkpoints, theirs.best_checkpoints, strict=True):
        assert _same_metrics(m1, m2)
    assert ours.path == theirs.path


@pytest.mark.parametrize("name", V2_WITH_SNAPSHOT)
def test_v2_local_agrees_with_ray(v2_runs, name):
    import ray.train

    ours = trd.TrainResult.from_path(v2_runs[name])
    theirs = ray.train.Result.from_path(v2_runs[name])
    assert_agrees_with_ray(ours, theirs)
    assert ours.uri == os.path.abspath(v2_runs[name])
    assert isinstance(ours.filesystem, pafs.LocalFileSystem)


def test_metrics_dataframe_is_chronological_flat_and_complete(v2_runs):
    result = trd.TrainResult.from_path(v2_runs["success"])
    df = result.metrics_dataframe
    # RunRecorder kept the metric-only reports too: 4 epochs x (metric-only + checkpoint).
    assert len(df) == 8
    ckpt_rows = df[df["checkpoint_dir_name"].notna()]
    assert ckpt_rows["loss"].tolist() == ray_jobs.SUCCESS_LOSSES
    assert ckpt_rows["epoch"].tolist() == [0, 1, 2, 3]
    assert "val/acc" in df.columns and "val/f1" in df.columns
    assert df[df["checkpoint_dir_name"].isna()]["phase"].eq("warmup").all()
    # Only num_to_keep (+ latest) checkpoints survive retention; the history keeps all reports.
    assert len(result.checkpoints) <= 3


def test_metrics_dataframe_without_recorder_has_one_row_per_checkpoint(v2_runs):
    df = trd.TrainResult.from_path(v2_runs["custom_names"]).metrics_dataframe
    assert df["checkpoint_dir_name"].tolist() == ["first", "second-best", "third"]
    assert df["loss"].tolist() == [0.5, 0.25, 0.75]  # chronological, not by score


def test_failure_recorded_by_run_recorder(v2_runs):
    result = trd.TrainResult.from_path(v2_runs["failure"])
    assert isinstance(result.error, trd.TrainingError)
    assert isinstance(result.error, Exception)
    assert result.error.error_type == "WorkerGroupError"
    assert set(result.error.worker_failures) == {0, 1}
    assert "boom at epoch 2 on rank 1" in result.error.worker_failures[1]
    assert result.error.terminal
    assert result.status == "failed"
    assert len(result.checkpoints) == 3  # epochs 0..2 persisted before the failure


def test_failure_without_recorder_is_indistinguishable_like_ray(v2_runs):
    result = trd.TrainResult.from_path(v2_runs["failure_plain"])
    assert result.error is None
    assert result.status == "unknown"


def test_failure_before_first_checkpoint(v2_runs):
    recorded = trd.TrainResult.from_path(v2_runs["failure_before_ckpt"])
    assert recorded.checkpoint is None and recorded.best_checkpoints == []
    assert "failed before any checkpoint" in recorded.error.message
    assert recorded.metrics_dataframe["warmup"].tolist() == [1.0]


def test_no_snapshot_and_no_record_is_a_clear_error(tmp_path):
    run = tmp_path / "starting"
    run.mkdir()
    (run / ".validate_storage_marker").write_text("")
    with pytest.raises(trd.NoSnapshotError, match="RunRecorder") as info:
        trd.TrainResult.from_path(run)
    assert str(run) in str(info.value)


def test_nan_metrics_are_never_best(v2_runs):
    result = trd.TrainResult.from_path(v2_runs["nan_losses"])
    best = result.get_best_checkpoint("loss", "min")
    assert best.metrics["loss"] == 0.3
    latest = result.get_best_checkpoint("loss", "min", ties="earliest")
    assert latest == best


def test_custom_checkpoint_names_and_nested_selection(v2_runs):
    result = trd.TrainResult.from_path(v2_runs["custom_names"])
    assert {c.name for c in result.checkpoints} == {"first", "second-best", "third"}
    best, metrics = trd.select_best_checkpoint(result, "val/acc", "max")
    assert best.name == "third" and metrics["val"]["acc"] == pytest.approx(0.7)


def test_checkpoint_files_and_metadata(v2_runs, tmp_path):
    result = trd.TrainResult.from_path(v2_runs["success"])
    ckpt = result.checkpoint
    assert ckpt.get_metadata() == {"epoch": 3}
    with ckpt.as_directory() as d:
        assert d == ckpt.path  # local: in place, like Ray
        assert open(os.path.join(d, "model.txt")).read().startswith("epoch=3")
    out = ckpt.to_directory(tmp_path / "copy")
    assert os.path.isfile(os.path.join(out, "model.txt"))
    again = trd.Checkpoint.from_uri(ckpt.uri)
    assert again == ckpt
    ray_ckpt = ckpt.to_ray()
    assert ray_ckpt.path == ckpt.path and ray_ckpt.get_metadata() == {"epoch": 3}


def test_from_ray_to_ray_round_trip(v2_runs):
    import ray.train

    theirs = ray.train.Result.from_path(v2_runs["success_plain"])
    ours = trd.TrainResult.from_ray(theirs)
    back = ours.to_ray()
    assert isinstance(back, ray.train.Result)
    assert_agrees_with_ray(trd.TrainResult.from_ray(back), theirs)
    assert back.filesystem.type_name == "local"
    full = trd.TrainResult.from_ray(theirs, read_storage=True)
    # Only storage knows the report order; the object alone keeps Ray's list order.
    assert {c.name for c in full.checkpoints} == {c.name for c in ours.checkpoints}
    chronological = [c.name for c in full.checkpoints]
    assert chronological == sorted(chronological)  # default names are timestamps


def test_fit_returns_failed_result_with_persisted_checkpoints(ray_session, tmp_path):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(ray_jobs)
    result = ray_jobs.run_job("fit_failure", str(tmp_path), spec=ray_jobs.JOBS["failure_plain"])
    assert isinstance(result, trd.TrainResult)
    assert result.error is not None and result.error.error_type == "WorkerGroupError"
    assert set(result.error.worker_failures) == {0, 1}
    assert "boom at epoch 2" in result.error.traceback + result.error.message
    assert len(result.checkpoints) == 3
    assert result.uri == str(tmp_path / "fit_failure")


# ----------------------------------------------------------------------------- V1


def test_v1_success(v1_runs):
    result = trd.TrainResult.from_path(v1_runs["v1_success"])
    assert result.layout == "v1" and result.error is None and result.status == "finished"
    assert result.metrics["epoch"] == 3
    assert [c.name for c in result.checkpoints][-1] == result.checkpoint.name
    df = result.metrics_dataframe
    assert "val/acc" in df.columns and df["lr"].notna().sum() == 1  # metric-only row kept


def test_v1_failure_reads_text_not_pickle(v1_runs, tmp_path):
    import shutil

    exp = os.path.dirname(v1_runs["v1_failure"])
    copy = tmp_path / "v1_failure"
    shutil.copytree(exp, copy)
    trial = copy / os.path.basename(v1_runs["v1_failure"])
    trap = tmp_path / "PWNED"
    payload = (
        b"cos\nsystem\n(S'touch " + str(trap).encode() + b"'\ntR."
    )  # a classic pickle that runs a shell command when loaded
    (trial / "error.pkl").write_bytes(payload)
    (copy / "trainer.pkl").write_bytes(payload)
    result = trd.TrainResult.from_path(trial)
    assert not trap.exists()
    assert result.status == "failed"
    assert result.error.error_type == "ValueError"
    assert "v1 boom at epoch 2" in result.error.message


def test_v1_experiment_folder_with_one_trial_resolves(v1_runs):
    exp = os.path.dirname(v1_runs["v1_success"])
    assert trd.TrainResult.from_path(exp).path == v1_runs["v1_success"]


# ----------------------------------------------------------------------------- S3


@pytest.mark.parametrize("name", ["success", "failure", "custom_names"])
def test_s3_agrees_with_ray_and_local(moto, s3_runs, v2_runs, name):
    import ray.train

    fs = moto.filesystem()
    ours = trd.TrainResult.from_path(s3_runs[name], fs)
    theirs = ray.train.Result.from_path(s3_runs[name].removeprefix("s3://"), fs)
    assert_agrees_with_ray(ours, theirs)
    assert ours.uri == s3_runs[name]
    local = trd.TrainResult.from_path(v2_runs[name])
    assert ours.metrics_dataframe.equals(local.metrics_dataframe)
    assert (ours.error is None) == (local.error is None)


def test_s3_filesystem_from_dagster_resource(moto, s3_runs):
    fs = s3_settings(moto.s3_resource()).filesystem()
    result = trd.TrainResult.from_path(s3_runs["success"], fs)
    with result.checkpoint.as_directory() as d:
        assert os.path.isfile(os.path.join(d, "model.txt"))
        tmp = d
    assert not os.path.exists(tmp)  # remote checkpoints download to a temp dir, then cleaned
    assert result.checkpoint.get_metadata() == {"epoch": 3}


def test_s3_v1_and_direct_run(moto, s3_runs, s3_direct_run):
    fs = moto.filesystem()
    v1 = trd.TrainResult.from_path(s3_runs["v1_failure"], fs)
    assert v1.error is not None and v1.layout == "v1"
    direct = trd.TrainResult.from_path(s3_direct_run, fs)
    assert direct.uri == s3_direct_run
    assert direct.metrics_dataframe["loss"].dropna().tolist() == ray_jobs.SUCCESS_LOSSES
    assert direct.checkpoint.exists()


def test_import_is_light():
    code = "import sys, trainresults_dagster; print(sorted(m for m in ('ray', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
