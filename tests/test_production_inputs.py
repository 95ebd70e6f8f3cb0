"""Unusual but legal inputs, and bad ones, where production meets them (issue: correct where
production is). Classes of input, not examples: URIs over generated keys (hypothesis) on
local disk and the moto S3 server; layouts Ray writes (nested names, fsspec filesystems);
state that must not block or mix; bad input that must name itself."""

# No "from __future__ import annotations": Dagster reads the real annotations of the assets.
import json
import os
import string
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import trainresults_dagster as trd
import trainresults_dagster.storage as storage
from trainresults_dagster.dagster._wiring import s3_settings
from trainresults_dagster.registry import Registry
from trainresults_dagster.webhook import ReplayGuard, post_json, sign_body, verify_signature

# ------------------------------------------------------------------------------ URIs

#: Characters a key may hold that break naive URI handling: %, spaces, ?, #, :, +, =, @,
#: quotes, non-ASCII letters and symbols (S3 keys are any UTF-8; POSIX names any bytes
#: but NUL and /).
_TRICKY = "%% ?#:+=@&;,'()!$~ü日本😀"
_SEGMENT = st.text(alphabet=string.ascii_letters + string.digits + "-_." + _TRICKY,
                   min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))
KEYS = st.lists(_SEGMENT, min_size=1, max_size=4).map("/".join)

EXAMPLES = int(os.environ.get("TRAINRESULTS_HYPOTHESIS_EXAMPLES", "60"))
FAST = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(key=KEYS)
def test_local_uri_round_trip_for_any_legal_name(tmp_path_factory, key):
    root = tmp_path_factory.mktemp("uri")
    path = os.path.join(str(root), key)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Path(path).write_bytes(key.encode())
    fs = pafs.LocalFileSystem()
    uri = storage.to_uri(fs, path)
    assert storage.resolve(uri)[1] == path
    assert storage.resolve(uri, fs)[1] == path
    file_uri = "file://" + urllib_quote(path)
    assert storage.resolve(file_uri)[1] == path
    assert storage.read_bytes(*storage.resolve(uri)) == key.encode()


def urllib_quote(path: str) -> str:
    import urllib.parse

    return urllib.parse.quote(path, safe=storage.URI_SAFE)


@pytest.fixture(scope="module")
def uri_bucket(moto):
    return moto.new_bucket("uris")


@FAST
@given(key=KEYS)
def test_s3_uri_round_trip_for_any_legal_key(moto, uri_bucket, monkeypatch, key):
    """With the resource's filesystem, and without one (the default AWS chain and
    environment), a URI we wrote resolves to the key we wrote: the bytes read back."""
    for name, value in moto.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint_url)
    fs = s3_settings(moto.s3_resource()).filesystem()
    path = f"{uri_bucket}/{key}"
    storage.write_bytes_atomic(fs, path, key.encode())
    uri = storage.to_uri(fs, path)
    assert storage.resolve(uri, fs)[1] == path
    default_fs, default_path = storage.resolve(uri)
    assert default_path == path
    assert storage.read_bytes(default_fs, default_path) == key.encode()
    # What a manifest stores goes through JSON and back.
    again = json.loads(json.dumps({"uri": uri}))["uri"]
    assert trd.Checkpoint.from_uri(again, fs).path == path


@pytest.fixture(scope="module")
def cloud_places(gcs_emulator, azurite):
    return {"gs": (gcs_emulator, gcs_emulator.new_bucket("uris")),
            "abfs": (azurite, azurite.new_container("uris"))}


@FAST
@given(key=KEYS)
@pytest.mark.parametrize("scheme", ["gs", "abfs"])
def test_gcs_and_azure_uri_round_trip_for_any_legal_key(cloud_places, monkeypatch, scheme, key):
    """The same on GCS and Azure (emulators): with the settings' filesystem, without one (the
    provider's standard variables) and through every spelling of the scheme."""
    emulator, container = cloud_places[scheme]
    for name, value in emulator.env().items():
        monkeypatch.setenv(name, value)
    fs = emulator.filesystem()
    path = f"{container}/{key}"
    storage.write_bytes_atomic(fs, path, key.encode())
    uri = storage.to_uri(fs, path)
    assert uri.startswith(f"{scheme}://")
    assert storage.resolve(uri, fs)[1] == path
    default_fs, default_path = storage.resolve(uri)
    assert default_path == path
    assert storage.read_bytes(default_fs, default_path) == key.encode()
    alias = {"gs": "gcs", "abfs": "az"}[scheme]
    assert storage.resolve(alias + uri[len(scheme):])[1] == path
    again = json.loads(json.dumps({"uri": uri}))["uri"]
    assert trd.Checkpoint.from_uri(again, fs).path == path


