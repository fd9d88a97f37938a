"""Taskonomy for the reproduction harness: ``--adapter=taskonomy.adapter:TaskonomyAdapter``.

::

  python -m tag_tf.experiments.figure3 --adapter=taskonomy.adapter:TaskonomyAdapter \\
      --adapter_args='{"data_dir": "/data/taskonomy"}' --output_dir=runs/taskonomy_fig3

The fields default to ``taskonomy.main``'s flags (``tag.patch``: tasks ``sdntk``, 256 x 256,
batch 96, CoupledSGD lr 0.1 / momentum 0.9 / weight decay 1e-4, PlateauHalving learning
rate, stop below 3e-5 or after 100 epochs, test with the best validation epoch's weights);
the Experiment and RunConfig are built by the same functions as ``python -m taskonomy.main``
(:func:`taskonomy.presets.configure`, :func:`taskonomy.experiment.load_data`,
:func:`~taskonomy.experiment.build_experiment`). A task's error is its test loss (``loss``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Optional, Sequence

from tag_tf import runner
from tag_tf.cli import flags as flags_lib
from tag_tf.experiments import adapter as adapter_lib
from taskonomy import data
from taskonomy import experiment as taskonomy_experiment
from taskonomy import presets

ADAPTER_ID = "taskonomy.adapter.TaskonomyAdapter"
# Fields that do not change a training's numbers (left out of settings(), the cache key).
_NOT_IN_SETTINGS = ("verbose",)
_FIXED_SETTINGS, _FIXED = presets.PRESETS["fixed"].settings, presets.PRESETS["fixed"].run
_RUN_FIELDS = ("epochs", "steps_per_epoch", "seed", "every_n", "affinity_batch",
               "lookahead_rule", "divide_by_lr", "uw_clipped", "gradnorm_alpha", "strategy",
               "mixed_precision", "verbose")


@dataclasses.dataclass(frozen=True)
class TaskonomyAdapter:
    """Settings of Taskonomy trainings (every field but ``verbose`` is in :meth:`settings`).

    ``data_dir`` is the Taskonomy root (``rgb/<building>/*.png`` and one folder per task),
    or ``tfrecord_dir`` the output of ``python -m taskonomy.main --mode=convert``. ``tasks``
    are letters (``"sdntk"``) or names. ``steps_per_epoch`` None: the original's rule
    (:func:`taskonomy.data.steps_per_epoch`); ``limit``: at most N images per building;
    ``patience`` < 0 (the original): no early stopping. ``lookahead`` is
    the preset (``taskonomy.main --lookahead``): ``"original"`` records as ``tag.patch``
    and sets ``every_n`` / ``lookahead_rule`` / ``divide_by_lr`` left at their defaults.
    """

    data_dir: Optional[str] = None
    tfrecord_dir: Optional[str] = None
    splits_dir: Optional[str] = None
    tasks: str | Sequence[str] = _FIXED_SETTINGS.tasks
    image_size: int = _FIXED_SETTINGS.image_size
    widths: str = _FIXED_SETTINGS.widths
    batch_size: int = _FIXED_SETTINGS.batch_size
    eval_batch_size: Optional[int] = None
    learning_rate: float = _FIXED_SETTINGS.learning_rate
    momentum: float = _FIXED_SETTINGS.momentum
    weight_decay: float = _FIXED_SETTINGS.weight_decay
    min_learning_rate: float = _FIXED_SETTINGS.min_learning_rate
    loss_window: int = _FIXED_SETTINGS.loss_window
    max_loss_window: int = _FIXED_SETTINGS.max_loss_window
    epochs: int = _FIXED.training.epochs
    patience: int = _FIXED_SETTINGS.patience
    steps_per_epoch: Optional[int] = None
    limit: Optional[int] = None
    rotate_loss: bool = _FIXED_SETTINGS.rotate_loss
    augment: bool = _FIXED_SETTINGS.augment
    mixed_precision: bool = False
    seed: int = 0
    every_n: int = _FIXED.affinity.every_n
    affinity_batch: str = _FIXED.affinity.batch
    lookahead: str = "fixed"
    lookahead_rule: str = _FIXED.affinity.rule
    divide_by_lr: bool = _FIXED.affinity.divide_by_lr
    uw_clipped: bool = _FIXED.training.uw_clipped
    gradnorm_alpha: float = _FIXED.training.gradnorm_alpha
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
        _, config = self._configure()
        for name in presets.PRESETS[self.lookahead].pinned:  # the preset's values
            object.__setattr__(self, name, flags_lib.get(config, name))

    def _configure(self) -> tuple[presets.TaskonomySettings, runner.RunConfig]:
        fields = dataclasses.asdict(self)
        pinned = presets.PRESETS.get(self.lookahead, presets.PRESETS["fixed"]).pinned
        # A pinned field left at the default preset's value takes the chosen preset's.
        given = {k: fields[k] for k in _RUN_FIELDS
                 if not (k in pinned and fields[k] == flags_lib.get(_FIXED, k))}
        # skip_bad_files stays False: the harness stops on a bad input file, naming it.
        own = {f.name for f in dataclasses.fields(presets.TaskonomySettings)} - {
            "lookahead", "skip_bad_files"}
        settings = {**{k: fields[k] for k in own}, "tasks": ",".join(self.tasks)}
        return presets.configure(self.lookahead, **settings, **given)

    def settings(self) -> dict:
        """JSON of every field that changes the numbers (part of every cache key)."""
        return adapter_lib.dataclass_settings(self, ADAPTER_ID, _NOT_IN_SETTINGS)

    def _splits(self) -> data.Splits:
        settings, _ = self._configure()
        return taskonomy_experiment.load_data(settings, seed=self.seed)

    def experiment(self) -> runner.Experiment:
        """``taskonomy.main``'s Experiment with fresh datasets (and, per network, a fresh
        optimizer and PlateauHalving)."""
        settings, _ = self._configure()
        return taskonomy_experiment.build_experiment(settings, self._splits(), seed=self.seed,
                                                     mixed_precision=self.mixed_precision)

    @functools.cached_property
    def _default_steps_per_epoch(self) -> int:
        return self._splits().steps_per_epoch  # lists the training images once

    def config(self) -> runner.RunConfig:
        """``taskonomy.main``'s RunConfig (no selection: the harness selects)."""
        _, config = self._configure()
        return config.replace(budgets=(), steps_per_epoch=self.steps_per_epoch
                              or self._default_steps_per_epoch)

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
