"""The files ``RunRecorder`` writes, and how to read them back (no ray needed).

Ray Train V2 keeps only checkpoint-attached metrics and no error or status. The recorder
fills the gap with two kinds of plain JSON file:

``<run>/trainresults_run.json`` (rewritten atomically after every event)::

    {"schema": "trainresults.run/1", "run_name": ..., "run_uri": ..., "controller_id": ...,
     "status": "running" | "failed" | "finished",
     "checkpoint_config": {"num_to_keep": ..., "score_attribute": ..., "score_order": ...},
     "failure_config": {"max_failures": ...},
     "reports": [{"report_index": i, "time": t, "metrics": {...rank 0...},
                  "checkpoint_dir_name": str | null}],
     "failures": [TrainingError.to_dict(), ...],
     "updated_at": t}

``<storage_path>/_trainresults/failures/<UTC time>-<run name>.json`` (written once, when a
failure is terminal): a small, append-only journal whose keys sort by time, so a sensor can
list only what is new with a start-after marker instead of re-reading every run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import CorruptRunError

from .failure import TrainingError

RECORD_FILE = "trainresults_run.json"
RECORD_SCHEMA = "trainresults.run/1"
JOURNAL_DIR = "_trainresults/failures"


def journal_key(when: float, run_name: str) -> str:
    """``20261128T173501.123456Z-<run>.json``: lexicographic order is time order."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_name)
    return f"{storage.stamp(when)}-{safe}.json"


@dataclass
class RunRecord:
    """What ``RunRecorder`` knows about a run (parsed ``trainresults_run.json``)."""

    run_name: str
    run_uri: str
    status: str = "running"
    reports: list[dict[str, Any]] = field(default_factory=list)
    failures: list[TrainingError] = field(default_factory=list)
    checkpoint_config: dict[str, Any] = field(default_factory=dict)
    failure_config: dict[str, Any] = field(default_factory=dict)
    controller_id: str | None = None
    updated_at: float | None = None

    @property
    def error(self) -> TrainingError | None:
        """The failure that ended the run, if the run ended in failure."""
        if self.status == "failed" and self.failures and self.failures[-1].terminal:
            return self.failures[-1]
        return None

    def to_dict(self) -> dict[str, Any]:
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
            if not isinstance(rep, dict) or not isinstance(rep.get("metrics", {}), dict):
                raise CorruptRunError(f"expected report {i} in {where} to be an object with 'metrics'")
            name = rep.get("checkpoint_dir_name")
            if name is not None and not isinstance(name, str):
                raise CorruptRunError(f"expected report {i} checkpoint_dir_name to be a string in {where}")
            idx = rep.get("report_index", i)
            clean_reports.append(
                {
                    "report_index": idx if isinstance(idx, int) else i,
                    "time": rep.get("time"),
                    "metrics": rep.get("metrics") or {},
                    "checkpoint_dir_name": name,
                }
            )
        try:
            parsed_failures = [TrainingError.from_dict(f, where=where) for f in failures]
        except ValueError as exc:
            raise CorruptRunError(str(exc)) from exc
        status = data.get("status")
        return cls(
            run_name=str(data.get("run_name", "")),
            run_uri=str(data.get("run_uri", "")),
            status=status if status in ("running", "failed", "finished") else "running",
            reports=clean_reports,
            failures=parsed_failures,
            checkpoint_config=data.get("checkpoint_config") or {},
            failure_config=data.get("failure_config") or {},
            controller_id=data.get("controller_id"),
            updated_at=data.get("updated_at") if isinstance(data.get("updated_at"), int | float) else None,
        )


def read_record(fs: pafs.FileSystem, run_path: str) -> RunRecord | None:
    """The run's record, or None when the run was not recorded."""
    path = f"{run_path}/{RECORD_FILE}"
    data = storage.read_json_object(fs, path, error=CorruptRunError, what="a RunRecorder record")
    return None if data is None else RunRecord.from_dict(data, where=storage.to_uri(fs, path))


def write_record(fs: pafs.FileSystem, run_path: str, record: RunRecord) -> None:
    """Replace the record atomically (NaN/inf metrics kept as JSON's NaN/Infinity, as Ray does)."""
    record.updated_at = time.time()
    storage.write_json_atomic(fs, f"{run_path}/{RECORD_FILE}", record.to_dict(), nan="keep")


def mark_finished(fs: pafs.FileSystem, run_path: str) -> None:
    """Set a recorded run's status to ``finished`` (``trd.fit`` calls it after success)."""
    record = read_record(fs, run_path)
    if record is not None and record.status != "finished":
        record.status = "finished"
        write_record(fs, run_path, record)


def jsonable_metrics(metrics: Any) -> Any:
    """Metrics as plain JSON types; NaN and inf stay floats (``NaN``/``Infinity``, as Ray's
    snapshot writes them), numpy scalars become Python numbers."""
    return storage.json_value(metrics, nan="keep")
