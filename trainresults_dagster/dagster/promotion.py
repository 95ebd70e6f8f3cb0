"""``build_promotion_asset``: promote a candidate checkpoint through the registry.

It registers the candidate (e.g. from ``build_best_checkpoint_asset``) in the
``CheckpointRegistry``, runs the gate (``registry.gate``) against the current champion, moves the alias only if the gate
passes, and always emits a blocking asset check, so nothing downstream of the promotion
asset runs on a rejected candidate. Its value is a small JSON reference stored by
``JsonIOManager`` (key ``"trainresults_json_io_manager"``), never pickles. The version's
lineage names the run the candidate came from and, for a Ray Tune sweep, the trial and its
config.
"""

# No "from __future__ import annotations": Dagster inspects the real annotations of the
# asset functions (their context parameter and return type).
from typing import Any, Literal

import dagster as dg

from trainresults_dagster.dagster._wiring import asset_key, partitions_of
from trainresults_dagster.dagster.card import write_card
from trainresults_dagster.dagster.json_io_manager import JSON_IO_MANAGER_KEY
from trainresults_dagster.dagster.lineage import upstream_lineage
from trainresults_dagster.errors import CheckpointMissingError, PromotionConflict
from trainresults_dagster.registry.gate import (
    GateDecision,
    evaluate_gate,
    validate_min_improvement,
    validate_thresholds,
)
from trainresults_dagster.registry.model_version import ModelVersion, validate_name
from trainresults_dagster.runs.coerce import as_checkpoint
from trainresults_dagster.runs.metrics import validate_metric, validate_mode

GATE_CHECK_NAME = "promotion_gate"
#: Definition metadata of a promotion asset, read by ``build_champion_checks``.
MODEL_KEY, ALIAS_KEY, REGISTRY_KEY, METRIC_KEY = (
    "trainresults/model", "trainresults/alias", "trainresults/registry_key", "trainresults/metric"
)
_CONFLICT_RETRIES = 3


def _comparison(decision: GateDecision) -> dg.TableMetadataValue:
    schema = dg.TableSchema(columns=[
        dg.TableColumn("check", "string"),
        dg.TableColumn("candidate", "float"),
        dg.TableColumn("champion", "float"),
        dg.TableColumn("requirement", "string"),
        dg.TableColumn("ok", "bool"),
    ])
    return dg.MetadataValue.table([dg.TableRecord(r) for r in decision.rows], schema=schema)


def _gate_metadata(
    decision: GateDecision, candidate: ModelVersion | None, before: ModelVersion | None
) -> dict[str, Any]:
    metric = decision.metric
    metadata: dict[str, Any] = {
        "reason": decision.reason,
        "candidate_version": candidate.version if candidate else None,
        "champion_version_before": before.version if before else None,
        f"candidate/{metric}": decision.candidate_value,
        f"champion/{metric}": decision.champion_value,
        "improvement": decision.improvement,
        "min_improvement": decision.min_improvement,
        "comparison": _comparison(decision),
    }
    return {k: v for k, v in metadata.items() if v is not None}


