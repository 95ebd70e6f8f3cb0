"""Google Cloud Storage and Azure Blob end to end, against real emulators over HTTP.

gcp-storage-emulator stands in for GCS and Azurite for Azure (``tests/cloud_emulators``).
A real Ray Train run writes straight to each (its pyarrow filesystem as
``storage_filesystem``) and reads back as Ray reads it; the IO manager (reference and copy
mode), the JSON IO manager, batch inference and the CLI run on each; bad locations fail
with an error that names what was expected, what arrived and where; no credential is
written anywhere.
"""

# No "from __future__ import annotations": Dagster reads the real annotations of the assets.
import json
import os
import subprocess
import sys
import traceback
import urllib.parse
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from test_result import assert_agrees_with_ray

import trainresults_dagster as trd
from trainresults_dagster import storage

CLI = str(Path(sys.executable).with_name("trainresults"))
#: Never to be written: GCS gets it as its access token (the emulator accepts any token).
SENTINEL_TOKEN = "gcs-sEcReT-sentinel-41c7a2"


class Cloud:
    """One store under test: its emulator, a fresh container, its resource and scheme."""

    def __init__(self, name: str, emulator: Any, runs: dict[str, str]) -> None:
        self.name, self.emulator, self.runs = name, emulator, runs
        self.scheme = "gs" if name == "gcs" else "abfs"
        self.container = (emulator.new_bucket("t") if name == "gcs"
                          else emulator.new_container("t"))
        self.filesystem = emulator.filesystem()

    def resource(self) -> Any:
        if self.name == "gcs":
            return trd.GcsResource(endpoint_url=self.emulator.endpoint_url, anonymous=False,
                                   project_id=self.emulator.project, access_token=SENTINEL_TOKEN)
        return self.emulator.resource()

    def io_kwargs(self) -> dict[str, Any]:
        return {self.name: self.resource()}

    def secrets(self) -> list[str]:
        return [SENTINEL_TOKEN] if self.name == "gcs" else [self.emulator.key]

    def uri(self, key: str) -> str:
        return f"{self.scheme}://{self.container}/{key}"

    def all_objects(self) -> dict[str, bytes]:
        root = self.container
        return {i.path: storage.read_bytes(self.filesystem, i.path)
                for i in storage.list_dir(self.filesystem, root, recursive=True)
                if i.type == pafs.FileType.File}


@pytest.fixture(params=["gcs", "azure"])
def cloud(request: pytest.FixtureRequest) -> Cloud:
    if request.param == "gcs":
        return Cloud("gcs", request.getfixturevalue("gcs_emulator"),
                     request.getfixturevalue("gcs_runs"))
    return Cloud("azure", request.getfixturevalue("azurite"), request.getfixturevalue("azure_runs"))


# ------------------------------------------------------------------------------ Ray writes


@pytest.mark.ray_live  # the direct runs are written by this session's Ray
@pytest.mark.parametrize("which", ["gcs", "azure"])
def test_a_ray_run_written_straight_to_the_store_reads_like_ray(request, which):
    import ray.train

    direct = request.getfixturevalue(f"{which}_direct_run")
    ours = trd.TrainResult.from_path(direct.uri, direct.filesystem)
    # Ray takes a scheme-less path with an explicit filesystem (pyarrow refuses a gs:// or
    # abfs:// URI there); ours takes either.
    theirs = ray.train.Result.from_path(ours.path, direct.filesystem)
    assert_agrees_with_ray(ours, theirs)
    assert ours.uri == direct.uri
    assert len(ours.best_checkpoints) == 2  # num_to_keep=2 of 4
    assert ours.error is None and direct.fitted.error is None
    pd.testing.assert_series_equal(ours.metrics_dataframe["loss"],
                                   direct.fitted.metrics_dataframe["loss"])
    # The run folder lists its checkpoint folders (on GCS they are implicit prefixes).
    names = {i.base_name for i in storage.list_dir(direct.filesystem, ours.path)
             if i.type == pafs.FileType.Directory}
    assert {os.path.basename(c.path) for c, _ in ours.best_checkpoints} <= names
    with ours.checkpoint.as_directory() as folder:
        assert Path(folder, "model.txt").is_file()


