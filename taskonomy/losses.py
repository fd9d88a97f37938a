"""Taskonomy task losses as Keras losses (Standley et al.'s ``taskonomy_losses.py``).

* segment_semantic: softmax cross-entropy over 18 logits, label 0 ignored, mean over the
  labelled pixels of the batch (``cross_entropy(ignore_index=0)``);
* depth_zbuffer, normal: masked L1, ``mean(|pred - target| * mask)`` over all elements (masked
  pixels stay in the denominator, as the original); with ``shift_tolerant`` (the original's
  ``rotate_loss``, on by default in ``tag.patch``) the per-example masked L1 is the minimum over
  the nine one-pixel shifts of the prediction against the target cropped by one pixel;
* keypoints2d, edge_texture: plain L1 mean.

The mask travels inside the target as its last channel (:mod:`taskonomy.data` packs it), so the
losses work with ``compile(loss={task: loss})``, ``MultiTaskModel`` and ``evaluate()`` unchanged.
Every loss computes in float32 (mixed precision included) and returns one value per example
(the segmentation loss: one value for the batch, since the original averages over labelled
pixels, not examples); Keras averages over the batch.
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from taskonomy import data

IGNORE_LABEL = 0


@keras.saving.register_keras_serializable(package="taskonomy")
class SegmentationLoss(keras.losses.Loss):
    """Cross-entropy of logits [B, H, W, classes] against ids [B, H, W, 1], ignoring one label.

    An all-ignored batch gives 0 (the original gives NaN); TAG skips such affinity entries.
    """

    def __init__(self, ignore_label: int = IGNORE_LABEL, name: str = "segmentation_loss",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.ignore_label = int(ignore_label)

    def call(self, y_true, y_pred):
        logits = tf.cast(y_pred, tf.float32)
        labels = tf.cast(tf.round(tf.squeeze(tf.cast(y_true, tf.float32), -1)), tf.int32)
        valid = tf.not_equal(labels, self.ignore_label)
        safe = tf.where(valid, labels, tf.zeros_like(labels))
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe, logits=logits)
        weights = tf.cast(valid, tf.float32)
        return tf.reduce_sum(ce * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)

    def get_config(self):
        return {**super().get_config(), "ignore_label": self.ignore_label}


def _shifted_l1(pred, target, mask):
    """Per-example masked L1 of the nine one-pixel shifts of ``pred``, shape [9, B].

    The target and mask are cropped by one pixel on every side; the prediction crop is offset
    by -1, 0 or +1 pixel in height and width (the original's ``rotate_loss``).
    """
    t = target[:, 1:-1, 1:-1, :]
    m = mask[:, 1:-1, 1:-1, :]
    h, w = pred.shape[1], pred.shape[2]
    if h is None or w is None:  # unknown static size: slice with dynamic bounds
        h, w = tf.shape(pred)[1], tf.shape(pred)[2]
    values = []
    for dy in (1, 0, 2):
        for dx in (1, 0, 2):
            crop = pred[:, dy:h - 2 + dy, dx:w - 2 + dx, :]
            values.append(tf.reduce_mean(tf.abs(crop - t) * m, axis=[1, 2, 3]))
    return tf.stack(values)


@keras.saving.register_keras_serializable(package="taskonomy")
class MaskedL1Loss(keras.losses.Loss):
    """L1 times a mask carried as the target's last channel; mean over every element.

    Args:
      shift_tolerant: the original's ``rotate_loss``: per example, the minimum masked L1 over
        the nine one-pixel shifts of the prediction against the target cropped by one pixel.
    """

    def __init__(self, shift_tolerant: bool = False, name: str = "masked_l1_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.shift_tolerant = bool(shift_tolerant)

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, tf.float32)
        pred = tf.cast(y_pred, tf.float32)
        target, mask = y_true[..., :-1], y_true[..., -1:]
        if not self.shift_tolerant:
            return tf.reduce_mean(tf.abs(pred - target) * mask, axis=[1, 2, 3])
        return tf.reduce_min(_shifted_l1(pred, target, mask), axis=0)

    def get_config(self):
        return {**super().get_config(), "shift_tolerant": self.shift_tolerant}


@keras.saving.register_keras_serializable(package="taskonomy")
class L1Loss(keras.losses.Loss):
    """Plain L1, mean over every element (``l1_loss`` of the original)."""

    def __init__(self, name: str = "l1_loss", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return tf.reduce_mean(tf.abs(tf.cast(y_pred, tf.float32) - tf.cast(y_true, tf.float32)),
                              axis=[1, 2, 3])


def task_loss(task: str, *, shift_tolerant: bool = True) -> keras.losses.Loss:
    """The loss of one task (``taskonomy_losses.get_losses_and_tasks``)."""
    if task == "segment_semantic":
        return SegmentationLoss(name=f"{task}_loss")
    if data.DOMAINS[task].masked:
        return MaskedL1Loss(shift_tolerant=shift_tolerant, name=f"{task}_loss")
    if task in data.DOMAINS:
        return L1Loss(name=f"{task}_loss")
    raise ValueError(f"Unknown task {task!r}; tasks are {list(data.TASKS)}.")


def task_losses(tasks: Sequence[str], *, shift_tolerant: bool = True) -> dict:
    """``{task: loss}`` for ``compile(loss=...)``; the total is their unweighted sum."""
    return {task: task_loss(task, shift_tolerant=shift_tolerant)
            for task in data.parse_tasks(tasks)}
