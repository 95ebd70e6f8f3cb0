"""CheckpointRegistry: one behavioural suite, run on a local folder, on S3 (moto over HTTP)
and on Azure Blob (Azurite over HTTP).

Capability flags on the backend (``server_side_copy``, ``counts_requests``) switch on the
checks that only make sense for one of them. GCS is not in the suite: its emulator
(gcp-storage-emulator) ignores ``ifGenerationMatch``, so the registry refuses it
(``test_gcs_emulator_without_preconditions_is_refused``); the compare-and-set semantics are
covered on the three backends here.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
import pytest
from conftest import SECRET_KEY
from counting_proxy import CountingProxy, HeaderStrippingProxy

import trainresults_dagster as trd
from trainresults_dagster import storage
from trainresults_dagster.dagster._wiring import s3_settings
from trainresults_dagster.registry import Registry


@dataclass
class Backend:
    name: str
    base: str
    registry: trd.CheckpointRegistry
    filesystem: pafs.FileSystem
    moto: Any = None
    runs: dict[str, str] | None = None

    @property
    def server_side_copy(self) -> bool:
        return self.name == "s3"

    counts_requests = server_side_copy

    def run(self, name: str) -> trd.TrainResult:
        return trd.TrainResult.from_path(self.runs[name], self.filesystem)

    def root(self) -> str:
        return storage.resolve(self.base, self.filesystem)[1]

    def make_checkpoint(self, files: dict[str, bytes], metrics: dict | None = None) -> trd.Checkpoint:
        """A fresh checkpoint folder on this backend's storage."""
        if self.name == "local":
            path = f"{os.path.dirname(self.base)}/src-{uuid.uuid4().hex[:8]}"
        else:
            path = f"{self.root().split('/', 1)[0]}/src-{uuid.uuid4().hex[:8]}"
        for rel, data in files.items():
            storage.write_bytes_atomic(self.filesystem, f"{path}/{rel}", data)
        return trd.Checkpoint(path, self.filesystem, metrics=metrics)

    def write(self, rel: str, data: bytes) -> None:
        storage.write_bytes_atomic(self.filesystem, f"{self.root()}/{rel}", data)

    def delete(self, rel: str) -> None:
        storage.delete_file(self.filesystem, f"{self.root()}/{rel}")

    def exists(self, rel: str) -> bool:
        return storage.exists(self.filesystem, f"{self.root()}/{rel}")

    def all_bytes(self) -> bytes:
        infos = storage.list_dir(self.filesystem, self.root(), recursive=True)
        return b"".join(
            storage.read_bytes(self.filesystem, i.path) for i in infos if i.type == pafs.FileType.File
        )


@pytest.fixture(params=["local", "s3", "azure"])
def backend(request: pytest.FixtureRequest, tmp_path) -> Backend:
    if request.param == "local":
        v2 = request.getfixturevalue("v2_runs")
        base = str(tmp_path / "registry")
        return Backend("local", base, trd.CheckpointRegistry(base_path=base),
                       pafs.LocalFileSystem(), runs=v2)
    if request.param == "azure":
        azurite = request.getfixturevalue("azurite")
        runs = request.getfixturevalue("azure_runs")
        container = azurite.new_container("reg")
        base = f"abfs://{container}/models"
        return Backend("azure", base,
                       trd.CheckpointRegistry(base_path=base, azure=azurite.resource()),
                       azurite.filesystem(), runs=runs)
    moto = request.getfixturevalue("moto")
    runs = request.getfixturevalue("s3_runs")
    bucket = moto.new_bucket("reg")
    base = f"s3://{bucket}/models"
    return Backend("s3", base, trd.CheckpointRegistry(base_path=base, s3=moto.s3_resource()),
                   moto.filesystem(), moto=moto, runs=runs)


def _tree(fs: pafs.FileSystem, path: str) -> dict[str, bytes]:
    prefix = path.rstrip("/") + "/"
    return {
        i.path[len(prefix):]: storage.read_bytes(fs, i.path)
        for i in storage.list_dir(fs, path, recursive=True)
        if i.type == pafs.FileType.File
    }


