"""The sections of a ``TrainingPipeline`` ``defs.yaml``, and how each field is checked.

Every field that can be wrong in a way pydantic's types cannot see (an import path, a cron
string, a metric name, a registry name, an environment variable name) has a resolver that
checks it while Dagster resolves the YAML and raises ``ResolutionException`` located at the
field: ``dg check defs`` then prints ``defs.yaml:<line> - attributes.<path>`` with the line
and what was expected, never a traceback from this package. The checks are the factories'
own validators (``validate_metric``, ``validate_name``, ...), so YAML and Python accept the
same values.

Secrets never pass through the YAML: webhook URLs and secrets and S3, GCS and Azure
credentials are given as the *names* of environment variables (``url_env: ALERT_URL``),
which become ``dg.EnvVar``s, resolved when the resource is used and shown by name only in
the UI.
"""

# No "from __future__ import annotations": Dagster derives the YAML schema from the real
# annotations of these classes.
import os
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

import dagster as dg
from dagster.components.resolved.errors import ResolutionException
from pydantic import Field

import trainresults_dagster.storage as storage
from trainresults_dagster.registry.gate import validate_min_improvement, validate_thresholds
from trainresults_dagster.registry.model_version import validate_name
from trainresults_dagster.runs.entrypoint import Entrypoint, load_object
from trainresults_dagster.runs.metrics import validate_metric

#: Storage schemes a pipeline accepts ("" and "file" are local folders; ``gcs://`` is
#: ``gs://``, ``az://``/``abfss://`` are ``abfs://``).
SCHEMES = ("", "file", "s3", "gs", "gcs", "abfs", "abfss", "az")
_FORMS = "a local folder, s3://bucket/prefix, gs://bucket/prefix or abfs://container/prefix"
_DAGSTER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def located(context: dg.ResolutionContext, message: str) -> ResolutionException:
    """A ``ResolutionException`` pointing at the field ``context`` is resolving, formatted as
    Dagster formats its own: ``file:line - attributes.path``, the YAML lines, the message."""
    path = ".".join(str(p) for p in context.path)
    tree = context.source_position_tree
    if tree is None:
        return ResolutionException(f"{path}: {message}")
    source = tree.source_error(yaml_path=context.path, inline_error_message=message,
                               value_error=True)
    text = f"{source.file_name}:{source.start_line_no} - {source.location}\n{source.snippet}\n"
    # The snippet carries the message inline, unless the YAML came from a string.
    return ResolutionException(text if message in source.snippet else f"{text}{message}\n")


def checked(
    check: Callable[[Any], Any],
    *,
    description: str,
    field_type: Any = str,
    examples: list[Any] | None = None,
) -> dg.Resolver:
    """A resolver that renders templates, then returns ``check(value)``; a ``ValueError`` or
    ``TypeError`` from ``check`` becomes a ``ResolutionException`` located at the field."""

    def resolve(context: dg.ResolutionContext, value: Any) -> Any:
        value = context.resolve_value(value)
        try:
            return check(value)
        except (ValueError, TypeError) as exc:
            raise located(context, str(exc)) from None

    # inject_before_resolve=False: Dagster would skip this resolver when a template renders
    # to a non-string, and the value would go unchecked.
    return dg.Resolver(resolve, model_field_type=field_type, description=description,
                       examples=examples, inject_before_resolve=False)


