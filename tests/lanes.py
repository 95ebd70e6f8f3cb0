"""``make test``: the suite as two pytest sessions side by side (the lanes of ``conftest``).

Lane "ray" runs every test that drives Ray and first builds the Ray runs the others read;
lane "rest" runs everything else (niced below Ray's own workers, so Ray never starves) and
waits for those runs only when it reaches a module that reads them. The suite is mostly waiting on
processes, so two sessions use the second core a single one leaves idle. Both lanes' output
is streamed with a ``[ray]``/``[rest]`` prefix; the exit code is non-zero if either failed.

    python tests/lanes.py [pytest arguments...]   # default: tests
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

#: (lane, niceness). Ray runs its workers at nice 15: lane "rest" yields to them too.
LANES = (("ray", 0), ("rest", 19))


def _pump(lane: str, stream: object, lock: threading.Lock) -> None:
    for line in stream:  # type: ignore[attr-defined]
        with lock:
            sys.stdout.write(f"[{lane}] {line}")
            sys.stdout.flush()


def _end_group(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    """Signal the lane's process group (its emulators, servers), then wait a bounded time."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main(argv: list[str]) -> int:
    root = tempfile.mkdtemp(prefix="trainresults-test-")
    shared = {"TRAINRESULTS_TEST_SHARED_RUNS": os.path.join(root, "runs")}
    os.makedirs(shared["TRAINRESULTS_TEST_SHARED_RUNS"])
    lock = threading.Lock()
    procs: dict[str, subprocess.Popen[str]] = {}
    pumps = []
    started = time.monotonic()
    for lane, niceness in LANES:
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=20",
               f"--basetemp={os.path.join(root, lane)}", *(argv or ["tests"])]
        env = {**os.environ, **shared, "TRAINRESULTS_TEST_LANE": lane, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            bufsize=1, start_new_session=True,
            preexec_fn=(lambda n=niceness: os.nice(n)) if niceness else None,
        )
        procs[lane] = proc
        pump = threading.Thread(target=_pump, args=(lane, proc.stdout, lock), daemon=True)
        pump.start()
        pumps.append(pump)
    ended: dict[str, float] = {}
    try:
        while len(ended) < len(procs):
            for lane, proc in procs.items():
                if lane not in ended and proc.poll() is not None:
                    ended[lane] = time.monotonic() - started
                    _end_group(proc)  # what a lane killed by its timeout left behind
                    if lane == "ray":  # lane "rest" stops waiting for runs never built
                        open(os.path.join(shared["TRAINRESULTS_TEST_SHARED_RUNS"],
                                          "lane-ray.exited"), "w").close()
            time.sleep(0.5)
    except KeyboardInterrupt:
        for proc in procs.values():
            _end_group(proc, signal.SIGINT)
        raise
    for pump in pumps:
        pump.join(timeout=10)
    # pytest's 5 is "no test selected": a lane with nothing to do has not failed.
    codes = {lane: 0 if proc.returncode == 5 else proc.returncode for lane, proc in procs.items()}
    for lane, code in codes.items():
        print(f"lane {lane}: exit {code} after {ended[lane]:.0f}s")
    print(f"make test: {time.monotonic() - started:.0f}s wall for both lanes")
    failed = any(codes.values())
    if failed:
        print(f"work folders kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
