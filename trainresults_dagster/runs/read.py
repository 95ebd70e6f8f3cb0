"""Read Ray Train run folders from storage: JSON and text only, never pickles.

* V2 run directory (``storage_path/name``): ``checkpoint_manager_snapshot.json`` is the
  source of truth (never list ``checkpoint_*`` folders to guess), plus the optional
  ``trainresults_run.json`` written by ``RunRecorder``.
* V1 trial directory: ``result.json`` (JSON lines), ``error.txt`` and the experiment's
  ``experiment_state-*.json`` for the terminal status. ``error.pkl``, ``trainer.pkl``,
  ``tuner.pkl``, ``params.pkl`` and ``basic-variant-state-*.json`` (a pickle despite its
  name) are never opened: a writable bucket must not become code execution.

Readers return ``RunFields`` (``TrainResult``'s keyword arguments); ``TrainResult.from_path``
builds the object. One LIST of the run folder answers both "which layout is this" and "do the checkpoints the
snapshot names still exist", so reading a run costs a constant number of requests however
many checkpoints it has.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pyarrow.fs as pafs

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import (
    CheckpointMissingError,
    CorruptRunError,
    NoSnapshotError,
    NotARunDirectoryError,
    RunNotFoundError,
)

from .checkpoint import Checkpoint
from .failure import TrainingError
from .record import RECORD_FILE, read_record

#: What a reader returns: the keyword arguments of ``TrainResult(...)``. The reader does not
#: build the result itself, so ``result`` imports ``read`` and never the other way round.
RunFields = dict[str, Any]

SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
MARKER_FILE = ".validate_storage_marker"
V1_RESULT_FILE = "result.json"
V1_ERROR_FILE = "error.txt"
V1_STATE_PREFIX = "experiment_state-"

#: How often a torn or stale snapshot is re-read before giving up, and the pause between.
SNAPSHOT_READS = 6
SNAPSHOT_PAUSE_SECONDS = 0.1


def _listing(fs: pafs.FileSystem, path: str) -> dict[str, pafs.FileType]:
    info = storage.file_info(fs, path)
    uri = storage.to_uri(fs, path)
    if info.type == pafs.FileType.File:
        raise NotARunDirectoryError(
            f"expected a Ray Train run directory at {uri}, but it is a file"
        )
    entries = storage.list_dir(fs, path)
    if info.type == pafs.FileType.NotFound and not entries:
        raise RunNotFoundError(f"expected a Ray Train run directory at {uri}, but nothing is there")
    return {e.base_name: e.type for e in entries}


def read_run(
    fs: pafs.FileSystem, path: str, *, missing_checkpoints: str = "raise"
) -> RunFields:
    """Detect the layout at ``path`` and read it."""
    names = _listing(fs, path)
    if SNAPSHOT_FILE in names:
        return read_v2(fs, path, names, missing_checkpoints=missing_checkpoints)
    if V1_RESULT_FILE in names or "progress.csv" in names:
        return read_v1_trial(fs, path, names)
    if any(n.startswith(V1_STATE_PREFIX) for n in names):
        trials = [n for n, t in names.items() if t == pafs.FileType.Directory
                  and storage.exists(fs, f"{path}/{n}/{V1_RESULT_FILE}")]
        if len(trials) == 1:
            return read_v1_trial(fs, f"{path}/{trials[0]}", None)
        raise NotARunDirectoryError(
            f"{storage.to_uri(fs, path)} is a Ray Train V1 experiment folder with "
            f"{len(trials)} trial folders {sorted(trials)[:5]}; pass one trial folder "
            "(the one holding result.json)"
        )
    if RECORD_FILE in names:
        return _from_record_only(fs, path)
    uri = storage.to_uri(fs, path)
    if MARKER_FILE in names:
        raise NoSnapshotError(
            f"{uri} is a Ray Train run directory with no {SNAPSHOT_FILE}: the run has not "
            "persisted a checkpoint (it failed before its first checkpoint, reported metrics "
            "only, or is still starting). Ray Train V2 stores no error; attach "
            "trainresults_dagster.ray.RunRecorder to RunConfig(callbacks=...) to record it."
        )
    shown = sorted(names)[:10]
    raise NotARunDirectoryError(
        f"expected a Ray Train run directory at {uri}: a V2 run holds {SNAPSHOT_FILE} and "
        f"{MARKER_FILE}, a V1 trial holds {V1_RESULT_FILE}; found {shown!r}"
    )


# --------------------------------------------------------------------------------------
# V2
# --------------------------------------------------------------------------------------


def _parse_entry(entry: Any, where: str, what: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(entry, dict):
        raise CorruptRunError(f"expected {what} to be an object in {where}, got {entry!r:.120}")
    name = entry.get("checkpoint_dir_name")
    name = storage.safe_relative(name, what=f"{what}.checkpoint_dir_name", where=where)
    metrics = entry.get("metrics")
    if metrics is None:
        metrics = {}
    if not isinstance(metrics, dict):
        raise CorruptRunError(
            f"expected {what}.metrics to be an object in {where}, got {type(metrics).__name__}"
        )
    return name, metrics


def _parse_snapshot(data: Any, where: str) -> dict[str, Any]:
    """Validate the parts of Ray's ``_CheckpointManagerState`` we use; ignore the rest."""
    if not isinstance(data, dict):
        raise CorruptRunError(f"expected a JSON object in {where}, got {type(data).__name__}")
    results = data.get("checkpoint_results")
    if not isinstance(results, list):
        # Ray 2.60 always writes the key (an empty list before the first checkpoint): a
        # snapshot without it is not one of Ray's, and reading it as "no checkpoints" would
        # hide that.
        raise CorruptRunError(
            f"expected 'checkpoint_results' to be a list in {where}, got {results!r:.80}"
        )
    entries = [_parse_entry(e, where, f"checkpoint_results[{i}]") for i, e in enumerate(results)]
    indices = data.get("checkpoint_report_indices")
    valid_indices = (
        isinstance(indices, list)
        and len(indices) == len(entries)
        and all(isinstance(i, int) and not isinstance(i, bool) for i in indices)
    )
    order: list[int] = list(indices) if isinstance(indices, list) and valid_indices else list(
        range(len(entries))
    )
    latest_raw = data.get("latest_checkpoint_result")
    latest = _parse_entry(latest_raw, where, "latest_checkpoint_result") if latest_raw else None
    # No latest_checkpoint_result: no latest checkpoint and no metrics, as Ray reads it
    # (Result.from_path gives checkpoint=None, metrics=None), even when others are ranked.
    return {
        "entries": entries,
        "report_indices": order,
        "latest": latest,
        "ray_version": data.get("ray_version"),
        "num_reports": data.get("current_report_index"),
    }


