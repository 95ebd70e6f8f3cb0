"""Handing a model on, without Dagster: the pinned model reference (``model_ref``), the
predictor contract (``predictor``), batch inference with a local and a Ray Data engine
(``inference``, ``_ray_data``), and outputs that are complete or visibly not (``output``)."""
