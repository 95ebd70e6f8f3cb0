"""The example's default serving target: a Ray Serve app on the local Ray.

``LocalServeTarget`` is ``trd.RayServeTarget`` plus the one step a real cluster does with
``serve deploy`` or a RayService: on the first hand-off it deploys the app in
``serve_app.py`` declaratively through the Serve REST API, then hands the champion over
through its ``user_config`` like any ``RayServeTarget``. The dashboard address is, in
order: ``address``, ``RAY_DASHBOARD_ADDRESS``, the dashboard of the Ray this process has
started (``make demo``), ``http://localhost:8265`` (``ray start --head``).
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from typing import Any

from pydantic import Field

import trainresults_dagster as trd
from trainresults_dagster.errors import ServingTargetError

IMPORT_PATH = "trainresults_dagster.examples.serve_app:build"
ROUTE_PREFIX = "/champion"


class LocalServeTarget(trd.RayServeTarget):
    """Deploys the example Serve app if it is not there yet, then hands the champion over."""

    http_port: int = Field(
        default=8000, ge=1, le=65535,
        description="Port of Serve's HTTP proxy if this target starts Serve (an already "
        "running Serve keeps its own).",
    )
    start_timeout_seconds: float = Field(
        default=300.0, gt=0, description="How long to wait for the app to start."
    )

    @property
    def dashboard_address(self) -> str:
        address = self.address or os.environ.get("RAY_DASHBOARD_ADDRESS")
        if not address:
            address = _this_process_dashboard() or "http://localhost:8265"
        return address.rstrip("/")

    def deploy(self, manifest: Any) -> dict[str, Any]:
        self.ensure_app()
        return {**super().deploy(manifest), "url": self.url()}

    def ensure_app(self) -> None:
        """Deploy the example app (declaratively, as ``serve deploy``) unless it runs."""
        client = self._client()
        details = self._call(client.get_serve_details, "read the Serve config")
        apps = details.get("applications") or {}
        if self.app_name in apps:
            return
        configs = [a["deployed_app_config"] for a in apps.values()
                   if a.get("source") == "declarative" and a.get("deployed_app_config")]
        configs.append({
            "name": self.app_name, "route_prefix": ROUTE_PREFIX, "import_path": IMPORT_PATH,
            "args": {"name": self.deployment_name},
            "deployments": [{"name": self.deployment_name, "user_config": {}}],
        })
        body: dict[str, Any] = {"applications": configs}
        body["http_options"] = (details.get("http_options") if apps
                                else {"host": "127.0.0.1", "port": self.http_port})
        self._call(lambda: client.deploy_applications(body), "deploy the example Serve app")
        deadline = time.monotonic() + self.start_timeout_seconds
        while time.monotonic() < deadline:
            app = (self._call(client.get_serve_details, "read the Serve status")
                   .get("applications") or {}).get(self.app_name) or {}
            if app.get("status") == "RUNNING":
                return
            if app.get("status") == "DEPLOY_FAILED":
                raise ServingTargetError(f"the example Serve app failed to start: {app.get('message')}")
            time.sleep(0.5)
        raise ServingTargetError(
            f"the example Serve app did not start within {self.start_timeout_seconds}s"
        )

    def url(self) -> str:
        """The app's HTTP endpoint (from Serve's live HTTP options)."""
        details = self._call(self._client().get_serve_details, "read the Serve config")
        port = (details.get("http_options") or {}).get("port") or self.http_port
        return f"http://127.0.0.1:{port}{ROUTE_PREFIX}"

    def query(self, rows: list[dict[str, float]], *, timeout: float = 30.0) -> dict[str, Any]:
        """POST feature rows to the served champion; its answer (model, version, predictions)."""
        request = urllib.request.Request(
            self.url(), data=json.dumps(rows).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())


def _this_process_dashboard() -> str | None:
    import sys

    if "ray" not in sys.modules:  # never import ray just to ask
        return None
    import importlib

    import ray

    if not ray.is_initialized():
        return None
    # Ray has no public getter for the dashboard URL of the cluster it started.
    worker = importlib.import_module("ray._private.worker").global_worker
    url = worker.node.address_info.get("webui_url")
    return f"http://{url}" if url else None
