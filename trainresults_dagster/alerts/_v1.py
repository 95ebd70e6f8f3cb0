"""The V1 source of the failed-run scan: failed trials of Ray Tune sweeps and of Ray Train
V1 experiments (which are one-trial Tune experiments).

Neither writes a failure journal. An experiment folder holds
``experiment_state-<session>.json`` whose ``trial_data`` gives each trial's status, config
and folder as plain JSON (the pickled parts are never decoded, ``runs.experiment``).
Failed trials are alerted one per trial (``trial_alerts="per_trial"``: the trial's error,
config, last checkpoint and metrics) or one per experiment (``"per_experiment"``: the
trials that failed since the last look, each with its error and config).

Finding *new* experiments needs a look at every top-level folder, so that discovery pass
is spaced by ``v1_rescan_seconds``;
experiments already seen and not finished are re-checked every pass; a state file is only
read when its name, time or size changed. Each failed trial is read once (one LIST of its
folder, its ``result.json`` and ``error.txt``).
"""

from __future__ import annotations

import os
from typing import Any, Literal

import pyarrow.fs as pafs

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import RunNotFoundError, TrainResultsError
from trainresults_dagster.runs.experiment import (
    TERMINAL_STATUSES,
    ExperimentState,
    TrialState,
    is_state_file,
    read_experiment_state,
)
from trainresults_dagster.runs.result import training_context
from trainresults_dagster.runs.tune import failed_trials_message, read_trial

from ._tick import ScanState, Tick
from .alert import alert_id, build_alert

#: Local folder times can be coarse (1-2 s on some filesystems, NFS): re-check that much.
LOCAL_MTIME_SLACK_NS = 2_000_000_000
#: Failed trials described in one per-experiment alert (the count says how many failed).
MAX_TRIALS_PER_ALERT = 50
TrialAlerts = Literal["per_trial", "per_experiment"]