def test_percent_in_a_uri_means_what_pyarrow_and_ray_say():
    """``s3://b/pct%41`` is ``b/pctA`` to pyarrow (and Ray); a key with a real ``%`` is
    written ``%25`` by ``to_uri``."""
    fs = storage.S3Settings(endpoint_url="http://127.0.0.1:9").filesystem()
    assert storage.resolve("s3://b/pct%41/run", fs)[1] == "b/pctA/run"
    assert pafs.FileSystem.from_uri("s3://b/pct%41/run?endpoint_override=127.0.0.1:9")[1] == (
        "b/pctA/run"
    )
    assert storage.to_uri(fs, "b/pct%41") == "s3://b/pct%2541"


# ------------------------------------------------------------------------------ layouts


def test_nested_run_and_checkpoint_names_read_like_ray(v2_runs):
    import ray.train

    path = v2_runs["team-a/nested"]
    ours = trd.TrainResult.from_path(path)
    theirs = ray.train.Result.from_path(path)
    assert ours.path == theirs.path
    assert ours.metrics == theirs.metrics
    assert [(c.path, m) for c, m in ours.best_checkpoints] == [
        (c.path, m) for c, m in theirs.best_checkpoints
    ]
    assert ours.checkpoint.dir_name == "ckpts/t=2:00"
    best = trd.select_best_checkpoint(ours, "loss", "min")[0]
    assert best.dir_name == "ckpts/epoch 1%41"
    with best.as_directory() as d:
        assert "loss=0.25" in Path(d, "model.txt").read_text()


def _train_asset(run_uri: str, filesystem: Any = None, partitions=None):
    @dg.asset(name="train", partitions_def=partitions)
    def train() -> trd.TrainResult:
        return trd.TrainResult.from_path(run_uri, filesystem)

    return train


def test_nested_names_and_hourly_partitions_survive_copy_mode_through_json(v2_runs, tmp_path):
    """A copy-mode checkpoint of partition ``2024-01-01-00:00`` with a nested name loads
    back after its URI went through the JSON IO manager."""
    hourly = dg.HourlyPartitionsDefinition(start_date="2024-01-01-00:00")
    train = _train_asset(v2_runs["team-a/nested"], partitions=hourly)
    best = trd.build_best_checkpoint_asset("best", result_asset=train, metric="loss", mode="min")
    resources = {
        "io_manager": trd.RayTrainResultIOManager(base_path=str(tmp_path / "io dir%"),
                                                  checkpoints="copy"),
        trd.JSON_IO_MANAGER_KEY: trd.JsonIOManager(base_path=str(tmp_path / "values")),
    }
    for _ in range(2):  # idempotent
        out = dg.materialize([train, best], resources=resources, partition_key="2024-01-01-00:00")
        assert out.success

    @dg.asset(partitions_def=hourly, io_manager_key=trd.JSON_IO_MANAGER_KEY)
    def reader(context: dg.AssetExecutionContext, best: trd.Checkpoint) -> None:
        with best.as_directory() as d:
            assert "loss=0.25" in Path(d, "model.txt").read_text()
        assert best.dir_name == "ckpts/epoch 1%41"
        assert str(tmp_path / "io dir%") in best.path

    assert dg.materialize([train, best, reader], resources=resources,
                          partition_key="2024-01-01-00:00",
                          selection=[reader]).success


