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
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import dagster as dg

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import NoEligibleCheckpointError
from trainresults_dagster.runs.failure import format_failure
from trainresults_dagster.runs.metrics import finite_number, flatten_metrics
from trainresults_dagster.runs.result import training_context
from trainresults_dagster.runs.selection import select_best_checkpoint
from trainresults_dagster.runs.store import score_config

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


def context_metadata(result: TrainResult) -> dict[str, dg.MetadataValue]:
    """The training context under ``trainresults/<key>`` (what failure sensors read)."""
    out: dict[str, dg.MetadataValue] = {}
    for key, value in training_context(result).items():
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
