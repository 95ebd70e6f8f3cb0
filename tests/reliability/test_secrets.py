"""Credentials never leak, checked across the whole pipeline at once (issue #9).

The IO manager (copy mode, and ``on_error="fail"`` on a failed run), the best-checkpoint
and promotion assets with the registry, and the JSON IO manager all run on S3 through
``dagster.materialize`` with a real on-disk ``DagsterInstance``, configured with the
sentinel secret key of ``tests/conftest.py``. Failures are provoked on purpose: a failed
training run, a rejected candidate, an endpoint that is down (through Dagster and through
the API), a lost compare-and-set. Then the sentinel is searched for in:

* every object of every bucket on the S3 server,
* every event of every run in the instance (materialisation and check metadata, failure
  payloads), the runs themselves and their job snapshots, and every file of the instance,
* every Python log record emitted meanwhile (DEBUG and up, botocore included) and
  everything written to stdout/stderr,
* every exception raised along the way, with its chained causes and traceback,
* the alert payload built from the failed run (``training_context``).
"""

# No "from __future__ import annotations": Dagster reads the real annotations of the assets.
import json
import logging
import traceback
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from conftest import SECRET_KEY
from dagster._serdes import serialize_value
from dagster_aws.s3 import S3Resource
from pydantic import Field
from reliability_tally import tally_fixture  # noqa: F401 - provides the tally fixture
from s3_proxy import S3Proxy

import trainresults_dagster as trd
from trainresults_dagster.dagster._wiring import s3_settings
from trainresults_dagster.errors import PromotionConflict
from trainresults_dagster.runs.result import training_context


class RunChoice(dg.Config):
    run_uri: str = Field(description="the Ray Train run to return")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception as exc:  # noqa: BLE001 - a record that cannot format is still text
            self.lines.append(f"{record.name} unformattable {record.msg!r} {record.args!r} {exc}")


class _LogCapture:
    """Every log record from every logger (DEBUG and up) while active."""

    def __init__(self) -> None:
        self.handler = _Records()
        self._saved: list[tuple[logging.Logger, int]] = []

    def __enter__(self) -> "_LogCapture":
        loggers = [logging.getLogger()] + [
            lg for lg in logging.Logger.manager.loggerDict.values()
            if isinstance(lg, logging.Logger) and not lg.propagate]
        for lg in loggers:
            self._saved.append((lg, lg.level))
            lg.addHandler(self.handler)
        logging.getLogger().setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: Any) -> None:
        for lg, level in self._saved:
            lg.removeHandler(self.handler)
            lg.setLevel(level)


def _exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc)


def _failure_texts(result: dg.ExecuteInProcessResult) -> list[str]:
    return [serialize_value(e.step_failure_data) for e in result.all_events
            if e.is_step_failure and e.step_failure_data is not None]


def _pipeline(fs: Any) -> list[dg.AssetsDefinition]:
    @dg.asset(name="train")
    def train(config: RunChoice) -> trd.TrainResult:
        return trd.TrainResult.from_path(config.run_uri, fs)

    best = trd.build_best_checkpoint_asset("best", result_asset=train, metric="loss", mode="min")
    champion = trd.build_promotion_asset("champion", model="clf", candidate_asset=best,
                                         metric="loss", mode="min")

    @dg.asset(io_manager_key=trd.JSON_IO_MANAGER_KEY)
    def deployed(champion: trd.ModelVersion) -> dict:
        return {"version": champion.version, "uri": champion.uri}

    return [train, best, champion, deployed]


def _resources(s3: S3Resource, buckets: dict[str, str]) -> dict[str, Any]:
    return {
        "io_manager": trd.RayTrainResultIOManager(
            base_path=f"s3://{buckets['io']}/results", s3=s3, checkpoints="copy",
            on_error="fail"),
        trd.JSON_IO_MANAGER_KEY: trd.JsonIOManager(base_path=f"s3://{buckets['values']}/v",
                                                   s3=s3),
        "checkpoint_registry": trd.CheckpointRegistry(
            base_path=f"s3://{buckets['registry']}/reg", s3=s3),
    }


def _materialize(assets: list, resources: dict, instance: dg.DagsterInstance, run_uri: str,
                 **kwargs: Any) -> dg.ExecuteInProcessResult:
    return dg.materialize(assets, resources=resources, instance=instance,
                          run_config={"ops": {"train": {"config": {"run_uri": run_uri}}}},
                          **kwargs)


