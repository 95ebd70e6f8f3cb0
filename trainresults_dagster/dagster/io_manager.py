"""``RayTrainResultIOManager``: materialise Ray Train results as Dagster assets.

Call chain, written down once:

* ``handle_output(context, obj)``: ``obj`` (a ``ray.train.Result`` or a ``TrainResult``;
  for a Ray Tune sweep a ``ray.tune.ResultGrid`` or a ``TrainResultGrid``)
  -> ``_as_stored`` (reads the run or experiment folder, so every persisted checkpoint and
  the full history are kept) -> ``ResultStore.write`` (checkpoint copies, Parquet,
  manifest, then the ``CURRENT.json`` pointer) -> output metadata (``result_metadata``,
  ``sweep_metadata``). A failed run (``result.error``, e.g. from ``trd.fit(trainer)``), or
  a sweep where no trial succeeded, is stored first; with ``on_error="fail"`` it is kept
  uncommitted and the step fails with a ``dg.Failure`` carrying the training context,
  with ``"materialize"`` it becomes the asset's value. A sweep where some trials errored
  is a success (its metadata lists them).
* ``load_input(context)``: ``ResultStore.read`` per partition (two small reads) ->
  ``_convert`` by the input's annotation: ``TrainResult`` (default), ``ray.train.Result``,
  ``pandas.DataFrame`` (the metrics dataframe, read lazily from Parquet), ``Checkpoint``
  (the latest). A stored sweep loads as ``TrainResultGrid`` (default), ``pandas.DataFrame``
  (the trials table), ``TrainResult`` / ``ray.train.Result`` (the best trial) or
  ``Checkpoint`` (the best checkpoint across trials); "best" is by the objective in the
  input's metadata (``dg.AssetIn(metadata={"metric", "mode", "scope"})``) or the sweep's
  ``TuneConfig``. Several partitions load as ``dict[partition_key, value]``.

A training function that raises (plain ``trainer.fit()``) never reaches the IO manager;
return ``trd.fit(trainer)`` instead to store the failed run and fail with its context.
"""

from __future__ import annotations

import concurrent.futures
import os
import types
import typing
from typing import Any, Literal

import dagster as dg
import pyarrow.fs as pafs
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr, field_validator

from trainresults_dagster.dagster._wiring import StoreSettings, check_location, storage_parts
from trainresults_dagster.dagster.clouds import AzureResource, GcsResource
from trainresults_dagster.errors import CheckpointMissingError, NoEligibleCheckpointError
from trainresults_dagster.runs.checkpoint import Checkpoint
from trainresults_dagster.runs.coerce import as_result_or_grid
from trainresults_dagster.runs.failure import format_failure
from trainresults_dagster.runs.result import TrainResult, training_context
from trainresults_dagster.runs.store import ResultStore, StoredVersion
from trainresults_dagster.runs.tune import TrainResultGrid, sweep_context

from .metadata import context_metadata, result_metadata, sweep_metadata

_DEFAULT_SUBDIR = "trainresults"


