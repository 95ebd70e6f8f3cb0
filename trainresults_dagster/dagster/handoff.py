"""Dagster assets that hand the champion on: to batch inference, and to a serving target.

Both take ``model_asset``: an upstream asset whose value is a registry ``ModelVersion`` (the
promotion asset's champion) or a ``Checkpoint`` (the best-checkpoint asset), loaded by the
JSON IO manager. Each records the exact model version and checkpoint it used, so the
asset catalog answers "which model produced these predictions / is serving now?".

* ``build_batch_inference_asset``: the Parquet dataset at ``output_uri`` is the data; the
  asset's value is the run summary (rows, output URI, timing, lineage), stored as JSON, so
  a downstream asset gets the summary and opens the data with
  ``trainresults_dagster.open_inference_output(summary)``.
* ``build_serving_asset``: calls ``deploy(manifest)`` on the target resource
  (``RayServeTarget``, ``WebhookTarget`` or your own) and stores what was deployed.
"""

# No ``from __future__ import annotations``: Dagster reads the ``context`` annotation as a
# class, not a string.
from typing import Any, Literal

import dagster as dg

import trainresults_dagster.storage as storage
from trainresults_dagster.dagster._wiring import AssetRef, StoreSettings, asset_key
from trainresults_dagster.dagster.metadata import METADATA_PREFIX
from trainresults_dagster.errors import CheckpointMissingError, WebhookError
from trainresults_dagster.handoff.inference import run_batch_inference
from trainresults_dagster.handoff.model_ref import model_ref

from .json_io_manager import JSON_IO_MANAGER_KEY


def _lineage_metadata(ref: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        f"{METADATA_PREFIX}checkpoint_uri": ref.checkpoint.uri,
        f"{METADATA_PREFIX}model": ref.model or "",
    }
    if ref.version is not None:
        meta[f"{METADATA_PREFIX}model_version"] = ref.version
    if ref.lineage:
        meta[f"{METADATA_PREFIX}lineage"] = dg.MetadataValue.json(ref.lineage)
    return meta


def build_batch_inference_asset(
    name: str,
    *,
    model_asset: AssetRef,
    predictor: type,
    input_uri: str,
    output_uri: str,
    engine: Literal["local", "ray"] = "local",
    batch_size: int = 4096,
    io_manager_key: str = JSON_IO_MANAGER_KEY,
    s3_key: str | None = None,
    gcs_key: str | None = None,
    azure_key: str | None = None,
    num_actors: int = 1,
    num_cpus_per_actor: float = 1.0,
    ray_address: str | None = None,
    group_name: str | None = None,
    description: str | None = None,
) -> dg.AssetsDefinition:
    """An asset that runs ``predictor`` over ``input_uri`` with the model from ``model_asset``.

    ``s3_key`` names a dagster-aws ``S3Resource`` for ``s3://`` input and output (default:
    the AWS environment); ``gcs_key`` a ``GcsResource`` for ``gs://`` and ``azure_key`` an
    ``AzureResource`` for ``abfs://`` ones (default: each provider's chain). Metadata: ``dagster/row_count``, ``rows_per_second``,
    ``trainresults/output_uri``, ``trainresults/model_version`` and ``.../checkpoint_uri``.
    """
    if engine not in ("local", "ray"):
        raise ValueError(f"expected engine 'local' or 'ray', got {engine!r}")
    if not isinstance(predictor, type):
        raise TypeError(f"expected a predictor class Predictor(checkpoint_dir), got {predictor!r}")

    @dg.asset(
        name=name,
        ins={"model": dg.AssetIn(key=asset_key(model_asset, what="model_asset"))},
        io_manager_key=io_manager_key,
        required_resource_keys={k for k in (s3_key, gcs_key, azure_key) if k} or None,
        group_name=group_name,
        description=description
        or f"Predictions of {predictor.__qualname__} over {input_uri}, written to {output_uri}.",
        kinds={"ray", "parquet"} if engine == "ray" else {"parquet"},
        metadata={"input_uri": input_uri, "output_uri": output_uri, "engine": engine},
    )
    def _batch_inference(context: dg.AssetExecutionContext, model: Any) -> dg.Output[dict]:
        stores = StoreSettings.from_resources(
            context.resources, s3_key=s3_key, gcs_key=gcs_key, azure_key=azure_key
        )
        # run_batch_inference uses one filesystem for the URIs of its kind (the output's store
        # first); a URI on another store resolves with that store's defaults.
        filesystem = stores.filesystem(output_uri) or stores.filesystem(input_uri)
        if filesystem is None and s3_key:
            filesystem = stores.s3.filesystem()
        summary = run_batch_inference(
            model,
            predictor,
            input_uri,
            output_uri,
            engine=engine,
            batch_size=batch_size,
            filesystem=filesystem,
            num_actors=num_actors,
            num_cpus_per_actor=num_cpus_per_actor,
            ray_address=ray_address,
            log=context.log,
        )
        ref = model_ref(model, filesystem)
        metadata = {
            "dagster/row_count": summary["rows"],
            # Not dagster/uri: the IO manager sets that to where it stored the summary.
            f"{METADATA_PREFIX}output_uri": dg.MetadataValue.path(summary["output_uri"]),
            "rows_per_second": float(summary["rows_per_second"] or 0.0),
            "seconds": float(summary["seconds"]),
            "files": len(summary["files"]),
            **_lineage_metadata(ref),
        }
        return dg.Output(dict(summary), metadata=metadata)

    return _batch_inference


