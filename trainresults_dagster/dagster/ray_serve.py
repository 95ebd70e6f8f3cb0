"""Serving targets: where the serving asset hands the champion. Each has ``deploy(manifest)``.

A target is a Dagster resource with ``deploy(manifest: dict) -> dict``: it receives the
hand-off manifest (``model``, ``version``, ``checkpoint_uri``, ``metrics``, ``lineage`` ...),
makes the serving side use it, and returns a JSON-able record of what it did (with
``deployed``: the ``model``/``version``/``checkpoint_uri`` it handed on). Any resource with
that one method is a target. A target that can be asked what runs now also has
``running() -> dict | None`` (``{}``: nothing; None: cannot tell), which the
``serving_matches_champion`` check compares with the alias.

* ``RayServeTarget`` changes one deployment's ``user_config`` through the Serve REST API
  (``GET``/``PUT /api/serve/applications/`` on the Ray dashboard, as ``serve deploy`` does,
  with Ray's own ``ServeSubmissionClient``, which sends the dashboard's auth token). Serve
  passes a changed ``user_config`` to ``reconfigure()`` on each running replica, so the
  replicas load the new checkpoint without a restart. Rolling back is handing the old
  version again.
* ``WebhookTarget`` POSTs the manifest as signed JSON to your deployer.
"""

from __future__ import annotations

import copy
import os
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

import dagster as dg
from pydantic import Field, field_validator

from trainresults_dagster.errors import ServingTargetError
from trainresults_dagster.webhook import redact_url

DEFAULT_DASHBOARD = "http://localhost:8265"
#: The keys ``RayServeTarget`` sets in ``user_config``; other keys there are kept as they are.
USER_CONFIG_KEYS = ("checkpoint_uri", "model", "version")
#: What the dashboard puts in place of secret ``runtime_env`` values for browser requests.
_REDACTED = "<redacted>"


def _http_url(value: Any, *, what: str) -> Any:
    # An EnvVar holds the variable's *name* until Dagster resolves it at run time.
    if value is None or isinstance(value, dg.EnvVar):
        return value
    scheme = urllib.parse.urlsplit(value).scheme
    if scheme not in ("http", "https"):
        raise ValueError(f"{what} must be an http:// or https:// URL, got scheme {scheme!r}")
    return value


