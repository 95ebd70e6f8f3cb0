"""Dagster metadata describing a ``TrainResult``: what the UI shows per materialisation.

* ``metrics/<name>``: each final numeric metric as a float, nested names joined with ``/``
  as Ray flattens them (``metrics/val/acc``). Dagster plots numeric metadata across
  materialisations under its key; the ``metrics/`` prefix groups them in the UI and keeps a
  metric called ``error`` or ``dagster/uri`` from overwriting the entries below. NaN, inf and
  bools are left out: a plot of them is meaningless and a bool is not a measurement.
* ``dagster/uri`` (the run), ``status``, ``num_checkpoints``, ``num_reports``,
  ``dagster/row_count`` (rows of the metrics dataframe), ``latest_checkpoint``,
  ``best_checkpoint`` (+ ``best_checkpoint_metrics``) when the run's score attribute is known,
  ``metrics_table`` (the last reports as a table), ``manifest``.
* On failure: ``error`` (Markdown, escaped) and the training context under
  ``trainresults/<key>`` (``training_context``), the keys the failure sensors read.

A sweep (``sweep_metadata``) shows ``num_trials``, ``num_errored_trials``, the best value
of its objective as ``best/<metric>`` (a plotted float), the best trial and checkpoint, the
trials as a table and, when trials errored, ``errors`` plus the sweep's training context.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import dagster as dg

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import NoEligibleCheckpointError
from trainresults_dagster.runs.failure import escape_markdown, first_line, format_failure
from trainresults_dagster.runs.metrics import finite_number, flatten_metrics, lookup_metric
from trainresults_dagster.runs.result import training_context
from trainresults_dagster.runs.selection import select_best_checkpoint
from trainresults_dagster.runs.store import score_config
from trainresults_dagster.runs.tune import AUTO_KEYS, TABLE_COLUMNS, TrainResultGrid, sweep_context

if TYPE_CHECKING:
    import pandas as pd

    from trainresults_dagster.runs.failure import TrainingError
    from trainresults_dagster.runs.result import TrainResult

#: Bounds that keep one materialisation event small (Dagster stores metadata per event).
MAX_METRIC_ENTRIES = 200
MAX_TABLE_ROWS = 50
MAX_TABLE_COLUMNS = 30
MAX_ERROR_CHARS = 4000
#: Prefix of the training-context keys in Dagster metadata (``trainresults/run_uri``...),
#: which the failure sensors read back.
METADATA_PREFIX = "trainresults/"


def jsonable(value: Any) -> Any:
    """Plain JSON (NaN and inf become null: Dagster's JSON metadata must be valid JSON)."""
    return storage.json_value(value)


def metric_metadata(metrics: dict[str, Any] | None) -> dict[str, dg.MetadataValue]:
    out: dict[str, dg.MetadataValue] = {}
    for name, value in flatten_metrics(metrics or {}).items():
        number = finite_number(value)
        if number is None:
            continue
        if len(out) >= MAX_METRIC_ENTRIES:
            break
        out[f"metrics/{name}"] = dg.MetadataValue.float(number)
    return out


def _cell(value: Any) -> str | int | float | bool | None:
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and not isinstance(value, str | bytes):
        try:
            value = item()
        except (TypeError, ValueError):
            pass
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    try:
        if value != value:  # pandas NA/NaT
            return None
    except (TypeError, ValueError):
        pass
    return json.dumps(jsonable(value)) if isinstance(value, list | dict) else str(value)


def _column_type(frame: pd.DataFrame, name: str) -> str:
    import pandas as pd

    dtype = frame[name].dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(dtype):
        return "int"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    return "string"


def metrics_table(frame: pd.DataFrame | None) -> dg.MetadataValue | None:
    """The last ``MAX_TABLE_ROWS`` reports, at most ``MAX_TABLE_COLUMNS`` columns."""
    if frame is None or frame.empty:
        return None
    columns = [c for c in frame.columns if c != "checkpoint_dir_name"][: MAX_TABLE_COLUMNS - 1]
    if "checkpoint_dir_name" in frame.columns:
        columns.append("checkpoint_dir_name")
    tail = frame.tail(MAX_TABLE_ROWS)
    schema = dg.TableSchema(
        columns=[dg.TableColumn(str(c), _column_type(frame, c)) for c in columns]
    )
    records = [
        dg.TableRecord({str(c): _cell(row[c]) for c in columns})
        for _, row in tail.iterrows()
    ]
    return dg.MetadataValue.table(records=records, schema=schema)


def error_markdown(error: TrainingError) -> str:
    """The error as Markdown for the UI: ``format_failure`` with the full message."""
    context = {"error_type": error.error_type, "message": error.message,
               "worker_failures": {str(k): v for k, v in error.worker_failures.items()}}
    lines = format_failure(context, "markdown", max_message=MAX_ERROR_CHARS)
    # The run and checkpoint lines belong to the other metadata entries; keep the error.
    return "\n\n".join(line for line in lines if not line.startswith(("Run:", "Last ")))


def context_metadata(result: TrainResult | TrainResultGrid) -> dict[str, dg.MetadataValue]:
    """The training context under ``trainresults/<key>`` (what failure sensors read)."""
    out: dict[str, dg.MetadataValue] = {}
    context = sweep_context(result) if isinstance(result, TrainResultGrid) else training_context(
        result)
    for key, value in context.items():
        name = f"{METADATA_PREFIX}{key}"
        if key in ("worker_failures", "last_metrics"):
            out[name] = dg.MetadataValue.json(jsonable(value))
        elif value is None:
            out[name] = dg.MetadataValue.null()
        else:
            out[name] = dg.MetadataValue.text(str(value))
    return out


def result_metadata(
    result: TrainResult,
    *,
    manifest_uri: str | None = None,
    checkpoint_uris: dict[str, str] | None = None,
    log: Any = None,
) -> dict[str, dg.MetadataValue]:
    """Everything shown for one materialisation of ``result``.

    ``checkpoint_uris`` maps checkpoint names to where they were stored (the copies, with
    checkpoints="copy"), so the UI links to what stays valid.
    """
    def uri_of(ckpt: Any) -> str:
        return (checkpoint_uris or {}).get(ckpt.dir_name) or ckpt.uri

    checkpoints = result.checkpoints
    frame = result.metrics_dataframe
    md: dict[str, dg.MetadataValue] = {
        "dagster/uri": dg.MetadataValue.text(result.uri),
        "status": dg.MetadataValue.text(result.status),
        "num_checkpoints": dg.MetadataValue.int(len(checkpoints)),
        "num_reports": dg.MetadataValue.int(len(frame) if frame is not None else 0),
        "dagster/row_count": dg.MetadataValue.int(len(frame) if frame is not None else 0),
    }
    if result.checkpoint is not None:
        md["latest_checkpoint"] = dg.MetadataValue.path(uri_of(result.checkpoint))
    score = score_config(result)
    if score is not None:
        try:
            best, best_metrics = select_best_checkpoint(result, score["attribute"], score["order"])
        except NoEligibleCheckpointError as exc:
            if log is not None:
                log.warning(f"no best checkpoint to show: {exc}")
        else:
            md["best_checkpoint"] = dg.MetadataValue.path(uri_of(best))
            md["best_checkpoint_metrics"] = dg.MetadataValue.json(jsonable(best_metrics))
            md["score_attribute"] = dg.MetadataValue.text(
                f"{score['attribute']} ({score['order']})"
            )
    table = metrics_table(frame)
    if table is not None:
        md["metrics_table"] = table
    if manifest_uri is not None:
        md["manifest"] = dg.MetadataValue.path(manifest_uri)
    if result.error is not None:
        md["error"] = dg.MetadataValue.md(error_markdown(result.error))
        md.update(context_metadata(result))
    md.update(metric_metadata(result.metrics))
    return md


# --------------------------------------------------------------------------------------
# Sweeps
# --------------------------------------------------------------------------------------

#: Trials shown in the UI's trials table (the Parquet file has them all).
MAX_TRIAL_ROWS = 100


def trials_table(grid: TrainResultGrid) -> dg.MetadataValue | None:
    """The trials table for the UI: the trial columns, the config and the user's metrics
    (Ray's automatic keys left out), at most ``MAX_TABLE_COLUMNS`` columns."""
    frame = grid.trials_table
    if frame.empty:
        return None
    first = [c for c in TABLE_COLUMNS if c in frame.columns and c != "uri"]
    config = [c for c in frame.columns if str(c).startswith("config/")]
    metrics = [c for c in frame.columns if c not in TABLE_COLUMNS and c not in config
               and str(c).split("/", 1)[0] not in AUTO_KEYS]
    columns = (first + config + metrics)[:MAX_TABLE_COLUMNS]
    schema = dg.TableSchema(columns=[dg.TableColumn(str(c), _column_type(frame, c)) for c in columns])
    records = [dg.TableRecord({str(c): _cell(row[c]) for c in columns})
               for _, row in frame.head(MAX_TRIAL_ROWS).iterrows()]
    return dg.MetadataValue.table(records=records, schema=schema)


def sweep_metadata(
    grid: TrainResultGrid,
    *,
    manifest_uri: str | None = None,
    checkpoint_uris: dict[str, str] | None = None,
    log: Any = None,
) -> dict[str, dg.MetadataValue]:
    """Everything shown for one materialisation of a sweep.

    ``num_trials``, ``num_errored_trials``, ``num_terminated_trials`` and, when the sweep's
    objective is known (``TuneConfig(metric, mode)``), ``best/<metric>``: the best finite
    value of any retained checkpoint, as a float Dagster plots across materialisations,
    with the trial and checkpoint it came from. ``checkpoint_uris`` maps
    ``"<trial id>/<checkpoint>"`` to where the version stores it (the copies).
    """
    md: dict[str, dg.MetadataValue] = {
        "dagster/uri": dg.MetadataValue.text(grid.uri),
        "kind": dg.MetadataValue.text("sweep"),
        "num_trials": dg.MetadataValue.int(len(grid.trials)),
        "num_errored_trials": dg.MetadataValue.int(grid.num_errors),
        "num_terminated_trials": dg.MetadataValue.int(grid.num_terminated),
        "num_checkpoints": dg.MetadataValue.int(sum(len(t.checkpoints) for t in grid.trials)),
        "dagster/row_count": dg.MetadataValue.int(len(grid.trials)),
    }
    if grid.metric and grid.mode:
        md["objective"] = dg.MetadataValue.text(f"{grid.metric} ({grid.mode})")
        try:
            best = grid.best_checkpoint()
        except NoEligibleCheckpointError as exc:
            if log is not None:
                log.warning(f"no best checkpoint to show: {exc}")
        else:
            value = finite_number(lookup_metric(best.metrics, grid.metric))
            uri = (checkpoint_uris or {}).get(f"{best.trial.trial_id}/{best.checkpoint.dir_name}")
            if value is not None:
                md[f"best/{grid.metric}"] = dg.MetadataValue.float(value)
            md["best_trial_id"] = dg.MetadataValue.text(best.trial.trial_id)
            md["best_trial_config"] = dg.MetadataValue.json(jsonable(best.trial.config))
            md["best_checkpoint"] = dg.MetadataValue.path(uri or best.checkpoint.uri)
    elif log is not None:
        log.info(
            f"sweep {grid.uri} has no objective (metric and mode): no best value is shown. "
            "Return TrainResultGrid.from_ray(tuner.fit()) with TuneConfig(metric=..., "
            "mode=...), or TrainResultGrid.from_path(..., metric=..., mode=...)."
        )
    table = trials_table(grid)
    if table is not None:
        md["trials_table"] = table
    if manifest_uri is not None:
        md["manifest"] = dg.MetadataValue.path(manifest_uri)
    if grid.errored_trials:
        lines = [f"**{len(grid.errored_trials)} of {len(grid.trials)} trial(s) errored**"]
        for trial in grid.errored_trials[:10]:
            error = trial.error
            head = f"{error.error_type}: {error.message}" if error else "error"
            lines.append(f"- `{trial.trial_id}` {escape_markdown(first_line(head))}")
        md["errors"] = dg.MetadataValue.md("\n".join(lines))
        md.update(context_metadata(grid))
    return md
