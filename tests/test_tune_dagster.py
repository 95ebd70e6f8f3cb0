"""A real Ray Tune sweep through Dagster: materialised by ``RayTrainResultIOManager`` (local
and moto S3, reference and copy), loaded by annotation, its best checkpoint across trials
promoted with the trial in the lineage, its errored trial alerted by the failed-run sensor
through a real HTTP receiver, and shown by the CLI."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
import ray.train
import tune_jobs
from alert_receiver import AlertReceiver
from conftest import SECRET_KEY

import trainresults_dagster as trd
from trainresults_dagster.runs.store import ResultStore
from trainresults_dagster.runs.sweep_store import SWEEP_SCHEMA
from trainresults_dagster.storage import resolve

BIN = os.path.dirname(sys.executable)


class SweepChoice(dg.Config):
    uri: str
    as_ray: bool = False


def sweep_asset(filesystem: Any = None) -> dg.AssetsDefinition:
    @dg.asset(name="sweep", io_manager_key="ray_results", kinds={"ray"})
    def _sweep(config: SweepChoice) -> Any:  # a TrainResultGrid or a ray.tune.ResultGrid
        if config.as_ray:  # what Tuner.fit() returns, as Ray rebuilds it from the folder
            from ray.tune import ExperimentAnalysis, ResultGrid

            return ResultGrid(ExperimentAnalysis(config.uri, default_metric="loss",
                                                 default_mode="min"))
        return trd.TrainResultGrid.from_path(config.uri, filesystem, mode="min")

    return _sweep


def consumers(seen: dict[str, Any]) -> list[dg.AssetsDefinition]:
    @dg.asset
    def as_grid(sweep: trd.TrainResultGrid) -> None:
        seen["grid"] = sweep

    @dg.asset
    def as_table(sweep: pd.DataFrame) -> None:
        seen["table"] = sweep

    @dg.asset
    def as_best_trial(sweep: trd.TrainResult) -> None:
        seen["best_trial"] = sweep

    @dg.asset
    def as_best_checkpoint(sweep: trd.Checkpoint) -> None:
        seen["best_checkpoint"] = sweep

    @dg.asset(ins={"sweep": dg.AssetIn(metadata={"metric": "eval/acc", "mode": "max",
                                                 "scope": "last"})})
    def as_best_by_acc(sweep: trd.Checkpoint) -> None:
        seen["best_by_acc"] = sweep

    @dg.asset
    def as_ray(sweep: ray.train.Result) -> None:
        seen["ray"] = sweep

    return [as_grid, as_table, as_best_trial, as_best_checkpoint, as_best_by_acc, as_ray]


def materialize(assets: list, io_manager: Any, uri: str, *, as_ray: bool = False,
                instance: Any = None, **kwargs: Any) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        assets,
        resources={"ray_results": io_manager, "io_manager": dg.mem_io_manager},
        run_config=dg.RunConfig(ops={"sweep": SweepChoice(uri=uri, as_ray=as_ray)}),
        instance=instance,
        **kwargs,
    )


def metadata(result: dg.ExecuteInProcessResult, node: str = "sweep") -> dict[str, Any]:
    (mat,) = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in mat.metadata.items()}


def by_kind(grid: trd.TrainResultGrid) -> dict[str, trd.TrialResult]:
    return {t.config["kind"]: t for t in grid}


# ------------------------------------------------------------------------ the IO manager


@pytest.mark.parametrize("checkpoints", ["reference", "copy"])
def test_sweep_materialises_as_one_asset_and_loads_by_annotation(tune_sweep, tmp_path, checkpoints):
    source = tmp_path / "ray" / "sweep"
    shutil.copytree(tune_sweep.path, source)
    expected = trd.TrainResultGrid.from_path(source, mode="min")
    seen: dict[str, Any] = {}
    io_manager = trd.RayTrainResultIOManager(base_path=str(tmp_path / "store"),
                                             checkpoints=checkpoints)
    result = materialize([sweep_asset(), *consumers(seen)], io_manager, str(source))
    assert result.success

    md = metadata(result)
    assert (md["num_trials"], md["num_errored_trials"], md["num_terminated_trials"]) == (4, 1, 3)
    assert md["kind"] == "sweep" and md["dagster/uri"] == str(source)
    assert md["best/loss"] == pytest.approx(tune_jobs.BEST_OVERALL[1])
    assert isinstance(md["best/loss"], float)  # FloatMetadataValue: Dagster plots it
    best = expected.best_checkpoint()
    assert md["best_trial_id"] == best.trial.trial_id
    assert md["best_trial_config"] == best.trial.config
    records = md["trials_table"].records
    assert [r.data["trial_id"] for r in records] == [t.trial_id for t in expected]
    assert {"config/kind", "loss", "eval/acc"} <= set(records[0].data)
    assert "hostname" not in records[0].data  # Ray's automatic keys stay in the Parquet only
    assert "boom in trial kind=raise" in md["errors"]
    assert md["trainresults/error_type"] == "ValueError"

    # The stored version: a sweep manifest and two Parquet files, nothing pickled.
    version = Path(md["manifest"]).parent
    assert json.loads((version / "manifest.json").read_text())["schema"] == SWEEP_SCHEMA
    names = {p.name for p in version.iterdir()}
    assert {"manifest.json", "trials.parquet", "history.parquet"} <= names
    assert not [p for p in version.rglob("*.pkl")]

    grid = seen["grid"]
    assert isinstance(grid, trd.TrainResultGrid) and len(grid) == 4
    assert (grid.metric, grid.mode) == ("loss", "min")
    for mine, theirs in zip(grid, expected, strict=True):
        assert (mine.trial_id, mine.trial_status, mine.config) == (
            theirs.trial_id, theirs.trial_status, theirs.config)
        assert [c.name for c in mine.checkpoints] == [c.name for c in theirs.checkpoints]
        assert mine.metrics_dataframe.equals(theirs.metrics_dataframe)
        assert (mine.error is None) == (theirs.error is None)
    table = seen["table"]
    assert list(table["trial_id"]) == [t.trial_id for t in expected]
    assert math.isnan(table.set_index("trial_id").at[by_kind(expected)["nan"].trial_id, "loss"])
    # The best trial by the sweep's objective (loss, min, last) and the best checkpoint
    # across trials (every checkpoint): never the NaN one.
    assert seen["best_trial"].trial_id == by_kind(expected)["good_b"].trial_id
    assert seen["best_checkpoint"].name == best.checkpoint.name
    assert seen["best_checkpoint"].metrics["loss"] == pytest.approx(0.2)
    # By the input's own objective: eval/acc (max) of each trial's latest checkpoint.
    assert seen["best_by_acc"].name == by_kind(expected)["nan"].checkpoint.name
    assert seen["best_by_acc"].metrics["eval"]["acc"] == 1.0
    assert seen["ray"].metrics["trial_id"] == by_kind(expected)["good_b"].trial_id

    if checkpoints == "copy":
        assert seen["best_checkpoint"].uri.startswith(str(tmp_path / "store"))
        shutil.rmtree(source)  # Ray's folder is gone; the asset is not
        stored = ResultStore(*resolve(str(tmp_path / "store" / "sweep")),
                             filesystem_for=lambda u: resolve(u)).read()
        assert isinstance(stored, trd.TrainResultGrid)
        ckpt = stored.best_checkpoint().checkpoint
        with ckpt.as_directory() as d:
            assert json.load(open(os.path.join(d, "model.json")))["kind"] == "nan"
        assert len(stored[0].metrics_dataframe) in (3, 4)  # history from Parquet
    else:
        assert seen["best_checkpoint"].uri == best.checkpoint.uri

    # Materialising again is idempotent: a new version, the same content.
    again = materialize([sweep_asset()], io_manager, str(source)) if checkpoints == "reference" else None
    if again is not None:
        assert again.success and metadata(again)["best/loss"] == md["best/loss"]


def test_a_resultgrid_from_ray_keeps_tunes_objective(tune_sweep, tmp_path):
    io_manager = trd.RayTrainResultIOManager(base_path=str(tmp_path / "store"))
    seen: dict[str, Any] = {}
    result = materialize([sweep_asset(), *consumers(seen)[:1]], io_manager, tune_sweep.path,
                         as_ray=True)
    md = metadata(result)
    assert md["objective"] == "loss (min)" and md["best/loss"] == pytest.approx(0.2)
    assert (seen["grid"].metric, seen["grid"].mode) == ("loss", "min")


def _only_errored(tune_sweep, tmp_path: Path) -> Path:
    """The real sweep, with the state edited down to its errored trial."""
    copy = tmp_path / "errored" / "sweep"
    shutil.copytree(tune_sweep.path, copy)
    (state_path,) = copy.glob("experiment_state-*.json")
    state = json.loads(state_path.read_text())
    state["trial_data"] = [pair for pair in state["trial_data"]
                           if json.loads(pair[0])["status"] == "ERROR"]
    state_path.write_text(json.dumps(state))
    return copy


def test_a_sweep_without_a_successful_trial_fails_the_step(tune_sweep, tmp_path):
    errored = _only_errored(tune_sweep, tmp_path)
    io_manager = trd.RayTrainResultIOManager(base_path=str(tmp_path / "store"))
    result = materialize([sweep_asset()], io_manager, str(errored), raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    info = failure.step_failure_data.user_failure_data
    assert "no trial succeeded (1 of 1 errored)" in info.description
    assert "boom in trial kind=raise at step=3" in info.description
    assert info.metadata["trainresults/error_type"].value == "ValueError"
    assert not (tmp_path / "store" / "sweep" / "CURRENT.json").exists()  # not committed
    assert list((tmp_path / "store" / "sweep" / "failed").iterdir())  # kept for inspection

    lenient = trd.RayTrainResultIOManager(base_path=str(tmp_path / "store"),
                                          on_error="materialize")
    ok = materialize([sweep_asset()], lenient, str(errored))
    assert ok.success and metadata(ok)["num_errored_trials"] == 1
    assert (tmp_path / "store" / "sweep" / "CURRENT.json").exists()


def test_s3_sweep_copied_server_side_into_an_s3_store(moto, s3_sweep, tune_sweep):
    bucket = moto.new_bucket("store")
    io_manager = trd.RayTrainResultIOManager(base_path=f"s3://{bucket}/assets",
                                             s3=moto.s3_resource(), checkpoints="copy")
    seen: dict[str, Any] = {}
    result = materialize([sweep_asset(moto.filesystem()), *consumers(seen)[:4]], io_manager,
                         s3_sweep)
    assert result.success
    md = metadata(result)
    assert md["dagster/uri"] == s3_sweep and md["num_trials"] == 4
    assert md["best_checkpoint"].startswith(f"s3://{bucket}/assets/sweep/")
    assert seen["best_checkpoint"].uri.startswith(f"s3://{bucket}/assets/sweep/")
    with seen["best_checkpoint"].as_directory() as d:
        assert json.load(open(os.path.join(d, "model.json")))["kind"] == "nan"
    local = trd.TrainResultGrid.from_path(tune_sweep.path)
    assert seen["table"].drop(columns="uri").equals(local.trials_table.drop(columns="uri"))
    # No credential reaches the manifest.
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=bucket)["Contents"]]
    manifest = next(k for k in keys if k.endswith("manifest.json"))
    body = moto.client().get_object(Bucket=bucket, Key=manifest)["Body"].read().decode()
    assert SECRET_KEY not in body and moto.access_key not in body


# ------------------------------------------------------------------------ best + promotion


def test_best_checkpoint_across_trials_is_promoted_with_the_trial_in_its_lineage(tune_sweep, tmp_path):
    sweep = sweep_asset()
    best = trd.build_best_checkpoint_asset("best", result_asset=sweep, metric="loss", mode="min")
    final = trd.build_best_checkpoint_asset("best_final", result_asset=sweep, metric="loss",
                                            mode="min", scope="last")
    champion = trd.build_promotion_asset("champion", model="swept", candidate_asset=best,
                                         metric="loss", mode="min")
    registry = trd.CheckpointRegistry(base_path=str(tmp_path / "registry"))
    resources = {
        "ray_results": trd.RayTrainResultIOManager(base_path=str(tmp_path / "store")),
        trd.JSON_IO_MANAGER_KEY: trd.JsonIOManager(base_path=str(tmp_path / "values")),
        "checkpoint_registry": registry,
    }
    instance = dg.DagsterInstance.ephemeral()
    config = dg.RunConfig(ops={"sweep": SweepChoice(uri=tune_sweep.path)})
    result = dg.materialize([sweep, best, final, champion], resources=resources,
                            run_config=config, instance=instance)
    assert result.success
    expected = trd.TrainResultGrid.from_path(tune_sweep.path, mode="min")
    chosen = expected.best_checkpoint()
    md = metadata(result, "best")
    assert md["trial_id"] == chosen.trial.trial_id and md["trial_config"] == chosen.trial.config
    assert md["sweep_uri"] == tune_sweep.path and md["run_uri"] == chosen.trial.uri
    assert md["value"] == pytest.approx(0.2) and md["num_trials"] == 4
    ranking = md["ranking"].records
    assert {r.data["trial_id"] for r in ranking} == {t.trial_id for t in expected}
    assert [r.data["checkpoint"] for r in ranking if r.data["chosen"]] == [chosen.checkpoint.name]
    assert result.output_for_node("best_final").metrics["loss"] == tune_jobs.BEST_LAST[1]

    version = registry.get("swept")
    assert version.version == 1 and version.metrics["loss"] == pytest.approx(0.2)
    lineage = version.lineage
    assert lineage["trial_id"] == chosen.trial.trial_id
    assert lineage["trial_config"] == {"kind": "nan", "lr": 0.01, "model": {"width": 16, "act": "relu"}}
    assert lineage["sweep_uri"] == tune_sweep.path and lineage["run_uri"] == chosen.trial.uri
    assert lineage["source_checkpoint_uri"] == chosen.checkpoint.uri
    with version.checkpoint.as_directory() as d:
        assert json.load(open(os.path.join(d, "model.json"))) == {"kind": "nan", "step": 2,
                                                                   "lr": 0.01}

    # The same sweep again: same candidate, the champion is kept.
    again = dg.materialize([sweep, best, final, champion], resources=resources,
                           run_config=config, instance=instance)
    assert again.success and metadata(again, "champion")["decision"] == "kept"
    assert [v.version for v in registry.versions("swept")] == [1]


def test_best_checkpoint_factory_validates_scope():
    with pytest.raises(ValueError, match="scope"):
        trd.build_best_checkpoint_asset("b", result_asset="sweep", metric="loss", mode="min",
                                        scope="best")  # type: ignore[arg-type]


# ------------------------------------------------------------------------ sensors


@pytest.fixture
def receiver():
    rx = AlertReceiver()
    yield rx
    rx.stop()


def _tick(sensor: dg.SensorDefinition, instance: Any, cursor: str | None, resources: dict) -> Any:
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as ctx:
        return sensor.evaluate_tick(ctx)


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_errored_trial_is_alerted_per_trial_or_per_experiment(tune_sweep, tmp_path, receiver,
                                                              backend, request):
    if backend == "local":
        root = tmp_path / "storage"
        shutil.copytree(tune_sweep.path, root / "sweep")
        storage_path, s3_key, extra = str(root), None, {}
    else:
        moto = request.getfixturevalue("moto")
        bucket = moto.new_bucket("alerts")
        moto.upload_dir(tune_sweep.path, bucket, "storage/sweep")
        storage_path, s3_key, extra = f"s3://{bucket}/storage", "s3", {"s3": moto.s3_resource()}
    grid = trd.TrainResultGrid.from_path(tune_sweep.path)
    raised = by_kind(grid)["raise"]
    sink = trd.WebhookAlertSink(url=receiver.url, secret="hook-secret")
    with dg.instance_for_test() as instance:
        per_trial = trd.build_failed_run_sensor("trials", storage_path=storage_path, s3_key=s3_key)
        first = _tick(per_trial, instance, None, {"alert_sink": sink, **extra})
        (alert,) = [r.json for r in receiver.requests]
        assert alert["kind"] == "ray_run_failed" and alert["trial_id"] == raised.trial_id
        assert alert["config"] == raised.config
        assert (alert["error_type"], alert["message"]) == ("ValueError",
                                                           "boom in trial kind=raise at step=3")
        assert alert["run_uri"] == f"{storage_path}/sweep/{os.path.basename(raised.path)}"
        assert alert["last_checkpoint_uri"].endswith(raised.checkpoint.name)
        assert alert["last_metrics"]["loss"] == 0.4
        assert "kind=raise" in alert["text"] and raised.trial_id in alert["title"]
        assert _tick(per_trial, instance, first.cursor, {"alert_sink": sink, **extra}
                     ).skip_message.startswith("no new failed runs")
        assert len(receiver.requests) == 1

        per_exp = trd.build_failed_run_sensor("experiments", storage_path=storage_path,
                                              s3_key=s3_key, trial_alerts="per_experiment")
        _tick(per_exp, instance, None, {"alert_sink": sink, **extra})
        summary = receiver.requests[-1].json
        assert summary["run_uri"] == f"{storage_path}/sweep" and summary["run_name"] == "sweep"
        assert (summary["num_trials"], summary["num_failed_trials"]) == (4, 1)
        assert summary["trial_ids"] == [raised.trial_id]
        (failed,) = summary["failed_trials"]
        assert failed["config"] == raised.config and failed["error_type"] == "ValueError"
        assert "1 of 4 trial(s) failed" in summary["title"]
        assert summary["alert_id"] != alert["alert_id"]
        assert all(SECRET_KEY not in r.body.decode() for r in receiver.requests)
    with pytest.raises(ValueError, match="trial_alerts"):
        trd.build_failed_run_sensor("x", storage_path=storage_path, trial_alerts="each")  # type: ignore[arg-type]


# ------------------------------------------------------------------------ CLI


def test_cli_inspect_and_best_on_a_sweep_folder(tune_sweep):
    grid = trd.TrainResultGrid.from_path(tune_sweep.path, mode="min")
    out = subprocess.run([f"{BIN}/trainresults", "inspect", tune_sweep.path],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "trials     4    errored 1" in out.stdout
    for trial in grid:
        assert trial.trial_id in out.stdout
    assert "ValueError: boom in trial kind=raise at step=3" in out.stdout
    assert "config/kind" in out.stdout and "eval/acc" in out.stdout
    as_json = subprocess.run([f"{BIN}/trainresults", "inspect", tune_sweep.path, "--json"],
                             capture_output=True, text=True, timeout=120)
    data = json.loads(as_json.stdout)  # strict JSON: the NaN loss is null
    assert data["num_trials"] == 4 and len(data["trials_table"]) == 4

    best = subprocess.run([f"{BIN}/trainresults", "best", tune_sweep.path, "--metric", "loss",
                           "--mode", "min", "--json"], capture_output=True, text=True, timeout=120)
    chosen = json.loads(best.stdout)
    assert chosen["uri"] == grid.best_checkpoint().checkpoint.uri
    assert chosen["config"]["kind"] == "nan" and chosen["metrics"]["loss"] == 0.2
    last = subprocess.run([f"{BIN}/trainresults", "best", tune_sweep.path, "--metric", "loss",
                           "--mode", "min", "--scope", "last"], capture_output=True, text=True,
                          timeout=120)
    assert last.stdout.strip() == grid.best_checkpoint(scope="last").checkpoint.uri
    none = subprocess.run([f"{BIN}/trainresults", "best", tune_sweep.path, "--metric", "nope",
                           "--mode", "min"], capture_output=True, text=True, timeout=120)
    assert none.returncode == 4 and "'nope'" in none.stderr
