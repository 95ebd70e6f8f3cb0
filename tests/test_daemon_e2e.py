"""End to end with the real ``dagster-daemon``: a temporary ``DAGSTER_HOME``, a code location
whose storage sensor is RUNNING by default with a 1 s interval, and a real HTTP receiver.

A failed Ray run already in storage is alerted on the first tick; a failed run that appears
later is alerted on a later tick; after a daemon restart (cursor read back from the
instance's storage) nothing is sent twice.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from alert_receiver import AlertReceiver

from trainresults_dagster.runs.record import JOURNAL_DIR
from trainresults_dagster.webhook import verify_signature

DEFS = """
import os

import dagster as dg

import trainresults_dagster as trd

failed_runs = trd.build_failed_run_sensor(
    "failed_runs",
    storage_path=os.environ["E2E_STORAGE"],
    minimum_interval_seconds=1,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
defs = dg.Definitions(
    sensors=[failed_runs],
    resources={"alert_sink": trd.WebhookAlertSink(
        url=dg.EnvVar("E2E_ALERT_URL"), secret=dg.EnvVar("E2E_ALERT_SECRET"))},
)
"""


class Daemon:
    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.log_path = workdir / f"daemon-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115
        daemon = Path(sys.executable).with_name("dagster-daemon")
        self.proc = subprocess.Popen(
            [str(daemon), "run", "-w", str(workdir / "workspace.yaml")],
            cwd=workdir, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its code server is in the same group: stop both
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_for_ticks(self, count: int, deadline: float) -> None:
        while self.log().count("Checking for new runs for sensor: failed_runs") < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"daemon did not tick {count} times:\n{self.log()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


def add_failed_run(storage: Path, src: str, name: str, when: float) -> None:
    """Run folder first, journal entry last, as RunRecorder writes them."""
    shutil.copytree(src, storage / name)
    entry = {"run_name": name, "error_type": "WorkerGroupError", "message": "boom", "time": when}
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(when)) + f".{int(when % 1 * 1e6):06d}Z"
    tmp = storage / JOURNAL_DIR / f".{name}.tmp"
    tmp.write_text(json.dumps(entry))
    tmp.rename(storage / JOURNAL_DIR / f"{stamp}-{name}.json")


@pytest.mark.timeout(180)
def test_daemon_alerts_each_failed_run_once(v2_runs, tmp_path):
    storage = tmp_path / "ray_storage"
    (storage / JOURNAL_DIR).mkdir(parents=True)
    add_failed_run(storage, v2_runs["failure"], "old-failure", time.time() - 60)
    shutil.copytree(v2_runs["success"], storage / "a-success")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    (tmp_path / "defs.py").write_text(DEFS)
    (tmp_path / "workspace.yaml").write_text(textwrap.dedent("""
        load_from:
          - python_file:
              relative_path: defs.py
              location_name: e2e
    """))
    receiver = AlertReceiver()
    env = dict(os.environ, DAGSTER_HOME=str(home), E2E_STORAGE=str(storage),
               # Bytecode in a private cache, so the restarted daemon and its code server
               # do not recompile dagster (the venv itself is left untouched).
               PYTHONPYCACHEPREFIX=os.path.join(tempfile.gettempdir(), "trainresults-pycache"),
               E2E_ALERT_URL=receiver.url, E2E_ALERT_SECRET="e2e-signing-secret",
               PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH")])))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    deadline = time.monotonic() + 150
    daemon = Daemon(tmp_path, env)
    try:
        (first,) = receiver.wait_for(1, timeout=deadline - time.monotonic())
        assert first.json["run_name"] == "old-failure"

        add_failed_run(storage, v2_runs["failure"], "new-failure", time.time())
        alerts = receiver.wait_for(2, timeout=deadline - time.monotonic())
        assert alerts[1].json["run_uri"] == str(storage / "new-failure")
        assert alerts[1].json["worker_failures"]["1"].endswith("boom at epoch 2 on rank 1")
        for alert in alerts:
            assert verify_signature("e2e-signing-secret", alert.body,
                                    alert.headers["X-Signature-SHA256"])

        # Restart: the new daemon reads the cursor from DAGSTER_HOME and ticks a few times.
        daemon.stop()
        daemon = Daemon(tmp_path, env)
        daemon.wait_for_ticks(2, deadline)
        assert len(receiver.requests) == 2, [r.json["run_name"] for r in receiver.requests]
        assert "Traceback" not in daemon.log()
    finally:
        daemon.stop()
        receiver.stop()
