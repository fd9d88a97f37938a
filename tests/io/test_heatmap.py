"""tag_tf.io.heatmap: the annotated affinity heatmap (matplotlib, Agg) and where it is written."""

import json
import os
import re

import keras
import matplotlib.colors as mcolors
import numpy as np
import pytest
import tensorflow as tf
from matplotlib.collections import LineCollection

import tag_tf
from tag_tf.io import affinity_io
from tag_tf.io import heatmap
from tag_tf.runner import choose
from tag_tf.runner.config import SelectionConfig
from tag_tf.synthetic import demo as planted_demo


def _tasks(n, width=6):
    return [f"t{i}".ljust(width, "x") for i in range(n)]


def _matrix(n, seed=0):
    rng = np.random.default_rng(seed)
    matrix = rng.normal(0.0, 0.01, size=(n, n))
    np.fill_diagonal(matrix, 0.1)
    return matrix


def _main_axes(fig):
    """The heatmap's axes (the one holding the image), and the colour bar's axes."""
    (main,) = [ax for ax in fig.axes if ax.images]
    others = [ax for ax in fig.axes if ax is not main]
    return main, others


def _outlines(ax):
    return [c for c in ax.collections if isinstance(c, LineCollection)]


def _hatched(ax):
    return [p for p in ax.patches if p.get_hatch()]


def _decode(path):
    return tf.io.decode_png(tf.io.read_file(path)).numpy()


def _expected_shape(fig, dpi):
    width, height = fig.get_size_inches() * dpi
    return int(round(height)), int(round(width)), 3


# ----------------------------------------------------------------------------- the figure
@pytest.mark.parametrize("n,name_width", [(1, 6), (2, 6), (40, 40)])
def test_figure_names_values_colour_bar_and_title(n, name_width):
    tasks = _tasks(n, name_width)
    matrix = _matrix(n)
    if n > 1:
        matrix[0, 1] = np.nan
    fig = heatmap.affinity_figure(matrix, tasks, recorded_steps=123)
    ax, others = _main_axes(fig)
    assert [t.get_text() for t in ax.get_xticklabels()] == tasks
    assert [t.get_text() for t in ax.get_yticklabels()] == tasks
    assert "source" in ax.get_ylabel() and "target" in ax.get_xlabel()
    assert "lookahead affinity" in ax.get_title() and "123 recorded steps" in ax.get_title()
    (bar,) = others  # the colour bar
    assert "affinity Z" in bar.get_ylabel()
    # Diverging and centred at 0: 0 maps to the middle (white) of RdBu_r, red = positive.
    image = ax.images[0]
    assert image.norm.vmin == -image.norm.vmax
    assert image.cmap.name.startswith("RdBu_r")
    white, red, blue = (image.cmap(image.norm(v)) for v in (0.0, 0.005, -0.005))
    assert min(white[:3]) > 0.9
    assert red[0] > red[2] and blue[2] > blue[0]
    # One number per cell; the NaN cell says so.
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == n * n
    if n > 1:
        assert texts[1] == "n/a"
    unit = re.search(r"×1e(-?\d+)", bar.get_ylabel())  # numbers in units of 10^k
    factor = 10.0 ** int(unit.group(1)) if unit else 1.0
    scale = np.nanmax(np.abs(matrix[~np.eye(n, dtype=bool)])) if n > 1 else 0.1
    for text, value in zip(texts, matrix.ravel()):
        if np.isfinite(value):  # about two significant digits of the colour scale
            shown = float(text.replace("−", "-")) * factor
            assert shown == pytest.approx(value, abs=0.06 * scale), text
    if n < 40:  # 40 tasks are rendered in a slow test below (1600 numbers take seconds)
        rgb = heatmap.figure_to_rgb(fig, dpi=20)
        assert rgb.shape == _expected_shape(fig, 20) and rgb.dtype == np.uint8