def _choice(*options: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError(f"expected one of {list(options)!r}, got {value!r}")
        return value

    return check


def dagster_name(value: Any) -> str:
    if not isinstance(value, str) or not _DAGSTER_NAME.fullmatch(value):
        raise ValueError(
            f"expected a Dagster name (letters, digits and '_', not starting with a digit), "
            f"such as 'classifier', got {value!r}"
        )
    return value


def _key_prefix(value: Any) -> str:
    if value == "":
        return value
    return dagster_name(value)


def env_name(value: Any) -> str:
    if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
        raise ValueError(
            f"expected the NAME of an environment variable, such as 'TRAINRESULTS_ALERT_URL', "
            f"got {value!r}. The value itself never goes in defs.yaml: set the variable in the "
            "environment of the Dagster processes."
        )
    return value


def _optional_env_name(value: Any) -> str | None:
    return None if value is None else env_name(value)


def _name(what: str) -> Callable[[Any], str]:
    return lambda value: validate_name(value, what=what)


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else check(value)


def _metric(value: Any) -> str:
    validate_metric(value)
    return value


def _cron(value: Any) -> str:
    from dagster._utils.schedules import is_valid_cron_schedule

    if not isinstance(value, str) or not is_valid_cron_schedule(value):
        raise ValueError(f"expected a cron schedule such as '0 3 * * 1' (Mondays 03:00), got {value!r}")
    return value


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected an integer >= 1, got {value!r}")
    return value


def _entrypoint(value: Any) -> Entrypoint:
    return Entrypoint.load(value)


def _predictor(value: Any) -> type:
    predictor = load_object(value, what="predictor")
    if not isinstance(predictor, type):
        raise ValueError(
            f"expected the predictor {value!r} to be a class Predictor(checkpoint_dir) whose "
            f"instances are called with a pandas.DataFrame batch, got {type(predictor).__name__}"
        )
    return predictor


def location(value: Any) -> str:
    """A local folder (absolute, ``~`` expanded) or a ``s3://``, ``gs://`` or ``abfs://``
    (``az://``) location, without a trailing slash."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected {_FORMS}, got {value!r}")
    scheme, rest = storage.split_scheme(value.strip())
    if scheme not in SCHEMES:
        raise ValueError(f"expected {_FORMS}, got scheme {scheme!r} in {value!r}")
    if scheme in ("", "file"):
        path = os.path.expanduser(rest)
        if not os.path.isabs(path):
            raise ValueError(
                f"expected an absolute folder, got {value!r}: a relative path would depend on "
                "the working directory of each Dagster process. Use "
                "\"{{ context.project_root }}/" + rest.lstrip("./") + "\" for a folder in the project."
            )
        return os.path.normpath(path)
    if not rest.split("/", 1)[0]:
        raise ValueError(f"expected {scheme}://BUCKET/prefix, but {value!r} names no bucket")
    return f"{storage.canonical_scheme(scheme)}://{rest.rstrip('/')}"  # gcs:// is gs://


def _optional_location(value: Any) -> str | None:
    return None if value is None else location(value)


# ------------------------------------------------------------------------------ sections
class S3Spec(dg.Resolvable, dg.Model):
    """An S3 (or S3-compatible) endpoint; credentials come from environment variables."""

    endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint such as http://minio:9000; default AWS."
    )
    region_name: str | None = Field(default=None, description="AWS region, e.g. eu-west-1.")
    profile_name: str | None = Field(default=None, description="AWS profile to use.")
    use_ssl: bool = Field(default=True, description="Use HTTPS to reach the endpoint.")
    access_key_id_env: Annotated[str | None, checked(
        _optional_env_name, description="Name of the variable holding the access key id.",
        examples=["AWS_ACCESS_KEY_ID"])] = None
    secret_access_key_env: Annotated[str | None, checked(
        _optional_env_name, description="Name of the variable holding the secret access key.",
        examples=["AWS_SECRET_ACCESS_KEY"])] = None
    session_token_env: Annotated[str | None, checked(
        _optional_env_name, description="Name of the variable holding a session token.")] = None


class GcsSpec(dg.Resolvable, dg.Model):
    """Google Cloud Storage (a ``GcsResource``); without it, Application Default Credentials."""

    endpoint_url: str | None = Field(
        default=None, description="GCS JSON API endpoint for an emulator or a private endpoint; "
        "default: STORAGE_EMULATOR_HOST, else Google's.")
    project_id: str | None = Field(default=None, description="Google Cloud project.")
    anonymous: bool = Field(default=False, description="Send no credentials (public buckets).")
    access_token_env: Annotated[str | None, checked(
        _optional_env_name,
        description="Name of the variable holding an OAuth2 access token (instead of ADC).")] = None


class AzureSpec(dg.Resolvable, dg.Model):
    """Azure Blob / ADLS Gen2 (an ``AzureResource``); without it, ``AZURE_STORAGE_*``, else
    ``DefaultAzureCredential``."""

    account_name: str | None = Field(default=None, description="Storage account name.")
    endpoint_url: str | None = Field(
        default=None, description="Blob endpoint for Azurite or a private endpoint.")
    account_key_env: Annotated[str | None, checked(
        _optional_env_name, description="Name of the variable holding the account key.",
        examples=["AZURE_STORAGE_KEY"])] = None
    sas_token_env: Annotated[str | None, checked(
        _optional_env_name, description="Name of the variable holding a SAS token.")] = None
    connection_string_env: Annotated[str | None, checked(
        _optional_env_name, description="Name of the variable holding a connection string.",
        examples=["AZURE_STORAGE_CONNECTION_STRING"])] = None


class StorageSpec(dg.Resolvable, dg.Model):
    """Where the pipeline keeps everything: ``<base_path>/ray`` (Ray Train runs),
    ``results``, ``values``, ``registry`` and ``predictions``."""

    base_path: Annotated[str, checked(
        location,
        description="Root folder (absolute), s3://bucket/prefix, gs://bucket/prefix or "
        "abfs://container/prefix for runs, results, values, the registry and predictions.",
        examples=["{{ env('TRAINRESULTS_STORAGE', '~/.trainresults') }}", "s3://ml/pipelines",
                  "gs://ml/pipelines", "abfs://ml/pipelines"],
    )]
    checkpoints: Annotated[Literal["reference", "copy"], checked(
        _choice("reference", "copy"),
        description="'copy' copies each run's checkpoints next to its stored result, so the "
        "asset survives Ray's num_to_keep and bucket lifecycle rules; 'reference' copies "
        "nothing.")] = "reference"
    on_error: Annotated[Literal["fail", "materialize"], checked(
        _choice("fail", "materialize"),
        description="A failed training run: store it, then 'fail' the step (nothing "
        "downstream runs) or 'materialize' it as the asset's value.")] = "fail"
    s3: S3Spec | None = Field(
        default=None,
        description="S3 endpoint, region and credential variables (a dagster-aws S3Resource). "
        "Without it, s3:// storage uses the default AWS chain and the AWS_* variables.",
    )
    gcs: GcsSpec | None = Field(
        default=None,
        description="GCS endpoint, project and token variable (a GcsResource). Without it, "
        "gs:// storage uses Application Default Credentials (workload identity on GKE).",
    )
    azure: AzureSpec | None = Field(
        default=None,
        description="Azure account, endpoint and credential variables (an AzureResource). "
        "Without it, abfs:// storage uses AZURE_STORAGE_* or DefaultAzureCredential.",
    )


class RayJobSpec(dg.Resolvable, dg.Model):
    """The cluster a ``mode: ray_job`` training runs on (a ``RayJobTrainer``)."""

    address: str | None = Field(
        default=None,
        description="Ray dashboard HTTP address, e.g. 'http://ray-head:8265'. Omit to use "
        "address_env, or RAY_ADDRESS as `ray job submit` does.",
    )
    address_env: Annotated[str | None, checked(
        _optional_env_name, description="Name of the variable holding the dashboard address.",
    )] = None
    token_env: Annotated[str | None, checked(
        _optional_env_name,
        description="Name of the variable holding the dashboard's auth token (Ray token auth).",
    )] = None
    runtime_env: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray runtime_env of the job (working_dir, pip, env_vars...). Visible on "
        "the dashboard: never put secrets here.",
    )
    timeout_seconds: float = Field(
        default=6 * 3600.0, gt=0, description="Stop the job and fail the step after this long."
    )
    python: str = Field(
        default="python", description="The Python the job runs the entrypoint with."
    )


class TrainingSpec(dg.Resolvable, dg.Model):
    """What trains: an importable function, called with ``params``."""

    entrypoint: Annotated[Entrypoint, checked(
        _entrypoint,
        description="Import path of the training function, 'package.module:function'. It "
        "returns a ray.train.Result, a TrainResult, or a trainer (run with trd.fit). It may "
        "take 'request' (a TrainingRequest: request.run_config() puts the run where the "
        "pipeline's sensor looks) and 'context' (Dagster's asset context).",
        examples=["trainresults_dagster.examples.training:train"],
    )]
    params: dict[str, Any] = Field(
        default_factory=dict, description="Keyword arguments for the entrypoint."
    )
    mode: Annotated[Literal["in_process", "ray_job"], checked(
        _choice("in_process", "ray_job"),
        description="Where the entrypoint runs: 'in_process' (the Dagster step process, "
        "which connects to Ray as RAY_ADDRESS says or starts a local Ray) or 'ray_job' (a Ray "
        "Job on the cluster of the ray_job section; needs trainresults-dagster[jobs]).",
    )] = "in_process"
    ray_job: RayJobSpec | None = Field(
        default=None, description="The cluster of mode 'ray_job' (required with it)."
    )
    deps: list[str] = Field(
        default_factory=list,
        description="Keys of upstream assets the training reads (e.g. a dataset asset): they "
        "run first and are part of the retraining job.",
    )


class SelectionSpec(dg.Resolvable, dg.Model):
    """How the best checkpoint is chosen; the promotion gate compares the same metric."""

    metric: Annotated[str, checked(
        _metric, description="Metric to rank checkpoints by; nested metrics as 'a/b'.",
        examples=["val_loss", "val/acc"])]
    mode: Annotated[Literal["min", "max"], checked(
        _choice("min", "max"), description="'min' (a loss) or 'max' (an accuracy).")]
    ties: Annotated[Literal["latest", "earliest"], checked(
        _choice("latest", "earliest"),
        description="Between equal values, take the 'latest' or 'earliest' report.")] = "latest"


class PromotionSpec(dg.Resolvable, dg.Model):
    """The gate between the best checkpoint and the alias (``champion``)."""

    model_name: Annotated[str | None, checked(
        _optional(_name("model name")),
        description="Registry model name (default: the pipeline's name).")] = None
    alias: Annotated[str, checked(
        _name("alias"), description="Alias moved to a candidate that passes the gate.")] = (
        "champion"
    )
    min_improvement: Annotated[float, checked(
        validate_min_improvement, field_type=float,
        description="How much the candidate must beat the current alias holder by (>= 0).",
    )] = 0.0
    thresholds: Annotated[dict[str, tuple[float | None, float | None]], checked(
        validate_thresholds, field_type=dict[str, list[float | None]],
        description="Bounds every candidate must meet: {metric: [low, high]}, null for no "
        "bound, e.g. {val_accuracy: [0.8, null]}.",
        examples=[{"val_accuracy": [0.8, None]}],
    )] = Field(default_factory=dict)


class InferenceSpec(dg.Resolvable, dg.Model):
    """Batch inference with the champion over a Parquet dataset."""

    predictor: Annotated[type, checked(
        _predictor,
        description="Import path of the predictor class: Predictor(checkpoint_dir), then "
        "predictor(batch: pandas.DataFrame) -> pandas.DataFrame.",
        examples=["trainresults_dagster.examples.model:Predictor"],
    )]
    input_uri: Annotated[str, checked(
        location, description="Parquet file or folder to score (folder or s3://).")]
    output_uri: Annotated[str | None, checked(
        _optional_location,
        description="Where predictions go (default: <base_path>/predictions/<name>).")] = None
    engine: Annotated[Literal["local", "ray"], checked(
        _choice("local", "ray"),
        description="'local' streams batch by batch in the step; 'ray' runs Ray Data "
        "map_batches on the Ray cluster.")] = "local"
    batch_size: Annotated[int, checked(
        _positive_int, field_type=int, description="Rows per batch.")] = 4096
    num_actors: Annotated[int, checked(
        _positive_int, field_type=int, description="Ray Data actors (engine 'ray').")] = 1


class WebhookSpec(dg.Resolvable, dg.Model):
    """A signed webhook whose URL and secret are read from environment variables."""

    url_env: Annotated[str, checked(
        env_name, description="Name of the variable holding the http(s) URL.",
        examples=["TRAINRESULTS_WEBHOOK_URL"])]
    secret_env: Annotated[str | None, checked(
        _optional_env_name,
        description="Name of the variable holding the HMAC-SHA256 signing secret "
        "(X-Signature-SHA256 header); omit to send unsigned.",
        examples=["TRAINRESULTS_WEBHOOK_SECRET"])] = None


class RayServeSpec(dg.Resolvable, dg.Model):
    """A Ray Serve deployment reconfigured through the Serve REST API."""

    app_name: str = Field(description="Serve application name.")
    deployment_name: str = Field(description="Deployment whose user_config gets the model.")
    address: str | None = Field(
        default=None,
        description="Ray dashboard address, e.g. http://head:8265 (default: RAY_DASHBOARD_ADDRESS).",
    )


class ServingSpec(dg.Resolvable, dg.Model):
    """Hand the champion to serving: exactly one of ``webhook`` or ``ray_serve``."""

    webhook: WebhookSpec | None = Field(default=None, description="POST a signed manifest.")
    ray_serve: RayServeSpec | None = Field(default=None, description="Reconfigure Ray Serve.")


def resolve_serving(context: dg.ResolutionContext, value: Any) -> ServingSpec:
    spec = ServingSpec.resolve_from_model(context, value)
    if spec.webhook is not None and spec.ray_serve is not None:
        raise located(context.at_path("ray_serve"),
                      "expected one serving target, 'webhook' or 'ray_serve', got both")
    if spec.webhook is None and spec.ray_serve is None:
        raise located(context, "expected a serving target, 'webhook' or 'ray_serve', got "
                      "neither (omit 'serving' for no serving step)")
    return spec


class AlertsSpec(dg.Resolvable, dg.Model):
    """Failure sensors and where their alerts go."""

    webhook: WebhookSpec | None = Field(
        default=None,
        description="Signed webhook that receives the alerts. Without it alerts go to the "
        "'trainresults.alerts' Python logger (the sensor's log).",
    )
    failed_run_sensor: bool = Field(
        default=True,
        description="Watch <base_path>/ray for failed Ray Train runs (recorded by RunRecorder).",
    )
    retrain_on_failure: bool = Field(
        default=False,
        description="The failed-run sensor also requests one retraining run per failed run.",
    )
    training_failure_sensor: bool = Field(
        default=True, description="Alert on failed Dagster runs of the training asset."
    )
    webserver_base_url: str | None = Field(
        default=None, description="Dagster UI address, for links to failed runs in alerts."
    )
    minimum_interval_seconds: Annotated[int, checked(
        _positive_int, field_type=int,
        description="Seconds between failed-run sensor ticks.")] = 60
    running: bool = Field(
        default=False, description="Start the sensors RUNNING (Dagster's default is STOPPED)."
    )


class ScheduleSpec(dg.Resolvable, dg.Model):
    """Retrain on a clock."""

    cron: Annotated[str, checked(
        _cron, description="Cron schedule, e.g. '0 3 * * 1' (Mondays 03:00).",
        examples=["0 3 * * 1"])]
    timezone: str | None = Field(default=None, description="IANA timezone (default UTC).")
    running: bool = Field(
        default=False, description="Start the schedule RUNNING (Dagster's default is STOPPED)."
    )


def resolve_training(context: dg.ResolutionContext, value: Any) -> TrainingSpec:
    """The training section, with ``params`` checked against the entrypoint's signature, so
    a misspelt parameter fails at load time instead of in the run."""
    spec = TrainingSpec.resolve_from_model(context, value)
    if spec.mode == "ray_job" and spec.ray_job is None:
        raise located(context.at_path("ray_job"),
                      "mode 'ray_job' needs a ray_job section with the cluster's address "
                      "(address or address_env)")
    try:
        spec.entrypoint.check_params(spec.params)
    except ValueError as exc:
        raise located(context.at_path("params"), str(exc)) from None
    return spec


def section(cls: type[dg.Resolvable], fn: Callable[[dg.ResolutionContext, Any], Any],
            description: str) -> dg.Resolver:
    """A resolver for a nested section that checks the section as a whole."""
    return dg.Resolver(fn, model_field_type=cls.model(), description=description)