def build_serving_asset(
    name: str,
    *,
    model_asset: AssetRef,
    target_key: str = "serving_target",
    io_manager_key: str = JSON_IO_MANAGER_KEY,
    group_name: str | None = None,
    description: str | None = None,
) -> dg.AssetsDefinition:
    """An asset that hands the model from ``model_asset`` to the ``target_key`` resource.

    The target is any resource with ``deploy(manifest) -> dict`` (``RayServeTarget``,
    ``WebhookTarget``). The asset's value is ``{"manifest": ..., "deployment": ...}``;
    materialising it again with an older champion (after ``registry.rollback``) rolls the
    serving side back.
    """

    @dg.asset(
        name=name,
        ins={"model": dg.AssetIn(key=asset_key(model_asset, what="model_asset"))},
        io_manager_key=io_manager_key,
        required_resource_keys={target_key},
        group_name=group_name,
        description=description or f"The model served through the {target_key!r} resource.",
        metadata={"trainresults/target_key": target_key},  # read by the drift check
    )
    def _serving(context: dg.AssetExecutionContext, model: Any) -> dg.Output[dict]:
        target = getattr(context.resources, target_key)
        if not callable(getattr(target, "deploy", None)):
            raise TypeError(
                f"expected resource {target_key!r} to have deploy(manifest) -> dict "
                f"(RayServeTarget, WebhookTarget), got {type(target).__name__}"
            )
        ref = model_ref(model)
        if not ref.checkpoint.exists():  # a pointer to nothing would break every replica
            raise CheckpointMissingError(
                f"expected the checkpoint of model {ref.model!r} version {ref.version!r} at "
                f"{ref.checkpoint.uri}, but it is gone; nothing was handed to {target_key!r}"
            )
        manifest = {
            **ref.manifest(),
            "asset_key": context.asset_key.to_user_string(),
            "dagster_run_id": context.run.run_id,
            "handed_off_at": storage.iso(),
        }
        context.log.info(
            f"handing model {ref.model!r} version {ref.version!r} ({ref.checkpoint.uri}) "
            f"to {type(target).__name__}"
        )
        try:
            record = target.deploy(manifest)
        except WebhookError as exc:
            raise dg.Failure(
                description=str(exc),
                metadata={
                    f"{METADATA_PREFIX}status": exc.status if exc.status is not None else -1,
                    f"{METADATA_PREFIX}body_excerpt": exc.body_excerpt,
                    f"{METADATA_PREFIX}url": exc.url,
                },
            ) from exc
        metadata = {
            **_lineage_metadata(ref),
            f"{METADATA_PREFIX}target": type(target).__name__,
            f"{METADATA_PREFIX}deployment": dg.MetadataValue.json(record or {}),
        }
        return dg.Output({"manifest": manifest, "deployment": record}, metadata=metadata)

    return _serving
