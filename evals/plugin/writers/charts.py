"""The charts of the HTML pages, drawn by matplotlib as inline SVG (no script, no network when the
page is viewed).

- :func:`case_chart`: one benchmark's cases (and its pooled row) as horizontal bars of a metric,
  each with its 95% interval and a tick at its chance level where one is defined.
- :func:`forest_plot`: per case, the paired difference B - A with its 95% interval, one series
  per run compared with the first, and a line at zero.

Every mark carries an SVG id that names what it is, so a page can be checked mark by mark:
``<chart>-bar-<i>`` per bar, ``<chart>-ci`` (one path per interval), ``<chart>-chance`` (one path
per chance tick), ``<chart>-run<k>-points`` (one marker per difference) and ``<chart>-run<k>-ci``.
Figures are built with :class:`matplotlib.figure.Figure` (no pyplot, no global state) and saved
with a fixed hash salt and no date, so the same numbers give the same SVG.
"""
from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

BAR = "#4c78a8"
POOLED = "#1b3a5c"
CHANCE = "#d62728"
SERIES = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2")
ROW_INCHES = 0.26
SVG_SETTINGS = {"svg.fonttype": "none", "svg.hashsalt": "rwkveval", "font.size": 9}


@dataclass(frozen=True)
class Bar:
    label: str
    value: float
    ci95: tuple[float, float] | None = None
    chance: float | None = None
    pooled: bool = False  # the benchmark's overall row, drawn darker


@dataclass(frozen=True)
class Difference:
    label: str  # the row (a case, or "all")
    series: int  # which run against the first (0 = the second run)
    diff: float
    ci95: tuple[float, float] | None = None


def _svg(fig, chart_id: str) -> str:
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context(SVG_SETTINGS):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    text = buffer.getvalue()
    text = text[text.index("<svg"):]  # drop the XML prologue and doctype: the SVG sits inside HTML
    # matplotlib numbers its elements per figure (figure_1, patch_1, clip paths, markers): in a
    # page of several charts those ids would repeat, so each gets the chart's id in front
    ours = re.compile(rf"{re.escape(chart_id)}-")
    for name in dict.fromkeys(re.findall(r'id="([^"]+)"', text)):
        if not ours.match(name):
            text = (text.replace(f'id="{name}"', f'id="{chart_id}-{name}"')
                    .replace(f"url(#{name})", f"url(#{chart_id}-{name})")
                    .replace(f'href="#{name}"', f'href="#{chart_id}-{name}"'))
    return text


def _figure(rows: int, width: float = 8.5):
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(SVG_SETTINGS):
        fig = Figure(figsize=(width, 0.9 + ROW_INCHES * max(rows, 1)))
        ax = fig.subplots()
    return fig, ax


def _legend(ax) -> None:
    """Above the plot, where it covers no mark."""
    ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, fontsize=8, frameon=False, borderaxespad=0.2)


def _finite(x: float | None) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def case_chart(chart_id: str, metric: str, bars: Sequence[Bar], proportion: bool) -> str:
    """Horizontal bars, the first case on top; ``proportion`` fixes the axis to [0, 1]."""
    fig, ax = _figure(len(bars))
    y = list(range(len(bars)))[::-1]
    values = [b.value if _finite(b.value) else 0.0 for b in bars]
    drawn = ax.barh(y, values, height=0.7, color=[POOLED if b.pooled else BAR for b in bars])
    for i, patch in enumerate(drawn.patches):
        patch.set_gid(f"{chart_id}-bar-{i}")
    with_ci = [(yi, b) for yi, b in zip(y, bars) if b.ci95 is not None and _finite(b.value)]
    if with_ci:
        lines = ax.hlines([yi for yi, _ in with_ci], [b.ci95[0] for _, b in with_ci], [b.ci95[1] for _, b in with_ci],
                          color="black", linewidth=1.2)
        lines.set_gid(f"{chart_id}-ci")
    with_chance = [(yi, b) for yi, b in zip(y, bars) if b.chance is not None]
    if with_chance:
        ticks = ax.vlines([b.chance for _, b in with_chance], [yi - 0.45 for yi, _ in with_chance],
                          [yi + 0.45 for yi, _ in with_chance], color=CHANCE, linestyle="--", linewidth=1.2,
                          label="chance")
        ticks.set_gid(f"{chart_id}-chance")
        _legend(ax)
    ax.set_yticks(y, [b.label for b in bars])
    ax.set_xlabel(f"{metric} (bars: value, black: 95% interval)")
    if proportion:
        ax.set_xlim(0, 1)
    ax.set_ylim(-0.6, len(bars) - 0.4)
    ax.grid(axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig, chart_id)


def forest_plot(chart_id: str, metric: str, labels: Sequence[str], points: Sequence[Difference],
                series_names: Sequence[str]) -> str:
    """One row per label (first on top); series k is offset a little and coloured on its own."""
    fig, ax = _figure(len(labels))
    row = {label: i for i, label in enumerate(labels)}
    top = len(labels) - 1
    count = max(len(series_names), 1)
    for k, name in enumerate(series_names):
        mine = [p for p in points if p.series == k and _finite(p.diff)]
        if not mine:
            continue
        offset = 0.0 if count == 1 else (k - (count - 1) / 2) * 0.5 / count
        ys = [top - row[p.label] + offset for p in mine]
        colour = SERIES[k % len(SERIES)]
        marks = ax.plot([p.diff for p in mine], ys, "o", color=colour, markersize=5, label=name)[0]
        marks.set_gid(f"{chart_id}-run{k}-points")
        ranged = [(yv, p) for yv, p in zip(ys, mine) if p.ci95 is not None]
        if ranged:
            lines = ax.hlines([yv for yv, _ in ranged], [p.ci95[0] for _, p in ranged], [p.ci95[1] for _, p in ranged],
                              color=colour, linewidth=1.4)
            lines.set_gid(f"{chart_id}-run{k}-ci")
    ax.axvline(0.0, color="grey", linewidth=1)
    ax.set_yticks(list(range(len(labels)))[::-1], list(labels))
    ax.set_ylim(-0.6, len(labels) - 0.4)
    ax.set_xlabel(f"difference in per-document {metric} (later run - first run), 95% interval")
    ax.grid(axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    if series_names:
        _legend(ax)
    return _svg(fig, chart_id)
