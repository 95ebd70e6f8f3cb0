"""Batch inference: local and Ray Data engines, local disk and S3 (moto over HTTP), the
commit protocol (no partial output ever looks complete), bad inputs and bad predictors,
and the Dagster asset with lineage, read downstream."""

from __future__ import annotations

import logging
import os
import time

import dagster as dg
import inference_predictors as preds
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import SECRET_KEY
from handoff_helpers import make_registry

import trainresults_dagster as trd
from trainresults_dagster.dagster.json_io_manager import JSON_IO_MANAGER_KEY, JsonIOManager
from trainresults_dagster.handoff.output import SUCCESS_FILE, OutputInUseError
from trainresults_dagster.registry import Registry
from trainresults_dagster.registry.model_version import ModelVersion

ROWS = 10_000
BATCH = 1024


@pytest.fixture(scope="module")
def registry(v2_runs, tmp_path_factory) -> Registry:
    return make_registry(v2_runs["failure"], str(tmp_path_factory.mktemp("registry")))


@pytest.fixture(scope="module")
def input_dir(tmp_path_factory) -> str:
    """3 Parquet files, ids 0..ROWS-1, row groups of 700 rows (not a multiple of BATCH)."""
    root = tmp_path_factory.mktemp("input") / "features"
    root.mkdir()
    ids = np.arange(ROWS)
    rng = np.random.default_rng(7)
    for i, chunk in enumerate(np.array_split(ids, 3)):
        table = pa.table({"id": chunk, "x": rng.random(len(chunk))})
        pq.write_table(table, root / f"part-{i}.parquet", row_group_size=700)
    return str(root)


def expected(input_dir: str, epoch: int) -> pd.DataFrame:
    df = pd.read_parquet(input_dir).sort_values("id").reset_index(drop=True)
    return pd.DataFrame({"id": df["id"], "y": df["x"] * (epoch + 1)})


def siblings(path: str) -> list[str]:
    parent, name = os.path.split(path)
    return sorted(n for n in os.listdir(parent) if n.startswith(f".{name}."))


def test_local_engine_streams_exact_batches_and_commits(registry, input_dir, tmp_path, caplog):
    champion = registry.get("m")
    out = str(tmp_path / "predictions")
    with caplog.at_level(logging.INFO, logger="trainresults_dagster.handoff.inference"):
        summary = trd.run_batch_inference(
            champion, preds.EpochPredictor, input_dir, out, batch_size=BATCH,
            progress_interval_seconds=0.0,
        )
    assert summary.rows == summary["rows"] == ROWS
    assert summary.output_uri == out
    assert summary.checkpoint_uri == champion.checkpoint.uri
    assert (summary.model, summary.model_version) == ("m", 2)
    assert summary.seconds > 0 and summary.rows_per_second > 0
    assert summary.lineage == champion.lineage and summary.lineage["source_checkpoint_uri"]

    got = pd.read_parquet(out).sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got[["id", "y"]], expected(input_dir, epoch=1))
    # Same batch sizes as Ray Data: full batches, one short last batch.
    sizes = got.groupby("batch_rows").size().to_dict()
    assert sizes == {BATCH: ROWS - ROWS % BATCH, ROWS % BATCH: ROWS % BATCH}

    assert os.path.isfile(os.path.join(out, SUCCESS_FILE))
    assert siblings(out) == []
    manifest = trd.open_inference_output(summary)
    assert manifest.count_rows() == ROWS

    progress = [r.getMessage() for r in caplog.records if "rows/s" in r.getMessage()]
    assert any(f"{ROWS}/{ROWS} rows" in m for m in progress), progress


def test_rerun_replaces_output_and_failed_rerun_keeps_previous(registry, input_dir, tmp_path):
    out = str(tmp_path / "predictions")
    v1 = registry.get_version("m", 1)
    v2 = registry.get("m")
    trd.run_batch_inference(v2, preds.EpochPredictor, input_dir, out, batch_size=BATCH)
    again = trd.run_batch_inference(v1, preds.EpochPredictor, input_dir, out, batch_size=BATCH)
    assert again.model_version == 1
    got = pd.read_parquet(out).sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got[["id", "y"]], expected(input_dir, epoch=0))
    assert siblings(out) == []

    with pytest.raises(trd.PredictorError) as err:
        trd.run_batch_inference(
            registry.get("m"), preds.DropsRowOnThirdBatch, input_dir, out, batch_size=BATCH
        )
    text = str(err.value)
    assert "batch 2 (input rows 2048-3071" in text and f"{BATCH} rows" in text, text
    # The committed output from before is untouched, and no staging debris is left.
    assert trd.open_inference_output(out).count_rows() == ROWS
    assert set(pd.read_parquet(out)["epoch"]) == {0}
    assert siblings(out) == []


