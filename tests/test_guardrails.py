"""Guardrails on the champion, through Dagster on a real instance: file integrity, age,
training-data staleness, serving drift (webhook targets against a real HTTP server), the
model card (metadata, registry, CLI) and the IO manager's retention warning."""

# No "from __future__ import annotations": Dagster reads the context annotations.

import datetime as dt
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

import dagster as dg
import pytest
from handoff_helpers import Receiver

import trainresults_dagster as trd
from trainresults_dagster.dagster.guardrails import AGE_CHECK, DATA_CHECK, DRIFT_CHECK, FILES_CHECK

BIN = os.path.dirname(sys.executable)
MODEL = "clf"


def pipeline(run_path: str, tmp_path, target: Any, *, max_age=dt.timedelta(hours=1)):
    """training_data -> trained (a real Ray run) -> best -> champion -> served, + checks."""

    @dg.asset(io_manager_key=trd.JSON_IO_MANAGER_KEY)
    def training_data(context: dg.AssetExecutionContext) -> dict:
        return {"rows": 10, "run": context.run.run_id}

    @dg.asset(io_manager_key="ray_results", deps=[training_data])
    def trained() -> trd.TrainResult:
        return trd.TrainResult.from_path(os.environ.get("GUARDRAILS_RUN", run_path))

    best = trd.build_best_checkpoint_asset("best", result_asset=trained, metric="loss", mode="min")
    champion = trd.build_promotion_asset(
        "champion", model=MODEL, candidate_asset=best, metric="loss", mode="min",
        thresholds={"val/acc": (0.5, None)},
        freshness_policy=dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(days=8)),
    )
    served = trd.build_serving_asset("served", model_asset=champion)
    checks = trd.build_champion_checks(
        champion, max_age=max_age, training_data_asset=training_data, serving_asset=served,
    )
    resources = {
        "ray_results": trd.RayTrainResultIOManager(base_path=str(tmp_path / "results"),
                                                   checkpoints="copy", on_error="materialize"),
        trd.JSON_IO_MANAGER_KEY: trd.JsonIOManager(base_path=str(tmp_path / "values")),
        "checkpoint_registry": trd.CheckpointRegistry(base_path=str(tmp_path / "registry")),
        "serving_target": target,
    }
    return [training_data, trained, best, champion, served], checks, resources


