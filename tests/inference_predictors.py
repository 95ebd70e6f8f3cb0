"""Predictor classes for the batch-inference tests: Ray Data's callable-class shape.

Each loads the checkpoint written by ``ray_jobs.train_loop`` (``model.txt``:
``epoch=E loss=L``) and predicts ``y = x * (epoch + 1)``, so the output shows which
checkpoint produced it. The broken ones misbehave on purpose, on a known batch.
"""

from __future__ import annotations

import os

import pandas as pd


def read_epoch(checkpoint_dir: str) -> int:
    with open(os.path.join(checkpoint_dir, "model.txt")) as fh:
        return int(fh.read().split()[0].split("=", 1)[1])


class EpochPredictor:
    def __init__(self, checkpoint_dir: str) -> None:
        self.epoch = read_epoch(checkpoint_dir)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "id": batch["id"].to_numpy(),
                "y": batch["x"].to_numpy() * (self.epoch + 1),
                "epoch": self.epoch,
                "batch_rows": len(batch),
            }
        )


class DropsRowOnThirdBatch(EpochPredictor):
    calls = 0

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = super().__call__(batch)
        self.calls += 1
        return out.iloc[:-1] if self.calls == 3 else out


class RaisesOnId(EpochPredictor):
    """Raises on the batch that holds id 2500."""

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        if (batch["id"] == 2500).any():
            raise ValueError("feature x is out of range for id 2500")
        return super().__call__(batch)


class ReturnsDict(EpochPredictor):
    def __call__(self, batch: pd.DataFrame) -> dict:
        return {"y": batch["x"].to_numpy()}


class FailsToLoad:
    def __init__(self, checkpoint_dir: str) -> None:
        raise FileNotFoundError(os.path.join(checkpoint_dir, "weights.bin"))

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:  # pragma: no cover
        return batch
