"""Find failed Ray Train runs under a storage path, incrementally (no Dagster, no ray).

``scan_failed_runs(storage_path, cursor)`` is what ``build_failed_run_sensor`` runs each
tick; scripts and the benchmark can call it directly. Two sources:

* **V2 runs recorded by ``RunRecorder``**: each terminal failure adds one file to
  ``<storage_path>/_trainresults/failures/`` whose name starts with its UTC time, so names
  sort by time. A tick lists only names after a start-after marker (S3: ``list_objects_v2
  (StartAfter=...)``; local: a name filter over one directory read) and reads only the new
  runs. The marker trails the newest name seen by ``overlap_seconds`` (default 10 min), so
  an entry that shows up late (clock skew between controllers, a slow PUT) is still found;
  names already handled inside that window are kept in the cursor to de-duplicate.
  V2 runs *without* the recorder cannot be found: Ray Train V2 stores no error or status.
* **V1 runs** (``RAY_TRAIN_V2_ENABLED=0``) have no journal: trial status ``ERROR`` is read
  from ``experiment_state-*.json`` (JSON only, never ``*.pkl``), and only for experiments
  whose state file changed. Finding new V1 experiments costs one look at every top-level
  folder (local: one directory read and a ``stat`` each; object stores: one flat listing,
  1 request per 1,000 objects), so this *discovery pass* runs at most every
  ``v1_rescan_seconds`` (default 5 minutes) and on the first pass; V1 experiments already
  seen and not finished are re-checked on every pass. A V1 failure is therefore reported
  within ``v1_rescan_seconds`` plus the sensor interval.

The cursor is JSON. A run that cannot be read (torn file, permission, transient storage
error) is retried on later ticks and reported in ``problems``; after ``max_read_attempts``
its alert is sent with what the journal says, plus ``context_error``. When the sink fails
to take an alert, its key stays in the cursor and the alert is rebuilt and re-sent next
tick with the same ``alert_id``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from . import storage
from .alerts import alert_id, build_alert
from .errors import TrainResultsError
from .failure_scan_v1 import V1Scan
from .readers import read_run
from .run_record import JOURNAL_DIR
from .training_context import training_context

CURSOR_VERSION = 1
OVERLAP_SECONDS = 600.0
MAX_READ_ATTEMPTS = 5
V1_RESCAN_SECONDS = 300.0
_STAMP = re.compile(r"^(\d{8}T\d{6})\.(\d{6})Z-.+\.json$")


@dataclass
class FailedRun:
    """One failed run and what happened to its alert this tick."""

    key: str
    alert: dict[str, Any]
    delivered: bool = False
    delivery_error: str | None = None


@dataclass
class ScanOutcome:
    found: list[FailedRun]  # failures seen for the first time (one retraining request each)
    redelivered: list[FailedRun]  # alerts from earlier ticks, delivered now
    problems: list[str]
    cursor: str
    stats: dict[str, int] = field(default_factory=dict)


@dataclass
class _State:
    hw: str | None = None  # newest journal name handled
    seen: set[str] = field(default_factory=set)  # names handled inside the overlap window
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    v1_wm: int = 0  # newest folder (local) or state file (object store) time seen, in ns
    v1_pass: float = 0.0  # when the last V1 discovery pass ran
    # V1 experiments being watched: unfinished ones, and those with alerted trials.
    v1: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def parse(cls, cursor: str | None) -> _State:
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


def _stamp(when: float) -> str:
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(when)) + f".{int((when % 1) * 1e6):06d}Z"


def _stamp_time(name: str) -> float | None:
    m = _STAMP.match(name)
    if not m:
        return None
    base = dt.datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=dt.UTC)
    return base.timestamp() + int(m.group(2)) / 1e6


class _Scan(V1Scan):
    def __init__(self, fs: pafs.FileSystem, root: str, **opts: Any) -> None:
        self.fs, self.root = fs, root
        self.uri = storage.to_uri(fs, root)
        self.jdir = f"{root}/{JOURNAL_DIR}"
        self.s3_client = opts["s3_client"]
        self.deliver: Callable[[dict[str, Any]], None] | None = opts["deliver"]
        self.max_runs: int = opts["max_runs"]
        self.overlap: float = opts["overlap_seconds"]
        self.max_attempts: int = opts["max_read_attempts"]
        self.secrets = list(opts["secrets"])
        self.found: list[FailedRun] = []
        self.redelivered: list[FailedRun] = []
        self.problems: list[str] = []
        self.stats = {"lists": 0, "journal_listed": 0, "runs_read": 0, "v1_folders_opened": 0}
        self.budget = self.max_runs

    # ------------------------------------------------------------------ alerts
    def _emit(self, state: _State, key: str, alert: dict[str, Any], *, first: bool) -> None:
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

    def _read_failed(self, state: _State, key: str, exc: Exception, what: str) -> bool:
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

    # ------------------------------------------------------------------ V2 journal
    def list_journal(self, start_after: str | None) -> list[str]:
        if self.s3_client is not None and isinstance(self.fs, pafs.S3FileSystem):
            bucket, _, key = self.jdir.partition("/")
            prefix = f"{key}/"
            kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
            if start_after:
                kwargs["StartAfter"] = prefix + start_after
            names = []
            try:
                for page in self.s3_client.get_paginator("list_objects_v2").paginate(**kwargs):
                    self.stats["lists"] += 1
                    names += [o["Key"][len(prefix) :] for o in page.get("Contents", [])]
            except Exception as exc:  # noqa: BLE001 - botocore errors are not OSErrors
                raise storage.StorageError(
                    f"listing the failure journal s3://{bucket}/{prefix} failed: {exc}"
                ) from exc
        elif isinstance(self.fs, pafs.LocalFileSystem):
            self.stats["lists"] += 1
            try:
                names = os.listdir(self.jdir)
            except FileNotFoundError:
                names = []
        else:
            self.stats["lists"] += 1
            names = [i.base_name for i in storage.list_dir(self.fs, self.jdir)]
        names = [n for n in names if n.endswith(".json") and not n.startswith(".") and "/" not in n]
        self.stats["journal_listed"] += len(names)
        return sorted(n for n in names if start_after is None or n > start_after)

    def journal_alert(self, state: _State, name: str) -> dict[str, Any] | None:
        """The alert for one journal entry, or None to retry later. Raises nothing."""
        where = storage.to_uri(self.fs, f"{self.jdir}/{name}")
        try:
            entry = storage.read_json(self.fs, f"{self.jdir}/{name}")
            if not isinstance(entry, dict):
                raise TypeError(f"expected a JSON object, got {type(entry).__name__}")
            run_path = storage.safe_child(
                self.root, entry.get("run_name"), what="run_name", where=where
            )
        except storage.UnsafePathError as exc:
            state.pending.pop(name, None)
            self.problems.append(f"skipping journal entry {where}: {exc}")
            return None
        except (OSError, ValueError, TypeError, UnicodeDecodeError) as exc:
            if self._read_failed(state, name, exc, f"journal entry {where}"):
                state.pending.pop(name, None)  # unreadable for good: nothing to alert about
            return None
        failed_at = entry.get("time")
        extra = {
            "run_name": entry.get("run_name"),
            "failed_at": dt.datetime.fromtimestamp(failed_at, dt.UTC).isoformat()
            if isinstance(failed_at, int | float)
            else None,
            "storage_path": self.uri,
            "journal_key": name,
            "layout": "v2",
        }
        run_uri = storage.to_uri(self.fs, run_path)
        try:
            self.stats["runs_read"] += 1
            context = training_context(read_run(self.fs, run_path, missing_checkpoints="drop"))
        except (TrainResultsError, OSError, ValueError) as exc:
            if not self._read_failed(state, name, exc, f"run {run_uri}"):
                return None
            context = {"run_uri": run_uri, "worker_failures": {}}
            extra["context_error"] = state.pending[name]["error"]
        # The journal is the authority that the run failed; the record may say "running"
        # again if a run with the same name was resumed since.
        context["error_type"] = context.get("error_type") or entry.get("error_type")
        context["message"] = context.get("message") or entry.get("message")
        return build_alert(
            "ray_run_failed",
            context,
            secrets=self.secrets,
            alert_id=alert_id("ray_run_failed", run_uri, name),
            **extra,
        )

    def start_after(self, state: _State) -> str | None:
        hw_time = _stamp_time(state.hw) if state.hw else None
        return _stamp(hw_time - self.overlap) if hw_time is not None else None

    def scan_journal(self, state: _State, names: list[str]) -> None:
        for name in names:
            if name in state.seen or name in state.pending:
                continue
            if self.budget <= 0:
                break
            state.seen.add(name)
            if _stamp_time(name) is None:
                self.problems.append(f"ignoring {self.jdir}/{name}: not a journal entry name")
                continue
            state.hw = max(state.hw or name, name)
            self.budget -= 1
            alert = self.journal_alert(state, name)
            if alert is not None:
                self._emit(state, name, alert, first=True)
        if state.hw and (t := _stamp_time(state.hw)) is not None:
            floor = _stamp(t - self.overlap)
            state.seen = {n for n in state.seen if n > floor}

    # ------------------------------------------------------------------ retries
    def retry_pending(self, state: _State) -> None:
        """Runs that could not be read, or whose alert was not taken, on earlier ticks."""
        for key in sorted(state.pending):
            entry = state.pending.get(key)
            if entry is None or self.budget <= 0:
                continue
            self.budget -= 1
            if key.startswith("v1:"):
                alert = self.v1_trial(state, key)
            else:
                alert = self.journal_alert(state, key)
            if alert is not None:
                self._emit(state, key, alert, first=not entry.get("deliver"))


def scan_failed_runs(
    storage_path: str,
    cursor: str | None = None,
    *,
    filesystem: pafs.FileSystem | None = None,
    s3_client: Any = None,
    deliver: Callable[[dict[str, Any]], None] | None = None,
    include_v1: bool = True,
    v1_rescan_seconds: float = V1_RESCAN_SECONDS,
    max_runs: int = 100,
    overlap_seconds: float = OVERLAP_SECONDS,
    max_read_attempts: int = MAX_READ_ATTEMPTS,
    secrets: Iterable[str | None] = (),
) -> ScanOutcome:
    """One incremental pass over ``storage_path`` (the ``RunConfig.storage_path`` of the runs).

    Args:
        cursor: the previous pass's ``outcome.cursor`` (None for the first pass, which
            finds every failed run already in storage).
        filesystem: pyarrow filesystem of ``storage_path`` (default: from the path).
        s3_client: a boto3 S3 client; on S3 the journal is then listed with ``StartAfter``
            (without one the journal folder is listed in full, still without reading runs).
        deliver: called with each alert; when it raises, the alert is kept and re-sent next
            pass. Without it the alerts are only returned.
        include_v1: also look for failed V1 experiments; ``v1_rescan_seconds`` spaces the
            passes that look for *new* ones (each costs a look at every top-level folder).
        max_runs: runs read per pass at most (the rest wait for the next pass).
        secrets: strings to remove from alerts (credentials the caller knows of).
    """
    if max_runs < 1:
        raise ValueError(f"expected max_runs >= 1, got {max_runs!r}")
    fs, root = storage.resolve(storage_path, filesystem)
    state = _State.parse(cursor)
    scan = _Scan(
        fs,
        root,
        s3_client=s3_client,
        deliver=deliver,
        max_runs=max_runs,
        overlap_seconds=overlap_seconds,
        max_read_attempts=max_read_attempts,
        secrets=secrets,
    )
    # A listing error raises before anything is sent, so the tick fails without side effects.
    names = scan.list_journal(scan.start_after(state))
    scan.retry_pending(state)
    scan.scan_journal(state, names)
    if include_v1:
        try:
            scan.scan_v1(state, time.time(), v1_rescan_seconds)
        except (TrainResultsError, OSError) as exc:
            scan.problems.append(f"could not list {scan.uri} for V1 experiments: {exc}")
    return ScanOutcome(
        found=scan.found,
        redelivered=scan.redelivered,
        problems=scan.problems,
        cursor=state.dump(),
        stats=scan.stats,
    )
