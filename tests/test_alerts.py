"""Alerts as data (contract keys, strict JSON, scrubbing, safe Markdown) and the webhook sink
against a real local HTTP server (signature, retries, persistent failure)."""

from __future__ import annotations

import hashlib
import hmac
import json
import math

import dagster as dg
import pytest
from alert_receiver import AlertReceiver
from conftest import SECRET_KEY

import trainresults_dagster as trd
from trainresults_dagster.alerts.alert import REQUIRED_KEYS, build_alert, render_text
from trainresults_dagster.errors import WebhookError
from trainresults_dagster.runs.result import training_context


@pytest.fixture
def receiver():
    rx = AlertReceiver()
    yield rx
    rx.stop()


@pytest.fixture
def failure_alert(v2_runs):
    result = trd.TrainResult.from_path(v2_runs["failure"])
    return build_alert("ray_run_failed", training_context(result), run_name="failure")


def test_alert_from_a_real_failed_run_has_the_contract_keys(failure_alert, v2_runs):
    for key in REQUIRED_KEYS:
        assert key in failure_alert, key
    assert failure_alert["kind"] == "ray_run_failed"
    assert failure_alert["run_uri"] == v2_runs["failure"]
    assert failure_alert["error_type"] == "WorkerGroupError"
    assert set(failure_alert["worker_failures"]) == {"0", "1"}
    assert "boom at epoch 2 on rank 1" in failure_alert["worker_failures"]["1"]
    # The failure job reports epochs 0..2 with a checkpoint each, then raises at epoch 2.
    assert failure_alert["last_metrics"]["epoch"] == 2
    assert failure_alert["last_checkpoint_uri"].startswith(v2_runs["failure"] + "/checkpoint_")
    # Strict JSON: a receiver written in any language can parse it.
    assert json.loads(json.dumps(failure_alert, allow_nan=False)) == failure_alert


def test_non_finite_metrics_survive_as_strings_and_the_id_is_stable():
    context = {"run_uri": "s3://b/r", "error_type": "E", "message": "m",
               "last_metrics": {"loss": math.nan, "val": {"gap": -math.inf}}}
    a = build_alert("ray_run_failed", context, failed_at="2026-01-01T00:00:00+00:00")
    b = build_alert("ray_run_failed", context, failed_at="2026-01-01T00:00:00+00:00")
    assert a["last_metrics"] == {"loss": "NaN", "val": {"gap": "-Infinity"}}
    assert a["alert_id"] == b["alert_id"]
    json.dumps(a, allow_nan=False)
    with pytest.raises(ValueError, match="kind"):
        build_alert("oops", context)


def test_secrets_never_reach_an_alert():
    context = {
        "run_uri": "s3://bucket/run",
        "error_type": "OSError",
        "message": f"could not connect with aws_secret_access_key={SECRET_KEY} password: hunter22",
        "worker_failures": {0: f"OSError: key {SECRET_KEY} rejected"},
        "last_metrics": {"note": SECRET_KEY},
    }
    alert = build_alert("ray_run_failed", context, secrets=[SECRET_KEY])
    text = json.dumps(alert)
    assert SECRET_KEY not in text
    assert "hunter22" not in text
    assert "aws_secret_access_key=***" in alert["message"]


def test_markdown_cannot_be_hijacked_by_error_text():
    context = {"run_uri": "/runs/job-7", "error_type": "ValueError",
               "message": "<!channel> ```rm -rf``` <http://evil|click> *bold*",
               "worker_failures": {"0": "ValueError: <!here> `x` <http://evil|me>"}}
    text = render_text(build_alert("ray_run_failed", context))
    assert "<!channel>" not in text and "<!here>" not in text
    assert "<http://evil" not in text
    assert "`x`" not in text and "'x'" in text  # backticks cannot close the code span
    assert "&lt;!here&gt;" in text


def test_webhook_sink_signs_the_exact_body(receiver, failure_alert):
    sink = trd.WebhookAlertSink(url=receiver.url, secret="s3cr3t-signing")
    sink.send(failure_alert)
    (req,) = receiver.wait_for(1, timeout=10)
    expected = hmac.new(b"s3cr3t-signing", req.body, hashlib.sha256).hexdigest()
    assert req.headers["X-Signature-SHA256"] == expected
    assert req.headers["X-Alert-ID"] == failure_alert["alert_id"]
    assert req.json["run_uri"] == failure_alert["run_uri"]
    assert req.json["worker_failures"] == failure_alert["worker_failures"]
    assert "s3cr3t-signing" not in req.body.decode()


def test_webhook_sink_without_secret_sends_no_signature(receiver, failure_alert):
    trd.WebhookAlertSink(url=receiver.url).send(failure_alert)
    (req,) = receiver.wait_for(1, timeout=10)
    assert "X-Signature-SHA256" not in req.headers


def test_webhook_sink_retries_transient_errors(failure_alert):
    rx = AlertReceiver(statuses=[503, 500])
    try:
        trd.WebhookAlertSink(url=rx.url, retries=3, backoff_seconds=0.01).send(failure_alert)
        reqs = rx.wait_for(3, timeout=10)
    finally:
        rx.stop()
    assert len(reqs) == 3
    assert len({r.headers["X-Delivery-ID"] for r in reqs}) == 1  # one logical delivery
    assert {r.headers["X-Alert-ID"] for r in reqs} == {failure_alert["alert_id"]}


def test_webhook_sink_persistent_failure_is_a_clear_error(failure_alert):
    rx = AlertReceiver(statuses=[500] * 10)
    try:
        sink = trd.WebhookAlertSink(url=rx.url + "?token=abc", secret="sig-secret", retries=2,
                                    backoff_seconds=0.01)
        with pytest.raises(WebhookError) as info:
            sink.send(failure_alert)
    finally:
        rx.stop()
    message = str(info.value)
    assert "HTTP 500" in message and "3 attempt" in message
    assert "127.0.0.1" in message and "receiver says no" in message
    assert "token=abc" not in message and "sig-secret" not in message


def test_webhook_sink_validates_its_url_when_configured():
    with pytest.raises(Exception, match="http:// or https://"):
        trd.WebhookAlertSink(url="ftp://example.com/alerts")
    # An EnvVar is resolved by Dagster at run time, so it is not checked as a URL now.
    trd.WebhookAlertSink(url=dg.EnvVar("ALERT_URL"))
