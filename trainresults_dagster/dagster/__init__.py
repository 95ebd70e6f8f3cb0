"""The Dagster shell: the only part of the package that imports dagster or dagster-aws.

IO managers (``io_manager``, ``json_io_manager``) and their output metadata (``metadata``),
resources (``registry``, ``webhooks``, ``ray_serve``), asset factories (``best_checkpoint``,
``promotion``, ``handoff``), sensors and schedules; ``_wiring`` converts Dagster's objects
(an ``S3Resource``, asset references, resources) to the core's, each in one place.
"""

from dagster_shared.libraries import DagsterLibraryRegistry

from trainresults_dagster._version import __version__

# Shows the library in Dagster's library list, as Dagster's own integrations do.
DagsterLibraryRegistry.register("trainresults-dagster", __version__, is_dagster_package=False)
