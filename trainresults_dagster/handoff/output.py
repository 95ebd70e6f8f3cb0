"""A Parquet dataset folder that is either complete or visibly not: stage, then commit.

Batch inference writes its parts into a hidden sibling staging folder,
``<parent>/.<name>.tmp-<id>/``, and commits when every part is written:

* **Local disk**: ``_SUCCESS`` is written into the staging folder, then the folder is
  renamed onto the output (the previous output is first renamed aside, then removed). A
  rename is atomic, so a reader sees the old dataset or the new one, never a mix; for the
  instant between the two renames the output is absent, which reads as "not there yet".
* **S3** (no rename): the output prefix gets ``_COMMITTING`` first, then loses its old
  ``_SUCCESS`` and parts; the staged parts are copied in server side; ``_SUCCESS`` is the
  last object written. A prefix without ``_SUCCESS`` is incomplete, whatever else it holds
  (Hadoop/Spark readers use the same marker). ``open_output`` reads only the files that
  ``_SUCCESS`` lists, so even a reader racing a re-commit never mixes two runs.

Staging outside the output means a killed job leaves debris only in a hidden sibling,
never parts inside the output. ``_SUCCESS`` and ``_COMMITTING`` start with ``_`` and the
staging folder with ``.``, so pyarrow and Ray Data readers skip them by default.
``_SUCCESS`` is JSON: rows, files, and the lineage of the run that wrote them.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from typing import Any

import pyarrow.dataset as pads
import pyarrow.fs as pafs

import trainresults_dagster.storage as storage
from trainresults_dagster.errors import (
    CorruptOutputError,
    OutputInUseError,
    OutputNotCommittedError,
)

SUCCESS_FILE = "_SUCCESS"
COMMITTING_FILE = "_COMMITTING"
FORMAT = "trainresults.batch_inference/1"


def staging_path(output: str) -> str:
    parent, name = posixpath.split(output.rstrip("/"))
    if not parent or not name:
        raise ValueError(
            f"expected an output folder below a parent folder or bucket, got {output!r}"
        )
    return posixpath.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:12]}")


def check_replaceable(fs: pafs.FileSystem, output: str) -> None:
    """Refuse to overwrite what we did not write: a typo must not wipe a real folder."""
    info = storage.file_info(fs, output)
    if info.type == pafs.FileType.NotFound:
        return
    where = storage.to_uri(fs, output)
    if info.type == pafs.FileType.File:
        raise OutputInUseError(
            f"expected the output {where} to be a folder (or absent), but it is a file; "
            "choose another output_uri"
        )
    entries = storage.list_dir(fs, output)
    names = {posixpath.basename(e.path) for e in entries}
    if not names or names & {SUCCESS_FILE, COMMITTING_FILE}:
        return
    raise OutputInUseError(
        f"expected the output {where} to be empty or a previous batch-inference output "
        f"(with {SUCCESS_FILE}), but it holds {sorted(names)[:5]!r}; refusing to replace it. "
        "Choose a new output_uri or delete that folder yourself."
    )


def parquet_files(fs: pafs.FileSystem, folder: str) -> list[str]:
    """Relative paths of the ``*.parquet`` files under ``folder``, sorted."""
    infos = storage.list_dir(fs, folder, recursive=True)
    base = folder.rstrip("/") + "/"
    return sorted(
        i.path[len(base) :]
        for i in infos
        if i.type == pafs.FileType.File and i.path.endswith(".parquet")
    )


def commit(fs: pafs.FileSystem, staging: str, output: str, manifest: dict[str, Any]) -> None:
    """Make ``staging`` the output at ``output``, with ``manifest`` as its ``_SUCCESS``."""
    if isinstance(fs, pafs.LocalFileSystem):
        _commit_local(staging, output, manifest)
    else:
        _commit_object_store(fs, staging, output, manifest)


def _commit_local(staging: str, output: str, manifest: dict[str, Any]) -> None:
    storage.write_json_atomic(pafs.LocalFileSystem(), os.path.join(staging, SUCCESS_FILE), manifest)
    parent, name = os.path.split(output)
    old = os.path.join(parent, f".{name}.old-{uuid.uuid4().hex[:12]}")
    had_old = os.path.exists(output)
    if had_old:
        os.rename(output, old)
    try:
        os.rename(staging, output)
    except BaseException:
        if had_old:  # put the previous output back: a failed commit changes nothing
            os.rename(old, output)
        raise
    storage.fsync_path(parent)  # persist the renames themselves
    if had_old:
        storage.delete_dir(pafs.LocalFileSystem(), old)


def _commit_object_store(
    fs: pafs.FileSystem, staging: str, output: str, manifest: dict[str, Any]
) -> None:
    committing = posixpath.join(output, COMMITTING_FILE)
    storage.write_json_atomic(fs, committing, {"staging": staging, "format": FORMAT})
    storage.delete_file(fs, posixpath.join(output, SUCCESS_FILE))
    for info in storage.list_dir(fs, output, recursive=True):
        if info.type == pafs.FileType.File and info.path != committing:
            storage.delete_file(fs, info.path)
    for rel in manifest["files"]:
        src, dst = posixpath.join(staging, rel), posixpath.join(output, rel)
        storage.call(
            lambda s=src, d=dst: fs.copy_file(s, d),
            what="server-side copy",
            where=storage.to_uri(fs, src),
        )
    storage.write_json_atomic(fs, posixpath.join(output, SUCCESS_FILE), manifest)
    storage.delete_file(fs, committing)
    storage.delete_dir(fs, staging)


def read_manifest(fs: pafs.FileSystem, output: str) -> dict[str, Any]:
    """The ``_SUCCESS`` manifest of a committed output; ``OutputNotCommittedError`` if none."""
    path = posixpath.join(output, SUCCESS_FILE)
    where = storage.to_uri(fs, output)
    data = storage.read_json_object(
        fs, path, error=CorruptOutputError, what="a batch-inference manifest"
    )
    if data is None:
        raise OutputNotCommittedError(
            f"expected a committed batch-inference output at {where} (with {SUCCESS_FILE}), "
            "but it has none: the job never finished, is still committing, or wrote elsewhere"
        )
    if not isinstance(data.get("files"), list):
        raise CorruptOutputError(
            f"expected a 'files' list in {storage.to_uri(fs, path)}, got {data.get('files')!r:.100}"
        )
    return data


def open_output(
    output_uri: str | dict[str, Any], filesystem: pafs.FileSystem | None = None
) -> pads.Dataset:
    """A ``pyarrow.dataset`` over exactly the files a committed output's ``_SUCCESS`` lists.

    Accepts the output URI or the summary dict ``run_batch_inference`` returned. Stream it
    (``to_batches()``) or load it (``to_table().to_pandas()``).
    """
    uri = output_uri["output_uri"] if isinstance(output_uri, dict) else output_uri
    fs, path = storage.resolve_matching(str(uri), filesystem)
    manifest = read_manifest(fs, path)
    where = storage.to_uri(fs, path)
    files = [_safe_nested(path, str(rel), where) for rel in manifest["files"]]
    return pads.dataset(files, filesystem=fs, format="parquet")


def _safe_nested(base: str, rel: str, where: str) -> str:
    """A manifest entry read from storage must stay inside the output: check each segment."""
    out = base
    for part in rel.split("/"):
        out = storage.safe_child(out, part, what="output file", where=where)
    return out


#: The package-level name (``trd.open_inference_output``): reads a committed output.
open_inference_output = open_output
