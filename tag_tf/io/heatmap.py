"""Affinity matrices as a text table and as an annotated matplotlib heatmap (PNG / PDF).

The heatmap (:func:`affinity_figure`) shows ``matrix[source, target]`` (see
:mod:`tag_tf.io.affinity_io`): rows are source tasks, columns are target tasks. Colours use
a diverging map centred at 0 (red: the source helps the target, blue: it hurts), scaled
by the largest off-diagonal magnitude (a task's effect on itself is usually much larger,
so diagonal colours are clipped; their numbers are still written). Every cell holds its
value, with about two significant digits (plain decimals, or in units of 10^k, noted on
the colour bar, when plain ones would not fit). Cells shrink with the number of tasks
(0.7 in up to 10 tasks, 0.3 in at 23-50 tasks: values at 6-9 pt; past 50 the matrix
stays 15 in wide) and the numbers are left out once their font would fall under 5 pt
(from about 75 tasks on; the values are in the JSON anyway). NaN cells are grey.
Selected networks are outlined, one colour per network; cells whose mean is within two
standard errors of 0 are hatched.

Only the object API on an Agg canvas is used: no pyplot state, no window.
"""

from __future__ import annotations

import io
import math
from typing import Any, Optional, Sequence

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib import colors as mcolors
from matplotlib import patches
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from tag_tf.io import affinity_io
from tag_tf.io import atomic

DPI = 150  # resolution of the PNG files
TENSORBOARD_DPI = 80  # TensorBoard images: smaller, one per epoch
CMAP = "RdBu_r"  # red = positive (helps), blue = negative (hurts)
MEASURES = {  # measure -> (title, colour-bar label)
    "lookahead": ("lookahead affinity Z[source → target]",
                  "affinity Z (red: source helps target)"),
    "cosine": ("gradient cosine similarity cos(g_source, g_target)",
               "cosine similarity (red: aligned gradients)"),
    "taylor": ("first-order (Taylor) affinity Z[source → target]",
               "affinity Z to first order (red: source helps target)"),
}
# Outline colours of selected networks: none is red or blue, so they stand out on RdBu.
GROUP_COLOURS = ("black", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                 "#bcbd22")
GROUP_STYLES = ("solid", "dashed", "dotted")  # cycled once the colours run out
MIN_VALUE_FONT = 5.0  # pt; smaller cell numbers are left out
_MAX_NAME = 48  # longer task names are shortened with "…" on the axes
_HATCH = "//"


# ----------------------------------------------------------------------------- text table
def format_matrix(matrix: np.ndarray, tasks: Sequence[str], *, precision: int = 3) -> str:
    """A plain-text table, rows = sources, columns = targets."""
    width = max(7, precision + 4, *(len(t) for t in tasks))
    lines = ["source \\ target".ljust(width) + " " + " ".join(t.rjust(width) for t in tasks)]
    for task, row in zip(tasks, np.asarray(matrix)):
        cells = ["nan".rjust(width) if not np.isfinite(v) else f"{v:{width}.{precision}f}"
                 for v in row]
        lines.append(task.ljust(width) + " " + " ".join(cells))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- rendering
def new_figure(width: float, height: float) -> Figure:
    """A Figure of ``width`` x ``height`` inches on an Agg canvas (constrained layout)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_to_rgb(fig: Figure, *, dpi: float = DPI) -> np.ndarray:
    """Renders ``fig`` to RGB uint8 [H, W, 3]; H, W = the figure's inches x ``dpi``."""
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.array(canvas.buffer_rgba())[..., :3]


def figure_to_png_bytes(fig: Figure, *, dpi: float = DPI) -> bytes:
    """The RGB PNG encoding of ``fig`` (size = the figure's inches x ``dpi``)."""
    buffer = io.BytesIO()
    Image.fromarray(figure_to_rgb(fig, dpi=dpi)).save(buffer, format="png", dpi=(dpi, dpi))
    return buffer.getvalue()


def save_figure(fig: Figure, path: str, *, pdf: bool = False, dpi: float = DPI) -> list[str]:
    """Writes ``fig`` as an RGB PNG at ``path`` and, if ``pdf``, a PDF beside it.

    Returns the written paths (PNG first). Each file is written atomically
    (:mod:`tag_tf.io.atomic`); ``scheme://`` paths go through ``tf.io.gfile``.
    """
    if not path.lower().endswith(".png"):
        raise ValueError(f"The figure path must end in .png. Received: {path!r}")
    atomic.atomic_write_bytes(path, figure_to_png_bytes(fig, dpi=dpi))
    paths = [path]
    if pdf:
        pdf_path = path[:-4] + ".pdf"
        buffer = io.BytesIO()
        fig.savefig(buffer, format="pdf")
        atomic.atomic_write_bytes(pdf_path, buffer.getvalue())
        paths.append(pdf_path)
    return paths


