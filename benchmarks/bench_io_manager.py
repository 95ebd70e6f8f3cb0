"""2. IO manager: ``RayTrainResultIOManager`` load cost vs checkpoint count, and a full
handle_output + load_input round trip vs Dagster's pickling ``FilesystemIOManager``.

* ``load_input`` in reference mode reads a pointer and a manifest: its S3 request count
  must not grow from 10 to 1,000 checkpoints (moto server over HTTP, requests counted from
  its log), and its time should stay nearly flat (only the manifest's size grows).
* Round trip on local disk with the same ``ray.train.Result`` (synthetic runs in Ray's
  exact V2 layout, validated by ``ray.train.Result.from_path``): ours reads the run folder,
  writes Parquet + JSON and commits a pointer; the anchor pickles the object.
"""

from __future__ import annotations

import logging
import tempfile
from typing import Any

import pyarrow.fs as pafs

from .support import best_time, count_requests, moto_server, row
from .synthetic import write_v2_run

SIZES = (10, 1000)


def _contexts(key: str) -> tuple[Any, Any]:
    import dagster as dg

    out = dg.build_output_context(asset_key=dg.AssetKey(key), name="result")
    inp = dg.build_input_context(asset_key=dg.AssetKey(key), upstream_output=out, name="train")
    return out, inp


def _round_trip(manager: Any, obj: Any, key: str) -> Any:
    out, inp = _contexts(key)
    manager.handle_output(out, obj)
    return manager.load_input(inp)


def run(quick: bool = False) -> list[dict[str, Any]]:
    import ray.train
    from dagster._core.storage.fs_io_manager import PickledObjectFilesystemIOManager

    import trainresults_dagster as trd

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    repeat = 3 if quick else 7
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        local = pafs.LocalFileSystem()
        results = {}
        for n in SIZES:
            path = write_v2_run(local, f"{tmp}/runs/run{n}", n)
            results[n] = ray.train.Result.from_path(path)  # Ray itself accepts the layout
            if len(results[n].best_checkpoints) != n:
                raise RuntimeError(f"synthetic run {path}: Ray sees {len(results[n].best_checkpoints)}")

        # --- load_input on S3 (reference mode): requests and time, 10 vs 1,000 checkpoints
        server = moto_server(tmp)
        try:
            server.client().create_bucket(Bucket="bench")
            manager = trd.RayTrainResultIOManager(base_path="s3://bench/io", s3=server.s3_resource())
            requests, times = {}, {}
            for n in SIZES:
                out, inp = _contexts(f"train{n}")
                manager.handle_output(out, results[n])
                loaded, requests[n] = count_requests(server, lambda i=inp: manager.load_input(i))
                if len(loaded.checkpoints) != n:
                    raise RuntimeError(f"loaded {len(loaded.checkpoints)} checkpoints, expected {n}")
                times[n] = best_time(lambda i=inp: manager.load_input(i), repeat=repeat)
            small, large = SIZES
            rows.append(row(f"load_input S3 requests, {large} vs {small} checkpoints",
                            requests[large], requests[small], "<= 1.0x (constant)",
                            requests[large] <= requests[small], unit="req",
                            anchor_name=f"{small} checkpoints"))
            rows.append(row(f"load_input S3 time, {large} vs {small} checkpoints",
                            times[large], times[small], "<= 3x (manifest grows, requests don't)",
                            times[large] <= 3 * times[small],
                            anchor_name=f"{small} checkpoints"))
        finally:
            server.stop()

        # --- handle_output + load_input vs Dagster's pickling FilesystemIOManager
        ours_manager = trd.RayTrainResultIOManager(base_path=f"{tmp}/ours")
        pickler = PickledObjectFilesystemIOManager(base_dir=f"{tmp}/pickle")
        for n in SIZES:
            ours = best_time(lambda r=results[n]: _round_trip(ours_manager, r, "t"), repeat=repeat)
            anchor = best_time(lambda r=results[n]: _round_trip(pickler, r, "t"), repeat=repeat)
            rows.append(row(f"handle_output+load_input local, {n} checkpoints", ours, anchor,
                            "<= 3x", ours <= 3 * anchor,
                            anchor_name="FilesystemIOManager (pickle)"))
    return rows


if __name__ == "__main__":
    for r in run(quick=True):
        print(r)
