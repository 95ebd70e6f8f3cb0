"""The registry's conditional writes on Google Cloud Storage and Azure Blob.

The same ``ObjectStore`` contract as ``_cas`` (see there), on each service's own
preconditions, through its SDK (pyarrow's filesystems cannot write conditionally):

* GCS: object generations. ``create`` is ``ifGenerationMatch=0`` (only if absent),
  ``replace`` ``ifGenerationMatch=<generation read>``; the etag is the generation.
* Azure: ETags. ``create`` is ``If-None-Match: *``, ``replace`` ``If-Match: <etag>``.

Each store's ``require_conditional_writes`` writes a probe object twice as "create only":
a store (or emulator) that lets the second create through ignores preconditions and is
refused, as ``S3Store`` does. Known: gcp-storage-emulator ignores ``ifGenerationMatch``
(refused); Azurite honours ``If-Match`` and ``If-None-Match``.

Listing checksums: the MD5 (hex) where the service has one, so ``integrity`` can verify
content by hashing; otherwise a ``gen-``/``etag-`` token that changes with the object and
is compared from the listing only.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

from trainresults_dagster.errors import StorageError, scrub

from ._cas import _CHUNK, PROBE_KEY


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


class _Prefixed:
    def __init__(self, scheme: str, container: str, prefix: str) -> None:
        self.scheme = scheme
        self.container = container
        self.prefix = prefix.strip("/")
        self._conditional_ok = False

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"{self.scheme}://{self.container}/{self._key(key)}"

    def _fail(self, what: str, key: str, exc: Exception) -> StorageError:
        if getattr(exc, "error_code", None) == "ContainerNotFound":  # Azure
            return self._no_container("container", exc)
        if what == "list" and type(exc).__name__ == "NotFound":  # GCS: a listing's 404 is the bucket
            return self._no_container("bucket", exc)
        scrub(exc)  # azure-core puts the request URL, SAS signature included, in its message
        return StorageError(f"{what} failed at {self.uri(key)}: {type(exc).__name__}: "
                            f"{_first_line(exc)}")

    def _no_container(self, kind: str, exc: Exception | None) -> StorageError:
        if exc is not None:
            scrub(exc)
        why = f" ({type(exc).__name__})" if exc is not None else ""
        return StorageError(
            f"the registry at {self.uri('')} is in {kind} {self.container!r}, which does not "
            f"exist{why}: create the {kind}, or fix the registry's base_path"
        )

    def _try_create(self, key: str, data: bytes) -> bool:
        raise NotImplementedError

    def _ignored(self) -> str:
        raise NotImplementedError

    def require_conditional_writes(self) -> None:
        # A store that ignores preconditions would accept every write and silently lose
        # versions and promotions. Check once: the second create of the probe must fail.
        if self._conditional_ok:
            return
        if self._try_create(PROBE_KEY, b"{}") and self._try_create(PROBE_KEY, b"{}"):
            raise StorageError(
                f"the storage service behind {self.uri('')} ignored {self._ignored()} (a second "
                "create-only write of the same object succeeded); the registry needs "
                "conditional writes. The real service has them; use an emulator that honours "
                "them, or a local or s3:// registry for tests"
            )
        self._conditional_ok = True

    def _get_current(self, key: str) -> tuple[bytes, str] | None:
        raise NotImplementedError

    def _settle(self, key: str, data: bytes, written: bool) -> bool:
        """Our bytes already there mean an earlier attempt of ours landed (see ``_cas``)."""
        if written:
            return True
        current = self._get_current(key)
        return current is not None and current[0] == data


class GcsStore(_Prefixed):
    """Conditional writes on GCS with object generations (google-cloud-storage)."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        super().__init__("gs", bucket, prefix)
        self.client = client
        self.bucket = client.bucket(bucket)
        self._bucket_seen = False

    def _ignored(self) -> str:
        return "'ifGenerationMatch=0'"

    def _require_bucket(self) -> None:
        """Once per store: a missing object in a missing bucket is an error, not "absent"."""
        if self._bucket_seen:
            return
        try:
            found = self.bucket.exists()
        except Exception as exc:  # noqa: BLE001
            raise self._fail("bucket lookup", "", exc) from exc
        if not found:
            raise self._no_container("bucket", None)
        self._bucket_seen = True

    def _blob(self, key: str, generation: int | None = None) -> Any:
        return self.bucket.blob(self._key(key), generation=generation)

    @staticmethod
    def _is(exc: Exception, *names: str) -> bool:
        return type(exc).__name__ in names or getattr(exc, "code", None) in (412, 404)

    def _get_current(self, key: str) -> tuple[bytes, str] | None:
        return self.get(key)

    def get(self, key: str) -> tuple[bytes, str] | None:
        for _ in range(5):
            try:
                blob = self.bucket.get_blob(self._key(key))
                if blob is None:
                    self._require_bucket()  # get_blob answers a missing bucket with None too
                    return None
                # Pinned to the generation just read: content and etag always belong together.
                data = blob.download_as_bytes(if_generation_match=blob.generation)
                return data, str(blob.generation)
            except Exception as exc:  # noqa: BLE001 - google-api-core errors are classified by name
                if type(exc).__name__ == "NotFound":
                    return None
                if type(exc).__name__ == "PreconditionFailed":  # replaced between the reads
                    continue
                raise self._fail("read", key, exc) from exc
        raise StorageError(f"read at {self.uri(key)} kept racing with concurrent writers")

    def _upload(self, key: str, data: bytes, generation: int | None) -> bool:
        try:
            self._blob(key).upload_from_string(
                data, content_type="application/json", if_generation_match=generation
            )
            return True
        except Exception as exc:  # noqa: BLE001 - google-api-core errors are classified by name
            if type(exc).__name__ == "PreconditionFailed":
                return False
            if type(exc).__name__ == "NotFound":  # an upload's 404 is the bucket, never a race
                raise self._no_container("bucket", exc) from exc
            raise self._fail("conditional write", key, exc) from exc

    def _try_create(self, key: str, data: bytes) -> bool:
        return self._upload(key, data, 0)

    def create(self, key: str, data: bytes) -> bool:
        self.require_conditional_writes()
        return self._settle(key, data, self._upload(key, data, 0))

    def replace(self, key: str, data: bytes, *, etag: str | None) -> bool:
        self.require_conditional_writes()
        generation = 0 if etag is None else int(etag)
        return self._settle(key, data, self._upload(key, data, generation))

    def put(self, key: str, data: bytes) -> None:
        try:
            self._blob(key).upload_from_string(data, content_type="application/octet-stream")
        except Exception as exc:  # noqa: BLE001
            raise self._fail("write", key, exc) from exc

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix).rstrip("/") + "/"
        try:
            names = [b.name[len(full):] for b in
                     self.client.list_blobs(self.bucket, prefix=full, delimiter="/")]
        except Exception as exc:  # noqa: BLE001
            raise self._fail("list", prefix, exc) from exc
        return sorted(n for n in names if n and not n.startswith("."))

    def files(self, prefix: str) -> dict[str, tuple[int, str | None]]:
        full = self._key(prefix).rstrip("/") + "/"
        out: dict[str, tuple[int, str | None]] = {}
        try:
            for blob in self.client.list_blobs(self.bucket, prefix=full):
                rel = blob.name[len(full):]
                if not rel or rel.endswith("/"):
                    continue
                md5 = base64.b64decode(blob.md5_hash).hex() if blob.md5_hash else None
                out[rel] = (int(blob.size or 0), md5 or f"gen-{blob.generation}")
        except Exception as exc:  # noqa: BLE001
            raise self._fail("list", prefix, exc) from exc
        return out

    def chunks(self, key: str) -> Iterator[bytes]:
        try:
            with self._blob(key).open("rb", chunk_size=_CHUNK) as fh:
                while chunk := fh.read(_CHUNK):
                    yield chunk
        except Exception as exc:  # noqa: BLE001
            raise self._fail("read", key, exc) from exc


