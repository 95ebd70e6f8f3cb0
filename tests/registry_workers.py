"""Code that runs in separate processes for the registry race and crash tests.

``open_registry(spec)`` builds a core ``Registry`` from a plain dict (local folder, or an S3
prefix on the moto server), so a spawned process needs no Dagster import.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def open_registry(spec: dict[str, Any]) -> Any:
    from trainresults_dagster import storage
    from trainresults_dagster.registry import Registry

    if not spec["base"].startswith("s3://"):
        return Registry(spec["base"])
    import boto3

    s3 = spec["s3"]
    client = boto3.client(
        "s3",
        endpoint_url=s3["endpoint_url"],
        aws_access_key_id=s3["access_key"],
        aws_secret_access_key=s3["secret_key"],
        region_name=s3["region"],
    )
    fs = storage.S3Settings(
        endpoint_url=s3["endpoint_url"],
        region_name=s3["region"],
        aws_access_key_id=s3["access_key"],
        aws_secret_access_key=s3["secret_key"],
    ).filesystem()
    return Registry(spec["base"], filesystem=fs, s3_client=client)


def race_worker(spec: dict[str, Any], worker: int, barrier: Any, results: Any) -> None:
    """Each round: register (all at once), then compare-and-set ``champion`` from what was
    read (all at once), then an unchecked promote of ``unchecked`` (all at once)."""
    from trainresults_dagster.errors import PromotionConflict

    reg = open_registry(spec)
    model = spec["model"]
    out: dict[str, Any] = {"worker": worker, "registered": [], "won": [], "lost": 0,
                           "unchecked": [], "errors": []}
    try:
        for rnd, source in enumerate(spec["sources"][worker]):
            barrier.wait()
            version = reg.register(model, source, metrics={"worker": worker, "round": rnd},
                                   lineage={"worker": worker, "round": rnd})
            out["registered"].append(version.version)
            barrier.wait()
            current = reg.get(model)
            expected = current.version if current else None
            try:
                reg.promote(model, version.version, expected_version=expected,
                            reason=f"w{worker}r{rnd}", who=f"worker-{worker}")
                out["won"].append({"version": version.version, "expected": expected,
                                   "reason": f"w{worker}r{rnd}"})
            except PromotionConflict:
                out["lost"] += 1
            barrier.wait()
            reg.promote(model, version.version, alias="unchecked", reason=f"w{worker}r{rnd}")
            out["unchecked"].append(f"w{worker}r{rnd}")
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        out["errors"].append(f"{type(exc).__name__}: {exc}")
        barrier.abort()
    results.put(out)


def register_main() -> None:
    """``python registry_workers.py '<spec json>' <model> <checkpoint path>``: one register."""
    spec = json.loads(sys.argv[1])
    reg = open_registry(spec)
    source: Any = sys.argv[3]
    if spec.get("source_on_s3"):
        from trainresults_dagster.runs.checkpoint import Checkpoint

        source = Checkpoint(sys.argv[3], reg.filesystem)
    version = reg.register(sys.argv[2], source, metrics={"loss": 0.1})
    print(json.dumps({"version": version.version}))


if __name__ == "__main__":
    register_main()