# --------------------------------------------------------------------------------------
# register / read
# --------------------------------------------------------------------------------------


def test_register_copies_and_numbers_versions(backend):
    run = backend.run("nan_losses")
    pairs = list(run.checkpoints_with_metrics())[:3]
    got = [backend.registry.register("clf", c, metrics=m) for c, m in pairs]

    assert [v.version for v in got] == [1, 2, 3]
    for version, (src, metrics) in zip(got, pairs, strict=True):
        copy = _tree(version.checkpoint.filesystem, version.checkpoint.path)
        assert copy == _tree(src.filesystem, src.path) and copy
        assert version.num_files == len(copy)
        assert version.size_bytes == sum(len(b) for b in copy.values())
        assert version.metrics["epoch"] == metrics["epoch"]
        assert version.checkpoint.metrics == version.metrics
        assert version.lineage["source_checkpoint_uri"] == src.uri
        assert version.lineage["run_uri"] == run.uri
        assert version.uri.startswith(backend.registry.registry.uri)
        assert version.checkpoint.get_metadata() == src.get_metadata()
    # NaN is stored as null (JSON has no NaN), never as a string or a pickle
    nan_versions = [v for v in got if v.metrics["loss"] is None]
    assert nan_versions, "the nan_losses run has NaN losses among its first checkpoints"

    listed = backend.registry.versions("clf")
    assert [v.version for v in listed] == [1, 2, 3]
    assert [v.uri for v in listed] == [v.uri for v in got]
    assert backend.registry.get_version("clf", 2).uri == got[1].uri
    assert backend.registry.models() == ["clf"]


def test_registry_copy_outlives_the_source(backend):
    src = backend.make_checkpoint({"model.bin": os.urandom(2048), "sub/cfg.json": b"{}"},
                                  metrics={"loss": 0.25})
    version = backend.registry.register("clf", src, metrics=None)  # None: the checkpoint's own
    assert version.metrics == {"loss": 0.25}
    storage.delete_dir(src.filesystem, src.path)
    assert not src.exists()
    with version.checkpoint.as_directory() as local:
        assert os.path.getsize(os.path.join(local, "model.bin")) == 2048
        assert open(os.path.join(local, "sub", "cfg.json")).read() == "{}"


def test_missing_checkpoint_is_rejected_and_takes_no_number(backend):
    gone = trd.Checkpoint(backend.make_checkpoint({"a": b"1"}).path + "-gone", backend.filesystem)
    with pytest.raises(trd.CheckpointMissingError, match="-gone"):
        backend.registry.register("clf", gone, metrics={})
    assert backend.registry.versions("clf") == []
    ok = backend.registry.register("clf", backend.make_checkpoint({"a": b"1"}), metrics={})
    assert ok.version == 1


def test_reuse_if_unchanged(backend):
    src = backend.make_checkpoint({"w": b"weights"})
    v1 = backend.registry.register("clf", src, metrics={"acc": 0.9}, reuse_if_unchanged=True)
    again = backend.registry.register("clf", src, metrics={"acc": 0.9}, reuse_if_unchanged=True)
    assert again.version == v1.version == 1 and again.uri == v1.uri
    other_metrics = backend.registry.register("clf", src, metrics={"acc": 0.8},
                                              reuse_if_unchanged=True)
    assert other_metrics.version == 2
    forced = backend.registry.register("clf", src, metrics={"acc": 0.8})
    assert forced.version == 3


def test_model_version_json_round_trip(backend):
    version = backend.registry.register(
        "clf", backend.make_checkpoint({"w": b"1"}), metrics={"val": {"acc": 0.5}},
        lineage={"note": "x"},
    )
    data = json.loads(json.dumps(version.to_dict()))
    back = trd.ModelVersion.from_dict(data, filesystem=backend.filesystem)
    assert (back.model, back.version, back.uri) == (version.model, version.version, version.uri)
    assert back.metrics == version.metrics and back.lineage == version.lineage
    assert back.created_at == version.created_at and back.created_at.tzinfo is not None
    assert back.checkpoint.exists()


