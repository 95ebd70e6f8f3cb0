"""RayTrainResultIOManager end to end: dagster.materialize, real Ray runs, moto S3 over HTTP."""

import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
import ray.train
import ray_jobs

import trainresults_dagster as trd
from trainresults_dagster.dagster.metadata import error_markdown
from trainresults_dagster.runs import store as result_store
from trainresults_dagster.runs.metrics import flatten_metrics
from trainresults_dagster.runs.record import read_record
from trainresults_dagster.runs.store import ResultStore
from trainresults_dagster.storage import resolve

# ------------------------------------------------------------------------------ helpers


class RunChoice(dg.Config):
    run: str


def train_asset(runs: dict[str, str], *, as_ray: bool = False, filesystem: Any = None,
                **asset_kwargs: Any):
    """An asset ``train`` that returns the run named by its config (or partition key)."""

    @dg.asset(name="train", **asset_kwargs)
    def _train(context: dg.AssetExecutionContext, config: RunChoice):
        name = context.partition_key if config.run == "<partition>" else config.run
        if as_ray:
            return ray.train.Result.from_path(runs[name], filesystem)
        return trd.TrainResult.from_path(runs[name], filesystem)

    return _train


def run_config(run: str) -> dg.RunConfig:
    return dg.RunConfig(ops={"train": RunChoice(run=run)})


def materialize(assets, io_manager, *, run: str | None = "success", selection=None, **kwargs):
    return dg.materialize(
        assets,
        resources={"io_manager": io_manager},
        run_config=run_config(run) if run is not None else None,
        selection=selection,
        **kwargs,
    )


def output_metadata(result: dg.ExecuteInProcessResult, node: str = "train") -> dict[str, Any]:
    (mat,) = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in mat.metadata.items()}


def consumers(seen: dict[str, Any]) -> list[dg.AssetsDefinition]:
    """Downstream assets, one per supported annotation, recording what they received."""

    @dg.asset
    def as_result(train: trd.TrainResult) -> None:
        seen["result"] = train

    @dg.asset
    def as_ray(train: ray.train.Result) -> None:
        seen["ray"] = train

    @dg.asset
    def as_frame(train: pd.DataFrame) -> None:
        seen["frame"] = train

    @dg.asset
    def as_checkpoint(train: trd.Checkpoint) -> None:
        seen["checkpoint"] = train

    @dg.asset
    def unannotated(train) -> None:  # noqa: ANN001 - the default type on purpose
        seen["any"] = train

    return [as_result, as_ray, as_frame, as_checkpoint, unannotated]


