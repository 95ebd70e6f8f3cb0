"""The Ray Data engine of ``run_batch_inference``: the same predictor class on an actor pool.

``read_parquet -> map_batches(RayPredictor, compute=ActorPoolStrategy(size=n)) ->
write_parquet`` into the staging folder; ``inference.run_batch_inference`` checks the row
count and commits. Only imported when ``engine="ray"``; ray is imported inside ``run_ray``,
so Ray workers unpickling ``RayPredictor`` need only this package and pyarrow.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
from typing import Any

import pyarrow.dataset as pads
import pyarrow.fs as pafs

import trainresults_dagster.handoff.output as output
from trainresults_dagster.errors import BatchInferenceError, CheckpointMissingError, PredictorError
from trainresults_dagster.runs.checkpoint import Checkpoint

from .model_ref import ModelRef
from .predictor import construct, name_of, predict

logger = logging.getLogger(__name__)


class RayPredictor:
    """The Ray Data actor: materialises the checkpoint once per actor, then predicts.

    Input file paths (``include_paths``) are used to name a failing batch and dropped
    before the user's predictor sees the batch.
    """

    def __init__(
        self, predictor: type, checkpoint: Checkpoint, path_column: str | None, input_uri: str
    ) -> None:
        self._tmp: str | None = None
        if isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
            if not checkpoint.exists():
                raise CheckpointMissingError(
                    f"expected checkpoint {checkpoint.uri} on the node of actor pid "
                    f"{os.getpid()}: a local checkpoint must be on storage every node sees"
                )
            directory = checkpoint.path
        else:
            directory = self._tmp = checkpoint.to_directory()
        self._model = construct(predictor, directory, checkpoint.uri)
        self._path_column, self._input_uri = path_column, input_uri
        self._batches = 0

    def __call__(self, batch: Any) -> Any:
        source = self._input_uri
        if self._path_column is not None and self._path_column in batch.columns:
            paths = sorted({str(p) for p in batch[self._path_column]})
            source = ", ".join(paths[:3]) + (" ..." if len(paths) > 3 else "")
            batch = batch.drop(columns=[self._path_column])
        index, self._batches = self._batches, self._batches + 1
        where = f"batch {index} of actor pid {os.getpid()} ({len(batch)} rows from {source})"
        return predict(self._model, batch, where)

    def __del__(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)


def run_ray(
    ref: ModelRef,
    predictor: type,
    in_fs: pafs.FileSystem,
    in_path: str,
    columns: list[str],
    out_fs: pafs.FileSystem,
    staging: str,
    batch_size: int,
    num_actors: int,
    num_cpus: float,
    ray_address: str | None,
    in_uri: str,
) -> tuple[int, list[str]]:
    import ray
    import ray.data

    started_ray = False
    if ray.is_initialized():
        if ray_address:
            logger.warning(f"ray_address={ray_address!r} ignored: Ray is already initialised")
    else:
        ray.init(address=ray_address)  # None: RAY_ADDRESS if set, else a local Ray
        started_ray = True
    path_column = None if "path" in columns else "path"
    try:
        ds = ray.data.read_parquet(
            in_path, filesystem=in_fs, include_paths=path_column is not None
        )
        ds = ds.map_batches(
            RayPredictor,
            compute=ray.data.ActorPoolStrategy(size=num_actors),
            fn_constructor_kwargs={
                "predictor": predictor,
                "checkpoint": ref.checkpoint,
                "path_column": path_column,
                "input_uri": in_uri,
            },
            batch_size=batch_size,
            batch_format="pandas",
            num_cpus=num_cpus,
        )
        ds.write_parquet(staging, filesystem=out_fs)
    except Exception as exc:
        raise _ray_failure(exc, predictor, in_uri) from exc
    finally:
        if started_ray:
            ray.shutdown()
    files = output.parquet_files(out_fs, staging)
    rows = 0
    if files:
        part_paths = [posixpath.join(staging, f) for f in files]
        rows = pads.dataset(part_paths, filesystem=out_fs, format="parquet").count_rows()
    return rows, files


def _ray_failure(exc: Exception, predictor: type, in_uri: str) -> Exception:
    """Surface our own ``PredictorError`` line from Ray's wrapped task error."""
    text = str(exc)
    for line in text.splitlines():
        marker = "PredictorError: "
        if marker in line:
            return PredictorError(line.split(marker, 1)[1].strip())
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return BatchInferenceError(
        f"ray engine failed running {name_of(predictor)} over {in_uri}: {type(exc).__name__}: {first}"
    )
