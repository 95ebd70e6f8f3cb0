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
import functools
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
    scrub,
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
            scrub(exc)  # Azure/pyarrow messages can carry a SAS signature in the URL
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
    the default ``S3Settings`` (the AWS chain and environment), ``gs://``/``gcs://`` the
    default ``GcsSettings``, ``abfs://``/``az://`` the default ``AzureSettings`` (for the
    account of ``abfs://container@account.dfs.core.windows.net/path`` when the URI names
    one; the path is then ``container/path``, as pyarrow has it), other schemes go through
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
    scheme = canonical_scheme(scheme)
    if scheme in ("s3", "gs"):
        bucket = decoded.split("/", 1)[0]
        if not bucket:
            raise ValueError(f"expected {scheme}://BUCKET/key, but {raw!r} names no bucket")
    account = None
    if scheme == "abfs":
        decoded, account = _split_azure(decoded, raw)
    if filesystem is not None:
        path = decoded
        if isinstance(filesystem, pafs.LocalFileSystem):
            path = os.path.abspath(path)
        if account and isinstance(filesystem, pafs.AzureFileSystem):
            AzureSettings.from_filesystem(filesystem).with_account(account, where=raw)
        return filesystem, path.rstrip("/") or "/"
    if not scheme:
        local = os.path.abspath(os.path.expanduser(decoded))
        return pafs.LocalFileSystem(), local.rstrip("/") or "/"
    if scheme == "s3":
        return S3Settings().filesystem(), decoded.rstrip("/")
    if scheme == "gs":
        return GcsSettings().filesystem(), decoded.rstrip("/")
    if scheme == "abfs":
        settings = AzureSettings().with_account(account, where=raw) if account else AzureSettings()
        return settings.filesystem(), decoded.rstrip("/")
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
    scheme = canonical_scheme(split_scheme(uri)[0])
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
    path_or_uri: str | os.PathLike[str],
    s3: S3Settings | None = None,
    *,
    gcs: GcsSettings | None = None,
    azure: AzureSettings | None = None,
) -> tuple[pafs.FileSystem, str]:
    """Resolve a location with the settings of its store: ``s3://`` uses ``s3``, ``gs://``
    ``gcs``, ``abfs://``/``az://`` ``azure`` (each defaults to its provider's standard
    chain and environment); other locations as ``resolve`` does."""
    raw = os.fspath(path_or_uri)
    scheme = canonical_scheme(split_scheme(raw)[0])
    if scheme == "s3":
        return resolve(raw, (s3 or S3Settings()).filesystem())
    if scheme == "gs":
        return resolve(raw, (gcs or GcsSettings()).filesystem())
    if scheme == "abfs":
        _, account = _split_azure(urllib.parse.unquote(split_scheme(raw)[1]), raw)
        settings = azure or AzureSettings()
        if account:
            settings = settings.with_account(account, where=raw)
        return resolve(raw, settings.filesystem())
    return resolve(raw)

# --------------------------------------------------------------------------------------
# Google Cloud Storage and Azure Blob
# --------------------------------------------------------------------------------------

#: Spellings of one store: ``gcs://`` is fsspec's (gcsfs) name for ``gs://``; ``az://`` and
#: ``abfss://`` are adlfs' and Hadoop's names for what pyarrow calls ``abfs://``.
_SCHEME_ALIASES = {"gcs": "gs", "az": "abfs", "abfss": "abfs"}
AZURE_SCHEMES = ("abfs", "abfss", "az")


def canonical_scheme(scheme: str) -> str:
    """``"gcs"`` -> ``"gs"``, ``"az"``/``"abfss"`` -> ``"abfs"``; others as they are."""
    scheme = scheme.lower()
    return _SCHEME_ALIASES.get(scheme, scheme)


def _gcs_environment() -> tuple[str | None, ...]:
    names = ("STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT", "GOOGLE_APPLICATION_CREDENTIALS")
    return tuple(os.environ.get(n) for n in names)


