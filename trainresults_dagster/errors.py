"""Every error trainresults_dagster raises on purpose, grouped by concept.

Each message names what was expected, what arrived, and where. Each error also subclasses
the builtin a caller would naturally catch (``ValueError``, ``FileNotFoundError``,
``RuntimeError``), so code written against Ray's own errors keeps working: Ray's
``Result.from_path`` raises ``RuntimeError`` for a missing run folder or one without a
snapshot, and so ``except RuntimeError:`` catches ours too.
"""

from __future__ import annotations

import re
from typing import Any

#: Secrets that storage services and their SDKs echo in error text: a SAS token's signature
#: (pyarrow's and azure-core's messages carry the whole request URL), an account key or a
#: SAS inside a connection string.
_SECRETS = re.compile(r"(?i)\b(sig|AccountKey|SharedAccessSignature|access_token|token)=([^&;\s'\"]+)")


def redact(text: str) -> str:
    """``text`` with the values of ``sig=``, ``AccountKey=``, ``SharedAccessSignature=`` and
    ``token=`` replaced by ``***``."""
    return _SECRETS.sub(r"\1=***", text)


def scrub(exc: BaseException) -> BaseException:
    """Redact ``exc`` and its causes in place (their args and an SDK's ``message``), so a
    traceback that Dagster or a log prints carries no credential. Returns ``exc``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        try:
            current.args = tuple(redact(a) if isinstance(a, str) else a for a in current.args)
            message = getattr(current, "message", None)
            if isinstance(message, str):
                current.message = redact(message)  # type: ignore[attr-defined]
        except (AttributeError, TypeError):  # an exception type with read-only fields
            pass
        current = current.__cause__ or current.__context__
    return exc


class TrainResultsError(Exception):
    """Base class of every error raised on purpose by trainresults_dagster."""


class CorruptDataError(TrainResultsError, ValueError):
    """A file we read exists but cannot be parsed (torn, not JSON, wrong shape, unsafe name)."""


# ------------------------------------------------------------------ storage
class StorageError(TrainResultsError, OSError):
    """A storage request kept failing after bounded retries. Its message is redacted
    (``redact``); code raising it ``from`` a service error ``scrub``s that error first."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ShortReadError(OSError):
    """Fewer bytes arrived than the object holds (a transient fault; storage retries it)."""


class UnsafePathError(TrainResultsError, ValueError):
    """A name read from storage or given by a user would escape its folder."""


# ------------------------------------------------------------------ runs
class RunNotFoundError(TrainResultsError, FileNotFoundError, RuntimeError):
    """Nothing exists at the given run path (Ray raises ``RuntimeError`` here)."""


class NotARunDirectoryError(TrainResultsError, ValueError, RuntimeError):
    """The path exists but holds no Ray Train run (V2 run directory or V1 trial directory)."""


class NoSnapshotError(NotARunDirectoryError):
    """A V2 run directory without ``checkpoint_manager_snapshot.json``: nothing persisted yet."""


class CorruptRunError(CorruptDataError):
    """A run file or a stored result exists but cannot be parsed."""


class CheckpointMissingError(TrainResultsError, FileNotFoundError):
    """A checkpoint named by the run's snapshot (or a manifest) is gone from storage."""


class CheckpointIntegrityError(CheckpointMissingError):
    """A registered version's files are missing or differ from what ``register`` recorded."""


class NoEligibleCheckpointError(TrainResultsError, ValueError):
    """No checkpoint has a finite numeric value for the requested metric."""


class NoEligibleTrialError(NoEligibleCheckpointError, RuntimeError):
    """No trial of a sweep has a finite numeric value for the requested metric (Ray's
    ``get_best_result`` raises ``RuntimeError`` here)."""


class CorruptValueError(CorruptDataError):
    """A small value stored by ``JsonIOManager`` cannot be parsed."""


# ------------------------------------------------------------------ registry
class PromotionConflict(TrainResultsError, RuntimeError):
    """The alias moved between reading it and writing it (compare-and-set lost)."""


class VersionNotFoundError(TrainResultsError, LookupError):
    """The registry has no such model, version or alias (or nothing to roll back to)."""


class CorruptRegistryError(CorruptDataError):
    """A registry record exists but cannot be parsed (not JSON, wrong shape, unsafe path)."""


# ------------------------------------------------------------------ hand-off
class InferenceInputError(TrainResultsError, ValueError):
    """The input is missing, empty or not Parquet. Nothing was written."""


class BatchInferenceError(TrainResultsError, RuntimeError):
    """A batch-inference run failed after its input was accepted. Nothing was committed."""


class PredictorError(BatchInferenceError):
    """The predictor failed to load, raised, or returned the wrong shape for a batch."""


class OutputNotCommittedError(TrainResultsError, FileNotFoundError):
    """The output folder has no ``_SUCCESS``: missing, still being written, or not ours."""


class OutputInUseError(TrainResultsError, ValueError):
    """The output location holds data that batch inference did not write; it is left alone."""


class CorruptOutputError(CorruptDataError):
    """A committed batch-inference output whose manifest cannot be parsed."""


class ServingTargetError(TrainResultsError, RuntimeError):
    """The serving side refused or failed the hand-off; the message says where and why."""


# ------------------------------------------------------------------ webhooks
class WebhookError(TrainResultsError, RuntimeError):
    """A POST failed: a non-2xx answer after retries, or the receiver stayed unreachable."""

    def __init__(self, message: str, *, status: int | None, body_excerpt: str, url: str):
        super().__init__(message)
        self.status = status
        self.body_excerpt = body_excerpt
        self.url = url
