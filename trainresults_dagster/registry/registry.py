"""The checkpoint registry's logic (no Dagster): versions, aliases, history, rollback.

Layout under ``base_path`` (a local folder or ``s3://bucket/prefix``)::

    <model>/data/<UTC time>-<random id>/...        the copied checkpoint (written first)
    <model>/versions/0000000007.json               version record (committed last)
    <model>/aliases/<alias>.json                   current alias event (compare-and-set)
    <model>/history/<alias>/0000000003.json        every alias event, immutable

Why this shape:

* **A version is visible only once complete.** Files are copied into a fresh data folder
  named by time and a random id, checked against the source (file count and sizes), and
  only then is ``versions/<n>.json`` created with ``If-None-Match: *`` (locally
  ``os.link``). A crash mid-copy leaves an unreferenced data folder that every reader
  ignores and ``collect_garbage`` removes; it never takes a version number. Numbers are
  taken by the commit itself (try max+1, on conflict list again), so two registrars never
  share one and no number is burnt by a failed copy; copying into the data folder first
  also means no second copy (S3 has no rename).
* **Promotion is a compare-and-set** on ``aliases/<alias>.json`` (S3 ``If-Match`` on its
  ETag; locally an ``flock``-guarded compare and atomic rename). The alias object *is* the
  latest history event, so ``get`` is two small reads (alias + version record).
* **History is a chain of immutable objects**, one per event, created with
  ``If-None-Match``. The alias object carries event *k* in full; before moving the alias to
  *k+1*, a promoter first (re)creates ``history/<alias>/k``. So even if a promoter dies
  between its alias write and its history write, the next promoter (or ``history()``, which
  reads the alias too) completes the chain: no gaps, no lost promotion, and an unbounded
  history never makes ``get`` slower. Embedding the whole history in the alias object
  would be simpler but grows every read and every CAS with the number of promotions.
* **Conditional writes are required.** On first use against S3 the store checks, with a
  small probe object (``.conditional-write-probe``), that the service refuses a second
  ``If-None-Match: *`` create; one that silently ignores conditions is refused up front
  rather than allowed to lose versions and promotions.
* **Rollback** restores the state before the current event's originating promotion
  (``base_seq``), so repeated rollbacks walk back through champions instead of toggling
  between the last two.
"""

from __future__ import annotations

import calendar
import concurrent.futures
import getpass
import hashlib
import json
import os
import socket
import time
import uuid
from types import EllipsisType
from typing import Any, Literal

import pyarrow.fs as pafs

import trainresults_dagster.registry._copy as _copy
import trainresults_dagster.registry.integrity as integrity
import trainresults_dagster.storage as storage
from trainresults_dagster.errors import (
    CheckpointIntegrityError,
    CheckpointMissingError,
    CorruptRegistryError,
    PromotionConflict,
    StorageError,
    VersionNotFoundError,
)
from trainresults_dagster.runs.checkpoint import Checkpoint
from trainresults_dagster.runs.coerce import as_checkpoint

from ._cas import LocalStore, ObjectStore, S3Store
from ._cas_cloud import AzureStore, GcsStore
from .model_version import AliasEvent, ModelVersion, parse_time, utc_now, validate_name

RECORD_KIND = "trainresults.version_record/1"
#: The file manifest sits next to its data folder: ``<model>/data/<id>.files.json``.
MANIFEST_SUFFIX = ".files.json"
_COMMIT_ATTEMPTS = 200
_UNCHECKED_PROMOTE_ATTEMPTS = 20


