"""Requests per run read on GCS and Azure: ``TrainResult.from_path`` vs ``ray.train.Result``.

The same synthetic V2 runs (2/20/200 checkpoints) on gcp-storage-emulator and Azurite, read
through a TCP proxy that counts HTTP requests (the emulators keep no request log). Ours
reads the snapshot and the run's records: constant in the checkpoint count. Ray's
``from_path`` checks every checkpoint folder.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from .support import row
from .synthetic import write_v2_run


class _LogCounter:
    def __init__(self, server: Any) -> None:
        self.server = server
        self.start = server.request_count()

    def reset(self) -> None:
        self.start = self.server.request_count()

    @property
    def requests(self) -> int:
        return self.server.request_count() - self.start


def _count(counter: Any, fn: Any) -> int:
    import time

    counter.reset()
    fn()
    time.sleep(0.2)  # the last request's log line (or proxied request line) lands
    return counter.requests


def run(quick: bool = False) -> list[dict[str, Any]]:
    import ray.train
    from cloud_emulators import Azurite, GcsEmulator  # tests/cloud_emulators.py
    from counting_proxy import CountingProxy

    import trainresults_dagster as trd

    logging.getLogger("ray.train").setLevel(logging.WARNING)
    sizes = [2, 20] if quick else [2, 20, 200]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for label in ("GCS", "Azure"):
            root = Path(tmp, label)
            root.mkdir()
            server: Any = GcsEmulator(root) if label == "GCS" else Azurite(root)
            proxy = None
            try:
                if label == "GCS":
                    # gcp-storage-emulator logs every request (as moto does): count its log.
                    container = server.new_bucket("bench")
                    through = server.filesystem()
                    counter: Any = _LogCounter(server)
                else:
                    # Azurite keeps no request log: count request lines through a TCP proxy.
                    proxy = CountingProxy.for_url(server.endpoint_url.rsplit("/", 1)[0])
                    container = server.new_container("bench")
                    through = server.settings(
                        endpoint_url=f"{proxy.endpoint_url}/{server.account}").filesystem()
                    counter = proxy
                counts = {}
                for n in sizes:
                    path = write_v2_run(server.filesystem(), f"{container}/run{n}", n, payload=b"w")
                    ours_fn = lambda p=path, f=through: trd.TrainResult.from_path(p, f)  # noqa: E731
                    ray_fn = lambda p=path, f=through: ray.train.Result.from_path(  # noqa: E731
                        p, storage_filesystem=f)
                    ours, theirs = ours_fn(), ray_fn()
                    if [c.path for c, _ in ours.best_checkpoints] != [
                            c.path for c, _ in theirs.best_checkpoints]:
                        raise RuntimeError(f"synthetic run {path} on {label}: disagreement with Ray")
                    counts[n] = ours_req = _count(counter, ours_fn)
                    ray_req = _count(counter, ray_fn)
                    rows.append(row(f"requests per run read, {label}, {n} checkpoints", ours_req,
                                    ray_req, "constant in n", None, unit="req",
                                    anchor_name="Ray from_path"))
                flat = max(counts.values()) <= min(counts.values()) + 2
                rows[-1]["pass"] = "pass" if flat else "FAIL"
            finally:
                if proxy is not None:
                    proxy.close()
                server.stop()
    return rows
