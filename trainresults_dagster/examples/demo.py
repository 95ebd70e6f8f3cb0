"""``make demo``: materialise the whole example pipeline once, through Dagster, and summarise.

Runs on a local Ray and local storage (``~/.trainresults-demo`` unless
``TRAINRESULTS_STORAGE`` says otherwise). Materialisations are recorded in a persistent
Dagster instance (``$DAGSTER_HOME``, default ``<storage>/dagster_home``), so
``DAGSTER_HOME=... dagster dev -w workspace.yaml`` shows them afterwards. Running it again
trains on fresh data and promotes only when the new model is better, and says so.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any


def _metadata(result: Any, asset: str) -> dict[str, Any]:
    import dagster as dg

    events = result.asset_materializations_for_node(asset)
    if not events:
        return {}
    out = {}
    for key, value in events[-1].metadata.items():
        out[key] = value.value if isinstance(value, dg.MetadataValue) else value
    return out


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def main() -> int:
    start = time.time()
    os.environ.setdefault("TRAINRESULTS_STORAGE", os.path.expanduser("~/.trainresults-demo"))
    root = os.environ["TRAINRESULTS_STORAGE"]
    if "DAGSTER_HOME" not in os.environ:
        if root.startswith("s3://"):
            os.environ["DAGSTER_HOME"] = os.path.expanduser("~/.trainresults-demo-dagster")
        else:
            os.environ["DAGSTER_HOME"] = os.path.join(root, "dagster_home")
    home = os.environ["DAGSTER_HOME"]
    os.makedirs(home, exist_ok=True)
    if not os.path.exists(os.path.join(home, "dagster.yaml")):
        with open(os.path.join(home, "dagster.yaml"), "w") as fh:
            fh.write("telemetry:\n  enabled: false\n")

    import dagster as dg
    import ray

    from trainresults_dagster.examples import definitions as demo

    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address)
        else:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    resources = demo.resources()
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize(demo.demo_assets, resources=resources, instance=instance,
                                raise_on_error=False)

    registry = resources["checkpoint_registry"]
    champion = registry.get(demo.MODEL)
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    gate = next(iter(checks.values()), None)
    best = _metadata(result, "best_checkpoint")
    trained = _metadata(result, "trained_model")
    predictions = _metadata(result, "batch_predictions")
    serving = _metadata(result, "serving")

    print()
    print(f"trainresults demo finished in {time.time() - start:.0f} s "
          f"(Dagster run {result.run_id[:8]}, {'success' if result.success else 'stopped early'})")
    print(f"  training run     {trained.get('dagster/uri', 'n/a')}")
    if best:
        metrics = best.get("metrics") or {}
        print(f"  best checkpoint  {best.get('checkpoint_uri')}")
        print("                   " + ", ".join(
            f"{k}={_fmt(metrics[k])}" for k in ("val_loss", "val_accuracy", "epoch") if k in metrics))
    if gate is not None:
        verdict = "PROMOTED" if gate.passed else "NOT PROMOTED"
        reason = gate.metadata.get("reason") or gate.metadata.get("decision")
        reason_text = getattr(reason, "value", reason) or ""
        print(f"  promotion        {verdict}: {reason_text}")
    print(f"  champion         {demo.MODEL} version {champion.version if champion else 'none'}"
          + (f" ({champion.checkpoint.uri})" if champion else ""))
    if predictions:
        print(f"  predictions      {predictions.get('dagster/row_count')} rows -> "
              f"{predictions.get('trainresults/output_uri')} "
              f"(model version {predictions.get('trainresults/model_version')})")
    elif gate is not None and not gate.passed:
        print("  predictions      not rerun: the candidate was not promoted (blocking check)")
    if serving:
        deployment = serving.get("trainresults/deployment") or {}
        print(f"  serving          {deployment.get('status', 'handed off')}"
              + (f" ({deployment.get('reason')})" if deployment.get("reason") else ""))
    print(f"  storage          {root}  (ray/ results/ registry/ values/ data/ predictions/)")
    print(f"  dagster          DAGSTER_HOME={os.environ['DAGSTER_HOME']} "
          "dagster dev -w workspace.yaml")
    failed_steps = [e.step_key for e in result.all_events if e.is_step_failure]
    unexpected = [s for s in failed_steps if s != "champion"]
    if unexpected:
        print(f"  FAILED steps     {unexpected}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
