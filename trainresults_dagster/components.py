"""The module ``dg`` reads for this package's component types (the
``dagster_dg_cli.registry_modules`` entry point): ``TrainingPipeline``.

Kept to the one import on purpose: ``dg`` imports this module and reads every name in it
each time it lists components or loads a code location.
"""

from trainresults_dagster.dagster.component import TrainingPipeline

__all__ = ["TrainingPipeline"]
