"""A training failure as data, its training context, and the one way it is rendered.

* ``TrainingError``: type, message, traceback, per-rank failures. Ray Train V2 raises
  ``TrainingFailedError`` from ``fit()`` and persists nothing about it; this class carries
  the same information through JSON (manifests, RunRecorder files, alerts) without
  pickling, and is still an ``Exception`` as Ray's docs promise for ``Result.error``.
* ``CONTEXT_KEYS``: the keys of ``runs.result.training_context(result)``: ``{run_uri, error_type, message, worker_failures,
  last_checkpoint_uri, last_metrics}``, what failure metadata and alerts carry (Dagster's
  stock failure alerts say only ``Steps failed: ['train']``).
* ``format_failure(context, markup)``: the one rendering of a failure, as plain text (the
  step's ``dg.Failure``), CommonMark (Dagster metadata) or Slack mrkdwn (alerts).
"""

from __future__ import annotations

import re
import traceback as _tb
from collections.abc import Mapping
from typing import Any, Literal

from trainresults_dagster.runs.metrics import flatten_metrics


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
        cls, worker_exceptions: Mapping[int, BaseException], **kwargs: Any
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


# --------------------------------------------------------------------------------------
# Training context
# --------------------------------------------------------------------------------------

#: Keys of ``training_context``; ``trainresults/<key>`` in Dagster metadata.
CONTEXT_KEYS = (
    "run_uri",
    "error_type",
    "message",
    "worker_failures",
    "last_checkpoint_uri",
    "last_metrics",
)


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------

Markup = Literal["text", "markdown", "slack"]

MAX_MESSAGE_CHARS = 1000
MAX_RANKS_SHOWN = 8
MAX_METRICS_SHOWN = 8

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")


def escape_markdown(text: str) -> str:
    """CommonMark text with every formatting character backslash-escaped."""
    return _MD_SPECIAL.sub(r"\\\1", text)


def fenced(text: str) -> str:
    """A CommonMark code block that no backtick run inside ``text`` can close early."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def slack_code(text: Any) -> str:
    """Untrusted text as Slack inline code: no formatting, links or mentions.

    Slack mrkdwn has no backslash escapes (they would show), so user text goes in code
    spans with backticks neutralised, and ``&``/``<``/``>`` as entities (Slack reads
    ``<!channel>`` and ``<url|x>`` as mentions and links even in code).
    """
    text = " ".join(str(text).split()).replace("`", "'")
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return f"`{text}`" if text else "` `"


def slack_block(text: str) -> str:
    """A Slack fenced block whose content cannot close the fence or start a mention."""
    text = text.replace("```", "`\u200b``").replace("&", "&amp;")
    text = text.replace("<", "&lt;").replace(">", "&gt;")
    return f"```\n{text}\n```"


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def first_line(text: Any) -> str:
    lines = str(text).strip().splitlines()
    return clip(lines[0] if lines else "", 300)


def _inline(text: Any, markup: Markup) -> str:
    if markup == "slack":
        return slack_code(text)
    if markup == "markdown":
        return escape_markdown(" ".join(str(text).split()))
    return str(text)


def _block(text: str, markup: Markup) -> str:
    if markup == "slack":
        return slack_block(text)
    if markup == "markdown":
        return fenced(text)
    return text


def format_failure(
    context: Mapping[str, Any], markup: Markup = "text", *, max_message: int = MAX_MESSAGE_CHARS
) -> list[str]:
    """The lines that describe a failure, from a ``training_context``-shaped mapping.

    Error type, the message (or, for a worker-group failure, one line per failed rank),
    the run, the last checkpoint that persisted and the last metrics. Every string that
    comes from a run or a user is quoted for ``markup``, so it cannot format, link or
    mention. Callers put their own heading above (IO manager failure, metadata, alert).
    """
    error_type = context.get("error_type") or "failure"
    if markup == "markdown":
        lines = [f"**{escape_markdown(str(error_type))}**"]
    else:
        lines = [f"Error: {_inline(error_type, markup)}"]
    failures = context.get("worker_failures") or {}
    message = context.get("message")
    # Slack shows a short summary: the ranks say it all. Elsewhere the message comes first.
    if message and (markup != "slack" or not failures):
        lines.append(_block(clip(str(message), max_message), markup))
    if failures:
        lines.append("Failed ranks:")
        shown = sorted(failures.items(), key=lambda kv: rank_order(kv[0]))
        for rank, text in shown[:MAX_RANKS_SHOWN]:
            label = str(rank) if str(rank).isdigit() else _inline(rank, markup)
            lines.append(f"• rank {label}: {_inline(first_line(text), markup)}")
        if len(failures) > MAX_RANKS_SHOWN:
            lines.append(f"• ... and {len(failures) - MAX_RANKS_SHOWN} more")
    if context.get("run_uri"):
        lines.append(f"Run: {_inline(context['run_uri'], markup)}")
    if context.get("last_checkpoint_uri"):
        lines.append(f"Last checkpoint: {_inline(context['last_checkpoint_uri'], markup)}")
    else:
        lines.append("Last checkpoint: none persisted")
    metrics = context.get("last_metrics")
    if isinstance(metrics, Mapping) and metrics:
        flat = [(k, v) for k, v in flatten_metrics(metrics).items()
                if isinstance(v, bool | int | float)
                or (isinstance(v, str) and v in ("NaN", "Infinity", "-Infinity"))]
        if flat:
            text = ", ".join(f"{k}={v}" for k, v in flat[:MAX_METRICS_SHOWN])
            lines.append("Last metrics: " + _inline(text, markup))
    return lines


def rank_order(rank: Any) -> tuple[int, str]:
    try:
        return (int(rank), "")
    except (TypeError, ValueError):
        return (1 << 30, str(rank))
