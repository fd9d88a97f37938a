"""Every configuration of the Taskonomy experiment, and every default, in one file.

A configuration is the dataset's own settings (:class:`TaskonomySettings`: data, network
widths, optimiser, learning-rate schedule, early stopping) plus the runner's
:class:`tag_tf.runner.RunConfig`. ``python -m taskonomy.main`` starts from the preset
``--lookahead`` names and applies the flags given on the command line as overrides; the
harness adapter (:mod:`taskonomy.adapter`) does the same with its fields.

Hyper-parameters follow google-research ``tag/taskonomy/tag.patch`` (over Standley et al.'s
``train_taskonomy.py``): tasks ``sdntk``, 256 x 256 inputs, batch 96 (evaluation batch 48),
SGD lr 0.1, momentum 0.9, weight decay 1e-4 (PyTorch style: added to the gradient), the
original's plateau test halving the learning rate, training stops when the learning rate
falls below 3e-5 or after 100 epochs, the test split evaluated with the weights of the best
validation epoch; shift-tolerant depth and normal losses; GradNorm alpha 1.5 at the shared
representation; uncertainty weights unclipped.

Presets (:data:`PRESETS`):

* ``fixed`` (the default): TAG recorded every 10 steps with the optimiser's own lookahead
  step (momentum and weight decay), divided by the learning rate as the original. Note the
  dataset default ``rule="optimizer", divide_by_lr=True`` where the library's
  :class:`tag_tf.AffinityConfig` defaults are ``rule="sgd", divide_by_lr=False``.
* ``original``: ``tag.patch``'s own lookahead: recording on batches 0, 10, 20, ... of every
  epoch, no momentum in the lookahead (:data:`ORIGINAL_LOOKAHEAD_MOMENTUM`), and the final
  conv + BN left out of the stepped shared set.
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

# tag.patch settings.
TASKS = "sdntk"
BATCH_SIZE = 96
IMAGE_SIZE = 256
EPOCHS = 100
LEARNING_RATE = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
MIN_LEARNING_RATE = 3e-5
LOSS_WINDOW = 500_000  # examples; loss_tracking_window_initial
MAX_LOSS_WINDOW = 2_000_000  # maximum_loss_tracking_window
PLATEAU_START_EPOCH = 2  # "don't reduce learning rate until the second epoch has ended"
GRADNORM_ALPHA = 1.5  # GradNormRepFunction: r_i ** 1.5
BUDGETS = (1, 2, 3, 4)
# --lookahead=original: tag.patch's lookahead. Trainer.train_epoch records when
# ``batch_num % 10 == 0`` with batch_num counted from 0 in every epoch (EpochAlignedRecording);
# Trainer.train_batch divides each transference by the current learning rate;
# Trainer.lookahead steps ``param - lr * (grad + weight_decay * param)``: it looks for
# 'momentum_buffer' in the param-group dict, where it never is, so it always takes the
# no-momentum branch (lookahead momentum 0); the stepped set is model.encoder's parameters,
# without the final conv + BN (taskonomy.model.shared_layer_names(include_final_conv=False)).
ORIGINAL_LOOKAHEAD_MOMENTUM = 0.0
LOOKAHEADS = ("fixed", "original", "paper")


@dataclasses.dataclass(frozen=True)
class TaskonomySettings:
    """The Taskonomy experiment's own settings (each is a ``taskonomy.main`` flag)."""

    data_dir: Optional[str] = setting(None, help="Taskonomy root: rgb/<building>/*.png and "
                                      "one folder per task domain.")
    tfrecord_dir: Optional[str] = setting(None, help="Read the splits from --mode=convert "
                                          "output instead of --data_dir.")
    splits_dir: Optional[str] = setting(None, help="Folder with {train,val,test}_models.txt; "
                                        "default: taskonomy/splits (the original lists).")
    tasks: str = setting(TASKS, help="Tasks as letters (s=segment_semantic, d=depth_zbuffer, "
                         "n=normal, t=edge_texture, k=keypoints2d) or comma-separated names. "
                         "Mode 'groups' takes them from the selection.")
    batch_size: int = setting(BATCH_SIZE, help="Training batch size.")
    eval_batch_size: Optional[int] = setting(None, help="Validation/test batch size (default "
                                             "half the training batch).")
    image_size: int = setting(IMAGE_SIZE, help="Inputs and targets are resized to this "
                              "(multiple of 16).")
    widths: Literal["tag", "standley", "tiny"] = setting(
        "tag", help="Network widths preset (taskonomy.model.PRESETS); 'tag' is the paper's.")
    learning_rate: float = setting(LEARNING_RATE, help="Initial SGD learning rate.")
    momentum: float = setting(MOMENTUM, help="SGD momentum.")
    weight_decay: float = setting(WEIGHT_DECAY, help="L2 weight decay added to the gradient "
                                  "(PyTorch SGD's weight_decay).")
    min_learning_rate: float = setting(MIN_LEARNING_RATE, help="Stop when the learning rate "
                                       "falls below this.")
    loss_window: int = setting(LOSS_WINDOW, help="Plateau test window, in examples.")
    max_loss_window: int = setting(MAX_LOSS_WINDOW, help="Largest plateau test window.")
    patience: int = setting(-1, help="Early-stopping patience (epochs) on the summed "
                            "validation loss; -1 (the original): never stop early, but test "
                            "the best validation epoch's weights.")
    rotate_loss: bool = setting(True, help="Shift-tolerant depth/normal losses (tag.patch's "
                                "default).")
    augment: bool = setting(True, help="Random horizontal flips for training.")
    limit: Optional[int] = setting(None, help="Debugging: at most N images per building.")
    skip_bad_files: bool = setting(
        False, help="Drop the examples of missing or unreadable input files (PNGs, TFRecord "
        "records) instead of stopping with an error naming the first; they are then counted "
        "and named in the log, the summary and results.json (bad_input_files).")
    lookahead: Literal["fixed", "original", "paper"] = setting(
        "fixed", help="The configuration (taskonomy/presets.py): 'fixed' = this project's "
        "lookahead (the original's defects fixed); 'original' = tag.patch's lookahead, as its "
        "published numbers were made (no momentum, final conv left out, epoch-aligned "
        "recording every 10 batches); 'paper' = Eq. 1 as the paper writes it "
        "(--lookahead_rule=sgd --nodivide_by_lr). See taskonomy/README.md.")

    def to_json(self) -> dict:
        return {"dataset": "taskonomy", **dataclasses.asdict(self)}

    def patience_for(self, epochs: int) -> int:
        """The runner's patience: ``patience``, or (-1, the original) ``epochs``: never stop
        early, but restore the best validation epoch's weights."""
        return epochs if self.patience < 0 else self.patience


