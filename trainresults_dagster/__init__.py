"""trainresults_dagster: Dagster assets for Ray Train results.

The facade: every public name is importable from here (``import trainresults_dagster as
trd``). The tree behind it is the architecture:

* ``runs/``, ``registry/``, ``handoff/``, ``alerts/``, ``storage``, ``webhook``, ``errors``:
  the core. No Dagster, no ray; the CLI and plain scripts use it directly.
* ``dagster/``: the thin Dagster shell (IO managers, resources, asset factories, checks,
  sensors, schedules), the only part that imports dagster or dagster-aws.
* ``ray/``: what needs ray (``RunRecorder``).

``import trainresults_dagster`` imports no ray and no dagster: Dagster reloads code
locations often, and the Ray Train controller imports this package (``RunRecorder``)
without Dagster. The shell's names load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from trainresults_dagster._version import __version__
from trainresults_dagster.errors import (
    BatchInferenceError,
    CheckpointIntegrityError,
    CheckpointMissingError,
    CorruptDataError,
    CorruptOutputError,
    CorruptRegistryError,
    CorruptRunError,
    CorruptValueError,
    InferenceInputError,
    NoEligibleCheckpointError,
    NoEligibleTrialError,
    NoSnapshotError,
    NotARunDirectoryError,
    OutputInUseError,
    OutputNotCommittedError,
    PredictorError,
    PromotionConflict,
    RunNotFoundError,
    ServingTargetError,
    StorageError,
    TrainResultsError,
    UnsafePathError,
    VersionNotFoundError,
    WebhookError,
)
from trainresults_dagster.registry.model_version import AliasEvent, ModelVersion
from trainresults_dagster.runs.checkpoint import Checkpoint
from trainresults_dagster.runs.failure import TrainingError
from trainresults_dagster.runs.fit import fit
from trainresults_dagster.runs.result import TrainResult
from trainresults_dagster.runs.selection import select_best_checkpoint
from trainresults_dagster.runs.tune import TrainResultGrid, TrialResult, TuneResult
from trainresults_dagster.storage import AzureSettings, GcsSettings, S3Settings

if TYPE_CHECKING:
    from trainresults_dagster.dagster.best_checkpoint import build_best_checkpoint_asset
    from trainresults_dagster.dagster.clouds import AzureResource, GcsResource
    from trainresults_dagster.dagster.guardrails import build_champion_checks
    from trainresults_dagster.dagster.handoff import (
        build_batch_inference_asset,
        build_serving_asset,
    )
    from trainresults_dagster.dagster.io_manager import RayTrainResultIOManager
    from trainresults_dagster.dagster.json_io_manager import JSON_IO_MANAGER_KEY, JsonIOManager
    from trainresults_dagster.dagster.promotion import build_promotion_asset
    from trainresults_dagster.dagster.ray_job import RayJobTrainer, build_ray_job_training_asset
    from trainresults_dagster.dagster.ray_serve import RayServeTarget
    from trainresults_dagster.dagster.registry import CheckpointRegistry
    from trainresults_dagster.dagster.schedules import build_retraining_schedule
    from trainresults_dagster.dagster.sensors import (
        build_failed_run_sensor,
        build_training_failure_sensor,
    )
    from trainresults_dagster.dagster.webhooks import WebhookAlertSink, WebhookTarget
    from trainresults_dagster.handoff.inference import run_batch_inference
    from trainresults_dagster.handoff.output import open_inference_output

#: Names imported on first use: dagster + dagster-aws take seconds to import, and batch
#: inference needs pyarrow.dataset, which pulls in pandas (~0.75 s).
_LAZY = {
    "run_batch_inference": "trainresults_dagster.handoff.inference",
    "open_inference_output": "trainresults_dagster.handoff.output",
    "CheckpointRegistry": "trainresults_dagster.dagster.registry",
    "GcsResource": "trainresults_dagster.dagster.clouds",
    "AzureResource": "trainresults_dagster.dagster.clouds",
    "JSON_IO_MANAGER_KEY": "trainresults_dagster.dagster.json_io_manager",
    "JsonIOManager": "trainresults_dagster.dagster.json_io_manager",
    "build_best_checkpoint_asset": "trainresults_dagster.dagster.best_checkpoint",
    "build_promotion_asset": "trainresults_dagster.dagster.promotion",
    "build_champion_checks": "trainresults_dagster.dagster.guardrails",
    "RayTrainResultIOManager": "trainresults_dagster.dagster.io_manager",
    "build_batch_inference_asset": "trainresults_dagster.dagster.handoff",
    "build_serving_asset": "trainresults_dagster.dagster.handoff",
    "RayServeTarget": "trainresults_dagster.dagster.ray_serve",
    "RayJobTrainer": "trainresults_dagster.dagster.ray_job",
    "build_ray_job_training_asset": "trainresults_dagster.dagster.ray_job",
    "WebhookTarget": "trainresults_dagster.dagster.webhooks",
    "WebhookAlertSink": "trainresults_dagster.dagster.webhooks",
    "build_failed_run_sensor": "trainresults_dagster.dagster.sensors",
    "build_training_failure_sensor": "trainresults_dagster.dagster.sensors",
    "build_retraining_schedule": "trainresults_dagster.dagster.schedules",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AliasEvent",
    "AzureResource",
    "AzureSettings",
    "BatchInferenceError",
    "Checkpoint",
    "CheckpointIntegrityError",
    "CheckpointMissingError",
    "CheckpointRegistry",
    "CorruptDataError",
    "CorruptOutputError",
    "CorruptRegistryError",
    "CorruptRunError",
    "CorruptValueError",
    "GcsResource",
    "GcsSettings",
    "InferenceInputError",
    "JSON_IO_MANAGER_KEY",
    "JsonIOManager",
    "ModelVersion",
    "NoEligibleCheckpointError",
    "NoEligibleTrialError",
    "NoSnapshotError",
    "NotARunDirectoryError",
    "OutputInUseError",
    "OutputNotCommittedError",
    "PredictorError",
    "PromotionConflict",
    "RayJobTrainer",
    "RayServeTarget",
    "RayTrainResultIOManager",
    "RunNotFoundError",
    "S3Settings",
    "ServingTargetError",
    "StorageError",
    "TrainResult",
    "TrainResultGrid",
    "TrainResultsError",
    "TrainingError",
    "TrialResult",
    "TuneResult",
    "UnsafePathError",
    "VersionNotFoundError",
    "WebhookAlertSink",
    "WebhookError",
    "WebhookTarget",
    "__version__",
    "build_batch_inference_asset",
    "build_best_checkpoint_asset",
    "build_champion_checks",
    "build_failed_run_sensor",
    "build_promotion_asset",
    "build_ray_job_training_asset",
    "build_retraining_schedule",
    "build_serving_asset",
    "build_training_failure_sensor",
    "fit",
    "open_inference_output",
    "run_batch_inference",
    "select_best_checkpoint",
]
