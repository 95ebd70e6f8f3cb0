"""The example pipeline users start from (loaded by ``workspace.yaml``)."""
