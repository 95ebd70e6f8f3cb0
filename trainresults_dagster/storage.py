"""Storage primitives over pyarrow filesystems (local disk and S3).

Everything that touches storage goes through here, so retries, atomic writes, URI
handling and path safety are decided once:

* ``resolve(path_or_uri, filesystem)`` -> ``(filesystem, path)`` with the scheme stripped,
  the way Ray stores ``Result.path``; ``to_uri(filesystem, path)`` gives it back.
* ``s3_filesystem(...)`` builds a ``pyarrow.fs.S3FileSystem`` from a dagster-aws
  ``S3Resource`` (endpoint, region, credentials) without writing credentials anywhere.
* ``call(...)`` wraps a storage request in a bounded retry: pyarrow's own S3 retry does not
  cover every transient error (a ``503 SlowDown`` on a small object fails at once with
  "Failed to flush response stream"), see DESIGN.md.
* ``write_bytes_atomic`` is write-then-rename on local disk and a single PUT on S3, so a
  concurrent reader sees the old object or the new one, never a torn one.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import posixpath
import random
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow.fs as pafs

from .errors import RunNotFoundError, StorageError, UnsafePathError
from .http import json_safe

if TYPE_CHECKING:
    from dagster_aws.s3 import S3Resource

T = TypeVar("T")

#: Substrings of transient storage errors worth retrying (S3 5xx, throttling, resets).
_TRANSIENT = (
    "slowdown",
    "slow_down",
    "slow down",
    "http status 5",
    "network_connection",
    "curlcode",
    "short read",
    "service_unavailable",
    "internal_failure",
    "503",
    "500 ",
    "internalerror",
    "service unavailable",
    "failed to flush",
    "connection reset",
    "timed out",
    "timeout",
    "requesttimeout",
    "throttl",
    "curl error",
    "broken pipe",
    "unexpected eof",
    "premature end",
    "econnreset",
)

CHUNK_BYTES = 8 * 2**20
#: Unreachable endpoints: pyarrow's client already retried these with backoff; retrying
#: again here would only multiply the wait before the user sees the error.
_UNREACHABLE = ("could not connect", "couldn't connect", "curlcode: 7,", "could not resolve")

RETRY_ATTEMPTS = int(os.environ.get("TRAINRESULTS_STORAGE_RETRIES", "6"))
RETRY_BASE_SECONDS = 0.05
RETRY_MAX_SECONDS = 2.0


def is_transient(exc: BaseException) -> bool:
    """True for errors a retry can cure: throttling, 5xx, resets. Not for missing files."""
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError):
        return False
    if not isinstance(exc, OSError | ConnectionError | TimeoutError):
        return False
    text = str(exc).lower()
    if any(marker in text for marker in _UNREACHABLE):
        return False
    return any(marker in text for marker in _TRANSIENT)


def call(fn: Callable[[], T], *, what: str, where: str, attempts: int | None = None) -> T:
    """Run one storage request with bounded, jittered exponential backoff on transient errors.

    Total sleep is bounded (about 6 s with the defaults). The final error names the
    operation and the location; it never carries credentials (pyarrow does not put them in
    messages, and we add only the URI).
    """
    attempts = attempts or RETRY_ATTEMPTS
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - classified just below
            if not is_transient(exc):
                raise
            if attempt == attempts:
                raise StorageError(
                    f"{what} failed at {where} after {attempts} attempts: {exc}"
                ) from exc
            delay = min(RETRY_MAX_SECONDS, RETRY_BASE_SECONDS * 2 ** (attempt - 1))
            time.sleep(delay * (0.5 + random.random()))
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------------------
# Locations
# --------------------------------------------------------------------------------------


def split_scheme(uri: str) -> tuple[str, str]:
    """``"s3://b/k"`` -> ``("s3", "b/k")``; a plain path -> ``("", path)``."""
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        return scheme.lower(), rest
    return "", uri


def resolve(
    path_or_uri: str | os.PathLike[str], filesystem: pafs.FileSystem | None = None
) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path)`` for a local path or a URI.

    With an explicit ``filesystem`` a scheme is stripped (``s3://b/k`` -> ``b/k``), as Ray
    does when you pass ``storage_filesystem``. Without one, ``s3://`` and other URIs go
    through ``pyarrow.fs.FileSystem.from_uri`` and plain paths become absolute local paths.
    """
    raw = os.fspath(path_or_uri)
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"expected a path or URI such as 's3://bucket/run', got {raw!r}")
    scheme, rest = split_scheme(raw)
    if scheme == "file":
        scheme, raw = "", rest
    if scheme in ("s3", "gs", "gcs"):
        bucket = rest.split("/", 1)[0]
        if not bucket:
            raise ValueError(f"expected {scheme}://BUCKET/key, but {raw!r} names no bucket")
    if filesystem is not None:
        path = rest if scheme else raw
        if isinstance(filesystem, pafs.LocalFileSystem):
            path = os.path.abspath(path)
        return filesystem, path.rstrip("/") or "/"
    if not scheme:
        local = os.path.abspath(os.path.expanduser(raw))
        return pafs.LocalFileSystem(), local.rstrip("/") or "/"
    fs, path = pafs.FileSystem.from_uri(raw)
    return fs, path.rstrip("/")


