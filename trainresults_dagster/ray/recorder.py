"""``RunRecorder``: a Ray Train ``UserCallback`` that persists what Ray Train V2 does not.

Ray Train V2 persists only checkpoint-attached metrics and no error or status, so from
storage a failed run looks like a running one. Attach the recorder and the run folder gets
``trainresults_run.json`` (every rank-0 report, metric-only ones too, and every failure with
whether it was terminal under the run's ``FailureConfig``), and a terminal failure adds one
entry to the storage path's failure journal for sensors. Format: ``runs/record.py``.

It runs in the Ray Train controller process. Writes are safe for concurrent readers:
write-then-rename on local disk, a single PUT on S3. A storage error while recording is
logged and never fails the training run.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from ray.train import UserCallback

import trainresults_dagster.storage as storage
from trainresults_dagster.runs.failure import TrainingError
from trainresults_dagster.runs.record import (
    JOURNAL_DIR,
    RECORD_FILE,
    RunRecord,
    journal_key,
    jsonable_metrics,
    read_record,
    write_record,
)

logger = logging.getLogger(__name__)


def _is_preemption(errors: dict[int, Exception]) -> bool:
    return any(bool(getattr(err, "preempted", False)) for err in errors.values())


class RunRecorder(UserCallback):
    """Record every rank-0 report and every failure of a Ray Train V2 run as JSON.

    Usage::

        from trainresults_dagster.ray import RunRecorder
        trainer = ray.train.torch.TorchTrainer(..., run_config=ray.train.RunConfig(
            name="my-run", storage_path="s3://bucket/runs", callbacks=[RunRecorder()]))

    Args:
        journal: also append terminal failures to ``<storage_path>/_trainresults/failures/``
            so ``build_failed_run_sensor`` finds them without re-reading every run.
    """

    def __init__(self, *, journal: bool = True) -> None:
        self.journal = journal
        self._record: RunRecord | None = None
        self._fs: Any = None
        self._run_path = ""
        self._storage_base = ""
        self._failures = {"worker_group": 0, "preemption": 0}

    # -------------------------------------------------------------- set-up
    def _ensure(self, run_context: Any) -> RunRecord:
        if self._record is not None:
            return self._record
        run_config = run_context.run_config
        storage_path = run_config.storage_path or os.path.expanduser("~/ray_results")
        self._fs, self._storage_base = storage.resolve(storage_path, run_config.storage_filesystem)
        self._run_path = f"{self._storage_base}/{run_config.name}"
        try:
            existing = read_record(self._fs, self._run_path)  # same name = resumed run
        except Exception as exc:  # noqa: BLE001 - a corrupt old record must not stop training
            logger.warning("RunRecorder: ignoring unreadable %s: %s", RECORD_FILE, exc)
            existing = None
        ckpt_cfg = run_config.checkpoint_config
        fail_cfg = run_config.failure_config
        record = existing or RunRecord(
            run_name=run_config.name, run_uri=storage.to_uri(self._fs, self._run_path)
        )
        record.status = "running"
        record.controller_id = getattr(run_context, "run_id", None)
        record.checkpoint_config = {
            "num_to_keep": getattr(ckpt_cfg, "num_to_keep", None),
            "score_attribute": getattr(ckpt_cfg, "checkpoint_score_attribute", None),
            "score_order": getattr(ckpt_cfg, "checkpoint_score_order", None),
        }
        record.failure_config = {
            "max_failures": getattr(fail_cfg, "max_failures", 0),
            "max_preemption_failures": getattr(fail_cfg, "max_preemption_failures", None),
        }
        self._record = record
        return record

    def _write(self) -> None:
        record = self._record
        if record is None:
            return
        try:
            write_record(self._fs, self._run_path, record)
        except Exception as exc:  # noqa: BLE001 - recording must never fail the training run
            logger.warning("RunRecorder: could not write %s: %s", RECORD_FILE, exc)

    # -------------------------------------------------------------- UserCallback
    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        record = self._ensure(run_context)
        rank0 = metrics[0] if metrics else {}
        name = None
        if checkpoint is not None:
            name = str(checkpoint.path).rstrip("/").rsplit("/", 1)[-1]
        record.reports.append(
            {
                "report_index": len(record.reports),
                "time": time.time(),
                "metrics": jsonable_metrics(rank0),
                "checkpoint_dir_name": name,
            }
        )
        self._write()

    def after_exception(
        self, run_context: Any, worker_exceptions: dict[int, Exception]
    ) -> None:
        record = self._ensure(run_context)
        fail_cfg = record.failure_config
        if _is_preemption(worker_exceptions):
            kind, limit = "preemption", fail_cfg.get("max_preemption_failures")
        else:
            kind, limit = "worker_group", fail_cfg.get("max_failures", 0)
        self._failures[kind] += 1
        count = self._failures[kind]
        terminal = limit is not None and limit != -1 and count > limit
        now = time.time()
        error = TrainingError.from_worker_exceptions(
            worker_exceptions, terminal=terminal, attempt=sum(self._failures.values()), time=now
        )
        record.failures.append(error)
        if terminal:
            record.status = "failed"
        self._write()
        if terminal and self.journal:
            entry = {
                "run_uri": record.run_uri,
                "run_name": record.run_name,
                "error_type": error.error_type,
                "message": error.message,
                "time": now,
            }
            path = f"{self._storage_base}/{JOURNAL_DIR}/{journal_key(now, record.run_name)}"
            try:
                storage.write_bytes_atomic(self._fs, path, storage.dumps(entry))
            except Exception as exc:  # noqa: BLE001
                logger.warning("RunRecorder: could not write failure journal %s: %s", path, exc)
