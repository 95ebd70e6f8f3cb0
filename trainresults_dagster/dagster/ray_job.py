"""Training as a Ray Job on an existing cluster: ``RayJobTrainer`` and its asset factory.

Ray's production path for training is a Ray Job (the Job Submission API on the dashboard),
not ``fit()`` in the Dagster step. ``RayJobTrainer.run`` submits the job through
dagster-ray's ``PipesRayJobClient`` (logs streamed into the step, Dagster Pipes messages
carried back), stops the job (retried) when the Dagster run is terminated, and returns a
``TrainResult`` read from storage, which ``RayTrainResultIOManager`` materialises like any
other. The call chain, once:

1. the job gets ``RAY_TRAIN_CALLBACKS=...RunRecorder`` (merged into the user's
   ``env_vars``) and ``TRAINRESULTS_STORAGE_URI`` / ``TRAINRESULTS_RUN_NAME``, the place
   ``trainresults_dagster.pipes.run_config()`` writes the run to;
2. the job reports its run (``pipes.report_run_path`` before ``fit()``,
   ``pipes.report_result`` after) as Pipes custom messages;
3. at the job's end (or at our own deadline: dagster-ray's ``timeout`` is not enforced, so
   a job past ``timeout_seconds`` is stopped here), the run is read back with
   ``TrainResult.from_path``. A job that failed yields a result whose ``error`` is the
   ``RunRecorder``'s record (per-rank failures) or, when training never started, the job's
   status, message and last log lines: ``on_error`` and the failure sensors see the same
   thing as for in-process training.

Secrets: the dashboard token travels only in the HTTP ``Authorization`` header. A job's
entrypoint, ``runtime_env`` and metadata are readable by anyone with the dashboard, so
nothing secret is put there; storage credentials are the job's (cluster's) own.
"""

# No "from __future__ import annotations": Dagster inspects the real annotations of the
# asset function (its context parameter and return type).
import copy
import functools
import json
import shlex
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import dagster as dg
from pydantic import Field, field_validator

import trainresults_dagster.storage as storage
from trainresults_dagster.dagster._wiring import StoreSettings
from trainresults_dagster.dagster.sensors import TRAINING_TAG
from trainresults_dagster.errors import NotARunDirectoryError, RunNotFoundError, TrainResultsError
from trainresults_dagster.pipes import MESSAGE_KEY, RUN_NAME_ENV, STORAGE_URI_ENV
from trainresults_dagster.runs.entrypoint import Entrypoint
from trainresults_dagster.runs.failure import TrainingError
from trainresults_dagster.runs.result import TrainResult

RECORDER = "trainresults_dagster.ray.RunRecorder"
CALLBACKS_ENV = "RAY_TRAIN_CALLBACKS"
#: Pipes protocol lines are not log lines worth showing in a failure.
_PIPES_MARK = "__dagster_pipes_version"
_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
#: Job log lines quoted in the error message itself (alerts show it); the rest in traceback.
_MESSAGE_LOG_LINES = 10


