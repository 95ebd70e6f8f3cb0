"""Scheduled retraining: a thin, validated ``dg.ScheduleDefinition``.

Retraining on a clock is a plain schedule; retraining *on failure* is the storage sensor's
``job`` argument (``build_failed_run_sensor(..., job=retrain_job)``), which requests one
run per failed Ray Train run. ``trainresults_dagster/examples/definitions.py`` shows both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

RETRAIN_TAG = "trainresults/trigger"


def build_retraining_schedule(
    name: str,
    *,
    target: Any,
    cron_schedule: str,
    execution_timezone: str | None = None,
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
    tags: Mapping[str, str] | None = None,
    description: str | None = None,
) -> dg.ScheduleDefinition:
    """A schedule that materialises ``target`` on ``cron_schedule``.

    Args:
        target: what to run: an asset (``AssetsDefinition``), an ``AssetSelection``, a list
            of assets, or a job.
        cron_schedule: a cron string such as ``"0 3 * * 1"`` (Mondays 03:00); validated now,
            so a typo fails when the code location loads, not at 3 a.m.
        execution_timezone: IANA name (default UTC, as Dagster).
        default_status: ``RUNNING`` to start as soon as the daemon loads it (Dagster's
            default is STOPPED).
        tags: extra run tags; runs are also tagged ``trainresults/trigger=schedule``.
    """
    from dagster._utils.schedules import is_valid_cron_schedule

    if not isinstance(cron_schedule, str) or not is_valid_cron_schedule(cron_schedule):
        raise ValueError(
            f"expected a cron schedule such as '0 3 * * 1' for {name!r}, got {cron_schedule!r}"
        )
    if target is None:
        raise ValueError(f"expected a target (asset, AssetSelection or job) for {name!r}, got None")
    return dg.ScheduleDefinition(
        name=name,
        cron_schedule=cron_schedule,
        target=target,
        execution_timezone=execution_timezone,
        default_status=default_status,
        tags={RETRAIN_TAG: "schedule", **(tags or {})},
        description=description or f"Retrains on '{cron_schedule}'",
    )
