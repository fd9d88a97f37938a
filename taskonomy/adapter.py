"""Taskonomy for the reproduction harness: ``--adapter=taskonomy.adapter:TaskonomyAdapter``.

::

  python -m tag_tf.experiments.figure3 --adapter=taskonomy.adapter:TaskonomyAdapter \\
      --adapter_args='{"data_dir": "/data/taskonomy"}' --output_dir=runs/taskonomy_fig3

The fields default to ``taskonomy.main``'s flags (``tag.patch``: tasks ``sdntk``, 256 x 256,
batch 96, CoupledSGD lr 0.1 / momentum 0.9 / weight decay 1e-4, PlateauHalving learning
rate, stop below 3e-5 or after 100 epochs, test with the best validation epoch's weights);
the Experiment and Options are built by the same functions as ``python -m taskonomy.main``
(:func:`taskonomy.main.load_data`, :func:`~taskonomy.main.build_experiment`,
:func:`~taskonomy.main.build_options`). A task's error is its test loss (``loss``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Optional, Sequence

from tag_tf.runner import pipeline
from tag_tf.experiments import adapter as adapter_lib
from taskonomy import data
from taskonomy import main as taskonomy_main

ADAPTER_ID = "taskonomy.adapter.TaskonomyAdapter"
# Fields that do not change a training's numbers (left out of settings(), the cache key).
_NOT_IN_SETTINGS = ("verbose",)


@dataclasses.dataclass(frozen=True)
class TaskonomyAdapter:
    """Settings of Taskonomy trainings (every field but ``verbose`` is in :meth:`settings`).

    ``data_dir`` is the Taskonomy root (``rgb/<building>/*.png`` and one folder per task),
    or ``tfrecord_dir`` the output of ``python -m taskonomy.main --mode=convert``. ``tasks``
    are letters (``"sdntk"``) or names. ``steps_per_epoch`` None: the original's rule
    (:func:`taskonomy.data.steps_per_epoch`); ``limit``: at most N images per building;
    ``patience`` < 0 (the original): no early stopping. ``lookahead`` is
    ``taskonomy.main --lookahead``: ``"original"`` records as ``tag.patch``
    (:func:`taskonomy.main.affinity_settings`) and sets ``every_n`` / ``lookahead_rule`` /
    ``divide_by_lr`` left at their defaults.
    """

    data_dir: Optional[str] = None
    tfrecord_dir: Optional[str] = None
    splits_dir: Optional[str] = None
    tasks: str | Sequence[str] = taskonomy_main.TASKS
    image_size: int = data.IMAGE_SIZE
    widths: str = "tag"
    batch_size: int = taskonomy_main.BATCH_SIZE
    eval_batch_size: Optional[int] = None
    learning_rate: float = taskonomy_main.LEARNING_RATE
    momentum: float = taskonomy_main.MOMENTUM
    weight_decay: float = taskonomy_main.WEIGHT_DECAY
    min_learning_rate: float = taskonomy_main.MIN_LEARNING_RATE
    loss_window: int = taskonomy_main.LOSS_WINDOW
    max_loss_window: int = taskonomy_main.MAX_LOSS_WINDOW
    epochs: int = taskonomy_main.EPOCHS
    patience: int = -1
    steps_per_epoch: Optional[int] = None
    limit: Optional[int] = None
    rotate_loss: bool = True
    augment: bool = True
    mixed_precision: bool = False
    seed: int = 0
    every_n: int = 10
    affinity_batch: str = "train"
    lookahead: str = "fixed"
    lookahead_rule: str = "optimizer"
    divide_by_lr: bool = True
    uw_clipped: bool = False
    gradnorm_alpha: float = taskonomy_main.GRADNORM_ALPHA
    strategy: str = "default"  # tf.distribute: default | mirrored | multi_worker
    verbose: int = 0
    name: str = "taskonomy"

    def __post_init__(self):
        object.__setattr__(self, "tasks", tuple(data.parse_tasks(self.tasks)))
        for name in ("data_dir", "tfrecord_dir", "splits_dir"):  # JSON gets no "~" expansion
            if getattr(self, name):
                object.__setattr__(self, name, os.path.expanduser(getattr(self, name)))
        if not self.data_dir and not self.tfrecord_dir:
            raise ValueError("TaskonomyAdapter needs data_dir (or tfrecord_dir).")
        adapter_lib.check_positive(
            self, ("batch_size", "image_size", "epochs", "learning_rate"))
        defaults = taskonomy_main.affinity_settings("fixed")
        given = {k: None if self.lookahead == "original" and getattr(self, k) == v
                 else getattr(self, k) for k, v in defaults.items()}
        for name, value in taskonomy_main.affinity_settings(self.lookahead, **given).items():
            object.__setattr__(self, name, value)

    def settings(self) -> dict:
        """JSON of every field that changes the numbers (part of every cache key)."""
        return adapter_lib.dataclass_settings(self, ADAPTER_ID, _NOT_IN_SETTINGS)

    def _splits(self) -> data.Splits:
        return taskonomy_main.load_data(
            self.data_dir, self.tasks, tfrecord_dir=self.tfrecord_dir,
            splits_dir=self.splits_dir, seed=self.seed, batch_size=self.batch_size,
            eval_batch_size=self.eval_batch_size, image_size=self.image_size,
            augment=self.augment, limit=self.limit)

    def experiment(self) -> pipeline.Experiment:
        """``taskonomy.main``'s Experiment with fresh datasets (and, per network, a fresh
        optimizer and PlateauHalving)."""
        return taskonomy_main.build_experiment(
            self.tasks, self._splits(), seed=self.seed, batch_size=self.batch_size,
            image_size=self.image_size, widths=self.widths, learning_rate=self.learning_rate,
            momentum=self.momentum, weight_decay=self.weight_decay,
            min_learning_rate=self.min_learning_rate, loss_window=self.loss_window,
            max_loss_window=self.max_loss_window, rotate_loss=self.rotate_loss,
            mixed_precision=self.mixed_precision, lookahead=self.lookahead)

    @functools.cached_property
    def _default_steps_per_epoch(self) -> int:
        return self._splits().steps_per_epoch  # lists the training images once

    def options(self) -> pipeline.Options:
        """``taskonomy.main``'s training Options (no selection: the harness selects)."""
        return taskonomy_main.build_options(
            epochs=self.epochs, patience=self.patience, seed=self.seed,
            steps_per_epoch=self.steps_per_epoch or self._default_steps_per_epoch,
            verbose=self.verbose, every_n=self.every_n, affinity_batch=self.affinity_batch,
            lookahead_rule=self.lookahead_rule, divide_by_lr=self.divide_by_lr,
            uw_clipped=self.uw_clipped, gradnorm_alpha=self.gradnorm_alpha,
            strategy=self.strategy)

    def replicate(self, k: int) -> TaskonomyAdapter:
        """The adapter of the ``k``-th further training seed (harness ``--seeds``): seed
        ``seed + k`` changes the initialisation and the training data's order (and flips),
        never the examples or the splits."""
        return adapter_lib.seed_replicate(self, k)

    def vary(self, *, batch_size_scale: float = 1.0,
             learning_rate_scale: float = 1.0) -> TaskonomyAdapter:
        """A new adapter with the batch size (rounded, >= 1) and learning rate scaled.

        ``min_learning_rate`` scales with the learning rate, so training still stops after
        the same number of PlateauHalving halvings; the plateau window stays in examples.
        """
        adapter_lib.check_scales(batch_size_scale, learning_rate_scale)
        return dataclasses.replace(
            self, batch_size=adapter_lib.scaled_batch_size(self.batch_size, batch_size_scale),
            learning_rate=self.learning_rate * learning_rate_scale,
            min_learning_rate=self.min_learning_rate * learning_rate_scale)
