"""Synthetic runs in Ray Train V2's exact on-storage layout, for sizes real runs would take
too long to make (1,000 checkpoints). ``ray.train.Result.from_path`` reads them (checked)."""

from __future__ import annotations

import json
from typing import Any

import pyarrow.fs as pafs


def write_v2_run(fs: pafs.FileSystem, path: str, n: int, *, payload: bytes = b"w" * 64) -> str:
    """A finished V2 run with ``n`` checkpoints scored by ``loss`` (min), all kept."""
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/.validate_storage_marker") as out:
        out.write(b"")
    results: list[dict[str, Any]] = []
    for i in range(n):
        name = f"checkpoint_2026-01-01_00-00-00.{i:06d}"
        metrics = {"epoch": i, "loss": 1.0 / (1 + (i * 7919) % n), "val": {"acc": (i % 97) / 97}}
        fs.create_dir(f"{path}/{name}", recursive=True)
        with fs.open_output_stream(f"{path}/{name}/.metadata.json") as out:
            out.write(json.dumps({"epoch": i}).encode())
        with fs.open_output_stream(f"{path}/{name}/model.bin") as out:
            out.write(payload)
        results.append({"version": 0, "checkpoint_dir_name": name, "metrics": metrics,
                        "_index": i})
    # Ray sorts worst -> best by score (min mode: higher loss is worse).
    results.sort(key=lambda r: (-r["metrics"]["loss"], r["_index"]))
    indices = [r.pop("_index") for r in results]
    latest = next(r for r, i in zip(results, indices, strict=True) if i == n - 1)
    snapshot = {
        "ray_version": "2.60.0",
        "checkpoint_results": results,
        "checkpoint_report_indices": indices,
        "latest_checkpoint_result": latest,
        "pending_training_results": [],
        "pending_validation_specs": [],
        "current_report_index": n,
        "validated_checkpoint_dir_names": [],
        "timed_out_validation_checkpoint_dir_names": [],
        "failed_validation_checkpoint_dir_names": [],
    }
    with fs.open_output_stream(f"{path}/checkpoint_manager_snapshot.json") as out:
        out.write(json.dumps(snapshot).encode())
    return path