def scheme_of(filesystem: pafs.FileSystem) -> str:
    name = filesystem.type_name
    if name == "local":
        return ""
    if name == "gcs":
        return "gs"
    return name


def to_uri(filesystem: pafs.FileSystem, path: str) -> str:
    """Scheme-qualified location: ``s3://bucket/key`` or an absolute local path."""
    scheme = scheme_of(filesystem)
    if not scheme:
        return os.path.abspath(path)
    return f"{scheme}://{path.lstrip('/')}"


def safe_child(base: str, name: Any, *, what: str, where: str) -> str:
    """``base/name`` for a single path component read from storage or given by a user.

    Rejects absolute names, ``..``, separators and empty names: a snapshot or manifest that
    says ``"../../etc"`` must not make us read or delete outside the run.
    """
    if not isinstance(name, str) or not name or name in (".", ".."):
        raise UnsafePathError(f"{what} must be a non-empty folder name, got {name!r} in {where}")
    if "/" in name or "\\" in name or "\x00" in name or name.startswith("~"):
        raise UnsafePathError(
            f"{what} must be a single folder name without separators, got {name!r} in {where}"
        )
    return posixpath.join(base, name)


# --------------------------------------------------------------------------------------
# S3
# --------------------------------------------------------------------------------------


def s3_filesystem(
    s3: S3Resource | None = None,
    *,
    endpoint_url: str | None = None,
    region_name: str | None = None,
    aws_access_key_id: str | None = None,
    aws_secret_access_key: str | None = None,
    aws_session_token: str | None = None,
    max_attempts: int = 5,
) -> pafs.S3FileSystem:
    """A ``pyarrow.fs.S3FileSystem`` configured like a dagster-aws ``S3Resource``.

    Explicit keyword arguments win over the resource's fields. With no credentials given,
    pyarrow uses the default AWS chain (environment, profile, instance role), as boto3 does.
    A ``profile_name`` on the resource is resolved through boto3 once, here.
    """
    if s3 is not None:
        endpoint_url = endpoint_url or s3.endpoint_url
        region_name = region_name or s3.region_name
        aws_access_key_id = aws_access_key_id or s3.aws_access_key_id
        aws_secret_access_key = aws_secret_access_key or s3.aws_secret_access_key
        aws_session_token = aws_session_token or s3.aws_session_token
        max_attempts = s3.max_attempts or max_attempts
        if not aws_access_key_id and s3.profile_name:
            import boto3

            creds = boto3.Session(profile_name=s3.profile_name).get_credentials()
            if creds is not None:
                frozen = creds.get_frozen_credentials()
                aws_access_key_id, aws_secret_access_key = frozen.access_key, frozen.secret_key
                aws_session_token = frozen.token
    kwargs: dict[str, Any] = {
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts),
        "connect_timeout": 10,
        "request_timeout": 60,
        # Small objects (records, manifests, pointers) go up as one PutObject instead of a
        # three-request multipart upload; either way the object appears only when complete.
        "allow_delayed_open": True,
    }
    if s3 is not None and s3.use_unsigned_session:
        kwargs["anonymous"] = True
    if endpoint_url:
        scheme, rest = split_scheme(endpoint_url)
        kwargs["endpoint_override"] = rest.rstrip("/") if scheme else endpoint_url
        kwargs["scheme"] = scheme or "https"
    if s3 is not None and s3.use_ssl is False:
        kwargs["scheme"] = "http"
    kwargs["region"] = region_name or os.environ.get("AWS_REGION") or os.environ.get(
        "AWS_DEFAULT_REGION", "us-east-1"
    )
    if aws_access_key_id:
        kwargs["access_key"] = aws_access_key_id
        kwargs["secret_key"] = aws_secret_access_key
        if aws_session_token:
            kwargs["session_token"] = aws_session_token
    return pafs.S3FileSystem(**kwargs)


