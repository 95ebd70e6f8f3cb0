"""Where alerts go: ``WebhookAlertSink``, and the one-method protocol every sink follows.

A sink is any Dagster resource (or plain object) with ``send(alert: dict) -> None`` that
raises when the alert could not be delivered. The sensors look the sink up by resource
key (``alert_sink_key``), so Slack, PagerDuty or e-mail plug in as a small resource of
your own (see the Slack example in ``alerts.py``).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import dagster as dg
from pydantic import Field, field_validator

from .http import post_json

ALERT_ID_HEADER = "X-Alert-ID"


@runtime_checkable
class AlertSink(Protocol):
    """Anything with ``send(alert)``; it raises when the alert was not delivered."""

    def send(self, alert: Mapping[str, Any]) -> None: ...


class WebhookAlertSink(dg.ConfigurableResource):
    """POST each alert as JSON to a URL.

    With ``secret`` the body is signed: header ``X-Signature-SHA256`` is the hex
    HMAC-SHA256 of the raw body (verify with ``trainresults_dagster.http.verify_signature``).
    ``X-Alert-ID`` is the alert's stable id, the same if the alert is ever delivered again
    (a sensor tick that dies after sending but before Dagster stores its cursor re-sends):
    receivers that need exactly-once de-duplicate on it. Transient failures (5xx, 408, 429,
    connection errors) are retried with backoff; a persistent failure raises
    ``trainresults_dagster.http.WebhookError`` naming the status, a body excerpt and the URL
    without its token.
    """

    url: str = Field(
        description="http(s) URL to POST alerts to, e.g. a Slack incoming webhook or your "
        "alert router. Use dg.EnvVar for URLs that embed a token."
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
        default=0.5,
        ge=0,
        le=60,
        description="First retry delay in seconds; doubles each retry, with jitter.",
    )

    @field_validator("url", mode="before")
    @classmethod
    def _http_url(cls, value: Any) -> Any:
        # An EnvVar holds the variable's *name* until Dagster resolves it at run time
        # ("before" mode: after coercion it would be a plain str).
        if isinstance(value, dg.EnvVar) or not isinstance(value, str):
            return value
        scheme = urllib.parse.urlsplit(value).scheme
        if scheme not in ("http", "https"):
            raise ValueError(
                "WebhookAlertSink.url must be an http:// or https:// URL, got a URL with "
                f"scheme {scheme!r}"
            )
        return value

    def send(self, alert: Mapping[str, Any]) -> None:
        """Deliver one alert; raises ``WebhookError`` when it could not be delivered."""
        headers = {ALERT_ID_HEADER: str(alert["alert_id"])} if alert.get("alert_id") else {}
        post_json(
            self.url,
            dict(alert),
            self.secret,
            self.retries,
            timeout=self.timeout_seconds,
            backoff_seconds=self.backoff_seconds,
            headers=headers,
        )
