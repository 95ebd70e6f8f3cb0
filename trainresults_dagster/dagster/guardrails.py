"""``build_champion_checks``: asset checks on the champion that no registry has.

* ``champion_files`` (blocking, ERROR): the champion's files are the ones ``register``
  recorded (``Registry.verify``: one listing for sizes and, on S3, ETags; ``hashes=True``
  reads and hashes every file). Missing and changed files are named. Blocking, so batch
  inference and serving never start on a champion whose files are gone.
* ``champion_age`` (WARN): the alias last moved longer than ``max_age`` ago. Dagster's own
  ``FreshnessPolicy`` on the promotion asset (``build_promotion_asset(freshness_policy=...)``)
  cannot see this: a rejected candidate still materialises the asset.
* ``champion_training_data`` (WARN): the training-data asset has materialised since the
  materialisation the champion was trained on (recorded in the version's lineage at
  registration), with a different data version.
* ``serving_matches_champion`` (ERROR, on the serving asset): what the serving target runs
  (``target.running()``: a Ray Serve deployment's live ``user_config``; otherwise the last
  hand-off the target acknowledged, from the serving asset's latest materialisation)
  is the version the alias points at. A mismatch names both.

The checks run after their asset in the same run, on demand from the UI, or on a schedule
(``dg.ScheduleDefinition(target=dg.AssetSelection.checks(*checks))`` or an
``automation_condition``), without materialising anything.
"""

# No "from __future__ import annotations": Dagster inspects the check functions' annotations.
import datetime as dt
from collections.abc import Mapping
from typing import Any

import dagster as dg

from trainresults_dagster.dagster._wiring import AssetRef, asset_key
from trainresults_dagster.dagster.lineage import latest_materialization
from trainresults_dagster.dagster.metadata import METADATA_PREFIX
from trainresults_dagster.dagster.promotion import ALIAS_KEY, MODEL_KEY, REGISTRY_KEY
from trainresults_dagster.errors import TrainResultsError, VersionNotFoundError

FILES_CHECK = "champion_files"
AGE_CHECK = "champion_age"
DATA_CHECK = "champion_training_data"
DRIFT_CHECK = "serving_matches_champion"
#: Definition metadata of a serving asset, read by the drift check.
TARGET_KEY = "trainresults/target_key"


def _definition_metadata(asset: Any) -> Mapping[str, Any]:
    if isinstance(asset, dg.AssetsDefinition):
        spec = next(iter(asset.specs), None)
        return spec.metadata if spec is not None else {}
    return {}


def _setting(given: str | None, asset: Any, key: str, what: str, default: str | None = None) -> str:
    if given is not None:
        return given
    value = _definition_metadata(asset).get(key)
    value = getattr(value, "value", value)
    if value is None:
        value = default
    if value is None:
        raise ValueError(
            f"expected {what}: pass it, or pass a champion_asset built by "
            f"build_promotion_asset (it records {key!r} in its definition metadata)"
        )
    return str(value)


def _fail(description: str, severity: dg.AssetCheckSeverity, **metadata: Any) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=False, severity=severity, description=description,
                               metadata={k: v for k, v in metadata.items() if v is not None})


def build_champion_checks(
    champion_asset: AssetRef,
    *,
    max_age: dt.timedelta | None = None,
    training_data_asset: AssetRef | None = None,
    serving_asset: AssetRef | None = None,
    hashes: bool = False,
    model: str | None = None,
    alias: str | None = None,
    registry_key: str | None = None,
    target_key: str | None = None,
    automation_condition: dg.AutomationCondition | None = None,
) -> list[dg.AssetChecksDefinition]:
    """Asset checks on ``champion_asset`` (a ``build_promotion_asset`` asset; otherwise
    pass ``model``, ``alias`` and ``registry_key``): always ``champion_files``; with
    ``max_age``, ``champion_age``; with ``training_data_asset``, ``champion_training_data``;
    with ``serving_asset`` (a ``build_serving_asset`` asset, or pass ``target_key``),
    ``serving_matches_champion`` on it. ``automation_condition`` is given to every check
    (e.g. ``dg.AutomationCondition.cron_tick_passed("0 * * * *")``)."""
    champion = asset_key(champion_asset, what="champion_asset")
    model_name = _setting(model, champion_asset, MODEL_KEY, "the model name")
    alias_name = _setting(alias, champion_asset, ALIAS_KEY, "the alias", "champion")
    reg_key = _setting(registry_key, champion_asset, REGISTRY_KEY, "registry_key",
                       "checkpoint_registry")
    if max_age is not None and max_age <= dt.timedelta(0):
        raise ValueError(f"max_age must be a positive timedelta, got {max_age!r}")
    where = f"alias {alias_name!r} of model {model_name!r}"
    checks = [_files_check(champion, model_name, alias_name, reg_key, hashes, automation_condition)]
    if max_age is not None:
        checks.append(_age_check(champion, model_name, alias_name, reg_key, max_age, automation_condition))
    if training_data_asset is not None:
        data_key = asset_key(training_data_asset, what="training_data_asset")
        checks.append(_data_check(champion, data_key, model_name, alias_name, reg_key, automation_condition))
    if serving_asset is not None:
        serving = asset_key(serving_asset, what="serving_asset")
        target = _setting(target_key, serving_asset, TARGET_KEY, "target_key", "serving_target")
        checks.append(_drift_check(serving, model_name, alias_name, reg_key, target, where,
                                   automation_condition))
    return checks


