"""The IO manager, the registry and the JSON IO manager behind a faulty S3 (issue #9).

A proxy in front of the moto server answers a seeded fraction of requests with 503
SlowDown, 500, a connection reset, a slow response, or executes them and then resets the
connection so the answer is lost (``reset_after``). Every operation must either succeed
(through retries, in bounded time) or fail with a clear error, and what a clean client then
reads is whole: the state before the operation or after it, never between. Retrying a
failed operation completes it without duplicates. With the endpoint down every operation
fails quickly with an error naming where, and writes nothing.

The lost-answer cases are also tested deterministically: a conditional PUT that succeeded
but whose answer was lost is retried by boto3 into 412 PreconditionFailed; the registry
must recognise its own write instead of taking another version number or reporting a
conflict for its own promotion.
"""

# No "from __future__ import annotations": Dagster reads the real annotations of the assets.
import json
import time
from typing import Any

import dagster as dg
import pyarrow.fs as pafs
import pytest
from conftest import SECRET_KEY
from dagster_aws.s3 import S3Resource
from pydantic import Field
from reliability_tally import tally_fixture  # noqa: F401 - provides the tally fixture
from s3_proxy import ALL_FAULTS, S3Proxy, conditional_put

import trainresults_dagster as trd
from trainresults_dagster import storage
from trainresults_dagster.dagster._wiring import s3_settings
from trainresults_dagster.dagster.json_io_manager import decode
from trainresults_dagster.errors import StorageError
from trainresults_dagster.registry import Registry

RUNS = ("success", "custom_names", "nan_losses")
#: Bounded total time for one operation through the faulty proxy (retries included).
OPERATION_SECONDS = 90
#: (seed, fraction of requests faulted). CI runs one seed per component; ``make stress``
#: runs many, up to half of all requests faulted. (The retries absorb even that; the
#: ``*_step_that_keeps_failing`` tests cover operations that do fail.)
STRESS_SEEDS = [(seed, rate) for seed in range(100, 106) for rate in (0.25, 0.5)]


def _seeds(ci: list[tuple[int, float]]) -> list[Any]:
    return [*ci, *(pytest.param(s, r, marks=pytest.mark.stress) for s, r in STRESS_SEEDS)]


def _resource(moto: Any, endpoint: str, **kwargs: Any) -> S3Resource:
    return S3Resource(endpoint_url=endpoint, region_name=moto.region,
                      aws_access_key_id=moto.access_key,
                      aws_secret_access_key=moto.secret_key, **kwargs)


def _tree(fs: pafs.FileSystem, path: str) -> dict[str, int]:
    prefix = path.rstrip("/") + "/"
    return {i.path[len(prefix):]: i.size for i in storage.list_dir(fs, path, recursive=True)
            if i.type == pafs.FileType.File}


def _bucket_objects(moto: Any, bucket: str) -> dict[str, bytes]:
    client = moto.client()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def _messages(exc: BaseException) -> str:
    """Every message in an exception chain (Dagster wraps the IO manager's error)."""
    seen, parts, cur = set(), [], exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        parts.append(f"{type(cur).__name__}: {cur}")
        cur = cur.__cause__ or cur.__context__
    return "\n".join(parts)


def _failure_text(result: dg.ExecuteInProcessResult) -> str:
    parts = []
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data is not None:
            error = event.step_failure_data.error
            while error is not None:
                parts.append(f"{error.cls_name}: {error.message}")
                error = error.cause
    return "\n".join(parts)


def _faults(proxy: S3Proxy) -> int:
    return sum(proxy.stats["faults"].values())


# --------------------------------------------------------------------------------------
# IO manager (copy mode) and JSON IO manager through faults
# --------------------------------------------------------------------------------------


class RunChoice(dg.Config):
    run_uri: str = Field(description="the Ray Train run to return")


def _io_assets(fs: pafs.FileSystem) -> list[dg.AssetsDefinition]:
    @dg.asset(name="train")
    def train(config: RunChoice) -> trd.TrainResult:
        return trd.TrainResult.from_path(config.run_uri, fs)

    @dg.asset(io_manager_key="json")
    def summary(train: trd.TrainResult) -> dict:
        return {"uri": train.uri, "checkpoints": [c.uri for c in train.checkpoints],
                "rows": len(train.metrics_dataframe)}

    return [train, summary]