def test_fsspec_wrapped_filesystem_materialises_and_loads(v2_runs, tmp_path):
    """Ray's documented custom-storage route: ``PyFileSystem(FSSpecHandler(fsspec_fs))``."""
    import fsspec

    memory = fsspec.filesystem("memory")
    fs = pafs.PyFileSystem(pafs.FSSpecHandler(memory))
    pafs.copy_files(v2_runs["success"], "/bucket/runs/success",
                    destination_filesystem=fs)
    result = trd.TrainResult.from_path("/bucket/runs/success", fs)
    assert result.uri.startswith("memory://")
    train = _train_asset(result.uri, fs)

    @dg.asset
    def downstream(train: trd.TrainResult) -> None:
        assert train.checkpoint is not None and train.checkpoint.exists()
        assert train.metrics == result.metrics

    io = trd.RayTrainResultIOManager(base_path=str(tmp_path / "io"))
    assert dg.materialize([train, downstream], resources={"io_manager": io}).success


def test_from_ray_orders_by_time_not_score(v2_runs):
    import ray.train

    path = v2_runs["success"]
    live = ray.train.Result.from_path(path)  # best_checkpoints sorted by score
    for result in (trd.TrainResult.from_ray(live), trd.TrainResult.from_ray(live, read_storage=False)):
        indices = [result.report_index_of(c) for c in result.checkpoints]
        assert indices == sorted(indices)
        names = [c.dir_name for c in result.checkpoints]
        assert names == sorted(names)  # Ray's default names are in time order


def test_a_finished_live_result_is_not_failed_by_a_stored_retry(copy_run):
    """A record that says "failed" (an earlier attempt) does not fail a live finished run."""
    import ray.train

    path = copy_run("failure")
    live = ray.train.Result.from_path(path)  # error is None: Ray V2 stores none
    assert trd.TrainResult.from_path(path).error is not None
    assert trd.TrainResult.from_ray(live).error is None


# ------------------------------------------------------------------------------ state


def test_a_foreign_or_torn_pointer_does_not_block_the_next_materialisation(v2_runs, tmp_path):
    train = _train_asset(v2_runs["success"])
    io = trd.RayTrainResultIOManager(base_path=str(tmp_path))
    assert dg.materialize([train], resources={"io_manager": io}).success
    pointer = tmp_path / "train" / "CURRENT.json"
    for garbage in (b'{"schema": "someone-elses/9"}', b"{tor", b""):
        pointer.write_bytes(garbage)
        with pytest.raises(trd.CorruptRunError, match="CURRENT.json"):
            trd.RayTrainResultIOManager(base_path=str(tmp_path)).load_input(
                dg.build_input_context(asset_key=dg.AssetKey(["train"]))
            )
        out = dg.materialize([train], resources={"io_manager": io})
        assert out.success
        assert json.loads(pointer.read_text())["schema"] == "trainresults.result_pointer/1"


def test_asset_partition_and_nested_asset_never_share_a_folder(v2_runs, tmp_path):
    parts = dg.StaticPartitionsDefinition(["b"])

    @dg.asset(key=["a"], partitions_def=parts)
    def a() -> trd.TrainResult:
        return trd.TrainResult.from_path(v2_runs["success"])

    @dg.asset(key=["a", "b"])
    def ab() -> trd.TrainResult:
        return trd.TrainResult.from_path(v2_runs["failure"])

    resources = {"io_manager": trd.RayTrainResultIOManager(base_path=str(tmp_path),
                                                           on_error="materialize")}
    assert dg.materialize([a], resources=resources, partition_key="b").success
    assert dg.materialize([ab], resources=resources).success
    io = resources["io_manager"]
    load_a = io.load_input(dg.build_input_context(
        asset_key=dg.AssetKey(["a"]), partition_key="b",
        asset_partitions_def=parts, dagster_type=dg.DagsterType(lambda _c, _v: True, "Any")))
    load_ab = io.load_input(dg.build_input_context(asset_key=dg.AssetKey(["a", "b"])))
    assert load_a.uri == v2_runs["success"] and load_ab.uri == v2_runs["failure"]


def test_registry_open_with_a_pyarrow_filesystem_keeps_records_on_its_endpoint(moto, v2_runs):
    bucket = moto.new_bucket("regfs")
    fs = s3_settings(moto.s3_resource()).filesystem()
    registry = Registry.open(f"s3://{bucket}/reg", fs)
    result = trd.TrainResult.from_path(v2_runs["success"])
    version = registry.register("clf", result.checkpoint, metrics={"loss": 1.0})
    registry.promote("clf", version.version)
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert any(k.startswith("reg/clf/versions/") for k in keys), keys
    assert registry.get("clf").version == version.version