# ------------------------------------------------------------------------------ IO managers


class DoublingPredictor:
    """Ray Data's callable-class shape: ``y = x * factor``, the factor read from the checkpoint."""

    def __init__(self, checkpoint_dir: str) -> None:
        self.factor = int(Path(checkpoint_dir, "model.txt").read_text())

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({"x": batch["x"], "y": batch["x"] * self.factor})


class RunChoice(dg.Config):
    run: str


def _train(cloud: Cloud):
    @dg.asset(name="train")
    def train(config: RunChoice) -> trd.TrainResult:
        return trd.TrainResult.from_path(cloud.runs[config.run], cloud.filesystem)

    return train


def test_io_manager_reference_and_copy_on_the_store(cloud, tmp_path):
    seen: dict[str, Any] = {}

    @dg.asset
    def as_result(train: trd.TrainResult) -> None:
        seen["result"] = train

    @dg.asset
    def as_checkpoint(train: trd.Checkpoint) -> None:
        seen["checkpoint"] = train

    original = trd.TrainResult.from_path(cloud.runs["success"], cloud.filesystem)
    instance_dir = tmp_path / "dagster"
    instance_dir.mkdir()
    with dg.instance_for_test(temp_dir=str(instance_dir)) as instance:
        for mode in ("reference", "copy"):
            io = trd.RayTrainResultIOManager(base_path=cloud.uri(mode), checkpoints=mode,
                                             **cloud.io_kwargs())
            for _ in range(2):  # materialising twice is idempotent
                res = dg.materialize([_train(cloud), as_result, as_checkpoint],
                                     resources={"io_manager": io}, instance=instance,
                                     run_config=dg.RunConfig(ops={"train": RunChoice(run="success")}))
                assert res.success
            loaded = seen["result"]
            assert loaded.metrics == original.metrics
            assert loaded.uri == original.uri
            pd.testing.assert_frame_equal(loaded.metrics_dataframe, original.metrics_dataframe)
            assert [c.metrics for c, _ in loaded.best_checkpoints] == [
                c.metrics for c, _ in original.best_checkpoints]
            for ckpt in loaded.checkpoints:
                assert ckpt.uri.startswith(cloud.uri("copy/")) is (mode == "copy")
                with ckpt.as_directory() as folder:
                    assert Path(folder, "model.txt").is_file()
            assert seen["checkpoint"].uri.startswith(f"{cloud.scheme}://")
        # Credentials are nowhere: stored objects, metadata, the instance's files.
        stored = b"".join(cloud.all_objects().values())
        for secret in cloud.secrets():
            assert secret.encode() not in stored
            for record in instance.fetch_materializations(dg.AssetKey("train"), limit=10).records:
                assert secret not in repr(record.asset_materialization.metadata)
    for path in instance_dir.rglob("*"):
        if path.is_file():
            for secret in cloud.secrets():
                assert secret.encode() not in path.read_bytes(), path


def test_json_io_manager_and_batch_inference_on_the_store(cloud, tmp_path):
    storage.write_bytes_atomic(cloud.filesystem, f"{cloud.container}/ckpt/model.txt", b"2")
    table = pa.table({"x": list(range(10))})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    storage.write_bytes_atomic(cloud.filesystem, f"{cloud.container}/in/part-0.parquet",
                               sink.getvalue().to_pybytes())

    @dg.asset(io_manager_key=trd.JSON_IO_MANAGER_KEY)
    def model() -> trd.Checkpoint:
        return trd.Checkpoint.from_uri(cloud.uri("ckpt"), cloud.filesystem)

    key = {"gcs": "gcs_key", "azure": "azure_key"}[cloud.name]
    infer = trd.build_batch_inference_asset(
        "predictions", model_asset=model, predictor=DoublingPredictor,
        input_uri=cloud.uri("in"), output_uri=cloud.uri("out"), batch_size=4,
        **{key: "store"},
    )
    resources = {
        trd.JSON_IO_MANAGER_KEY: trd.JsonIOManager(base_path=cloud.uri("json"),
                                                   **cloud.io_kwargs()),
        "store": cloud.resource(),
    }
    res = dg.materialize([model, infer], resources=resources)
    assert res.success
    summary = res.output_for_node("predictions")
    assert summary["rows"] == 10 and summary["output_uri"].startswith(cloud.uri("out"))
    stored = storage.read_json(cloud.filesystem, f"{cloud.container}/json/model.json")
    assert stored["value"]["uri"] == cloud.uri("ckpt")
    outputs = [i for i in storage.list_dir(cloud.filesystem, f"{cloud.container}/out",
                                           recursive=True)
               if i.type == pafs.FileType.File and i.path.endswith(".parquet")]
    assert sum(pq.read_table(cloud.filesystem.open_input_file(i.path)).num_rows
               for i in outputs) == 10
    for secret in cloud.secrets():
        assert secret.encode() not in b"".join(cloud.all_objects().values())


