"""``TrainingError``: a training failure as data (type, message, traceback, per-rank failures).

Ray Train V2 raises ``TrainingFailedError`` from ``fit()`` and persists nothing about it.
This class carries the same information through JSON (manifests, RunRecorder files,
alerts) without pickling, and is still an ``Exception`` as Ray's docs promise for
``Result.error``.
"""

from __future__ import annotations

import traceback as _tb
from typing import Any


def _one_line(exc: BaseException) -> str:
    return "".join(_tb.format_exception_only(type(exc), exc)).strip()


class TrainingError(Exception):
    """A failed training run.

    Attributes:
        error_type: class name of the error ``fit()`` raised (e.g. ``"WorkerGroupError"``).
        message: its message.
        traceback: the formatted traceback, or ``""`` when none was available.
        worker_failures: ``{rank: "ExceptionType: message"}`` for worker-group failures.
        terminal: whether the failure ended the run (False for a failure Ray retried).
        attempt: which failure of the run this was (1-based), when known.
    """

    def __init__(
        self,
        error_type: str,
        message: str,
        traceback: str = "",
        worker_failures: dict[int, str] | None = None,
        *,
        terminal: bool = True,
        attempt: int | None = None,
        time: float | None = None,
    ) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = str(error_type)
        self.message = str(message)
        self.traceback = str(traceback or "")
        self.worker_failures = {int(k): str(v) for k, v in (worker_failures or {}).items()}
        self.terminal = bool(terminal)
        self.attempt = attempt
        self.time = time

    def __reduce__(self) -> tuple[Any, ...]:
        # Dagster and Ray may copy exceptions across processes; keep keyword fields.
        return (_rebuild, (self.to_dict(),))

    def __repr__(self) -> str:
        ranks = sorted(self.worker_failures)
        return f"TrainingError({self.error_type!r}, {self.message[:80]!r}, ranks={ranks})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TrainingError) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.error_type, self.message))

    def to_dict(self) -> dict[str, Any]:
        return {
            "error_type": self.error_type,
            "message": self.message,
            "traceback": self.traceback,
            "worker_failures": {str(k): v for k, v in sorted(self.worker_failures.items())},
            "terminal": self.terminal,
            "attempt": self.attempt,
            "time": self.time,
        }

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "<dict>") -> TrainingError:
        if not isinstance(data, dict) or not isinstance(data.get("error_type"), str):
            raise ValueError(
                f"expected an error record with a string 'error_type' in {where}, got {data!r:.200}"
            )
        wf = data.get("worker_failures") or {}
        if not isinstance(wf, dict):
            raise ValueError(f"expected 'worker_failures' to be an object in {where}, got {wf!r:.200}")
        try:
            failures = {int(k): str(v) for k, v in wf.items()}
        except (TypeError, ValueError) as exc:
            raise ValueError(f"expected integer ranks in 'worker_failures' in {where}: {exc}") from exc
        attempt = data.get("attempt")
        return cls(
            data["error_type"],
            str(data.get("message", "")),
            str(data.get("traceback") or ""),
            failures,
            terminal=bool(data.get("terminal", True)),
            attempt=attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else None,
            time=data.get("time") if isinstance(data.get("time"), int | float) else None,
        )

    @classmethod
    def from_exception(cls, exc: BaseException, *, terminal: bool = True) -> TrainingError:
        """Describe any exception; Ray's ``WorkerGroupError`` keeps its per-rank failures."""
        if isinstance(exc, TrainingError):
            return exc
        worker_failures: dict[int, str] = {}
        raw = getattr(exc, "worker_failures", None)
        if isinstance(raw, dict):
            worker_failures = {int(rank): _one_line(err) if isinstance(err, BaseException)
                               else str(err) for rank, err in raw.items()}
        controller = getattr(exc, "controller_failure", None)
        message = str(exc)
        if isinstance(controller, BaseException) and not message:
            message = _one_line(controller)
        tb = "".join(_tb.format_exception(type(exc), exc, exc.__traceback__))
        return cls(type(exc).__name__, message, tb, worker_failures, terminal=terminal)

    @classmethod
    def from_worker_exceptions(
        cls, worker_exceptions: dict[int, BaseException], **kwargs: Any
    ) -> TrainingError:
        """What ``fit()`` would raise for these worker failures (a ``WorkerGroupError``)."""
        ranks = sorted(worker_exceptions)
        lines = [f"[Rank {r}]: {_one_line(worker_exceptions[r])}" for r in ranks]
        message = "Training failed due to worker errors:\n" + "\n".join(lines)
        first = worker_exceptions[ranks[0]] if ranks else None
        tb = (
            "".join(_tb.format_exception(type(first), first, first.__traceback__))
            if first is not None
            else ""
        )
        failures = {r: _one_line(worker_exceptions[r]) for r in ranks}
        return cls("WorkerGroupError", message, tb, failures, **kwargs)


def _rebuild(data: dict[str, Any]) -> TrainingError:
    return TrainingError.from_dict(data)
