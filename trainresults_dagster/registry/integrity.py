"""Checkpoint integrity: what ``register`` recorded about each file, and checking it again.

Retention (Ray's ``num_to_keep`` works on the run, not on the registry, but lifecycle rules
and hand deletions reach the registry too) and partial overwrites leave a version record
that points at missing or different bytes, and nothing notices until a replica fails to
load. So ``register`` writes a *file manifest* next to the data folder
(``<model>/data/<id>.files.json``, immutable, its SHA-256 in the version record):

* every file's relative path and size;
* a checksum: on S3 the store's own, the ETag, read from the same listing that checks the
  copy (no extra request, no byte read: the copy is server-side); locally a CRC32 of the
  registry's copy, computed right after the copy while the pages are hot (zlib's CRC32
  runs at several GB/s, so hashing stays a small part of the register; SHA-256 would cut
  the local register throughput in half). CRC32 and ETags detect truncation, deletion,
  partial overwrites and bit rot, not a deliberate forgery.

``check_files`` compares a listing (one request per 1,000 files on S3) with the manifest:
missing, unexpected and resized files always, ETags too on S3 (they come with the
listing). ``hashes=True`` also reads every file: CRC32 locally; on S3 the MD5 of the bytes
against single-part ETags (a multipart ETag is a hash of part hashes; it is compared from
the listing only).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trainresults_dagster.errors import CorruptRegistryError

if TYPE_CHECKING:
    from ._cas import ObjectStore
    from .model_version import ModelVersion

MANIFEST_KIND = "trainresults.file_manifest/1"
_CHUNK = 8 << 20
#: Shown in reports; a version with thousands of bad files need not list them all.
_SHOW = 20


def crc32_of_chunks(chunks: Iterable[bytes]) -> str:
    value = 0
    for chunk in chunks:
        value = zlib.crc32(chunk, value)
    return f"{value & 0xFFFFFFFF:08x}"


def local_chunks(path: str) -> Iterable[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


def build_manifest(
    listing: Mapping[str, tuple[int, str | None]],
    *,
    crc32_of: Callable[[str], str] | None,
    threads: int = 8,
) -> dict[str, Any]:
    """The manifest for a freshly copied data folder: ``listing`` is the store's
    ``files()`` of it; ``crc32_of(relative path)`` hashes one file (local registries)."""
    rels = sorted(listing)
    crcs: dict[str, str] = {}
    if crc32_of is not None and rels:
        with concurrent.futures.ThreadPoolExecutor(max(1, min(threads, len(rels)))) as pool:
            crcs = dict(zip(rels, pool.map(crc32_of, rels), strict=True))
    entries = []
    for rel in rels:
        size, etag = listing[rel]
        entry: dict[str, Any] = {"path": rel, "size": size}
        if rel in crcs:
            entry["crc32"] = crcs[rel]
        elif etag:
            entry["etag"] = etag
        entries.append(entry)
    checksum = "crc32" if crc32_of is not None else ("etag" if any("etag" in e for e in entries) else "none")
    return {"kind": MANIFEST_KIND, "checksum": checksum, "files": entries}


@dataclass(frozen=True)
class IntegrityReport:
    """What ``Registry.verify`` found for one version.

    ``missing``: recorded files that are gone; ``changed``: ``(path, what)`` for files whose
    size or checksum differs; ``unexpected``: files that were not registered. ``ok`` when
    all three are empty. ``requests``: storage requests the check made.
    """

    model: str
    version: int
    uri: str
    files: int
    size_bytes: int
    checksum: str
    hashed: bool
    missing: list[str] = field(default_factory=list)
    changed: list[tuple[str, str]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    requests: int = 0

    @property
    def ok(self) -> bool:
        return not (self.missing or self.changed or self.unexpected)

    def problems(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing: {_names(self.missing)}")
        if self.changed:
            shown = ", ".join(f"{p} ({what})" for p, what in self.changed[:_SHOW])
            more = f" and {len(self.changed) - _SHOW} more" if len(self.changed) > _SHOW else ""
            parts.append(f"{len(self.changed)} changed: {shown}{more}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} not registered: {_names(self.unexpected)}")
        return "; ".join(parts)

    def summary(self) -> str:
        label = {"crc32": "CRC32s", "etag": "ETags"}.get(self.checksum, "total size")
        how = ("every file read and hashed" if self.hashed
               else f"sizes and {label} from one listing")
        head = f"version {self.version} of {self.model!r} at {self.uri}"
        if self.ok:
            what = "its 1 file" if self.files == 1 else f"all {self.files} files"
            return f"{head}: {what} intact ({how})"
        return f"{head}: {self.problems()} (checked {how})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "uri": self.uri,
            "ok": self.ok,
            "files": self.files,
            "size_bytes": self.size_bytes,
            "checksum": self.checksum,
            "hashed": self.hashed,
            "missing": self.missing,
            "changed": [{"path": p, "what": w} for p, w in self.changed],
            "unexpected": self.unexpected,
            "notes": self.notes,
            "requests": self.requests,
        }


def _names(paths: list[str]) -> str:
    shown = ", ".join(paths[:_SHOW])
    return shown + (f" and {len(paths) - _SHOW} more" if len(paths) > _SHOW else "")


def compare(
    manifest: Mapping[str, Any],
    listing: Mapping[str, tuple[int, str | None]],
) -> tuple[list[str], list[tuple[str, str]], list[str]]:
    """``(missing, changed, unexpected)`` from sizes and listed checksums (ETags)."""
    recorded = {e["path"]: e for e in manifest.get("files") or [] if isinstance(e, dict)}
    missing = sorted(p for p in recorded if p not in listing)
    unexpected = sorted(p for p in listing if p not in recorded)
    changed = []
    for path in sorted(set(recorded) & set(listing)):
        entry, (size, etag) = recorded[path], listing[path]
        if int(entry.get("size", -1)) != size:
            changed.append((path, f"size {entry.get('size')} -> {size}"))
        elif entry.get("etag") and etag and entry["etag"] != etag:
            changed.append((path, f"ETag {entry['etag']} -> {etag}"))
    return missing, changed, unexpected


def compare_hashes(
    manifest: Mapping[str, Any],
    present: Iterable[str],
    chunks_of: Callable[[str], Iterable[bytes]],
    *,
    threads: int = 8,
) -> tuple[list[tuple[str, str]], list[str]]:
    """Read every file in ``present`` and compare its CRC32 (or, for single-part ETags, its
    MD5) with the manifest. Returns ``(changed, notes)``."""
    recorded = {e["path"]: e for e in manifest.get("files") or [] if isinstance(e, dict)}
    paths = [p for p in present if p in recorded]

    def one(path: str) -> tuple[str, str] | str | None:
        entry = recorded[path]
        if entry.get("crc32"):
            got = crc32_of_chunks(chunks_of(path))
            return None if got == entry["crc32"] else (path, f"CRC32 {entry['crc32']} -> {got}")
        etag = str(entry.get("etag") or "").strip('"')
        if etag and "-" not in etag:
            digest = hashlib.md5(usedforsecurity=False)
            for chunk in chunks_of(path):
                digest.update(chunk)
            got = digest.hexdigest()
            return None if got == etag else (path, f"MD5 {etag} -> {got}")
        return f"{path}: multipart ETag, compared from the listing only"

    changed, notes = [], []
    with concurrent.futures.ThreadPoolExecutor(max(1, min(threads, len(paths) or 1))) as pool:
        for outcome in pool.map(one, paths):
            if isinstance(outcome, tuple):
                changed.append(outcome)
            elif isinstance(outcome, str):
                notes.append(outcome)
    return changed, notes


def read_manifest(
    store: ObjectStore, key: str, ref: Mapping[str, Any]
) -> tuple[dict[str, Any] | None, str]:
    """The manifest at ``key`` if its SHA-256 is the one in the version record ``ref``;
    else ``(None, why)``."""
    found = store.get(key)
    if found is None:
        return None, "the file manifest is missing (deleted?): nothing to check against"
    if hashlib.sha256(found[0]).hexdigest() != ref.get("sha256"):
        return None, "the file manifest changed since register (SHA-256 differs)"
    try:
        data = json.loads(found[0].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptRegistryError(f"expected JSON in {store.uri(key)}: {exc}") from exc
    if not isinstance(data, dict) or data.get("kind") != MANIFEST_KIND:
        raise CorruptRegistryError(f"expected a {MANIFEST_KIND!r} object in {store.uri(key)}")
    return data, ""


def check_version(
    store: ObjectStore,
    mv: ModelVersion,
    record: Mapping[str, Any],
    *,
    data_key: str,
    manifest_key: str,
    hashes: bool,
    requests: int,
) -> IntegrityReport:
    """``Registry.verify`` once the version record is read (``requests`` so far)."""
    listing = store.files(data_key)
    requests += max(1, -(-len(listing) // 1000))  # S3 lists 1,000 keys per request
    ref = record.get("files_manifest")
    base = {"model": mv.model, "version": mv.version, "uri": mv.uri}
    if not isinstance(ref, dict):
        # Registered before manifests: compare what the record kept.
        expected = (int(record.get("num_files") or 0), int(record.get("size_bytes") or 0))
        got = (len(listing), sum(size for size, _ in listing.values()))
        changed = [] if got == expected or not listing else [
            ("(folder)", f"{expected[0]} files / {expected[1]} bytes -> {got[0]} / {got[1]}")
        ]
        return IntegrityReport(
            **base, files=expected[0], size_bytes=expected[1], checksum="none", hashed=False,
            missing=[] if listing else ["(every file)"], changed=changed, requests=requests,
            notes=["registered without a file manifest: checked file count and total size"],
        )
    manifest, problem = read_manifest(store, manifest_key, ref)
    requests += 1
    if manifest is None:
        return IntegrityReport(
            **base, files=int(ref.get("files") or 0), size_bytes=mv.size_bytes,
            checksum=str(ref.get("checksum") or "none"), hashed=False,
            changed=[(store.uri(manifest_key), problem)], requests=requests,
        )
    missing, changed, unexpected = compare(manifest, listing)
    notes: list[str] = []
    if hashes:
        bad = {path for path, _ in changed}
        intact = [p for p in sorted(listing) if p not in bad]
        more, notes = compare_hashes(manifest, intact,
                                     lambda rel: store.chunks(f"{data_key}/{rel}"))
        changed += more
        requests += len(intact)
    entries = manifest.get("files") or []
    return IntegrityReport(
        **base, files=len(entries), size_bytes=sum(int(e.get("size") or 0) for e in entries),
        checksum=str(manifest.get("checksum") or "none"), hashed=hashes, missing=missing,
        changed=changed, unexpected=unexpected, notes=notes, requests=requests,
    )
