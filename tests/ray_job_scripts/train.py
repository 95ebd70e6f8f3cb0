"""A training entrypoint run as a Ray Job by tests/test_ray_jobs_cluster.py.

``python train.py MODE [PID_DIR]``; MODE is ``ok`` (4 epochs, a checkpoint each),
``raise`` (2 workers, both ranks raise at epoch 1, after one checkpoint), ``sleep`` (one
checkpoint, then sleeps for minutes: for cancellation and timeouts) or ``die`` (exits
before Ray Train starts). Each process writes its pid into PID_DIR, to check for orphans.
"""

import os
import sys
import tempfile
import time

MODE = sys.argv[1]
PID_DIR = sys.argv[2] if len(sys.argv) > 2 else ""
LOSSES = [0.9, 0.4, 0.6, 0.5]


def _pid(tag: str) -> None:
    if PID_DIR:
        with open(os.path.join(PID_DIR, f"{tag}-{os.getpid()}.pid"), "w") as fh:
            fh.write(str(os.getpid()))


def loop(config):
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    _pid(f"worker{rank}")
    for epoch, loss in enumerate(config["losses"]):
        if config["mode"] == "raise" and epoch == 1:
            raise ValueError(f"diverged at epoch {epoch} on rank {rank}")
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "model.txt"), "w") as fh:
                fh.write(f"epoch={epoch} loss={loss}\n")
            ray.train.report({"epoch": epoch, "loss": loss, "val": {"acc": 0.5 + epoch / 10}},
                             checkpoint=ray.train.Checkpoint.from_directory(d))
        if config["mode"] == "sleep":
            time.sleep(600)


def main() -> int:
    _pid("driver")
    if MODE == "die":
        print("giving up before training", file=sys.stderr)
        return 3
    from ray.train import CheckpointConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    import trainresults_dagster as trd
    from trainresults_dagster import pipes

    trainer = DataParallelTrainer(
        loop,
        train_loop_config={"losses": LOSSES, "mode": MODE},
        scaling_config=ScalingConfig(num_workers=2 if MODE == "raise" else 1),
        run_config=pipes.run_config(checkpoint_config=CheckpointConfig(
            num_to_keep=2, checkpoint_score_attribute="loss", checkpoint_score_order="min")),
    )
    result = trd.fit(trainer)
    pipes.report_result(result)
    print(f"JOB DONE error={result.error!r}")
    return 1 if result.error is not None else 0


if __name__ == "__main__":
    sys.exit(main())
