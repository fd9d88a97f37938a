"""The harness figures (matplotlib): Figure 3, Figure 4, Table 2 and Table 3, PNG + PDF."""

import numpy as np
import pytest
import tensorflow as tf
from matplotlib.container import BarContainer

from tag_tf.experiments import figure3, figure4, plot, table2, table3

BUDGETS = [2, 3]


def _decode(path):
    return tf.io.decode_png(tf.io.read_file(path)).numpy()


def _check_written(paths, fig):
    """PNG of the figure's size (inches x DPI) and a PDF beside it."""
    png, pdf = paths
    assert png.endswith(".png") and pdf == png[:-4] + ".pdf"
    width, height = fig.get_size_inches() * plot.DPI
    assert _decode(png).shape == (int(round(height)), int(round(width)), 3)
    with open(pdf, "rb") as f:
        assert f.read(5) == b"%PDF-"


def _bars(ax):
    """{label: [bar heights]} of the grouped bars on ``ax``."""
    return {c.get_label(): [p.get_height() for p in c.patches]
            for c in ax.containers if isinstance(c, BarContainer)}


def _labels(legend):
    return [t.get_text() for t in legend.get_texts()]


# ----------------------------------------------------------------------------- helpers
def test_helpers():
    assert plot.error_label("error_percent") == (
        "total test classification error (%), sum over tasks")
    assert plot.error_label("my_metric", total=False) == "test my metric"
    assert plot.outputs(["a.png", "a.pdf", "b.png"]) == {"png": ["a.png", "b.png"],
                                                         "pdf": ["a.pdf"]}
    fig, axes = plot.new_figure(4.0, 3.0, ncols=2)
    assert len(axes) == 2 and tuple(fig.get_size_inches()) == (4.0, 3.0)
    plot.grouped_bars(axes[0], ["g1", "g2"], {"x": [1.0, None], "y": [2.0, 3.0]},
                      errors={"y": [0.5, None]})
    assert _bars(axes[0]) == {"x": [1.0, 0.0], "y": [2.0, 3.0]}
    assert [t.get_text() for t in axes[0].texts] == ["n/a"]  # the missing bar says so
    (with_error,) = [c for c in axes[0].containers
                    if isinstance(c, BarContainer) and c.errorbar is not None]
    assert with_error.get_label() == "y"


# ----------------------------------------------------------------------------- Figure 3
def _figure3_rows():
    methods = figure3.GROUPED + figure3.UNGROUPED
    rows = {}
    for k, m in enumerate(methods):
        time = None if m in figure3.UNGROUPED else (0.0 if m == "RG" else 10.0 * (k + 1))
        rows[m] = {"time_to_find_groups": time,
                   "budgets": {b: {"total_error": 50.0 + k + b} for b in BUDGETS}}
    for b in BUDGETS:
        rows["RG"]["budgets"][b]["std"] = 1.5 * b
    rows["RG"]["samples"] = 3
    rows["CS"]["budgets"][3]["total_error"] = None
    return rows


def test_figure3_bars_error_bars_legend_and_time_panel(tmp_path):
    rows = _figure3_rows()
    fig = figure3.make_figure(rows, BUDGETS, error_name="error_percent")
    bars, times = fig.axes
    heights = _bars(bars)
    assert list(heights) == list(figure3.GROUPED + figure3.UNGROUPED)
    assert heights["TAG"] == [52.0, 53.0] and heights["CS"] == [53.0, 0.0]  # None: n/a
    (rg,) = [c for c in bars.containers if isinstance(c, BarContainer) and c.errorbar]
    assert rg.get_label() == "RG"
    caps = rg.errorbar.lines[1]  # the caps sit at mean -+ std
    caps_y = sorted(y for line in caps for y in line.get_ydata())
    assert caps_y == pytest.approx(sorted([55 - 3, 55 + 3, 56 - 4.5, 56 + 4.5]))
    assert "classification error (%)" in bars.get_ylabel()
    assert "budget" in bars.get_xlabel() and "3 trained random" in bars.get_title()
    (legend,) = fig.legends
    assert _labels(legend) == list(figure3.GROUPED + figure3.UNGROUPED)
    assert times.get_xscale() == "log" and "time to find" in times.get_xlabel()
    # TAG, HOA and TAG+PCGrad at both budgets, CS at one: RG (no search) is not drawn.
    points = [tuple(p) for c in times.collections for p in c.get_offsets()]
    assert len(points) == 7 and (20.0, 53.0) in points
    _check_written(figure3.plot_figure(rows, BUDGETS, str(tmp_path / "figure3.png")), fig)


