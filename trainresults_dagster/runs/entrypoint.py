"""Training entrypoints named by import path: ``"my_project.training:train"``.

A pipeline declared in YAML (``TrainingPipeline``) names its training code instead of
containing it. The entrypoint is a plain function, called with the YAML's ``params`` as
keyword arguments, that returns one of:

* a ``ray.train.Result`` or a ``TrainResult`` (the function ran ``fit()`` itself);
* a trainer (anything with ``fit()``, e.g. ``DataParallelTrainer``): it is run with
  ``trd.fit(trainer)``, so a failed run comes back with ``error`` set and every checkpoint it
  persisted, and a ``RunRecorder`` is attached if the trainer's ``RunConfig`` has none.

Two more arguments are passed when the function's signature asks for them by name:
``request`` (a ``TrainingRequest``: where Ray Train must write and under which run name, so
the pipeline's storage sensor sees the run) and ``context`` (the caller's context, e.g.
Dagster's ``AssetExecutionContext``). Nothing here imports ray or Dagster at module level:
the same entrypoint runs in the Dagster step process today and in a Ray Job tomorrow.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow.fs as pafs

from .coerce import as_train_result, is_ray_result
from .fit import fit
from .result import TrainResult

#: Arguments the caller supplies (when the signature names them), never taken from params.
INJECTED = ("request", "context")
_REF = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")


def load_object(ref: Any, *, what: str = "entrypoint") -> Any:
    """The object at ``"package.module:attr"`` (or ``"package.module.attr"``).

    Raises ``ValueError`` naming the reference, what was wrong and how to write it.
    """
    if not isinstance(ref, str) or not ref.strip():
        raise ValueError(
            f"expected the {what} as an import path 'package.module:name', got {ref!r}"
        )
    module_name, sep, attr = ref.strip().partition(":")
    if not sep:
        module_name, _, attr = module_name.rpartition(".")
    if not (_REF.fullmatch(module_name) and _REF.fullmatch(attr)):
        raise ValueError(
            f"expected the {what} as an import path 'package.module:name', got {ref!r}"
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import module {module_name!r} of the {what} {ref!r}: {exc}. Is the package "
            "installed in the environment that loads the code location?"
        ) from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(
                f"module {module_name!r} has no attribute {attr!r} (the {what} {ref!r})"
            ) from None
    return obj


@dataclasses.dataclass(frozen=True)
class TrainingRequest:
    """Where a training entrypoint must write, handed to it as ``request``.

    ``storage_path`` and ``storage_filesystem`` are what Ray Train's ``RunConfig`` takes
    (``storage_filesystem`` is None for a local folder); ``storage_uri`` is the same place
    scheme-qualified. ``run_config(**kwargs)`` builds that ``RunConfig`` with ``run_name``
    and a ``RunRecorder`` already in it.
    """

    run_name: str
    storage_uri: str
    storage_path: str
    storage_filesystem: pafs.FileSystem | None = None
    tags: Mapping[str, str] = dataclasses.field(default_factory=dict)

    @property
    def run_uri(self) -> str:
        """Where this run's folder will be: ``<storage_uri>/<run_name>``."""
        return f"{self.storage_uri.rstrip('/')}/{self.run_name}"

    def run_config(self, **kwargs: Any) -> Any:
        """``ray.train.RunConfig(name=run_name, storage_path=..., storage_filesystem=...,
        callbacks=[RunRecorder(), ...], **kwargs)``."""
        from ray.train import RunConfig

        from trainresults_dagster.ray import RunRecorder

        for reserved in ("name", "storage_path", "storage_filesystem"):
            if reserved in kwargs:
                raise ValueError(
                    f"run_config() sets {reserved!r} from the pipeline's storage; got "
                    f"{reserved}={kwargs[reserved]!r}. Configure storage in the pipeline instead."
                )
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if not any(isinstance(c, RunRecorder) for c in callbacks):
            callbacks.insert(0, RunRecorder())
        return RunConfig(
            name=self.run_name,
            storage_path=self.storage_path,
            storage_filesystem=self.storage_filesystem,
            callbacks=callbacks,
            **kwargs,
        )


@dataclasses.dataclass(frozen=True)
class Entrypoint:
    """A training function loaded from its import path; ``ref`` is kept so another process
    (a Ray Job) can import the same function."""

    ref: str
    fn: Callable[..., Any]

    @classmethod
    def load(cls, ref: Any) -> Entrypoint:
        fn = load_object(ref)
        if not callable(fn) or isinstance(fn, type):
            raise ValueError(
                f"expected the entrypoint {ref!r} to be a function returning a ray.train.Result, "
                f"a TrainResult or a trainer, got {type(fn).__name__}: {fn!r:.120}"
            )
        return cls(ref=ref.strip(), fn=fn)

    def check_params(self, params: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` unless ``fn(**params)`` binds (plus the injected arguments)."""
        for name in INJECTED:
            if name in params:
                raise ValueError(
                    f"params must not set {name!r}: the pipeline passes it to {self.ref}"
                )
        try:
            signature = inspect.signature(self.fn)
        except (TypeError, ValueError):  # builtins and some C callables have none
            return
        given = {**params, **{n: None for n in INJECTED if n in signature.parameters}}
        try:
            signature.bind(**given)
        except TypeError as exc:
            accepted = [n for n in signature.parameters if n not in INJECTED]
            raise ValueError(
                f"{self.ref} cannot take params {sorted(params)!r}: {exc}; it accepts "
                f"{accepted!r}"
            ) from None

    def run(
        self, request: TrainingRequest, params: Mapping[str, Any], *, context: Any = None
    ) -> TrainResult:
        """Call the entrypoint and return what it trained as a ``TrainResult``."""
        self.check_params(params)
        kwargs = dict(params)
        try:
            accepted = inspect.signature(self.fn).parameters
        except (TypeError, ValueError):
            accepted = {}
        if "request" in accepted:
            kwargs["request"] = request
        if "context" in accepted:
            kwargs["context"] = context
        out = self.fn(**kwargs)
        if isinstance(out, TrainResult) or is_ray_result(out):
            return as_train_result(out, what=f"the value returned by {self.ref}")
        if callable(getattr(out, "fit", None)):
            _attach_recorder(out)
            return fit(out)
        raise TypeError(
            f"expected {self.ref} to return a ray.train.Result, a TrainResult or a trainer with "
            f"fit(), got {type(out).__name__}: {out!r:.200}"
        )


def _attach_recorder(trainer: Any) -> None:
    """Add a ``RunRecorder`` to the trainer's ``RunConfig`` unless it has one: the pipeline's
    storage sensor finds failed runs through the recorder's journal."""
    run_config = getattr(trainer, "run_config", None)
    if run_config is None or not hasattr(run_config, "callbacks"):
        return
    from trainresults_dagster.ray import RunRecorder

    callbacks = list(run_config.callbacks or [])
    if not any(isinstance(c, RunRecorder) for c in callbacks):
        run_config.callbacks = [RunRecorder(), *callbacks]
