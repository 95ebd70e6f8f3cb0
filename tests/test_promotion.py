"""End to end with ``dagster.materialize``: real Ray Train runs -> best checkpoint -> gated
promotion in the registry -> a downstream hand-off asset that must not run on a rejected
candidate. Local and S3 (moto over HTTP)."""


import json
import os
import shutil
from typing import Any

import dagster as dg
import pyarrow.fs as pafs
import pytest
import ray_jobs
from conftest import SECRET_KEY
from pydantic import Field

import trainresults_dagster as trd
from trainresults_dagster import storage
from trainresults_dagster.dagster._wiring import s3_settings


class RunChoice(dg.Config):
    run_uri: str = Field(description="The Ray Train run folder to read")


def _pipeline(
    *, s3: Any = None, partitions: dg.PartitionsDefinition | None = None, **promotion: Any
) -> list[dg.AssetsDefinition]:
    @dg.asset(io_manager_key=trd.JSON_IO_MANAGER_KEY, partitions_def=partitions)
    def trained(config: RunChoice) -> trd.TrainResult:
        fs = s3_settings(s3).filesystem() if s3 is not None else None
        return trd.TrainResult.from_path(config.run_uri, fs)

    best = trd.build_best_checkpoint_asset("best", result_asset=trained, metric="loss", mode="min")
    options = {"model": "clf", "metric": "loss", "mode": "min", **promotion}
    champion = trd.build_promotion_asset("champion", candidate_asset=best, **options)

    @dg.asset(io_manager_key=trd.JSON_IO_MANAGER_KEY, partitions_def=partitions)
    def deployed(champion: trd.ModelVersion) -> dict:
        return {"version": champion.version, "uri": champion.uri}

    return [trained, best, champion, deployed]


def _run(assets, resources, instance, run_uri, **kwargs) -> dg.ExecuteInProcessResult:
    config = {"ops": {"trained": {"config": {"run_uri": run_uri}}}} if run_uri else None
    return dg.materialize(
        assets, resources=resources, instance=instance, raise_on_error=False,
        run_config=config, **kwargs,
    )


def _gate(result) -> Any:
    (evaluation,) = [e for e in result.get_asset_check_evaluations()
                     if e.check_name == "promotion_gate"]
    return evaluation


def _meta(result, node: str) -> dict[str, Any]:
    (mat,) = result.asset_materializations_for_node(node)
    return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}


def _ran(result, node: str) -> bool:
    return bool(result.asset_materializations_for_node(node))


def _local_resources(tmp_path) -> dict[str, Any]:
    return {
        "checkpoint_registry": trd.CheckpointRegistry(base_path=str(tmp_path / "registry")),
        trd.JSON_IO_MANAGER_KEY: trd.JsonIOManager(base_path=str(tmp_path / "values")),
    }


def _best_loss(run_path: str) -> float:
    result = trd.TrainResult.from_path(run_path)
    return trd.select_best_checkpoint(result, "loss", "min")[1]["loss"]


def test_first_champion_then_worse_rejected_then_better_promoted(v2_runs, tmp_path):
    assets = _pipeline()
    resources = _local_resources(tmp_path)
    registry = resources["checkpoint_registry"]
    instance = dg.DagsterInstance.ephemeral()
    first, worse, better = v2_runs["success"], v2_runs["failure"], v2_runs["nan_losses"]
    assert _best_loss(worse) > _best_loss(first) > _best_loss(better)

    # 1. No champion yet: the first candidate becomes champion, downstream runs.
    r1 = _run(assets, resources, instance, first)
    assert r1.success and _gate(r1).passed
    meta = _meta(r1, "champion")
    assert meta["decision"] == "promoted" and meta["candidate/loss"] == _best_loss(first)
    assert registry.get("clf").version == 1
    assert r1.output_for_node("deployed")["version"] == 1
    lineage = registry.get_version("clf", 1).lineage
    assert lineage["dagster_run_id"] == r1.run_id and lineage["asset_key"] == "champion"
    assert lineage["candidate_asset"] == "best"
    assert lineage["run_uri"] == trd.TrainResult.from_path(first).uri
    (event,) = registry.history("clf")
    assert r1.run_id in event.who and event.details["dagster_run_id"] == r1.run_id

    # 2. A worse candidate: registered, rejected by the blocking check, champion untouched,
    #    downstream does not run.
    r2 = _run(assets, resources, instance, worse)
    assert not r2.success
    gate = _gate(r2)
    assert not gate.passed and gate.severity == dg.AssetCheckSeverity.ERROR
    assert "rejected" in gate.metadata["reason"].value
    assert gate.metadata["champion/loss"].value == _best_loss(first)
    assert gate.metadata["candidate/loss"].value == _best_loss(worse)
    assert _meta(r2, "champion")["decision"] == "rejected"
    assert not _ran(r2, "deployed")
    assert registry.get("clf").version == 1
    assert [v.version for v in registry.versions("clf")] == [1, 2]
    assert len(registry.history("clf")) == 1

    # 3. A better candidate is promoted, and the hand-off sees it.
    r3 = _run(assets, resources, instance, better)
    assert r3.success and _gate(r3).passed
    assert registry.get("clf").version == 3
    assert r3.output_for_node("deployed")["version"] == 3
    meta = _meta(r3, "champion")
    assert meta["champion_version_before"] == 1 and meta["champion_version"] == 3
    assert meta["improvement"] == pytest.approx(_best_loss(first) - _best_loss(better))
    rows = meta["comparison"].records
    assert rows[0].data["candidate"] == _best_loss(better) and rows[0].data["ok"] is True

    # 4. Materialising the same candidate again is idempotent.
    r4 = _run(assets, resources, instance, better)
    assert r4.success and _gate(r4).passed
    assert _meta(r4, "champion")["decision"] == "kept"
    assert [v.version for v in registry.versions("clf")] == [1, 2, 3]
    assert [e.version for e in registry.history("clf")] == [1, 3]

    # Nothing was pickled: every stored value is one JSON file.
    stored = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "values") for f in fs]
    assert stored and all(p.endswith(".json") for p in stored)
    with open(tmp_path / "values" / "champion.json") as fh:
        assert json.load(fh)["value"]["version"] == 3


