"""``TrainingPipeline`` in process (the real ``dg`` CLI is in ``test_component_dg.py``).

* the scaffolded ``defs.yaml`` builds exactly what the Python factories build;
* secrets are taken by variable name only; pipelines alike share resources, others need a
  ``resource_key_prefix``;
* YAML mistakes fail as Dagster resolution errors located at the field, with no traceback;
* one real run of a YAML pipeline with every section (training on the session's Ray, best
  checkpoint, gate, batch inference, a signed serving webhook to a real receiver).
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster.components.testing import create_defs_folder_sandbox

import trainresults_dagster as trd
from trainresults_dagster.components import TrainingPipeline
from trainresults_dagster.dagster.training import build_training_asset
from trainresults_dagster.runs.entrypoint import Entrypoint, TrainingRequest, load_object

TYPE = "trainresults_dagster.components.TrainingPipeline"
REPO = Path(__file__).resolve().parent.parent
SENTINEL = "sEcReT-component-7c1e"  # must never appear in definitions or resource config


@pytest.fixture(autouse=True)
def _quiet_beta_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        yield


@pytest.fixture
def sandbox() -> Iterator[Any]:
    with create_defs_folder_sandbox() as box:
        yield box


def write(sandbox: Any, folder: str, attributes: str) -> Path:
    path = sandbox.defs_folder_path / folder
    path.mkdir(parents=True, exist_ok=True)
    body = textwrap.indent(textwrap.dedent(attributes).strip("\n"), "  ")
    (path / "defs.yaml").write_text(f"type: {TYPE}\n\nattributes:\n{body}\n")
    return path


def minimal(name: str = "m", base: str = "/tmp/trd-component-never-written",
            prefix: str = "") -> str:
    return f"""
        name: {name}
        resource_key_prefix: "{prefix}"
        training:
          entrypoint: component_entrypoints:returns_result
        storage:
          base_path: {base}
        selection: {{metric: val_loss, mode: min}}
    """


def root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None:
        error = error.__cause__
    return error


def shape(defs: dg.Definitions) -> dict[str, Any]:
    """What a Definitions builds, as plain data: enough to tell two pipelines apart."""
    repo = defs.get_repository_def()
    assets = {}
    for key, node in repo.assets_defs_by_key.items():
        spec = next(s for s in node.specs if s.key == key)
        assets[key.to_user_string()] = {
            "deps": sorted(d.asset_key.to_user_string() for d in spec.deps),
            "io_manager_key": node.get_io_manager_key_for_asset_key(key),
            "group": spec.group_name,
            "kinds": sorted(spec.kinds),
            "tags": dict(spec.tags),
            "resource_keys": sorted(node.required_resource_keys),
            "checks": sorted((c.name, c.blocking) for c in node.check_specs),
        }
    return {
        "assets": assets,
        "jobs": {
            job.name: sorted(k.to_user_string() for k in job.asset_layer.selected_asset_keys)
            for job in repo.get_all_jobs() if not job.name.startswith("__")
        },
        "schedules": {
            s.name: (s.cron_schedule, s.job_name, s.execution_timezone, s.default_status, s.tags)
            for s in repo.schedule_defs
        },
        "sensors": {
            s.name: (sorted(s.required_resource_keys), s.default_status,
                     sorted(t.job_name for t in s.targets))
            for s in repo.sensor_defs
        },
        "resources": {k: type(v).__name__ for k, v in (defs.resources or {}).items()},
    }


# ------------------------------------------------------------ YAML == Python factories
def test_scaffolded_yaml_builds_what_the_factories_build(sandbox, monkeypatch, tmp_path):
    base = str(tmp_path / "store")
    monkeypatch.setenv("TRAINRESULTS_STORAGE", base)
    path = sandbox.scaffold_component(component_cls=TrainingPipeline, defs_path="my-model")
    text = (path / "defs.yaml").read_text()
    assert "\n  name: my_model\n" in text and text.count("\n    #") > 20  # commented sections
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with sandbox.load_component_and_build_defs(defs_path=path) as (component, defs):
            pass
    ours = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
            if "trainresults_dagster" in w.filename]
    assert ours == []
    with sandbox.load_component_and_build_defs(defs_path=path) as (component, defs):
        assert isinstance(component, TrainingPipeline)
        assert component.storage.base_path == base

        # The same pipeline, written with the public factories.
        training = build_training_asset(
            "my_model_trained_model", pipeline="my_model",
            entrypoint=Entrypoint.load("trainresults_dagster.examples.training:train"),
            params={"epochs": 3, "num_workers": 2}, storage_uri=f"{base}/ray",
            group_name="my_model",
        )
        best = trd.build_best_checkpoint_asset(
            "my_model_best_checkpoint", result_asset=training, metric="val_loss", mode="min",
            group_name="my_model",
        )
        champion = trd.build_promotion_asset(
            "my_model_champion", model="my_model", candidate_asset=best, metric="val_loss",
            mode="min", min_improvement=0.001, thresholds={"val_accuracy": (0.7, None)},
            group_name="my_model",
        )
        job = dg.define_asset_job("my_model_retrain", selection=[training, best, champion])
        python = dg.Definitions(
            assets=[training, best, champion],
            jobs=[job],
            schedules=[trd.build_retraining_schedule(
                "my_model_retraining", target=job, cron_schedule="0 3 * * 1")],
            sensors=[
                trd.build_failed_run_sensor("my_model_failed_ray_runs", storage_path=f"{base}/ray"),
                trd.build_training_failure_sensor("my_model_training_failures"),
            ],
            resources={
                "ray_results": trd.RayTrainResultIOManager(base_path=f"{base}/results"),
                trd.JSON_IO_MANAGER_KEY: trd.JsonIOManager(base_path=f"{base}/values"),
                "checkpoint_registry": trd.CheckpointRegistry(base_path=f"{base}/registry"),
                "alert_sink": trd.WebhookAlertSink(url="http://127.0.0.1:9/unused"),
            },
        )
        ours, theirs = shape(defs), shape(python)
        theirs["resources"]["alert_sink"] = "LogAlertSink"  # no alert webhook in the YAML
        assert ours == theirs
        assert ours["assets"]["my_model_champion"]["checks"] == [("promotion_gate", True)]
        resources = defs.resources or {}
        assert resources["ray_results"].base_path == f"{base}/results"
        assert resources["checkpoint_registry"].base_path == f"{base}/registry"


def test_every_section_and_secrets_by_variable_name_only(sandbox, monkeypatch, tmp_path):
    monkeypatch.setenv("SERVE_SECRET", SENTINEL)
    monkeypatch.setenv("S3_SECRET", SENTINEL)
    write(sandbox, "churn", """
        name: churn
        resource_key_prefix: churn_
        group_name: ml
        training:
          entrypoint: component_entrypoints:returns_result
          params: {tag: "{{ env('CHURN_TAG', 'weekly') }}"}
          deps: [raw/events]
        storage:
          base_path: s3://ml-bucket/churn/
          checkpoints: copy
          s3:
            endpoint_url: http://127.0.0.1:9
            region_name: eu-west-1
            access_key_id_env: S3_KEY_ID
            secret_access_key_env: S3_SECRET
        selection: {metric: val/acc, mode: max, ties: earliest}
        promotion:
          model_name: churn-model
          alias: prod
          min_improvement: 0.01
          thresholds: {val/acc: [0.8, null], latency_ms: [null, 20]}
        inference:
          predictor: trainresults_dagster.examples.model:Predictor
          input_uri: s3://ml-bucket/to-score
          engine: ray
          num_actors: 2
        serving:
          webhook: {url_env: SERVE_URL, secret_env: SERVE_SECRET}
        alerts:
          webhook: {url_env: ALERT_URL}
          retrain_on_failure: true
          running: true
          minimum_interval_seconds: 120
        schedule: {cron: "30 2 * * *", timezone: Europe/Paris}
    """)
    (sandbox.defs_folder_path / "raw.py").write_text(
        "import dagster as dg\n\n\n@dg.asset(key=['raw', 'events'])\ndef events() -> None:\n"
        "    return None\n"
    )
    with sandbox.build_all_defs() as defs:
        got = shape(defs)
        resources = defs.resources or {}
    assert got["resources"] == {
        "churn_ray_results": "RayTrainResultIOManager",
        "churn_trainresults_json_io_manager": "JsonIOManager",
        "churn_checkpoint_registry": "CheckpointRegistry",
        "churn_s3": "S3Resource",
        "churn_alert_sink": "WebhookAlertSink",
        "churn_serving_target": "WebhookTarget",
    }
    assets = got["assets"]
    assert assets["churn_trained_model"]["deps"] == ["raw/events"]
    assert assets["churn_trained_model"]["resource_keys"] == ["churn_ray_results", "churn_s3"]
    assert assets["churn_batch_predictions"]["resource_keys"] == [
        "churn_s3", "churn_trainresults_json_io_manager"]
    assert assets["churn_serving"]["deps"] == ["churn_champion"]
    assert "churn_serving_target" in assets["churn_serving"]["resource_keys"]
    assert {a["group"] for k, a in assets.items() if k.startswith("churn_")} == {"ml"}
    assert got["jobs"]["churn_retrain"] == sorted(
        ["churn_trained_model", "churn_best_checkpoint", "churn_champion",
         "churn_batch_predictions", "churn_serving", "raw/events"])
    assert got["schedules"]["churn_retraining"][:3] == ("30 2 * * *", "churn_retrain",
                                                        "Europe/Paris")
    running = dg.DefaultSensorStatus.RUNNING
    assert got["sensors"]["churn_failed_ray_runs"] == (
        ["churn_alert_sink", "churn_s3"], running, ["churn_retrain"])
    assert got["sensors"]["churn_training_failures"][:2] == (["churn_alert_sink"], running)

    s3 = resources["churn_s3"]
    assert (s3.endpoint_url, s3.region_name) == ("http://127.0.0.1:9", "eu-west-1")
    assert isinstance(s3.aws_secret_access_key, dg.EnvVar) and s3.aws_secret_access_key == "S3_SECRET"
    target = resources["churn_serving_target"]
    assert isinstance(target.url, dg.EnvVar) and target.url == "SERVE_URL"
    assert target.secret == "SERVE_SECRET"
    assert resources["churn_ray_results"].s3 is s3
    assert resources["churn_ray_results"].base_path == "s3://ml-bucket/churn/results"
    assert resources["churn_ray_results"].checkpoints == "copy"
    seen = repr(resources) + json.dumps(
        {k: dict(a) for k, a in got["assets"].items()}, default=str)
    assert SENTINEL not in seen


def test_gcs_and_azure_sections_wire_every_factory(sandbox, monkeypatch, azurite, azure_runs):
    """gs:// and abfs:// pipelines get their store's resource under their own key, handed to
    every factory, with credentials by variable name; the Azure one stores a run read from
    Azurite through the pipeline's own IO manager and registers its best checkpoint."""
    monkeypatch.setenv("AZ_CONN", azurite.connection_string())
    monkeypatch.setenv("GCS_TOKEN", SENTINEL)
    container = azurite.new_container("pipe")

    def with_store(text: str, base: str, store: str) -> str:  # a line after base_path
        return text.replace(f"base_path: {base}", f"base_path: {base}\n          {store}")

    az_base = f"abfs://{container}/pipe/"
    write(sandbox, "az", with_store(minimal("az", az_base, prefix="az_"), az_base,
                                    "azure: {connection_string_env: AZ_CONN}"))
    write(sandbox, "gs", with_store(
        minimal("gs", "gcs://ml-bucket/pipe", prefix="gs_"), "gcs://ml-bucket/pipe",
        'gcs: {project_id: p1, endpoint_url: "http://127.0.0.1:9", access_token_env: GCS_TOKEN}'))
    with sandbox.build_all_defs() as defs:
        got = shape(defs)
        resources = defs.resources or {}
    assert got["resources"]["az_azure"] == "AzureResource"
    assert got["resources"]["gs_gcs"] == "GcsResource"
    for name, key in (("az", "az_azure"), ("gs", "gs_gcs")):
        assert key in got["assets"][f"{name}_trained_model"]["resource_keys"]
        assert key in got["sensors"][f"{name}_failed_ray_runs"][0]
    azure, gcs = resources["az_azure"], resources["gs_gcs"]
    assert isinstance(azure.connection_string, dg.EnvVar) and azure.connection_string == "AZ_CONN"
    assert isinstance(gcs.access_token, dg.EnvVar) and gcs.access_token == "GCS_TOKEN"
    assert (gcs.project_id, gcs.endpoint_url) == ("p1", "http://127.0.0.1:9")
    for role in ("ray_results", "trainresults_json_io_manager", "checkpoint_registry"):
        assert resources[f"az_{role}"].azure is azure and resources[f"gs_{role}"].gcs is gcs
    assert resources["az_ray_results"].base_path == f"abfs://{container}/pipe/results"
    assert resources["gs_checkpoint_registry"].base_path == "gs://ml-bucket/pipe/registry"
    assert SENTINEL not in repr(resources) + json.dumps(got, default=str)

    run = azure_runs["success"]

    @dg.asset(io_manager_key="az_ray_results")
    def trained() -> trd.TrainResult:
        return trd.TrainResult.from_path(run, azurite.filesystem())

    done = dg.materialize([trained], resources={
        "az_ray_results": resources["az_ray_results"], "az_azure": azure})
    metadata = done.asset_materializations_for_node("trained")[-1].metadata
    assert metadata["manifest"].value.startswith(
        f"abfs://{container}/pipe/results/")
    best = trd.TrainResult.from_path(run, azurite.filesystem()).get_best_checkpoint("loss", "min")
    # Resolved as Dagster resolves it in a run: the connection string from AZ_CONN.
    with dg.build_resources({"registry": resources["az_checkpoint_registry"]}) as built:
        version = built.registry.register("churn", best, metrics={"loss": 0.4})
    assert version.uri.startswith(f"abfs://{container}/pipe/registry/")