def _materialize_train(io: Any, fs: pafs.FileSystem, run_uri: str) -> dg.ExecuteInProcessResult:
    json_io = trd.JsonIOManager(base_path=io.base_path + "-json", s3=io.s3)
    return dg.materialize(
        _io_assets(fs), resources={"io_manager": io, "json": json_io}, selection=["train"],
        run_config={"ops": {"train": {"config": {"run_uri": run_uri}}}}, raise_on_error=False,
    )


def _load_summary(io: Any) -> tuple[dg.ExecuteInProcessResult, dict | None]:
    """Load ``train`` through ``io`` (load_input) and store its summary with the JSON IO
    manager on the same endpoint."""
    json_io = trd.JsonIOManager(base_path=io.base_path + "-json", s3=io.s3)
    result = dg.materialize(_io_assets(pafs.LocalFileSystem()),
                            resources={"io_manager": io, "json": json_io},
                            selection=["summary"], raise_on_error=False)
    return result, result.output_for_node("summary") if result.success else None


def _committed(moto: Any, base: str) -> trd.TrainResult | None:
    from trainresults_dagster.runs.store import ResultStore

    fs = moto.filesystem()
    store = ResultStore(*storage.resolve(f"{base}/train", fs),
                        filesystem_for=lambda uri: storage.resolve(uri, fs))
    return store.read() if store.current_version() else None


def _assert_whole(moto: Any, stored: trd.TrainResult, run_uri: str, base: str) -> None:
    """``stored`` is exactly the run at ``run_uri``, with complete checkpoint copies."""
    fs = moto.filesystem()
    expected = trd.TrainResult.from_path(run_uri, fs)
    assert stored.uri == run_uri
    assert storage.dumps(stored.to_dict()["metrics"]) == storage.dumps(expected.metrics)
    assert len(stored.metrics_dataframe) == len(expected.metrics_dataframe)
    assert [c.name for c in stored.checkpoints] == [c.name for c in expected.checkpoints]
    for copy, source in zip(stored.checkpoints, expected.checkpoints, strict=True):
        assert copy.uri.startswith(f"{base}/train/")  # a copy, not the original
        assert _tree(fs, copy.path) == _tree(fs, source.path) != {}


@pytest.mark.parametrize(("seed", "rate"), _seeds([(1, 0.2)]))
def test_io_manager_copy_mode_and_load_through_faults(moto, s3_runs, seed, rate, tally):
    bucket = moto.new_bucket("iofault")
    base = f"s3://{bucket}/io"
    clean_io = trd.RayTrainResultIOManager(base_path=base, s3=moto.s3_resource(),
                                           checkpoints="copy")
    assert _materialize_train(clean_io, moto.filesystem(), s3_runs["success"]).success
    previous = s3_runs["success"]

    proxy = S3Proxy(moto.endpoint_url, fault_rate=rate, faults=ALL_FAULTS, seed=seed,
                    slow_seconds=0.05)
    try:
        faulty = _resource(moto, proxy.endpoint_url)
        io = trd.RayTrainResultIOManager(base_path=base, s3=faulty, checkpoints="copy")
        fs = s3_settings(faulty).filesystem()
        for name in RUNS:
            run_uri = s3_runs[name]
            start = time.monotonic()
            outcome = _materialize_train(io, fs, run_uri)
            assert time.monotonic() - start < OPERATION_SECONDS
            stored = _committed(moto, base)
            if outcome.success:
                tally["io manager writes through faults: succeeded"] += 1
                _assert_whole(moto, stored, run_uri, base)
                previous = run_uri
            else:
                tally["io manager writes through faults: failed cleanly"] += 1
                text = _failure_text(outcome)
                assert "s3://" in text or "127.0.0.1" in text, text
                assert SECRET_KEY not in text
                # Nothing between: the previous result, or this one if only its answer was
                # lost; whole either way.
                assert stored.uri in (previous, run_uri)
                _assert_whole(moto, stored, stored.uri, base)
                previous = stored.uri

            start = time.monotonic()
            loaded, summary = _load_summary(io)
            assert time.monotonic() - start < OPERATION_SECONDS
            if loaded.success:
                tally["io manager loads through faults: succeeded"] += 1
                assert summary == {"uri": previous,
                                   "checkpoints": [c.uri for c in stored.checkpoints],
                                   "rows": len(stored.metrics_dataframe)}
                # The JSON IO manager's value reads back whole through the clean endpoint.
                raw = _bucket_objects(moto, bucket)["io-json/summary.json"]
                assert decode(json.loads(raw)) == summary
            else:
                tally["io manager loads through faults: failed cleanly"] += 1
                text = _failure_text(loaded)
                assert bucket in text or "127.0.0.1" in text, text
                assert SECRET_KEY not in text
        assert _faults(proxy) > 0
        tally["faults injected"] += _faults(proxy)
    finally:
        proxy.stop()
    # Without the faults, the next materialisation works as usual.
    assert _materialize_train(clean_io, moto.filesystem(), s3_runs["custom_names"]).success
    _assert_whole(moto, _committed(moto, base), s3_runs["custom_names"], base)


