"""A tiny fake Taskonomy tree in the real on-disk layout, for offline tests.

``write_fake_taskonomy(root)`` writes
``root/<domain>/<building>/point_<i>_view_<j>_domain_<domain>.png`` for rgb and the five tasks,
with real PNG encodings and the value ranges of each domain:

* rgb: 8-bit RGB;
* depth_zbuffer: 16-bit grey, valid depths in [600, 8000] (1/512 m units) and a block of
  65535 (no reading) plus a strip in [2**13, 60000) that the mask removes;
* normal: 8-bit RGB around 128;
* keypoints2d, edge_texture: 16-bit grey, mostly small with sparse peaks;
* segment_semantic: 8-bit grey class ids in [0, 17], 0 (unlabelled) included;
* optionally ``mask``: 8-bit grey 0 / 255.

Buildings are real names from ``taskonomy/splits`` (two train, one val, one test by default), so
the real building lists select them.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from taskonomy import data



def default_buildings(splits_dir: str = data.SPLITS_DIR) -> dict[str, tuple[str, ...]]:
    """Two train buildings and the first val and test buildings of the shipped lists."""
    return {
        "train": tuple(data.split_buildings("train", splits_dir)[:2]),
        "val": tuple(data.split_buildings("val", splits_dir)[:1]),
        "test": tuple(data.split_buildings("test", splits_dir)[:1]),
    }


def _png(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if array.ndim == 2:
        array = array[..., None]
    tf.io.write_file(path, tf.io.encode_png(tf.constant(array)))


def fake_frame(rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
    """One frame's arrays (rgb and every task domain) with realistic dtypes and ranges."""
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    phase = rng.uniform(0, 2 * np.pi, size=3)
    rgb = np.stack([0.5 + 0.4 * np.sin(4 * xx + 3 * yy + p) for p in phase], -1)
    rgb = np.clip(rgb + rng.normal(0, 0.03, rgb.shape), 0, 1)
    depth = 600 + 7000 * (0.3 * xx + 0.7 * yy) + rng.normal(0, 20, xx.shape)
    depth = np.clip(depth, 600, 8000)
    hole = size // 4
    r, c = rng.integers(0, size - hole, size=2)
    depth[r:r + hole, c:c + hole] = 65535          # no reading
    depth[:, :max(1, size // 16)] = rng.uniform(2 ** 13, 60000)  # far, masked out too
    normal = np.stack([128 + 100 * (xx - 0.5), 128 + 100 * (yy - 0.5), 200 + 0 * xx], -1)
    keypoints = np.where(rng.random(xx.shape) < 0.05, rng.integers(200, 4000, xx.shape),
                         rng.integers(0, 60, xx.shape))
    edges = np.abs(np.gradient(rgb.mean(-1))[0]) * 40000 + rng.integers(0, 400, xx.shape)
    segment = (np.floor(xx * 4) + 4 * np.floor(yy * 4)).astype(np.int64) % 18
    segment[rng.random(xx.shape) < 0.1] = 0
    return {
        "rgb": np.round(rgb * 255).astype(np.uint8),
        "depth_zbuffer": np.round(depth).astype(np.uint16),
        "normal": np.clip(np.round(normal), 0, 255).astype(np.uint8),
        "keypoints2d": keypoints.astype(np.uint16),
        "edge_texture": np.clip(edges, 0, 65535).astype(np.uint16),
        "segment_semantic": segment.astype(np.uint8),
    }


def write_fake_taskonomy(root: str, *, buildings: Optional[Mapping[str, Sequence[str]]] = None,
                         frames: int = 3, size: int = 64, seed: int = 0,
                         with_mask: bool = False,
                         domains: Sequence[str] = ("rgb",) + data.TASKS) -> dict[str, list[str]]:
    """Writes the fake tree; returns the building names per split.

    Args:
      root: destination (created).
      buildings: ``{split: [building, ...]}``; default :func:`default_buildings`.
      frames: images per building.
      size: side of every PNG (the pipeline resizes to its ``image_size``).
      seed: numpy seed.
      with_mask: also write a ``mask`` domain (0 / 255 from the depth validity).
      domains: which domains to write (rgb is always written).
    """
    buildings = default_buildings() if buildings is None else buildings
    rng = np.random.default_rng(seed)
    for names in buildings.values():
        for building in names:
            for i in range(frames):
                arrays = fake_frame(rng, size)
                rgb_path = os.path.join(root, "rgb", building,
                                        f"point_{i}_view_{i % 2}_domain_rgb.png")
                _png(rgb_path, arrays["rgb"])
                for domain in domains:
                    if domain != "rgb":
                        _png(data.label_path(root, rgb_path, domain), arrays[domain])
                if with_mask:
                    valid = arrays["depth_zbuffer"] < data.DEPTH_MASK_THRESHOLD
                    _png(data.label_path(root, rgb_path, data.MASK_DOMAIN),
                         (valid * 255).astype(np.uint8))
    return {split: list(names) for split, names in buildings.items()}
