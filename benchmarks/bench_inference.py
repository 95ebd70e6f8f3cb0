"""4. Batch inference (local engine): throughput and memory.

* Throughput: ``run_batch_inference(engine="local")`` vs a hand-written loop with the same
  predictor and batch size (``pq.ParquetFile.iter_batches`` -> pandas -> predictor ->
  ``pq.ParquetWriter``), on the same single-file input. Goal: ours >= 0.9x the loop's
  rows/s. Ours also counts rows up front, checks every batch, and commits atomically.
* Memory: peak RSS (``VmHWM``) of a fresh process running ours on 1x and on 10x the rows
  (same row-group size). Goal: the 10x peak <= 1.2x the 1x peak. The growth over the
  process's footprint after imports is reported too, since imports dominate the peak.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .support import row

FEATURES = 8
ROW_GROUP = 65_536
BATCH = 4096
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class LinearPredictor:
    """``y = features @ w + b`` with ``w``/``b`` read from the checkpoint's ``model.json``."""

    def __init__(self, checkpoint_dir: str) -> None:
        with open(os.path.join(checkpoint_dir, "model.json")) as fh:
            model = json.load(fh)
        self.w = np.asarray(model["w"], dtype=np.float64)
        self.b = float(model["b"])
        self.columns = [f"f{i}" for i in range(FEATURES)]

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        y = batch[self.columns].to_numpy() @ self.w + self.b
        return pd.DataFrame({"id": batch["id"].to_numpy(), "y": y})


def write_input(path: str, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with pq.ParquetWriter(path, _schema()) as writer:
        for start in range(0, rows, ROW_GROUP):
            n = min(ROW_GROUP, rows - start)
            cols = {"id": np.arange(start, start + n)}
            cols.update({f"f{i}": rng.random(n) for i in range(FEATURES)})
            writer.write_table(pa.table(cols, schema=_schema()), row_group_size=ROW_GROUP)


def _schema() -> pa.Schema:
    return pa.schema([("id", pa.int64())] + [(f"f{i}", pa.float64()) for i in range(FEATURES)])


def write_checkpoint(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "model.json"), "w") as fh:
        json.dump({"w": list(np.linspace(-1, 1, FEATURES)), "b": 0.5}, fh)
    return path


def anchor_loop(checkpoint_dir: str, input_path: str, output_path: str) -> int:
    """The hand-written baseline: what a user writes without the library."""
    predictor = LinearPredictor(checkpoint_dir)
    rows = 0
    writer = None
    for batch in pq.ParquetFile(input_path).iter_batches(batch_size=BATCH):
        table = pa.Table.from_pandas(predictor(batch.to_pandas()), preserve_index=False)
        if writer is None:
            writer = pq.ParquetWriter(output_path, table.schema)
        writer.write_table(table)
        rows += batch.num_rows
    if writer is not None:
        writer.close()
    return rows


def ours(checkpoint_dir: str, input_path: str, output_path: str) -> int:
    import trainresults_dagster as trd

    summary = trd.run_batch_inference(
        trd.Checkpoint(checkpoint_dir), LinearPredictor, input_path, output_path,
        batch_size=BATCH, progress_interval_seconds=3600,
    )
    return summary.rows


def _peak_rss_child(checkpoint_dir: str, input_path: str, output_path: str) -> None:
    """Run in a fresh process: print ``{"baseline": kB, "peak": kB}`` (VmRSS after imports,
    VmHWM at the end)."""
    import trainresults_dagster  # noqa: F401 - imported before the baseline is taken

    baseline = _status_kb("VmRSS")
    ours(checkpoint_dir, input_path, output_path)
    print(json.dumps({"baseline": baseline, "peak": _status_kb("VmHWM")}))


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure_rss(checkpoint_dir: str, input_path: str, output_path: str) -> dict[str, int]:
    code = (
        "import sys; from benchmarks.bench_inference import _peak_rss_child; "
        "_peak_rss_child(*sys.argv[1:])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, checkpoint_dir, input_path, output_path],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict[str, Any]]:
    rows_throughput = 300_000 if quick else 2_000_000
    rows_1x = 100_000 if quick else 400_000
    repeat = 2 if quick else 5
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_checkpoint(os.path.join(tmp, "checkpoint"))
        data = os.path.join(tmp, "input.parquet")
        write_input(data, rows_throughput)

        # Interleaved, so load from other processes hits both sides alike.
        ours_t, anchor_t = [], []
        for i in range(repeat + 1):
            for fn, times in ((ours, ours_t), (anchor_loop, anchor_t)):
                out = os.path.join(tmp, f"out-{fn.__name__}-{i}")
                start = time.perf_counter()
                n = fn(ckpt, data, out if fn is ours else out + ".parquet")
                elapsed = time.perf_counter() - start
                if n != rows_throughput:
                    raise RuntimeError(f"{fn.__name__} wrote {n} rows, expected {rows_throughput}")
                if i:  # the first round warms the page cache and imports
                    times.append(elapsed)
        ours_rate = rows_throughput / statistics.median(ours_t)
        anchor_rate = rows_throughput / statistics.median(anchor_t)
        results.append(row(
            f"batch inference throughput, {rows_throughput:,} rows (local engine)",
            ours_rate, anchor_rate, ">= 0.9x", ours_rate / anchor_rate >= 0.9,
            unit="rows/s", anchor_name="iter_batches + ParquetWriter loop",
        ))

        small, large = os.path.join(tmp, "x1.parquet"), os.path.join(tmp, "x10.parquet")
        write_input(small, rows_1x)
        write_input(large, rows_1x * 10)
        one = _measure_rss(ckpt, small, os.path.join(tmp, "rss1"))
        ten = _measure_rss(ckpt, large, os.path.join(tmp, "rss10"))
        results.append(row(
            f"batch inference peak RSS, {rows_1x * 10:,} vs {rows_1x:,} rows",
            ten["peak"] / 1024, one["peak"] / 1024, "<= 1.2x", ten["peak"] <= 1.2 * one["peak"],
            unit="MiB", anchor_name="same job at 1x rows",
        ))
        grow_one = max(one["peak"] - one["baseline"], 1)
        grow_ten = max(ten["peak"] - ten["baseline"], 1)
        results.append(row(
            "batch inference RSS growth over imports, 10x vs 1x rows",
            grow_ten / 1024, grow_one / 1024, "n/a (informational)", None,
            unit="MiB", anchor_name="same job at 1x rows",
        ))
    return results


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(r)
