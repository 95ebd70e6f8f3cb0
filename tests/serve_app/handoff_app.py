"""A tiny Ray Serve app for the hand-off test, deployed declaratively (like ``serve deploy``).

``reconfigure(user_config)`` loads the checkpoint named by ``checkpoint_uri`` (its
``model.txt``); ``__call__`` answers with what is loaded and the replica's pid, so the test
can prove the model changed while the process stayed the same.
"""

import os

from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0})
class ModelServer:
    def __init__(self) -> None:
        self.model = None
        self.user_config: dict = {}
        self.reconfigures = 0

    def reconfigure(self, user_config: dict) -> None:
        self.reconfigures += 1
        self.user_config = dict(user_config)
        uri = user_config.get("checkpoint_uri")
        if uri:
            with open(os.path.join(uri, "model.txt")) as fh:
                self.model = fh.read().strip()

    async def __call__(self, request) -> dict:
        return {
            "model": self.model,
            "version": self.user_config.get("version"),
            "user_config": self.user_config,
            "pid": os.getpid(),
            "reconfigures": self.reconfigures,
        }


app = ModelServer.bind()
