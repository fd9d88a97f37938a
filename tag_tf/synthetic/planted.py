"""Synthetic multi-task regression with planted task clusters (the built-in default data).

Every cluster c has its own latent features ``z_c = tanh(x @ P_c)``; each task of the
cluster regresses a task-specific mix of them, ``y_t = z_c @ a_t + noise`` where the
``a_t`` of one cluster are small perturbations of a shared unit direction. Tasks in one
cluster therefore want the same trunk features (positive affinity), while clusters,
whose projections are partly anti-aligned, compete for a narrow shared bottleneck
(affinity near zero or negative). The ground truth grouping is ``cluster_of``.

Why every cluster is learnable (the demo relies on it, on any CPU and seed): each task's
clean signal is scaled to unit variance, so no cluster's gradient dominates the shared
trunk; ``spread`` is relative to the unit cluster direction, so tasks of one cluster agree
to the same degree for every seed (a short random centre made them conflict); and
:func:`planted_network` uses ``tanh`` units, which cannot die like a ReLU in the 4-unit
bottleneck (a dead unit there starved a whole cluster, task loss stuck at its variance).
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

_REFERENCE_EXAMPLES = 16384  # inputs drawn to measure each task's signal variance


class PlantedTasks(NamedTuple):
    """A planted-cluster problem: task names, their clusters and the generator's parameters."""

    tasks: list[str]
    cluster_of: list[int]
    projections: np.ndarray  # [clusters, input_dim, latent_dim]
    mixes: np.ndarray  # [tasks, latent_dim]
    noise: float

    @property
    def input_dim(self) -> int:
        return self.projections.shape[1]

    def sample(self, num_examples: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Draws ``num_examples`` inputs and every task's target, reproducibly."""
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(num_examples, self.input_dim)).astype(np.float32)
        latents = np.tanh(np.einsum("bi,cil->cbl", x, self.projections))
        y = {}
        for t, (task, cluster) in enumerate(zip(self.tasks, self.cluster_of)):
            clean = latents[cluster] @ self.mixes[t]
            y[task] = (clean + self.noise * rng.normal(size=num_examples))[:, None].astype(
                np.float32)
        return x, y

    def dataset(self, num_examples: int, *, batch_size: int, seed: int,
                shuffle: bool = True, shuffle_seed: int | None = None) -> tf.data.Dataset:
        """A batched ``tf.data.Dataset`` of ``(x, {task: y})``.

        ``seed`` draws the examples; ``shuffle_seed`` (default ``seed``) orders them, so
        re-runs on the same data can differ in their data order only.
        """
        x, y = self.sample(num_examples, seed)
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        if shuffle:
            ds = ds.shuffle(num_examples, seed=seed if shuffle_seed is None else shuffle_seed,
                            reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def planted_tasks(num_tasks: int = 9, num_clusters: int = 3, *, input_dim: int = 16,
                  latent_dim: int = 3, anti_alignment: float = 0.7, spread: float = 0.1,
                  noise: float = 0.1, seed: int = 0, unit_variance: bool = True) -> PlantedTasks:
    """Makes a planted-cluster problem; tasks are dealt round-robin into clusters.

    Args:
      num_tasks: number of tasks (named ``task_0``...).
      num_clusters: number of planted clusters (1 <= clusters <= tasks).
      input_dim: input features.
      latent_dim: latent features per cluster.
      anti_alignment: how much each cluster's projection opposes the previous one's.
      spread: per-task perturbation of the cluster's unit mixing direction (expected
        norm of the perturbation; 0 makes a cluster's tasks equal up to noise).
      noise: target noise standard deviation.
      seed: seed of the generator's parameters.
      unit_variance: scale each task's clean signal to unit variance (measured on a fixed
        reference sample), so the trivial loss is about ``1 + noise**2`` for every task.
    """
    if num_tasks < 2:
        raise ValueError(f"Need at least 2 tasks. Received: num_tasks={num_tasks}")
    if not 1 <= num_clusters <= num_tasks:
        raise ValueError(f"num_clusters must be in [1, num_tasks]. Received: "
                         f"num_clusters={num_clusters}, num_tasks={num_tasks}")
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(num_clusters, input_dim, latent_dim)) / np.sqrt(input_dim)
    projections = base.copy()
    for c in range(1, num_clusters):
        projections[c] = base[c] - anti_alignment * base[c - 1]
    projections *= 2.0
    cluster_of = [t % num_clusters for t in range(num_tasks)]
    centers = rng.normal(size=(num_clusters, latent_dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    mixes = np.stack([centers[c] + spread * rng.normal(size=latent_dim) / np.sqrt(latent_dim)
                      for c in cluster_of])
    tasks = [f"task_{t}" for t in range(num_tasks)]
    if unit_variance:
        reference = rng.normal(size=(_REFERENCE_EXAMPLES, input_dim))
        latents = np.tanh(np.einsum("bi,cil->cbl", reference, projections))
        clean = np.stack([latents[c] @ mixes[t] for t, c in enumerate(cluster_of)])
        mixes = mixes / clean.std(axis=1, keepdims=True)
    return PlantedTasks(tasks, cluster_of, projections, mixes, noise)


SHARED_LAYERS = ("shared_1", "shared_2")


def planted_network(tasks: list[str], input_dim: int, *, hidden: int = 32,
                    bottleneck: int = 4, head_hidden: int = 8, seed: int = 0,
                    activation: str = "tanh") -> keras.Model:
    """A trunk with a narrow shared bottleneck and a small head per task.

    The shared layers are :data:`SHARED_LAYERS`; each head's output is named by its task.
    ``activation`` is used by every hidden layer; the default ``tanh`` has no dead units.
    """
    init = lambda k: keras.initializers.GlorotUniform(seed=seed * 1000 + k)  # noqa: E731
    inputs = keras.Input((input_dim,), name="x")
    h = keras.layers.Dense(hidden, activation=activation, kernel_initializer=init(0),
                           name=SHARED_LAYERS[0])(inputs)
    h = keras.layers.Dense(bottleneck, activation=activation, kernel_initializer=init(1),
                           name=SHARED_LAYERS[1])(h)
    outputs = {}
    for k, task in enumerate(tasks):
        head = keras.layers.Dense(head_hidden, activation=activation,
                                  kernel_initializer=init(2 + 2 * k), name=f"{task}_hidden")(h)
        outputs[task] = keras.layers.Dense(1, kernel_initializer=init(3 + 2 * k), name=task)(head)
    return keras.Model(inputs, outputs, name="planted_network")
