"""Tiny PNG plots with NumPy and ``tf.io.encode_png`` (no plotting library is installed).

Plots carry no text: colours are listed in the markdown legend written next to them.
Axes are drawn in grey, decade ticks on log axes, and a light grid.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

# Distinct colours (RGB 0-255); the markdown legend names them by index.
PALETTE = [
    ("blue", (31, 119, 180)), ("orange", (255, 127, 14)), ("green", (44, 160, 44)),
    ("red", (214, 39, 40)), ("purple", (148, 103, 189)), ("brown", (140, 86, 75)),
    ("pink", (227, 119, 194)), ("grey", (127, 127, 127)), ("olive", (188, 189, 34)),
    ("cyan", (23, 190, 207)), ("black", (0, 0, 0)), ("navy", (0, 0, 128)),
]
WIDTH, HEIGHT, MARGIN = 640, 400, 40


def colour(index: int) -> tuple[str, tuple[int, int, int]]:
    return PALETTE[index % len(PALETTE)]


class Canvas:
    """A white RGB image with data -> pixel mapping (optionally log-x)."""

    def __init__(self, xs: Sequence[float], ys: Sequence[float], *, log_x: bool = False):
        self.image = np.full((HEIGHT, WIDTH, 3), 255, dtype=np.uint8)
        self.log_x = log_x
        xs = [self._x(v) for v in xs if v is not None and math.isfinite(v)
              and (v > 0 or not log_x)]
        ys = [v for v in ys if v is not None and math.isfinite(v)]
        self.x0, self.x1 = _span(xs)
        self.y0, self.y1 = _span(ys)
        self._axes()

    def _x(self, value: float) -> float:
        return math.log10(value) if self.log_x else value

    def px(self, x: float, y: float) -> tuple[int, int]:
        u = MARGIN + (self._x(x) - self.x0) / (self.x1 - self.x0) * (WIDTH - 2 * MARGIN)
        v = HEIGHT - MARGIN - (y - self.y0) / (self.y1 - self.y0) * (HEIGHT - 2 * MARGIN)
        return int(round(u)), int(round(v))

    def _axes(self):
        grey = (160, 160, 160)
        self.image[HEIGHT - MARGIN, MARGIN:WIDTH - MARGIN] = grey
        self.image[MARGIN:HEIGHT - MARGIN + 1, MARGIN] = grey
        if self.log_x:
            for decade in range(math.floor(self.x0), math.ceil(self.x1) + 1):
                if self.x0 <= decade <= self.x1:
                    u, _ = self.px(10.0 ** decade, self.y0)
                    self.image[MARGIN:HEIGHT - MARGIN, u] = (225, 225, 225)
                    self.image[HEIGHT - MARGIN:HEIGHT - MARGIN + 8, u] = grey

    def point(self, x: float, y: float, rgb, size: int = 5):
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            return
        u, v = self.px(x, y)
        self.image[max(v - size, 0):v + size + 1, max(u - size, 0):u + size + 1] = rgb

    def hline(self, y: float, rgb, dashed: bool = True):
        if y is None or not math.isfinite(y):
            return
        _, v = self.px(10.0 ** self.x0 if self.log_x else self.x0, y)
        for u in range(MARGIN, WIDTH - MARGIN):
            if not dashed or (u // 6) % 2 == 0:
                self.image[max(v - 1, 0):v + 1, u] = rgb

    def line(self, xs: Sequence[float], ys: Sequence[float], rgb):
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)]
        for (xa, ya), (xb, yb) in zip(pts, pts[1:]):
            (ua, va), (ub, vb) = self.px(xa, ya), self.px(xb, yb)
            n = max(abs(ub - ua), abs(vb - va), 1)
            for s in np.linspace(0, 1, n + 1):
                u, v = int(round(ua + s * (ub - ua))), int(round(va + s * (vb - va)))
                self.image[max(v - 1, 0):v + 2, max(u - 1, 0):u + 2] = rgb
        for x, y in pts:
            self.point(x, y, rgb, size=3)

    def zero_line(self):
        if self.y0 < 0 < self.y1:
            self.hline(0.0, (200, 200, 200), dashed=False)

    def write(self, path: str) -> None:
        tf.io.write_file(path, tf.io.encode_png(self.image))


def _span(values: Sequence[float]) -> tuple[float, float]:
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.1, 1e-3)
    return lo - pad, hi + pad