@pytest.mark.parametrize(
    ("predictor", "error", "words"),
    [
        (preds.RaisesOnId, trd.PredictorError, ["batch 2 ", "ValueError", "range for id 2500"]),
        (preds.ReturnsDict, trd.PredictorError, ["batch 0 ", "pandas.DataFrame", "got dict"]),
        (preds.FailsToLoad, trd.PredictorError, ["failed to load checkpoint", "weights.bin"]),
    ],
)
def test_bad_predictor_names_the_batch_and_writes_nothing(
    registry, input_dir, tmp_path, predictor, error, words
):
    out = str(tmp_path / "predictions")
    with pytest.raises(error) as err:
        trd.run_batch_inference(registry.get("m"), predictor, input_dir, out, batch_size=BATCH)
    for word in words:
        assert word in str(err.value), str(err.value)
    assert not os.path.exists(out)
    assert siblings(out) == []


def test_bad_input_is_a_typed_error(registry, tmp_path):
    champion = registry.get("m")
    out = str(tmp_path / "out")
    missing = str(tmp_path / "nope")
    with pytest.raises(trd.InferenceInputError, match="nothing is there") as err:
        trd.run_batch_inference(champion, preds.EpochPredictor, missing, out)
    assert missing in str(err.value)

    empty = tmp_path / "empty.parquet"
    schema = pa.schema([("id", pa.int64()), ("x", pa.float64())])
    pq.write_table(schema.empty_table(), empty)
    with pytest.raises(trd.InferenceInputError, match="hold none"):
        trd.run_batch_inference(champion, preds.EpochPredictor, str(empty), out)

    not_parquet = tmp_path / "data.parquet"
    not_parquet.write_text("id,x\n1,2\n")
    with pytest.raises(trd.InferenceInputError, match="expected Parquet"):
        trd.run_batch_inference(champion, preds.EpochPredictor, str(not_parquet), out)
    assert not os.path.exists(out)

    with pytest.raises(ValueError, match="overlap"):
        trd.run_batch_inference(champion, preds.EpochPredictor, str(tmp_path), out)
    with pytest.raises(TypeError, match="predictor class"):
        instance = preds.EpochPredictor(champion.checkpoint.path)
        trd.run_batch_inference(champion, instance, str(empty), out)


def test_refuses_to_replace_a_folder_it_did_not_write(registry, input_dir, tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(OutputInUseError, match="refusing to replace"):
        trd.run_batch_inference(registry.get("m"), preds.EpochPredictor, input_dir, str(out))
    assert (out / "notes.txt").read_text() == "keep me"
    assert siblings(str(out)) == []


def test_s3_input_and_output_over_moto(registry, input_dir, moto):
    bucket = moto.new_bucket("inference")
    moto.upload_dir(input_dir, bucket, "features")
    fs = moto.filesystem()
    out = f"s3://{bucket}/predictions"
    for version in (1, 2):  # the second run replaces the first on S3 too
        summary = trd.run_batch_inference(
            registry.get_version("m", version), preds.EpochPredictor, f"s3://{bucket}/features",
            out, batch_size=BATCH, filesystem=fs, max_file_bytes=40_000,
        )
    assert summary.output_uri == out and summary.rows == ROWS
    assert len(summary.files) > 1  # rolled by size, so the S3 commit copies several parts

    listing = moto.client().list_objects_v2(Bucket=bucket)["Contents"]
    keys = sorted(o["Key"] for o in listing if not o["Key"].endswith("/"))  # minus dir markers
    assert [k for k in keys if k.startswith("predictions/")] == sorted(
        [f"predictions/{f}" for f in summary.files] + [f"predictions/{SUCCESS_FILE}"]
    )
    assert not [k for k in keys if k.startswith(".predictions.")]  # staging removed
    success = moto.client().get_object(Bucket=bucket, Key=f"predictions/{SUCCESS_FILE}")
    body = success["Body"].read().decode()
    assert SECRET_KEY not in body and '"model_version": 2' in body

    got = trd.open_inference_output(out, fs).to_table().to_pandas()
    got = got.sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got[["id", "y"]], expected(input_dir, epoch=1))


