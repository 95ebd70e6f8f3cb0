"""The shared fixtures produce what the other tests assume."""

import os


def test_v2_runs_exist(v2_runs):
    for name, path in v2_runs.items():
        assert os.path.isfile(os.path.join(path, ".validate_storage_marker")), name
    assert not os.path.exists(os.path.join(v2_runs["failure_before_ckpt"], "checkpoint_manager_snapshot.json"))


def test_s3_runs_listed(s3_runs, s3_direct_run, moto):
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket="runs")["Contents"]]
    assert any(k.endswith("checkpoint_manager_snapshot.json") for k in keys)
    direct = moto.client().list_objects_v2(Bucket="direct")["Contents"]
    assert any(o["Key"].endswith("checkpoint_manager_snapshot.json") for o in direct)
