"""Where a candidate came from, as Dagster recorded it: the upstream materialisations.

Every materialisation carries ``dagster/input_event_pointer/<key>`` tags (the storage id of
each input's materialisation it read) and ``dagster/code_version`` / ``dagster/data_version``.
``upstream_lineage`` follows those pointers from the candidate's materialisation up to the
roots (bounded), so the registry's version record says which training data, which
training run and which code produced it. The staleness check compares the recorded
training-data materialisation with the latest one, and the model card shows them.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

import trainresults_dagster.storage as storage

_POINTER = "dagster/input_event_pointer/"
#: Enough for any real pipeline; a wide fan-in stops here instead of reading the world.
_MAX_ENTRIES = 25


def _entry(record: Any) -> dict[str, Any]:
    materialization = record.asset_materialization
    tags = dict(materialization.tags or {}) if materialization is not None else {}
    uri = None
    if materialization is not None:
        value = materialization.metadata.get("dagster/uri")
        uri = getattr(value, "value", value)
    return {
        "asset_key": materialization.asset_key.to_user_string() if materialization else None,
        "partition": record.partition_key,
        "storage_id": record.storage_id,
        "run_id": record.run_id,
        "at": storage.iso(record.timestamp),
        "timestamp": record.timestamp,
        "data_version": tags.get("dagster/data_version"),
        "code_version": tags.get("dagster/code_version"),
        "uri": uri if isinstance(uri, str) else None,
    }


def latest_materialization(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None = None
) -> Any:
    """The latest materialisation record of ``key`` (in ``partition``), or None."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    return records[0] if records else None


def upstream_lineage(
    instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None = None
) -> list[dict[str, Any]]:
    """The latest materialisation of ``key`` and every materialisation it read, transitively:
    ``[{asset_key, partition, storage_id, run_id, at, data_version, code_version, uri}]``,
    nearest first. Best effort: an empty list if ``key`` was never materialised here."""
    first = latest_materialization(instance, key, partition)
    if first is None:
        return []
    out, queue, seen = [], [first], {first.storage_id}
    while queue and len(out) < _MAX_ENTRIES:
        record = queue.pop(0)
        out.append(_entry(record))
        materialization = record.asset_materialization
        tags = dict(materialization.tags or {}) if materialization is not None else {}
        for tag, value in sorted(tags.items()):
            if not tag.startswith(_POINTER) or not str(value).isdigit():
                continue  # "NULL" when the input had no materialisation
            storage_id = int(value)
            if storage_id in seen:
                continue
            seen.add(storage_id)
            upstream = dg.AssetKey.from_user_string(tag[len(_POINTER):])
            found = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=upstream, storage_ids=[storage_id]), limit=1
            ).records
            queue.extend(found)
    return out
