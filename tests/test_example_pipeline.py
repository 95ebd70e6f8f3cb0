"""The example users start from: the whole pipeline through Dagster (twice), its
definitions through Dagster's CLI, and the ``trainresults`` console script on real runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dagster as dg
import pytest

REPO = os.path.join(os.path.dirname(__file__), "..")
BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    env = {"TRAINRESULTS_STORAGE": str(root / "store"), "TRAINRESULTS_EPOCHS": "3",
           "TRAINRESULTS_SEED": "7", "DAGSTER_HOME": str(root / "home")}
    os.makedirs(env["DAGSTER_HOME"])
    return env


@pytest.fixture(scope="module")
def demo_runs(ray_session, demo_env):
    """Materialise every example asset twice in one Dagster instance (same data seed)."""
    mp = pytest.MonkeyPatch()
    for k, v in demo_env.items():
        mp.setenv(k, v)
    try:
        import importlib

        from trainresults_dagster.examples import definitions

        demo = importlib.reload(definitions)  # locations come from the environment
        instance = dg.DagsterInstance.get()
        runs = [
            dg.materialize(demo.demo_assets, resources=demo.resources(), instance=instance,
                           raise_on_error=False)
            for _ in range(2)
        ]
        yield demo, instance, runs
    finally:
        mp.undo()


def _passed(run):
    return [e.passed for e in run.get_asset_check_evaluations()]


def test_first_run_promotes_and_hands_off(demo_runs):
    demo, _instance, (first, _second) = demo_runs
    assert first.success
    assert _passed(first) == [True]
    registry = demo.resources()["checkpoint_registry"]
    champion = registry.get(demo.MODEL)
    assert champion.version == 1 and champion.checkpoint.exists()
    predictions = first.asset_materializations_for_node("batch_predictions")[-1].metadata
    assert predictions["dagster/row_count"].value == 20000
    trained = first.asset_materializations_for_node("trained_model")[-1].metadata
    assert 0.0 < trained["metrics/val_loss"].value < 1.0
    assert trained["num_checkpoints"].value == 3


def test_second_run_without_improvement_keeps_the_champion(demo_runs):
    demo, _instance, (_first, second) = demo_runs
    assert _passed(second) == [False]
    assert not second.asset_materializations_for_node("batch_predictions")  # gated
    registry = demo.resources()["checkpoint_registry"]
    assert registry.get(demo.MODEL).version == 1
    assert [v.version for v in registry.versions(demo.MODEL)] == [1, 2]


def test_cli_on_the_demo_run(demo_runs, demo_env):
    demo, instance, (first, _second) = demo_runs
    run_uri = first.asset_materializations_for_node("trained_model")[-1].metadata[
        "dagster/uri"].value
    env = {**os.environ, **demo_env}
    out = subprocess.run([f"{BIN}/trainresults", "inspect", run_uri, "--json"], env=env,
                         capture_output=True, text=True, check=True)
    summary = json.loads(out.stdout)
    assert summary["status"] == "finished" and summary["num_checkpoints"] == 3
    best = subprocess.run([f"{BIN}/trainresults", "best", run_uri, "--metric", "val_loss",
                           "--mode", "min"], env=env, capture_output=True, text=True, check=True)
    assert best.stdout.strip().startswith(run_uri + "/checkpoint_")
    registry = os.path.join(demo_env["TRAINRESULTS_STORAGE"], "registry")
    listed = subprocess.run([f"{BIN}/trainresults", "registry", "--base", registry, "--json",
                             "list", demo.MODEL], env=env, capture_output=True, text=True,
                            check=True)
    assert [v["version"] for v in json.loads(listed.stdout)] == [1, 2]
    def registry_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([f"{BIN}/trainresults", "registry", "--base", registry, *args],
                              env=env, capture_output=True, text=True, check=check)

    conflict = registry_cli("promote", demo.MODEL, "--version", "2", "--expected-version", "5",
                            check=False)
    assert conflict.returncode == 5 and "champion" in conflict.stderr
    registry_cli("promote", demo.MODEL, "--version", "2", "--expected-version", "1")
    shown = json.loads(registry_cli("--json", "show", demo.MODEL).stdout)
    assert shown["version"] == 2
    registry_cli("rollback", demo.MODEL)
    assert json.loads(registry_cli("--json", "show", demo.MODEL).stdout)["version"] == 1
    history = json.loads(registry_cli("--json", "history", demo.MODEL).stdout)
    assert [h["version"] for h in history][-2:] == [2, 1]
    assert "rollback" in registry_cli("history", demo.MODEL).stdout
    bad = subprocess.run([f"{BIN}/trainresults", "best", run_uri, "--metric", "nope",
                          "--mode", "min"], env=env, capture_output=True, text=True)
    assert bad.returncode == 4 and "nope" in bad.stderr
    missing = subprocess.run([f"{BIN}/trainresults", "inspect", run_uri + "-missing"], env=env,
                             capture_output=True, text=True)
    assert missing.returncode == 3 and "nothing is there" in missing.stderr


def test_definitions_validate_with_dagster_cli(demo_env):
    env = {**os.environ, **demo_env}
    out = subprocess.run([f"{BIN}/dagster", "definitions", "validate", "-w", "workspace.yaml"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "trainresults_demo" in out.stdout + out.stderr


def test_loading_the_example_warns_about_nothing_in_our_code(demo_env, monkeypatch):
    import importlib
    import warnings

    for k, v in demo_env.items():
        monkeypatch.setenv(k, v)
    package = os.path.dirname(os.path.dirname(os.path.abspath(dg.__file__)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from trainresults_dagster.examples import definitions

        demo = importlib.reload(definitions)
        dg.Definitions.validate_loadable(demo.defs)
    ours = [w for w in caught if "trainresults_dagster" in w.filename
            or (not w.filename.startswith(package) and "warnings" not in w.filename)]
    assert ours == [], [f"{w.filename}:{w.lineno}: {w.message}" for w in ours]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_webserver_serves_the_example_and_its_metrics(demo_runs, demo_env):
    import time
    import urllib.request

    port = _free_port()
    env = {**os.environ, **demo_env}
    proc = subprocess.Popen(
        [f"{BIN}/dagster-webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/server_info", timeout=2)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise AssertionError("dagster-webserver did not start") from None
                time.sleep(0.5)
        query = """
        { assetsOrError { ... on AssetConnection { nodes { key { path } } } }
          assetOrError(assetKey: {path: ["trained_model"]}) {
            ... on Asset { assetMaterializations(limit: 1) {
              metadataEntries { label ... on FloatMetadataEntry { floatValue } } } } } }
        """
        req = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query}).encode(),
                                     headers={"Content-Type": "application/json"})
        data = json.loads(urllib.request.urlopen(req, timeout=60).read())["data"]
        keys = {"/".join(n["key"]["path"]) for n in data["assetsOrError"]["nodes"]}
        assert {"training_data", "trained_model", "best_checkpoint", "champion",
                "batch_predictions", "serving"} <= keys
        entries = data["assetOrError"]["assetMaterializations"][0]["metadataEntries"]
        floats = {e["label"]: e.get("floatValue") for e in entries}
        assert floats.get("metrics/val_loss") is not None
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_example_runs_end_to_end_on_s3(ray_session, moto, tmp_path, monkeypatch):
    """``TRAINRESULTS_STORAGE=s3://...`` (the README's S3 variant) on the moto server: train,
    select, promote, batch predictions and serving, every location in the bucket."""
    import importlib

    bucket = moto.new_bucket("demo")
    env = {"TRAINRESULTS_STORAGE": f"s3://{bucket}/demo", "TRAINRESULTS_EPOCHS": "2",
           "TRAINRESULTS_SEED": "7", "DAGSTER_HOME": str(tmp_path / "home"), **moto.env()}
    os.makedirs(env["DAGSTER_HOME"])
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from trainresults_dagster.examples import definitions

    demo = importlib.reload(definitions)
    try:
        run = dg.materialize(demo.demo_assets, resources=demo.resources(),
                             instance=dg.DagsterInstance.get())
    finally:
        monkeypatch.undo()
        importlib.reload(definitions)
    assert run.success
    predictions = run.asset_materializations_for_node("batch_predictions")[-1].metadata
    assert predictions["dagster/row_count"].value == 20000
    assert predictions["trainresults/output_uri"].value.startswith(f"s3://{bucket}/demo/")
    keys = {o["Key"].split("/")[1] for o in moto.client().list_objects_v2(
        Bucket=bucket, MaxKeys=1000)["Contents"]}
    assert {"ray", "results", "registry"} <= keys, keys
