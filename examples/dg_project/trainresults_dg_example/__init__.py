"""The example pipeline declared in YAML (``defs/classifier/defs.yaml``), the dg way."""
