"""The files ``RunRecorder`` writes, and how to read them back (no ray needed).

Ray Train V2 keeps only checkpoint-attached metrics and no error or status. The recorder
fills the gap with an append-only record in the run folder, plus a failure journal.

``<run>/trainresults_record/`` (format 2, what ``RunRecorder`` writes): JSON Lines files,
one line per event, never rewritten::

    <writer>.<seq>.jsonl       a segment: the lines of one flush (object stores), or
                               every line of the writer, appended (local disk, seq 0)
    <writer>.<seq>.all.jsonl   object stores, at the end of a run: segments 0..seq in one
                               object, so a finished run reads in one GET

``<writer>`` is ``<UTC stamp of the controller's start>-<controller id>``, so name order is
writer order (a run resumed under the same name gets a new writer). Events::

    {"event": "start", "schema": "trainresults.record/2", "run_name", "run_uri",
     "controller_id", "time", "checkpoint_config", "failure_config", "flush"}
    {"event": "report", "time", "metrics": {...rank 0...}, "checkpoint_dir_name": str|null}
    {"event": "failure", "time", "failure": TrainingError.to_dict(), "kind", "decision", "state"}
    {"event": "status", "time", "status": "finished" | "failed" | "aborted"}
    {"event": "heartbeat", "time"}          (nothing else written for a while)
    {"event": "gap", "time", "reports": n}  (n reports dropped: storage refused them too long)

A report's index is its position in the record (writers in order, gaps counted). A reader
drops a torn last line (a local append caught half-way), and raises ``CorruptRunError`` for
anything else it cannot parse.

``<run>/trainresults_run.json`` (format 1, written by earlier versions, still read): one
JSON object rewritten after every event, see ``RunRecord.from_dict``.

``<storage_path>/_trainresults/failures/<UTC time>-<run name>.json`` (written once, when a
failure is terminal): a small, append-only journal whose keys sort by time, so a sensor can
list only what is new with a start-after marker instead of re-reading every run.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import CorruptRunError

from .failure import TrainingError

RECORD_FILE = "trainresults_run.json"
RECORD_SCHEMA = "trainresults.run/1"
RECORD_DIR = "trainresults_record"
RECORD_SCHEMA_V2 = "trainresults.record/2"
JOURNAL_DIR = "_trainresults/failures"

#: Statuses a record can end in; a record without one is ``running``.
FINAL_STATUSES = ("finished", "failed", "aborted")

#: A ``running`` record with no line for longer than this many heartbeats (plus a minute of
#: clock skew) reads as ``unknown``: the controller was killed, or is stuck where Ray calls
#: no callback (waiting for cluster resources).
STALE_HEARTBEATS = 3
STALE_SLACK_SECONDS = 60.0

_SEGMENT = re.compile(
    r"^(?P<writer>\d{8}T\d{6}\.\d{6}Z-[A-Za-z0-9_]+)\.(?P<seq>\d{8})(?P<all>\.all)?\.jsonl$"
)
#: Segments read in parallel on object stores (one GET each).
READ_THREADS = 8


def journal_key(when: float, run_name: str) -> str:
    """``20261128T173501.123456Z-<run>.json``: lexicographic order is time order."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_name)
    return f"{storage.stamp(when)}-{safe}.json"


def segment_name(writer: str, seq: int, *, compacted: bool = False) -> str:
    """``<writer>.<seq>.jsonl`` (``.all.jsonl`` for the compacted copy of 0..seq)."""
    return f"{writer}.{seq:08d}{'.all' if compacted else ''}.jsonl"


def writer_name(when: float, token: str) -> str:
    """``<UTC stamp>-<token>``: sorts by start time; ``token`` keeps only [A-Za-z0-9_]."""
    safe = "".join(c for c in token if c.isalnum() or c == "_")[:32] or "w"
    return f"{storage.stamp(when)}-{safe}"


