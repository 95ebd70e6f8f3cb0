"""``Checkpoint``: a Ray-free twin of ``ray.train.Checkpoint`` (a folder on a filesystem).

Like Ray's, a checkpoint is ``path`` (scheme stripped) + ``filesystem``. It also carries the
``metrics`` that were reported with it, so selection and promotion need no second lookup.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow.fs as pafs

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import CheckpointMissingError, CorruptRunError

if TYPE_CHECKING:
    import ray.train

METADATA_FILE = ".metadata.json"


class Checkpoint:
    """A checkpoint folder: ``path`` on ``filesystem``, plus the metrics reported with it."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        filesystem: pafs.FileSystem | None = None,
        *,
        metrics: dict[str, Any] | None = None,
        dir_name: str | None = None,
    ) -> None:
        self.filesystem, self.path = storage.resolve(path, filesystem)
        self.metrics = metrics
        self._dir_name = dir_name

    # ----------------------------------------------------------------- identity
    @property
    def uri(self) -> str:
        """Scheme-qualified location (``s3://bucket/run/checkpoint_x`` or an absolute path)."""
        return storage.to_uri(self.filesystem, self.path)

    @property
    def name(self) -> str:
        """The folder's own name (the last path segment)."""
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def dir_name(self) -> str:
        """Its ``checkpoint_dir_name`` in the run: the path below the run folder, which may
        be nested (``ckpts/epoch-0``, as ``report(checkpoint_dir_name=...)`` allows). It
        identifies the checkpoint within its run, also for a copy stored elsewhere."""
        return self._dir_name or self.name

    def __repr__(self) -> str:
        return f"Checkpoint(uri={self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Checkpoint) and self.uri == other.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    @classmethod
    def from_uri(
        cls,
        uri: str,
        filesystem: pafs.FileSystem | None = None,
        *,
        metrics: dict[str, Any] | None = None,
    ) -> Checkpoint:
        """``Checkpoint.from_uri("s3://bucket/run/checkpoint_x")`` or a local path."""
        return cls(uri, filesystem, metrics=metrics)

    @classmethod
    def from_ray(cls, checkpoint: ray.train.Checkpoint, *, metrics: dict[str, Any] | None = None) -> Checkpoint:
        return cls(checkpoint.path, checkpoint.filesystem, metrics=metrics)

    def to_ray(self) -> ray.train.Checkpoint:
        """The same folder as a ``ray.train.Checkpoint`` (imports ray)."""
        import ray.train

        return ray.train.Checkpoint(self.path, self.filesystem)

    # ----------------------------------------------------------------- contents
    def exists(self) -> bool:
        return storage.is_dir(self.filesystem, self.path)

    def _require(self) -> None:
        if not self.exists():
            raise CheckpointMissingError(
                f"expected a checkpoint folder at {self.uri}, but it is gone "
                "(deleted by Ray's num_to_keep retention or a bucket lifecycle rule?). "
                "Materialise results with checkpoints='copy' or register them to keep them."
            )

    def get_metadata(self) -> dict[str, Any]:
        """The checkpoint's ``.metadata.json`` (``{}`` when absent), like Ray's."""
        path = f"{self.path}/{METADATA_FILE}"
        data = storage.read_json_object(
            self.filesystem, path, error=CorruptRunError, what="checkpoint metadata"
        )
        return {} if data is None else data

    def to_directory(self, path: str | os.PathLike[str] | None = None) -> str:
        """Copy the checkpoint into a local folder (a new temp folder when ``path`` is None).

        A failed download removes what it created, so a half-copied folder never remains.
        """
        self._require()
        target = os.fspath(path) if path is not None else os.path.join(
            tempfile.gettempdir(), f"checkpoint_tmp_{uuid.uuid4().hex}"
        )
        created = not os.path.exists(target)
        try:
            storage.copy_tree(self.filesystem, self.path, pafs.LocalFileSystem(), target)
        except BaseException:
            if created:
                shutil.rmtree(target, ignore_errors=True)
            raise
        return target

    @contextlib.contextmanager
    def as_directory(self) -> Iterator[str]:
        """A local folder with the checkpoint's files, for the duration of the ``with``.

        Local checkpoints are yielded in place (treat them as read-only), as Ray does;
        remote ones are downloaded to a temp folder that is removed afterwards.
        """
        if isinstance(self.filesystem, pafs.LocalFileSystem):
            self._require()
            yield self.path
            return
        tmp = self.to_directory()
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "metrics": self.metrics, "dir_name": self.dir_name}
