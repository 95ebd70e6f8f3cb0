"""``RecordWriter``: appends a run record (format 2, see ``runs/record.py``) at constant cost.

``RunRecorder`` calls it from the Ray Train controller; it needs no ray. Events are
serialised once, when they happen, and buffered; a flush writes only the new lines:

* local disk: one ``write`` onto the writer's own file (opened ``O_APPEND``), then
  ``fsync``. A failed write is cut back (``ftruncate``) to the last whole line.
* object stores (S3): one new object per flush, ``<writer>.<seq>.jsonl``; nothing is ever
  rewritten. When the run ends, one more object holds every line (``.all.jsonl``) so a
  finished run reads in one GET; total bytes written stay under 2x the record.

``FlushPolicy`` says when buffered reports are flushed: every ``every_reports`` reports or
``every_seconds`` after the oldest unflushed one, whichever comes first. ``write(...,
durable=True)`` (failures, final status) flushes before it returns. A line is also written
every ``heartbeat_seconds`` of silence, so readers can tell a live run from a dead one.
Storage errors never propagate out of ``flush``: the lines stay buffered and go out with
the next flush (policy flushes back off, 1 s doubling to ``every_seconds``, so an outage
costs no request per report); past ``MAX_PENDING_BYTES`` the buffered reports are dropped
and a ``gap`` event keeps the indices of later reports right.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow.fs as pafs

import trainresults_dagster.storage as storage

from .record import RECORD_DIR, jsonable_metrics, segment_name

logger = logging.getLogger(__name__)

#: Buffered bytes kept while storage refuses writes; beyond it, buffered reports are dropped.
MAX_PENDING_BYTES = 64 * 2**20
#: Lines kept in memory for the compacted copy on object stores; beyond it, none is written
#: (readers then read the segments, which are complete on their own).
MAX_COMPACT_BYTES = 64 * 2**20

ENV_PREFIX = "TRAINRESULTS_RECORD_"


@dataclass(frozen=True)
class FlushPolicy:
    """When buffered reports reach storage. Failures and final statuses never wait.

    Attributes:
        every_reports: flush once this many reports are buffered (1 = every report).
        every_seconds: flush once the oldest buffered report is this old. Checked on every
            controller callback, which Ray Train calls at least once per health-check poll
            (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``, default 2 s).
        heartbeat_seconds: write a ``heartbeat`` line after this long without any write, so
            a reader sees the controller is alive (``RunRecord.status_at``).
    """

    every_reports: int = 1000
    every_seconds: float = 10.0
    heartbeat_seconds: float = 60.0

    def __post_init__(self) -> None:
        # Checked when the recorder is built (on the driver), not in the controller, where
        # a bad value could only be logged.
        if isinstance(self.every_reports, bool) or not isinstance(self.every_reports, int) or self.every_reports < 1:
            raise ValueError(
                f"expected FlushPolicy.every_reports to be an int >= 1, got {self.every_reports!r}"
            )
        for name in ("every_seconds", "heartbeat_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"expected FlushPolicy.{name} to be a number > 0, got {value!r}")

    @classmethod
    def from_env(cls, environ: Any = None, **overrides: Any) -> FlushPolicy:
        """Defaults, then ``TRAINRESULTS_RECORD_FLUSH_REPORTS`` / ``_FLUSH_SECONDS`` /
        ``_HEARTBEAT_SECONDS``, then ``overrides`` that are not None (keyword arguments)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field_name, env, convert in (
            ("every_reports", "FLUSH_REPORTS", int),
            ("every_seconds", "FLUSH_SECONDS", float),
            ("heartbeat_seconds", "HEARTBEAT_SECONDS", float),
        ):
            raw = environ.get(ENV_PREFIX + env)
            if raw is not None and raw.strip():
                try:
                    values[field_name] = convert(raw)
                except ValueError as exc:
                    raise ValueError(
                        f"expected {ENV_PREFIX + env} to be a {convert.__name__}, got {raw!r}"
                    ) from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def max_writes(self, reports: int, seconds: float, events: int = 0) -> int:
        """The most flushes ``reports`` reports over ``seconds`` can cause, plus ``events``
        durable writes: the PUT bound on object stores."""
        by_count = reports // self.every_reports
        by_time = int(seconds // min(self.every_seconds, self.heartbeat_seconds)) + 1
        return by_count + by_time + events


class RecordWriter:
    """Appends one writer's lines under ``<run_path>/trainresults_record/``.

    Not thread-safe: the controller calls it from one thread.
    """

    def __init__(
        self,
        fs: pafs.FileSystem,
        run_path: str,
        writer: str,
        policy: FlushPolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fs = fs
        self.folder = f"{run_path}/{RECORD_DIR}"
        self.writer = writer
        self.policy = policy or FlushPolicy()
        self.clock = clock
        self.local = isinstance(fs, pafs.LocalFileSystem)
        self.stats = {"flushes": 0, "writes": 0, "bytes": 0, "errors": 0, "dropped_reports": 0}
        self._pending: list[tuple[bool, bytes]] = []  # (is a report, line)
        self._pending_bytes = 0
        self._pending_reports = 0
        self._oldest_report_at: float | None = None
        self._last_write_at = clock()
        self._dropped = 0
        self._seq = 0
        self._fd: int | None = None
        self._good_size = 0
        self._kept: list[bytes] | None = None if self.local else []
        self._kept_bytes = 0
        self._closed = False
        self._backoff = 0.0
        self._retry_at = 0.0  # after a failed flush, policy flushes wait until then

    # ------------------------------------------------------------------ adding lines
    def write(self, event: dict[str, Any], *, durable: bool = False) -> None:
        """Buffer one event (``event`` key included); flush now when ``durable``."""
        self._add(storage.dumps(event, nan="keep", compact=True) + b"\n", report=False)
        if durable:
            self.flush()

    def report(self, metrics: Any, checkpoint_dir_name: str | None, when: float | None = None) -> None:
        """Buffer one report; flush when the policy says so."""
        now = self.clock() if when is None else when
        line = storage.dumps(
            {"event": "report", "time": now, "metrics": jsonable_metrics(metrics),
             "checkpoint_dir_name": checkpoint_dir_name},
            nan="keep", compact=True,
        ) + b"\n"
        self._add(line, report=True)
        self._pending_reports += 1
        if self._oldest_report_at is None:
            self._oldest_report_at = now
        if now >= self._retry_at and (
            self._pending_reports >= self.policy.every_reports
            or now - self._oldest_report_at >= self.policy.every_seconds
        ):
            self.flush()

    def tick(self, now: float | None = None) -> None:
        """Time-based flush and heartbeat; call it often (every controller callback)."""
        now = self.clock() if now is None else now
        if now < self._retry_at:
            return
        if self._oldest_report_at is not None and now - self._oldest_report_at >= self.policy.every_seconds:
            self.flush()
        elif not self._pending and now - self._last_write_at >= self.policy.heartbeat_seconds:
            self.write({"event": "heartbeat", "time": now}, durable=True)

    def _add(self, line: bytes, *, report: bool) -> None:
        self._pending.append((report, line))
        self._pending_bytes += len(line)
        if self._pending_bytes > MAX_PENDING_BYTES:
            self._drop_reports()

    def _drop_reports(self) -> None:
        """Storage has refused writes for a long time: keep events, drop buffered reports."""
        kept = [(is_report, ln) for is_report, ln in self._pending if not is_report]
        dropped = len(self._pending) - len(kept)
        self._dropped += dropped
        self.stats["dropped_reports"] += dropped
        self._pending = kept
        self._pending_bytes = sum(len(ln) for _, ln in kept)
        self._pending_reports = 0
        self._oldest_report_at = None
        logger.warning("RunRecorder: storage at %s refused writes for too long; dropped %d "
                       "buffered reports", storage.to_uri(self.fs, self.folder), dropped)

    # ------------------------------------------------------------------ flushing
    def flush(self) -> bool:
        """Write every buffered line. Returns False (and keeps them) if storage failed."""
        if not self._pending and not self._dropped:
            return True
        lines = [ln for _, ln in self._pending]
        if self._dropped:
            gap = {"event": "gap", "time": self.clock(), "reports": self._dropped}
            lines = [storage.dumps(gap, compact=True) + b"\n", *lines]
        data = b"".join(lines)
        self.stats["flushes"] += 1
        try:
            if self.local:
                self._append_local(data)
            else:
                self._put_segment(data)
        except Exception as exc:  # noqa: BLE001 - recording must never fail the training run
            self.stats["errors"] += 1
            # Reports wait (1 s, doubling, at most every_seconds) instead of trying storage
            # on every report; failures and final statuses still try at once.
            self._backoff = min(max(1.0, 2 * self._backoff), self.policy.every_seconds)
            self._retry_at = self.clock() + self._backoff
            logger.warning("RunRecorder: could not write %d record lines to %s (kept for the "
                           "next flush): %s", len(lines), storage.to_uri(self.fs, self.folder), exc)
            return False
        self.stats["writes"] += 1
        self.stats["bytes"] += len(data)
        self._pending = []
        self._pending_bytes = 0
        self._pending_reports = 0
        self._oldest_report_at = None
        self._dropped = 0
        self._last_write_at = self.clock()
        self._backoff, self._retry_at = 0.0, 0.0
        return True

    def _append_local(self, data: bytes) -> None:
        if self._fd is None:
            os.makedirs(self.folder, exist_ok=True)
            path = f"{self.folder}/{segment_name(self.writer, 0)}"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._good_size = os.fstat(fd).st_size
            self._fd = fd
            storage.fsync_path(self.folder)  # the new file's name is durable too
        fd = self._fd
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except OSError:
            # Cut a partial append back, so the file keeps ending on a whole line.
            try:
                os.ftruncate(fd, self._good_size)
            except OSError:
                pass
            raise
        self._good_size += len(data)

    def _put_segment(self, data: bytes) -> None:
        # A failed PUT keeps the same sequence number: if it did land after all (answer
        # lost), the retry replaces it with the same lines plus newer ones.
        path = f"{self.folder}/{segment_name(self.writer, self._seq)}"
        storage.write_bytes_atomic(self.fs, path, data)
        self._seq += 1
        if self._kept is not None:
            self._kept.append(data)
            self._kept_bytes += len(data)
            if self._kept_bytes > MAX_COMPACT_BYTES:
                self._kept = None

    # ------------------------------------------------------------------ end
    def close(self) -> None:
        """Flush, write the compacted copy (object stores, more than one segment, once),
        release the file. Lines written after ``close`` still reach storage."""
        self.flush()
        if not self._closed and self._kept is not None and self._seq > 1 and not self._pending:
            path = f"{self.folder}/{segment_name(self.writer, self._seq - 1, compacted=True)}"
            data = b"".join(self._kept)
            try:
                storage.write_bytes_atomic(self.fs, path, data)
                self.stats["writes"] += 1
                self.stats["bytes"] += len(data)
            except Exception as exc:  # noqa: BLE001 - the segments are complete without it
                logger.warning("RunRecorder: could not write the compacted record %s: %s",
                               storage.to_uri(self.fs, path), exc)
        self._kept = None
        self._closed = True
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
