"""The harness's PNG figures: bitmap font, tick selection and self-explanatory images."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tag_tf.experiments import bitmap_font as font
from tag_tf.experiments import figure3, figure4, plot


def _blank(height=40, width=120):
    return np.full((height, width, 3), 255, dtype=np.uint8)


def _dark(image):
    return (image < 128).all(axis=-1)


def _bbox(mask):
    rows, cols = np.nonzero(mask)
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


def _decode(path):
    return tf.io.decode_png(tf.io.read_file(path)).numpy()


def _has(image, rgb, rows, cols):
    return (image[rows, cols] == rgb).all(axis=-1).any()


# ----------------------------------------------------------------------------- font
def test_every_glyph_has_the_declared_size_and_ink():
    assert font.CHARSET[0] == " " and font.CHARSET[-1] == "~"
    for char in font.CHARSET:
        bitmap = font.glyph(char)
        assert bitmap.shape == (font.GLYPH_HEIGHT, font.GLYPH_WIDTH), char
        assert bitmap.any() == (char != " "), char
    for char in "0123456789.,-+=()/:%_<>[]":
        assert not np.array_equal(font.glyph(char), font.glyph("?")), char


@pytest.mark.parametrize("scale", [1, 2])
def test_text_lands_in_its_bounding_box_only(scale):
    image = _blank()
    font.draw_text(image, "HE", 7, 5, (0, 0, 0), scale=scale)
    width, height = font.text_size("HE", scale)
    assert (width, height) == ((2 * font.ADVANCE - 1) * scale, font.GLYPH_HEIGHT * scale)
    # H fills its first column and E its last, both glyphs fill their rows: tight box.
    assert _bbox(_dark(image)) == (5, 5 + height, 7, 7 + width)


def test_rotated_text_reads_bottom_to_top():
    image = _blank(80, 40)
    font.draw_text(image, "L.", 3, 10, scale=2, rotate=True)
    width, height = font.text_size("L.", 2, rotate=True)
    assert (width, height) == (font.GLYPH_HEIGHT * 2, (2 * font.ADVANCE - 1) * 2)
    top, bottom, left, right = _bbox(_dark(image))
    assert top >= 10 and bottom <= 10 + height and left >= 3 and right <= 3 + width
    # The first glyph ('L', tall) is at the bottom; the '.' (two rows of ink) at the top.
    first, second = _dark(image)[10 + height // 2:], _dark(image)[:10 + height // 2]
    assert first.sum() > 2 * second.sum()


def test_unknown_characters_and_clipping_do_not_crash():
    image = _blank(20, 60)
    font.draw_text(image, "\u00e9\u2603\t", 1, 1)
    box = font.glyph("\u2603")
    assert box.sum() == 2 * (font.GLYPH_WIDTH + font.GLYPH_HEIGHT) - 4  # hollow box
    assert _dark(image).sum() == 3 * box.sum()
    font.draw_text(image, "clipped", -10, -3, scale=2)  # partly outside
    font.draw_text(image, "gone", 500, 500)  # wholly outside
    font.draw_text(image, "", 0, 0)
    assert font.text_size("") == (0, font.GLYPH_HEIGHT)


# ----------------------------------------------------------------------------- ticks
def _is_round(step):
    mantissa = step / 10.0 ** math.floor(math.log10(step) + 1e-9)
    return any(math.isclose(mantissa, m) for m in (1, 2, 5))


@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (48.3, 55.8), (-0.037, 0.041),
                                   (1e-7, 3e-7), (-3e5, 1e6), (0.28, 10.72)])
def test_linear_ticks_are_round_and_cover_the_range(lo, hi):
    ticks = plot.linear_ticks(lo, hi)
    assert 4 <= len(ticks) <= 9
    step = ticks[1] - ticks[0]
    assert _is_round(step)
    assert np.allclose(np.diff(ticks), step)
    assert all(math.isclose(t / step, round(t / step), abs_tol=1e-6) for t in ticks)
    assert lo <= ticks[0] < lo + step and hi - step < ticks[-1] <= hi
    labels = plot.tick_labels(ticks)
    assert len(set(labels)) == len(labels)


def test_integer_ticks_and_labels():
    assert plot.linear_ticks(0.28, 10.72, integer=True) == [2, 4, 6, 8, 10]
    assert plot.linear_ticks(0.8, 3.2, integer=True) == [1, 2, 3]
    assert plot.tick_labels([0.0, 0.2, 0.4]) == ["0.0", "0.2", "0.4"]
    assert plot.tick_labels([-2e5, 0.0, 2e5]) == ["-2e5", "0", "2e5"]
    assert plot.tick_labels([]) == []


def test_log_ticks_are_decades_or_one_two_five():
    assert plot.log_ticks(2.4, 3000.0) == [10.0, 100.0, 1000.0]
    assert plot.tick_labels([0.01, 0.1, 1, 10, 100, 1000, 1e4], log=True) == [
        "0.01", "0.1", "1", "10", "100", "1000", "1e4"]
    assert plot.log_ticks(0.5, 3.0) == [0.5, 1.0, 2.0]  # under two decades: 1-2-5
    assert len(plot.log_ticks(1e-5, 1e9)) <= 8  # too many decades: every k-th
    assert all(_is_round(t) for t in plot.log_ticks(1e-5, 1e9))
    assert len(plot.log_ticks(3.0, 4.0)) >= 2  # inside one 1-2-5 step: linear ticks
    assert plot.log_ticks(0.0, 1.0) == []


# ----------------------------------------------------------------------------- figures
def _legend_rows(image, rgb):
    """Rows of the legend margin holding ``rgb`` (a swatch spans one legend row)."""
    legend = image[:, plot.LEGEND_LEFT:plot.LEGEND_RIGHT]
    return np.nonzero((legend == rgb).all(axis=-1).any(axis=1))[0]


def _assert_one_swatch_each(image, colours):
    for rgb in colours:
        rows = _legend_rows(image, rgb)
        assert rows.size and rows.max() - rows.min() < plot.ROW, rgb


def test_full_figure_is_self_explanatory(tmp_path):
    canvas = plot.Canvas([1.0, 50.0, 2000.0], [3.0, 4.5, 5.0], log_x=True,
                         title="A title", x_label="time (s)", y_label="error")
    colours = [plot.colour(k)[1] for k in range(3)]
    canvas.point(50.0, 4.5, colours[0], label="points")
    canvas.hline(4.0, colours[1], label="dashed")
    canvas.line([1.0, 2000.0], [3.0, 5.0], colours[2], label="line")
    path = str(tmp_path / "f.png")
    canvas.write(path)
    image = _decode(path)
    assert image.shape == (plot.HEIGHT, plot.WIDTH, 3)
    text = plot.TEXT
    assert _has(image, text, slice(0, plot.TOP - 8), slice(plot.LEFT, plot.RIGHT))  # title
    assert _has(image, text, slice(plot.HEIGHT - 20, None), slice(plot.LEFT, plot.RIGHT))
    assert _has(image, text, slice(plot.TOP, plot.BOTTOM), slice(0, 16))  # y title
    assert _has(image, text, slice(plot.BOTTOM + 6, plot.BOTTOM + 16),
                slice(plot.LEFT, plot.RIGHT))  # x tick labels
    assert _has(image, text, slice(plot.TOP, plot.BOTTOM),
                slice(plot.LEFT - 60, plot.LEFT - 6))  # y tick labels
    assert not (image[plot.TOP + 1:plot.BOTTOM, plot.LEFT + 1:plot.RIGHT] == text).all(
        axis=-1).any()  # no text over the data
    _assert_one_swatch_each(image, colours)
    assert len({tuple(r) for r in [_legend_rows(image, c)[:1] for c in colours]}) == 3


def test_legend_overflow_and_long_labels(tmp_path):
    canvas = plot.Canvas([0, 1], [0, 1])
    for k in range(60):
        canvas.add_legend(f"a rather long series label number {k}", (0, 0, 128), "line")
    canvas.add_legend("caption", kind="text")
    image = canvas.render()
    assert not (image[:, plot.WIDTH - 5:] == plot.TEXT).all(axis=-1).any()  # clipped
    assert (image[plot.HEIGHT - 6:] == 255).all()  # legend stops above the bottom
    with pytest.raises(ValueError):
        canvas.add_legend("x", (0, 0, 0), "bars")
    rows = plot._legend_rows([("s", (0, 0, 0), "line")] * 5, capacity=3)
    assert [r[0] for r in rows] == ["s", "s", "+3 more"]


def test_figure3_and_figure4_pngs_carry_a_legend(tmp_path):
    methods = figure3.GROUPED + figure3.UNGROUPED
    rows = {m: {"time_to_find_groups": {"RG": 0.0}.get(m, 10.0 + k) if m in figure3.GROUPED
                else None, "budgets": {2: {"total_error": 50.0 + k}}}
            for k, m in enumerate(methods)}
    (path,) = figure3._plots(rows, [2], str(tmp_path), error_name="loss")
    image = _decode(path)
    assert image.shape == (plot.HEIGHT, plot.WIDTH, 3)
    _assert_one_swatch_each(image, [plot.colour(k)[1] for k in range(len(methods))])

    trace = {"epochs": [0, 1, 2], "sources": {"a": [0.1, -0.2, None], "b": [0.0, 0.1, 0.3]}}
    path = str(tmp_path / "f4.png")
    figure4.plot_trace(trace, "c", path)
    image = _decode(path)
    _assert_one_swatch_each(image, [plot.colour(k)[1] for k in range(2)])