class AzureStore(_Prefixed):
    """Conditional writes on Azure Blob with ETags (azure-storage-blob)."""

    def __init__(self, service: Any, container: str, prefix: str) -> None:
        super().__init__("abfs", container, prefix)
        self.container_client = service.get_container_client(container)

    def _ignored(self) -> str:
        return "'If-None-Match: *'"

    def _blob(self, key: str) -> Any:
        return self.container_client.get_blob_client(self._key(key))

    def _get_current(self, key: str) -> tuple[bytes, str] | None:
        return self.get(key)

    def get(self, key: str) -> tuple[bytes, str] | None:
        try:
            download = self._blob(key).download_blob()
            return download.readall(), str(download.properties.etag)
        except Exception as exc:  # noqa: BLE001 - azure-core errors are classified by name
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                raise self._no_container("container", exc) from exc
            if type(exc).__name__ == "ResourceNotFoundError":
                return None
            raise self._fail("read", key, exc) from exc

    def _upload(self, key: str, data: bytes, *, etag: str | None) -> bool:
        from azure.core import MatchConditions
        from azure.storage.blob import ContentSettings

        condition: dict[str, Any] = (
            {"overwrite": False} if etag is None  # If-None-Match: *
            else {"overwrite": True, "etag": etag, "match_condition": MatchConditions.IfNotModified}
        )
        try:
            self._blob(key).upload_blob(
                data, content_settings=ContentSettings(content_type="application/json"), **condition
            )
            return True
        except Exception as exc:  # noqa: BLE001 - azure-core errors are classified by name
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                raise self._no_container("container", exc) from exc
            if type(exc).__name__ in ("ResourceExistsError", "ResourceModifiedError",
                                      "ResourceNotFoundError"):
                return False
            raise self._fail("conditional write", key, exc) from exc

    def _try_create(self, key: str, data: bytes) -> bool:
        return self._upload(key, data, etag=None)

    def create(self, key: str, data: bytes) -> bool:
        self.require_conditional_writes()
        return self._settle(key, data, self._upload(key, data, etag=None))

    def replace(self, key: str, data: bytes, *, etag: str | None) -> bool:
        self.require_conditional_writes()
        return self._settle(key, data, self._upload(key, data, etag=etag))

    def put(self, key: str, data: bytes) -> None:
        try:
            self._blob(key).upload_blob(data, overwrite=True)
        except Exception as exc:  # noqa: BLE001
            raise self._fail("write", key, exc) from exc

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix).rstrip("/") + "/"
        try:
            names = [item.name[len(full):] for item in
                     self.container_client.walk_blobs(name_starts_with=full, delimiter="/")
                     if not item.name.endswith("/")]
        except Exception as exc:  # noqa: BLE001
            raise self._fail("list", prefix, exc) from exc
        return sorted(n for n in names if n and not n.startswith("."))

    def files(self, prefix: str) -> dict[str, tuple[int, str | None]]:
        full = self._key(prefix).rstrip("/") + "/"
        out: dict[str, tuple[int, str | None]] = {}
        try:
            for blob in self.container_client.list_blobs(name_starts_with=full):
                rel = blob.name[len(full):]
                if not rel or rel.endswith("/"):
                    continue
                md5 = blob.content_settings.content_md5 if blob.content_settings else None
                token = bytes(md5).hex() if md5 else f"etag-{str(blob.etag).strip(chr(34))}"
                out[rel] = (int(blob.size or 0), token)
        except Exception as exc:  # noqa: BLE001
            raise self._fail("list", prefix, exc) from exc
        return out

    def chunks(self, key: str) -> Iterator[bytes]:
        try:
            yield from self._blob(key).download_blob().chunks()
        except Exception as exc:  # noqa: BLE001
            raise self._fail("read", key, exc) from exc
