"""select_best_checkpoint on real Ray Train runs: NaN/inf/missing never chosen, nested
metrics, ties by report order, and Ray's own get_best_checkpoint picking NaN where ours
does not."""

from __future__ import annotations

import math

import pytest
import ray_jobs

import trainresults_dagster as trd
from trainresults_dagster.runs.metrics import lookup_metric


def _value(metrics, key):
    return lookup_metric(metrics, key)


def _epoch(ckpt):
    return ckpt.get_metadata()["epoch"]


def test_min_loss_on_success_run_matches_losses_and_ray(v2_runs):
    result = trd.TrainResult.from_path(v2_runs["success"])
    ckpt, metrics = trd.select_best_checkpoint(result, "loss", "min")
    kept = [m["loss"] for _, m in result.best_checkpoints]
    assert metrics["loss"] == min(kept) == min(ray_jobs.SUCCESS_LOSSES)
    assert _epoch(ckpt) == ray_jobs.SUCCESS_LOSSES.index(min(ray_jobs.SUCCESS_LOSSES))

    import ray.train

    ray_best = ray.train.Result.from_path(v2_runs["success"]).get_best_checkpoint("loss", "min")
    assert ray_best.path == ckpt.path  # where Ray is right, we agree with it
    assert result.get_best_checkpoint("loss", "min") == ckpt


def test_nested_metric_max(v2_runs):
    result = trd.TrainResult.from_path(v2_runs["success"])
    ckpt, metrics = trd.select_best_checkpoint(result, "val/acc", "max")
    values = [m["val"]["acc"] for _, m in result.checkpoints_with_metrics()]
    assert metrics["val"]["acc"] == max(values)
    assert _epoch(ckpt) == max(_epoch(c) for c in result.checkpoints)  # acc grows each epoch


@pytest.mark.parametrize("mode", ["min", "max"])
def test_nan_losses_never_chosen(v2_runs, mode):
    result = trd.TrainResult.from_path(v2_runs["nan_losses"])
    ckpt, metrics = trd.select_best_checkpoint(result, "loss", mode)
    finite = [x for x in ray_jobs.NAN_LOSSES if not math.isnan(x)]
    assert metrics["loss"] == (min(finite) if mode == "min" else max(finite))
    assert not math.isnan(ray_jobs.NAN_LOSSES[_epoch(ckpt)])
    assert len(result.checkpoints) == len(ray_jobs.NAN_LOSSES)  # the NaN ones were candidates


def test_nan_losses_on_s3_same_choice(v2_runs, s3_runs, moto):
    local = trd.TrainResult.from_path(v2_runs["nan_losses"])
    remote = trd.TrainResult.from_path(s3_runs["nan_losses"], moto.filesystem())
    assert (
        trd.select_best_checkpoint(remote, "loss", "min")[0].name
        == trd.select_best_checkpoint(local, "loss", "min")[0].name
    )
    assert remote.get_best_checkpoint("loss", "min").uri.startswith("s3://runs/")


def test_ray_live_result_picks_nan_and_we_do_not(ray_session, tmp_path):
    """The bug from the issue, on a live ``ray.train.Result``: NaN reaches Ray's selection."""
    import ray.cloudpickle
    import ray.train
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    ray.cloudpickle.register_pickle_by_value(ray_jobs)
    losses = [0.3, float("nan")]  # Ray sorts NaN as worst, to the head of best_checkpoints
    trainer = DataParallelTrainer(
        ray_jobs.train_loop,
        train_loop_config={"losses": losses},
        scaling_config=ScalingConfig(num_workers=1),
        run_config=RunConfig(
            name="nan_live",
            storage_path=str(tmp_path),
            checkpoint_config=CheckpointConfig(
                checkpoint_score_attribute="loss", checkpoint_score_order="min"
            ),
        ),
    )
    live = trainer.fit()
    ray_pick = live.get_best_checkpoint("loss", "min")
    ray_metrics = next(m for c, m in live.best_checkpoints if c.path == ray_pick.path)
    assert math.isnan(ray_metrics["loss"]), "Ray no longer picks NaN: update the docs"

    ours, metrics = trd.select_best_checkpoint(trd.TrainResult.from_ray(live), "loss", "min")
    assert metrics["loss"] == losses[0]
    assert ours.path != ray_pick.path