def _all_objects(moto: Any) -> dict[str, bytes]:
    client = moto.client()
    out = {}
    for bucket in client.list_buckets()["Buckets"]:
        name = bucket["Name"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                body = client.get_object(Bucket=name, Key=obj["Key"])["Body"].read()
                out[f"s3://{name}/{obj['Key']}"] = body
    return out


def _hits(corpus: dict[str, str | bytes], secret: str = SECRET_KEY) -> list[str]:
    needle = secret.encode()
    return [where for where, text in corpus.items()
            if needle in (text if isinstance(text, bytes) else text.encode("utf-8", "replace"))]


def test_the_scanner_finds_a_planted_secret():
    corpus = {"a": "nothing", "b": f"key={SECRET_KEY};", "c": f"x{SECRET_KEY}".encode()}
    assert _hits(corpus) == ["b", "c"]


def test_no_credential_in_objects_events_logs_alerts_or_errors(moto, s3_runs, tmp_path,
                                                                capfd, tally):
    s3 = moto.s3_resource()
    assert s3.aws_secret_access_key == SECRET_KEY  # the sentinel is what we configure
    buckets = {k: moto.new_bucket(f"sec-{k}") for k in ("io", "values", "registry")}
    fs = s3_settings(s3).filesystem()
    assets = _pipeline(fs)
    resources = _resources(s3, buckets)
    errors: dict[str, str] = {}
    alerts: dict[str, str] = {}
    run_ids: list[str] = []

    (tmp_path / "dg").mkdir()
    dead_proxy = S3Proxy(moto.endpoint_url)
    dead_proxy.stop()
    dead = S3Resource(endpoint_url=dead_proxy.endpoint_url, region_name=moto.region,
                      aws_access_key_id=moto.access_key,
                      aws_secret_access_key=SECRET_KEY, max_attempts=2)

    with _LogCapture() as logs, dg.instance_for_test(temp_dir=str(tmp_path / "dg")) as instance:
        # A champion, then a candidate the gate judges (promoted or rejected).
        for run in ("success", "custom_names"):
            result = _materialize(assets, resources, instance, s3_runs[run])
            assert result.success, _failure_texts(result)
            run_ids.append(result.run_id)
        registry = resources["checkpoint_registry"]
        assert registry.get("clf") is not None

        # A failed Ray run: the IO manager stores it and fails the step with its context.
        failed = _materialize(assets, resources, instance, s3_runs["failure"],
                              raise_on_error=False)
        assert not failed.success
        run_ids.append(failed.run_id)
        errors.update({f"failed run step {i}": t for i, t in enumerate(_failure_texts(failed))})
        failed_result = trd.TrainResult.from_path(s3_runs["failure"], fs)
        assert failed_result.error is not None
        alerts["training_context"] = json.dumps(training_context(failed_result), default=str)

        # The endpoint is down: through Dagster (events and the raised error) ...
        down = _resources(dead, buckets)
        result = _materialize(assets, down, instance, s3_runs["success"], raise_on_error=False)
        assert not result.success
        run_ids.append(result.run_id)
        errors.update({f"endpoint down step {i}": t
                       for i, t in enumerate(_failure_texts(result))})
        with pytest.raises(Exception) as info:  # noqa: PT011 - any error; its text is scanned
            _materialize(assets, down, instance, s3_runs["success"])
        errors["endpoint down raised"] = _exception_text(info.value)
        # ... and through the API.
        dead_registry = down["checkpoint_registry"]
        for name, call in {
            "register": lambda: dead_registry.register(
                "clf", registry.get("clf").checkpoint, metrics={"loss": 1.0}),
            "get": lambda: dead_registry.get("clf"),
            "history": lambda: dead_registry.history("clf"),
            "load": lambda: trd.TrainResult.from_path(s3_runs["success"],
                                                      s3_settings(dead).filesystem()),
        }.items():
            with pytest.raises(OSError) as info:
                call()
            errors[f"endpoint down {name}"] = _exception_text(info.value)
        # A lost compare-and-set.
        with pytest.raises(PromotionConflict) as info:
            registry.promote("clf", 1, expected_version=None)
        errors["promotion conflict"] = _exception_text(info.value)

        events: dict[str, str] = {}
        for run_id in run_ids + [r.run_id for r in instance.get_runs()]:
            run = instance.get_run_by_id(run_id)
            events[f"run {run_id}"] = serialize_value(run)
            snapshot = instance.get_job_snapshot(run.job_snapshot_id)
            events[f"job snapshot of {run_id}"] = serialize_value(snapshot)
            for i, entry in enumerate(instance.all_logs(run_id)):
                events[f"event {i} of {run_id}"] = serialize_value(entry)
        instance_files = {str(p): p.read_bytes() for p in Path(tmp_path / "dg").rglob("*")
                          if p.is_file()}

    out, err = capfd.readouterr()
    objects = _all_objects(moto)
    log_lines = {f"log {i}": line for i, line in enumerate(logs.handler.lines)}
    # The scans see real material: metadata, failures, records.
    assert sum(o.endswith("manifest.json") for o in objects) >= 2
    assert any("versions/" in o for o in objects) and any("/v/" in o for o in objects)
    assert any("ASSET_MATERIALIZATION" in e for e in events.values())
    assert any("ray_run_failed" in t or "ValueError" in t for t in errors.values())
    assert len(log_lines) > 50 and len(errors) >= 8

    leaks = {
        "stored objects": _hits(objects),
        "instance events, runs and snapshots": _hits(events),
        "instance files": _hits(instance_files),
        "log records": _hits(log_lines),
        "stdout/stderr": _hits({"stdout": out, "stderr": err}),
        "exceptions": _hits(errors),
        "alert payloads": _hits(alerts),
    }
    assert leaks == {k: [] for k in leaks}
    tally["secret scan: stored objects"] += len(objects)
    tally["secret scan: instance events, runs, snapshots"] += len(events)
    tally["secret scan: log records"] += len(log_lines)
    tally["secret scan: exceptions"] += len(errors)
