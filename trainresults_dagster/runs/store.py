"""Stored ``TrainResult`` versions: the IO manager's file format, without Dagster.

One folder per asset (and partition) holds immutable version folders and a pointer::

    <root>/CURRENT.json                      {"schema", "version", "committed_at"}  (written last)
    <root>/v-<UTC time>-<id>/manifest.json   the result as JSON (see ``write``)
    <root>/v-<UTC time>-<id>/metrics.parquet the metrics dataframe (one row per report)
    <root>/v-<UTC time>-<id>/checkpoints/<name>/...   copies, with checkpoints="copy"
    <root>/failed/v-.../                     results stored without committing (on_error="fail")

A version folder is complete before ``CURRENT.json`` names it, and the pointer is replaced
atomically (``storage.write_bytes_atomic``), so a reader sees the previous version or the new
one, never a half-written one; a writer killed mid-way leaves an orphan folder that garbage
collection removes later. Loading costs two reads (pointer, manifest) whatever the number of
checkpoints; the Parquet file is read only when the dataframe is asked for.

Nothing here is pickled: JSON and Parquet only.
"""

from __future__ import annotations

import concurrent.futures
import json
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

from .result import TrainResult

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
        result: TrainResult,
        *,
        copy_checkpoints: bool,
        commit: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> StoredVersion:
        """Store ``result`` as a new version; with ``commit`` make it the current one.

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

        data = result.to_dict()
        copied = 0
        mapping = {c.dir_name: c.uri for c in result.checkpoints}
        if copy_checkpoints:
            mapping, copied = self._copy_checkpoints(result, f"{path}/{CHECKPOINTS_DIR}")
            for entry in data["checkpoints"]:
                entry["source_uri"] = entry["uri"]
                entry["uri"] = mapping[entry["name"]]
            if result.checkpoint is not None:
                data["latest_uri"] = mapping[result.checkpoint.dir_name]
        metrics_info = self._write_metrics(result.metrics_dataframe, path)
        manifest = {
            "schema": MANIFEST_SCHEMA,
            "version": version,
            "created_at": storage.iso(),
            "library_version": _library_version(),
            "ray_version": result.ray_version or _loaded_ray_version(),
            "checkpoints_mode": "copy" if copy_checkpoints else "reference",
            "committed": commit,
            "score": score_config(result),
            "num_reports": len(result.history),
            "metrics": metrics_info,
            "result": data,
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

    def _copy_checkpoints(self, result: TrainResult, target: str) -> tuple[dict[str, str], int]:
        """Copy every checkpoint (server-side on one S3, in parallel); ``{name: new URI}``."""
        checkpoints = result.checkpoints
        where = result.uri

        def _one(ckpt: Any) -> int:
            dst = storage.safe_descendant(
                target, ckpt.dir_name, what="checkpoint folder name", where=where
            )
            if not ckpt.exists():
                raise CheckpointMissingError(
                    f"expected checkpoint folder {ckpt.uri} of run {where} to copy, but it is "
                    "gone (Ray's num_to_keep retention or a lifecycle rule deleted it); "
                    "materialise right after training, or use checkpoints='reference'"
                )
            return storage.copy_tree(ckpt.filesystem, ckpt.path, self.filesystem, dst)

        workers = max(1, min(8, len(checkpoints)))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            counts = list(pool.map(_one, checkpoints))
        mapping = {c.dir_name: storage.to_uri(self.filesystem, f"{target}/{c.dir_name}")
                   for c in checkpoints}
        return mapping, sum(counts)

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

    def read(self) -> TrainResult:
        """The committed result. ``RunNotFoundError`` if nothing was committed yet."""
        version = self.current_version()
        if version is None:
            raise RunNotFoundError(
                f"expected a stored result at {self.uri} ({POINTER_FILE} names it), but "
                "nothing was materialised there yet"
            )
        return self.read_version(f"{self.root}/{version}")

    def read_version(self, path: str) -> TrainResult:
        """The result in one version folder (committed or not)."""
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
    if schema != MANIFEST_SCHEMA:
        raise CorruptRunError(
            f"expected schema {MANIFEST_SCHEMA!r} in {where}, got {schema!r}: written by another "
            "tool or a newer trainresults-dagster (upgrade it), or edited by hand"
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
# Parquet
# --------------------------------------------------------------------------------------


def frame_to_parquet(frame: pd.DataFrame) -> tuple[bytes, list[str]]:
    """Parquet bytes of ``frame``; columns Arrow cannot type cleanly become JSON text.

    Metrics can mix types across reports (``1`` then ``"warmup"``) or hold lists and dicts;
    those columns are stored as JSON strings and listed, so loading restores the values.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = frame.copy()
    json_columns: list[str] = []
    for name in frame.columns:
        column = frame[name]
        if column.dtype != object:
            continue
        try:
            kind = pa.array(column, from_pandas=True).type
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            kind = None
        plain = kind is not None and (
            pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or pa.types.is_integer(kind) or pa.types.is_floating(kind)
            or pa.types.is_boolean(kind) or pa.types.is_null(kind)
        )
        if not plain:
            frame[name] = [None if _is_missing(v) else json.dumps(v, default=repr)
                           for v in column]
            json_columns.append(str(name))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes(), json_columns


def read_parquet_frame(
    fs: pafs.FileSystem, path: str, json_columns: list[str]
) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    where = storage.to_uri(fs, path)

    def _read() -> Any:
        with fs.open_input_file(path) as fh:
            return pq.read_table(fh)

    try:
        table = storage.call(_read, what="read", where=where)
    except FileNotFoundError as exc:
        raise CorruptRunError(f"expected the metrics file {where}, but it is gone") from exc
    except (pa.ArrowException, OSError) as exc:
        if storage.is_transient(exc) or isinstance(exc, storage.StorageError):
            raise  # the store failed, not the file
        raise CorruptRunError(
            f"expected a Parquet metrics file at {where}, but it cannot be read: {exc}"
        ) from exc
    frame = table.to_pandas()
    for name in json_columns:
        if name in frame.columns:
            frame[name] = [json.loads(v) if isinstance(v, str) else None for v in frame[name]]
    return frame


def empty_metrics_frame() -> pd.DataFrame:
    """What a run that reported nothing loads as (Ray's would be None; a DataFrame input
    annotation needs a DataFrame)."""
    import pandas as pd

    return pd.DataFrame({"checkpoint_dir_name": pd.Series([], dtype=object)})


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


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
