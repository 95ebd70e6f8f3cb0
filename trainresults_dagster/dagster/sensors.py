"""Sensors that alert on failed training, with the training context Dagster's alerts lack.

* ``build_failed_run_sensor``: watches a Ray Train *storage path* (runs launched anywhere:
  Dagster, a notebook, a cron job) and alerts once per failed run; given a ``job`` it also
  requests one retraining run per failed run. The scan itself is
  ``alerts.scan.scan_failed_runs`` (Dagster-free); this module only adapts it.
* ``build_training_failure_sensor``: a run-failure sensor for *Dagster runs* whose
  training step failed: the alert carries the error per rank, run URI, last checkpoint and
  metrics (from the step's failure metadata) and a link to the run in the Dagster UI.

Both look up the sink by resource key (``alert_sink_key``): any resource with
``send(alert)``, e.g. ``trd.WebhookAlertSink``. Like every Dagster sensor they start
STOPPED unless ``default_status=dg.DefaultSensorStatus.RUNNING``, and they need the
``dagster-daemon`` to tick.
"""

from __future__ import annotations

import functools
import inspect
import json
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import dagster as dg

import trainresults_dagster.storage as storage
from trainresults_dagster.alerts.alert import alert_id, build_alert
from trainresults_dagster.alerts.scan import (
    MAX_READ_ATTEMPTS,
    OVERLAP_SECONDS,
    RECORDS_RESCAN_SECONDS,
    V1_RESCAN_SECONDS,
    scan_failed_runs,
)
from trainresults_dagster.dagster._wiring import StoreSettings, check_location, s3_settings
from trainresults_dagster.dagster.metadata import METADATA_PREFIX
from trainresults_dagster.runs.failure import CONTEXT_KEYS, rank_failures_from_message

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition,
    )
    from dagster._core.events import DagsterEvent
    from dagster_shared.error import SerializableErrorInfo

#: Asset tag that marks a training asset for ``build_training_failure_sensor``.
TRAINING_TAG = "trainresults/training"
#: Asset kinds that mark a training asset.
TRAINING_KINDS = frozenset({"ray", "ray-train"})


def _sink(sink: Any, key: str) -> Any:
    if not callable(getattr(sink, "send", None)):
        raise TypeError(
            f"expected the resource {key!r} to be an alert sink (an object with send(alert)), "
            f"got {type(sink).__name__}"
        )
    return sink


class DeliveryLedger:
    """Alert ids already delivered, kept in the Dagster instance through a public API.

    Why it exists: Dagster stores a sensor's cursor only when the tick completes, and a
    tick runs in the code server while the daemon commits it; a daemon stopped between the
    sink's answer and that commit re-runs the tick, which would send its alerts again.
    Recording each delivery right after the sink accepted it closes that gap down to one
    local write; ``alert_id`` (``X-Alert-ID``) lets receivers drop the rare duplicate left.

    Where: the keys of a dynamic partitions set named ``trainresults.delivered.<sensor>``
    (``DagsterInstance.add_dynamic_partitions`` / ``get_dynamic_partitions`` /
    ``delete_dynamic_partition``, public and documented; the same rows on SQLite and on
    Postgres, written at once, not at the end of the tick). Each key is
    ``<storage.stamp()>|<alert_id>``; keys older than ``retention_seconds`` (7 days) are
    dropped at the end of a tick, long after the tick that wrote them was committed.
    No asset uses that partitions set, so nothing shows in the UI.

    The alternatives, and why not: the *sensor cursor* is committed with the tick, which
    is exactly the gap to close; *run keys* de-duplicate runs a sensor requests, not what
    the sensor does itself (sending each alert from a run of its own would need a run
    launcher and a job for a webhook POST); the instance's key-value store
    (``daemon_cursor_storage``) is not a public API. Without an instance (a context built
    in a unit test without one) nothing is recorded.
    """

    RETENTION_SECONDS = 7 * 86400.0

    def __init__(
        self, instance: Any, sensor_name: str, *, retention_seconds: float = RETENTION_SECONDS
    ) -> None:
        self._instance = instance
        self.partitions_name = f"trainresults.delivered.{sensor_name}"
        self.retention_seconds = retention_seconds
        self._known: dict[str, str] | None = None  # alert id -> partition key
        self.skipped: set[str] = set()

    def _load(self) -> dict[str, str]:
        if self._known is None:
            keys = self._instance.get_dynamic_partitions(self.partitions_name) if self._instance else []
            self._known = {k.split("|", 1)[1]: k for k in keys if "|" in k}
        return self._known

    def deliver(self, sink: Any, alert: dict[str, Any]) -> bool:
        """Send unless already delivered (then it is listed in ``skipped``); True if sent."""
        aid = str(alert["alert_id"])
        known = self._load()
        if aid in known:
            self.skipped.add(aid)
            return False
        sink.send(alert)
        if self._instance is not None:
            key = f"{storage.stamp()}|{aid}"
            self._instance.add_dynamic_partitions(self.partitions_name, [key])
            known[aid] = key
        return True

    def prune(self, now: float | None = None) -> int:
        """Drop records older than the retention; returns how many were dropped."""
        if self._instance is None or self._known is None:
            return 0
        cutoff = (time.time() if now is None else now) - self.retention_seconds
        old = [(a, k) for a, k in self._known.items() if (storage.parse_stamp(k) or 0.0) < cutoff]
        for aid, key in old:
            self._instance.delete_dynamic_partition(self.partitions_name, key)
            del self._known[aid]
        return len(old)


