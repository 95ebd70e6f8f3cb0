"""A real, small model for the example: logistic regression in numpy, trained with Ray Train.

No torch needed. The checkpoint is plain JSON (``model.json``), so loading it never
unpickles anything. ``Predictor`` is Ray Data's callable-class shape and serves both
batch-inference engines.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any

import numpy as np
import pandas as pd

FEATURES = ["x0", "x1", "x2", "x3"]
TRUE_WEIGHTS = np.array([1.5, -2.0, 0.75, 0.0])
TRUE_BIAS = -0.25


def make_dataset(rows: int, seed: int = 0) -> pd.DataFrame:
    """Features ``x0..x3`` and a noisy binary ``label`` from a fixed linear rule."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(FEATURES)))
    logits = x @ TRUE_WEIGHTS + TRUE_BIAS + rng.normal(scale=0.5, size=rows)
    frame = pd.DataFrame(x, columns=FEATURES)
    frame["label"] = (logits > 0).astype("int64")
    return frame


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


def _loss(w: np.ndarray, b: float, x: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(_sigmoid(x @ w + b), 1e-9, 1 - 1e-9)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train loop: full-batch gradient descent, one report + checkpoint per epoch.

    config: ``data_path`` (Parquet with FEATURES + label) or ``rows`` (generate that many
    from ``seed``), ``epochs``, ``lr``, ``seed``.
    Every rank trains on its shard and averages nothing (no collective backend needed);
    rank 0's metrics and checkpoint are the ones Ray Train keeps.
    """
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if config.get("data_path"):
        frame = pd.read_parquet(config["data_path"])
    else:
        frame = make_dataset(int(config["rows"]), seed=int(config.get("seed", 0)))
    split = int(len(frame) * 0.8)
    train, val = frame.iloc[:split], frame.iloc[split:]
    shard = train.iloc[rank::world]
    x, y = shard[FEATURES].to_numpy(), shard["label"].to_numpy()
    xv, yv = val[FEATURES].to_numpy(), val["label"].to_numpy()
    rng = np.random.default_rng(config.get("seed", 0))
    w, b = rng.normal(scale=0.01, size=len(FEATURES)), 0.0
    lr = float(config.get("lr", 0.5))
    for epoch in range(int(config.get("epochs", 5))):
        for _ in range(20):
            p = _sigmoid(x @ w + b)
            w -= lr * (x.T @ (p - y)) / len(y)
            b -= lr * float(np.mean(p - y))
        val_pred = _sigmoid(xv @ w + b) > 0.5
        metrics = {
            "epoch": epoch,
            "loss": _loss(w, b, x, y),
            "val_loss": _loss(w, b, xv, yv),
            "val_accuracy": float(np.mean(val_pred == yv)),
        }
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                with open(os.path.join(d, "model.json"), "w") as fh:
                    json.dump({"weights": w.tolist(), "bias": b, "features": FEATURES}, fh)
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=checkpoint)


class Predictor:
    """``Predictor(checkpoint_dir)(batch) -> batch with prediction + probability``."""

    def __init__(self, checkpoint_dir: str) -> None:
        path = os.path.join(checkpoint_dir, "model.json")
        with open(path) as fh:
            model = json.load(fh)
        self.weights = np.asarray(model["weights"], dtype="float64")
        self.bias = float(model["bias"])
        self.features = list(model["features"])
        if not all(math.isfinite(v) for v in self.weights):
            raise ValueError(f"expected finite weights in {path}, got {model['weights']!r}")

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        x = batch[self.features].to_numpy(dtype="float64")
        prob = _sigmoid(x @ self.weights + self.bias)
        out = batch.copy()
        out["probability"] = prob
        out["prediction"] = (prob > 0.5).astype("int64")
        return out
