"""Reading Ray Train runs and Ray Tune sweeps, without Dagster or ray.

``result`` (``TrainResult``), ``checkpoint`` (``Checkpoint``), ``failure`` (``TrainingError``,
the training context and its one rendering), ``metrics`` (nested names and numbers),
``selection`` (NaN-safe best checkpoint, of a run or across a sweep's trials), ``read`` (V2
and V1 run folders, JSON and text only), ``experiment`` (a Tune experiment's state file),
``tune`` (``TrainResultGrid``: a sweep), ``record`` (the RunRecorder's files), ``store`` and
``sweep_store`` (the IO manager's manifest formats), ``parquet`` (their dataframes),
``coerce`` (one conversion to ``Checkpoint`` / ``TrainResult`` / ``TrainResultGrid``), ``fit``.
"""