def same(a: Any, b: Any) -> bool:
    """Equality with NaN == NaN, recursively."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def recorded_reports(run: str) -> list[dict[str, Any]]:
    record = read_record(*resolve(run))
    assert record is not None, f"no RunRecorder record in {run}"
    return record.reports


def versions(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("v-"))


# ------------------------------------------------------------------------------ loading


@pytest.mark.parametrize("mode", ["reference", "copy"])
def test_every_input_type_from_a_ray_result(v2_runs, tmp_path, mode):
    run = v2_runs["success"]
    oracle = ray.train.Result.from_path(run)
    seen: dict[str, Any] = {}
    io = trd.RayTrainResultIOManager(base_path=str(tmp_path / "io"), checkpoints=mode)

    res = materialize([train_asset(v2_runs, as_ray=True), *consumers(seen)], io)

    assert res.success
    reports = recorded_reports(run)  # RunRecorder kept metric-only reports too
    ours = seen["result"]
    assert isinstance(ours, trd.TrainResult) and ours.error is None
    assert ours.uri == run and same(ours.metrics, oracle.metrics)
    names = sorted(os.path.basename(c.path) for c, _ in oracle.best_checkpoints)
    assert sorted(c.name for c in ours.checkpoints) == names
    for ckpt in ours.checkpoints:
        inside = mode == "copy"
        assert ckpt.path.startswith(str(tmp_path / "io")) is inside
        assert ckpt.exists()

    theirs = seen["ray"]
    assert isinstance(theirs, ray.train.Result)
    assert same(theirs.metrics, oracle.metrics)
    assert sorted(os.path.basename(c.path) for c, _ in theirs.best_checkpoints) == names
    assert len(theirs.metrics_dataframe) == len(reports)

    frame = seen["frame"]
    assert isinstance(frame, pd.DataFrame) and len(frame) == len(reports)
    pd.testing.assert_frame_equal(frame, trd.TrainResult.from_path(run).metrics_dataframe)
    assert list(frame["loss"].dropna()) == [r["metrics"]["loss"] for r in reports
                                            if "loss" in r["metrics"]]

    ckpt = seen["checkpoint"]
    assert isinstance(ckpt, trd.Checkpoint)
    assert ckpt.name == os.path.basename(oracle.checkpoint.path)
    with ckpt.as_directory() as d, oracle.checkpoint.as_directory() as o:
        assert Path(d, "model.txt").read_text() == Path(o, "model.txt").read_text()
    assert ckpt.get_metadata() == oracle.checkpoint.get_metadata()
    assert isinstance(seen["any"], trd.TrainResult)


def test_dataframe_is_read_only_when_asked(v2_runs, tmp_path):
    io = trd.RayTrainResultIOManager(base_path=str(tmp_path / "io"))
    assert materialize([train_asset(v2_runs)], io).success
    parquet = next((tmp_path / "io" / "train").glob("v-*/metrics.parquet"))
    hidden = parquet.rename(parquet.with_name("elsewhere"))
    seen: dict[str, Any] = {}
    assert materialize([train_asset(v2_runs), *consumers(seen)[:1]], io,
                       selection=["as_result"], run=None).success
    assert seen["result"].metrics["loss"] is not None  # loaded without the Parquet file
    with pytest.raises(trd.CorruptRunError, match=re.escape(str(parquet))):
        _ = seen["result"].metrics_dataframe
    hidden.rename(parquet)
    assert len(seen["result"].metrics_dataframe) == len(recorded_reports(v2_runs["success"]))


def test_failed_run_without_checkpoint(v2_runs, tmp_path):
    seen: dict[str, Any] = {}

    @dg.asset
    def strict(train: trd.Checkpoint) -> None:
        seen["strict"] = train

    @dg.asset
    def lenient(train: trd.Checkpoint | None) -> None:
        seen["lenient"] = train

    io = trd.RayTrainResultIOManager(base_path=str(tmp_path / "io"), on_error="materialize")
    stored = trd.TrainResult.from_path(v2_runs["failure_before_ckpt"])
    assert stored.checkpoint is None and stored.error is not None
    res = materialize([train_asset(v2_runs), lenient, *consumers(seen)[:3]], io,
                      run="failure_before_ckpt")
    assert res.success
    assert seen["lenient"] is None
    assert seen["result"].status == "failed" and seen["result"].checkpoints == []
    assert len(seen["frame"]) == len(recorded_reports(v2_runs["failure_before_ckpt"]))
    assert output_metadata(res)["num_checkpoints"] == 0
    with pytest.raises(trd.CheckpointMissingError, match="persisted none"):
        materialize([train_asset(v2_runs), strict], io, selection=["strict"], run=None)


def test_wrong_output_and_input_types_are_named(v2_runs, tmp_path):
    io = trd.RayTrainResultIOManager(base_path=str(tmp_path / "io"))

    @dg.asset(name="train")
    def not_a_result() -> dict:
        return {"loss": 1.0}

    with pytest.raises(TypeError, match=r"ray\.train\.Result.*got dict: \{'loss': 1\.0\}"):
        materialize([not_a_result], io, run=None)

    @dg.asset
    def wants_int(train: int) -> None:
        pass

    assert materialize([train_asset(v2_runs)], io).success
    with pytest.raises(TypeError, match="cannot load input 'train' as <class 'int'>"):
        materialize([train_asset(v2_runs), wants_int], io, selection=["wants_int"], run=None)


def test_base_path_scheme_is_checked_at_configuration():
    with pytest.raises(Exception, match="local folder, 's3://bucket/prefix'.*scheme 'ftp'"):
        trd.RayTrainResultIOManager(base_path="ftp://bucket/x")


def test_default_base_path_is_under_the_instance(v2_runs, tmp_path):
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        res = materialize([train_asset(v2_runs)], trd.RayTrainResultIOManager(), instance=instance)
        root = Path(instance.storage_directory(), "trainresults", "train")
    assert res.success
    assert (root / "CURRENT.json").is_file()
    assert output_metadata(res)["manifest"].startswith(str(root))


# ------------------------------------------------------------------------------ metadata


def test_metadata_of_a_materialisation(v2_runs, tmp_path):
    run = v2_runs["success"]
    oracle = ray.train.Result.from_path(run)
    io = trd.RayTrainResultIOManager(base_path=str(tmp_path / "io"))
    md = output_metadata(materialize([train_asset(v2_runs)], io))

    flat = flatten_metrics(oracle.metrics)
    assert flat  # nested: val/acc, val/f1
    for name, value in flat.items():
        assert md[f"metrics/{name}"] == pytest.approx(float(value))
    assert md["dagster/uri"] == run
    assert md["num_checkpoints"] == len(oracle.best_checkpoints)
    assert md["latest_checkpoint"] == oracle.checkpoint.path
    # The run's score attribute (RunRecorder saw loss/min): Ray's own pick agrees here.
    assert md["best_checkpoint"] == oracle.get_best_checkpoint("loss", "min").path
    reports = recorded_reports(run)
    table = md["metrics_table"]
    assert len(table.records) == len(reports) == md["dagster/row_count"]
    columns = [c.name for c in table.schema.columns]
    assert {"loss", "val/acc", "checkpoint_dir_name"} <= set(columns)
    assert [r.data["loss"] for r in table.records if r.data["loss"] is not None] == [
        r["metrics"]["loss"] for r in reports if "loss" in r["metrics"]
    ]
    assert "error" not in md and "trainresults/error_type" not in md
    assert md["manifest"].endswith("manifest.json")


def test_metadata_skips_nan_and_best_is_finite(v2_runs, tmp_path):
    io = trd.RayTrainResultIOManager(base_path=str(tmp_path / "io"))
    md = output_metadata(materialize([train_asset(v2_runs)], io, run="nan_losses"))
    final_loss = trd.TrainResult.from_path(v2_runs["nan_losses"]).metrics["loss"]
    assert final_loss is None or math.isnan(final_loss)  # Ray's snapshot writes NaN as null
    assert "metrics/loss" not in md and "metrics/epoch" in md
    finite = [x for x in ray_jobs.NAN_LOSSES if not math.isnan(x)]
    assert md["best_checkpoint_metrics"]["loss"] == min(finite)
    assert md["best_checkpoint_metrics"]["epoch"] == ray_jobs.NAN_LOSSES.index(min(finite))


def test_nan_metrics_load_back_as_nan(v2_runs, tmp_path):
    seen: dict[str, Any] = {}
    io = trd.RayTrainResultIOManager(base_path=str(tmp_path / "io"))
    assert materialize([train_asset(v2_runs), *consumers(seen)[:1]], io, run="nan_losses").success
    original = trd.TrainResult.from_path(v2_runs["nan_losses"])
    assert same(seen["result"].metrics, original.metrics)
    for (_, a), (_, b) in zip(seen["result"].best_checkpoints, original.best_checkpoints,
                              strict=True):
        assert same(a, b)


def test_error_markdown_cannot_be_broken_out_of():
    err = trd.TrainingError("Value*Error", "bad ``` value\n# not a heading", "",
                            {0: "ValueError: [x](http://evil)"})
    text = error_markdown(err)
    fence = re.search(r"^(`{4,})$", text, re.M).group(1)
    assert text.count(fence) == 2 and "bad ``` value\n# not a heading" in text
    assert r"Value\*Error" in text and r"\[x\]\(http://evil\)" in text


# ------------------------------------------------------------------------------ storage


def test_materialise_twice_is_idempotent(v2_runs, tmp_path):
    io = trd.RayTrainResultIOManager(base_path=str(tmp_path / "io"))
    loads: list[trd.TrainResult] = []
    metadata = []
    for _ in range(2):
        seen: dict[str, Any] = {}
        res = materialize([train_asset(v2_runs), *consumers(seen)[:1]], io)
        metadata.append(output_metadata(res))
        loads.append(seen["result"])
    first, second = loads
    assert first.to_dict() == second.to_dict()
    pd.testing.assert_frame_equal(first.metrics_dataframe, second.metrics_dataframe)
    a, b = ({k: v for k, v in m.items() if k != "manifest"} for m in metadata)
    assert a == b and metadata[0]["manifest"] != metadata[1]["manifest"]
    root = tmp_path / "io" / "train"
    assert len(versions(root)) == 2  # the new one and the previous one


def test_copy_mode_survives_deleting_the_run(copy_run, tmp_path):
    run = copy_run("success")
    runs = {"mine": run}
    io = trd.RayTrainResultIOManager(base_path=str(tmp_path / "io"), checkpoints="copy")
    ref = trd.RayTrainResultIOManager(base_path=str(tmp_path / "ref"))
    original = trd.TrainResult.from_path(run)
    contents = {c.name: Path(c.path, "model.txt").read_text() for c in original.checkpoints}
    assert materialize([train_asset(runs)], io, run="mine").success
    assert materialize([train_asset(runs)], ref, run="mine").success
    shutil.rmtree(run)

    seen: dict[str, Any] = {}
    assert materialize([train_asset(runs), *consumers(seen)], io, run=None,
                       selection=["as_result", "as_checkpoint"]).success
    assert {c.name: Path(c.path, "model.txt").read_text()
            for c in seen["result"].checkpoints} == contents
    assert seen["result"].uri == run  # still names the run it came from
    with seen["checkpoint"].as_directory() as d:
        assert Path(d, "model.txt").read_text() == contents[original.checkpoint.name]

    seen.clear()
    assert materialize([train_asset(runs), *consumers(seen)], ref, run=None,
                       selection=["as_result"]).success
    assert seen["result"].metrics == original.metrics  # the manifest alone still loads
    with pytest.raises(trd.CheckpointMissingError, match="checkpoints='copy'"):
        seen["result"].checkpoint.to_directory(str(tmp_path / "out"))


def test_tampered_or_unknown_manifest_is_refused(v2_runs, tmp_path):
    io = trd.RayTrainResultIOManager(base_path=str(tmp_path / "io"))
    assert materialize([train_asset(v2_runs)], io).success
    root = tmp_path / "io" / "train"
    manifest = next(root.glob("v-*/manifest.json"))
    original = manifest.read_text()
    seen: dict[str, Any] = {}
    load = [train_asset(v2_runs), *consumers(seen)[:1]]

    def load_fails(match: str) -> None:
        with pytest.raises(trd.CorruptRunError, match=match):
            materialize(load, io, selection=["as_result"], run=None)

    manifest.write_text(original.replace(result_store.MANIFEST_SCHEMA, "trainresults.x/9"))
    load_fails(rf"'trainresults\.x/9'.*{re.escape(str(manifest))}|{re.escape(str(manifest))}")
    data = json.loads(original)
    data["version"] = "v-20000101T000000.000000Z-aaaaaaaaaaaa"
    manifest.write_text(json.dumps(data))
    load_fails("moved or edited")
    manifest.write_text(original[: len(original) // 2])
    load_fails(re.escape(str(manifest)))
    manifest.write_text(original)
    (root / "CURRENT.json").write_text(json.dumps({"schema": "other/1", "version": "x"}))
    load_fails(re.escape(str(root / "CURRENT.json")))
    (root / "CURRENT.json").write_text(json.dumps(
        {"schema": result_store.POINTER_SCHEMA, "version": "../../etc"}))
    load_fails("v-<UTC time>-<id>")


def test_nothing_materialised_yet(v2_runs, tmp_path):
    io = trd.RayTrainResultIOManager(base_path=str(tmp_path / "io"))
    with pytest.raises(FileNotFoundError, match="nothing was materialised"):
        materialize([train_asset(v2_runs), *consumers({})[:1]], io, selection=["as_result"],
                    run=None)


def test_garbage_collection_keeps_current_and_previous(v2_runs, tmp_path):
    fs, root = resolve(str(tmp_path / "store"))
    store = ResultStore(fs, root, filesystem_for=resolve)
    result = trd.TrainResult.from_path(v2_runs["success"])
    written = [store.write(result, copy_checkpoints=False) for _ in range(4)]
    assert len(versions(tmp_path / "store")) == 4  # all younger than the age guard
    deleted = store.collect_garbage(keep={written[-1].version, written[-2].version},
                                    now=result_store.version_time(written[-1].version) + 3600)
    assert sorted(deleted) == [w.version for w in written[:2]]
    assert versions(tmp_path / "store") == [w.version for w in written[2:]]
    assert store.read().to_dict() == result.to_dict()  # the current version still loads
    for _ in range(result_store.KEEP_FAILED + 2):
        store.write(result, copy_checkpoints=False, commit=False)
    assert len(versions(tmp_path / "store" / "failed")) == result_store.KEEP_FAILED
    assert store.current_version() == written[-1].version  # failures never become current


def test_awkward_metrics_round_trip_through_parquet(copy_run, tmp_path):
    run = copy_run("success")
    result = trd.TrainResult.from_path(run)
    result.history = [
        {"report_index": 0, "metrics": {"step": 1, "phase": "warmup", "lr": [0.1, 0.2]},
         "checkpoint_dir_name": None},
        {"report_index": 1, "metrics": {"step": "two", "cfg": {"deep": {"x": [1, {"y": 2}]}},
                                        "flag": True}, "checkpoint_dir_name": "c"},
    ]
    fs, root = resolve(str(tmp_path / "store"))
    store = ResultStore(fs, root, filesystem_for=resolve)
    store.write(result, copy_checkpoints=False)
    loaded = store.read().metrics_dataframe
    expected = result.metrics_dataframe
    assert list(loaded.columns) == list(expected.columns)
    assert list(loaded["step"]) == [1, "two"]
    assert list(loaded["lr"])[0] == [0.1, 0.2]
    assert list(loaded["cfg/deep/x"])[1] == [1, {"y": 2}]


# ------------------------------------------------------------------------------ errors


def test_on_error_fail_stores_then_fails_with_context(v2_runs, tmp_path):
    io = trd.RayTrainResultIOManager(base_path=str(tmp_path / "io"), on_error="fail")
    seen: dict[str, Any] = {}
    assert materialize([train_asset(v2_runs)], io, run="success").success

    res = materialize([train_asset(v2_runs)], io, run="failure", raise_on_error=False)

    assert not res.success
    (failure,) = [e for e in res.all_events if e.is_step_failure]
    data = failure.step_failure_data.user_failure_data
    assert data is not None, failure.step_failure_data.error
    md = {k: v.value for k, v in data.metadata.items()}
    stored = trd.TrainResult.from_path(v2_runs["failure"])
    error = stored.error
    assert md["trainresults/run_uri"] == v2_runs["failure"]
    assert md["trainresults/error_type"] == error.error_type
    assert md["trainresults/message"] == error.message
    assert md["trainresults/worker_failures"] == {str(k): v for k, v in
                                                  error.worker_failures.items()}
    assert len(md["trainresults/worker_failures"]) == 2  # both ranks
    assert md["trainresults/last_checkpoint_uri"] == stored.checkpoint.uri
    assert md["trainresults/last_metrics"] == stored.metrics
    assert error.error_type in data.description and v2_runs["failure"] in data.description

    # Stored for inspection ...
    manifest = Path(md["trainresults/manifest_uri"])
    fs, _ = resolve(str(tmp_path))
    kept = ResultStore(fs, str(tmp_path / "io" / "train"), filesystem_for=resolve)
    inspected = kept.read_version(str(manifest.parent))
    assert inspected.error == error and inspected.uri == v2_runs["failure"]
    # ... but not the asset's value: Dagster still shows the earlier materialisation.
    assert materialize([train_asset(v2_runs), *consumers(seen)[:1]], io, selection=["as_result"],
                       run=None).success
    assert seen["result"].uri == v2_runs["success"]


def test_on_error_materialize_records_the_error(v2_runs, tmp_path):
    io = trd.RayTrainResultIOManager(base_path=str(tmp_path / "io"), on_error="materialize")
    seen: dict[str, Any] = {}
    res = materialize([train_asset(v2_runs), *consumers(seen)[:1]], io, run="failure")
    assert res.success
    md = output_metadata(res)
    error = trd.TrainResult.from_path(v2_runs["failure"]).error
    assert md["status"] == "failed"
    assert error.error_type in md["error"] and "rank 1" in md["error"]
    assert md["trainresults/error_type"] == error.error_type
    assert md["trainresults/worker_failures"] == {str(k): v for k, v in
                                                  error.worker_failures.items()}
    loaded = seen["result"]
    assert loaded.error == error and loaded.status == "failed"
    assert loaded.error.worker_failures == error.worker_failures


# ------------------------------------------------------------------------------ partitions


def test_static_partitions(v2_runs, tmp_path):
    parts = dg.StaticPartitionsDefinition(["success", "nan_losses", "custom_names"])
    train = train_asset(v2_runs, partitions_def=parts)
    seen: dict[str, Any] = {}

    @dg.asset
    def everything(train: dict[str, trd.TrainResult]) -> None:
        seen["all"] = train

    @dg.asset
    def frames(train: dict[str, pd.DataFrame]) -> None:
        seen["frames"] = train

    @dg.asset(partitions_def=parts)
    def per_partition(context: dg.AssetExecutionContext, train: trd.TrainResult) -> None:
        seen[context.partition_key] = train

    io = trd.RayTrainResultIOManager(base_path=str(tmp_path / "io"))
    for key in ("success", "custom_names"):
        assert materialize([train], io, run="<partition>", partition_key=key).success
        assert materialize([train, per_partition], io, run=None, partition_key=key,
                           selection=["per_partition"]).success
        assert seen[key].uri == v2_runs[key]

    @dg.asset(ins={"train": dg.AssetIn(metadata={"allow_missing_partitions": True})})
    def tolerant(train: dict[str, trd.TrainResult]) -> None:
        seen["tolerant"] = train

    with pytest.raises(FileNotFoundError, match="nan_losses"):
        materialize([train, everything], io, run=None, selection=["everything"])
    assert materialize([train, tolerant], io, run=None, selection=["tolerant"]).success
    assert sorted(seen["tolerant"]) == ["custom_names", "success"]

    assert materialize([train], io, run="<partition>", partition_key="nan_losses").success
    assert materialize([train, everything, frames], io, run=None,
                       selection=["everything", "frames"]).success
    assert sorted(seen["all"]) == sorted(parts.get_partition_keys())
    for key, loaded in seen["all"].items():
        assert loaded.uri == v2_runs[key]
        assert same(loaded.metrics, trd.TrainResult.from_path(v2_runs[key]).metrics)
    assert len(seen["frames"]["custom_names"]) == len(
        trd.TrainResult.from_path(v2_runs["custom_names"]).history)


def test_time_window_partitions(v2_runs, tmp_path):
    hourly = dg.HourlyPartitionsDefinition(start_date="2026-01-01-00:00",
                                           end_date="2026-01-01-02:00")
    keys = hourly.get_partition_keys()
    assert len(keys) == 2 and ":" in keys[0]
    by_key = dict(zip(keys, ["success", "nan_losses"], strict=True))
    runs = {k: v2_runs[v] for k, v in by_key.items()}
    train = train_asset(runs, partitions_def=hourly)
    seen: dict[str, Any] = {}

    @dg.asset
    def window(train: dict[str, trd.TrainResult]) -> None:
        seen["window"] = train

    io = trd.RayTrainResultIOManager(base_path=str(tmp_path / "io"))
    for key in keys:
        assert materialize([train], io, run="<partition>", partition_key=key).success
    assert materialize([train, window], io, run=None, selection=["window"]).success
    assert {k: r.uri for k, r in seen["window"].items()} == runs
    stored = sorted(p.name for p in (tmp_path / "io" / "train").iterdir())
    # No ':' in folder names; a partition folder starts with '@' (never an asset key part).
    assert stored == sorted("@" + k.replace(":", "%3A") for k in keys)


# ------------------------------------------------------------------------------ S3


def _requests(lines: list[str]) -> list[tuple[str, str]]:
    out = []
    for line in lines:
        m = re.search(r'"(?:\x1b\[[0-9;]*m)*([A-Z]+) (\S+) HTTP', line)
        if m:
            out.append((m.group(1), m.group(2)))
    return out


@pytest.mark.parametrize("source", ["s3", "local"])
def test_s3_base_path_over_http(moto, s3_runs, v2_runs, tmp_path, monkeypatch, source):
    from dagster_aws.s3 import S3Resource

    monkeypatch.setenv("TRD_TEST_S3_SECRET", moto.secret_key)
    s3 = S3Resource(endpoint_url=moto.endpoint_url, region_name=moto.region,
                    aws_access_key_id=moto.access_key,
                    aws_secret_access_key=dg.EnvVar("TRD_TEST_S3_SECRET"))
    bucket = moto.new_bucket("io")
    runs = s3_runs if source == "s3" else v2_runs
    run = runs["success"]
    run_fs = moto.filesystem() if source == "s3" else None
    original = trd.TrainResult.from_path(run, run_fs)
    instance_dir = tmp_path / "dagster"
    instance_dir.mkdir()
    seen: dict[str, Any] = {}
    with dg.instance_for_test(temp_dir=str(instance_dir)) as instance:
        for mode in ("reference", "copy"):
            io = trd.RayTrainResultIOManager(base_path=f"s3://{bucket}/{mode}", s3=s3,
                                             checkpoints=mode)
            before = len(moto.request_log())
            res = materialize([train_asset(runs, filesystem=run_fs)], io, instance=instance)
            assert res.success
            writes = _requests(moto.request_log()[before:])
            if mode == "copy" and source == "s3":
                # Server-side copies: no checkpoint byte was downloaded by us.
                assert not [p for m, p in writes
                            if m == "GET" and "?" not in p and re.search(r"/checkpoint_[^/]+/", p)]
                assert any(m == "PUT" and "/checkpoints/" in p for m, p in writes)

            before = len(moto.request_log())
            assert materialize([train_asset(runs), *consumers(seen)[:1]], io, run=None,
                               instance=instance, selection=["as_result"]).success
            reads = _requests(moto.request_log()[before:])
            # Two small objects (pointer, manifest), nothing from the run, no Parquet.
            assert {p.split("?")[0].rsplit("/", 1)[-1] for _, p in reads} == {
                "CURRENT.json", "manifest.json"}, reads
            loaded = seen["result"]
            assert same(loaded.metrics, original.metrics)
            assert loaded.uri == original.uri
            pd.testing.assert_frame_equal(loaded.metrics_dataframe, original.metrics_dataframe)
            for ckpt in loaded.checkpoints:
                assert ckpt.uri.startswith(f"s3://{bucket}/copy/") is (mode == "copy")
                with ckpt.as_directory() as d:
                    assert Path(d, "model.txt").is_file()

        # The secret is nowhere: stored objects, event metadata, the instance's files.
        client = moto.client()
        secret = moto.secret_key.encode()
        for b in [bk["Name"] for bk in client.list_buckets()["Buckets"]]:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=b):
                for obj in page.get("Contents", []):
                    body = client.get_object(Bucket=b, Key=obj["Key"])["Body"].read()
                    assert secret not in body, f"s3://{b}/{obj['Key']}"
        records = instance.fetch_materializations(dg.AssetKey("train"), limit=100).records
        assert len(records) == 2
        for record in records:
            assert moto.secret_key not in repr(record.asset_materialization.metadata)
    for path in instance_dir.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path


def test_multi_partitions_and_op_outputs(v2_runs, tmp_path):
    multi = dg.MultiPartitionsDefinition({
        "run": dg.StaticPartitionsDefinition(["success", "custom_names"]),
        "day": dg.DailyPartitionsDefinition(start_date="2026-01-01", end_date="2026-01-02"),
    })
    seen: dict[str, Any] = {}

    @dg.asset(name="train", partitions_def=multi)
    def train(context: dg.AssetExecutionContext) -> trd.TrainResult:
        return trd.TrainResult.from_path(v2_runs[context.partition_key.keys_by_dimension["run"]])

    @dg.asset(partitions_def=multi)
    def reader(context: dg.AssetExecutionContext, train: trd.TrainResult) -> None:
        seen[context.partition_key] = train

    io = trd.RayTrainResultIOManager(base_path=str(tmp_path / "io"))
    key = dg.MultiPartitionKey({"run": "custom_names", "day": "2026-01-01"})
    assert dg.materialize([train, reader], partition_key=key,
                          resources={"io_manager": io}).success
    assert seen[key].uri == v2_runs["custom_names"]
    # One '@dimension=value' folder per dimension, sorted by dimension.
    assert (tmp_path / "io" / "train" / "@day=2026-01-01" / "@run=custom_names"
            / "CURRENT.json").is_file()

    @dg.op
    def fit_op() -> trd.TrainResult:
        return trd.TrainResult.from_path(v2_runs["success"])

    @dg.op
    def use_op(result: trd.TrainResult) -> None:
        seen["op"] = result

    @dg.job(resource_defs={"io_manager": io})
    def job():
        use_op(fit_op())

    assert job.execute_in_process().success
    assert seen["op"].uri == v2_runs["success"]


def test_exported_from_the_package():
    assert "RayTrainResultIOManager" in trd.__all__
    from trainresults_dagster.dagster.io_manager import RayTrainResultIOManager

    assert trd.RayTrainResultIOManager is RayTrainResultIOManager
