"""A real Ray cluster in separate processes (``ray start --head --block``), reached only
through its dashboard's Job Submission API, like a production cluster.

The pytest process may hold a local ``ray.init`` session (``ray_session``) at the same
time: every port and the temp dir are this cluster's own, and ``stop()`` ends only the
processes of this cluster (``ray stop`` would end every Ray on the machine).
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_range(size: int) -> tuple[int, int]:
    for _ in range(50):
        low = random.randrange(21000, 39000)
        ok = True
        for port in (low, low + size // 2, low + size - 1):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
        if ok:
            return low, low + size - 1
    raise RuntimeError("no free port range for Ray workers")


def pids_under(marker: str) -> list[int]:
    """Live processes whose command line or environment mentions ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read()
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read()
        except OSError:
            continue
        if marker.encode() in cmd or marker.encode() in env:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


class RayCluster:
    def __init__(self, env: dict[str, str], num_cpus: int = 2) -> None:
        # Ray's unix sockets live under the temp dir: keep the path short.
        self.temp_dir = tempfile.mkdtemp(prefix="trdc-", dir="/tmp")
        self.marker = f"TRD_TEST_CLUSTER={os.path.basename(self.temp_dir)}"
        self.dashboard_port = _free_port()
        low, high = _free_range(200)
        bin_dir = os.path.dirname(sys.executable)
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        # Ray 2.60 turns on token auth by default; the cluster gets its own token (not the
        # user's ~/.ray/auth_token), and every client must send it.
        self.token = secrets.token_hex(32)
        self.env = {**base, **env, "PATH": f"{bin_dir}:{base.get('PATH', '')}",
                    "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                    "TRD_TEST_CLUSTER": os.path.basename(self.temp_dir),
                    "RAY_USAGE_STATS_ENABLED": "0"}
        cmd = [
            os.path.join(bin_dir, "ray"), "start", "--head", "--block",
            f"--num-cpus={num_cpus}", f"--port={_free_port()}",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={_free_port()}",
            f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            f"--node-manager-port={_free_port()}", f"--object-manager-port={_free_port()}",
            f"--min-worker-port={low}", f"--max-worker-port={high}",
            f"--temp-dir={self.temp_dir}", "--include-dashboard=true", "--disable-usage-stats",
        ]
        self.log = open(Path(self.temp_dir) / "ray-start.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self._wait_ready()

    def _wait_ready(self, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {Path(self.log.name).read_text()[-3000:]}")
            try:
                # the job agent comes up after the dashboard head
                request = urllib.request.Request(f"{self.address}/api/jobs/", headers=self.headers)
                with urllib.request.urlopen(request, timeout=5):
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"Ray dashboard not up at {self.address}")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address, headers=self.headers)

    def stop(self) -> None:
        """End this cluster's processes only: those carrying its marker (environment)."""
        # The cluster is thrown away: SIGTERM to all of it at once (`ray start --block`
        # alone takes ~10 s to take its children down one by one), SIGKILL to stragglers.
        name = os.path.basename(self.temp_dir)
        deadline = time.time() + 15
        while (left := pids_under(name)) and time.time() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL if time.time() > deadline - 12 else signal.SIGTERM)
                except OSError:
                    pass
            time.sleep(0.5)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.log.close()
