"""Moving a checkpoint's bytes into the registry: as fast as the storage allows, and checked.

* ``copy_in`` picks the cheapest correct copy: server-side ``CopyObject`` when source and
  registry are on the same S3 service (even if the two pyarrow filesystem objects were
  built separately), a parallel kernel copy on local disk, a streamed copy otherwise;
  optionally fsyncs a local copy.
* ``listing`` / ``verify`` compare the copy with the source (every file, by size) before the
  registry commits the version record, so a short or interrupted copy is never published.
"""

from __future__ import annotations

import concurrent.futures
import os

import pyarrow.fs as pafs

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import StorageError
from trainresults_dagster.runs.checkpoint import Checkpoint

Listing = dict[str, tuple[int, int]]


def listing(fs: pafs.FileSystem, path: str) -> Listing:
    """``{relative path: (size, mtime_ns)}`` of the files under ``path`` (``{}`` if none)."""
    prefix = path.rstrip("/") + "/"
    out = {}
    for info in storage.list_dir(fs, path, recursive=True):
        if info.type == pafs.FileType.File and info.path.startswith(prefix):
            out[info.path[len(prefix):]] = (int(info.size or 0), int(info.mtime_ns or 0))
    return out


def copy_in(
    checkpoint: Checkpoint, fs: pafs.FileSystem, target: str, *, durable: bool = False
) -> None:
    """Copy ``checkpoint`` to ``target`` on ``fs`` (the registry's filesystem)."""
    src_fs = checkpoint.filesystem
    service = _service(src_fs)
    if service is not None and service == _service(fs):
        # Same S3 service (GCS, Azure account): a server-side copy with the registry's
        # filesystem (S3 CopyObject, GCS rewrite, Azure Copy Blob), so no byte of the
        # checkpoint passes through this process even if the checkpoint's filesystem
        # object was built separately (its credentials may differ, the data does not).
        try:
            storage.copy_tree(fs, checkpoint.path, fs, target)
            return
        except OSError as exc:
            if not _access_denied(exc):
                raise
            # The registry's credentials may not read the source bucket: stream with the
            # checkpoint's own filesystem instead (slower, same result).
            storage.delete_dir(fs, target)
    storage.copy_tree(src_fs, checkpoint.path, fs, target)
    if durable and isinstance(fs, pafs.LocalFileSystem):
        _fsync_tree(target)


def verify(
    sources: Listing, copied: dict[str, int], *, where: str, target_uri: str
) -> None:
    """Raise ``StorageError`` unless ``copied`` (``{relative path: size}`` of the copy at
    ``target_uri``) holds every source file at its size."""
    expected = {rel: size for rel, (size, _) in sources.items()}
    got = dict(copied)
    if expected != got:
        missing = sorted(set(expected) - set(got))[:5]
        wrong = sorted(r for r in expected if r in got and expected[r] != got[r])[:5]
        raise StorageError(
            f"copy of {where} to {target_uri} is incomplete: expected "
            f"{len(expected)} files / {sum(expected.values())} bytes, got {len(got)} / "
            f"{sum(got.values())} (missing {missing}, size differs {wrong})"
        )


def _service(fs: pafs.FileSystem) -> tuple[str, ...] | None:
    """Which cloud service (kind, endpoint, account) ``fs`` reaches; None for other kinds."""
    if not isinstance(fs, pafs.S3FileSystem | pafs.GcsFileSystem | pafs.AzureFileSystem):
        return None
    # pyarrow exposes a cloud filesystem's options only through its pickling support
    # (__reduce__ returns the constructor kwargs); nothing is unpickled here.
    try:
        options = fs.__reduce__()[1][0]
    except (AttributeError, IndexError, KeyError, TypeError):
        return None
    names = ("endpoint_override", "scheme", "account_name", "blob_storage_authority",
             "blob_storage_scheme")
    return (fs.type_name, *(str(options.get(n) or "") for n in names))


def _access_denied(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, PermissionError) or "access_denied" in text or "accessdenied" in text


def _fsync_tree(root: str) -> None:
    paths = []
    for folder, _dirs, files in os.walk(root):
        paths.extend(os.path.join(folder, f) for f in files)
        paths.append(folder)  # the new directory entries, too
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(storage.fsync_path, paths))
