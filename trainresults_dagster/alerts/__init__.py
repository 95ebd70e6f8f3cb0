"""Alerts about failed training runs, without Dagster: building and rendering them
(``alert``) and the incremental scan of a storage path for failed runs (``scan``), which
composes the RunRecorder journal source with the V1 experiment source (``_v1``)."""
