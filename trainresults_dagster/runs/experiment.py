"""The state file of a Ray Tune (or Ray Train V1) experiment, read as JSON only.

An experiment folder (``storage_path/RunConfig.name``) holds ``experiment_state-<session>.json``;
Ray picks the newest by file name, and so do we (a restore adds a file and keeps the old
ones). It is JSON (with bare ``NaN`` tokens, which Python's parser accepts) whose
``trial_data`` is a list of ``[trial JSON string, run-metadata JSON string]`` pairs. Parts
of it are pickles wrapped as ``{"_type": "CLOUDPICKLE_FALLBACK", "value": "<hex>"}`` (the
trial's storage context, the checkpoint manager, the stopper...) or raw pickle hex strings;
they are replaced by ``PICKLED`` while parsing and never decoded: a writable bucket must not
become code execution.

What is plain JSON, and therefore all we use: each trial's ``trial_id``, ``status``
(``TERMINATED``, ``ERROR``, ``RUNNING``, ``PENDING``, ``PAUSED``), ``config``,
``evaluated_params``, ``experiment_tag``, ``relative_logdir`` (the trial folder: never parse
it from the id, ``trial_dirname_creator`` can name it anything), ``num_failures``,
``error_filename``, ``last_result`` (Ray's ``Result.metrics``) and ``metric_analysis``;
and the experiment's ``runner_data._metric`` (``TuneConfig.metric``; the mode is only
pickled).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import CorruptRunError

STATE_PREFIX = "experiment_state-"
#: What a pickled part of the state file reads as (it is never decoded).
PICKLED = "<pickled: not read>"
#: Ray's trial statuses that will not change any more.
TERMINAL_STATUSES = ("TERMINATED", "ERROR")


def is_state_file(name: str) -> bool:
    return name.startswith(STATE_PREFIX) and name.endswith(".json")


@dataclass(frozen=True)
class TrialState:
    """One trial as the experiment state describes it (plain-JSON fields only)."""

    trial_id: str
    status: str
    relative_logdir: str | None
    config: dict[str, Any] = field(default_factory=dict)
    evaluated_params: dict[str, Any] = field(default_factory=dict)
    experiment_tag: str | None = None
    trainable_name: str | None = None
    num_failures: int = 0
    error_filename: str | None = None
    last_result: dict[str, Any] = field(default_factory=dict)
    metric_analysis: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExperimentState:
    """The newest state file of one experiment."""

    path: str  # the state file
    metric: str | None  # TuneConfig.metric, when one was set
    trials: list[TrialState]

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def _hook(obj: dict[str, Any]) -> Any:
    if obj.get("_type") == "CLOUDPICKLE_FALLBACK":
        return PICKLED
    return obj


def _loads(text: str) -> Any:
    return json.loads(text, object_hook=_hook)


def newest_state_file(names: list[str]) -> str | None:
    """Ray's choice among ``experiment_state-*.json`` names: the greatest name."""
    states = [n for n in names if is_state_file(n)]
    return max(states) if states else None


def read_experiment_state(
    fs: pafs.FileSystem, experiment_path: str, names: list[str] | None = None
) -> ExperimentState | None:
    """The newest state of the experiment at ``experiment_path``; None if it has none.

    ``names`` (the folder's entries) saves the listing when the caller has it already.
    """
    if names is None:
        names = [i.base_name for i in storage.list_dir(fs, experiment_path)]
    newest = newest_state_file(names)
    if newest is None:
        return None
    path = f"{experiment_path.rstrip('/')}/{newest}"
    where = storage.to_uri(fs, path)
    try:
        data = _loads(storage.read_bytes(fs, path).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptRunError(
            f"expected Ray's experiment state (JSON) in {where}: {exc}. Ray rewrites it while "
            "the experiment runs; read again, or the file is damaged."
        ) from exc
    return parse_experiment_state(data, path=path, where=where)


def parse_experiment_state(data: Any, *, path: str, where: str) -> ExperimentState:
    if not isinstance(data, dict) or not isinstance(data.get("trial_data"), list):
        raise CorruptRunError(
            f"expected an object with a 'trial_data' list in {where}, got {str(data)[:120]!r}"
        )
    runner = data.get("runner_data")
    metric = runner.get("_metric") if isinstance(runner, dict) else None
    trials = [_parse_trial(item, i, where) for i, item in enumerate(data["trial_data"])]
    seen: set[str] = set()
    for trial in trials:
        if trial.trial_id in seen:
            raise CorruptRunError(f"trial id {trial.trial_id!r} appears twice in {where}")
        seen.add(trial.trial_id)
    return ExperimentState(path=path, metric=metric if isinstance(metric, str) else None,
                           trials=trials)


def _parse_trial(item: Any, index: int, where: str) -> TrialState:
    what = f"trial_data[{index}]"
    if not isinstance(item, list | tuple) or not item:
        raise CorruptRunError(f"expected {what} to be a [trial, metadata] pair in {where}")
    try:
        trial = _loads(item[0]) if isinstance(item[0], str) else item[0]
        meta = _loads(item[1]) if len(item) > 1 and isinstance(item[1], str) else (
            item[1] if len(item) > 1 else {}
        )
    except ValueError as exc:
        raise CorruptRunError(f"expected JSON in {what} of {where}: {exc}") from exc
    if not isinstance(trial, dict) or not isinstance(trial.get("trial_id"), str):
        raise CorruptRunError(f"expected {what} to name a 'trial_id' string in {where}")
    meta = meta if isinstance(meta, dict) else {}
    trial_id = trial["trial_id"]
    logdir = trial.get("relative_logdir")
    if logdir is not None:
        # A name read from storage (trial_dirname_creator may nest it): it must not lead
        # out of the experiment.
        logdir = storage.safe_relative(logdir, what=f"{what}.relative_logdir", where=where)
    status = trial.get("status")
    failures = meta.get("num_failures")
    error_file = meta.get("error_filename")
    return TrialState(
        trial_id=trial_id,
        status=status if isinstance(status, str) else "UNKNOWN",
        relative_logdir=logdir,
        config=_dict(trial.get("config")),
        evaluated_params=_dict(trial.get("evaluated_params")),
        experiment_tag=_str(trial.get("experiment_tag")),
        trainable_name=_str(trial.get("trainable_name")),
        num_failures=failures if isinstance(failures, int) and not isinstance(failures, bool) else 0,
        error_filename=_str(error_file),
        last_result=_dict(meta.get("last_result")),
        metric_analysis=_dict(meta.get("metric_analysis")),
    )


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value != PICKLED else None
