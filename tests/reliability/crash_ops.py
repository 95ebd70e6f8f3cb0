"""One storage operation, run in a child process that the crash tests SIGKILL at a seeded
point. The same code runs in the test process, unarmed, to count the kill points.

Kill points:

* Local storage: every write-side call under the target folder (``open`` for writing,
  ``os.replace``/``rename``/``link``/``unlink``/``mkdir``/``rmdir``, ``os.fsync``,
  ``shutil.copyfile``/``rmtree``) is numbered; the child dies just before or just after
  call number ``k``. Calls run on several threads (parallel copies), so the others are cut
  wherever they are.
* S3: the test's proxy numbers the requests to the target bucket and SIGKILLs the child at
  request ``k``, which then either never reaches the server or is executed with its answer
  lost (see ``test_crash_seeds.py``).

``python crash_ops.py '<spec json>'`` runs ``spec["op"]`` (``io``, ``register`` or
``promote``); credentials come from the environment (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``), never from the command line.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

_WRITE_MODES = ("w", "a", "x", "+")


class KillPoints:
    """Numbers write-side calls under ``root``; SIGKILLs this process at call ``k``
    (``when``: ``"before"`` or ``"after"`` it). ``k=0`` only counts."""

    def __init__(self, root: str, k: int = 0, when: str = "before") -> None:
        self.root = os.path.abspath(root)
        self.k = k
        self.when = when
        self.count = 0
        self._lock = threading.Lock()
        self._saved: list[tuple[Any, str, Any]] = []

    def _under(self, *paths: Any) -> bool:
        return any(isinstance(p, str | os.PathLike)
                   and os.path.abspath(os.fspath(p)).startswith(self.root) for p in paths)

    def _number(self) -> int:
        with self._lock:
            self.count += 1
            return self.count

    def _die(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def _wrap(self, fn: Callable[..., Any], relevant: Callable[..., bool]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if not relevant(*args, **kwargs):
                return fn(*args, **kwargs)
            n = self._number()
            if n == self.k and self.when == "before":
                self._die()
            try:
                return fn(*args, **kwargs)
            finally:  # "after" a call that raised too (os.link onto an existing name, ...)
                if n == self.k and self.when == "after":
                    self._die()

        return wrapped

    def _patch(self, owner: Any, name: str, relevant: Callable[..., bool]) -> None:
        original = getattr(owner, name)
        self._saved.append((owner, name, original))
        setattr(owner, name, self._wrap(original, relevant))

    def __enter__(self) -> KillPoints:
        def first(*args: Any, **_: Any) -> bool:
            return bool(args) and self._under(args[0])

        def either(*args: Any, **_: Any) -> bool:
            return self._under(*args[:2])

        def writing(*args: Any, **kwargs: Any) -> bool:
            mode = kwargs.get("mode", args[1] if len(args) > 1 else "r")
            return any(m in str(mode) for m in _WRITE_MODES) and first(*args)

        for name in ("replace", "rename", "link"):
            self._patch(os, name, either)
        for name in ("unlink", "remove", "mkdir", "rmdir"):
            self._patch(os, name, first)

        def fsynced(fd: Any, *_: Any) -> bool:
            try:  # the file behind the descriptor (Linux), so other threads' fsyncs don't count
                return self._under(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                return False

        self._patch(os, "fsync", fsynced)
        self._patch(shutil, "copyfile", either)
        self._patch(shutil, "rmtree", first)
        self._patch(builtins, "open", writing)
        return self

    def __exit__(self, *exc: Any) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()


def s3_resource(spec: dict[str, Any], env: Mapping[str, str]) -> Any:
    from dagster_aws.s3 import S3Resource

    return S3Resource(
        endpoint_url=spec["endpoint_url"],
        region_name=env.get("AWS_DEFAULT_REGION", "us-east-1"),
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )


def run(spec: dict[str, Any], armed: contextlib.AbstractContextManager[Any],
        env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Set up ``spec["op"]`` unarmed, then run the operation itself inside ``armed``."""
    env = os.environ if env is None else env
    s3 = s3_resource(spec, env) if spec.get("endpoint_url") else None
    if spec["op"] == "io":
        import dagster as dg

        import trainresults_dagster as trd
        from trainresults_dagster.dagster._wiring import s3_settings

        fs = s3_settings(s3).filesystem() if s3 is not None else None
        result = trd.TrainResult.from_path(spec["source"], fs)
        io = trd.RayTrainResultIOManager(base_path=spec["base"], s3=s3, checkpoints="copy")
        context = dg.build_output_context(asset_key=dg.AssetKey(["train"]))
        with armed:
            io.handle_output(context, result)
        return {"stored": result.uri}

    from trainresults_dagster.dagster._wiring import s3_settings
    from trainresults_dagster.registry import Registry
    from trainresults_dagster.runs.checkpoint import Checkpoint

    registry = Registry.open(spec["base"], s3_settings(s3) if s3 is not None else None)
    if spec["op"] == "register":
        source = Checkpoint(spec["source"], registry.filesystem if s3 is not None else None)
        with armed:
            version = registry.register(spec["model"], source, metrics={"source": spec["source"]})
        return {"version": version.version}
    if spec["op"] == "promote":
        with armed:
            registry.promote(spec["model"], spec["version"], expected_version=spec["expected"],
                             reason="crash test")
        return {"promoted": spec["version"]}
    raise ValueError(f"unknown op {spec['op']!r}")


def main() -> None:
    spec = json.loads(sys.argv[1])
    kill = spec.get("kill")
    armed = KillPoints(spec["root"], kill["k"], kill["when"]) if kill else contextlib.nullcontext()
    out = run(spec, armed)
    steps = armed.count if isinstance(armed, KillPoints) else None
    print(json.dumps({"done": True, "steps": steps, **out}), flush=True)


if __name__ == "__main__":
    main()