def test_colour_scale_comes_from_the_off_diagonal_and_numbers_scale_with_it():
    matrix = np.array([[5.0, 2e-4], [-1e-4, 7.0]])
    fig = heatmap.affinity_figure(matrix, ["a", "b"], measure="cosine")
    ax, (bar,) = _main_axes(fig)
    assert ax.images[0].norm.vmax == pytest.approx(2e-4)
    assert "×1e-4" in bar.get_ylabel() and "clipped" in bar.get_ylabel()
    assert "cosine similarity" in ax.get_title() and "recorded steps" not in ax.get_title()
    assert [t.get_text() for t in ax.texts][1:3] == ["2.0", "−1.0"]
    values = np.array([[0.024, -0.003]])
    assert heatmap.cell_texts(values, 0.024) == ([["0.024", "−0.003"]], "", 1.0)
    assert heatmap.cell_texts(np.array([[-1e-5]]), 0.024)[0] == [["0.000"]]  # no "−0.000"
    texts, unit, divisor = heatmap.cell_texts(values, 0.024, max_chars=5)  # compact
    assert texts == [["2.4", "−0.3"]] and unit == "×1e-2" and divisor == pytest.approx(0.01)


def test_numbers_are_left_out_when_they_would_be_too_small():
    n = 90
    fig = heatmap.affinity_figure(-np.abs(_matrix(n)) - 0.1, _tasks(n))
    ax, _ = _main_axes(fig)
    assert not ax.texts
    assert heatmap.cell_inches(n) * n <= 15.0 + 1e-9  # the matrix stays printable


def test_groups_are_outlined_and_named_in_the_legend():
    tasks = _tasks(6)
    plain = heatmap.affinity_figure(_matrix(6), tasks)
    groups = [[tasks[0], tasks[2]], [tasks[1], tasks[3], tasks[4]], [tasks[2], tasks[5]]]
    fig = heatmap.affinity_figure(_matrix(6), tasks, groups=groups, groups_label="budget 3")
    assert not _outlines(_main_axes(plain)[0]) and not plain.legends
    outlines = _outlines(_main_axes(fig)[0])
    assert len(outlines) == 3
    assert len({mcolors.to_hex(c.get_edgecolor()[0]) for c in outlines}) == 3
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[1] == f"network 2: {tasks[1]}, {tasks[3]}, {tasks[4]}"
    assert legend.get_title().get_text() == "budget 3"


def test_outline_traces_the_border_of_each_block():
    def length(segments):
        return sum(np.hypot(x1 - x0, y1 - y0) for (x0, y0), (x1, y1) in segments)

    # A 2x2 block: one square of side 2 - 2 * inset.
    assert length(heatmap.outline_segments([3, 4], 0.0)) == pytest.approx(8.0)
    assert length(heatmap.outline_segments([3, 4], 0.1)) == pytest.approx(4 * 1.8)
    xs = [x for seg in heatmap.outline_segments([3, 4], 0.1) for x, _ in seg]
    assert min(xs) == pytest.approx(2.6) and max(xs) == pytest.approx(4.4)
    # {0, 2}: four separate cells (no shared border).
    assert length(heatmap.outline_segments([0, 2], 0.1)) == pytest.approx(4 * 4 * 0.8)


def test_stderr_hatches_cells_not_distinguishable_from_zero():
    matrix = np.array([[1.0, 0.1, 0.5], [-0.5, np.nan, 0.05], [0.3, -0.19, 1.0]])
    stderr = np.array([[0.1, 0.1, np.nan], [0.1, 0.1, 0.01], [0.2, 0.1, 0.1]])
    # |mean| < 2 * stderr: (0, 1) 0.1 < 0.2, (2, 0) 0.3 < 0.4, (2, 1) 0.19 < 0.2.
    fig = heatmap.affinity_figure(matrix, ["a", "b", "c"], stderr=stderr)
    ax, _ = _main_axes(fig)
    corners = sorted((p.get_y() + 0.5, p.get_x() + 0.5) for p in _hatched(ax))
    assert corners == [(0, 1), (2, 0), (2, 1)]
    (legend,) = fig.legends
    assert "2 × stderr" in legend.get_texts()[-1].get_text()
    assert "(3 cells)" in legend.get_texts()[-1].get_text()
    assert not _hatched(_main_axes(heatmap.affinity_figure(matrix, ["a", "b", "c"]))[0])


