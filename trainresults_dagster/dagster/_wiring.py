"""Adapting Dagster's objects to the core, each in exactly one place.

* ``s3_settings(resource)``: a dagster-aws ``S3Resource`` (or nothing) -> ``S3Settings``,
  the core's one S3 configuration (endpoint, region, credentials).
* ``gcs_settings(resource)``, ``azure_settings(resource)``: the same for ``GcsResource`` and
  ``AzureResource``; ``StoreSettings`` carries the three, and ``filesystem_for`` resolves a
  location with the one its scheme needs.
* ``resource(resources, key)``: the resource *object* under ``key``. ``context.resources.<key>``
  is what a resource attaches, and dagster-aws's ``S3Resource`` attaches a boto3 client;
  we need its configuration.
* ``asset_key(ref)``: an asset, spec, key, ``"a/b"`` string or list of parts -> ``AssetKey``.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Sequence
from typing import Any

import dagster as dg
import pyarrow.fs as pafs
from dagster_aws.s3 import S3Resource

import trainresults_dagster.storage as storage
from trainresults_dagster.storage import AzureSettings, GcsSettings, S3Settings

from .clouds import AzureResource, GcsResource

AssetRef = str | Sequence[str] | dg.AssetKey | dg.AssetsDefinition | dg.AssetSpec


def s3_settings(s3: S3Resource | S3Settings | None) -> S3Settings:
    """The settings of a dagster-aws ``S3Resource``; the default AWS chain for None."""
    if s3 is None:
        return S3Settings()
    if isinstance(s3, S3Settings):
        return s3
    if not isinstance(s3, S3Resource):
        raise TypeError(f"expected a dagster_aws.s3.S3Resource, got {type(s3).__name__}")
    return S3Settings(
        endpoint_url=s3.endpoint_url,
        region_name=s3.region_name,
        aws_access_key_id=s3.aws_access_key_id,
        aws_secret_access_key=s3.aws_secret_access_key,
        aws_session_token=s3.aws_session_token,
        profile_name=s3.profile_name,
        use_ssl=s3.use_ssl is not False,
        verify=s3.verify,
        anonymous=bool(s3.use_unsigned_session),
        max_attempts=s3.max_attempts or 5,
    )


def resource(resources: Any, key: str) -> Any:
    """The resource object under ``key`` (not what it attaches), or None when absent."""
    original = getattr(resources, "original_resource_dict", None) or {}
    if key in original:
        return original[key]
    return getattr(resources, key, None)


def s3_settings_from(resources: Any, key: str | None) -> S3Settings:
    """The S3 settings of resource ``key``; without a key, or with no such resource, the
    default AWS chain and environment (the same rule for every component)."""
    return s3_settings(resource(resources, key) if key else None)


def gcs_settings(gcs: GcsResource | GcsSettings | None) -> GcsSettings:
    """The settings of a ``GcsResource``; Application Default Credentials for None."""
    if gcs is None:
        return GcsSettings()
    if isinstance(gcs, GcsSettings):
        return gcs
    if not isinstance(gcs, GcsResource):
        raise TypeError(f"expected a trainresults_dagster GcsResource, got {type(gcs).__name__}")
    return gcs.settings()


def azure_settings(azure: AzureResource | AzureSettings | None) -> AzureSettings:
    """The settings of an ``AzureResource``; Azure's standard variables for None."""
    if azure is None:
        return AzureSettings()
    if isinstance(azure, AzureSettings):
        return azure
    if not isinstance(azure, AzureResource):
        raise TypeError(
            f"expected a trainresults_dagster AzureResource, got {type(azure).__name__}"
        )
    return azure.settings()


class StoreSettings:
    """The S3, GCS and Azure settings of one component, resolved from its resources."""

    def __init__(self, s3: Any = None, gcs: Any = None, azure: Any = None) -> None:
        self.s3 = s3_settings(s3)
        self.gcs = gcs_settings(gcs)
        self.azure = azure_settings(azure)

    @classmethod
    def from_resources(cls, resources: Any, *, s3_key: str | None = None,
                       gcs_key: str | None = None, azure_key: str | None = None) -> StoreSettings:
        """Each store's resource under its key; a missing key or resource is the default."""
        return cls(
            resource(resources, s3_key) if s3_key else None,
            resource(resources, gcs_key) if gcs_key else None,
            resource(resources, azure_key) if azure_key else None,
        )

    def filesystem_for(self, uri: str) -> tuple[pafs.FileSystem, str]:
        return storage.filesystem_for(uri, self.s3, gcs=self.gcs, azure=self.azure)

    def filesystem(self, uri: str) -> pafs.FileSystem | None:
        """The cloud filesystem for ``uri``'s store, or None for a local path."""
        scheme = storage.canonical_scheme(storage.split_scheme(uri)[0])
        if scheme not in CLOUD_SCHEMES:
            return None
        return self.filesystem_for(uri)[0]


