"""Tiny PNG plots with NumPy and ``tf.io.encode_png`` (no plotting library is installed).

Each image stands alone: a title, axis titles, numeric tick labels (round numbers on
linear axes, decades such as 0.1, 1, 10, 1e4 on log axes) and a legend (colour swatch
plus label per series) in a right-hand margin, all written with the 5x7 bitmap font of
:mod:`tag_tf.experiments.bitmap_font`. Axes are grey, with a light grid at the ticks.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from tag_tf.experiments import bitmap_font as font

RGB = tuple[int, int, int]

# Distinct colours (RGB 0-255); the markdown legend names them by index.
PALETTE = [
    ("blue", (31, 119, 180)), ("orange", (255, 127, 14)), ("green", (44, 160, 44)),
    ("red", (214, 39, 40)), ("purple", (148, 103, 189)), ("brown", (140, 86, 75)),
    ("pink", (227, 119, 194)), ("grey", (127, 127, 127)), ("olive", (188, 189, 34)),
    ("cyan", (23, 190, 207)), ("black", (0, 0, 0)), ("navy", (0, 0, 128)),
]
WIDTH, HEIGHT = 840, 460
# The data area's box in pixels; the margins hold the text and the legend.
LEFT, TOP, RIGHT, BOTTOM = 72, 40, 620, 408
LEGEND_LEFT, LEGEND_RIGHT = RIGHT + 14, WIDTH - 6
ROW = 12  # legend row height
TEXT: RGB = (33, 33, 33)  # not in the palette, so text and series never share a colour
AXIS: RGB = (160, 160, 160)
GRID: RGB = (232, 232, 232)
LEGEND_KINDS = ("point", "dashed", "line", "text")


def colour(index: int) -> tuple[str, RGB]:
    return PALETTE[index % len(PALETTE)]


class Canvas:
    """A white RGB image with data -> pixel mapping (optionally log-x), text and legend.

    Series drawn with a ``label`` get a legend row (drawn by :meth:`render` / :meth:`write`).
    """

    def __init__(self, xs: Sequence[float], ys: Sequence[float], *, log_x: bool = False,
                 title: str = "", x_label: str = "", y_label: str = "",
                 x_integer: bool = False):
        self.image = np.full((HEIGHT, WIDTH, 3), 255, dtype=np.uint8)
        self.log_x = log_x
        self.legend: list[tuple[str, Optional[RGB], str]] = []
        xs = [self._x(v) for v in xs if v is not None and math.isfinite(v)
              and (v > 0 or not log_x)]
        ys = [v for v in ys if v is not None and math.isfinite(v)]
        self.x0, self.x1 = _span(xs)
        self.y0, self.y1 = _span(ys)
        self._axes(x_integer)
        self._titles(title, x_label, y_label)

    def _x(self, value: float) -> float:
        return math.log10(value) if self.log_x else value

    def px(self, x: float, y: float) -> tuple[int, int]:
        u = LEFT + (self._x(x) - self.x0) / (self.x1 - self.x0) * (RIGHT - LEFT)
        v = BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (BOTTOM - TOP)
        return int(round(u)), int(round(v))

    # ------------------------------------------------------------------ frame and text
    def _axes(self, x_integer: bool) -> None:
        """Grid, axis lines, tick marks and tick labels (x below, y to the left)."""
        if self.log_x:
            xt = log_ticks(10.0 ** self.x0, 10.0 ** self.x1)
        else:
            xt = linear_ticks(self.x0, self.x1, integer=x_integer)
        yt = linear_ticks(self.y0, self.y1)
        us = [self.px(x, self.y0)[0] for x in xt]
        vs = [self.px(10.0 ** self.x0 if self.log_x else self.x0, y)[1] for y in yt]
        for u in us:
            self.image[TOP:BOTTOM, u] = GRID
            self.image[BOTTOM:BOTTOM + 5, u] = AXIS
        for v in vs:
            self.image[v, LEFT + 1:RIGHT] = GRID
            self.image[v, LEFT - 5:LEFT] = AXIS
        self.image[BOTTOM, LEFT:RIGHT + 1] = AXIS
        self.image[TOP:BOTTOM + 1, LEFT] = AXIS
        self._x_tick_labels(us, tick_labels(xt, log=self.log_x))
        for v, text in zip(vs, tick_labels(yt)):
            self.text(_clip(text, LEFT - 12), LEFT - 8, v, ha="right", va="center")

    def _x_tick_labels(self, us: Sequence[int], labels: Sequence[str]) -> None:
        """Centred under their ticks; a label that would touch the previous one is skipped."""
        end = -1
        for u, text in zip(us, labels):
            width = font.text_size(text)[0]
            left = min(max(u - width // 2, 0), WIDTH - width)
            if left > end + 4:
                self.text(text, left, BOTTOM + 8)
                end = left + width

    def _titles(self, title: str, x_label: str, y_label: str) -> None:
        if title:
            scale = 2 if font.text_size(title, 2)[0] <= WIDTH - 12 else 1
            self.text(_clip(title, WIDTH - 12, scale), WIDTH // 2, 12, ha="center",
                      scale=scale)
        if x_label:
            self.text(_clip(x_label, RIGHT - LEFT), (LEFT + RIGHT) // 2, HEIGHT - 18,
                      ha="center")
        if y_label:
            self.text(_clip(y_label, BOTTOM - TOP), 6, (TOP + BOTTOM) // 2, va="center",
                      rotate=True)

    def text(self, text: str, x: int, y: int, rgb: RGB = TEXT, *, ha: str = "left",
             va: str = "top", scale: int = 1, rotate: bool = False) -> None:
        """Writes ``text`` anchored at (x, y): ``ha`` left/center/right, ``va`` top/center."""
        w, h = font.text_size(text, scale, rotate)
        x -= {"left": 0, "center": w // 2, "right": w}[ha]
        y -= {"top": 0, "center": h // 2, "bottom": h}[va]
        font.draw_text(self.image, text, x, y, rgb, scale=scale, rotate=rotate)

    # ------------------------------------------------------------------ series
    def add_legend(self, label: Optional[str], rgb: Optional[RGB] = None,
                   kind: str = "point") -> None:
        """Adds a legend row (``kind`` in LEGEND_KINDS; "text" is a caption without swatch)."""
        if label is None:
            return
        if kind not in LEGEND_KINDS:
            raise ValueError(f"kind must be one of {LEGEND_KINDS}, not {kind!r}")
        self.legend.append((str(label), rgb, kind))

    def point(self, x: float, y: float, rgb, size: int = 5,
              label: Optional[str] = None) -> None:
        self.add_legend(label, rgb, "point")
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            return
        u, v = self.px(x, y)
        self.image[max(v - size, 0):v + size + 1, max(u - size, 0):u + size + 1] = rgb

    def hline(self, y: float, rgb, dashed: bool = True,
              label: Optional[str] = None) -> None:
        self.add_legend(label, rgb, "dashed" if dashed else "line")
        if y is None or not math.isfinite(y):
            return
        _, v = self.px(10.0 ** self.x0 if self.log_x else self.x0, y)
        for u in range(LEFT + 1, RIGHT):
            if not dashed or (u // 6) % 2 == 0:
                self.image[max(v - 1, 0):v + 1, u] = rgb

    def line(self, xs: Sequence[float], ys: Sequence[float], rgb,
             label: Optional[str] = None) -> None:
        self.add_legend(label, rgb, "line")
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
        for (xa, ya), (xb, yb) in zip(pts, pts[1:]):
            (ua, va), (ub, vb) = self.px(xa, ya), self.px(xb, yb)
            n = max(abs(ub - ua), abs(vb - va), 1)
            for s in np.linspace(0, 1, n + 1):
                u, v = int(round(ua + s * (ub - ua))), int(round(va + s * (vb - va)))
                self.image[max(v - 1, 0):v + 2, max(u - 1, 0):u + 2] = rgb
        for x, y in pts:
            self.point(x, y, rgb, size=3)

    def zero_line(self) -> None:
        if self.y0 < 0 < self.y1:
            self.hline(0.0, (200, 200, 200), dashed=False)

    # ------------------------------------------------------------------ output
    def render(self) -> np.ndarray:
        """A copy of the image with the legend drawn into the right-hand margin."""
        image = self.image.copy()
        rows = _legend_rows(self.legend, (HEIGHT - 8 - TOP) // ROW - 1)
        if not rows:
            return image
        bottom = TOP + 4 + ROW * len(rows)
        image[[TOP - 4, bottom], LEGEND_LEFT:LEGEND_RIGHT + 1] = AXIS
        image[TOP - 4:bottom + 1, [LEGEND_LEFT, LEGEND_RIGHT]] = AXIS
        width = LEGEND_RIGHT - LEGEND_LEFT - 34
        for k, (label, rgb, kind) in enumerate(rows):
            v = TOP + 2 + ROW * k + 3  # the row's vertical middle
            u = LEGEND_LEFT + 6
            if kind == "text":
                font.draw_text(image, _clip(label, width + 22), u, v - 3, TEXT)
                continue
            _swatch(image, u, v, rgb, kind)
            font.draw_text(image, _clip(label, width), u + 24, v - 3, TEXT)
        return image

    def write(self, path: str) -> None:
        tf.io.write_file(path, tf.io.encode_png(self.render()))


# ---------------------------------------------------------------------- ticks
def linear_ticks(lo: float, hi: float, target: int = 6,
                 integer: bool = False) -> list[float]:
    """Round ticks (1, 2 or 5 times a power of ten apart) inside ``[lo, hi]``.

    The step whose tick count is closest to ``target`` wins (ties: more ticks);
    ``integer`` keeps the step >= 1 (e.g. epochs).
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return []
    power = math.floor(math.log10((hi - lo) / target))
    steps = [m * 10.0 ** e for e in (power - 1, power, power + 1) for m in (1, 2, 5)]
    steps = [max(s, 1.0) for s in steps] if integer else steps
    ticks = [_multiples(lo, hi, s) for s in steps]
    return min(ticks, key=lambda t: (abs(len(t) - target), -len(t)))


