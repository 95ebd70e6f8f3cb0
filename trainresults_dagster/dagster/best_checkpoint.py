"""``build_best_checkpoint_asset``: the best checkpoint of a training-result asset.

NaN-safe selection (``runs.selection``); the ranking of every candidate goes in the
asset's metadata. The value is a small JSON reference (``JsonIOManager``), never a pickle.
"""

# No "from __future__ import annotations": Dagster inspects the real annotations of the
# asset functions (their context parameter and return type).
from typing import Any, Literal

import dagster as dg

from trainresults_dagster.dagster._wiring import asset_key, partitions_of
from trainresults_dagster.dagster.json_io_manager import JSON_IO_MANAGER_KEY
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


def _ranking(result: TrainResult, metric: str, chosen: Checkpoint) -> dg.TableMetadataValue:
    rows = []
    for ckpt, metrics in result.checkpoints_with_metrics():
        raw = lookup_metric(metrics, metric)
        value = finite_number(raw)
        rows.append(dg.TableRecord({
            "checkpoint": ckpt.dir_name,
            "report_index": result.report_index_of(ckpt, default=-1),
            "value": value,
            "raw": "missing" if raw is MISSING else repr(raw),
            "eligible": value is not None,
            "chosen": ckpt == chosen,
        }))
    schema = dg.TableSchema(columns=[
        dg.TableColumn("checkpoint", "string"),
        dg.TableColumn("report_index", "int"),
        dg.TableColumn("value", "float"),
        dg.TableColumn("raw", "string"),
        dg.TableColumn("eligible", "bool"),
        dg.TableColumn("chosen", "bool"),
    ])
    return dg.MetadataValue.table(rows, schema=schema)


def build_best_checkpoint_asset(
    name: str,
    *,
    result_asset: Any,
    metric: str,
    mode: Literal["min", "max"],
    ties: Literal["latest", "earliest"] = "latest",
    io_manager_key: str = JSON_IO_MANAGER_KEY,
    partitions_def: dg.PartitionsDefinition | None = None,
    group_name: str | None = None,
) -> dg.AssetsDefinition:
    """An asset whose value is the best ``Checkpoint`` of ``result_asset``'s run.

    ``metric`` may be nested (``"val/acc"``); NaN, inf, missing and non-numeric values are
    never chosen; ``ties`` decides between equal values by report order. Metadata: the
    chosen URI and value, and a ranking table of every checkpoint. Partitions follow
    ``result_asset`` unless ``partitions_def`` is given.
    """
    validate_mode(mode)
    if ties not in ("latest", "earliest"):
        raise ValueError(f"ties must be 'latest' or 'earliest', got {ties!r}")
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
        run = as_train_result(result, what=f"input {upstream.to_user_string()!r}")
        chosen, metrics = select_best_checkpoint(run, metric, mode, ties=ties)
        checkpoint = Checkpoint(chosen.path, chosen.filesystem, metrics=metrics,
                                dir_name=chosen.dir_name)
        value = finite_number(lookup_metric(metrics, metric))
        context.log.info(f"best checkpoint by {metric} ({mode}): {checkpoint.uri} = {value}")
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
            "metrics": dg.MetadataValue.json(metrics),
            "num_candidates": len(run.checkpoints),
            "ranking": _ranking(run, metric, chosen),
        })

    return _best_checkpoint
