"""End to end with the real ``dagster-daemon``: a temporary ``DAGSTER_HOME`` on the default
SQLite instance and on a Postgres-backed one (dagster-postgres, Debian's PostgreSQL started
by the test on a free port), a code location whose storage sensor is RUNNING by default with
a 1 s interval, and a real HTTP receiver.

Two failed Ray runs are already in storage. The receiver SIGKILLs the daemon (and its code
server) while the second alert is in flight, so the tick that sent the first one never
commits its cursor. The restarted daemon re-runs that tick: the first alert is not sent
again (its delivery was recorded in the instance), the second, never acknowledged, is.
A failed run that appears later is alerted on a later tick; after a clean restart nothing
is sent twice.
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

import dagster as dg
import pytest
from alert_receiver import AlertReceiver
from postgres_server import PostgresServer

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


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def dagster_home(request, tmp_path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = "telemetry:\n  enabled: false\n"
    if request.param == "postgres":
        url = request.getfixturevalue("postgres").create_database("e2e")
        config += f"storage:\n  postgres:\n    postgres_url: {url}\n"
    (home / "dagster.yaml").write_text(config)
    return home


@pytest.mark.timeout(240)
def test_daemon_alerts_each_failed_run_once(v2_runs, tmp_path, dagster_home):
    storage = tmp_path / "ray_storage"
    (storage / JOURNAL_DIR).mkdir(parents=True)
    add_failed_run(storage, v2_runs["failure"], "old-a", time.time() - 60)
    add_failed_run(storage, v2_runs["failure"], "old-b", time.time() - 59)
    shutil.copytree(v2_runs["success"], storage / "a-success")
    (tmp_path / "defs.py").write_text(DEFS)
    (tmp_path / "workspace.yaml").write_text(textwrap.dedent("""
        load_from:
          - python_file:
              relative_path: defs.py
              location_name: e2e
    """))
    daemons: list[Daemon] = []

    def kill_while_second_alert_is_in_flight(n: int) -> None:
        if n == 2 and len(daemons) == 1:
            os.killpg(daemons[0].proc.pid, signal.SIGKILL)

    receiver = AlertReceiver(before_answer=kill_while_second_alert_is_in_flight)
    env = dict(os.environ, DAGSTER_HOME=str(dagster_home), E2E_STORAGE=str(storage),
               # Bytecode in a private cache, so the restarted daemon and its code server
               # do not recompile dagster (the venv itself is left untouched).
               PYTHONPYCACHEPREFIX=os.path.join(tempfile.gettempdir(), "trainresults-pycache"),
               E2E_ALERT_URL=receiver.url, E2E_ALERT_SECRET="e2e-signing-secret",
               PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH")])))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    deadline = time.monotonic() + 210
    daemons.append(Daemon(tmp_path, env))
    try:
        receiver.wait_for(2, timeout=deadline - time.monotonic())
        daemons[0].proc.wait(30)  # killed mid-tick: its cursor was never committed
        assert daemons[0].proc.returncode == -signal.SIGKILL

        daemons.append(Daemon(tmp_path, env))
        alerts = receiver.wait_for(3, timeout=deadline - time.monotonic())
        assert [a.json["run_name"] for a in alerts] == ["old-a", "old-b", "old-b"]

        add_failed_run(storage, v2_runs["failure"], "new-failure", time.time())
        alerts = receiver.wait_for(4, timeout=deadline - time.monotonic())
        assert alerts[3].json["run_uri"] == str(storage / "new-failure")
        assert alerts[3].json["worker_failures"]["1"].endswith("boom at epoch 2 on rank 1")
        for alert in alerts:
            assert verify_signature("e2e-signing-secret", alert.body,
                                    alert.headers["X-Signature-SHA256"])

        # Clean restart: the new daemon reads the cursor back and ticks a few times.
        daemons[-1].stop()
        daemons.append(Daemon(tmp_path, env))
        daemons[-1].wait_for_ticks(2, deadline)
        assert [r.json["run_name"] for r in receiver.requests] == [
            "old-a", "old-b", "old-b", "new-failure"]
        for daemon in daemons[1:]:
            assert "Traceback" not in daemon.log(), daemon.log()[-3000:]
    finally:
        for daemon in daemons:
            daemon.stop()
        receiver.stop()
    # The deliveries are recorded in the instance's own storage (SQLite or Postgres).
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        delivered = instance.get_dynamic_partitions("trainresults.delivered.failed_runs")
        expect_pg = "postgres" in (dagster_home / "dagster.yaml").read_text()
        assert (type(instance.run_storage).__name__ == "PostgresRunStorage") == expect_pg
    assert len(delivered) == 3
