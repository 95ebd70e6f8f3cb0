"""A real HTTP receiver for alert tests: 127.0.0.1, port 0, records every POST.

    rx = AlertReceiver(statuses=[500, 200])   # answers 500 once, then 200 (the default)
    rx.url; rx.requests -> [Received(headers, body, json)]; rx.wait_for(1, timeout=30)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: Any  # email.message.Message: case-insensitive, as HTTP header names are
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class AlertReceiver:
    def __init__(
        self,
        statuses: list[int] | None = None,
        before_answer: Callable[[int], None] | None = None,
    ) -> None:
        """``before_answer(n)`` runs before the n-th POST (1-based) is answered (a test kills
        the sender there); an answer the sender is no longer there to read is dropped."""
        self.statuses = list(statuses or [])
        self.before_answer = before_answer
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.requests.append(Received(self.path, self.headers, body))
                    receiver._arrived.notify_all()
                    count = len(receiver.requests)
                if receiver.before_answer is not None:
                    receiver.before_answer(count)
                payload = b'{"ok": true}' if status < 400 else b"receiver says no"
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sender is gone

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/alerts"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def wait_for(self, count: int, timeout: float) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"expected {count} POST(s) within {timeout}s, got {len(self.requests)}"
                    )
                self._arrived.wait(left)
            return list(self.requests)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