# ------------------------------------------------------------------ integrity
def _files_check(
    champion: dg.AssetKey, model: str, alias: str, registry_key: str, hashes: bool,
    automation_condition: Any,
) -> dg.AssetChecksDefinition:
    how = "reads and hashes every file" if hashes else "one listing: sizes and store checksums"

    @dg.asset_check(
        asset=champion, name=FILES_CHECK, blocking=True, required_resource_keys={registry_key},
        automation_condition=automation_condition,
        description=f"The files of {alias!r} of {model!r} are the ones registered ({how}).",
    )
    def _champion_files(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        registry = getattr(context.resources, registry_key)
        try:
            report = registry.verify(model, alias=alias, hashes=hashes)  # reads the alias once
        except VersionNotFoundError:
            return dg.AssetCheckResult(passed=True, description=f"{alias!r} of {model!r} is not "
                                       "set yet: nothing to verify")
        metadata = {
            "champion_version": report.version,
            "uri": dg.MetadataValue.path(report.uri),
            "files": report.files,
            "size_bytes": report.size_bytes,
            "checksum": report.checksum,
            "hashed": report.hashed,
            "storage_requests": report.requests,
        }
        if not report.ok:
            metadata["problems"] = dg.MetadataValue.json(report.to_dict())
        if report.notes:
            metadata["notes"] = "; ".join(report.notes)
        return dg.AssetCheckResult(passed=report.ok, severity=dg.AssetCheckSeverity.ERROR,
                                   description=report.summary(), metadata=metadata)

    return _champion_files


# ------------------------------------------------------------------ staleness
def _age_check(
    champion: dg.AssetKey, model: str, alias: str, registry_key: str, max_age: dt.timedelta,
    automation_condition: Any,
) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=champion, name=AGE_CHECK, required_resource_keys={registry_key},
        automation_condition=automation_condition,
        description=f"{alias!r} of {model!r} moved less than {max_age} ago.",
    )
    def _champion_age(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        registry = getattr(context.resources, registry_key)
        events = registry.history(model, alias, limit=1)
        if not events:
            return _fail(f"{alias!r} of {model!r} was never set: no champion to be fresh",
                         dg.AssetCheckSeverity.WARN)
        event = events[-1]
        age = dt.datetime.now(dt.UTC) - event.at
        metadata = {"champion_version": event.version, "moved_at": dg.MetadataValue.timestamp(event.at),
                    "age_seconds": round(age.total_seconds(), 1),
                    "max_age_seconds": max_age.total_seconds()}
        text = (f"{alias!r} of {model!r} points at version {event.version} since "
                f"{event.at.isoformat(timespec='seconds')} ({event.action} by {event.who}), "
                f"{_human(age)} ago; allowed {_human(max_age)}")
        if age > max_age:
            return _fail(f"stale: {text}. Retrain (or promote a newer version).",
                         dg.AssetCheckSeverity.WARN, **metadata)
        return dg.AssetCheckResult(passed=True, description=text, metadata=metadata)

    return _champion_age


def _data_check(
    champion: dg.AssetKey, data_key: dg.AssetKey, model: str, alias: str, registry_key: str,
    automation_condition: Any,
) -> dg.AssetChecksDefinition:
    data_name = data_key.to_user_string()

    @dg.asset_check(
        asset=champion, name=DATA_CHECK, required_resource_keys={registry_key},
        additional_deps=[data_key], automation_condition=automation_condition,
        description=f"{alias!r} of {model!r} was trained on the latest {data_name!r}.",
    )
    def _champion_training_data(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        registry = getattr(context.resources, registry_key)
        current = registry.get(model, alias)
        if current is None:
            return _fail(f"{alias!r} of {model!r} was never set", dg.AssetCheckSeverity.WARN)
        recorded = next((e for e in current.lineage.get("upstream") or []
                         if e.get("asset_key") == data_name), None)
        if recorded is None:
            return _fail(
                f"version {current.version} of {model!r} has no record of the {data_name!r} "
                "materialisation it was trained on (registered outside Dagster, or before "
                "lineage was recorded): cannot tell whether its data is stale",
                dg.AssetCheckSeverity.WARN, champion_version=current.version,
            )
        latest = latest_materialization(context.instance, data_key, recorded.get("partition"))
        used = (f"materialisation {recorded.get('storage_id')} of {recorded.get('at')} (run "
                f"{str(recorded.get('run_id'))[:8]}, data version "
                f"{str(recorded.get('data_version'))[:12]})")
        metadata = {"champion_version": current.version,
                    "trained_on_storage_id": recorded.get("storage_id"),
                    "trained_on_data_version": recorded.get("data_version")}
        if latest is None:
            return dg.AssetCheckResult(passed=True, metadata=metadata, description=(
                f"version {current.version} was trained on {used}; no newer one exists here"))
        newest = latest.asset_materialization
        newest_version = (newest.tags or {}).get("dagster/data_version") if newest else None
        metadata.update(latest_storage_id=latest.storage_id, latest_data_version=newest_version)
        newer = latest.storage_id > int(recorded.get("storage_id") or 0)
        if newer and newest_version != recorded.get("data_version"):
            return _fail(
                f"stale: {data_name!r} materialised again at {_iso(latest.timestamp)} (run "
                f"{latest.run_id[:8]}, data version {str(newest_version)[:12]}) after version "
                f"{current.version} of {model!r} was trained on {used}. Retrain on the new data.",
                dg.AssetCheckSeverity.WARN, **metadata,
            )
        return dg.AssetCheckResult(passed=True, metadata=metadata, description=(
            f"version {current.version} of {model!r} was trained on the latest {data_name!r}: {used}"))

    return _champion_training_data


# ------------------------------------------------------------------ serving drift
def _drift_check(
    serving: dg.AssetKey, model: str, alias: str, registry_key: str, target_key: str,
    where: str, automation_condition: Any,
) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=serving, name=DRIFT_CHECK, required_resource_keys={registry_key, target_key},
        automation_condition=automation_condition,
        description=f"The {target_key!r} target runs the version {where} points at.",
    )
    def _serving_matches_champion(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        registry = getattr(context.resources, registry_key)
        target = getattr(context.resources, target_key)
        current = registry.get(model, alias)
        running: dict[str, Any] | None
        try:
            running = target.running() if hasattr(target, "running") else None
        except TrainResultsError as exc:
            return _fail(f"could not ask {target_key!r} what it serves: {exc}",
                         dg.AssetCheckSeverity.ERROR)
        source = f"{type(target).__name__} reports"
        if running is None:
            running = _last_acknowledged(context.instance, serving)
            source = f"the last hand-off {type(target).__name__} acknowledged"
        if current is None:
            return _fail(f"{where} is not set, so nothing should be served; {source} "
                         f"{_show(running)}", dg.AssetCheckSeverity.ERROR)
        metadata = {"champion_version": current.version,
                    "serving_version": (running or {}).get("version"),
                    "serving_checkpoint_uri": (running or {}).get("checkpoint_uri"),
                    "source": source}
        champion = f"{where} points at version {current.version} ({current.uri})"
        if not running:
            return _fail(f"nothing is served: {source} no model, but {champion}. Materialise "
                         f"{serving.to_user_string()!r} to hand it over.",
                         dg.AssetCheckSeverity.ERROR, **metadata)
        same = (running.get("version") == current.version
                and running.get("checkpoint_uri") in (None, current.uri)
                and running.get("model") in (None, model))
        if not same:
            return _fail(
                f"serving drift: {source} {_show(running)}, but {champion}. Materialise "
                f"{serving.to_user_string()!r} to hand the champion over, or roll the alias back.",
                dg.AssetCheckSeverity.ERROR, **metadata,
            )
        return dg.AssetCheckResult(passed=True, metadata=metadata,
                                   description=f"{source} version {current.version}, as {where}")

    return _serving_matches_champion


def _last_acknowledged(instance: dg.DagsterInstance, serving: dg.AssetKey) -> dict[str, Any] | None:
    """What the serving asset last handed off; it materialises only after the target
    acknowledged the hand-off (a failed POST fails the step)."""
    record = latest_materialization(instance, serving)
    if record is None or record.asset_materialization is None:
        return None
    meta = record.asset_materialization.metadata

    def value(key: str) -> Any:
        entry = meta.get(f"{METADATA_PREFIX}{key}")
        return getattr(entry, "value", entry)

    deployment = value("deployment") or {}
    if isinstance(deployment, dict) and deployment.get("status") == "skipped":
        return {}
    return {"model": value("model") or None, "version": value("model_version"),
            "checkpoint_uri": value("checkpoint_uri")}


def _show(running: Mapping[str, Any] | None) -> str:
    if not running:
        return "nothing"
    return (f"{running.get('model') or 'a model'} version {running.get('version')} "
            f"({running.get('checkpoint_uri')})")


def _human(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds // 60} min"


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")
