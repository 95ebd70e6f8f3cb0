"""The checkpoint registry, without Dagster: versions, compare-and-set aliases, history,
rollback (``registry``), what it hands out (``model_version``), the promotion gate
(``gate``), its conditional-write store (``_cas``) and its copies (``_copy``)."""

from .integrity import IntegrityReport
from .registry import Registry

__all__ = ["IntegrityReport", "Registry"]
