"""Serving hand-off: the serving asset with a WebhookTarget against a real local HTTP server
(HMAC, retries, failures), and with a RayServeTarget against a real Ray Serve app deployed
declaratively on the session's Ray (replicas reload in reconfigure(), no restart)."""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest
from conftest import free_port
from handoff_helpers import Receiver, make_registry

import trainresults_dagster as trd
from trainresults_dagster.dagster.json_io_manager import JSON_IO_MANAGER_KEY, JsonIOManager
from trainresults_dagster.webhook import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    encode_json,
    post_json,
    redact_url,
    sign_body,
    verify_signature,
)

SECRET = "hmac-secret-7c1e"
APP_DIR = Path(__file__).parent / "serve_app"


@pytest.fixture(scope="module")
def registry(v2_runs, tmp_path_factory):
    return make_registry(v2_runs["failure"], str(tmp_path_factory.mktemp("registry")))


def serving_defs(registry, tmp_path, target, value=None):
    """``champion`` (the registry's alias, or ``value``) -> ``served_model`` via ``target``."""

    @dg.asset(io_manager_key=JSON_IO_MANAGER_KEY)
    def champion():  # a ModelVersion, or the Checkpoint ``value``
        return value if value is not None else registry.get("m")

    served = trd.build_serving_asset("served_model", model_asset="champion")
    resources = {
        JSON_IO_MANAGER_KEY: JsonIOManager(base_path=str(tmp_path / "values")),
        "serving_target": target,
    }
    return [champion, served], resources


def stored_values(tmp_path) -> str:
    return "".join(p.read_text() for p in (tmp_path / "values").rglob("*.json"))


# --------------------------------------------------------------------------- webhook


def test_webhook_posts_a_signed_manifest(registry, tmp_path):
    champion = registry.get("m")
    with Receiver() as receiver:
        target = trd.WebhookTarget(receiver.url, SECRET)
        assets, resources = serving_defs(registry, tmp_path, target)
        result = dg.materialize(assets, resources=resources)
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    body = request["body"]
    assert request["headers"][SIGNATURE_HEADER] == sign_body(SECRET, body)
    assert verify_signature(SECRET, body, request["headers"][SIGNATURE_HEADER])
    assert not verify_signature("wrong", body, request["headers"][SIGNATURE_HEADER])
    manifest = json.loads(body)
    assert manifest["event"] == "model_handoff"
    assert (manifest["model"], manifest["version"]) == ("m", 2)
    assert manifest["checkpoint_uri"] == champion.checkpoint.uri
    assert manifest["metrics"]["epoch"] == 1 and manifest["metrics"] == champion.metrics
    assert manifest["lineage"] == champion.lineage
    assert manifest["dagster_run_id"] == result.run_id

    meta = result.asset_materializations_for_node("served_model")[0].metadata
    assert meta["trainresults/model_version"].value == 2
    assert meta["trainresults/checkpoint_uri"].value == champion.checkpoint.uri
    deployment = result.output_for_node("served_model")["deployment"]
    assert (deployment["status"], deployment["attempts"], deployment["signed"]) == (200, 1, True)
    assert SECRET not in stored_values(tmp_path) and SECRET not in str(meta)


def test_webhook_retries_transient_failures_with_one_delivery_id(registry):
    with Receiver([(500, "oops"), (503, "busy")]) as receiver:
        target = trd.WebhookTarget(receiver.url, backoff_seconds=0.01)
        record = target.deploy({"model": "m", "version": 2, "checkpoint_uri": "/x"})
    assert (record["status"], record["attempts"]) == (200, 3)
    ids = {r["headers"][DELIVERY_HEADER] for r in receiver.requests}
    assert len(receiver.requests) == 3 and ids == {record["delivery_id"]}
    assert all(SIGNATURE_HEADER not in r["headers"] for r in receiver.requests)  # no secret


