"""Matplotlib helpers shared by the report's figures (Agg backend, one style)."""

from __future__ import annotations

import math

import matplotlib
import numpy as np

matplotlib.use("Agg", force=True)

import matplotlib.pyplot as plt  # noqa: E402

RC = {
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 8.5,
    "legend.framealpha": 0.85,
    "figure.titlesize": 12,
    "font.family": "DejaVu Sans",
}


def new_figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] | None = None, squeeze: bool = False,
               **kw):
    """(fig, axes) with axes always a 2-D array unless squeeze=True; ``size`` is per panel (inches)."""
    w, h = size or (5.2, 3.6)
    with plt.rc_context(RC):
        fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows), squeeze=squeeze, **kw)
    return fig, axes


def titled(fig, title: str, subtitle: str = "", *, rect: tuple[float, float, float, float] = (0, 0, 1, 1),
           layout: bool = True) -> None:
    """Lay the figure out, then put its title and a smaller line naming data, n and device above the axes
    (offsets in points, so they never overlap whatever the figure's height; savefig's tight bbox keeps them)."""
    if layout:
        fig.tight_layout(rect=rect)
    h = fig.get_figheight() * 72.0
    top = rect[3] if layout else max(ax.get_position().y1 for ax in fig.axes) + 18 / h
    if subtitle:
        fig.text(0.5, top + 6 / h, subtitle, ha="center", va="bottom", fontsize=9, color="#444444")
    fig.text(0.5, top + (24 if subtitle else 6) / h, title, ha="center", va="bottom", fontsize=12,
             fontweight="bold")


def style_axes(ax) -> None:
    for k, v in (("top", False), ("right", False)):
        ax.spines[k].set_visible(v)
    ax.grid(True, alpha=0.3, linewidth=0.6)


def yerr_pct(acc, lo, hi) -> list:
    """Error-bar lengths in percent points from an accuracy and its interval, never negative (rounding
    can put a Wilson bound a hair on the wrong side of 0 % or 100 %)."""
    acc, lo, hi = (np.asarray(v, dtype=float) for v in (acc, lo, hi))
    return [np.clip(100 * (acc - lo), 0, None), np.clip(100 * (hi - acc), 0, None)]


def spread_labels(ax, points: list[tuple[float, float, str, str]], *, min_gap: float = 0.045,
                  fontsize: float = 7) -> None:
    """Label scatter points ``(x, y, text, color)`` without overlaps: labels of points with close x are stacked
    at least ``min_gap`` (a fraction of the y range) apart, with a thin line to their point where moved.
    Call after the axis limits are final."""
    y0, y1 = ax.get_ylim()
    x0, x1 = ax.get_xlim()
    gap = abs(min_gap * (y1 - y0))
    xnear = abs(0.12 * (x1 - x0))
    placed: list[tuple[float, float]] = []  # (x, label y) already used
    for x, y, text, color in sorted(points, key=lambda p: (p[1], p[0])):
        # one pass, no search: a label goes at its point, or just above the highest label already placed
        # nearby (in x) that it would touch; labels only stack upwards, so each is placed once
        above = [py + gap for px, py in placed if abs(px - x) <= xnear and py > y - gap]
        ly = max([y, *above]) if gap > 0 and math.isfinite(gap) else y
        placed.append((x, ly))
        moved = abs(ly - y) > 1e-12
        ax.annotate(text, (x, y), xytext=(x, ly), textcoords="data", fontsize=fontsize, color=color,
                    ha="left", va="center", annotation_clip=False,
                    arrowprops={"arrowstyle": "-", "color": color, "linewidth": 0.4, "alpha": 0.6} if moved else None)