def test_pipelines_alike_share_resources_others_need_a_prefix(sandbox, tmp_path):
    write(sandbox, "a", minimal("a", str(tmp_path)))
    write(sandbox, "b", minimal("b", str(tmp_path)))
    with sandbox.build_all_defs() as defs:  # same storage: same resource objects, no conflict
        assert {"a_champion", "b_champion"} <= set(shape(defs)["assets"])

    write(sandbox, "b", minimal("b", str(tmp_path / "other")))
    with pytest.raises(Exception) as info:
        with sandbox.build_all_defs():
            pass
    assert "different resources with same key 'ray_results'" in str(root_cause(info.value))

    write(sandbox, "b", minimal("b", str(tmp_path / "other"), prefix="b_"))
    with sandbox.build_all_defs() as defs:
        resources = defs.resources or {}
        assert resources["b_checkpoint_registry"].base_path == f"{tmp_path}/other/registry"
        assert resources["checkpoint_registry"].base_path == f"{tmp_path}/registry"


def test_python_scaffold_builds_the_same_pipeline(sandbox, monkeypatch, tmp_path):
    monkeypatch.setenv("TRAINRESULTS_STORAGE", str(tmp_path))
    yaml_path = sandbox.scaffold_component(component_cls=TrainingPipeline, defs_path="y")
    py_path = sandbox.scaffold_component(component_cls=TrainingPipeline, defs_path="p",
                                         scaffold_format="python", scaffold_params={"name": "y"})
    assert (py_path / "component.py").exists()
    with sandbox.load_component_and_build_defs(defs_path=yaml_path) as (_c, from_yaml):
        expected = shape(from_yaml)
    (yaml_path / "defs.yaml").unlink()
    assert "TrainingPipeline.resolve_from_dict(" in (py_path / "component.py").read_text()
    with sandbox.load_component_and_build_defs(defs_path=py_path) as (_c, from_python):
        assert shape(from_python) == expected