# ----------------------------------------------------------------------------- heatmap
def cell_inches(n: int) -> float:
    """Side of one matrix cell for ``n`` tasks (the matrix is at most 15 in wide past 50)."""
    return max(min(0.7, 7.0 / n), min(0.3, 15.0 / n))


def _short(name: str) -> str:
    return name if len(name) <= _MAX_NAME else name[:_MAX_NAME - 1] + "…"


def _value_format(scale: float, compact: bool = False) -> tuple[float, int, str]:
    """(divisor, decimals, unit note) giving about two significant digits at ``scale``.

    Plain decimals (``0.024``) for scales in [0.01, 100); otherwise, or if ``compact``,
    in units of 10^k (``2.4``, unit ``×1e-2``).
    """
    if not math.isfinite(scale) or scale <= 0:
        return 1.0, 2, ""
    exponent = math.floor(math.log10(scale))
    if -2 <= exponent <= 1 and not compact:
        return 1.0, 1 - exponent, ""
    return 10.0 ** exponent, 1, f"×1e{exponent}"


def cell_texts(values: np.ndarray, scale: float,
               max_chars: Optional[int] = None) -> tuple[list[list[str]], str, float]:
    """The number in each cell (``n/a`` for NaN), the unit note and the divisor.

    Uses the compact form (units of 10^k) when plain decimals would exceed ``max_chars``.
    """
    def text(v, divisor, decimals):
        if not np.isfinite(v):
            return "n/a"
        rounded = round(v / divisor, decimals) + 0.0  # + 0.0: no "-0.000"
        return f"{rounded:.{decimals}f}".replace("-", "−")

    def texts_for(divisor, decimals):
        return [[text(v, divisor, decimals) for v in row] for row in np.asarray(values)]

    divisor, decimals, unit = _value_format(scale)
    texts = texts_for(divisor, decimals)
    if max_chars is not None and max(len(t) for row in texts for t in row) > max_chars:
        divisor, decimals, unit = _value_format(scale, compact=True)
        texts = texts_for(divisor, decimals)
    return texts, unit, divisor


def _check_groups(groups: Any, tasks: list[str]) -> list[list[int]]:
    if isinstance(groups, str) or not isinstance(groups, Sequence):
        raise ValueError(f"groups must be a list of task-name lists. Received: {groups!r}")
    index = {t: i for i, t in enumerate(tasks)}
    out = []
    for group in groups:
        if isinstance(group, str) or not isinstance(group, Sequence) or not group:
            raise ValueError("Each group must be a non-empty list of task names. "
                             f"Received: {group!r}")
        unknown = [t for t in group if t not in index]
        if unknown:
            raise ValueError(f"Group {list(group)} names unknown task(s) {unknown}; "
                             f"tasks: {tasks}")
        out.append(sorted({index[t] for t in group}))
    return out


def outline_segments(members: Sequence[int], inset: float) -> list:
    """Segments tracing the border of the cells ``members x members``, ``inset`` inside.

    Cell (row r, column c) covers x in [c - .5, c + .5], y in [r - .5, r + .5]; members
    need not be contiguous (each connected block gets its own outline).
    """
    chosen = set(members)

    def inside(r, c):
        return r in chosen and c in chosen

    segments = []
    for r in chosen:
        for c in chosen:
            for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):  # outward normal of an edge
                if inside(r + dr, c + dc):
                    continue
                tr, tc = abs(dc), abs(dr)  # along the edge
                mid_r, mid_c = r + dr * (0.5 - inset), c + dc * (0.5 - inset)
                ends = []
                for sign in (-1, 1):
                    side = (r + sign * tr, c + sign * tc)
                    if not inside(*side):
                        reach = 0.5 - inset  # convex corner
                    elif inside(side[0] + dr, side[1] + dc):
                        reach = 0.5 + inset  # concave corner
                    else:
                        reach = 0.5  # the border continues straight
                    ends.append((mid_c + sign * tc * reach, mid_r + sign * tr * reach))
                segments.append(ends)
    return segments


def _hatch_patch(corner, label=None) -> patches.Rectangle:
    colour = (0.15, 0.15, 0.15, 0.5)
    patch = patches.Rectangle(corner, 1, 1, facecolor="none", edgecolor=colour, linewidth=0,
                              hatch=_HATCH, label=label)
    if hasattr(patch, "set_hatchcolor"):  # matplotlib >= 3.11; older: the edge colour
        patch.set_hatchcolor(colour)
        patch.set_hatch_linewidth(0.7)
    return patch


