"""Integrity on S3 (moto server over HTTP), and what each guardrail costs in storage
requests, counted by a proxy in front of the server. The README's cost table comes from
these numbers; the test fails if they change.

Local and S3 run the same behaviour: manifests, verify (sizes, ETags from the listing,
hashes on demand), rollback refusal, garbage collection of orphaned manifests.
"""

from __future__ import annotations

import uuid

import pytest
from s3_proxy import S3Proxy

import trainresults_dagster as trd
import trainresults_dagster.storage as storage
from trainresults_dagster.registry import Registry

FILES = {"model.bin": b"w" * 5000, "config.json": b"{}", "sub/extra.txt": b"x" * 10,
         ".metadata.json": b"{}"}


def _settings(moto, endpoint: str) -> storage.S3Settings:
    return storage.S3Settings(endpoint_url=endpoint, region_name=moto.region,
                              aws_access_key_id=moto.access_key,
                              aws_secret_access_key=moto.secret_key)


@pytest.fixture(params=["local", "s3"])
def setup(request, tmp_path):
    """``(registry, filesystem, checkpoint path, counter)``; counter() -> requests so far."""
    if request.param == "local":
        reg = Registry(str(tmp_path / "registry"))
        src = str(tmp_path / "ckpt")
        fs = reg.filesystem
        proxy = None
    else:
        moto = request.getfixturevalue("moto")
        bucket = moto.new_bucket("guard")
        proxy = S3Proxy(moto.endpoint_url)
        settings = _settings(moto, proxy.endpoint_url)
        reg = Registry.open(f"s3://{bucket}/registry", settings)
        fs = settings.filesystem()
        src = f"{bucket}/ckpt-{uuid.uuid4().hex[:6]}"
    for rel, data in FILES.items():
        storage.write_bytes_atomic(fs, f"{src}/{rel}", data)
    yield request.param, reg, fs, src, proxy
    if proxy is not None:
        proxy.stop()


def test_verify_names_what_changed_and_rollback_refuses(setup):
    kind, reg, fs, src, _proxy = setup
    v1 = reg.register("m", trd.Checkpoint(src, fs), metrics={"loss": 1.0})
    reg.promote("m", v1.version)
    v2 = reg.register("m", trd.Checkpoint(src, fs), metrics={"loss": 0.5})
    reg.promote("m", v2.version)
    report = reg.verify("m")
    assert report.ok and report.files == 4 and report.version == 2
    assert report.checksum == ("etag" if kind == "s3" else "crc32")
    assert reg.verify("m", hashes=True).ok

    # Same size, other bytes: on S3 the ETag in the listing catches it for free; locally
    # only hashing does.
    path = f"{v1.checkpoint.path}/model.bin"
    storage.write_bytes_atomic(fs, path, b"v" * 5000)
    cheap = reg.verify("m", 1)
    assert cheap.ok is (kind == "local")
    hashed = reg.verify("m", 1, hashes=True)
    assert not hashed.ok and [p for p, _ in hashed.changed] == ["model.bin"]
    assert ("ETag" if kind == "s3" else "CRC32") in hashed.changed[0][1]

    storage.delete_file(fs, f"{v1.checkpoint.path}/sub/extra.txt")
    storage.write_bytes_atomic(fs, f"{v1.checkpoint.path}/intruder.py", b"print(1)")
    report = reg.verify("m", 1)
    assert report.missing == ["sub/extra.txt"] and report.unexpected == ["intruder.py"]
    assert "1 missing: sub/extra.txt" in report.summary()
    with pytest.raises(trd.CheckpointIntegrityError) as refused:
        reg.rollback("m")
    assert "from version 2 to version 1" in str(refused.value)
    assert "sub/extra.txt" in str(refused.value) and reg.get("m").version == 2

    # A manifest edited after the fact is itself a failure (its SHA-256 is in the record).
    manifest = v2.checkpoint.path + ".files.json"
    storage.write_bytes_atomic(fs, manifest, b'{"kind": "trainresults.file_manifest/1", "files": []}')
    tampered = reg.verify("m", 2)
    assert not tampered.ok and "changed since register" in tampered.changed[0][1]


def test_garbage_collection_removes_orphaned_manifests(setup):
    _kind, reg, fs, src, _proxy = setup
    kept = reg.register("m", trd.Checkpoint(src, fs), metrics={})
    orphan = f"{reg.base}/m/data/20000101T000000.000000Z-deadbeefdeadbeef"
    storage.write_bytes_atomic(fs, f"{orphan}/model.bin", b"x")
    storage.write_bytes_atomic(fs, orphan + ".files.json", b"{}")
    removed = reg.collect_garbage("m", older_than_seconds=0)
    assert sorted(r.rsplit("/", 1)[-1] for r in removed) == [
        "20000101T000000.000000Z-deadbeefdeadbeef",
        "20000101T000000.000000Z-deadbeefdeadbeef.files.json",
    ]
    assert reg.verify("m", kept.version).ok


def test_request_costs_on_s3(moto):
    """Each guardrail's storage requests, counted on the wire (a 4-file checkpoint)."""
    bucket = moto.new_bucket("cost")
    proxy = S3Proxy(moto.endpoint_url)
    try:
        settings = _settings(moto, proxy.endpoint_url)
        fs = settings.filesystem()
        src = f"{bucket}/ckpt"
        for rel, data in FILES.items():
            storage.write_bytes_atomic(fs, f"{src}/{rel}", data)
        reg = Registry.open(f"s3://{bucket}/registry", settings)
        reg.register("m", trd.Checkpoint(src, fs), metrics={})  # probe object, first listing
        reg.promote("m", 1)

        def cost(fn) -> tuple[int, dict]:
            proxy.reset_stats()
            fn()
            return proxy.stats["requests"], dict(proxy.stats["methods"])

        costs = {
            "register (4 files)": cost(lambda: reg.register("m", trd.Checkpoint(src, fs),
                                                             metrics={"a": 1})),
            "verify": cost(lambda: reg.verify("m")),
            "verify --hashes": cost(lambda: reg.verify("m", hashes=True)),
            "champion_age": cost(lambda: reg.history("m", limit=1)),
            "get (training data, drift)": cost(lambda: reg.get("m")),
            "save_card": cost(lambda: reg.save_card("m", 1, {"kind": "x"}, b"\x89PNG")),
        }
        reg.promote("m", 2)
        costs["rollback (with its verify)"] = cost(lambda: reg.rollback("m"))
        print("\nS3 requests per operation:", {k: v[0] for k, v in costs.items()})
        assert costs["verify"][0] == 4  # alias, version record, LIST, manifest
        assert costs["verify"][1] == {"GET": 4}
        assert costs["verify --hashes"][0] == 4 + len(FILES)
        assert costs["champion_age"][0] == 1
        assert costs["get (training data, drift)"][0] == 2
        assert costs["save_card"][1] == {"PUT": 2}
        report = reg.verify("m")
        assert report.requests == 4 and reg.verify("m", hashes=True).requests == 4 + len(FILES)
        register_requests = costs["register (4 files)"][0]
        assert costs["register (4 files)"][1].get("PUT", 0) >= 2  # manifest + version record
        assert register_requests <= 20, costs["register (4 files)"]
    finally:
        proxy.stop()
