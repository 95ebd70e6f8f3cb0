"""Metric names and values: nested lookup by ``a/b``, flattening, and what counts as a number.

Ray Train flattens nested metrics with ``/`` in its dataframes (``val/acc``); every part of
this library names nested metrics that way, through these functions.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

#: ``lookup_metric``'s answer for a metric that is not there (``None`` is a value).
MISSING: Any = object()


def lookup_metric(metrics: Mapping[str, Any] | None, key: str) -> Any:
    """``metrics["a/b"]`` if that flat key exists, else ``metrics["a"]["b"]``; ``MISSING`` if absent."""
    if not isinstance(metrics, Mapping):
        return MISSING
    if key in metrics:
        return metrics[key]
    node: Any = metrics
    for part in key.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return MISSING
        node = node[part]
    return node


def flatten_metrics(metrics: Any, prefix: str = "") -> dict[str, Any]:
    """``{"val": {"acc": 1}}`` -> ``{"val/acc": 1}`` (Ray's nested-metric naming)."""
    out: dict[str, Any] = {}
    if not isinstance(metrics, Mapping):
        return out
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, f"{name}/"))
        else:
            out[name] = value
    return out


def finite_number(value: Any) -> float | None:
    """``float(value)`` for finite real numbers; None for NaN, inf, bool, None, strings, dicts."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    as_float = float(value)
    return as_float if math.isfinite(as_float) else None


def describe_value(value: Any) -> str:
    """How a metric value is shown in an error: ``missing`` or its ``repr``."""
    return "missing" if value is MISSING else repr(value)


def validate_mode(mode: str) -> None:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")


def validate_metric(metric: str) -> None:
    if not isinstance(metric, str) or not metric:
        raise ValueError(f"metric must be a non-empty string such as 'val_loss', got {metric!r}")
