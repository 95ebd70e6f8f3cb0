"""``build_training_asset``: an asset that runs a training entrypoint in the step process.

The training asset of ``TrainingPipeline``. The entrypoint (``runs.entrypoint``) gets a
``TrainingRequest`` pointing Ray Train at ``storage_uri`` under a run name derived from the
Dagster run, so the storage sensor of the same pipeline watches exactly where it writes. Its
value is a ``TrainResult`` for ``RayTrainResultIOManager``; a failed run comes back as a
result with ``error`` set, which the IO manager stores and (``on_error="fail"``) fails on.

A Ray Job mode (``trainresults_dagster.dagster.ray_job``) builds the same asset, same
arguments, with the entrypoint run by a job on a cluster instead of in this process.
"""

# No "from __future__ import annotations": Dagster inspects the real annotations of the
# asset function (its context parameter and return type).
from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg

import trainresults_dagster.storage as storage
from trainresults_dagster.dagster._wiring import StoreSettings
from trainresults_dagster.dagster.sensors import TRAINING_TAG
from trainresults_dagster.runs.entrypoint import Entrypoint, TrainingRequest
from trainresults_dagster.runs.result import TrainResult


def training_request(
    pipeline: str,
    storage_uri: str,
    context: dg.AssetExecutionContext,
    s3_key: str | None,
    *,
    gcs_key: str | None = None,
    azure_key: str | None = None,
) -> TrainingRequest:
    """Where this step's Ray Train run goes: ``<storage_uri>/<pipeline>-<run id prefix>``."""
    scheme, _ = storage.split_scheme(storage_uri)
    filesystem = None
    if scheme:  # Ray gets our filesystem (retries, endpoint, credentials), not its own
        stores = StoreSettings.from_resources(
            context.resources, s3_key=s3_key, gcs_key=gcs_key, azure_key=azure_key
        )
        fs, path = stores.filesystem_for(storage_uri)
        filesystem = fs
    else:
        _, path = storage.resolve(storage_uri)
    return TrainingRequest(
        run_name=f"{pipeline}-{context.run.run_id[:8]}",
        storage_uri=storage_uri if scheme else path,
        storage_path=path,
        storage_filesystem=filesystem,
        tags={"dagster/run_id": context.run.run_id,
              "dagster/asset_key": context.asset_key.to_user_string()},
    )


def build_training_asset(
    name: str,
    *,
    pipeline: str,
    entrypoint: Entrypoint,
    params: Mapping[str, Any] | None = None,
    storage_uri: str,
    io_manager_key: str = "ray_results",
    s3_key: str | None = None,
    deps: Sequence[Any] = (),
    group_name: str | None = None,
    description: str | None = None,
    gcs_key: str | None = None,
    azure_key: str | None = None,
) -> dg.AssetsDefinition:
    """An asset that calls ``entrypoint`` with ``params`` and returns what it trained.

    ``storage_uri`` is the Ray Train storage path the run must use (``request.run_config()``
    puts it in the ``RunConfig``); ``s3_key`` names the ``S3Resource`` for an ``s3://`` one
    (default: the AWS environment), ``gcs_key`` a ``GcsResource`` for ``gs://`` and
    ``azure_key`` an ``AzureResource`` for ``abfs://`` (default: each provider's chain). Tagged ``trainresults/training`` so
    ``build_training_failure_sensor`` alerts with the training context when it fails.
    """
    values = dict(params or {})
    entrypoint.check_params(values)

    @dg.asset(
        name=name,
        io_manager_key=io_manager_key,
        deps=list(deps),
        required_resource_keys={k for k in (s3_key, gcs_key, azure_key) if k} or None,
        group_name=group_name,
        kinds={"ray"},
        tags={TRAINING_TAG: "true"},
        metadata={"entrypoint": entrypoint.ref, "ray_storage": storage_uri},
        description=description or f"Ray Train run of {entrypoint.ref}, stored under {storage_uri}.",
    )
    def _training(context: dg.AssetExecutionContext) -> TrainResult:
        request = training_request(
            pipeline, storage_uri, context, s3_key, gcs_key=gcs_key, azure_key=azure_key
        )
        context.log.info(f"training {entrypoint.ref} as {request.run_uri}")
        return entrypoint.run(request, values, context=context)

    return _training
