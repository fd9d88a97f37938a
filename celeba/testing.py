"""Tiny fake CelebA *original* files, in the formats of the real downloads (for offline tests).

``write_fake_celeba(directory, splits={"train": 6, "validation": 3, "test": 3})`` writes

* ``img_align_celeba.zip``: ``img_align_celeba/000001.jpg`` ... (218 x 178 RGB JPEGs, the
  size of the aligned and cropped CelebA images);
* ``list_eval_partition.txt``: ``000001.jpg 0`` (0 train, 1 validation, 2 test);
* ``list_attr_celeba.txt``: image count, the 40 attribute names, then one row of ``1`` /
  ``-1`` per image;
* ``list_landmarks_align_celeba.txt``: image count, the 10 landmark names, one row per image;
* ``identity_CelebA.txt``: ``000001.jpg 2880`` (no header).

Images are not pure noise: each attribute brightens its own patch of the picture, so a
network can learn the labels (the tests only need finite losses, not accuracy).
"""

from __future__ import annotations

import os
import zipfile
from typing import Mapping

import numpy as np
import tensorflow as tf

from celeba import data

IMAGE_HEIGHT, IMAGE_WIDTH = 218, 178
LANDMARKS = ("lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y",
             "leftmouth_x", "leftmouth_y", "rightmouth_x", "rightmouth_y")
SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
DEFAULT_SPLITS = {"train": 6, "validation": 3, "test": 3}


def fake_attributes(num_images: int, seed: int = 0) -> np.ndarray:
    """``[num_images, 40]`` labels in {-1, 1}; every attribute takes both values when n >= 2."""
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random((num_images, len(data.ATTRIBUTES))) < 0.5, -1, 1)
    if num_images >= 2:  # both classes present for every attribute
        labels[0], labels[1] = -1, 1
    return labels


def fake_image(attributes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A 218 x 178 uint8 RGB image whose 40 patches encode the attributes."""
    image = rng.integers(0, 96, size=(IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.int32)
    rows, cols = 8, 5
    patch_h, patch_w = IMAGE_HEIGHT // rows, IMAGE_WIDTH // cols
    for k, value in enumerate(attributes):
        if value > 0:
            r, c = divmod(k, cols)
            image[r * patch_h:(r + 1) * patch_h, c * patch_w:(c + 1) * patch_w] += 128
    return np.clip(image, 0, 255).astype(np.uint8)


def _write_lines(path: str, lines: list[str]) -> None:
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")  # the TFDS parser expects the trailing newline


def write_fake_celeba(directory: str, splits: Mapping[str, int] = DEFAULT_SPLITS, *,
                      seed: int = 0) -> dict[str, str]:
    """Writes the five original CelebA files for a few images; returns ``{key: path}``.

    Args:
      directory: where to write (created if needed).
      splits: images per split (``train``, ``validation``, ``test``); images are numbered
        in split order, as in the real partition file.
      seed: seed of labels and pixels.

    Returns:
      ``data.ORIGINAL_FILES`` keys mapped to the written paths.
    """
    unknown = sorted(set(splits) - set(SPLIT_IDS))
    if unknown:
        raise ValueError(f"Unknown split(s) {unknown}; expected {sorted(SPLIT_IDS)}.")
    os.makedirs(directory, exist_ok=True)
    names, partition = [], []
    for split in ("train", "validation", "test"):
        for _ in range(int(splits.get(split, 0))):
            names.append(f"{len(names) + 1:06d}.jpg")
            partition.append(SPLIT_IDS[split])
    n = len(names)
    attributes = fake_attributes(n, seed)
    rng = np.random.default_rng(seed + 1)
    paths = {key: os.path.join(directory, name) for key, name in data.ORIGINAL_FILES.items()}

    with zipfile.ZipFile(paths["img_align_celeba"], "w") as archive:
        archive.writestr("img_align_celeba/", b"")
        for name, labels in zip(names, attributes):
            jpeg = tf.io.encode_jpeg(fake_image(labels, rng), quality=90).numpy()
            archive.writestr(f"img_align_celeba/{name}", jpeg)

    _write_lines(paths["list_eval_partition"],
                 [f"{name} {part}" for name, part in zip(names, partition)])
    _write_lines(paths["list_attr_celeba"],
                 [str(n), " ".join(data.ATTRIBUTES) + " "]
                 + [name + " " + " ".join(f"{v:2d}" for v in row)
                    for name, row in zip(names, attributes)])
    marks = rng.integers(60, 160, size=(n, len(LANDMARKS)))
    _write_lines(paths["landmarks_celeba"],
                 [str(n), " ".join(LANDMARKS)]
                 + [f"{name:<10}" + "".join(f"{v:5d}" for v in row)
                    for name, row in zip(names, marks)])
    _write_lines(paths["identity_celeba"],
                 [f"{name} {1 + i % 3}" for i, name in enumerate(names)])
    return paths


def fake_labels(directory: str) -> dict[str, dict[str, bool]]:
    """Reads back the attribute file written above: ``{image name: {attribute: bool}}``."""
    with open(os.path.join(directory, data.ORIGINAL_FILES["list_attr_celeba"])) as f:
        lines = f.read().split("\n")
    header = lines[1].split()
    out = {}
    for line in lines[2:]:
        if line.strip():
            name, *values = line.split()
            out[name] = {k: int(v) > 0 for k, v in zip(header, values)}
    return out
