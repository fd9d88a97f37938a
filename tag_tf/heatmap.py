"""Affinity matrices as a readable table and as a heatmap PNG (no plotting library needed)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

_CELL = 24  # pixels per matrix cell


def format_matrix(matrix: np.ndarray, tasks: Sequence[str], *, precision: int = 3) -> str:
    """A plain-text table, rows = sources, columns = targets."""
    width = max(7, precision + 4, *(len(t) for t in tasks))
    lines = ["source \\ target".ljust(width) + " " + " ".join(t.rjust(width) for t in tasks)]
    for task, row in zip(tasks, np.asarray(matrix)):
        cells = ["nan".rjust(width) if not np.isfinite(v) else f"{v:{width}.{precision}f}"
                 for v in row]
        lines.append(task.ljust(width) + " " + " ".join(cells))
    return "\n".join(lines)


def heatmap_image(matrix: np.ndarray) -> np.ndarray:
    """RGB uint8 image [H, W, 3]: blue = negative, white = 0, red = positive affinity.

    The off-diagonal entries set the colour scale (the diagonal, a task's effect on
    itself, is usually much larger); NaN cells are grey.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    n = matrix.shape[0]
    off = matrix[~np.eye(n, dtype=bool)] if n > 1 else matrix.ravel()
    off = off[np.isfinite(off)]
    scale = np.max(np.abs(off)) if off.size and np.max(np.abs(off)) > 0 else 1.0
    value = np.clip(np.nan_to_num(matrix / scale), -1.0, 1.0)
    white = np.ones(value.shape + (3,))
    red = np.stack([np.ones_like(value), 1 - value, 1 - value], axis=-1)
    blue = np.stack([1 + value, 1 + value, np.ones_like(value)], axis=-1)
    rgb = np.where((value >= 0)[..., None], red, blue) * white
    rgb[~np.isfinite(matrix)] = 0.6
    image = np.kron(rgb, np.ones((_CELL, _CELL, 1)))
    image[::_CELL, :, :] = 0.85  # grid lines
    image[:, ::_CELL, :] = 0.85
    return (image * 255).round().astype(np.uint8)


def write_heatmap_png(path: str, matrix: np.ndarray) -> None:
    """Writes :func:`heatmap_image` of ``matrix`` to ``path``."""
    tf.io.write_file(path, tf.io.encode_png(heatmap_image(matrix)))
