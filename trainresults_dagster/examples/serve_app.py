"""The example's Ray Serve app: the champion behind an HTTP endpoint.

Deployed declaratively (``import_path="trainresults_dagster.examples.serve_app:build"``, an
application builder, as ``serve deploy`` would) by ``LocalServeTarget``; ``RayServeTarget`` then hands each new
champion over through the deployment's ``user_config``, and ``reconfigure`` loads it
without restarting the replica. ``POST`` a JSON list of feature rows to get predictions;
``GET`` says what is loaded.
"""

from __future__ import annotations

import os
from typing import Any


class ChampionServer:
    def __init__(self) -> None:
        self.predictor: Any = None
        self.loaded: dict[str, Any] = {}

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        uri = (user_config or {}).get("checkpoint_uri")
        if not uri:
            return
        import trainresults_dagster as trd
        from trainresults_dagster.examples.model import Predictor

        # A local checkpoint is read in place, an s3:// one downloaded to a temp folder.
        with trd.Checkpoint.from_uri(uri).as_directory() as folder:
            self.predictor = Predictor(folder)
        self.loaded = {k: user_config.get(k) for k in ("model", "version", "checkpoint_uri")}

    async def __call__(self, request: Any) -> dict[str, Any]:
        answer: dict[str, Any] = {**self.loaded, "pid": os.getpid()}
        if request.method != "POST":
            return answer
        if self.predictor is None:
            return {**answer, "error": "no model loaded yet"}
        import pandas as pd

        rows = await request.json()
        out = self.predictor(pd.DataFrame(rows))
        answer["predictions"] = [
            {"prediction": int(p), "probability": round(float(q), 4)}
            for p, q in zip(out["prediction"], out["probability"], strict=True)
        ]
        return answer


def build(args: dict[str, Any]) -> Any:
    """Serve's application builder: ray is imported only when Serve builds the app."""
    from ray import serve

    # num_cpus 0: the replica leaves the CPUs to training.
    deployment = serve.deployment(ray_actor_options={"num_cpus": 0})(ChampionServer)
    return deployment.options(name=str(args.get("name") or "ChampionServer")).bind()