@pytest.mark.slow  # renders 1600 numbers: ~7 s of CPU
def test_groups_and_stderr_together_on_forty_long_named_tasks(tmp_path):
    n = 40
    tasks = [f"task_{i:02d}_" + "n" * 32 for i in range(n)]
    assert all(len(t) == 40 for t in tasks)
    matrix = _matrix(n)
    matrix[3, 7] = np.nan
    stderr = np.full((n, n), 0.006)
    path = str(tmp_path / "forty.png")
    fig = heatmap.affinity_figure(matrix, tasks, groups=[tasks[:15], tasks[15:]],
                                  stderr=stderr, recorded_steps=9)
    assert heatmap.save_figure(fig, path, dpi=40) == [path]
    assert _decode(path).shape == _expected_shape(fig, 40)
    ax, _ = _main_axes(fig)
    assert len(_outlines(ax)) == 2 and len(ax.texts) == n * n
    expected = np.isfinite(matrix) & (np.abs(matrix) < 2 * stderr)
    assert len(_hatched(ax)) == expected.sum() > 0


def test_save_affinity_heatmap_writes_png_and_pdf(tmp_path):
    path = str(tmp_path / "sub" / "affinity.png")
    paths = heatmap.save_affinity_heatmap(path, _matrix(3), ["a", "b", "c"], pdf=True,
                                          recorded_steps=4)
    assert paths == [path, str(tmp_path / "sub" / "affinity.pdf")]
    fig = heatmap.affinity_figure(_matrix(3), ["a", "b", "c"], recorded_steps=4)
    assert _decode(path).shape == _expected_shape(fig, heatmap.DPI)
    with open(paths[1], "rb") as f:
        assert f.read(5) == b"%PDF-"
    assert heatmap.save_affinity_heatmap(str(tmp_path / "only.png"), _matrix(2),
                                         ["a", "b"]) == [str(tmp_path / "only.png")]
    assert not os.path.exists(tmp_path / "only.pdf")
    png = heatmap.figure_to_png_bytes(fig, dpi=30)
    assert tf.io.decode_png(png).shape == _expected_shape(fig, 30)


@pytest.mark.parametrize("kwargs,match", [
    (dict(matrix=np.zeros((2, 3))), "square"),
    (dict(matrix=np.zeros((3, 3))), "3x3 but there are 2 tasks"),
    (dict(groups=[["a", "zz"]]), "unknown task"),
    (dict(groups=["a"]), "non-empty list"),
    (dict(stderr=-np.ones((2, 2))), "negative"),
    (dict(measure="pairwise"), "measure"),
])
def test_bad_input_raises(kwargs, match):
    args = dict(matrix=np.zeros((2, 2)), tasks=["a", "b"]) | kwargs
    with pytest.raises(ValueError, match=match):
        heatmap.affinity_figure(args.pop("matrix"), args.pop("tasks"), **args)


def test_save_figure_wants_a_png_path():
    with pytest.raises(ValueError, match="must end in .png"):
        heatmap.save_figure(heatmap.new_figure(1, 1), "figure.jpg")


def test_record_figure_outlines_a_selection_and_names_its_budget():
    record = affinity_io.AffinityRecord(["a", "b", "c"], _matrix(3),
                                        counts=np.array([[5, 4, 5]] * 3),
                                        config={"measure": "cosine"})
    selection = {"budget": 2, "networks": [{"tasks": ["a", "b"]}, {"tasks": ["c"]}]}
    fig = heatmap.record_figure(record, selection=selection)
    ax, _ = _main_axes(fig)
    assert "budget 2" in ax.get_title() and "5 recorded steps" in ax.get_title()
    assert "cosine" in ax.get_title()
    assert len(_outlines(ax)) == 2


