"""``make bench --quick`` as a smoke test: every benchmark runs end to end (no thresholds:
shared CI machines are too noisy for timing goals; ``make bench`` checks those).

In ``make stress``, not ``make test``: it starts its own Ray, moto server and both cloud
emulators and took 180 s of the suite on 2 cores; ``make bench`` runs the same code."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.join(os.path.dirname(__file__), "..")


@pytest.mark.stress
def test_quick_benchmarks_run_and_print_the_table():
    out = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick"], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    table = [ln for ln in out.stdout.splitlines() if ln.startswith("| ")]
    names = [ln.split("|")[1].strip() for ln in table[1:]]
    for expected in ("read S3 requests", "requests per run read, GCS", "requests per run read, Azure",
                     "load_input S3 requests", "register",
                     "batch inference throughput", "sensor tick", "recorder per report",
                     "S3 PUTs for", "read sweep S3 requests", "import trainresults_dagster"):
        assert any(n.startswith(expected) for n in names), (expected, names)
    assert not any("| error |" in ln for ln in table), out.stderr[-3000:]
