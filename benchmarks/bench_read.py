"""1. Read: ``TrainResult.from_path`` vs ``ray.train.Result.from_path`` on the same V2 run.

Time ratio at 10/100/1,000 checkpoints on local disk, and S3 requests per read on a moto
server (ours should be constant in the checkpoint count; Ray stats every checkpoint).
"""

from __future__ import annotations

import logging
import tempfile
from typing import Any

import pyarrow.fs as pafs

from .support import best_time, count_requests, moto_server, row
from .synthetic import write_v2_run


def run(quick: bool = False) -> list[dict[str, Any]]:
    import ray.train

    import trainresults_dagster as trd
    from trainresults_dagster.dagster._wiring import s3_settings

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    sizes = [10, 100] if quick else [10, 100, 1000]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        local = pafs.LocalFileSystem()
        for n in sizes:
            path = write_v2_run(local, f"{tmp}/run{n}", n)
            theirs = ray.train.Result.from_path(path)
            ours = trd.TrainResult.from_path(path)
            if [c.path for c, _ in ours.best_checkpoints] != [c.path for c, _ in theirs.best_checkpoints]:
                raise RuntimeError(f"synthetic run {path}: disagreement with Ray")
            t_ours = best_time(lambda p=path: trd.TrainResult.from_path(p), repeat=3 if quick else 7)
            t_ray = best_time(lambda p=path: ray.train.Result.from_path(p), repeat=3 if quick else 7)
            goal = "<= 0.5x" if n == 1000 else "report"
            rows.append(row(f"read local, {n} checkpoints", t_ours, t_ray, goal,
                            t_ours / t_ray <= 0.5 if n == 1000 else None,
                            anchor_name="Ray from_path"))
        server = moto_server(tmp)
        try:
            fs = s3_settings(server.s3_resource()).filesystem()
            server.client().create_bucket(Bucket="bench")
            counts = {}
            for n in sizes:
                path = write_v2_run(fs, f"bench/run{n}", n, payload=b"w")
                _, ours_req = count_requests(server, lambda p=path: trd.TrainResult.from_path(p, fs))
                _, ray_req = count_requests(
                    server, lambda p=path: ray.train.Result.from_path(p, storage_filesystem=fs))
                counts[n] = ours_req
                rows.append(row(f"read S3 requests, {n} checkpoints", ours_req, ray_req,
                                "constant in n", None, unit="req", anchor_name="Ray from_path"))
            flat = max(counts.values()) <= min(counts.values()) + 2
            rows[-1]["pass"] = "pass" if flat else "FAIL"
        finally:
            server.stop()
    return rows
