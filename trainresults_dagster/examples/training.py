"""A training entrypoint for ``TrainingPipeline``: the example model on Ray Train V2.

``defs.yaml`` names it as ``trainresults_dagster.examples.training:train``; the YAML's
``params`` are its keyword arguments. It returns the trainer, which the pipeline runs with
``trd.fit`` (so a failed run comes back with its error and its checkpoints). ray is
imported inside the function: the module is imported each time the code location loads.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainresults_dagster.runs.entrypoint import TrainingRequest


def train(
    request: TrainingRequest,
    *,
    epochs: int = 3,
    lr: float = 0.5,
    num_workers: int = 2,
    data_path: str | None = None,
    rows: int = 4000,
    seed: int = 0,
    num_to_keep: int = 3,
) -> Any:
    """Logistic regression with one report and checkpoint per epoch.

    Reads ``data_path`` (Parquet with ``x0..x3`` and ``label``) or, without one, generates
    ``rows`` rows from ``seed`` on each worker.
    """
    from ray.train import CheckpointConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from trainresults_dagster.examples.model import train_loop

    config: dict[str, Any] = {"epochs": epochs, "lr": lr, "seed": seed, "rows": rows}
    if data_path:
        config["data_path"] = data_path if "://" in data_path else os.path.expanduser(data_path)
    return DataParallelTrainer(
        train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=num_workers),
        run_config=request.run_config(
            checkpoint_config=CheckpointConfig(
                num_to_keep=num_to_keep,
                checkpoint_score_attribute="val_loss",
                checkpoint_score_order="min",
            ),
        ),
    )