class RayJobTrainer(dg.ConfigurableResource):
    """Submits training entrypoints as Ray Jobs to an existing cluster and returns what
    they trained as a ``TrainResult`` (see the module docstring for the call chain)."""

    address: str | None = Field(
        default=None,
        description="Ray dashboard HTTP address, e.g. 'http://head:8265'. None: the "
        "RAY_ADDRESS environment variable, as `ray job submit` does.",
    )
    auth_token: str | None = Field(
        default=None,
        repr=False,
        description="Ray dashboard auth token (Ray 2.60 token auth), sent only as the "
        "'Authorization: Bearer' header. Give it as dg.EnvVar; it is never logged.",
    )
    headers: dict[str, str] = Field(
        default_factory=dict, repr=False,
        description="Extra HTTP headers for the dashboard (e.g. a proxy's); give secret "
        "values as dg.EnvVar.",
    )
    verify: bool = Field(default=True, description="Verify the dashboard's TLS certificate.")
    runtime_env: dict[str, Any] = Field(
        default_factory=dict,
        description="Ray runtime_env for every job (working_dir, pip, py_modules, env_vars...). "
        "Visible on the dashboard: no secrets. The cluster needs trainresults_dagster "
        "importable (cluster image, or 'pip'/'py_modules' here).",
    )
    entrypoint_num_cpus: float | None = Field(
        default=None, description="CPUs reserved for the job's driver (Ray's default: none)."
    )
    timeout_seconds: float = Field(
        default=6 * 3600.0,
        description="Wall-clock limit of a job; past it the job is stopped and the step gets a "
        "failed TrainResult saying so.",
    )
    poll_interval_seconds: float = Field(
        default=1.0, description="How often the job's status is polled."
    )
    stop_wait_seconds: float = Field(
        default=60.0,
        description="How long to wait for a stopped job (timeout, cancelled Dagster run) to "
        "reach STOPPED before giving up on it.",
    )
    log_tail_lines: int = Field(
        default=60, description="Job log lines kept in the error of a job that failed."
    )

    @field_validator("timeout_seconds", "poll_interval_seconds", "stop_wait_seconds")
    @classmethod
    def _positive(cls, value: float) -> float:
        # A zero or negative interval would spin or stop every job at once; say so at load.
        if not value > 0:
            raise ValueError(f"expected a positive number of seconds, got {value!r}")
        return value

    @field_validator("runtime_env")
    @classmethod
    def _env_vars_are_strings(cls, value: dict[str, Any]) -> dict[str, Any]:
        # Ray rejects non-string env_vars only once the job is submitted; fail at load.
        env_vars = value.get("env_vars", {})
        if not isinstance(env_vars, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()
        ):
            raise ValueError(
                f"expected runtime_env['env_vars'] to map strings to strings, got {env_vars!r:.200}"
            )
        return value

    # ------------------------------------------------------------------ helpers
    def _http_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.auth_token:
            headers["Authorization"] = f"Bearer {self.auth_token}"
        return headers

    def submission_client(self) -> Any:
        """A ``ray.job_submission.JobSubmissionClient`` for the configured dashboard."""
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(
            address=self.address, headers=self._http_headers(), verify=self.verify
        )

    def job_runtime_env(
        self, storage_uri: str, run_name: str, runtime_env: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """The resource's ``runtime_env`` + the call's, with the recorder and the run's
        location added to ``env_vars`` (user values kept; a user's callbacks kept too)."""
        env = copy.deepcopy(self.runtime_env)
        extra = copy.deepcopy(dict(runtime_env or {}))
        env_vars = {**env.get("env_vars", {}), **extra.pop("env_vars", {})}
        env.update(extra)
        callbacks = [c.strip() for c in env_vars.get(CALLBACKS_ENV, "").split(",") if c.strip()]
        if RECORDER not in callbacks:
            callbacks.insert(0, RECORDER)
        env_vars[CALLBACKS_ENV] = ",".join(callbacks)
        env_vars[STORAGE_URI_ENV] = storage_uri
        env_vars[RUN_NAME_ENV] = run_name
        env["env_vars"] = env_vars
        return env

    # ---------------------------------------------------------------------- run
    def run(
        self,
        context: dg.AssetExecutionContext,
        *,
        entrypoint: str,
        storage_uri: str,
        run_name: str | None = None,
        runtime_env: Mapping[str, Any] | None = None,
        s3_key: str | None = None,
        gcs_key: str | None = None,
        azure_key: str | None = None,
    ) -> TrainResult:
        """Run shell command ``entrypoint`` as a Ray Job; return its run as a ``TrainResult``.

        ``storage_uri`` is the Ray Train storage path the job should write to (local folder
        shared with the cluster, or ``s3://...``), ``run_name`` the run folder (default:
        ``<asset>-<Dagster run id prefix>``). ``s3_key``, ``gcs_key`` and ``azure_key`` name the
        ``S3Resource``/``GcsResource``/``AzureResource`` this step reads the run with (default:
        each provider's standard chain); the job uses its own (the cluster's) credentials.
        A failed, stopped or timed-out job returns a result with ``error`` set; a job that
        could not be submitted raises.
        """
        from dagster._core.errors import DagsterExecutionInterruptedError

        try:
            client_class = _client_class()
        except ImportError as exc:
            raise dg.Failure(
                "RayJobTrainer needs dagster-ray and ray where Dagster runs: "
                f"pip install 'trainresults-dagster[jobs,ray]' ({type(exc).__name__}: {exc})"
            ) from exc

        if not storage.split_scheme(storage_uri)[0]:  # the job's cwd is not ours
            storage_uri = storage.resolve(storage_uri)[1]
        run_name = run_name or _default_run_name(context)
        storage.safe_name(run_name, what="run name", where=storage_uri)
        default_uri = f"{storage_uri.rstrip('/')}/{run_name}"
        submission_id = f"trd-{run_name}-{uuid.uuid4().hex[:6]}"
        params: dict[str, Any] = {
            "entrypoint": entrypoint,
            "runtime_env": self.job_runtime_env(storage_uri, run_name, runtime_env),
            "submission_id": submission_id,
            "metadata": {"trainresults/run_uri": default_uri},
        }
        if self.entrypoint_num_cpus is not None:
            params["entrypoint_num_cpus"] = self.entrypoint_num_cpus
        # A fresh client and reader per job: dagster-ray's reader keeps a `session_closed`
        # flag set after its first session, so a reused one drops the next job's messages.
        reader = _reader_class()(job_submission_client_kwargs={
            "headers": self._http_headers(), "verify": self.verify})
        client = client_class(
            address=self.address, headers=self._http_headers(), verify=self.verify,
            message_reader=reader, forward_termination=True,
            timeout=self.timeout_seconds, poll_interval=self.poll_interval_seconds,
        )
        interrupted = threading.Event()

        def stop_interrupted(job_id: str) -> None:
            interrupted.set()
            status = self._stop_until_terminal(job_id, context)
            context.log.warning(f"Dagster run interrupted: Ray Job {job_id} is {status}")

        client.stop_job = stop_interrupted
        context.log.info(f"submitting Ray Job {submission_id}: {entrypoint}")
        started = time.monotonic()
        timed_out = threading.Event()
        try:
            with self._deadline(submission_id, timed_out, context), _plain_return(context):
                client.run(context=context, submit_job_params=params)  # type: ignore[arg-type]
        except DagsterExecutionInterruptedError:
            raise  # the job was stopped inside the session (stop_interrupted)
        except Exception as exc:
            if interrupted.is_set():
                # Closing the Pipes session failed after the interruption (a job that would
                # not stop keeps its log stream open): the interruption stays the outcome.
                context.log.error(f"Ray Job {submission_id} after the interruption: "
                                  f"{type(exc).__name__}: {exc}")
                raise DagsterExecutionInterruptedError(
                    f"interrupted; Ray Job {submission_id} may still be running") from exc
            if not isinstance(exc, RuntimeError) or not str(exc).startswith("[pipes] Ray job"):
                raise  # not a job outcome (submission refused, dashboard down): say so as is
        finished = time.monotonic()
        return self._collect(
            context, submission_id=submission_id, default_uri=default_uri, reader=reader,
            timed_out=timed_out.is_set(), elapsed=finished - started,
            stores=StoreSettings.from_resources(
                context.resources, s3_key=s3_key, gcs_key=gcs_key, azure_key=azure_key),
        )

    @contextmanager
    def _deadline(self, job_id: str, timed_out: threading.Event, context: Any) -> Any:
        """Stop the job once ``timeout_seconds`` have passed (dagster-ray's own ``timeout``
        bounds nothing); dagster-ray then sees STOPPED and returns."""

        def expire() -> None:
            timed_out.set()
            context.log.warning(f"Ray Job {job_id} exceeded {self.timeout_seconds}s: stopping it")
            status = self._stop_until_terminal(job_id, context)
            context.log.warning(f"Ray Job {job_id} is {status} after its timeout")

        timer = threading.Timer(self.timeout_seconds, expire)
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def _stop(self, job_id: str, context: Any, attempts: int = 4) -> bool:
        """Ask Ray to stop the job, retrying a dashboard that does not answer (a head under
        load, a proxy hiccup) with backoff; False (logged) if every attempt failed."""
        last = ""
        for attempt in range(attempts):
            try:
                self.submission_client().stop_job(job_id)
                return True
            except Exception as exc:  # noqa: BLE001 - reported; the step still ends
                last = f"{type(exc).__name__}: {exc}"
                if attempt + 1 < attempts:
                    time.sleep(min(2.0**attempt, self.stop_wait_seconds / attempts))
        context.log.error(f"could not stop Ray Job {job_id} after {attempts} attempts: {last}")
        return False

    def _stop_until_terminal(self, job_id: str, context: Any, rounds: int = 3) -> str:
        """Stop the job (retried) and wait up to ``stop_wait_seconds`` for Ray to say it
        ended, ``rounds`` times; the last status seen (never raises: the caller's outcome,
        an interruption or a timeout, is what the step reports)."""
        status = "UNKNOWN"
        for _ in range(rounds):
            self._stop(job_id, context)
            try:
                status = self._wait_terminal(job_id)
            except Exception as exc:  # noqa: BLE001 - the dashboard did not answer: next round
                context.log.error(f"status of Ray Job {job_id}: {type(exc).__name__}: {exc}")
                continue
            if status in _TERMINAL:
                return status
        context.log.error(f"Ray Job {job_id} is still {status} after {rounds} stop requests")
        return status

    def _wait_terminal(self, job_id: str) -> str:
        client = self.submission_client()
        deadline = time.monotonic() + self.stop_wait_seconds
        status = str(client.get_job_status(job_id).value)
        while status not in _TERMINAL and time.monotonic() < deadline:
            time.sleep(min(self.poll_interval_seconds, 0.5))
            status = str(client.get_job_status(job_id).value)
        return status

    def _collect(
        self, context: Any, *, submission_id: str, default_uri: str, reader: Any,
        timed_out: bool, elapsed: float, stores: StoreSettings,
    ) -> TrainResult:
        client = self.submission_client()
        status = str(client.get_job_status(submission_id).value)  # terminal: run() returned
        info = client.get_job_info(submission_id)
        reported = reader.reported()
        uri = reported.get("result") or reported.get("run_path") or default_uri
        read_error = ""
        fs, path = stores.filesystem_for(uri)
        try:
            result = TrainResult.from_path(path, fs, missing_checkpoints="drop")
            found = True
        except (RunNotFoundError, NotARunDirectoryError):  # nothing persisted there yet
            result, found = TrainResult(path=path, filesystem=fs), False
        except TrainResultsError as exc:  # a storage, auth or corrupt-run error: say it
            result, found = TrainResult(path=path, filesystem=fs), False
            read_error = f"{type(exc).__name__}: {exc}"
        context.add_output_metadata({
            "ray_job_id": submission_id,
            "ray_job_status": status,
            "ray_job_seconds": round(elapsed, 3),
        })
        if status == "SUCCEEDED" and not timed_out:
            if not found:
                if read_error:
                    raise dg.Failure(
                        f"Ray Job {submission_id} succeeded but its run at {uri!r} could not "
                        f"be read: {read_error}"
                    )
                raise dg.Failure(
                    f"Ray Job {submission_id} succeeded but no Ray Train run is at {uri!r}. "
                    "Write the run with trainresults_dagster.pipes.run_config() (or report "
                    "where it is with pipes.report_run_path / pipes.report_result).",
                )
            return result
        kind = "RayJobTimeout" if timed_out else f"RayJob{status.title()}"
        what = (f"exceeded timeout_seconds={self.timeout_seconds:g} and was stopped"
                if timed_out else f"ended {status}")
        # Ray's message repeats the log's end, Pipes protocol lines included: keep its first
        # line, the tail below is the filtered log.
        message = ((info.message or "").strip().splitlines() or [""])[0]
        job_context = f"Ray Job {submission_id} {what} after {elapsed:.1f}s: {message}"
        if read_error:
            job_context += f" (its run at {uri} could not be read: {read_error})"
        tail = _log_tail(client, submission_id, self.log_tail_lines)
        context.log.error(job_context)
        if result.error is None:  # nothing recorded: the job's own words are the error
            last = "\n".join(tail.splitlines()[-_MESSAGE_LOG_LINES:])
            result.error = TrainingError(
                kind, f"{job_context}\nLast job log lines:\n{last}" if last else job_context,
                traceback=tail)
        else:  # the recorder's record has the per-rank failures: keep it, add the job's side
            error = result.error
            result.error = TrainingError(
                error.error_type, error.message,
                f"{error.traceback}\n\n{job_context}\n--- last job log lines ---\n{tail}".strip(),
                error.worker_failures, terminal=error.terminal, attempt=error.attempt,
                time=error.time,
            )
        return result


@contextmanager
def _plain_return(context: Any) -> Any:
    """Leave the step's output mode as it was around the Pipes session.

    ``open_pipes_session`` switches the step to Dagster's "typed event stream" mode (the
    asset must yield ``Output``/``MaterializeResult``) so that materialisations reported by
    the external process are not lost. Our job reports custom messages only and the value
    goes to the IO manager, so the asset keeps returning its ``TrainResult`` as usual.
    """
    step = getattr(getattr(context, "op_execution_context", context), "_step_execution_context", None)
    before = getattr(step, "_requires_typed_event_stream", None)
    try:
        yield
    finally:
        if step is not None and before is not None:
            step._requires_typed_event_stream = before


@functools.cache
def _client_class() -> type:
    """dagster-ray's client, stopping an interrupted job with ``stop_job`` (set per run: stop
    requests retried until Ray reports the job ended, never raising). Its own single
    ``stop_job`` call raising (a busy dashboard) would replace the interruption and leave the
    job running; and the stop must happen inside the Pipes session, whose log reader only
    ends when the job does."""
    from dagster_ray.core.pipes import PipesRayJobClient

    class Client(PipesRayJobClient):
        stop_job: Any = None

        def _terminate(self, context: Any, job_id: str) -> None:
            context.log.warning(f"Dagster run interrupted: stopping Ray Job {job_id}")
            self.stop_job(job_id)

    return Client


@functools.cache
def _reader_class() -> type:
    """dagster-ray's reader, keeping the handler so the job's reports can be read after the
    session whatever the job's outcome (its client raises on FAILED/STOPPED). Built on first
    use: dagster-ray is the optional ``jobs`` extra."""
    from dagster_ray.core.pipes import PipesRayJobMessageReader

    class Reader(PipesRayJobMessageReader):
        handler: Any = None

        @contextmanager
        def read_messages(self, handler: Any) -> Any:
            self.handler = handler
            with super().read_messages(handler) as params:
                yield params

        def reported(self) -> dict[str, str]:
            """``{"run_path": uri, "result": uri}`` from the job's custom messages (last wins)."""
            out: dict[str, str] = {}
            for message in self.handler.get_custom_messages() if self.handler else ():
                if isinstance(message, dict) and isinstance(message.get("uri"), str):
                    kind = message.get(MESSAGE_KEY)
                    if kind in ("run_path", "result"):
                        out[kind] = message["uri"]
            return out

    return Reader


def _default_run_name(context: Any) -> str:
    asset = "-".join(context.asset_key.path) if context.has_assets_def else context.op.name
    name = f"{asset}-{context.run.run_id[:8]}"
    if context.has_partition_key:
        name += "-" + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in context.partition_key)
    return name


