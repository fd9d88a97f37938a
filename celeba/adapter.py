"""CelebA for the reproduction harness: ``--adapter=celeba.adapter:CelebAAdapter``.

::

  python -m tag_tf.experiments.figure3 --adapter=celeba.adapter:CelebAAdapter \\
      --adapter_args='{"data_dir": "~/tfds"}' --output_dir=runs/celeba_fig3

The fields default to :mod:`celeba.presets` (the paper's 9 attributes, 64 x 64 images,
batch 256, SGD 5e-4 with momentum 0.9 halved every 15 epochs, at most 100 epochs,
patience 10); the Experiment and RunConfig are built by the same functions as
``python -m celeba.main`` (:func:`celeba.presets.configure`,
:func:`celeba.experiment.build_experiment`). A task's error is its test classification
error in % (``error_percent``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional, Sequence

from celeba import data
from celeba import experiment as celeba_experiment
from celeba import presets
from tag_tf import runner
from tag_tf.cli import flags as flags_lib
from tag_tf.experiments import adapter as adapter_lib

ADAPTER_ID = "celeba.adapter.CelebAAdapter"
# Fields that do not change a training's numbers (left out of settings(), the cache key).
_NOT_IN_SETTINGS = ("verbose",)
_FIXED_SETTINGS, _FIXED = presets.PRESETS["fixed"].settings, presets.PRESETS["fixed"].run
_RUN_FIELDS = ("epochs", "patience", "steps_per_epoch", "seed", "every_n", "affinity_batch",
               "lookahead_rule", "divide_by_lr", "affinity_epochs", "uw_clipped",
               "gradnorm_alpha", "strategy", "verbose")


@dataclasses.dataclass(frozen=True)
class CelebAAdapter:
    """Settings of CelebA trainings (every field but ``verbose`` is in :meth:`settings`).

    ``tasks``: attribute names, or ``"all"`` for the 40. ``data_dir`` holds the TFDS
    ``celeb_a`` prepared by ``python -m celeba.main --mode=prepare`` (None: TFDS's default
    directory). ``limit`` and ``steps_per_epoch`` shrink the data / epochs for debugging and
    tests; ``patience`` < 0 disables early stopping; ``cache`` is ``celeba.main --cache``
    (``"memory"`` or a file prefix). ``lookahead`` is the preset (``celeba.main
    --lookahead``): ``"original"`` records as the notebook (``every_n`` 1, its lookahead
    step) and sets ``every_n`` / ``lookahead_rule`` / ``divide_by_lr`` left at their
    defaults.
    """

    data_dir: Optional[str] = None
    tasks: Sequence[str] = data.DEFAULT_TASKS
    image_size: int = _FIXED_SETTINGS.image_size
    batch_size: int = _FIXED_SETTINGS.batch_size
    learning_rate: float = _FIXED_SETTINGS.learning_rate
    lr_halving_epochs: int = _FIXED_SETTINGS.lr_halving_epochs
    epochs: int = _FIXED.training.epochs
    patience: int = _FIXED.training.patience
    steps_per_epoch: Optional[int] = None
    limit: Optional[int] = None
    shuffle_buffer: Optional[int] = None
    cache: Optional[str] = None
    seed: int = 0
    every_n: int = _FIXED.affinity.every_n
    affinity_batch: str = _FIXED.affinity.batch
    lookahead: str = "fixed"
    lookahead_rule: str = _FIXED.affinity.rule
    divide_by_lr: bool = _FIXED.affinity.divide_by_lr
    affinity_epochs: str = _FIXED.selection.affinity_epochs
    uw_clipped: bool = _FIXED.training.uw_clipped
    gradnorm_alpha: float = _FIXED.training.gradnorm_alpha
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
        _, config = self._configure()
        for name in presets.PRESETS[self.lookahead].pinned:  # the preset's values
            object.__setattr__(self, name, flags_lib.get(config, name))

    def _configure(self) -> tuple[presets.CelebASettings, runner.RunConfig]:
        fields = dataclasses.asdict(self)
        pinned = presets.PRESETS.get(self.lookahead, presets.PRESETS["fixed"]).pinned
        # A pinned field left at the default preset's value takes the chosen preset's.
        given = {k: fields[k] for k in _RUN_FIELDS
                 if not (k in pinned and fields[k] == flags_lib.get(_FIXED, k))}
        given["patience"] = None if self.patience is None or self.patience < 0 else self.patience
        own = {f.name for f in dataclasses.fields(presets.CelebASettings)} - {"lookahead"}
        return presets.configure(self.lookahead, **{k: fields[k] for k in own}, **given)

    def settings(self) -> dict:
        """JSON of every field that changes the numbers (part of every cache key)."""
        return adapter_lib.dataclass_settings(self, ADAPTER_ID, _NOT_IN_SETTINGS)

    def experiment(self) -> runner.Experiment:
        """``celeba.main``'s Experiment, with fresh datasets on every call."""
        settings, _ = self._configure()
        return celeba_experiment.build_experiment(settings, seed=self.seed)

    def config(self) -> runner.RunConfig:
        """``celeba.main``'s RunConfig (no selection: the harness selects)."""
        _, config = self._configure()
        return config.replace(budgets=())

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