# ----------------------------------------------------------------------------- writers
def test_pipeline_and_demo_redraw_the_heatmap_with_the_chosen_budget(tmp_path, monkeypatch):
    tasks = ["a", "b", "c", "d"]
    matrix = np.full((4, 4), -0.01) + 0.03 * np.kron(np.eye(2), np.ones((2, 2)))
    record = affinity_io.AffinityRecord(tasks, matrix, counts=np.full((4, 4), 3),
                                        config={"measure": "lookahead"})
    path = str(tmp_path / "affinity.json")
    affinity_io.save_affinity_json(path, record)
    drawn = []
    real = heatmap.save_record_heatmap

    def spy(png, rec, **kwargs):
        drawn.append((png, kwargs["selection"]))
        return real(png, rec, **kwargs)

    monkeypatch.setattr(heatmap, "save_record_heatmap", spy)
    choose.select(path, tasks, SelectionConfig(budgets=(1, 2, 3), budget=2, bootstrap=0),
                  str(tmp_path))
    choose.select(path, tasks, SelectionConfig(budgets=(1, 2, 3), bootstrap=0),
                  str(tmp_path))  # no budget: the first
    assert [(p, s["budget"]) for p, s in drawn] == [(str(tmp_path / "affinity.png"), 2),
                                                    (str(tmp_path / "affinity.png"), 1)]
    assert sorted(map(sorted, heatmap.selection_groups(drawn[0][1]))) == [["a", "b"],
                                                                           ["c", "d"]]
    drawn.clear()
    demo_dir = tmp_path / "demo"
    demo_dir.mkdir()
    planted_demo._select(record, [1, 2, 3], str(demo_dir), marked_budget=2)
    ((png, chosen),) = drawn
    assert png == str(demo_dir / "affinity.png") and chosen.budget == 2
    assert os.path.getsize(png) > 0
    with open(demo_dir / "selection.json") as f:
        assert [s["budget"] for s in json.load(f)["selections"]] == [1, 2, 3]


def _tiny_model(tasks):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu", name="trunk")(inputs)
    outputs = {t: keras.layers.Dense(1, name=t)(hidden) for t in tasks}
    model = tag_tf.MultiTaskModel(keras.Model(inputs, outputs), shared=["trunk"],
                                  affinity=tag_tf.AffinityConfig(
                                      every_n=1, measures=("lookahead", "cosine")))
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    return model


def test_logger_writes_both_heatmaps_and_a_tensorboard_image_per_epoch(tmp_path):
    tasks = ["a", "b"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = {t: rng.normal(size=(32, 1)).astype("float32") for t in tasks}
    out, logs = str(tmp_path / "out"), str(tmp_path / "tb")
    model = _tiny_model(tasks)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0,
              callbacks=[tag_tf.AffinityLogger(output_dir=out, log_dir=logs)])
    record = model.affinity_record()
    expected = _expected_shape(heatmap.record_figure(record), heatmap.DPI)
    assert _decode(os.path.join(out, "affinity.png")).shape == expected
    assert _decode(os.path.join(out, "cosine_affinity.png")).shape[-1] == 3
    images = {}
    for name in os.listdir(logs):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(logs, name)):
            for value in event.summary.value:
                if value.tag.endswith("_heatmap"):
                    tensor = tf.make_ndarray(value.tensor)  # [width, height, png...]
                    images.setdefault(value.tag, []).append(
                        (event.step, tf.io.decode_png(tensor[2]).shape))
    figure = heatmap.affinity_figure(record.affinity, tasks, recorded_steps=2,
                                     title="epoch 1")
    shape = _expected_shape(figure, heatmap.TENSORBOARD_DPI)
    # The overall mean so far with its standard errors hatched: also one image per epoch.
    overall = {tag: images.pop(tag) for tag in list(images) if "_overall_" in tag}
    assert sorted(overall) == ["affinity_overall_heatmap", "cosine_affinity_overall_heatmap"]
    assert all([step for step, _ in v] == [0, 1] for v in overall.values())
    assert images == {"affinity_heatmap": [(0, shape), (1, shape)],
                      "cosine_affinity_heatmap": [(0, shape), (1, shape)]}
