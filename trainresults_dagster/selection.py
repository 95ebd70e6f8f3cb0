"""Best-checkpoint selection that never picks a NaN, an inf or a missing metric.

Ray's ``Result.get_best_checkpoint`` returns a NaN checkpoint when one exists, and its
checkpoint manager ranks a checkpoint that lacks the score attribute as *best* in "min"
mode (ray-project/ray#23812 fixed this for ``ExperimentAnalysis`` only). Here only finite,
numeric, non-bool values are eligible, and ties are broken by report order, as asked.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from .errors import NoEligibleCheckpointError

if TYPE_CHECKING:
    from .checkpoint import Checkpoint
    from .result import TrainResult

_MISSING = object()


def lookup_metric(metrics: Mapping[str, Any] | None, key: str) -> Any:
    """``metrics["a/b"]`` if that flat key exists, else ``metrics["a"]["b"]``; ``_MISSING`` if absent."""
    if not isinstance(metrics, Mapping):
        return _MISSING
    if key in metrics:
        return metrics[key]
    node: Any = metrics
    for part in key.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def finite_number(value: Any) -> float | None:
    """``float(value)`` for finite real numbers; None for NaN, inf, bool, None, strings, dicts."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    as_float = float(value)
    return as_float if math.isfinite(as_float) else None


def _describe(value: Any) -> str:
    if value is _MISSING:
        return "missing"
    return repr(value)


def validate_mode(mode: str) -> None:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")


def validate_metric(metric: str) -> None:
    if not isinstance(metric, str) or not metric:
        raise ValueError(f"metric must be a non-empty string such as 'val_loss', got {metric!r}")


def select_best_checkpoint(
    result: TrainResult,
    metric: str,
    mode: Literal["min", "max"],
    *,
    ties: Literal["latest", "earliest"] = "latest",
) -> tuple[Checkpoint, dict[str, Any]]:
    """The checkpoint with the best finite value of ``metric`` and its metrics.

    ``metric`` may name a nested value as ``"a/b"``. NaN, inf, missing, None, bool and
    non-numeric values are never chosen. Equal values are decided by report order:
    ``ties="latest"`` prefers the later report, ``"earliest"`` the earlier one.

    Raises:
        NoEligibleCheckpointError: nothing has a finite numeric ``metric``; the message
            names the metric, the mode and what each checkpoint had.
        ValueError: bad ``mode`` or ``ties``.
    """
    validate_mode(mode)
    if ties not in ("latest", "earliest"):
        raise ValueError(f"ties must be 'latest' or 'earliest', got {ties!r}")
    validate_metric(metric)

    candidates = list(result.checkpoints_with_metrics())
    best: tuple[float, int, Checkpoint, dict[str, Any]] | None = None
    seen: list[str] = []
    sign = 1.0 if mode == "max" else -1.0
    tie_sign = 1 if ties == "latest" else -1
    for order, (ckpt, metrics) in enumerate(candidates):
        raw = lookup_metric(metrics, metric)
        value = finite_number(raw)
        if value is None:
            seen.append(f"{ckpt.name}: {_describe(raw)}")
            continue
        key = (sign * value, tie_sign * result.report_index_of(ckpt, default=order))
        if best is None or key > best[:2]:
            best = (key[0], key[1], ckpt, metrics)
    if best is None:
        shown = "; ".join(seen[:10]) + (f"; ... {len(seen) - 10} more" if len(seen) > 10 else "")
        raise NoEligibleCheckpointError(
            f"no checkpoint of run {result.uri} has a finite numeric {metric!r} to "
            f"{'minimise' if mode == 'min' else 'maximise'} (mode={mode!r}); "
            f"saw {len(candidates)} checkpoint(s): {shown or 'none'}"
        )
    return best[2], best[3]