# --------------------------------------------------------------------------------------
# aliases: compare-and-set, history, rollback
# --------------------------------------------------------------------------------------


def _three_versions(backend) -> list[trd.ModelVersion]:
    return [
        backend.registry.register("clf", backend.make_checkpoint({"w": str(i).encode()}),
                                  metrics={"loss": 1.0 / (i + 1)})
        for i in range(3)
    ]


def test_promote_is_compare_and_set_with_history_and_rollback(backend):
    reg = backend.registry
    _three_versions(backend)
    assert reg.get("clf") is None
    before = dt.datetime.now(dt.UTC)

    assert reg.promote("clf", 1, expected_version=None, reason="first").version == 1
    assert reg.promote("clf", 2, expected_version=1, reason="better", who="alice").version == 2
    with pytest.raises(trd.PromotionConflict, match="expected 1, it now points at version 2"):
        reg.promote("clf", 3, expected_version=1)
    assert reg.get("clf").version == 2  # the conflict changed nothing
    reg.promote("clf", 3, reason="unchecked")  # expected_version left out

    history = reg.history("clf")
    assert [(e.seq, e.version, e.previous_version, e.action) for e in history] == [
        (1, 1, None, "promote"), (2, 2, 1, "promote"), (3, 3, 2, "promote"),
    ]
    assert [e.reason for e in history] == ["first", "better", "unchecked"]
    assert history[1].who == "alice" and history[0].who  # default: user@host
    assert all(before <= e.at <= dt.datetime.now(dt.UTC) for e in history)
    assert history[0].at <= history[1].at <= history[2].at

    assert reg.rollback("clf", reason="bad canary").version == 2
    assert reg.get("clf").version == 2
    assert reg.rollback("clf").version == 1  # walks back, does not toggle 2 <-> 3
    with pytest.raises(trd.VersionNotFoundError, match="no earlier version"):
        reg.rollback("clf")

    history = reg.history("clf")
    assert [(e.version, e.previous_version, e.action) for e in history[3:]] == [
        (2, 3, "rollback"), (1, 2, "rollback"),
    ]
    assert history[3].reason == "rollback from version 3: bad canary"
    assert [e.seq for e in history] == [1, 2, 3, 4, 5]
    assert reg.get("clf").version == 1


def test_aliases_are_independent(backend):
    reg = backend.registry
    _three_versions(backend)
    reg.promote("clf", 1, alias="champion", expected_version=None)
    reg.promote("clf", 3, alias="challenger", expected_version=None)
    assert reg.get("clf", "champion").version == 1
    assert reg.get("clf", alias="challenger").version == 3
    assert [e.version for e in reg.history("clf", "challenger")] == [3]
    with pytest.raises(trd.PromotionConflict, match="expected unset"):
        reg.promote("clf", 2, alias="challenger", expected_version=None)


def test_missing_things_are_lookup_errors(backend):
    reg = backend.registry
    with pytest.raises(trd.VersionNotFoundError, match="has no version 9"):
        reg.get_version("clf", 9)
    with pytest.raises(trd.VersionNotFoundError):
        reg.promote("clf", 1, expected_version=None)
    with pytest.raises(trd.VersionNotFoundError, match="not set"):
        reg.rollback("clf")
    assert reg.history("clf") == [] and reg.versions("clf") == []
    assert isinstance(trd.VersionNotFoundError("x"), LookupError)


@pytest.mark.parametrize("bad", [0, -1, True, "2", 1.0])
def test_bad_version_arguments(backend, bad):
    _three_versions(backend)
    with pytest.raises(ValueError, match="version must be an int >= 1"):
        backend.registry.get_version("clf", bad)
    with pytest.raises(ValueError, match="expected_version must be"):
        backend.registry.promote("clf", 1, expected_version=bad)


