"""The model card of a promotion attempt, as the promotion asset writes and shows it.

The card itself is core (``registry/card.py``: the dict and its Markdown); here it gets
what only Dagster knows (the run link, the asset's event history) and the picture of the
candidate's training curves, then it is saved in the registry (so the CLI prints the same
card) and returned as metadata. The Dagster UI renders ``MetadataValue.md`` with a sanitiser
that allows ``data:`` image sources, so the PNG travels inside the Markdown as a
``data:image/png;base64`` URI: no file server, and it survives the instance being moved.
"""

from __future__ import annotations

import base64
from typing import Any

import dagster as dg
import pyarrow.fs as pafs

import trainresults_dagster.storage as storage
from trainresults_dagster.registry.card import build_card, render_markdown
from trainresults_dagster.registry.curves import curves_png
from trainresults_dagster.runs.result import TrainResult

#: A picture larger than this stays in the registry only (the event log keeps metadata).
_MAX_INLINE_PNG = 400_000


def _run_filesystem(run_uri: str, checkpoint: Any, core: Any) -> pafs.FileSystem | None:
    scheme = storage.canonical_scheme(storage.split_scheme(run_uri)[0])
    if scheme not in ("s3", "gs", "abfs"):
        return None
    for fs in (getattr(checkpoint, "filesystem", None), getattr(core, "filesystem", None)):
        if isinstance(fs, pafs.FileSystem) and storage.scheme_of(fs) == scheme:
            return fs
    return None


def _curves(run_uri: str, checkpoint: Any, core: Any, metric: str, title: str,
            log: Any) -> tuple[bytes | None, dict[str, Any]]:
    try:
        run = TrainResult.from_path(run_uri, _run_filesystem(run_uri, checkpoint, core),
                                    missing_checkpoints="drop")
        drawn = curves_png(run.metrics_dataframe, metric=metric, title=title,
                           checkpoint_name=getattr(checkpoint, "dir_name", None))
    except Exception as exc:  # noqa: BLE001 - the card is a view: it must never fail a promotion
        log.warning(f"model card: no training curves from {run_uri}: {exc}")
        return None, {"error": f"could not read the metrics of {run_uri}: {exc}"}
    if drawn is None:
        return None, {"error": f"run {run_uri} has no numeric metrics to draw"}
    png, curves = drawn
    return png, {"x_label": curves.x_label, "series": curves.series,
                 "marker_x": curves.marker_x, "renderer": curves.renderer}


def write_card(
    context: dg.AssetExecutionContext,
    registry: Any,
    *,
    model: str,
    alias: str,
    candidate: Any,
    before: Any,
    after: Any,
    outcome: str,
    decision: Any,
    thresholds: dict[str, tuple[float | None, float | None]],
    checkpoint: Any,
    save: bool = True,
) -> dict[str, Any]:
    """Build, save (unless ``save=False``) and return the card as metadata (``model_card``,
    ``model_card_uri``, ``training_curves_uri``). Best effort: a card that cannot be saved
    is still shown."""
    core = getattr(registry, "registry", registry)
    run_uri = str(candidate.lineage.get("run_uri") or "")
    png, curves = _curves(run_uri, checkpoint, core, decision.metric,
                          f"{model} v{candidate.version}: {run_uri.rsplit('/', 1)[-1]}",
                          context.log)
    try:
        history = core.history(model, alias, limit=5)
    except Exception:  # noqa: BLE001 - an unreadable history must not hide the card
        history = []
    asset_path = "/".join(context.asset_key.path)
    card = build_card(
        model=model, alias=alias, candidate=candidate, champion_before=before,
        champion_after=after, outcome=outcome, gate=decision.to_dict(), thresholds=thresholds,
        history=history, curves=curves, at=storage.iso(), registry_uri=getattr(core, "uri", ""),
        links={"dagster_run": f"/runs/{context.run.run_id}",
               "history": f"/assets/{asset_path}?view=events"},
    )
    metadata: dict[str, Any] = {}
    if save:
        try:
            metadata["model_card_uri"] = dg.MetadataValue.path(
                core.save_card(model, candidate.version, card, png)
            )
            if png is not None:
                picture = core.card_picture_uri(model, candidate.version)
                metadata["training_curves_uri"] = dg.MetadataValue.path(picture)
        except Exception as exc:  # noqa: BLE001 - the card is a view: it never fails a promotion
            context.log.warning(f"model card of {model} v{candidate.version} not saved: {exc}")
    image = None
    if png is not None and len(png) <= _MAX_INLINE_PNG:
        image = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    metadata["model_card"] = dg.MetadataValue.md(render_markdown(card, image=image))
    return metadata
