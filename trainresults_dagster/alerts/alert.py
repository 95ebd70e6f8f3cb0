"""Alerts about failed training runs, as plain JSON-able dicts (no Dagster, no ray).

An alert carries the training context Dagster's stock failure alerts lack::

    {"kind": "ray_run_failed" | "dagster_run_failed",
     "alert_id": stable id (the same on every re-delivery, for receivers to de-duplicate),
     "run_uri", "run_name", "error_type", "message",
     "worker_failures": {"<rank>": "Type: message"},
     "last_checkpoint_uri", "last_metrics",
     "title": one line, "text": Markdown (Slack mrkdwn-safe) summary,
     ... kind-specific keys: "dagster_run_id", "dagster_run_url", "step_key", "failed_at",
     for a failed trial of a Tune sweep or V1 run "trial_id", "config", "experiment_uri",
     and for one alert per experiment "failed_trials" (each with "trial_id", "run_uri",
     "error_type", "message", "config", "last_checkpoint_uri", "last_metrics"),
     "trial_ids", "num_trials", "num_failed_trials" ...}

Every string in an alert is bounded in size, non-finite metrics become the strings
``"NaN"``/``"Infinity"``/``"-Infinity"`` (strict JSON has no literal for them, and a NaN
loss is often *why* a run failed), and ``scrub`` removes secrets before anything leaves.

A sink is any object with ``send(alert)``. ``trd.WebhookAlertSink`` (``dagster/webhooks.py``)
posts the alert as JSON. To post to Slack with dagster-slack, wrap its resource::

    import dagster as dg
    from dagster_slack import SlackResource

    class SlackAlertSink(dg.ConfigurableResource):
        slack: SlackResource
        channel: str

        def send(self, alert: dict) -> None:
            self.slack.get_client().chat_postMessage(channel=self.channel, text=alert["text"])

    defs = dg.Definitions(sensors=[...], resources={"alert_sink": SlackAlertSink(
        slack=SlackResource(token=dg.EnvVar("SLACK_TOKEN")), channel="#training")})

(A Slack *incoming webhook* URL works with ``WebhookAlertSink`` directly: Slack shows the
alert's ``text`` field and ignores the other keys.)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from typing import Any

import trainresults_dagster.storage as storage
from trainresults_dagster.runs.failure import (
    CONTEXT_KEYS,
    clip,
    first_line,
    format_failure,
    rank_order,
    slack_code,
)
from trainresults_dagster.runs.metrics import flatten_metrics

ALERT_KINDS = ("ray_run_failed", "dagster_run_failed")
#: Keys every alert has (the public contract), whatever is known about the failure: the
#: kind plus the training context every failure report carries.
REQUIRED_KEYS = ("kind", *CONTEXT_KEYS)
MAX_MESSAGE_CHARS = 4000
MAX_RANK_CHARS = 500
MAX_RANKS = 64
MAX_METRICS_CHARS = 8000
MAX_STRING_CHARS = 2000
#: Failed trials listed in the text of a per-experiment alert (all are in ``failed_trials``).
MAX_TRIALS_SHOWN = 10

# ``name=value`` pairs that look like credentials, in case user code put one in an error
# message (e.g. a connection string in an exception). Known secret values are removed too.
_CREDENTIAL_PAIR = re.compile(
    r"(?i)\b(aws_secret_access_key|aws_session_token|secret_key|secret|password|passwd|token"
    r"|api_key|apikey)(\s*[=:]\s*)(['\"]?)[^\s'\",;&]+"
)


def alert_id(*parts: Any) -> str:
    """A stable id for one failure: the same inputs give the same id on every re-delivery."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).hexdigest()
    return digest[:32]


def build_alert(
    kind: str,
    context: Mapping[str, Any],
    *,
    secrets: Iterable[str | None] = (),
    **extra: Any,
) -> dict[str, Any]:
    """An alert from a training context (``runs.failure.training_context`` keys) plus extras.

    ``extra`` keys (``dagster_run_id``, ``failed_at``, ...) are added as given, after the
    same clean-up as the context. ``title`` and ``text`` are rendered unless given.
    """
    if kind not in ALERT_KINDS:
        raise ValueError(f"expected alert kind to be one of {ALERT_KINDS}, got {kind!r}")
    failures = context.get("worker_failures") or {}
    if not isinstance(failures, Mapping):
        failures = {"?": str(failures)}
    ranks = sorted(failures.items(), key=lambda kv: rank_order(kv[0]))
    worker_failures = {str(k): clip(str(v), MAX_RANK_CHARS) for k, v in ranks[:MAX_RANKS]}
    if len(ranks) > MAX_RANKS:
        worker_failures["..."] = f"{len(ranks) - MAX_RANKS} more ranks failed"
    alert: dict[str, Any] = {
        "kind": kind,
        "run_uri": _opt_str(context.get("run_uri")),
        "error_type": _opt_str(context.get("error_type")),
        "message": clip(str(context.get("message") or ""), MAX_MESSAGE_CHARS) or None,
        "worker_failures": worker_failures,
        "last_checkpoint_uri": _opt_str(context.get("last_checkpoint_uri")),
        "last_metrics": _bounded_metrics(context.get("last_metrics")),
    }
    for key, value in extra.items():
        alert[key] = jsonable(value)
    alert.setdefault("alert_id", alert_id(kind, alert["run_uri"], alert.get("failed_at")))
    alert.setdefault("title", render_title(alert))
    alert.setdefault("text", render_text(alert))
    return scrub(alert, secrets)


