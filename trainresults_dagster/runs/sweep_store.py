"""A stored sweep (``TrainResultGrid``): the sweep manifest and its two Parquet files.

``ResultStore`` (``store.py``) keeps the versions, the pointer and garbage collection for
single runs and sweeps alike; this module is what differs for a sweep::

    <version>/manifest.json        schema "trainresults.sweep_manifest/1": the sweep as JSON
                                   (every trial: id, status, config, metrics, error,
                                   checkpoints with their metrics and URIs)
    <version>/trials.parquet       the trials table (``TrainResultGrid.trials_table``)
    <version>/history.parquet      every trial's reports, one row each, with a trial_id column
    <version>/checkpoints/<trial id>/<checkpoint>/...   copies, with checkpoints="copy"

Loading reads the manifest only; the Parquet files are read when a dataframe is asked for
(the history once, for every trial).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import CorruptRunError

from .parquet import frame_to_parquet, read_parquet_frame
from .tune import TrainResultGrid

if TYPE_CHECKING:
    import pandas as pd

SWEEP_SCHEMA = "trainresults.sweep_manifest/1"
TRIALS_FILE = "trials.parquet"
HISTORY_FILE = "history.parquet"


def write_tables(fs: pafs.FileSystem, path: str, grid: TrainResultGrid) -> dict[str, Any]:
    """Write the trials table and the history; their manifest entries."""
    import pandas as pd

    data, json_columns = frame_to_parquet(grid.trials_table)
    storage.write_bytes_atomic(fs, f"{path}/{TRIALS_FILE}", data)
    tables: dict[str, Any] = {
        "trials_table": {"file": TRIALS_FILE, "rows": len(grid.trials_table),
                         "json_columns": json_columns},
        "history": None,
    }
    frames = []
    for trial in grid.trials:
        frame = trial.metrics_dataframe
        if frame is not None and not frame.empty:
            frames.append(frame.assign(trial_id=trial.trial_id))
    if frames:
        history = pd.concat(frames, ignore_index=True, sort=False)
        data, json_columns = frame_to_parquet(history)
        storage.write_bytes_atomic(fs, f"{path}/{HISTORY_FILE}", data)
        tables["history"] = {"file": HISTORY_FILE, "rows": len(history),
                             "json_columns": json_columns}
    return tables


def trial_columns(grid: TrainResultGrid) -> dict[str, list[str]]:
    """Each trial's own dataframe columns (the history file holds their union)."""
    out = {}
    for trial in grid.trials:
        frame = trial.metrics_dataframe
        out[trial.trial_id] = [str(c) for c in frame.columns] if frame is not None else []
    return out


def validate_sweep_manifest(data: dict[str, Any], *, where: str) -> None:
    sweep = data.get("sweep")
    if not isinstance(sweep, dict) or not isinstance(sweep.get("uri"), str) or not isinstance(
        sweep.get("trials"), list
    ):
        raise CorruptRunError(f"expected 'sweep' to be an object with 'uri' and 'trials' in {where}")
    for key in ("trials_table", "history"):
        entry = data.get(key)
        if entry is None and key == "history":
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise CorruptRunError(f"expected {key!r} to name a 'file' in {where}")
        cols = entry.get("json_columns") or []
        if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
            raise CorruptRunError(f"expected '{key}.json_columns' to be strings in {where}")


def read_sweep(
    fs: pafs.FileSystem,
    path: str,
    manifest: dict[str, Any],
    *,
    filesystem_for: Callable[[str], tuple[pafs.FileSystem, str]],
    where: str,
) -> TrainResultGrid:
    """The sweep stored in the version folder ``path`` (its manifest already read)."""
    validate_sweep_manifest(manifest, where=where)
    sweep = manifest["sweep"]
    run_fs, _ = filesystem_for(sweep["uri"])
    ckpt_fs = fs if manifest.get("checkpoints_mode") == "copy" else run_fs
    table = manifest["trials_table"]
    table_path = storage.safe_child(path, table["file"], what="trials table file", where=where)

    def read_table() -> pd.DataFrame:
        return read_parquet_frame(fs, table_path, list(table.get("json_columns") or []),
                                  what="trials table")

    history_loader = None
    history = manifest.get("history")
    if history is not None:
        history_path = storage.safe_child(path, history["file"], what="history file",
                                          where=where)
        raw = manifest.get("trial_columns")
        columns: dict[str, Any] = raw if isinstance(raw, dict) else {}
        history_loader = _HistoryLoader(fs, history_path, list(history.get("json_columns") or []),
                                        columns)
    return TrainResultGrid.from_dict(
        sweep, filesystem=run_fs, checkpoint_filesystem=ckpt_fs,
        history_loader=history_loader, table_loader=read_table, where=where,
    )


class _HistoryLoader:
    """Reads ``history.parquet`` once and hands each trial its rows and its own columns."""

    def __init__(self, fs: pafs.FileSystem, path: str, json_columns: list[str],
                 columns: dict[str, Any]) -> None:
        self._fs, self._path, self._json_columns = fs, path, json_columns
        self._columns = columns
        self._frame: pd.DataFrame | None = None
        self._lock = threading.Lock()

    def __call__(self, trial_id: str) -> pd.DataFrame:
        with self._lock:
            if self._frame is None:
                self._frame = read_parquet_frame(self._fs, self._path, self._json_columns,
                                                 what="history file")
        frame = self._frame
        rows = frame.loc[frame["trial_id"] == trial_id] if "trial_id" in frame.columns else frame
        wanted = self._columns.get(trial_id)
        if isinstance(wanted, list):
            keep = [c for c in wanted if c in rows.columns]
        else:
            keep = [c for c in rows.columns if c != "trial_id"]
        return rows.loc[:, keep].reset_index(drop=True)
