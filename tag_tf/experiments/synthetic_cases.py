"""Synthetic problems on which the choice of task groups really matters.

In :mod:`tag_tf.synthetic`'s planted clusters (the harness default) every task has plenty
of clean data, so single-task training beats every grouping and grouping studies measure
noise. :class:`HelpingTasks` plants the structure the grouping methods are meant to find:

* ``a_clean`` / ``a_few``: the same target function of family A; ``a_few`` is labelled
  on only 1 training example in 16 -- a *one-way helper* (``a_clean``'s gradients carry
  the features ``a_few`` cannot learn from its few labels);
* ``b_1`` / ``b_2``: the same target function of family B, each labelled on a different
  quarter of the examples -- a *mutually helping pair* (together they see twice the data);
* ``c``: family C, a third function of the same inputs that *competes* with A and B for
  the narrow shared bottleneck (a network carrying two or three families underfits);
* ``noisy``: a weak C signal in strong label noise (the *noisy task*).

A family's target is ``tanh(x @ P_F) @ m_F`` (two latent features); unlabelled examples
carry sample weight 0. The network is :func:`tag_tf.synthetic.planted_network` with a
bottleneck of ``bottleneck`` units (``activation``, default tanh: a ReLU bottleneck or
head can die on some seeds), enough for one family but not for three.

:class:`HelpingTasksAdapter` is a harness adapter (:class:`tag_tf.experiments.adapter.
Adapter`) for it. Its ``seed`` varies the network initialisation and the shuffling only;
the problem and the data are fixed by ``problem_seed``, so trainings of different seeds
can be pooled per task group.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tag_tf.experiments import adapter as adapter_lib

# task -> (family, noise standard deviation, signal scale, label period, label phase):
# training example i is labelled for the task iff i % period == phase.
HELPING_TASKS = {
    "a_clean": ("A", 0.1, 1.0, 1, 0),
    "a_few": ("A", 0.1, 1.0, 16, 0),
    "b_1": ("B", 0.3, 1.0, 4, 0),
    "b_2": ("B", 0.3, 1.0, 4, 1),
    "c": ("C", 0.1, 1.0, 1, 0),
    "noisy": ("C", 0.7, 0.5, 1, 0),
}
FAMILIES = ("A", "B", "C")
# The adapter's default tasks: 5 (31 task groups), small enough for the exact ground truth
# on a shared 2-core machine; add "noisy" for 6 (63 groups).
DEFAULT_TASKS = ("a_clean", "a_few", "b_1", "b_2", "c")


class HelpingTasks(NamedTuple):
    """The generator: per-family input projections and per-task noise / scale / labels."""

    tasks: list[str]
    family_of: list[str]
    noise: list[float]
    scale: list[float]
    label_period: list[int]
    label_phase: list[int]
    projections: np.ndarray  # [families, input_dim, 2]
    mixes: np.ndarray  # [families, 2]

    @property
    def input_dim(self) -> int:
        return self.projections.shape[1]

    def clean(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Each task's noiseless target for inputs ``x``."""
        latents = np.tanh(np.einsum("bi,fil->fbl", x, self.projections))
        out = {}
        for task, family, scale in zip(self.tasks, self.family_of, self.scale):
            f = FAMILIES.index(family)
            out[task] = scale * latents[f] @ self.mixes[f]
        return out

    def sample(self, num_examples: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``num_examples`` inputs and every task's noisy target, reproducibly."""
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(num_examples, self.input_dim)).astype(np.float32)
        clean = self.clean(x)
        y = {t: (clean[t] + s * rng.normal(size=num_examples))[:, None].astype(np.float32)
             for t, s in zip(self.tasks, self.noise)}
        return x, y

    def label_weights(self, num_examples: int) -> dict[str, np.ndarray]:
        """Sample weights of the training set: 1 where the task is labelled, else 0."""
        index = np.arange(num_examples)
        return {t: (index % p == q).astype(np.float32)
                for t, p, q in zip(self.tasks, self.label_period, self.label_phase)}

    def dataset(self, num_examples: int, *, batch_size: int, data_seed: int,
                shuffle_seed: int, shuffle: bool = True,
                partial_labels: bool = False) -> tf.data.Dataset:
        """Batched ``(x, {task: y})`` (``partial_labels``: ``(x, y, {task: weight})``);
        the examples depend on ``data_seed`` only."""
        x, y = self.sample(num_examples, data_seed)
        element = (x, y, self.label_weights(num_examples)) if partial_labels else (x, y)
        ds = tf.data.Dataset.from_tensor_slices(element)
        if shuffle:
            ds = ds.shuffle(num_examples, seed=shuffle_seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def helping_tasks(*, input_dim: int = 8, seed: int = 0, tasks: dict = None) -> HelpingTasks:
    """Makes the problem. ``tasks`` maps task -> (family, noise std, scale, label period,
    label phase); default :data:`HELPING_TASKS`."""
    tasks = dict(HELPING_TASKS if tasks is None else tasks)
    if len(tasks) < 2:
        raise ValueError(f"Need at least 2 tasks. Received: {sorted(tasks)}")
    bad = {t: v for t, v in tasks.items()
           if len(v) != 5 or v[0] not in FAMILIES or v[1] < 0 or not 0 <= v[4] < v[3]}
    if bad:
        raise ValueError(f"Each task needs (family in {FAMILIES}, noise >= 0, scale, "
                         f"period >= 1, 0 <= phase < period). Received: {bad}")
    rng = np.random.default_rng(seed)
    projections = 1.5 * rng.normal(size=(len(FAMILIES), input_dim, 2)) / np.sqrt(input_dim)
    mixes = np.array([[1.0, 0.5]] * len(FAMILIES)) * rng.choice([-1.0, 1.0], (len(FAMILIES), 2))
    names = list(tasks)
    return HelpingTasks(names, [tasks[t][0] for t in names],
                        [float(tasks[t][1]) for t in names], [float(tasks[t][2]) for t in names],
                        [int(tasks[t][3]) for t in names], [int(tasks[t][4]) for t in names],
                        projections, mixes)


@dataclasses.dataclass
class HelpingTasksAdapter(adapter_lib.PlantedNetworkAdapter):
    """Harness adapter for :class:`HelpingTasks` (error: test MSE per task).

    ``seed`` changes the network initialisation and the data order; ``problem_seed`` the
    problem and its examples. ``tasks``: which of :data:`HELPING_TASKS` (default
    :data:`DEFAULT_TASKS`; e.g. 3 tasks for fast tests, all 6 with ``noisy``).
    """

    train_examples: int = 512
    validation_examples: int = 256
    test_examples: int = 2048
    batch_size: int = 32
    learning_rate: float = 0.05
    epochs: int = 8
    hidden: int = 16
    bottleneck: int = 2
    head_hidden: int = 4
    input_dim: int = 8
    tasks: tuple = DEFAULT_TASKS
    problem_seed: int = 0
    seed: int = 0
    activation: str = "tanh"
    name: str = "helping_tasks"

    def __post_init__(self):
        adapter_lib.check_positive(self, ("train_examples", "validation_examples",
                                          "test_examples", "batch_size", "learning_rate",
                                          "epochs", "hidden", "bottleneck", "head_hidden",
                                          "input_dim"))
        self.tasks = tuple(self.tasks)
        unknown = [t for t in self.tasks if t not in HELPING_TASKS]
        if unknown or len(self.tasks) < 2:
            raise ValueError(f"tasks must be at least 2 of {list(HELPING_TASKS)}. "
                             f"Received: {list(self.tasks)}")
        self.problem = helping_tasks(input_dim=self.input_dim, seed=self.problem_seed,
                                     tasks={t: HELPING_TASKS[t] for t in self.tasks})

    def settings(self) -> dict:
        return adapter_lib.dataclass_settings(
            self, "tag_tf.experiments.synthetic_cases.HelpingTasksAdapter")

    def training_seed(self) -> int:
        return self.seed

    def replicate(self, k: int) -> "HelpingTasksAdapter":
        return dataclasses.replace(self, seed=self.seed + int(k))

    def datasets(self) -> tuple:
        problem, seed, data_seed = self.problem, self.seed, 1000 * self.problem_seed
        data = lambda n, k, train: problem.dataset(  # noqa: E731
            n, batch_size=self.batch_size, data_seed=data_seed + k, shuffle_seed=seed + k,
            shuffle=train, partial_labels=train)
        return (data(self.train_examples, 1, True), data(self.validation_examples, 2, False),
                data(self.test_examples, 3, False))
