"""Every configuration of the CelebA experiment, and every default, in one file.

A configuration is the dataset's own settings (:class:`CelebASettings`: data, input size,
optimiser, learning-rate schedule) plus the runner's :class:`tag_tf.runner.RunConfig`
(training, TAG's recording, selection, runtime). ``python -m celeba.main`` starts from the
preset ``--lookahead`` names and applies the flags given on the command line as overrides;
the harness adapter (:mod:`celeba.adapter`) does the same with its fields.

Presets (:data:`PRESETS`):

* ``fixed`` (the default): the notebook's hyper-parameters (google-research
  ``tag/celeba/CelebA.ipynb``); TAG recorded every 10 steps with the optimiser's own
  lookahead step (SGD momentum 0.9) and divided by the learning rate, as the original code
  scales its gains. Note the dataset default ``rule="optimizer", divide_by_lr=True`` where
  the library's :class:`tag_tf.AffinityConfig` defaults are ``rule="sgd",
  divide_by_lr=False`` (Eq. 1 exactly).
* ``original``: the notebook's own lookahead, as its published numbers were made: every
  step (``train_step`` runs on every batch), and a lookahead that adds the whole velocity
  (see :data:`NOTEBOOK_LOOKAHEAD_MOMENTUM`).
* ``paper``: TAG as the paper writes it, Eq. 1 (``theta_s - lr * grad``, no division by the
  learning rate), every 10 steps; the same training.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

from tag_tf import AffinityConfig
from tag_tf.cli.flags import setting
from tag_tf.runner.config import RunConfig, RuntimeConfig, SelectionConfig, TrainingConfig
from tag_tf.runner.presets import Preset, configure as configure_preset

# The notebook's settings.
LEARNING_RATE = 5e-4
MOMENTUM = 0.9
BATCH_SIZE = 256
IMAGE_SIZE = 64
EPOCHS = 100
PATIENCE = 10
LR_HALVING_EPOCHS = 15
GRADNORM_ALPHA = 0.1
GRADNORM_LAYER = "res_conv2"  # the original's ResBase.trainable_weights[-3]
BUDGETS = tuple(range(1, 9))
# train_step's lookahead is ``param + (optimizer._momentum * slot - lr * grad)`` (plain
# ``param - lr * grad`` on the first step, when the velocity slot is still 0). In the
# tf.keras SGD of the time (optimizer_v2/gradient_descent.py, SGD.__init__) ``_momentum`` is
# a bool flag (True for momentum > 0), not the 0.9 coefficient, so the lookahead adds the
# whole velocity: coefficient 1 where the optimizer's real step uses 0.9.
NOTEBOOK_LOOKAHEAD_MOMENTUM = 1.0
LOOKAHEADS = ("fixed", "original", "paper")


@dataclasses.dataclass(frozen=True)
class CelebASettings:
    """The CelebA experiment's own settings (each is a ``celeba.main`` flag)."""

    data_dir: Optional[str] = setting(
        None, help="TFDS data directory holding (or receiving) celeb_a; default: TFDS's "
        "(~/tensorflow_datasets).")
    tasks: Optional[tuple[str, ...]] = setting(
        None, kind="list", help="Attributes to predict: comma-separated names (any of the "
        "40), or 'all' for the 40 in list_attr_celeba.txt order; default: the paper's 9. "
        "Mode 'groups' takes them from the selection.")
    image_size: int = setting(IMAGE_SIZE, help="Images are resized to image_size x "
                              "image_size.")
    batch_size: int = setting(BATCH_SIZE, help="Training batch size.")
    learning_rate: float = setting(LEARNING_RATE, help="Initial SGD learning rate (momentum "
                                   f"{MOMENTUM}).")
    lr_halving_epochs: int = setting(
        LR_HALVING_EPOCHS, help="Halve the learning rate every this many epochs (0: never).")
    cache: Optional[str] = setting(None, help="Cache decoded images: 'memory' or a file "
                                   "prefix.")
    shuffle_buffer: Optional[int] = setting(None, help="Training shuffle buffer (default: "
                                            "the split).")
    limit: Optional[int] = setting(None, help="Debugging: use only the first N examples of "
                                   "each split.")
    lookahead: Literal["fixed", "original", "paper"] = setting(
        "fixed", help="The configuration (celeba/presets.py): 'fixed' = this project's "
        "lookahead (the original's defects fixed); 'original' = the notebook's lookahead, as "
        "its published numbers were made (sets --every_n=1, and its lookahead step); 'paper' "
        "= Eq. 1 as the paper writes it (--lookahead_rule=sgd --nodivide_by_lr). See "
        "celeba/README.md.")

    def to_json(self) -> dict:
        return {"dataset": "celeba",
                **{k: list(v) if isinstance(v, tuple) else v
                   for k, v in dataclasses.asdict(self).items()}}


# The runner's side of the default (fixed) configuration, every field spelled out.
RUN = RunConfig(
    training=TrainingConfig(epochs=EPOCHS, patience=PATIENCE, seed=0, steps_per_epoch=None,
                            uw_clipped=True, gradnorm_alpha=GRADNORM_ALPHA),
    # The library's AffinityConfig() defaults are rule="sgd", divide_by_lr=False (Eq. 1).
    affinity=AffinityConfig(every_n=10, rule="optimizer", divide_by_lr=True,
                            lookahead_scale=1.0, window=None, step_range=None, batch="train",
                            measures=("lookahead",), cosine_kernels_only=True,
                            stderr_block="epoch", parallel=False),
    selection=SelectionConfig(budgets=BUDGETS, bootstrap=200, time_limit=60.0,
                              affinity_epochs="until_best", selection_path=None, budget=None,
                              table=None, mtl_results=None, stl_results=None),
    runtime=RuntimeConfig(strategy="default", mixed_precision=False, shard_policy="data",
                          backup_dir=None, save_freq="epoch", logical_cpus=0,
                          save_weights=False, tensorboard=False, verbose=2),
    seeds=1)

_LOOKAHEAD = ("every_n", "lookahead_rule", "divide_by_lr")
PRESETS = {
    "fixed": Preset(CelebASettings(), RUN, note="the notebook's training, this project's "
                    "lookahead (optimizer step, divided by the learning rate, every 10 steps)"),
    "original": Preset(CelebASettings(lookahead="original"), RUN.replace(every_n=1),
                       pinned=_LOOKAHEAD, note="the notebook's own lookahead, every step"),
    "paper": Preset(CelebASettings(lookahead="paper"),
                    RUN.replace(lookahead_rule="sgd", divide_by_lr=False), pinned=_LOOKAHEAD,
                    note="Eq. 1 as the paper writes it, every 10 steps"),
}


def configure(lookahead: str = "fixed", **overrides) -> tuple[CelebASettings, RunConfig]:
    """The settings and run config of preset ``lookahead`` with ``overrides`` (setting
    names: ``batch_size=64``, ``every_n=1``, ...); a pinned setting given another value than
    the preset's is a ValueError."""
    return configure_preset(PRESETS, lookahead, **overrides)