def _log_tail(client: Any, job_id: str, lines: int) -> str:
    try:
        logs = client.get_job_logs(job_id)
    except Exception as exc:  # noqa: BLE001 - the failure is reported without its logs
        return f"(job logs unavailable: {type(exc).__name__}: {exc})"
    kept = [line for line in logs.splitlines() if _PIPES_MARK not in line]
    return "\n".join(kept[-lines:])[-20_000:]


def job_command(entrypoint: str | Entrypoint, params: Mapping[str, Any], *, python: str = "python") -> str:
    """The shell command running a ``TrainingPipeline`` entrypoint in a job
    (``python -m trainresults_dagster.pipes REF --params JSON``)."""
    ref = entrypoint.ref if isinstance(entrypoint, Entrypoint) else str(entrypoint)
    return " ".join([
        shlex.quote(python), "-m", "trainresults_dagster.pipes", shlex.quote(ref),
        "--params", shlex.quote(json.dumps(dict(params), sort_keys=True)),
    ])


def build_ray_job_training_asset(
    name: str,
    *,
    pipeline: str,
    entrypoint: str | Entrypoint,
    params: Mapping[str, Any] | None = None,
    storage_uri: str,
    io_manager_key: str = "ray_results",
    s3_key: str | None = None,
    deps: Sequence[Any] = (),
    group_name: str | None = None,
    description: str | None = None,
    trainer_key: str = "ray_job",
    python: str = "python",
    gcs_key: str | None = None,
    azure_key: str | None = None,
) -> dg.AssetsDefinition:
    """``build_training_asset``'s twin that trains in a Ray Job through ``RayJobTrainer``
    (resource ``trainer_key``): the job runs ``python -m trainresults_dagster.pipes
    <entrypoint> --params <json>`` on the cluster, writing under ``storage_uri`` as
    ``<pipeline>-<Dagster run id prefix>``. ``params`` are visible on the dashboard.
    """
    values = dict(params or {})
    if isinstance(entrypoint, Entrypoint):
        entrypoint.check_params(values)
    ref = entrypoint.ref if isinstance(entrypoint, Entrypoint) else str(entrypoint)
    command = job_command(ref, values, python=python)
    required = {trainer_key} | {k for k in (s3_key, gcs_key, azure_key) if k}

    @dg.asset(
        name=name,
        io_manager_key=io_manager_key,
        deps=list(deps),
        required_resource_keys=required,
        group_name=group_name,
        kinds={"ray"},
        tags={TRAINING_TAG: "true"},
        metadata={"entrypoint": ref, "ray_storage": storage_uri, "ray_job": "true"},
        description=description or f"Ray Job training {ref}, stored under {storage_uri}.",
    )
    def _training(context: dg.AssetExecutionContext) -> TrainResult:
        trainer: RayJobTrainer = getattr(context.resources, trainer_key)
        return trainer.run(
            context, entrypoint=command, storage_uri=storage_uri,
            run_name=f"{pipeline}-{context.run.run_id[:8]}", s3_key=s3_key,
            gcs_key=gcs_key, azure_key=azure_key,
        )

    return _training
