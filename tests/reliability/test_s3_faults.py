"""S3 faults between us and the store: 5xx, SlowDown, resets and slow responses for a
fraction of requests. Reads succeed through retries in bounded time, or fail clearly;
nothing half-written is left behind."""

from __future__ import annotations

import os
import time

import pytest
from s3_proxy import S3Proxy

import trainresults_dagster as trd
from trainresults_dagster import storage


def _fs(moto, endpoint):
    return storage.S3Settings(
        endpoint_url=endpoint, region_name=moto.region,
        aws_access_key_id=moto.access_key, aws_secret_access_key=moto.secret_key,
    ).filesystem()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_from_path_survives_faults(moto, s3_runs, seed):
    proxy = S3Proxy(moto.endpoint_url, fault_rate=0.3, seed=seed, slow_seconds=0.05)
    try:
        clean = trd.TrainResult.from_path(s3_runs["success"], moto.filesystem())
        start = time.monotonic()
        for _ in range(5):
            faulty = trd.TrainResult.from_path(s3_runs["success"], _fs(moto, proxy.endpoint_url))
            assert faulty.to_dict() == clean.to_dict()
            assert faulty.metrics_dataframe.equals(clean.metrics_dataframe)
        assert time.monotonic() - start < 60
        assert sum(proxy.stats["faults"].values()) > 0
    finally:
        proxy.stop()


def test_checkpoint_download_through_faults_is_whole_or_absent(moto, s3_runs, tmp_path):
    proxy = S3Proxy(moto.endpoint_url, fault_rate=0.3, seed=11, slow_seconds=0.05)
    try:
        result = trd.TrainResult.from_path(s3_runs["success"], _fs(moto, proxy.endpoint_url))
        for i in range(5):
            target = tmp_path / f"dl{i}"
            try:
                result.checkpoint.to_directory(target)
            except OSError:
                assert not target.exists()  # a failed download removes what it created
                continue
            assert sorted(os.listdir(target)) == [".metadata.json", "model.txt"]
    finally:
        proxy.stop()


def test_endpoint_down_is_a_clear_error_quickly(moto):
    proxy = S3Proxy(moto.endpoint_url)
    endpoint = proxy.endpoint_url
    proxy.stop()
    start = time.monotonic()
    with pytest.raises(OSError) as info:
        trd.TrainResult.from_path("s3://runs/v2/success", _fs(moto, endpoint))
    assert time.monotonic() - start < 60
    assert "runs/v2/success" in str(info.value) or "127.0.0.1" in str(info.value)
    assert moto.secret_key not in str(info.value)
