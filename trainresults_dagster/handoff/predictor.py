"""The predictor contract: Ray Data's callable-class shape, one class for both engines.

``Predictor(checkpoint_dir)`` loads the model once; ``predictor(batch: pandas.DataFrame) ->
pandas.DataFrame`` returns one output row per input row. ``construct`` and ``predict`` call
it and turn whatever goes wrong into a ``PredictorError`` that names the predictor, the
checkpoint and the batch.
"""

from __future__ import annotations

from typing import Any

from trainresults_dagster.errors import PredictorError


def construct(predictor: type, directory: str, checkpoint_uri: str) -> Any:
    try:
        return predictor(directory)
    except Exception as exc:
        raise PredictorError(
            f"predictor {name_of(predictor)} failed to load checkpoint {checkpoint_uri} "
            f"(local folder {directory}): {type(exc).__name__}: {exc}"
        ) from exc


def predict(model: Any, batch: Any, where: str) -> Any:
    """Call the predictor on one batch; the answer must be a DataFrame with as many rows."""
    import pandas as pd

    try:
        out = model(batch)
    except Exception as exc:
        raise PredictorError(
            f"predictor {name_of(type(model))} raised on {where}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(out, pd.DataFrame):
        raise PredictorError(
            f"expected predictor {name_of(type(model))} to return a pandas.DataFrame for {where}, "
            f"got {type(out).__name__}"
        )
    if len(out) != len(batch):
        raise PredictorError(
            f"expected predictor {name_of(type(model))} to return {len(batch)} rows for {where}, "
            f"got {len(out)}; every input row needs exactly one output row"
        )
    return out


def name_of(obj: type) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


