"""6. Import: ``import trainresults_dagster`` vs ``import dagster`` in fresh processes."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import Any

from .support import row


def _time_import(module: str, repeat: int) -> float:
    times = []
    for _ in range(repeat + 1):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def run(quick: bool = False) -> list[dict[str, Any]]:
    repeat = 3 if quick else 7
    ours = _time_import("trainresults_dagster", repeat)
    anchor = _time_import("dagster", repeat)
    code = "import sys, trainresults_dagster; print(int('ray' in sys.modules))"
    ray_loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True).stdout.strip() == "1"
    r = row("import trainresults_dagster (ray absent)", ours, anchor, "<= 1.15x",
            ours / anchor <= 1.15 and not ray_loaded, anchor_name="import dagster")
    return [r]
