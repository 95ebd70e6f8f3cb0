"""The V1 source of the failed-run scan: failed trials of Ray Train V1 experiments.

V1 (``RAY_TRAIN_V2_ENABLED=0``) writes no failure journal. An experiment folder holds
``experiment_state-<session>.json`` whose ``trial_data`` gives each trial's status as
plain JSON (the pickled parts are never decoded). Finding *new* experiments needs a look
at every top-level folder, so that discovery pass is spaced by ``v1_rescan_seconds``;
experiments already seen and not finished are re-checked every pass; a state file is only
read when its name, time or size changed.
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow.fs as pafs

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import RunNotFoundError, TrainResultsError
from trainresults_dagster.runs.read import V1_STATE_PREFIX, read_run, v1_trial_states
from trainresults_dagster.runs.result import TrainResult, training_context

from ._tick import ScanState, Tick
from .alert import alert_id, build_alert

#: Local folder times can be coarse (1-2 s on some filesystems, NFS): re-check that much.
LOCAL_MTIME_SLACK_NS = 2_000_000_000
_TERMINAL = ("TERMINATED", "ERROR")


def _is_state(name: str) -> bool:
    return name.startswith(V1_STATE_PREFIX) and name.endswith(".json")


class V1Source:
    """Failed V1 trials, found through experiment state files."""

    def __init__(self, tick: Tick) -> None:
        self.tick = tick

    def _state_files(self, folder: str) -> list[tuple[str, int, int]]:
        """``(name, mtime_ns, size)`` of one folder's ``experiment_state-*.json`` files."""
        self.tick.stats["lists"] += 1
        self.tick.stats["v1_folders_opened"] += 1
        return [
            (i.base_name, i.mtime_ns or 0, i.size or 0)
            for i in storage.list_dir(self.tick.fs, f"{self.tick.root}/{folder}")
            if i.type == pafs.FileType.File and _is_state(i.base_name)
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
            if "/" in name or not _is_state(name) or folder.startswith(("_", ".")):
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
        trials = v1_trial_states(self.tick.fs, f"{self.tick.root}/{folder}")
        alerted = set(tracked.get("alerted", []))
        failed = sorted(t for t, i in trials.items() if i.get("status") == "ERROR" and t not in alerted)
        dirs: list[str] = []
        if failed:
            self.tick.stats["lists"] += 1
            dirs = [
                i.base_name for i in storage.list_dir(self.tick.fs, f"{self.tick.root}/{folder}")
                if i.type == pafs.FileType.Directory
            ]
        for trial_id in failed:
            alerted.add(trial_id)
            key = f"v1:{folder}/{trial_id}"
            state.pending.setdefault(key, {"dirs": [d for d in dirs if trial_id in d]})
            if self.tick.take():
                alert = self.v1_trial(state, key)
                if alert is not None:
                    self.tick.emit(state, key, alert, first=True)
        tracked.update(
            fp=fp,
            alerted=sorted(alerted),
            done=bool(trials) and all(t.get("status") in _TERMINAL for t in trials.values()),
        )
        if tracked["done"] and not alerted:
            state.v1.pop(folder, None)

    def v1_trial(self, state: ScanState, key: str) -> dict[str, Any] | None:
        """The alert for one failed trial (``key`` = ``v1:<folder>/<trial id>``), or None
        to retry later."""
        folder, trial_id = key[3:].rsplit("/", 1)
        candidates = state.pending.get(key, {}).get("dirs") or []
        exp_uri = f"{self.tick.uri}/{folder}"
        run_uri = f"{exp_uri}/{candidates[0]}" if len(candidates) == 1 else exp_uri
        extra = {"run_name": folder, "trial_id": trial_id, "experiment_uri": exp_uri, "layout": "v1"}
        try:
            if len(candidates) != 1:
                raise RunNotFoundError(
                    f"expected one trial folder for trial {trial_id} in {exp_uri}, "
                    f"found {candidates!r}"
                )
            self.tick.stats["runs_read"] += 1
            path = f"{self.tick.root}/{folder}/{candidates[0]}"
            context = training_context(
                TrainResult(**read_run(self.tick.fs, path, missing_checkpoints="drop"))
            )
        except (TrainResultsError, OSError, ValueError) as exc:
            if not self.tick.read_failed(state, key, exc, f"V1 trial {trial_id} in {exp_uri}"):
                return None
            context = {"run_uri": run_uri, "error_type": "TrainingFailedError",
                       "message": f"trial {trial_id} ended in ERROR", "worker_failures": {}}
            extra["context_error"] = state.pending[key]["error"]
        return build_alert(
            "ray_run_failed",
            context,
            secrets=self.tick.secrets,
            alert_id=alert_id("ray_run_failed", exp_uri, trial_id),
            storage_path=self.tick.uri,
            **extra,
        )

    def retry(self, state: ScanState, key: str, *, first: bool) -> None:
        alert = self.v1_trial(state, key)
        if alert is not None:
            self.tick.emit(state, key, alert, first=first)