def test_thresholds_gate_the_first_candidate(v2_runs, tmp_path):
    assets = _pipeline(thresholds={"val/acc": (0.95, None), "loss": (None, 1.0)})
    resources = _local_resources(tmp_path)
    result = _run(assets, resources, dg.DagsterInstance.ephemeral(), v2_runs["success"])
    assert not result.success
    gate = _gate(result)
    assert not gate.passed and "val/acc" in gate.metadata["reason"].value
    assert resources["checkpoint_registry"].get("clf") is None  # alias never set
    assert result.output_for_node("champion") is None
    assert not _ran(result, "deployed")


def test_min_improvement(v2_runs, tmp_path):
    resources = _local_resources(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    gain = _best_loss(v2_runs["success"]) - _best_loss(v2_runs["nan_losses"])
    assert _run(_pipeline(), resources, instance, v2_runs["success"]).success

    demanding = _pipeline(min_improvement=gain * 2)
    result = _run(demanding, resources, instance, v2_runs["nan_losses"])
    assert not result.success and not _gate(result).passed
    assert resources["checkpoint_registry"].get("clf").version == 1

    exact = _pipeline(min_improvement=round(gain, 6))  # "at least" tolerates float rounding
    result = _run(exact, resources, instance, v2_runs["nan_losses"])
    assert result.success and _gate(result).passed
    assert resources["checkpoint_registry"].get("clf").version == 2  # reused, then promoted


def test_best_checkpoint_metadata_ranks_every_candidate(v2_runs, tmp_path):
    assets = _pipeline()
    result = _run(assets[:2], _local_resources(tmp_path), dg.DagsterInstance.ephemeral(),
                  v2_runs["nan_losses"])
    assert result.success
    chosen = result.output_for_node("best")
    assert isinstance(chosen, trd.Checkpoint) and chosen.metrics["loss"] == min(
        x for x in ray_jobs.NAN_LOSSES if x == x)
    meta = _meta(result, "best")
    assert meta["checkpoint_uri"] == chosen.uri and meta["value"] == chosen.metrics["loss"]
    rows = [r.data for r in meta["ranking"].records]
    assert len(rows) == len(ray_jobs.NAN_LOSSES)
    assert sum(r["chosen"] for r in rows) == 1
    assert sum(not r["eligible"] for r in rows) == sum(x != x for x in ray_jobs.NAN_LOSSES)


def test_candidate_deleted_before_promotion_fails_the_gate(copy_run, tmp_path):
    run = copy_run("nan_losses")
    assets = _pipeline()
    resources = _local_resources(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    assert _run(assets[:2], resources, instance, run).success
    chosen = trd.TrainResult.from_path(run).get_best_checkpoint("loss", "min")
    shutil.rmtree(chosen.path)  # e.g. Ray's retention or a lifecycle rule

    result = _run(assets, resources, instance, None, selection=[assets[2], assets[3]])
    assert not result.success and not _gate(result).passed
    assert "cannot be registered" in _gate(result).metadata["reason"].value
    assert resources["checkpoint_registry"].versions("clf") == []
    assert not _ran(result, "deployed")


def test_with_the_result_io_manager_after_ray_deleted_the_run(copy_run, tmp_path):
    """RayTrainResultIOManager(checkpoints="copy") keeps the checkpoints; Ray's retention
    deletes the run's folders; promotion still registers, and lineage names the Ray run."""
    run = copy_run("success")

    @dg.asset(io_manager_key="results")
    def trained(config: RunChoice) -> trd.TrainResult:
        return trd.TrainResult.from_path(config.run_uri)

    best = trd.build_best_checkpoint_asset("best", result_asset=trained, metric="val/acc",
                                           mode="max")
    champion = trd.build_promotion_asset("champion", model="clf", candidate_asset=best,
                                         metric="val/acc", mode="max")
    resources = {**_local_resources(tmp_path),
                 "results": trd.RayTrainResultIOManager(base_path=str(tmp_path / "results"),
                                                        checkpoints="copy")}
    instance = dg.DagsterInstance.ephemeral()
    assert _run([trained], resources, instance, run).success
    for name in os.listdir(run):
        if name.startswith("checkpoint_") and os.path.isdir(os.path.join(run, name)):
            shutil.rmtree(os.path.join(run, name))

    result = _run([trained, best, champion], resources, instance, None,
                  selection=[best, champion])
    assert result.success and _gate(result).passed
    version = resources["checkpoint_registry"].get("clf")
    assert version.lineage["run_uri"] == run
    assert version.checkpoint.exists() and version.checkpoint.get_metadata()["epoch"] == 3


def test_partitioned_pipeline_records_partition(v2_runs, tmp_path):
    parts = dg.StaticPartitionsDefinition(["a", "b"])
    assets = _pipeline(partitions=parts)
    assert assets[1].partitions_def == parts and assets[2].partitions_def == parts
    resources = _local_resources(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    result = _run(assets, resources, instance, v2_runs["success"], partition_key="a")
    assert result.success
    version = resources["checkpoint_registry"].get("clf")
    assert version.lineage["partition_key"] == "a"
    assert os.path.isfile(tmp_path / "values" / "champion" / "@a.json")


def test_s3_end_to_end_registry_and_values_on_s3_leak_no_secret(s3_runs, moto):
    bucket = moto.new_bucket("e2e")
    s3 = moto.s3_resource()
    resources = {
        "checkpoint_registry": trd.CheckpointRegistry(base_path=f"s3://{bucket}/registry", s3=s3),
        trd.JSON_IO_MANAGER_KEY: trd.JsonIOManager(base_path=f"s3://{bucket}/values", s3=s3),
    }
    instance = dg.DagsterInstance.ephemeral()
    assets = _pipeline(s3=s3)
    result = _run(assets, resources, instance, s3_runs["success"])
    assert result.success and _gate(result).passed
    champion = resources["checkpoint_registry"].get("clf")
    assert champion.uri.startswith(f"s3://{bucket}/registry/clf/data/")
    assert champion.lineage["source_checkpoint_uri"].startswith("s3://runs/")
    assert result.output_for_node("deployed")["uri"] == champion.uri
    with champion.checkpoint.as_directory() as local:
        assert os.path.isfile(os.path.join(local, "model.txt"))

    fs = moto.filesystem()
    stored = b"".join(storage.read_bytes(fs, i.path)
                      for i in storage.list_dir(fs, bucket, recursive=True)
                      if i.type == pafs.FileType.File)
    assert SECRET_KEY.encode() not in stored
    events = instance.all_logs(result.run_id)
    assert SECRET_KEY not in "".join(str(e) for e in events)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "best"}, "mode must be 'min' or 'max'"),
        ({"model": "../m"}, "model name must be"),
        ({"alias": "a/b"}, "alias must be"),
        ({"thresholds": {"loss": (1.0, 0.5)}}, "low > high"),
        ({"thresholds": {"loss": 0.5}}, r"\(low, high\) pair"),
        ({"thresholds": {"loss": (float("nan"), None)}}, "finite numbers or None"),
        ({"min_improvement": -0.1}, "min_improvement must be"),
        ({"metric": ""}, "metric must be"),
        ({"candidate_asset": 42}, "candidate_asset must be"),
    ],
)
def test_factory_rejects_bad_arguments_at_definition_time(kwargs, match):
    options = {"model": "m", "candidate_asset": "best", "metric": "loss", "mode": "min", **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        trd.build_promotion_asset("champion", **options)


def test_best_factory_rejects_bad_arguments():
    with pytest.raises(ValueError, match="ties must be"):
        trd.build_best_checkpoint_asset("b", result_asset="t", metric="loss", mode="min",
                                        ties="first")
    with pytest.raises(ValueError, match="mode must be"):
        trd.build_best_checkpoint_asset("b", result_asset="t", metric="loss", mode="up")


def test_definitions_load_with_the_json_io_manager(tmp_path):
    defs = dg.Definitions(assets=_pipeline(), resources=_local_resources(tmp_path))
    dg.Definitions.validate_loadable(defs)
    spec = defs.resolve_assets_def("champion")
    assert spec.check_specs_by_output_name  # the blocking gate is declared
    assert all(c.blocking for c in spec.check_specs)