@pytest.mark.parametrize(
    "bad", ["../evil", "a/b", "a\\b", "", ".hidden", "a b", "..", "x" * 129, "a..b", None, 5]
)
def test_bad_names_are_value_errors_that_say_what_is_allowed(backend, bad):
    reg = backend.registry
    src = backend.make_checkpoint({"w": b"1"})
    calls = [
        lambda: reg.register(bad, src, metrics={}),
        lambda: reg.get(bad),
        lambda: reg.versions(bad),
        lambda: reg.history(bad),
        lambda: reg.get("clf", bad),
        lambda: reg.promote("clf", 1, alias=bad),
        lambda: reg.rollback("clf", bad),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="letters, digits") as info:
            call()
        assert repr(bad) in str(info.value)
    assert reg.models() == []  # nothing was written anywhere


# --------------------------------------------------------------------------------------
# crash consistency and damage
# --------------------------------------------------------------------------------------


def test_history_chain_is_completed_after_a_crash_between_alias_and_history(backend):
    reg = backend.registry
    _three_versions(backend)
    reg.promote("clf", 1, expected_version=None)
    reg.promote("clf", 2, expected_version=1)
    # A promoter that died after its alias write but before its history write:
    backend.delete("clf/history/champion/0000000002.json")
    assert [e.version for e in reg.history("clf")] == [1, 2]  # the alias holds event 2
    reg.promote("clf", 3, expected_version=2)
    assert backend.exists("clf/history/champion/0000000002.json")  # repaired by the next move
    assert [(e.seq, e.version) for e in reg.history("clf")] == [(1, 1), (2, 2), (3, 3)]
    assert reg.rollback("clf").version == 2


def test_orphaned_data_is_invisible_and_collected(backend):
    reg = backend.registry
    kept = reg.register("clf", backend.make_checkpoint({"w": b"1"}), metrics={})
    old = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 7200))
    backend.write(f"clf/data/{old}-deadbeef/partial.bin", b"half")  # a crashed copy
    fresh = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    backend.write(f"clf/data/{fresh}-inflight/partial.bin", b"half")  # a copy in flight
    assert [v.version for v in reg.versions("clf")] == [1]

    removed = reg.collect_garbage("clf", older_than_seconds=3600)
    assert len(removed) == 1 and removed[0].endswith(f"{old}-deadbeef")
    assert backend.exists(f"clf/data/{fresh}-inflight/partial.bin")
    assert kept.checkpoint.exists() and reg.get_version("clf", 1).checkpoint.exists()


def test_corrupt_and_unsafe_records_are_typed_errors(backend):
    reg = backend.registry
    reg.register("clf", backend.make_checkpoint({"w": b"1"}), metrics={})
    backend.write("clf/versions/0000000002.json", b"{not json")
    with pytest.raises(trd.CorruptRegistryError, match="0000000002.json"):
        reg.get_version("clf", 2)
    record = json.loads(storage.read_bytes(
        backend.filesystem, f"{backend.root()}/clf/versions/0000000001.json"))
    record["data"] = "../../../etc"
    backend.write("clf/versions/0000000003.json", json.dumps(record).encode())
    with pytest.raises(trd.CorruptRegistryError, match="data"):
        reg.get_version("clf", 3)
    assert reg.get_version("clf", 1).version == 1  # the good one still reads


def test_nothing_secret_is_written(backend):
    reg = backend.registry
    _three_versions(backend)
    reg.promote("clf", 2, expected_version=None)
    reg.promote("clf", 3, expected_version=2, reason="r")
    reg.rollback("clf")
    assert SECRET_KEY.encode() not in backend.all_bytes()
    assert not any(name.endswith((".pkl", ".pickle")) for name in _tree(
        backend.filesystem, backend.root()))


# --------------------------------------------------------------------------------------
# cost: requests and bytes (S3 only)
# --------------------------------------------------------------------------------------


def _requests_during(moto, fn) -> int:
    before = len(moto.request_log())
    fn()
    time.sleep(0.3)  # moto writes its log line after the response
    return len(moto.request_log()) - before