# Every attempt at one step fails (500 InternalError), or executes and loses its answer.
@pytest.mark.parametrize(("step", "fault"), [
    ("/checkpoints/", "internal"),
    ("/metrics.parquet", "internal"),
    ("/manifest.json", "internal"),
    ("/CURRENT.json", "internal"),
    ("/CURRENT.json", "reset_after"),
])
def test_io_manager_step_that_keeps_failing(moto, s3_runs, monkeypatch, step, fault, tally):
    monkeypatch.setattr(storage, "RETRY_ATTEMPTS", 2)  # fail fast: the outcome is the point
    bucket = moto.new_bucket("iostep")
    base = f"s3://{bucket}/io"
    clean_io = trd.RayTrainResultIOManager(base_path=base, s3=moto.s3_resource(),
                                           checkpoints="copy")
    assert _materialize_train(clean_io, moto.filesystem(), s3_runs["success"]).success

    def hook(method: str, path: str, headers: Any) -> str | None:
        writes = method in ("PUT", "POST") and path.startswith(f"/{bucket}/")
        return fault if writes and step in path.split("?")[0] else None

    proxy = S3Proxy(moto.endpoint_url, hook=hook)
    try:
        faulty = _resource(moto, proxy.endpoint_url, max_attempts=2)
        io = trd.RayTrainResultIOManager(base_path=base, s3=faulty, checkpoints="copy")
        new = s3_runs["custom_names"]
        outcome = _materialize_train(io, s3_settings(faulty).filesystem(), new)
    finally:
        proxy.stop()
    assert proxy.stats["faults"][fault] >= 2
    tally["faults injected"] += _faults(proxy)
    assert not outcome.success
    text = _failure_text(outcome)
    assert f"{bucket}/io/train" in text and step.strip("/") in text, text
    assert SECRET_KEY not in text
    stored = _committed(moto, base)
    # Lost answers to the pointer's PUT: the new version is committed although the step
    # failed; otherwise the previous one stays. Whole either way.
    assert stored.uri == (new if fault == "reset_after" else s3_runs["success"])
    _assert_whole(moto, stored, stored.uri, base)
    tally["io manager writes through faults: failed cleanly"] += 1
    # Retrying completes.
    assert _materialize_train(clean_io, moto.filesystem(), new).success
    _assert_whole(moto, _committed(moto, base), new, base)