def affinity_figure(matrix: Any, tasks: Sequence[str], *, measure: str = "lookahead",
                    recorded_steps: Optional[int] = None,
                    groups: Optional[Sequence[Sequence[str]]] = None,
                    stderr: Any = None, title: Optional[str] = None,
                    groups_label: Optional[str] = None) -> Figure:
    """An annotated heatmap of ``matrix[source, target]`` (see the module docstring).

    Args:
      matrix: n x n, rows = sources, columns = targets; NaN = not recorded (grey).
      tasks: the n task names (axis labels).
      measure: ``"lookahead"`` (TAG's Z, Eq. 1) or ``"cosine"`` (gradient cosine
        similarity): sets the title and the colour-bar label.
      recorded_steps: the number of steps the mean covers, shown in the title.
      groups: selected networks (lists of task names), outlined one colour each.
      stderr: n x n standard errors of the means: cells with ``|mean| < 2 * stderr`` are
        hatched as not distinguishable from 0 (NaN stderr: no mark).
      title: an extra first title line (e.g. which selection is outlined).
      groups_label: title of the networks' legend.

    Returns:
      A matplotlib Figure on an Agg canvas (save with :func:`save_figure`).
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {sorted(MEASURES)}. Received: {measure!r}")
    tasks = affinity_io.validate_tasks(tasks)
    values = affinity_io.validate_matrix(matrix, tasks, allow_nan=True)
    n = len(tasks)
    members = _check_groups(groups, tasks) if groups is not None else []
    if stderr is not None:
        stderr = affinity_io.validate_matrix(stderr, tasks, name="stderr", allow_nan=True)
        if np.any(stderr[np.isfinite(stderr)] < 0):
            raise ValueError("The stderr matrix has negative entries.")

    finite = np.isfinite(values)
    off = finite & ~np.eye(n, dtype=bool)
    pool = np.abs(values[off]) if off.any() else np.abs(values[finite])
    scale = float(pool.max()) if pool.size and pool.max() > 0 else 1.0
    norm = mcolors.Normalize(vmin=-scale, vmax=scale)  # symmetric, so white = 0
    cmap = matplotlib.colormaps[CMAP].with_extremes(bad="#c8c8c8")

    # Figure size: the matrix, the longest task name (rotated on x) and the legend.
    cell = cell_inches(n)
    label_font = min(9.0, 0.5 * cell * 72)
    names = [_short(t) for t in tasks]
    longest_name = max(len(t) for t in names)
    name_inches = longest_name * label_font * 0.62 / 72
    rotate = 0 if longest_name <= 3 else (45 if n <= 12 else 90)
    x_label_inches = name_inches * (0.75 if rotate == 45 else 1.0) if rotate else 0.25
    legend_rows = len(members) + bool(members) + (stderr is not None)
    width = max(5.5, n * cell + name_inches + 2.4)
    height = max(4.0, n * cell + x_label_inches + 1.5 + 0.3 * bool(title)
                 + 0.2 * legend_rows)
    fig = new_figure(width, height)
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="equal",
                      interpolation="nearest")
    ax.set_xticks(range(n), names, fontsize=label_font, rotation=rotate,
                  ha="right" if rotate == 45 else "center",
                  rotation_mode="anchor" if rotate == 45 else "default")
    ax.set_yticks(range(n), names, fontsize=label_font)
    ax.set_xlabel("target task (column)")
    ax.set_ylabel("source task (row)")
    ax.set_xticks(np.arange(-0.5, n, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.6)
    ax.tick_params(which="minor", length=0)

    fits = int(0.85 * cell * 72 / (0.62 * MIN_VALUE_FONT))  # characters at the smallest font
    texts, unit, divisor = cell_texts(values, scale, max_chars=fits)
    longest_text = max(len(t) for row in texts for t in row)
    value_font = min(9.0, 0.85 * cell * 72 / (0.62 * max(longest_text, 3)))
    if value_font >= MIN_VALUE_FONT:
        for (r, c), v in np.ndenumerate(values):
            dark = bool(np.isfinite(v)) and abs(norm(v) - 0.5) > 0.3
            ax.text(c, r, texts[r][c], ha="center", va="center", fontsize=value_font,
                    color="white" if dark else ("black" if np.isfinite(v) else "#555555"),
                    in_layout=False)  # inside the axes: the layout need not measure them

    handles = []
    line_width = max(1.5, 0.07 * cell * 72)
    for k, group in enumerate(members):
        colour = GROUP_COLOURS[k % len(GROUP_COLOURS)]
        style = GROUP_STYLES[(k // len(GROUP_COLOURS)) % len(GROUP_STYLES)]
        inset = 0.06 + 0.08 * (k % 3)  # overlapping networks stay apart
        ax.add_collection(LineCollection(outline_segments(group, inset), colors=colour,
                                         linewidths=line_width, linestyles=style,
                                         capstyle="projecting", zorder=3))
        text = ", ".join(tasks[i] for i in group)
        text = text if len(text) <= 70 else text[:69] + "…"
        handles.append(Line2D([], [], color=colour, linestyle=style, linewidth=line_width,
                              label=f"network {k + 1}: {text}"))
    if stderr is not None:
        weak = finite & np.isfinite(stderr) & (np.abs(values) < 2 * stderr)
        for r, c in zip(*np.nonzero(weak)):
            ax.add_patch(_hatch_patch((c - 0.5, r - 0.5)))
        handles.append(_hatch_patch((0, 0), label="|mean| < 2 × stderr: not distinguishable "
                                                  f"from 0 ({int(weak.sum())} cells)"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", fontsize=8,
                   title=(groups_label or "selected networks (outlined)") if members else None,
                   title_fontsize=8, frameon=False, ncols=2 if len(handles) > 6 else 1)

    full_name, bar_label = MEASURES[measure]
    clipped = bool(pool.size) and float(np.nanmax(np.abs(values))) > scale
    bar = fig.colorbar(image, ax=ax, shrink=min(1.0, max(0.5, 4.0 / (n * cell))),
                       extend="both" if clipped else "neither")
    bar.set_label(bar_label + (f", {unit}" if unit else "")
                  + ("\n(scale: off-diagonal entries; larger values clipped)" if clipped
                     else ""))
    if unit:
        bar.formatter = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / divisor:g}")
        bar.update_ticks()
    steps = "" if recorded_steps is None else f", {int(recorded_steps)} recorded steps"
    ax.set_title("\n".join(([title] if title else []) + [full_name + steps]), fontsize=10)
    return fig


def save_affinity_heatmap(path: str, matrix: Any, tasks: Sequence[str], *, pdf: bool = False,
                          **kwargs) -> list[str]:
    """Writes :func:`affinity_figure` (``**kwargs``) as a PNG at ``path`` (+ a PDF beside it).

    Returns the written paths.
    """
    return save_figure(affinity_figure(matrix, tasks, **kwargs), path, pdf=pdf)


# ----------------------------------------------------------------------------- records
def recorded_steps(record: affinity_io.AffinityRecord) -> Optional[int]:
    """Steps a record's mean covers: its largest per-pair count, else its config's."""
    if record.counts is not None and np.size(record.counts):
        return int(np.max(record.counts))
    return (record.config or {}).get("recorded_steps")


def selection_groups(selection: Any) -> list[list[str]]:
    """The networks' task lists of a selection (a ``Selection`` or its JSON dict)."""
    networks = selection["networks"] if isinstance(selection, dict) else selection.networks
    return [list(net["tasks"] if isinstance(net, dict) else net.tasks) for net in networks]