# ------------------------------------------------------------------------------ bad input


def test_ray_style_except_runtime_error_catches_our_missing_run_errors(tmp_path):
    import ray.train

    (tmp_path / "not-a-run").mkdir()
    for where in (tmp_path / "missing", tmp_path / "not-a-run"):
        with pytest.raises(RuntimeError):
            ray.train.Result.from_path(str(where))
        with pytest.raises(RuntimeError) as info:
            trd.TrainResult.from_path(str(where))
        assert str(where) in str(info.value)


def test_a_snapshot_without_checkpoint_results_is_an_error_not_an_empty_run(copy_run):
    path = copy_run("success")
    snap = Path(path, "checkpoint_manager_snapshot.json")
    data = json.loads(snap.read_text())
    del data["checkpoint_results"]
    snap.write_text(json.dumps(data))
    with pytest.raises(trd.CorruptRunError, match="checkpoint_results.*checkpoint_manager_snapshot"):
        trd.TrainResult.from_path(path)


def test_truncated_metrics_parquet_names_the_file(v2_runs, tmp_path):
    train = _train_asset(v2_runs["success"])
    io = trd.RayTrainResultIOManager(base_path=str(tmp_path))
    assert dg.materialize([train], resources={"io_manager": io}).success
    (parquet,) = tmp_path.glob("train/v-*/metrics.parquet")
    parquet.write_bytes(parquet.read_bytes()[:50])
    loaded = io.load_input(dg.build_input_context(asset_key=dg.AssetKey(["train"])))
    with pytest.raises(trd.CorruptRunError, match=r"metrics\.parquet"):
        loaded.metrics_dataframe  # noqa: B018 - the property reads the file


def test_a_metric_above_int64_materialises(tmp_path):
    history = [{"report_index": i, "metrics": {"step": 2**70 + i, "loss": 1.0 / (i + 1)},
                "checkpoint_dir_name": None} for i in range(3)]
    result = trd.TrainResult(path=str(tmp_path / "run"), metrics=history[-1]["metrics"],
                             history=history)

    @dg.asset
    def train() -> trd.TrainResult:
        return result

    @dg.asset
    def frame(train: pd.DataFrame) -> None:
        assert list(train["step"]) == [2**70, 2**70 + 1, 2**70 + 2]

    io = trd.RayTrainResultIOManager(base_path=str(tmp_path / "io"))
    assert dg.materialize([train, frame], resources={"io_manager": io}).success


def test_inference_input_files_with_other_column_orders(tmp_path):
    folder = tmp_path / "input"
    folder.mkdir()
    pq.write_table(pa.table({"x": [1.0, 2.0], "y": [3.0, 4.0]}), folder / "a.parquet")
    pq.write_table(pa.table({"y": [5.0], "x": [6.0]}), folder / "b.parquet")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()

    class Sum:
        def __init__(self, checkpoint_dir: str) -> None:
            pass

        def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
            return pd.DataFrame({"s": batch["x"] + batch["y"]})

    summary = trd.run_batch_inference(trd.Checkpoint(str(ckpt)), Sum, str(folder),
                                      str(tmp_path / "out"))
    assert summary["rows"] == 3
    table = trd.open_inference_output(summary).to_table()
    assert sorted(table.column("s").to_pylist()) == [4.0, 6.0, 11.0]
    pq.write_table(pa.table({"x": ["text"], "y": [1.0]}), folder / "c.parquet")
    with pytest.raises(trd.InferenceInputError, match="c.parquet"):
        trd.run_batch_inference(trd.Checkpoint(str(ckpt)), Sum, str(folder),
                                str(tmp_path / "out2"))


# ------------------------------------------------------------------------------ webhooks