def build_promotion_asset(
    name: str,
    *,
    model: str,
    candidate_asset: Any,
    metric: str,
    mode: Literal["min", "max"],
    min_improvement: float = 0.0,
    thresholds: dict[str, tuple[float | None, float | None]] | None = None,
    alias: str = "champion",
    registry_key: str = "checkpoint_registry",
    io_manager_key: str = JSON_IO_MANAGER_KEY,
    partitions_def: dg.PartitionsDefinition | None = None,
    group_name: str | None = None,
    freshness_policy: dg.FreshnessPolicy | None = None,
    model_card: bool = True,
) -> dg.AssetsDefinition:
    """An asset that registers ``candidate_asset``'s checkpoint as a new version of ``model``
    and moves ``alias`` to it only if it passes ``thresholds`` and beats the current holder
    of the alias by at least ``min_improvement`` (strictly; see ``gate.py``).

    Its value is the alias's ``ModelVersion`` after the step (None if the alias was never
    set). It always emits the blocking check ``promotion_gate``: passed with the
    comparison, or failed with the reason, in which case the alias is untouched and
    nothing downstream runs. Re-materialising with the same candidate reuses its version
    and keeps the alias where it is.

    Every attempt also writes a model card (``model_card=True``): candidate vs champion
    metrics, each gate decision with its threshold, lineage (Ray run, Dagster run,
    partition, code version, the upstream materialisations it was trained from) and a PNG
    of the candidate's training curves, shown as the ``model_card`` metadata entry and kept
    in the registry (``trainresults registry card MODEL VERSION``). ``freshness_policy``
    (e.g. ``dg.FreshnessPolicy.time_window(fail_window=timedelta(days=8))``) lets Dagster's
    freshness daemon flag the asset when no promotion attempt ran in that window;
    ``build_champion_checks`` adds the checks on the champion itself.
    """
    validate_name(model, what="model name")
    validate_name(alias, what="alias")
    validate_mode(mode)
    min_improvement = validate_min_improvement(min_improvement)
    bounds = validate_thresholds(thresholds)
    validate_metric(metric)
    upstream = asset_key(candidate_asset, what="candidate_asset")

    @dg.asset(
        name=name,
        ins={"candidate": dg.AssetIn(key=upstream)},
        io_manager_key=io_manager_key,
        partitions_def=partitions_def or partitions_of(candidate_asset),
        required_resource_keys={registry_key},
        check_specs=[dg.AssetCheckSpec(
            GATE_CHECK_NAME,
            asset=name,
            blocking=True,
            description=f"{metric} ({mode}) must beat {alias!r} of {model!r} and pass thresholds",
        )],
        group_name=group_name,
        description=f"The {alias!r} version of model {model!r} after gating "
                    f"{upstream.to_user_string()}.",
        # Read by build_champion_checks, so the checks need not be told again.
        metadata={MODEL_KEY: model, ALIAS_KEY: alias, REGISTRY_KEY: registry_key,
                  METRIC_KEY: metric},
        freshness_policy=freshness_policy,
    )
    # No return annotation: Dagster reads "-> MaterializeResult" as a Nothing-typed output
    # and would then refuse the ModelVersion value.
    def _promotion(context: dg.AssetExecutionContext, candidate: Any):
        registry = getattr(context.resources, registry_key)
        checkpoint = as_checkpoint(candidate, what=f"input {upstream.to_user_string()!r}")
        partition = context.partition_key if context.has_partition_key else None
        upstream_found = _upstream_lineage(context, upstream)
        run_uri = upstream_found.get("run_uri") or checkpoint.uri.rsplit("/", 1)[0]
        inputs = _upstream(context, upstream, partition)
        lineage = {
            **upstream_found,
            "run_uri": run_uri,
            "dagster_run_id": context.run.run_id,
            "asset_key": context.asset_key.to_user_string(),
            "candidate_asset": upstream.to_user_string(),
            "partition_key": partition,
            # The training asset's code version: the input whose URI is the Ray run.
            "code_version": next((e["code_version"] for e in inputs if e.get("uri") == run_uri),
                                 inputs[0]["code_version"] if inputs else None),
            "upstream": inputs,
        }
        try:
            registered = registry.register(
                model, checkpoint, metrics=checkpoint.metrics or {}, lineage=lineage,
                reuse_if_unchanged=True,
            )
        except CheckpointMissingError as exc:
            return _reject_missing(registry, model, alias, metric, mode, min_improvement, exc)

        for _attempt in range(_CONFLICT_RETRIES):
            before = registry.get(model, alias)
            decision = evaluate_gate(
                registered.metrics,
                before.metrics if before else None,
                metric=metric,
                mode=mode,
                min_improvement=min_improvement,
                thresholds=bounds,
                has_champion=before is not None,
                same_version=before is not None and before.version == registered.version,
            )
            if not decision.promote:
                break
            try:
                registry.promote(
                    model,
                    registered.version,
                    alias=alias,
                    expected_version=before.version if before else None,
                    reason=decision.reason,
                    details={"asset_key": lineage["asset_key"],
                             "dagster_run_id": lineage["dagster_run_id"],
                             "gate": decision.to_dict()},
                )
                break
            except PromotionConflict as exc:
                context.log.warning(f"{exc}; deciding again against the new {alias!r}")
        else:
            raise PromotionConflict(
                f"alias {alias!r} of model {model!r} kept moving while promoting version "
                f"{registered.version} ({_CONFLICT_RETRIES} attempts)"
            )

        after = registry.get(model, alias)
        outcome = ("promoted" if decision.promote else "kept") if decision.passed else "rejected"
        log = context.log.info if decision.passed else context.log.warning
        log(f"version {registered.version} of {model!r}: {outcome} ({decision.reason})")
        gate_metadata = _gate_metadata(decision, registered, before)
        metadata = {
            **gate_metadata,
            "decision": outcome,
            "model": model,
            "alias": alias,
            "candidate_uri": dg.MetadataValue.path(registered.uri),
            "candidate_source_uri": dg.MetadataValue.path(checkpoint.uri),
        }
        if after is not None:
            metadata["champion_version"] = after.version
            metadata["champion_uri"] = dg.MetadataValue.path(after.uri)
        if model_card:
            metadata.update(write_card(
                context, registry, model=model, alias=alias, candidate=registered,
                before=before, after=after, outcome=outcome, decision=decision,
                thresholds=bounds, checkpoint=checkpoint,
                # Re-materialising the champion itself keeps the card of its promotion.
                save=not (before is not None and before.version == registered.version),
            ))
        return dg.MaterializeResult(
            value=after,
            metadata=metadata,
            check_results=[dg.AssetCheckResult(
                check_name=GATE_CHECK_NAME,
                passed=decision.passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=decision.reason,
                metadata={**gate_metadata, "decision": outcome},
            )],
        )

    return _promotion


