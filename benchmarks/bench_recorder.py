"""6. RunRecorder at training speed: the recorder's own hooks, then a real Ray Train loop.

* Cost per report at 100,000 reports vs at 1,000 (local disk, the recorder's real
  ``after_report`` hook with Ray's objects; goal <= 1.2x: constant in the run's length).
* The previous recorder's write pattern (the whole record rewritten and fsynced on every
  report, as ``trainresults_run.json`` was) at 2,000 reports, against ours at 2,000.
* Bytes written vs the final record (local: appends only; S3: segments + one compacted copy;
  goal <= 2x plus a constant per flush).
* S3 PUTs for 10,000 reports on the moto server (every PUT counted) vs the flush policy's
  bound (``FlushPolicy.max_writes``), not one per report.
* A real Ray Train V2 loop (one worker, the controller polling every 5 ms so reports are not
  throttled to one per 2 s poll) making 2,000 metric-only reports, with and without the
  recorder, runs interleaved; the time is the loop's (first report to last, measured on the
  worker), median of 3 (goal <= 1.05x). Skipped with ``--quick`` (it starts Ray).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from typing import Any

from .support import moto_server, row


def _hooks(storage_path: str, name: str, **policy: Any) -> tuple[Any, Any]:
    """A RunRecorder started on a run, as the controller starts it; returns (recorder, report)."""
    from ray.train import RunConfig

    from trainresults_dagster.ray import RunRecorder

    ctx = types.SimpleNamespace(run_id=f"bench{name}", run_config=RunConfig(
        name=name, storage_path=storage_path, storage_filesystem=policy.pop("filesystem", None)))
    recorder = RunRecorder(**policy)
    recorder.after_controller_start(ctx)
    return recorder, types.SimpleNamespace(checkpoint=None, metrics={})


def _metrics(i: int) -> list[dict[str, Any]]:
    return [{"step": i, "loss": 1.0 / (i + 1), "lr": 0.001, "val": {"acc": 0.5, "f1": 0.4}}]


def _per_report(storage_path: str, n: int) -> tuple[float, Any]:
    """Seconds per report over ``n`` reports (the flushes they cause included; the start and
    the final status, once per run, not), and the writer."""
    recorder, report = _hooks(storage_path, f"n{n}")
    start = time.perf_counter()
    for i in range(n):
        recorder.after_report(report, _metrics(i))
    elapsed = time.perf_counter() - start
    writer = recorder.writer
    recorder.after_controller_finish(types.SimpleNamespace(error=None))
    return elapsed / n, writer


def _rewrite_per_report(storage_path: str, n: int) -> float:
    """The previous recorder's pattern: the whole record rewritten (write, fsync, rename)
    after every report."""
    import trainresults_dagster.storage as storage
    from trainresults_dagster.runs.record import RunRecord, jsonable_metrics

    fs, base = storage.resolve(storage_path)
    path = f"{base}/old/trainresults_run.json"
    record = RunRecord(run_name="old", run_uri=path)
    start = time.perf_counter()
    for i in range(n):
        record.reports.append({"report_index": i, "time": time.time(),
                               "metrics": jsonable_metrics(_metrics(i)[0]),
                               "checkpoint_dir_name": None})
        record.updated_at = time.time()
        storage.write_json_atomic(fs, path, record.to_dict(), nan="keep")
    return (time.perf_counter() - start) / n


def _local_rows(quick: bool) -> list[dict[str, Any]]:
    small, large = (1000, 10_000) if quick else (1000, 100_000)
    old_n = 200 if quick else 2000
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        _per_report(tmp, 200)  # warm-up: imports, first file
        t_small = statistics.median(_per_report(tmp + f"/s{i}", small)[0] for i in range(3))
        t_large, writer = _per_report(tmp, large)
        rows.append(row(f"recorder per report, {large:,} vs {small:,} reports (local)",
                        t_large * 1e6, t_small * 1e6, "<= 1.2x", t_large / t_small <= 1.2,
                        unit="us", anchor_name=f"{small:,} reports"))
        folder = f"{tmp}/n{large}/trainresults_record"
        final = sum(os.path.getsize(f"{folder}/{f}") for f in os.listdir(folder))
        flushes = writer.stats["writes"]
        rows.append(row(f"bytes written / final record, {large:,} reports (local, {flushes} flushes)",
                        writer.stats["bytes"], final, "<= 2x + const/flush",
                        writer.stats["bytes"] <= 2 * final + 64 * flushes, unit="B",
                        anchor_name="final record size"))
        t_ours_old_n = statistics.median(_per_report(tmp + f"/o{i}", old_n)[0] for i in range(3))
        t_old = _rewrite_per_report(tmp, old_n)
        rows.append(row(f"recorder per report at {old_n:,} reports vs previous rewrite-per-report",
                        t_ours_old_n * 1e6, t_old * 1e6, "report", None, unit="us",
                        anchor_name="rewrite + fsync per report"))
    return rows


def _s3_rows(quick: bool) -> list[dict[str, Any]]:
    from trainresults_dagster.runs.record_writer import FlushPolicy

    n = 2000 if quick else 10_000
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server = moto_server(tmp)
        try:
            from trainresults_dagster.dagster._wiring import s3_settings

            fs = s3_settings(server.s3_resource()).filesystem()
            server.client().create_bucket(Bucket="rec")
            before = len(server.request_log())
            start = time.time()
            recorder, report = _hooks("rec/runs", "s3", filesystem=fs)
            for i in range(n):
                recorder.after_report(report, _metrics(i))
            writer = recorder.writer
            recorder.after_controller_finish(types.SimpleNamespace(error=None))
            elapsed = time.time() - start
            time.sleep(0.3)
            puts = [ln for ln in server.request_log()[before:]
                    if '"PUT ' in ln and "trainresults_record" in ln]
            policy = FlushPolicy()
            bound = policy.max_writes(n, elapsed, events=3)  # start, status, compacted copy
            rows.append(row(f"S3 PUTs for {n:,} reports (default policy, {elapsed:.1f} s)",
                            len(puts), bound, "<= policy bound", len(puts) <= bound, unit="req",
                            anchor_name=f"bound: {n:,}/{policy.every_reports} + time + 3"))
            objects = server.client().list_objects_v2(Bucket="rec", Prefix="runs/s3/")["Contents"]
            compacted = [o["Size"] for o in objects if o["Key"].endswith(".all.jsonl")]
            final = compacted[0] if compacted else sum(o["Size"] for o in objects)
            rows.append(row(f"S3 bytes written / final record, {n:,} reports",
                            writer.stats["bytes"], final, "<= 2x + const/flush",
                            writer.stats["bytes"] <= 2 * final + 64 * writer.stats["writes"],
                            unit="B", anchor_name="final record size"))
        finally:
            server.stop()
    return rows


RAY_LOOP = r"""
import json, os, sys, time
os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.005"
import ray, ray.train
from ray.train import RunConfig, ScalingConfig
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
from trainresults_dagster.ray import RunRecorder