@dataclass
class RunRecord:
    """What ``RunRecorder`` knows about a run (parsed from either format).

    ``status`` is what the record says (``running`` until a final status is written);
    ``status_at(now)`` is what a reader should believe, see there.
    """

    run_name: str
    run_uri: str
    status: str = "running"
    reports: list[dict[str, Any]] = field(default_factory=list)
    failures: list[TrainingError] = field(default_factory=list)
    checkpoint_config: dict[str, Any] = field(default_factory=dict)
    failure_config: dict[str, Any] = field(default_factory=dict)
    controller_id: str | None = None
    updated_at: float | None = None
    #: Format 2: per failure, how Ray classified it: ``{"kind", "decision", "state"}``.
    failure_details: list[dict[str, Any]] = field(default_factory=list)
    #: Format 2: the writer's heartbeat period; None for format 1 (which has none).
    heartbeat_seconds: float | None = None
    #: Lines dropped because they were torn (a write caught half-way).
    torn_lines: int = 0
    #: 1 (``trainresults_run.json``), 2 (``trainresults_record/``), or 2 when both exist.
    format: int = 1
    writers: int = 0
    segments_read: int = 0

    @property
    def error(self) -> TrainingError | None:
        """The failure that ended the run, if the run ended in failure."""
        if self.status == "failed" and self.failures and self.failures[-1].terminal:
            return self.failures[-1]
        return None

    def status_at(self, now: float) -> str:
        """``finished``, ``failed``, ``aborted``, ``running`` or ``unknown``.

        A final status is what the controller wrote (Ray's own outcome). ``running`` holds
        while the record keeps getting lines: the recorder writes at least one every
        ``heartbeat_seconds`` while the controller runs. Silence for longer than
        ``STALE_HEARTBEATS`` heartbeats plus ``STALE_SLACK_SECONDS`` reads as ``unknown``
        (killed controller, lost node, or a controller blocked where Ray calls no callback).
        Format 1 records have no heartbeat, so their ``running`` is always ``unknown``.
        """
        if self.status in FINAL_STATUSES:
            return self.status
        if self.heartbeat_seconds is None or self.updated_at is None:
            return "unknown"
        stale_after = STALE_HEARTBEATS * self.heartbeat_seconds + STALE_SLACK_SECONDS
        return "running" if now - self.updated_at <= stale_after else "unknown"

    def to_dict(self) -> dict[str, Any]:
        """Format 1 (``trainresults_run.json``), as earlier versions wrote it."""
        return {
            "schema": RECORD_SCHEMA,
            "run_name": self.run_name,
            "run_uri": self.run_uri,
            "controller_id": self.controller_id,
            "status": self.status,
            "checkpoint_config": self.checkpoint_config,
            "failure_config": self.failure_config,
            "reports": self.reports,
            "failures": [f.to_dict() for f in self.failures],
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_dict(cls, data: Any, *, where: str) -> RunRecord:
        """Parse format 1."""
        if not isinstance(data, dict):
            raise CorruptRunError(f"expected a JSON object in {where}, got {type(data).__name__}")
        schema = data.get("schema")
        if not isinstance(schema, str) or not schema.startswith("trainresults.run/"):
            raise CorruptRunError(
                f"expected schema 'trainresults.run/1' in {where}, got {schema!r}"
            )
        reports = data.get("reports") or []
        failures = data.get("failures") or []
        if not isinstance(reports, list) or not isinstance(failures, list):
            raise CorruptRunError(f"expected lists for 'reports' and 'failures' in {where}")
        clean_reports = []
        for i, rep in enumerate(reports):
            clean = _report(rep, where=f"report {i} in {where}")
            idx = rep.get("report_index", i)
            clean["report_index"] = idx if isinstance(idx, int) else i
            clean_reports.append(clean)
        try:
            parsed_failures = [TrainingError.from_dict(f, where=where) for f in failures]
        except ValueError as exc:
            raise CorruptRunError(str(exc)) from exc
        status = data.get("status")
        updated = data.get("updated_at")
        return cls(
            run_name=str(data.get("run_name", "")),
            run_uri=str(data.get("run_uri", "")),
            status=status if status in ("running", "failed", "finished") else "running",
            reports=clean_reports,
            failures=parsed_failures,
            checkpoint_config=data.get("checkpoint_config") or {},
            failure_config=data.get("failure_config") or {},
            controller_id=data.get("controller_id"),
            updated_at=updated if isinstance(updated, int | float) else None,
            format=1,
        )


def _report(rep: Any, *, where: str) -> dict[str, Any]:
    if not isinstance(rep, dict) or not isinstance(rep.get("metrics") or {}, dict):
        raise CorruptRunError(f"expected {where} to be an object with 'metrics'")
    name = rep.get("checkpoint_dir_name")
    if name is not None and not isinstance(name, str):
        raise CorruptRunError(f"expected checkpoint_dir_name of {where} to be a string")
    when = rep.get("time")
    return {
        "report_index": 0,
        "time": when if isinstance(when, int | float) else None,
        "metrics": rep.get("metrics") or {},
        "checkpoint_dir_name": name,
    }


# --------------------------------------------------------------------------------------
# Reading format 2
# --------------------------------------------------------------------------------------


def parse_lines(data: bytes, *, where: str) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects in one segment, and how many torn lines were dropped (0 or 1).

    Only the last line can be torn: the writer appends whole lines and cuts a failed append
    back, so a partial line is a write a reader caught half-way (or a crash mid-write).
    """
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the data ends with a newline
    out: list[dict[str, Any]] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise CorruptRunError(
                f"line {n} of {where} is not JSON ({exc}); only the last line of a record "
                "segment can be torn, so the file is damaged"
            ) from exc
        if not isinstance(obj, dict):
            raise CorruptRunError(f"expected a JSON object on line {n} of {where}, got {obj!r:.80}")
        out.append(obj)
    if tail.strip():
        try:
            obj = json.loads(tail)
        except ValueError:
            return out, 1
        if isinstance(obj, dict):
            out.append(obj)
        else:
            return out, 1
    return out, 0


def _plan(names: list[str]) -> list[tuple[str, list[str]]]:
    """``[(writer, [file names in read order])]``, writers in start order. A compacted copy
    replaces the segments it covers."""
    segments: dict[str, dict[int, str]] = {}
    compacted: dict[str, tuple[int, str]] = {}
    for name in names:
        m = _SEGMENT.match(name)
        if m is None:
            continue  # temp files, foreign files: not ours to judge
        writer, seq = m.group("writer"), int(m.group("seq"))
        if m.group("all"):
            if seq >= compacted.get(writer, (-1, ""))[0]:
                compacted[writer] = (seq, name)
        else:
            segments.setdefault(writer, {})[seq] = name
    plan = []
    for writer in sorted(set(segments) | set(compacted)):
        files = []
        covered = -1
        if writer in compacted:
            covered, name = compacted[writer]
            files.append(name)
        files += [n for s, n in sorted(segments.get(writer, {}).items()) if s > covered]
        plan.append((writer, files))
    return plan


def _read_segments(fs: pafs.FileSystem, folder: str, names: list[str]) -> list[bytes]:
    paths = [f"{folder}/{n}" for n in names]
    if len(paths) < 2 or isinstance(fs, pafs.LocalFileSystem):
        return [_read_segment(fs, p) for p in paths]
    with concurrent.futures.ThreadPoolExecutor(min(READ_THREADS, len(paths))) as pool:
        return list(pool.map(lambda p: _read_segment(fs, p), paths))


def _read_segment(fs: pafs.FileSystem, path: str) -> bytes:
    # Local appends grow while we read: read what is there rather than insisting that the
    # length match the size we stat'ed (storage.read_bytes would call that a short read).
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return b""
    try:
        return storage.read_bytes(fs, path)
    except FileNotFoundError:
        return b""  # listed, then gone: the run folder is being deleted


def _read_v2(fs: pafs.FileSystem, run_path: str, record: RunRecord) -> bool:
    """Append the format 2 events under ``run_path`` to ``record``; False if there are none."""
    folder = f"{run_path}/{RECORD_DIR}"
    names = [i.base_name for i in storage.list_dir(fs, folder) if i.type == pafs.FileType.File]
    plan = _plan(names)
    if not plan:
        return False
    blobs = iter(_read_segments(fs, folder, [n for _, files in plan for n in files]))
    record.format = 2
    index = len(record.reports)
    status = record.status
    for _writer, files in plan:
        record.writers += 1
        status = "running"
        for name in files:
            where = storage.to_uri(fs, f"{folder}/{name}")
            events, torn = parse_lines(next(blobs), where=where)
            record.segments_read += 1
            record.torn_lines += torn
            for n, ev in enumerate(events, 1):
                index, status = _apply(record, ev, index, status, where=f"event {n} of {where}")
    record.status = status
    return True


def _apply(
    record: RunRecord, ev: dict[str, Any], index: int, status: str, *, where: str
) -> tuple[int, str]:
    kind = ev.get("event")
    when = ev.get("time")
    if isinstance(when, int | float) and not isinstance(when, bool):
        record.updated_at = max(record.updated_at or when, when)
    if kind == "report":
        rep = _report(ev, where=where)
        rep["report_index"] = index
        record.reports.append(rep)
        return index + 1, status
    if kind == "failure":
        try:
            error = TrainingError.from_dict(ev.get("failure"), where=where)
        except ValueError as exc:
            raise CorruptRunError(str(exc)) from exc
        record.failures.append(error)
        record.failure_details.append(
            {k: ev.get(k) for k in ("kind", "decision", "state") if isinstance(ev.get(k), str)}
        )
        return index, status
    if kind == "status":
        value = ev.get("status")
        if value not in FINAL_STATUSES:
            raise CorruptRunError(f"expected status to be one of {FINAL_STATUSES} in {where}, got {value!r}")
        return index, str(value)
    if kind == "start":
        schema = ev.get("schema")
        if not isinstance(schema, str) or not schema.startswith("trainresults.record/"):
            raise CorruptRunError(f"expected schema {RECORD_SCHEMA_V2!r} in {where}, got {schema!r}")
        record.run_name = str(ev.get("run_name") or record.run_name)
        record.run_uri = str(ev.get("run_uri") or record.run_uri)
        record.controller_id = ev.get("controller_id") if isinstance(ev.get("controller_id"), str) else None
        for key in ("checkpoint_config", "failure_config"):
            if isinstance(ev.get(key), dict):
                setattr(record, key, ev[key])
        flush = ev.get("flush")
        beat = flush.get("heartbeat_seconds") if isinstance(flush, dict) else None
        record.heartbeat_seconds = float(beat) if isinstance(beat, int | float) and beat > 0 else None
        return index, "running"  # a new writer: the run (re)started
    if kind == "gap":
        lost = ev.get("reports")
        return index + (lost if isinstance(lost, int) and lost > 0 else 0), status
    return index, status  # heartbeat, or an event from a newer writer: nothing to keep


def read_record(
    fs: pafs.FileSystem, run_path: str, names: dict[str, pafs.FileType] | None = None
) -> RunRecord | None:
    """The run's record, or None when the run was not recorded.

    ``names`` is the run folder's listing when the caller has it (saves requests). A run
    recorded in format 1 and then resumed with format 2 reads as one record, format 1 first.
    """
    if names is None:
        names = {i.base_name: i.type for i in storage.list_dir(fs, run_path)}
    record: RunRecord | None = None
    if names.get(RECORD_FILE) == pafs.FileType.File:
        path = f"{run_path}/{RECORD_FILE}"
        data = storage.read_json_object(fs, path, error=CorruptRunError, what="a RunRecorder record")
        if data is not None:
            record = RunRecord.from_dict(data, where=storage.to_uri(fs, path))
    if names.get(RECORD_DIR) == pafs.FileType.Directory:
        fresh = record or RunRecord(run_name=run_path.rstrip("/").rsplit("/", 1)[-1],
                                    run_uri=storage.to_uri(fs, run_path))
        if _read_v2(fs, run_path, fresh):
            record = fresh
    return record


def has_record(names: dict[str, pafs.FileType]) -> bool:
    """Whether a run folder listing shows a record of either format."""
    return RECORD_FILE in names or RECORD_DIR in names


def jsonable_metrics(metrics: Any) -> Any:
    """Metrics as plain JSON types; NaN and inf stay floats (``NaN``/``Infinity``, as Ray's
    snapshot writes them), numpy scalars become Python numbers."""
    return storage.json_value(metrics, nan="keep")
