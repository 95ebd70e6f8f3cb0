"""``TrainingPipeline``: the whole pipeline as a Dagster Component, declared in ``defs.yaml``.

``dg scaffold defs trainresults_dagster.components.TrainingPipeline my_model`` writes a
commented ``defs.yaml`` (``component_scaffold``); ``dg check defs`` resolves and checks it
(``component_specs``); loading it builds, with the same factories a Python ``Definitions``
uses, the assets, checks, job, sensors, schedule and resources below. ``name`` prefixes
every definition, so several pipelines live in one project:

==============================  =========================================================
``<name>_trained_model``        ``build_training_asset`` (the entrypoint, in-process)
``<name>_best_checkpoint``      ``build_best_checkpoint_asset``
``<name>_champion``             ``build_promotion_asset`` (blocking check ``promotion_gate``)
``<name>_batch_predictions``    ``build_batch_inference_asset`` (with ``inference:``)
``<name>_serving``              ``build_serving_asset`` (with ``serving:``)
``<name>_retrain``              asset job: the pipeline and its ``training.deps``
``<name>_retraining``           ``build_retraining_schedule`` (with ``schedule:``)
``<name>_failed_ray_runs``      ``build_failed_run_sensor`` over ``<base_path>/ray``
``<name>_training_failures``    ``build_training_failure_sensor``
==============================  =========================================================

Resources, under the factories' default keys (each prefixed by ``resource_key_prefix``):
``ray_results`` (``RayTrainResultIOManager``), ``trainresults_json_io_manager``,
``checkpoint_registry``, ``alert_sink``, ``serving_target``, and ``s3``, ``gcs`` or ``azure``
when ``storage`` configures that store. Two pipelines with the
same storage and sinks share the same resource objects (Dagster merges component
definitions only when a key's resources are identical); pipelines that differ need
different ``resource_key_prefix`` values.
"""

# No "from __future__ import annotations": Dagster derives the YAML schema from the real
# annotations of the class.
from typing import Annotated, Any

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field

from trainresults_dagster.dagster.best_checkpoint import build_best_checkpoint_asset
from trainresults_dagster.dagster.clouds import AzureResource, GcsResource
from trainresults_dagster.dagster.component_scaffold import TrainingPipelineScaffolder
from trainresults_dagster.dagster.component_specs import (
    AlertsSpec,
    InferenceSpec,
    PromotionSpec,
    ScheduleSpec,
    SelectionSpec,
    ServingSpec,
    StorageSpec,
    TrainingSpec,
    WebhookSpec,
    checked,
    dagster_name,
    resolve_serving,
    resolve_training,
    section,
)
from trainresults_dagster.dagster.handoff import build_batch_inference_asset, build_serving_asset
from trainresults_dagster.dagster.io_manager import RayTrainResultIOManager
from trainresults_dagster.dagster.json_io_manager import JSON_IO_MANAGER_KEY, JsonIOManager
from trainresults_dagster.dagster.promotion import build_promotion_asset
from trainresults_dagster.dagster.ray_job import RayJobTrainer, build_ray_job_training_asset
from trainresults_dagster.dagster.ray_serve import RayServeTarget
from trainresults_dagster.dagster.registry import CheckpointRegistry
from trainresults_dagster.dagster.schedules import build_retraining_schedule
from trainresults_dagster.dagster.sensors import (
    build_failed_run_sensor,
    build_training_failure_sensor,
)
from trainresults_dagster.dagster.training import build_training_asset
from trainresults_dagster.dagster.webhooks import LogAlertSink, WebhookAlertSink, WebhookTarget

#: How each ``training.mode`` builds the training asset; every builder takes the arguments of
#: ``build_training_asset``. The Ray Job mode (``trainresults_dagster.dagster.ray_job``) plugs
#: in here as ``"ray_job"``, together with that value in ``TrainingSpec.mode``.
TRAINING_ASSET_BUILDERS: dict[str, Any] = {
    "in_process": build_training_asset,
    "ray_job": build_ray_job_training_asset,
}

