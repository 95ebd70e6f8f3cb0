"""``fit(trainer)``: run training and always get a ``TrainResult`` back.

Ray Train V2's ``fit()`` raises ``TrainingFailedError`` and hands back no ``Result``, so the
checkpoints a failed run did persist are easy to lose (ray-project/ray#13590). Here the
failure becomes ``result.error`` and the run folder is read for what survived.
"""

from __future__ import annotations

from typing import Any

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import NoSnapshotError, TrainResultsError

from .failure import TrainingError
from .result import TrainResult


def run_location(trainer: Any) -> tuple[Any, str] | None:
    """``(filesystem, path)`` of the trainer's run folder, from its ``RunConfig``."""
    run_config = getattr(trainer, "run_config", None)
    if run_config is None or not getattr(run_config, "name", None):
        return None
    storage_path = run_config.storage_path
    if storage_path is None:
        import os

        storage_path = os.path.expanduser("~/ray_results")
    fs, base = storage.resolve(storage_path, getattr(run_config, "storage_filesystem", None))
    return fs, f"{base}/{run_config.name}"


def fit(trainer: Any) -> TrainResult:
    """Run ``trainer.fit()``; on a training failure return a result whose ``error`` is set.

    The returned result carries every checkpoint the run persisted (read from storage) and,
    with ``RunRecorder`` attached, the full report history. Errors that are not training
    failures (bad config, interrupted driver) still raise.
    """
    from ray.train import TrainingFailedError as V2Failed

    failed_types: tuple[type[BaseException], ...] = (V2Failed,)
    try:  # V1 trainers raise their own TrainingFailedError
        from ray.train.base_trainer import TrainingFailedError as V1Failed

        failed_types += (V1Failed,)
    except ImportError:  # pragma: no cover - removed in a future ray
        pass

    try:
        result = trainer.fit()
    except failed_types as exc:
        error = TrainingError.from_exception(exc)
        location = run_location(trainer)
        if location is None:
            return TrainResult(path=".", error=error)
        fs, path = location
        try:
            stored = TrainResult.from_path(path, fs, missing_checkpoints="drop")
        except NoSnapshotError:
            stored = TrainResult(path=path, filesystem=fs)
        except TrainResultsError:
            stored = TrainResult(path=path, filesystem=fs)
        stored.error = error
        return stored
    # RunRecorder, when attached, has already written "finished" from the controller.
    return TrainResult.from_ray(result, read_storage=True)