def test_signed_bodies_carry_a_delivery_id_and_time_and_replays_are_refused(tmp_path):
    from alert_receiver import AlertReceiver

    receiver = AlertReceiver()
    try:
        post_json(receiver.url, {"event": "model_handoff", "version": 3}, "s3cr3t")
        (req,) = receiver.wait_for(1, timeout=10)
    finally:
        receiver.stop()
    body, signature = req.body, req.headers["X-Signature-SHA256"]
    assert req.json["delivery_id"] == req.headers["X-Delivery-ID"]
    assert verify_signature("s3cr3t", body, signature, max_age_seconds=60)
    guard = ReplayGuard("s3cr3t", max_age_seconds=60)
    assert guard.accept(body, signature)
    assert not guard.accept(body, signature)  # the same delivery again
    later = time.time() + 3600
    assert not verify_signature("s3cr3t", body, signature, max_age_seconds=60, now=later)
    # Malformed headers are False, never an exception.
    for bad in ("ü" * 64, "", "zz", sign_body("other", body)):
        assert verify_signature("s3cr3t", body, bad) is False
    assert verify_signature("s3cr3t", b"\xff not json", sign_body("s3cr3t", b"\xff not json"),
                            max_age_seconds=60) is False


def test_the_documented_receiver_refuses_replays(monkeypatch):
    import re

    doc = Path(__file__).parent.parent / "docs" / "alerts_and_retraining.md"
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
                if "ReplayGuard" in b]
    monkeypatch.setenv("ALERT_SECRET", "doc-secret")
    namespace: dict = {}
    exec(compile(block, "alerts_and_retraining.md#receiver", "exec"), namespace)
    alert = {"kind": "ray_run_failed", "run_uri": "s3://b/run", "delivery_id": "d1",
             "sent_at": storage.iso()}
    body = storage.dumps(alert, compact=True)
    headers = {"X-Signature-SHA256": sign_body("doc-secret", body)}
    assert namespace["handle"](body, headers) == 200
    assert namespace["handle"](body, headers) == 401  # replayed
    assert namespace["handle"](body, {"X-Signature-SHA256": "0" * 64}) == 401


# ------------------------------------------------------------------------------ snapshots

_METRIC = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
    st.booleans(), st.text(max_size=5), st.none(),
)
_METRICS = st.dictionaries(st.sampled_from(["loss", "acc", "val", "epoch", "a b", "x/y"]),
                           st.one_of(_METRIC, st.dictionaries(st.sampled_from(["acc", "f1"]),
                                                              _METRIC, max_size=2)),
                           max_size=4)
_NAMES = st.lists(
    st.lists(_SEGMENT, min_size=1, max_size=2).map("/".join), min_size=0, max_size=5,
    unique_by=lambda n: n.split("/")[0],  # no name is a folder inside another
)


@st.composite
def ray_snapshots(draw):
    """A snapshot as Ray 2.60 writes it (``_CheckpointManagerState``), for generated names,
    metrics, ranking order and report indices."""
    names = draw(_NAMES)
    metrics = [draw(_METRICS) for _ in names]
    indices = sorted(draw(st.lists(st.integers(0, 10**6), min_size=len(names),
                                   max_size=len(names), unique=True)))
    order = draw(st.permutations(list(range(len(names)))))  # worst to best, as ranked
    results = [{"version": 0, "checkpoint_dir_name": names[i], "metrics": metrics[i]}
               for i in order]
    latest = None
    if names:
        latest = {"version": 0, "checkpoint_dir_name": names[-1], "metrics": metrics[-1]}
    return {
        "ray_version": "2.60.0",
        "checkpoint_results": results,
        "checkpoint_report_indices": [indices[i] for i in order],
        "latest_checkpoint_result": latest,
        "pending_training_results": [],
        "pending_validation_specs": [],
        "current_report_index": (indices[-1] + 1) if names else 0,
        "validated_checkpoint_dir_names": [],
        "timed_out_validation_checkpoint_dir_names": [],
        "failed_validation_checkpoint_dir_names": [],
    }


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _write_run(root: Path, snapshot: dict) -> Path:
    run = root / "run"
    run.mkdir(parents=True)
    (run / ".validate_storage_marker").write_text("")
    for entry in snapshot["checkpoint_results"]:
        folder = run / entry["checkpoint_dir_name"]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.txt").write_text("w")
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    return run


