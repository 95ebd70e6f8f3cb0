"""``SignedWebhook``: the configuration and POST shared by ``WebhookTarget`` (hand-off) and
``WebhookAlertSink`` (alerts), so both validate, sign and retry the same way."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from typing import Any

import dagster as dg
from pydantic import Field, field_validator

from .http import post_json


class SignedWebhook(dg.ConfigurableResource):
    """POST JSON to ``url``; with ``secret``, sign the raw body (HMAC-SHA256, hex) in
    ``X-Signature-SHA256``. Transient failures (5xx, 408, 429, connection errors) are retried
    with backoff; a persistent failure raises ``trainresults_dagster.http.WebhookError``
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
        super().__init__(url=url, secret=secret, **kwargs)

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
