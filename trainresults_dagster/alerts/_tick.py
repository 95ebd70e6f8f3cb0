"""What one scan tick shares between its sources: the cursor state, the storage handles,
the read budget, counters, problems, and how an alert is delivered or a read retried."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

import trainresults_dagster.storage as storage

CURSOR_VERSION = 1


@dataclass
class FailedRun:
    """One failed run and what happened to its alert this tick."""

    key: str
    alert: dict[str, Any]
    delivered: bool = False
    delivery_error: str | None = None


@dataclass
class ScanState:
    """The sensor cursor, parsed: what earlier ticks handled and what they left pending."""

    hw: str | None = None  # newest journal name handled
    seen: set[str] = field(default_factory=set)  # names handled inside the overlap window
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    v1_wm: int = 0  # newest folder (local) or state file (object store) time seen, in ns
    v1_pass: float = 0.0  # when the last V1 discovery pass ran
    # V1 experiments being watched: unfinished ones, and those with alerted trials.
    v1: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def parse(cls, cursor: str | None) -> ScanState:
        if not cursor:
            return cls()
        try:
            data = json.loads(cursor)
            if data.get("v") != CURSOR_VERSION:
                raise ValueError(f"version {data.get('v')!r}")
            return cls(
                hw=data.get("hw"),
                seen=set(data.get("seen", [])),
                pending=dict(data.get("pending", {})),
                v1_wm=int(data.get("v1_wm", 0)),
                v1_pass=float(data.get("v1_pass", 0.0)),
                v1=dict(data.get("v1", {})),
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"expected a failed-run sensor cursor (JSON with \"v\": {CURSOR_VERSION}), got "
                f"{cursor[:120]!r} ({exc}); clear the cursor to rescan the storage path"
            ) from exc

    def dump(self) -> str:
        return json.dumps(
            {
                "v": CURSOR_VERSION,
                "hw": self.hw,
                "seen": sorted(self.seen),
                "pending": self.pending,
                "v1_wm": self.v1_wm,
                "v1_pass": self.v1_pass,
                "v1": self.v1,
            },
            sort_keys=True,
            separators=(",", ":"),
        )


class Tick:
    """One pass: storage handles, budget and outcome lists, shared by every source."""

    def __init__(
        self,
        fs: pafs.FileSystem,
        root: str,
        *,
        s3_client: Any,
        deliver: Callable[[dict[str, Any]], object] | None,
        max_runs: int,
        overlap_seconds: float,
        max_read_attempts: int,
        secrets: Iterable[str | None],
    ) -> None:
        self.fs, self.root = fs, root
        self.uri = storage.to_uri(fs, root)
        self.s3_client = s3_client
        self.deliver = deliver
        self.overlap = overlap_seconds
        self.max_attempts = max_read_attempts
        self.secrets = [s for s in secrets if s]
        self.found: list[FailedRun] = []
        self.redelivered: list[FailedRun] = []
        self.problems: list[str] = []
        self.stats = {"lists": 0, "journal_listed": 0, "runs_read": 0, "v1_folders_opened": 0}
        self.budget = max_runs

    def take(self) -> bool:
        """Spend one run read of the budget; False when it is used up for this tick."""
        if self.budget <= 0:
            return False
        self.budget -= 1
        return True

    def emit(self, state: ScanState, key: str, alert: dict[str, Any], *, first: bool) -> None:
        run = FailedRun(key=key, alert=alert)
        try:
            if self.deliver is not None:
                self.deliver(alert)
            run.delivered = True
            state.pending.pop(key, None)
        except Exception as exc:  # noqa: BLE001 - a sink is user code; retry next tick
            run.delivery_error = f"{type(exc).__name__}: {exc}"
            # Only the key is kept: the alert is rebuilt from storage next tick (same
            # alert_id), so a sink that is down for long does not bloat the cursor, which
            # Dagster stores with every tick.
            entry = state.pending.setdefault(key, {})
            entry.update(deliver=True, error=run.delivery_error)
            entry["sends"] = int(entry.get("sends", 0)) + 1
            self.problems.append(
                f"could not deliver the alert for {alert.get('run_uri')}: {run.delivery_error}; "
                "it will be re-sent next tick"
            )
        (self.found if first else self.redelivered).append(run)

    def read_failed(self, state: ScanState, key: str, exc: Exception, what: str) -> bool:
        """Count a failed read; True when attempts are used up (alert with what we know)."""
        entry = state.pending.setdefault(key, {})
        entry["reads"] = int(entry.get("reads", 0)) + 1
        entry["error"] = f"{type(exc).__name__}: {exc}"
        if entry["reads"] >= self.max_attempts:
            self.problems.append(
                f"giving up reading {what} after {entry['reads']} attempts ({entry['error']}); "
                "alerting with what is known without it"
            )
            return True
        self.problems.append(
            f"could not read {what} (attempt {entry['reads']}/{self.max_attempts}): "
            f"{entry['error']}; will retry next tick"
        )
        return False
