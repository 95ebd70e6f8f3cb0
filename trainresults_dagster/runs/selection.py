"""Best-checkpoint selection that never picks a NaN, an inf or a missing metric.

Ray's ``Result.get_best_checkpoint`` returns a NaN checkpoint when one exists, and its
checkpoint manager ranks a checkpoint that lacks the score attribute as *best* in "min"
mode (ray-project/ray#23812 fixed this for ``ExperimentAnalysis`` only). Here only finite,
numeric, non-bool values are eligible, and ties are broken by report order, as asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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


class RankedSweep(Protocol):
    """What selection needs of a sweep (``TrainResultGrid`` has it): its trials, in order."""

    @property
    def uri(self) -> str: ...

    @property
    def trials(self) -> Sequence[RankedRun]: ...


Scope = Literal["all", "last"]


def select_best_checkpoint(
    result: RankedRun | RankedSweep,
    metric: str,
    mode: Literal["min", "max"],
    *,
    ties: Literal["latest", "earliest"] = "latest",
    scope: Scope = "all",
) -> tuple[Checkpoint, dict[str, Any]]:
    """The checkpoint with the best finite value of ``metric`` and its metrics.

    ``result`` is one run (``TrainResult``) or a sweep (``TrainResultGrid``: the best across
    its trials). ``metric`` may name a nested value as ``"a/b"``. NaN, inf, missing, None,
    bool and non-numeric values are never chosen. ``scope="all"`` considers every
    checkpoint, ``"last"`` only each run's (each trial's) latest one. Equal values are
    decided by report order: ``ties="latest"`` prefers the later report, ``"earliest"`` the
    earlier one; between trials of a sweep, the earlier trial wins (as in Ray's
    ``get_best_result``).

    Raises:
        NoEligibleCheckpointError: nothing has a finite numeric ``metric``; the message
            names the metric, the mode and what each checkpoint had.
        ValueError: bad ``mode``, ``ties`` or ``scope``.
    """
    trials = getattr(result, "trials", None)
    if isinstance(trials, Sequence) and not isinstance(trials, str):
        runs: Sequence[RankedRun] = trials
        what = f"the {len(runs)} trial(s) of sweep {result.uri}"
    else:
        runs = [result]  # type: ignore[list-item]  # a RankedRun: no trials
        what = f"run {result.uri}"
    _, ckpt, metrics = select_best_among(runs, metric, mode, ties=ties, scope=scope, what=what)
    return ckpt, metrics


def select_best_among(
    runs: Sequence[RankedRun],
    metric: str,
    mode: Literal["min", "max"],
    *,
    ties: Literal["latest", "earliest"] = "latest",
    scope: Scope = "all",
    what: str,
) -> tuple[int, Checkpoint, dict[str, Any]]:
    """``select_best_checkpoint`` over several runs: ``(index of the run, checkpoint,
    metrics)``. ``what`` names the runs in the error (``"run s3://..."``)."""
    validate_mode(mode)
    if ties not in ("latest", "earliest"):
        raise ValueError(f"ties must be 'latest' or 'earliest', got {ties!r}")
    if scope not in ("all", "last"):
        raise ValueError(f"scope must be 'all' or 'last', got {scope!r}")
    validate_metric(metric)

    best: tuple[tuple[float, int, int], int, Checkpoint, dict[str, Any]] | None = None
    seen: list[str] = []
    count = 0
    sign = 1.0 if mode == "max" else -1.0
    tie_sign = 1 if ties == "latest" else -1
    for position, run in enumerate(runs):
        candidates = list(run.checkpoints_with_metrics())
        if scope == "last":
            candidates = candidates[-1:]  # report order: the last is the latest
        label = f"{getattr(run, 'trial_id', '')}/" if len(runs) > 1 else ""
        for order, (ckpt, metrics) in enumerate(candidates):
            count += 1
            raw = lookup_metric(metrics, metric)
            value = finite_number(raw)
            if value is None:
                seen.append(f"{label}{ckpt.dir_name}: {describe_value(raw)}")
                continue
            # Better value first; then the earlier run; then report order within the run.
            key = (sign * value, -position, tie_sign * run.report_index_of(ckpt, default=order))
            if best is None or key > best[0]:
                best = (key, position, ckpt, metrics)
    if best is None:
        shown = "; ".join(seen[:10]) + (f"; ... {len(seen) - 10} more" if len(seen) > 10 else "")
        latest = " (scope='last': latest checkpoints only)" if scope == "last" else ""
        raise NoEligibleCheckpointError(
            f"no checkpoint of {what} has a finite numeric {metric!r} to "
            f"{'minimise' if mode == 'min' else 'maximise'} (mode={mode!r}){latest}; "
            f"saw {count} checkpoint(s): {shown or 'none'}"
        )
    return best[1], best[2], best[3]
