"""The example pipeline: train -> best checkpoint -> champion -> batch predictions -> serving.

Loaded by ``workspace.yaml`` (``dagster dev -w workspace.yaml``) and run end to end by
``make demo``. Configuration comes from environment variables, so the same definitions run
against S3 by setting a few of them:

``TRAINRESULTS_STORAGE``
    Root for everything the demo writes: a folder (default ``~/.trainresults-demo``) or
    ``s3://bucket/prefix``. Below it: ``ray/`` (Ray Train storage_path), ``results/``
    (IO manager), ``registry/``, ``values/`` (JSON values), ``data/``, ``predictions/``.
``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``
    The standard AWS settings, for an ``s3://`` storage root (read by boto3 and pyarrow;
    never written anywhere by this library).
``RAY_ADDRESS``
    Train on an existing Ray cluster instead of a local Ray (``fit()`` in the step, through
    Ray Client).
``TRAINRESULTS_RAY_JOB_ADDRESS`` / ``TRAINRESULTS_RAY_JOB_TOKEN``
    Train as a Ray Job on the cluster whose dashboard is at this address
    (``http://head:8265``), through ``RayJobTrainer``; the token is the dashboard's auth
    token, if it needs one. The cluster reads and writes the same storage root, and has
    ``trainresults_dagster`` installed (its image, or ``runtime_env`` ``pip``).
``TRAINRESULTS_WEBHOOK_URL`` / ``TRAINRESULTS_WEBHOOK_SECRET``
    Serving hand-off target (a signed webhook). Unset: the champion is served by a Ray
    Serve app on the local Ray (``examples/serving.py``), deployed on the first hand-off.
``TRAINRESULTS_SERVE_PORT``
    HTTP port of that Serve app (default 8000).
``TRAINRESULTS_ALERT_URL`` / ``TRAINRESULTS_ALERT_SECRET``
    Where failure alerts go. Unset: alerts are written to the sensor's log.
``TRAINRESULTS_EPOCHS``
    Training epochs (default 8).
``TRAINRESULTS_SEED``
    Fix the data seed (default: derived from the Dagster run id, like fresh data).
"""


import datetime as dt
import os
import zlib
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource

import trainresults_dagster as trd
import trainresults_dagster.storage as storage
from trainresults_dagster.dagster.webhooks import LogAlertSink
from trainresults_dagster.examples.model import Predictor, make_dataset
from trainresults_dagster.examples.serving import LocalServeTarget

MODEL = "demo-classifier"


def storage_root() -> str:
    root = os.environ.get("TRAINRESULTS_STORAGE") or os.path.expanduser("~/.trainresults-demo")
    return root.rstrip("/")


def location(*parts: str) -> str:
    return "/".join([storage_root(), *parts])


def s3_resource() -> S3Resource | None:
    if not storage_root().startswith("s3://"):
        return None
    return S3Resource(
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
        region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
    )


def _filesystem(uri: str) -> tuple[Any, str]:
    # The default S3 settings read the same AWS variables as s3_resource() above.
    return storage.filesystem_for(uri)


# ------------------------------------------------------------------------------- assets
@dg.asset(kinds={"python", "parquet"}, group_name="demo",
          io_manager_key=trd.JSON_IO_MANAGER_KEY)
