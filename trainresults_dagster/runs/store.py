"""Stored ``TrainResult`` (and ``TrainResultGrid``) versions: the IO manager's file format,
without Dagster.

One folder per asset (and partition) holds immutable version folders and a pointer::

    <root>/CURRENT.json                      {"schema", "version", "committed_at"}  (written last)
    <root>/v-<UTC time>-<id>/manifest.json   the result as JSON (see ``write``)
    <root>/v-<UTC time>-<id>/metrics.parquet the metrics dataframe (one row per report)
    <root>/v-<UTC time>-<id>/checkpoints/<name>/...   copies, with checkpoints="copy"
    <root>/failed/v-.../                     results stored without committing (on_error="fail")

A sweep's version folder holds a sweep manifest, ``trials.parquet`` and ``history.parquet``
instead (``sweep_store``); versions, pointer and garbage collection are the same.

A version folder is complete before ``CURRENT.json`` names it, and the pointer is replaced
atomically (``storage.write_bytes_atomic``), so a reader sees the previous version or the new
one, never a half-written one; a writer killed mid-way leaves an orphan folder that garbage
collection removes later. Loading costs two reads (pointer, manifest) whatever the number of
checkpoints; the Parquet file is read only when the dataframe is asked for.

Nothing here is pickled: JSON and Parquet only.
"""

from __future__ import annotations

import concurrent.futures
import re
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import CheckpointMissingError, CorruptRunError, RunNotFoundError

from .parquet import empty_metrics_frame, frame_to_parquet, read_parquet_frame
from .result import TrainResult
from .sweep_store import SWEEP_SCHEMA, read_sweep, trial_columns, write_tables
from .tune import TrainResultGrid

if TYPE_CHECKING:
    import pandas as pd

MANIFEST_SCHEMA = "trainresults.result_manifest/1"
POINTER_SCHEMA = "trainresults.result_pointer/1"
POINTER_FILE = "CURRENT.json"
MANIFEST_FILE = "manifest.json"
METRICS_FILE = "metrics.parquet"
CHECKPOINTS_DIR = "checkpoints"
FAILED_DIR = "failed"

#: After a commit, version folders other than the new and the previous one are deleted once
#: they are this old (by the time in their name): the guard spares a slow concurrent writer.
GC_MIN_AGE_SECONDS = 60 * 60
#: How many uncommitted (failed-run) versions are kept for inspection.
KEEP_FAILED = 5

_VERSION_RE = re.compile(r"^v-(\d{8}T\d{6})\.(\d{6})Z-[0-9a-f]{8,32}$")

#: Resolves a run or checkpoint URI read from a manifest to ``(filesystem, path)``.
FilesystemFor = Callable[[str], tuple[pafs.FileSystem, str]]


def new_version(now: float | None = None) -> str:
    """``v-20261128T173501.123456Z-1a2b3c4d``: lexicographic order is time order."""
    return f"v-{storage.stamp(now)}-{uuid.uuid4().hex[:12]}"


def version_time(version: str) -> float | None:
    """The UTC time in a version folder's name, or None if it is not one of ours."""
    if not _VERSION_RE.match(version):
        return None
    return storage.parse_stamp(version[2:])


@dataclass
class StoredVersion:
    """Where one ``write`` put a result."""

    version: str
    path: str
    manifest_uri: str
    committed: bool
    copied_files: int = 0
    #: checkpoint name -> where the stored version points (the copy, or the original)
    checkpoint_uris: dict[str, str] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    #: what the caller should tell the user (e.g. an unreadable pointer that was replaced)
    warnings: list[str] = field(default_factory=list)


