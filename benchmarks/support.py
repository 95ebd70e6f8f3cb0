"""Shared benchmark plumbing: timing, the moto S3 server with request counting, table rows."""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def moto_server(root: str) -> Any:
    """The tests' moto S3 server (a subprocess over HTTP); ``.request_log()`` counts requests."""
    from pathlib import Path

    from conftest import MotoS3  # tests/conftest.py

    return MotoS3(Path(root))


def count_requests(server: Any, fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn`` and return its value and the number of HTTP requests moto served meanwhile."""
    before = len(server.request_log())
    value = fn()
    time.sleep(0.2)  # let moto flush its log line for the last request
    return value, len(server.request_log()) - before


def best_time(fn: Callable[[], Any], *, repeat: int = 5) -> float:
    """Median wall time of ``repeat`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def row(benchmark: str, ours: float, anchor: float, goal: str, passed: bool | None,
        unit: str = "s", anchor_name: str = "") -> dict[str, Any]:
    ratio = ours / anchor if anchor else float("nan")
    return {
        "benchmark": benchmark,
        "ours": f"{ours:.4g} {unit}".strip(),
        "anchor": f"{anchor:.4g} {unit}{(' (' + anchor_name + ')') if anchor_name else ''}".strip(),
        "ratio": f"{ratio:.3f}",
        "goal": goal,
        "pass": "n/a" if passed is None else ("pass" if passed else "FAIL"),
    }
