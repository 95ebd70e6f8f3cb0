"""Small JSON objects with conditional writes: the registry's commit points.

pyarrow's filesystems cannot write conditionally, and a registry needs two primitives to
stay consistent without a database:

* ``create(key, data)``: write only if nothing is there (S3 ``If-None-Match: *``). Two
  registrars racing for version 7 cannot both win.
* ``replace(key, data, etag=...)``: write only if the object is still the one we read
  (S3 ``If-Match: <etag>``), or, with ``etag=None``, only if there is none yet. This is the
  compare-and-set behind alias promotion.

Two backends: ``LocalStore`` (a folder; ``os.link`` of a fully written temp file for
create, an ``flock``-guarded compare + ``os.replace`` for replace; the etag is a SHA-256 of
the content) and ``S3Store`` (boto3, because pyarrow's S3 client has no conditional PUT).

Both treat "the object already holds exactly the bytes I tried to write" as success: each
object we write carries a unique id, so equal bytes mean our own earlier attempt landed
(e.g. a PUT whose response was lost and which boto3 then retried into a 412).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any, Protocol

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import StorageError


class ObjectStore(Protocol):
    """Keys are ``/``-separated paths relative to the store's root."""

    def uri(self, key: str) -> str: ...

    def get(self, key: str) -> tuple[bytes, str] | None:
        """``(content, etag)`` or None when the key does not exist."""
        ...

    def create(self, key: str, data: bytes) -> bool:
        """Write iff absent. False when another writer's object is there."""
        ...

    def replace(self, key: str, data: bytes, *, etag: str | None) -> bool:
        """Write iff the current etag is ``etag`` (None: iff absent). False on conflict."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Names of the objects directly under ``prefix`` (no folders, no temp files)."""
        ...

    def put(self, key: str, data: bytes) -> None:
        """Write unconditionally (for objects that are replaced whole, like model cards)."""
        ...

    def files(self, prefix: str) -> dict[str, tuple[int, str | None]]:
        """``{relative path: (size, store checksum or None)}`` of every file under ``prefix``,
        dotfiles included, in one listing (S3: the ETag; locally there is none)."""
        ...

    def chunks(self, key: str) -> Iterator[bytes]:
        """The object's bytes in pieces (one GET on S3), for hashing without holding it."""
        ...

    def require_conditional_writes(self) -> None:
        """Raise ``StorageError`` if the store silently ignores write conditions."""
        ...


# --------------------------------------------------------------------------------------
# Local folder
# --------------------------------------------------------------------------------------


