"""Dataframes as Parquet for the IO manager's versions (metrics, trials tables): no pickles.

Metrics can mix types across reports (``1`` then ``"warmup"``) or hold lists and dicts;
Arrow cannot type such a column, so it is stored as JSON text and listed in the manifest
(``json_columns``), and loading turns it back into values.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import CorruptRunError

if TYPE_CHECKING:
    import pandas as pd


def frame_to_parquet(frame: pd.DataFrame) -> tuple[bytes, list[str]]:
    """Parquet bytes of ``frame``; columns Arrow cannot type cleanly become JSON text.

    Metrics can mix types across reports (``1`` then ``"warmup"``) or hold lists and dicts;
    those columns are stored as JSON strings and listed, so loading restores the values.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = frame.copy()
    json_columns: list[str] = []
    for name in frame.columns:
        column = frame[name]
        if column.dtype != object:
            continue
        try:
            kind = pa.array(column, from_pandas=True).type
        except (pa.ArrowException, TypeError, ValueError, OverflowError):
            kind = None
        plain = kind is not None and (
            pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or pa.types.is_integer(kind) or pa.types.is_floating(kind)
            or pa.types.is_boolean(kind) or pa.types.is_null(kind)
        )
        if not plain:
            frame[name] = [None if _is_missing(v) else json.dumps(v, default=repr)
                           for v in column]
            json_columns.append(str(name))
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes(), json_columns


def read_parquet_frame(
    fs: pafs.FileSystem, path: str, json_columns: list[str], *, what: str = "metrics file"
) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    where = storage.to_uri(fs, path)

    def _read() -> Any:
        with fs.open_input_file(path) as fh:
            return pq.read_table(fh)

    try:
        table = storage.call(_read, what="read", where=where)
    except FileNotFoundError as exc:
        raise CorruptRunError(f"expected the {what} {where}, but it is gone") from exc
    except (pa.ArrowException, OSError) as exc:
        if storage.is_transient(exc) or isinstance(exc, storage.StorageError):
            raise  # the store failed, not the file
        raise CorruptRunError(
            f"expected a Parquet {what} at {where}, but it cannot be read: {exc}"
        ) from exc
    frame = table.to_pandas()
    for name in json_columns:
        if name in frame.columns:
            frame[name] = [json.loads(v) if isinstance(v, str) else None for v in frame[name]]
    return frame


def empty_metrics_frame() -> pd.DataFrame:
    """What a run that reported nothing loads as (Ray's would be None; a DataFrame input
    annotation needs a DataFrame)."""
    import pandas as pd

    return pd.DataFrame({"checkpoint_dir_name": pd.Series([], dtype=object)})


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)
