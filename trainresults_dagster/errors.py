"""Typed errors. Each names what was expected, what arrived, and where.

They subclass the builtin a caller would naturally catch (``ValueError``,
``FileNotFoundError``, ``RuntimeError``) so code written against Ray's own errors
keeps working.
"""

from __future__ import annotations


class TrainResultsError(Exception):
    """Base class of every error raised on purpose by trainresults_dagster."""


class NotARunDirectoryError(TrainResultsError, ValueError):
    """The path exists but holds no Ray Train run (V2 run directory or V1 trial directory)."""


class NoSnapshotError(NotARunDirectoryError):
    """A V2 run directory without ``checkpoint_manager_snapshot.json``: nothing persisted yet."""


class RunNotFoundError(TrainResultsError, FileNotFoundError):
    """Nothing exists at the given run path."""


class CorruptRunError(TrainResultsError, ValueError):
    """A run file exists but cannot be parsed (torn, truncated, not JSON, wrong shape)."""


class CheckpointMissingError(TrainResultsError, FileNotFoundError):
    """A checkpoint named by the run's snapshot is gone from storage."""


class UnsafePathError(TrainResultsError, ValueError):
    """A name read from storage or given by a user would escape its folder."""


class NoEligibleCheckpointError(TrainResultsError, ValueError):
    """No checkpoint has a finite numeric value for the requested metric."""


class PromotionConflict(TrainResultsError, RuntimeError):
    """The alias moved between reading it and writing it (compare-and-set lost)."""


class StorageError(TrainResultsError, OSError):
    """A storage request kept failing after bounded retries."""


class VersionNotFoundError(TrainResultsError, LookupError):
    """The registry has no such model, version or alias (or nothing to roll back to)."""


class CorruptRegistryError(TrainResultsError, ValueError):
    """A registry record exists but cannot be parsed (not JSON, wrong shape, unsafe path)."""
