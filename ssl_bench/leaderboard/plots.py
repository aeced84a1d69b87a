"""Figures of a ComparisonTable: one bar chart per protocol and an overview heat map.

Drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend change),
so it works headless and in threads.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np

from ..schema import LOWER, NEUTRAL
from .stats import direction

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c",
           "#ccb974", "#64b5cd"]


def row_colors(table) -> dict[str, str]:
    """One colour per row, stable across figures; random-init rows grey."""
    colors, i = {}, 0
    for row, kind in table.kinds.items():
        if kind == "random":
            colors[row] = "#b0b0b0"
        else:
            colors[row] = _COLORS[i % len(_COLORS)]
            i += 1
    return colors


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # matplotlib: loaded only to draw

    FigureCanvasAgg(fig)  # attaches the Agg canvas: savefig needs no pyplot backend
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _figure(**kwargs) -> Figure:
    from matplotlib.figure import Figure  # matplotlib: loaded only to draw

    return Figure(**kwargs)


def _empty(message: str) -> Figure:
    fig = _figure(figsize=(6, 1.5))
    fig.text(0.5, 0.5, message, ha="center", va="center")
    return fig


def protocol_figure(table, protocol: str) -> Figure:
    """Horizontal bars per (dataset, metric) of ``protocol``: one bar per row, error bars the
    bootstrap interval (else the std over repeats); reported rows hatched; best bar outlined."""
    columns = [col for col in table.columns if col[0] == protocol]
    if not columns:
        return _empty(f"{protocol}: no results")
    mean, std, low, high, best = table.mean, table.std, table.ci_low, table.ci_high, table.best
    kinds, colors = table.kinds, row_colors(table)
    ncols = min(3, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    per_panel = max(int(mean[col].notna().sum()) for col in columns)
    # each panel: its row labels (about 0.068 in per character at font size 8) beside 2.4 in of bars
    longest = max(len(str(row)) for col in columns for row in mean[col].dropna().index)
    fig = _figure(figsize=(ncols * (2.4 + 0.068 * longest) + 0.5, nrows * (0.9 + 0.32 * per_panel)),
                  layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for ax, col in zip(axes.flat, columns):
        values = mean[col].dropna()
        rows = list(values.index)[::-1]  # first row on top
        y = np.arange(len(rows))
        vals = values.reindex(rows).to_numpy()
        err = np.zeros((2, len(rows)))
        for i, row in enumerate(rows):
            if not np.isnan(low.at[row, col]):
                err[:, i] = [vals[i] - low.at[row, col], high.at[row, col] - vals[i]]
            elif not np.isnan(std.at[row, col]):
                err[:, i] = std.at[row, col]
        bars = ax.barh(y, vals, xerr=err, color=[colors[r] for r in rows], capsize=3,
                       error_kw={"elinewidth": 1, "ecolor": "#333"})
        for bar, row in zip(bars, rows):
            if kinds.get(row) == "reported":
                bar.set_hatch("///")
                bar.set_alpha(0.55)
            if best.at[row, col]:
                bar.set_edgecolor("black")
                bar.set_linewidth(1.8)
        for yi, v, e in zip(y, vals, err[1]):  # the value right of its error bar
            ax.text(v + e, yi, f"  {v:.{table.digits}f}", va="center", ha="left", fontsize=8)
        ax.set_yticks(y, rows, fontsize=8)
        way = direction(col[0], col[2])
        ax.set_title(f"{col[1]} / {col[2]}", fontsize=10)
        ax.set_xlabel(col[2] if way == NEUTRAL else f"{col[2]} ({way} is better)", fontsize=8)
        top = np.nanmax(np.concatenate([vals + err[1], [0]]))
        ax.set_xlim(min(0, np.nanmin(vals)), top * 1.2 if top > 0 else 1)
        ax.grid(axis="x", alpha=0.3)
    for ax in list(axes.flat)[len(columns):]:
        ax.set_visible(False)
    fig.suptitle(f"{protocol}", fontsize=12, fontweight="bold")
    return fig


def overview_figure(table) -> Figure:
    """Heat map rows x columns, coloured by the value's position between the column's worst
    (0) and best (1), annotated with the value; grey where not evaluated and in columns without
    a direction (statistics, undeclared metrics)."""
    mean = table.mean
    if mean.empty or mean.notna().sum().sum() == 0:
        return _empty("no results")
    data = mean.to_numpy(dtype=float)
    score = np.full_like(data, np.nan)
    for j, col in enumerate(mean.columns):
        column, way = data[:, j], direction(col[0], col[2])
        ok = ~np.isnan(column)
        if not ok.any() or way == NEUTRAL:
            continue
        lo, hi = column[ok].min(), column[ok].max()
        scaled = np.ones(ok.sum()) if hi == lo else (column[ok] - lo) / (hi - lo)
        score[ok, j] = 1 - scaled if way == LOWER else scaled
    nrows, ncols = data.shape
    fig = _figure(figsize=(3.0 + 0.85 * ncols, 2.2 + 0.38 * nrows), layout="constrained")
    ax = fig.subplots()
    cmap = _cmap()
    ax.imshow(np.ma.masked_invalid(score), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    best = table.best.to_numpy()
    for i in range(nrows):
        for j in range(ncols):
            if np.isnan(data[i, j]):
                continue
            ax.text(j, i, f"{data[i, j]:.{table.digits}f}", ha="center", va="center", fontsize=7,
                    fontweight="bold" if best[i, j] else "normal",
                    color="white" if score[i, j] > 0.75 else "black")
    ax.set_xticks(range(ncols), ["\n".join(map(str, col)) for col in mean.columns], fontsize=7,
                  rotation=90)
    labels = [f"{row}" for row in mean.index]
    ax.set_yticks(range(nrows), labels, fontsize=8)
    for tick, row in zip(ax.get_yticklabels(), mean.index):
        if table.kinds.get(row) == "reported":
            tick.set_fontstyle("italic")
            tick.set_color("#555555")
    ax.set_title("Overview: colour = position between the column's worst and best value",
                 fontsize=10)
    return fig


def _cmap():
    from matplotlib import colormaps  # matplotlib: loaded only to draw

    return colormaps["YlGn"].with_extremes(bad="#eeeeee")
