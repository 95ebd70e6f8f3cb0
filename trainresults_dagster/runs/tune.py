"""``TrainResultGrid``: the Ray-free twin of ``ray.tune.ResultGrid`` (a Ray Tune sweep).

A sweep is one experiment folder; each trial is a V1 trial folder, so each trial is a
``TrialResult`` (a ``TrainResult`` with ``trial_id``, ``config`` and Ray's ``trial_status``)
read by the same code as a single V1 run. What is read, JSON and text only:

* the newest ``experiment_state-*.json`` (``runs.experiment``): every trial's status,
  config, folder, final metrics and error file name, in one GET;
* per trial, one LIST of its folder (which ``checkpoint_*`` folders still exist: Ray deletes
  evicted ones) and one GET of ``result.json`` (every report, including metric-only ones, and
  the metrics of each checkpoint), plus ``error.txt`` when it failed.

So a read costs 2 requests plus about 3 per trial on S3 (a LIST, and a HEAD and a GET per
file: pyarrow heads every object it opens), however many checkpoints each trial kept.
A trial that runs a Ray Train trainer itself (``TuneReportCallback``) has the Train run's
checkpoints, found through each report's ``checkpoint_path`` (one more LIST per trial). ``tuner.pkl``, ``basic-variant-state-*.json``, ``params.pkl``,
``error.pkl`` and the checkpoint manager (pickled inside the state) are never opened, which
is why ``best_checkpoints`` lists every retained checkpoint in report order: Ray's own
ordering needs the ``CheckpointConfig`` that only the pickles hold.

Selection is NaN-safe where Ray's is not: Ray's ``get_best_result`` compares running
minima that one NaN poisons (``min(nan, x)`` depends on the order) and, with
``filter_nan_and_inf=False`` or a single trial, returns a NaN trial.
"""

from __future__ import annotations

import concurrent.futures
import functools
import numbers
import os
import statistics
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import pyarrow.fs as pafs

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import (
    CorruptRunError,
    NoEligibleTrialError,
    NotARunDirectoryError,
    RunNotFoundError,
    TrainResultsError,
)

from .checkpoint import Checkpoint
from .experiment import TERMINAL_STATUSES, TrialState, read_experiment_state
from .failure import TrainingError, first_line
from .metrics import (
    MISSING,
    finite_number,
    flatten_metrics,
    lookup_metric,
    validate_metric,
    validate_mode,
)
from .read import read_v1_trial
from .result import TrainResult
from .selection import Scope, select_best_among

if TYPE_CHECKING:
    import pandas as pd
    import ray.tune

#: Ray's ``get_best_result`` scopes: the last value, averages, or the best value ever.
TrialScope = Literal["last", "avg", "last-5-avg", "last-10-avg", "all"]
#: Keys Ray adds to every report; the trials table keeps them, the UI table leaves them out.
AUTO_KEYS = frozenset({
    "timestamp", "checkpoint_dir_name", "should_checkpoint", "done", "training_iteration",
    "trial_id", "date", "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip",
    "time_since_restore", "iterations_since_restore", "experiment_tag", "config",
})
#: The trials table's own columns, before ``config/...`` and the metrics.
TABLE_COLUMNS = ("trial_id", "status", "error_type", "error", "num_checkpoints",
                 "num_failures", "uri")
#: Reads in flight when the sweep is on an object store (latency-bound).
READ_THREADS = 8


