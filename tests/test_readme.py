"""The README's Python snippets run (an example that is not run rots)."""

from __future__ import annotations

import os
import re
import shutil

import dagster as dg
import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def _snippets() -> list[str]:
    with open(README) as fh:
        return re.findall(r"```python\n(.*?)```", fh.read(), flags=re.S)


def test_readme_has_the_two_commands_on_its_first_screen():
    with open(README) as fh:
        first_screen = "\n".join(fh.read().splitlines()[:20])
    assert "make demo" in first_screen and "make test" in first_screen


def test_minimal_definitions_snippet_loads():
    snippet = _snippets()[0]
    namespace: dict = {}
    exec(compile(snippet, "README.md#definitions", "exec"), namespace)
    defs = namespace["defs"]
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"trained_model", "best_checkpoint", "champion"} <= keys


def test_reading_snippet_runs_on_a_real_run(v2_runs, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    shutil.copytree(v2_runs["success"], home / "ray_results" / "my-run")
    monkeypatch.setenv("HOME", str(home))
    exec(compile(_snippets()[1], "README.md#reading", "exec"), {})
    out = capsys.readouterr().out
    assert "my-run/checkpoint_" in out and "rows x" in out and "None" in out  # no error


def test_s3_snippet_builds_resources():
    namespace: dict = {}
    exec(compile(_snippets()[2], "README.md#s3", "exec"), namespace)
    assert namespace["io_manager"].checkpoints == "copy"
    assert namespace["registry"].base_path == "s3://ml-bucket/registry"


def test_alerts_doc_snippets():
    path = os.path.join(os.path.dirname(README), "docs", "alerts_and_retraining.md")
    with open(path) as fh:
        blocks = re.findall(r"```python\n(.*?)```", fh.read(), flags=re.S)
    namespace: dict = {}
    exec(compile(blocks[0], "alerts_and_retraining.md#1", "exec"), namespace)
    dg.Definitions.validate_loadable(namespace["defs"])
    for i, block in enumerate(blocks[1:], start=2):  # need optional packages (dagster-slack)
        compile(block, f"alerts_and_retraining.md#{i}", "exec")


def test_guardrails_snippet_adds_the_checks():
    namespace: dict = {}
    exec(compile(_snippets()[0], "README.md#definitions", "exec"), namespace)
    exec(compile(_snippets()[3], "README.md#guardrails", "exec"), namespace)
    defs = namespace["defs"]
    dg.Definitions.validate_loadable(defs)
    names = {c.check_key.name for c in namespace["checks"]}
    assert names == {"champion_files", "champion_age"}
    assert defs.resolve_job_def("guardrails") is not None


def test_sweep_snippet_runs_from_sweep_to_champion(ray_session, tmp_path, monkeypatch, capsys):
    """The README's sweep example end to end: a real Tune sweep (one trial diverges to NaN)
    materialised, its best checkpoint across trials promoted, then read without Ray."""
    monkeypatch.setenv("TRAINRESULTS_STORAGE", str(tmp_path))
    namespace: dict = {"__name__": "readme_sweep"}  # not importable: Ray ships it by value
    exec(compile(_snippets()[4], "README.md#sweeps", "exec"), namespace)
    defs = namespace["defs"]
    dg.Definitions.validate_loadable(defs)
    with dg.instance_for_test() as instance:
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance)
    assert result.success
    champion = result.output_for_node("champion")
    assert champion.version == 1 and champion.metrics["loss"] == pytest.approx(0.01)
    assert champion.lineage["trial_config"] == {"lr": 0.01}
    assert "trial_id" in champion.lineage and champion.lineage["sweep_uri"].endswith("lr-sweep")
    printed = capsys.readouterr().out
    assert "config/lr" in printed and "TERMINATED" in printed

    home = tmp_path / "home"
    shutil.copytree(tmp_path / "ray" / "lr-sweep", home / "ray_results" / "lr-sweep")
    monkeypatch.setenv("HOME", str(home))
    exec(compile(_snippets()[5], "README.md#reading-sweeps", "exec"), {})
    out = capsys.readouterr().out
    assert "{'lr': 0.01}" in out and "checkpoint_000002" in out


def test_training_on_a_cluster_snippets():
    job, asset = [s for s in _snippets() if "pipes.report_result" in s or "RayJobTrainer(" in s]
    compile(job, "README.md#ray-job-script", "exec")  # runs as a Ray Job only
    namespace: dict = {}
    # dont_inherit: this module's `from __future__ import annotations` would make Dagster see
    # string annotations on the asset
    exec(compile(asset, "README.md#ray-job-asset", "exec", dont_inherit=True), namespace)
    defs = namespace["defs"]
    dg.Definitions.validate_loadable(defs)
    assert defs.resources["ray_job"].address == "http://ray-head:8265"
