"""``TrainResultGrid`` on a real Ray Tune sweep (``tune_jobs``: 4 trials, one raising, one
reporting NaN, checkpoints with retention), read locally and from the moto S3 server, against
what Ray's own ``ResultGrid(ExperimentAnalysis(path))`` gives for the same folder."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import tune_jobs

import trainresults_dagster as trd
from trainresults_dagster import storage
from trainresults_dagster.runs.experiment import read_experiment_state
from trainresults_dagster.runs.metrics import flatten_metrics

SCOPES = ["last", "avg", "last-5-avg", "last-10-avg", "all"]


def same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN (a NaN loss is data here)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def by_kind(grid: trd.TrainResultGrid) -> dict[str, trd.TrialResult]:
    return {t.config["kind"]: t for t in grid}


@pytest.fixture(scope="module")
def grid(tune_sweep) -> trd.TrainResultGrid:
    return trd.TrainResultGrid.from_path(tune_sweep.path, mode="min")


@pytest.fixture(scope="module")
def ray_grid(tune_sweep) -> Any:
    return tune_sweep.ray_grid()


# ------------------------------------------------------------------------ agreement with Ray


def test_every_trial_agrees_with_rays_result_grid(grid, ray_grid):
    assert len(grid) == len(ray_grid) == 4
    ours = {t.path: t for t in grid}
    for theirs in ray_grid:
        trial = ours[theirs.path]
        assert trial.trial_id == theirs.metrics["trial_id"]
        assert same(trial.metrics, theirs.metrics)  # the state's last result, NaN kept
        assert trial.config == theirs.config
        assert trial.checkpoint.path == theirs.checkpoint.path  # Ray's latest
        # Ray keeps num_to_keep of them as best_checkpoints (ordering needs the pickled
        # CheckpointConfig); we list every folder retention left, in report order, with
        # the same metrics.
        theirs_best = {c.path: m for c, m in theirs.best_checkpoints}
        mine = {c.path: m for c, m in trial.best_checkpoints}
        assert set(theirs_best) | {theirs.checkpoint.path} == set(mine)
        for path, metrics in theirs_best.items():
            assert same(mine[path], metrics)
        names = [c.name for c in trial.checkpoints]
        assert names == sorted(names)
        # Errors: Ray's is the unpickled RayTaskError(ValueError); ours is parsed from text.
        assert (trial.error is None) == (theirs.error is None)
        if theirs.error is not None:
            assert trial.error.error_type == type(theirs.error.cause).__name__ == "ValueError"
            assert trial.error.message == str(theirs.error.cause)
            assert "\x1b[" not in trial.error.traceback  # terminal colours stripped
            assert isinstance(trial.error, Exception)
        # History: every report, metric-only ones too, flattened with "/" as Ray's.
        frame, ray_frame = trial.metrics_dataframe, theirs.metrics_dataframe
        assert len(frame) == len(ray_frame) == (3 if theirs.error else 4)
        assert set(ray_frame.columns) <= set(frame.columns)
        for column in ray_frame.columns:
            assert same(frame[column].tolist(), ray_frame[column].tolist()), column


def test_status_and_counts(grid, ray_grid):
    kinds = by_kind(grid)
    assert {k: t.trial_status for k, t in kinds.items()} == {
        "good_a": "TERMINATED", "raise": "ERROR", "nan": "TERMINATED", "good_b": "TERMINATED"}
    assert kinds["raise"].status == "failed" and kinds["good_a"].status == "finished"
    assert grid.num_errors == ray_grid.num_errors == 1
    assert grid.num_terminated == ray_grid.num_terminated == 3
    assert grid.succeeded and grid.finished
    assert [e.error_type for e in grid.errors] == ["ValueError"]
    assert grid.metric == "loss" and grid.mode == "min"  # metric from the state, mode given
    assert grid.get_trial(kinds["nan"].trial_id) is kinds["nan"]


def test_get_best_result_agrees_with_ray_where_ray_is_right(grid, ray_grid):
    disagreements = set()
    for metric, mode in [("loss", "min"), ("eval/acc", "max"), ("step", "max")]:
        for scope in SCOPES:
            try:
                theirs = ray_grid.get_best_result(metric, mode, scope).metrics["trial_id"]
            except RuntimeError:
                theirs = None
            try:
                mine = grid.get_best_result(metric, mode, scope).trial_id
            except trd.NoEligibleTrialError:
                mine = None
            if mine != theirs:
                disagreements.add((metric, mode, scope))
    # The one case where Ray is wrong: the NaN trial's running minimum is NaN-poisoned
    # (losses 0.3, NaN, 0.2, NaN give min = NaN), so Ray drops a trial whose best was 0.2.
    assert disagreements == {("loss", "min", "all")}
    nan_trial = by_kind(grid)["nan"]
    ray_nan = next(t for t in ray_grid._experiment_analysis.trials
                   if t.trial_id == nan_trial.trial_id)
    assert math.isnan(ray_nan.metric_analysis["loss"]["min"])
    assert grid.get_best_result("loss", "min", "all") is nan_trial


def test_ray_picks_nan_where_we_never_do(grid, tune_sweep):
    from ray.tune import ExperimentAnalysis, ResultGrid

    nan_id = by_kind(grid)["nan"].trial_id
    analysis = ExperimentAnalysis(tune_sweep.path)
    analysis.trials.sort(key=lambda t: t.trial_id != nan_id)  # the NaN trial first
    theirs = ResultGrid(analysis).get_best_result("loss", "min", "last", filter_nan_and_inf=False)
    assert math.isnan(theirs.metrics["loss"])
    assert grid.get_best_result("loss", "min").config["kind"] == "good_b"
    with pytest.raises(ValueError, match="filter_nan_and_inf=False is not supported"):
        grid.get_best_result("loss", "min", "last", False)
    # With a single trial Ray returns it unchecked; we check.
    alone = trd.TrainResultGrid(path=grid.path, trials=[by_kind(grid)["nan"]])
    with pytest.raises(trd.NoEligibleTrialError, match="scope='last'") as info:
        alone.get_best_result("loss", "min")
    assert isinstance(info.value, RuntimeError)  # what Ray raises, for except RuntimeError


def test_get_dataframe_agrees_with_ray(grid, ray_grid):
    for args in [(), ("loss", "min"), ("eval/acc", "max")]:
        mine = grid.get_dataframe(*args).set_index("trial_id")
        theirs = ray_grid.get_dataframe(*args).set_index("trial_id")
        assert set(theirs.columns) <= set(mine.columns)
        for column in theirs.columns:
            for trial_id in theirs.index:
                assert same(mine.at[trial_id, column], theirs.at[trial_id, column]), (args, column)


def test_best_checkpoint_across_trials_is_nan_safe(grid):
    best = grid.best_checkpoint()  # the objective: loss (min), every checkpoint
    kind, loss = tune_jobs.BEST_OVERALL
    assert (best.trial.config["kind"], best.metrics["loss"]) == (kind, loss)
    assert best.checkpoint.get_metadata() == {"step": 2}
    with best.checkpoint.as_directory() as d:
        assert json.load(open(os.path.join(d, "model.json")))["kind"] == kind
    last = grid.best_checkpoint(scope="last")  # each trial's final model only
    assert (last.trial.config["kind"], last.metrics["loss"]) == tune_jobs.BEST_LAST
    assert trd.select_best_checkpoint(grid, "loss", "min") == (best.checkpoint, best.metrics)
    assert grid.get_best_checkpoint(scope="last") == last.checkpoint
    # Without the NaN trial: good_b's 0.35 beats the raising trial's 0.4.
    nan_out = trd.TrainResultGrid(path=grid.path, trials=[t for t in grid if t.config["kind"] != "nan"])
    assert nan_out.best_checkpoint("loss", "min").metrics["loss"] == 0.35
    assert nan_out.best_checkpoint("eval/acc", "max").trial.config["kind"] == "good_b"
    with pytest.raises(trd.NoEligibleCheckpointError, match="'nope'") as info:
        grid.best_checkpoint("nope", "min")
    assert f"{by_kind(grid)['raise'].trial_id}/checkpoint_000000: missing" in str(info.value)


def test_errored_trials_can_be_left_out(grid):
    raise_trial = by_kind(grid)["raise"]
    only_bad = trd.TrainResultGrid(path=grid.path, trials=[raise_trial, by_kind(grid)["good_a"]])
    assert only_bad.best_checkpoint("loss", "min").trial is raise_trial  # 0.4 < 0.5
    assert only_bad.best_checkpoint("loss", "min", include_errored=False).metrics["loss"] == 0.5
    assert only_bad.get_best_result("loss", "min", include_errored=False).config["kind"] == "good_a"


def test_objective_is_required_and_validated(tune_sweep):
    plain = trd.TrainResultGrid.from_path(tune_sweep.path)  # mode is only pickled in storage
    assert plain.metric == "loss" and plain.mode is None
    with pytest.raises(ValueError, match="mode=None"):
        plain.get_best_result()
    assert plain.get_best_result(mode="min").config["kind"] == "good_b"
    with pytest.raises(ValueError, match="mode"):
        trd.TrainResultGrid.from_path(tune_sweep.path, mode="lowest")  # type: ignore[arg-type]
    assert trd.TuneResult is trd.TrainResultGrid


# ------------------------------------------------------------------------ the trials table


def test_trials_table(grid):
    table = grid.trials_table
    assert list(table.columns[:7]) == ["trial_id", "status", "error_type", "error",
                                       "num_checkpoints", "num_failures", "uri"]
    assert list(table["trial_id"]) == [t.trial_id for t in grid]
    rows = table.set_index("trial_id")
    kinds = by_kind(grid)
    raised = rows.loc[kinds["raise"].trial_id]
    assert (raised["status"], raised["error_type"]) == ("ERROR", "ValueError")
    assert raised["error"] == "boom in trial kind=raise at step=3"
    assert raised["num_failures"] == 1
    assert pd.isna(rows.loc[kinds["good_a"].trial_id, "error"])
    assert {"config/kind", "config/lr", "config/model/width", "config/model/act"} <= set(table)
    assert "config" not in table.columns  # the config is flattened, not repeated as a dict
    assert math.isnan(rows.loc[kinds["nan"].trial_id, "loss"])
    assert rows.loc[kinds["good_b"].trial_id, "eval/acc"] == kinds["good_b"].metrics["eval"]["acc"]
    for trial in grid:
        on_disk = [d for d in os.listdir(trial.path) if d.startswith("checkpoint_")]
        assert rows.loc[trial.trial_id, "num_checkpoints"] == len(on_disk)
        assert rows.loc[trial.trial_id, "uri"] == trial.uri


# ------------------------------------------------------------------------ from_ray


@pytest.mark.ray_live  # the lane that ran Tuner.fit() holds its live ResultGrid
def test_from_ray_reads_storage_and_keeps_the_objective(tune_sweep, grid, ray_grid):
    converted = trd.TrainResultGrid.from_ray(ray_grid)
    assert (converted.metric, converted.mode) == ("loss", "min")
    assert [t.trial_id for t in converted] == [t.trial_id for t in grid]
    assert [len(t.history) for t in converted] == [len(t.history) for t in grid]
    assert sorted(len(t.history) for t in grid) == [3, 4, 4, 4]  # the raising trial: 3
    if tune_sweep.live is not None:  # the ResultGrid Tuner.fit() returned
        live = trd.TrainResultGrid.from_ray(tune_sweep.live)
        assert (live.metric, live.mode) == ("loss", "min")
        assert {t.trial_id for t in live} == {t.trial_id for t in grid}
        assert live.best_checkpoint().checkpoint == grid.best_checkpoint().checkpoint


def test_from_ray_without_storage_uses_the_live_objects(ray_grid, grid):
    converted = trd.TrainResultGrid.from_ray(ray_grid, read_storage=False)
    kinds = by_kind(converted)
    assert set(kinds) == set(tune_jobs.KINDS)
    assert kinds["raise"].trial_status == "ERROR"
    assert (kinds["raise"].error.error_type, kinds["raise"].error.message) == (
        "ValueError", "boom in trial kind=raise at step=3")
    assert len(kinds["good_a"].history) == 4  # from Ray's metrics_dataframe
    best = converted.best_checkpoint(scope="last")
    assert best.checkpoint == grid.best_checkpoint(scope="last").checkpoint


# ------------------------------------------------------------------------ S3


def test_s3_reads_the_same_as_local(moto, s3_sweep, grid):
    remote = trd.TrainResultGrid.from_path(s3_sweep, moto.filesystem(), mode="min")
    assert remote.uri == s3_sweep
    for mine, theirs in zip(remote, grid, strict=True):
        assert mine.trial_id == theirs.trial_id and mine.trial_status == theirs.trial_status
        assert mine.uri == f"{s3_sweep}/{os.path.basename(theirs.path)}"
        assert same(mine.metrics, theirs.metrics) and mine.config == theirs.config
        assert [c.name for c in mine.checkpoints] == [c.name for c in theirs.checkpoints]
        assert (mine.error is None) == (theirs.error is None)
        assert mine.metrics_dataframe.equals(theirs.metrics_dataframe)
    assert remote.trials_table.drop(columns="uri").equals(grid.trials_table.drop(columns="uri"))
    best = remote.best_checkpoint()
    assert best.checkpoint.uri.startswith(s3_sweep) and best.metrics["loss"] == 0.2
    with best.checkpoint.as_directory() as d:
        assert os.path.isfile(os.path.join(d, "model.json"))


def test_s3_requests_are_constant_per_trial_not_per_checkpoint(moto, tune_sweep, tmp_path):
    fs = moto.filesystem()
    bucket = moto.new_bucket("reqs")
    few = moto.upload_dir(tune_sweep.path, bucket, "few")
    many_dir = tmp_path / "many"
    shutil.copytree(tune_sweep.path, many_dir)
    trial = next(d for d in many_dir.iterdir() if d.is_dir())
    source = next(d for d in trial.iterdir() if d.name.startswith("checkpoint_"))
    for i in range(10, 40):  # 30 more checkpoint folders in one trial
        shutil.copytree(source, trial / f"checkpoint_{i:06d}")
    many = moto.upload_dir(str(many_dir), bucket, "many")

    def requests(uri: str) -> tuple[int, Any]:
        before = len(moto.request_log())
        grid = trd.TrainResultGrid.from_path(uri, fs)
        import time

        time.sleep(0.3)  # moto logs a request after answering it
        return len(moto.request_log()) - before, grid

    n_few, g_few = requests(few)
    n_many, g_many = requests(many)
    assert sum(len(t.checkpoints) for t in g_many) == sum(len(t.checkpoints) for t in g_few) + 30
    assert n_many == n_few
    # One LIST + the state for the experiment, a LIST + result.json per trial, and the
    # errored trial's error.txt (each read is a HEAD and a GET).
    assert n_few <= 2 + 2 * 4 + 2 * 4 + 2, n_few


# ------------------------------------------------------------------------ safety


TRAP_TEMPLATE = b"cos\nsystem\n(S'touch %s'\ntR."  # a pickle that runs a shell command


def test_never_unpickles_anything(tune_sweep, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(tune_sweep.path, copy)
    trap = tmp_path / "PWNED"
    payload = TRAP_TEMPLATE % str(trap).encode()
    for path in copy.rglob("*"):
        if path.suffix == ".pkl" or path.name.startswith("basic-variant-state"):
            path.write_bytes(payload)
    (state_path,) = copy.glob("experiment_state-*.json")
    state = json.loads(state_path.read_text())
    state["runner_data"]["_stopper"] = {"_type": "CLOUDPICKLE_FALLBACK", "value": payload.hex()}
    trial_json = json.loads(state["trial_data"][0][0])
    trial_json["storage"] = {"_type": "CLOUDPICKLE_FALLBACK", "value": payload.hex()}
    state["trial_data"][0][0] = json.dumps(trial_json)
    state_path.write_text(json.dumps(state))
    grid = trd.TrainResultGrid.from_path(copy, mode="min")
    assert not trap.exists()
    assert len(grid) == 4 and grid.num_errors == 1
    assert grid.best_checkpoint().metrics["loss"] == 0.2
    parsed = read_experiment_state(*storage.resolve(str(copy)))
    assert parsed is not None and parsed.trials[0].trial_id == grid[0].trial_id


def _edit_state(tune_sweep, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "sweep"
    shutil.copytree(tune_sweep.path, copy)
    (state_path,) = copy.glob("experiment_state-*.json")
    state = json.loads(state_path.read_text())
    pairs = [[json.loads(t), json.loads(m)] for t, m in state["trial_data"]]
    edit(pairs)
    state["trial_data"] = [[json.dumps(t), json.dumps(m)] for t, m in pairs]
    state_path.write_text(json.dumps(state))
    return copy


def test_a_trial_folder_outside_the_experiment_is_refused(tune_sweep, tmp_path):
    def escape(pairs):
        pairs[0][0]["relative_logdir"] = "../../etc"

    copy = _edit_state(tune_sweep, tmp_path, escape)
    with pytest.raises(trd.UnsafePathError, match="relative_logdir"):
        trd.TrainResultGrid.from_path(copy)


def test_pending_trial_without_a_folder_and_nested_dirnames(tune_sweep, tmp_path):
    def edit(pairs):
        pairs[0][0]["relative_logdir"] = None  # not started yet
        pairs[0][0]["status"] = "PENDING"
        pairs[0][1]["last_result"] = {}

    copy = _edit_state(tune_sweep, tmp_path, edit)
    grid = trd.TrainResultGrid.from_path(copy, mode="min")
    pending = grid[0]
    assert pending.trial_status == "PENDING" and pending.checkpoints == [] and pending.error is None
    assert pending.status == "unknown" and not grid.finished
    assert grid.trials_table.loc[0, "num_checkpoints"] == 0
    assert grid.best_checkpoint().metrics["loss"] == 0.2


def test_corrupt_or_missing_state_fails_clearly(tune_sweep, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(tune_sweep.path, copy)
    (state_path,) = copy.glob("experiment_state-*.json")
    state_path.write_text(json.dumps({"trial_data": [["{not json", "{}"]]}))
    with pytest.raises(trd.CorruptRunError, match="experiment_state"):
        trd.TrainResultGrid.from_path(copy)
    state_path.write_text("{half")
    with pytest.raises(trd.CorruptRunError, match="experiment state"):
        trd.TrainResultGrid.from_path(copy)
    state_path.unlink()
    with pytest.raises(trd.NotARunDirectoryError, match="experiment_state"):
        trd.TrainResultGrid.from_path(copy)
    with pytest.raises(trd.RunNotFoundError):
        trd.TrainResultGrid.from_path(tmp_path / "nothing-here")


def test_newest_state_file_wins_as_in_ray(tune_sweep, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(tune_sweep.path, copy)
    older = copy / "experiment_state-2000-01-01_00-00-00.json"
    older.write_text('{"trial_data": []}')
    assert len(trd.TrainResultGrid.from_path(copy)) == 4
    newer = copy / "experiment_state-2999-01-01_00-00-00.json"
    newer.write_text('{"trial_data": []}')  # a restore writes a new file; Ray reads the newest
    assert len(trd.TrainResultGrid.from_path(copy)) == 0


def test_flattening_matches_rays_nested_names(grid):
    trial = by_kind(grid)["good_b"]
    assert "eval/acc" in trial.metrics_dataframe.columns
    assert flatten_metrics(trial.metrics)["eval/acc"] == trial.metrics_dataframe["eval/acc"].iloc[-1]
    assert isinstance(grid.trials_table, pd.DataFrame)


def test_train_run_inside_a_trial_gives_the_trial_its_checkpoints(tune_sweep, tmp_path):
    """Ray 2.60's way to tune a Train V2 trainer: the trial calls trainer.fit() with
    TuneReportCallback, so Tune keeps no checkpoint and each report names the Train run's
    checkpoint in checkpoint_path (layout as Ray writes it: checkpoint_dir_name null)."""
    copy = tmp_path / "sweep"
    shutil.copytree(tune_sweep.path, copy)
    trial_dir = next(d for d in copy.iterdir() if "kind=good_b" in d.name)
    train_run = tmp_path / "train_runs" / "train-good_b"
    train_run.mkdir(parents=True)
    rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
    for row in rows:
        name = row["checkpoint_dir_name"]
        row["checkpoint_dir_name"] = None
        row.pop("should_checkpoint", None)
        if name and (trial_dir / name).is_dir():
            target = train_run / f"checkpoint_2026-12-02_00-00-0{row['step']}.000000"
            shutil.move(trial_dir / name, target)
            row["checkpoint_path"] = str(target)
        elif name:  # evicted by Train's own retention: named by a report, gone from storage
            row["checkpoint_path"] = str(train_run / "checkpoint_2026-12-02_00-00-00.000000")
    (trial_dir / "result.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert not [d for d in trial_dir.iterdir() if d.name.startswith("checkpoint_")]

    grid = trd.TrainResultGrid.from_path(copy, mode="min")
    trial = by_kind(grid)["good_b"]
    assert [c.path for c in trial.checkpoints] == sorted(str(p) for p in train_run.iterdir())
    assert trial.checkpoint.path == str(train_run / "checkpoint_2026-12-02_00-00-03.000000")
    assert [m["loss"] for _, m in trial.checkpoints_with_metrics()] == [0.45, 0.35]
    assert grid.best_checkpoint(scope="last").checkpoint == trial.checkpoint
    assert grid.trials_table.set_index("trial_id").at[trial.trial_id, "num_checkpoints"] == 2
