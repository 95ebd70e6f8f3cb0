"""The safety net of the failed-run scan: V2 run folders found by Ray's own marker, whose
``RunRecorder`` record says the run failed, when the failure journal has no entry for it.

The journal is an index, not the source of truth: its entry is missing when its write
failed while storage hiccuped, with ``RunRecorder(journal=False)``, or for run folders
synced in from elsewhere. Ray Train V2 writes ``.validate_storage_marker`` into every run
folder, at any depth (``RunConfig.name`` may contain ``/``). A *discovery pass*, spaced by
``records_rescan_seconds``, finds the run folders and their ``trainresults_run.json``:

* object stores: the flat listing of the storage path (shared with the V1 source within a
  tick: one LIST request per 1,000 objects), which carries every record's time and size;
* local disk: a bounded walk (``MAX_DEPTH`` folders deep, ``MAX_FOLDERS`` folders), one
  directory read per folder, never descending into a run folder (its sub-folders are
  checkpoints).

Only records modified since the previous pass (time past a watermark, minus a slack for
coarse clocks) are read, and a record seen with the same time and size is not read twice.
A terminal failure is alerted unless the journal holds an entry for the same run at or
after the failure's time (``RunRecorder`` names the entry by that time); its alert id is
the one the journal entry gets (``alert_id("ray_run_failed", run_uri, journal_key(failure
time, run name))``), and the key is remembered so that a journal entry written later does
not alert again.
"""

from __future__ import annotations

import os
import posixpath
from typing import Any

import pyarrow.fs as pafs

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import TrainResultsError
from trainresults_dagster.runs.read import MARKER_FILE, read_run
from trainresults_dagster.runs.record import (
    JOURNAL_DIR,
    RECORD_DIR,
    RECORD_FILE,
    journal_key,
    read_record,
)
from trainresults_dagster.runs.result import TrainResult, training_context

from ._tick import ScanState, Tick
from .alert import alert_id, build_alert

#: How deep below the storage path a run folder is looked for (``RunConfig.name`` segments).
MAX_DEPTH = 8
#: Folders opened by one local discovery pass at most; past it the pass reports a problem.
MAX_FOLDERS = 200_000
#: Records read by one tick at most (each is one small GET); the rest wait for the next tick,
#: which goes on with the pass whatever the interval.
MAX_RECORD_READS = 200
#: Local folder times can be coarse (1-2 s on some filesystems, NFS): re-check that much.
LOCAL_MTIME_SLACK_NS = 2_000_000_000
_TOP_SKIP = JOURNAL_DIR.split("/", 1)[0]

Found = dict[str, tuple[int, int] | None]  # run folder (relative) -> record (mtime, size)


