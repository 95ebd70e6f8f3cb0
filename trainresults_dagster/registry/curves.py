"""A PNG of a run's training curves, for the model card (no Dagster, no ray).

``curves_png(metrics_dataframe, ...)`` draws every numeric metric against the epoch (or the
report index), losses and the rest in two panels, with a dashed line at the checkpoint that
was registered. With matplotlib installed (the ``card`` extra) it has axes, ticks and a
legend; without it a small built-in rasteriser draws the same lines on a plain canvas (no
text: the card lists the colours), so the card has its picture either way.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Columns of a metrics dataframe that are bookkeeping, not curves.
_NOT_CURVES = {"checkpoint_dir_name", "report_index", "time", "timestamp", "time_total_s",
               "time_this_iter_s", "date", "pid", "done", "training_iteration", "rank"}
_X_CANDIDATES = ("epoch", "training_iteration", "step", "iteration")
#: Tableau colours (matplotlib's default cycle), so both renderers agree.
COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
MAX_SERIES = len(COLOURS)
_INSET = 8  # pixels between a panel's frame and its extreme points


@dataclass(frozen=True)
class Curves:
    """What was drawn: x label, series names and their colours, the marker position."""

    x_label: str
    series: list[tuple[str, str]]  # (metric, colour)
    marker_x: float | None
    renderer: str


def _numeric(values: Sequence[Any]) -> list[float | None]:
    out: list[float | None] = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float):
            out.append(None)
        else:
            f = float(v)
            out.append(f if math.isfinite(f) else None)
    return out


def _series(frame: Any, metric: str | None) -> tuple[str, list[float], dict[str, list[float | None]]]:
    columns = [str(c) for c in frame.columns]
    x_name = next((c for c in _X_CANDIDATES if c in columns), None)
    xs = _numeric(frame[x_name].tolist()) if x_name else []
    if not x_name or any(x is None for x in xs):
        x_name, xs = None, [float(i) for i in range(len(frame))]
    series: dict[str, list[float | None]] = {}
    for c in columns:
        if c == x_name or c in _NOT_CURVES or c.startswith(("_", "config/")):
            continue
        values = _numeric(frame[c].tolist())
        if any(v is not None for v in values):
            series[c] = values
    # The gate metric first, then losses, then the rest, capped.
    ordered = sorted(series, key=lambda c: (c != metric, "loss" not in c.lower(), c))
    return x_name or "report", [x or 0.0 for x in xs], {c: series[c] for c in ordered[:MAX_SERIES]}


def _marker(frame: Any, xs: list[float], checkpoint_name: str | None) -> float | None:
    if checkpoint_name is None or "checkpoint_dir_name" not in frame.columns:
        return None
    rows = [i for i, n in enumerate(frame["checkpoint_dir_name"].tolist()) if n == checkpoint_name]
    return xs[rows[-1]] if rows else None


def curves_png(
    frame: Any,
    *,
    checkpoint_name: str | None = None,
    metric: str | None = None,
    title: str = "",
    width: int = 720,
    height: int = 300,
) -> tuple[bytes, Curves] | None:
    """PNG bytes of the curves in ``frame`` (a ``metrics_dataframe``), or None if it has no
    numeric metric. ``checkpoint_name``: the registered checkpoint's folder, marked with a
    dashed line; ``metric``: drawn first (the gate's metric)."""
    if frame is None or len(frame) == 0:
        return None
    x_label, xs, series = _series(frame, metric)
    if not series:
        return None
    marker = _marker(frame, xs, checkpoint_name)
    colours = {name: COLOURS[i % len(COLOURS)] for i, name in enumerate(series)}
    try:
        png = _matplotlib_png(xs, series, colours, marker, x_label, title, width, height)
        renderer = "matplotlib"
    except ImportError:
        png = _plain_png(xs, series, colours, marker, width, height)
        renderer = "built-in"
    return png, Curves(x_label, list(colours.items()), marker, renderer)


def _panels(series: dict[str, list[float | None]]) -> list[list[str]]:
    losses = [n for n in series if "loss" in n.lower()]
    rest = [n for n in series if n not in losses]
    return [p for p in (losses, rest) if p]


# ------------------------------------------------------------------ matplotlib
def _matplotlib_png(
    xs: list[float], series: dict[str, list[float | None]], colours: dict[str, str],
    marker: float | None, x_label: str, title: str, width: int, height: int,
) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg", force=True)  # no display; also safe in Dagster's step processes
    from matplotlib.figure import Figure

    panels = _panels(series)
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    for i, names in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for name in names:
            pts = [(x, y) for x, y in zip(xs, series[name], strict=True) if y is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                    linewidth=1.8, color=colours[name], label=name)
        if marker is not None:
            ax.axvline(marker, color="#444444", linestyle="--", linewidth=1,
                       label="registered checkpoint")
        ax.set_xlabel(x_label)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ------------------------------------------------------------------ built-in
def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _plain_png(
    xs: list[float], series: dict[str, list[float | None]], colours: dict[str, str],
    marker: float | None, width: int, height: int,
) -> bytes:
    canvas = bytearray(b"\xff" * (width * height * 3))

    def dot(x: int, y: int, rgb: tuple[int, int, int], r: int = 1) -> None:
        for dx in range(-r + 1, r):
            for dy in range(-r + 1, r):
                px, py = x + dx, y + dy
                if 0 <= px < width and 0 <= py < height:
                    i = (py * width + px) * 3
                    canvas[i:i + 3] = bytes(rgb)

    def line(x0: float, y0: float, x1: float, y1: float, rgb: tuple[int, int, int],
             r: int = 2, dash: int = 0) -> None:
        steps = max(1, int(max(abs(x1 - x0), abs(y1 - y0))))
        for s in range(steps + 1):
            if dash and (s // dash) % 2:
                continue
            t = s / steps
            dot(round(x0 + (x1 - x0) * t), round(y0 + (y1 - y0) * t), rgb, r)

    panels = _panels(series)
    pad, gap = 24, 16
    pw = (width - 2 * pad - gap * (len(panels) - 1)) // len(panels)
    x_lo, x_hi = min(xs), max(xs)
    x_span = (x_hi - x_lo) or 1.0
    for p, names in enumerate(panels):
        left, top, right, bottom = pad + p * (pw + gap), pad, pad + p * (pw + gap) + pw, height - pad
        values = [v for n in names for v in series[n] if v is not None]
        y_lo, y_hi = min(values), max(values)
        y_span = (y_hi - y_lo) or 1.0

        def sx(x: float, left: int = left) -> float:
            return left + _INSET + (x - x_lo) / x_span * (pw - 2 * _INSET)

        def sy(y: float, top: int = top, bottom: int = bottom,
               y_lo: float = y_lo, y_span: float = y_span) -> float:
            return bottom - _INSET - (y - y_lo) / y_span * (bottom - top - 2 * _INSET)

        grey = (170, 170, 170)
        for a, b, c, d in ((left, top, right, top), (right, top, right, bottom),
                           (right, bottom, left, bottom), (left, bottom, left, top)):
            line(a, b, c, d, grey, r=1)
        if marker is not None:
            line(sx(marker), top, sx(marker), bottom, (68, 68, 68), r=1, dash=4)
        for name in names:
            rgb = _rgb(colours[name])
            pts = [(sx(x), sy(y)) for x, y in zip(xs, series[name], strict=True) if y is not None]
            for (a, b), (c, d) in zip(pts, pts[1:], strict=False):
                line(a, b, c, d, rgb)
            for a, b in pts:
                dot(round(a), round(b), rgb, 3)
    return encode_png(width, height, bytes(canvas))


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    """A truecolour PNG from raw RGB rows (filter 0 on every row)."""
    raw = b"".join(b"\x00" + rgb[y * width * 3:(y + 1) * width * 3] for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b""))
