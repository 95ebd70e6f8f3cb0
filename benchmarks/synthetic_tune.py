"""Synthetic Ray Tune sweeps in the exact layout Tune 2.60 writes, for sizes a real sweep on
2 cores would take minutes to make (100 trials).

The files are written by Ray's own classes, without a cluster: each trial is a real
``ray.tune.experiment.Trial`` with a real ``StorageContext`` and checkpoint manager, fed the
reports a function trainable would make (``update_last_result``, ``on_checkpoint``, which
also applies ``num_to_keep`` retention and deletes evicted folders), and the experiment
state is ``json.dump(..., cls=TuneFunctionEncoder)`` of ``Trial.get_json_state()`` pairs, as
``TuneController.save_to_dir`` does. ``ExperimentAnalysis`` loads them (checked by the
benchmark).
"""

from __future__ import annotations

import datetime
import json
import os
import time
from typing import Any


def write_tune_sweep(
    root: str,
    name: str,
    n_trials: int,
    *,
    reports: int = 10,
    checkpoint_every: int = 1,
    num_to_keep: int | None = 2,
    failed_every: int = 10,
    payload: bytes = b"w" * 64,
) -> str:
    """A finished sweep of ``n_trials`` at ``root/name``; every ``failed_every``-th trial
    raises after half its reports. Returns the experiment path."""
    from ray.train import Checkpoint, CheckpointConfig
    from ray.train._internal.session import _TrainingResult
    from ray.train._internal.storage import StorageContext
    from ray.tune.execution.placement_groups import PlacementGroupFactory
    from ray.tune.experiment import Trial
    from ray.tune.utils.serialization import TuneFunctionEncoder

    session = datetime.datetime(2026, 1, 1).strftime("%Y-%m-%d_%H-%M-%S")
    experiment = os.path.join(root, name)
    os.makedirs(experiment, exist_ok=True)
    config_base = {"model": {"width": 64, "act": "relu"}, "batch": 32}
    pairs = []
    for i in range(n_trials):
        trial_id = f"bench_{i:05d}"
        lr = 10 ** -(1 + i % 4)
        config = {"lr": lr, "seed": i, **config_base}
        tag = f"{i}_lr={lr:.4f},seed={i}"
        dirname = f"trainable_{trial_id}_{tag}_{session}"
        storage = StorageContext(storage_path=root, experiment_dir_name=name,
                                 trial_dir_name=dirname)
        trial = Trial(
            "trainable", config=config, trial_id=trial_id, storage=storage,
            evaluated_params={"lr": lr, "seed": i}, experiment_tag=tag, stub=True,
            placement_group_factory=PlacementGroupFactory([{"CPU": 1}]),
            checkpoint_config=CheckpointConfig(num_to_keep=num_to_keep,
                                               checkpoint_score_attribute="loss",
                                               checkpoint_score_order="min"),
        )
        # What TuneController does when it starts a trial (init_local_path, resources).
        trial.relative_logdir = dirname
        trial.storage.trial_dir_name = dirname
        trial.create_placement_group_factory()
        trial_dir = os.path.join(experiment, dirname)
        os.makedirs(trial_dir, exist_ok=True)
        fails = failed_every and i % failed_every == failed_every - 1
        n_reports = reports // 2 if fails else reports
        start = time.time()
        lines = []
        ckpt_index = 0
        for step in range(n_reports):
            loss = 1.0 / (1 + step) + (i % 7) / 100
            row: dict[str, Any] = {"loss": loss, "step": step, "eval": {"acc": 1 - loss / 2}}
            checkpointed = step % checkpoint_every == 0
            row.update({
                "timestamp": int(start) + step,
                "checkpoint_dir_name": f"checkpoint_{ckpt_index:06d}" if checkpointed else None,
            })
            if checkpointed:
                row["should_checkpoint"] = True
            row.update({
                "done": False, "training_iteration": step + 1, "trial_id": trial_id,
                "date": session, "time_this_iter_s": 0.01, "time_total_s": 0.01 * (step + 1),
                "pid": 1000 + i, "hostname": "bench", "node_ip": "127.0.0.1", "config": config,
                "time_since_restore": 0.01 * (step + 1), "iterations_since_restore": step + 1,
            })
            lines.append(json.dumps(row))
            if checkpointed:
                path = os.path.join(trial_dir, row["checkpoint_dir_name"])
                os.makedirs(path)
                with open(os.path.join(path, "model.bin"), "wb") as fh:
                    fh.write(payload)
                with open(os.path.join(path, ".metadata.json"), "w") as fh:
                    json.dump({"step": step}, fh)
                trial.on_checkpoint(_TrainingResult(checkpoint=Checkpoint(path), metrics=row))
                ckpt_index += 1
            trial.update_last_result(dict(row))
        with open(os.path.join(trial_dir, "result.json"), "w") as fh:
            fh.write("\n".join(lines) + "\n")
        with open(os.path.join(trial_dir, "params.json"), "w") as fh:
            json.dump(config, fh, indent=2, sort_keys=True)
        if fails:
            with open(os.path.join(trial_dir, "error.txt"), "w") as fh:
                fh.write(f"Failure # 1 (occurred at {session})\n\x1b[36mray::ImplicitFunc.train()"
                         f"\x1b[39m (pid={1000 + i})\nValueError: boom in {trial_id}\n")
            trial.run_metadata.num_failures = 1
            trial.run_metadata.error_filename = "error.txt"
            trial.set_status(Trial.ERROR)
        else:
            trial.set_status(Trial.TERMINATED)
        pairs.append(trial.get_json_state())
    state = {
        "trial_data": pairs,
        "runner_data": {"_metric": "loss", "_session_str": session, "_has_errored": True},
        "stats": {"start_time": time.time()},
    }
    with open(os.path.join(experiment, f"experiment_state-{session}.json"), "w") as fh:
        json.dump(state, fh, cls=TuneFunctionEncoder)
    return experiment