def filesystem_for(
    path_or_uri: str, s3: S3Resource | None = None
) -> tuple[pafs.FileSystem, str]:
    """Resolve a location, building the S3 filesystem from ``s3`` for ``s3://`` URIs."""
    scheme, _ = split_scheme(str(path_or_uri))
    if scheme == "s3" and s3 is not None:
        return resolve(path_or_uri, s3_filesystem(s3))
    return resolve(path_or_uri)


# --------------------------------------------------------------------------------------
# Reads
# --------------------------------------------------------------------------------------


def file_info(fs: pafs.FileSystem, path: str) -> pafs.FileInfo:
    return call(lambda: fs.get_file_info(path), what="stat", where=to_uri(fs, path))


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return file_info(fs, path).type != pafs.FileType.NotFound


def is_dir(fs: pafs.FileSystem, path: str) -> bool:
    return file_info(fs, path).type == pafs.FileType.Directory


class ShortReadError(OSError):
    """Fewer bytes arrived than the object holds (a transient fault; retried)."""


def _read_verified(fs: pafs.FileSystem, path: str) -> bytes:
    """Read a whole file and check its length against the size storage reports.

    A cheap guard (the size comes from the HEAD ``open_input_file`` makes anyway): a proxy
    or store that ends a body early must not hand us a short object as if it were whole.
    """
    with fs.open_input_file(path) as fh:
        size = fh.size()
        data = fh.read()
    if len(data) != size:
        raise ShortReadError(f"short read of {to_uri(fs, path)}: got {len(data)} of {size} bytes")
    return data


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    return call(lambda: _read_verified(fs, path), what="read", where=to_uri(fs, path))


def read_text(fs: pafs.FileSystem, path: str) -> str:
    return read_bytes(fs, path).decode("utf-8")


def read_json(fs: pafs.FileSystem, path: str) -> Any:
    """Parse JSON. Raises ``FileNotFoundError``, ``UnicodeDecodeError`` or ``ValueError``."""
    return json.loads(read_bytes(fs, path).decode("utf-8"))


def list_dir(fs: pafs.FileSystem, path: str, *, recursive: bool = False) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=recursive)
    return call(lambda: fs.get_file_info(selector), what="list", where=to_uri(fs, path))


def require_dir(fs: pafs.FileSystem, path: str, *, what: str) -> None:
    info = file_info(fs, path)
    if info.type == pafs.FileType.NotFound:
        raise RunNotFoundError(f"expected {what} at {to_uri(fs, path)}, but nothing is there")
    if info.type != pafs.FileType.Directory:
        raise RunNotFoundError(
            f"expected {what} (a folder) at {to_uri(fs, path)}, but it is a file"
        )


# --------------------------------------------------------------------------------------
# Writes
# --------------------------------------------------------------------------------------


def dumps(obj: Any) -> bytes:
    """Stable JSON for files we write: sorted keys, no NaN literals (they become null)."""
    return json.dumps(json_safe(obj), sort_keys=True, indent=1, default=str).encode("utf-8")


def fsync_path(path: str) -> None:
    """Flush a local file or directory to disk; for a directory, its entries (a rename or a
    new file is only durable once its parent directory is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Readers see the previous content or the new one, never a partial file.

    Local: write a sibling temp file, fsync, ``os.replace``. S3: one PUT (an object only
    becomes visible when its upload completes).
    """
    if isinstance(fs, pafs.LocalFileSystem):
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return

    def _put() -> None:
        with fs.open_output_stream(path) as out:
            out.write(data)

    call(_put, what="write", where=to_uri(fs, path))


def write_json_atomic(fs: pafs.FileSystem, path: str, obj: Any) -> None:
    write_bytes_atomic(fs, path, dumps(obj))