@dataclasses.dataclass(frozen=True)
class GcsSettings:
    """How to reach Google Cloud Storage: the one GCS configuration of the library.

    ``GcsSettings()`` is Google's standard chain: Application Default Credentials
    (``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth application-default login``, the GKE
    or GCE metadata server), the project from ``GOOGLE_CLOUD_PROJECT``, and an emulator from
    ``STORAGE_EMULATOR_HOST`` as google-cloud-storage reads it (pyarrow's C++ client does
    not, so both get it from here; an emulator is reached anonymously). The pyarrow
    filesystem (data) and the google-cloud-storage client (generation preconditions, folder
    listings) are built from the same values. ``access_token`` is never part of ``repr``
    and never written anywhere.
    """

    endpoint_url: str | None = None
    project_id: str | None = None
    anonymous: bool = False
    access_token: str | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def from_filesystem(cls, fs: pafs.FileSystem) -> GcsSettings:
        """The settings of a ready ``pyarrow.fs.GcsFileSystem`` (endpoint, project, token)."""
        _, (kwargs,) = fs.__reduce__()
        endpoint = kwargs.get("endpoint_override") or None
        if endpoint and "://" not in endpoint:
            endpoint = f"{kwargs.get('scheme') or 'https'}://{endpoint}"
        return cls(
            endpoint_url=endpoint,
            project_id=kwargs.get("project_id") or None,
            anonymous=bool(kwargs.get("anonymous")),
            access_token=kwargs.get("access_token") or None,
        )

    def _endpoint(self) -> str | None:
        endpoint = self.endpoint_url or os.environ.get("STORAGE_EMULATOR_HOST") or None
        if endpoint and "://" not in endpoint:
            endpoint = f"http://{endpoint}"
        return endpoint.rstrip("/") if endpoint else None

    def _anonymous(self) -> bool:
        # An emulator named by STORAGE_EMULATOR_HOST takes no credentials, as in the SDK.
        emulated = not self.endpoint_url and bool(os.environ.get("STORAGE_EMULATOR_HOST"))
        return self.anonymous or (emulated and not self.access_token)

    def _project(self) -> str | None:
        return self.project_id or os.environ.get("GOOGLE_CLOUD_PROJECT") or None

    def filesystem(self) -> pafs.FileSystem:
        """A ``pyarrow.fs.GcsFileSystem`` (cached per settings and Google environment)."""
        return _cached(("gcs-fs", self, _gcs_environment()), self._build_filesystem)

    def client(self) -> Any:
        """A ``google.cloud.storage.Client`` for the same endpoint and credentials (needs the
        ``[gcs]`` extra)."""
        return _cached(("gcs-client", self, _gcs_environment()), self._build_client)

    def _build_filesystem(self) -> pafs.FileSystem:
        kwargs: dict[str, Any] = {"retry_time_limit": dt.timedelta(seconds=30)}
        endpoint = self._endpoint()
        if endpoint:
            scheme, rest = split_scheme(endpoint)
            kwargs["endpoint_override"] = rest
            kwargs["scheme"] = scheme or "https"
        if self._anonymous():
            kwargs["anonymous"] = True
        elif self.access_token:
            kwargs["access_token"] = self.access_token
            # pyarrow needs an expiry with a token; the caller refreshes it by new settings.
            kwargs["credential_token_expiration"] = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
        if self._project():
            kwargs["project_id"] = self._project()
        return pafs.GcsFileSystem(**kwargs)

    def _build_client(self) -> Any:
        google_storage = _require("google.cloud.storage", "gcs")
        kwargs: dict[str, Any] = {"project": self._project() or "_"}
        endpoint = self._endpoint()
        if endpoint:
            kwargs["client_options"] = {"api_endpoint": endpoint}
        if self._anonymous():
            from google.auth.credentials import AnonymousCredentials

            kwargs["credentials"] = AnonymousCredentials()
        elif self.access_token:
            from google.oauth2.credentials import Credentials

            kwargs["credentials"] = Credentials(token=self.access_token)
        elif not self._project():
            kwargs.pop("project")  # let ADC name the project
        return google_storage.Client(**kwargs)


