"""Signed webhooks as Dagster resources: ``WebhookTarget`` (hand-off) and
``WebhookAlertSink`` (alerts) share ``SignedWebhook``, so both validate, sign and retry the
same way (``trainresults_dagster.webhook`` does the signing and the POST).

A sink is any Dagster resource (or plain object) with ``send(alert: dict) -> None`` that
raises when the alert was not delivered (``AlertSink``); ``LogAlertSink`` is the one for
when no alert URL is configured."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import dagster as dg
from pydantic import Field, field_validator

from trainresults_dagster.errors import WebhookError
from trainresults_dagster.webhook import get_json, post_json, redact_url


class SignedWebhook(dg.ConfigurableResource):
    """POST JSON to ``url``; with ``secret``, sign the raw body (HMAC-SHA256, hex) in
    ``X-Signature-SHA256``. Transient failures (5xx, 408, 429, connection errors) are retried
    with backoff; a persistent failure raises ``trainresults_dagster.webhook.WebhookError``
    naming the status, a body excerpt and the URL without its token."""

    url: str = Field(
        description="http(s) URL to POST to. Use dg.EnvVar for URLs that embed a token."
    )
    secret: str | None = Field(
        default=None,
        description="HMAC-SHA256 signing secret; when set, X-Signature-SHA256 carries the hex "
        "signature of the raw body. Use dg.EnvVar: never put a secret in code.",
    )
    retries: int = Field(
        default=3, ge=0, le=10, description="Retries after the first attempt on transient errors."
    )
    timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, description="Timeout of each HTTP attempt, in seconds."
    )
    backoff_seconds: float = Field(
        default=0.5, ge=0, le=60, description="First retry delay; doubles each retry, with jitter."
    )

    def __init__(self, url: str, secret: str | None = None, **kwargs: Any) -> None:
        # Positional (url, secret) as in the public contract; Dagster passes keywords.
        # A dict: Dagster's config classes type their fields on the class, not on __init__.
        fields = {"url": url, "secret": secret}
        super().__init__(**fields, **kwargs)

    @field_validator("url", mode="before")
    @classmethod
    def _http_url(cls, value: Any) -> Any:
        # An EnvVar holds the variable's *name* until Dagster resolves it at run time, so it
        # is checked then ("before" mode: after coercion it would be a plain str).
        if isinstance(value, dg.EnvVar) or not isinstance(value, str):
            return value
        scheme = urllib.parse.urlsplit(value).scheme
        if scheme not in ("http", "https"):
            raise ValueError(
                f"{cls.__name__}.url must be an http:// or https:// URL, got scheme {scheme!r}"
            )
        return value

    def _post(self, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> Any:
        return post_json(
            self.url,
            dict(payload),
            self.secret,
            self.retries,
            timeout=self.timeout_seconds,
            backoff_seconds=self.backoff_seconds,
            headers=dict(headers or {}),
        )


class WebhookTarget(SignedWebhook):
    """POST the hand-off manifest as JSON (``{"event": "model_handoff", ...manifest}``).

    With ``secret``, ``X-Signature-SHA256`` is the hex HMAC-SHA256 of the raw body (check it
    with ``trainresults_dagster.webhook.verify_signature``). Transient failures (5xx, 408, 429,
    connection errors) are retried with backoff; a non-2xx after that fails the step with
    the status and a body excerpt.
    """

    url: str = Field(
        description="http(s) URL of your deployer's hand-off endpoint. Use dg.EnvVar for URLs "
        "that embed a token."
    )
    status_url: str | None = Field(
        default=None,
        description="Optional http(s) URL that answers GET with what your deployer runs now, "
        "as JSON with model, version and checkpoint_uri. Without it the drift check compares "
        "the alias with the last hand-off this target acknowledged (2xx).",
    )

    @field_validator("status_url", mode="before")
    @classmethod
    def _http_status_url(cls, value: Any) -> Any:
        if value is None or isinstance(value, dg.EnvVar) or not isinstance(value, str):
            return value
        return cls._http_url(value)

    def deploy(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        response = self._post({"event": "model_handoff", **manifest})
        return {
            "target": "webhook",
            "url": redact_url(self.url),
            "status": response.status,
            "attempts": response.attempts,
            "delivery_id": response.delivery_id,
            "signed": bool(self.secret),
            "deployed": {k: manifest.get(k) for k in ("model", "version", "checkpoint_uri")},
        }

    def running(self) -> dict[str, Any] | None:
        """What the deployer says it runs (GET ``status_url``), or None without one: then
        only the last acknowledged hand-off is known (the serving asset keeps it)."""
        if not self.status_url:
            return None
        data = get_json(self.status_url, timeout=self.timeout_seconds)
        if not isinstance(data, dict):
            raise WebhookError(
                f"expected a JSON object from {redact_url(self.status_url)}, got "
                f"{type(data).__name__}", status=200, body_excerpt=str(data)[:200],
                url=redact_url(self.status_url),
            )
        return {k: data.get(k) for k in ("model", "version", "checkpoint_uri")} if data else {}


ALERT_ID_HEADER = "X-Alert-ID"


@runtime_checkable
class AlertSink(Protocol):
    """Anything with ``send(alert)``; it raises when the alert was not delivered."""

    def send(self, alert: Mapping[str, Any]) -> None: ...


class WebhookAlertSink(SignedWebhook):
    """POST each alert as JSON to a URL.

    With ``secret`` the body is signed: header ``X-Signature-SHA256`` is the hex
    HMAC-SHA256 of the raw body (verify with ``trainresults_dagster.webhook.verify_signature``).
    ``X-Alert-ID`` is the alert's stable id, the same if the alert is ever delivered again
    (a sensor tick that dies after sending but before Dagster stores its cursor re-sends):
    receivers that need exactly-once de-duplicate on it. Transient failures (5xx, 408, 429,
    connection errors) are retried with backoff; a persistent failure raises
    ``trainresults_dagster.webhook.WebhookError`` naming the status, a body excerpt and the URL
    without its token.
    """

    url: str = Field(
        description="http(s) URL to POST alerts to, e.g. a Slack incoming webhook or your "
        "alert router. Use dg.EnvVar for URLs that embed a token."
    )

    def send(self, alert: Mapping[str, Any]) -> None:
        """Deliver one alert; raises ``WebhookError`` when it could not be delivered."""
        headers = {ALERT_ID_HEADER: str(alert["alert_id"])} if alert.get("alert_id") else {}
        self._post(alert, headers)


class LogAlertSink(dg.ConfigurableResource):
    """Alert sink for when no alert URL is configured: each alert goes to a Python logger
    (so to the sensor's log in the Dagster UI), as one JSON line at WARNING."""

    logger_name: str = Field(default="trainresults.alerts", description="Python logger to use.")

    def send(self, alert: Mapping[str, Any]) -> None:
        import json
        import logging

        logging.getLogger(self.logger_name).warning("ALERT %s", json.dumps(alert, default=str))