# ------------------------------------------------------------------------------ CLI


def test_cli_inspects_runs_on_the_store_from_the_standard_variables(cloud):
    env = {**os.environ, **cloud.emulator.env()}
    uri = cloud.runs["success"]
    spellings = [uri, uri.replace("gs://", "gcs://", 1) if cloud.name == "gcs"
                 else uri.replace("abfs://", "az://", 1)]
    for spelled in spellings:
        out = subprocess.run([CLI, "inspect", spelled, "--json"], env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        data = json.loads(out.stdout)
        assert data["uri"] == uri
    missing = subprocess.run([CLI, "inspect", cloud.uri("nothing-here")], env=env,
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 3
    assert cloud.uri("nothing-here") in missing.stderr and len(missing.stderr.splitlines()) == 1


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("ftp://host/run", "scheme 'ftp'"),
        ("abfs://runs@/x", r"expected abfs://CONTAINER@ACCOUNT\.dfs\.core\.windows\.net/path"),
        ("abfs://@acct.dfs.core.windows.net/x", "'abfs://@acct.dfs.core.windows.net/x'"),
        ("gs://", "names no bucket"),
        ("az:///run", "names no container"),
    ],
)
def test_bad_locations_say_what_was_expected_what_arrived_and_where(location, expected):
    with pytest.raises(ValueError, match=expected):
        trd.RayTrainResultIOManager(base_path=location)
    if not location.startswith("ftp"):
        with pytest.raises(ValueError, match=expected):
            trd.TrainResult.from_path(location)


def test_an_account_form_uri_for_another_account_is_refused(azurite):
    uri = "abfs://runs@otheraccount.dfs.core.windows.net/run"
    with pytest.raises(ValueError, match="'otheraccount'.*'devstoreaccount1'") as info:
        storage.filesystem_for(uri, azure=azurite.settings())
    assert uri in str(info.value) and azurite.key not in str(info.value)


def test_an_account_form_uri_reaches_its_account(azurite, azure_runs, monkeypatch):
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    short = azure_runs["success"]
    container, _, key = short[len("abfs://"):].partition("/")
    full = f"abfs://{container}@{azurite.account}.dfs.core.windows.net/{key}"
    fs, path = storage.filesystem_for(full, azure=azurite.settings())
    assert path == f"{container}/{key}"
    assert trd.TrainResult.from_path(full, fs).uri == short


def test_gcs_listing_shows_implicit_folders(gcs_emulator):
    """pyarrow's GcsFileSystem lists no prefix-only folders (apache/arrow#35993); ours does."""
    bucket = gcs_emulator.new_bucket("ls")
    fs = gcs_emulator.filesystem()
    for rel in ("run/a/x.json", "run/b/c/y.json", "run/top.json"):
        storage.write_bytes_atomic(fs, f"{bucket}/{rel}", b"{}")
    # pyarrow alone lists only run/top.json here (apache/arrow#35993).
    assert {i.base_name for i in fs.get_file_info(pafs.FileSelector(f"{bucket}/run"))} <= {
        "top.json"}
    listed = {(i.base_name, i.type) for i in storage.list_dir(fs, f"{bucket}/run")}
    assert listed == {("a", pafs.FileType.Directory), ("b", pafs.FileType.Directory),
                      ("top.json", pafs.FileType.File)}
    deep = {i.path[len(bucket) + 5:] for i in storage.list_dir(fs, f"{bucket}/run", recursive=True)
            if i.type == pafs.FileType.Directory}
    assert deep == {"a", "b", "b/c"}
    assert storage.list_dir(fs, f"{bucket}/missing") == []