@pytest.mark.parametrize(("seed", "rate"), _seeds([(5, 0.3)]))
def test_json_io_manager_through_faults(moto, seed, rate, tally):
    bucket = moto.new_bucket("jsonfault")
    proxy = S3Proxy(moto.endpoint_url, fault_rate=rate, faults=ALL_FAULTS, seed=seed,
                    slow_seconds=0.05)
    try:
        json_io = trd.JsonIOManager(base_path=f"s3://{bucket}/values",
                                    s3=_resource(moto, proxy.endpoint_url))
        stored_last = None
        for i in range(5):
            value = {"round": i, "payload": "x" * (i * 500), "nested": {"ok": True}}

            @dg.asset(name="value", io_manager_key="json")
            def produce() -> dict:
                return value  # noqa: B023 - materialised in this iteration

            @dg.asset(io_manager_key="json")
            def consume(value: dict) -> int:
                return value["round"]

            start = time.monotonic()
            result = dg.materialize([produce, consume], resources={"json": json_io},
                                    raise_on_error=False)
            assert time.monotonic() - start < OPERATION_SECONDS
            objects = _bucket_objects(moto, bucket)
            raw = objects.get("values/value.json")
            current = decode(json.loads(raw)) if raw else None
            if result.success:
                tally["json io manager through faults: succeeded"] += 1
                assert current == value and result.output_for_node("consume") == i
                assert decode(json.loads(objects["values/consume.json"])) == i
                stored_last = value
            else:
                tally["json io manager through faults: failed cleanly"] += 1
                text = _failure_text(result)
                assert bucket in text or "127.0.0.1" in text, text
                assert SECRET_KEY not in text
                assert current in (stored_last, value)  # whole: before or after
                stored_last = current
        assert _faults(proxy) > 0
        tally["faults injected"] += _faults(proxy)
    finally:
        proxy.stop()


# --------------------------------------------------------------------------------------
# Registry through faults
# --------------------------------------------------------------------------------------


def _sources(moto: Any, bucket: str, tmp_path: Any, n: int) -> list[str]:
    out = []
    for i in range(n):
        local = tmp_path / f"src{i}"
        (local / "sub").mkdir(parents=True)
        (local / "weights.bin").write_bytes(bytes([i]) * (1000 + 37 * i))
        (local / "sub" / "config.json").write_text(json.dumps({"i": i}))
        out.append(moto.upload_dir(str(local), bucket, f"src/{i}")[5:])
    return out


def _retry(fn: Any, attempts: int = 6) -> Any:
    for attempt in range(attempts):
        try:
            return fn()
        except (StorageError, OSError):
            if attempt == attempts - 1:
                raise
    return None


def _check_registry(clean: Registry, model: str, sources: dict[int, str],
                    promoted: list[int]) -> None:
    """Versions are 1..n, one per source (no duplicates), each a complete copy; the history
    is exactly the promotions made, as a chain."""
    versions = clean.versions(model)
    assert [v.version for v in versions] == list(range(1, len(versions) + 1))
    assert [v.lineage["source_checkpoint_uri"] for v in versions] == [
        f"s3://{sources[v.version]}" for v in versions]
    for v in versions:
        assert _tree(clean.filesystem, v.checkpoint.path) == _tree(
            clean.filesystem, sources[v.version]) != {}
    history = clean.history(model)
    assert [e.version for e in history] == promoted
    assert [e.seq for e in history] == list(range(1, len(history) + 1))
    assert [e.previous_version for e in history] == [None, *promoted][:len(promoted)]
    got = clean.get(model)
    assert (got.version if got else None) == (promoted[-1] if promoted else None)


