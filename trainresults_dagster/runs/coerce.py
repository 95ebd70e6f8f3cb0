"""Turning what an asset or a caller hands over into a ``Checkpoint`` or a ``TrainResult``.

One coercion each, used by the IO managers, every asset factory, the registry and the
hand-off, so they all accept the same inputs and fail with the same message:

* ``as_checkpoint``: a ``Checkpoint``; anything with a ``.checkpoint`` (a registry
  ``ModelVersion``, a hand-off ``ModelRef``); a ``ray.train.Checkpoint``; a URI or path;
  a JSON dict ``{"uri": ..., "metrics": ...}``.
* ``as_train_result``: a ``TrainResult``; a ``ray.train.Result`` (its run folder is read
  too, so every persisted checkpoint and the RunRecorder history are kept); a run URI.
* ``as_result_or_grid``: the same, plus a sweep: a ``TrainResultGrid``, a
  ``ray.tune.ResultGrid`` (its experiment folder is read) or a Tune experiment URI.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

import pyarrow.fs as pafs

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import NotARunDirectoryError

from .checkpoint import Checkpoint
from .experiment import is_state_file
from .result import TrainResult
from .tune import TrainResultGrid


def is_ray_result(obj: Any) -> bool:
    """True for a ``ray.train.Result`` (V1 or V2), without importing ray: if ray was never
    imported, ``obj`` cannot be one of its results."""
    if "ray.air.result" not in sys.modules:
        return False
    from ray.air.result import Result  # the base class of V1's and V2's Result

    return isinstance(obj, Result)


def as_checkpoint(
    value: Any,
    filesystem: pafs.FileSystem | None = None,
    *,
    metrics: Mapping[str, Any] | None = None,
    what: str = "the value",
) -> Checkpoint:
    """``value`` as a ``Checkpoint``. ``filesystem`` resolves bare URIs of its own kind (an
    ``S3FileSystem`` for ``s3://...``); a checkpoint object keeps its own filesystem."""
    if isinstance(value, Checkpoint):
        return value
    inner = getattr(value, "checkpoint", None)
    if inner is not None and not isinstance(value, Mapping):  # ModelVersion, ModelRef
        return as_checkpoint(inner, filesystem, metrics=getattr(value, "metrics", None), what=what)
    found = _metrics(metrics)
    if isinstance(value, str | os.PathLike):
        fs, path = storage.resolve_matching(os.fspath(value), filesystem)
        return Checkpoint(path, fs, metrics=found)
    if isinstance(value, Mapping):
        raw = value.get("checkpoint", value.get("checkpoint_uri", value.get("uri")))
        if isinstance(raw, Mapping | str | os.PathLike | Checkpoint):
            return as_checkpoint(raw, filesystem, metrics=_metrics(value.get("metrics")) or found,
                                 what=what)
        raise TypeError(
            f"expected {what} to be a dict with 'uri' (or 'checkpoint' / 'checkpoint_uri'), "
            f"got keys {sorted(map(str, value))!r}"
        )
    if hasattr(value, "path") and hasattr(value, "filesystem"):  # a ray.train.Checkpoint
        return Checkpoint(value.path, value.filesystem, metrics=found)
    raise TypeError(
        f"expected {what} to be a Checkpoint (trd.Checkpoint, ray.train.Checkpoint, a registry "
        f"ModelVersion, a checkpoint URI or {{'uri': ...}}), got {type(value).__name__}: "
        f"{value!r:.200}"
    )


def as_train_result(value: Any, *, what: str = "the value") -> TrainResult:
    """``value`` as a ``TrainResult``."""
    if isinstance(value, TrainResult):
        return value
    if is_ray_result(value):
        return TrainResult.from_ray(value, read_storage=True)
    if isinstance(value, str | os.PathLike):
        return TrainResult.from_path(value)
    raise TypeError(
        f"expected {what} to be a ray.train.Result, a trainresults_dagster.TrainResult or a "
        f"run URI (return trainer.fit() or trd.fit(trainer)); for a Ray Tune sweep a "
        f"ray.tune.ResultGrid or a trd.TrainResultGrid; got {type(value).__name__}: "
        f"{value!r:.200}"
    )


def is_ray_result_grid(obj: Any) -> bool:
    """True for a ``ray.tune.ResultGrid``, without importing ray."""
    if "ray.tune.result_grid" not in sys.modules:
        return False
    from ray.tune.result_grid import ResultGrid

    return isinstance(obj, ResultGrid)


def as_result_or_grid(value: Any, *, what: str = "the value") -> TrainResult | TrainResultGrid:
    """``value`` as a ``TrainResult`` or, for a sweep, a ``TrainResultGrid``."""
    if isinstance(value, TrainResultGrid):
        return value
    if is_ray_result_grid(value):
        return TrainResultGrid.from_ray(value)
    try:
        return as_train_result(value, what=what)
    except NotARunDirectoryError:
        # A folder of several trials: a Tune sweep (or a V1 experiment) as a whole.
        if isinstance(value, str | os.PathLike):
            fs, path = storage.resolve(os.fspath(value))
            if any(is_state_file(i.base_name) for i in storage.list_dir(fs, path)):
                return TrainResultGrid.from_path(path, fs)
        raise


def _metrics(value: Any) -> dict[str, Any] | None:
    return dict(value) if isinstance(value, Mapping) else None