def read_v2(
    fs: pafs.FileSystem,
    path: str,
    names: dict[str, pafs.FileType] | None = None,
    *,
    missing_checkpoints: str = "raise",
) -> RunFields:
    if missing_checkpoints not in ("raise", "drop"):
        raise ValueError(f"missing_checkpoints must be 'raise' or 'drop', got {missing_checkpoints!r}")
    snap_path = f"{path}/{SNAPSHOT_FILE}"
    where = storage.to_uri(fs, snap_path)
    problem: Exception | None = None
    parsed: dict[str, Any] | None = None
    missing: list[str] = []
    for attempt in range(SNAPSHOT_READS):
        if attempt:
            time.sleep(SNAPSHOT_PAUSE_SECONDS * attempt)
            names = None
        try:
            raw = storage.read_bytes(fs, snap_path)
            # Ray writes the snapshot with Python's json (NaN/Infinity literals allowed).
            data = json.loads(raw.decode("utf-8"))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            # Empty, truncated or briefly absent: Ray rewrites the file in place. Re-read.
            problem, parsed = exc, None
            continue
        # A complete file with the wrong shape or unsafe names is not a race: raise now.
        parsed = _parse_snapshot(data, where)
        if names is None:
            names = _listing(fs, path)
        referenced = {n for n, _ in parsed["entries"]}
        if parsed["latest"]:
            referenced.add(parsed["latest"][0])
        missing = sorted(n for n in referenced if not _is_checkpoint_dir(fs, path, names, n))
        if not missing:
            break
        # Ray writes the new snapshot before deleting evicted folders: re-read.
        problem = CheckpointMissingError(f"{missing}")
    if parsed is None:
        raise CorruptRunError(
            f"could not read {where} after {SNAPSHOT_READS} attempts: {problem}. Ray rewrites "
            "this file in place, so a reader can catch it empty or half-written; if it stays "
            "unreadable the run directory is corrupt."
        )
    if missing and missing_checkpoints == "raise":
        raise CheckpointMissingError(
            f"the snapshot of run {storage.to_uri(fs, path)} names checkpoint folders that do "
            f"not exist: {missing[:5]}{' ...' if len(missing) > 5 else ''}. They were deleted "
            "after the snapshot was written (retention or a lifecycle rule). Pass "
            "missing_checkpoints='drop' to read the run without them."
        )

    record = read_record(fs, path) if RECORD_FILE in (names or {}) else None
    by_name = {}
    ordered = sorted(zip(parsed["report_indices"], parsed["entries"], strict=True))
    for idx, (name, metrics) in ordered:
        by_name[name] = (idx, metrics)
    gone = set(missing)

    def ckpt(name: str, metrics: dict[str, Any]) -> Checkpoint:
        return Checkpoint(f"{path}/{name}", fs, metrics=metrics, dir_name=name)

    best = [(ckpt(n, m), m) for n, m in parsed["entries"] if n not in gone]
    latest_name, latest_metrics = parsed["latest"] if parsed["latest"] else (None, None)
    latest = (
        ckpt(latest_name, latest_metrics or {})
        if latest_name and latest_name not in gone
        else None
    )
    history = [
        {"report_index": idx, "metrics": m, "checkpoint_dir_name": n}
        for idx, (n, m) in ordered
    ]
    if record is not None and record.reports:
        recorded = {r["report_index"]: r for r in record.reports}
        for h in history:
            recorded.setdefault(h["report_index"], h)
        history = [recorded[k] for k in sorted(recorded)]
    return dict(
        path=path,
        filesystem=fs,
        metrics=latest_metrics,
        checkpoint=latest,
        error=record.error if record else None,
        best_checkpoints=best,
        history=history,
        layout="v2",
        report_indices={n: i for n, (i, _) in by_name.items()},
        missing_checkpoints=missing,
        record=record,
        ray_version=parsed["ray_version"],
    )


