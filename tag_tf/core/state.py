"""Batch-means standard errors of the recorded means, kept in the model's checkpointed state.

The streaming form of :mod:`tag_tf.stats.uncertainty` (:class:`~tag_tf.stats.uncertainty.BatchMeansState`)
as non-trainable weights of a :class:`tag_tf.MultiTaskModel`, one set per measure in
:data:`tag_tf.core.config.MEASURES` (``stderr_<measure>_<field>``, each ``[n, n]``):

* ``start_sum``, ``start_count``: the measure's running sum and count when the current block
  began. The current block holds ``sum - start_sum`` over ``count - start_count`` values, so
  the recording step itself is untouched.
* ``blocks``, ``weight``, ``mean``, ``m2``: the finished blocks (B, N, weighted mean, M2).

A block ends at every epoch end (:class:`AffinityBlocks`, added by ``MultiTaskModel.fit``
before the user's callbacks, so ``BackupAndRestore`` saves the folded state) or, with
``AffinityConfig(stderr_block=K)``, in the training step after every K-th recorded step.
The fold is :func:`tag_tf.stats.uncertainty.end_block` in TF ops. Checkpoints, ``model.save`` and
step-exact resumes carry the state, so a resumed run reports the same standard errors.
:func:`estimate` counts the unfinished block as a block of its own size.
"""

from __future__ import annotations

from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from tag_tf.stats import uncertainty
from tag_tf.core.config import MEASURES

# Per-measure fields in the order they are created (part of the saved-weight layout, after
# tag_tf.core.recorder.STATE): the block start and the finished blocks' BatchMeansState.
FIELDS = (("start_sum", "float64"), ("start_count", "int64"), ("blocks", "int64"),
          ("weight", "int64"), ("mean", "float64"), ("m2", "float64"))


def variable_name(measure: str, field: str) -> str:
    """The model attribute (and weight name) of one field of one measure's state."""
    return f"stderr_{measure}_{field}"


STATE = tuple((variable_name(m, f), dtype, 2) for m in MEASURES for f, dtype in FIELDS)
NAMES = tuple(name for name, _, _ in STATE)


def add_state(model: keras.Model, num_tasks: int) -> None:
    """Creates the batch-means state as the model's own non-trainable weights (zeros).

    ``aggregation="only_first_replica"``, as the accumulators: every replica computes the
    same update from the all-reduced values. ``autocast=False``: float64 bookkeeping is never
    cast to a mixed policy's compute dtype.
    """
    for name, dtype, rank in STATE:
        variable = model.add_weight(shape=(num_tasks,) * rank, dtype=dtype, initializer="zeros",
                                    trainable=False, autocast=False, name=name,
                                    aggregation="only_first_replica")
        setattr(model, name, variable)


def _fields(model: keras.Model, measure: str) -> dict:
    return {field: getattr(model, variable_name(measure, field)) for field, _ in FIELDS}


def block_method(config) -> str:
    """How the blocks are cut, as stored in ``AffinityRecord.stderr_method``."""
    if config.stderr_block == "epoch":
        return "batch means, one block per epoch"
    return f"batch means, one block per {int(config.stderr_block)} recorded steps"


def end_block(model: keras.Model, end=True) -> None:
    """Folds the current block of every recorded measure into the finished blocks.

    ``end`` (a bool or scalar bool tensor) gates the fold, so the train step can call this
    every step; cells with an empty current block are left unchanged (as in
    :func:`tag_tf.stats.uncertainty.end_block`, transcribed here with element-wise ``where``).
    """
    end = tf.convert_to_tensor(end, dtype=tf.bool)
    for measure in model.affinity_config.measures:
        total, count = (v.value for v in model.measure_state(measure)[:2])
        state = _fields(model, measure)
        start_sum, start_count = state["start_sum"].value, state["start_count"].value
        blocks, weight = state["blocks"].value, state["weight"].value
        mean, m2 = state["mean"].value, state["m2"].value
        block_count = count - start_count
        has = tf.logical_and(end, block_count > 0)
        n_b = tf.cast(block_count, tf.float64)
        m_b = (total - start_sum) / tf.where(has, n_b, tf.ones_like(n_b))
        new_weight = tf.where(has, weight + block_count, weight)
        delta = m_b - mean
        new_mean = tf.where(
            has, mean + delta * n_b / tf.cast(tf.where(has, new_weight, tf.ones_like(weight)),
                                              tf.float64), mean)
        new_m2 = tf.where(has, m2 + n_b * delta * (m_b - new_mean), m2)
        state["blocks"].assign(blocks + tf.cast(has, tf.int64))
        state["weight"].assign(new_weight)
        state["mean"].assign(new_mean)
        state["m2"].assign(new_m2)
        state["start_sum"].assign(tf.where(end, total, start_sum))
        state["start_count"].assign(tf.where(end, count, start_count))


def end_block_if_due(model: keras.Model) -> None:
    """In the train step: with ``stderr_block=K``, ends the block after every K-th record.

    Called after the step's recording; a no-op for per-epoch blocks. While the recorded-step
    count stays at a multiple of K the current block is empty, so repeated folds change
    nothing.
    """
    block = model.affinity_config.stderr_block
    if block == "epoch":
        return
    end_block(model, tf.equal(model.affinity_steps.value % int(block), 0))


def batch_means_state(model: keras.Model, measure: str) -> uncertainty.BatchMeansState:
    """One measure's state as NumPy :class:`~tag_tf.stats.uncertainty.BatchMeansState`."""
    total, count = (np.asarray(v.numpy()) for v in model.measure_state(measure)[:2])
    state = {field: np.asarray(v.numpy()) for field, v in _fields(model, measure).items()}
    return uncertainty.BatchMeansState(
        block_sum=total.astype(np.float64) - state["start_sum"],
        block_count=count.astype(np.int64) - state["start_count"],
        blocks=state["blocks"], weight=state["weight"], mean=state["mean"], m2=state["m2"])


def estimate(model: keras.Model, measure: str) -> uncertainty.Estimate:
    """Mean and batch-means standard error so far (the unfinished block counts as one)."""
    return uncertainty.estimate(batch_means_state(model, measure), include_current=True)


def reset(model: keras.Model) -> None:
    """Zeroes the state (with the accumulators, ``MultiTaskModel.reset_affinity``)."""
    for name in NAMES:
        variable = getattr(model, name)
        variable.assign(np.zeros(variable.shape, dtype=variable.dtype))


class AffinityBlocks(keras.callbacks.Callback):
    """Ends a standard-error block at every epoch end (``stderr_block="epoch"``).

    ``MultiTaskModel.fit`` puts it before the user's callbacks, so checkpoints written at
    the epoch end (``BackupAndRestore``, ``ModelCheckpoint``) and loggers see the fold.
    """

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        config = self.model.affinity_config
        if config is not None and config.stderr_block == "epoch":
            end_block(self.model)