def _upstream(
    context: dg.AssetExecutionContext, upstream: dg.AssetKey, partition: str | None
) -> list[dict[str, Any]]:
    try:
        return upstream_lineage(context.instance, upstream, partition)
    except Exception as exc:  # noqa: BLE001 - lineage enrichment must never fail a promotion
        context.log.warning(f"could not read the lineage of {upstream.to_user_string()}: {exc}")
        return []


#: What the best-checkpoint asset's metadata says about where its checkpoint came from,
#: copied into the registered version's lineage (the trial keys only for a sweep).
_LINEAGE_KEYS = ("run_uri", "sweep_uri", "trial_id", "trial_config", "trial_status")


def _upstream_lineage(context: dg.AssetExecutionContext, upstream: dg.AssetKey) -> dict[str, Any]:
    """The Ray run (and, for a sweep, the trial and its config) the candidate came from, as
    the best-checkpoint asset recorded it in its materialisation.

    The checkpoint's own folder is not enough: with ``RayTrainResultIOManager(checkpoints=
    "copy")`` it lives in the IO manager's copy, not in the run. Best effort: empty if the
    upstream is not a best-checkpoint asset or its materialisation is not in this instance.
    """
    partitions = [context.partition_key] if context.has_partition_key else None
    try:
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=upstream, asset_partitions=partitions), limit=1
        ).records
    except Exception:  # noqa: BLE001 - lineage enrichment must never fail a promotion
        return {}
    if not records or records[0].asset_materialization is None:
        return {}
    metadata = records[0].asset_materialization.metadata
    out: dict[str, Any] = {}
    for key in _LINEAGE_KEYS:
        if key in metadata:
            value = getattr(metadata[key], "value", metadata[key])
            if isinstance(value, str | dict | list | int | float | bool):
                out[key] = value
    return out


def _reject_missing(
    registry: Any,
    model: str,
    alias: str,
    metric: str,
    mode: str,
    min_improvement: float,
    exc: Exception,
) -> dg.MaterializeResult:
    """The candidate's files are gone: a failed gate (alias untouched), not a crash."""
    after = registry.get(model, alias)
    reason = f"rejected: candidate checkpoint cannot be registered: {exc}"
    metadata = {"reason": reason, "decision": "rejected", "metric": metric, "mode": mode,
                "min_improvement": min_improvement}
    if after is not None:
        metadata["champion_version"] = after.version
    return dg.MaterializeResult(
        value=after,
        metadata=metadata,
        check_results=[dg.AssetCheckResult(
            check_name=GATE_CHECK_NAME, passed=False, severity=dg.AssetCheckSeverity.ERROR,
            description=reason, metadata={"reason": reason},
        )],
    )
