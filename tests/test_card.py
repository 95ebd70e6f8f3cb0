"""The model card's picture and Markdown, without Dagster: both renderers, and the edge
cases (no numeric metric, NaN, a card for a version no promotion evaluated)."""

from __future__ import annotations

import math
import struct
import sys

import pandas as pd
import pytest

from trainresults_dagster.registry.card import build_card, card_from_version, render_markdown
from trainresults_dagster.registry.curves import curves_png
from trainresults_dagster.registry.model_version import ModelVersion
from trainresults_dagster.runs.checkpoint import Checkpoint

FRAME = pd.DataFrame({
    "epoch": [0, 1, 2, 3],
    "loss": [0.9, 0.4, math.nan, 0.5],
    "val/acc": [0.5, 0.6, 0.7, 0.8],
    "phase": ["a", "b", "c", "d"],
    "checkpoint_dir_name": ["c0", "c1", None, "c3"],
})


def _size(png: bytes) -> tuple[int, int]:
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


@pytest.mark.parametrize("renderer", ["matplotlib", "built-in"])
def test_curves_png_with_either_renderer(renderer, monkeypatch):
    if renderer == "built-in":
        monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if absent
    png, curves = curves_png(FRAME, checkpoint_name="c1", metric="val/acc", width=640, height=240)
    assert _size(png) == (640, 240) and curves.renderer == renderer
    assert [name for name, _ in curves.series] == ["val/acc", "loss"]  # gate metric first
    assert curves.marker_x == 1 and curves.x_label == "epoch"


def test_no_numeric_metric_means_no_picture():
    assert curves_png(pd.DataFrame({"phase": ["a"]})) is None
    assert curves_png(pd.DataFrame()) is None


def test_markdown_of_a_card_and_of_an_unevaluated_version():
    mv = ModelVersion(model="m", version=3, checkpoint=Checkpoint("/r/m/data/x"),
                      metrics={"loss": 0.4, "val": {"acc": 0.6}},
                      lineage={"run_uri": "/runs/a|b", "dagster_run_id": "abcdef0123"})
    before = ModelVersion(model="m", version=2, checkpoint=Checkpoint("/r/m/data/y"),
                          metrics={"loss": 0.5, "val": {"acc": float("nan")}})
    gate = {"reason": "passed: better", "rows": [{"check": "loss (min)", "candidate": 0.4,
            "champion": 0.5, "requirement": ">= 0.01", "ok": True}], "min_improvement": 0.01,
            "mode": "min", "improvement": 0.1}
    card = build_card(model="m", alias="champion", candidate=mv, champion_before=before,
                      champion_after=mv, outcome="promoted", gate=gate,
                      thresholds={"val/acc": (0.5, None)}, at="2026-01-01T00:00:00+00:00",
                      links={"dagster_run": "/runs/abcdef0123"}, registry_uri="/r")
    text = render_markdown(card, image="data:image/png;base64,AAAA")
    assert "| loss | 0.4 | 0.5 | -0.1 |" in text
    assert "| val/acc | 0.6 | nan |  |" in text  # no difference against NaN
    assert "`/runs/a\\|b`" in text  # table cells cannot be broken out of
    assert "[abcdef01](/runs/abcdef0123)" in text and "![training curves" in text
    plain = render_markdown(card_from_version(mv, alias="champion", history=[], registry_uri="/r"))
    assert "NOT EVALUATED" in plain and "champion (none yet)" in plain and "![" not in plain