def _multiples(lo: float, hi: float, step: float) -> list[float]:
    """The multiples of ``step`` inside ``[lo, hi]``, rounded to the step's digits."""
    digits = max(0, -math.floor(math.log10(step) + 1e-9)) + 1
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    return [round(k * step, digits) + 0.0 for k in range(first, last + 1)]


def log_ticks(lo: float, hi: float, max_ticks: int = 8) -> list[float]:
    """Decades (1, 10, 100, ...) inside ``[lo, hi]``, every k-th one when there are too many;
    with fewer than three decades, 1-2-5 steps (or linear ticks inside one step)."""
    if not (0 < lo < hi and math.isfinite(hi)):
        return []
    e0, e1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    low, high = lo * (1 - 1e-9), hi * (1 + 1e-9)
    decades = [10.0 ** e for e in range(e0, e1 + 1) if low <= 10.0 ** e <= high]
    if len(decades) >= 3:
        return decades[::math.ceil(len(decades) / max_ticks)]
    ticks = [float(f"{m}e{e}") for e in range(e0, e1 + 1) for m in (1, 2, 5)]
    ticks = [t for t in ticks if low <= t <= high]
    if 2 <= len(ticks) <= max_ticks:
        return ticks
    return decades if len(decades) == 2 else linear_ticks(lo, hi)