def test_get_is_a_constant_number_of_requests(backend):
    if not backend.counts_requests:
        pytest.skip("request counting needs the S3 backend")
    reg = backend.registry
    reg.register("clf", backend.make_checkpoint({"w": b"1"}), metrics={})
    reg.promote("clf", 1, expected_version=None)
    reg.get("clf")  # warm the client (credentials, connection)
    few = _requests_during(backend.moto, lambda: reg.get("clf"))
    for i in range(6):
        v = reg.register("clf", backend.make_checkpoint({"w": str(i).encode()}), metrics={})
        reg.promote("clf", v.version)
    many = _requests_during(backend.moto, lambda: reg.get("clf"))
    assert few == many == 2  # alias object + version record


def test_s3_copy_is_server_side(backend):
    if not backend.server_side_copy:
        pytest.skip("server-side copy is an S3 capability")
    moto = backend.moto
    size = 4 * 2**20
    src = backend.make_checkpoint({f"shard{i}.bin": os.urandom(size // 4) for i in range(4)})
    proxy = CountingProxy.for_url(moto.endpoint_url)
    try:
        from dagster_aws.s3 import S3Resource

        through = S3Resource(endpoint_url=proxy.endpoint_url, region_name=moto.region,
                             aws_access_key_id=moto.access_key,
                             aws_secret_access_key=moto.secret_key)
        reg = trd.CheckpointRegistry(base_path=backend.base, s3=through)
        # the checkpoint's filesystem is a separate object on the same endpoint
        same_endpoint = trd.Checkpoint(src.path, s3_settings(through).filesystem())
        proxy.reset()
        version = reg.register("clf", same_endpoint, metrics={})
        assert proxy.total < size * 0.01, f"{proxy.total} bytes moved for a {size}-byte copy"
        assert version.size_bytes == size

        local = Registry(backend.base, filesystem=s3_settings(through).filesystem(),
                         s3_client=through.get_client())
        folder = backend.make_checkpoint({"x.bin": os.urandom(size)})
        with folder.as_directory() as on_disk:
            proxy.reset()
            local.register("clf", on_disk, metrics={})  # local -> S3 must upload the bytes
        assert proxy.sent >= size  # the proxy does see payloads
    finally:
        proxy.close()


def test_store_without_conditional_writes_is_refused(moto):
    """Without If-None-Match/If-Match every write would win: refuse instead of losing data."""
    from dagster_aws.s3 import S3Resource

    bucket = moto.new_bucket("nocond")
    proxy = HeaderStrippingProxy(moto.endpoint_url)
    try:
        s3 = S3Resource(endpoint_url=proxy.endpoint_url, region_name=moto.region,
                        aws_access_key_id=moto.access_key, aws_secret_access_key=moto.secret_key)
        registry = trd.CheckpointRegistry(base_path=f"s3://{bucket}/reg", s3=s3)
        src = trd.Checkpoint(f"{bucket}/src", moto.filesystem())
        storage.write_bytes_atomic(moto.filesystem(), f"{bucket}/src/w.bin", b"w")
        with pytest.raises(trd.StorageError, match="ignored 'If-None-Match"):
            registry.register("clf", src, metrics={})
        assert registry.versions("clf") == []
    finally:
        proxy.close()
    # The same bucket through the real endpoint works (the probe object is ignored).
    direct = trd.CheckpointRegistry(base_path=f"s3://{bucket}/reg", s3=moto.s3_resource())
    assert direct.register("clf", src, metrics={}).version == 1
    assert direct.models() == ["clf"]


def test_gcs_emulator_without_preconditions_is_refused(gcs_emulator):
    """gcp-storage-emulator lets a second ``ifGenerationMatch=0`` write through: the probe must
    refuse it before anything is copied, naming the store and the missing precondition."""
    bucket = gcs_emulator.new_bucket("nocond")
    registry = trd.CheckpointRegistry(base_path=f"gs://{bucket}/reg", gcs=gcs_emulator.resource())
    fs = gcs_emulator.filesystem()
    storage.write_bytes_atomic(fs, f"{bucket}/src/w.bin", b"w")
    with pytest.raises(trd.StorageError, match=rf"gs://{bucket}/reg.*ifGenerationMatch=0"):
        registry.register("clf", trd.Checkpoint(f"{bucket}/src", fs), metrics={})
    assert registry.versions("clf") == []
    assert not storage.exists(fs, f"{bucket}/reg/clf/data")  # nothing was copied


@pytest.mark.parametrize("store", ["s3", "gs", "abfs"])
def test_a_missing_bucket_is_named_not_taken_for_a_lost_race(store, request, tmp_path):
    """A 404 on a conditional write is the bucket (or container), never a lost race: the
    registry says so instead of reporting conflicts or an empty registry forever."""
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "w.bin").write_bytes(b"w")
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    if store == "s3":
        moto = request.getfixturevalue("moto")
        registry = trd.CheckpointRegistry(base_path=f"s3://{missing}/reg", s3=moto.s3_resource())
    elif store == "gs":
        emulator = request.getfixturevalue("gcs_emulator")
        registry = trd.CheckpointRegistry(base_path=f"gs://{missing}/reg", gcs=emulator.resource())
    else:
        azurite = request.getfixturevalue("azurite")
        registry = trd.CheckpointRegistry(base_path=f"abfs://{missing}/reg",
                                          azure=azurite.resource())
    kind = "container" if store == "abfs" else "bucket"
    with pytest.raises(trd.StorageError, match=rf"{store}://{missing}/reg.*{kind} "
                                               rf"'{missing}'.*does not exist"):
        registry.register("clf", trd.Checkpoint(str(src)), metrics={})
    with pytest.raises(trd.StorageError, match="does not exist"):  # reads too
        registry.promote("clf", 1)
    with pytest.raises(trd.StorageError, match="does not exist"):
        registry.versions("clf")


def test_azure_copy_is_server_side(azurite):
    """Checkpoint -> registry on one Azure account: Copy Blob, and for big blobs an async
    server copy; the bytes match either way."""
    container = azurite.new_container("ssc")
    fs = azurite.filesystem()
    for rel, data in {"a.bin": os.urandom(3000), "sub/b.bin": os.urandom(10)}.items():
        storage.write_bytes_atomic(fs, f"{container}/src/{rel}", data)
    reg = trd.CheckpointRegistry(base_path=f"abfs://{container}/reg", azure=azurite.resource())
    version = reg.register("clf", trd.Checkpoint(f"{container}/src", fs), metrics={})
    assert _tree(fs, version.checkpoint.path) == _tree(fs, f"{container}/src")
    old = storage.AZURE_SYNC_COPY_LIMIT
    storage.AZURE_SYNC_COPY_LIMIT = 0  # every blob through start_copy_from_url
    try:
        assert storage.copy_tree(fs, f"{container}/src", fs, f"{container}/big") == 2
    finally:
        storage.AZURE_SYNC_COPY_LIMIT = old
    assert _tree(fs, f"{container}/big") == _tree(fs, f"{container}/src")


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_path", "match"),
    [("ftp://bucket/x", "scheme 'ftp'"), ("s3://", "names no bucket"), ("gs://", "names no bucket"),
     ("abfs://c@/x", "CONTAINER@ACCOUNT"), ("  ", "base_path must")],
)
def test_resource_rejects_bad_base_path_at_configuration(base_path, match):
    with pytest.raises(Exception, match=match):
        trd.CheckpointRegistry(base_path=base_path)


def test_durable_local_registry(tmp_path):
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.bin").write_bytes(b"x" * 1000)
    reg = trd.CheckpointRegistry(base_path=str(tmp_path / "reg"), durable=True)
    version = reg.register("clf", str(src), metrics={"a": 1})
    assert _tree(pafs.LocalFileSystem(), version.checkpoint.path) == {"sub/w.bin": b"x" * 1000}
