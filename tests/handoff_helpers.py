"""Shared by the hand-off tests: a real registry with two versions, a real webhook receiver."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterable
from typing import Any

import trainresults_dagster as trd
from trainresults_dagster.registry import Registry


def make_registry(run_path: str, root: str) -> Registry:
    """v1 = the run's epoch-0 checkpoint, v2 = epoch 1; the champion alias points at v2."""
    reg = Registry(root)
    result = trd.TrainResult.from_path(run_path)
    by_epoch = {m["epoch"]: c for c, m in result.best_checkpoints}
    for epoch in (0, 1):
        version = reg.register("m", by_epoch[epoch], metrics=by_epoch[epoch].metrics)
        reg.promote("m", version.version)
    return reg


class Receiver:
    """An HTTP server on 127.0.0.1, port 0, that records every POST and answers from a script.

    ``script`` is a list of ``(status, body)`` answers used in order; after it runs out the
    answer is ``(200, "ok")``.
    """

    def __init__(self, script: Iterable[tuple[int, str]] = ()) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                # Message: case-insensitive, like HTTP header names (urllib sends them Title-Cased)
                receiver.requests.append({"headers": self.headers, "body": body})
                status, text = receiver.script.pop(0) if receiver.script else (200, "ok")
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/deploy"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
