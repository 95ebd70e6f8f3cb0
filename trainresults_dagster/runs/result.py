"""``TrainResult``: the Ray-free twin of ``ray.train.Result``.

Same attributes as Ray's (``metrics``, ``checkpoint``, ``error``, ``path``, ``filesystem``,
``metrics_dataframe``, ``best_checkpoints``) plus ``uri``. It reads any run from storage
without importing ray (``from_path``), converts from and to Ray's objects (``from_ray``,
``to_ray``), and serialises to plain JSON for manifests (``to_dict``/``from_dict``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal

import pyarrow.fs as pafs

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import CorruptRunError, TrainResultsError

from .checkpoint import Checkpoint
from .failure import TrainingError
from .metrics import flatten_metrics
from .read import read_run
from .record import RunRecord
from .selection import select_best_checkpoint

if TYPE_CHECKING:
    import pandas as pd
    import ray.train


class TrainResult:
    """A Ray Train run's outcome, read from storage or converted from Ray.

    Attributes:
        metrics: metrics of the latest checkpoint (as Ray's ``Result.metrics``).
        checkpoint: the latest checkpoint, or None.
        error: a ``TrainingError`` when the run failed, else None.
        path: run location with the scheme stripped (``bucket/key`` or ``/abs/dir``).
        filesystem: the pyarrow filesystem ``path`` lives on.
        best_checkpoints: ``[(Checkpoint, metrics)]`` as Ray's ``from_path`` orders them
            (worst to best by the run's score attribute, else registration order).
        history: every known report, chronological: ``{"report_index", "metrics",
            "checkpoint_dir_name"}``. With ``RunRecorder`` this includes metric-only reports.
    """

    def __init__(
        self,
        *,
        path: str,
        filesystem: pafs.FileSystem | None = None,
        metrics: dict[str, Any] | None = None,
        checkpoint: Checkpoint | None = None,
        error: TrainingError | None = None,
        best_checkpoints: list[tuple[Checkpoint, dict[str, Any]]] | None = None,
        history: list[dict[str, Any]] | None = None,
        layout: Literal["v1", "v2"] = "v2",
        report_indices: dict[str, int] | None = None,
        missing_checkpoints: list[str] | None = None,
        record: RunRecord | None = None,
        ray_version: str | None = None,
        status: str | None = None,
        torn_tail: bool = False,
        return_value: Any = None,
        dataframe_loader: Callable[[], pd.DataFrame] | None = None,
    ) -> None:
        self.filesystem, self.path = storage.resolve(path, filesystem)
        self.metrics = metrics
        self.checkpoint = checkpoint
        self.error = error
        self.best_checkpoints = list(best_checkpoints or [])
        self.history = list(history or [])
        self.layout = layout
        self.missing_checkpoints = list(missing_checkpoints or [])
        self.record = record
        self.ray_version = ray_version
        self.torn_tail = torn_tail
        self.return_value = return_value
        self._report_indices = dict(report_indices or {})
        self._status = status
        self._dataframe_loader = dataframe_loader
        self._dataframe: pd.DataFrame | None = None

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_path(
        cls,
        path_or_uri: str | os.PathLike[str],
        filesystem: pafs.FileSystem | None = None,
        *,
        missing_checkpoints: Literal["raise", "drop"] = "raise",
    ) -> TrainResult:
        """Read a V2 run directory or a V1 trial directory (local path or ``s3://`` URI).

        JSON and text only; nothing is unpickled. Torn or stale snapshots (Ray rewrites the
        file in place and deletes evicted folders after writing it) are re-read a few times.
        A checkpoint named by the snapshot but gone from storage raises
        ``CheckpointMissingError``, or is left out with ``missing_checkpoints="drop"`` (then
        listed in ``result.missing_checkpoints``).
        """
        fs, path = storage.resolve(path_or_uri, filesystem)
        return cls(**read_run(fs, path, missing_checkpoints=missing_checkpoints))

    @classmethod
    def from_ray(cls, result: ray.train.Result, *, read_storage: bool = True) -> TrainResult:
        """Convert a ``ray.train.Result`` (V2 or V1).

        By default the run folder is read as well, so the result carries every persisted
        checkpoint in chronological (report) order and the ``RunRecorder`` history: Ray's
        live result keeps only ``num_to_keep`` of them, sorted by score, not by time. The
        live result decides the outcome: its error (or its lack of one: a failure stored by
        an earlier, retried attempt does not make a finished run failed) and return value
        are kept. When storage is not readable (or ``read_storage=False``) only the object
        is used; the report order is then unknown, so checkpoints are ordered by their
        folder names, which is time order for Ray's default ``checkpoint_<date>`` names.
        """
        fs = result.filesystem
        error = TrainingError.from_exception(result.error) if result.error is not None else None
        return_value = getattr(result, "return_value", None)
        if read_storage:
            try:
                stored = cls.from_path(result.path, fs)
            except (TrainResultsError, OSError):
                stored = None
            if stored is not None:
                stored.error = error
                stored.return_value = return_value
                return stored
        best = sorted(
            ((Checkpoint(c.path, c.filesystem, metrics=m), m)
             for c, m in (result.best_checkpoints or [])),
            key=lambda cm: cm[0].dir_name,
        )
        latest = None
        if result.checkpoint is not None:
            latest = Checkpoint(result.checkpoint.path, result.checkpoint.filesystem,
                                metrics=result.metrics)
        history = [{"report_index": i, "metrics": m, "checkpoint_dir_name": c.dir_name}
                   for i, (c, m) in enumerate(best)]
        if latest is not None and latest.dir_name not in {h["checkpoint_dir_name"] for h in history}:
            history.append({"report_index": len(history), "metrics": result.metrics or {},
                            "checkpoint_dir_name": latest.dir_name})
        return cls(
            path=result.path,
            filesystem=fs,
            metrics=result.metrics,
            checkpoint=latest,
            error=error,
            best_checkpoints=best,
            history=history,
            layout="v2" if hasattr(result, "return_value") else "v1",
            report_indices={str(h["checkpoint_dir_name"]): int(h["report_index"]) for h in history},
            return_value=return_value,
        )

    def to_ray(self) -> ray.train.Result:
        """The same run as a ``ray.train.Result`` (imports ray); ``error`` stays a
        ``TrainingError``, which is an ``Exception`` as Ray's type promises."""
        import pandas as pd
        import ray.train

        best = [(c.to_ray(), m) for c, m in self.best_checkpoints]
        return ray.train.Result(
            metrics=self.metrics,
            checkpoint=self.checkpoint.to_ray() if self.checkpoint else None,
            error=self.error,  # type: ignore[arg-type]
            path=self.path,
            metrics_dataframe=pd.DataFrame([m for _, m in best]) if best else None,
            best_checkpoints=best,
            _storage_filesystem=self.filesystem,
        )

    # ------------------------------------------------------------------ views
    @property
    def uri(self) -> str:
        """Scheme-qualified run location: ``s3://bucket/run`` or an absolute local path."""
        return storage.to_uri(self.filesystem, self.path)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def status(self) -> str:
        """``"failed"``, ``"finished"`` or ``"unknown"`` (V2 without RunRecorder stores none)."""
        if self.error is not None:
            return "failed"
        if self._status:
            return self._status
        if self.record is not None:
            return self.record.status if self.record.status != "running" else "unknown"
        return "unknown"

    @property
    def metrics_dataframe(self) -> pd.DataFrame | None:
        """One row per persisted report, chronological, nested keys flattened with ``/``,
        plus ``checkpoint_dir_name``. None when nothing was reported (as Ray's)."""
        if self._dataframe is None:
            if self._dataframe_loader is not None:
                self._dataframe = self._dataframe_loader()
            elif self.history:
                self._dataframe = history_dataframe(self.history)
        return self._dataframe

    @property
    def checkpoints(self) -> list[Checkpoint]:
        """Every checkpoint, in report (chronological) order."""
        return [c for c, _ in self.checkpoints_with_metrics()]

    def checkpoints_with_metrics(self) -> Iterator[tuple[Checkpoint, dict[str, Any]]]:
        pairs = list(self.best_checkpoints)
        if self.checkpoint is not None and self.checkpoint not in {c for c, _ in pairs}:
            pairs.append((self.checkpoint, self.metrics or {}))
        pairs.sort(key=lambda cm: self.report_index_of(cm[0], default=0))
        yield from pairs

    def report_index_of(self, checkpoint: Checkpoint, *, default: int = 0) -> int:
        return self._report_indices.get(checkpoint.dir_name, default)

    def get_best_checkpoint(
        self, metric: str, mode: Literal["min", "max"], *, ties: Literal["latest", "earliest"] = "latest"
    ) -> Checkpoint:
        """Like Ray's, but never a NaN/inf/missing-metric checkpoint (see ``select_best_checkpoint``)."""
        return select_best_checkpoint(self, metric, mode, ties=ties)[0]

    def __repr__(self) -> str:
        return (f"TrainResult(uri={self.uri!r}, checkpoints={len(self.checkpoints)}, "
                f"error={self.error!r})")

    def summary(self) -> dict[str, Any]:
        """A short, JSON-able description for logs, the CLI and alerts."""
        return {
            "uri": self.uri,
            "layout": self.layout,
            "status": self.status,
            "metrics": self.metrics,
            "latest_checkpoint": self.checkpoint.uri if self.checkpoint else None,
            "num_checkpoints": len(self.checkpoints),
            "num_reports": len(self.history),
            "missing_checkpoints": self.missing_checkpoints,
            "error": self.error.to_dict() if self.error else None,
        }

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON description (used by the IO manager's manifest); no history rows."""
        return {
            "uri": self.uri,
            "layout": self.layout,
            "status": self.status,
            "metrics": self.metrics,
            "latest": self.checkpoint.dir_name if self.checkpoint else None,
            "checkpoints": [
                {"name": c.dir_name, "uri": c.uri, "metrics": m,
                 "report_index": self._report_indices.get(c.dir_name)}
                for c, m in self.best_checkpoints
            ],
            "latest_metrics": self.metrics,
            "latest_uri": self.checkpoint.uri if self.checkpoint else None,
            "missing_checkpoints": self.missing_checkpoints,
            "error": self.error.to_dict() if self.error else None,
            "ray_version": self.ray_version,
        }

    @classmethod
    def from_dict(
        cls,
        data: dict[str, Any],
        *,
        filesystem: pafs.FileSystem | None = None,
        checkpoint_filesystem: pafs.FileSystem | None = None,
        dataframe_loader: Callable[[], pd.DataFrame] | None = None,
        where: str = "<dict>",
    ) -> TrainResult:
        """Inverse of ``to_dict``. Checkpoint URIs resolve on ``checkpoint_filesystem``
        (default: ``filesystem``)."""
        if not isinstance(data, dict) or not isinstance(data.get("uri"), str):
            raise CorruptRunError(f"expected a result object with a 'uri' string in {where}")
        ckpt_fs = checkpoint_filesystem or filesystem
        entries = data.get("checkpoints") or []
        if not isinstance(entries, list):
            raise CorruptRunError(f"expected 'checkpoints' to be a list in {where}")
        best: list[tuple[Checkpoint, dict[str, Any]]] = []
        indices: dict[str, int] = {}
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not isinstance(e.get("uri"), str):
                raise CorruptRunError(f"expected checkpoints[{i}] to have a 'uri' string in {where}")
            raw = e.get("metrics")
            metrics: dict[str, Any] = raw if isinstance(raw, dict) else {}
            name = e.get("name") if isinstance(e.get("name"), str) else None
            ckpt = Checkpoint(e["uri"], ckpt_fs, metrics=metrics, dir_name=name)
            best.append((ckpt, metrics))
            if isinstance(e.get("report_index"), int):
                indices[ckpt.dir_name] = e["report_index"]
        latest = None
        if isinstance(data.get("latest_uri"), str):
            latest_name = data.get("latest") if isinstance(data.get("latest"), str) else None
            latest = Checkpoint(data["latest_uri"], ckpt_fs, metrics=data.get("latest_metrics"),
                                dir_name=latest_name)
        error = None
        if data.get("error"):
            try:
                error = TrainingError.from_dict(data["error"], where=where)
            except ValueError as exc:
                raise CorruptRunError(str(exc)) from exc
        return cls(
            path=data["uri"],
            filesystem=filesystem,
            metrics=data.get("metrics"),
            checkpoint=latest,
            error=error,
            best_checkpoints=best,
            layout="v1" if data.get("layout") == "v1" else "v2",
            report_indices=indices,
            missing_checkpoints=data.get("missing_checkpoints") or [],
            ray_version=data.get("ray_version"),
            status=data.get("status") if data.get("status") in ("failed", "finished") else None,
            dataframe_loader=dataframe_loader,
        )


def history_dataframe(history: list[dict[str, Any]]) -> pd.DataFrame:
    """Reports -> DataFrame, nested keys flattened with ``/`` (Ray's nested-metric naming)."""
    import pandas as pd

    frame = pd.DataFrame([flatten_metrics(h.get("metrics") or {}) for h in history])
    frame["checkpoint_dir_name"] = [h.get("checkpoint_dir_name") for h in history]
    return frame


def training_context(result: TrainResult) -> dict[str, Any]:
    """``{run_uri, error_type, message, worker_failures, last_checkpoint_uri, last_metrics}``.

    ``worker_failures`` maps rank (as a string, JSON keys) to ``"Type: message"``.
    ``last_checkpoint_uri``/``last_metrics`` are the latest checkpoint that persisted.
    """
    error = result.error
    return {
        "run_uri": result.uri,
        "error_type": error.error_type if error else None,
        "message": error.message if error else None,
        "worker_failures": {str(k): v for k, v in sorted(error.worker_failures.items())}
        if error
        else {},
        "last_checkpoint_uri": result.checkpoint.uri if result.checkpoint else None,
        "last_metrics": result.metrics,
    }