def record_figure(record: affinity_io.AffinityRecord, *, measure: Optional[str] = None,
                  selection: Any = None, title: Optional[str] = None,
                  mark_uncertain: bool = True) -> Figure:
    """:func:`affinity_figure` of an :class:`~tag_tf.io.affinity_io.AffinityRecord`.

    ``measure`` defaults to the record's ``config["measure"]`` (else ``"lookahead"``);
    ``selection`` (a ``Selection`` or its JSON dict, with ``budget`` and ``networks``)
    outlines its networks and names its budget in the title. When the record has standard
    errors and ``mark_uncertain``, cells with ``|mean| < 2 * stderr`` are hatched (an
    all-NaN stderr, e.g. from one block, marks nothing).
    """
    measure = measure or (record.config or {}).get("measure") or "lookahead"
    groups = groups_label = None
    if selection is not None:
        groups = selection_groups(selection)
        budget = selection["budget"] if isinstance(selection, dict) else selection.budget
        groups_label = f"networks selected for budget {budget} (outlined)"
        title = title or f"selection for budget {budget} outlined"
    stderr = record.stderr if mark_uncertain else None
    if stderr is not None and not np.isfinite(np.asarray(stderr, dtype=np.float64)).any():
        stderr = None  # no estimate anywhere (e.g. one block): no hatching legend
    return affinity_figure(record.affinity, record.tasks, measure=measure,
                           recorded_steps=recorded_steps(record), groups=groups,
                           groups_label=groups_label, title=title, stderr=stderr)


def save_record_heatmap(path: str, record: affinity_io.AffinityRecord, *, pdf: bool = False,
                        **kwargs) -> list[str]:
    """Writes :func:`record_figure` (``**kwargs``) as a PNG at ``path`` (+ PDF); the paths."""
    return save_figure(record_figure(record, **kwargs), path, pdf=pdf)
