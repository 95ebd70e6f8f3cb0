"""Retraining: ``build_retraining_schedule``, and the example pipeline's retraining on failure
(its ``failed_ray_runs`` sensor requests its ``retrain`` job for a failed Ray run)."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import shutil
import sys
import time

import dagster as dg
import pytest

import trainresults_dagster as trd
from trainresults_dagster.runs.record import JOURNAL_DIR, journal_key


@dg.asset
def model() -> int:
    return 1


def test_schedule_requests_the_target_on_its_cron():
    schedule = trd.build_retraining_schedule(
        "nightly", target=model, cron_schedule="0 3 * * *", execution_timezone="Europe/Paris",
        tags={"team": "ml"},
    )
    defs = dg.Definitions(assets=[model], schedules=[schedule])
    resolved = defs.resolve_schedule_def("nightly")
    assert resolved.cron_schedule == "0 3 * * *"
    assert resolved.execution_timezone == "Europe/Paris"
    assert resolved.default_status == dg.DefaultScheduleStatus.STOPPED
    when = dt.datetime(2026, 11, 28, 3, 0, tzinfo=dt.UTC)
    with dg.build_schedule_context(scheduled_execution_time=when) as context:
        data = resolved.evaluate_tick(context)
    (request,) = data.run_requests
    assert request.tags["trainresults/trigger"] == "schedule"
    assert request.tags["team"] == "ml"
    # The schedule's job materialises exactly the target.
    job = defs.resolve_job_def(resolved.job_name)
    assert job.asset_layer.selected_asset_keys == {dg.AssetKey("model")}
    assert dg.materialize([model]).success


def test_schedule_can_start_running_and_validates_its_cron():
    running = trd.build_retraining_schedule(
        "weekly", target=dg.AssetSelection.assets(model), cron_schedule="0 3 * * 1",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    assert running.default_status == dg.DefaultScheduleStatus.RUNNING
    with pytest.raises(ValueError, match="cron schedule"):
        trd.build_retraining_schedule("bad", target=model, cron_schedule="every monday")
    with pytest.raises(ValueError, match="target"):
        trd.build_retraining_schedule("none", target=None, cron_schedule="0 3 * * 1")


def test_example_retrains_when_a_ray_run_fails(v2_runs, tmp_path, monkeypatch):
    storage = tmp_path / "demo"
    ray_storage = storage / "ray"
    shutil.copytree(v2_runs["failure"], ray_storage / "failure")
    entry = {"run_name": "failure", "error_type": "WorkerGroupError", "message": "m",
             "time": time.time()}
    (ray_storage / JOURNAL_DIR).mkdir(parents=True)
    (ray_storage / JOURNAL_DIR / journal_key(entry["time"], "failure")).write_text(json.dumps(entry))
    monkeypatch.setenv("TRAINRESULTS_STORAGE", str(storage))
    monkeypatch.delenv("TRAINRESULTS_ALERT_URL", raising=False)
    # A fresh import reads this test's environment; the previous module comes back after.
    monkeypatch.delitem(sys.modules, "trainresults_dagster.examples.definitions", raising=False)
    example = importlib.import_module("trainresults_dagster.examples.definitions")
    defs = example.defs

    sensor = defs.resolve_sensor_def("failed_ray_runs")
    assert sensor.job_name == "retrain"
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, definitions=defs,
                                     resources={"alert_sink": defs.resources["alert_sink"]}) as context:
            data = sensor.evaluate_tick(context)
    (request,) = data.run_requests
    assert request.run_key == os.path.join(str(ray_storage), "failure")
    assert request.tags["trainresults/error_type"] == "WorkerGroupError"
    assert defs.resolve_schedule_def("weekly_retraining").job_name == "retrain"
