"""``RunRecorder``: persists what Ray Train V2 does not (metric-only reports, errors, status).

Attach it either way; both give the same record:

* ``RunConfig(callbacks=[RunRecorder()])``, or
* no code change: ``RAY_TRAIN_CALLBACKS=trainresults_dagster.ray.RunRecorder`` in the
  environment of the process that calls ``fit()`` (for a Ray Job, the job's
  ``runtime_env={"env_vars": {...}}``). Ray reads it in ``fit()`` and builds the class
  with no arguments; ``TRAINRESULTS_RECORD_*`` variables set the flush policy then.

It is a ``ControllerCallback`` and ``ReportCallback`` (Ray Train's developer API), not a
``UserCallback``: Ray only calls a ``UserCallback`` given in ``RunConfig.callbacks``
(``data_parallel_trainer.py`` routes those through ``UserCallbackHandler``); one named in
``RAY_TRAIN_CALLBACKS`` is built and never called. A controller callback also sees Ray's
own verdict on each failure, which a ``UserCallback`` does not: ``after_exception`` fires
before the failure policy decides, again on every poll while a preemption drains, and not
at all for controller errors and ``PreemptionError``. So the recorder takes the verdict from
the state the controller moves to:

* ``RestartingState`` / ``ReschedulingState(error)``: Ray retries; the failure is recorded
  as not terminal;
* ``ShuttingDownState(next_state=ErroredState(error))``, or an ``ErroredState`` /
  ``after_controller_finish(result.error)`` it did not see coming: terminal; the record
  gets the failure and ``status: failed``, then the failure journal gets its entry;
* ``FinishedState``: ``status: finished``; ``AbortedState`` or an abort: ``aborted``.

Every hook runs in the controller and is guarded: a storage error (or a bug here) is logged
and never fails training (Ray would turn a raising hook into a non-retryable
``ControllerError``). The record format and its reader are ``runs/record.py``; the writer
and its flush policy ``runs/record_writer.py``.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

# The recorder is a Ray callback, so this module needs ray at import (ruff allows it here
# only). The controller-callback classes are Ray Train's DeveloperAPI; the ``ray`` extra
# pins the version they were checked against (2.60.0).
from ray.train.v2._internal.execution.callback import (
    ControllerCallback,
    ReportCallback,
    WorkerGroupCallback,
)
from ray.train.v2._internal.execution.controller.state import (
    AbortedState,
    ErroredState,
    FinishedState,
    ReschedulingState,
    RestartingState,
    ShuttingDownState,
)

import trainresults_dagster.storage as storage
from trainresults_dagster.runs.failure import TrainingError
from trainresults_dagster.runs.record import (
    JOURNAL_DIR,
    RECORD_SCHEMA_V2,
    journal_key,
    writer_name,
)
from trainresults_dagster.runs.record_writer import FlushPolicy, RecordWriter

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: Run folders that a recorder in this process is writing: a second recorder on the same
#: run (say, in ``RunConfig.callbacks`` and in ``RAY_TRAIN_CALLBACKS``) stays silent.
_ACTIVE: weakref.WeakValueDictionary[str, RunRecorder] = weakref.WeakValueDictionary()

#: Per-rank tracebacks kept in a failure's ``traceback``, at most.
MAX_TRACEBACK_CHARS = 20_000


def _guarded(method: Callable[P, R]) -> Callable[P, R | None]:
    """Run a hook; log (never raise) whatever goes wrong."""

    @functools.wraps(method)
    def hook(*args: P.args, **kwargs: P.kwargs) -> R | None:
        try:
            return method(*args, **kwargs)
        except Exception:  # noqa: BLE001 - a raising hook would fail the training run
            logger.warning("RunRecorder: %s failed; training continues, the record may miss "
                           "this event", method.__name__, exc_info=True)
            return None

    return hook


def failure_kind(error: BaseException) -> str:
    """Which of ``DefaultFailurePolicy``'s budgets Ray charges ``error`` to:
    ``"controller"``, ``"preemption"`` or ``"worker_group"`` (checked in Ray's order)."""
    try:
        from ray.train.v2._internal.execution.failure_handling.default import (
            _is_preemption_failure,
        )
        from ray.train.v2.api.exceptions import ControllerError

        if isinstance(error, ControllerError):
            return "controller"
        if _is_preemption_failure(error):  # type: ignore[arg-type]
            return "preemption"
        return "worker_group"
    except Exception:  # noqa: BLE001 - informational only; the verdict is the state's
        return "unknown"


class _Live:
    """What one recorder holds while its controller runs (never pickled)."""

    def __init__(self, writer: RecordWriter, fs: Any, run_path: str, storage_base: str,
                 run_name: str, run_uri: str) -> None:
        self.writer = writer
        self.fs = fs
        self.run_path = run_path
        self.storage_base = storage_base
        self.run_name = run_name
        self.run_uri = run_uri
        self.seen: list[BaseException] = []  # failures recorded (identity), kept alive
        self.decision: str | None = None
        self.tracebacks: dict[int, str] = {}  # id(worker exception) -> traceback text
        self.status: str | None = None


class RunRecorder(ControllerCallback, ReportCallback, WorkerGroupCallback):
    """Record every rank-0 report, every failure (with Ray's verdict) and the final status.

    Usage::

        from trainresults_dagster.ray import RunRecorder
        trainer = ray.train.torch.TorchTrainer(..., run_config=ray.train.RunConfig(
            name="my-run", storage_path="s3://bucket/runs", callbacks=[RunRecorder()]))

    or ``RAY_TRAIN_CALLBACKS=trainresults_dagster.ray.RunRecorder`` with no code change.

    Args:
        journal: also add terminal failures to ``<storage_path>/_trainresults/failures/``
            so ``build_failed_run_sensor`` finds them without re-reading every run.
        flush_every_reports, flush_every_seconds, heartbeat_seconds: the flush policy
            (``FlushPolicy``; defaults 1000 reports, 10 s, 60 s, or the
            ``TRAINRESULTS_RECORD_FLUSH_REPORTS`` / ``_FLUSH_SECONDS`` /
            ``_HEARTBEAT_SECONDS`` environment variables). Failures and the final status
            are written before the hook returns, whatever the policy.
    """

    def __init__(
        self,
        *,
        journal: bool = True,
        flush_every_reports: int | None = None,
        flush_every_seconds: float | None = None,
        heartbeat_seconds: float | None = None,
    ) -> None:
        self.journal = journal
        self.policy = FlushPolicy.from_env(
            every_reports=flush_every_reports,
            every_seconds=flush_every_seconds,
            heartbeat_seconds=heartbeat_seconds,
        )
        self._live: _Live | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Built on the driver, pickled to the controller: runtime state never travels.
        return {"journal": self.journal, "policy": self.policy, "_live": None}

    @property
    def writer(self) -> RecordWriter | None:
        """The active writer (in the controller, between start and finish), else None."""
        return self._live.writer if self._live else None

    # ------------------------------------------------------------------ ControllerCallback
    @_guarded
    def after_controller_start(self, train_run_context: Any) -> None:
        run_config = train_run_context.run_config
        sc = run_config.storage_context
        fs, run_path = sc.storage_filesystem, sc.experiment_fs_path.rstrip("/")
        owner = _ACTIVE.get(run_path)
        if owner is not None and owner is not self:
            logger.info("RunRecorder: another recorder already records %s; this one stays idle",
                        run_path)
            return
        _ACTIVE[run_path] = self
        run_id = str(getattr(train_run_context, "run_id", "") or uuid.uuid4().hex)
        now = time.time()
        writer = RecordWriter(fs, run_path, writer_name(now, run_id[:12]), self.policy)
        run_uri = storage.to_uri(fs, run_path)
        self._live = _Live(writer, fs, run_path, sc.storage_fs_path.rstrip("/"),
                           run_config.name, run_uri)
        ckpt_cfg, fail_cfg = run_config.checkpoint_config, run_config.failure_config
        writer.write({
            "event": "start",
            "schema": RECORD_SCHEMA_V2,
            "time": now,
            "run_name": run_config.name,
            "run_uri": run_uri,
            "controller_id": run_id,
            "checkpoint_config": {
                "num_to_keep": getattr(ckpt_cfg, "num_to_keep", None),
                "score_attribute": getattr(ckpt_cfg, "checkpoint_score_attribute", None),
                "score_order": getattr(ckpt_cfg, "checkpoint_score_order", None),
            },
            "failure_config": {
                key: getattr(fail_cfg, key, None)
                for key in ("max_failures", "max_preemption_failures", "controller_failure_limit")
            },
            "flush": self.policy.to_dict(),
        }, durable=True)  # readers see "running" from the start

    @_guarded
    def after_controller_state_update(self, previous_state: Any, current_state: Any) -> None:
        live = self._live
        if live is None:
            return
        if isinstance(current_state, RestartingState | ReschedulingState):
            self._failure(live, current_state.training_failed_error, terminal=False,
                          state=current_state)
        elif isinstance(current_state, ShuttingDownState) and isinstance(
            current_state.next_state, ErroredState
        ):
            self._failure(live, current_state.next_state.training_failed_error, terminal=True,
                          state=current_state)
        elif isinstance(current_state, ErroredState):
            # Reached without ShuttingDownState(ErroredState): a shutdown error after
            # success, or a state another raising callback made us miss.
            self._failure(live, current_state.training_failed_error, terminal=True,
                          state=current_state)
        elif isinstance(current_state, FinishedState):
            self._final(live, "finished")
        elif isinstance(current_state, AbortedState):
            self._final(live, "aborted")
        else:
            live.writer.tick()

    @_guarded
    def before_controller_execute_failure_decision(self, failure_decision: Any) -> None:
        if self._live is not None:
            self._live.decision = str(getattr(failure_decision, "value", failure_decision))

    @_guarded
    def after_controller_finish(self, result: Any) -> None:
        live = self._live
        if live is None:
            return
        error = getattr(result, "error", None)
        if error is not None:
            self._failure(live, error, terminal=True, state=None)
        else:
            self._final(live, "finished")
        self._close(live)

    @_guarded
    def before_controller_abort(self) -> None:
        live = self._live
        if live is not None:
            self._final(live, "aborted")
            self._close(live)

    # ------------------------------------------------------------------ ReportCallback
    @_guarded
    def after_report(self, training_report: Any, metrics: list[dict[str, Any]]) -> None:
        live = self._live
        if live is None:
            return
        # metrics[i] is rank i's dict (the lowest surviving rank first while Ray relaxes
        # the report barrier during a preemption).
        rank0 = metrics[0] if metrics else getattr(training_report, "metrics", {})
        checkpoint = getattr(training_report, "checkpoint", None)
        live.writer.report(rank0, self._checkpoint_name(live, checkpoint))

    # ------------------------------------------------------------------ WorkerGroupCallback
    @_guarded
    def after_worker_group_poll_status(self, worker_group_status: Any) -> None:
        # Ray hands the failure policy each rank's exception without its traceback (the
        # worker's traceback travels in UserExceptionWithTraceback, which the poll status
        # unwraps). Keep the text, matched by identity, for the failure record.
        live = self._live
        if live is None:
            return
        for status in worker_group_status.worker_statuses.values():
            error = status.error
            text = getattr(error, "_traceback_str", None)
            base = getattr(error, "_base_exc", None)
            if base is not None and isinstance(text, str):
                live.tracebacks[id(base)] = text

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _checkpoint_name(live: _Live, checkpoint: Any) -> str | None:
        if checkpoint is None:
            return None
        path = str(checkpoint.path).rstrip("/")
        prefix = live.run_path + "/"
        # Relative to the run folder, so nested names (checkpoint_dir_name="a/b") survive.
        return path[len(prefix):] if path.startswith(prefix) else path.rsplit("/", 1)[-1]

    def _failure(self, live: _Live, error: BaseException | None, *, terminal: bool,
                 state: Any) -> None:
        if error is None or any(error is seen for seen in live.seen):
            return
        live.seen.append(error)
        now = time.time()
        record = TrainingError.from_exception(error, terminal=terminal)
        record.attempt = len(live.seen)
        record.time = now
        failures = getattr(error, "worker_failures", None)
        if isinstance(failures, dict):
            texts = [f"[Rank {rank}]\n{live.tracebacks[id(exc)]}" for rank, exc in
                     sorted(failures.items()) if id(exc) in live.tracebacks]
            if texts:
                record.traceback = "\n".join(texts)[:MAX_TRACEBACK_CHARS]
        live.tracebacks.clear()
        decision, live.decision = live.decision, None
        live.writer.write({
            "event": "failure",
            "time": now,
            "failure": record.to_dict(),
            "kind": failure_kind(error),
            "decision": decision or ("RAISE" if terminal else "RETRY"),
            "state": type(state).__name__ if state is not None else "after_controller_finish",
        })
        if terminal and live.status is None:
            self._final(live, "failed")  # flushes the failure with it
        else:
            live.writer.flush()
        if terminal and self.journal:
            self._journal(live, record, now)

    def _final(self, live: _Live, status: str) -> None:
        if live.status is not None:
            return
        live.status = status
        live.writer.write({"event": "status", "time": time.time(), "status": status},
                          durable=True)

    def _journal(self, live: _Live, error: TrainingError, now: float) -> None:
        entry = {
            "run_uri": live.run_uri,
            "run_name": live.run_name,
            "error_type": error.error_type,
            "message": error.message,
            "time": now,
        }
        path = f"{live.storage_base}/{JOURNAL_DIR}/{journal_key(now, live.run_name)}"
        try:
            storage.write_bytes_atomic(live.fs, path, storage.dumps(entry))
        except Exception as exc:  # noqa: BLE001
            logger.warning("RunRecorder: could not write failure journal %s: %s", path, exc)

    def _close(self, live: _Live) -> None:
        live.writer.close()
        if _ACTIVE.get(live.run_path) is self:
            del _ACTIVE[live.run_path]
