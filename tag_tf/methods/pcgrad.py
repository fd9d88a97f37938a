"""PCGrad: projecting conflicting per-task gradients of the shared parameters.

For each task i, starting from g_i, and for every other task j in a random order drawn
anew each step: if the running g_i conflicts with the ORIGINAL g_j (negative dot
product), remove its component along g_j. The shared update is the sum of the projected
gradients; task-specific parameters keep their own gradients. Unlike the TF port used
by the original TAG notebook (which discarded the result of ``tf.random.shuffle``), the
order really is shuffled, from a seeded, checkpointed RNG state.

References:
  Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.
"""

from __future__ import annotations

from typing import Optional

import keras
import tensorflow as tf

from tag_tf.core.parts import GradientCombiner, StepValues, TaskGradients


def project_conflicting(gradients: tf.Tensor, order: tf.Tensor) -> tf.Tensor:
    """Projected per-task gradients.

    Args:
      gradients: [tasks, dim] flattened per-task gradients.
      order: [tasks] a permutation; task i is projected against j in this order (j != i).

    Returns:
      [tasks, dim] the projected gradients (sum them for the update).
    """
    n = gradients.shape[0]
    squared_norms = tf.reduce_sum(gradients * gradients, axis=1)
    projected = []
    for i in range(n):
        g = gradients[i]
        for position in range(n):
            j = order[position]
            other = tf.gather(gradients, j)
            dot = tf.reduce_sum(g * other)
            norm = tf.gather(squared_norms, j)
            conflict = tf.logical_and(tf.logical_and(dot < 0, norm > 0), tf.not_equal(j, i))
            g = g - tf.where(conflict, dot / tf.where(norm > 0, norm, 1.0), 0.0) * other
        projected.append(g)
    return tf.stack(projected)


@keras.saving.register_keras_serializable(package="tag_tf")
class PCGrad(GradientCombiner):
    """Gradient surgery on the shared variables (``MultiTaskModel(gradient=PCGrad())``).

    Args:
      seed: seed of the per-step task order (its RNG state is saved with the model).
    """

    def __init__(self, *, seed: Optional[int] = None, name: str = "pcgrad", **kwargs):
        super().__init__(name=name, **kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def task_order(self, num_tasks: int) -> tf.Tensor:
        """A fresh random permutation of the tasks."""
        return keras.random.shuffle(tf.range(num_tasks), seed=self.seed_generator)

    def combine(self, grads: TaskGradients, values: StepValues) -> list[tf.Tensor]:
        """Sum of the projected per-task gradients of the global batch (identical in every
        replica), shaped like the shared variables; this replica's share of it (the
        optimizer sums the replicas')."""
        del values
        stacked = grads.global_values()
        count = int(stacked[0].shape[0])
        flat = tf.concat([tf.reshape(g, [count, -1]) for g in stacked], axis=1)
        summed = tf.reduce_sum(project_conflicting(flat, self.task_order(count)), axis=0)
        shapes = [g.shape[1:] for g in stacked]
        sizes = [int(shape.num_elements()) for shape in shapes]
        return [tf.reshape(part, shape) / tf.cast(grads.replicas, part.dtype)
                for part, shape in zip(tf.split(summed, sizes), shapes)]

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}
