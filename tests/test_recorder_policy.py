"""RunRecorder records each failure as terminal or retried exactly as Ray 2.60 decides.

No Ray cluster: a real ``TrainController`` (Ray's own class) is built with Ray's real
``DefaultFailurePolicy`` and the recorder as its only callback, and driven through Ray's own
``_execute_failure_decision`` / ``_set_state`` with every ``TrainingFailedError`` shape Ray
raises, from every state a failure can happen in. The oracle is a second, independent
``DefaultFailurePolicy`` fed the same errors. The only stand-in is the scaling policy, whose
``after_controller_start`` would ask a cluster's autoscaler for resources.
"""

from __future__ import annotations

import os
import random
from typing import Any

import pytest

pytest.importorskip("ray.train")

import trainresults_dagster as trd  # noqa: E402


@pytest.fixture(autouse=True)
def _no_cluster(monkeypatch):
    """The controller's structured logger asks the Ray runtime for a worker id, which would
    start a local Ray; these tests must not (the assert keeps it so)."""
    import ray

    monkeypatch.setenv("RAY_TRAIN_ENABLE_CONTROLLER_STRUCTURED_LOGGING", "0")
    started = ray.is_initialized()
    yield
    assert ray.is_initialized() == started, "a controller unit test started Ray"


def _error_shapes() -> dict[str, tuple[Any, str]]:
    """name -> (factory of a fresh error, the budget Ray charges it to)."""
    from ray.exceptions import ActorDiedError, RayActorError
    from ray.train.v2._internal.exceptions import (
        BroadcastCollectiveTimeoutError,
        CheckpointManagerInitializationError,
        InsufficientClusterResourcesError,
        WorkerGroupStartupFailedError,
        WorkerGroupStartupTimeoutError,
        WorkerHealthCheckFailedError,
        WorkerHealthCheckTimeoutError,
    )
    from ray.train.v2.api.exceptions import (
        ControllerError,
        NCCLHangError,
        PreemptionError,
        WorkerGroupError,
    )
    from ray.train.v2.api.preemption import PreemptionInfo

    def wge(*errors: Exception) -> Any:
        return lambda: WorkerGroupError("x", dict(enumerate(errors)))

    def actor_died(preempted: bool) -> ActorDiedError:
        # What Ray raises for a worker whose node went away (ray/exceptions.py ActorDiedError).
        from ray._raylet import ActorID
        from ray.core.generated.common_pb2 import ActorDiedErrorContext, NodeDeathInfo

        reason = NodeDeathInfo.AUTOSCALER_DRAIN_PREEMPTED if preempted else NodeDeathInfo.UNEXPECTED_TERMINATION
        return ActorDiedError(ActorDiedErrorContext(
            class_name="RayTrainWorker", actor_id=ActorID.nil().binary(),
            error_message="node went away", node_death_info=NodeDeathInfo(reason=reason)))

    def preempted() -> Exception:  # a preempted worker, as the health check reports it
        return WorkerHealthCheckFailedError("node gone", actor_died(True))

    return {
        "user ValueError": (wge(ValueError("boom")), "worker_group"),
        "two ranks": (wge(ValueError("a"), KeyError("b")), "worker_group"),
        "health check failed, not preempted": (
            lambda: WorkerGroupError("x", {0: WorkerHealthCheckFailedError("hc", actor_died(False))}),
            "worker_group"),
        "health check timeout": (wge(WorkerHealthCheckTimeoutError("slow")), "worker_group"),
        "collective timeout": (wge(BroadcastCollectiveTimeoutError(1.0, [1], 1.0)), "worker_group"),
        "NCCL hang": (lambda: NCCLHangError("hang", {0: RuntimeError("nccl")}), "worker_group"),
        "preempted worker (health check)": (
            lambda: WorkerGroupError("x", {0: preempted()}), "preemption"),
        "preempted actor, bare": (wge(RayActorError(preempted=True)), "preemption"),
        "preempted actor, bare ActorDiedError": (lambda: WorkerGroupError("x", {1: actor_died(True)}),
                                                 "preemption"),
        "preempted + collateral": (
            lambda: WorkerGroupError("x", {0: preempted(), 1: ConnectionError("peer gone")}),
            "preemption"),
        "PreemptionError after drain": (
            lambda: PreemptionError(PreemptionInfo(deadline_ms=None,
                                                   preempted_node_to_ranks={"n1": [1]})),
            "preemption"),
        "controller: startup failed": (
            lambda: ControllerError(WorkerGroupStartupFailedError("node died")), "controller"),
        "controller: startup timeout": (
            lambda: ControllerError(WorkerGroupStartupTimeoutError(2)), "controller"),
        "controller: insufficient resources": (
            lambda: ControllerError(InsufficientClusterResourcesError("no GPU")), "controller"),
        "controller: checkpoint manager": (
            lambda: ControllerError(CheckpointManagerInitializationError("bad snapshot")),
            "controller"),
        "controller: a callback raised": (
            lambda: ControllerError(RuntimeError("callback bug")), "controller"),
    }


