"""Dagster resources for Google Cloud Storage and Azure Blob: configuration only.

dagster-aws's ``S3Resource`` is what S3 users already configure; GCS and Azure get a resource
of the same shape here, and each converts into the core's settings (``GcsSettings``,
``AzureSettings``) in one place (``settings()``). Components name them by resource key
(``gcs_key``, ``azure_key``), as ``s3_key`` names an ``S3Resource``; without one, each
provider's standard credential chain and environment is used. Secrets (``access_token``,
``account_key``, ``sas_token``, ``connection_string``) are best given as ``dg.EnvVar``; they
are never written to manifests, metadata or logs.
"""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from trainresults_dagster.storage import AzureSettings, GcsSettings


class GcsResource(dg.ConfigurableResource):
    """How to reach Google Cloud Storage (``gs://``). Empty: Application Default Credentials."""

    endpoint_url: str | None = Field(
        default=None,
        description=(
            "GCS JSON API endpoint, for an emulator or a private endpoint (e.g. "
            "'http://127.0.0.1:9023'). Default: STORAGE_EMULATOR_HOST, else Google's."
        ),
    )
    project_id: str | None = Field(
        default=None,
        description="Google Cloud project (default: GOOGLE_CLOUD_PROJECT or the credentials').",
    )
    anonymous: bool = Field(
        default=False,
        description="Send no credentials (public buckets, emulators).",
    )
    access_token: str | None = Field(
        default=None,
        description=(
            "An OAuth2 access token instead of Application Default Credentials "
            "(GOOGLE_APPLICATION_CREDENTIALS, workload identity, gcloud login); use dg.EnvVar."
        ),
    )

    def settings(self) -> GcsSettings:
        return GcsSettings(
            endpoint_url=self.endpoint_url,
            project_id=self.project_id,
            anonymous=self.anonymous,
            access_token=self.access_token,
        )


class AzureResource(dg.ConfigurableResource):
    """How to reach Azure Blob Storage (``abfs://``, ``az://``). Empty: Azure's variables."""

    account_name: str | None = Field(
        default=None,
        description="Storage account (default: AZURE_STORAGE_ACCOUNT or the connection string's).",
    )
    endpoint_url: str | None = Field(
        default=None,
        description=(
            "Blob endpoint, for Azurite or a private endpoint (e.g. "
            "'http://127.0.0.1:10000/devstoreaccount1'). Default: the account's public one."
        ),
    )
    account_key: str | None = Field(
        default=None,
        description="Shared key (default: AZURE_STORAGE_KEY); use dg.EnvVar.",
    )
    sas_token: str | None = Field(
        default=None, description="A SAS token instead of a key; use dg.EnvVar."
    )
    connection_string: str | None = Field(
        default=None,
        description=(
            "An Azure connection string (account, key, endpoint) instead of the fields above "
            "(default: AZURE_STORAGE_CONNECTION_STRING); use dg.EnvVar. Without any key, "
            "DefaultAzureCredential (managed or workload identity, az login) is used."
        ),
    )

    def settings(self) -> AzureSettings:
        return AzureSettings(
            account_name=self.account_name,
            endpoint_url=self.endpoint_url,
            account_key=self.account_key,
            sas_token=self.sas_token,
            connection_string=self.connection_string,
        )