def training_data(context: dg.AssetExecutionContext) -> dict[str, Any]:
    """A generated labelled dataset for training and an unlabelled one for scoring.

    The seed changes with every Dagster run, like fresh data arriving, so a rerun can
    produce a better or a worse model and the promotion gate decides.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    seed = int(os.environ.get("TRAINRESULTS_SEED") or zlib.crc32(context.run.run_id.encode()))
    frames = {
        "training": make_dataset(4000, seed=seed),
        "scoring": make_dataset(20000, seed=seed + 1).drop(columns=["label"]),
    }
    out: dict[str, Any] = {"seed": seed}
    for name, frame in frames.items():
        uri = location("data", name, "part-0.parquet")
        fs, path = _filesystem(uri)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, filesystem=fs)
        out[f"{name}_uri"] = uri
        out[f"{name}_rows"] = len(frame)
    context.add_output_metadata({"training_rows": out["training_rows"],
                                 "scoring_rows": out["scoring_rows"]})
    return out


@dg.asset(name="trained_model", kinds={"ray"}, group_name="demo", io_manager_key="ray_results",
          tags={"trainresults/training": "true"})
def trained_model_in_process(context: dg.AssetExecutionContext, training_data: dict[str, Any]) -> trd.TrainResult:
    """Logistic regression trained with Ray Train V2 (2 workers, a checkpoint per epoch)."""
    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from trainresults_dagster.examples.model import train_loop
    from trainresults_dagster.ray import RunRecorder

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        ray.init(address=address) if address else ray.init(num_cpus=2, include_dashboard=False)
    fs, ray_storage = _filesystem(location("ray"))
    trainer = DataParallelTrainer(
        train_loop,
        train_loop_config={
            "data_path": training_data["training_uri"],
            "epochs": int(os.environ.get("TRAINRESULTS_EPOCHS", "8")),
            "lr": 0.5,
            "seed": training_data["seed"],
        },
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(
            name=f"demo-{context.run.run_id[:8]}",
            storage_path=ray_storage,
            storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(
                num_to_keep=3, checkpoint_score_attribute="val_loss", checkpoint_score_order="min"
            ),
            # Ray 2.60 annotates ``callbacks`` as UserCallback only but accepts any Ray Train
            # callback at run time; RunRecorder is a controller callback (see its docstring).
            callbacks=[RunRecorder()],  # pyright: ignore[reportArgumentType]
        ),
    )
    return trd.fit(trainer)


def ray_job_address() -> str | None:
    return os.environ.get("TRAINRESULTS_RAY_JOB_ADDRESS") or None


#: The same model trained by a Ray Job on the cluster: the job runs
#: ``python -m trainresults_dagster.pipes trainresults_dagster.examples.training:train``,
#: which writes under ``ray/`` and reports back through Dagster Pipes.
trained_model_as_job = trd.build_ray_job_training_asset(
    "trained_model",
    pipeline="demo",
    entrypoint="trainresults_dagster.examples.training:train",
    params={
        "data_path": location("data", "training", "part-0.parquet"),
        "epochs": int(os.environ.get("TRAINRESULTS_EPOCHS", "8")),
        "lr": 0.5,
    },
    storage_uri=location("ray"),
    s3_key="s3" if storage_root().startswith("s3://") else None,
    deps=[training_data],
    group_name="demo",
    description="Logistic regression trained by a Ray Job on the cluster (2 workers).",
)

#: One ``trained_model`` asset or the other: the rest of the pipeline cannot tell them apart.
trained_model = trained_model_as_job if ray_job_address() else trained_model_in_process

best_checkpoint = trd.build_best_checkpoint_asset(
    "best_checkpoint", result_asset=trained_model, metric="val_loss", mode="min",
    group_name="demo",
)
champion = trd.build_promotion_asset(
    "champion",
    model=MODEL,
    candidate_asset=best_checkpoint,
    metric="val_loss",
    mode="min",
    min_improvement=0.001,
    thresholds={"val_accuracy": (0.7, None)},
    group_name="demo",
    # Retraining is weekly: Dagster's freshness daemon flags a week without an attempt.
    freshness_policy=dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(days=8)),
)
batch_predictions = trd.build_batch_inference_asset(
    "batch_predictions",
    model_asset=champion,
    predictor=Predictor,
    input_uri=location("data", "scoring"),
    output_uri=location("predictions"),
    engine="local",
    s3_key="s3" if storage_root().startswith("s3://") else None,
    group_name="demo",
)
serving = trd.build_serving_asset("serving", model_asset=champion, group_name="demo")

demo_assets = [training_data, trained_model, best_checkpoint, champion, batch_predictions, serving]
#: Files intact, promoted within 8 days, trained on the latest data, serving the champion.
demo_checks = trd.build_champion_checks(
    champion, max_age=dt.timedelta(days=8), training_data_asset=training_data,
    serving_asset=serving,
)

# --------------------------------------------------------------------- automation
retrain_job = dg.define_asset_job(
    "retrain", selection=dg.AssetSelection.assets(trained_model).downstream()
    | dg.AssetSelection.assets(training_data),
)
weekly_retraining = trd.build_retraining_schedule(
    "weekly_retraining", target=retrain_job, cron_schedule="0 3 * * 1"
)
guardrails_job = dg.define_asset_job("guardrails", selection=dg.AssetSelection.checks(*demo_checks))
hourly_guardrails = dg.ScheduleDefinition(
    name="hourly_guardrails", job=guardrails_job, cron_schedule="0 * * * *"
)
failed_ray_runs = trd.build_failed_run_sensor(
    "failed_ray_runs", storage_path=location("ray"), job=retrain_job,
    s3_key="s3" if storage_root().startswith("s3://") else None,
)
training_failures = trd.build_training_failure_sensor(
    "training_failures",
    webserver_base_url=os.environ.get("DAGSTER_WEBSERVER_URL", "http://localhost:3000"),
)


# ---------------------------------------------------------------------- resources


def resources() -> dict[str, Any]:
    s3 = s3_resource()
    out: dict[str, Any] = {
        "ray_results": trd.RayTrainResultIOManager(
            base_path=location("results"), s3=s3, checkpoints="copy", on_error="fail"
        ),
        trd.JSON_IO_MANAGER_KEY: trd.JsonIOManager(base_path=location("values"), s3=s3),
        "checkpoint_registry": trd.CheckpointRegistry(base_path=location("registry"), s3=s3),
        "alert_sink": (
            trd.WebhookAlertSink(url=dg.EnvVar("TRAINRESULTS_ALERT_URL"),
                                 secret=os.environ.get("TRAINRESULTS_ALERT_SECRET") and
                                 dg.EnvVar("TRAINRESULTS_ALERT_SECRET"))
            if os.environ.get("TRAINRESULTS_ALERT_URL") else LogAlertSink()
        ),
    }
    if s3 is not None:
        out["s3"] = s3
    if ray_job_address():
        out["ray_job"] = trd.RayJobTrainer(
            address=ray_job_address(),
            auth_token=dg.EnvVar("TRAINRESULTS_RAY_JOB_TOKEN")
            if os.environ.get("TRAINRESULTS_RAY_JOB_TOKEN") else None,
        )
    if os.environ.get("TRAINRESULTS_WEBHOOK_URL"):
        out["serving_target"] = trd.WebhookTarget(
            url=dg.EnvVar("TRAINRESULTS_WEBHOOK_URL"),
            secret=os.environ.get("TRAINRESULTS_WEBHOOK_SECRET") and dg.EnvVar("TRAINRESULTS_WEBHOOK_SECRET"),
        )
    else:
        out["serving_target"] = LocalServeTarget(
            app_name="champion", deployment_name="ChampionServer",
            http_port=int(os.environ.get("TRAINRESULTS_SERVE_PORT") or 8000),
        )
    return out


defs = dg.Definitions(
    assets=demo_assets,
    asset_checks=demo_checks,
    jobs=[retrain_job, guardrails_job],
    schedules=[weekly_retraining, hourly_guardrails],
    sensors=[failed_ray_runs, training_failures],
    resources=resources(),
)