def default_who() -> str:
    """``user@host`` of this process: ``$USER`` (else the login name) and the host name."""
    try:
        user = os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class Registry:
    """A model registry over a local folder or an S3 prefix. Thread- and process-safe.

    Args:
        base_path: a folder, or ``s3://bucket/prefix``.
        filesystem: the pyarrow filesystem for ``base_path`` (default: from the URI).
        s3_client: a boto3 S3 client for the conditional writes on S3 (default: one built
            from ``filesystem``'s endpoint and credentials).
        durable: local registries only: fsync every copied file before the version is
            committed, so a power cut cannot leave a committed version whose data never
            reached the disk. Off by default, like ``cp`` and Ray's own checkpoint upload:
            it makes a register wait for the disk. (Records are always fsynced; S3 objects
            are durable once their PUT or copy returns.)
    """

    def __init__(
        self,
        base_path: str | os.PathLike[str],
        *,
        filesystem: pafs.FileSystem | None = None,
        s3_client: Any = None,
        durable: bool = False,
    ) -> None:
        self.filesystem, self.base = storage.resolve(base_path, filesystem)
        self.durable = durable
        self._store: ObjectStore
        if isinstance(self.filesystem, pafs.LocalFileSystem):
            self._store = LocalStore(self.base)
        elif isinstance(self.filesystem, pafs.S3FileSystem):
            bucket, _, prefix = self.base.partition("/")
            if s3_client is None:
                # The conditional writes must reach the same store as the data: build the
                # client from the filesystem's own endpoint and credentials.
                s3_client = storage.S3Settings.from_filesystem(self.filesystem).client()
            self._store = S3Store(s3_client, bucket, prefix)
        elif isinstance(self.filesystem, pafs.GcsFileSystem):
            bucket, _, prefix = self.base.partition("/")
            client = storage.GcsSettings.from_filesystem(self.filesystem).client()
            self._store = GcsStore(client, bucket, prefix)
        elif isinstance(self.filesystem, pafs.AzureFileSystem):
            container, _, prefix = self.base.partition("/")
            service = storage.AzureSettings.from_filesystem(self.filesystem).client()
            self._store = AzureStore(service, container, prefix)
        else:
            raise ValueError(
                f"expected a registry base_path that is a local folder, s3://bucket/prefix, "
                f"gs://bucket/prefix or abfs://container/prefix, "
                f"got {storage.to_uri(self.filesystem, self.base)!r} "
                f"({self.filesystem.type_name} filesystem)"
            )

    @classmethod
    def open(
        cls,
        base_path: str,
        s3: storage.S3Settings | pafs.FileSystem | None = None,
        *,
        gcs: storage.GcsSettings | None = None,
        azure: storage.AzureSettings | None = None,
        durable: bool = False,
    ) -> Registry:
        """A registry at ``base_path``. ``s3``: the ``S3Settings`` for an ``s3://`` base path
        (default: the AWS chain and environment), or a ready pyarrow filesystem for it; the
        data copies and the conditional writes use the same endpoint and credentials.
        ``gcs`` / ``azure``: the same for ``gs://`` and ``abfs://`` base paths."""
        if isinstance(s3, pafs.FileSystem) and not isinstance(s3, pafs.S3FileSystem):
            return cls(base_path, filesystem=s3, durable=durable)
        scheme = storage.canonical_scheme(storage.split_scheme(str(base_path))[0])
        if scheme in ("gs", "abfs"):
            fs, _ = storage.filesystem_for(str(base_path), gcs=gcs, azure=azure)
            return cls(base_path, filesystem=fs, durable=durable)
        if storage.split_scheme(str(base_path))[0] == "s3" or isinstance(s3, pafs.S3FileSystem):
            settings = storage.s3_settings_of(s3)
            fs = s3 if isinstance(s3, pafs.S3FileSystem) else settings.filesystem()
            return cls(base_path, filesystem=fs, s3_client=settings.client(), durable=durable)
        return cls(base_path, durable=durable)

    @property
    def uri(self) -> str:
        return storage.to_uri(self.filesystem, self.base)

    def __repr__(self) -> str:
        return f"Registry({self.uri!r})"

    # ------------------------------------------------------------------ keys
    @staticmethod
    def _version_key(model: str, version: int) -> str:
        return f"{model}/versions/{version:010d}.json"

    @staticmethod
    def _alias_key(model: str, alias: str) -> str:
        return f"{model}/aliases/{alias}.json"

    @staticmethod
    def _history_key(model: str, alias: str, seq: int) -> str:
        return f"{model}/history/{alias}/{seq:010d}.json"

    @staticmethod
    def _data_key(model: str, data_id: str) -> str:
        return f"{model}/data/{data_id}"

    @staticmethod
    def _manifest_key(model: str, data_id: str) -> str:
        return f"{model}/data/{data_id}{MANIFEST_SUFFIX}"

    def _data_path(self, model: str, data_id: str) -> str:
        return storage.safe_child(
            f"{self.base}/{model}/data", data_id, what="data folder", where=self.uri
        )

    # ------------------------------------------------------------------ register
    def register(
        self,
        model: str,
        checkpoint: Checkpoint | Any,
        *,
        metrics: dict[str, Any] | None,
        lineage: dict[str, Any] | None = None,
        reuse_if_unchanged: bool = False,
    ) -> ModelVersion:
        """Copy ``checkpoint`` into the registry as the next version of ``model``.

        The copy is server-side when source and registry are on the same S3 endpoint, and
        a parallel kernel copy on local disk. The version becomes visible only after its
        files are all in place and checked. With ``reuse_if_unchanged=True`` the latest
        version is returned instead when it was registered from the same checkpoint URI
        with the same files and metrics (so re-materialising an asset is idempotent).

        ``metrics=None`` takes the checkpoint's own ``metrics``.
        """
        validate_name(model, what="model name")
        ckpt = as_checkpoint(checkpoint, what="the checkpoint to register")
        self._store.require_conditional_writes()  # before copying anything
        metrics = dict(metrics if metrics is not None else (ckpt.metrics or {}))
        metrics = storage.json_value(metrics)  # as it will read back: NaN -> null
        sources = _copy.listing(ckpt.filesystem, ckpt.path)
        if not sources:
            raise CheckpointMissingError(
                f"expected checkpoint files to register at {ckpt.uri}, but found none "
                "(deleted by Ray's num_to_keep retention, or not a checkpoint folder?)"
            )
        fingerprint = hashlib.sha256(
            json.dumps(sorted(sources.items())).encode("utf-8")
        ).hexdigest()
        source = {"uri": ckpt.uri, "fingerprint": fingerprint}
        if reuse_if_unchanged:
            latest = self._latest_record(model)
            if latest is not None and latest[1].get("source") == source and (
                latest[1].get("metrics") == metrics
            ):
                return self._version_from_record(model, *latest)

        data_id = storage.stamp() + "-" + uuid.uuid4().hex[:16]
        target = self._data_path(model, data_id)
        try:
            _copy.copy_in(ckpt, self.filesystem, target, durable=self.durable)
            # One listing checks the copy and gives the store's checksums for the manifest.
            copied = self._store.files(self._data_key(model, data_id))
            _copy.verify(
                sources, {rel: size for rel, (size, _) in copied.items()},
                where=ckpt.uri, target_uri=storage.to_uri(self.filesystem, target),
            )
            manifest = self._write_manifest(model, data_id, target, copied)
        except BaseException:
            # Best effort: an unreferenced data folder is invisible anyway (collect_garbage).
            try:
                storage.delete_dir(self.filesystem, target)
            except Exception:  # noqa: BLE001 - the original error matters more
                pass
            raise
        run_uri = ckpt.uri.rsplit("/", 1)[0] if "/" in ckpt.uri.rstrip("/") else ckpt.uri
        record = {
            "kind": RECORD_KIND,
            "model": model,
            "data": data_id,
            "metrics": metrics,
            "lineage": {"source_checkpoint_uri": ckpt.uri, "run_uri": run_uri, **(lineage or {})},
            "source": source,
            "num_files": len(sources),
            "size_bytes": sum(size for size, _ in sources.values()),
            "files_manifest": manifest,
            "created_at": storage.iso(),
        }
        version = self._commit(model, record)
        return self._version_from_record(model, version, record)

    def _write_manifest(
        self, model: str, data_id: str, target: str, copied: dict[str, tuple[int, str | None]]
    ) -> dict[str, Any]:
        """Write ``<model>/data/<id>.files.json``; return its reference for the record."""
        def crc32_of(rel: str) -> str:
            return integrity.crc32_of_chunks(integrity.local_chunks(f"{target}/{rel}"))

        # S3: the ETags from the listing; locally there is no store checksum, so CRC32.
        local = isinstance(self._store, LocalStore)
        manifest = integrity.build_manifest(copied, crc32_of=crc32_of if local else None)
        data = storage.dumps(manifest)
        key = self._manifest_key(model, data_id)
        if not self._store.create(key, data):
            raise StorageError(f"a different file manifest already exists at {self._store.uri(key)}")
        return {"key": key, "sha256": hashlib.sha256(data).hexdigest(),
                "checksum": manifest["checksum"], "files": len(manifest["files"])}

    def _commit(self, model: str, record: dict[str, Any]) -> int:
        for _ in range(_COMMIT_ATTEMPTS):
            version = self._max_version(model) + 1
            record["version"] = version
            if self._store.create(self._version_key(model, version), storage.dumps(record)):
                return version
        raise StorageError(
            f"could not commit a new version of {model!r} in {self.uri} after "
            f"{_COMMIT_ATTEMPTS} attempts (other registrars kept taking the next number)"
        )

    # ------------------------------------------------------------------ read versions
    def _version_numbers(self, model: str) -> list[int]:
        numbers = []
        for name in self._store.list(f"{model}/versions"):
            stem, ext = os.path.splitext(name)
            if ext == ".json" and stem.isdigit():
                numbers.append(int(stem))
        return sorted(numbers)

    def _max_version(self, model: str) -> int:
        numbers = self._version_numbers(model)
        return numbers[-1] if numbers else 0

    def _read_json(self, key: str) -> tuple[dict[str, Any], str] | None:
        found = self._store.get(key)
        if found is None:
            return None
        try:
            data = json.loads(found[0].decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise CorruptRegistryError(f"expected JSON in {self._store.uri(key)}: {exc}") from exc
        if not isinstance(data, dict):
            raise CorruptRegistryError(
                f"expected a JSON object in {self._store.uri(key)}, got {type(data).__name__}"
            )
        return data, found[1]

    def _record(self, model: str, version: int) -> dict[str, Any] | None:
        found = self._read_json(self._version_key(model, version))
        return found[0] if found else None

    def _latest_record(self, model: str) -> tuple[int, dict[str, Any]] | None:
        latest = self._max_version(model)
        record = self._record(model, latest) if latest else None
        return (latest, record) if record is not None else None

    def _version_from_record(
        self, model: str, version: int, record: dict[str, Any]
    ) -> ModelVersion:
        where = self._store.uri(self._version_key(model, version))
        data_id = record.get("data")
        try:
            if not isinstance(data_id, str):
                raise ValueError(f"expected a folder name, got {data_id!r}")
            path = self._data_path(model, data_id)
        except ValueError as exc:
            raise CorruptRegistryError(f"bad 'data' folder name in {where}: {exc}") from exc
        raw_metrics, raw_lineage = record.get("metrics"), record.get("lineage")
        metrics: dict[str, Any] = raw_metrics if isinstance(raw_metrics, dict) else {}
        lineage: dict[str, Any] = raw_lineage if isinstance(raw_lineage, dict) else {}
        return ModelVersion(
            model=model,
            version=version,
            checkpoint=Checkpoint(path, self.filesystem, metrics=metrics),
            metrics=metrics,
            lineage=lineage,
            created_at=parse_time(record.get("created_at"), where=where),
            num_files=int(record.get("num_files") or 0),
            size_bytes=int(record.get("size_bytes") or 0),
        )

    def get_version(self, model: str, version: int) -> ModelVersion:
        """One version (one read). Raises ``VersionNotFoundError`` if it does not exist."""
        validate_name(model, what="model name")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"version must be an int >= 1, got {version!r}")
        record = self._record(model, version)
        if record is None:
            raise VersionNotFoundError(
                f"model {model!r} has no version {version} in registry {self.uri} "
                f"(versions(model) lists what exists)"
            )
        return self._version_from_record(model, version, record)

    def versions(self, model: str) -> list[ModelVersion]:
        """Every committed version, oldest first (a listing plus one read per version)."""
        validate_name(model, what="model name")
        numbers = self._version_numbers(model)
        with concurrent.futures.ThreadPoolExecutor(max(1, min(8, len(numbers)))) as pool:
            return list(pool.map(lambda n: self.get_version(model, n), numbers))

    def models(self) -> list[str]:
        """Names of the models that have a folder in the registry."""
        infos = storage.list_dir(self.filesystem, self.base)
        names = [i.base_name for i in infos if i.type == pafs.FileType.Directory]
        return sorted(n for n in names if not n.startswith("."))

    # ------------------------------------------------------------------ integrity
    def verify(
        self,
        model: str,
        version: int | None = None,
        *,
        alias: str = "champion",
        hashes: bool = False,
    ) -> integrity.IntegrityReport:
        """Check a version's files against the manifest ``register`` recorded.

        ``version`` (default: the one ``alias`` points at). Cheap by default: one listing
        of the data folder (on S3 one LIST per 1,000 files, which brings sizes and ETags)
        plus the manifest and the version record. ``hashes=True`` also reads every file
        (CRC32 locally, MD5 against single-part ETags on S3). Versions registered before
        manifests existed are checked by file count and total size.
        """
        validate_name(model, what="model name")
        if version is None:
            validate_name(alias, what="alias")
            event, _ = self._read_alias(model, alias)
            if event is None:
                raise VersionNotFoundError(
                    f"alias {alias!r} of model {model!r} is not set in registry {self.uri}; "
                    "nothing to verify (pass a version)"
                )
            version = event.version
            requests = 1
        else:
            requests = 0
        record = self._record(model, version)
        requests += 1
        if record is None:
            raise VersionNotFoundError(
                f"model {model!r} has no version {version} in registry {self.uri}"
            )
        mv = self._version_from_record(model, version, record)  # validates the folder name
        data_id = str(record.get("data"))
        return integrity.check_version(
            self._store, mv, record, data_key=self._data_key(model, data_id),
            manifest_key=self._manifest_key(model, data_id), hashes=hashes, requests=requests,
        )

    # ------------------------------------------------------------------ model cards
    @staticmethod
    def _card_key(model: str, version: int, ext: str) -> str:
        return f"{model}/cards/{version:010d}.{ext}"

    def save_card(
        self, model: str, version: int, card: dict[str, Any], png: bytes | None = None
    ) -> str:
        """Keep ``card`` (from ``card.build_card``) as the latest card of ``version``, with
        its training-curves picture; returns the card's URI. Two PUTs (one without a
        picture). A later attempt on the same version replaces both."""
        validate_name(model, what="model name")
        if png is not None:
            self._store.put(self._card_key(model, version, "png"), png)
            card = {**card, "picture": self._store.uri(self._card_key(model, version, "png"))}
        key = self._card_key(model, version, "json")
        self._store.put(key, storage.dumps(card))
        return self._store.uri(key)

    def card(self, model: str, version: int) -> dict[str, Any] | None:
        """The latest model card of ``version``, or None if no promotion attempt saved one."""
        validate_name(model, what="model name")
        found = self._read_json(self._card_key(model, version, "json"))
        return found[0] if found else None

    def card_picture_uri(self, model: str, version: int) -> str:
        return self._store.uri(self._card_key(model, version, "png"))

    def card_picture(self, model: str, version: int) -> bytes | None:
        found = self._store.get(self._card_key(model, version, "png"))
        return found[0] if found else None

    # ------------------------------------------------------------------ aliases
    def _read_alias(self, model: str, alias: str) -> tuple[AliasEvent | None, str | None]:
        key = self._alias_key(model, alias)
        found = self._read_json(key)
        if found is None:
            return None, None
        return AliasEvent.from_dict(found[0], where=self._store.uri(key)), found[1]

    def get(self, model: str, alias: str = "champion") -> ModelVersion | None:
        """The version ``alias`` points at, or None if it was never set. Two reads."""
        validate_name(model, what="model name")
        validate_name(alias, what="alias")
        event, _ = self._read_alias(model, alias)
        return self.get_version(model, event.version) if event else None

    def promote(
        self,
        model: str,
        version: int,
        *,
        alias: str = "champion",
        expected_version: int | None | EllipsisType = ...,
        reason: str = "",
        who: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Point ``alias`` at ``version``, as a compare-and-set, and record it in the history.

        ``expected_version``: the version the alias must point at now (None: the alias
        must not exist yet). If it moved, ``PromotionConflict`` is raised and nothing
        changes. Left out (``...``), the move still never overwrites a concurrent one
        unseen: a lost race is retried on the new state, and both moves are in the history.
        ``who`` defaults to ``user@host``.
        """
        validate_name(alias, what="alias")
        if expected_version is not ... and expected_version is not None and (
            isinstance(expected_version, bool)
            or not isinstance(expected_version, int)
            or expected_version < 1
        ):
            raise ValueError(
                f"expected_version must be an int >= 1, None (alias unset) or left out, "
                f"got {expected_version!r}"
            )
        target = self.get_version(model, version)
        attempts = _UNCHECKED_PROMOTE_ATTEMPTS if expected_version is ... else 1
        for _ in range(attempts):
            current, etag = self._read_alias(model, alias)
            current_version = current.version if current else None
            if expected_version is not ... and current_version != expected_version:
                raise PromotionConflict(self._moved(model, alias, current, expected_version))
            event = self._event(
                model, alias, current, version=version, base_seq=current.seq if current else 0,
                action="promote", reason=reason, who=who, details=details,
            )
            if self._move(model, alias, current, etag, event):
                return target
        current, _ = self._read_alias(model, alias)
        raise PromotionConflict(self._moved(model, alias, current, expected_version))

    def rollback(
        self,
        model: str,
        alias: str = "champion",
        *,
        reason: str = "",
        who: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Move ``alias`` back to the version it had before the current one was promoted.

        Recorded in the history as ``action="rollback"``. Raises ``VersionNotFoundError``
        when there is nothing to roll back to, ``CheckpointIntegrityError`` when that
        version's files are missing or changed (checked from one listing), and
        ``PromotionConflict`` if the alias moved while rolling back.
        """
        validate_name(model, what="model name")
        validate_name(alias, what="alias")
        current, etag = self._read_alias(model, alias)
        if current is None:
            raise VersionNotFoundError(
                f"alias {alias!r} of model {model!r} is not set in registry {self.uri}; "
                "nothing to roll back"
            )
        if current.base_seq < 1:
            raise VersionNotFoundError(
                f"alias {alias!r} of model {model!r} points at version {current.version}, "
                "its first promotion: there is no earlier version to roll back to"
            )
        restored = self._history_event(model, alias, current.base_seq)
        target = self.get_version(model, restored.version)
        report = self.verify(model, restored.version)
        if not report.ok:
            # Pointing serving at files that are gone would break every replica that
            # reloads; the current champion at least still loads.
            raise CheckpointIntegrityError(
                f"refusing to roll back alias {alias!r} of model {model!r} from version "
                f"{current.version} to version {restored.version}: its files at {target.uri} "
                f"are not what was registered ({report.problems()}). The alias is unchanged. "
                f"Promote another intact version explicitly (promote(model, version, "
                f"alias={alias!r})), or re-register the checkpoint."
            )
        text = f"rollback from version {current.version}" + (f": {reason}" if reason else "")
        event = self._event(
            model, alias, current, version=restored.version, base_seq=restored.base_seq,
            action="rollback", reason=text, who=who, details=details,
        )
        if not self._move(model, alias, current, etag, event):
            moved, _ = self._read_alias(model, alias)
            raise PromotionConflict(self._moved(model, alias, moved, current.version))
        return target

    def history(
        self, model: str, alias: str = "champion", *, limit: int | None = None
    ) -> list[AliasEvent]:
        """Every promotion and rollback of ``alias``, oldest first (``seq`` 1, 2, ...).
        ``limit``: only the newest ``limit`` events (no listing: the alias plus one read
        per older event)."""
        validate_name(model, what="model name")
        validate_name(alias, what="alias")
        if limit is not None:
            current, _ = self._read_alias(model, alias)
            if current is None or limit < 1:
                return []
            older = range(current.seq - 1, max(0, current.seq - limit), -1)
            return [*reversed([self._history_event(model, alias, s) for s in older]), current]
        seqs = []
        for name in self._store.list(f"{model}/history/{alias}"):
            stem, ext = os.path.splitext(name)
            if ext == ".json" and stem.isdigit():
                seqs.append(int(stem))
        with concurrent.futures.ThreadPoolExecutor(max(1, min(8, len(seqs)))) as pool:
            events = {e.seq: e for e in pool.map(lambda s: self._history_event(model, alias, s), seqs)}
        current, _ = self._read_alias(model, alias)
        if current is not None:
            # The alias object holds the newest event; its history copy may not exist yet.
            events[current.seq] = current
        return [events[s] for s in sorted(events)]

    def _history_event(self, model: str, alias: str, seq: int) -> AliasEvent:
        key = self._history_key(model, alias, seq)
        found = self._read_json(key)
        if found is None:
            raise CorruptRegistryError(
                f"history event {seq} of alias {alias!r} of model {model!r} is missing at "
                f"{self._store.uri(key)}"
            )
        return AliasEvent.from_dict(found[0], where=self._store.uri(key))

    def _event(
        self,
        model: str,
        alias: str,
        current: AliasEvent | None,
        *,
        version: int,
        base_seq: int,
        action: Literal["promote", "rollback"],
        reason: str,
        who: str | None,
        details: dict[str, Any] | None,
    ) -> AliasEvent:
        return AliasEvent(
            model=model,
            alias=alias,
            seq=(current.seq if current else 0) + 1,
            version=version,
            previous_version=current.version if current else None,
            base_seq=base_seq,
            action=action,
            who=who or default_who(),
            at=utc_now(),
            reason=str(reason or ""),
            details=dict(details or {}),
            id=uuid.uuid4().hex,
        )

    def _move(
        self,
        model: str,
        alias: str,
        current: AliasEvent | None,
        etag: str | None,
        event: AliasEvent,
    ) -> bool:
        if current is not None:
            # Complete the chain first: the previous mover may have died before writing it.
            self._store.create(
                self._history_key(model, alias, current.seq), storage.dumps(current.to_dict())
            )
        data = storage.dumps(event.to_dict())
        if not self._store.replace(self._alias_key(model, alias), data, etag=etag):
            return self._superseded(model, alias, event)
        try:
            self._store.create(self._history_key(model, alias, event.seq), data)
        except (StorageError, OSError):
            pass  # the alias object holds this event; the next move or history() completes it
        return True

    def _superseded(self, model: str, alias: str, event: AliasEvent) -> bool:
        """True if ``event`` did move the alias and another move has followed it since.

        On S3 a compare-and-set whose answer was lost is retried by boto3 and refused with
        412; if someone moved the alias in between, the alias no longer holds our bytes.
        The mover after us copied our event into the history first, so that copy (same
        unique id) tells a superseded success from a lost race, and the caller neither
        reports a conflict for its own promotion nor applies it a second time.
        """
        found = self._read_json(self._history_key(model, alias, event.seq))
        return found is not None and found[0].get("id") == event.id

    def _moved(
        self, model: str, alias: str, current: AliasEvent | None, expected: Any
    ) -> str:
        now = (
            f"version {current.version} (moved by {current.who!r} at {current.at.isoformat()}"
            f", {current.action}: {current.reason!r})"
            if current
            else "nothing (unset)"
        )
        wanted = "unset" if expected is None else ("unchanged" if expected is ... else expected)
        return (
            f"alias {alias!r} of model {model!r} in registry {self.uri} moved meanwhile: "
            f"expected {wanted}, it now points at {now}. Re-read it and decide again."
        )

    # ------------------------------------------------------------------ cleanup
    def collect_garbage(self, model: str, *, older_than_seconds: float = 86400.0) -> list[str]:
        """Delete data folders no version references (left by crashed or failed registers)
        and older than ``older_than_seconds`` (so copies still in flight are spared).
        Returns the URIs removed."""
        validate_name(model, what="model name")
        referenced = {
            (self._record(model, n) or {}).get("data") for n in self._version_numbers(model)
        }
        cutoff = time.time() - older_than_seconds
        removed = []
        for info in storage.list_dir(self.filesystem, f"{self.base}/{model}/data"):
            name = info.base_name
            if info.type == pafs.FileType.File and name.endswith(MANIFEST_SUFFIX):
                name, folder = name[: -len(MANIFEST_SUFFIX)], False
            elif info.type == pafs.FileType.Directory:
                folder = True
            else:
                continue
            if name in referenced:
                continue
            started = _data_time(name)
            if started is None:
                continue  # not something we made
            if started <= cutoff:
                if folder:
                    storage.delete_dir(self.filesystem, info.path)
                else:
                    storage.delete_file(self.filesystem, info.path)
                removed.append(storage.to_uri(self.filesystem, info.path))
        return removed


def _data_time(name: str) -> float | None:
    """When a data folder was started, from its name (``storage.stamp``, or the seconds-only
    ``%Y%m%dT%H%M%SZ`` stamp of registries written before 0.2); None if it is not ours."""
    stamp = storage.parse_stamp(name)
    if stamp is not None:
        return stamp
    try:
        return float(calendar.timegm(time.strptime(name.split("-", 1)[0], "%Y%m%dT%H%M%SZ")))
    except ValueError:
        return None