@pytest.mark.parametrize(
    ("script", "status", "attempts"),
    [
        ([(500, "database is down")] * 3, 500, 3),
        ([(403, f"bad signature for {SECRET}")], 403, 1),
    ],
)
def test_webhook_failure_fails_the_step_with_status_and_body(
    registry, tmp_path, script, status, attempts
):
    with Receiver(script) as receiver:
        target = trd.WebhookTarget(receiver.url, SECRET, retries=2, backoff_seconds=0.01)
        assets, resources = serving_defs(registry, tmp_path, target)
        result = dg.materialize(assets, resources=resources, raise_on_error=False)
    assert not result.success
    assert len(receiver.requests) == attempts  # 4xx is not retried: resending cannot fix it
    failure = next(e for e in result.all_events if e.is_step_failure)
    data = failure.step_failure_data
    text = data.error.message + str(data.user_failure_data.description)
    assert f"HTTP {status}" in text and f"{attempts} attempt(s)" in text
    assert "database is down" in text or "bad signature for ***" in text
    assert "127.0.0.1" in text and SECRET not in text
    assert data.user_failure_data.metadata["trainresults/status"].value == status


def test_missing_checkpoint_is_not_handed_off(registry, tmp_path):
    gone = trd.Checkpoint(str(tmp_path / "deleted-by-retention"))
    with Receiver() as receiver:
        assets, resources = serving_defs(registry, tmp_path, trd.WebhookTarget(receiver.url), gone)
        result = dg.materialize(assets, resources=resources, raise_on_error=False)
    assert not result.success and receiver.requests == []
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_failure_data.error.cause.cls_name == "CheckpointMissingError"


def test_http_helpers():
    assert redact_url("https://user:pw@hooks.slack.com/services/T0/B0/XYZ?t=1") == (
        "https://hooks.slack.com/services/…?…"
    )
    assert redact_url("http://127.0.0.1:8080/hook") == "http://127.0.0.1:8080/hook"
    encoded = encode_json({"b": math.nan, "a": [math.inf, 1]})
    assert encoded == b'{"a":[null,1],"b":null}'
    with pytest.raises(ValueError, match="http:// or https://"):
        post_json("file:///etc/passwd", {})
    with pytest.raises(Exception, match="http:// or https://"):
        trd.WebhookTarget("ftp://example.com/hook")
    with Receiver([(302, "moved")]) as receiver, pytest.raises(trd.TrainResultsError) as moved:
        post_json(receiver.url, {"a": 1}, retries=2, backoff_seconds=0.01)
    assert moved.value.status == 302 and len(receiver.requests) == 1  # never a silent GET
    with pytest.raises(trd.TrainResultsError, match="no response") as err:
        post_json(f"http://127.0.0.1:{free_port()}/x", {}, retries=1, backoff_seconds=0.01)
    assert err.value.status is None


# --------------------------------------------------------------------------- Ray Serve