def test_settings_never_show_their_secrets():
    gcs = trd.GcsSettings(endpoint_url="http://127.0.0.1:1", access_token=SENTINEL_TOKEN)
    azure = trd.AzureSettings(account_name="acct", account_key="S3CRET-KEY",
                              connection_string="AccountKey=S3CRET-KEY")
    assert SENTINEL_TOKEN not in repr(gcs) and "S3CRET" not in repr(azure)


def test_errors_and_logs_never_carry_the_credentials(gcs_emulator, azurite, caplog):
    """The sentinel token (GCS) and the account key (Azure) are in no error and no log record,
    on the paths that fail: a refused registry, a missing run, a wrong account."""
    import logging

    caplog.set_level(logging.DEBUG)
    bucket = gcs_emulator.new_bucket("err")
    gcs = trd.GcsResource(endpoint_url=gcs_emulator.endpoint_url, project_id=gcs_emulator.project,
                          access_token=SENTINEL_TOKEN)
    fs = gcs.settings().filesystem()
    storage.write_bytes_atomic(fs, f"{bucket}/src/w.bin", b"w")
    errors: list[BaseException] = []
    with pytest.raises(trd.StorageError) as refused:
        trd.CheckpointRegistry(base_path=f"gs://{bucket}/reg", gcs=gcs).register(
            "clf", trd.Checkpoint(f"{bucket}/src", fs), metrics={})
    errors.append(refused.value)
    with pytest.raises(trd.RunNotFoundError) as missing:
        trd.TrainResult.from_path(f"gs://{bucket}/no-run", fs)
    errors.append(missing.value)
    with pytest.raises(trd.RunNotFoundError) as missing_az:
        trd.TrainResult.from_path(f"abfs://{azurite.new_container('err')}/no-run",
                                  azurite.filesystem())
    errors.append(missing_az.value)
    with pytest.raises(ValueError) as other:
        storage.filesystem_for("abfs://c1@someoneelse.dfs.core.windows.net/x",
                               azure=azurite.settings())
    errors.append(other.value)
    import traceback

    text = "\n".join("".join(traceback.format_exception(e)) for e in errors)
    text += "\n".join(r.getMessage() for r in caplog.records)
    assert SENTINEL_TOKEN not in text and azurite.key not in text


# ------------------------------------------------------------------------------ SAS tokens


def test_a_sas_token_reaches_azure_and_never_an_error(azurite):
    """A container SAS as Azure hands it out (no leading "?") works through pyarrow and the
    SDK, and a failing request's error names the place but not the signature."""
    import datetime as dt

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    from trainresults_dagster.errors import StorageError

    container = azurite.new_container("sas")
    sas = generate_container_sas(
        azurite.account, container, account_key=azurite.key,
        permission=ContainerSasPermissions(read=True, write=True, list=True, create=True),
        expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )
    signature = dict(p.split("=", 1) for p in sas.split("&"))["sig"]
    settings = azurite.settings(account_key=None, sas_token=sas)
    fs = settings.filesystem()
    storage.write_bytes_atomic(fs, f"{container}/a/b.json", b'{"x": 1}')
    assert storage.read_json(fs, f"{container}/a/b.json") == {"x": 1}
    # Another container: this SAS does not cover it, the service refuses.
    other = azurite.new_container("other")
    with pytest.raises((StorageError, OSError)) as caught:
        storage.write_bytes_atomic(fs, f"{other}/x.json", b"{}")
    text = "".join(traceback.format_exception(caught.value))
    assert signature not in text and urllib.parse.quote(signature, safe="") not in text