def _instance_or_none(context: Any) -> Any:
    try:
        return context.instance
    except dg.DagsterInvariantViolationError:  # a context built in a test without one
        return None


def _with_resource_params(fn: Any, context_type: Any, keys: Sequence[str]) -> Any:
    """Declare ``keys`` as resource parameters of ``fn(context, **resources)``.

    Why: Dagster hands a sensor its resources as keyword arguments named after the keys,
    both in the daemon and when a test invokes the sensor directly
    (``sensor(dg.build_run_status_sensor_context(..., resources=...))``); the direct path
    passes every *required* key, so a function that only reads ``context.resources`` fails
    with ``TypeError: unexpected keyword argument``. The keys are chosen by the user
    (``alert_sink_key``, ``s3_key``), so the parameters cannot be written out; an explicit
    ``__signature__`` (which Dagster reads for resource parameters) declares them, typed
    ``dg.ResourceParam``, and Dagster then derives the required keys from it.
    """
    for key in keys:
        if not key.isidentifier() or key == "context":
            raise ValueError(
                f"expected a resource key that is a Python identifier other than 'context', "
                f"got {key!r}"
            )
    params = [inspect.Parameter("context", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                annotation=context_type)]
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY,
                                 annotation=dg.ResourceParam[Any]) for k in keys]
    fn.__signature__ = inspect.Signature(params)
    return fn


def _secrets_of(*resources: Any) -> list[str]:
    names = ("secret", "aws_secret_access_key", "aws_session_token", "token", "password",
             "access_token", "account_key", "sas_token", "connection_string")
    return [v for r in resources for n in names if isinstance(v := getattr(r, n, None), str)]


# --------------------------------------------------------------------------------------
# Storage sensor
# --------------------------------------------------------------------------------------


