"""Sweeps: ``TrainResultGrid.from_path`` vs Ray's ``ResultGrid(ExperimentAnalysis(path))`` on the
same synthetic Tune sweep (``synthetic_tune``: Ray's own classes wrote it).

Time ratio for 100 trials on local disk, and storage requests on a moto S3 server: ours
should grow by a constant per trial and not at all with the checkpoints each trial kept.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from typing import Any

from .support import best_time, count_requests, moto_server, row
from .synthetic_tune import write_tune_sweep


def _ray_load(path: str, fs: Any = None) -> Any:
    from ray.tune import ExperimentAnalysis, ResultGrid

    return ResultGrid(ExperimentAnalysis(path, storage_filesystem=fs))


def _check(ours: Any, theirs: Any) -> None:
    """The benchmark compares like with like: same trials, same latest checkpoints."""
    mine = {t.path: t for t in ours}
    for result in theirs:
        trial = mine[result.path]
        if trial.checkpoint is None or trial.checkpoint.path != result.checkpoint.path:
            raise RuntimeError(f"synthetic sweep: disagreement with Ray on {result.path}")
    if ours.num_errors != theirs.num_errors:
        raise RuntimeError("synthetic sweep: error counts differ from Ray's")


def run(quick: bool = False) -> list[dict[str, Any]]:
    import trainresults_dagster as trd

    logging.getLogger("ray.tune").setLevel(logging.ERROR)
    logging.getLogger("ray.train").setLevel(logging.ERROR)
    big = 20 if quick else 100
    small = big // 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "local")
        path = write_tune_sweep(local, "sweep", big)
        _check(trd.TrainResultGrid.from_path(path), _ray_load(path))
        t_ours = best_time(lambda: trd.TrainResultGrid.from_path(path), repeat=3 if quick else 7)
        t_ray = best_time(lambda: _ray_load(path), repeat=3 if quick else 7)
        rows.append(row(f"read sweep local, {big} trials", t_ours, t_ray, "<= 0.5x",
                        t_ours / t_ray <= 0.5, anchor_name="Ray ExperimentAnalysis+ResultGrid"))

        sweeps = {
            "few": write_tune_sweep(local, "few", small),
            "many": write_tune_sweep(local, "kept2", big),
            "kept10": write_tune_sweep(local, "kept10", big, num_to_keep=None),
        }
        server = moto_server(tmp)
        try:
            fs = server.filesystem()
            server.client().create_bucket(Bucket="bench")
            uris = {k: server.upload_dir(p, "bench", k) for k, p in sweeps.items()}
            counts: dict[str, int] = {}
            for key, uri in uris.items():
                _, counts[key] = count_requests(
                    server, lambda u=uri: trd.TrainResultGrid.from_path(u, fs))
            _, ray_kept2 = count_requests(
                server, lambda: _ray_load(uris["many"].removeprefix("s3://"), fs))
            _check(trd.TrainResultGrid.from_path(uris["many"], fs),
                   _ray_load(uris["many"].removeprefix("s3://"), fs))
            rows.append(row(f"read sweep S3 requests, {big} trials x 2 checkpoints",
                            counts["many"], ray_kept2, "report", None, unit="req",
                            anchor_name="Ray ExperimentAnalysis+ResultGrid"))
            rows.append(row(f"read sweep S3 requests, {big} trials x 10 vs x 2 checkpoints",
                            counts["kept10"], counts["many"], "== 1.0x (constant in checkpoints)",
                            counts["kept10"] == counts["many"], unit="req",
                            anchor_name="same sweep, 2 checkpoints"))
            per_trial = (counts["many"] - counts["few"]) / (big - small)
            rows.append(row(f"read sweep S3 requests per trial ({small} -> {big} trials)",
                            per_trial, 5.0, "<= 5 req/trial (LIST + result.json + error.txt)",
                            per_trial <= 5.0, unit="req", anchor_name="budget"))

            def timed(fn: Any) -> float:
                start = time.perf_counter()
                fn()
                return time.perf_counter() - start

            s_ours = min(timed(lambda: trd.TrainResultGrid.from_path(uris["many"], fs))
                         for _ in range(3))
            s_ray = min(timed(lambda: _ray_load(uris["many"].removeprefix("s3://"), fs))
                        for _ in range(3))
            rows.append(row(f"read sweep S3 time, {big} trials", s_ours, s_ray, "info", None,
                            anchor_name="Ray ExperimentAnalysis+ResultGrid"))
        finally:
            server.stop()
    return rows