def evaluations(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def run_checks(assets, checks, resources, instance) -> dict[str, Any]:
    """Only the checks: what a schedule over the checks does, materialising nothing."""
    result = dg.materialize([*assets, *checks], resources=resources, instance=instance,
                            selection=dg.AssetSelection.checks(*checks), raise_on_error=False)
    assert not result.get_asset_materialization_events()
    return evaluations(result)


def text(evaluation: Any) -> str:
    return str(evaluation.description)


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def test_checks_pass_then_catch_deleted_files_new_data_and_drift(v2_runs, tmp_path, instance):
    with Receiver() as receiver:
        assets, checks, resources = pipeline(v2_runs["success"], tmp_path,
                                             trd.WebhookTarget(receiver.url))
        first = dg.materialize([*assets, *checks], resources=resources, instance=instance)
        found = evaluations(first)
        assert set(found) == {"promotion_gate", FILES_CHECK, AGE_CHECK, DATA_CHECK, DRIFT_CHECK}
        assert all(e.passed for e in found.values()), {k: text(e) for k, e in found.items()}
        assert "all 2 files intact (sizes and CRC32s" in text(found[FILES_CHECK])  # + .metadata.json
        assert found[FILES_CHECK].metadata["storage_requests"].value == 4
        assert "version 1" in text(found[DRIFT_CHECK]) and len(receiver.requests) == 1

        registry = resources["checkpoint_registry"].registry
        champion = registry.get(MODEL)
        lineage = champion.lineage
        assert [e["asset_key"] for e in lineage["upstream"]] == ["best", "trained", "training_data"]
        assert lineage["code_version"] == lineage["upstream"][1]["code_version"]
        assert lineage["upstream"][2]["run_id"] == first.run_id

        # New training data: the champion was trained on the old one.
        dg.materialize(assets, resources=resources, instance=instance, selection=["training_data"])
        found = run_checks(assets, checks, resources, instance)
        stale = found[DATA_CHECK]
        assert not stale.passed and stale.severity == dg.AssetCheckSeverity.WARN
        assert "'training_data' materialised again" in text(stale) and first.run_id[:8] in text(stale)
        assert found[FILES_CHECK].passed and found[DRIFT_CHECK].passed

        # The alias moves (a promotion outside this pipeline): serving drifts.
        v2 = registry.register(MODEL, champion.checkpoint, metrics={"loss": 0.01, "val": {"acc": 1}})
        registry.promote(MODEL, v2.version, reason="by hand")
        drift = run_checks(assets, checks, resources, instance)[DRIFT_CHECK]
        assert not drift.passed and drift.severity == dg.AssetCheckSeverity.ERROR
        assert "version 1" in text(drift) and "version 2" in text(drift)
        assert "last hand-off WebhookTarget acknowledged" in text(drift)

        # Files deleted under the champion: named, and blocking.
        gone = os.path.join(v2.checkpoint.path, "model.txt")
        os.remove(gone)
        files = run_checks(assets, checks, resources, instance)[FILES_CHECK]
        assert not files.passed and "1 missing: model.txt" in text(files)
        blocked = dg.materialize([*assets, *checks], resources=resources, instance=instance,
                                 raise_on_error=False, selection=dg.AssetSelection.assets(
                                     "champion", "served") | dg.AssetSelection.checks(*checks))
        assert not blocked.success
        assert not blocked.asset_materializations_for_node("served")  # blocked downstream
        # ... and rollback to a version whose files are intact still works; back to v2 not.
        assert registry.rollback(MODEL).version == 1
        registry.promote(MODEL, 2)
        shutil.rmtree(v2.checkpoint.path)
        registry.promote(MODEL, 1)
        with pytest.raises(trd.CheckpointIntegrityError, match="refusing to roll back"):
            registry.rollback(MODEL)
        assert registry.get(MODEL).version == 1


def test_age_check_flags_an_old_promotion(v2_runs, tmp_path, instance):
    with Receiver() as receiver:
        assets, checks, resources = pipeline(v2_runs["success"], tmp_path,
                                             trd.WebhookTarget(receiver.url),
                                             max_age=dt.timedelta(seconds=1))
        dg.materialize(assets, resources=resources, instance=instance)
        time.sleep(1.2)
        age = run_checks(assets, checks, resources, instance)[AGE_CHECK]
    assert not age.passed and age.severity == dg.AssetCheckSeverity.WARN
    assert text(age).startswith("stale: 'champion' of 'clf' points at version 1 since")
    assert age.metadata["age_seconds"].value > 1 == age.metadata["max_age_seconds"].value


class StatusServer:
    """Answers GET with what a deployer says it runs."""

    def __init__(self, answer: dict) -> None:
        self.answer = answer
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                data = json.dumps(server.answer).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/status"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_webhook_status_url_is_asked_what_runs(v2_runs, tmp_path, instance):
    status = StatusServer({})
    try:
        with Receiver() as receiver:
            target = trd.WebhookTarget(receiver.url, status_url=status.url)
            assets, checks, resources = pipeline(v2_runs["success"], tmp_path, target)
            result = dg.materialize([*assets, *checks], resources=resources, instance=instance,
                                    raise_on_error=False)
            drift = evaluations(result)[DRIFT_CHECK]
            # The deployer acknowledged the POST but reports it runs nothing.
            assert not drift.passed and "nothing is served: WebhookTarget reports" in text(drift)
            champion = resources["checkpoint_registry"].get(MODEL)
            status.answer = {"model": MODEL, "version": 1, "checkpoint_uri": champion.uri}
            assert run_checks(assets, checks, resources, instance)[DRIFT_CHECK].passed
            deployment = result.output_for_node("served")["deployment"]
            assert deployment["deployed"] == {"model": MODEL, "version": 1,
                                              "checkpoint_uri": champion.uri}
    finally:
        status.close()


def test_model_card_in_metadata_registry_and_cli(v2_runs, tmp_path, instance):
    with Receiver() as receiver:
        assets, checks, resources = pipeline(v2_runs["success"], tmp_path,
                                             trd.WebhookTarget(receiver.url))
        first = dg.materialize(assets, resources=resources, instance=instance)
        # The champion step alone again: same candidate (v1), which is the champion already.
        again = dg.materialize(assets, resources=resources, instance=instance,
                               selection=["champion"])
        # A second attempt with a worse candidate (the failed run's best loss is 0.5 > 0.4).
        os.environ["GUARDRAILS_RUN"] = v2_runs["failure"]
        try:
            second = dg.materialize(assets, resources=resources, instance=instance,
                                    raise_on_error=False)
        finally:
            del os.environ["GUARDRAILS_RUN"]
    kept = again.asset_materializations_for_node("champion")[0].metadata["model_card"].value
    assert "**KEPT**" in kept and "already the champion" in kept
    meta = first.asset_materializations_for_node("champion")[0].metadata
    card = meta["model_card"].value
    assert card.startswith(f"## Model card: {MODEL} version 1 for `champion`")
    assert "**PROMOTED**" in card and "](data:image/png;base64,iVBOR" in card
    assert "| loss (min) |" in card and "| threshold val/acc |" in card
    assert v2_runs["success"] in card and first.run_id[:8] in card
    assert "(/assets/champion?view=events)" in card

    rejected = second.asset_materializations_for_node("champion")[0].metadata["model_card"].value
    assert "**REJECTED**" in rejected and "champion v1 (before)" in rejected
    assert "| loss | 0.5 | 0.4 | +0.1 |" in rejected, rejected

    registry = resources["checkpoint_registry"].registry
    assert registry.card(MODEL, 1)["outcome"] == "promoted"  # the re-run kept its card
    curves = registry.card(MODEL, 1)["curves"]
    assert curves["marker_x"] == 1 and curves["x_label"] == "epoch"  # best loss at epoch 1
    assert curves["renderer"] == "matplotlib"
    stored = registry.card(MODEL, 2)
    assert stored["outcome"] == "rejected" and stored["picture"].endswith("0000000002.png")
    assert registry.card_picture(MODEL, 2).startswith(b"\x89PNG")
    base = str(tmp_path / "registry")
    out = subprocess.run([f"{BIN}/trainresults", "registry", "--base", base, "card", MODEL, "2"],
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith(f"## Model card: {MODEL} version 2") and stored["picture"] in out
    verify = subprocess.run([f"{BIN}/trainresults", "registry", "--base", base, "verify", MODEL,
                             "--hashes"], capture_output=True, text=True)
    assert verify.returncode == 0 and verify.stdout.startswith("ok ")
    os.remove(os.path.join(registry.get(MODEL).checkpoint.path, "model.txt"))
    broken = subprocess.run([f"{BIN}/trainresults", "registry", "--base", base, "--json",
                             "verify", MODEL], capture_output=True, text=True)
    assert broken.returncode == 6 and json.loads(broken.stdout)["missing"] == ["model.txt"]


def test_reference_mode_warns_when_num_to_keep_can_delete(v2_runs, tmp_path, instance, caplog):
    @dg.asset(io_manager_key="ray_results")
    def trained() -> trd.TrainResult:
        return trd.TrainResult.from_path(v2_runs["success"])  # num_to_keep=2, RunRecorder

    for mode, warned in (("reference", True), ("copy", False)):
        io = trd.RayTrainResultIOManager(base_path=str(tmp_path / mode), checkpoints=mode)
        result = dg.materialize([trained], resources={"ray_results": io}, instance=instance)
        meta = result.asset_materializations_for_node("trained")[0].metadata
        assert ("trainresults/retention_warning" in meta) is warned
    warning = meta_warning = None
    for record in instance.fetch_materializations(dg.AssetKey("trained"), limit=2).records:
        value = record.asset_materialization.metadata.get("trainresults/retention_warning")
        meta_warning = meta_warning or (value.value if value else None)
    warning = meta_warning
    assert "num_to_keep=2" in warning and "checkpoints='copy'" in warning
    assert "lowest-scored by loss" in warning