@pytest.mark.parametrize(("seed", "rate"), _seeds([(3, 0.25)]))
def test_registry_through_faults(moto, tmp_path, seed, rate, tally):
    bucket = moto.new_bucket("regfault")
    base = f"s3://{bucket}/reg"
    src = _sources(moto, bucket, tmp_path, 4)
    clean = Registry.open(base, s3_settings(moto.s3_resource()))
    proxy = S3Proxy(moto.endpoint_url, fault_rate=rate, faults=ALL_FAULTS, seed=seed,
                    slow_seconds=0.05)
    model = "clf"
    try:
        registry = trd.CheckpointRegistry(base_path=base, s3=_resource(moto, proxy.endpoint_url))
        fs = registry.registry.filesystem
        sources: dict[int, str] = {}
        promoted: list[int] = []
        for i, path in enumerate(src):
            count = len(clean.versions(model))
            start = time.monotonic()
            try:
                version = registry.register(model, trd.Checkpoint(path, fs),
                                            metrics={"loss": 1.0 / (i + 1)})
                tally["registry ops through faults: succeeded"] += 1
            except (StorageError, OSError) as exc:
                tally["registry ops through faults: failed cleanly"] += 1
                assert bucket in str(exc) and SECRET_KEY not in _messages(exc)
                # Nothing half-visible: no new version, or a complete one; a retry that
                # asks for reuse completes without a second copy.
                assert len(clean.versions(model)) in (count, count + 1)
                version = _retry(lambda p=path, i=i: registry.register(
                    model, trd.Checkpoint(p, fs), metrics={"loss": 1.0 / (i + 1)},
                    reuse_if_unchanged=True))
            assert time.monotonic() - start < OPERATION_SECONDS
            sources[version.version] = path
            _check_registry(clean, model, sources, promoted)

            before = promoted[-1] if promoted else None
            try:
                # A single promoter: a PromotionConflict here would be a lost answer taken
                # for a lost race.
                registry.promote(model, version.version, expected_version=before,
                                 reason=f"round {i}")
                tally["registry ops through faults: succeeded"] += 1
            except (StorageError, OSError) as exc:
                tally["registry ops through faults: failed cleanly"] += 1
                assert bucket in str(exc) and SECRET_KEY not in _messages(exc)
                now = clean.get(model)
                assert (now.version if now else None) in (before, version.version)
                if now is None or now.version != version.version:
                    _retry(lambda v=version.version, b=before, i=i: registry.promote(
                        model, v, expected_version=b, reason=f"round {i}"))
            promoted.append(version.version)
            _check_registry(clean, model, sources, promoted)

            for read in (lambda: registry.get(model), lambda: registry.history(model),
                         lambda: registry.versions(model)):
                try:
                    got = read()
                    tally["registry ops through faults: succeeded"] += 1
                except (StorageError, OSError) as exc:
                    tally["registry ops through faults: failed cleanly"] += 1
                    assert bucket in str(exc) and SECRET_KEY not in _messages(exc)
                    continue
                if isinstance(got, trd.ModelVersion):
                    assert got.version == promoted[-1]
                elif got and isinstance(got[0], trd.ModelVersion):
                    assert [v.version for v in got] == sorted(sources)
                else:
                    assert [e.version for e in got] == promoted
        assert _faults(proxy) > 0
        tally["faults injected"] += _faults(proxy)
    finally:
        proxy.stop()