class ResultStore:
    """Versions of one asset (or partition) under ``root`` on ``filesystem``.

    ``filesystem_for`` resolves the run and checkpoint URIs a manifest names (local paths,
    ``s3://`` with the caller's credentials); it is only called when loading.
    """

    def __init__(
        self, filesystem: pafs.FileSystem, root: str, *, filesystem_for: FilesystemFor
    ) -> None:
        self.filesystem = filesystem
        self.root = root.rstrip("/")
        self._filesystem_for = filesystem_for

    @property
    def uri(self) -> str:
        return storage.to_uri(self.filesystem, self.root)

    # ------------------------------------------------------------------ writing
    def write(
        self,
        result: TrainResult | TrainResultGrid,
        *,
        copy_checkpoints: bool,
        commit: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> StoredVersion:
        """Store ``result`` (a run or a sweep) as a new version; with ``commit`` make it the
        current one.

        Order: checkpoint copies, Parquet, manifest, then (if ``commit``) the pointer. An
        uncommitted version goes under ``failed/`` and never becomes what ``read`` returns.
        """
        version = new_version()
        parent = self.root if commit else f"{self.root}/{FAILED_DIR}"
        path = f"{parent}/{version}"
        warnings: list[str] = []
        previous = None
        if commit:
            try:
                previous = self.current_version()
            except CorruptRunError as exc:
                # A torn, foreign or hand-edited pointer must not block every later
                # materialisation: the new, complete version replaces it.
                warnings.append(f"replacing an unreadable pointer: {exc}")

        if isinstance(result, TrainResultGrid):
            schema, (body, mapping, copied) = SWEEP_SCHEMA, self._sweep_body(
                result, path, copy_checkpoints)
        else:
            schema, (body, mapping, copied) = MANIFEST_SCHEMA, self._run_body(
                result, path, copy_checkpoints)
        manifest = {
            "schema": schema,
            "version": version,
            "created_at": storage.iso(),
            "library_version": _library_version(),
            "checkpoints_mode": "copy" if copy_checkpoints else "reference",
            "committed": commit,
            **body,
            **(extra or {}),
        }
        manifest_path = f"{path}/{MANIFEST_FILE}"
        # NaN/inf metrics stay NaN/Infinity literals, as in Ray's own snapshot: a NaN loss
        # must load back as NaN, not None.
        storage.write_json_atomic(self.filesystem, manifest_path, manifest, nan="keep")
        if commit:
            pointer = {"schema": POINTER_SCHEMA, "version": version,
                       "committed_at": time.time()}
            storage.write_json_atomic(self.filesystem, f"{self.root}/{POINTER_FILE}", pointer)
            self.collect_garbage(keep={v for v in (version, previous) if v is not None})
        else:
            self._trim_failed(keep=version)
        return StoredVersion(version, path, storage.to_uri(self.filesystem, manifest_path),
                             commit, copied, mapping, manifest, warnings)

    def _run_body(
        self, result: TrainResult, path: str, copy_checkpoints: bool
    ) -> tuple[dict[str, Any], dict[str, str], int]:
        data = result.to_dict()
        copied = 0
        mapping = {c.dir_name: c.uri for c in result.checkpoints}
        if copy_checkpoints:
            target = f"{path}/{CHECKPOINTS_DIR}"
            (mapping,), copied = self._copy_checkpoints([(result, target)])
            _point_at_copies(data, result, mapping)
        body = {
            "ray_version": result.ray_version or _loaded_ray_version(),
            "score": score_config(result),
            "num_reports": len(result.history),
            "metrics": self._write_metrics(result.metrics_dataframe, path),
            "result": data,
        }
        return body, mapping, copied

    def _sweep_body(
        self, grid: TrainResultGrid, path: str, copy_checkpoints: bool
    ) -> tuple[dict[str, Any], dict[str, str], int]:
        """A sweep: every trial's checkpoints under ``checkpoints/<trial id>/`` when copied;
        ``{"<trial id>/<checkpoint>": URI}``."""
        data = grid.to_dict()
        copied = 0
        mapping = {f"{t.trial_id}/{c.dir_name}": c.uri for t in grid.trials for c in t.checkpoints}
        if copy_checkpoints:
            jobs: list[tuple[TrainResult, str]] = [
                (trial, storage.safe_child(f"{path}/{CHECKPOINTS_DIR}", trial.trial_id,
                                           what="trial id", where=grid.uri))
                for trial in grid.trials
            ]
            per_trial, copied = self._copy_checkpoints(jobs)
            mapping = {}
            for entry, trial, ours in zip(data["trials"], grid.trials, per_trial, strict=True):
                _point_at_copies(entry, trial, ours)
                mapping.update({f"{trial.trial_id}/{n}": u for n, u in ours.items()})
        body = {
            "ray_version": _loaded_ray_version(),
            "kind": "sweep",
            "num_trials": len(grid.trials),
            "num_errored_trials": grid.num_errors,
            **write_tables(self.filesystem, path, grid),
            "trial_columns": trial_columns(grid),
            "sweep": data,
        }
        return body, mapping, copied

    def _copy_checkpoints(
        self, jobs: list[tuple[TrainResult, str]]
    ) -> tuple[list[dict[str, str]], int]:
        """Copy the checkpoints of each ``(run, target folder)`` (server-side on one S3, in
        parallel, one pool for all); per job ``{checkpoint name: new URI}``, and the number
        of files copied."""
        pairs: list[tuple[Any, str, str]] = []
        mappings: list[dict[str, str]] = []
        for result, target in jobs:
            mapping = {}
            for ckpt in result.checkpoints:
                dst = storage.safe_descendant(target, ckpt.dir_name,
                                              what="checkpoint folder name", where=result.uri)
                pairs.append((ckpt, dst, result.uri))
                mapping[ckpt.dir_name] = storage.to_uri(self.filesystem, dst)
            mappings.append(mapping)

        def _one(job: tuple[Any, str, str]) -> int:
            ckpt, dst, where = job
            if not ckpt.exists():
                raise CheckpointMissingError(
                    f"expected checkpoint folder {ckpt.uri} of run {where} to copy, but it is "
                    "gone (Ray's num_to_keep retention or a lifecycle rule deleted it); "
                    "materialise right after training, or use checkpoints='reference'"
                )
            return storage.copy_tree(ckpt.filesystem, ckpt.path, self.filesystem, dst)

        workers = max(1, min(8, len(pairs)))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            counts = list(pool.map(_one, pairs))
        return mappings, sum(counts)

    def _write_metrics(self, frame: pd.DataFrame | None, path: str) -> dict[str, Any] | None:
        if frame is None:
            return None
        data, json_columns = frame_to_parquet(frame)
        storage.write_bytes_atomic(self.filesystem, f"{path}/{METRICS_FILE}", data)
        return {"file": METRICS_FILE, "rows": len(frame), "json_columns": json_columns}

    # ------------------------------------------------------------------ reading
    def current_version(self) -> str | None:
        """The committed version's folder name, or None when nothing was committed."""
        path = f"{self.root}/{POINTER_FILE}"
        where = storage.to_uri(self.filesystem, path)
        data = storage.read_json_object(
            self.filesystem, path, error=CorruptRunError, what="a result pointer"
        )
        if data is None:
            return None
        if data.get("schema") != POINTER_SCHEMA:
            got = data.get("schema")
            raise CorruptRunError(
                f"expected schema {POINTER_SCHEMA!r} in {where}, got {got!r}; it was written by "
                "another tool or a newer trainresults-dagster. Materialise the asset again."
            )
        version = data.get("version")
        if not isinstance(version, str) or version_time(version) is None:
            raise CorruptRunError(
                f"expected 'version' to name a folder like 'v-<UTC time>-<id>' in {where}, "
                f"got {version!r}"
            )
        return version

    def read(self) -> TrainResult | TrainResultGrid:
        """The committed result. ``RunNotFoundError`` if nothing was committed yet."""
        version = self.current_version()
        if version is None:
            raise RunNotFoundError(
                f"expected a stored result at {self.uri} ({POINTER_FILE} names it), but "
                "nothing was materialised there yet"
            )
        return self.read_version(f"{self.root}/{version}")

    def read_version(self, path: str) -> TrainResult | TrainResultGrid:
        """The result (or sweep) in one version folder (committed or not)."""
        manifest_path = f"{path}/{MANIFEST_FILE}"
        where = storage.to_uri(self.filesystem, manifest_path)
        data = storage.read_json_object(
            self.filesystem, manifest_path, error=CorruptRunError, what="a result manifest"
        )
        if data is None:
            raise CorruptRunError(
                f"expected {where}: the pointer names this version but its manifest is gone "
                "(deleted by hand or a lifecycle rule?). Materialise the asset again."
            )
        manifest = validate_manifest(data, where=where, folder=path.rsplit("/", 1)[-1])
        if manifest["schema"] == SWEEP_SCHEMA:
            return read_sweep(self.filesystem, path, manifest,
                              filesystem_for=self._filesystem_for, where=where)
        result_data = manifest["result"]
        run_fs, _ = self._filesystem_for(result_data["uri"])
        ckpt_fs = self.filesystem if manifest["checkpoints_mode"] == "copy" else run_fs
        metrics = manifest.get("metrics")
        loader: Callable[[], pd.DataFrame] = empty_metrics_frame
        if metrics is not None:
            parquet = storage.safe_child(path, metrics["file"], what="metrics file", where=where)
            json_columns = list(metrics.get("json_columns") or [])
            fs = self.filesystem

            def read_metrics() -> pd.DataFrame:
                return read_parquet_frame(fs, parquet, json_columns)

            loader = read_metrics
        return TrainResult.from_dict(
            result_data, filesystem=run_fs, checkpoint_filesystem=ckpt_fs,
            dataframe_loader=loader, where=where,
        )

    # ------------------------------------------------------------------ cleanup
    def collect_garbage(self, *, keep: set[str], now: float | None = None,
                        min_age: float | None = None) -> list[str]:
        """Delete version folders other than ``keep`` that are older than ``min_age``.

        Orphans of killed writers go too. The age guard spares a concurrent writer of the
        same partition whose folder is not committed yet (Dagster normally runs one
        materialisation of a partition at a time, so this is a rare case).
        """
        now = time.time() if now is None else now
        min_age = GC_MIN_AGE_SECONDS if min_age is None else min_age
        doomed = []
        for info in storage.list_dir(self.filesystem, self.root):
            name = info.base_name
            stamp = version_time(name)
            if info.type != pafs.FileType.Directory or stamp is None or name in keep:
                continue
            if now - stamp >= min_age:
                doomed.append(name)
        for name in doomed:
            storage.delete_dir(self.filesystem, f"{self.root}/{name}")
        return doomed

    def _trim_failed(self, *, keep: str) -> None:
        folder = f"{self.root}/{FAILED_DIR}"
        names = sorted(i.base_name for i in storage.list_dir(self.filesystem, folder)
                       if version_time(i.base_name) is not None)
        for name in names[:-KEEP_FAILED]:
            if name != keep:
                storage.delete_dir(self.filesystem, f"{folder}/{name}")


# --------------------------------------------------------------------------------------
# Manifest validation
# --------------------------------------------------------------------------------------


def validate_manifest(data: Any, *, where: str, folder: str) -> dict[str, Any]:
    """Check the parts of a manifest that loading relies on; raise ``CorruptRunError``."""
    if not isinstance(data, dict):
        raise CorruptRunError(f"expected a JSON object in {where}, got {type(data).__name__}")
    schema = data.get("schema")
    if schema not in (MANIFEST_SCHEMA, SWEEP_SCHEMA):
        raise CorruptRunError(
            f"expected schema {MANIFEST_SCHEMA!r} or {SWEEP_SCHEMA!r} in {where}, got "
            f"{schema!r}: written by another tool or a newer trainresults-dagster (upgrade "
            "it), or edited by hand"
        )
    if data.get("version") != folder:
        raise CorruptRunError(
            f"expected 'version' {folder!r} (its folder's name) in {where}, got "
            f"{data.get('version')!r}: the manifest was moved or edited"
        )
    if data.get("checkpoints_mode") not in ("reference", "copy"):
        raise CorruptRunError(
            f"expected 'checkpoints_mode' 'reference' or 'copy' in {where}, "
            f"got {data.get('checkpoints_mode')!r}"
        )
    if schema == SWEEP_SCHEMA:
        return data  # the sweep's own parts are checked by sweep_store.read_sweep
    if not isinstance(data.get("result"), dict) or not isinstance(data["result"].get("uri"), str):
        raise CorruptRunError(f"expected 'result' to be an object with a 'uri' in {where}")
    metrics = data.get("metrics")
    if metrics is not None:
        if not isinstance(metrics, dict) or not isinstance(metrics.get("file"), str):
            raise CorruptRunError(f"expected 'metrics' to be null or name a 'file' in {where}")
        cols = metrics.get("json_columns") or []
        if not isinstance(cols, list) or not all(isinstance(c, str) for c in cols):
            raise CorruptRunError(f"expected 'metrics.json_columns' to be strings in {where}")
    return data


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def _point_at_copies(data: dict[str, Any], result: TrainResult, mapping: dict[str, str]) -> None:
    """Make a result's JSON name its copied checkpoints (the originals stay as source_uri)."""
    for entry in data["checkpoints"]:
        entry["source_uri"] = entry["uri"]
        entry["uri"] = mapping[entry["name"]]
    if result.checkpoint is not None:
        data["latest_uri"] = mapping[result.checkpoint.dir_name]


def score_config(result: TrainResult) -> dict[str, Any] | None:
    """``{"attribute", "order"}`` from the RunRecorder's checkpoint config, if recorded.

    Ray's snapshot does not store the score attribute; only ``RunRecorder`` does.
    """
    config = getattr(result.record, "checkpoint_config", None) or {}
    attribute = config.get("score_attribute")
    if not isinstance(attribute, str) or not attribute:
        return None
    order = config.get("score_order")
    return {"attribute": attribute, "order": order if order in ("min", "max") else "max"}


def _library_version() -> str:
    from trainresults_dagster._version import __version__

    return __version__


def _loaded_ray_version() -> str | None:
    ray = sys.modules.get("ray")
    return getattr(ray, "__version__", None) if ray is not None else None