def loop(config):
    start = None
    for i in range(config["n"]):
        ray.train.report({"step": i, "loss": 1.0 / (i + 1), "lr": 0.001})
        if start is None:
            start = time.perf_counter()
    return time.perf_counter() - start

storage, n, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
out = {"with": [], "without": [], "fit_with": [], "fit_without": []}
for r in range(rounds):
    for mode in (("without", "with") if r % 2 == 0 else ("with", "without")):
        callbacks = [RunRecorder()] if mode == "with" else None
        trainer = DataParallelTrainer(loop, train_loop_config={"n": n},
            scaling_config=ScalingConfig(num_workers=1),
            run_config=RunConfig(name=f"{mode}{r}", storage_path=storage, callbacks=callbacks))
        t = time.perf_counter()
        result = trainer.fit()
        out["fit_" + mode].append(time.perf_counter() - t)
        out[mode].append(result.return_value)
        if mode == "with":
            from trainresults_dagster.runs.result import TrainResult
            assert len(TrainResult.from_path(result.path).history) == n
ray.shutdown()
print("RESULT " + json.dumps(out))
"""


def _ray_rows(quick: bool) -> list[dict[str, Any]]:
    if quick:
        return [{"benchmark": "Ray Train loop, 2,000 metric-only reports, recorder on vs off",
                 "ours": "skipped (--quick starts no Ray)", "anchor": "", "ratio": "",
                 "goal": "<= 1.05x", "pass": "n/a"}]
    n, rounds = 2000, 3
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-c", RAY_LOOP, tmp, str(n), str(rounds)],
                              capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"Ray loop benchmark failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    out = json.loads(lines[-1][len("RESULT "):])
    with_t, without_t = statistics.median(out["with"]), statistics.median(out["without"])
    fit_with, fit_without = statistics.median(out["fit_with"]), statistics.median(out["fit_without"])
    return [
        row(f"Ray Train loop, {n:,} metric-only reports: loop time, recorder on vs off",
            with_t, without_t, "<= 1.05x", with_t / without_t <= 1.05,
            anchor_name="no recorder"),
        row(f"Ray Train loop, {n:,} metric-only reports: fit() wall time, recorder on vs off",
            fit_with, fit_without, "info (includes worker start-up)", None,
            anchor_name="no recorder"),
    ]


def run(quick: bool = False) -> list[dict[str, Any]]:
    import logging

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    return _local_rows(quick) + _s3_rows(quick) + _ray_rows(quick)