class V1Source:
    """Failed V1 trials, found through experiment state files."""

    def __init__(self, tick: Tick, *, trial_alerts: TrialAlerts = "per_trial") -> None:
        if trial_alerts not in ("per_trial", "per_experiment"):
            raise ValueError(
                f"expected trial_alerts 'per_trial' or 'per_experiment', got {trial_alerts!r}"
            )
        self.tick = tick
        self.trial_alerts = trial_alerts

    def _state_files(self, folder: str) -> list[tuple[str, int, int]]:
        """``(name, mtime_ns, size)`` of one folder's ``experiment_state-*.json`` files."""
        self.tick.stats["lists"] += 1
        self.tick.stats["v1_folders_opened"] += 1
        return [
            (i.base_name, i.mtime_ns or 0, i.size or 0)
            for i in storage.list_dir(self.tick.fs, f"{self.tick.root}/{folder}")
            if i.type == pafs.FileType.File and is_state_file(i.base_name)
        ]

    def discover_v1(self, state: ScanState) -> dict[str, list[tuple[str, int, int]]]:
        """Folders that may hold a new or changed V1 experiment, with their state files."""
        found: dict[str, list[tuple[str, int, int]]] = {}
        self.tick.stats["lists"] += 1
        if isinstance(self.tick.fs, pafs.LocalFileSystem):
            # A folder's time moves when an entry is added in it (a new state file, trial
            # folder): only those are opened. In-place rewrites of a state file do not move
            # it, which is why unfinished experiments are re-checked on every pass.
            newest = state.v1_wm
            try:
                entries = list(os.scandir(self.tick.root))
            except FileNotFoundError:
                entries = []
            for e in entries:
                if e.name.startswith(("_", ".")) or not e.is_dir(follow_symlinks=False):
                    continue
                try:
                    mtime = e.stat(follow_symlinks=False).st_mtime_ns
                except FileNotFoundError:  # deleted since the directory was read
                    continue
                newest = max(newest, mtime)
                if mtime > state.v1_wm - LOCAL_MTIME_SLACK_NS:
                    files = self._state_files(e.name)
                    if files:
                        found[e.name] = files
            state.v1_wm = newest
            return found
        # Object stores: one flat listing gives every state file's time without opening
        # folders. Times are the server's; the overlap covers uploads still in flight.
        window = state.v1_wm - int(self.tick.overlap * 1e9)
        newest = state.v1_wm
        for rel, mtime, size in self.tick.flat_listing():
            folder, _, name = rel.partition("/")
            if "/" in name or not is_state_file(name) or folder.startswith(("_", ".")):
                continue
            newest = max(newest, mtime)
            if mtime > window:
                found.setdefault(folder, []).append((name, mtime, size))
        state.v1_wm = newest
        return found

    def scan_v1(self, state: ScanState, now: float, rescan_seconds: float) -> None:
        candidates: dict[str, list[tuple[str, int, int]]] = {}
        if now - state.v1_pass >= rescan_seconds:
            candidates = self.discover_v1(state)
            state.v1_pass = now
        for folder, tracked in list(state.v1.items()):
            if folder not in candidates and not tracked.get("done"):
                try:
                    candidates[folder] = self._state_files(folder)
                except (TrainResultsError, OSError) as exc:
                    self.tick.problems.append(f"could not list {self.tick.uri}/{folder}: {exc}")
        for folder, files in sorted(candidates.items()):
            try:
                self.check_v1_folder(state, folder, files)
            except (TrainResultsError, OSError, ValueError) as exc:
                self.tick.problems.append(
                    f"could not check {self.tick.uri}/{folder} for failed V1 trials: "
                    f"{type(exc).__name__}: {exc}; will retry next tick"
                )
                state.v1.setdefault(folder, {"fp": "", "alerted": [], "done": False})

    def check_v1_folder(
        self, state: ScanState, folder: str, files: list[tuple[str, int, int]]
    ) -> None:
        if not files:  # not (or no longer) a V1 experiment
            if state.v1.get(folder, {}).get("alerted"):
                state.v1[folder]["done"] = True  # keep what was alerted; stop watching
            else:
                state.v1.pop(folder, None)
            return
        name, mtime, size = max(files)  # names carry the session time: newest sorts last
        fp = f"{name}:{mtime}:{size}"
        tracked = state.v1.setdefault(folder, {"fp": "", "alerted": [], "done": False})
        if tracked.get("fp") == fp:
            return
        exp = read_experiment_state(self.tick.fs, f"{self.tick.root}/{folder}", [name])
        trials = exp.trials if exp is not None else []
        alerted = set(tracked.get("alerted", []))
        failed = [t for t in trials if t.status == "ERROR" and t.trial_id not in alerted]
        if failed and self.trial_alerts == "per_experiment":
            ids = sorted(t.trial_id for t in failed)
            alerted.update(ids)
            key = f"v1x:{folder}/{alert_id(*ids)[:16]}"
            state.pending.setdefault(key, {"trials": ids})
            if self.tick.take():
                alert = self.v1_experiment(state, key, exp)
                if alert is not None:
                    self.tick.emit(state, key, alert, first=True)
        else:
            for trial in sorted(failed, key=lambda t: t.trial_id):
                alerted.add(trial.trial_id)
                key = f"v1:{folder}/{trial.trial_id}"
                state.pending.setdefault(key, {"dirs": [trial.relative_logdir or ""]})
                if self.tick.take():
                    alert = self.v1_trial(state, key, exp)
                    if alert is not None:
                        self.tick.emit(state, key, alert, first=True)
        tracked.update(
            fp=fp,
            alerted=sorted(alerted),
            done=bool(trials) and all(t.status in TERMINAL_STATUSES for t in trials),
        )
        if tracked["done"] and not alerted:
            state.v1.pop(folder, None)

    # ------------------------------------------------------------------ alerts
    def _experiment(self, folder: str, exp: ExperimentState | None) -> ExperimentState:
        if exp is None:
            exp = read_experiment_state(self.tick.fs, f"{self.tick.root}/{folder}")
        if exp is None:
            raise RunNotFoundError(
                f"expected experiment_state-*.json in {self.tick.uri}/{folder}, found none"
            )
        return exp

    def _trial_report(self, folder: str, trial: TrialState) -> dict[str, Any]:
        """What an alert says about one failed trial: its training context, id, config."""
        self.tick.stats["runs_read"] += 1
        result = read_trial(self.tick.fs, f"{self.tick.root}/{folder}", trial)
        return {**training_context(result), "trial_id": trial.trial_id,
                "trial_status": trial.status, "config": trial.config}

    def _known_report(self, folder: str, trial: TrialState | None, trial_id: str) -> dict[str, Any]:
        """What the state alone says, when the trial folder cannot be read."""
        exp_uri = f"{self.tick.uri}/{folder}"
        logdir = trial.relative_logdir if trial is not None else None
        return {"run_uri": f"{exp_uri}/{logdir}" if logdir else exp_uri,
                "error_type": "TrainingFailedError",
                "message": f"trial {trial_id} ended in ERROR", "worker_failures": {},
                "last_checkpoint_uri": None,
                "last_metrics": trial.last_result if trial is not None else None,
                "trial_id": trial_id, "trial_status": "ERROR",
                "config": trial.config if trial is not None else {}}

    def v1_trial(
        self, state: ScanState, key: str, exp: ExperimentState | None = None
    ) -> dict[str, Any] | None:
        """The alert for one failed trial (``key`` = ``v1:<folder>/<trial id>``), or None
        to retry later."""
        folder, trial_id = key[3:].rsplit("/", 1)
        exp_uri = f"{self.tick.uri}/{folder}"
        extra: dict[str, Any] = {"run_name": folder, "experiment_uri": exp_uri, "layout": "v1"}
        trial = None
        try:
            trial = _find(self._experiment(folder, exp), trial_id, exp_uri)
            report = self._trial_report(folder, trial)
        except (TrainResultsError, OSError, ValueError) as exc:
            if not self.tick.read_failed(state, key, exc, f"V1 trial {trial_id} in {exp_uri}"):
                return None
            report = self._known_report(folder, trial, trial_id)
            extra["context_error"] = state.pending[key]["error"]
        return build_alert(
            "ray_run_failed",
            report,
            secrets=self.tick.secrets,
            alert_id=alert_id("ray_run_failed", exp_uri, trial_id),
            storage_path=self.tick.uri,
            trial_id=trial_id,
            config=report.get("config") or {},
            **extra,
        )

    def v1_experiment(
        self, state: ScanState, key: str, exp: ExperimentState | None = None
    ) -> dict[str, Any] | None:
        """One alert for the trials of one experiment that failed since the last look
        (``key`` = ``v1x:<folder>/<id of the trial set>``), or None to retry later."""
        folder = key[4:].rsplit("/", 1)[0]
        ids = list(state.pending.get(key, {}).get("trials") or [])
        exp_uri = f"{self.tick.uri}/{folder}"
        extra: dict[str, Any] = {"run_name": folder, "experiment_uri": exp_uri, "layout": "v1"}
        reports: list[dict[str, Any]] = []
        num_trials: int | None = None
        try:
            loaded = self._experiment(folder, exp)
            num_trials = len(loaded.trials)
            for trial_id in ids[:MAX_TRIALS_PER_ALERT]:
                reports.append(self._trial_report(folder, _find(loaded, trial_id, exp_uri)))
        except (TrainResultsError, OSError, ValueError) as exc:
            if not self.tick.read_failed(state, key, exc, f"failed trials of {exp_uri}"):
                return None
            known = {r["trial_id"] for r in reports}
            reports += [self._known_report(folder, None, t) for t in ids[:MAX_TRIALS_PER_ALERT]
                        if t not in known]
            extra["context_error"] = state.pending[key]["error"]
        types = sorted({str(r.get("error_type")) for r in reports})
        context = {
            "run_uri": exp_uri,
            "error_type": types[0] if len(types) == 1 else "MultipleErrors",
            "message": failed_trials_message(
                folder, [(r["trial_id"], r.get("error_type"), r.get("message")) for r in reports],
                num_trials,
            ),
            "worker_failures": {},
            "last_checkpoint_uri": None,
            "last_metrics": None,
        }
        failed_trials = [
            {k: r.get(k) for k in ("trial_id", "run_uri", "trial_status", "error_type",
                                   "message", "config", "last_checkpoint_uri", "last_metrics")}
            for r in reports
        ]
        return build_alert(
            "ray_run_failed",
            context,
            secrets=self.tick.secrets,
            alert_id=alert_id("ray_run_failed", exp_uri, "experiment", *ids),
            storage_path=self.tick.uri,
            trial_ids=ids,
            num_trials=num_trials,
            num_failed_trials=len(ids),
            failed_trials=failed_trials,
            **extra,
        )

    def retry(self, state: ScanState, key: str, *, first: bool) -> None:
        alert = self.v1_experiment(state, key) if key.startswith("v1x:") else self.v1_trial(
            state, key
        )
        if alert is not None:
            self.tick.emit(state, key, alert, first=first)


def _find(exp: ExperimentState, trial_id: str, exp_uri: str) -> TrialState:
    for trial in exp.trials:
        if trial.trial_id == trial_id:
            return trial
    raise RunNotFoundError(f"expected trial {trial_id} in the state of {exp_uri}; it is gone")