def test_custom_names(v2_runs):
    result = trd.TrainResult.from_path(v2_runs["custom_names"])
    spec = ray_jobs.JOBS["custom_names"]["config"]
    losses, names = spec["losses"], spec["names"]
    ckpt, _ = trd.select_best_checkpoint(result, "loss", "min")
    assert ckpt.name == names[losses.index(min(losses))]
    ckpt, _ = trd.select_best_checkpoint(result, "val/acc", "max")
    assert ckpt.name == names[-1]  # val/acc rises every epoch
    ckpt, _ = trd.select_best_checkpoint(result, "val/acc", "min")
    assert ckpt.name == names[0]


def test_ties_by_report_order(v2_runs):
    """Every persisted report has ``rank == 0``: a tie across all checkpoints."""
    result = trd.TrainResult.from_path(v2_runs["custom_names"])
    names = ray_jobs.JOBS["custom_names"]["config"]["names"]
    assert {m["rank"] for _, m in result.checkpoints_with_metrics()} == {0}
    assert trd.select_best_checkpoint(result, "rank", "max", ties="latest")[0].name == names[-1]
    assert trd.select_best_checkpoint(result, "rank", "max", ties="earliest")[0].name == names[0]
    assert trd.select_best_checkpoint(result, "rank", "min", ties="earliest")[0].name == names[0]


def test_failed_run_checkpoints_are_candidates(v2_runs):
    result = trd.TrainResult.from_path(v2_runs["failure"])
    config = ray_jobs.JOBS["failure"]["config"]
    persisted = config["losses"][: config["fail_at"] + 1]
    _, metrics = trd.select_best_checkpoint(result, "loss", "min")
    assert result.status == "failed"
    assert metrics["loss"] == min(persisted)


def test_v1_trial(v1_runs):
    result = trd.TrainResult.from_path(v1_runs["v1_success"])
    _, metrics = trd.select_best_checkpoint(result, "loss", "min")
    kept = [m["loss"] for _, m in result.checkpoints_with_metrics()]
    assert metrics["loss"] == min(kept)
    assert math.isfinite(metrics["loss"])


@pytest.mark.parametrize("metric", ["no_such_metric", "val/nope", "val"])
def test_nothing_eligible_names_metric_and_what_was_seen(v2_runs, metric):
    result = trd.TrainResult.from_path(v2_runs["nan_losses"])
    with pytest.raises(trd.NoEligibleCheckpointError) as info:
        trd.select_best_checkpoint(result, metric, "min")
    text = str(info.value)
    assert repr(metric) in text and result.uri in text
    assert f"saw {len(result.checkpoints)} checkpoint(s)" in text
    assert isinstance(info.value, ValueError)


def test_only_nan_values_is_an_error(v2_runs):
    """Restricted to the NaN checkpoints, nothing qualifies (and the message says nan)."""
    full = trd.TrainResult.from_path(v2_runs["nan_losses"])
    nan_only = [(c, m) for c, m in full.best_checkpoints if _value(m, "loss") is None
                or (isinstance(m["loss"], float) and math.isnan(m["loss"]))]
    assert nan_only
    result = trd.TrainResult(path=full.path, filesystem=full.filesystem,
                             best_checkpoints=nan_only, metrics=nan_only[-1][1])
    with pytest.raises(trd.NoEligibleCheckpointError, match="loss"):
        trd.select_best_checkpoint(result, "loss", "min")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"metric": "loss", "mode": "lowest"}, "mode must be 'min' or 'max'"),
        ({"metric": "loss", "mode": "min", "ties": "random"}, "ties must be"),
        ({"metric": "", "mode": "min"}, "metric must be a non-empty string"),
    ],
)
def test_bad_arguments(v2_runs, kwargs, match):
    result = trd.TrainResult.from_path(v2_runs["success"])
    with pytest.raises(ValueError, match=match):
        trd.select_best_checkpoint(result, **kwargs)