class RayTrainResultIOManager(dg.ConfigurableIOManager):
    """Stores Ray Train results as a JSON manifest plus Parquet metrics (never pickles).

    Downstream inputs are typed by their annotation: ``TrainResult`` (default),
    ``ray.train.Result``, ``pandas.DataFrame`` or ``Checkpoint``; ``dict[str, ...]`` for
    several partitions. A Ray Tune sweep is stored as one asset (manifest plus a Parquet
    trials table) and loads as ``TrainResultGrid``, its trials table, its best trial or its
    best checkpoint.
    """

    base_path: str | None = Field(
        default=None,
        description=(
            "Where results are stored: a local folder, 's3://bucket/prefix', "
            "'gs://bucket/prefix' or 'abfs://container/prefix' (also 'az://'). Default: "
            "'trainresults' under the Dagster instance's storage directory."
        ),
    )
    s3: S3Resource | None = Field(
        default=None,
        description=(
            "dagster-aws S3Resource (endpoint, region, credentials) used for an s3:// "
            "base_path and for s3:// runs and checkpoints. Without it the default AWS "
            "credential chain is used."
        ),
    )
    gcs: GcsResource | None = Field(
        default=None,
        description=(
            "GcsResource (endpoint, project, token) for a gs:// base_path and gs:// runs and "
            "checkpoints. Without it Application Default Credentials are used."
        ),
    )
    azure: AzureResource | None = Field(
        default=None,
        description=(
            "AzureResource (account, endpoint, key) for an abfs:// base_path and abfs:// "
            "runs and checkpoints. Without it Azure's standard variables are used."
        ),
    )
    checkpoints: Literal["reference", "copy"] = Field(
        default="reference",
        description=(
            "'reference' stores the checkpoints' URIs (nothing copied, loads in O(1) "
            "requests). 'copy' copies every checkpoint next to the manifest (server-side on "
            "S3, GCS and Azure) so the asset stays valid after Ray's num_to_keep or a lifecycle rule "
            "deletes the originals."
        ),
    )
    on_error: Literal["fail", "materialize"] = Field(
        default="fail",
        description=(
            "When the result carries a training error: 'fail' stores it for inspection and "
            "fails the step with the error per rank, run URI, last checkpoint and metrics; "
            "'materialize' records it as the asset's value with the error in its metadata."
        ),
    )

    _instance_dir: str | None = PrivateAttr(default=None)

    @field_validator("base_path")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        # Only local folders and the stores with a resource here get credentials from this
        # IO manager; another scheme would fail later, on the first write, with an error
        # naming the wrong thing.
        if value is None:
            return value
        return check_location(value, what="base_path")

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        instance = context.instance
        if instance is not None:
            self._instance_dir = os.path.join(instance.storage_directory(), _DEFAULT_SUBDIR)

    # ------------------------------------------------------------------ storage
    def _filesystem_for(self, uri: str) -> tuple[pafs.FileSystem, str]:
        return StoreSettings(self.s3, self.gcs, self.azure).filesystem_for(uri)

    def _base(self, context: dg.InputContext | dg.OutputContext) -> tuple[pafs.FileSystem, str]:
        base = self.base_path or self._instance_dir
        if base is None:
            try:
                instance = context.step_context.instance
            except dg.DagsterInvariantViolationError:  # built outside a run, no instance
                instance = None
            if instance is None:
                raise ValueError(
                    "RayTrainResultIOManager has no base_path and no Dagster instance to "
                    "default to; set base_path to a local folder or 's3://bucket/prefix'"
                )
            base = os.path.join(instance.storage_directory(), _DEFAULT_SUBDIR)
        return self._filesystem_for(base)

    def _store(self, context: dg.InputContext | dg.OutputContext,
               partition: str | dg.MultiPartitionKey | None) -> ResultStore:
        fs, base = self._base(context)
        if context.has_asset_key:
            parts = list(context.asset_key.path)
        elif isinstance(context, dg.InputContext) and context.upstream_output is not None:
            parts = ["_ops", *context.upstream_output.get_identifier()]
        elif isinstance(context, dg.InputContext):
            raise dg.DagsterInvariantViolationError(
                f"RayTrainResultIOManager cannot load input {context.name!r}: it has no "
                "upstream output or asset key to find the stored result by"
            )
        else:
            parts = ["_ops", *context.get_identifier()]
        root = "/".join([base.rstrip("/"), *storage_parts(parts, partition)])
        return ResultStore(fs, root, filesystem_for=self._filesystem_for)

    # ------------------------------------------------------------------ output
    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        if obj is None:  # an asset that returns nothing (no "-> None"): nothing to store
            context.log.debug("output is None: RayTrainResultIOManager stores nothing")
            return
        result = _as_stored(obj, context)
        partition = None
        if context.has_asset_partitions:
            keys = context.asset_partition_keys
            if len(keys) != 1:
                raise dg.DagsterInvariantViolationError(
                    f"RayTrainResultIOManager stores one partition per output, but asset "
                    f"{context.asset_key.to_user_string()} got {len(keys)} partitions "
                    f"({list(keys)[:3]}...): launch the backfill as one run per partition"
                )
            partition = keys[0]
        store = self._store(context, partition)
        is_sweep = isinstance(result, TrainResultGrid)
        # A sweep with errored trials is a success; one with no successful trial is not.
        errored = (not result.succeeded) if isinstance(result, TrainResultGrid) else (
            result.error is not None)
        failed = errored and self.on_error == "fail"
        extra = {
            "dagster_run_id": _run_id(context),
            "asset_key": list(context.asset_key.path) if context.has_asset_key else None,
            "partition_key": str(partition) if partition is not None else None,
            "dagster_version": dg.__version__,
        }
        stored = store.write(result, copy_checkpoints=self.checkpoints == "copy",
                             commit=not failed, extra=extra)
        for warning in stored.warnings:
            context.log.warning(f"{store.uri}: {warning}")
        what = (f"sweep {result.uri} ({len(result.trials)} trials, {result.num_errors} errored"
                if isinstance(result, TrainResultGrid)
                else f"run {result.uri} ({len(result.checkpoints)} checkpoints")
        context.log.info(f"stored {what}, checkpoints={self.checkpoints}) as "
                         f"{stored.manifest_uri}")
        if failed:
            raise _failure(result, stored)
        if isinstance(result, TrainResultGrid):
            metadata = sweep_metadata(result, manifest_uri=stored.manifest_uri,
                                      checkpoint_uris=stored.checkpoint_uris, log=context.log)
        else:
            metadata = result_metadata(result, manifest_uri=stored.manifest_uri,
                                       checkpoint_uris=stored.checkpoint_uris, log=context.log)
        if is_sweep and errored:
            context.log.warning(f"sweep {result.uri}: no trial succeeded; stored anyway "
                                "(on_error='materialize')")
        if self.checkpoints == "reference" and isinstance(result, TrainResult):
            warning = retention_warning(result)
            if warning:
                context.log.warning(warning)
                metadata["trainresults/retention_warning"] = dg.MetadataValue.text(warning)
        context.add_output_metadata(metadata)

    # ------------------------------------------------------------------ input
    def load_input(self, context: dg.InputContext) -> Any:
        kind, as_dict, optional = _target(context)
        if not (context.has_asset_key and context.has_asset_partitions):
            return _convert(self._store(context, None).read(), kind, optional, context)
        keys = list(context.asset_partition_keys)
        if len(keys) == 1 and not as_dict:
            return _convert(self._store(context, keys[0]).read(), kind, optional, context)
        allow_missing = bool((context.definition_metadata or {}).get("allow_missing_partitions"))

        def read(key: Any) -> TrainResult | TrainResultGrid | None:
            try:
                return self._store(context, key).read()
            except FileNotFoundError:
                if not allow_missing:
                    raise
                context.log.warning(f"partition {key!r} of {context.asset_key} is missing")
                return None

        # Each partition is two small reads; on S3 latency dominates, so read in parallel.
        with concurrent.futures.ThreadPoolExecutor(max(1, min(8, len(keys)))) as pool:
            loaded = list(pool.map(read, keys))
        return {str(k): _convert(r, kind, optional, context)
                for k, r in zip(keys, loaded, strict=True) if r is not None}


