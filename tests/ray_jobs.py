"""Real Ray Train jobs used by the tests (and benchmarks): small, CPU-only, ~10 s each.

Each job writes a run folder under ``storage`` named after the job. ``make_v2_runs``
runs them all on an already-initialised local Ray and returns ``{name: run path}``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from typing import Any

#: The loss each epoch reports in the "success" job (nested metrics, num_to_keep=2).
SUCCESS_LOSSES = [0.9, 0.4, 0.6, 0.5]
NAN_LOSSES = [0.8, float("nan"), 0.3, float("nan")]


def train_loop(config: dict[str, Any]) -> None:
    """Report ``config["losses"]`` one epoch at a time, with a checkpoint each epoch.

    config keys: ``losses``, ``fail_at`` (epoch to raise on, or None), ``fail_before_ckpt``,
    ``names`` (custom checkpoint folder names), ``metric_only`` (extra metric-only report).
    """
    import ray.train

    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    if config.get("fail_before_ckpt"):
        ray.train.report({"epoch": 0, "warmup": 1.0})
        raise RuntimeError(f"failed before any checkpoint on rank {rank}")
    for epoch, loss in enumerate(config["losses"]):
        if config.get("metric_only"):
            ray.train.report({"epoch": epoch, "lr": 0.1 / (epoch + 1), "phase": "warmup"})
        metrics = {
            "epoch": epoch,
            "loss": loss,
            "val": {"acc": round(0.5 + epoch / 10, 3), "f1": round(0.4 + epoch / 20, 3)},
            "rank": rank,
        }
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "model.txt"), "w") as fh:
                fh.write(f"epoch={epoch} loss={loss}\n")
            ckpt = ray.train.Checkpoint.from_directory(d)
            ckpt.set_metadata({"epoch": epoch})
            names = config.get("names")
            ray.train.report(
                metrics,
                checkpoint=ckpt,
                checkpoint_dir_name=names[epoch] if names else None,
            )
        if config.get("fail_at") == epoch:
            raise ValueError(f"boom at epoch {epoch} on rank {rank}")


JOBS: dict[str, dict[str, Any]] = {
    # name: (train config, num_to_keep, score attribute, recorder)
    "success": {"config": {"losses": SUCCESS_LOSSES, "metric_only": True}, "keep": 2,
                "score": "loss", "recorder": True},
    "success_plain": {"config": {"losses": SUCCESS_LOSSES}, "keep": 2, "score": "loss",
                      "recorder": False},
    "failure": {"config": {"losses": [0.9, 0.7, 0.5, 0.4], "fail_at": 2}, "keep": None,
                "score": None, "recorder": True},
    "failure_plain": {"config": {"losses": [0.9, 0.7, 0.5, 0.4], "fail_at": 2}, "keep": None,
                      "score": None, "recorder": False},
    "failure_before_ckpt": {"config": {"losses": [1.0], "fail_before_ckpt": True}, "keep": None,
                            "score": None, "recorder": True},
    "nan_losses": {"config": {"losses": NAN_LOSSES}, "keep": None, "score": "loss",
                   "recorder": True},
    "custom_names": {"config": {"losses": [0.5, 0.25, 0.75],
                                "names": ["first", "second-best", "third"]},
                     "keep": None, "score": "val/acc", "recorder": False},
    # Legal but unusual: a nested RunConfig.name and nested checkpoint_dir_name values with
    # a space, a percent sign and a colon, with retention evicting one of them.
    "team-a/nested": {"config": {"losses": [0.5, 0.25, 0.75],
                                 "names": ["ckpts/epoch-0", "ckpts/epoch 1%41", "ckpts/t=2:00"]},
                      "keep": 2, "score": "loss", "recorder": True},
}


def run_job(
    name: str,
    storage_path: str,
    *,
    storage_filesystem: Any = None,
    num_workers: int = 2,
    spec: dict[str, Any] | None = None,
) -> Any:
    """Run one job; returns ``trd.fit``'s TrainResult."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    import trainresults_dagster as trd
    from trainresults_dagster.ray import RunRecorder

    spec = spec or JOBS[name]
    ckpt_cfg = CheckpointConfig(
        num_to_keep=spec["keep"],
        checkpoint_score_attribute=spec["score"],
        checkpoint_score_order="min" if spec["score"] == "loss" else "max",
    )
    trainer = DataParallelTrainer(
        train_loop,
        train_loop_config=spec["config"],
        scaling_config=ScalingConfig(num_workers=num_workers),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            checkpoint_config=ckpt_cfg,
            callbacks=[RunRecorder()] if spec["recorder"] else None,
        ),
    )
    return trd.fit(trainer)


def make_v2_runs(storage_path: str, names: list[str] | None = None) -> dict[str, str]:
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    out = {}
    for name in names or list(JOBS):
        run_job(name, storage_path)
        out[name] = os.path.join(storage_path, name)
    return out


V1_SCRIPT = r"""
import os, sys, tempfile
os.environ["RAY_TRAIN_V2_ENABLED"] = "0"
import ray, ray.train
from ray.train import Checkpoint, RunConfig, ScalingConfig, CheckpointConfig, FailureConfig
from ray.train.data_parallel_trainer import DataParallelTrainer

def loop(config):
    for epoch in range(4):
        m = {"epoch": epoch, "loss": [0.9, 0.4, 0.6, 0.5][epoch], "val": {"acc": 0.5 + epoch / 10}}
        if epoch == 1:
            ray.train.report({"epoch": epoch, "lr": 0.01})
        with tempfile.TemporaryDirectory() as d:
            open(os.path.join(d, "model.txt"), "w").write(str(epoch))
            ray.train.report(m, checkpoint=Checkpoint.from_directory(d))
        if config["fail"] and epoch == 2:
            raise ValueError(f"v1 boom at epoch {epoch}")

ray.init(address=sys.argv[2] if len(sys.argv) > 2 else None, num_cpus=None if len(sys.argv) > 2 else 2)
for name, fail in (("v1_success", False), ("v1_failure", True)):
    t = DataParallelTrainer(loop, train_loop_config={"fail": fail},
        scaling_config=ScalingConfig(num_workers=1),
        run_config=RunConfig(name=name, storage_path=sys.argv[1],
                             checkpoint_config=CheckpointConfig(num_to_keep=3)))
    try:
        t.fit()
    except Exception as exc:
        print("v1 failed as planned:", type(exc).__name__)
"""


def make_v1_runs(storage_path: str, address: str | None = None) -> dict[str, str]:
    """Run the V1 jobs in a subprocess (``RAY_TRAIN_V2_ENABLED=0`` must be set before
    ray.train is imported). Returns ``{name: trial directory}``."""
    env = dict(os.environ, RAY_TRAIN_V2_ENABLED="0")
    args = [sys.executable, "-c", V1_SCRIPT, storage_path] + ([address] if address else [])
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"V1 job failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    out = {}
    for name in ("v1_success", "v1_failure"):
        exp = os.path.join(storage_path, name)
        trials = [d for d in os.listdir(exp) if os.path.isfile(os.path.join(exp, d, "result.json"))]
        if len(trials) != 1:
            raise RuntimeError(f"expected one trial dir in {exp}, found {trials}")
        out[name] = os.path.join(exp, trials[0])
    return out