def test_figure3_markdown_names_the_figure_files():
    rows = _figure3_rows()
    for b in BUDGETS:
        rows["CS"]["budgets"][b]["total_error"] = 1.0
        for m in ("TAG", "CS", "HOA"):
            rows[m]["budgets"][b]["networks"] = [{"tasks": ["task_0", "task_1"]}]
    payload = {"methods": rows, "budgets": BUDGETS, "error_name": "mse", "adapter": "toy",
               "tasks": ["task_0", "task_1"], "trainings_run": 1, "trainings_reused": 0,
               "seconds": 1.0}
    text = figure3.format_markdown(payload, ["/x/figure3.png"])
    assert "figure3.png (+ PDF)" in text and "RG: mean ± std" in text
    assert "= red" not in text  # no colour-name legend any more


# ----------------------------------------------------------------------------- Figure 4
def test_figure4_lines_have_gaps_a_zero_line_and_a_legend(tmp_path):
    trace = {"epochs": [0, 1, 2, 3], "sources": {"a": [0.1, -0.2, None, 0.3],
                                                 "b": [0.0, 0.1, 0.3, None]}}
    fig = figure4.trace_figure(trace, "c")
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_array_equal(lines["a → c"].get_xdata(), [1, 2, 3, 4])  # 1-based
    np.testing.assert_array_equal(lines["a → c"].get_ydata(), [0.1, -0.2, np.nan, 0.3])
    assert np.isnan(lines["b → c"].get_ydata()[3])
    assert lines["a → c"].get_marker() == "o"  # an isolated epoch stays visible
    zero = [line for line in ax.get_lines() if list(line.get_ydata()) == [0, 0]]
    assert len(zero) == 1
    assert ax.get_xlabel() == "epoch" and "Z[source → c]" in ax.get_ylabel()
    (legend,) = fig.legends
    assert _labels(legend) == ["a → c", "b → c"]
    _check_written(figure4.plot_trace(trace, "c", str(tmp_path / "figure4_c.png")), fig)


# ----------------------------------------------------------------------------- Tables 2, 3
def test_table2_improvement_and_speedup_panels(tmp_path):
    rows = [{"every_n": n, "window": w, "speedup_vs_every_step": s,
             "steady_speedup_vs_every_step": None if n == 50 else 2 * s,
             "mean_vs_random_percent": 5.0 * k,
             "budgets": {b: {"vs_random_percent": 10.0 * k + b} for b in BUDGETS}}
            for k, (n, w, s) in enumerate([(1, None, 1.0), (50, None, 3.0), (10, "first", 2.0)])]
    payload = {"rows": rows, "budgets": BUDGETS, "error_name": "mse", "adapter": "toy"}
    fig = table2.make_figure(payload)
    gain, speed = fig.axes
    assert _bars(gain) == {"2 networks": [2.0, 12.0, 22.0], "3 networks": [3.0, 13.0, 23.0],
                           "mean over budgets": [0.0, 5.0, 10.0]}
    assert _bars(speed) == {"whole training": [1.0, 3.0, 2.0], "epochs 2+": [2.0, 0.0, 4.0]}
    assert [t.get_text() for t in gain.get_xticklabels()] == [
        "every 1", "every 50", "every 10\nfirst 25 %"]
    assert "%" in gain.get_ylabel() and "speed-up" in speed.get_ylabel()
    assert _labels(gain.get_legend())[0] == "2 networks"
    assert [t.get_text() for t in speed.texts] == ["n/a"]
    _check_written(table2.plot_table(payload, str(tmp_path / "table2.png")), fig)


def test_table3_above_optimal_and_gap_closed_panels(tmp_path):
    rows = {label: {"budgets": {b: {"above_optimal_percent": 10.0 * k + b,
                                    "gap_closed_percent": None if k == 1 else 50.0 - b}
                                for b in BUDGETS}}
            for k, label in enumerate(["TAG, base", "CS, base"])}
    payload = {"rows": rows, "budgets": BUDGETS, "error_name": "loss", "adapter": "toy"}
    fig = table3.make_figure(payload)
    above, gap = fig.axes
    assert _bars(above) == {"TAG, base": [2.0, 3.0], "CS, base": [12.0, 13.0]}
    assert _bars(gap) == {"TAG, base": [48.0, 47.0], "CS, base": [0.0, 0.0]}
    assert [t.get_text() for t in gap.texts] == ["n/a", "n/a"]
    assert "above optimal (%)" in above.get_ylabel() and "gap closed (%)" in gap.get_ylabel()
    assert _labels(fig.legends[0]) == ["TAG, base", "CS, base"]
    _check_written(table3.plot_table(payload, str(tmp_path / "table3.png")), fig)