def test_readme_yaml_and_python_build_the_same_pipeline(sandbox):
    readme = (REPO / "README.md").read_text()
    (yaml_text,) = re.findall(r"```yaml\n(.*?)```", readme, flags=re.S)
    (python_text,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
                      if b.startswith("# The same pipeline in Python")]
    path = sandbox.defs_folder_path / "classifier"
    path.mkdir()
    (path / "defs.yaml").write_text(yaml_text)
    with sandbox.load_component_and_build_defs(defs_path=path) as (_c, from_yaml):
        expected = shape(from_yaml)
    namespace: dict[str, Any] = {}
    exec(compile(python_text, "README.md#pipeline-in-python", "exec"), namespace)
    assert shape(namespace["defs"]) == expected


# -------------------------------------------------------------------- located errors
GOOD = textwrap.dedent("""
    name: m
    training:
      entrypoint: component_entrypoints:returns_result
      params: {tag: t}
    storage:
      base_path: /tmp/trd-component-never-written
    selection:
      metric: val_loss
      mode: min
    promotion:
      thresholds: {val_accuracy: [0.7, null]}
    schedule:
      cron: "0 3 * * 1"
""")

#: case -> (text in GOOD, its replacement, the field the error must name, what it must say)
BAD = {
    "unknown field": ("  mode: min", "  mod: min", "selection", "mod"),
    "entrypoint missing": ("returns_result", "returns_resutl", "training.entrypoint",
                           "has no attribute 'returns_resutl'"),
    "entrypoint module": ("component_entrypoints:", "no_such_module:", "training.entrypoint",
                          "cannot import module 'no_such_module'"),
    "entrypoint not callable": ("returns_result", "NOT_CALLABLE", "training.entrypoint",
                                "to be a function"),
    "params typo": ("{tag: t}", "{tga: t}", "training.params", "unexpected keyword argument 'tga'"),
    "mode": ("  mode: min", "  mode: mean", "selection.mode", "got 'mean'"),
    "cron": ('"0 3 * * 1"', '"every monday"', "schedule.cron", "got 'every monday'"),
    "thresholds": ("[0.7, null]", "[0.9, 0.1]", "promotion.thresholds", "low > high"),
    "relative base_path": ("/tmp/trd-component-never-written", "data/x", "storage.base_path",
                           "context.project_root"),
    "scheme": ("/tmp/trd-component-never-written", "ftp://x/y", "storage.base_path",
               "scheme 'ftp'"),
    "name": ("name: m", "name: my-model", "name", "expected a Dagster name"),
    "training mode": ("  params: {tag: t}", "  params: {tag: t}\n  mode: on_the_moon",
                      "training.mode", "got 'on_the_moon'"),
    "ray_job mode without a cluster": ("  params: {tag: t}", "  params: {tag: t}\n  mode: ray_job",
                                       "training.ray_job", "needs a ray_job section"),
    "secret value instead of its name": (
        'schedule:\n  cron: "0 3 * * 1"',
        "serving:\n  webhook: {url_env: 'https://hooks.example.com/x'}",
        "serving.webhook.url_env", "NAME of an environment variable"),
    "serving with two targets": (
        'schedule:\n  cron: "0 3 * * 1"',
        "serving:\n  webhook: {url_env: U}\n  ray_serve: {app_name: a, deployment_name: b}",
        "serving.ray_serve", "got both"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_yaml_mistakes_are_located_resolution_errors(sandbox, case):
    old, new, where, says = BAD[case]
    assert old in GOOD, case
    path = write(sandbox, "m", GOOD.replace(old, new))
    with pytest.raises(Exception) as info:
        with sandbox.load_component_and_build_defs(defs_path=path):
            pass
    error = root_cause(info.value)
    message = str(error)
    assert type(error).__name__ in ("ResolutionException", "ValidationError"), message
    assert f"attributes.{where}" in message, message
    assert says in message, message
    assert "defs.yaml:" in message, message
    assert "Traceback" not in message and "trainresults_dagster/" not in message, message


def test_ray_job_mode_builds_a_job_trainer_with_the_token_by_name(sandbox):
    """``mode: ray_job``: the training asset submits through ``RayJobTrainer`` (run for real
    on a cluster in tests/test_ray_jobs_cluster.py); the token is an EnvVar, never a value."""
    text = GOOD.replace("  params: {tag: t}", "  params: {tag: t}\n  mode: ray_job\n  ray_job:\n"
                        "    address: http://ray-head:8265\n    token_env: TRD_TEST_RAY_TOKEN\n"
                        "    runtime_env: {env_vars: {FLAG: on-please}}")
    with sandbox.load_component_and_build_defs(defs_path=write(sandbox, "m", text)) as (_c, defs):
        trainer = (defs.resources or {})["ray_job"]
        assert isinstance(trainer, trd.RayJobTrainer)
        assert trainer.address == "http://ray-head:8265"
        assert isinstance(trainer.auth_token, dg.EnvVar) and trainer.auth_token.env_var_name == "TRD_TEST_RAY_TOKEN"
        assert trainer.runtime_env == {"env_vars": {"FLAG": "on-please"}}
        spec = defs.resolve_assets_def("m_trained_model").specs_by_key[dg.AssetKey("m_trained_model")]
        assert spec.metadata["ray_job"] == "true"


# ------------------------------------------------------------------------- entrypoints
def test_entrypoint_gets_params_request_and_context():
    from component_entrypoints import CALLS

    entry = Entrypoint.load("component_entrypoints:returns_result")
    request = TrainingRequest(run_name="r1", storage_uri="/tmp/x", storage_path="/tmp/x")
    result = entry.run(request, {"tag": "t"}, context="ctx")
    assert isinstance(result, trd.TrainResult) and result.path == "/tmp/x/r1"
    assert CALLS[-1] == {"request": request, "context": "ctx", "tag": "t"}
    Entrypoint.load("component_entrypoints.no_request").run(request, {"epochs": 2})
    assert CALLS[-1] == {"epochs": 2}

    with pytest.raises(TypeError, match=r"returns_a_string to return a ray.train.Result.*'not a"):
        Entrypoint.load("component_entrypoints:returns_a_string").run(request, {})
    with pytest.raises(ValueError, match="must not set 'request'"):
        entry.check_params({"request": 1})
    for ref, says in [("", "import path"), ("a b:c", "import path"),
                      ("json:nope", "has no attribute 'nope'")]:
        with pytest.raises(ValueError, match=says):
            load_object(ref)
    with pytest.raises(ValueError, match="to be a function"):
        Entrypoint.load("component_entrypoints:TrainResult")  # a class, not a function


def test_the_dg_example_project_loads_with_its_data_asset(monkeypatch, tmp_path):
    monkeypatch.setenv("TRAINRESULTS_STORAGE", str(tmp_path))
    monkeypatch.syspath_prepend(str(REPO / "examples" / "dg_project"))
    for name in [m for m in sys.modules if m.startswith("trainresults_dg_example")]:
        monkeypatch.delitem(sys.modules, name)
    from trainresults_dg_example import definitions

    defs = definitions.defs()
    got = shape(defs if isinstance(defs, dg.Definitions) else defs.defs)
    assert set(got["assets"]) == {
        "classifier_data", "classifier_trained_model", "classifier_best_checkpoint",
        "classifier_champion", "classifier_batch_predictions"}
    assert got["assets"]["classifier_trained_model"]["deps"] == ["classifier_data"]
    assert "classifier_data" in got["jobs"]["classifier_retrain"]
    assert got["sensors"]["classifier_failed_ray_runs"][2] == ["classifier_retrain"]
    assert got["schedules"]["classifier_retraining"][0] == "0 3 * * 1"


# ----------------------------------------------------------------------- on real Ray
def test_yaml_pipeline_trains_promotes_infers_and_serves(ray_session, sandbox, monkeypatch,
                                                         tmp_path):
    import pyarrow.parquet as pq
    from handoff_helpers import Receiver

    from trainresults_dagster.examples.model import make_dataset
    from trainresults_dagster.webhook import verify_signature

    to_score = tmp_path / "to-score"
    to_score.mkdir()
    make_dataset(500, seed=3).drop(columns=["label"]).to_parquet(to_score / "part-0.parquet")
    base = tmp_path / "store"
    with Receiver() as receiver:
        monkeypatch.setenv("TRD_TEST_SERVE_URL", receiver.url)
        monkeypatch.setenv("TRD_TEST_SERVE_SECRET", SENTINEL)
        write(sandbox, "clf", f"""
            name: clf
            training:
              entrypoint: trainresults_dagster.examples.training:train
              params: {{epochs: 2, num_workers: 1, rows: 1000}}
            storage: {{base_path: {base}}}
            selection: {{metric: val_loss, mode: min}}
            promotion: {{thresholds: {{val_accuracy: [0.7, null]}}}}
            inference:
              predictor: trainresults_dagster.examples.model:Predictor
              input_uri: {to_score}
              batch_size: 128
            serving:
              webhook: {{url_env: TRD_TEST_SERVE_URL, secret_env: TRD_TEST_SERVE_SECRET}}
        """)
        with sandbox.build_all_defs() as defs:
            result = dg.materialize(list(defs.assets or []), resources=defs.resources,
                                    raise_on_error=False)
        assert result.success
        assert [e.passed for e in result.get_asset_check_evaluations()] == [True]
        assert len(receiver.requests) == 1
        delivered = receiver.requests[0]
    trained = result.asset_materializations_for_node("clf_trained_model")[-1].metadata
    run_uri = trained["dagster/uri"].value
    assert 0.0 < trained["metrics/val_loss"].value < 1.0
    assert trained["num_checkpoints"].value == 2
    run_dirs = list((base / "ray").iterdir())
    assert [d.name for d in run_dirs] == [f"clf-{result.run_id[:8]}"]
    assert (run_dirs[0] / "trainresults_record").is_dir()  # RunRecorder attached
    assert run_uri

    champion = trd.CheckpointRegistry(base_path=str(base / "registry")).get("clf")
    assert champion is not None and champion.version == 1
    predictions = result.asset_materializations_for_node("clf_batch_predictions")[-1].metadata
    assert predictions["dagster/row_count"].value == 500
    assert pq.read_table(str(base / "predictions" / "clf")).num_rows == 500

    body = delivered["body"]
    assert verify_signature(SENTINEL, body, delivered["headers"]["X-Signature-SHA256"])
    manifest = json.loads(body)
    assert (manifest["model"], manifest["version"]) == ("clf", 1)
    assert SENTINEL not in body.decode()

