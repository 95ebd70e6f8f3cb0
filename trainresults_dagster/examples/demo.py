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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _guardrails(demo: Any, resources: dict[str, Any], instance: Any, first: Any) -> dict[str, Any]:
    """Every check's latest evaluation: from the pipeline run, and for the checks it skipped
    (a rejected candidate stops the run at the gate) from a checks-only run, as the
    ``hourly_guardrails`` schedule would."""
    import dagster as dg

    found = {e.check_name: e for e in first.get_asset_check_evaluations()}
    missing = [c for c in demo.demo_checks if not any(k.name in found for k in c.check_keys)]
    if missing:
        later = dg.materialize([*demo.demo_assets, *demo.demo_checks], resources=resources,
                               instance=instance, selection=dg.AssetSelection.checks(*missing),
                               raise_on_error=False)
        found.update({e.check_name: e for e in later.get_asset_check_evaluations()})
    return found


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
            # The dashboard serves the Serve REST API the serving target uses.
            ray.init(num_cpus=2, include_dashboard=True, dashboard_port=_free_port(),
                     log_to_driver=False)
    os.environ.setdefault("TRAINRESULTS_SERVE_PORT", str(_free_port()))
    resources = demo.resources()
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize([*demo.demo_assets, *demo.demo_checks], resources=resources,
                                instance=instance, raise_on_error=False)
        checks = _guardrails(demo, resources, instance, result)

    registry = resources["checkpoint_registry"]
    champion = registry.get(demo.MODEL)
    gate = checks.get("promotion_gate")
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
        where = deployment.get("url") or deployment.get("url", "")
        print(f"  serving          {deployment.get('target', 'handed off')} "
              f"{deployment.get('status', '')} version {serving.get('trainresults/model_version')}"
              + (f" at {where}" if where else ""))
    target = resources["serving_target"]
    if champion is not None and hasattr(target, "query"):
        row = {"x0": 1.0, "x1": -0.5, "x2": 0.25, "x3": 0.0}
        try:
            answer = target.query([row])
            print(f"  served answer    {row} -> {answer.get('predictions')} "
                  f"(model {answer.get('model')} version {answer.get('version')})")
        except Exception as exc:  # noqa: BLE001 - the demo reports, it does not hide
            print(f"  served answer    FAILED: {exc}", file=sys.stderr)
    for name in ("champion_files", "champion_age", "champion_training_data",
                 "serving_matches_champion"):
        check = checks.get(name)
        if check is not None:
            verdict = "ok" if check.passed else f"FAILED ({check.severity.value})"
            print(f"  check {name:<24} {verdict}: {check.description}")
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