#: Schemes of the stores every storage setting accepts (besides local folders).
CLOUD_SCHEMES = ("s3", "gs", "abfs")
#: Every spelling of a location a storage setting accepts.
KNOWN_SCHEMES = ("", "file", "s3", "gs", "gcs", "abfs", "abfss", "az")


def check_location(value: str, *, what: str) -> str:
    """``value`` if it is a local folder or a URI of a known store, else a ``ValueError``
    naming the accepted forms (an unknown scheme would fail later, on the first write, with
    an error naming the wrong thing)."""
    scheme, _ = storage.split_scheme(str(value))
    if scheme not in KNOWN_SCHEMES:
        raise ValueError(
            f"{what} must be a local folder, 's3://bucket/prefix', 'gs://bucket/prefix' or "
            f"'abfs://container/prefix' (also 'az://', 'gcs://'), got {value!r} "
            f"(scheme {scheme!r})"
        )
    if storage.canonical_scheme(scheme) in CLOUD_SCHEMES:
        # The bucket or container, and Azure's account form, are checked here (resolving with
        # a given filesystem opens nothing).
        storage.resolve(str(value), pafs.LocalFileSystem())
    return value


def asset_key(ref: Any, *, what: str) -> dg.AssetKey:
    """``ref`` as an ``AssetKey``: an ``AssetsDefinition`` with one key, an ``AssetSpec``,
    an ``AssetKey``, a key string (``"train"``, ``"models/train"``) or a list of parts."""
    if isinstance(ref, dg.AssetsDefinition):
        if len(ref.keys) != 1:
            raise ValueError(
                f"{what} must be a single asset, got a definition with keys "
                f"{sorted(k.to_user_string() for k in ref.keys)}"
            )
        return ref.key
    if isinstance(ref, dg.AssetSpec):
        return ref.key
    if isinstance(ref, dg.AssetKey):
        return ref
    if isinstance(ref, str) and ref:
        return dg.AssetKey.from_user_string(ref)
    if isinstance(ref, list | tuple) and ref and all(isinstance(p, str) for p in ref):
        return dg.AssetKey(list(ref))
    raise TypeError(
        f"{what} must be an asset (AssetsDefinition), an AssetSpec, an AssetKey or a key "
        f"string such as 'train' or 'models/train', got {type(ref).__name__}: {ref!r}"
    )


def storage_parts(
    parts: Sequence[str], partition: str | dg.MultiPartitionKey | None = None
) -> list[str]:
    """Folder names for an asset key's parts and a partition, the same in every IO manager.

    Each part is percent-encoded (separators, ``:``, ``@`` and other unsafe characters), and a
    partition's folders start with ``@``, which an encoded key part never does: asset ``a``
    partition ``b`` (``a/@b``) and asset ``a/b`` (``a/b``) can never share a folder. A
    multi-partition key gives one ``@dimension=value`` folder per dimension, sorted.
    """
    out = [_safe_part(p) for p in parts]
    if isinstance(partition, dg.MultiPartitionKey):
        out += [f"@{_safe_part(dim)}={_safe_part(value)}"
                for dim, value in sorted(partition.keys_by_dimension.items())]
    elif partition is not None:
        out.append("@" + _safe_part(str(partition)))
    return out


def _safe_part(part: str) -> str:
    text = urllib.parse.quote(str(part), safe="-_.")
    return text.replace(".", "%2E") if text in (".", "..") else text


def partitions_of(ref: Any) -> dg.PartitionsDefinition | None:
    """The partitions of an upstream asset given as a definition or spec, else None."""
    if isinstance(ref, dg.AssetsDefinition | dg.AssetSpec):
        return ref.partitions_def
    return None