_CHUNK = 8 << 20


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalStore:
    """Conditional writes in a local (or NFS/POSIX) folder."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def uri(self, key: str) -> str:
        return self._path(key)

    def get(self, key: str) -> tuple[bytes, str] | None:
        try:
            with open(self._path(key), "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return None
        return data, _etag(data)

    def _write_temp(self, path: str, data: bytes) -> str:
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp

    def create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            # link() fails if the name exists and publishes a complete file in one step;
            # O_EXCL + write would expose a half-written file to readers.
            os.link(tmp, path)
        except FileExistsError:
            current = self.get(key)
            return current is not None and current[0] == data
        finally:
            os.unlink(tmp)
        storage.fsync_path(os.path.dirname(path))
        return True

    @contextlib.contextmanager
    def _locked(self, path: str) -> Iterator[None]:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        lock_path = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")
        with open(lock_path, "a") as lock:
            # flock is released by the kernel if the holder dies, so a SIGKILLed promoter
            # never leaves the alias locked.
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def replace(self, key: str, data: bytes, *, etag: str | None) -> bool:
        path = self._path(key)
        with self._locked(path):
            current = self.get(key)
            current_etag = current[1] if current is not None else None
            if current_etag != etag:
                return current is not None and current[0] == data
            tmp = self._write_temp(path, data)
            try:
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            storage.fsync_path(os.path.dirname(path))
        return True

    def require_conditional_writes(self) -> None:
        """POSIX link() and flock() are always there."""

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        os.replace(tmp, path)
        storage.fsync_path(os.path.dirname(path))

    def files(self, prefix: str) -> dict[str, tuple[int, str | None]]:
        root = self._path(prefix)
        out: dict[str, tuple[int, str | None]] = {}
        for folder, _dirs, names in os.walk(root):
            for name in names:
                full = os.path.join(folder, name)
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                try:
                    out[rel] = (os.stat(full).st_size, None)
                except FileNotFoundError:  # deleted while listing: it is missing
                    continue
        return out

    def chunks(self, key: str) -> Iterator[bytes]:
        with open(self._path(key), "rb") as fh:
            while chunk := fh.read(_CHUNK):
                yield chunk

    def list(self, prefix: str) -> list[str]:
        try:
            names = os.listdir(self._path(prefix))
        except FileNotFoundError:
            return []
        folder = self._path(prefix)
        return sorted(
            n for n in names if not n.startswith(".") and os.path.isfile(os.path.join(folder, n))
        )


# --------------------------------------------------------------------------------------
# S3
# --------------------------------------------------------------------------------------

#: Written once per registry (and left there) to check that the store honours conditions.
PROBE_KEY = ".conditional-write-probe"

#: S3 answers 409 ConditionalRequestConflict when two conditional writes to one key overlap;
#: AWS says to retry. Bounded, with a short jittered pause.
_CONFLICT_RETRIES = 8


def _error_code(exc: Exception) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


class S3Store:
    """Conditional writes on S3 (and S3-compatible stores that implement them)."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._conditional_ok = False

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _fail(self, what: str, key: str, exc: Exception) -> StorageError:
        code, status = _error_code(exc)
        if code == "NoSuchBucket":
            return self._no_bucket()
        detail = f"{code} (HTTP {status})" if code else f"{type(exc).__name__}: {exc}"
        return StorageError(f"{what} failed at {self.uri(key)}: {detail}")

    def _no_bucket(self) -> StorageError:
        return StorageError(
            f"the registry at {self.uri('')} is in bucket {self.bucket!r}, which does not "
            "exist (NoSuchBucket): create the bucket, or fix the registry's base_path"
        )

    def get(self, key: str) -> tuple[bytes, str] | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return response["Body"].read(), response["ETag"]
        except Exception as exc:  # noqa: BLE001 - botocore errors are classified by code
            code, status = _error_code(exc)
            if code == "NoSuchBucket":
                raise self._no_bucket() from exc
            if code in ("NoSuchKey", "404") or status == 404:
                return None
            raise self._fail("read", key, exc) from exc

    def _try_put(self, key: str, data: bytes, **condition: str) -> bool:
        """One conditional PUT: True if written, False if the precondition failed."""
        for attempt in range(_CONFLICT_RETRIES):
            try:
                self.client.put_object(
                    Bucket=self.bucket,
                    Key=self._key(key),
                    Body=data,
                    ContentType="application/json",
                    **condition,
                )
                return True
            except Exception as exc:  # noqa: BLE001 - botocore errors are classified by code
                code, status = _error_code(exc)
                if status == 409 or code == "ConditionalRequestConflict":
                    time.sleep(0.02 * (attempt + 1) * (0.5 + random.random()))
                    continue
                if code == "NoSuchBucket":  # a 404 too, but no lost race: say what is wrong
                    raise self._no_bucket() from exc
                if status in (412, 404) or code in ("PreconditionFailed", "NoSuchKey"):
                    return False
                raise self._fail("conditional write", key, exc) from exc
        raise StorageError(
            f"conditional write at {self.uri(key)} kept conflicting with concurrent writers "
            f"({_CONFLICT_RETRIES} attempts)"
        )

    def require_conditional_writes(self) -> None:
        # A store that ignores If-None-Match / If-Match (older S3-compatible servers) would
        # accept every write and silently lose versions and promotions. Check once: the
        # second create of the probe object must be refused.
        if self._conditional_ok:
            return
        if self._try_put(PROBE_KEY, b"{}", IfNoneMatch="*") and self._try_put(
            PROBE_KEY, b"{}", IfNoneMatch="*"
        ):
            raise StorageError(
                f"the S3 service behind {self.uri('')} ignored 'If-None-Match: *' (a second "
                "create of the same object succeeded); the registry needs conditional writes "
                "(AWS S3 has them; for other S3-compatible stores, check their docs)"
            )
        self._conditional_ok = True

    def _put(self, key: str, data: bytes, **condition: str) -> bool:
        self.require_conditional_writes()
        try:
            if self._try_put(key, data, **condition):
                return True
        except StorageError:
            # Every answer may have been lost, even though the server executed an attempt
            # (a reset after forwarding, then 412s, until boto3 gives up). Decide from what
            # is there now: our bytes mean it happened (failing would make callers redo it),
            # another writer's object means a lost race; only an untouched key is a failure.
            try:
                current = self.get(key)
            except StorageError:
                current = None
            if current is None or current[1] == condition.get("IfMatch"):
                raise
            return current[0] == data
        current = self.get(key)
        return current is not None and current[0] == data

    def create(self, key: str, data: bytes) -> bool:
        return self._put(key, data, IfNoneMatch="*")

    def replace(self, key: str, data: bytes, *, etag: str | None) -> bool:
        if etag is None:
            return self._put(key, data, IfNoneMatch="*")
        return self._put(key, data, IfMatch=etag)

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix).rstrip("/") + "/"
        names: list[str] = []
        try:
            for obj in storage.list_keys(self.client, self.bucket, full, delimiter="/"):
                names.append(obj["Key"][len(full):])
        except Exception as exc:  # noqa: BLE001 - botocore errors are classified by code
            raise self._fail("list", prefix, exc) from exc
        return sorted(n for n in names if n and not n.startswith("."))

    def put(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data,
                ContentType="application/octet-stream",
            )
        except Exception as exc:  # noqa: BLE001 - botocore errors are classified by code
            raise self._fail("write", key, exc) from exc

    def files(self, prefix: str) -> dict[str, tuple[int, str | None]]:
        full = self._key(prefix).rstrip("/") + "/"
        out: dict[str, tuple[int, str | None]] = {}
        try:
            for obj in storage.list_keys(self.client, self.bucket, full):
                rel = obj["Key"][len(full):]
                if rel and not rel.endswith("/"):
                    out[rel] = (int(obj.get("Size") or 0), str(obj.get("ETag") or "") or None)
        except Exception as exc:  # noqa: BLE001 - botocore errors are classified by code
            raise self._fail("list", prefix, exc) from exc
        return out

    def chunks(self, key: str) -> Iterator[bytes]:
        # boto3's GET directly: pyarrow's input stream adds a HEAD per object.
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except Exception as exc:  # noqa: BLE001 - botocore errors are classified by code
            raise self._fail("read", key, exc) from exc
        yield from body.iter_chunks(_CHUNK)
