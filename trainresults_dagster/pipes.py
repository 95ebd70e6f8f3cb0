"""The job side of a training step that runs as a Ray Job (``RayJobTrainer``).

A Ray Job is another process on another machine: the ``ray.train.Result`` it gets from
``fit()`` never reaches the Dagster step, only its storage folder does. This module is what
the job's entrypoint calls to close that gap, through Dagster Pipes (``dagster-pipes``, the
small package with no Dagster in it; this is the only module that imports it):

* ``training_request()`` / ``run_config(**kwargs)``: where the step wants the run written
  (``RunConfig(name=..., storage_path=...)``), read from the job's environment
  (``TRAINRESULTS_STORAGE_URI`` and ``TRAINRESULTS_RUN_NAME``, set by ``RayJobTrainer``).
  A run written there is found even when the job dies before it can report.
* ``report_run_path(uri)``: for a job that picks its own location, say where it is *before*
  ``fit()``, so a job that dies mid-run can still be found.
* ``report_result(result)``: the one-line call after ``fit()``; sends the run's URI and a
  small summary to the step. Outside a Pipes session it warns and does nothing.
* ``python -m trainresults_dagster.pipes package.module:train --params '{...}'``: runs a
  ``TrainingPipeline`` entrypoint (``runs.entrypoint``) in the job and reports its result.

Storage credentials are the job's own (its environment, the node's identity): nothing here
sends or expects any.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import sys
import warnings
from typing import Any

import trainresults_dagster.storage as storage
from trainresults_dagster.runs.coerce import as_train_result
from trainresults_dagster.runs.entrypoint import Entrypoint, TrainingRequest
from trainresults_dagster.runs.result import TrainResult

#: Environment variables ``RayJobTrainer`` sets on the job (runtime_env ``env_vars``).
STORAGE_URI_ENV = "TRAINRESULTS_STORAGE_URI"
RUN_NAME_ENV = "TRAINRESULTS_RUN_NAME"
#: Key of the Pipes custom messages this module sends: ``{MESSAGE_KEY: kind, "uri": ...}``.
MESSAGE_KEY = "trainresults"
#: Final metrics sent with ``report_result`` at most (the full history is in storage).
MAX_SUMMARY_METRICS = 50

_PIPES_ENV = "DAGSTER_PIPES_CONTEXT"  # dagster_pipes.DAGSTER_PIPES_CONTEXT_ENV_VAR


def training_request() -> TrainingRequest:
    """Where the Dagster step wants this job's run, from the job's environment.

    Raises ``RuntimeError`` naming the missing variables when the job was not submitted by
    ``RayJobTrainer`` (then pass ``RunConfig(storage_path=..., name=...)`` yourself and call
    ``report_run_path``).
    """
    storage_uri = os.environ.get(STORAGE_URI_ENV, "").strip()
    run_name = os.environ.get(RUN_NAME_ENV, "").strip()
    if not storage_uri or not run_name:
        missing = [n for n, v in ((STORAGE_URI_ENV, storage_uri), (RUN_NAME_ENV, run_name)) if not v]
        raise RuntimeError(
            f"expected {missing} in the environment of a job submitted by RayJobTrainer; got "
            f"{STORAGE_URI_ENV}={storage_uri!r}, {RUN_NAME_ENV}={run_name!r}. Outside such a job, "
            "give RunConfig(storage_path=..., name=...) yourself."
        )
    storage.safe_name(run_name, what="run name", where=RUN_NAME_ENV)
    scheme, _ = storage.split_scheme(storage_uri)
    fs, path = storage.filesystem_for(storage_uri)  # the job's own credentials
    return TrainingRequest(
        run_name=run_name,
        storage_uri=storage_uri if scheme else path,
        storage_path=path,
        storage_filesystem=fs if scheme else None,
    )


def run_config(**kwargs: Any) -> Any:
    """``ray.train.RunConfig`` writing where the step looks, with a ``RunRecorder``.

    Same as ``training_request().run_config(**kwargs)``; ``name``, ``storage_path`` and
    ``storage_filesystem`` are reserved.
    """
    return training_request().run_config(**kwargs)


def report_run_path(path_or_uri: str | os.PathLike[str]) -> None:
    """Tell the step where the run folder will be, before ``fit()`` (a job that then dies
    is still read from there). Not needed with ``run_config()``."""
    fs, path = storage.filesystem_for(path_or_uri)
    _send({MESSAGE_KEY: "run_path", "uri": storage.to_uri(fs, path)})


def report_result(result: Any) -> TrainResult:
    """Send a finished run's location and summary to the Dagster step; return it as a
    ``TrainResult``.

    ``result`` is a ``ray.train.Result`` or a ``TrainResult`` (e.g. from ``trd.fit``, whose
    ``error`` may be set). The step reads the run back from storage, so only its URI and a
    small summary (status, final numeric metrics, checkpoint count, error type) travel.
    """
    train_result = as_train_result(result, what="the result passed to report_result")
    summary: dict[str, Any] = {
        "status": train_result.status,
        "num_checkpoints": len(train_result.checkpoints),
        "metrics": _numeric(train_result.metrics or {}),
        "error_type": train_result.error.error_type if train_result.error else None,
    }
    _send({MESSAGE_KEY: "result", "uri": train_result.uri, "summary": summary})
    return train_result


def _numeric(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_numeric(value, f"{name}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
        if len(out) >= MAX_SUMMARY_METRICS:
            break
    return dict(list(out.items())[:MAX_SUMMARY_METRICS])


def _send(payload: dict[str, Any]) -> None:
    context = _pipes_context()
    if context is None:
        warnings.warn(
            f"trainresults_dagster.pipes: not running under Dagster Pipes ({_PIPES_ENV} is not "
            f"set), so nothing was reported: {payload.get('uri')!r}",
            stacklevel=3,
        )
        return
    context.report_custom_message(payload)


def _pipes_context() -> Any:
    """The process's Pipes context, opened on first use and closed at exit; None outside a
    Pipes session (the import of dagster_pipes is skipped then)."""
    if _PIPES_ENV not in os.environ:
        return None
    from dagster_pipes import PipesContext, open_dagster_pipes

    if PipesContext.is_initialized():
        return PipesContext.get()
    context = open_dagster_pipes()

    def _close() -> None:
        if not context.is_closed:
            context.close()

    atexit.register(_close)
    return context


def main(argv: list[str] | None = None) -> int:
    """``python -m trainresults_dagster.pipes REF [--params JSON]``: run a training
    entrypoint in this job where the step asked, report what it trained.

    Exits 1 when the run failed (the step reads the failure from storage either way), so
    the Ray Job's status says what happened.
    """
    parser = argparse.ArgumentParser(prog="python -m trainresults_dagster.pipes")
    parser.add_argument("entrypoint", help="import path of the training function, 'pkg.mod:fn'")
    parser.add_argument("--params", default="{}", help="keyword arguments as a JSON object")
    args = parser.parse_args(argv)
    try:
        params = json.loads(args.params)
    except ValueError as exc:
        parser.error(f"expected --params to be a JSON object, got {args.params!r:.200} ({exc})")
    if not isinstance(params, dict):
        parser.error(f"expected --params to be a JSON object, got {args.params!r:.200}")
    try:  # bad input (no RayJobTrainer environment, a wrong reference or params): one line
        request = training_request()
        entrypoint = Entrypoint.load(args.entrypoint)
        entrypoint.check_params(params)
    except (RuntimeError, ValueError) as exc:
        print(f"python -m trainresults_dagster.pipes: {exc}", file=sys.stderr)
        return 3
    report_run_path(request.run_uri)
    result = entrypoint.run(request, params)
    report_result(result)
    if result.error is not None:
        print(f"training failed: {result.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