CONFIGS = [
    {},
    {"max_failures": 1},
    {"max_failures": 2, "max_preemption_failures": 1, "controller_failure_limit": 1},
    {"max_failures": -1, "max_preemption_failures": 0, "controller_failure_limit": 0},
    {"max_failures": 0, "max_preemption_failures": 2, "controller_failure_limit": 2},
]


def _controller(tmp_path: Any, failure_config: dict[str, int], recorder: Any) -> Any:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2._internal.execution.context import TrainRunContext
    from ray.train.v2._internal.execution.controller.controller import TrainController
    from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy
    from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy

    class NoAutoscalerPolicy(FixedScalingPolicy):
        """Ray's fixed policy, minus the resource request to a cluster's autoscaler."""

        def after_controller_start(self, train_run_context: Any) -> None:
            pass

        def _maybe_send_resource_request(self) -> None:
            pass

    run_config = RunConfig(name="run", storage_path=str(tmp_path),
                           failure_config=FailureConfig(**failure_config))
    scaling = ScalingConfig(num_workers=2)
    context = TrainRunContext(run_config=run_config, train_loop_config=None,
                              scaling_config=scaling, backend_config=None, dataset_config=None)
    return TrainController(
        train_fn_ref=None,  # type: ignore[arg-type]
        train_run_context=context,
        scaling_policy=NoAutoscalerPolicy(scaling),
        failure_policy=DefaultFailurePolicy(run_config.failure_config),
        callbacks=[recorder],
    )


def _drive(controller: Any, errors: list[tuple[str, Any, str]]) -> list[str]:
    """Feed errors to the controller as its loop would; returns Ray's decisions."""
    from ray.train.v2._internal.execution.controller.state import (
        ErroredState,
        PreemptingState,
        RunningState,
        SchedulingState,
        ShuttingDownState,
    )
    from ray.train.v2._internal.execution.scaling_policy import ResizeDecision
    from ray.train.v2.api.preemption import PreemptionInfo

    decisions = []
    for origin, error, _kind in errors:
        # Where the controller meets this error: polls in RunningState (or PreemptingState),
        # scheduling failures in SchedulingState, the drain's PreemptionError in
        # PreemptingState (controller.py:682, :838, :863, :926).
        if origin == "scheduling":
            controller._set_state(SchedulingState(ResizeDecision(num_workers=2, resources_per_worker={})))
        elif origin == "preempting":
            controller._set_state(PreemptingState(
                preemption_info=PreemptionInfo(deadline_ms=None, preempted_node_to_ranks={"n": [1]}),
                detected_at_s=0.0))
        else:
            controller._set_state(RunningState())
        decision = controller._failure_policy.make_decision(training_failed_error=error)
        decisions.append(decision.value)
        result = controller._execute_failure_decision(decision, training_failed_error=error)
        controller._set_state(result.next_state)
        state = controller.get_state()
        if isinstance(state, ShuttingDownState):
            controller._set_state(state.next_state)  # _shutdown() -> ErroredState
            break
        if isinstance(controller.get_state(), ErroredState):
            break
        controller._set_state(SchedulingState(ResizeDecision(num_workers=2, resources_per_worker={})))
    controller._run_controller_hook("after_controller_finish", controller._build_result(),
                                    invoke_failure_decision_callbacks=False)
    return decisions


