"""3. Registry copy: ``CheckpointRegistry.register`` against the obvious anchors.

* Local: register a 1 GiB checkpoint (8 files) vs ``cp -r`` of the same folder, as a
  throughput ratio (goal >= 0.8). Both read a warm page cache and write a new folder; the
  write-back is flushed (``sync``) between runs, outside the timings.
* S3: bytes that pass through the client while registering a checkpoint that already lives
  on the same S3 service, counted by a TCP proxy in front of the moto server. Goal: the
  copy is server-side, so at most 1% of the checkpoint's size crosses the wire.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from typing import Any

from .support import moto_server, row


def _make_checkpoint(path: str, total: int, files: int = 8) -> None:
    os.makedirs(path)
    block = os.urandom(1 << 20)
    per_file = total // files
    for i in range(files):
        with open(os.path.join(path, f"shard-{i}.bin"), "wb") as fh:
            for _ in range(per_file // len(block)):
                fh.write(block)
    with open(os.path.join(path, ".metadata.json"), "w") as fh:
        fh.write("{}")


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _local(quick: bool) -> dict[str, Any]:
    import trainresults_dagster as trd

    size = (128 if quick else 1024) << 20
    repeat = 3 if quick else 5
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        src = os.path.join(tmp, "checkpoint")
        _make_checkpoint(src, size)
        nbytes = _folder_bytes(src)
        registry = trd.CheckpointRegistry(base_path=os.path.join(tmp, "registry"))
        subprocess.run(["cat", *[os.path.join(src, f) for f in os.listdir(src)]],
                       stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        ours, anchor = [], []
        for i in range(repeat):
            for kind in (("cp", "reg") if i % 2 == 0 else ("reg", "cp")):
                os.sync()
                start = time.perf_counter()
                if kind == "cp":
                    subprocess.run(["cp", "-r", src, os.path.join(tmp, f"cp{i}")], check=True)
                    anchor.append(time.perf_counter() - start)
                    shutil.rmtree(os.path.join(tmp, f"cp{i}"))
                else:
                    version = registry.register("bench", src, metrics={"i": i})
                    ours.append(time.perf_counter() - start)
                    if version.size_bytes != nbytes:
                        raise RuntimeError(f"registered {version.size_bytes} of {nbytes} bytes")
                    shutil.rmtree(version.checkpoint.path)
        os.sync()
    mib = nbytes / 2**20
    ours_tp, anchor_tp = mib / statistics.median(ours), mib / statistics.median(anchor)
    passed = ours_tp / anchor_tp >= 0.8
    return row(f"register {mib / 1024:.3g} GiB local: throughput", ours_tp, anchor_tp,
               ">= 0.8x", passed, unit="MiB/s", anchor_name="cp -r")


def _s3(quick: bool) -> dict[str, Any]:
    import sys

    from dagster_aws.s3 import S3Resource

    import trainresults_dagster as trd
    from trainresults_dagster.dagster._wiring import s3_settings

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from counting_proxy import CountingProxy

    size = (32 if quick else 256) << 20
    with tempfile.TemporaryDirectory() as tmp:
        server = moto_server(tmp)
        proxy = CountingProxy.for_url(server.endpoint_url)
        try:
            src = os.path.join(tmp, "checkpoint")
            _make_checkpoint(src, size)
            nbytes = _folder_bytes(src)
            server.client().create_bucket(Bucket="runs")
            server.client().create_bucket(Bucket="models")
            uri = server.upload_dir(src, "runs", "run/checkpoint_000001")
            through = S3Resource(endpoint_url=proxy.endpoint_url, region_name=server.region,
                                 aws_access_key_id=server.access_key,
                                 aws_secret_access_key=server.secret_key)
            registry = trd.CheckpointRegistry(base_path="s3://models/registry", s3=through)
            checkpoint = trd.Checkpoint.from_uri(uri, s3_settings(through).filesystem())
            proxy.reset()
            version = registry.register("bench", checkpoint, metrics={"loss": 0.1})
            moved = proxy.total
            if version.size_bytes != nbytes:
                raise RuntimeError(f"registered {version.size_bytes} of {nbytes} bytes")
        finally:
            proxy.close()
            server.stop()
    return row(f"register {nbytes / 2**20:.0f} MiB S3->S3: bytes through client", moved, nbytes,
               "<= 0.01x", moved <= 0.01 * nbytes, unit="B", anchor_name="checkpoint size")


def run(quick: bool = False) -> list[dict[str, Any]]:
    return [_local(quick), _s3(quick)]


if __name__ == "__main__":
    import sys

    from .run import table

    print(table(run(quick="--quick" in sys.argv)))
