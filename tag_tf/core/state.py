"""The recording state of a :class:`tag_tf.MultiTaskModel`: one tracked Keras layer.

:class:`AffinityState` owns every variable a recording run accumulates:

* per measure of :data:`tag_tf.core.config.MEASURES` (``lookahead``, ``cosine``, ``taylor``):
  the running sum of the recorded values, how many were added and how many pairs were
  skipped (``[T, T]`` each, ``[source, target]``);
* the counters: recorded steps (``affinity_steps``), training steps (``train_step_counter``,
  the schedule's clock) and the recording window (``window_start``, ``window_end``);
* per measure, the batch-means standard-error blocks (the streaming form of
  :class:`tag_tf.stats.uncertainty.BatchMeansState`): ``start_sum`` and ``start_count`` (the
  running sum and count when the current block began: the current block holds ``sum -
  start_sum`` over ``count - start_count`` values, so the recording step itself is
  untouched) and the finished blocks' ``blocks``, ``weight``, ``mean``, ``m2``.

A block ends at every epoch end (``stderr_block="epoch"``) or after every K-th recorded step
(``AffinityConfig(stderr_block=K)``); :meth:`AffinityState.estimate` counts the unfinished
block as a block of its own size.

The variables are bookkeeping, not weights (as Keras' metric and seed variables): they are
left out of ``weights``, so ``get_weights`` / ``set_weights`` (``EarlyStopping``'s
``restore_best_weights``) never roll the record back, while ``save_weights``, ``.keras``
files, ``tf.train.Checkpoint``, ``BackupAndRestore`` and the step-exact resume carry them
(they save variables). ``aggregation="only_first_replica"``: under a multi-replica strategy
every replica computes the same (all-reduced) update and the first replica's is kept.

Saved layouts: layout 2 (this one) saves the variables under the model's
``affinity_state``; layout 1 (tag_tf before the state became one object) saved the same 31
variables, in :data:`VARIABLES` order, as the model's own variables after its tracked shared
variables. ``MultiTaskModel`` reads both (:meth:`AffinityState.load_layout1`).
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from tag_tf.core.config import MEASURES
from tag_tf.io.affinity_io import AffinityRecord
from tag_tf.stats import uncertainty

LAYOUT = 2  # the saved layout of this module (see the module docstring)
NO_END = np.iinfo(np.int64).max
# Per-measure standard-error fields, in their saved order.
FIELDS = (("start_sum", "float64"), ("start_count", "int64"), ("blocks", "int64"),
          ("weight", "int64"), ("mean", "float64"), ("m2", "float64"))
_SUM_NAMES = {"lookahead": "affinity", "cosine": "cosine", "taylor": "taylor"}
# Every variable (name, dtype, rank), in the saved order (also layout 1's order).
VARIABLES = (
    ("affinity_sum", "float64", 2), ("affinity_count", "int64", 2),
    ("affinity_skipped", "int64", 2), ("cosine_sum", "float64", 2),
    ("cosine_count", "int64", 2), ("cosine_skipped", "int64", 2),
    ("affinity_steps", "int64", 0), ("train_step_counter", "int64", 0),
    ("window_start", "int64", 0), ("window_end", "int64", 0),
    ("taylor_sum", "float64", 2), ("taylor_count", "int64", 2),
    ("taylor_skipped", "int64", 2),
) + tuple((f"stderr_{m}_{f}", dtype, 2) for m in MEASURES for f, dtype in FIELDS)
# What reset() keeps: the step clock and the window.
_KEPT = ("train_step_counter", "window_start", "window_end")


def block_method(config) -> str:
    """How the blocks are cut, as stored in ``AffinityRecord.stderr_method``."""
    if config.stderr_block == "epoch":
        return "batch means, one block per epoch"
    return f"batch means, one block per {int(config.stderr_block)} recorded steps"


class AffinityState(keras.layers.Layer):
    """Accumulators, counters, window and standard-error blocks of affinity recording.

    Args:
      num_tasks: T; the per-pair variables are ``[T, T]``.
    """

    def __init__(self, num_tasks: int, *, name: str = "affinity_state", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_tasks = int(num_tasks)
        for var_name, dtype, rank in VARIABLES:
            initializer = keras.initializers.Constant(NO_END) if var_name == "window_end" \
                else "zeros"
            setattr(self, var_name, self.add_weight(
                shape=(self.num_tasks,) * rank, dtype=dtype, initializer=initializer,
                trainable=False, autocast=False, name=var_name,
                aggregation="only_first_replica"))
        self._layout1_loaded = False
        self.built = True

    @property
    def weights(self) -> list:
        """None: the record of a run is not among the model's weights (see the module doc)."""
        return []

    # ---------------------------------------------------------------- schedule
    def should_record(self, every_n: int) -> tf.Tensor:
        """Whether the current training step records (a bool tensor; read in the graph)."""
        step = self.train_step_counter.value
        return tf.logical_and(
            tf.equal(step % every_n, 0),
            tf.logical_and(step >= self.window_start.value, step < self.window_end.value))

    def records_next_step(self, every_n: int) -> bool:
        """:meth:`should_record` for the next step, in Python (between steps)."""
        step = int(self.train_step_counter.numpy())
        return (step % every_n == 0
                and int(self.window_start.numpy()) <= step < int(self.window_end.numpy()))

    def set_window(self, start: int, end: Optional[int]) -> None:
        """Records only on training steps ``[start, end)`` (end None: unbounded)."""
        self.window_start.assign(start)
        self.window_end.assign(NO_END if end is None else end)

    def count_step(self) -> None:
        """Advances the training-step clock (every training step)."""
        self.train_step_counter.assign_add(1)

    # ------------------------------------------------------------ accumulators
    def measure_state(self, measure: str) -> tuple:
        """(sum, count, skipped) variables of one measure."""
        if measure not in MEASURES:
            raise ValueError(f"measure must be one of {MEASURES}. Received: measure={measure!r}")
        prefix = _SUM_NAMES[measure]
        return tuple(getattr(self, f"{prefix}_{field}") for field in ("sum", "count", "skipped"))

    def add(self, measure: str, values: tf.Tensor, valid: tf.Tensor) -> None:
        """Adds ``values`` ``[source, target]`` where ``valid``; counts the rest as skipped."""
        total, count, skipped = self.measure_state(measure)
        values = tf.cast(values, "float64")
        total.assign_add(tf.where(valid, values, tf.zeros_like(values)))
        count.assign_add(tf.cast(valid, "int64"))
        skipped.assign_add(tf.cast(tf.logical_not(valid), "int64"))

    def count_record(self) -> tf.Tensor:
        """Counts one recorded step; returns the new count (a tensor for ``tf.cond``)."""
        self.affinity_steps.assign_add(1)
        return tf.identity(self.affinity_steps.value)

    # --------------------------------------------------------- standard error
    def _fields(self, measure: str) -> dict:
        return {field: getattr(self, f"stderr_{measure}_{field}") for field, _ in FIELDS}

    def end_block(self, measures: Sequence[str], end=True) -> None:
        """Folds the current block of each of ``measures`` into the finished blocks.

        ``end`` (a bool or scalar bool tensor) gates the fold, so the train step can call
        this every step; cells with an empty current block are left unchanged (as
        :func:`tag_tf.stats.uncertainty.end_block`, transcribed with element-wise ``where``).
        """
        end = tf.convert_to_tensor(end, dtype=tf.bool)
        for measure in measures:
            total, count = (v.value for v in self.measure_state(measure)[:2])
            state = self._fields(measure)
            start_sum, start_count = state["start_sum"].value, state["start_count"].value
            weight, mean, m2 = state["weight"].value, state["mean"].value, state["m2"].value
            block_count = count - start_count
            has = tf.logical_and(end, block_count > 0)
            n_b = tf.cast(block_count, tf.float64)
            m_b = (total - start_sum) / tf.where(has, n_b, tf.ones_like(n_b))
            new_weight = tf.where(has, weight + block_count, weight)
            delta = m_b - mean
            new_mean = tf.where(
                has, mean + delta * n_b / tf.cast(tf.where(has, new_weight, tf.ones_like(weight)),
                                                  tf.float64), mean)
            state["blocks"].assign(state["blocks"].value + tf.cast(has, tf.int64))
            state["weight"].assign(new_weight)
            state["mean"].assign(new_mean)
            state["m2"].assign(tf.where(has, m2 + n_b * delta * (m_b - new_mean), m2))
            state["start_sum"].assign(tf.where(end, total, start_sum))
            state["start_count"].assign(tf.where(end, count, start_count))

    def end_block_if_due(self, config) -> None:
        """In the train step: with ``stderr_block=K``, ends the block after every K-th record
        (a no-op for per-epoch blocks). While the recorded-step count stays at a multiple of
        K the current block is empty, so repeated folds change nothing."""
        if config.stderr_block != "epoch":
            self.end_block(config.measures,
                           tf.equal(self.affinity_steps.value % int(config.stderr_block), 0))

    def batch_means_state(self, measure: str) -> uncertainty.BatchMeansState:
        """One measure's state as NumPy :class:`~tag_tf.stats.uncertainty.BatchMeansState`."""
        total, count = (np.asarray(v.numpy()) for v in self.measure_state(measure)[:2])
        state = {field: np.asarray(v.numpy()) for field, v in self._fields(measure).items()}
        return uncertainty.BatchMeansState(
            block_sum=total.astype(np.float64) - state["start_sum"],
            block_count=count.astype(np.int64) - state["start_count"],
            blocks=state["blocks"], weight=state["weight"], mean=state["mean"], m2=state["m2"])

    def estimate(self, measure: str) -> uncertainty.Estimate:
        """Mean and batch-means standard error so far (the unfinished block counts as one)."""
        return uncertainty.estimate(self.batch_means_state(measure), include_current=True)

    # ---------------------------------------------------------------- results
    def record(self, measure: str, tasks: Sequence[str], config=None) -> AffinityRecord:
        """The mean so far ``[source, target]`` (NaN where nothing was recorded), with its
        counts, skips, the run's settings and, when ``config`` is given, standard errors."""
        total_var, count_var, skipped_var = self.measure_state(measure)
        total = np.asarray(total_var.numpy(), dtype=np.float64)
        counts = np.asarray(count_var.numpy())
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(counts > 0, total / np.maximum(counts, 1), np.nan)
        settings = config.to_json() if config is not None else {}
        settings.update(measure=measure, recorded_steps=int(self.affinity_steps.numpy()),
                        train_steps=int(self.train_step_counter.numpy()))
        record = AffinityRecord(list(tasks), mean, counts=counts,
                                skipped=np.asarray(skipped_var.numpy()), config=settings)
        if config is None:
            return record
        return uncertainty.with_stderr(record, self.estimate(measure), block_method(config))

    def reset(self) -> None:
        """Zeroes the accumulators and standard-error blocks (not the step clock, window)."""
        for var_name, _, _ in VARIABLES:
            if var_name not in _KEPT:
                variable = getattr(self, var_name)
                variable.assign(np.zeros(variable.shape, dtype=variable.dtype))

    # ----------------------------------------------------------------- layouts
    def load_layout1(self, store, offset: int) -> None:
        """Reads layout 1: the state as entries ``offset .. offset + 30`` of the model's own
        saved variables (see the module docstring)."""
        for k, (var_name, _, _) in enumerate(VARIABLES):
            variable = getattr(self, var_name)
            value = np.asarray(store[str(offset + k)])
            if value.shape != tuple(variable.shape):
                raise ValueError(
                    f"The saved affinity state (tag_tf state layout 1) does not fit this model: "
                    f"{var_name} is {value.shape}, the model's {tuple(variable.shape)} "
                    f"({self.num_tasks} tasks).")
            variable.assign(value)
        self._layout1_loaded = True

    def load_own_variables(self, store) -> None:
        """Keras' load; a layout-1 file has no entry of its own (the model read it)."""
        if not list(store.keys()) and self._layout1_loaded:
            self._layout1_loaded = False
            return
        if len(store.keys()) != len(VARIABLES):
            raise ValueError(
                f"The saved affinity state has {len(store.keys())} variables; tag_tf state "
                f"layout {LAYOUT} has {len(VARIABLES)} and layout 1 saved them with the model's "
                "own variables. The file was not written by a tag_tf MultiTaskModel with this "
                "number of tasks.")
        super().load_own_variables(store)

    def get_config(self):
        return {**super().get_config(), "num_tasks": self.num_tasks}