# --------------------------------------------------------------------------------------
# Hooks
# --------------------------------------------------------------------------------------


def _as_stored(obj: Any, context: dg.OutputContext) -> TrainResult | TrainResultGrid:
    where = context.asset_key.to_user_string() if context.has_asset_key else context.name
    return as_result_or_grid(obj, what=f"the output of {where}")


def retention_warning(result: TrainResult) -> str | None:
    """Why a referenced checkpoint of ``result`` may vanish, or None.

    ``checkpoints="reference"`` stores URIs into the run. Ray's ``num_to_keep`` (the
    ``RunRecorder`` keeps the run's ``CheckpointConfig``) deletes a checkpoint each time the
    run reports one more than it keeps: while it still runs, and when a run of the same
    name resumes. Nothing is at risk without a limit, or when the run is not recorded.
    """
    record = result.record
    keep = (record.checkpoint_config or {}).get("num_to_keep") if record is not None else None
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1 or not result.checkpoints:
        return None
    score = (record.checkpoint_config or {}).get("score_attribute") if record else None
    order = "lowest-scored by " + str(score) if score else "oldest"
    first = result.best_checkpoints[0][0].name if result.best_checkpoints else None
    status = record.status if record is not None else result.status
    when = ("the run is still running" if status == "running"
            else f"a run of the same name resumes (status {status!r})")
    return (
        f"checkpoints='reference' with Ray's num_to_keep={keep}: run {result.uri} keeps "
        f"{len(result.checkpoints)} checkpoint(s), and Ray deletes the {order} one whenever "
        f"{when} and reports another" + (f" ({first} goes first)" if first else "")
        + ". Downstream assets that reference it would then point at nothing. Use "
        "checkpoints='copy', or register the checkpoint you need (build_promotion_asset "
        "copies it into the registry)."
    )


