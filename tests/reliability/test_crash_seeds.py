"""SIGKILL at seeded random points of the IO manager's ``handle_output`` (copy mode), the
registry's ``register`` and its ``promote``, on a local folder and on S3 (issue #9).

Each seed picks one kill point out of all of the operation's storage steps (counted by an
unarmed run of the same operation, see ``crash_ops.py``) and whether the step happens
before the process dies. Afterwards, read through a fresh client:

* every read API returns the state before the operation or after it, whole;
* orphans of the dead writer are removed by garbage collection, or ignored by every reader
  (hidden temp files);
* retrying the operation completes it, without a duplicate version or promotion.

CI runs a few seeds per case; ``make stress`` (``-m stress``) runs many.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pyarrow.fs as pafs
import pytest
from crash_ops import KillPoints, run
from reliability_tally import tally_fixture  # noqa: F401 - provides the tally fixture
from s3_proxy import S3Proxy

import trainresults_dagster as trd
from trainresults_dagster import storage
from trainresults_dagster.dagster._wiring import s3_settings
from trainresults_dagster.errors import PromotionConflict
from trainresults_dagster.registry import Registry
from trainresults_dagster.runs import store as result_store
from trainresults_dagster.runs.store import ResultStore

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = [(op, backend) for op in ("io", "register", "promote") for backend in ("local", "s3")]
CI_SEEDS = range(2)
STRESS_SEEDS = range(100, 130)
MODEL = "crash"

_kill_points: dict[tuple[str, str], int] = {}  # (op, backend) -> steps, from a dry run


def _params() -> list[Any]:
    ci = [pytest.param(op, backend, seed, id=f"{op}-{backend}-{seed}")
          for op, backend in CASES for seed in CI_SEEDS]
    stress = [pytest.param(op, backend, seed, id=f"{op}-{backend}-{seed}",
                           marks=pytest.mark.stress)
              for op, backend in CASES for seed in STRESS_SEEDS]
    return ci + stress


def _tree(fs: pafs.FileSystem, path: str) -> dict[str, int]:
    prefix = path.rstrip("/") + "/"
    return {i.path[len(prefix):]: i.size for i in storage.list_dir(fs, path, recursive=True)
            if i.type == pafs.FileType.File}


# --------------------------------------------------------------------------------------
# One case: its state before, the operation's spec, and the checks afterwards
# --------------------------------------------------------------------------------------


class Case:
    def __init__(self, op: str, backend: str, tmp_path: Any, request: pytest.FixtureRequest):
        self.op, self.backend = op, backend
        self.tmp = tmp_path
        if backend == "local":
            self.moto = None
            self.base = str(tmp_path / "target")
            self.fs: pafs.FileSystem = pafs.LocalFileSystem()
            self.bucket = None
        else:
            self.moto = request.getfixturevalue("moto")
            self.bucket = self.moto.new_bucket("crash")
            self.base = f"s3://{self.bucket}/target"
            self.fs = self.moto.filesystem()
        self.s3 = self.moto.s3_resource() if self.moto else None
        getattr(self, f"_prepare_{op}")(request)

    # ---------------------------------------------------------------- set-up
    def _prepare_io(self, request: pytest.FixtureRequest) -> None:
        runs = request.getfixturevalue("v2_runs" if self.moto is None else "s3_runs")
        self.before_uri, self.new_uri = runs["success"], runs["custom_names"]
        self._store_result(self.before_uri)
        self.before_version = self._store().current_version()
        self.spec = {"op": "io", "base": self.base, "source": self.new_uri}

    def _store_result(self, uri: str) -> None:
        import dagster as dg

        io = trd.RayTrainResultIOManager(base_path=self.base, s3=self.s3, checkpoints="copy")
        result = trd.TrainResult.from_path(uri, self.fs if self.moto else None)
        io.handle_output(dg.build_output_context(asset_key=dg.AssetKey(["train"])), result)

    def _checkpoint_sources(self, names: list[str]) -> list[str]:
        out = []
        for name in names:
            local = self.tmp / "sources" / name
            (local / "shards").mkdir(parents=True)
            for i in range(6):
                (local / "shards" / f"{i}.bin").write_bytes(os.urandom(20_000 + 997 * i))
            (local / "config.json").write_text(json.dumps({"name": name}))
            if self.moto is None:
                out.append(str(local))
            else:  # another bucket: the proxy counts only the registry's requests
                out.append(self.moto.upload_dir(str(local), _source_bucket(self.moto),
                                                f"{self.bucket}/{name}")[5:])
        return out

    def registry(self) -> Registry:
        return Registry.open(self.base, s3_settings(self.s3) if self.s3 is not None else None)

    def _register(self, registry: Registry, source: str, **kwargs: Any) -> trd.ModelVersion:
        checkpoint = trd.Checkpoint(source, registry.filesystem)
        return registry.register(MODEL, checkpoint, metrics={"source": source}, **kwargs)

    def _prepare_register(self, request: pytest.FixtureRequest) -> None:
        self.sources = self._checkpoint_sources(["a", "b"])
        self._register(self.registry(), self.sources[0])
        self.spec = {"op": "register", "base": self.base, "source": self.sources[1],
                     "model": MODEL}

    def _prepare_promote(self, request: pytest.FixtureRequest) -> None:
        self.sources = self._checkpoint_sources(["a", "b", "c"])
        registry = self.registry()
        for source in self.sources:
            self._register(registry, source)
        registry.promote(MODEL, 1, expected_version=None)
        registry.promote(MODEL, 2, expected_version=1)
        self.spec = {"op": "promote", "base": self.base, "model": MODEL, "version": 3,
                     "expected": 2}

    # ---------------------------------------------------------------- checks
    def check(self, tally: Any) -> str:
        """Assert a whole before-or-after state, retry, collect garbage. 'before'/'after'."""
        return getattr(self, f"_check_{self.op}")(tally)

    def _store(self) -> ResultStore:
        fs = self.fs
        resolve = (lambda uri: storage.resolve(uri, fs)) if self.moto else storage.resolve
        return ResultStore(*resolve(f"{self.base}/train"), filesystem_for=resolve)

    def _assert_whole_result(self, stored: trd.TrainResult, uri: str) -> None:
        expected = trd.TrainResult.from_path(uri, self.fs if self.moto else None)
        assert stored.uri == uri
        assert storage.dumps(stored.to_dict()["metrics"]) == storage.dumps(expected.metrics)
        assert len(stored.metrics_dataframe) == len(expected.metrics_dataframe)
        assert [c.name for c in stored.checkpoints] == [c.name for c in expected.checkpoints]
        for copy, source in zip(stored.checkpoints, expected.checkpoints, strict=True):
            assert copy.uri.startswith(f"{self.base}/train/")
            assert _tree(copy.filesystem, copy.path) == _tree(source.filesystem, source.path)

    def _version_dirs(self, store: ResultStore) -> set[str]:
        return {i.base_name for i in storage.list_dir(self.fs, store.root)
                if i.type == pafs.FileType.Directory
                and result_store.version_time(i.base_name) is not None}

    def _check_io(self, tally: Any) -> str:
        store = self._store()
        at_kill = store.current_version()
        stored = store.read()
        assert stored.uri in (self.before_uri, self.new_uri)
        self._assert_whole_result(stored, stored.uri)
        state = "after" if stored.uri == self.new_uri else "before"
        orphans = self._version_dirs(store) - {at_kill, self.before_version}
        self._store_result(self.new_uri)  # retrying completes
        current = store.current_version()
        self._assert_whole_result(store.read(), self.new_uri)
        later = time.time() + result_store.GC_MIN_AGE_SECONDS + 1
        removed = store.collect_garbage(keep={current}, now=later)
        assert orphans <= set(removed)
        tally["crash orphans removed by garbage collection"] += len(orphans)
        assert self._version_dirs(store) == {current}
        left = [i.base_name for i in storage.list_dir(self.fs, store.root)]
        hidden = [n for n in left if n.startswith(".")]
        tally["crash orphans ignored (hidden temp files)"] += len(hidden)
        assert set(left) - set(hidden) <= {current, result_store.POINTER_FILE,
                                           result_store.FAILED_DIR}
        return state

    def _assert_versions(self, registry: Registry, count: int) -> None:
        versions = registry.versions(MODEL)
        assert [v.version for v in versions] == list(range(1, count + 1))
        for v, source in zip(versions, self.sources, strict=False):
            assert v.metrics == {"source": source}
            assert _tree(registry.filesystem, v.checkpoint.path) == _tree(
                registry.filesystem, trd.Checkpoint(source, registry.filesystem).path)

    def _check_register(self, tally: Any) -> str:
        registry = self.registry()
        count = len(registry.versions(MODEL))
        assert count in (1, 2)
        self._assert_versions(registry, count)
        again = self._register(registry, self.sources[1], reuse_if_unchanged=True)
        assert again.version == 2  # a committed version is reused, not duplicated
        self._assert_versions(registry, 2)
        data = f"{registry.base}/{MODEL}/data"
        removed = registry.collect_garbage(MODEL, older_than_seconds=0)
        tally["crash orphans removed by garbage collection"] += len(removed)
        left = {i.base_name for i in storage.list_dir(registry.filesystem, data)}
        assert left == {v.checkpoint.name for v in registry.versions(MODEL)}
        if self.moto is None:
            folder = os.path.join(self.base, MODEL, "versions")
            tally["crash orphans ignored (hidden temp files)"] += sum(
                n.startswith(".") for n in os.listdir(folder))
        return "after" if count == 2 else "before"

    def _check_promote(self, tally: Any) -> str:
        registry = self.registry()
        got = registry.get(MODEL).version
        history = [(e.version, e.previous_version) for e in registry.history(MODEL)]
        assert (got, history) in ((2, [(1, None), (2, 1)]),
                                  (3, [(1, None), (2, 1), (3, 2)]))
        if got == 2:
            registry.promote(MODEL, 3, expected_version=2)
        else:
            with pytest.raises(PromotionConflict):  # done already: a re-read says so
                registry.promote(MODEL, 3, expected_version=2)
        registry.promote(MODEL, 1, expected_version=3)  # the chain continues, no gaps
        events = registry.history(MODEL)
        assert [(e.seq, e.version) for e in events] == [(1, 1), (2, 2), (3, 3), (4, 1)]
        folder = f"{registry.base}/{MODEL}/history/champion"
        names = sorted(i.base_name for i in storage.list_dir(registry.filesystem, folder))
        visible = [n for n in names if not n.startswith(".")]
        assert visible == [f"{s:010d}.json" for s in range(1, 5)]  # the chain is complete
        if self.moto is None:
            aliases = os.listdir(os.path.join(self.base, MODEL, "aliases"))
            tally["crash orphans ignored (hidden temp files)"] += sum(
                ".tmp-" in n for n in [*names, *aliases])
        return "after" if got == 3 else "before"


_source_buckets: dict[str, str] = {}


def _source_bucket(moto: Any) -> str:
    if moto.endpoint_url not in _source_buckets:
        _source_buckets[moto.endpoint_url] = moto.new_bucket("crash-src")
    return _source_buckets[moto.endpoint_url]


# --------------------------------------------------------------------------------------
# Counting kill points and killing
# --------------------------------------------------------------------------------------


class RequestKiller:
    """Proxy hook: numbers the requests to ``bucket``; at number ``k`` SIGKILLs ``pid`` and
    drops the request (``"before"``) or lets the server execute it (``"after"``)."""

    def __init__(self, bucket: str, k: int = 0, when: str = "before") -> None:
        self.pattern = re.compile(rf"^/{re.escape(bucket)}([/?]|$)")
        self.k, self.when = k, when
        self.pid: int | None = None
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, method: str, path: str, headers: Any) -> str | None:
        if not self.pattern.match(path):
            return None
        with self._lock:
            self.count += 1
            n = self.count
        if n == self.k and self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            return "reset" if self.when == "before" else "reset_after"
        return None


def _count_kill_points(op: str, backend: str, tmp_path: Any, request: Any) -> int:
    """Run the operation once, unarmed, on a case of its own; count its storage steps."""
    key = (op, backend)
    if key not in _kill_points:
        case = Case(op, backend, tmp_path / "dry-run", request)
        if backend == "local":
            points = KillPoints(case.base)
            run(case.spec, points)
            steps = points.count
        else:
            counter = RequestKiller(case.bucket)
            proxy = S3Proxy(case.moto.endpoint_url, hook=counter)
            try:
                env = case.moto.env()
                run({**case.spec, "endpoint_url": proxy.endpoint_url}, contextlib.nullcontext(),
                    env=env)
            finally:
                proxy.stop()
            steps = counter.count
        assert case.check(_Ignore()) == "after"  # the unarmed run completes
        assert steps >= 3, steps
        _kill_points[key] = steps
    return _kill_points[key]


class _Ignore(dict):
    def __missing__(self, key: str) -> int:
        return 0


def _kill(case: Case, k: int, when: str) -> subprocess.CompletedProcess:
    spec = dict(case.spec)
    env = dict(os.environ)
    killer = None
    proxy = None
    if case.backend == "local":
        spec["root"] = case.base
        spec["kill"] = {"k": k, "when": when}
    else:
        env.update(case.moto.env())
        killer = RequestKiller(case.bucket, k, when)
        proxy = S3Proxy(case.moto.endpoint_url, hook=killer)
        spec["endpoint_url"] = proxy.endpoint_url
    try:
        proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "crash_ops.py"), json.dumps(spec)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )
        if killer is not None:
            killer.pid = proc.pid
        out, err = proc.communicate(timeout=300)
    finally:
        if proxy is not None:
            proxy.stop()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize(("op", "backend", "seed"), _params())
def test_sigkill_at_a_random_point(op, backend, seed, tmp_path, request, tally):
    steps = _count_kill_points(op, backend, tmp_path, request)
    tally[f"kill points per run: {op} {backend}"] = steps
    rng = random.Random(f"{op}-{backend}-{seed}")
    k, when = rng.randint(1, steps), rng.choice(("before", "after"))
    case = Case(op, backend, tmp_path / "case", request)

    done = _kill(case, k, when)
    if done.returncode == 0:  # fewer steps this time than in the dry run: it completed
        assert json.loads(done.stdout.decode().splitlines()[-1])["done"]
        tally["crash runs that completed before their kill point"] += 1
    else:
        assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-3000:]
        tally["kills survived"] += 1
        tally[f"kills survived: {op} {backend}"] += 1

    state = case.check(tally)
    tally[f"states read after a kill: {state}"] += 1
