"""Every ``trainresults`` subcommand fed bad input, through the real console script: exit
code 2 (usage) or 3 (bad or missing input), or the documented 4/5, and exactly one line on
stderr that is not a traceback. Local paths, and S3 through the moto server (``AWS_*``
environment, as a terminal user sets it)."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainresults_dagster.registry.registry import Registry

CLI = str(Path(sys.executable).with_name("trainresults"))


@pytest.fixture(scope="module")
def places(tmp_path_factory, v2_runs, moto):
    root = tmp_path_factory.mktemp("cli")
    ckpt = root / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.txt").write_text("weights")
    registry = root / "registry"
    reg = Registry(str(registry))
    reg.register("m", str(ckpt), metrics={"loss": 0.5})
    reg.register("m", str(ckpt), metrics={"loss": 0.4})
    reg.register("unpromoted", str(ckpt), metrics={"loss": 0.4})
    reg.promote("m", 1)
    corrupt = root / "corrupt-registry"
    shutil.copytree(registry, corrupt)
    (corrupt / "m" / "aliases" / "champion.json").write_text("{not json")
    torn_run = root / "torn-run"
    shutil.copytree(v2_runs["success"], torn_run)
    (torn_run / "checkpoint_manager_snapshot.json").write_text('{"checkpoint_res')
    a_file = root / "file.txt"
    a_file.write_text("not a run")
    marker_only = root / "marker-only"
    marker_only.mkdir()
    (marker_only / ".validate_storage_marker").write_text("")
    bucket = moto.new_bucket("cli")
    return {
        "run": v2_runs["success"], "plain": v2_runs["success_plain"],
        "before_ckpt": v2_runs["failure_before_ckpt"], "torn": str(torn_run),
        "file": str(a_file), "marker_only": str(marker_only), "missing": str(root / "nope"),
        "registry": str(registry), "corrupt": str(corrupt), "bucket": bucket,
        "env": dict(os.environ, **moto.env()),
    }


def cases(p: dict) -> list[tuple[str, list[str], set[int]]]:
    reg, bad_reg = ["registry", "--base", p["registry"]], ["registry", "--base", p["corrupt"]]
    s3 = f"s3://{p['bucket']}"
    usage, bad = {2}, {3}
    return [
        # the command line itself
        ("no command", [], usage),
        ("unknown command", ["frobnicate"], usage),
        ("unknown option", ["inspect", p["run"], "--colour"], usage),
        # inspect
        ("inspect: no uri", ["inspect"], usage),
        ("inspect: empty uri", ["inspect", ""], bad),
        ("inspect: missing folder", ["inspect", p["missing"]], bad),
        ("inspect: a file", ["inspect", p["file"]], bad),
        ("inspect: marker only", ["inspect", p["marker_only"]], bad),
        ("inspect: torn snapshot", ["inspect", p["torn"]], bad),
        ("inspect: bucketless s3", ["inspect", "s3://"], bad),
        ("inspect: missing s3 run", ["inspect", f"{s3}/no/such/run"], bad),
        ("inspect: missing bucket", ["inspect", "s3://no-such-bucket-cli/run"], bad),
        ("inspect: unknown scheme", ["inspect", "gopher://host/run"], bad),
        ("inspect: json, missing", ["inspect", p["missing"], "--json"], bad),
        # best
        ("best: no metric", ["best", p["run"], "--mode", "min"], usage),
        ("best: bad mode", ["best", p["run"], "--metric", "loss", "--mode", "lowest"], usage),
        ("best: bad ties", ["best", p["run"], "--metric", "loss", "--mode", "min", "--ties", "x"], usage),
        ("best: empty metric", ["best", p["run"], "--metric", "", "--mode", "min"], bad),
        ("best: missing run", ["best", p["missing"], "--metric", "loss", "--mode", "min"], bad),
        ("best: torn snapshot", ["best", p["torn"], "--metric", "loss", "--mode", "min"], bad),
        ("best: unknown metric", ["best", p["run"], "--metric", "nope", "--mode", "min"], {4}),
        ("best: no checkpoints", ["best", p["before_ckpt"], "--metric", "loss", "--mode", "min"], {3, 4}),
        # registry
        ("registry: no base", ["registry", "list", "m"], usage),
        ("registry: no action", ["registry", "--base", p["registry"]], usage),
        ("registry: empty base", ["registry", "--base", "", "list", "m"], bad),
        ("registry: base is a file", ["registry", "--base", p["file"], "list", "m"], bad),
        ("registry: bucketless base", ["registry", "--base", "s3://", "list", "m"], bad),
        ("registry: missing bucket", ["registry", "--base", "s3://no-such-bucket-cli/r", "list", "m"], bad),
        ("list: unknown model", [*reg, "list", "nope"], bad),
        ("list: unsafe model", [*reg, "list", "../m"], bad),
        ("list: no model", [*reg, "list"], usage),
        ("list: s3, empty", ["registry", "--base", f"{s3}/reg", "list", "m"], bad),
        ("show: alias unset", [*reg, "show", "unpromoted"], bad),
        ("show: other alias unset", [*reg, "show", "m", "--alias", "staging"], bad),
        ("show: unknown version", [*reg, "show", "m", "--version", "99"], bad),
        ("show: version 0", [*reg, "show", "m", "--version", "0"], bad),
        ("show: version not int", [*reg, "show", "m", "--version", "two"], usage),
        ("show: unsafe alias", [*reg, "show", "m", "--alias", "../x"], bad),
        ("show: unknown model", [*reg, "show", "nope"], bad),
        ("show: corrupt alias", [*bad_reg, "show", "m"], bad),
        ("promote: no version", [*reg, "promote", "m"], usage),
        ("promote: unknown version", [*reg, "promote", "m", "--version", "99"], bad),
        ("promote: negative version", [*reg, "promote", "m", "--version", "-1"], bad),
        ("promote: bad expected", [*reg, "promote", "m", "--version", "2", "--expected-version", "0"], bad),
        ("promote: stale expected", [*reg, "promote", "m", "--version", "2", "--expected-version", "2"], {5}),
        ("promote: unknown model", [*reg, "promote", "nope", "--version", "1"], bad),
        ("promote: corrupt alias", [*bad_reg, "promote", "m", "--version", "2"], bad),
        ("rollback: alias unset", [*reg, "rollback", "unpromoted"], bad),
        ("rollback: first promotion", [*reg, "rollback", "m"], bad),
        ("rollback: unknown model", [*reg, "rollback", "nope"], bad),
        ("rollback: corrupt alias", [*bad_reg, "rollback", "m"], bad),
        ("history: unknown model", [*reg, "history", "nope"], bad),
        ("history: unsafe alias", [*reg, "history", "m", "--alias", "a/b"], bad),
        ("history: corrupt alias", [*bad_reg, "history", "m"], bad),
    ]


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_every_subcommand_fails_with_one_line_and_a_usage_or_input_code(places):
    todo = cases(places)
    env = dict(places["env"], AWS_MAX_ATTEMPTS="1", TRAINRESULTS_STORAGE_RETRIES="1")
    env.pop("TRAINRESULTS_DEBUG", None)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda c: run(c[1], env), todo))
    wrong = []
    for (label, args, codes), proc in zip(todo, results, strict=True):
        lines = proc.stderr.splitlines()
        if proc.returncode not in codes or len(lines) != 1 or "Traceback" in proc.stderr:
            wrong.append(f"{label}: {args} -> exit {proc.returncode}, stderr {proc.stderr!r}")
        elif not lines[0].startswith("trainresults"):
            wrong.append(f"{label}: message does not name the tool: {lines[0]!r}")
    assert not wrong, "\n".join(wrong)
    print(f"bad inputs tried: {len(todo)}")
    # Nothing was changed by the failed commands.
    assert Registry(places["registry"]).get("m").version == 1
    assert len(Registry(places["registry"]).history("m")) == 1


def test_good_input_still_works(places):
    env = places["env"]
    shown = run(["registry", "--base", places["registry"], "show", "m"], env)
    assert shown.returncode == 0 and '"version": 1' in shown.stdout
    listed = run(["registry", "--base", places["registry"], "list", "m"], env)
    assert listed.returncode == 0 and listed.stdout.count("\n") >= 3
    assert run(["inspect", places["run"]], env).returncode == 0


def test_a_bug_is_one_line_with_exit_1_and_a_traceback_only_when_asked(places):
    """An unexpected exception (here: a sitecustomize that breaks the reader) is exit 1."""
    env = dict(places["env"])
    breaker = Path(places["registry"]).parent / "breaker"
    breaker.mkdir(exist_ok=True)
    (breaker / "sitecustomize.py").write_text(
        "import trainresults_dagster.runs.result as r\n"
        "def boom(*a, **k):\n    raise ZeroDivisionError('injected bug')\n"
        "r.TrainResult.from_path = classmethod(boom)\n"
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(breaker), env.get("PYTHONPATH")]))
    quiet = run(["inspect", places["run"]], env)
    assert quiet.returncode == 1 and len(quiet.stderr.splitlines()) == 1
    assert "internal error ZeroDivisionError: injected bug" in quiet.stderr
    loud = run(["inspect", places["run"]], dict(env, TRAINRESULTS_DEBUG="1"))
    assert loud.returncode == 1 and "Traceback" in loud.stderr


@pytest.mark.parametrize(
    "argv, env, says",
    [
        (["component_entrypoints:returns_result"], {}, "TRAINRESULTS_STORAGE_URI"),
        (["no_such_module_x:train"], "job", "no_such_module_x"),
        (["component_entrypoints:returns_result", "--params", "{not json"], "job", "JSON object"),
        (["component_entrypoints:returns_result", "--params", "[1]"], "job", "JSON object"),
        ([], "job", "entrypoint"),
    ],
)
def test_the_job_entrypoint_fails_with_one_line(tmp_path, argv, env, says):
    """``python -m trainresults_dagster.pipes`` (what a Ray Job runs) on bad input: exit 2
    (usage) or 3 (input), one line naming what was expected, no traceback."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("TRAINRESULTS_")}
    environ["PYTHONPATH"] = str(Path(__file__).resolve().parent)
    if env == "job":
        environ["TRAINRESULTS_STORAGE_URI"] = str(tmp_path)
        environ["TRAINRESULTS_RUN_NAME"] = "r1"
    proc = subprocess.run(
        [sys.executable, "-m", "trainresults_dagster.pipes", *argv],
        capture_output=True, text=True, env=environ, timeout=120,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode in (2, 3), proc.stderr
    assert "Traceback" not in proc.stderr
    assert says in proc.stderr, proc.stderr
    assert lines and len(lines) <= 2, lines  # argparse: a usage line plus the error
    assert not list(tmp_path.iterdir())  # nothing written
