"""``build_best_checkpoint_asset``: the best checkpoint of a training-result asset.

NaN-safe selection (``runs.selection``); the ranking of every candidate goes in the
asset's metadata. The value is a small JSON reference (``JsonIOManager``), never a pickle.
Given a Ray Tune sweep (a ``TrainResultGrid``) it picks the best checkpoint across trials,
and its metadata names the trial and its config, which ``build_promotion_asset`` copies
into the registered version's lineage.
"""

# No "from __future__ import annotations": Dagster inspects the real annotations of the
# asset functions (their context parameter and return type).
from typing import Any, Literal

import dagster as dg

from trainresults_dagster.dagster._wiring import asset_key, partitions_of
from trainresults_dagster.dagster.json_io_manager import JSON_IO_MANAGER_KEY
from trainresults_dagster.dagster.metadata import jsonable
from trainresults_dagster.runs.checkpoint import Checkpoint
from trainresults_dagster.runs.coerce import as_train_result
from trainresults_dagster.runs.metrics import (
    MISSING,
    finite_number,
    lookup_metric,
    validate_metric,
    validate_mode,
)
from trainresults_dagster.runs.result import TrainResult
from trainresults_dagster.runs.selection import select_best_checkpoint
from trainresults_dagster.runs.tune import TrainResultGrid, TrialResult

#: Rows of the ranking table (a sweep of many trials has many candidates).
MAX_RANKING_ROWS = 200


def _ranking(runs: list[TrainResult], metric: str, chosen: Checkpoint, scope: str
             ) -> dg.TableMetadataValue:
    rows = []
    for run in runs:
        pairs = list(run.checkpoints_with_metrics())
        for ckpt, metrics in pairs[-1:] if scope == "last" else pairs:
            raw = lookup_metric(metrics, metric)
            value = finite_number(raw)
            row = {
                "checkpoint": ckpt.dir_name,
                "report_index": run.report_index_of(ckpt, default=-1),
                "value": value,
                "raw": "missing" if raw is MISSING else repr(raw),
                "eligible": value is not None,
                "chosen": ckpt == chosen,
            }
            if isinstance(run, TrialResult):
                row = {"trial_id": run.trial_id, **row}
            rows.append(row)
    # The chosen one is always shown, then the first candidates.
    shown = sorted(rows, key=lambda r: not r["chosen"])[:MAX_RANKING_ROWS]
    shown.sort(key=rows.index)
    trial_column = [dg.TableColumn("trial_id", "string")] if rows and "trial_id" in rows[0] else []
    schema = dg.TableSchema(columns=[
        *trial_column,
        dg.TableColumn("checkpoint", "string"),
        dg.TableColumn("report_index", "int"),
        dg.TableColumn("value", "float"),
        dg.TableColumn("raw", "string"),
        dg.TableColumn("eligible", "bool"),
        dg.TableColumn("chosen", "bool"),
    ])
    return dg.MetadataValue.table([dg.TableRecord(r) for r in shown], schema=schema)


def build_best_checkpoint_asset(
    name: str,
    *,
    result_asset: Any,
    metric: str,
    mode: Literal["min", "max"],
    ties: Literal["latest", "earliest"] = "latest",
    scope: Literal["all", "last"] = "all",
    include_errored_trials: bool = True,
    io_manager_key: str = JSON_IO_MANAGER_KEY,
    partitions_def: dg.PartitionsDefinition | None = None,
    group_name: str | None = None,
) -> dg.AssetsDefinition:
    """An asset whose value is the best ``Checkpoint`` of ``result_asset``'s run.

    ``metric`` may be nested (``"val/acc"``); NaN, inf, missing and non-numeric values are
    never chosen; ``ties`` decides between equal values by report order. Metadata: the
    chosen URI and value, and a ranking table of every checkpoint. Partitions follow
    ``result_asset`` unless ``partitions_def`` is given.

    When ``result_asset`` holds a Ray Tune sweep, the best checkpoint across its trials is
    chosen: ``scope="all"`` ranks every retained checkpoint, ``"last"`` each trial's latest
    (final) one; errored trials take part (as in Ray's ``get_best_result``) unless
    ``include_errored_trials=False``; equal values go to the earlier trial. The metadata
    adds ``trial_id``, ``trial_config``, ``trial_status`` and ``sweep_uri``.
    """
    validate_mode(mode)
    if ties not in ("latest", "earliest"):
        raise ValueError(f"ties must be 'latest' or 'earliest', got {ties!r}")
    if scope not in ("all", "last"):
        raise ValueError(f"scope must be 'all' or 'last', got {scope!r}")
    validate_metric(metric)
    upstream = asset_key(result_asset, what="result_asset")

    @dg.asset(
        name=name,
        ins={"result": dg.AssetIn(key=upstream)},
        io_manager_key=io_manager_key,
        partitions_def=partitions_def or partitions_of(result_asset),
        group_name=group_name,
        kinds={"ray"},
        description=f"Best checkpoint of {upstream.to_user_string()} by {metric} ({mode}).",
    )
    def _best_checkpoint(context: dg.AssetExecutionContext, result: Any) -> dg.Output:
        what = f"input {upstream.to_user_string()!r}"
        extra: dict[str, Any] = {}
        if isinstance(result, TrainResultGrid):
            best = result.best_checkpoint(metric, mode, scope=scope, ties=ties,
                                          include_errored=include_errored_trials)
            run: TrainResult = best.trial
            chosen, metrics = best.checkpoint, best.metrics
            candidates: list[TrainResult] = [
                t for t in result.trials if include_errored_trials or t.error is None
            ]
            extra = {
                "sweep_uri": dg.MetadataValue.path(result.uri),
                "trial_id": best.trial.trial_id,
                "trial_status": best.trial.trial_status or "unknown",
                "trial_config": dg.MetadataValue.json(jsonable(best.trial.config)),
                "num_trials": len(result.trials),
                "scope": scope,
            }
        else:
            run = as_train_result(result, what=what)
            chosen, metrics = select_best_checkpoint(run, metric, mode, ties=ties, scope=scope)
            candidates = [run]
        checkpoint = Checkpoint(chosen.path, chosen.filesystem, metrics=metrics,
                                dir_name=chosen.dir_name)
        value = finite_number(lookup_metric(metrics, metric))
        where = f" (trial {extra['trial_id']})" if extra else ""
        context.log.info(f"best checkpoint by {metric} ({mode}): {checkpoint.uri}{where} = {value}")
        if run.status == "failed":
            context.log.warning(
                f"run {run.uri} failed ({run.error.error_type if run.error else 'unknown'}); "
                "its best persisted checkpoint was chosen anyway: gate it before promoting"
            )
        return dg.Output(checkpoint, metadata={
            "checkpoint_uri": dg.MetadataValue.path(checkpoint.uri),
            "run_uri": dg.MetadataValue.path(run.uri),
            "run_status": run.status,
            "metric": metric,
            "mode": mode,
            "value": value,
            "metrics": dg.MetadataValue.json(jsonable(metrics)),
            "num_candidates": sum(len(r.checkpoints) if scope == "all" else min(1, len(r.checkpoints))
                                  for r in candidates),
            "ranking": _ranking(candidates, metric, chosen, scope),
            **extra,
        })

    return _best_checkpoint