def _is_checkpoint_dir(
    fs: pafs.FileSystem, path: str, names: dict[str, pafs.FileType], name: str
) -> bool:
    """Whether the checkpoint folder ``name`` exists. The run folder's one listing answers for
    plain names; a nested name (``ckpts/epoch-0``) costs one more request, only for it."""
    head, _, rest = name.partition("/")
    if names.get(head) != pafs.FileType.Directory:
        return False
    return not rest or storage.is_dir(fs, f"{path}/{name}")


def _from_record_only(fs: pafs.FileSystem, path: str) -> RunFields:
    """A recorded run with no snapshot yet: no checkpoint, but its reports and error."""
    record = read_record(fs, path)
    if record is None:  # deleted between the listing and the read
        raise RunNotFoundError(f"{storage.to_uri(fs, path)}/{RECORD_FILE} disappeared while reading")
    last = record.reports[-1]["metrics"] if record.reports else None
    return dict(
        path=path,
        filesystem=fs,
        metrics=last,
        checkpoint=None,
        error=record.error,
        best_checkpoints=[],
        history=record.reports,
        layout="v2",
        record=record,
    )


# --------------------------------------------------------------------------------------
# V1
# --------------------------------------------------------------------------------------


def _read_result_json(fs: pafs.FileSystem, path: str) -> tuple[list[dict[str, Any]], bool]:
    """Rows of ``result.json``; a torn last line (append in progress) is dropped, not fatal."""
    where = storage.to_uri(fs, path)
    try:
        text = storage.read_bytes(fs, path).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorruptRunError(f"expected UTF-8 JSON lines in {where}: {exc}") from exc
    lines = [ln for ln in text.splitlines() if ln.strip()]
    rows: list[dict[str, Any]] = []
    torn = False
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except ValueError as exc:
            if i == len(lines) - 1:
                torn = True
                break
            raise CorruptRunError(f"line {i + 1} of {where} is not JSON: {exc}") from exc
        if not isinstance(row, dict):
            raise CorruptRunError(f"expected a JSON object on line {i + 1} of {where}")
        rows.append(row)
    return rows, torn


