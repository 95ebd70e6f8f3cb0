"""The model card of a promotion attempt: what was compared, what the gate decided, where
the candidate came from, and a picture of its training curves (no Dagster).

``build_card`` makes a plain JSON dict; the registry keeps the latest card of each version
(``<model>/cards/<version>.json`` and its ``.png``), so the promotion asset's metadata and
``trainresults registry card MODEL VERSION`` render the same thing with ``render_markdown``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from trainresults_dagster.runs.metrics import flatten_metrics

from .model_version import AliasEvent, ModelVersion

CARD_KIND = "trainresults.model_card/1"
_MAX_METRIC_ROWS = 30
_HISTORY_ROWS = 5


def _version_summary(mv: ModelVersion | None) -> dict[str, Any] | None:
    if mv is None:
        return None
    return {"version": mv.version, "uri": mv.uri, "metrics": mv.metrics,
            "created_at": mv.created_at.isoformat(), "lineage": mv.lineage}


def build_card(
    *,
    model: str,
    alias: str,
    candidate: ModelVersion,
    champion_before: ModelVersion | None,
    champion_after: ModelVersion | None,
    outcome: str,
    gate: Mapping[str, Any],
    thresholds: Mapping[str, Sequence[float | None]],
    history: Sequence[AliasEvent] = (),
    links: Mapping[str, str] | None = None,
    curves: Mapping[str, Any] | None = None,
    at: str,
    registry_uri: str = "",
) -> dict[str, Any]:
    """The card as a JSON-able dict (see ``render_markdown``)."""
    return {
        "kind": CARD_KIND,
        "model": model,
        "alias": alias,
        "version": candidate.version,
        "at": at,
        "outcome": outcome,
        "reason": str(gate.get("reason") or ""),
        "candidate": _version_summary(candidate),
        "champion_before": _version_summary(champion_before),
        "champion_after": champion_after.version if champion_after else None,
        "gate": dict(gate),
        "thresholds": {k: list(v) for k, v in thresholds.items()},
        "history": [e.to_dict() for e in list(history)[-_HISTORY_ROWS:]],
        "links": dict(links or {}),
        "curves": dict(curves) if curves else None,
        "registry": registry_uri,
    }


def card_from_version(mv: ModelVersion, *, alias: str, history: Sequence[AliasEvent],
                      registry_uri: str) -> dict[str, Any]:
    """A card for a version that no promotion attempt evaluated (registered by hand)."""
    return {
        "kind": CARD_KIND, "model": mv.model, "alias": alias, "version": mv.version,
        "at": mv.created_at.isoformat(), "outcome": "not evaluated",
        "reason": "no promotion attempt recorded for this version (registered directly)",
        "candidate": _version_summary(mv), "champion_before": None, "champion_after": None,
        "gate": {}, "thresholds": {}, "history": [e.to_dict() for e in list(history)[-_HISTORY_ROWS:]],
        "links": {}, "curves": None, "registry": registry_uri,
    }


# ------------------------------------------------------------------ Markdown
def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int | float):
        f = float(value)
        if not math.isfinite(f):
            return str(f)
        return f"{value:d}" if isinstance(value, int) else f"{f:.6g}"
    return _cell(value)


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _code(value: Any) -> str:
    return f"`{_cell(value)}`" if value not in (None, "") else "n/a"


def _metric_rows(candidate: Mapping[str, Any], champion: Mapping[str, Any] | None) -> list[str]:
    cand = flatten_metrics(dict(candidate or {}))
    champ = flatten_metrics(dict(champion or {})) if champion is not None else {}
    keys = sorted({*cand, *champ}, key=lambda k: (k not in cand, k))[:_MAX_METRIC_ROWS]
    rows = []
    for key in keys:
        a, b = cand.get(key), champ.get(key)
        diff = ""
        if (
            isinstance(a, int | float) and isinstance(b, int | float)
            and not isinstance(a, bool) and not isinstance(b, bool)
            and math.isfinite(a) and math.isfinite(b)
        ):
            diff = f"{a - b:+.6g}"
        rows.append(f"| {_cell(key)} | {_num(a)} | {_num(b)} | {diff} |")
    return rows


def render_markdown(card: Mapping[str, Any], *, image: str | None = None) -> str:
    """The card as Markdown. ``image``: the picture's ``src`` (a ``data:image/png;base64``
    URI for the Dagster UI, a file path or URI for a terminal); None leaves it out."""
    model, version, alias = card.get("model"), card.get("version"), card.get("alias")
    cand = card.get("candidate") or {}
    before = card.get("champion_before")
    gate = card.get("gate") or {}
    lineage = cand.get("lineage") or {}
    links = card.get("links") or {}
    out = [f"## Model card: {model} version {version} for `{alias}`", ""]
    outcome = str(card.get("outcome") or "").upper()
    out += [f"**{outcome}** at {card.get('at')}: {_cell(card.get('reason'))}", ""]

    curves = card.get("curves") or {}
    if image:
        out += [f"![training curves of {model} version {version}]({image})", ""]
        legend = ", ".join(f"{name} ({colour})" for name, colour in curves.get("series") or [])
        caption = f"Training curves of run {_code(lineage.get('run_uri'))} by {curves.get('x_label', 'report')}"
        if curves.get("marker_x") is not None:
            caption += "; dashed line: the registered checkpoint"
        if curves.get("renderer") == "built-in" and legend:
            caption += f". Colours: {legend}"
        out += [caption + ".", ""]
    elif curves.get("error"):
        out += [f"_No training-curves picture: {_cell(curves['error'])}_", ""]

    champ_label = f"champion v{before['version']} (before)" if before else "champion (none yet)"
    out += ["### Metrics", "", f"| metric | candidate v{version} | {champ_label} | difference |",
            "|---|---|---|---|"]
    out += _metric_rows(cand.get("metrics") or {}, before.get("metrics") if before else None)
    out.append("")

    rows = gate.get("rows") or []
    if rows:
        out += ["### Gate", "", "| check | candidate | champion | requirement | result |",
                "|---|---|---|---|---|"]
        for row in rows:
            out.append(
                f"| {_cell(row.get('check'))} | {_num(row.get('candidate'))} | "
                f"{_num(row.get('champion'))} | {_cell(row.get('requirement'))} | "
                f"{'pass' if row.get('ok') else '**fail**'} |"
            )
        out += ["", f"min_improvement {_num(gate.get('min_improvement'))}, "
                f"mode {gate.get('mode')}, improvement {_num(gate.get('improvement'))}", ""]

    out += ["### Lineage", "", "| | |", "|---|---|"]
    run_id = lineage.get("dagster_run_id")
    run_link = f"[{str(run_id)[:8]}]({links['dagster_run']})" if run_id and links.get("dagster_run") else _code(run_id)
    items = [
        ("Ray Train run", _code(lineage.get("run_uri"))),
        ("source checkpoint", _code(lineage.get("source_checkpoint_uri"))),
        ("Dagster run", run_link),
        ("asset / partition", f"{_code(lineage.get('asset_key'))} / {_code(lineage.get('partition_key'))}"),
        ("code version", _code(lineage.get("code_version"))),
        ("registered copy", _code(cand.get("uri"))),
    ]
    for entry in lineage.get("upstream") or []:
        items.append((
            f"input {_cell(entry.get('asset_key'))}",
            f"materialised {entry.get('at', '')} in run {_code(str(entry.get('run_id') or '')[:8])}, "
            f"data version {_code(str(entry.get('data_version') or '')[:12])}"
            + (f", partition {_code(entry['partition'])}" if entry.get("partition") else ""),
        ))
    out += [f"| {k} | {v} |" for k, v in items]
    out.append("")

    history = card.get("history") or []
    out += [f"### History of `{alias}`", ""]
    if history:
        out += ["| seq | action | version | at | reason |", "|---|---|---|---|---|"]
        for event in history:
            out.append(f"| {event.get('seq')} | {event.get('action')} | {event.get('version')} | "
                       f"{event.get('at')} | {_cell(event.get('reason'))} |")
        out.append("")
    more = []
    if links.get("history"):
        more.append(f"[every promotion attempt]({links['history']})")
    if card.get("registry"):
        more.append(f"`trainresults registry --base {card['registry']} history {model} --alias {alias}`")
    if more:
        out += ["Full history: " + " · ".join(more), ""]
    return "\n".join(out)