# Every attempt at one kind of registry write fails with 500 InternalError.
@pytest.mark.parametrize("step", ["/data/", "/versions/", "/aliases/", "/history/"])
def test_registry_step_that_keeps_failing(moto, tmp_path, monkeypatch, step, tally):
    monkeypatch.setattr(storage, "RETRY_ATTEMPTS", 2)  # fail fast: the outcome is the point
    bucket = moto.new_bucket("regstep")
    base = f"s3://{bucket}/reg"
    first, second = _sources(moto, bucket, tmp_path, 2)
    clean = Registry.open(base, s3_settings(moto.s3_resource()))
    clean.register("m", trd.Checkpoint(first, clean.filesystem), metrics={"i": 0})
    clean.promote("m", 1, expected_version=None)

    def hook(method: str, path: str, headers: Any) -> str | None:
        writes = method in ("PUT", "POST") and path.startswith(f"/{bucket}/reg/")
        return "internal" if writes and step in path.split("?")[0] else None

    proxy = S3Proxy(moto.endpoint_url, hook=hook)
    try:
        reg = Registry.open(base, s3_settings(_resource(moto, proxy.endpoint_url, max_attempts=2)))
        outcome: dict[str, Any] = {}
        for op, call in (
            ("register", lambda: reg.register("m", trd.Checkpoint(second, reg.filesystem),
                                              metrics={"i": 1})),
            ("promote", lambda: reg.promote("m", 2, expected_version=1, reason="two")),
        ):
            if op == "promote" and isinstance(outcome["register"], Exception):
                break  # nothing to promote
            try:
                outcome[op] = call()
            except (StorageError, OSError) as exc:
                text = _messages(exc)
                assert bucket in text and step.strip("/") in text, text
                assert SECRET_KEY not in text
                outcome[op] = exc
                tally["registry ops through faults: failed cleanly"] += 1
    finally:
        proxy.stop()
    tally["faults injected"] += _faults(proxy)
    assert _faults(proxy) >= 2
    versions = [v.version for v in clean.versions("m")]
    history = [e.version for e in clean.history("m")]
    if step in ("/data/", "/versions/"):
        # Nothing committed: no version 2, nothing to promote; a retry completes.
        assert isinstance(outcome["register"], StorageError) and versions == [1]
        assert history == [1]
        done = clean.register("m", trd.Checkpoint(second, clean.filesystem), metrics={"i": 1})
        assert done.version == 2
        orphans = clean.collect_garbage("m", older_than_seconds=0)
        # A register killed before its version record leaves its data folder and the folder's
        # file manifest (guardrails) behind: both are collected.
        assert len(orphans) == (2 if step == "/versions/" else 0)
        tally["crash orphans removed by garbage collection"] += len(orphans)
    elif step == "/aliases/":
        # Registered, but the alias did not move and the history has no trace of a move.
        assert versions == [1, 2] and isinstance(outcome["promote"], StorageError)
        assert history == [1] and clean.get("m").version == 1
    else:
        # The alias moved; its history copy failed, which promote tolerates: history()
        # reads the event from the alias, and the next move writes the missing copy.
        assert versions == [1, 2] and outcome["promote"].version == 2
        assert history == [1, 2] and clean.get("m").version == 2
        clean.promote("m", 1, expected_version=2)
        assert [e.version for e in clean.history("m")] == [1, 2, 1]
        names = [i.base_name for i in storage.list_dir(clean.filesystem,
                                                       f"{clean.base}/m/history/champion")]
        assert sorted(names) == [f"{n:010d}.json" for n in (1, 2, 3)]


def _registry_via(moto: Any, base: str, proxy: S3Proxy) -> Registry:
    return Registry.open(base, s3_settings(_resource(moto, proxy.endpoint_url)))


def test_lost_answers_to_conditional_writes_are_recognised(moto, tmp_path, tally):
    """Half of the registry's conditional PUTs execute and lose their answer: every register
    still takes exactly one version number, every promotion succeeds once."""
    bucket = moto.new_bucket("lost")
    base = f"s3://{bucket}/reg"
    src = _sources(moto, bucket, tmp_path, 4)
    proxy = S3Proxy(moto.endpoint_url, fault_rate=0.5, faults=("reset_after",),
                    match=conditional_put, seed=9)
    clean = Registry.open(base, s3_settings(moto.s3_resource()))
    try:
        reg = _registry_via(moto, base, proxy)
        sources, promoted = {}, []
        for i, path in enumerate(src):
            version = reg.register("m", trd.Checkpoint(path, reg.filesystem), metrics={"i": i})
            sources[version.version] = path
            reg.promote("m", version.version, expected_version=promoted[-1] if promoted else None)
            promoted.append(version.version)
            reg.promote("m", version.version, alias="unchecked")
        _check_registry(clean, "m", sources, promoted)
        assert [e.version for e in clean.history("m", "unchecked")] == promoted
        assert proxy.stats["faults"]["reset_after"] >= 10
        tally["faults injected"] += _faults(proxy)
    finally:
        proxy.stop()


@pytest.mark.parametrize(("workers", "rounds"), [
    (4, 3), pytest.param(8, 15, marks=pytest.mark.stress)])
def test_racing_registrars_through_lost_answers(moto, tmp_path, request, workers, rounds,
                                                tally):
    """Processes race register + compare-and-set promote + unchecked promote (as in
    test_registry_races.py) while a third of their conditional PUTs execute and lose their
    answer: still unique versions, one winner per round, a history of exactly the winners."""
    from test_registry_races import _check_race, _race, _spec

    spec = _spec("s3", tmp_path, request)
    proxy = S3Proxy(moto.endpoint_url, fault_rate=0.3, faults=("reset_after",),
                    match=conditional_put, seed=workers * 1000 + rounds)
    try:
        outs = _race({**spec, "s3": {**spec["s3"], "endpoint_url": proxy.endpoint_url}},
                     workers, rounds, tmp_path)
    finally:
        proxy.stop()
    _check_race(spec, outs, workers, rounds)
    assert proxy.stats["faults"]["reset_after"] > 0
    tally["faults injected"] += _faults(proxy)
    tally["races run (register + CAS + unchecked promote rounds x processes)"] += (
        workers * rounds)