# The runner's side of the default (fixed) configuration; training.patience follows the
# settings' patience (TaskonomySettings.patience_for).
RUN = RunConfig(
    training=TrainingConfig(epochs=EPOCHS, patience=EPOCHS, seed=0, steps_per_epoch=None,
                            uw_clipped=False, gradnorm_alpha=GRADNORM_ALPHA),
    # The library's AffinityConfig() defaults are rule="sgd", divide_by_lr=False (Eq. 1).
    affinity=AffinityConfig(every_n=10, rule="optimizer", divide_by_lr=True,
                            lookahead_scale=1.0, window=None, step_range=None, batch="train",
                            measures=("lookahead",), cosine_kernels_only=True,
                            stderr_block="epoch", parallel=False),
    selection=SelectionConfig(budgets=BUDGETS, bootstrap=200, time_limit=60.0,
                              affinity_epochs="all", selection_path=None, budget=None,
                              table=None, mtl_results=None, stl_results=None),
    runtime=RuntimeConfig(strategy="default", mixed_precision=False, shard_policy="data",
                          backup_dir=None, save_freq="epoch", logical_cpus=0,
                          save_weights=False, tensorboard=False, verbose=2),
    seeds=1)

_LOOKAHEAD = ("every_n", "lookahead_rule", "divide_by_lr")
PRESETS = {
    "fixed": Preset(TaskonomySettings(), RUN, note="tag.patch's training, this project's "
                    "lookahead (optimizer step, divided by the learning rate, every 10 steps)"),
    "original": Preset(TaskonomySettings(lookahead="original"), RUN, pinned=_LOOKAHEAD,
                       note="tag.patch's own lookahead (no momentum, no final conv, "
                       "epoch-aligned)"),
    "paper": Preset(TaskonomySettings(lookahead="paper"),
                    RUN.replace(lookahead_rule="sgd", divide_by_lr=False), pinned=_LOOKAHEAD,
                    note="Eq. 1 as the paper writes it, every 10 steps"),
}


def configure(lookahead: str = "fixed", **overrides) -> tuple[TaskonomySettings, RunConfig]:
    """The settings and run config of preset ``lookahead`` with ``overrides`` (setting
    names); ``training.patience`` follows ``patience`` and ``epochs``
    (:meth:`TaskonomySettings.patience_for`)."""
    settings, run = configure_preset(PRESETS, lookahead, **overrides)
    return settings, run.replace(patience=settings.patience_for(run.training.epochs))
