"""``make bench``: run every benchmark, print one Markdown table, write benchmarks/RESULTS.md.

    python -m benchmarks.run [--quick] [--only read,import,...]

Benchmarks compare ratios measured side by side in one run (absolute times on shared
2-core machines mean little) and count storage requests where that is the real cost.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import platform
import sys
import traceback

SUITE = [
    ("read", "benchmarks.bench_read"),
    ("clouds", "benchmarks.bench_clouds"),
    ("load", "benchmarks.bench_io_manager"),
    ("copy", "benchmarks.bench_registry"),
    ("inference", "benchmarks.bench_inference"),
    ("sensor", "benchmarks.bench_sensor"),
    ("recorder", "benchmarks.bench_recorder"),
    ("tune", "benchmarks.bench_tune"),
    ("import", "benchmarks.bench_import"),
]
COLUMNS = ["benchmark", "ours", "anchor", "ratio", "goal", "pass"]


def machine() -> str:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores, {mem:.0f} GiB, {platform.machine()}, Python {platform.python_version()}"


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, no thresholds (CI smoke)")
    parser.add_argument("--only", default="", help="comma-separated subset: " + ",".join(n for n, _ in SUITE))
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "RESULTS.md"))
    args = parser.parse_args(argv)
    wanted = {w for w in args.only.split(",") if w}
    rows: list[dict] = []
    for name, module in SUITE:
        if wanted and name not in wanted:
            continue
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            mod = importlib.import_module(module)
            got = mod.run(quick=args.quick)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        except Exception:  # noqa: BLE001 - one broken benchmark must not hide the others
            traceback.print_exc()
            got = [{"benchmark": name, "ours": "error", "anchor": "", "ratio": "", "goal": "",
                    "pass": "FAIL"}]
        if args.quick:
            for r in got:
                r["pass"] = "n/a (quick)"
        rows += got
    stamp = datetime.date.today().isoformat()
    text = f"Measured {stamp} on {machine()}{' (quick)' if args.quick else ''}.\n\n{table(rows)}\n"
    print(text)
    if not args.quick and not wanted:
        with open(args.out, "w") as fh:
            fh.write(text)
        update_readme(text)
    return 0


def update_readme(text: str) -> None:
    """Paste the table between the README's BENCH markers."""
    readme = os.path.join(os.path.dirname(__file__), "..", "README.md")
    with open(readme) as fh:
        content = fh.read()
    start, end = "<!-- BENCH:START -->", "<!-- BENCH:END -->"
    if start not in content or end not in content:
        return
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(readme, "w") as fh:
        fh.write(f"{head}{start}\n{text}{end}{tail}")


if __name__ == "__main__":
    sys.exit(main())
