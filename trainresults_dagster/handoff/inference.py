"""Batch inference over Parquet with one predictor class, on a laptop or on a Ray cluster.

A predictor is Ray Data's callable-class shape: ``Predictor(checkpoint_dir)`` loads the
model once, ``predictor(batch: pandas.DataFrame) -> pandas.DataFrame`` returns one output
row per input row. ``run_batch_inference(..., engine="local")`` streams the input through
``pyarrow.dataset`` batch by batch into rolling Parquet parts (memory bounded by the batch
and the input's row groups, not the input); ``engine="ray"`` runs the same class with Ray
Data ``map_batches`` on an actor pool (``_ray_data``). Both write to a staging folder and
commit at the end (``output``), so a failed or killed job never leaves an output that looks complete.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import posixpath
import time
from collections.abc import Iterator
from typing import Any, Literal

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import trainresults_dagster.handoff.output as output
import trainresults_dagster.storage as storage
from trainresults_dagster.errors import BatchInferenceError, InferenceInputError, PredictorError

from .model_ref import ModelRef, model_ref
from .predictor import construct, name_of, predict

logger = logging.getLogger(__name__)

#: Start a new part file past this size: S3 server-side copy (the S3 commit) stops at 5 GiB.
MAX_FILE_BYTES = 512 * 1024 * 1024


class InferenceSummary(dict):  # type: ignore[type-arg]
    """The JSON-able summary of a run; keys are also attributes (``summary.rows``)."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def run_batch_inference(
    checkpoint: Any,
    predictor: type,
    input_uri: str,
    output_uri: str,
    *,
    engine: Literal["local", "ray"] = "local",
    batch_size: int = 4096,
    filesystem: pafs.FileSystem | None = None,
    num_actors: int = 1,
    num_cpus_per_actor: float = 1.0,
    ray_address: str | None = None,
    log: Any = None,
    progress_interval_seconds: float = 10.0,
    max_file_bytes: int = MAX_FILE_BYTES,
) -> InferenceSummary:
    """Run ``predictor`` over the Parquet at ``input_uri``; commit Parquet at ``output_uri``.

    ``checkpoint``: a registry ``ModelVersion``, a ``Checkpoint`` or a checkpoint URI; the
    summary records which checkpoint and model version were used. ``filesystem`` serves
    URIs of its kind (an ``S3FileSystem`` for ``s3://``); others resolve on their own.
    ``engine="ray"`` uses the current Ray connection, or ``ray.init(address=ray_address)``
    (``None``: ``RAY_ADDRESS`` or a local Ray) and shuts down only what it started.

    Returns an ``InferenceSummary``: ``rows``, ``output_uri``, ``seconds``,
    ``rows_per_second``, ``checkpoint_uri``, ``model``, ``model_version``, ``files`` ...
    """
    if engine not in ("local", "ray"):
        raise ValueError(f"expected engine 'local' or 'ray', got {engine!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"expected batch_size to be a positive int, got {batch_size!r}")
    if isinstance(num_actors, bool) or not isinstance(num_actors, int) or num_actors < 1:
        raise ValueError(f"expected num_actors to be a positive int, got {num_actors!r}")
    if not isinstance(predictor, type) or not callable(predictor):
        raise TypeError(
            "expected a predictor class: Predictor(checkpoint_dir), then "
            f"predictor(batch: pandas.DataFrame) -> pandas.DataFrame; got {predictor!r}"
        )
    log = log or logger
    ref = model_ref(checkpoint, filesystem)
    in_fs, in_path = storage.resolve_matching(str(input_uri), filesystem)
    out_fs, out_path = storage.resolve_matching(str(output_uri), filesystem)
    in_uri, out_uri = storage.to_uri(in_fs, in_path), storage.to_uri(out_fs, out_path)
    _check_disjoint(in_fs, in_path, out_fs, out_path)
    dataset, total = _open_input(in_fs, in_path)
    output.check_replaceable(out_fs, out_path)
    staging = output.staging_path(out_path)
    started, started_at = time.monotonic(), _now()
    progress = _Progress(log, total, progress_interval_seconds, out_uri)
    log.info(
        f"batch inference ({engine}): {total} rows from {in_uri} with {name_of(predictor)} "
        f"on checkpoint {ref.checkpoint.uri} (model {ref.model!r} version {ref.version!r})"
    )
    try:
        if engine == "local":
            rows, files = _run_local(
                ref, predictor, dataset, total, out_fs, staging, batch_size, progress,
                in_uri, max_file_bytes,
            )
        else:
            from ._ray_data import run_ray

            rows, files = run_ray(
                ref, predictor, in_fs, in_path, dataset.schema.names, out_fs, staging,
                batch_size, num_actors, num_cpus_per_actor, ray_address, in_uri,
            )
        if rows != total:
            raise BatchInferenceError(
                f"expected {total} output rows for {total} input rows from {in_uri}, "
                f"but {rows} were written; the output was not committed"
            )
        seconds = time.monotonic() - started
        summary = InferenceSummary(
            format=output.FORMAT,
            rows=rows,
            output_uri=out_uri,
            input_uri=in_uri,
            files=files,
            seconds=round(seconds, 3),
            rows_per_second=round(rows / seconds, 1) if seconds > 0 else None,
            engine=engine,
            batch_size=batch_size,
            predictor=name_of(predictor),
            checkpoint_uri=ref.checkpoint.uri,
            model=ref.model,
            model_version=ref.version,
            metrics=ref.metrics,
            lineage=ref.lineage,
            started_at=started_at,
            finished_at=_now(),
        )
        output.commit(out_fs, staging, out_path, dict(summary))
    except BaseException:
        storage.delete_dir(out_fs, staging)
        raise
    log.info(
        f"batch inference done: {rows} rows in {summary['seconds']:.1f}s "
        f"({summary['rows_per_second']} rows/s), committed {len(files)} file(s) to {out_uri}"
    )
    return summary


# ------------------------------------------------------------------------------ input


def _open_input(fs: pafs.FileSystem, path: str) -> tuple[pads.Dataset, int]:
    where = storage.to_uri(fs, path)
    if not storage.exists(fs, path):
        raise InferenceInputError(
            f"expected a Parquet file or folder at {where}, but nothing is there"
        )
    try:
        dataset = pads.dataset(path, filesystem=fs, format="parquet")
        total = storage.call(dataset.count_rows, what="count rows", where=where)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise InferenceInputError(f"expected Parquet at {where}: {exc}") from exc
    if total == 0:
        raise InferenceInputError(
            f"expected rows in the input {where}, but its {len(dataset.files)} Parquet file(s) "
            "hold none; nothing was written"
        )
    return dataset, total


def _check_disjoint(in_fs: pafs.FileSystem, inp: str, out_fs: pafs.FileSystem, out: str) -> None:
    if in_fs.type_name != out_fs.type_name:
        return
    a, b = inp.rstrip("/") + "/", out.rstrip("/") + "/"
    if a.startswith(b) or b.startswith(a):
        raise ValueError(
            f"expected output_uri outside the input, but {storage.to_uri(out_fs, out)} and "
            f"{storage.to_uri(in_fs, inp)} overlap (the commit would replace or re-read them)"
        )


def _row_group_batches(dataset: pads.Dataset, batch_size: int) -> Iterator[pa.RecordBatch]:
    """Record batches read one row group at a time.

    Measured with pyarrow 26: ``Dataset.to_batches`` and ``ParquetFile.iter_batches`` (with
    its default ``pre_buffer``) both grow memory with the file, ~400 MiB over 4M rows x 9
    columns, whatever their readahead settings; a row group at a time stays flat (~50 MiB)
    and is faster. Memory is bounded by the batch and the input's row-group size.
    """
    schema = dataset.schema  # files may order (or miss) columns differently: read by name
    for fragment in dataset.get_fragments():
        for row_group in fragment.split_by_row_group():
            batches = row_group.to_batches(
                schema=schema, columns=schema.names, batch_size=batch_size, use_threads=True
            )
            try:
                yield from batches  # Arrow reads (and fails) lazily, batch by batch
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                raise InferenceInputError(
                    f"expected every input file to have the columns of the first one "
                    f"({', '.join(f'{f.name}: {f.type}' for f in schema)[:300]}), but "
                    f"{fragment.path} does not: {exc}"
                ) from exc


def _rebatch(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """Exactly ``size`` rows per batch (the last may be short), as Ray Data gives them.

    Scanner batches stop at row-group boundaries; a predictor should see the same batch
    sizes on both engines. Full batches pass through without a copy.
    """
    buffer: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        if not buffer and batch.num_rows == size:
            yield pa.Table.from_batches([batch])
            continue
        buffer.append(batch)
        held += batch.num_rows
        while held >= size:
            table = pa.Table.from_batches(buffer)
            yield table.slice(0, size)
            rest = table.slice(size)
            buffer, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(buffer)


# ------------------------------------------------------------------------------ local engine


def _run_local(
    ref: ModelRef,
    predictor: type,
    dataset: pads.Dataset,
    total: int,
    fs: pafs.FileSystem,
    staging: str,
    batch_size: int,
    progress: _Progress,
    in_uri: str,
    max_file_bytes: int,
) -> tuple[int, list[str]]:
    written = 0
    with ref.checkpoint.as_directory() as directory:
        model = construct(predictor, directory, ref.checkpoint.uri)
        writer = _PartWriter(fs, staging, max_file_bytes)
        try:
            batches = _rebatch(_row_group_batches(dataset, batch_size), batch_size)
            for index, table in enumerate(batches):
                n = table.num_rows
                where = f"batch {index} (input rows {written}-{written + n - 1} of {in_uri})"
                out = predict(model, table.to_pandas(), where)
                writer.write(out, where)
                written += n
                progress.add(n)
        finally:
            writer.close()
    return written, writer.files


class _PartWriter:
    """``part-00000.parquet``, ``part-00001.parquet``, ... one schema, rolled by size."""

    def __init__(self, fs: pafs.FileSystem, folder: str, max_file_bytes: int) -> None:
        self.fs, self.folder, self.max_file_bytes = fs, folder, max_file_bytes
        self.files: list[str] = []
        self.schema: pa.Schema | None = None
        self._sink: Any = None
        self._writer: pq.ParquetWriter | None = None
        if isinstance(fs, pafs.LocalFileSystem):
            os.makedirs(folder, exist_ok=True)

    def write(self, frame: Any, where: str) -> None:
        try:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self.schema is None:
                self.schema = table.schema
            elif not table.schema.equals(self.schema, check_metadata=False):
                table = table.cast(self.schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, ValueError) as exc:
            raise PredictorError(
                f"predictor output for {where} does not fit the output schema "
                f"{self.schema or 'of the first batch'}: {exc}"
            ) from exc
        if self._writer is None:
            name = f"part-{len(self.files):05d}.parquet"
            self._sink = self.fs.open_output_stream(posixpath.join(self.folder, name))
            self._writer = pq.ParquetWriter(self._sink, self.schema)
            self.files.append(name)
        self._writer.write_table(table)
        if self._sink.tell() >= self.max_file_bytes:
            self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None


class _Progress:
    """A log line every ``interval`` seconds, so a long job is visibly alive."""

    def __init__(self, log: Any, total: int, interval: float, label: str) -> None:
        self.log, self.total, self.interval, self.label = log, total, interval, label
        self.rows = 0
        self.started = self.last = time.monotonic()

    def add(self, rows: int) -> None:
        self.rows += rows
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            rate = self.rows / max(now - self.started, 1e-9)
            self.log.info(
                f"batch inference -> {self.label}: {self.rows}/{self.total} rows "
                f"({100 * self.rows / self.total:.1f}%), {rate:.0f} rows/s"
            )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