def build_failed_run_sensor(
    name: str,
    *,
    storage_path: str,
    alert_sink_key: str | None = "alert_sink",
    job: dg.JobDefinition | UnresolvedAssetJobDefinition | None = None,
    minimum_interval_seconds: int = 60,
    s3_key: str | None = None,
    gcs_key: str | None = None,
    azure_key: str | None = None,
    include_v1: bool = True,
    v1_rescan_seconds: float = V1_RESCAN_SECONDS,
    include_records: bool = True,
    records_rescan_seconds: float = RECORDS_RESCAN_SECONDS,
    trial_alerts: Literal["per_trial", "per_experiment"] = "per_trial",
    max_runs_per_tick: int = 100,
    overlap_seconds: float = OVERLAP_SECONDS,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    description: str | None = None,
) -> dg.SensorDefinition:
    """A sensor that alerts once per failed Ray Train run under ``storage_path``.

    Finds V2 runs whose ``RunRecorder`` recorded a terminal failure (through its failure
    journal every tick, and through the run folders' records every
    ``records_rescan_seconds``, for failures the journal missed) and V1 runs and Ray Tune
    sweeps with trials in state ``ERROR`` (see ``alerts.scan``). Each tick costs a listing of what is new plus one
    read per new failed run; the cursor (JSON, stored by Dagster) carries the rest. On its
    first tick it reports every failed run already in storage. Each alert is sent once,
    across daemon restarts too (``DeliveryLedger``).

    Args:
        storage_path: the runs' ``RunConfig.storage_path``: a local folder or ``s3://...``.
        alert_sink_key: resource key of the sink (any resource with ``send(alert)``); None
            to only request runs.
        job: requests one run of this job per failed run, ``run_key`` = the run's URI (so
            Dagster never launches two for the same run), tagged ``trainresults/run_uri``
            and ``trainresults/error_type``.
        s3_key: for ``s3://`` paths, the key of a dagster-aws ``S3Resource`` (endpoint,
            region, credentials). None uses the default AWS credential chain and
            environment, as every other component does.
        gcs_key: for ``gs://`` paths, the key of a ``GcsResource`` (None: Application
            Default Credentials and ``STORAGE_EMULATOR_HOST``).
        azure_key: for ``abfs://``/``az://`` paths, the key of an ``AzureResource`` (None:
            Azure's standard variables).
        include_v1: also look for failed Ray Train V1 experiments and Ray Tune sweeps.
        trial_alerts: ``"per_trial"`` sends one alert per errored trial (its error, config,
            last checkpoint and metrics); ``"per_experiment"`` one per experiment (sweep)
            listing the trials that errored since the last look, each with its error and
            config (``failed_trials``). With a ``job``, one run is requested per alert.
        v1_rescan_seconds: how often to look for *new* V1 experiments (each look costs a
            ``stat`` per top-level folder locally, one LIST per 1,000 objects on S3); known
            unfinished ones are checked every tick.
        include_records: also find failed runs whose journal entry is missing (the journal
            write failed, ``RunRecorder(journal=False)``, run folders synced in from
            elsewhere) from the run folders' own records.
        records_rescan_seconds: how often that discovery pass runs (default 300 s; it
            costs a walk of the run folders locally, the same flat listing as the V1 pass on
            S3, plus one read per record changed since the last pass). Such a failure is
            alerted within this interval plus the sensor interval.
        max_runs_per_tick: runs read per tick at most; the rest wait for the next tick.
        overlap_seconds: how late a journal entry may appear (clock skew between writers)
            and still be found.
        default_status: ``RUNNING`` to start ticking as soon as the daemon loads it.
    """
    if not isinstance(storage_path, str) or not storage_path.strip():
        raise ValueError(
            f"expected storage_path to be a folder or an s3://, gs:// or abfs:// URI, got "
            f"{storage_path!r}"
        )
    check_location(storage_path, what="storage_path")
    if alert_sink_key is None and job is None:
        raise ValueError(f"sensor {name!r} needs an alert_sink_key, a job, or both; got neither")
    if trial_alerts not in ("per_trial", "per_experiment"):
        raise ValueError(
            f"expected trial_alerts 'per_trial' or 'per_experiment', got {trial_alerts!r}"
        )
    if minimum_interval_seconds < 1:
        raise ValueError(f"expected minimum_interval_seconds >= 1, got {minimum_interval_seconds!r}")
    scheme = storage.canonical_scheme(storage.split_scheme(storage_path)[0])
    is_s3 = scheme == "s3"
    store_key = {"s3": s3_key, "gs": gcs_key, "abfs": azure_key}.get(scheme)
    keys = [k for k in dict.fromkeys((alert_sink_key, store_key)) if k]

    def _failed_runs(context: dg.SensorEvaluationContext, **resources: Any) -> dg.SensorResult:
        sink = _sink(resources[alert_sink_key], alert_sink_key) if alert_sink_key else None
        ledger = DeliveryLedger(_instance_or_none(context), name)
        store = resources.get(store_key) if store_key else None
        client = None
        if is_s3:
            settings = s3_settings(store)
            fs, _ = storage.resolve(storage_path, settings.filesystem())
            client = settings.client()
        else:
            stores = StoreSettings(
                gcs=store if scheme == "gs" else None, azure=store if scheme == "abfs" else None
            )
            fs, _ = stores.filesystem_for(storage_path)
        outcome = scan_failed_runs(
            storage_path,
            context.cursor,
            filesystem=fs,
            s3_client=client,
            deliver=functools.partial(ledger.deliver, sink) if sink is not None else None,
            include_v1=include_v1,
            v1_rescan_seconds=v1_rescan_seconds,
            include_records=include_records,
            records_rescan_seconds=records_rescan_seconds,
            trial_alerts=trial_alerts,
            max_runs=max_runs_per_tick,
            overlap_seconds=overlap_seconds,
            max_read_attempts=MAX_READ_ATTEMPTS,
            secrets=_secrets_of(store, sink),
        )
        ledger.prune()

        for problem in outcome.problems:
            context.log.warning(problem)
        for run in outcome.found + outcome.redelivered:
            if not run.delivered or sink is None:
                continue
            if run.alert["alert_id"] in ledger.skipped:
                context.log.info(
                    f"alert for failed run {run.alert['run_uri']} was already delivered by an "
                    "interrupted tick; not sending it again"
                )
            else:
                context.log.info(f"alert sent for failed run {run.alert['run_uri']}")
        requests = []
        if job is not None:
            for run in outcome.found:
                uri = str(run.alert["run_uri"])
                requests.append(
                    dg.RunRequest(
                        run_key=uri,
                        tags={
                            "trainresults/run_uri": uri,
                            "trainresults/error_type": str(run.alert.get("error_type") or "unknown"),
                            "trainresults/alert_id": str(run.alert["alert_id"]),
                        },
                    )
                )
        if requests:
            return dg.SensorResult(run_requests=requests, cursor=outcome.cursor)
        found = len(outcome.found)
        reason = f"{found} failed run(s) found" if found else "no new failed runs"
        if outcome.problems:
            reason += f"; {len(outcome.problems)} problem(s), see the tick log"
        return dg.SensorResult(skip_reason=reason, cursor=outcome.cursor)

    return dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        description=description
        or f"Alerts on failed Ray Train runs under {storage_path}"
        + (f" and requests {job.name} for each" if job is not None else ""),
        job=job,
        default_status=default_status,
    )(_with_resource_params(_failed_runs, dg.SensorEvaluationContext, keys))


