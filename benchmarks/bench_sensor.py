"""5. Failed-run sensor: one tick over 10,000 run folders with 10 new failures vs over 100
with 10 new (goal: time <= 2x; storage requests grow with new runs only).

Synthetic storage in the layout ``RunRecorder`` and Ray Train V2 write: old runs (1 % of
them failed, in the failure journal) with times a day back, then 10 new failed runs with a
checkpoint each. The cursor comes from a first tick over the old runs; the measured tick is
the one that finds the 10 new runs, repeated from the same cursor (a scan only reads). The
V1 discovery pass (a look at every top-level folder, every ``v1_rescan_seconds``) and the
record discovery pass (run folders by their marker, every ``records_rescan_seconds``) are
reported on their own; the steady tick is measured once the first record pass caught up. Local disk for time; the moto S3
server over HTTP for requests (every HTTP request moto served is counted).
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import shutil
import tempfile
import time
from typing import Any

import pyarrow.fs as pafs

from trainresults_dagster import storage
from trainresults_dagster.alerts.scan import scan_failed_runs
from trainresults_dagster.runs.failure import TrainingError
from trainresults_dagster.runs.record import (
    JOURNAL_DIR,
    RECORD_DIR,
    RECORD_SCHEMA_V2,
    journal_key,
    segment_name,
    writer_name,
)

from .support import best_time, count_requests, moto_server, row
from .synthetic import write_v2_run

NEW = 10
DAY = 86400.0


#: Where ``_record`` goes inside a run folder: the one segment of one writer (local layout).
RECORD_KEY = f"{RECORD_DIR}/{segment_name(writer_name(0.0, 'bench'), 0)}"


def _record(name: str, uri: str, failed: bool) -> bytes:
    """A finished run's record as RunRecorder writes it (format 2): start, failure, status."""
    lines = [{"event": "start", "schema": RECORD_SCHEMA_V2, "time": 0.0, "run_name": name,
              "run_uri": uri, "flush": {"heartbeat_seconds": 60.0}}]
    if failed:
        error = TrainingError("WorkerGroupError", "boom", "", {0: "ValueError: boom"},
                              terminal=True, attempt=1)
        lines.append({"event": "failure", "time": 1.0, "failure": error.to_dict(),
                      "kind": "worker_group", "decision": "RAISE", "state": "ShuttingDownState"})
    lines.append({"event": "status", "time": 2.0, "status": "failed" if failed else "finished"})
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def _entry(name: str, uri: str, when: float) -> tuple[str, bytes]:
    body = {"run_name": name, "run_uri": uri, "error_type": "WorkerGroupError",
            "message": "boom", "time": when}
    return f"{JOURNAL_DIR}/{journal_key(when, name)}", json.dumps(body).encode()


def _old_runs(n: int) -> list[tuple[str, bytes]]:
    """(relative key, bytes) for ``n`` old runs: a record each, 1 % failed and journaled."""
    files = []
    start = time.time() - 2 * DAY
    for i in range(n):
        name = f"run-{i:06d}"
        failed = i % 100 == 0
        files.append((f"{name}/.validate_storage_marker", b""))  # Ray V2 writes one per run
        files.append((f"{name}/{RECORD_KEY}", _record(name, name, failed)))
        if failed:
            files.append(_entry(name, name, start + i))
    return files


def _add_new_failures(fs: pafs.FileSystem, root: str) -> None:
    now = time.time()
    for i in range(NEW):
        name = f"new-{i:02d}"
        path = f"{root}/{name}"
        write_v2_run(fs, path, 2)
        storage.write_bytes_atomic(fs, f"{path}/{RECORD_KEY}", _record(name, path, True))
        key, body = _entry(name, path, now + i / 1000)
        storage.write_bytes_atomic(fs, f"{root}/{key}", body)


# ------------------------------------------------------------------------------- local


def _local(n: int, workdir: str, repeat: int) -> dict[str, Any]:
    root = os.path.join(workdir, f"local-{n}")
    for rel, data in _old_runs(n):
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), "wb") as fh:
            fh.write(data)
    old = time.time() - DAY  # old runs were last touched over the past day, a second apart
    for i, entry in enumerate(sorted(os.scandir(root), key=lambda e: e.name)):
        os.utime(entry.path, (old - i, old - i))
    first_start = time.perf_counter()
    first = scan_failed_runs(root)
    first_seconds = time.perf_counter() - first_start
    cursor = _caught_up(first.cursor, lambda c: scan_failed_runs(root, c))
    _add_new_failures(pafs.LocalFileSystem(), root)
    outcome = scan_failed_runs(root, cursor)
    assert len(outcome.found) == NEW, (len(outcome.found), outcome.problems)
    seconds = best_time(lambda: scan_failed_runs(root, cursor), repeat=repeat)
    discovery = best_time(
        lambda: scan_failed_runs(root, cursor, v1_rescan_seconds=0), repeat=repeat
    )
    records = best_time(
        lambda: scan_failed_runs(root, cursor, records_rescan_seconds=0), repeat=repeat
    )
    return {"seconds": seconds, "discovery": discovery, "first_seconds": first_seconds,
            "records": records, "stats": outcome.stats, "first_found": len(first.found)}


