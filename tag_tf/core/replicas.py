"""Cross-replica reductions that make a distributed step record what one device records.

Under ``tf.distribute`` each replica sees its share of the global batch. Keras 3 divides a
mean-reduced loss by the number of replicas (``keras.losses.loss.scale_loss_for_distribution``)
and the optimizer sums the replicas' gradients, so training equals one device. TAG's
lookahead needs more: the per-task gradient and the task losses before and after the
lookahead step must be those of the *global* batch, identical in every replica.
:class:`GlobalBatch` weights each replica's value by its share of the loss's denominator
(its number of samples, or its sum of sample weights for ``mean_with_sample_weight``) and
all-reduces the sum, so a replica's value times its factor, summed over replicas, is the
one-device value, even when the batch does not split evenly.

Supported strategies: the default strategy, ``OneDeviceStrategy``, ``MirroredStrategy`` and
``MultiWorkerMirroredStrategy`` (all-reduce in replica context). Others raise.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import keras
import tensorflow as tf

SUPPORTED_STRATEGIES = ("default strategy", "OneDeviceStrategy", "MirroredStrategy",
                        "MultiWorkerMirroredStrategy")
_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight")


def check_strategy(strategy: tf.distribute.Strategy) -> None:
    """Raises a ValueError naming ``strategy`` unless the exact semantics are implemented."""
    if type(strategy).__name__ == "_DefaultDistributionStrategy":
        return
    if isinstance(strategy, (tf.distribute.OneDeviceStrategy, tf.distribute.MirroredStrategy,
                             tf.distribute.MultiWorkerMirroredStrategy)):
        return
    raise ValueError(
        f"MultiTaskModel (affinity recording, loss weighting, PCGrad) does not support "
        f"{type(strategy).__name__}: its affinities, weights or projected gradients would "
        f"not equal one device's. Supported: {', '.join(SUPPORTED_STRATEGIES)}.")


def num_replicas() -> int:
    """Replicas in sync of the current strategy (1 without one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def scale_loss(value: tf.Tensor) -> tf.Tensor:
    """``value / replicas``, as Keras scales a replica's loss (identity on one replica)."""
    count = num_replicas()
    return value if count == 1 else value * tf.cast(1.0 / count, value.dtype)


def unscale_loss(value: tf.Tensor) -> tf.Tensor:
    """Inverse of :func:`scale_loss` (for logging a replica's loss)."""
    count = num_replicas()
    return value if count == 1 else value * tf.cast(count, value.dtype)


def all_sum(values: Any) -> Any:
    """Sum over replicas of a (nested) structure of float tensors; identity on one replica."""
    if num_replicas() == 1:
        return values
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, values)


def replica_shard(batch: Any) -> Any:
    """This replica's rows ``replica_id::replicas`` of a global batch (identity on one)."""
    replicas = num_replicas()
    if replicas == 1:
        return batch
    replica = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int32)

    def shard(tensor):
        if tensor is None:
            return None
        rows = tf.range(replica, tf.shape(tensor)[0], replicas)
        return tf.gather(tensor, rows)

    return tf.nest.map_structure(shard, batch)


def draw_once(draw) -> Any:
    """Calls ``draw()`` once per step for all replicas (``merge_call``); every replica gets
    the same value. Must not be called inside ``tf.cond`` under a multi-replica strategy."""
    if num_replicas() == 1:
        return draw()
    return tf.distribute.get_replica_context().merge_call(lambda _: draw())


def _task_weight(sample_weight: Any, task: str):
    return sample_weight[task] if isinstance(sample_weight, Mapping) else sample_weight


class GlobalBatch:
    """Turns one replica's task losses and gradients into the global batch's.

    ``factor[t]`` is ``replicas * d_t / sum_over_replicas(d_t)`` for a mean-reduced loss
    (d_t: this replica's samples, or sum of sample weights for ``mean_with_sample_weight``)
    and 1 for a ``"sum"`` reduction. Keras already divided the replica's mean by
    ``replicas``; so ``all_sum(value * factor)`` is the global-batch value. On one replica
    every factor is 1 and nothing is reduced.

    Args:
      losses: the per-task ``keras.losses.Loss`` objects, in task order.
      tasks: the task names.
      y: this replica's targets, a dict keyed by task.
      sample_weight: this replica's sample weights (None, a tensor or a dict by task).
    """

    def __init__(self, losses: Sequence[keras.losses.Loss], tasks: Sequence[str], y: Mapping,
                 sample_weight: Any = None):
        self.replicas = num_replicas()
        self.factors = None
        if self.replicas == 1:
            return
        local, is_mean = [], []
        for task, loss in zip(tasks, losses):
            reduction = getattr(loss, "reduction", "sum_over_batch_size")
            weight = _task_weight(sample_weight, task)
            if reduction == "sum":
                local.append(tf.constant(0.0, tf.float64))
                is_mean.append(False)
                continue
            if reduction not in _MEAN_REDUCTIONS:
                raise ValueError(f"Task {task!r}: loss reduction {reduction!r} is not supported "
                                 "under a multi-replica strategy (a task loss must be a scalar).")
            if reduction == "mean_with_sample_weight" and weight is not None:
                local.append(tf.reduce_sum(tf.cast(weight, tf.float64)))
            else:
                local.append(tf.cast(tf.shape(y[task])[0], tf.float64))
            is_mean.append(True)
        local = tf.stack(local)  # float64: a rounded denominator shows in a small Z
        total = all_sum(local)
        mean_factor = tf.math.divide_no_nan(self.replicas * local, total)
        self.factors = tf.where(tf.constant(is_mean), mean_factor, tf.ones_like(mean_factor))

    def factor(self, task_index: int, dtype) -> tf.Tensor:
        return tf.cast(self.factors[task_index], dtype)

    def gradients(self, grads: Sequence[tf.Tensor], task_index: int) -> list:
        """Global-batch gradient of task ``task_index`` from this replica's."""
        if self.factors is None:
            return list(grads)
        return all_sum([g * self.factor(task_index, g.dtype) for g in grads])

    def stacked_gradients(self, stacked: Sequence[tf.Tensor]) -> list:
        """Global-batch per-task gradients from this replica's, stacked ``[T, *shape]`` (row k
        task k's), in one all-reduce."""
        if self.factors is None:
            return list(stacked)
        return all_sum([g * tf.reshape(tf.cast(self.factors, g.dtype),
                                       [-1] + [1] * (g.shape.rank - 1)) for g in stacked])

    def losses(self, values: tf.Tensor) -> tf.Tensor:
        """Global-batch task losses from this replica's; ``values[..., t]`` is task t's."""
        if self.factors is None:
            return values
        return all_sum(values * tf.cast(self.factors, values.dtype))
