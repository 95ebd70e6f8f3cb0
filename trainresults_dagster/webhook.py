"""Signed JSON POSTs with bounded retries: what webhook targets and alert sinks share.

Sign, verify, post and redact; no Dagster.

Stdlib only (``urllib``), so the core needs no HTTP client. The rules:

* The body is canonical JSON (sorted keys, no NaN/inf: they become ``null``, since strict
  receivers reject them). With a secret, ``X-Signature-SHA256`` carries the lowercase hex
  HMAC-SHA256 of exactly those bytes: the receiver recomputes it over the raw body.
* ``X-Delivery-ID`` is one UUID per logical delivery, the same on every retry, so a
  receiver can drop a duplicate when a 2xx was lost on the way back.
* Retries (jittered exponential backoff, ``Retry-After`` honoured up to a cap) on 5xx,
  408, 429 and connection errors; any other 4xx fails at once: resending cannot fix it.
  Redirects are not followed (urllib would turn the POST into a bodiless GET): a 3xx fails.
* The final error names the status, a body excerpt and the URL with its query and
  credentials stripped (webhook URLs often embed tokens); never the signing secret.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import random
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from typing import Any

import trainresults_dagster.storage as storage

from .errors import WebhookError

SIGNATURE_HEADER = "X-Signature-SHA256"
#: Keys every signed JSON body carries: one id per logical delivery (the same on retries,
#: and in the ``X-Delivery-ID`` header) and when it was first sent (ISO 8601, UTC).
DELIVERY_ID_KEY = "delivery_id"
SENT_AT_KEY = "sent_at"
DELIVERY_HEADER = "X-Delivery-ID"
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
EXCERPT_CHARS = 300
MAX_RETRY_AFTER_SECONDS = 30.0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects fail instead: urllib would follow a 301/302/303 with a bodiless GET and
    report success for a payload that was never delivered."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


@dataclasses.dataclass(frozen=True)
class HttpResponse:
    status: int
    body: str
    attempts: int
    delivery_id: str


def sign_body(secret: str, body: bytes) -> str:
    """Lowercase hex HMAC-SHA256 of ``body`` with ``secret`` (the ``X-Signature-SHA256`` value)."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str,
    body: bytes,
    signature: str,
    *,
    max_age_seconds: float | None = None,
    now: float | None = None,
) -> bool:
    """Check a ``X-Signature-SHA256`` value in constant time, for receivers written in Python.

    With ``max_age_seconds`` the signed body's ``sent_at`` must also be no older (and no more
    than that far in the future) than ``max_age_seconds``: a captured POST replayed later is
    refused. A receiver that must also refuse a replay *within* the window remembers the
    ``delivery_id`` values it accepted for that long (``ReplayGuard`` does both). Never
    raises on malformed input (a non-ASCII header, a body that is not JSON): that is False.
    """
    try:
        given = signature.strip().lower().encode("ascii")
    except (AttributeError, UnicodeEncodeError):
        return False
    if not hmac.compare_digest(sign_body(secret, body).encode("ascii"), given):
        return False
    if max_age_seconds is None:
        return True
    sent = _sent_at(body)
    if sent is None:
        return False
    age = (time.time() if now is None else now) - sent
    return -max_age_seconds <= age <= max_age_seconds