_SHARED: dict[tuple[Any, ...], Any] = {}


def _shared(cls: type, **config: Any) -> Any:
    """One resource object per class and configuration. Dagster merges the definitions of
    the components in a project and refuses two *different objects* under one resource key,
    so pipelines configured alike must hand it the same object."""

    def part(value: Any) -> Any:
        if isinstance(value, dg.ConfigurableResource):
            return ("resource", id(value))  # itself shared, so equal configs share the id
        return (type(value).__name__, value)  # an EnvVar differs from its name as a str

    key = (cls, tuple(sorted((k, part(v)) for k, v in config.items())))
    if key not in _SHARED:
        _SHARED[key] = cls(**config)
    return _SHARED[key]


def _env(name: str | None) -> dg.EnvVar | None:
    return dg.EnvVar(name) if name else None


def _webhook(cls: type, spec: WebhookSpec) -> Any:
    return _shared(cls, url=dg.EnvVar(spec.url_env), secret=_env(spec.secret_env))


@dg.scaffold_with(TrainingPipelineScaffolder)
class TrainingPipeline(dg.Component, dg.Resolvable, dg.Model):
    """Ray Train pipeline from YAML: train, pick the best checkpoint, gate a champion, infer, serve; failure sensors and a retraining schedule.

    The assets are built by the same factories as a Python ``Definitions``
    (``build_best_checkpoint_asset``, ``build_promotion_asset``, ...), so both behave alike.
    """

    name: Annotated[str, checked(
        dagster_name,
        description="Prefix of every asset, job, sensor and schedule of this pipeline, and "
        "its registry model name unless promotion.model is set.",
        examples=["classifier"],
    )]
    training: Annotated[TrainingSpec, section(
        TrainingSpec, resolve_training, "What trains: the entrypoint and its params.")]
    storage: StorageSpec = Field(description="Where runs, results and the registry live.")
    selection: SelectionSpec = Field(description="Metric and mode of the best checkpoint.")
    promotion: PromotionSpec = Field(
        default_factory=PromotionSpec, description="The gate before the alias moves."
    )
    inference: InferenceSpec | None = Field(
        default=None, description="Batch inference with the champion (omit for none)."
    )
    serving: Annotated[ServingSpec | None, dg.Resolver(
        lambda context, value: None if value is None else resolve_serving(context, value),
        model_field_type=ServingSpec.model() | None,
        description="Hand the champion to serving (omit for none).",
    )] = None
    alerts: AlertsSpec = Field(
        default_factory=AlertsSpec, description="Failure sensors and their alert sink."
    )
    schedule: ScheduleSpec | None = Field(
        default=None, description="Retraining schedule (omit for none)."
    )
    group_name: str | None = Field(
        default=None, description="Dagster asset group (default: the pipeline's name)."
    )
    resource_key_prefix: Annotated[str, checked(
        lambda v: v if v == "" else dagster_name(v),
        description="Prefix of every resource key, for pipelines whose storage or sinks "
        "differ within one project (e.g. 'churn_').",
    )] = ""

    @classmethod
    def get_spec(cls) -> dg.ComponentTypeSpec:
        return dg.ComponentTypeSpec(
            description="A Ray Train pipeline: training, best checkpoint, gated promotion, "
            "batch inference, serving hand-off, failure sensors and retraining.",
            tags=["ray", "ray-train", "ml", "training"],
            produces=["asset", "asset_check", "job", "sensor", "schedule", "resource"],
        )

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        return self.definitions()

    # -------------------------------------------------------------------------- keys
    def key(self, role: str) -> str:
        """The resource key for ``role`` (``"checkpoint_registry"``, ``"s3"``, ...)."""
        return f"{self.resource_key_prefix}{role}"

    @property
    def s3_key(self) -> str | None:
        return self.key("s3") if self.storage.s3 is not None else None

    @property
    def gcs_key(self) -> str | None:
        return self.key("gcs") if self.storage.gcs is not None else None

    @property
    def azure_key(self) -> str | None:
        return self.key("azure") if self.storage.azure is not None else None

    def location(self, *parts: str) -> str:
        return "/".join([self.storage.base_path, *parts])

    # ---------------------------------------------------------------------- building
    def definitions(self) -> dg.Definitions:
        """The pipeline's ``Definitions`` (``build_defs`` without a load context)."""
        name, group = self.name, self.group_name or self.name
        json_key = self.key(JSON_IO_MANAGER_KEY)
        deps = [dg.AssetKey.from_user_string(d) for d in self.training.deps]
        selection, promotion = self.selection, self.promotion

        job_spec = self.training.ray_job
        extra: dict[str, Any] = {} if job_spec is None or self.training.mode != "ray_job" else {
            "trainer_key": self.key("ray_job"), "python": job_spec.python}
        training = TRAINING_ASSET_BUILDERS[self.training.mode](
            f"{name}_trained_model",
            pipeline=name,
            entrypoint=self.training.entrypoint,
            params=self.training.params,
            storage_uri=self.location("ray"),
            io_manager_key=self.key("ray_results"),
            s3_key=self.s3_key, gcs_key=self.gcs_key, azure_key=self.azure_key,
            deps=deps,
            group_name=group,
            **extra,
        )
        best = build_best_checkpoint_asset(
            f"{name}_best_checkpoint", result_asset=training, metric=selection.metric,
            mode=selection.mode, ties=selection.ties, io_manager_key=json_key, group_name=group,
        )
        champion = build_promotion_asset(
            f"{name}_champion",
            model=promotion.model_name or name,
            candidate_asset=best,
            metric=selection.metric,
            mode=selection.mode,
            min_improvement=promotion.min_improvement,
            thresholds=dict(promotion.thresholds),
            alias=promotion.alias,
            registry_key=self.key("checkpoint_registry"),
            io_manager_key=json_key,
            group_name=group,
        )
        assets = [training, best, champion]
        if self.inference is not None:
            spec = self.inference
            assets.append(build_batch_inference_asset(
                f"{name}_batch_predictions",
                model_asset=champion,
                predictor=spec.predictor,
                input_uri=spec.input_uri,
                output_uri=spec.output_uri or self.location("predictions", name),
                engine=spec.engine,
                batch_size=spec.batch_size,
                num_actors=spec.num_actors,
                io_manager_key=json_key,
                s3_key=self.s3_key, gcs_key=self.gcs_key, azure_key=self.azure_key,
                group_name=group,
            ))
        if self.serving is not None:
            assets.append(build_serving_asset(
                f"{name}_serving", model_asset=champion, target_key=self.key("serving_target"),
                io_manager_key=json_key, group_name=group,
            ))

        alerts = self.alerts
        retrain_on_failure = alerts.failed_run_sensor and alerts.retrain_on_failure
        jobs, schedules, sensors = [], [], []
        job = None
        if self.schedule is not None or retrain_on_failure:
            job = dg.define_asset_job(
                f"{name}_retrain",
                selection=dg.AssetSelection.assets(*assets) | dg.AssetSelection.assets(*deps),
                description=f"Retrains pipeline {name!r}: its upstream data, training and "
                "everything downstream.",
            )
            jobs.append(job)
        if self.schedule is not None:
            schedules.append(build_retraining_schedule(
                f"{name}_retraining",
                target=job,
                cron_schedule=self.schedule.cron,
                execution_timezone=self.schedule.timezone,
                default_status=_status(self.schedule.running, dg.DefaultScheduleStatus),
            ))
        sensor_status = _status(alerts.running, dg.DefaultSensorStatus)
        if alerts.failed_run_sensor:
            sensors.append(build_failed_run_sensor(
                f"{name}_failed_ray_runs",
                storage_path=self.location("ray"),
                alert_sink_key=self.key("alert_sink"),
                job=job if retrain_on_failure else None,
                minimum_interval_seconds=alerts.minimum_interval_seconds,
                s3_key=self.s3_key, gcs_key=self.gcs_key, azure_key=self.azure_key,
                default_status=sensor_status,
            ))
        if alerts.training_failure_sensor:
            sensors.append(build_training_failure_sensor(
                f"{name}_training_failures",
                alert_sink_key=self.key("alert_sink"),
                webserver_base_url=alerts.webserver_base_url,
                default_status=sensor_status,
            ))
        return dg.Definitions(assets=assets, jobs=jobs, schedules=schedules, sensors=sensors,
                              resources=self.resources())

    def resources(self) -> dict[str, Any]:
        """The resources the factories above look up, under their keys."""
        s3 = None
        if self.storage.s3 is not None:
            spec = self.storage.s3
            s3 = _shared(
                S3Resource,
                endpoint_url=spec.endpoint_url,
                region_name=spec.region_name,
                profile_name=spec.profile_name,
                use_ssl=spec.use_ssl,
                aws_access_key_id=_env(spec.access_key_id_env),
                aws_secret_access_key=_env(spec.secret_access_key_env),
                aws_session_token=_env(spec.session_token_env),
            )
        gcs = azure = None
        if self.storage.gcs is not None:
            g = self.storage.gcs
            gcs = _shared(GcsResource, endpoint_url=g.endpoint_url, project_id=g.project_id,
                          anonymous=g.anonymous, access_token=_env(g.access_token_env))
        if self.storage.azure is not None:
            a = self.storage.azure
            azure = _shared(AzureResource, account_name=a.account_name,
                            endpoint_url=a.endpoint_url, account_key=_env(a.account_key_env),
                            sas_token=_env(a.sas_token_env),
                            connection_string=_env(a.connection_string_env))
        stores = {"s3": s3, "gcs": gcs, "azure": azure}
        out: dict[str, Any] = {
            self.key("ray_results"): _shared(
                RayTrainResultIOManager, base_path=self.location("results"), **stores,
                checkpoints=self.storage.checkpoints, on_error=self.storage.on_error,
            ),
            self.key(JSON_IO_MANAGER_KEY): _shared(
                JsonIOManager, base_path=self.location("values"), **stores
            ),
            self.key("checkpoint_registry"): _shared(
                CheckpointRegistry, base_path=self.location("registry"), **stores
            ),
        }
        for role, store in stores.items():
            if store is not None:
                out[self.key(role)] = store
        job_spec = self.training.ray_job
        if self.training.mode == "ray_job" and job_spec is not None:
            config = {
                "address": job_spec.address or _env(job_spec.address_env),
                "auth_token": _env(job_spec.token_env),
                "runtime_env": job_spec.runtime_env,
                "timeout_seconds": job_spec.timeout_seconds,
            }
            # runtime_env is a dict (unhashable): share by its repr, like _shared does by value
            key = (RayJobTrainer, repr(sorted((k, type(v).__name__, v) for k, v in config.items())))
            out[self.key("ray_job")] = _SHARED.setdefault(key, RayJobTrainer(**config))
        if self.alerts.failed_run_sensor or self.alerts.training_failure_sensor:
            webhook = self.alerts.webhook
            out[self.key("alert_sink")] = (
                _webhook(WebhookAlertSink, webhook) if webhook else _shared(LogAlertSink)
            )
        if self.serving is not None:
            if self.serving.webhook is not None:
                target = _webhook(WebhookTarget, self.serving.webhook)
            else:
                serve = self.serving.ray_serve
                if serve is None:  # resolve_serving guarantees one of the two
                    raise ValueError(f"pipeline {self.name!r}: serving needs webhook or ray_serve")
                target = _shared(RayServeTarget, app_name=serve.app_name,
                                 deployment_name=serve.deployment_name, address=serve.address)
            out[self.key("serving_target")] = target
        return out


def _status(running: bool, kind: Any) -> Any:
    return kind.RUNNING if running else kind.STOPPED
