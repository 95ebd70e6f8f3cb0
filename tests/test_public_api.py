"""The public contract (../shared/DESIGN.md): names and keyword names, as code outside the
repo uses them."""

from __future__ import annotations

import inspect

import pytest

import trainresults_dagster as trd

CONTRACT = {
    "select_best_checkpoint": ["result", "metric", "mode", "ties"],
    "run_batch_inference": ["checkpoint", "predictor", "input_uri", "output_uri", "engine",
                            "batch_size", "filesystem"],
    "build_best_checkpoint_asset": ["name", "result_asset", "metric", "mode", "ties"],
    "build_promotion_asset": ["name", "model", "candidate_asset", "metric", "mode",
                              "min_improvement", "thresholds", "alias", "registry_key"],
    "build_batch_inference_asset": ["name", "model_asset", "predictor", "input_uri",
                                    "output_uri", "engine", "batch_size"],
    "build_serving_asset": ["name", "model_asset", "target_key"],
    "build_failed_run_sensor": ["name", "storage_path", "alert_sink_key", "job",
                                "minimum_interval_seconds"],
    "build_training_failure_sensor": ["name", "alert_sink_key", "monitored_jobs",
                                      "webserver_base_url"],
    "build_retraining_schedule": ["name", "target", "cron_schedule"],
    "fit": ["trainer"],
}
METHODS = {
    (trd.TrainResult, "from_path"): ["path_or_uri", "filesystem"],
    (trd.TrainResult, "get_best_checkpoint"): ["metric", "mode"],
    (trd.Checkpoint, "to_directory"): ["path"],
    (trd.Checkpoint, "from_uri"): ["uri"],
    (trd.CheckpointRegistry, "register"): ["model", "checkpoint", "metrics", "lineage"],
    (trd.CheckpointRegistry, "promote"): ["model", "version", "alias", "expected_version",
                                          "reason"],
    (trd.CheckpointRegistry, "get"): ["model", "alias"],
    (trd.CheckpointRegistry, "get_version"): ["model", "version"],
    (trd.CheckpointRegistry, "versions"): ["model"],
    (trd.CheckpointRegistry, "history"): ["model", "alias"],
    (trd.CheckpointRegistry, "rollback"): ["model", "alias"],
}


def _params(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p not in ("self", "cls")]


@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_function_keywords(name):
    params = _params(getattr(trd, name))
    assert params[: len(CONTRACT[name])] == CONTRACT[name]


@pytest.mark.parametrize(("owner", "method"), sorted(METHODS, key=lambda k: (k[0].__name__, k[1])))
def test_method_keywords(owner, method):
    params = _params(getattr(owner, method))
    assert params[: len(METHODS[(owner, method)])] == METHODS[(owner, method)]


def test_every_exported_name_resolves():
    for name in trd.__all__:
        assert getattr(trd, name) is not None, name


def test_resources_and_fields():
    assert set(trd.RayTrainResultIOManager.model_fields) >= {"base_path", "s3", "checkpoints",
                                                            "on_error"}
    assert set(trd.CheckpointRegistry.model_fields) >= {"base_path", "s3"}
    assert trd.RayServeTarget("app", "dep").address is None
    assert set(trd.ModelVersion.__dataclass_fields__) >= {"model", "version", "checkpoint",
                                                          "metrics", "lineage", "created_at"}
    err = trd.TrainingError("WorkerGroupError", "boom", "tb", {0: "ValueError: boom"})
    assert isinstance(err, Exception) and err.worker_failures == {0: "ValueError: boom"}
    assert issubclass(trd.NoEligibleCheckpointError, ValueError)
