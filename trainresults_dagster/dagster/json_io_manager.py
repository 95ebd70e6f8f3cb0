"""``JsonIOManager``: stores ``ModelVersion``, ``Checkpoint``, ``TrainResult`` and
``TrainResultGrid`` values as JSON.

The selection and promotion assets hand small *references* downstream (a checkpoint URI
with its metrics, a registered model version), not model bytes. Dagster's default IO
manager would pickle them, and unpickling what a bucket holds is code execution; so these
values are written as one small JSON object each and rebuilt on load.

Call chain: ``handle_output(context, value)`` -> ``encode(value)`` -> one atomic JSON write
at ``<base>/<asset key parts>[/<partition>].json``; ``load_input(context)`` -> read ->
``decode(payload)``, resolving ``s3://`` checkpoint URIs with the configured ``S3Resource``.
An input annotated ``Checkpoint`` whose upstream value is a ``ModelVersion`` gets the
version's checkpoint (what batch inference and serving want).

Definitions must supply it under ``JSON_IO_MANAGER_KEY`` (``"trainresults_json_io_manager"``),
the default ``io_manager_key`` of ``build_best_checkpoint_asset`` and ``build_promotion_asset``.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg
import pyarrow.fs as pafs
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr, field_validator

import trainresults_dagster.storage as storage
from trainresults_dagster.dagster._wiring import StoreSettings, check_location, storage_parts
from trainresults_dagster.dagster.clouds import AzureResource, GcsResource
from trainresults_dagster.errors import CorruptValueError
from trainresults_dagster.registry.model_version import ModelVersion
from trainresults_dagster.runs.checkpoint import Checkpoint
from trainresults_dagster.runs.result import TrainResult
from trainresults_dagster.runs.tune import TrainResultGrid, TrialResult
from trainresults_dagster.storage import S3Settings

JSON_IO_MANAGER_KEY = "trainresults_json_io_manager"
SCHEMA = "trainresults.json_value/1"


class JsonIOManager(dg.ConfigurableIOManager):
    """Stores ``ModelVersion`` / ``Checkpoint`` / ``TrainResult`` / JSON-able values as JSON."""

    base_path: str | None = Field(
        default=None,
        description=(
            "Folder, s3://bucket/prefix, gs://bucket/prefix or abfs://container/prefix for "
            "the JSON files. Default: "
            "'trainresults_json' under the Dagster instance's storage directory."
        ),
    )
    s3: S3Resource | None = Field(
        default=None,
        description=(
            "S3 endpoint, region and credentials, used for an s3:// base_path and to open "
            "s3:// checkpoint URIs of loaded values. Default: the AWS environment."
        ),
    )
    gcs: GcsResource | None = Field(
        default=None,
        description=(
            "GCS endpoint, project and token for a gs:// base_path and gs:// checkpoint URIs "
            "of loaded values. Default: Application Default Credentials."
        ),
    )
    azure: AzureResource | None = Field(
        default=None,
        description=(
            "Azure account, endpoint and key for an abfs:// base_path and abfs:// checkpoint "
            "URIs of loaded values. Default: Azure's standard variables."
        ),
    )

    @field_validator("base_path")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        # An unknown scheme would fail on the first write, naming the wrong thing.
        return value if value is None else check_location(value, what="base_path")

    def _stores(self) -> StoreSettings:
        return StoreSettings(self.s3, self.gcs, self.azure)

    _root: tuple[pafs.FileSystem, str] | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if self.base_path is None and context.instance is not None:
            root = os.path.join(context.instance.storage_directory(), "trainresults_json")
            self._root = storage.resolve(root)

    def _location(self) -> tuple[pafs.FileSystem, str]:
        if self._root is None:
            if self.base_path is None:
                raise ValueError(
                    "JsonIOManager needs base_path (a folder or s3://bucket/prefix) when it "
                    "runs without a Dagster instance"
                )
            self._root = self._stores().filesystem_for(self.base_path)
        return self._root

    def _path(self, context: dg.InputContext | dg.OutputContext, partition: str | None) -> str:
        fs, root = self._location()
        parts = storage_parts(context.asset_key.path, partition)
        return f"{root}/{'/'.join(parts)}.json"

    # ----------------------------------------------------------------- output
    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        fs, _ = self._location()
        path = self._path(context, partition)
        storage.write_json_atomic(fs, path, encode(obj))
        metadata: dict[str, Any] = {"dagster/uri": dg.MetadataValue.path(storage.to_uri(fs, path))}
        if isinstance(obj, ModelVersion):
            metadata["model_version"] = obj.version
        context.add_output_metadata(metadata)

    # ----------------------------------------------------------------- input
    def load_input(self, context: dg.InputContext) -> Any:
        if context.has_asset_partitions and len(context.asset_partition_keys) > 1:
            return {key: self._load(context, key) for key in context.asset_partition_keys}
        partition = context.asset_partition_key if context.has_asset_partitions else None
        return self._load(context, partition)

    def _load(self, context: dg.InputContext, partition: str | None) -> Any:
        fs, _ = self._location()
        path = self._path(context, partition)
        try:
            payload = storage.read_json(fs, path)
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"expected a stored value for asset {context.asset_key.to_user_string()!r}"
                f"{f' partition {partition!r}' if partition else ''} at "
                f"{storage.to_uri(fs, path)}; materialise it first"
            ) from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptValueError(f"expected JSON at {storage.to_uri(fs, path)}: {exc}") from exc
        value = decode(payload, s3=self._stores(), where=storage.to_uri(fs, path))
        wanted = getattr(context.dagster_type, "typing_type", None)
        if wanted is Checkpoint and isinstance(value, ModelVersion):
            return value.checkpoint
        return value


def encode(obj: Any) -> dict[str, Any]:
    """A value as ``{"schema", "kind", "value"}``; ``TypeError`` for what JSON cannot hold."""
    if obj is None:
        return {"schema": SCHEMA, "kind": "none", "value": None}
    if isinstance(obj, ModelVersion):
        return {"schema": SCHEMA, "kind": "ModelVersion", "value": obj.to_dict()}
    if isinstance(obj, Checkpoint):
        return {"schema": SCHEMA, "kind": "Checkpoint", "value": obj.to_dict()}
    if isinstance(obj, TrialResult):
        return {"schema": SCHEMA, "kind": "TrialResult", "value": obj.to_dict()}
    if isinstance(obj, TrainResult):
        return {"schema": SCHEMA, "kind": "TrainResult", "value": obj.to_dict()}
    if isinstance(obj, TrainResultGrid):
        return {"schema": SCHEMA, "kind": "TrainResultGrid", "value": obj.to_dict()}
    if _plain_json(obj):
        return {"schema": SCHEMA, "kind": "json", "value": obj}
    raise TypeError(
        "JsonIOManager stores ModelVersion, Checkpoint, TrainResult, TrainResultGrid, None or "
        "plain JSON "
        f"(dict/list/str/number/bool); got {type(obj).__name__}: {obj!r:.200}. Give this "
        "asset another io_manager_key."
    )


def _plain_json(obj: Any) -> bool:
    if obj is None or isinstance(obj, str | int | float | bool):
        return True
    if isinstance(obj, list | tuple):
        return all(_plain_json(v) for v in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _plain_json(v) for k, v in obj.items())
    return False


def _filesystem(
    uri: str, s3: StoreSettings | S3Resource | S3Settings | None
) -> pafs.FileSystem | None:
    stores = s3 if isinstance(s3, StoreSettings) else StoreSettings(s3)
    return stores.filesystem(uri)


def decode(
    payload: Any,
    *,
    s3: StoreSettings | S3Resource | S3Settings | None = None,
    where: str = "<json>",
) -> Any:
    """Inverse of ``encode``; ``s3``: the settings for cloud URIs in the value (an
    ``S3Resource``/``S3Settings`` for S3 alone, or a ``StoreSettings`` for every store)."""
    if not isinstance(payload, dict) or payload.get("schema") != SCHEMA:
        raise CorruptValueError(
            f"expected a {SCHEMA!r} object in {where}, got {str(payload)[:200]!r}"
        )
    kind, value = payload.get("kind"), payload.get("value")
    if kind == "none":
        return None
    if kind == "json":
        return value
    if not isinstance(value, dict) or not isinstance(value.get("uri"), str):
        raise CorruptValueError(f"expected a value with a 'uri' string in {where}")
    fs = _filesystem(value["uri"], s3)
    if kind == "ModelVersion":
        return ModelVersion.from_dict(value, filesystem=fs, where=where)
    if kind == "Checkpoint":
        metrics = value.get("metrics")
        name = value.get("dir_name")
        return Checkpoint(value["uri"], fs, metrics=metrics if isinstance(metrics, dict) else None,
                          dir_name=name if isinstance(name, str) else None)
    if kind == "TrainResult":
        return TrainResult.from_dict(value, filesystem=fs, where=where)
    if kind == "TrialResult":
        return TrialResult.from_dict(value, filesystem=fs, where=where)
    if kind == "TrainResultGrid":
        return TrainResultGrid.from_dict(value, filesystem=fs, where=where)
    raise CorruptValueError(
        f"expected kind 'ModelVersion', 'Checkpoint', 'TrainResult', 'TrialResult', "
        f"'TrainResultGrid', 'json' or 'none' in "
        f"{where}, got {kind!r}"
    )