def _origin(name: str, rng: random.Random) -> str:
    if name.startswith("controller"):
        return rng.choice(["scheduling", "running"])  # _step errors happen in either
    if name == "PreemptionError after drain":
        return "preempting"
    if name.startswith("preempted"):
        return "running"  # in PreemptingState Ray waits for the drain instead of deciding
    return rng.choice(["running", "running", "preempting"])


@pytest.mark.parametrize("config_index", range(len(CONFIGS)))
def test_recorded_verdict_is_rays_for_every_error_type(tmp_path, config_index):
    import logging

    from ray.train import FailureConfig
    from ray.train.v2._internal.execution.failure_handling import DefaultFailurePolicy

    from trainresults_dagster.ray import RunRecorder

    logging.getLogger("ray.train.v2._internal.execution.failure_handling.default").setLevel(logging.WARNING)
    config = CONFIGS[config_index]
    shapes = _error_shapes()
    rng = random.Random(config_index)
    checked = 0
    kinds_seen = set()
    for seq in range(24):
        names = [rng.choice(list(shapes)) for _ in range(rng.randint(1, 6))]
        errors = [(_origin(n, rng), shapes[n][0](), shapes[n][1]) for n in names]
        oracle = DefaultFailurePolicy(FailureConfig(**config))
        expected = []
        for _, error, _ in errors:
            expected.append(oracle.make_decision(training_failed_error=error).value)
            if expected[-1] == "RAISE":
                break
        run_dir = tmp_path / f"s{seq}"
        recorder = RunRecorder()
        decisions = _drive(_controller(run_dir, config, recorder), errors)
        assert decisions == expected
        result = trd.TrainResult.from_path(run_dir / "run")
        record = result.record
        assert record is not None
        assert [f.terminal for f in record.failures] == [d == "RAISE" for d in expected], names
        assert [d["decision"] for d in record.failure_details] == expected
        assert [d["kind"] for d in record.failure_details] == [k for _, _, k in errors[: len(expected)]]
        assert [f.attempt for f in record.failures] == list(range(1, len(expected) + 1))
        assert [f.error_type for f in record.failures] == [type(e).__name__ for _, e, _ in errors[: len(expected)]]
        terminal = expected[-1] == "RAISE"
        assert result.status == ("failed" if terminal else "finished")
        assert (result.error is not None) == terminal
        journal = tmp_path / f"s{seq}" / "_trainresults" / "failures"
        entries = len(os.listdir(journal)) if journal.exists() else 0
        assert entries == (1 if terminal else 0)
        kinds_seen.update(k for _, _, k in errors)
        checked += 1
    assert checked == 24 and kinds_seen == {"worker_group", "preemption", "controller"}


def test_per_rank_failures_and_tracebacks(tmp_path):
    """The worker's own traceback (which Ray's poll status carries, and its WorkerGroupError
    drops) is in the record, per rank."""
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2._internal.execution.worker_group.poll import (
        WorkerGroupPollStatus,
        WorkerStatus,
    )

    from trainresults_dagster.ray import RunRecorder

    recorder = RunRecorder()
    controller = _controller(tmp_path, {}, recorder)
    boom, key = ValueError("boom on rank 0"), KeyError("rank 1")
    status = WorkerGroupPollStatus(worker_statuses={
        0: WorkerStatus(running=False, error=UserExceptionWithTraceback(boom, "Traceback: rank0 frames\nValueError: boom on rank 0")),
        1: WorkerStatus(running=False, error=UserExceptionWithTraceback(key, "Traceback: rank1 frames\nKeyError: 'rank 1'")),
    })
    recorder.after_worker_group_poll_status(status)
    error = status.get_worker_group_error()  # what the controller hands the policy
    _drive(controller, [("running", error, "worker_group")])
    failure = trd.TrainResult.from_path(tmp_path / "run").error
    assert failure is not None and failure.terminal
    assert failure.worker_failures == {0: "ValueError: boom on rank 0", 1: "KeyError: 'rank 1'"}
    assert "[Rank 0]\nTraceback: rank0 frames" in failure.traceback
    assert "[Rank 1]\nTraceback: rank1 frames" in failure.traceback
    assert "[Rank 0 Error Snippet]" in failure.message  # Ray's own message, as fit() raises it
