"""Reading Ray Train runs, without Dagster or ray.

``result`` (``TrainResult``), ``checkpoint`` (``Checkpoint``), ``failure`` (``TrainingError``,
the training context and its one rendering), ``metrics`` (nested names and numbers),
``selection`` (NaN-safe best checkpoint), ``read`` (V2 and V1 run folders, JSON and text
only), ``record`` (the RunRecorder's files), ``store`` (the IO manager's manifest format),
``coerce`` (one conversion to ``Checkpoint`` / ``TrainResult``), ``fit``.
"""