class RayServeTarget(dg.ConfigurableResource):
    """Point a Ray Serve deployment at the new checkpoint through its ``user_config``.

    Works on applications deployed declaratively (``serve deploy``, KubeRay's RayService,
    the REST API): the current config of every declarative application is read and put
    back with only this deployment's ``user_config`` changed (``checkpoint_uri``, ``model``,
    ``version``; other keys are kept), then ``deploy`` waits until every replica has run
    ``reconfigure()`` with it. Under KubeRay the RayService spec stays the source of truth:
    a later change of that spec re-applies its own ``user_config``.
    """

    app_name: str = Field(description="Name of the Serve application.")
    deployment_name: str = Field(description="Name of the deployment inside the application.")
    address: str | None = Field(
        default=None,
        description="Ray dashboard address (http://head:8265). Default: the "
        "RAY_DASHBOARD_ADDRESS environment variable, else http://localhost:8265, like "
        "`serve deploy`.",
    )
    auth_token: str | None = Field(
        default=None,
        description="Ray auth token for dashboards that require one, if Ray's own token "
        "discovery (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token with "
        "RAY_AUTH_MODE=token) does not apply. Use dg.EnvVar.",
    )
    wait_timeout_seconds: float = Field(
        default=300.0,
        ge=0,
        description="How long to wait for every replica to run reconfigure() with the new "
        "user_config; 0 returns right after the update is accepted.",
    )

    def __init__(
        self, app_name: str, deployment_name: str, address: str | None = None, **kwargs: Any
    ) -> None:
        # Positional (app_name, deployment_name, address) as in the public contract.
        # A dict: Dagster's config classes type their fields on the class, not on __init__.
        fields = {"app_name": app_name, "deployment_name": deployment_name, "address": address}
        super().__init__(**fields, **kwargs)

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str | None) -> str | None:
        return _http_url(value, what="RayServeTarget.address (the Ray dashboard URL)")

    # ------------------------------------------------------------------ public
    @property
    def dashboard_address(self) -> str:
        address = self.address or os.environ.get("RAY_DASHBOARD_ADDRESS") or DEFAULT_DASHBOARD
        return address.rstrip("/")

    def current_user_config(self) -> dict[str, Any]:
        """The deployment's live ``user_config``."""
        client = self._client()
        _, app = self._app(self._call(client.get_serve_details, "read the Serve config"))
        return dict(self._live_user_config(app))

    def running(self) -> dict[str, Any]:
        """What the deployment runs now, from its live ``user_config`` (one GET of the Serve
        REST API): ``{"model", "version", "checkpoint_uri"}``, or ``{}`` if none was set."""
        live = self.current_user_config()
        if not live.get("checkpoint_uri"):
            return {}
        return {k: live.get(k) for k in USER_CONFIG_KEYS}

    def deploy(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """Set ``checkpoint_uri``/``model``/``version`` in the user_config; wait for replicas."""
        client = self._client()
        details = self._call(client.get_serve_details, "read the Serve config")
        apps, app = self._app(details)
        previous = self._live_user_config(app)
        wanted = {**previous, **{k: manifest.get(k) for k in USER_CONFIG_KEYS}}
        if wanted.get("checkpoint_uri") is None:
            raise ServingTargetError(f"expected a checkpoint_uri in the manifest, got {manifest!r}")
        changed = wanted != previous
        if changed:
            body = self._deploy_body(details, apps, wanted)
            self._call(lambda: client.deploy_applications(body), "update the Serve config")
        started = time.monotonic()
        deployment = self._wait(client, wanted) if self.wait_timeout_seconds else {}
        return {
            "target": "ray_serve",
            "address": redact_url(self.dashboard_address),
            "app_name": self.app_name,
            "deployment_name": self.deployment_name,
            "deployed": {k: wanted.get(k) for k in USER_CONFIG_KEYS},
            "user_config": wanted,
            "previous_user_config": previous,
            "changed": changed,
            "status": deployment.get("status"),
            "replicas": [
                {"replica_id": r.get("replica_id"), "pid": r.get("pid"), "state": r.get("state")}
                for r in deployment.get("replicas") or []
            ],
            "waited_seconds": round(time.monotonic() - started, 3),
        }

    # ------------------------------------------------------------------ internals
    def _where(self) -> str:
        return (
            f"deployment {self.deployment_name!r} of Serve application {self.app_name!r} "
            f"at {redact_url(self.dashboard_address)}"
        )

    def _client(self) -> Any:
        from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

        headers = {"Authorization": f"Bearer {self.auth_token}"} if self.auth_token else None
        return self._call(
            lambda: ServeSubmissionClient(self.dashboard_address, headers=headers),
            "connect to the Ray dashboard",
        )

    def _call(self, fn: Any, what: str) -> Any:
        try:
            return fn()
        except ServingTargetError:
            raise
        except Exception as exc:
            text = " ".join(str(exc).split())
            text = text[:500] + ("…" if len(text) > 500 else "")
            raise ServingTargetError(
                f"could not {what} for {self._where()}: {type(exc).__name__}: {text}"
            ) from exc

    def _app(self, details: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        apps = details.get("applications") or {}
        app = apps.get(self.app_name)
        if app is None:
            raise ServingTargetError(
                f"expected a running Serve application {self.app_name!r} at "
                f"{redact_url(self.dashboard_address)}, found {sorted(apps)!r}; deploy it first "
                "(serve deploy, or a RayService)"
            )
        if self.deployment_name not in (app.get("deployments") or {}):
            raise ServingTargetError(
                f"expected a deployment {self.deployment_name!r} in Serve application "
                f"{self.app_name!r}, found {sorted(app.get('deployments') or {})!r}"
            )
        if app.get("source") != "declarative" or not app.get("deployed_app_config"):
            raise ServingTargetError(
                f"expected {self._where()} to be deployed declaratively (serve deploy, the "
                f"REST API or a RayService), but its source is {app.get('source')!r}: apps "
                "started with serve.run() have no config to update; use serve deploy"
            )
        return apps, app

    def _live_user_config(self, app: Mapping[str, Any]) -> dict[str, Any]:
        deployment = app["deployments"][self.deployment_name]
        live = (deployment.get("deployment_config") or {}).get("user_config")
        if live is None:
            return {}
        if not isinstance(live, dict):
            raise ServingTargetError(
                f"expected the user_config of {self._where()} to be a JSON object (or unset) "
                f"so checkpoint_uri can be added, got {type(live).__name__}"
            )
        return live

    def _deploy_body(
        self, details: Mapping[str, Any], apps: Mapping[str, Any], wanted: dict[str, Any]
    ) -> dict[str, Any]:
        # PUT replaces the whole declarative config: every declarative app goes back in as
        # deployed, or Serve would delete it. Imperative (serve.run) apps are not touched.
        configs = []
        for name, app in apps.items():
            config = app.get("deployed_app_config")
            if app.get("source") != "declarative" or not config:
                continue
            config = copy.deepcopy(config)
            if name == self.app_name:
                entries = config.setdefault("deployments", [])
                entry: dict[str, Any] | None = next(
                    (d for d in entries if d.get("name") == self.deployment_name), None
                )
                if entry is None:
                    entry = {"name": self.deployment_name}
                    entries.append(entry)
                entry["user_config"] = wanted
            configs.append(config)
        if _REDACTED in repr(configs):
            raise ServingTargetError(
                f"the Serve config read from {redact_url(self.dashboard_address)} has redacted "
                "runtime_env values; writing it back would replace real secrets. Is a proxy "
                "marking these requests as coming from a browser?"
            )
        body: dict[str, Any] = {"applications": configs}
        for key in ("proxy_location", "http_options", "grpc_options", "target_capacity"):
            if details.get(key) is not None:
                body[key] = details[key]
        return body

    def _wait(self, client: Any, wanted: dict[str, Any]) -> dict[str, Any]:
        deadline = time.monotonic() + self.wait_timeout_seconds
        state = "no answer yet"
        while True:
            details = self._call(client.get_serve_details, "read the Serve status")
            app = (details.get("applications") or {}).get(self.app_name) or {}
            deployment = (app.get("deployments") or {}).get(self.deployment_name) or {}
            live = (deployment.get("deployment_config") or {}).get("user_config")
            replicas = deployment.get("replicas") or []
            state = (
                f"application {app.get('status')!r}, deployment {deployment.get('status')!r}: "
                f"{deployment.get('message') or app.get('message') or ''}".strip()
            )
            if app.get("status") == "DEPLOY_FAILED" or deployment.get("status") == "DEPLOY_FAILED":
                raise ServingTargetError(
                    f"Serve failed to apply the new user_config to {self._where()}: {state}"
                )
            if (
                live == wanted
                and app.get("status") == "RUNNING"
                and deployment.get("status") == "HEALTHY"
                and replicas
                and all(r.get("state") == "RUNNING" for r in replicas)
            ):
                return deployment
            if time.monotonic() > deadline:
                raise ServingTargetError(
                    f"timed out after {self.wait_timeout_seconds}s waiting for {self._where()} "
                    f"to run reconfigure() with the new user_config; last state: {state}"
                )
            time.sleep(0.5)
