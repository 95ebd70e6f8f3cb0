"""A real, small Ray Tune sweep used by the tests (and as the layout the benchmark copies).

Four trials of a function trainable, two at a time on the session's local Ray (~10 s):

* ``good_a`` and ``good_b`` finish (``TERMINATED``);
* ``raise`` raises at its fourth report (``ERROR``, with ``error.txt``/``error.pkl``);
* ``nan`` reports a NaN loss at its second and last reports (``TERMINATED``, NaN last).

Every trial reports four times: checkpoints at steps 0, 2 and 3, a metric-only report at
step 1, and a nested ``eval/acc``. ``CheckpointConfig(num_to_keep=2, loss, min)`` makes Ray
delete one checkpoint of each finished trial (the NaN trial keeps three: Ray never deletes
the latest, and it ranks NaN worst).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from typing import Any

NAME = "sweep"
#: kind -> the loss of each of its four reports (None: raise instead of reporting)
LOSSES: dict[str, list[float | None]] = {
    "good_a": [0.9, 0.7, 0.5, 0.6],
    "raise": [0.8, 0.6, 0.4, None],
    "nan": [0.3, float("nan"), 0.2, float("nan")],
    "good_b": [1.2, 1.0, 0.45, 0.35],
}
KINDS = list(LOSSES)
#: The checkpoint the NaN-safe selections choose (see the tests).
BEST_OVERALL = ("nan", 0.2)  # scope="all": the NaN trial's step-2 checkpoint
BEST_LAST = ("good_b", 0.35)  # scope="last": the best latest checkpoint


def trainable(config: dict[str, Any]) -> None:
    from ray import tune

    kind = config["kind"]
    for step, loss in enumerate(LOSSES[kind]):
        if loss is None:
            raise ValueError(f"boom in trial kind={kind} at step={step}")
        acc = 1.0 - (0.0 if math.isnan(loss) else loss) / 3
        metrics = {"loss": loss, "step": step, "eval": {"acc": round(acc, 4)}}
        if step == 1:
            tune.report(metrics)  # metric-only: no checkpoint
            continue
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "model.json"), "w") as fh:
                json.dump({"kind": kind, "step": step, "lr": config["lr"]}, fh)
            ckpt = tune.Checkpoint.from_directory(d)
            ckpt.set_metadata({"step": step})
            tune.report(metrics, checkpoint=ckpt)


def run_sweep(storage_path: str, name: str = NAME) -> Any:
    """Run the sweep on the already-initialised Ray; returns the live ``ResultGrid``."""
    import ray.cloudpickle
    from ray import tune

    # The workers cannot import this test module: ship the trainable by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    tuner = tune.Tuner(
        trainable,
        param_space={
            "kind": tune.grid_search(KINDS),
            "lr": 0.01,
            "model": {"width": 16, "act": "relu"},
        },
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(
                num_to_keep=2, checkpoint_score_attribute="loss", checkpoint_score_order="min"
            ),
        ),
        tune_config=tune.TuneConfig(metric="loss", mode="min", max_concurrent_trials=2),
    )
    return tuner.fit()