@pytest.mark.parametrize("expected", ["checked", "unchecked"])
def test_own_promotion_superseded_before_the_retry_is_not_a_conflict(moto, tmp_path,
                                                                     expected, tally):
    """A's compare-and-set lands but its answer is lost; before boto3's retry, B moves the
    alias on from A's event. A's retry gets 412 and the alias holds B's event: A must report
    success (its promotion is in the history), not a conflict, and not promote again."""
    bucket = moto.new_bucket("superseded")
    base = f"s3://{bucket}/reg"
    src = _sources(moto, bucket, tmp_path, 3)
    b = Registry.open(base, s3_settings(moto.s3_resource()))
    for i, path in enumerate(src):
        b.register("m", trd.Checkpoint(path, b.filesystem), metrics={"i": i})
    b.promote("m", 1, expected_version=None, reason="first")
    alias_puts = []

    def hook(method: str, path: str, headers: Any) -> str | None:
        if method == "PUT" and "/aliases/" in path and headers.get("If-Match"):
            alias_puts.append(path)
            if len(alias_puts) == 1:
                return "reset_after"
            if len(alias_puts) == 2:  # A's retry: B moves on first
                b.promote("m", 3, expected_version=2, reason="B")
        return None

    proxy = S3Proxy(moto.endpoint_url, hook=hook)
    try:
        a = _registry_via(moto, base, proxy)
        kwargs = {"expected_version": 1} if expected == "checked" else {}
        assert a.promote("m", 2, reason="A", **kwargs).version == 2
    finally:
        proxy.stop()
    assert len(alias_puts) == 2 and proxy.stats["faults"]["reset_after"] == 1
    history = b.history("m")
    assert [(e.version, e.reason) for e in history] == [(1, "first"), (2, "A"), (3, "B")]
    assert b.get("m").version == 3
    tally["faults injected"] += 1


def test_register_whose_every_answer_is_lost_still_commits_once(moto, tmp_path, tally):
    """The version record's PUT lands, then every retry is refused with 412 and every answer
    is lost until boto3 gives up: the record holds our bytes, so register succeeds with that
    one version (a failure here would make the caller register a duplicate)."""
    bucket = moto.new_bucket("alllost")
    base = f"s3://{bucket}/reg"
    (path,) = _sources(moto, bucket, tmp_path, 1)

    def hook(method: str, path: str, headers: Any) -> str | None:
        return "reset_after" if method == "PUT" and "/versions/" in path else None

    proxy = S3Proxy(moto.endpoint_url, hook=hook)
    try:
        reg = _registry_via(moto, base, proxy)
        version = reg.register("m", trd.Checkpoint(path, reg.filesystem), metrics={"a": 1})
    finally:
        proxy.stop()
    assert version.version == 1 and proxy.stats["faults"]["reset_after"] >= 2
    clean = Registry.open(base, s3_settings(moto.s3_resource()))
    _check_registry(clean, "m", {1: path}, [])
    tally["faults injected"] += _faults(proxy)


# --------------------------------------------------------------------------------------
# Endpoint down
# --------------------------------------------------------------------------------------


def _dead_endpoint(moto: Any) -> str:
    proxy = S3Proxy(moto.endpoint_url)
    proxy.stop()
    return proxy.endpoint_url


def _down_cases() -> list[str]:
    return ["io_handle_output", "io_load_input", "json_handle_output", "json_load_input",
            "register", "promote", "get", "history"]


