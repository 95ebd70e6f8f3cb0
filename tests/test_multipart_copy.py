"""Objects too big for one ``CopyObject`` (AWS: 5 GiB) are copied server-side part by part
(``UploadPartCopy``), on the moto server over HTTP, with the threshold lowered so a test
object of a few MiB takes the multipart path (moto, like AWS, refuses parts under 5 MiB
except the last). A copy that fails is aborted: no upload left open, no target object."""

from __future__ import annotations

import hashlib
import os
import urllib.parse

import pytest
from s3_proxy import S3Proxy

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import StorageError
from trainresults_dagster.registry.registry import Registry
from trainresults_dagster.runs.checkpoint import Checkpoint

MIB = 2**20


@pytest.fixture
def small_threshold(monkeypatch):
    monkeypatch.setattr(storage, "MULTIPART_COPY_THRESHOLD", 6 * MIB)
    monkeypatch.setattr(storage, "MULTIPART_PART_BYTES", 5 * MIB)


@pytest.fixture
def proxy(moto):
    p = S3Proxy(moto.endpoint_url)
    yield p
    p.stop()


def settings(moto, endpoint):
    return storage.S3Settings(endpoint_url=endpoint, region_name=moto.region,
                              aws_access_key_id=moto.access_key,
                              aws_secret_access_key=moto.secret_key)


def checkpoint(moto, bucket: str) -> dict[str, bytes]:
    """A checkpoint with one 13 MiB shard (3 parts: 5 + 5 + 3) and a small file."""
    files = {"shard-0.bin": os.urandom(13 * MIB + 123), "meta/.metadata.json": b'{"epoch": 1}'}
    client = moto.client()
    for rel, data in files.items():
        client.put_object(Bucket=bucket, Key=f"run/ckpt/{rel}", Body=data,
                          ContentType="application/x-test", Metadata={"who": "test"})
    return files


def part_copies(moto) -> list[str]:
    return [ln for ln in moto.request_log() if "partNumber=" in ln and "PUT" in ln]


def test_big_object_is_copied_part_by_part_server_side(moto, small_threshold, proxy):
    bucket = moto.new_bucket("mp")
    files = checkpoint(moto, bucket)
    fs = settings(moto, proxy.endpoint_url).filesystem()
    before = len(part_copies(moto))
    proxy.reset_stats()
    count = storage.copy_tree(fs, f"{bucket}/run/ckpt", fs, f"{bucket}/copy")
    assert count == 2
    client = moto.client()
    for rel, data in files.items():
        got = client.get_object(Bucket=bucket, Key=f"copy/{rel}")
        assert hashlib.sha256(got["Body"].read()).digest() == hashlib.sha256(data).digest(), rel
    head = client.head_object(Bucket=bucket, Key="copy/shard-0.bin")
    assert head["ContentType"] == "application/x-test" and head["Metadata"] == {"who": "test"}
    assert len(part_copies(moto)) - before == 3  # 5 + 5 + 3 MiB
    # Server-side: the 13 MiB never passed through this process.
    assert proxy.stats["bytes_in"] + proxy.stats["bytes_out"] < MIB
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_register_of_a_big_shard_uses_multipart_copy(moto, small_threshold):
    bucket = moto.new_bucket("mpreg")
    files = checkpoint(moto, bucket)
    s3 = settings(moto, moto.endpoint_url)
    reg = Registry.open(f"s3://{bucket}/registry", s3)
    ckpt = Checkpoint(f"{bucket}/run/ckpt", s3.filesystem())
    before = len(part_copies(moto))
    version = reg.register("big", ckpt, metrics={"loss": 0.1})
    assert len(part_copies(moto)) - before == 3
    assert version.size_bytes == sum(len(d) for d in files.values())
    with version.checkpoint.as_directory() as local:
        with open(os.path.join(local, "shard-0.bin"), "rb") as fh:
            assert fh.read() == files["shard-0.bin"]


def test_failed_part_aborts_the_upload(moto, small_threshold):
    bucket = moto.new_bucket("mpfail")
    checkpoint(moto, bucket)

    def second_part_fails(method: str, path: str, headers) -> str | None:
        query = urllib.parse.parse_qs(urllib.parse.urlparse(path).query)
        return "internal" if method == "PUT" and query.get("partNumber") == ["2"] else None

    failing = S3Proxy(moto.endpoint_url, hook=second_part_fails)
    try:
        fs = settings(moto, failing.endpoint_url).filesystem()
        with pytest.raises(StorageError, match="multipart server-side copy .* aborted"):
            storage.copy_tree(fs, f"{bucket}/run/ckpt", fs, f"{bucket}/copy", threads=1)
        assert failing.stats["faults"]["internal"] >= 1
    finally:
        failing.stop()
    client = moto.client()
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="copy/").get("Contents", [])]
    assert "copy/shard-0.bin" not in keys


def test_default_threshold_is_below_the_aws_copy_limit():
    assert storage.MULTIPART_COPY_THRESHOLD < 5 * 2**30
    assert 5 * MIB <= storage.MULTIPART_PART_BYTES <= 5 * 2**30