def delete_dir(fs: pafs.FileSystem, path: str, *, missing_ok: bool = True) -> None:
    if isinstance(fs, pafs.LocalFileSystem):
        shutil.rmtree(path, ignore_errors=missing_ok)
        return

    def _rm() -> None:
        try:
            fs.delete_dir(path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    call(_rm, what="delete", where=to_uri(fs, path))


def delete_file(fs: pafs.FileSystem, path: str, *, missing_ok: bool = True) -> None:
    def _rm() -> None:
        try:
            fs.delete_file(path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    call(_rm, what="delete", where=to_uri(fs, path))


# --------------------------------------------------------------------------------------
# Copies
# --------------------------------------------------------------------------------------


def _local_files(src: str) -> Iterable[tuple[str, str]]:
    """Yield ``(absolute file, relative path)`` under ``src``, refusing directory symlinks.

    File symlinks are copied as content. A symlinked directory could be a loop (or point
    outside the checkpoint), so it is an error that names it.
    """
    for root, dirs, files in os.walk(src, followlinks=False):
        for d in dirs:
            full = os.path.join(root, d)
            if os.path.islink(full):
                raise UnsafePathError(
                    f"checkpoint folder {src} contains a symlinked directory {full!r}; "
                    "expected plain folders (symlinked folders can loop or escape the checkpoint)"
                )
        for f in files:
            full = os.path.join(root, f)
            if os.path.islink(full) and not os.path.isfile(full):
                raise UnsafePathError(f"{full!r} in {src} is a dangling or looping symlink")
            yield full, os.path.relpath(full, src)


def copy_tree(
    src_fs: pafs.FileSystem,
    src: str,
    dst_fs: pafs.FileSystem,
    dst: str,
    *,
    threads: int = 8,
) -> int:
    """Copy a folder; return the number of files copied.

    S3 -> same S3: server-side ``CopyObject`` per file in parallel (no bytes through us).
    Local -> local: ``shutil.copyfile`` (kernel ``sendfile``/``copy_file_range``) in parallel.
    Otherwise: ``pyarrow.fs.copy_files`` streaming with threads.
    """
    both_local = isinstance(src_fs, pafs.LocalFileSystem) and isinstance(
        dst_fs, pafs.LocalFileSystem
    )
    if both_local:
        pairs = list(_local_files(src))
        dirs = {os.path.dirname(os.path.join(dst, rel)) for _, rel in pairs} | {dst}
        for d in sorted(dirs):
            os.makedirs(d, exist_ok=True)
        with concurrent.futures.ThreadPoolExecutor(max(1, min(threads, len(pairs)))) as pool:
            list(pool.map(lambda p: shutil.copyfile(p[0], os.path.join(dst, p[1])), pairs))
        return len(pairs)

    same_s3 = (
        isinstance(src_fs, pafs.S3FileSystem)
        and isinstance(dst_fs, pafs.S3FileSystem)
        and src_fs.equals(dst_fs)
    )
    if same_s3:
        infos = [i for i in list_dir(src_fs, src, recursive=True) if i.type == pafs.FileType.File]
        if not infos:
            raise RunNotFoundError(f"expected files to copy under {to_uri(src_fs, src)}, found none")

        def _copy(info: pafs.FileInfo) -> None:
            rel = info.path[len(src.rstrip("/")) + 1 :]
            target = posixpath.join(dst, rel)
            call(
                lambda: src_fs.copy_file(info.path, target),
                what="server-side copy",
                where=f"{to_uri(src_fs, info.path)} -> {to_uri(dst_fs, target)}",
            )

        with concurrent.futures.ThreadPoolExecutor(max(1, min(threads, len(infos)))) as pool:
            list(pool.map(_copy, infos))
        return len(infos)

    if isinstance(dst_fs, pafs.LocalFileSystem):
        return _download(src_fs, src, dst, threads=threads)
    if isinstance(src_fs, pafs.LocalFileSystem):
        count = sum(1 for _ in _local_files(src))  # symlink checks before any byte moves
    else:
        count = len([i for i in list_dir(src_fs, src, recursive=True) if i.type == pafs.FileType.File])
    call(
        lambda: pafs.copy_files(
            src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs, use_threads=True
        ),
        what="copy",
        where=f"{to_uri(src_fs, src)} -> {to_uri(dst_fs, dst)}",
    )
    return count


def _download(src_fs: pafs.FileSystem, src: str, dst: str, *, threads: int) -> int:
    """Remote folder -> local folder, file by file with verified lengths (see ``_read_verified``)."""
    infos = [i for i in list_dir(src_fs, src, recursive=True) if i.type == pafs.FileType.File]
    os.makedirs(dst, exist_ok=True)
    prefix = len(src.rstrip("/")) + 1

    def _fetch(info: pafs.FileInfo, target: str) -> None:
        copied = 0
        with src_fs.open_input_file(info.path) as fh, open(target, "wb") as out:
            size = fh.size()
            while chunk := fh.read(CHUNK_BYTES):
                out.write(chunk)
                copied += len(chunk)
        if copied != size:
            raise ShortReadError(f"short read of {to_uri(src_fs, info.path)}: {copied} of {size} bytes")

    def _one(info: pafs.FileInfo) -> None:
        target = os.path.join(dst, *info.path[prefix:].split("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        call(lambda: _fetch(info, target), what="download", where=to_uri(src_fs, info.path))

    with concurrent.futures.ThreadPoolExecutor(max(1, min(threads, len(infos) or 1))) as pool:
        list(pool.map(_one, infos))
    return len(infos)
