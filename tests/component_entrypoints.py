"""Training entrypoints that the component tests name in YAML (``tests/`` is on sys.path)."""

from __future__ import annotations

from typing import Any

from trainresults_dagster.runs.entrypoint import TrainingRequest
from trainresults_dagster.runs.result import TrainResult

CALLS: list[dict[str, Any]] = []
NOT_CALLABLE = 42


def returns_result(request: TrainingRequest, context: Any = None, *, tag: str = "x") -> TrainResult:
    """Records what it was given and returns an (empty) result at the requested run folder."""
    CALLS.append({"request": request, "context": context, "tag": tag})
    return TrainResult(path=request.run_uri)


def returns_a_string(request: TrainingRequest) -> str:
    return "not a result"


def no_request(*, epochs: int = 1) -> TrainResult:
    CALLS.append({"epochs": epochs})
    return TrainResult(path="/nowhere")
