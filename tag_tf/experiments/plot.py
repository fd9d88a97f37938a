"""Shared matplotlib helpers of the harness figures (Agg canvas, no pyplot, no window).

Every figure is written as a PNG and, since a paper would print it, a PDF beside it.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from tag_tf.io import heatmap

DPI = heatmap.DPI
# Units of the adapters' error names (``Experiment.error_name``) for axis labels.
ERROR_UNITS = {"error_percent": "classification error (%)", "mse": "MSE", "loss": "loss"}


def new_figure(width: float = 7.0, height: float = 4.5, *, ncols: int = 1,
               nrows: int = 1) -> tuple[Figure, list[Axes]]:
    """A figure of ``width`` x ``height`` inches and its ``nrows * ncols`` axes (a list)."""
    fig = heatmap.new_figure(width, height)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, list(axes.ravel())


def save_figure(fig: Figure, path_png: str, *, pdf: bool = True) -> list[str]:
    """Writes ``path_png`` and (``pdf``) the PDF beside it; returns the paths."""
    return heatmap.save_figure(fig, path_png, pdf=pdf, dpi=DPI)


def outputs(paths: Sequence[str]) -> dict[str, list[str]]:
    """``{"png": [...], "pdf": [...]}`` of written figure paths."""
    return {"png": [p for p in paths if p.endswith(".png")],
            "pdf": [p for p in paths if p.endswith(".pdf")]}


def colour(k: int) -> tuple:
    """The k-th colour of matplotlib's ``tab10`` cycle (cycled)."""
    return matplotlib.colormaps["tab10"](k % 10)


def error_label(error_name: str, *, total: bool = True) -> str:
    """An axis label for an adapter's error name, e.g. ``total test MSE (sum over tasks)``."""
    unit = ERROR_UNITS.get(error_name, error_name.replace("_", " "))
    return f"total test {unit}, sum over tasks" if total else f"test {unit}"


def plain_log_ticks(axis) -> None:
    """Labels a log axis with plain numbers (30, 100) instead of 3x10^1."""
    formatter = matplotlib.ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5))
    axis.set_major_formatter(formatter)
    axis.set_minor_formatter(formatter)


def _value(v) -> float:
    return np.nan if v is None else float(v)


def grouped_bars(ax: Axes, groups: Sequence[str], series: Mapping[str, Sequence],
                 *, errors: Optional[Mapping[str, Sequence]] = None,
                 colours: Optional[Mapping[str, tuple]] = None) -> None:
    """Bars of every series side by side within each group; None values print ``n/a``.

    ``series[label][g]`` is the value of ``label`` in group ``g``; ``errors[label][g]``
    draws a +-error bar on it.
    """
    labels = list(series)
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(groups))
    for k, label in enumerate(labels):
        values = np.array([_value(v) for v in series[label]])
        offsets = x - 0.4 + width * (k + 0.5)
        err = None
        if errors and label in errors:
            err = np.array([_value(v) for v in errors[label]])
        ax.bar(offsets, np.nan_to_num(values), width, yerr=err, capsize=3,
               color=(colours or {}).get(label, colour(k)), label=label,
               error_kw={"elinewidth": 1.2})
        for offset, value in zip(offsets, values):
            if not np.isfinite(value):
                ax.text(offset, 0, "n/a", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, groups)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
