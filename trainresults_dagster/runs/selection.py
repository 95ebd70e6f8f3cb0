"""Best-checkpoint selection that never picks a NaN, an inf or a missing metric.

Ray's ``Result.get_best_checkpoint`` returns a NaN checkpoint when one exists, and its
checkpoint manager ranks a checkpoint that lacks the score attribute as *best* in "min"
mode (ray-project/ray#23812 fixed this for ``ExperimentAnalysis`` only). Here only finite,
numeric, non-bool values are eligible, and ties are broken by report order, as asked.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal, Protocol

from trainresults_dagster.errors import NoEligibleCheckpointError

from .metrics import describe_value, finite_number, lookup_metric, validate_metric, validate_mode

if TYPE_CHECKING:
    from .checkpoint import Checkpoint


class RankedRun(Protocol):
    """What selection needs of a run (``TrainResult`` has it): its checkpoints with their
    metrics, and each checkpoint's report index for ties."""

    @property
    def uri(self) -> str: ...

    def checkpoints_with_metrics(self) -> Iterable[tuple[Checkpoint, dict[str, Any]]]: ...

    def report_index_of(self, checkpoint: Checkpoint, *, default: int = 0) -> int: ...


def select_best_checkpoint(
    result: RankedRun,
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
            seen.append(f"{ckpt.dir_name}: {describe_value(raw)}")
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
