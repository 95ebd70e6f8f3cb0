"""Where alerts go: ``WebhookAlertSink``, and the one-method protocol every sink follows.

A sink is any Dagster resource (or plain object) with ``send(alert: dict) -> None`` that
raises when the alert could not be delivered. The sensors look the sink up by resource
key (``alert_sink_key``), so Slack, PagerDuty or e-mail plug in as a small resource of
your own (see the Slack example in ``alerts.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from pydantic import Field

from .webhook_resource import SignedWebhook

ALERT_ID_HEADER = "X-Alert-ID"


@runtime_checkable
class AlertSink(Protocol):
    """Anything with ``send(alert)``; it raises when the alert was not delivered."""

    def send(self, alert: Mapping[str, Any]) -> None: ...


class WebhookAlertSink(SignedWebhook):
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

    def send(self, alert: Mapping[str, Any]) -> None:
        """Deliver one alert; raises ``WebhookError`` when it could not be delivered."""
        headers = {ALERT_ID_HEADER: str(alert["alert_id"])} if alert.get("alert_id") else {}
        self._post(alert, headers)