@FAST
@given(snapshot=ray_snapshots())
def test_every_ray_legal_snapshot_reads_like_ray_reads_it(tmp_path_factory, snapshot):
    import ray.train

    run = _write_run(tmp_path_factory.mktemp("snap"), snapshot)
    theirs = ray.train.Result.from_path(str(run))
    ours = trd.TrainResult.from_path(str(run))
    assert _same(ours.metrics, theirs.metrics)
    assert (ours.checkpoint.path if ours.checkpoint else None) == (
        theirs.checkpoint.path if theirs.checkpoint else None)
    assert [c.path for c, _ in ours.best_checkpoints] == [c.path for c, _ in theirs.best_checkpoints]
    assert all(_same(a, b) for (_, a), (_, b) in zip(ours.best_checkpoints, theirs.best_checkpoints,
                                                      strict=True))


_MUTATIONS = st.sampled_from([
    ("delete", "checkpoint_results"), ("delete", "latest_checkpoint_result"),
    ("delete", "checkpoint_report_indices"), ("type", "checkpoint_results"),
    ("type", "checkpoint_report_indices"), ("entry-type", None), ("entry-name", None),
    ("entry-metrics", None), ("escape", None), ("truncate", None), ("not-json", None),
])


@FAST
@given(snapshot=ray_snapshots(), mutation=_MUTATIONS, junk=st.one_of(st.integers(), st.text(),
                                                                     st.none(), st.lists(st.none())))
def test_a_mutated_snapshot_reads_like_ray_or_fails_naming_the_file(
    tmp_path_factory, snapshot, mutation, junk
):
    """Whatever is done to a snapshot, ours never raises a raw exception: it reads what Ray
    reads (and the same way) or raises a typed error that names the snapshot."""
    import ray.train

    kind, key = mutation
    text = None
    if kind == "delete":
        snapshot.pop(key, None)
    elif kind == "type":
        snapshot[key] = junk
    elif kind.startswith("entry") and snapshot["checkpoint_results"]:
        entry = snapshot["checkpoint_results"][0]
        if kind == "entry-type":
            snapshot["checkpoint_results"][0] = junk
        elif kind == "entry-name":
            entry["checkpoint_dir_name"] = junk
        else:
            entry["metrics"] = junk
    elif kind == "escape" and snapshot["checkpoint_results"]:
        snapshot["checkpoint_results"][0]["checkpoint_dir_name"] = "../../outside"
    elif kind == "truncate":
        text = json.dumps(snapshot)[: max(1, len(json.dumps(snapshot)) // 2)]
    elif kind == "not-json":
        text = "\x00\xff garbage"
    root = tmp_path_factory.mktemp("mut")
    entries = snapshot.get("checkpoint_results")
    clean = {**snapshot, "checkpoint_results": [e for e in (entries if isinstance(entries, list)
                                                            else [])
                                                if isinstance(e, dict)
                                                and isinstance(e.get("checkpoint_dir_name"), str)
                                                and ".." not in e["checkpoint_dir_name"]]}
    run = _write_run(root, clean if isinstance(clean["checkpoint_results"], list) else
                     {**clean, "checkpoint_results": []})
    snap = run / "checkpoint_manager_snapshot.json"
    snap.write_text(text if text is not None else json.dumps(snapshot))
    readers_module = __import__("trainresults_dagster.runs.read", fromlist=["x"])
    pause, readers_module.SNAPSHOT_PAUSE_SECONDS = readers_module.SNAPSHOT_PAUSE_SECONDS, 0.0
    try:
        try:
            ours = trd.TrainResult.from_path(str(run))
        except trd.TrainResultsError as exc:
            assert str(snap) in str(exc) or str(run) in str(exc), str(exc)
            return
    finally:
        readers_module.SNAPSHOT_PAUSE_SECONDS = pause
    try:
        theirs = ray.train.Result.from_path(str(run))
    except Exception:  # noqa: BLE001 - Ray refusing what we read is allowed (we are lenient)
        return
    assert _same(ours.metrics, theirs.metrics)
    assert [c.path for c, _ in ours.best_checkpoints] == [c.path for c, _ in theirs.best_checkpoints]