# --------------------------------------------------------------------------------------
# Dagster run-failure sensor
# --------------------------------------------------------------------------------------


def _user_error(error: SerializableErrorInfo | None) -> tuple[str | None, str | None]:
    """(type, message) of the user's exception: the innermost non-Dagster error in the chain."""
    chosen = None
    while error is not None:
        if not (error.cls_name or "").startswith("Dagster") or chosen is None:
            chosen = error
        error = error.cause
    if chosen is None:
        return None, None
    message = (chosen.message or "").strip()
    if chosen.cls_name and message.startswith(f"{chosen.cls_name}: "):
        message = message[len(chosen.cls_name) + 2 :]
    return chosen.cls_name, message


def _training_nodes(repository_def: Any) -> dict[str, list[str]]:
    """Top-level node name -> asset keys, for assets tagged or kinded as training."""
    out: dict[str, list[str]] = {}
    if repository_def is None:
        return out
    for assets_def in set(repository_def.assets_defs_by_key.values()):
        if not assets_def.is_executable:
            continue
        keys = [
            spec.key.to_user_string()
            for spec in assets_def.specs
            if spec.tags.get(TRAINING_TAG, "").lower() == "true" or TRAINING_KINDS & set(spec.kinds)
        ]
        if keys:
            out.setdefault(assets_def.node_def.name, []).extend(keys)
    return out


def step_failure_alert(
    event: DagsterEvent,
    run: dg.DagsterRun,
    *,
    training_nodes: Mapping[str, list[str]],
    webserver_base_url: str | None = None,
    failed_at: float | None = None,
    secrets: Sequence[str] = (),
) -> dict[str, Any] | None:
    """The alert for one failed step, or None when the step is not a training step.

    A training step is one whose failure metadata carries ``trainresults/run_uri`` (what
    the IO manager's ``dg.Failure`` sets) or one that materialises an asset tagged
    ``trainresults/training: "true"`` or of kind ``ray``/``ray-train``.
    """
    data = event.step_failure_data
    step_key = event.step_key or ""
    user = data.user_failure_data if data is not None else None
    # MetadataValue.value is the raw value (dict for json, str for text, None for null).
    metadata = {k: getattr(v, "value", v) for k, v in (user.metadata if user else {}).items()}
    context: dict[str, Any] = {
        k: metadata[METADATA_PREFIX + k] for k in CONTEXT_KEYS if METADATA_PREFIX + k in metadata
    }
    assets = training_nodes.get(step_key.split(".", 1)[0])
    if not context.get("run_uri") and not assets:
        return None
    error_type, message = _user_error(data.error if data is not None else None)
    if isinstance(context.get("worker_failures"), str):
        try:
            context["worker_failures"] = json.loads(context["worker_failures"])
        except ValueError:
            context["worker_failures"] = {"?": context["worker_failures"]}
    if isinstance(context.get("last_metrics"), str):
        try:
            context["last_metrics"] = json.loads(context["last_metrics"])
        except ValueError:
            pass
    context.setdefault("error_type", error_type)
    context.setdefault("message", (user.description if user else None) or message)
    if not context.get("worker_failures") and context.get("message"):
        # Ray's WorkerGroupError lists each group of ranks as "[Rank 0,1 Error Snippet]:"
        # followed by a traceback: keep the error line per rank.
        context["worker_failures"] = {
            str(k): v for k, v in rank_failures_from_message(str(context["message"])).items()
        }
    url = None
    if webserver_base_url:
        url = f"{webserver_base_url.rstrip('/')}/runs/{run.run_id}"
    return build_alert(
        "dagster_run_failed",
        context,
        secrets=secrets,
        alert_id=alert_id("dagster_run_failed", run.run_id, step_key),
        dagster_run_id=run.run_id,
        dagster_run_url=url,
        dagster_job_name=run.job_name,
        step_key=step_key,
        asset_keys=assets or [],
        failed_at=storage.iso(failed_at) if failed_at else None,
    )