class ReplayGuard:
    """Accept each signed delivery once, and only while it is fresh (receiver side).

    ``accept(body, signature)`` is True for a correctly signed body whose ``sent_at`` is
    within ``max_age_seconds`` and whose ``delivery_id`` was not accepted before. Retries of
    one delivery carry the same id, so a retry after a lost 2xx is refused too: answer it
    2xx without acting. Ids are kept in memory for ``max_age_seconds``; a receiver with
    several processes keeps them in its own shared store instead.
    """

    def __init__(self, secret: str, *, max_age_seconds: float = 300.0) -> None:
        self.secret = secret
        self.max_age_seconds = max_age_seconds
        self._seen: dict[str, float] = {}

    def accept(self, body: bytes, signature: str, *, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if not verify_signature(
            self.secret, body, signature, max_age_seconds=self.max_age_seconds, now=now
        ):
            return False
        delivery = _delivery_id(body)
        if delivery is None:
            return False
        self._seen = {k: t for k, t in self._seen.items() if now - t <= self.max_age_seconds}
        if delivery in self._seen:
            return False
        self._seen[delivery] = now
        return True


def _body_fields(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _sent_at(body: bytes) -> float | None:
    value = _body_fields(body).get(SENT_AT_KEY)
    if not isinstance(value, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)).timestamp()


def _delivery_id(body: bytes) -> str | None:
    value = _body_fields(body).get(DELIVERY_ID_KEY)
    return value if isinstance(value, str) and value else None


def encode_json(payload: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, compact, NaN/inf as ``null`` (``storage.json_value``)."""
    return storage.dumps(payload, compact=True)


def redact_url(url: str) -> str:
    """``scheme://host[:port]/first-segment/…`` without userinfo or query.

    Slack-style webhook URLs carry their token in the path, so only the first path segment
    is shown: enough to tell endpoints apart in an error, not enough to reuse one.
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    segments = [s for s in parts.path.split("/") if s]
    path = ""
    if segments:
        path = "/" + segments[0] + ("/…" if len(segments) > 1 else "")
    if parts.query:
        path += "?…"
    return f"{parts.scheme}://{host}{path}"


def post_json(
    url: str,
    payload: Any,
    secret: str | None = None,
    retries: int = 3,
    *,
    timeout: float = 10.0,
    backoff_seconds: float = 0.5,
    headers: Mapping[str, str] | None = None,
) -> HttpResponse:
    """POST ``payload`` as JSON; retry transient failures ``retries`` times; return the 2xx.

    Raises ``WebhookError`` (status, body excerpt, redacted URL) when the receiver answers
    a non-retryable status, or still fails after the retries.
    """
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"expected an http:// or https:// URL, got {redact_url(url)!r}")
    if retries < 0:
        raise ValueError(f"expected retries >= 0, got {retries!r}")
    delivery_id = uuid.uuid4().hex
    if isinstance(payload, Mapping):
        # Inside the signed bytes, so a receiver can refuse stale or repeated deliveries
        # (the header alone cannot: an HMAC of the body proves nothing about when).
        payload = {**payload, DELIVERY_ID_KEY: delivery_id, SENT_AT_KEY: storage.iso()}
    body = encode_json(payload)
    request_headers = {
        "Content-Type": "application/json",
        "User-Agent": "trainresults-dagster",
        DELIVERY_HEADER: delivery_id,
        **(headers or {}),
    }
    if secret:
        request_headers[SIGNATURE_HEADER] = sign_body(secret, body)
    shown = redact_url(url)
    attempts = retries + 1
    for attempt in range(1, attempts + 1):
        status: int | None = None
        text = ""
        retry_after: float | None = None
        request = urllib.request.Request(url, data=body, headers=request_headers, method="POST")
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                return HttpResponse(
                    status=response.status,
                    body=_read_text(response),
                    attempts=attempt,
                    delivery_id=delivery_id,
                )
        except urllib.error.HTTPError as exc:
            status, text = exc.code, _read_text(exc)
            retry_after = _retry_after(exc.headers.get("Retry-After"))
            retryable = status in RETRYABLE_STATUS
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            text = f"{type(reason).__name__}: {reason}"
            retryable = True
        excerpt = _excerpt(text, secret)
        if not retryable or attempt == attempts:
            what = f"HTTP {status}" if status is not None else "no response"
            raise WebhookError(
                f"POST to {shown} failed with {what} after {attempt} attempt(s): {excerpt!r}",
                status=status,
                body_excerpt=excerpt,
                url=shown,
            )
        delay = backoff_seconds * 2 ** (attempt - 1) * (0.5 + random.random())
        if retry_after is not None:
            delay = max(delay, retry_after)
        time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _read_text(response: Any) -> str:
    try:
        return response.read(64 * 1024).decode("utf-8", "replace")
    except OSError:
        return ""


def _excerpt(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS] + "…"


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return min(MAX_RETRY_AFTER_SECONDS, max(0.0, float(value)))
    except ValueError:  # an HTTP date: rare for webhooks, fall back to our own backoff
        return None
