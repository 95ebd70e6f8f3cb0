"""Storage primitives over pyarrow filesystems (local disk and S3): no Dagster, no ray.

Everything that touches storage goes through here, so retries, atomic writes, URI
handling, path safety, the JSON policy and time formats are decided once:

* ``resolve(path_or_uri, filesystem)`` -> ``(filesystem, path)`` with the scheme stripped,
  the way Ray stores ``Result.path``; ``to_uri(filesystem, path)`` gives it back.
* ``S3Settings``: the one S3 configuration (endpoint, region, credentials); it builds the
  pyarrow filesystem and the boto3 client from the same values, never writing credentials.
* ``json_value``/``dumps`` (one JSON policy), ``stamp``/``iso`` (one time format for names
  and one for records), ``read_json_object`` (read JSON or raise a typed error),
  ``list_keys`` (paged S3 listing).
* ``call(...)`` wraps a storage request in a bounded retry: pyarrow's own S3 retry does not
  cover every transient error (a ``503 SlowDown`` on a small object fails at once with
  "Failed to flush response stream"), so every request gets a bounded retry of its own.
* ``write_bytes_atomic`` is write-then-rename on local disk and a single PUT on S3, so a
  concurrent reader sees the old object or the new one, never a torn one.
"""

from __future__ import annotations

import calendar
import concurrent.futures
import dataclasses
import datetime as dt
import json
import math
import os
import posixpath
import random
import re
import shutil
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.fs as pafs

from .errors import (
    CorruptDataError,
    RunNotFoundError,
    ShortReadError,
    StorageError,
    UnsafePathError,
)

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


#: Characters left as they are in a URI's path: RFC 3986 allows sub-delimiters, ``:`` and
#: ``@`` in a path segment, and Hive-style ``date=2024-01-01`` folders stay readable. Every
#: other character (``%``, spaces, ``?``, ``#``, non-ASCII) is percent-encoded, because
#: pyarrow (and so Ray) percent-decodes URIs: ``s3://b/pct%41`` *means* ``b/pctA``.
URI_SAFE = "/!$&'()*+,;=:@~"


