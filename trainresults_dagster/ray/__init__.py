"""Parts that need ray installed (the ``ray`` extra). Importing this package imports no ray;
each name loads its module on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .recorder import RunRecorder

__all__ = ["RunRecorder"]


def __getattr__(name: str) -> Any:
    if name == "RunRecorder":
        from .recorder import RunRecorder

        return RunRecorder
    raise AttributeError(name)