@pytest.mark.parametrize("case", _down_cases())
def test_endpoint_down_is_a_clear_quick_error_and_writes_nothing(moto, s3_runs, tmp_path,
                                                                 case, tally):
    bucket = moto.new_bucket("down")
    base = f"s3://{bucket}"
    # Connection refused is retried by pyarrow and boto3 with backoff (7-13 s per call with
    # the default 5 attempts; test_s3_faults.py bounds that wait): 2 attempts keep this fast.
    dead = _resource(moto, _dead_endpoint(moto), max_attempts=2)
    good = moto.s3_resource()
    model = "m"
    if case in ("promote", "get", "history"):
        (path,) = _sources(moto, bucket, tmp_path, 1)
        reg = Registry.open(f"{base}/reg", s3_settings(good))
        reg.register(model, trd.Checkpoint(path, reg.filesystem), metrics={"a": 1})
    if case == "io_load_input":
        io = trd.RayTrainResultIOManager(base_path=f"{base}/io", s3=good, checkpoints="copy")
        assert _materialize_train(io, moto.filesystem(), s3_runs["success"]).success
    if case == "json_load_input":
        assert dg.materialize([_json_value(1)], resources={
            "json": trd.JsonIOManager(base_path=f"{base}/values", s3=good)}).success
    before = _bucket_objects(moto, bucket)

    start = time.monotonic()
    text = _run_down_case(case, moto, s3_runs, base, dead, model)
    elapsed = time.monotonic() - start
    assert elapsed < 60, elapsed
    assert text, f"{case} did not fail with the endpoint down"
    assert "127.0.0.1" in text or bucket in text, text  # says where
    assert SECRET_KEY not in text
    assert _bucket_objects(moto, bucket) == before  # nothing half-written
    tally["endpoint-down cases"] += 1


def _json_value(n: int) -> dg.AssetsDefinition:
    @dg.asset(name="value", io_manager_key="json")
    def value() -> dict:
        return {"n": n}

    return value


def _run_down_case(case: str, moto: Any, s3_runs: dict[str, str], base: str,
                   dead: S3Resource, model: str) -> str:
    """Run one operation against the dead endpoint; the text of the error it raised."""
    if case == "io_handle_output":
        io = trd.RayTrainResultIOManager(base_path=f"{base}/io", s3=dead, checkpoints="copy")
        result = _materialize_train(io, moto.filesystem(), s3_runs["success"])
        return "" if result.success else _failure_text(result)
    if case == "io_load_input":
        io = trd.RayTrainResultIOManager(base_path=f"{base}/io", s3=dead, checkpoints="copy")
        result, _ = _load_summary(io)
        return "" if result.success else _failure_text(result)
    if case in ("json_handle_output", "json_load_input"):
        @dg.asset(io_manager_key="json")
        def reader(value: dict) -> dict:
            return value

        assets = [_json_value(2)] + ([reader] if case == "json_load_input" else [])
        result = dg.materialize(assets, raise_on_error=False,
                                selection=["reader" if case == "json_load_input" else "value"],
                                resources={"json": trd.JsonIOManager(base_path=f"{base}/values",
                                                                     s3=dead)})
        return "" if result.success else _failure_text(result)
    registry = trd.CheckpointRegistry(base_path=f"{base}/reg", s3=dead)
    operations = {
        "register": lambda: registry.register(
            model, trd.Checkpoint(f"{base[5:]}/src/0", registry.registry.filesystem),
            metrics={"a": 2}),
        "promote": lambda: registry.promote(model, 1, expected_version=None),
        "get": lambda: registry.get(model),
        "history": lambda: registry.history(model),
    }
    try:
        operations[case]()
    except (StorageError, OSError) as exc:
        return _messages(exc)
    return ""


def test_faulty_proxy_never_forwards_a_torn_upload(moto):
    """The proxy itself: a client that dies mid-body must not produce a short object."""
    import socket

    bucket = moto.new_bucket("torn")
    proxy = S3Proxy(moto.endpoint_url)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
            sock.sendall(f"PUT /{bucket}/k HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                         "only-part".encode())
            sock.shutdown(socket.SHUT_WR)  # the client "dies" mid-body
            sock.settimeout(10)
            assert sock.recv(100) == b""  # the proxy hung up without forwarding
    finally:
        proxy.stop()
    assert _bucket_objects(moto, bucket) == {}
