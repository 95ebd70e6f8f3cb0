"""The V2 source of the failed-run scan: the failure journal ``RunRecorder`` writes.

Each terminal failure adds one file to ``<storage_path>/_trainresults/failures/`` whose name
starts with its UTC time (``storage.stamp``), so names sort by time. A tick lists only
names after a start-after marker (S3: ``list_objects_v2(StartAfter=...)``; local: a name
filter over one directory read) and reads only the new runs. The marker trails the newest
name seen by the overlap (default 10 min), so an entry that shows up late (clock skew
between controllers, a slow PUT) is still found; names already handled inside that window
are kept in the cursor to de-duplicate.
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow.fs as pafs

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import StorageError, TrainResultsError, UnsafePathError
from trainresults_dagster.runs.read import read_run
from trainresults_dagster.runs.record import JOURNAL_DIR
from trainresults_dagster.runs.result import TrainResult, training_context

from ._tick import ScanState, Tick
from .alert import alert_id, build_alert


class JournalSource:
    """Failed V2 runs, found through the journal."""

    def __init__(self, tick: Tick) -> None:
        self.tick = tick
        self.jdir = f"{tick.root}/{JOURNAL_DIR}"

    def list_journal(self, start_after: str | None) -> list[str]:
        if self.tick.s3_client is not None and isinstance(self.tick.fs, pafs.S3FileSystem):
            bucket, _, key = self.jdir.partition("/")
            prefix = f"{key}/"
            self.tick.stats["lists"] += 1
            try:
                names = [
                    o["Key"][len(prefix) :]
                    for o in storage.list_keys(
                        self.tick.s3_client, bucket, prefix,
                        start_after=prefix + start_after if start_after else None,
                    )
                ]
            except Exception as exc:  # noqa: BLE001 - botocore errors are not OSErrors
                raise StorageError(
                    f"listing the failure journal s3://{bucket}/{prefix} failed: {exc}"
                ) from exc
        elif isinstance(self.tick.fs, pafs.LocalFileSystem):
            self.tick.stats["lists"] += 1
            try:
                names = os.listdir(self.jdir)
            except FileNotFoundError:
                names = []
        else:
            self.tick.stats["lists"] += 1
            names = [i.base_name for i in storage.list_dir(self.tick.fs, self.jdir)]
        names = [n for n in names if n.endswith(".json") and not n.startswith(".") and "/" not in n]
        self.tick.stats["journal_listed"] += len(names)
        return sorted(n for n in names if start_after is None or n > start_after)

    def journal_alert(self, state: ScanState, name: str) -> dict[str, Any] | None:
        """The alert for one journal entry, or None to retry later. Raises nothing."""
        where = storage.to_uri(self.tick.fs, f"{self.jdir}/{name}")
        try:
            entry = storage.read_json_object(
                self.tick.fs, f"{self.jdir}/{name}", what="a failure journal entry"
            )
            if entry is None:
                raise FileNotFoundError(f"{where} disappeared")
            # RunConfig.name may hold '/' (Ray writes nested folders): any relative path
            # that stays under the storage path is a run name.
            run_path = storage.safe_descendant(
                self.tick.root, entry.get("run_name"), what="run_name", where=where
            )
        except UnsafePathError as exc:
            state.pending.pop(name, None)
            self.tick.problems.append(f"skipping journal entry {where}: {exc}")
            return None
        except (OSError, ValueError, TypeError, UnicodeDecodeError) as exc:
            if self.tick.read_failed(state, name, exc, f"journal entry {where}"):
                state.pending.pop(name, None)  # unreadable for good: nothing to alert about
            return None
        failed_at = entry.get("time")
        extra = {
            "run_name": entry.get("run_name"),
            "failed_at": storage.iso(failed_at) if isinstance(failed_at, int | float) else None,
            "storage_path": self.tick.uri,
            "journal_key": name,
            "layout": "v2",
        }
        run_uri = storage.to_uri(self.tick.fs, run_path)
        try:
            self.tick.stats["runs_read"] += 1
            context = training_context(
                TrainResult(**read_run(self.tick.fs, run_path, missing_checkpoints="drop"))
            )
        except (TrainResultsError, OSError, ValueError) as exc:
            if not self.tick.read_failed(state, name, exc, f"run {run_uri}"):
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
            secrets=self.tick.secrets,
            alert_id=alert_id("ray_run_failed", run_uri, name),
            **extra,
        )

    def start_after(self, state: ScanState) -> str | None:
        hw_time = storage.parse_stamp(state.hw) if state.hw else None
        return storage.stamp(hw_time - self.tick.overlap) if hw_time is not None else None

    def scan_journal(
        self, state: ScanState, names: list[str], *, covered: set[str] | frozenset[str] = frozenset()
    ) -> None:
        """Alert the new entries; ``covered``: names another source already alerted."""
        for name in names:
            if name in state.seen or name in state.pending:
                continue
            if name in covered:
                state.seen.add(name)
                state.hw = max(state.hw or name, name)
                continue
            if self.tick.budget <= 0:
                break
            state.seen.add(name)
            if not _is_journal_name(name):
                self.tick.problems.append(f"ignoring {self.jdir}/{name}: not a journal entry name")
                continue
            state.hw = max(state.hw or name, name)
            self.tick.take()
            alert = self.journal_alert(state, name)
            if alert is not None:
                self.tick.emit(state, name, alert, first=True)
        if state.hw and (t := storage.parse_stamp(state.hw)) is not None:
            floor = storage.stamp(t - self.tick.overlap)
            state.seen = {n for n in state.seen if n > floor}

    def retry(self, state: ScanState, key: str, *, first: bool) -> None:
        alert = self.journal_alert(state, key)
        if alert is not None:
            self.tick.emit(state, key, alert, first=first)


def _is_journal_name(name: str) -> bool:
    """``<stamp>-<run>.json``, as ``runs.record.journal_key`` writes them."""
    return name.endswith(".json") and storage.parse_stamp(name) is not None and (
        name[len(storage.stamp(0.0)) : len(storage.stamp(0.0)) + 1] == "-"
    )