class TrialResult(TrainResult):
    """One trial of a sweep: a ``TrainResult`` plus what Tune knows about the trial.

    Attributes:
        trial_id: Tune's id (``"682cf_00001"``).
        config: the trial's resolved config (nested, as passed to the trainable).
        trial_status: Ray's status: ``TERMINATED``, ``ERROR``, ``RUNNING``, ``PENDING``,
            ``PAUSED`` (``status`` keeps ``TrainResult``'s failed/finished/unknown).
        experiment_tag: Tune's tag (``"1_kind=raise"``).
        num_failures: failures so far (a trial retried by ``FailureConfig`` has some and
            may still have ended ``TERMINATED``).
    """

    def __init__(
        self,
        *,
        trial_id: str = "",
        config: dict[str, Any] | None = None,
        trial_status: str | None = None,
        experiment_tag: str | None = None,
        num_failures: int = 0,
        **fields: Any,
    ) -> None:
        super().__init__(**fields)
        self.trial_id = trial_id
        self.config = dict(config or {})
        self.trial_status = trial_status
        self.experiment_tag = experiment_tag
        self.num_failures = num_failures

    @property
    def succeeded(self) -> bool:
        return self.trial_status == "TERMINATED" and self.error is None

    def __repr__(self) -> str:
        return (f"TrialResult(trial_id={self.trial_id!r}, status={self.trial_status!r}, "
                f"checkpoints={len(self.checkpoints)}, uri={self.uri!r})")

    def summary(self) -> dict[str, Any]:
        return {"trial_id": self.trial_id, "trial_status": self.trial_status,
                "config": self.config, **super().summary()}

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "trial_id": self.trial_id, "config": self.config,
                "trial_status": self.trial_status, "experiment_tag": self.experiment_tag,
                "num_failures": self.num_failures}

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> TrialResult:
        where = kwargs.get("where", "<dict>")
        trial = super().from_dict(data, **kwargs)
        if not isinstance(trial, TrialResult) or not isinstance(data.get("trial_id"), str):
            raise CorruptRunError(f"expected a trial with a 'trial_id' string in {where}")
        trial.trial_id = data["trial_id"]
        trial.config = data["config"] if isinstance(data.get("config"), dict) else {}
        status = data.get("trial_status")
        trial.trial_status = status if isinstance(status, str) else None
        tag = data.get("experiment_tag")
        trial.experiment_tag = tag if isinstance(tag, str) else None
        failures = data.get("num_failures")
        trial.num_failures = failures if isinstance(failures, int) else 0
        return trial


class BestCheckpoint(NamedTuple):
    """The best checkpoint across a sweep's trials, with the trial it belongs to."""

    trial: TrialResult
    checkpoint: Checkpoint
    metrics: dict[str, Any]