def _failure(result: TrainResult | TrainResultGrid, stored: StoredVersion) -> dg.Failure:
    metadata: dict[str, Any] = dict(context_metadata(result))
    metadata["trainresults/manifest_uri"] = dg.MetadataValue.path(stored.manifest_uri)
    if isinstance(result, TrainResultGrid):
        head = (f"Ray Tune sweep {result.uri}: no trial succeeded "
                f"({result.num_errors} of {len(result.trials)} errored).")
        lines = format_failure(sweep_context(result), "text")
    else:
        head = f"Ray Train run {result.uri} failed."
        lines = format_failure(training_context(result), "text")
    return dg.Failure(
        description="\n".join([
            head,
            *lines,
            f"The result is stored (uncommitted) at {stored.manifest_uri}. Set "
            "on_error='materialize' to record failed runs as materialisations.",
        ]),
        metadata=metadata,
    )


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _target(context: dg.InputContext) -> tuple[str, bool, bool]:
    """``(kind, as_dict, optional)`` from the input's annotation."""
    try:
        tp = context.dagster_type.typing_type
    except dg.DagsterInvariantViolationError:  # a context built by hand without a type
        tp = Any
    tp, optional = _strip_optional(tp)
    as_dict = False
    if typing.get_origin(tp) in (dict, typing.Dict):  # noqa: UP006 - Dagster reports typing.Dict
        args = typing.get_args(tp)
        tp = args[1] if len(args) == 2 else Any
        tp, optional = _strip_optional(tp)
        as_dict = True
    if tp in (Any, object) or tp is None:
        return "any", as_dict, optional
    if isinstance(tp, type) and issubclass(tp, TrainResult):
        return "result", as_dict, optional
    if tp is TrainResultGrid:
        return "grid", as_dict, optional
    if tp is Checkpoint:
        return "checkpoint", as_dict, optional
    module, name = getattr(tp, "__module__", ""), getattr(tp, "__name__", "")
    if module.startswith("pandas") and name == "DataFrame":
        return "dataframe", as_dict, optional
    if module.startswith("ray.") and name == "Result":
        return "ray", as_dict, optional
    raise TypeError(
        f"RayTrainResultIOManager cannot load input {context.name!r} as {tp!r}; annotate it "
        "as trd.TrainResult, ray.train.Result, pandas.DataFrame or trd.Checkpoint, or for a "
        "sweep also trd.TrainResultGrid (or dict[str, ...] of these for several partitions)"
    )


def _convert(
    value: TrainResult | TrainResultGrid, kind: str, optional: bool, context: dg.InputContext
) -> Any:
    if isinstance(value, TrainResultGrid):
        return _convert_sweep(value, kind, optional, context)
    result = value
    if kind in ("any", "result"):
        return result
    if kind == "grid":
        raise TypeError(
            f"input {context.name!r} is annotated TrainResultGrid, but {result.uri} is a single "
            "Ray Train run; annotate it trd.TrainResult"
        )
    if kind == "dataframe":
        return result.metrics_dataframe
    if kind == "checkpoint":
        if result.checkpoint is None and not optional:
            raise CheckpointMissingError(
                f"input {context.name!r} expects the latest Checkpoint of run {result.uri}, "
                "but the run persisted none; annotate it Checkpoint | None or TrainResult"
            )
        return result.checkpoint
    ray_result = result.to_ray()
    ray_result.metrics_dataframe = result.metrics_dataframe  # the full history, not only kept
    return ray_result


def _convert_sweep(
    grid: TrainResultGrid, kind: str, optional: bool, context: dg.InputContext
) -> Any:
    """A stored sweep by annotation: the sweep, its trials table, or its best trial or
    checkpoint by the objective in the input's metadata (``metric``, ``mode``, ``scope``)
    or else the sweep's own (``TuneConfig(metric, mode)``)."""
    if kind in ("any", "grid"):
        return grid
    if kind == "dataframe":
        return grid.trials_table
    meta = context.definition_metadata or {}
    metric, mode = meta.get("metric"), meta.get("mode")
    try:
        if kind == "checkpoint":
            return grid.best_checkpoint(metric, mode, scope=meta.get("scope", "all")).checkpoint
        best = grid.get_best_result(metric, mode, scope=meta.get("scope", "last"))
    except NoEligibleCheckpointError:
        if optional:
            return None
        raise
    except ValueError as exc:
        raise ValueError(
            f"input {context.name!r} asks for the best {'checkpoint' if kind == 'checkpoint' else 'trial'} "
            f"of sweep {grid.uri}: {exc}. Or give the objective on the input: "
            "dg.AssetIn(metadata={'metric': 'loss', 'mode': 'min'})."
        ) from exc
    if kind == "result":
        return best
    ray_result = best.to_ray()
    ray_result.metrics_dataframe = best.metrics_dataframe
    return ray_result


def _run_id(context: dg.OutputContext) -> str | None:
    try:
        return context.run_id
    except dg.DagsterInvariantViolationError:  # a context built by hand, outside a run
        return None