def _require(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        scrub(exc)
        raise StorageError(
            f"{module} is needed for this {extra.upper()} operation but is not installed; "
            f"install the extra: pip install 'trainresults-dagster[{extra}]'"
        ) from exc


#: Azure's public host suffixes: an account URL on them takes pyarrow's default authority.
_AZURE_HOSTS = (".blob.core.windows.net", ".dfs.core.windows.net")


def _azure_environment() -> tuple[str | None, ...]:
    names = ("AZURE_STORAGE_ACCOUNT", "AZURE_STORAGE_KEY", "AZURE_STORAGE_CONNECTION_STRING",
             "AZURE_STORAGE_SAS_TOKEN", "AZURE_CLIENT_ID", "AZURE_TENANT_ID")
    return tuple(os.environ.get(n) for n in names)


def parse_connection_string(text: str) -> dict[str, str]:
    """``AccountName=..;AccountKey=..;BlobEndpoint=..`` as a dict (Azure's own format)."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        if "=" in part:
            key, _, value = part.partition("=")
            out[key.strip()] = value.strip()
    if "UseDevelopmentStorage" in out and out["UseDevelopmentStorage"].lower() == "true":
        out.setdefault("AccountName", "devstoreaccount1")
        out.setdefault("BlobEndpoint", "http://127.0.0.1:10000/devstoreaccount1")
    return out


@dataclasses.dataclass(frozen=True)
class AzureSettings:
    """How to reach Azure Blob Storage (and ADLS Gen2): the one Azure configuration.

    ``AzureSettings()`` follows Azure's standard variables: ``AZURE_STORAGE_CONNECTION_STRING``
    (account, key and endpoint; Azurite's too), else ``AZURE_STORAGE_ACCOUNT`` with
    ``AZURE_STORAGE_KEY`` or ``AZURE_STORAGE_SAS_TOKEN``, else ``DefaultAzureCredential``
    (managed identity, workload identity on AKS, ``az login``) for the account. The pyarrow
    ``AzureFileSystem`` (data) and the azure-storage-blob client (ETag preconditions, atomic
    uploads, server-side copies) are built from the same values. Keys, SAS tokens and
    connection strings are never part of ``repr`` and never written anywhere.
    """

    account_name: str | None = None
    endpoint_url: str | None = None
    account_key: str | None = dataclasses.field(default=None, repr=False)
    sas_token: str | None = dataclasses.field(default=None, repr=False)
    connection_string: str | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def from_filesystem(cls, fs: pafs.FileSystem) -> AzureSettings:
        """The settings of a ready ``pyarrow.fs.AzureFileSystem`` (account, endpoint, key)."""
        _, (kwargs,) = fs.__reduce__()
        authority = kwargs.get("blob_storage_authority") or ""
        account = kwargs.get("account_name") or None
        endpoint = None
        if authority and not authority.startswith("."):
            endpoint = f"{kwargs.get('blob_storage_scheme') or 'https'}://{authority}/{account}"
        return cls(
            account_name=account,
            endpoint_url=endpoint,
            account_key=kwargs.get("account_key") or None,
            sas_token=kwargs.get("sas_token") or None,
        )

    def with_account(self, account: str, *, where: str) -> AzureSettings:
        """These settings for the account a URI names (``container@account.dfs...``)."""
        mine = self.resolved()["account"]
        if mine and mine != account:
            raise ValueError(
                f"{where} names Azure storage account {account!r}, but the Azure settings are "
                f"for account {mine!r}; use a URI without the account part "
                "(abfs://container/path) or settings for that account"
            )
        return self if mine else dataclasses.replace(self, account_name=account)

    def resolved(self) -> dict[str, str | None]:
        """Account, key, SAS token and blob endpoint after the environment is applied."""
        conn = parse_connection_string(
            self.connection_string or (
                "" if (self.account_name or self.account_key)
                else os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "")
            )
        )
        account = self.account_name or conn.get("AccountName") or os.environ.get(
            "AZURE_STORAGE_ACCOUNT") or None
        key = self.account_key or conn.get("AccountKey") or None
        sas = self.sas_token or conn.get("SharedAccessSignature") or None
        if not (key or sas or conn):
            key = os.environ.get("AZURE_STORAGE_KEY") or None
            sas = os.environ.get("AZURE_STORAGE_SAS_TOKEN") or None
        endpoint = self.endpoint_url or conn.get("BlobEndpoint") or None
        if endpoint is None and account:
            suffix = conn.get("EndpointSuffix") or "core.windows.net"
            protocol = conn.get("DefaultEndpointsProtocol") or "https"
            endpoint = f"{protocol}://{account}.blob.{suffix}"
        return {"account": account, "key": key, "sas": sas,
                "endpoint": endpoint.rstrip("/") if endpoint else None}

    def _account(self, where: str) -> str:
        account = self.resolved()["account"]
        if not account:
            raise ValueError(
                f"no Azure storage account for {where}: expected AzureSettings(account_name=...), "
                "AZURE_STORAGE_ACCOUNT, AZURE_STORAGE_CONNECTION_STRING or a URI of the form "
                "abfs://container@ACCOUNT.dfs.core.windows.net/path"
            )
        return account

    def filesystem(self) -> pafs.FileSystem:
        """A ``pyarrow.fs.AzureFileSystem`` (cached per settings and Azure environment)."""
        return _cached(("az-fs", self, _azure_environment()), self._build_filesystem)

    def client(self) -> Any:
        """An ``azure.storage.blob.BlobServiceClient`` for the same account (``[azure]``)."""
        return _cached(("az-client", self, _azure_environment()), self._build_client)

    def _build_filesystem(self) -> pafs.FileSystem:
        values = self.resolved()
        kwargs: dict[str, Any] = {"account_name": self._account("the Azure filesystem")}
        if values["key"]:
            kwargs["account_key"] = values["key"]
        elif values["sas"]:
            # pyarrow appends it to the URL as given: without its "?" it lands in the path.
            kwargs["sas_token"] = "?" + values["sas"].lstrip("?")
        endpoint = values["endpoint"]
        if endpoint:
            scheme, rest = split_scheme(endpoint)
            host = rest.split("/", 1)[0]
            if not host.endswith(_AZURE_HOSTS):
                # An emulator or a private endpoint: pyarrow then puts the account in the
                # path (http://127.0.0.1:10000/devstoreaccount1/...), as Azurite expects.
                for kind in ("blob", "dfs"):
                    kwargs[f"{kind}_storage_authority"] = host
                    kwargs[f"{kind}_storage_scheme"] = scheme or "https"
        return pafs.AzureFileSystem(**kwargs)

    def _build_client(self) -> Any:
        blob = _require("azure.storage.blob", "azure")
        values = self.resolved()
        account = self._account("the Azure client")
        credential: Any
        if values["key"]:
            credential = {"account_name": account, "account_key": values["key"]}
        elif values["sas"]:
            credential = values["sas"]
        else:
            identity = _require("azure.identity", "azure")
            credential = identity.DefaultAzureCredential()
        return blob.BlobServiceClient(
            account_url=values["endpoint"] or f"https://{account}.blob.core.windows.net",
            credential=credential,
            retry_total=3,
        )


def settings_for_filesystem(fs: pafs.FileSystem) -> S3Settings | GcsSettings | AzureSettings | None:
    """The settings a ready cloud filesystem was built from, or None for other filesystems."""
    if isinstance(fs, pafs.S3FileSystem):
        return S3Settings.from_filesystem(fs)
    if isinstance(fs, pafs.GcsFileSystem):
        return GcsSettings.from_filesystem(fs)
    if isinstance(fs, pafs.AzureFileSystem):
        return AzureSettings.from_filesystem(fs)
    return None


def _split_azure(decoded: str, raw: str) -> tuple[str, str | None]:
    """``container@account.dfs.core.windows.net/path`` -> ``("container/path", "account")``;
    ``container/path`` -> ``(it, None)``."""
    head, slash, tail = decoded.partition("/")
    if "@" not in head:
        if not head:
            raise ValueError(f"expected abfs://CONTAINER/path, but {raw!r} names no container")
        return decoded, None
    container, _, host = head.partition("@")
    account = host.split(".", 1)[0]
    if not container or not account or not re.fullmatch(r"[a-z0-9]{3,24}", account):
        raise ValueError(
            f"expected abfs://CONTAINER@ACCOUNT.dfs.core.windows.net/path (or "
            f"abfs://CONTAINER/path), got {raw!r}: the part before '/' must be "
            "'container@account-host' with a storage account of 3-24 lowercase letters and digits"
        )
    return container + slash + tail, account


CloudSettings = S3Settings | GcsSettings | AzureSettings


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
    """The entries under ``path`` (none when it is missing), folders included on every store.

    pyarrow's GCS filesystem lists no "implicit" folders (prefixes without a marker object,
    which is how Ray and every other writer leave them; apache/arrow#35993): on GCS the
    folders of a listing come from the google-cloud-storage SDK (prefix and delimiter), or,
    without it, from the files below.
    """
    if isinstance(fs, pafs.GcsFileSystem) and not recursive:
        return _gcs_list(fs, path)
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=recursive)
    infos = call(lambda: fs.get_file_info(selector), what="list", where=to_uri(fs, path))
    if isinstance(fs, pafs.GcsFileSystem):
        infos = _with_folders(path, infos)
    return infos


def _with_folders(path: str, infos: list[pafs.FileInfo]) -> list[pafs.FileInfo]:
    """A recursive listing plus a Directory entry for every folder a file is in."""
    base = path.rstrip("/")
    known = {i.path for i in infos}
    extra: dict[str, pafs.FileInfo] = {}
    for info in infos:
        parent = posixpath.dirname(info.path)
        while parent.startswith(base + "/") and parent not in known and parent not in extra:
            extra[parent] = pafs.FileInfo(parent, pafs.FileType.Directory)
            parent = posixpath.dirname(parent)
    return infos + sorted(extra.values(), key=lambda i: i.path)


def _gcs_list(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    """The direct children of a GCS folder: one paged listing with a delimiter."""
    base = path.rstrip("/")
    try:
        _require("google.cloud.storage", "gcs")
    except StorageError:
        deep = list_dir(fs, base, recursive=True)
        return [i for i in deep if "/" not in i.path[len(base) + 1 :]]
    bucket, _, key = base.partition("/")
    prefix = f"{key}/" if key else ""
    client = GcsSettings.from_filesystem(fs).client()

    def _list() -> list[pafs.FileInfo]:
        pages = client.list_blobs(bucket, prefix=prefix, delimiter="/")
        out = []
        for blob in pages:
            if blob.name != prefix:  # the folder's own marker object
                out.append(pafs.FileInfo(f"{bucket}/{blob.name}", pafs.FileType.File,
                                         size=int(blob.size or 0), mtime=blob.updated))
        out += [pafs.FileInfo(f"{bucket}/{p.rstrip('/')}", pafs.FileType.Directory)
                for p in sorted(pages.prefixes)]
        return out

    try:
        return call(_list, what="list", where=to_uri(fs, base))
    except Exception as exc:
        if type(exc).__name__ == "NotFound":  # no such bucket: nothing is there
            return []
        if isinstance(exc, StorageError | OSError):
            raise
        scrub(exc)
        raise StorageError(f"list failed at {to_uri(fs, base)}: {type(exc).__name__}: {exc}") from exc


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

    if isinstance(fs, pafs.AzureFileSystem) and _azure_sdk_usable(fs):
        # pyarrow's Azure output stream creates an empty blob when it opens, so a reader could
        # see a torn (empty) file; one Put Blob publishes the whole object at once.
        call(functools.partial(_azure_upload, fs, path, data), what="write",
             where=to_uri(fs, path))
        return
    call(_put, what="write", where=to_uri(fs, path))


def _azure_sdk_usable(fs: pafs.FileSystem) -> bool:
    """azure-storage-blob is installed and can authenticate as ``fs`` does (a key or SAS, or
    azure-identity for DefaultAzureCredential)."""
    import importlib.util

    if importlib.util.find_spec("azure.storage.blob") is None:
        return False
    values = AzureSettings.from_filesystem(fs).resolved()
    return bool(values["key"] or values["sas"]) or importlib.util.find_spec("azure.identity") is not None


def _azure_upload(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    container, _, key = path.partition("/")
    blob = AzureSettings.from_filesystem(fs).client().get_blob_client(container, key)
    try:
        blob.upload_blob(data, overwrite=True)
    except Exception as exc:
        if isinstance(exc, OSError):
            raise
        scrub(exc)
        raise StorageError(f"write failed at {to_uri(fs, path)}: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc


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
    GCS -> same GCS: server-side ``rewrite`` per file (pyarrow's ``copy_file``; any size).
    Azure -> same account: server-side "Copy Blob From URL" per file (pyarrow's
    ``copy_file``), and for files over ``AZURE_SYNC_COPY_LIMIT`` (that call's limit) an
    asynchronous server copy (``start_copy_from_url``) polled to its end.
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

    same_service = (
        isinstance(src_fs, pafs.S3FileSystem | pafs.GcsFileSystem | pafs.AzureFileSystem)
        and type(src_fs) is type(dst_fs)
        and src_fs.equals(dst_fs)
    )
    if same_service:
        infos = [i for i in list_dir(src_fs, src, recursive=True) if i.type == pafs.FileType.File]
        if not infos:
            raise RunNotFoundError(f"expected files to copy under {to_uri(src_fs, src)}, found none")

        def _copy(info: pafs.FileInfo) -> None:
            rel = info.path[len(src.rstrip("/")) + 1 :]
            target = posixpath.join(dst, rel)
            if isinstance(src_fs, pafs.S3FileSystem) and (info.size or 0) > MULTIPART_COPY_THRESHOLD:
                multipart_copy(src_fs, info.path, target, size=int(info.size or 0))
                return
            if isinstance(src_fs, pafs.AzureFileSystem) and (info.size or 0) > AZURE_SYNC_COPY_LIMIT:
                azure_server_copy(src_fs, info.path, target)
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
        scrub(exc)
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
            scrub(exc)
            raise StorageError(
                f"multipart server-side copy {where} ({size} bytes, {len(ranges)} parts) failed "
                f"and was aborted: {type(exc).__name__}: {exc}"
            ) from exc
        raise


#: "Copy Blob From URL" (what pyarrow's Azure ``copy_file`` uses) copies at most 256 MiB.
AZURE_SYNC_COPY_LIMIT = 256 * 2**20
AZURE_COPY_TIMEOUT_SECONDS = 3600.0


def azure_server_copy(fs: pafs.FileSystem, src: str, dst: str) -> None:
    """Server-side copy of one blob within an account of any size (``start_copy_from_url``),
    waiting for the copy to finish; no byte passes through this process."""
    client = AzureSettings.from_filesystem(fs).client()
    src_container, _, src_key = src.partition("/")
    dst_container, _, dst_key = dst.partition("/")
    where = f"{to_uri(fs, src)} -> {to_uri(fs, dst)}"
    source = client.get_blob_client(src_container, src_key)
    target = client.get_blob_client(dst_container, dst_key)
    deadline = time.monotonic() + AZURE_COPY_TIMEOUT_SECONDS
    try:
        status = target.start_copy_from_url(source.url).get("copy_status")
        while status == "pending":
            if time.monotonic() > deadline:
                target.abort_copy(target.get_blob_properties().copy.id)
                raise StorageError(f"server-side copy {where} did not finish in "
                                   f"{AZURE_COPY_TIMEOUT_SECONDS:.0f} s and was aborted")
            time.sleep(0.5)
            status = target.get_blob_properties().copy.status
    except StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - azure-core errors are not OSErrors
        scrub(exc)
        raise StorageError(f"server-side copy {where} failed: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if status != "success":
        raise StorageError(f"server-side copy {where} ended with status {status!r}")


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