def dashboard_url() -> str:
    import ray

    return "http://" + ray._private.worker.global_worker.node.address_info["webui_url"]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def serve_app(ray_session):
    """The ``handoff`` app, deployed through the Serve REST API as ``serve deploy`` does."""
    from ray import serve
    from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

    port = free_port()
    client = ServeSubmissionClient(dashboard_url())
    client.deploy_applications(
        {
            "http_options": {"host": "127.0.0.1", "port": port},
            "applications": [
                {
                    "name": "handoff",
                    "route_prefix": "/handoff",
                    "import_path": "handoff_app:app",
                    # local:// = a folder present on every node (one node here), no upload
                    "runtime_env": {"working_dir": f"local://{APP_DIR}"},
                    "deployments": [{"name": "ModelServer", "user_config": {"greeting": "kept"}}],
                }
            ],
        }
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        app = client.get_serve_details()["applications"].get("handoff") or {}
        if app.get("status") == "RUNNING":
            break
        assert app.get("status") != "DEPLOY_FAILED", app.get("message")
        time.sleep(0.5)
    else:
        pytest.fail(f"Serve app did not start: {app}")
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/handoff", dashboard=dashboard_url())
    serve.shutdown()


def test_ray_serve_hand_off_reloads_replica_without_restart(serve_app, registry, tmp_path):
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    if is_token_auth_enabled():  # the target must send the token, as Ray's own client does
        with pytest.raises(urllib.error.HTTPError) as denied:
            get_json(serve_app.dashboard + "/api/serve/applications/")
        assert denied.value.code == 401

    before = get_json(serve_app.url)
    assert before["model"] is None and before["reconfigures"] == 1
    pid = before["pid"]

    target = trd.RayServeTarget("handoff", "ModelServer", address=serve_app.dashboard)
    assets, resources = serving_defs(registry, tmp_path, target)
    instance = dg.DagsterInstance.ephemeral()
    seen = []
    for step in ("promote 1", "promote 2", "rollback"):
        if step == "rollback":
            registry.rollback("m", reason="test")
        else:
            registry.promote("m", int(step[-1]))
        champion = registry.get("m")
        result = dg.materialize(assets, resources=resources, instance=instance)
        record = result.output_for_node("served_model")["deployment"]
        answer = get_json(serve_app.url)
        assert answer["model"].startswith(f"epoch={champion.version - 1} ")
        assert answer["version"] == champion.version
        assert answer["user_config"] == {
            "greeting": "kept", "checkpoint_uri": champion.checkpoint.uri, "model": "m",
            "version": champion.version,
        }
        assert answer["pid"] == pid  # the same replica process: reloaded, not restarted
        assert [r["pid"] for r in record["replicas"]] == [pid]
        assert record["user_config"] == answer["user_config"] and record["status"] == "HEALTHY"
        seen.append((answer["version"], answer["reconfigures"]))
    assert seen == [(1, 2), (2, 3), (1, 4)]
    assert target.current_user_config()["version"] == 1

    # The same champion again: nothing to change, nothing redeployed.
    again = target.deploy({"model": "m", "version": 1, "checkpoint_uri": champion.checkpoint.uri})
    assert again["changed"] is False and get_json(serve_app.url)["reconfigures"] == 4


def test_ray_serve_target_names_what_is_missing(serve_app):
    manifest = {"model": "m", "version": 1, "checkpoint_uri": "/x"}
    with pytest.raises(trd.ServingTargetError, match=r"found \['ModelServer'\]"):
        trd.RayServeTarget("handoff", "Nope", address=serve_app.dashboard).deploy(manifest)
    with pytest.raises(trd.ServingTargetError, match=r"application 'other'.*found \['handoff'\]"):
        trd.RayServeTarget("other", "ModelServer", address=serve_app.dashboard).deploy(manifest)
    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(trd.ServingTargetError, match="connect to the Ray dashboard"):
        trd.RayServeTarget("handoff", "ModelServer", address=nobody).deploy(manifest)


def test_ray_serve_target_reports_what_runs_and_the_drift_check_compares(
    serve_app, registry, tmp_path
):
    from trainresults_dagster.dagster.guardrails import DRIFT_CHECK

    target = trd.RayServeTarget("handoff", "ModelServer", address=serve_app.dashboard)
    registry.promote("m", 2)
    champion = registry.get("m")
    assets, resources = serving_defs(registry, tmp_path, target)
    checks = trd.build_champion_checks("champion", model="m", serving_asset=assets[1])
    resources["checkpoint_registry"] = registry
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([*assets, *checks], resources=resources, instance=instance)
    record = result.output_for_node("served_model")["deployment"]
    assert record["deployed"] == {"checkpoint_uri": champion.uri, "model": "m", "version": 2}
    assert target.running() == record["deployed"]
    drift = {e.check_name: e for e in result.get_asset_check_evaluations()}[DRIFT_CHECK]
    assert drift.passed and "RayServeTarget reports version 2" in drift.description

    # The alias moves without a hand-off: the live user_config still names version 2.
    registry.rollback("m", reason="test drift")
    later = dg.materialize([*assets, *checks], resources=resources, instance=instance,
                           selection=dg.AssetSelection.checks(*checks), raise_on_error=False)
    drift = {e.check_name: e for e in later.get_asset_check_evaluations()}[DRIFT_CHECK]
    assert not drift.passed and drift.severity == dg.AssetCheckSeverity.ERROR
    assert "RayServeTarget reports m version 2" in drift.description
    assert "points at version 1" in drift.description
    assert get_json(serve_app.url)["version"] == 2  # the check only looks