def v1_trial_states(fs: pafs.FileSystem, experiment_path: str) -> dict[str, dict[str, Any]]:
    """``{trial_id: {"status", "num_failures", "trial_dir_hint"}}`` from the newest
    ``experiment_state-*.json``. The CLOUDPICKLE_FALLBACK blobs in it are never decoded."""
    states = sorted(
        i.path for i in storage.list_dir(fs, experiment_path)
        if i.base_name.startswith(V1_STATE_PREFIX) and i.base_name.endswith(".json")
    )
    if not states:
        return {}
    where = storage.to_uri(fs, states[-1])
    try:
        data = storage.read_json(fs, states[-1])
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptRunError(f"expected JSON in {where}: {exc}") from exc
    out: dict[str, dict[str, Any]] = {}
    trial_data = data.get("trial_data") if isinstance(data, dict) else None
    if not isinstance(trial_data, list):
        raise CorruptRunError(f"expected a 'trial_data' list in {where}")
    for item in trial_data:
        try:
            trial = json.loads(item[0]) if isinstance(item[0], str) else item[0]
            runtime = json.loads(item[1]) if len(item) > 1 and isinstance(item[1], str) else {}
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            raise CorruptRunError(f"unreadable trial entry in {where}: {exc}") from exc
        if not isinstance(trial, dict) or not isinstance(trial.get("trial_id"), str):
            continue
        out[trial["trial_id"]] = {
            "status": trial.get("status"),
            "num_failures": (runtime or {}).get("num_failures") if isinstance(runtime, dict) else None,
        }
    return out


_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:\([\w.]+\))?): (.*)$")


def parse_error_txt(text: str) -> TrainingError:
    """The last failure block of a V1 ``error.txt``."""
    blocks = re.split(r"^Failure # \d+ \(occurred at [^)]*\)\s*$", text, flags=re.M)
    last = (blocks[-1] if blocks else text).strip()
    error_type, message = "TrainingFailedError", last.splitlines()[-1] if last else ""
    for line in reversed(last.splitlines()):
        m = _ERROR_LINE.match(line.strip())
        if m:
            error_type, message = m.group(1), m.group(2)
            inner = re.search(r"\(([\w.]+)\)$", error_type)
            if inner:  # RayTaskError(ValueError) -> ValueError
                error_type = inner.group(1)
            break
    return TrainingError(error_type.rsplit(".", 1)[-1], message, last)


def read_v1_trial(
    fs: pafs.FileSystem, path: str, names: dict[str, pafs.FileType] | None
) -> RunFields:
    if names is None:
        names = _listing(fs, path)
    if V1_RESULT_FILE in names:
        rows, torn = _read_result_json(fs, f"{path}/{V1_RESULT_FILE}")
    else:
        import pandas as pd

        csv_path = f"{path}/progress.csv"
        with fs.open_input_stream(csv_path) as stream:
            frame = pd.read_csv(stream)
        rows, torn = frame.to_dict("records"), False
    ckpt_names = sorted(n for n, t in names.items()
                        if t == pafs.FileType.Directory and n.startswith("checkpoint_"))
    last_row_for: dict[str, dict[str, Any]] = {}
    index_for: dict[str, int] = {}
    history = []
    for i, row in enumerate(rows):
        name = row.get("checkpoint_dir_name")
        if isinstance(name, str):
            last_row_for[name] = row
            index_for[name] = i
        history.append({"report_index": i, "metrics": row,
                        "checkpoint_dir_name": name if isinstance(name, str) else None})
    checkpoints = [
        (Checkpoint(f"{path}/{n}", fs, metrics=last_row_for.get(n)), last_row_for.get(n) or {})
        for n in ckpt_names
    ]
    error: TrainingError | None = None
    status = None
    parent = path.rstrip("/").rsplit("/", 1)[0]
    trial_dir = path.rstrip("/").rsplit("/", 1)[-1]
    states = v1_trial_states(fs, parent)
    for trial_id, state in states.items():
        if trial_id in trial_dir:
            status = state["status"]
    if status == "ERROR" or (status is None and V1_ERROR_FILE in names):
        if V1_ERROR_FILE in names:
            raw = storage.read_bytes(fs, f"{path}/{V1_ERROR_FILE}")
            error = parse_error_txt(raw.decode("utf-8", errors="replace"))
        else:
            error = TrainingError("TrainingFailedError", f"trial {trial_dir} ended in ERROR")
    return dict(
        path=path,
        filesystem=fs,
        metrics=rows[-1] if rows else None,
        checkpoint=checkpoints[-1][0] if checkpoints else None,
        error=error,
        best_checkpoints=checkpoints,
        history=history,
        layout="v1",
        report_indices=index_for,
        status={"ERROR": "failed", "TERMINATED": "finished"}.get(status or "", None),
        torn_tail=torn,
    )
