"""trainresults_dagster: Dagster assets for Ray Train results.

``import trainresults_dagster as trd`` imports no ray: Dagster reloads code locations
often. Parts that need ray import it inside the function that needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .checkpoint import Checkpoint
from .errors import (
    CheckpointMissingError,
    CorruptRegistryError,
    CorruptRunError,
    NoEligibleCheckpointError,
    NoSnapshotError,
    NotARunDirectoryError,
    PromotionConflict,
    RunNotFoundError,
    StorageError,
    TrainResultsError,
    UnsafePathError,
    VersionNotFoundError,
)
from .fit import fit
from .model_version import AliasEvent, ModelVersion
from .result import TrainResult
from .selection import select_best_checkpoint
from .training_error import TrainingError

if TYPE_CHECKING:
    from .alert_sinks import WebhookAlertSink
    from .handoff_assets import build_batch_inference_asset, build_serving_asset
    from .inference import (
        BatchInferenceError,
        InferenceInputError,
        PredictorError,
        run_batch_inference,
    )
    from .io_manager import RayTrainResultIOManager
    from .json_io_manager import JSON_IO_MANAGER_KEY, JsonIOManager
    from .parquet_output import OutputNotCommittedError, open_inference_output
    from .promotion import build_best_checkpoint_asset, build_promotion_asset
    from .registry_resource import CheckpointRegistry
    from .schedules import build_retraining_schedule
    from .sensors import build_failed_run_sensor, build_training_failure_sensor
    from .serving import RayServeTarget, ServingTargetError, WebhookTarget

__version__ = "0.1.0"

#: Dagster-shell names, imported on first use: dagster + dagster-aws take seconds to
#: import, and the Ray Train controller imports this package (RunRecorder) without them.
_LAZY = {
    # pyarrow.dataset pulls in pandas (~0.75 s): only batch inference needs it.
    "run_batch_inference": ".inference",
    "BatchInferenceError": ".inference",
    "InferenceInputError": ".inference",
    "PredictorError": ".inference",
    "OutputNotCommittedError": ".parquet_output",
    "open_inference_output": ".parquet_output",
    "CheckpointRegistry": ".registry_resource",
    "JSON_IO_MANAGER_KEY": ".json_io_manager",
    "JsonIOManager": ".json_io_manager",
    "build_best_checkpoint_asset": ".promotion",
    "build_promotion_asset": ".promotion",
    "RayTrainResultIOManager": ".io_manager",
    "build_batch_inference_asset": ".handoff_assets",
    "build_serving_asset": ".handoff_assets",
    "RayServeTarget": ".serving",
    "ServingTargetError": ".serving",
    "WebhookTarget": ".serving",
    "WebhookAlertSink": ".alert_sinks",
    "build_failed_run_sensor": ".sensors",
    "build_training_failure_sensor": ".sensors",
    "build_retraining_schedule": ".schedules",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ModelVersion",
    "JsonIOManager",
    "CorruptRegistryError",
    "CheckpointRegistry",
    "AliasEvent",
    "JSON_IO_MANAGER_KEY",
    "BatchInferenceError",
    "Checkpoint",
    "CheckpointMissingError",
    "CorruptRunError",
    "InferenceInputError",
    "NoEligibleCheckpointError",
    "NoSnapshotError",
    "NotARunDirectoryError",
    "OutputNotCommittedError",
    "PredictorError",
    "PromotionConflict",
    "RayServeTarget",
    "RayTrainResultIOManager",
    "RunNotFoundError",
    "ServingTargetError",
    "StorageError",
    "TrainResult",
    "TrainResultsError",
    "TrainingError",
    "UnsafePathError",
    "VersionNotFoundError",
    "WebhookTarget",
    "WebhookAlertSink",
    "build_failed_run_sensor",
    "build_training_failure_sensor",
    "build_retraining_schedule",
    "build_batch_inference_asset",
    "build_best_checkpoint_asset",
    "build_promotion_asset",
    "build_serving_asset",
    "fit",
    "open_inference_output",
    "run_batch_inference",
    "select_best_checkpoint",
]
