"""Find failed Ray Train runs under a storage path, incrementally (no Dagster, no ray).

``scan_failed_runs(storage_path, cursor)`` is what ``build_failed_run_sensor`` runs each
tick; scripts and the benchmark can call it directly. It composes two sources over one
``Tick`` (``_tick``: cursor state, storage handles, budget, delivery):

* **V2 runs recorded by ``RunRecorder``** (``_journal``): each terminal failure adds one
  time-named file to the failure journal; a tick lists only names after a start-after
  marker that trails the newest name by ``overlap_seconds`` and reads only the new runs.
  V2 runs *without* the recorder cannot be found: Ray Train V2 stores no error or status.
* **V1 runs** (``RAY_TRAIN_V2_ENABLED=0``, ``_v1``) have no journal: trial status ``ERROR`` is read
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

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import TrainResultsError

from ._journal import JournalSource
from ._tick import FailedRun, ScanState, Tick
from ._v1 import V1Source

OVERLAP_SECONDS = 600.0
MAX_READ_ATTEMPTS = 5
V1_RESCAN_SECONDS = 300.0


@dataclass
class ScanOutcome:
    found: list[FailedRun]  # failures seen for the first time (one retraining request each)
    redelivered: list[FailedRun]  # alerts from earlier ticks, delivered now
    problems: list[str]
    cursor: str
    stats: dict[str, int] = field(default_factory=dict)


def scan_failed_runs(
    storage_path: str,
    cursor: str | None = None,
    *,
    filesystem: pafs.FileSystem | None = None,
    s3_client: Any = None,
    deliver: Callable[[dict[str, Any]], object] | None = None,
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
    state = ScanState.parse(cursor)
    tick = Tick(
        fs,
        root,
        s3_client=s3_client,
        deliver=deliver,
        max_runs=max_runs,
        overlap_seconds=overlap_seconds,
        max_read_attempts=max_read_attempts,
        secrets=secrets,
    )
    journal, v1 = JournalSource(tick), V1Source(tick)
    # A listing error raises before anything is sent, so the tick fails without side effects.
    names = journal.list_journal(journal.start_after(state))
    # Runs that could not be read, or whose alert was not taken, on earlier ticks.
    for key in sorted(state.pending):
        entry = state.pending.get(key)
        if entry is None or not tick.take():
            continue
        source = v1 if key.startswith("v1:") else journal
        source.retry(state, key, first=not entry.get("deliver"))
    journal.scan_journal(state, names)
    if include_v1:
        try:
            v1.scan_v1(state, time.time(), v1_rescan_seconds)
        except (TrainResultsError, OSError) as exc:
            tick.problems.append(f"could not list {tick.uri} for V1 experiments: {exc}")
    return ScanOutcome(
        found=tick.found,
        redelivered=tick.redelivered,
        problems=tick.problems,
        cursor=state.dump(),
        stats=tick.stats,
    )