def build_training_failure_sensor(
    name: str,
    *,
    alert_sink_key: str = "alert_sink",
    monitored_jobs: Sequence[Any] | None = None,
    webserver_base_url: str | None = None,
    minimum_interval_seconds: int | None = None,
    monitor_all_code_locations: bool = False,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    description: str | None = None,
) -> dg.SensorDefinition:
    """A run-failure sensor that alerts, with the training context, on failed training steps.

    Runs launched from the UI or ``dg launch`` (``__ASSET_JOB``) are covered when
    ``monitored_jobs`` is None (every job of this code location). One alert per failed
    training step (see ``step_failure_alert`` for the rule); runs that failed elsewhere are
    left to Dagster's own alerting. A sink that keeps failing makes the tick fail with the
    delivery error, visible in the UI.

    Args:
        monitored_jobs: jobs to watch (default: all in this code location).
        webserver_base_url: e.g. ``"http://localhost:3000"``; adds ``dagster_run_url``.
        default_status: ``RUNNING`` to start as soon as the daemon loads it.
    """
    if webserver_base_url is not None and not webserver_base_url.startswith(("http://", "https://")):
        raise ValueError(
            f"expected webserver_base_url like 'http://localhost:3000', got {webserver_base_url!r}"
        )

    def _on_failure(context: dg.RunStatusSensorContext, **resources: Any) -> None:
        failure = context.for_run_failure()
        sink = _sink(resources[alert_sink_key], alert_sink_key)
        ledger = DeliveryLedger(_instance_or_none(failure), name)
        nodes = _training_nodes(failure.repository_def)
        instance = _instance_or_none(failure)
        record = instance.get_run_record_by_id(failure.dagster_run.run_id) if instance else None
        failed_at = record.end_time if record is not None else None
        errors = []
        for event in failure.get_step_failure_events():
            alert = step_failure_alert(
                event,
                failure.dagster_run,
                training_nodes=nodes,
                webserver_base_url=webserver_base_url,
                failed_at=failed_at,
                secrets=_secrets_of(sink),
            )
            if alert is None:
                continue
            try:
                if ledger.deliver(sink, alert):
                    failure.log.info(f"alert sent for training step {event.step_key!r}")
                else:
                    failure.log.info(
                        f"alert for training step {event.step_key!r} was already delivered "
                        "by an interrupted tick; not sending it again"
                    )
            except Exception as exc:  # noqa: BLE001 - send the others, then report
                errors.append(f"step {event.step_key!r}: {type(exc).__name__}: {exc}")
        ledger.prune()
        if errors:
            raise RuntimeError(
                f"could not deliver {len(errors)} training-failure alert(s) for run "
                f"{failure.dagster_run.run_id}: {'; '.join(errors)}"
            )

    return dg.RunStatusSensorDefinition(
        name=name,
        run_status=dg.DagsterRunStatus.FAILURE,
        run_status_sensor_fn=_with_resource_params(
            _on_failure, dg.RunStatusSensorContext, [alert_sink_key]
        ),
        minimum_interval_seconds=minimum_interval_seconds,
        description=description or "Alerts with the training context when a training step fails",
        monitored_jobs=list(monitored_jobs) if monitored_jobs else None,
        monitor_all_code_locations=monitor_all_code_locations,
        default_status=default_status,
    )