class TrainResultGrid:
    """A Ray Tune sweep read from storage or converted from a ``ray.tune.ResultGrid``.

    Like Ray's ``ResultGrid``: ``len(grid)``, ``grid[i]``, iteration over the trials
    (``TrialResult``), ``errors``, ``num_errors``, ``num_terminated``, ``get_best_result``,
    ``get_dataframe``. Plus ``uri``, ``trials_table`` (one row per trial), NaN-safe
    ``best_checkpoint``/``get_best_checkpoint`` across trials, and JSON for manifests.

    ``metric``/``mode`` are the sweep's objective (``TuneConfig(metric, mode)``): the
    defaults of the selection methods. ``from_ray`` takes both from the ResultGrid; storage
    holds only the metric as JSON, so ``from_path`` takes ``mode=`` from the caller.
    """

    def __init__(
        self,
        *,
        path: str,
        filesystem: pafs.FileSystem | None = None,
        trials: list[TrialResult],
        metric: str | None = None,
        mode: Literal["min", "max"] | None = None,
        state_file: str | None = None,
        table_loader: Callable[[], pd.DataFrame] | None = None,
    ) -> None:
        if mode is not None:
            validate_mode(mode)
        self.filesystem, self.path = storage.resolve(path, filesystem)
        self.trials = list(trials)
        self.metric = metric
        self.mode: Literal["min", "max"] | None = mode
        self.state_file = state_file
        self._table_loader = table_loader
        self._table: pd.DataFrame | None = None

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_path(
        cls,
        path_or_uri: str | os.PathLike[str],
        filesystem: pafs.FileSystem | None = None,
        *,
        metric: str | None = None,
        mode: Literal["min", "max"] | None = None,
    ) -> TrainResultGrid:
        """Read the Tune experiment folder at ``path_or_uri`` (local path or ``s3://``).

        ``metric`` defaults to the sweep's ``TuneConfig.metric`` (stored as JSON); ``mode``
        is only stored pickled, so pass it to make ``get_best_result()`` work without
        arguments.
        """
        fs, path = storage.resolve(path_or_uri, filesystem)
        uri = storage.to_uri(fs, path)
        entries = storage.list_dir(fs, path)
        if not entries:
            info = storage.file_info(fs, path)
            if info.type == pafs.FileType.NotFound:
                raise RunNotFoundError(f"expected a Ray Tune experiment folder at {uri}, "
                                       "but nothing is there")
        names = [e.base_name for e in entries]
        state = read_experiment_state(fs, path, names)
        if state is None:
            raise NotARunDirectoryError(
                f"expected a Ray Tune experiment folder at {uri} (it holds "
                f"experiment_state-<date>.json and one folder per trial), found "
                f"{sorted(names)[:10]!r}. For a single Ray Train run use TrainResult.from_path."
            )

        def one(trial: TrialState) -> TrialResult:
            return read_trial(fs, path, trial)

        if isinstance(fs, pafs.LocalFileSystem) or len(state.trials) < 2:
            trials = [one(t) for t in state.trials]
        else:  # object stores: a few round trips per trial, so overlap them
            with concurrent.futures.ThreadPoolExecutor(min(READ_THREADS, len(state.trials))) as pool:
                trials = list(pool.map(one, state.trials))
        return cls(path=path, filesystem=fs, trials=trials, metric=metric or state.metric,
                   mode=mode, state_file=state.name)

    @classmethod
    def from_ray(cls, result_grid: ray.tune.ResultGrid, *, read_storage: bool = True) -> TrainResultGrid:
        """Convert a ``ray.tune.ResultGrid`` (what ``Tuner.fit()`` returns).

        With ``read_storage`` (default) the experiment folder is read, so every trial has
        its full history and every retained checkpoint, from JSON; the objective
        (``TuneConfig`` metric and mode) comes from the grid. Falls back to the live
        objects when the folder cannot be read (on S3 Tune syncs it only every
        ``sync_period``).
        """
        analysis = getattr(result_grid, "_experiment_analysis", None)
        metric = getattr(analysis, "default_metric", None)
        mode = getattr(analysis, "default_mode", None)
        mode = mode if mode in ("min", "max") else None
        path, fs = result_grid.experiment_path, result_grid.filesystem
        live = [result_grid[i] for i in range(len(result_grid))]
        if read_storage:
            try:
                stored = cls.from_path(path, fs, metric=metric, mode=mode)
            except (TrainResultsError, OSError):
                stored = None
            if stored is not None:
                known = {storage.resolve(t.path, t.filesystem)[1] for t in stored.trials}
                if all(storage.resolve(r.path, fs)[1] in known for r in live):
                    return stored
        trials = [_trial_from_ray(r) for r in live]
        return cls(path=path, filesystem=fs, trials=trials, metric=metric, mode=mode)

    # ------------------------------------------------------------------ Ray's API
    def __len__(self) -> int:
        return len(self.trials)

    def __getitem__(self, index: int) -> TrialResult:
        return self.trials[index]

    def __iter__(self) -> Iterator[TrialResult]:
        return iter(self.trials)

    @property
    def uri(self) -> str:
        return storage.to_uri(self.filesystem, self.path)

    @property
    def experiment_path(self) -> str:
        return self.path

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def errors(self) -> list[TrainingError]:
        return [t.error for t in self.trials if t.error is not None]

    @property
    def num_errors(self) -> int:
        return sum(1 for t in self.trials if t.error is not None)

    @property
    def num_terminated(self) -> int:
        return sum(1 for t in self.trials if t.trial_status == "TERMINATED")

    @property
    def errored_trials(self) -> list[TrialResult]:
        return [t for t in self.trials if t.error is not None]

    @property
    def succeeded(self) -> bool:
        """At least one trial finished without error (a sweep with errored trials is
        still a success; one with no successful trial is not)."""
        return any(t.succeeded for t in self.trials)

    @property
    def finished(self) -> bool:
        """Every trial reached a terminal status (``TERMINATED`` or ``ERROR``)."""
        return all(t.trial_status in TERMINAL_STATUSES for t in self.trials)

    def get_trial(self, trial_id: str) -> TrialResult:
        for trial in self.trials:
            if trial.trial_id == trial_id:
                return trial
        raise KeyError(f"sweep {self.uri} has no trial {trial_id!r}; it has "
                       f"{[t.trial_id for t in self.trials][:10]!r}")

    def get_best_result(
        self,
        metric: str | None = None,
        mode: Literal["min", "max"] | None = None,
        scope: TrialScope = "last",
        filter_nan_and_inf: bool = True,
        *,
        include_errored: bool = True,
    ) -> TrialResult:
        """The trial with the best ``metric`` under ``scope``, as Ray's, but never NaN.

        ``scope`` as Ray's: ``"last"`` (the last reported value), ``"avg"``,
        ``"last-5-avg"``, ``"last-10-avg"``, or ``"all"`` (the best value ever reported).
        Values come from each trial's reports; NaN, inf, missing and non-numeric values
        make a trial ineligible for ``"last"`` and the averages, and are skipped by
        ``"all"`` (where Ray's running minimum can be NaN-poisoned). Ties go to the earlier
        trial, as in Ray. Errored trials take part, as in Ray, unless
        ``include_errored=False``.

        Raises:
            NoEligibleTrialError: no trial has an eligible value (a ``RuntimeError``, as Ray's).
            ValueError: no metric/mode given and the sweep has no objective, or
                ``filter_nan_and_inf=False`` (NaN is never chosen here).
        """
        metric, mode = self._objective(metric, mode)
        if scope not in ("last", "avg", "last-5-avg", "last-10-avg", "all"):
            raise ValueError(f"scope must be one of last, avg, last-5-avg, last-10-avg, all; "
                             f"got {scope!r}")
        if not filter_nan_and_inf:
            raise ValueError(
                "filter_nan_and_inf=False is not supported: TrainResultGrid never chooses a "
                "NaN or inf value (Ray's would); drop the argument"
            )
        best: tuple[float, TrialResult] | None = None
        seen: list[str] = []
        sign = 1.0 if mode == "max" else -1.0
        for trial in self.trials:
            if trial.error is not None and not include_errored:
                continue
            value, why = trial_score(trial, metric, mode, scope)
            if value is None:
                seen.append(f"{trial.trial_id}: {why}")
                continue
            if best is None or sign * value > sign * best[0]:
                best = (value, trial)
        if best is None:
            raise NoEligibleTrialError(
                f"no trial of sweep {self.uri} has a finite numeric {metric!r} "
                f"(mode={mode!r}, scope={scope!r}); saw {'; '.join(seen[:10]) or 'no trials'}"
            )
        return best[1]

    def get_dataframe(
        self, filter_metric: str | None = None, filter_mode: Literal["min", "max"] | None = None
    ) -> pd.DataFrame:
        """Ray's ``ResultGrid.get_dataframe``: one row per trial, its last report (or, with
        ``filter_metric``/``filter_mode``, its report with the best finite value), nested
        keys and the config flattened with ``/``, plus ``logdir`` (which Ray 2.60 fills
        with the trial id; ``trials_table`` has the trial's URI)."""
        import pandas as pd

        if filter_mode is not None:
            validate_mode(filter_mode)
            if not filter_metric:
                raise ValueError("filter_mode needs a filter_metric")
        rows = []
        for trial in self.trials:
            reports = [h.get("metrics") or {} for h in trial.history]
            if not reports:
                continue
            row = reports[-1]
            if filter_metric and filter_mode:
                sign = 1.0 if filter_mode == "max" else -1.0
                scored = [(finite_number(lookup_metric(r, filter_metric)), r) for r in reports]
                scored = [(v, r) for v, r in scored if v is not None]
                if scored:
                    row = max(scored, key=lambda vr: sign * vr[0])[1]
            flat = flatten_metrics(row)
            flat.update({f"config/{k}": v for k, v in flatten_metrics(trial.config).items()})
            flat["logdir"] = trial.trial_id  # as Ray 2.60's (its rows are keyed by trial id)
            rows.append(flat)
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ ours
    def best_checkpoint(
        self,
        metric: str | None = None,
        mode: Literal["min", "max"] | None = None,
        *,
        scope: Scope = "all",
        ties: Literal["latest", "earliest"] = "latest",
        include_errored: bool = True,
    ) -> BestCheckpoint:
        """The best checkpoint across trials (``select_best_checkpoint`` semantics) and its
        trial. ``scope="all"``: every retained checkpoint of every trial; ``"last"``: each
        trial's latest checkpoint (its final model)."""
        metric, mode = self._objective(metric, mode)
        trials = [t for t in self.trials if include_errored or t.error is None]
        what = f"the {len(trials)} trial(s) of sweep {self.uri}" + (
            "" if include_errored else " that did not error"
        )
        index, ckpt, metrics = select_best_among(trials, metric, mode, ties=ties, scope=scope,
                                                 what=what)
        return BestCheckpoint(trials[index], ckpt, metrics)

    def get_best_checkpoint(
        self,
        metric: str | None = None,
        mode: Literal["min", "max"] | None = None,
        *,
        scope: Scope = "all",
        ties: Literal["latest", "earliest"] = "latest",
    ) -> Checkpoint:
        return self.best_checkpoint(metric, mode, scope=scope, ties=ties).checkpoint

    @property
    def trials_table(self) -> pd.DataFrame:
        """One row per trial: ``trial_id``, ``status`` (Ray's), ``error_type``, ``error``
        (first line), ``num_checkpoints``, ``num_failures``, ``uri``, then the config as
        ``config/<key>`` and the final metrics, nested keys joined with ``/`` (the column
        names of Ray's ``get_dataframe``). A metric named like one of the first columns
        becomes ``metrics/<name>``."""
        if self._table is None:
            self._table = self._table_loader() if self._table_loader else trials_frame(self)
        return self._table

    def _objective(
        self, metric: str | None, mode: str | None
    ) -> tuple[str, Literal["min", "max"]]:
        metric = metric or self.metric
        mode = mode or self.mode
        if not metric or mode is None:
            raise ValueError(
                f"expected a metric and a mode for sweep {self.uri}, got metric={metric!r}, "
                f"mode={mode!r}: pass them, or set TuneConfig(metric=..., mode=...) and use "
                "TrainResultGrid.from_ray (storage keeps the mode only as a pickle, so "
                "from_path(..., mode=...) needs it)"
            )
        validate_metric(metric)
        validate_mode(mode)
        return metric, mode  # type: ignore[return-value]  # validated above

    def __repr__(self) -> str:
        return (f"TrainResultGrid(uri={self.uri!r}, trials={len(self.trials)}, "
                f"errors={self.num_errors})")

    def summary(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "kind": "sweep",
            "metric": self.metric,
            "mode": self.mode,
            "num_trials": len(self.trials),
            "num_errored_trials": self.num_errors,
            "num_terminated_trials": self.num_terminated,
            "trials": [
                {"trial_id": t.trial_id, "status": t.trial_status, "uri": t.uri,
                 "config": t.config, "num_checkpoints": len(t.checkpoints),
                 "error": t.error.to_dict() if t.error else None}
                for t in self.trials
            ],
        }

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (the IO manager's sweep manifest); no report rows."""
        return {"uri": self.uri, "metric": self.metric, "mode": self.mode,
                "state_file": self.state_file, "trials": [t.to_dict() for t in self.trials]}

    @classmethod
    def from_dict(
        cls,
        data: dict[str, Any],
        *,
        filesystem: pafs.FileSystem | None = None,
        checkpoint_filesystem: pafs.FileSystem | None = None,
        history_loader: Callable[[str], pd.DataFrame] | None = None,
        table_loader: Callable[[], pd.DataFrame] | None = None,
        where: str = "<dict>",
    ) -> TrainResultGrid:
        """Inverse of ``to_dict``. ``history_loader(trial_id)`` gives a trial's
        ``metrics_dataframe``; ``table_loader()`` the trials table."""
        if not isinstance(data, dict) or not isinstance(data.get("uri"), str):
            raise CorruptRunError(f"expected a sweep object with a 'uri' string in {where}")
        raw = data.get("trials")
        if not isinstance(raw, list):
            raise CorruptRunError(f"expected 'trials' to be a list in {where}")
        trials = []
        for i, item in enumerate(raw):
            trial_id = item.get("trial_id") if isinstance(item, dict) else None
            loader: Callable[[], pd.DataFrame] | None = None
            if history_loader is not None and isinstance(trial_id, str):
                loader = functools.partial(history_loader, trial_id)
            trials.append(TrialResult.from_dict(
                item, filesystem=filesystem, checkpoint_filesystem=checkpoint_filesystem,
                dataframe_loader=loader, where=f"{where} trials[{i}]",
            ))
        mode = data.get("mode")
        metric = data.get("metric")
        return cls(path=data["uri"], filesystem=filesystem, trials=trials,
                   metric=metric if isinstance(metric, str) else None,
                   mode=mode if mode in ("min", "max") else None,
                   state_file=data.get("state_file") if isinstance(data.get("state_file"), str)
                   else None,
                   table_loader=table_loader)


#: ``TrainResultGrid`` under the other name users look for.
TuneResult = TrainResultGrid


# --------------------------------------------------------------------------------------
# Reading one trial
# --------------------------------------------------------------------------------------


def read_trial(fs: pafs.FileSystem, experiment: str, trial: TrialState) -> TrialResult:
    """One trial of the experiment at ``experiment``: one LIST of its folder, its
    ``result.json`` and, if it failed, its ``error.txt``."""
    extra = {"trial_id": trial.trial_id, "config": trial.config, "trial_status": trial.status,
             "experiment_tag": trial.experiment_tag, "num_failures": trial.num_failures}
    if trial.relative_logdir is None:  # not started: no folder yet
        return TrialResult(path=f"{experiment}/{trial.trial_id}", filesystem=fs,
                           metrics=trial.last_result or None, layout="v1", **extra)
    path = f"{experiment}/{trial.relative_logdir}"
    names = {i.base_name: i.type for i in storage.list_dir(fs, path)}
    fields = read_v1_trial(fs, path, names, trial=trial, lookup_state=False)
    if not fields["best_checkpoints"]:
        _link_train_checkpoints(fs, fields)
    return TrialResult(**fields, **extra)


def _link_train_checkpoints(fs: pafs.FileSystem, fields: dict[str, Any]) -> None:
    """Ray Train inside a Tune trial (the Ray 2.60 way to tune a Train V2 trainer: the
    trial runs ``trainer.fit()`` with ``TuneReportCallback``). Tune then keeps no
    checkpoint of its own; each report carries ``checkpoint_path``, the Train run's
    checkpoint (a path without scheme, on the same storage). Those are the trial's
    checkpoints: one LIST of each Train run folder (one per trial) says which of them
    Train's retention left, so the cost stays constant in the number of checkpoints."""
    reports = [(h["report_index"], h["metrics"]) for h in fields["history"]
               if isinstance((h.get("metrics") or {}).get("checkpoint_path"), str)]
    if not reports:
        return
    paths = {idx: storage.resolve(row["checkpoint_path"], fs)[1] for idx, row in reports}
    present: set[str] = set()
    for parent in sorted({p.rsplit("/", 1)[0] for p in paths.values()}):
        present.update(i.path.rstrip("/") for i in storage.list_dir(fs, parent)
                       if i.type == pafs.FileType.Directory)
    pairs: list[tuple[Checkpoint, dict[str, Any]]] = []
    indices: dict[str, int] = {}
    for idx, row in reports:
        path = paths[idx]
        name = path.rsplit("/", 1)[-1]
        if path in present and name not in indices:
            pairs.append((Checkpoint(path, fs, metrics=row, dir_name=name), row))
            indices[name] = idx
    fields.update(best_checkpoints=pairs, checkpoint=pairs[-1][0] if pairs else None,
                  report_indices=indices)


def _trial_from_ray(result: Any) -> TrialResult:
    """A trial from a live ``ray.tune.Result`` (no storage read)."""
    trial = TrialResult.from_ray(result, read_storage=False)
    if not isinstance(trial, TrialResult):  # from_ray is a classmethod: cls is TrialResult
        raise TypeError(f"expected a TrialResult, got {type(trial).__name__}")
    metrics = result.metrics or {}
    trial.trial_id = str(metrics.get("trial_id") or trial.name)
    trial.config = dict(getattr(result, "config", None) or metrics.get("config") or {})
    trial.trial_status = "ERROR" if result.error is not None else "TERMINATED"
    trial.layout = "v1"
    if result.error is not None:
        trial.error = _live_error(result.error)
    trial.history = [{"report_index": i, "metrics": row, "checkpoint_dir_name":
                      row.get("checkpoint_dir_name")}
                     for i, row in enumerate(_frame_rows(result.metrics_dataframe))] or trial.history
    return trial


def _live_error(exc: BaseException) -> TrainingError:
    """Tune wraps the trainable's exception in ``RayTaskError(<Type>)``: describe the cause."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return TrainingError(type(cause).__name__, str(cause), str(exc))
    return TrainingError.from_exception(exc)


def _frame_rows(frame: Any) -> list[dict[str, Any]]:
    if frame is None or getattr(frame, "empty", True):
        return []
    return [dict(r) for r in frame.to_dict("records")]


# --------------------------------------------------------------------------------------
# Scores and the trials table
# --------------------------------------------------------------------------------------


def trial_score(
    trial: TrainResult, metric: str, mode: str, scope: TrialScope
) -> tuple[float | None, str]:
    """A trial's value of ``metric`` under Ray's ``scope``, or ``(None, why not)``.

    As Ray's ``metric_analysis``, only the reports where the metric is a number count
    (a string such as ``"warmup"`` is skipped); unlike it, a NaN or inf in the window makes
    ``"last"`` and the averages ineligible instead of comparing as a number.
    """
    lookups = [lookup_metric(h.get("metrics"), metric) for h in trial.history]
    if not trial.history and trial.metrics is not None:
        lookups = [lookup_metric(trial.metrics, metric)]
    values = [v for v in lookups if isinstance(v, numbers.Number)]
    if not values:
        return None, "missing" if all(v is MISSING for v in lookups) else "not a number"
    if scope == "all":
        finite = [f for f in (finite_number(v) for v in values) if f is not None]
        if not finite:
            return None, f"no finite value in {len(values)} report(s)"
        return (max(finite) if mode == "max" else min(finite)), ""
    window = {"last": values[-1:], "avg": values, "last-5-avg": values[-5:],
              "last-10-avg": values[-10:]}[scope]
    finite = [finite_number(v) for v in window]
    if any(f is None for f in finite):
        return None, f"{scope} over {window[-3:]!r}"
    return statistics.fmean([f for f in finite if f is not None]), ""


def failed_trials_message(
    name: str, failures: list[tuple[str, str | None, str | None]], num_trials: int | None
) -> str:
    """``"2 trial(s) of sweep failed (of 4):"`` then one ``"<id>: <Type>: <first line>"`` each."""
    head = f"{len(failures)} trial(s) of {name} failed" + (
        f" (of {num_trials})" if num_trials is not None else "") + ":"
    return "\n".join([head] + [f"{trial_id}: {error_type}: {first_line(message or '')}"
                               for trial_id, error_type, message in failures])


def sweep_context(grid: TrainResultGrid) -> dict[str, Any]:
    """The training context (``runs.failure.CONTEXT_KEYS``) of a sweep: its URI, the
    errored trials' common error type (``"MultipleErrors"`` when they differ) and one line
    per errored trial; a sweep has no single last checkpoint."""
    errored = grid.errored_trials
    types = sorted({t.error.error_type for t in errored if t.error is not None})
    message = failed_trials_message(
        grid.name, [(t.trial_id, t.error.error_type if t.error else None,
                     t.error.message if t.error else None) for t in errored], len(grid.trials)
    ) if errored else None
    return {
        "run_uri": grid.uri,
        "error_type": types[0] if len(types) == 1 else ("MultipleErrors" if types else None),
        "message": message,
        "worker_failures": {},
        "last_checkpoint_uri": None,
        "last_metrics": None,
    }


def trials_frame(grid: TrainResultGrid) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for t in grid.trials:
        row: dict[str, Any] = {
            "trial_id": t.trial_id,
            "status": t.trial_status,
            "error_type": t.error.error_type if t.error else None,
            "error": first_line(t.error.message) if t.error else None,
            "num_checkpoints": len(t.checkpoints),
            "num_failures": t.num_failures,
            "uri": t.uri,
        }
        row.update({f"config/{k}": v for k, v in flatten_metrics(t.config).items()})
        metrics = {k: v for k, v in (t.metrics or {}).items() if k not in ("config", "trial_id")}
        for key, value in flatten_metrics(metrics).items():
            row[f"metrics/{key}" if key in TABLE_COLUMNS or key in row else key] = value
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else list(TABLE_COLUMNS))
    for name in ("num_checkpoints", "num_failures"):
        if name in frame.columns:
            frame[name] = frame[name].astype("int64")
    return frame
