"""What is handed off: one pinned ``(checkpoint, model, version)`` for batch and serving.

Batch inference and serving accept the registry's ``ModelVersion``, a ``Checkpoint``, a
checkpoint URI, or the JSON form of either (what a JSON IO manager hands back). They are
resolved here, once, into a ``ModelRef``, so both hand-offs pin the same checkpoint and
record the same lineage. Duck-typed on purpose (``runs.coerce``): the registry is not
imported here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any

import pyarrow.fs as pafs

from trainresults_dagster.runs.checkpoint import Checkpoint
from trainresults_dagster.runs.coerce import as_checkpoint


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A resolved hand-off: the checkpoint plus whatever the registry knew about it."""

    checkpoint: Checkpoint
    model: str | None = None
    version: int | None = None
    metrics: dict[str, Any] | None = None
    lineage: dict[str, Any] | None = None
    created_at: str | None = None

    def manifest(self) -> dict[str, Any]:
        """JSON-able: ``model, version, checkpoint_uri, metrics, lineage, created_at``."""
        return {
            "model": self.model,
            "version": self.version,
            "checkpoint_uri": self.checkpoint.uri,
            "metrics": self.metrics,
            "lineage": self.lineage,
            "created_at": self.created_at,
        }


def model_ref(value: Any, filesystem: pafs.FileSystem | None = None) -> ModelRef:
    """Resolve a ``ModelVersion``, ``Checkpoint``, URI or their JSON dicts to a ``ModelRef``.

    ``filesystem`` is used for a bare URI whose scheme it serves (an ``S3FileSystem`` built
    from the S3 settings for ``s3://...``); a ``Checkpoint`` keeps its own filesystem.
    """
    if isinstance(value, ModelRef):
        return value
    checkpoint = as_checkpoint(value, filesystem, what="the model to hand off")
    if isinstance(value, Mapping):
        where = f"dict with keys {sorted(map(str, value))!r}"
    else:
        where = repr(value)

    def get(key: str) -> Any:
        return value.get(key) if isinstance(value, Mapping) else getattr(value, key, None)

    return ModelRef(
        checkpoint=checkpoint,
        model=_opt_str(get("model")),
        version=_opt_int(get("version"), where=where),
        metrics=_opt_dict(get("metrics")) or checkpoint.metrics,
        lineage=_opt_dict(get("lineage")),
        created_at=_iso(get("created_at")),
    )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: Any, *, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"expected an integer model version, got {value!r} in {where}")
    try:
        return int(value)
    except ValueError:
        raise TypeError(f"expected an integer model version, got {value!r} in {where}") from None


def _opt_dict(value: Any) -> dict[str, Any] | None:
    return dict(value) if isinstance(value, Mapping) else None


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value)
