"""What the checkpoint registry hands out: ``ModelVersion`` and ``AliasEvent``, as plain JSON.

Both are frozen dataclasses with ``to_dict``/``from_dict``; nothing is pickled. Names of
models and aliases are validated here, once, because they become path components (a model
called ``../other`` must not write next to the registry).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow.fs as pafs

from trainresults_dagster.errors import CorruptRegistryError
from trainresults_dagster.runs.checkpoint import Checkpoint

#: Letters, digits, ``.``, ``_`` and ``-``; starts with a letter or digit; at most 128 long.
#: No separators, so a name is always exactly one path component (and never ``.``/``..``).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
NAME_RULE = (
    "1-128 characters of letters, digits, '.', '_' or '-', starting with a letter or digit "
    "(no '/', '\\\\', spaces or '..')"
)


def validate_name(value: Any, *, what: str) -> str:
    """Return ``value`` if it is a valid model or alias name, else raise ``ValueError``."""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value) or ".." in value:
        raise ValueError(f"{what} must be {NAME_RULE}; got {value!r}")
    return value


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_time(value: Any, *, where: str) -> dt.datetime:
    if not isinstance(value, str):
        raise CorruptRegistryError(f"expected an ISO-8601 time string in {where}, got {value!r}")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise CorruptRegistryError(f"expected an ISO-8601 time in {where}, got {value!r}") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _require(data: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(data, dict):
        raise CorruptRegistryError(f"expected a JSON object in {where}, got {type(data).__name__}")
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise CorruptRegistryError(f"expected {key!r} to be {_kind_name(kind)} in {where}, got {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


@dataclass(frozen=True)
class ModelVersion:
    """One registered, immutable version of a model.

    Attributes:
        model: the model name.
        version: 1, 2, 3, ... in registration order.
        checkpoint: the registry's own copy of the checkpoint (it outlives the Ray run and
            Ray's retention); its ``metrics`` are the version's metrics.
        metrics: the metrics the checkpoint was registered with.
        lineage: where it came from: ``source_checkpoint_uri``, ``run_uri`` and, from an
            asset, ``dagster_run_id``, ``asset_key``, ``partition_key``.
        created_at: when the version was committed (UTC).
        num_files / size_bytes: what was copied, checked against the source before commit.
    """

    model: str
    version: int
    checkpoint: Checkpoint
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    created_at: dt.datetime = field(default_factory=utc_now)
    num_files: int = 0
    size_bytes: int = 0

    def __hash__(self) -> int:
        return hash((self.model, self.version, self.checkpoint.uri))

    @property
    def uri(self) -> str:
        """Where the registry's copy of the checkpoint lives."""
        return self.checkpoint.uri

    def __repr__(self) -> str:
        return f"ModelVersion(model={self.model!r}, version={self.version}, uri={self.uri!r})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "trainresults.ModelVersion",
            "model": self.model,
            "version": self.version,
            "uri": self.uri,
            "metrics": self.metrics,
            "lineage": self.lineage,
            "created_at": self.created_at.isoformat(),
            "num_files": self.num_files,
            "size_bytes": self.size_bytes,
        }

    @classmethod
    def from_dict(
        cls,
        data: dict[str, Any],
        *,
        filesystem: pafs.FileSystem | None = None,
        where: str = "<dict>",
    ) -> ModelVersion:
        """Inverse of ``to_dict``; the checkpoint URI resolves on ``filesystem`` when given
        (needed for S3 endpoints and credentials other than the environment's)."""
        metrics = data.get("metrics") if isinstance(data, dict) else None
        return cls(
            model=_require(data, "model", str, where),
            version=_require(data, "version", int, where),
            checkpoint=Checkpoint(
                _require(data, "uri", str, where),
                filesystem,
                metrics=metrics if isinstance(metrics, dict) else {},
            ),
            metrics=metrics if isinstance(metrics, dict) else {},
            lineage=_dict(data.get("lineage")),
            created_at=parse_time(data.get("created_at"), where=where),
            num_files=int(data.get("num_files") or 0),
            size_bytes=int(data.get("size_bytes") or 0),
        )


@dataclass(frozen=True)
class AliasEvent:
    """One move of an alias: a promotion or a rollback. ``history()`` returns these.

    Attributes:
        seq: 1, 2, 3, ... per alias; the history has no gaps.
        version: where the alias pointed after the move.
        previous_version: where it pointed before (None for the first promotion).
        base_seq: the event whose state a rollback of this one restores (0: none).
        action: ``"promote"`` or ``"rollback"``.
        who / at / reason: who moved it, when (UTC), and why.
        details: extra context, e.g. ``dagster_run_id`` and ``asset_key``.
    """

    model: str
    alias: str
    seq: int
    version: int
    previous_version: int | None
    base_seq: int
    action: Literal["promote", "rollback"]
    who: str
    at: dt.datetime
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    id: str = ""

    def __hash__(self) -> int:
        return hash((self.model, self.alias, self.seq, self.id))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "trainresults.AliasEvent",
            "id": self.id,
            "model": self.model,
            "alias": self.alias,
            "seq": self.seq,
            "version": self.version,
            "previous_version": self.previous_version,
            "base_seq": self.base_seq,
            "action": self.action,
            "who": self.who,
            "at": self.at.isoformat(),
            "reason": self.reason,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "<dict>") -> AliasEvent:
        previous = data.get("previous_version") if isinstance(data, dict) else None
        if previous is not None and (not isinstance(previous, int) or isinstance(previous, bool)):
            raise CorruptRegistryError(
                f"expected 'previous_version' to be an int or null in {where}, got {previous!r}"
            )
        action = _require(data, "action", str, where)
        if action not in ("promote", "rollback"):
            raise CorruptRegistryError(
                f"expected 'action' to be 'promote' or 'rollback' in {where}, got {action!r}"
            )
        details = data.get("details")
        return cls(
            model=_require(data, "model", str, where),
            alias=_require(data, "alias", str, where),
            seq=_require(data, "seq", int, where),
            version=_require(data, "version", int, where),
            previous_version=previous,
            base_seq=_require(data, "base_seq", int, where),
            action=action,
            who=str(data.get("who") or ""),
            at=parse_time(data.get("at"), where=where),
            reason=str(data.get("reason") or ""),
            details=details if isinstance(details, dict) else {},
            id=str(data.get("id") or ""),
        )
