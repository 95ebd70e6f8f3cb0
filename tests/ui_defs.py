"""Definitions for the browser test: a small promotion pipeline over real Ray runs, with the
champion checks. The test materialises it into a Dagster instance, then
``dagster-webserver -f tests/ui_defs.py`` serves the same definitions over that instance.

Environment: ``GUARDRAILS_UI_ROOT`` (storage folder), ``GUARDRAILS_UI_RUN`` (the Ray run the
training asset returns), ``GUARDRAILS_UI_HOOK`` (the serving webhook).
"""

import datetime as dt
import os

import dagster as dg

import trainresults_dagster as trd

MODEL = "clf"


def build(root: str, hook_url: str) -> tuple[list, list, dict]:
    @dg.asset(io_manager_key=trd.JSON_IO_MANAGER_KEY)
    def training_data(context: dg.AssetExecutionContext) -> dict:
        return {"run": context.run.run_id}

    @dg.asset(io_manager_key="ray_results", deps=[training_data])
    def trained() -> trd.TrainResult:
        return trd.TrainResult.from_path(os.environ["GUARDRAILS_UI_RUN"])

    best = trd.build_best_checkpoint_asset("best", result_asset=trained, metric="loss", mode="min")
    champion = trd.build_promotion_asset(
        "champion", model=MODEL, candidate_asset=best, metric="loss", mode="min",
        thresholds={"val/acc": (0.5, None)},
        freshness_policy=dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(days=8)),
    )
    served = trd.build_serving_asset("served", model_asset=champion)
    checks = trd.build_champion_checks(champion, max_age=dt.timedelta(days=8),
                                       training_data_asset=training_data, serving_asset=served)
    resources = {
        "ray_results": trd.RayTrainResultIOManager(base_path=f"{root}/results",
                                                   on_error="materialize"),
        trd.JSON_IO_MANAGER_KEY: trd.JsonIOManager(base_path=f"{root}/values"),
        "checkpoint_registry": trd.CheckpointRegistry(base_path=f"{root}/registry"),
        "serving_target": trd.WebhookTarget(hook_url),
    }
    return [training_data, trained, best, champion, served], checks, resources


_assets, _checks, _resources = build(
    os.environ.get("GUARDRAILS_UI_ROOT", "/tmp/guardrails-ui"),
    os.environ.get("GUARDRAILS_UI_HOOK", "http://127.0.0.1:9/hook"),
)
defs = dg.Definitions(assets=_assets, asset_checks=_checks, resources=_resources)
