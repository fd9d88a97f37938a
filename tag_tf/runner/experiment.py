"""What a dataset (or a user's own model and data) tells the runner: :class:`Experiment`."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence

import keras
import tensorflow as tf

from tag_tf.io.bad_files import BadFiles


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything dataset-specific about an experiment.

    Attributes:
      tasks: the task names (network output names; label keys of the datasets).
      network_fn: ``network_fn(tasks) -> keras.Model`` with one output per task, named by
        task; called once per trained network (after seeding).
      shared: the layers (names) every network shares: TAG's theta_s.
      loss_fn: ``loss_fn(task)`` -> a Keras loss (name, ``Loss`` or callable) for the task.
      train_data: batches of ``(x, {task: y})`` holding at least every task's labels
        (shuffled by the dataset itself).
      validation_data: the same for early stopping (and ``affinity_batch="validation"``).
      test_data: the same for the final per-task error; None evaluates on validation.
      optimizer_fn: ``optimizer_fn() -> keras.optimizers.Optimizer`` (a fresh one per network).
      callbacks_fn: ``callbacks_fn() -> list`` of extra Keras callbacks per network, e.g.
        the learning-rate schedule.
      error_fn: ``error_fn(task) -> keras.metrics.Metric`` whose result is the task's test
        error (lower is better; e.g. classification error in %). None: the task's loss.
      error_name: what the error is, for reports (e.g. ``"error_percent"``).
      gradnorm_layer: GradNorm's shared layer (None: :class:`tag_tf.GradNorm`'s default).
      gradnorm_fn: ``gradnorm_fn(alpha)`` -> the ``gradnorm`` mode's weighting, e.g. a
        :class:`tag_tf.RepresentationGradNorm`; None: ``tag_tf.GradNorm(alpha=alpha,
        layer=gradnorm_layer)``.
      for_seed: ``for_seed(seed) -> Experiment``: the same experiment with everything the
        dataset seeds itself (initialisers, data order, augmentation) seeded by ``seed``;
        used for ``RunConfig.seeds > 1``. None: only the training seed changes between the
        trainings, which varies nothing that ``network_fn`` or the data seed themselves.
      train_data_fn: ``train_data_fn(epoch)`` -> epoch ``epoch``'s training batches, the
        same however often the dataset is iterated (a shuffle seeded by the epoch with
        ``reshuffle_each_iteration=False``). When given, epoch k trains on it instead of
        ``train_data``: what makes ``backup_dir`` resumes exact under a ``tf.distribute``
        strategy (:mod:`tag_tf.training.resume`).
      settings: the dataset's own settings (JSON), recorded in ``results.json`` as
        ``"experiment"`` beside the run's config.
      bad_input_files: the input files the dataset dropped as missing or unreadable (its
        loader's ``skip_bad_files``), a :class:`tag_tf.io.bad_files.BadFiles`; when it
        counts any, the run logs a warning, and ``results.json`` (``"bad_input_files"``)
        and the summary report them. None or empty: nothing was dropped.
    """

    tasks: Sequence[str]
    network_fn: Callable[[Sequence[str]], keras.Model]
    shared: Sequence[str]
    loss_fn: Callable[[str], Any]
    train_data: tf.data.Dataset
    validation_data: tf.data.Dataset
    test_data: Optional[tf.data.Dataset]
    optimizer_fn: Callable[[], keras.optimizers.Optimizer]
    callbacks_fn: Callable[[], list] = list
    error_fn: Optional[Callable[[str], keras.metrics.Metric]] = None
    error_name: str = "loss"
    gradnorm_layer: Optional[str] = None
    gradnorm_fn: Optional[Callable[[float], Any]] = None
    for_seed: Optional[Callable[[int], "Experiment"]] = None
    train_data_fn: Optional[Callable[[int], tf.data.Dataset]] = None
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    bad_input_files: Optional[BadFiles] = None
