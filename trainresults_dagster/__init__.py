"""trainresults_dagster: Dagster assets for Ray Train results.

``import trainresults_dagster as trd`` imports no ray: Dagster reloads code locations
often. Parts that need ray import it inside the function that needs it.
"""

from __future__ import annotations

from .checkpoint import Checkpoint
from .errors import (
    CheckpointMissingError,
    CorruptRunError,
    NoEligibleCheckpointError,
    NoSnapshotError,
    NotARunDirectoryError,
    PromotionConflict,
    RunNotFoundError,
    StorageError,
    TrainResultsError,
    UnsafePathError,
)
from .fit import fit
from .result import TrainResult
from .selection import select_best_checkpoint
from .training_error import TrainingError

__version__ = "0.1.0"

__all__ = [
    "Checkpoint",
    "CheckpointMissingError",
    "CorruptRunError",
    "NoEligibleCheckpointError",
    "NoSnapshotError",
    "NotARunDirectoryError",
    "PromotionConflict",
    "RunNotFoundError",
    "StorageError",
    "TrainResult",
    "TrainResultsError",
    "TrainingError",
    "UnsafePathError",
    "fit",
    "select_best_checkpoint",
]