def tick_labels(values: Sequence[float], *, log: bool = False) -> list[str]:
    """Short labels: decimals matched to the step, or ``2e-5`` / ``1.5e6`` when extreme."""
    values = list(values)
    if not values:
        return []
    if log:
        return [_plain(v) if 1e-3 <= abs(v) < 1e4 else _sci(v) for v in values]
    steps = [b - a for a, b in zip(values, values[1:]) if b > a]
    step = min(steps) if steps else abs(values[0]) or 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if decimals > 4 or max(abs(v) for v in values) >= 1e5:
        for digits in range(2, 9):  # enough mantissa digits to tell the ticks apart
            labels = [_sci(v, digits) for v in values]
            if len(set(labels)) == len(labels):
                break
        return labels
    return [f"{v:.{decimals}f}" for v in values]


def _plain(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".") or "0"


def _sci(value: float, digits: int = 2) -> str:
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(abs(value)) + 1e-9)
    mantissa = f"{value / 10.0 ** exponent:.{digits}f}".rstrip("0").rstrip(".")
    return f"{mantissa}e{exponent}"


# ---------------------------------------------------------------------- helpers
def _legend_rows(entries: Sequence[tuple[str, Optional[RGB], str]],
                 capacity: int) -> list[tuple[str, Optional[RGB], str]]:
    """The legend rows, with a "+N more" caption when they would not fit."""
    entries = list(entries)
    if len(entries) <= capacity:
        return entries
    shown = entries[:max(capacity - 1, 0)]
    return shown + [(f"+{len(entries) - len(shown)} more", None, "text")]


def _swatch(image: np.ndarray, u: int, v: int, rgb: RGB, kind: str) -> None:
    """An 18-pixel-wide sample of a series at (u, v): square, dashed or solid line."""
    if kind == "point":
        image[v - 4:v + 5, u + 5:u + 14] = rgb
    elif kind == "dashed":
        image[v - 1:v + 1, u:u + 6] = rgb
        image[v - 1:v + 1, u + 12:u + 18] = rgb
    else:
        image[v - 1:v + 2, u:u + 18] = rgb
        image[v - 3:v + 4, u + 6:u + 13] = rgb


def _clip(text: str, width: int, scale: int = 1) -> str:
    """``text`` shortened with ".." so that it fits in ``width`` pixels."""
    text = str(text)
    if font.text_size(text, scale)[0] <= width:
        return text
    keep = max((width // scale + 1) // font.ADVANCE - 2, 0)
    return text[:keep] + ".."


def _span(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.1, 1e-3)
    return lo - pad, hi + pad
