"""The real ``dg`` CLI on ``TrainingPipeline``, in a temporary project built the dg way.

Six ``dg`` calls in all (each a fresh process of a few seconds): list the component,
scaffold it, ``dg check defs``, ``dg list defs --json``, ``dg launch`` (training on the
session's Ray through ``RAY_ADDRESS``, then the best checkpoint and the gate), and a
``defs.yaml`` with a misspelt field that ``dg check defs`` must reject, naming it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import trainresults_dagster as trd

TYPE = "trainresults_dagster.components.TrainingPipeline"
BIN = Path(sys.executable).parent
NAME = "my_model"
ASSETS = {f"{NAME}_trained_model", f"{NAME}_best_checkpoint", f"{NAME}_champion"}


@dataclass
class Project:
    root: Path
    storage: Path
    home: Path
    env: dict[str, str]
    timings: list[tuple[str, float]] = field(default_factory=list)

    @property
    def defs(self) -> Path:
        return self.root / "proj" / "defs"

    def dg(self, *args: str, expect: int | None = 0, **env: str) -> subprocess.CompletedProcess:
        started = time.monotonic()
        proc = subprocess.run(
            [str(BIN / "dg"), *args], cwd=self.root, env={**self.env, **env},
            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600,
        )
        self.timings.append((" ".join(args[:2]), time.monotonic() - started))
        if expect is not None:
            assert proc.returncode == expect, (
                f"dg {' '.join(args)}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``proj/``: pyproject with ``[tool.dg]``, ``proj/definitions.py`` loading ``proj/defs``;
    a Dagster home with telemetry off; storage under the temporary folder."""
    tmp = tmp_path_factory.mktemp("dg")
    root = tmp / "proj"
    (root / "proj" / "defs").mkdir(parents=True)
    (root / "pyproject.toml").write_text(textwrap.dedent("""\
        [project]
        name = "proj"
        version = "0.1.0"

        [tool.dg]
        directory_type = "project"

        [tool.dg.project]
        root_module = "proj"

        [tool.dg.cli]
        telemetry = { enabled = false }
        """))
    (root / "proj" / "__init__.py").write_text("")
    (root / "proj" / "defs" / "__init__.py").write_text("")
    (root / "proj" / "definitions.py").write_text(textwrap.dedent("""\
        from pathlib import Path

        import dagster as dg


        @dg.definitions
        def defs():
            return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
        """))
    home = tmp / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "DG_"))}
    env.pop("VIRTUAL_ENV", None)  # dg would compare it with the project's (absent) .venv
    env.update(
        DAGSTER_HOME=str(home),
        DAGSTER_DG_UPDATE_CHECK_ENABLED="0",  # no PyPI version check: runs offline
        TRAINRESULTS_STORAGE=str(tmp / "storage"),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        COLUMNS="200",
        NO_COLOR="1",
    )
    proj = Project(root=root, storage=tmp / "storage", home=home, env=env)
    yield proj
    print("\ndg timings: " + ", ".join(f"{cmd} {secs:.1f}s" for cmd, secs in proj.timings))


@pytest.fixture(scope="module")
def scaffolded(project: Project) -> Path:
    project.dg("scaffold", "defs", TYPE, NAME)
    return project.defs / NAME / "defs.yaml"


def test_dg_lists_the_component_with_its_description(project):
    items = json.loads(project.dg("list", "components", "--json").stdout)["items"]
    ours = [i for i in items if i["key"] == TYPE]
    assert ours, [i["key"] for i in items]
    assert ours[0]["summary"].startswith("Ray Train pipeline from YAML: train, pick the best")


def test_scaffold_checks_and_lists_the_pipeline(project, scaffolded):
    text = scaffolded.read_text()
    assert f"type: {TYPE}\n" in text and f"  name: {NAME}\n" in text
    assert "# inference:" in text and "# serving:" in text  # optional sections, commented

    out = project.dg("check", "defs")
    assert "All definitions loaded successfully" in out.stdout + out.stderr

    listed = json.loads(project.dg("list", "defs", "--json").stdout)
    assert {a["asset_key"] for a in listed["assets"]} == ASSETS
    by_key = {a["asset_key"]: a for a in listed["assets"]}
    assert by_key[f"{NAME}_champion"]["dependency_keys"] == [f"{NAME}_best_checkpoint"]
    assert by_key[f"{NAME}_best_checkpoint"]["dependency_keys"] == [f"{NAME}_trained_model"]
    assert [c["key"] for c in listed["asset_checks"]] == [f"{NAME}_champion:promotion_gate"]
    assert sorted(s["name"] for s in listed["sensors"]) == [
        f"{NAME}_failed_ray_runs", f"{NAME}_training_failures"]
    assert [(s["name"], s["cron_schedule"]) for s in listed["schedules"]] == [
        (f"{NAME}_retraining", "0 3 * * 1")]
    assert [j["name"] for j in listed["jobs"]] == [f"{NAME}_retrain"]
    assert {r["name"] for r in listed["resources"]} == {
        "ray_results", trd.JSON_IO_MANAGER_KEY, "checkpoint_registry", "alert_sink"}


def test_dg_launch_trains_on_ray_and_promotes(project, scaffolded, ray_session):
    import dagster as dg

    in_process = json.dumps({"execution": {"config": {"in_process": {}}}})
    # ray.init() set RAY_AUTH_MODE=token in this process when it started the session's Ray;
    # the step process needs it too to send the cluster's token when it connects.
    ray_env = {k: v for k, v in os.environ.items() if k.startswith("RAY_")}
    project.dg("launch", "--assets", ",".join(sorted(ASSETS)), "--config-json", in_process,
               **ray_env, RAY_ADDRESS=ray_session)

    champion = trd.CheckpointRegistry(base_path=str(project.storage / "registry")).get(NAME)
    assert champion is not None and champion.version == 1
    assert champion.metrics["val_accuracy"] >= 0.7 and champion.checkpoint.exists()
    (run_dir,) = (project.storage / "ray").iterdir()
    assert run_dir.name.startswith(f"{NAME}-")
    assert (run_dir / "trainresults_record").is_dir()  # RunRecorder attached by request
    with dg.DagsterInstance.from_config(str(project.home)) as instance:
        for key in ASSETS:
            assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None, key
        check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey(f"{NAME}_champion"), "promotion_gate")])
        (execution,) = check.values()
        assert execution.status.value == "SUCCEEDED"


def test_dg_check_defs_names_a_misspelt_field(project, scaffolded):
    broken = project.defs / "broken"
    broken.mkdir()
    text = scaffolded.read_text().replace(f"name: {NAME}", "name: broken")
    (broken / "defs.yaml").write_text(text.replace("    metric: val_loss", "    metrik: val_loss"))
    try:
        out = project.dg("check", "defs", expect=1)
    finally:
        shutil.rmtree(broken)
    message = out.stdout + out.stderr
    assert "attributes.selection" in message and "metrik" in message, message
    assert "Extra inputs are not permitted" in message, message
    assert "broken/defs.yaml" in message, message
