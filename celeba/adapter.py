"""CelebA for the reproduction harness: ``--adapter=celeba.adapter:CelebAAdapter``.

::

  python -m tag_tf.experiments.figure3 --adapter=celeba.adapter:CelebAAdapter \\
      --adapter_args='{"data_dir": "~/tfds"}' --output_dir=runs/celeba_fig3

The fields default to ``celeba.main``'s flags (the paper's 9 attributes, 64 x 64 images,
batch 256, SGD 5e-4 with momentum 0.9 halved every 15 epochs, at most 100 epochs,
patience 10); the Experiment and Options are built by the same functions as
``python -m celeba.main`` (:func:`celeba.main.build_experiment`, :func:`build_options`).
A task's error is its test classification error in % (``error_percent``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

from celeba import data
from celeba import main as celeba_main
from tag_tf.runner import pipeline
from tag_tf.experiments import adapter as adapter_lib

ADAPTER_ID = "celeba.adapter.CelebAAdapter"
# Fields that do not change a training's numbers (left out of settings(), the cache key).
_NOT_IN_SETTINGS = ("verbose",)


@dataclasses.dataclass(frozen=True)
class CelebAAdapter:
    """Settings of CelebA trainings (every field but ``verbose`` is in :meth:`settings`).

    ``tasks``: attribute names, or ``"all"`` for the 40. ``data_dir`` holds the TFDS ``celeb_a`` prepared by ``python -m celeba.main
    --mode=prepare`` (None: TFDS's default directory). ``limit`` and ``steps_per_epoch``
    shrink the data / epochs for debugging and tests; ``patience`` < 0 disables early
    stopping; ``cache`` is ``celeba.main --cache`` (``"memory"`` or a file prefix).
    ``lookahead`` is ``celeba.main --lookahead``: ``"original"`` records as the notebook
    (``every_n`` 1, its lookahead step; :func:`celeba.main.affinity_settings`) and sets
    ``every_n`` / ``lookahead_rule`` / ``divide_by_lr`` left at their defaults.
    """

    data_dir: Optional[str] = None
    tasks: Sequence[str] = data.DEFAULT_TASKS
    image_size: int = data.IMAGE_SIZE
    batch_size: int = celeba_main.BATCH_SIZE
    learning_rate: float = celeba_main.LEARNING_RATE
    lr_halving_epochs: int = celeba_main.LR_HALVING_EPOCHS
    epochs: int = celeba_main.EPOCHS
    patience: int = celeba_main.PATIENCE
    steps_per_epoch: Optional[int] = None
    limit: Optional[int] = None
    shuffle_buffer: Optional[int] = None
    cache: Optional[str] = None
    seed: int = 0
    every_n: int = 10
    affinity_batch: str = "train"
    lookahead: str = "fixed"
    lookahead_rule: str = "optimizer"
    divide_by_lr: bool = True
    affinity_epochs: str = "until_best"
    uw_clipped: bool = True
    gradnorm_alpha: float = celeba_main.GRADNORM_ALPHA
    strategy: str = "default"  # tf.distribute: default | mirrored | multi_worker
    verbose: int = 0
    name: str = "celeba"

    def __post_init__(self):
        # "all" (or ["all"]) -> the 40 attributes; an empty list stays an error.
        tasks = data.resolve_tasks(self.tasks) if self.tasks else data.check_tasks(self.tasks)
        object.__setattr__(self, "tasks", tuple(tasks))
        if self.data_dir:  # JSON arguments get no shell "~" expansion
            object.__setattr__(self, "data_dir", os.path.expanduser(self.data_dir))
        adapter_lib.check_positive(
            self, ("batch_size", "image_size", "epochs", "learning_rate"))
        defaults = celeba_main.affinity_settings("fixed")
        given = {k: None if self.lookahead == "original" and getattr(self, k) == v
                 else getattr(self, k) for k, v in defaults.items()}
        for name, value in celeba_main.affinity_settings(self.lookahead, **given).items():
            object.__setattr__(self, name, value)

    def settings(self) -> dict:
        """JSON of every field that changes the numbers (part of every cache key)."""
        return adapter_lib.dataclass_settings(self, ADAPTER_ID, _NOT_IN_SETTINGS)

    def experiment(self) -> pipeline.Experiment:
        """``celeba.main``'s Experiment, with fresh datasets on every call."""
        return celeba_main.build_experiment(
            data_dir=self.data_dir, tasks=self.tasks, seed=self.seed,
            batch_size=self.batch_size, image_size=self.image_size,
            learning_rate=self.learning_rate, lr_halving_epochs=self.lr_halving_epochs,
            cache=self.cache, shuffle_buffer=self.shuffle_buffer, limit=self.limit,
            lookahead=self.lookahead)

    def options(self) -> pipeline.Options:
        """``celeba.main``'s training Options (no selection: the harness selects)."""
        return celeba_main.build_options(
            epochs=self.epochs, patience=self.patience, seed=self.seed,
            steps_per_epoch=self.steps_per_epoch, verbose=self.verbose,
            every_n=self.every_n, affinity_batch=self.affinity_batch,
            lookahead_rule=self.lookahead_rule, divide_by_lr=self.divide_by_lr,
            affinity_epochs=self.affinity_epochs, uw_clipped=self.uw_clipped,
            gradnorm_alpha=self.gradnorm_alpha,
            strategy=self.strategy)

    def replicate(self, k: int) -> CelebAAdapter:
        """The adapter of the ``k``-th further training seed (harness ``--seeds``): seed
        ``seed + k`` changes the initialisation and the training data's order (and flips),
        never the examples or the splits."""
        return adapter_lib.seed_replicate(self, k)

    def vary(self, *, batch_size_scale: float = 1.0,
             learning_rate_scale: float = 1.0) -> CelebAAdapter:
        """A new adapter with the batch size (rounded, >= 1) and learning rate scaled (the
        halving schedule keeps its epochs)."""
        adapter_lib.check_scales(batch_size_scale, learning_rate_scale)
        return dataclasses.replace(
            self, batch_size=adapter_lib.scaled_batch_size(self.batch_size, batch_size_scale),
            learning_rate=self.learning_rate * learning_rate_scale)
