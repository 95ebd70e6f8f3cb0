"""A TCP proxy that counts the bytes a client exchanges with a server (tests and benchmarks).

Put it between an S3 client and the moto server to measure what really crosses the wire:
a server-side copy moves a few hundred bytes per object, a download-and-upload moves the
object twice.
"""

from __future__ import annotations

import re
import socket
import threading
from typing import Any

_REQUEST_LINE = re.compile(rb"(?:GET|PUT|POST|HEAD|DELETE|PATCH) /\S* HTTP/1\.[01]\r\n")


class CountingProxy:
    """``CountingProxy(host, port)``; ``.endpoint_url``; ``.sent`` / ``.received`` / ``.total``
    (bytes from and to the client); ``.requests`` (HTTP/1.1 request lines the client sent,
    for stores whose server keeps no request log); ``.reset()``; ``.close()``.

    ``fail_first(pattern, times)``: the next ``times`` connections whose first request line
    matches ``pattern`` (bytes regex) get ``503`` from the proxy, never reaching the server;
    ``.injected`` counts them. Raw TCP, so websockets (Ray's log tail) pass through."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._lock = threading.Lock()
        self.sent = 0
        self.received = 0
        self.requests = 0
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = self._server.getsockname()[1]
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self._closed = False
        self._inject: tuple[re.Pattern[bytes], int] | None = None
        self.injected = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def fail_first(self, pattern: bytes, times: int = 1) -> None:
        with self._lock:
            self._inject = (re.compile(pattern), times)

    def _injects(self, first: bytes) -> bool:
        with self._lock:
            if self._inject is None or self._inject[1] <= 0:
                return False
            pattern, left = self._inject
            if not pattern.match(first):
                return False
            self._inject = (pattern, left - 1)
            self.injected += 1
            return True

    @classmethod
    def for_url(cls, url: str) -> CountingProxy:
        host_port = url.split("://", 1)[-1].rstrip("/")
        host, port = host_port.rsplit(":", 1)
        return cls(host, int(port))

    @property
    def total(self) -> int:
        return self.sent + self.received

    def reset(self) -> None:
        with self._lock:
            self.sent = self.received = self.requests = 0

    def _add(self, attr: str, n: int) -> None:
        with self._lock:
            setattr(self, attr, getattr(self, attr) + n)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, "sent"), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, "received"), daemon=True).start()

    def _pump(self, src: Any, dst: Any, attr: str) -> None:
        tail = b""  # the end of the previous chunk: a request line may straddle two
        first = attr == "sent"
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if first and self._injects(data):
                    src.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\n\r\n")
                    break
                first = False
                self._add(attr, len(data))
                if attr == "sent":
                    window = tail + data
                    found = sum(1 for m in _REQUEST_LINE.finditer(window) if m.end() > len(tail))
                    if found:
                        self._add("requests", found)
                    tail = window[-512:]
                dst.sendall(data)
        except OSError:
            pass
        finally:
            # Wake the opposite pump (blocked in recv on dst's peer), then close our side:
            # each socket is the source of exactly one pump, so each is closed once.
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            src.close()

    def close(self) -> None:
        self._closed = True
        self._server.close()


class HeaderStrippingProxy:
    """An HTTP proxy that drops ``If-None-Match`` / ``If-Match`` from every request: what an
    S3-compatible store without conditional writes looks like to a client."""

    DROP = {"if-none-match", "if-match"}

    def __init__(self, upstream_url: str) -> None:
        import http.client
        import http.server

        host_port = upstream_url.split("://", 1)[-1].rstrip("/")
        drop = self.DROP

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in drop}
                conn = http.client.HTTPConnection(host_port, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    payload = response.read()
                    self.send_response(response.status, response.reason)
                    for k, v in response.getheaders():
                        if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
