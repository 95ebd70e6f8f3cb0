"""JsonIOManager: ModelVersion / Checkpoint / TrainResult values as JSON, never pickles."""

import json
import os

import dagster as dg
import pytest

import trainresults_dagster as trd


def _registered(tmp_path) -> trd.ModelVersion:
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "w.bin").write_bytes(b"weights")
    registry = trd.CheckpointRegistry(base_path=str(tmp_path / "registry"))
    version = registry.register("clf", str(src), metrics={"loss": 0.5})
    registry.promote("clf", version.version, expected_version=None)
    return version


def test_values_round_trip_and_annotations_choose_the_shape(tmp_path):
    version = _registered(tmp_path)

    @dg.asset(io_manager_key=trd.JSON_IO_MANAGER_KEY)
    def model() -> trd.ModelVersion:
        return version

    @dg.asset(io_manager_key=trd.JSON_IO_MANAGER_KEY)
    def as_version(model: trd.ModelVersion) -> dict:
        return {"version": model.version, "uri": model.uri, "metrics": model.metrics}

    @dg.asset(io_manager_key=trd.JSON_IO_MANAGER_KEY)
    def as_checkpoint(model: trd.Checkpoint) -> dict:
        with model.as_directory() as d:
            return {"uri": model.uri, "files": sorted(os.listdir(d)), "metrics": model.metrics}

    resources = {trd.JSON_IO_MANAGER_KEY: trd.JsonIOManager(base_path=str(tmp_path / "io"))}
    result = dg.materialize([model, as_version, as_checkpoint], resources=resources)
    assert result.success
    assert result.output_for_node("as_version") == {
        "version": 1, "uri": version.uri, "metrics": {"loss": 0.5}}
    assert result.output_for_node("as_checkpoint") == {
        "uri": version.uri, "files": ["w.bin"], "metrics": {"loss": 0.5}}
    with open(tmp_path / "io" / "model.json") as fh:
        stored = json.load(fh)
    assert stored["kind"] == "ModelVersion" and stored["value"]["uri"] == version.uri
    (mat,) = result.asset_materializations_for_node("model")
    assert mat.metadata["dagster/uri"].value == str(tmp_path / "io" / "model.json")


def test_default_location_is_the_instance_storage(tmp_path):
    @dg.asset(io_manager_key=trd.JSON_IO_MANAGER_KEY)
    def plain() -> dict:
        return {"a": [1, 2.5, None, "x"]}

    @dg.asset(io_manager_key=trd.JSON_IO_MANAGER_KEY)
    def reader(plain: dict) -> int:
        return len(plain["a"])

    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        result = dg.materialize([plain, reader], instance=instance,
                                resources={trd.JSON_IO_MANAGER_KEY: trd.JsonIOManager()})
        assert result.success and result.output_for_node("reader") == 4
        path = os.path.join(instance.storage_directory(), "trainresults_json", "plain.json")
        assert os.path.isfile(path)


def test_refuses_values_it_cannot_store_as_json(tmp_path):
    @dg.asset(io_manager_key=trd.JSON_IO_MANAGER_KEY)
    def opaque() -> object:
        return object()

    resources = {trd.JSON_IO_MANAGER_KEY: trd.JsonIOManager(base_path=str(tmp_path / "io"))}
    with pytest.raises(TypeError, match="another io_manager_key"):
        dg.materialize([opaque], resources=resources)
    assert not os.path.exists(tmp_path / "io" / "opaque.json")


def test_foreign_json_is_a_typed_error(tmp_path):
    from trainresults_dagster.dagster.json_io_manager import decode

    with pytest.raises(trd.CorruptValueError, match="trainresults.json_value/1"):
        decode({"pickle": "no"}, where="x.json")
    with pytest.raises(trd.CorruptValueError, match="got 'Exploit'"):
        decode({"schema": "trainresults.json_value/1", "kind": "Exploit",
                "value": {"uri": "/x"}}, where="x.json")
