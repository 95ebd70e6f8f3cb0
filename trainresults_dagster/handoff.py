"""What is handed off: one pinned ``(checkpoint, model, version)`` for batch and serving.

Batch inference and serving accept the registry's ``ModelVersion``, a ``Checkpoint``, a
checkpoint URI, or the JSON form of either (what a JSON IO manager hands back). They are
resolved here, once, into a ``ModelRef``, so both hand-offs pin the same checkpoint and
record the same lineage. Duck-typed on purpose: the registry (``registry.py``) imports this
core, not the other way round.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Mapping
from typing import Any

import pyarrow.fs as pafs

from . import storage
from .checkpoint import Checkpoint


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
    from an ``S3Resource`` for ``s3://...``); a ``Checkpoint`` keeps its own filesystem.
    """
    if isinstance(value, ModelRef):
        return value
    if isinstance(value, Checkpoint):
        return ModelRef(checkpoint=value, metrics=value.metrics)
    if isinstance(value, str | os.PathLike):
        return ModelRef(checkpoint=_checkpoint_from_uri(os.fspath(value), filesystem, None))
    if isinstance(value, Mapping):
        return _from_mapping(value, filesystem)
    inner = getattr(value, "checkpoint", None)
    if inner is not None:  # ModelVersion-like
        checkpoint = _as_checkpoint(inner, filesystem, getattr(value, "metrics", None))
        return ModelRef(
            checkpoint=checkpoint,
            model=_opt_str(getattr(value, "model", None)),
            version=_opt_int(getattr(value, "version", None), where=repr(value)),
            metrics=_opt_dict(getattr(value, "metrics", None)) or checkpoint.metrics,
            lineage=_opt_dict(getattr(value, "lineage", None)),
            created_at=_iso(getattr(value, "created_at", None)),
        )
    if hasattr(value, "path") and hasattr(value, "filesystem"):  # ray.train.Checkpoint
        return ModelRef(checkpoint=Checkpoint(value.path, value.filesystem))
    raise TypeError(
        "expected a ModelVersion, a trainresults_dagster.Checkpoint, a checkpoint URI or "
        f"their JSON dict, got {type(value).__name__}: {value!r}"
    )


def _from_mapping(data: Mapping[str, Any], filesystem: pafs.FileSystem | None) -> ModelRef:
    raw = data.get("checkpoint", data.get("checkpoint_uri", data.get("uri")))
    if raw is None:
        raise TypeError(
            "expected a dict with 'checkpoint' ({'uri': ...} or a URI) or 'checkpoint_uri', "
            f"got keys {sorted(data)!r}"
        )
    checkpoint = _as_checkpoint(raw, filesystem, data.get("metrics"))
    return ModelRef(
        checkpoint=checkpoint,
        model=_opt_str(data.get("model")),
        version=_opt_int(data.get("version"), where=f"dict with keys {sorted(data)!r}"),
        metrics=_opt_dict(data.get("metrics")) or checkpoint.metrics,
        lineage=_opt_dict(data.get("lineage")),
        created_at=_iso(data.get("created_at")),
    )


def _as_checkpoint(raw: Any, filesystem: pafs.FileSystem | None, metrics: Any) -> Checkpoint:
    if isinstance(raw, Checkpoint):
        return raw
    if isinstance(raw, Mapping) and "uri" in raw:
        return _checkpoint_from_uri(str(raw["uri"]), filesystem, raw.get("metrics") or metrics)
    if isinstance(raw, str | os.PathLike):
        return _checkpoint_from_uri(os.fspath(raw), filesystem, metrics)
    if hasattr(raw, "path") and hasattr(raw, "filesystem"):
        return Checkpoint(raw.path, raw.filesystem, metrics=_opt_dict(metrics))
    raise TypeError(f"expected a checkpoint (Checkpoint, URI or {{'uri': ...}}), got {raw!r}")


def _checkpoint_from_uri(
    uri: str, filesystem: pafs.FileSystem | None, metrics: Any
) -> Checkpoint:
    fs, path = resolve_for(uri, filesystem)
    return Checkpoint(path, fs, metrics=_opt_dict(metrics))


def resolve_for(uri: str, filesystem: pafs.FileSystem | None) -> tuple[pafs.FileSystem, str]:
    """``storage.resolve`` that uses ``filesystem`` only for URIs of its own kind.

    A local input next to an ``s3://`` output must not be looked up in the bucket: an
    explicit scheme that does not match the filesystem resolves on its own.
    """
    scheme, _ = storage.split_scheme(uri)
    if filesystem is None or (scheme and scheme not in ("file", storage.scheme_of(filesystem))):
        return storage.resolve(uri)
    return storage.resolve(uri, filesystem)


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
