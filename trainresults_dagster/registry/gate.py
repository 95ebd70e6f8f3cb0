"""The promotion gate (no Dagster): does a candidate pass its thresholds and beat the champion?

Rules, in order:

1. The candidate needs a finite numeric ``metric`` (NaN, inf, missing never pass).
2. Every ``thresholds`` entry ``{metric: (low, high)}`` must hold; either bound may be None;
   bounds are inclusive; a missing or non-finite value fails.
3. No champion yet: pass (first promotion). The candidate already *is* the champion: pass,
   and nothing moves (so re-materialising is idempotent).
4. A champion whose ``metric`` is not finite is beaten by any finite candidate.
5. Otherwise the candidate must be strictly better by at least ``min_improvement``
   (``candidate - champion`` in "max" mode, ``champion - candidate`` in "min" mode). A tie
   never replaces the champion, even with ``min_improvement=0``. "At least" tolerates float
   rounding (0.4 - 0.3 is 0.09999999999999998, and it does improve by 0.1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from trainresults_dagster.runs.metrics import MISSING, finite_number, lookup_metric, validate_mode

Thresholds = Mapping[str, tuple[float | None, float | None]]


def validate_thresholds(thresholds: Any) -> dict[str, tuple[float | None, float | None]]:
    """``{metric: (low, high)}`` with numeric or None bounds and low <= high, else ValueError."""
    if thresholds is None:
        return {}
    if not isinstance(thresholds, Mapping):
        raise ValueError(
            f"thresholds must be a dict {{metric: (low, high)}}, got {type(thresholds).__name__}: "
            f"{thresholds!r}"
        )
    out: dict[str, tuple[float | None, float | None]] = {}
    for metric, bounds in thresholds.items():
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"thresholds keys must be metric names, got {metric!r}")
        if not isinstance(bounds, tuple | list) or len(bounds) != 2:
            raise ValueError(
                f"thresholds[{metric!r}] must be a (low, high) pair (None for no bound), "
                f"got {bounds!r}"
            )
        low, high = (None if b is None else finite_number(b) for b in bounds)
        for given, parsed in zip(bounds, (low, high), strict=True):
            if given is not None and parsed is None:
                raise ValueError(
                    f"thresholds[{metric!r}] bounds must be finite numbers or None, got {bounds!r}"
                )
        if low is not None and high is not None and low > high:
            raise ValueError(f"thresholds[{metric!r}] has low > high: {bounds!r}")
        out[metric] = (low, high)
    return out


def validate_min_improvement(value: Any) -> float:
    parsed = finite_number(value)
    if parsed is None or parsed < 0:
        raise ValueError(f"min_improvement must be a finite number >= 0, got {value!r}")
    return parsed


@dataclass(frozen=True)
class GateDecision:
    """The outcome, with everything a reviewer needs to see why."""

    passed: bool
    promote: bool  # passed and the alias must move (False when already champion)
    reason: str
    metric: str
    mode: str
    candidate_value: float | None
    champion_value: float | None
    improvement: float | None
    min_improvement: float
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "promote": self.promote,
            "reason": self.reason,
            "metric": self.metric,
            "mode": self.mode,
            "candidate_value": self.candidate_value,
            "champion_value": self.champion_value,
            "improvement": self.improvement,
            "min_improvement": self.min_improvement,
            "rows": self.rows,
        }


def _show(value: Any) -> str:
    if value is MISSING:
        return "missing"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return repr(value)


def evaluate_gate(
    candidate_metrics: Mapping[str, Any] | None,
    champion_metrics: Mapping[str, Any] | None,
    *,
    metric: str,
    mode: Literal["min", "max"],
    min_improvement: float = 0.0,
    thresholds: Thresholds | None = None,
    has_champion: bool,
    same_version: bool = False,
) -> GateDecision:
    """Decide; ``has_champion``/``same_version`` say whether an alias exists and whether it
    already points at the candidate's version."""
    validate_mode(mode)
    min_improvement = validate_min_improvement(min_improvement)
    bounds = validate_thresholds(thresholds)
    failures: list[str] = []
    rows: list[dict[str, Any]] = []

    raw = lookup_metric(candidate_metrics, metric)
    cand = finite_number(raw)
    champ = finite_number(lookup_metric(champion_metrics, metric)) if has_champion else None
    if cand is None:
        failures.append(f"candidate has no finite numeric {metric!r} (got {_show(raw)})")
    for name, (low, high) in bounds.items():
        value_raw = lookup_metric(candidate_metrics, name)
        value = finite_number(value_raw)
        ok = value is not None and (low is None or value >= low) and (high is None or value <= high)
        rows.append({
            "check": f"threshold {name}", "candidate": value, "champion": None,
            "requirement": f"{'-inf' if low is None else low} <= {name} <= "
                           f"{'inf' if high is None else high}",
            "ok": ok,
        })
        if not ok:
            failures.append(
                f"{name}={_show(value_raw) if value is None else value} is outside "
                f"[{low}, {high}]"
            )

    improvement = None
    if cand is not None and champ is not None:
        improvement = cand - champ if mode == "max" else champ - cand
    beat_ok = True
    requirement = f"better than champion by >= {min_improvement} (and > 0)"
    if not has_champion:
        requirement = "no champion yet: any finite value"
        verdict = "no current champion: first promotion"
    elif same_version:
        verdict = "the candidate is already the champion"
    elif champ is None:
        verdict = f"the champion has no finite {metric!r}; any finite candidate beats it"
    else:
        beat_ok = (
            improvement is not None
            and improvement > 0
            and (
                improvement >= min_improvement
                or math.isclose(improvement, min_improvement, rel_tol=1e-9, abs_tol=1e-12)
            )
        )
        verdict = (
            f"{metric}: candidate {cand} vs champion {champ} ({mode}): improvement "
            f"{improvement:+.6g}, required >= {min_improvement} and > 0"
            if improvement is not None
            else f"candidate has no finite {metric!r}"
        )
        if not beat_ok and cand is not None:
            failures.append(verdict)
    rows.insert(0, {
        "check": f"{metric} ({mode})", "candidate": cand, "champion": champ,
        "requirement": requirement, "ok": cand is not None and beat_ok,
    })
    passed = not failures
    reason = ("passed: " + verdict) if passed else "rejected: " + "; ".join(failures)
    return GateDecision(
        passed=passed,
        promote=passed and not same_version,
        reason=reason,
        metric=metric,
        mode=mode,
        candidate_value=cand,
        champion_value=champ,
        improvement=improvement,
        min_improvement=min_improvement,
        rows=rows,
    )

