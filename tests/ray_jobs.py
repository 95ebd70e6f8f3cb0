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
    cpus_per_worker: float = 1.0,
) -> Any:
    """Run one job; returns ``trd.fit``'s TrainResult. ``cpus_per_worker`` below 1 lets
    several jobs share the 2-CPU test Ray at once (the run layout does not depend on it)."""
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
        scaling_config=ScalingConfig(
            num_workers=num_workers, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            checkpoint_config=ckpt_cfg,
            callbacks=[RunRecorder()] if spec["recorder"] else None,
        ),
    )
    return trd.fit(trainer)


def retry_loop(config: dict[str, Any]) -> None:
    """Attempt 1 dies like a preempted worker, attempt 2 raises, attempt 3 finishes.

    The preempted-looking death is the shape Ray's health check reports for a worker on a
    reclaimed node (``WorkerHealthCheckFailedError(RayActorError(preempted=True))``), so
    ``DefaultFailurePolicy`` charges it to ``max_preemption_failures`` and retries.
    """
    import ray.train
    from ray.exceptions import RayActorError
    from ray.train.v2._internal.exceptions import WorkerHealthCheckFailedError

    with open(config["attempts_file"], "a") as fh:
        fh.write("x")
    attempt = os.path.getsize(config["attempts_file"])
    ray.train.report({"attempt": attempt, "step": 0})
    if attempt == 1:
        raise WorkerHealthCheckFailedError("node preempted (simulated)", RayActorError(preempted=True))
    if attempt == 2:
        raise ValueError("transient failure on attempt 2")
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "model.txt"), "w") as fh:
            fh.write(f"attempt={attempt}\n")
        ray.train.report({"attempt": attempt, "step": 1},
                         checkpoint=ray.train.Checkpoint.from_directory(d))


def run_retried_job(storage_path: str, name: str = "retried_env") -> Any:
    """``retry_loop`` with ``FailureConfig(max_failures=1)`` and *no* callbacks in code: the
    caller attaches RunRecorder through ``RAY_TRAIN_CALLBACKS``. Returns ``trd.fit``'s result."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    import trainresults_dagster as trd

    os.makedirs(storage_path, exist_ok=True)
    trainer = DataParallelTrainer(
        retry_loop,
        train_loop_config={"attempts_file": os.path.join(storage_path, f"{name}.attempts")},
        scaling_config=ScalingConfig(num_workers=1),
        run_config=RunConfig(name=name, storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=1)),
    )
    return trd.fit(trainer)


#: Jobs ``make_v2_runs`` runs at once. Each is mostly waiting (actor start-up, the
#: controller's polling, checkpoint uploads), so overlapping them cuts the 8 runs from
#: about 5 minutes to 3.5 on 2 cores; more than this only queues for CPU.
CONCURRENT_JOBS = 4


def make_v2_runs(storage_path: str, names: list[str] | None = None) -> dict[str, str]:
    import concurrent.futures

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    names = names or list(JOBS)
    share = 1.0 / CONCURRENT_JOBS  # the 2 workers of CONCURRENT_JOBS jobs fit in 2 CPUs
    with concurrent.futures.ThreadPoolExecutor(CONCURRENT_JOBS) as pool:
        list(pool.map(lambda n: run_job(n, storage_path, cpus_per_worker=share), names))
    return {name: os.path.join(storage_path, name) for name in names}


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
