"""``CheckpointRegistry``: the checkpoint registry as a Dagster resource.

A thin shell over ``registry.Registry`` (see there for the storage layout and guarantees).
Inside a run it stamps what it does with the Dagster run id: ``register`` adds
``dagster_run_id`` to the lineage; ``promote``/``rollback`` record ``who`` as
``"<$USER>@<host> (dagster run <id>)"`` and ``dagster_run_id`` in the event's details,
unless the caller passes its own.
"""

from __future__ import annotations

from types import EllipsisType
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr, field_validator

import trainresults_dagster.storage as storage
from trainresults_dagster.dagster._wiring import (
    azure_settings,
    check_location,
    gcs_settings,
    s3_settings,
)
from trainresults_dagster.dagster.clouds import AzureResource, GcsResource
from trainresults_dagster.registry.integrity import IntegrityReport
from trainresults_dagster.registry.model_version import AliasEvent, ModelVersion
from trainresults_dagster.registry.registry import Registry, default_who


class CheckpointRegistry(dg.ConfigurableResource):
    """A versioned checkpoint registry with compare-and-set aliases, on disk or on S3.

    ``register`` copies a checkpoint in (server-side on S3) as version 1, 2, 3, ...;
    ``promote`` moves an alias such as ``"champion"`` as a compare-and-set and records who,
    when, why and the previous version; ``rollback`` moves it back; ``get``,
    ``get_version``, ``versions`` and ``history`` read.
    """

    base_path: str = Field(
        description=(
            "Where the registry lives: a local folder, s3://bucket/prefix (S3 or an "
            "S3-compatible store with conditional writes), gs://bucket/prefix or "
            "abfs://container/prefix (the services' own preconditions; an emulator that "
            "ignores them is refused)."
        ),
    )
    s3: S3Resource | None = Field(
        default=None,
        description=(
            "S3 endpoint, region and credentials for an s3:// base_path. Default: the AWS "
            "environment (variables, profile, instance role)."
        ),
    )
    gcs: GcsResource | None = Field(
        default=None,
        description="GCS endpoint, project and token for a gs:// base_path. Default: ADC.",
    )
    azure: AzureResource | None = Field(
        default=None,
        description=(
            "Azure account, endpoint and key for an abfs:// base_path. Default: Azure's "
            "standard variables."
        ),
    )
    durable: bool = Field(
        default=False,
        description=(
            "Local base_path only: fsync every copied file before a version is committed, so "
            "a power cut cannot leave a committed version whose data never reached the disk. "
            "Off by default (like cp and Ray's checkpoint upload) because registering then "
            "waits for the disk. S3 writes are durable when they return."
        ),
    )

    _registry: Registry | None = PrivateAttr(default=None)
    _run_id: str | None = PrivateAttr(default=None)

    @field_validator("base_path")
    @classmethod
    def _check_base_path(cls, value: Any) -> Any:
        # Fail when Definitions load, not at the first register deep inside a run.
        if isinstance(value, str):
            scheme, rest = storage.split_scheme(value)
            if not value.strip():
                raise ValueError("base_path must be a folder or s3://bucket/prefix, got ''")
            check_location(value, what="base_path")
            canonical = storage.canonical_scheme(scheme)
            if canonical in ("s3", "gs") and not rest.split("/", 1)[0]:
                raise ValueError(
                    f"base_path {value!r} names no bucket; expected {scheme}://bucket/prefix"
                )
        return value

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        run = context.run
        self._run_id = run.run_id if run is not None else None

    @property
    def registry(self) -> Registry:
        """The Dagster-free core this resource delegates to (built on first use)."""
        if self._registry is None:
            self._registry = Registry.open(
                self.base_path, s3_settings(self.s3), gcs=gcs_settings(self.gcs),
                azure=azure_settings(self.azure), durable=self.durable,
            )
        return self._registry

    def _who(self, who: str | None) -> str:
        if who:
            return who
        return default_who() + (f" (dagster run {self._run_id})" if self._run_id else "")

    def _details(self, details: dict[str, Any] | None) -> dict[str, Any]:
        base = {"dagster_run_id": self._run_id} if self._run_id else {}
        return {**base, **(details or {})}

    # ------------------------------------------------------------------ API
    def register(
        self,
        model: str,
        checkpoint: Any,
        *,
        metrics: dict[str, Any] | None,
        lineage: dict[str, Any] | None = None,
        reuse_if_unchanged: bool = False,
    ) -> ModelVersion:
        """Copy ``checkpoint`` in as the next version of ``model`` (see ``Registry.register``)."""
        return self.registry.register(
            model,
            checkpoint,
            metrics=metrics,
            lineage=self._details(lineage),
            reuse_if_unchanged=reuse_if_unchanged,
        )

    def promote(
        self,
        model: str,
        version: int,
        *,
        alias: str = "champion",
        expected_version: int | None | EllipsisType = ...,
        reason: str = "",
        who: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Compare-and-set ``alias`` to ``version``; ``PromotionConflict`` if it moved."""
        return self.registry.promote(
            model,
            version,
            alias=alias,
            expected_version=expected_version,
            reason=reason,
            who=self._who(who),
            details=self._details(details),
        )

    def rollback(
        self,
        model: str,
        alias: str = "champion",
        *,
        reason: str = "",
        who: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> ModelVersion:
        """Move ``alias`` back to the version it had before the current promotion."""
        return self.registry.rollback(
            model, alias, reason=reason, who=self._who(who), details=self._details(details)
        )

    def get(self, model: str, alias: str = "champion") -> ModelVersion | None:
        """The version ``alias`` points at, or None when it was never set (two reads)."""
        return self.registry.get(model, alias)

    def get_version(self, model: str, version: int) -> ModelVersion:
        return self.registry.get_version(model, version)

    def versions(self, model: str) -> list[ModelVersion]:
        return self.registry.versions(model)

    def history(
        self, model: str, alias: str = "champion", *, limit: int | None = None
    ) -> list[AliasEvent]:
        return self.registry.history(model, alias, limit=limit)

    def verify(
        self, model: str, version: int | None = None, *, alias: str = "champion",
        hashes: bool = False,
    ) -> IntegrityReport:
        """Check a version's files against its manifest (see ``Registry.verify``)."""
        return self.registry.verify(model, version, alias=alias, hashes=hashes)

    def card(self, model: str, version: int) -> dict[str, Any] | None:
        """The latest model card of ``version`` (see ``build_promotion_asset``)."""
        return self.registry.card(model, version)

    def models(self) -> list[str]:
        return self.registry.models()

    def collect_garbage(self, model: str, *, older_than_seconds: float = 86400.0) -> list[str]:
        return self.registry.collect_garbage(model, older_than_seconds=older_than_seconds)