def resolve(
    path_or_uri: str | os.PathLike[str], filesystem: pafs.FileSystem | None = None
) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path)`` for a local path or a URI.

    A URI (``s3://b/k``, ``file:///d``) is percent-decoded, as pyarrow and Ray decode it, so
    ``resolve(to_uri(fs, path)) == (fs, path)`` for every legal key; a plain path is taken
    as it is. With an explicit ``filesystem`` the scheme is stripped (``s3://b/k`` ->
    ``b/k``), as Ray does when you pass ``storage_filesystem``. Without one, ``s3://`` uses
    the default ``S3Settings`` (the AWS chain and environment), other schemes go through
    ``pyarrow.fs.FileSystem.from_uri`` or, for fsspec-only schemes, fsspec.
    """
    raw = os.fspath(path_or_uri)
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"expected a path or URI such as 's3://bucket/run', got {raw!r}")
    scheme, rest = split_scheme(raw)
    decoded = urllib.parse.unquote(rest) if scheme else raw
    if scheme == "file":
        scheme = ""
        if decoded.startswith("//"):  # file://host/path: only the local host is ours
            host, _, tail = decoded[2:].partition("/")
            if host not in ("", "localhost"):
                raise ValueError(f"expected a local file:// URI, got {raw!r} (host {host!r})")
            decoded = "/" + tail
    if scheme in ("s3", "gs", "gcs"):
        bucket = decoded.split("/", 1)[0]
        if not bucket:
            raise ValueError(f"expected {scheme}://BUCKET/key, but {raw!r} names no bucket")
    if filesystem is not None:
        path = decoded
        if isinstance(filesystem, pafs.LocalFileSystem):
            path = os.path.abspath(path)
        return filesystem, path.rstrip("/") or "/"
    if not scheme:
        local = os.path.abspath(os.path.expanduser(decoded))
        return pafs.LocalFileSystem(), local.rstrip("/") or "/"
    if scheme == "s3":
        return S3Settings().filesystem(), decoded.rstrip("/")
    try:
        fs, path = pafs.FileSystem.from_uri(raw)
    except (pa.ArrowInvalid, ValueError) as exc:
        fsspec_fs = _fsspec_filesystem(scheme)
        if fsspec_fs is None:
            raise ValueError(
                f"expected a local path or a URI pyarrow or fsspec can open, got {raw!r}: {exc}"
            ) from exc
        return fsspec_fs, decoded.rstrip("/")
    return fs, path.rstrip("/")


def _fsspec_filesystem(protocol: str) -> pafs.FileSystem | None:
    """An fsspec filesystem for ``protocol`` wrapped for pyarrow (Ray's documented route for
    custom storage), or None when fsspec is not installed or does not know it."""
    try:
        import fsspec
    except ImportError:
        return None
    try:
        inner = fsspec.filesystem(protocol)
    except (ValueError, ImportError):
        return None
    return pafs.PyFileSystem(pafs.FSSpecHandler(inner))


def resolve_matching(
    uri: str, filesystem: pafs.FileSystem | None
) -> tuple[pafs.FileSystem, str]:
    """``resolve`` that uses ``filesystem`` only for URIs of its own kind.

    A local input next to an ``s3://`` output must not be looked up in the bucket: an
    explicit scheme that does not match the filesystem resolves on its own.
    """
    scheme, _ = split_scheme(uri)
    if filesystem is None or (scheme and scheme not in ("file", scheme_of(filesystem))):
        return resolve(uri)
    return resolve(uri, filesystem)


def scheme_of(filesystem: pafs.FileSystem) -> str:
    """The URI scheme of ``filesystem`` (``""`` for local disk)."""
    name = filesystem.type_name
    if name == "local":
        return ""
    if name == "gcs":
        return "gs"
    if name.startswith("py"):  # pyarrow.fs.PyFileSystem(FSSpecHandler(...)): "py::fsspec+..."
        protocol = getattr(getattr(getattr(filesystem, "handler", None), "fs", None), "protocol", None)
        if isinstance(protocol, list | tuple) and protocol:
            protocol = protocol[0]
        if isinstance(protocol, str) and protocol:
            return "" if protocol in ("file", "local") else protocol
    return name


def to_uri(filesystem: pafs.FileSystem, path: str) -> str:
    """Scheme-qualified location: ``s3://bucket/key`` (percent-encoded where a URI needs it,
    see ``URI_SAFE``) or an absolute local path; ``resolve`` gives ``path`` back."""
    scheme = scheme_of(filesystem)
    if not scheme:
        return os.path.abspath(path)
    return f"{scheme}://{urllib.parse.quote(path.lstrip('/'), safe=URI_SAFE)}"


def safe_name(name: Any, *, what: str, where: str) -> str:
    """``name`` if it is a single path component, read from storage or given by a user.

    Rejects absolute names, ``..``, separators and empty names: a snapshot or manifest that
    says ``"../../etc"`` must not make us read or delete outside the run.
    """
    if not isinstance(name, str) or not name or name in (".", ".."):
        raise UnsafePathError(f"{what} must be a non-empty folder name, got {name!r} in {where}")
    if "/" in name or "\\" in name or "\x00" in name:
        raise UnsafePathError(
            f"{what} must be a single folder name without separators, got {name!r} in {where}"
        )
    return name


def safe_relative(rel: Any, *, what: str, where: str) -> str:
    """``rel`` if it is a relative path of one or more safe segments (``ckpts/epoch-0``):
    Ray writes nested ``checkpoint_dir_name`` and ``RunConfig.name`` values as nested
    folders. Each segment must pass ``safe_name`` (no ``..``, empty or absolute parts)."""
    if not isinstance(rel, str) or not rel:
        raise UnsafePathError(f"{what} must be a non-empty relative path, got {rel!r} in {where}")
    for segment in rel.split("/"):
        try:
            safe_name(segment, what=f"{what} segment", where=where)
        except UnsafePathError as exc:
            raise UnsafePathError(
                f"{what} must be a relative path of folder names (no '..', no leading '/', no "
                f"empty parts), got {rel!r} in {where}"
            ) from exc
    return rel


def safe_descendant(base: str, rel: Any, *, what: str, where: str) -> str:
    """``base/rel`` for a relative path that stays below ``base`` (``safe_relative``)."""
    return posixpath.join(base, safe_relative(rel, what=what, where=where))


def safe_child(base: str, name: Any, *, what: str, where: str) -> str:
    """``base/name`` for a single path component (``safe_name``)."""
    return posixpath.join(base, safe_name(name, what=what, where=where))


# --------------------------------------------------------------------------------------
# JSON and time: one policy each
# --------------------------------------------------------------------------------------

NanPolicy = str  # "null" | "keep" | "text"


def json_value(obj: Any, *, nan: NanPolicy = "null") -> Any:
    """``obj`` as plain JSON types: the one JSON policy of the library.

    Mapping keys become ``str``, tuples and sets lists, numpy scalars Python numbers, and
    anything else its ``str``. Non-finite floats follow ``nan``:

    * ``"null"`` (default): ``None``. Strict JSON, for what others parse: webhook bodies,
      Dagster metadata (JSON metadata must be valid JSON), registry records.
    * ``"keep"``: stay floats (written as ``NaN``/``Infinity``, as Ray writes its own
      snapshot), for our run records and manifests, so a NaN loss loads back as NaN.
    * ``"text"``: ``"NaN"``/``"Infinity"``/``"-Infinity"``, for alerts, where a reader must
      see that the loss was NaN rather than missing.
    """
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj) or nan == "keep":
            return obj
        if nan == "text":
            return "NaN" if obj != obj else ("Infinity" if obj > 0 else "-Infinity")
        return None
    if isinstance(obj, Mapping):
        return {str(k): json_value(v, nan=nan) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [json_value(v, nan=nan) for v in obj]
    item = getattr(obj, "item", None)  # numpy scalars
    if callable(item) and not isinstance(obj, bytes):
        try:
            value = item()
        except (TypeError, ValueError):
            value = None
        if isinstance(value, bool | int | float | str):
            return json_value(value, nan=nan)
    if isinstance(obj, dt.datetime):
        return obj.isoformat()
    return str(obj)


def dumps(obj: Any, *, nan: NanPolicy = "null", compact: bool = False) -> bytes:
    """Stable JSON bytes for files and bodies we write: sorted keys, ``json_value`` policy."""
    value = json_value(obj, nan=nan)
    if compact:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=nan == "keep")
    else:
        text = json.dumps(value, sort_keys=True, indent=1, allow_nan=nan == "keep")
    return text.encode("utf-8")


def stamp(when: float | None = None) -> str:
    """``20261128T173501.123456Z``: UTC, microseconds, sortable, safe in a file or key name.

    The one format of every time inside a name (failure journal keys, stored result versions,
    registry data folders): lexicographic order is time order.
    """
    when = time.time() if when is None else when
    whole = math.floor(when)
    micros = min(999_999, int(round((when - whole) * 1e6)))
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(whole)) + f".{micros:06d}Z"


_STAMP_RE = re.compile(r"(\d{8}T\d{6})\.(\d{6})Z")


def parse_stamp(text: str) -> float | None:
    """The time of a ``stamp`` at the start of ``text``, or None when it has none."""
    match = _STAMP_RE.match(text)
    if match is None:
        return None
    try:
        whole = calendar.timegm(time.strptime(match.group(1), "%Y%m%dT%H%M%S"))
    except ValueError:
        return None
    return whole + int(match.group(2)) / 1e6


def iso(when: float | dt.datetime | None = None) -> str:
    """``2026-11-28T17:35:01.123456+00:00``: the one format of every time inside a record."""
    if isinstance(when, dt.datetime):
        moment = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
        return moment.astimezone(dt.UTC).isoformat()
    return dt.datetime.fromtimestamp(time.time() if when is None else when, dt.UTC).isoformat()


# --------------------------------------------------------------------------------------
# S3
# --------------------------------------------------------------------------------------


def _env_endpoint() -> str | None:
    # boto3 reads these itself; pyarrow's C++ client does not, so both get it from here.
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


@dataclasses.dataclass(frozen=True)
class S3Settings:
    """How to reach S3: the one S3 configuration every part of the library uses.

    ``S3Settings()`` is the default AWS chain (environment variables, profile, instance
    role), with the endpoint from ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` as boto3
    reads it. The Dagster shell converts a dagster-aws ``S3Resource`` into one in a single
    place. The pyarrow filesystem (data) and the boto3 client (conditional writes, paged
    listings) are built from the same settings, so they always reach the same endpoint with
    the same credentials. Credentials are never part of ``repr`` and never written anywhere.
    """

    endpoint_url: str | None = None
    region_name: str | None = None
    aws_access_key_id: str | None = dataclasses.field(default=None, repr=False)
    aws_secret_access_key: str | None = dataclasses.field(default=None, repr=False)
    aws_session_token: str | None = dataclasses.field(default=None, repr=False)
    profile_name: str | None = None
    use_ssl: bool = True
    verify: bool | str | None = None
    anonymous: bool = False
    max_attempts: int = 5

    @classmethod
    def from_filesystem(cls, fs: pafs.S3FileSystem) -> S3Settings:
        """The settings of a ready ``pyarrow.fs.S3FileSystem`` (endpoint, region, keys), so a
        client built from them talks to the same store as the filesystem."""
        _, (kwargs,) = fs.__reduce__()
        endpoint = kwargs.get("endpoint_override") or None
        scheme = kwargs.get("scheme") or "https"
        if endpoint and "://" not in endpoint:
            endpoint = f"{scheme}://{endpoint}"
        return cls(
            endpoint_url=endpoint,
            region_name=kwargs.get("region") or None,
            aws_access_key_id=kwargs.get("access_key") or None,
            aws_secret_access_key=kwargs.get("secret_key") or None,
            aws_session_token=kwargs.get("session_token") or None,
            use_ssl=scheme != "http",
            anonymous=bool(kwargs.get("anonymous")),
        )

    def _endpoint(self) -> str | None:
        return self.endpoint_url or _env_endpoint()

    def _region(self) -> str:
        return self.region_name or os.environ.get("AWS_REGION") or os.environ.get(
            "AWS_DEFAULT_REGION", "us-east-1"
        )

    def _credentials(self) -> tuple[str | None, str | None, str | None]:
        if self.aws_access_key_id or not self.profile_name:
            return self.aws_access_key_id, self.aws_secret_access_key, self.aws_session_token
        import boto3  # a named profile is resolved through boto3 once, here

        creds = boto3.Session(profile_name=self.profile_name).get_credentials()
        if creds is None:
            return None, None, None
        frozen = creds.get_frozen_credentials()
        return frozen.access_key, frozen.secret_key, frozen.token

    def filesystem(self) -> pafs.S3FileSystem:
        """A ``pyarrow.fs.S3FileSystem`` for these settings (cached per settings and AWS
        environment)."""
        return _cached(("fs", self, _aws_environment()), self._build_filesystem)

    def client(self) -> Any:
        """A boto3 S3 client for these settings (cached: building one takes ~0.4 s)."""
        return _cached(("client", self, _aws_environment()), self._build_client)

    def _build_filesystem(self) -> pafs.S3FileSystem:
        kwargs: dict[str, Any] = {
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=self.max_attempts),
            "connect_timeout": 10,
            "request_timeout": 60,
            # Small objects (records, manifests, pointers) go up as one PutObject instead of
            # a three-request multipart upload; either way an object appears only when whole.
            "allow_delayed_open": True,
            "region": self._region(),
        }
        if self.anonymous:
            kwargs["anonymous"] = True
        endpoint = self._endpoint()
        if endpoint:
            scheme, rest = split_scheme(endpoint)
            kwargs["endpoint_override"] = rest.rstrip("/") if scheme else endpoint
            kwargs["scheme"] = scheme or "https"
        if not self.use_ssl:
            kwargs["scheme"] = "http"
        key, secret, token = self._credentials()
        if key:
            kwargs["access_key"] = key
            kwargs["secret_key"] = secret
            if token:
                kwargs["session_token"] = token
        return pafs.S3FileSystem(**kwargs)

    def _build_client(self) -> Any:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        config = Config(
            retries={"max_attempts": self.max_attempts, "mode": "standard"},
            signature_version=UNSIGNED if self.anonymous else None,
        )
        session = boto3.Session(profile_name=self.profile_name) if (
            self.profile_name and not self.aws_access_key_id
        ) else boto3.Session()
        return session.client(
            "s3",
            endpoint_url=self._endpoint(),
            region_name=self._region(),
            use_ssl=self.use_ssl,
            verify=self.verify,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
            config=config,
        )


def _aws_environment() -> tuple[str | None, ...]:
    """The AWS variables a default client reads: a handle cached under other values is
    not reused (kept in this process's memory only)."""
    names = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION",
             "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    return tuple(os.environ.get(n) for n in names)


_HANDLES: dict[tuple[Any, ...], Any] = {}
_HANDLES_LOCK = threading.Lock()
_MAX_HANDLES = 16


def _cached(key: tuple[Any, ...], build: Callable[[], T]) -> T:
    """One filesystem and one client per settings in a process: the Dagster daemon evaluates
    every sensor tick in the same code server, and clients are slow to build."""
    with _HANDLES_LOCK:
        if key in _HANDLES:
            return _HANDLES[key]
    value = build()
    with _HANDLES_LOCK:
        if len(_HANDLES) >= _MAX_HANDLES:
            _HANDLES.pop(next(iter(_HANDLES)))
        _HANDLES.setdefault(key, value)
        return _HANDLES[key]


def s3_settings_of(s3: S3Settings | pafs.FileSystem | None) -> S3Settings:
    """``s3`` as settings: given settings, the settings of an S3 filesystem, or the default."""
    if isinstance(s3, S3Settings):
        return s3
    if isinstance(s3, pafs.S3FileSystem):
        return S3Settings.from_filesystem(s3)
    if s3 is None or isinstance(s3, pafs.FileSystem):
        return S3Settings()
    raise TypeError(f"expected S3Settings or a pyarrow S3FileSystem, got {type(s3).__name__}")


def filesystem_for(
    path_or_uri: str | os.PathLike[str], s3: S3Settings | None = None
) -> tuple[pafs.FileSystem, str]:
    """Resolve a location; ``s3://`` URIs use ``s3`` (default: the AWS chain and environment)."""
    scheme, _ = split_scheme(os.fspath(path_or_uri))
    if scheme == "s3":
        return resolve(path_or_uri, (s3 or S3Settings()).filesystem())
    return resolve(path_or_uri)


def list_keys(
    client: Any,
    bucket: str,
    prefix: str,
    *,
    start_after: str | None = None,
    delimiter: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Every object under ``prefix`` (``list_objects_v2`` pages), in key order, after
    ``start_after`` (what a sensor needs to list only what is new); with ``delimiter``
    only the objects directly under ``prefix``."""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    if start_after:
        kwargs["StartAfter"] = start_after
    if delimiter:
        kwargs["Delimiter"] = delimiter
    for page in client.get_paginator("list_objects_v2").paginate(**kwargs):
        yield from page.get("Contents", [])


# --------------------------------------------------------------------------------------
# Reads
# --------------------------------------------------------------------------------------


def file_info(fs: pafs.FileSystem, path: str) -> pafs.FileInfo:
    return call(lambda: fs.get_file_info(path), what="stat", where=to_uri(fs, path))


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return file_info(fs, path).type != pafs.FileType.NotFound


def is_dir(fs: pafs.FileSystem, path: str) -> bool:
    return file_info(fs, path).type == pafs.FileType.Directory


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


def read_json_object(
    fs: pafs.FileSystem,
    path: str,
    *,
    error: type[CorruptDataError] = CorruptDataError,
    what: str = "a JSON object",
) -> dict[str, Any] | None:
    """A JSON object file, or None when the file does not exist.

    Anything else (not UTF-8, not JSON, not an object) raises ``error`` naming the location
    and what was expected: the one "read JSON or say what is wrong" of the library.
    """
    where = to_uri(fs, path)
    try:
        data = read_json(fs, path)
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"expected {what} (JSON) in {where}: {exc}") from exc
    if not isinstance(data, dict):
        raise error(f"expected {what} (a JSON object) in {where}, got {type(data).__name__}")
    return data


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


def write_json_atomic(
    fs: pafs.FileSystem, path: str, obj: Any, *, nan: NanPolicy = "null"
) -> None:
    write_bytes_atomic(fs, path, dumps(obj, nan=nan))


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

    S3 -> same S3: server-side ``CopyObject`` per file in parallel (no bytes through us);
    files over ``MULTIPART_COPY_THRESHOLD`` with a multipart server-side copy.
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
            if (info.size or 0) > MULTIPART_COPY_THRESHOLD:
                multipart_copy(src_fs, info.path, target, size=int(info.size or 0))
                return
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


#: Objects above this size are copied with a multipart server-side copy (``UploadPartCopy``):
#: S3's ``CopyObject`` refuses sources over 5 GiB. The margin keeps us clear of the limit.
MULTIPART_COPY_THRESHOLD = 5 * 2**30 - 64 * 2**20
#: Part size of a multipart copy (S3: 5 MiB to 5 GiB per part, at most 10,000 parts; the
#: part size grows past this for objects over 10,000 parts of it).
MULTIPART_PART_BYTES = 512 * 2**20
_MAX_PARTS = 10_000


def multipart_copy(
    fs: pafs.S3FileSystem, src: str, dst: str, *, size: int, threads: int = 8
) -> None:
    """Server-side copy of one S3 object of ``size`` bytes, part by part (``UploadPartCopy``).

    No byte passes through this process. The client is built from ``fs``'s own endpoint and
    credentials (``S3Settings.from_filesystem``). Content type and user metadata are carried
    over as ``CopyObject`` would; on any failure the upload is aborted, so no invisible parts
    are left to be billed, and the target never appears partly written.
    """
    client = S3Settings.from_filesystem(fs).client()
    src_bucket, _, src_key = src.partition("/")
    dst_bucket, _, dst_key = dst.partition("/")
    where = f"{to_uri(fs, src)} -> {to_uri(fs, dst)}"
    part = max(MULTIPART_PART_BYTES, math.ceil(size / _MAX_PARTS))
    try:
        head = client.head_object(Bucket=src_bucket, Key=src_key)
        upload = client.create_multipart_upload(
            Bucket=dst_bucket,
            Key=dst_key,
            ContentType=head.get("ContentType") or "application/octet-stream",
            Metadata=head.get("Metadata") or {},
        )
    except Exception as exc:  # noqa: BLE001 - botocore errors are not OSErrors
        raise StorageError(f"starting a multipart copy {where} failed: {exc}") from exc
    upload_id = upload["UploadId"]
    ranges = [(n + 1, start, min(start + part, size) - 1)
              for n, start in enumerate(range(0, size, part))]

    def _part(spec: tuple[int, int, int]) -> dict[str, Any]:
        number, first, last = spec
        answer = client.upload_part_copy(
            Bucket=dst_bucket,
            Key=dst_key,
            UploadId=upload_id,
            PartNumber=number,
            CopySource={"Bucket": src_bucket, "Key": src_key},
            CopySourceRange=f"bytes={first}-{last}",
            # The source must not change under us: a part of a newer object would mix two.
            CopySourceIfMatch=head["ETag"],
        )
        return {"PartNumber": number, "ETag": answer["CopyPartResult"]["ETag"]}

    try:
        with concurrent.futures.ThreadPoolExecutor(max(1, min(threads, len(ranges)))) as pool:
            parts = list(pool.map(_part, ranges))
        client.complete_multipart_upload(
            Bucket=dst_bucket, Key=dst_key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    except BaseException as exc:
        try:
            client.abort_multipart_upload(Bucket=dst_bucket, Key=dst_key, UploadId=upload_id)
        except Exception:  # noqa: BLE001 - the copy's own error is the one to report
            pass
        if isinstance(exc, Exception):
            raise StorageError(
                f"multipart server-side copy {where} ({size} bytes, {len(ranges)} parts) failed "
                f"and was aborted: {type(exc).__name__}: {exc}"
            ) from exc
        raise


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