class RecordSource:
    """Failed V2 runs, found through their run folders' records."""

    def __init__(self, tick: Tick) -> None:
        self.tick = tick
        self._journal: set[str] | None = None  # journal names (from the flat listing on S3)
        self._latest: dict[str, float] | None = None  # run (journal spelling) -> newest entry

    # ------------------------------------------------------------------ discovery
    def discover(self) -> Found:
        """Every run folder under the root with its record's ``(mtime_ns, size)`` (None: no
        record, a run without ``RunRecorder``)."""
        if isinstance(self.tick.fs, pafs.LocalFileSystem):
            return self._walk_local()
        listing = self.tick.flat_listing()
        prefix = f"{JOURNAL_DIR}/"
        self._journal = {rel[len(prefix):] for rel, _, _ in listing if rel.startswith(prefix)}
        runs = {posixpath.dirname(rel) for rel, _, _ in listing
                if posixpath.basename(rel) == MARKER_FILE}
        runs = {r for r in runs if r and _eligible(r)}
        # The same rule as the local walk: a run folder inside another one is not a run.
        runs = {r for r in runs if not any(a in runs for a in _ancestors(r))}
        found: Found = dict.fromkeys(runs)
        for rel, mtime, size in listing:
            folder = posixpath.dirname(rel)
            if posixpath.basename(rel) == RECORD_FILE and folder in found:
                found[folder] = _fold(found[folder], mtime, size)
            elif posixpath.basename(folder) == RECORD_DIR and posixpath.dirname(folder) in found:
                # The append-only record (format 2): a folder of JSON Lines segments.
                run = posixpath.dirname(folder)
                found[run] = _fold(found[run], mtime, size)
        return found

    def _walk_local(self) -> Found:
        found: Found = {}
        root = self.tick.root
        stack: list[tuple[str, int]] = [("", 0)]
        opened = 0
        while stack:
            rel, depth = stack.pop()
            if opened >= MAX_FOLDERS:
                self.tick.problems.append(
                    f"run folder discovery under {self.tick.uri} stopped after {MAX_FOLDERS} "
                    "folders; runs past them are found only through the failure journal"
                )
                break
            opened += 1
            try:
                entries = list(os.scandir(os.path.join(root, rel) if rel else root))
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
            names = {e.name: e for e in entries}
            if rel and MARKER_FILE in names:
                files = [names[RECORD_FILE]] if RECORD_FILE in names else []
                segments = names.get(RECORD_DIR)
                if segments is not None and segments.is_dir(follow_symlinks=False):
                    try:
                        files += list(os.scandir(segments.path))
                    except (FileNotFoundError, NotADirectoryError, PermissionError):
                        pass
                fp: tuple[int, int] | None = None
                for entry in files:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    # ctime too: a copy that keeps the source's times (rsync -a, cp -p)
                    # still moves it, so folders synced in from elsewhere are not missed.
                    fp = _fold(fp, max(st.st_mtime_ns, st.st_ctime_ns), st.st_size)
                found[rel] = fp
                continue  # its sub-folders are checkpoints, not runs
            if depth >= MAX_DEPTH:
                continue
            for e in entries:
                if e.name.startswith(".") or (not rel and e.name == _TOP_SKIP):
                    continue
                if e.is_dir(follow_symlinks=False):
                    stack.append((f"{rel}/{e.name}" if rel else e.name, depth + 1))
        self.tick.stats["lists"] += opened
        return found

    # ------------------------------------------------------------------ the pass
    def scan_records(self, state: ScanState, now: float, rescan_seconds: float) -> None:
        if not state.rec_more and now - state.rec_pass < rescan_seconds:
            return
        found = self.discover()
        self.tick.stats["run_folders_found"] += len(found)
        state.rec_pass = now
        local = isinstance(self.tick.fs, pafs.LocalFileSystem)
        slack = LOCAL_MTIME_SLACK_NS if local else int(self.tick.overlap * 1e9)
        window = state.rec_wm - slack
        changed = sorted(
            ((mt, rel, size) for rel, fp in found.items() if fp is not None
             for mt, size in [fp]
             if mt > window and (state.rec.get(rel) or [None])[0] != f"{mt}:{size}"),
        )
        reads = 0
        state.rec_more = False
        for mtime, rel, size in changed:
            if reads >= MAX_RECORD_READS or self.tick.budget <= 0:
                state.rec_more = True  # the watermark stays before what was not read
                break
            reads += 1
            if not self.check(state, rel, f"{mtime}:{size}", mtime):
                state.rec_more = True
                break
            state.rec_wm = max(state.rec_wm, mtime)
        floor = state.rec_wm - slack
        state.rec = {k: v for k, v in state.rec.items() if int(v[1]) > floor}

    def check(self, state: ScanState, rel: str, fp: str, mtime: int) -> bool:
        """Read one changed record; alert if it ended in a failure no one has alerted.
        False when the tick's budget ran out before the alert (the record waits)."""
        run_path = f"{self.tick.root}/{rel}"
        key = f"rec:{rel}"
        previous = state.rec.get(rel)
        state.rec[rel] = [fp, mtime, previous[2] if previous else None]
        self.tick.stats["records_read"] += 1
        try:
            record = read_record(self.tick.fs, run_path)
        except (TrainResultsError, OSError, ValueError) as exc:
            # Torn (a sync still copying it) or unreadable: retried from ``pending``.
            if not self.tick.read_failed(state, key, exc, f"run record of {self._uri(rel)}"):
                state.pending[key].setdefault("fp", fp)
            else:
                state.pending.pop(key, None)
            return True
        state.pending.pop(key, None)
        error = record.error if record is not None else None
        if record is None or record.status != "failed" or error is None:
            return True
        failure = self._failure_key(rel, error)
        if state.rec[rel][2] == failure or self._journal_covers(rel, error):
            return True  # alerted already, or the journal source alerts it
        if not self.tick.take():
            del state.rec[rel]  # not handled: read again on the next tick
            return False
        state.rec[rel][2] = failure
        self.tick.emit(state, key, self.alert(rel, error), first=True)
        return True

    def retry(self, state: ScanState, key: str, *, first: bool) -> None:
        """Retry a record that could not be read, or an alert the sink did not take."""
        rel = key[len("rec:"):]
        entry = state.pending.get(key, {})
        if entry.get("deliver"):
            try:
                record = read_record(self.tick.fs, f"{self.tick.root}/{rel}")
            except (TrainResultsError, OSError, ValueError) as exc:
                self.tick.problems.append(f"could not re-read {self._uri(rel)}: {exc}")
                return
            error = record.error if record is not None else None
            if error is None:  # resumed and running again: nothing to deliver any more
                state.pending.pop(key, None)
                return
            self.tick.emit(state, key, self.alert(rel, error), first=first)
            return
        state.rec.pop(rel, None)
        self.check(state, rel, str(entry.get("fp", "")), state.rec_wm)

    # ------------------------------------------------------------------ helpers
    def _uri(self, rel: str) -> str:
        return storage.to_uri(self.tick.fs, f"{self.tick.root}/{rel}")

    @staticmethod
    def _failure_key(rel: str, error: Any) -> str:
        """The journal name ``RunRecorder`` gives this failure (``journal_key(time, name)``):
        the failure's identity, shared with the journal source's alert id."""
        when = getattr(error, "time", None)
        if isinstance(when, int | float):
            return journal_key(float(when), rel)
        return f"record-{alert_id(rel, error.error_type, error.message)}.json"

    def _journal_covers(self, rel: str, error: Any) -> bool:
        """True when the journal holds an entry for this run at or after this failure.

        ``RunRecorder`` names the entry for a failure ``journal_key(failure time, name)``, so
        an entry of the same run no older than the failure is that failure (or a later one,
        which the journal source alerts): the journal source owns it. One listing of the
        journal per pass (S3: the flat listing already made).
        """
        if self._journal is None:
            jdir = f"{self.tick.root}/{JOURNAL_DIR}"
            if isinstance(self.tick.fs, pafs.LocalFileSystem):
                try:
                    self._journal = set(os.listdir(jdir))
                except (FileNotFoundError, NotADirectoryError):
                    self._journal = set()
            else:
                self._journal = {i.base_name for i in storage.list_dir(self.tick.fs, jdir)}
            self.tick.stats["lists"] += 1
        if self._latest is None:
            width = len(storage.stamp(0.0))
            self._latest = {}
            for name in self._journal:
                when = storage.parse_stamp(name)
                if when is not None and name.endswith(".json") and name[width : width + 1] == "-":
                    run = name[width + 1 : -len(".json")]
                    self._latest[run] = max(self._latest.get(run, when), when)
        latest = self._latest.get(journal_key(0.0, rel)[len(storage.stamp(0.0)) + 1 : -len(".json")])
        when = getattr(error, "time", None)
        if latest is None:
            return False
        # Names keep microseconds: allow their rounding.
        return not isinstance(when, int | float) or latest >= float(when) - 1e-5

    def alert(self, rel: str, error: Any) -> dict[str, Any]:
        run_path = f"{self.tick.root}/{rel}"
        run_uri = storage.to_uri(self.tick.fs, run_path)
        failure = self._failure_key(rel, error)
        when = getattr(error, "time", None)
        extra: dict[str, Any] = {
            "run_name": rel,
            "failed_at": storage.iso(when) if isinstance(when, int | float) else None,
            "storage_path": self.tick.uri,
            "journal_key": None,
            "found_by": "run_record",
            "layout": "v2",
        }
        try:
            self.tick.stats["runs_read"] += 1
            context = training_context(
                TrainResult(**read_run(self.tick.fs, run_path, missing_checkpoints="drop"))
            )
        except (TrainResultsError, OSError, ValueError) as exc:
            context = {"run_uri": run_uri, "error_type": error.error_type,
                       "message": error.message, "worker_failures": error.worker_failures}
            extra["context_error"] = f"{type(exc).__name__}: {exc}"
        context["run_uri"] = run_uri
        context["error_type"] = context.get("error_type") or error.error_type
        context["message"] = context.get("message") or error.message
        return build_alert(
            "ray_run_failed",
            context,
            secrets=self.tick.secrets,
            alert_id=alert_id("ray_run_failed", run_uri, failure),
            **extra,
        )

    def alerted_keys(self, state: ScanState) -> set[str]:
        """Journal names this source alerted (the journal source skips them)."""
        return {str(v[2]) for v in state.rec.values() if v[2]}


def _eligible(rel: str) -> bool:
    parts = rel.split("/")
    return (
        len(parts) <= MAX_DEPTH
        and parts[0] != _TOP_SKIP
        and not any(p.startswith(".") or not p for p in parts)
    )


def _ancestors(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _fold(fp: tuple[int, int] | None, mtime: int, size: int) -> tuple[int, int]:
    """A record's fingerprint over its files (the old single file, or format 2's segments):
    the newest time and the total size; either moves when the record changes."""
    if fp is None:
        return (mtime, size)
    return (max(fp[0], mtime), fp[1] + size)
