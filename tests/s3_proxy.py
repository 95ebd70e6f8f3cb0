"""A small HTTP proxy in front of the moto server: counts requests and bytes, and injects
S3 faults (503 SlowDown, 500 InternalError, connection resets, slow responses) for a
seeded fraction of requests. Real sockets on 127.0.0.1; used by tests and benchmarks.

    proxy = S3Proxy(moto.endpoint_url, fault_rate=0.2, seed=7)
    fs = S3Settings(endpoint_url=proxy.endpoint_url, ...).filesystem()
    ...
    proxy.stats  # {"requests": n, "bytes_in": ..., "bytes_out": ..., "faults": {...}}
    proxy.stop()

Faults: ``slowdown`` (503 SlowDown), ``internal`` (500), ``reset`` (connection reset before
the request reaches the server), ``slow`` (delayed, then forwarded), and ``reset_after``
(forwarded: the server executes it, then the connection is reset so the client never sees
the answer; a conditional PUT retried after this one gets 412 for its own write).
``match(method, path, headers)`` limits faults to some requests (e.g. conditional PUTs);
``hook(method, path, headers)`` is called for every request and may return a fault name to
apply to it (tests use it to SIGKILL a client at its n-th request).
"""

from __future__ import annotations

import http.client
import random
import socket
import socketserver
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any

FAULTS = ("slowdown", "internal", "reset", "slow")
ALL_FAULTS = (*FAULTS, "reset_after")

Matcher = Callable[[str, str, Mapping[str, str]], bool]
Hook = Callable[[str, str, Mapping[str, str]], "str | None"]


def conditional_put(method: str, path: str, headers: Mapping[str, str]) -> bool:
    """A ``match`` for the registry's compare-and-set writes."""
    return method == "PUT" and bool(headers.get("If-None-Match") or headers.get("If-Match"))

_ERROR_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
    "<Message>{message}</Message><RequestId>proxy</RequestId></Error>"
)


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


class S3Proxy:
    def __init__(
        self,
        upstream: str,
        *,
        fault_rate: float = 0.0,
        faults: tuple[str, ...] = FAULTS,
        seed: int = 0,
        slow_seconds: float = 0.3,
        methods: tuple[str, ...] = ("GET", "PUT", "POST", "DELETE", "HEAD"),
        match: Matcher | None = None,
        hook: Hook | None = None,
    ) -> None:
        parsed = urllib.parse.urlparse(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.fault_rate = fault_rate
        self.faults = faults
        self.slow_seconds = slow_seconds
        self.methods = methods
        self.match = match
        self.hook = hook
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.stats: dict[str, Any] = {"requests": 0, "bytes_in": 0, "bytes_out": 0,
                                      "faults": Counter(), "methods": Counter()}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if len(body) != length:
                    # The client died mid-upload. S3 rejects a body shorter than its
                    # Content-Length; forwarding it would store a torn object no real
                    # store ever would.
                    raise ConnectionResetError(f"short request body: {len(body)} of {length}")
                return body

            def _reset(self) -> None:
                # SO_LINGER 0: close() sends RST, as a dropped connection would.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           b"\x01\x00\x00\x00\x00\x00\x00\x00")
                self.connection.close()
                self.close_connection = True

            def _handle(self) -> None:
                body = self._body()
                fault = None
                if proxy.hook is not None:
                    fault = proxy.hook(self.command, self.path, self.headers)
                if fault is None and self.command in proxy.methods and (
                    proxy.match is None or proxy.match(self.command, self.path, self.headers)
                ):
                    fault = proxy._pick_fault()
                with proxy._lock:
                    proxy.stats["requests"] += 1
                    proxy.stats["bytes_in"] += len(body)
                    proxy.stats["methods"][self.command] += 1
                    if fault:
                        proxy.stats["faults"][fault] += 1
                if fault == "reset":
                    self._reset()
                    return
                if fault in ("slowdown", "internal"):
                    status, code, msg = ((503, "SlowDown", "Please reduce your request rate.")
                                         if fault == "slowdown"
                                         else (500, "InternalError", "We encountered an internal error."))
                    payload = _ERROR_BODY.format(code=code, message=msg).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                if fault == "slow":
                    time.sleep(proxy.slow_seconds)
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("transfer-encoding", "connection")}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                with proxy._lock:
                    proxy.stats["bytes_out"] += len(data)
                if fault == "reset_after":
                    self._reset()
                    return
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                # HEAD answers carry the object's length, not the (empty) body's.
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _pick_fault(self) -> str | None:
        with self._lock:
            if self.fault_rate and self._rng.random() < self.fault_rate:
                return self._rng.choice(self.faults)
        return None

    def reset_stats(self) -> None:
        with self._lock:
            self.stats.update(requests=0, bytes_in=0, bytes_out=0, faults=Counter(),
                              methods=Counter())

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
