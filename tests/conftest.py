"""Shared, session-scoped real parts: one local Ray, one moto S3 server over HTTP, and the
Ray Train runs every test reads (run once per session, ~2 minutes on 2 cores).

Fixtures (all session-scoped unless noted):

* ``ray_session`` -> the address of a local Ray (``ray.init(num_cpus=2)``, dashboard on).
* ``moto`` -> ``MotoS3``: ``endpoint_url``, ``access_key``, ``secret_key``, ``region``,
  ``client()`` (boto3), ``filesystem()`` (pyarrow), ``s3_resource()`` (dagster-aws),
  ``new_bucket(prefix)``, ``upload_dir(local, bucket, key)``, ``request_log()``.
* ``v2_runs`` -> ``{job name: local run path}`` for every job in ``tests/ray_jobs.JOBS``.
* ``retried_env_run`` -> path of a V2 run whose RunRecorder came only from
  ``RAY_TRAIN_CALLBACKS``, with a preempted-looking failure and a worker failure that Ray
  both retried (``FailureConfig(max_failures=1)``), then finished.
* ``v1_runs`` -> ``{"v1_success": trial dir, "v1_failure": trial dir}`` (RAY_TRAIN_V2_ENABLED=0).
* ``s3_runs`` -> ``{job name: "s3://runs/<name>"}``: the V2 and V1 runs uploaded to moto.
* ``s3_direct_run`` -> ``"s3://direct/success_s3"``: a Ray run that wrote straight to moto.
* ``tune_sweep`` -> ``TuneSweep``: ``path`` of a real 4-trial Ray Tune sweep
  (``tests/tune_jobs``: one trial raises, one reports NaN, checkpoints with retention) and
  ``live``, the ``ResultGrid`` ``Tuner.fit()`` returned (None when reused from the cache).
* ``s3_sweep`` -> ``"s3://sweeps/sweep"``: the same sweep uploaded to moto.
* ``gcs_emulator`` -> ``GcsEmulator`` (gcp-storage-emulator; ignores preconditions) and
  ``azurite`` -> ``Azurite`` (Azure's emulator; honours them), see ``tests/cloud_emulators``.
* ``gcs_runs`` / ``azure_runs`` -> ``{job name: "gs://..."}`` / ``{job name: "abfs://..."}``:
  the V2 runs uploaded to each emulator.
* ``gcs_direct_run`` / ``azure_direct_run`` -> the URI of a Ray run that wrote straight to
  the emulator (its pyarrow filesystem as ``storage_filesystem``), with the ``TrainResult``
  Ray's ``fit`` returned.
* ``copy_run`` (function-scoped) -> ``copy_run(name) -> path``: a private, writable copy of a
  V2 run under ``tmp_path`` (for tests that damage runs).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import cloud_emulators  # noqa: E402
import ray_jobs  # noqa: E402
import tune_jobs  # noqa: E402

SECRET_KEY = "sEcReT-sentinel-9f8e7d6c5b4a"  # scanned for in tests: must never be written
ACCESS_KEY = "AKIATRAINRESULTSTEST"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoS3:
    """A moto S3 server in a subprocess, reached over HTTP like real S3."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self.region = "us-east-1"
        self.log_path = root / "moto.log"
        moto_bin = Path(sys.executable).with_name("moto_server")
        self._log = open(self.log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(moto_bin), "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.endpoint_url, timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"moto server did not start on {self.endpoint_url}")

    def env(self) -> dict[str, str]:
        """Environment for subprocesses (and pyarrow's default S3 client) to reach moto."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
        )

    def s3_resource(self) -> Any:
        from dagster_aws.s3 import S3Resource

        return S3Resource(
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def filesystem(self) -> Any:
        from trainresults_dagster.dagster._wiring import s3_settings

        return s3_settings(self.s3_resource()).filesystem()

    def new_bucket(self, prefix: str = "b") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}".lower()
        self.client().create_bucket(Bucket=name)
        return name

    def upload_dir(self, local: str, bucket: str, key: str) -> str:
        client = self.client()
        for root, _dirs, files in os.walk(local):
            for f in files:
                full = os.path.join(root, f)
                rel = os.path.relpath(full, local).replace(os.sep, "/")
                client.upload_file(full, bucket, f"{key}/{rel}")
        return f"s3://{bucket}/{key}"

    def request_log(self) -> list[str]:
        """Request lines moto has logged so far (``"GET /bucket/key HTTP/1.1"`` ...)."""
        self._log.flush()
        return [ln for ln in self.log_path.read_text().splitlines() if "HTTP/1.1" in ln]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    server = MotoS3(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_session(moto: MotoS3) -> Iterator[str]:
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ctx = ray.init(
        num_cpus=2,
        include_dashboard=True,
        dashboard_port=free_port(),
        log_to_driver=False,
        configure_logging=False,
        # The cluster's own identity for S3, as a real cluster has (instance role, env):
        # Ray workers reach the moto server by the default AWS chain.
        runtime_env={"env_vars": moto.env()},
    )
    yield ctx.address_info["address"]
    ray.shutdown()


# --------------------------------------------------------------------------------------
# Lanes: `make test` runs the suite as two pytest sessions side by side on one machine.
# The suite mostly waits (actor start-up, polling, subprocesses), so one session leaves a
# core idle. Lane "ray" gets every test that drives Ray (marked ``ray_live``, by its
# fixtures or explicitly) and builds the shared Ray runs first thing; lane "rest" gets the
# others, which only read those runs, and never starts Ray. Without a lane (plain
# `pytest tests`) one session runs everything, as before.
# --------------------------------------------------------------------------------------

LANE = os.environ.get("TRAINRESULTS_TEST_LANE") or None
if LANE not in (None, "ray", "rest"):
    raise pytest.UsageError(f"TRAINRESULTS_TEST_LANE must be 'ray' or 'rest', got {LANE!r}")
#: Fixtures whose tests drive Ray (a session, a cluster, a Ray run written by the test).
RAY_LIVE_FIXTURES = {"ray_session", "cluster", "demo_runs", "s3_direct_run", "gcs_direct_run",
                     "azure_direct_run"}
#: Fixtures (direct or through ``getfixturevalue``) that read the runs lane "ray" builds:
#: lane "rest" runs the modules that use them last, when the runs are most likely there.
RUN_FIXTURES = {"v2_runs", "v1_runs", "retried_env_run", "tune_sweep", "s3_runs", "s3_sweep",
                "gcs_runs", "azure_runs", "copy_run", "backend", "seed", "cloud"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if RAY_LIVE_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.ray_live)
    if LANE is None:
        return
    keep = [i for i in items if (i.get_closest_marker("ray_live") is not None) == (LANE == "ray")]
    kept = set(keep)
    dropped = [i for i in items if i not in kept]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    if LANE == "rest":  # whole modules stay together (their module fixtures set up once)
        reads_runs = {i.module.__name__ for i in keep if RUN_FIXTURES & set(i.fixturenames)}
        keep.sort(key=lambda i: i.module.__name__ in reads_runs)  # stable: file order kept
    items[:] = keep


@pytest.fixture(autouse=True)
def _lane_rest_never_starts_ray(request: pytest.FixtureRequest) -> Iterator[None]:
    """Keep the lanes honest: a test in lane "rest" that left a Ray running (Ray Data and
    Serve start one on first use) belongs in lane "ray": mark it ``ray_live``."""
    yield
    ray = sys.modules.get("ray")
    if LANE == "rest" and ray is not None and ray.is_initialized():
        ray.shutdown()
        pytest.fail(f"{request.node.nodeid} started Ray in lane 'rest': mark it "
                    "@pytest.mark.ray_live", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _lane_ray_builds_the_shared_runs(request: pytest.FixtureRequest) -> None:
    """In lane "ray", build every shared run before the first test (lane "rest" waits)."""
    if LANE != "ray":
        return
    kinds = {"v2_runs": "v2", "v1_runs": "v1", "retried_env_run": "env", "tune_sweep": "tune"}
    for done, name in enumerate(kinds):
        try:
            request.getfixturevalue(name)
        except BaseException as exc:  # lane "rest" must not wait for the kinds never built
            for kind in list(kinds.values())[done + 1:]:
                (Path(RUNS_CACHE or ".") / f"{kind}.failed").write_text(
                    f"not built: building {kinds[name]} failed first ({type(exc).__name__})")
            raise


#: Development aid (CI never sets it): reuse runs made by an earlier pytest session from
#: this folder instead of re-running Ray. ``TRAINRESULTS_TEST_SHARED_RUNS`` is the same for
#: the two lanes of `make test`. Tests must treat the runs as read-only.
RUNS_CACHE = (os.environ.get("TRAINRESULTS_TEST_RUNS_CACHE")
              or os.environ.get("TRAINRESULTS_TEST_SHARED_RUNS"))
#: Until when lane "rest" waits for the runs lane "ray" builds: one deadline from the start
#: of the session, within pytest's per-test timeout (lane "ray" builds them in about 5 min).
SHARED_RUNS_DEADLINE = time.monotonic() + 840.0
#: Written by tests/lanes.py when lane "ray" exits: whatever it did not build never comes.
LANE_RAY_EXITED = "lane-ray.exited"


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if RUNS_CACHE:
        Path(RUNS_CACHE).mkdir(parents=True, exist_ok=True)
        return Path(RUNS_CACHE)
    return tmp_path_factory.mktemp("ray_storage")


def _read_marker(marker: Path) -> dict[str, str]:
    return dict(line.split("\t", 1) for line in marker.read_text().splitlines() if line)


def _wait_for_lane_ray(root: Path, kind: str) -> dict[str, str]:
    marker, failed = root / f"{kind}.done", root / f"{kind}.failed"
    while True:  # the deadline bounds the waiting, never a marker already there
        if marker.exists():
            return _read_marker(marker)
        if failed.exists():
            raise RuntimeError(f"lane 'ray' could not build the {kind} runs: {failed.read_text()}")
        if (root / LANE_RAY_EXITED).exists() and not marker.exists():
            raise RuntimeError(f"lane 'ray' exited without building the {kind} runs (see its log)")
        if time.monotonic() > SHARED_RUNS_DEADLINE:
            raise RuntimeError(f"lane 'ray' did not build the {kind} runs in {root} in time "
                               "(is it running? see its log)")
        time.sleep(0.5)


def _cached(root: Path, kind: str, request: pytest.FixtureRequest, make: Any) -> dict[str, str]:
    if LANE == "rest":
        return _wait_for_lane_ray(root, kind)
    if not RUNS_CACHE:
        return make(request.getfixturevalue("ray_session"))
    import fcntl

    with open(root / f".{kind}.lock", "w") as lock:  # parallel pytest sessions build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _cached_locked(root, kind, request, make)


def _cached_locked(
    root: Path, kind: str, request: pytest.FixtureRequest, make: Any
) -> dict[str, str]:
    marker = root / f"{kind}.done"
    if marker.exists():
        return _read_marker(marker)
    shutil.rmtree(root / kind, ignore_errors=True)
    (root / f"{kind}.failed").unlink(missing_ok=True)
    try:
        runs = make(request.getfixturevalue("ray_session"))
    except BaseException as exc:  # tell a waiting lane "rest" at once, not at its timeout
        (root / f"{kind}.failed").write_text(f"{type(exc).__name__}: {exc}"[:2000])
        raise
    tmp = root / f".{kind}.done.tmp"
    tmp.write_text("".join(f"{k}\t{v}\n" for k, v in runs.items()))
    tmp.replace(marker)  # a reader never sees half a marker
    return runs


@pytest.fixture(scope="session")
def v2_runs(runs_root: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    return _cached(runs_root, "v2", request, lambda _a: ray_jobs.make_v2_runs(str(runs_root / "v2")))


@pytest.fixture(scope="session")
def retried_env_run(runs_root: Path, request: pytest.FixtureRequest) -> str:
    def make(_address: str) -> dict[str, str]:
        import ray.cloudpickle

        ray.cloudpickle.register_pickle_by_value(ray_jobs)
        storage = str(runs_root / "env")
        with pytest.MonkeyPatch.context() as mp:  # the only way the recorder is attached
            mp.setenv("RAY_TRAIN_CALLBACKS", "trainresults_dagster.ray.RunRecorder")
            ray_jobs.run_retried_job(storage)
        return {"retried_env": os.path.join(storage, "retried_env")}

    return _cached(runs_root, "env", request, make)["retried_env"]


@pytest.fixture(scope="session")
def v1_runs(runs_root: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    return _cached(
        runs_root, "v1", request, lambda a: ray_jobs.make_v1_runs(str(runs_root / "v1"), address=a)
    )


@pytest.fixture(scope="session")
def s3_runs(moto: MotoS3, v2_runs: dict[str, str], v1_runs: dict[str, str]) -> dict[str, str]:
    moto.client().create_bucket(Bucket="runs")
    out = {}
    for name, path in v2_runs.items():
        out[name] = moto.upload_dir(path, "runs", f"v2/{name}")
    for name, path in v1_runs.items():
        exp = os.path.dirname(path)
        moto.upload_dir(exp, "runs", f"v1/{name}")
        out[name] = f"s3://runs/v1/{name}/{os.path.basename(path)}"
    return out


@pytest.fixture(scope="session")
def s3_direct_run(moto: MotoS3, ray_session: str) -> str:
    """A Ray Train run whose ``storage_path`` is the moto bucket itself."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(ray_jobs)
    moto.client().create_bucket(Bucket="direct")
    ray_jobs.run_job(
        "success_s3",
        "direct",
        storage_filesystem=moto.filesystem(),
        spec=ray_jobs.JOBS["success"],
    )
    return "s3://direct/success_s3"


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cloud_emulators.GcsEmulator]:
    server = cloud_emulators.GcsEmulator(tmp_path_factory.mktemp("gcs"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cloud_emulators.Azurite]:
    server = cloud_emulators.Azurite(tmp_path_factory.mktemp("azurite"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def gcs_runs(gcs_emulator: cloud_emulators.GcsEmulator, v2_runs: dict[str, str]) -> dict[str, str]:
    bucket = gcs_emulator.new_bucket("runs")
    return {name: gcs_emulator.upload_dir(path, bucket, f"v2/{name}")
            for name, path in v2_runs.items()}


@pytest.fixture(scope="session")
def azure_runs(azurite: cloud_emulators.Azurite, v2_runs: dict[str, str]) -> dict[str, str]:
    container = azurite.new_container("runs")
    return {name: azurite.upload_dir(path, container, f"v2/{name}")
            for name, path in v2_runs.items()}


class DirectRun:
    """A Ray run written straight to an emulator: ``uri``, ``filesystem``, ``fitted`` (what
    ``trd.fit`` returned in the driver)."""

    def __init__(self, uri: str, filesystem: Any, fitted: Any) -> None:
        self.uri, self.filesystem, self.fitted = uri, filesystem, fitted


def _direct_run(name: str, container: str, scheme: str, filesystem: Any) -> DirectRun:
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(ray_jobs)
    # One worker: the point is the storage path (Ray writing straight to the emulator), and a
    # second worker would only add start-up time.
    fitted = ray_jobs.run_job(name, container, storage_filesystem=filesystem, num_workers=1,
                              spec=ray_jobs.JOBS["success"])
    return DirectRun(f"{scheme}://{container}/{name}", filesystem, fitted)


@pytest.fixture(scope="session")
def gcs_direct_run(gcs_emulator: cloud_emulators.GcsEmulator, ray_session: str) -> DirectRun:
    bucket = gcs_emulator.new_bucket("direct")
    return _direct_run("success_gcs", bucket, "gs", gcs_emulator.filesystem())


@pytest.fixture(scope="session")
def azure_direct_run(azurite: cloud_emulators.Azurite, ray_session: str) -> DirectRun:
    container = azurite.new_container("direct")
    return _direct_run("success_azure", container, "abfs", azurite.filesystem())


class TuneSweep:
    def __init__(self, path: str, live: Any = None) -> None:
        self.path = path
        self.live = live

    def ray_grid(self) -> Any:
        """What Ray itself gives for the folder: ``ResultGrid(ExperimentAnalysis(path))``
        (the anchor; it unpickles the state, which is ours)."""
        from ray.tune import ExperimentAnalysis, ResultGrid

        return ResultGrid(ExperimentAnalysis(self.path, default_metric="loss", default_mode="min"))


@pytest.fixture(scope="session")
def tune_sweep(runs_root: Path, request: pytest.FixtureRequest) -> TuneSweep:
    live: dict[str, Any] = {}

    def make(_address: str) -> dict[str, str]:
        storage = str(runs_root / "tune")
        live["grid"] = tune_jobs.run_sweep(storage)
        return {"sweep": os.path.join(storage, tune_jobs.NAME)}

    runs = _cached(runs_root, "tune", request, make)
    return TuneSweep(runs["sweep"], live.get("grid"))


@pytest.fixture(scope="session")
def s3_sweep(moto: MotoS3, tune_sweep: TuneSweep) -> str:
    moto.client().create_bucket(Bucket="sweeps")
    return moto.upload_dir(tune_sweep.path, "sweeps", "sweep")


@pytest.fixture
def copy_run(v2_runs: dict[str, str], tmp_path: Path) -> Any:
    def _copy(name: str) -> str:
        dst = tmp_path / f"copy-{name}-{uuid.uuid4().hex[:6]}" / name
        shutil.copytree(v2_runs[name], dst)
        return str(dst)

    return _copy