def _caught_up(cursor: str, scan: Any) -> str:
    """The cursor once the record pass has read every record (a first pass over many runs
    reads ``MAX_RECORD_READS`` per tick and goes on next tick): the steady state measured."""
    while json.loads(cursor).get("rec_more"):
        cursor = scan(cursor).cursor
    return cursor


# ---------------------------------------------------------------------------------- S3


def _s3(server: Any, n: int, repeat: int) -> dict[str, Any]:
    client = server.client()
    bucket = server.new_bucket(f"sensor{n}")
    files = _old_runs(n)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda f: client.put_object(Bucket=bucket, Key=f"runs/{f[0]}", Body=f[1]),
                      files))
    fs = server.filesystem()
    uri = f"s3://{bucket}/runs"

    def scan(cursor: str | None, rescan: float = 300.0) -> Any:
        return scan_failed_runs(uri, cursor, filesystem=fs, s3_client=client,
                                v1_rescan_seconds=rescan)

    first, first_requests = count_requests(server, lambda: scan(None))
    cursor = _caught_up(first.cursor, scan)
    _add_new_failures(fs, f"{bucket}/runs")
    outcome, requests = count_requests(server, lambda: scan(cursor))
    assert len(outcome.found) == NEW, (len(outcome.found), outcome.problems)
    _, discovery_requests = count_requests(server, lambda: scan(cursor, 0))
    seconds = best_time(lambda: scan(cursor), repeat=repeat)
    return {"seconds": seconds, "requests": requests, "first_requests": first_requests,
            "discovery_requests": discovery_requests, "objects": len(files)}


def run(quick: bool = False) -> list[dict[str, Any]]:
    large, small = (1_000, 100) if quick else (10_000, 100)
    repeat = 3 if quick else 7
    rows = []
    workdir = tempfile.mkdtemp(prefix="bench-sensor-")
    try:
        big, little = _local(large, workdir, repeat), _local(small, workdir, repeat)
        rows.append(row(
            f"sensor tick, {large:,} run folders + {NEW} new failed (local)",
            big["seconds"], little["seconds"], "<= 2x", big["seconds"] / little["seconds"] <= 2.0,
            anchor_name=f"{small} folders + {NEW} new",
        ))
        rows.append(row(
            f"V1 discovery pass (every 5 min), {large:,} folders (local)",
            big["discovery"], little["discovery"], "info", None,
            anchor_name=f"{small} folders",
        ))
        rows.append(row(
            f"record discovery pass (every 5 min), {large:,} run folders (local)",
            big["records"], little["records"], "info", None,
            anchor_name=f"{small} folders",
        ))
        rows.append(row(
            f"first tick over {large:,} folders ({big['first_found']} old failures alerted)",
            big["first_seconds"], little["first_seconds"], "info", None,
            anchor_name=f"{small} folders",
        ))
        server = moto_server(workdir)
        try:
            b, s = _s3(server, large, repeat), _s3(server, small, repeat)
        finally:
            server.stop()
        rows.append(row(
            f"S3 requests per tick, {large:,} folders + {NEW} new",
            b["requests"], s["requests"], "== small", b["requests"] <= s["requests"],
            unit="req", anchor_name=f"{small} folders + {NEW} new",
        ))
        # Info only: moto answers a prefix LIST in time linear in the bucket's size (8 ms
        # at 100 objects, 32 ms at 10,000, measured), so on moto the gap is the server's.
        rows.append(row(
            f"S3 tick time (moto lists in O(bucket)), {large:,} folders + {NEW} new",
            b["seconds"], s["seconds"], "info", None,
            anchor_name=f"{small} folders + {NEW} new",
        ))
        pages = math.ceil((b["objects"] + 8 * NEW) / 1000) - math.ceil((s["objects"] + 8 * NEW) / 1000)
        rows.append(row(
            f"S3 requests, tick with V1 discovery pass, {large:,} folders",
            b["discovery_requests"], s["discovery_requests"],
            "+ 1 LIST per 1,000 objects", b["discovery_requests"] <= s["discovery_requests"] + pages,
            unit="req", anchor_name=f"{small} folders",
        ))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


if __name__ == "__main__":
    for r in run(quick=True):
        print(r)
