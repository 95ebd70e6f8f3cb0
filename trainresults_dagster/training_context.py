"""The training context of a failure, as plain JSON: what alerts and failure metadata carry.

Dagster's stock failure alerts say ``Steps failed: ['train']``. The IO manager attaches
this context to the ``dg.Failure`` it raises (metadata keys ``trainresults/<key>``) and to
materialisation metadata; the sensors read it back and put it in alerts. One function
builds it, so every place shows the same fields.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .result import TrainResult

#: Keys of ``training_context``; ``trainresults/<key>`` in Dagster metadata.
CONTEXT_KEYS = (
    "run_uri",
    "error_type",
    "message",
    "worker_failures",
    "last_checkpoint_uri",
    "last_metrics",
)
METADATA_PREFIX = "trainresults/"


def training_context(result: TrainResult) -> dict[str, Any]:
    """``{run_uri, error_type, message, worker_failures, last_checkpoint_uri, last_metrics}``.

    ``worker_failures`` maps rank (as a string, JSON keys) to ``"Type: message"``.
    ``last_checkpoint_uri``/``last_metrics`` are the latest checkpoint that persisted.
    """
    error = result.error
    return {
        "run_uri": result.uri,
        "error_type": error.error_type if error else None,
        "message": error.message if error else None,
        "worker_failures": {str(k): v for k, v in sorted(error.worker_failures.items())}
        if error
        else {},
        "last_checkpoint_uri": result.checkpoint.uri if result.checkpoint else None,
        "last_metrics": result.metrics,
    }