def jsonable(value: Any) -> Any:
    """Plain JSON (``storage.json_value`` with NaN/inf as text), every string bounded."""
    clean = storage.json_value(value, nan="text")

    def bound(v: Any) -> Any:
        if isinstance(v, str):
            return clip(v, MAX_STRING_CHARS)
        if isinstance(v, dict):
            return {k: bound(x) for k, x in v.items()}
        if isinstance(v, list):
            return [bound(x) for x in v]
        return v

    return bound(clean)


def scrub(value: Any, secrets: Iterable[str | None] = ()) -> Any:
    """Remove known secret values and ``secret=...``-looking pairs from every string."""
    known = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def clean(v: Any) -> Any:
        if isinstance(v, str):
            for s in known:
                v = v.replace(s, "***")
            return _CREDENTIAL_PAIR.sub(r"\1\2\3***", v)
        if isinstance(v, dict):
            return {clean(k): clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v

    return clean(value)


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------

def render_title(alert: Mapping[str, Any]) -> str:
    """One plain-text line (not Markdown)."""
    what = alert.get("error_type") or "failure"
    run = alert.get("run_name") or _tail(alert.get("run_uri"))
    if alert.get("kind") == "dagster_run_failed":
        where = f"Dagster run {str(alert.get('dagster_run_id') or '')[:8]}"
        if alert.get("step_key"):
            where += f" step {alert['step_key']}"
        return f"{where} failed: {what}" + (f" (training run {run})" if run else "")
    if isinstance(alert.get("failed_trials"), list):
        total = alert.get("num_trials")
        count = f"{alert.get('num_failed_trials')}" + (f" of {total}" if total else "")
        return f"Ray Tune experiment {run or 'unknown'}: {count} trial(s) failed: {what}"
    if alert.get("trial_id"):
        return f"Ray run {run or 'unknown'} trial {alert['trial_id']} failed: {what}"
    return f"Ray Train run {run or 'unknown'} failed: {what}"


def render_text(alert: Mapping[str, Any]) -> str:
    """A short Slack-mrkdwn summary (``format_failure``): every string that comes from a run
    or a user is code-quoted, so it cannot format, link or mention."""
    if alert.get("kind") == "dagster_run_failed":
        head = f"*Training step failed* in Dagster run {slack_code(alert.get('dagster_run_id'))}"
        if alert.get("step_key"):
            head += f", step {slack_code(alert['step_key'])}"
    elif isinstance(alert.get("failed_trials"), list):
        run = alert.get("run_name") or _tail(alert.get("run_uri"))
        head = f"*Ray Tune trials failed* in {slack_code(run)}"
    else:
        run = alert.get("run_name") or _tail(alert.get("run_uri"))
        head = f"*Ray Train run failed*: {slack_code(run)}"
        if alert.get("trial_id"):
            head += f", trial {slack_code(alert['trial_id'])}"
    lines = [head, *format_failure(alert, "slack")]
    if isinstance(alert.get("config"), Mapping) and alert["config"]:
        lines.append(f"Config: {slack_code(_config_text(alert['config']))}")
    trials = alert.get("failed_trials")
    if isinstance(trials, list):
        for trial in trials[:MAX_TRIALS_SHOWN]:
            if isinstance(trial, Mapping):
                lines.append(
                    f"• trial {slack_code(trial.get('trial_id'))}: "
                    f"{slack_code(str(trial.get('error_type')) + ': ' + first_line(trial.get('message') or ''))}"
                    f" config {slack_code(_config_text(trial.get('config') or {}))}"
                )
        if len(trials) > MAX_TRIALS_SHOWN:
            lines.append(f"• ... and {len(trials) - MAX_TRIALS_SHOWN} more")
    if alert.get("dagster_run_url"):
        url = str(alert["dagster_run_url"]).replace("|", "%7C").replace(">", "%3E")
        lines.append(f"Dagster run: <{url}|open in Dagster>")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _config_text(config: Any) -> str:
    """``a=1, model/width=16``: a trial's config on one line, bounded."""
    flat = flatten_metrics(config) if isinstance(config, Mapping) else {"config": config}
    return clip(", ".join(f"{k}={v}" for k, v in flat.items()), 300)


def _opt_str(value: Any) -> str | None:
    return None if value is None or value == "" else clip(str(value), MAX_STRING_CHARS)


def _tail(uri: Any) -> str:
    return str(uri).rstrip("/").rsplit("/", 1)[-1] if uri else ""


def _bounded_metrics(metrics: Any) -> Any:
    """Metrics as JSON; past ``MAX_METRICS_CHARS`` only the numeric leaves are kept."""
    if metrics is None:
        return None
    clean = jsonable(metrics)
    if len(repr(clean)) <= MAX_METRICS_CHARS or not isinstance(clean, dict):
        return clean
    flat = {k: v for k, v in flatten_metrics(clean).items()
            if isinstance(v, bool | int | float) or v in ("NaN", "Infinity", "-Infinity")}
    if len(repr(flat)) <= MAX_METRICS_CHARS:
        return flat
    return dict(list(flat.items())[:100])