def test_s3_output_without_success_is_not_complete(moto):
    bucket = moto.new_bucket("partial")
    moto.client().put_object(Bucket=bucket, Key="out/part-00000.parquet", Body=b"half")
    with pytest.raises(trd.OutputNotCommittedError, match="never finished"):
        trd.open_inference_output(f"s3://{bucket}/out", moto.filesystem())


def test_ray_engine_matches_local_engine_on_s3(registry, input_dir, moto, ray_session):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(preds)
    bucket = moto.new_bucket("rayinf")
    moto.upload_dir(input_dir, bucket, "features")
    fs = moto.filesystem()
    out = f"s3://{bucket}/predictions"
    summary = trd.run_batch_inference(
        registry.get("m"), preds.EpochPredictor, f"s3://{bucket}/features", out,
        engine="ray", batch_size=BATCH, filesystem=fs, num_cpus_per_actor=0.5,
    )
    assert summary.rows == ROWS and summary.engine == "ray" and summary.model_version == 2
    got = trd.open_inference_output(out, fs).to_table().to_pandas()
    got = got.sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(got[["id", "y"]], expected(input_dir, epoch=1))
    assert "path" not in got.columns  # the file-path column used for errors is dropped
    assert got["batch_rows"].max() <= BATCH
    import ray

    assert ray.is_initialized()  # the session's Ray, not shut down by the engine
    assert _alive_map_workers(within=20.0) == []  # and the actor pool released


def test_ray_engine_names_the_failing_batch(registry, input_dir, tmp_path, ray_session):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(preds)
    out = str(tmp_path / "predictions")
    # Ray Data keeps a failed dataset's actor pool alive while its driver lives (a Dagster step
    # process ends, and the actors with it). Here the driver is the whole test session: with
    # no CPU reserved, that actor cannot starve the Ray Train runs of later tests.
    with pytest.raises(trd.PredictorError) as err:
        trd.run_batch_inference(
            registry.get("m"), preds.RaisesOnId, input_dir, out, engine="ray",
            batch_size=BATCH, num_cpus_per_actor=0,
        )
    text = str(err.value)
    assert "out of range for id 2500" in text and "batch" in text and "part-0.parquet" in text, text
    assert not os.path.exists(out) and siblings(out) == []


def _alive_map_workers(within: float) -> list[str]:
    from ray.util.state import list_actors

    deadline = time.monotonic() + within
    while True:
        alive = [f"{a.class_name} pid {a.pid}"
                 for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10_000)
                 if "MapWorker" in (a.class_name or "")]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.5)


def test_dagster_asset_records_lineage_and_is_read_downstream(registry, input_dir, tmp_path):
    @dg.asset(io_manager_key=JSON_IO_MANAGER_KEY)
    def champion() -> ModelVersion:
        return registry.get("m")

    predictions = trd.build_batch_inference_asset(
        "predictions", model_asset="champion", predictor=preds.EpochPredictor,
        input_uri=input_dir, output_uri=str(tmp_path / "predictions"), batch_size=BATCH,
    )

    @dg.asset(io_manager_key=JSON_IO_MANAGER_KEY)
    def mean_prediction(predictions: dict) -> float:
        return float(trd.open_inference_output(predictions).to_table()["y"].to_pandas().mean())

    resources = {JSON_IO_MANAGER_KEY: JsonIOManager(base_path=str(tmp_path / "values"))}
    instance = dg.DagsterInstance.ephemeral()
    means = []
    for expected_version in (2, 2, 1):  # twice the same champion (idempotent), then rollback
        if expected_version == 1:
            registry.rollback("m", reason="test")
        result = dg.materialize(
            [champion, predictions, mean_prediction], resources=resources, instance=instance
        )
        meta = result.asset_materializations_for_node("predictions")[0].metadata
        assert meta["dagster/row_count"].value == ROWS
        assert meta["trainresults/model_version"].value == expected_version
        assert meta["trainresults/checkpoint_uri"].value == registry.get("m").checkpoint.uri
        assert meta["rows_per_second"].value > 0
        assert meta["trainresults/output_uri"].value == str(tmp_path / "predictions")
        means.append(result.output_for_node("mean_prediction"))
    x_mean = pd.read_parquet(input_dir)["x"].mean()
    assert means[0] == means[1] == pytest.approx(2 * x_mean)
    assert means[2] == pytest.approx(x_mean)
    registry.promote("m", 2)  # leave the champion where the module fixture put it

