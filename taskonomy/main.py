"""The paper's Taskonomy experiment: ``python -m taskonomy.main --mode=...``.

  # TAG affinities (every 10 steps) + network selection for budgets 1..4
  python -m taskonomy.main --mode=affinity --data_dir=/data/taskonomy \\
      --output_dir=runs/taskonomy/affinity --mixed_precision
  # train the chosen networks of one budget; test loss per task and in total
  python -m taskonomy.main --mode=groups --data_dir=/data/taskonomy \\
      --selection=runs/taskonomy/affinity/selection.json --budget=3 --output_dir=runs/taskonomy/tag3
  # baselines
  python -m taskonomy.main --mode={cs,mtl,stl,uw,gradnorm,pcgrad} --data_dir=/data/taskonomy ...
  # optional: pack the PNGs of the three splits into TFRecords, then train from them
  python -m taskonomy.main --mode=convert --data_dir=/data/taskonomy --output_dir=/data/tfrec
  python -m taskonomy.main --mode=mtl --tfrecord_dir=/data/tfrec ...

Hyper-parameters follow google-research ``tag/taskonomy/tag.patch`` (over Standley et al.'s
``train_taskonomy.py``): tasks ``sdntk``, 256 x 256 inputs, batch 96 (evaluation batch 48),
SGD lr 0.1, momentum 0.9, weight decay 1e-4 (PyTorch style: added to the gradient), the
original's plateau test halving the learning rate (:class:`PlateauHalving`), training stops
when the learning rate falls below 3e-5 or after 100 epochs (an epoch is a fifth of the data
past 10000 batches), the test split is evaluated with the weights of the best validation
epoch; shift-tolerant depth and normal losses (``--rotate_loss``, on in ``tag.patch``);
lookahead every 10 steps with the optimizer's momentum step, divided by the learning rate as
the original; GradNorm alpha 1.5 at the shared representation. Every mode prints a summary and
writes ``<output_dir>/results.json`` (see taskonomy/README.md).
"""

from __future__ import annotations

import tag_tf.cli.quiet  # noqa: F401  (first: quiets TensorFlow's C++ logs without a GPU)

import contextlib
import dataclasses
import os
from typing import TYPE_CHECKING, Optional, Sequence

import keras
from absl import app
from absl import flags

from tag_tf.cli import script_flags
from tag_tf.cli.script_flags import (define_pipeline_flags, lookahead_flags, own_registry_parser,
                                  parse_budgets, runtime_fields, seed_option_fields)
from absl import logging
from taskonomy import data as data_lib

if TYPE_CHECKING:
    from tag_tf.runner import pipeline

# Own flag registry (names such as --tasks also exist in tag_tf.select and other scripts).
FLAGS = flags.FlagValues()

# tag.patch settings.
TASKS = "sdntk"
BATCH_SIZE = 96
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
ORIGINAL_LOOKAHEAD = {"every_n": 10, "lookahead_rule": "optimizer", "divide_by_lr": True}
ORIGINAL_LOOKAHEAD_MOMENTUM = 0.0
MODES = ("affinity", "cs", "mtl", "stl", "uw", "gradnorm", "pcgrad", "groups", "convert")

_IN = {"flag_values": FLAGS}
# --output_dir --seed --epochs --batch_size --learning_rate --every_n --budgets --selection ...
define_pipeline_flags(FLAGS, epochs=EPOCHS, batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE,
                      budgets=BUDGETS, uw_clipped=False, gradnorm_alpha=GRADNORM_ALPHA)
flags.DEFINE_enum("mode", None, list(MODES), "What to run (see taskonomy/README.md).", **_IN)
flags.DEFINE_string("data_dir", None, "Taskonomy root: rgb/<building>/*.png and one folder "
                    "per task domain.", **_IN)
flags.DEFINE_string("tfrecord_dir", None, "Read the splits from --mode=convert output instead "
                    "of --data_dir.", **_IN)
flags.DEFINE_string("splits_dir", None, "Folder with {train,val,test}_models.txt; default: "
                    "taskonomy/splits (the original lists).", **_IN)
flags.DEFINE_string("tasks", TASKS, "Tasks as letters (s=segment_semantic, d=depth_zbuffer, "
                    "n=normal, t=edge_texture, k=keypoints2d) or comma-separated names. "
                    "Mode 'groups' takes them from the selection.", **_IN)
flags.DEFINE_integer("eval_batch_size", None, "Validation/test batch size (default half the "
                     "training batch).", **_IN)
flags.DEFINE_integer("image_size", 256, "Inputs and targets are resized to this (multiple "
                     "of 16).", **_IN)
flags.DEFINE_enum("widths", "tag", ["tag", "standley", "tiny"], "Network widths preset "
                  "(taskonomy.model.PRESETS); 'tag' is the paper's.", **_IN)
flags.DEFINE_float("momentum", MOMENTUM, "SGD momentum.", **_IN)
flags.DEFINE_float("weight_decay", WEIGHT_DECAY, "L2 weight decay added to the gradient "
                   "(PyTorch SGD's weight_decay).", **_IN)
flags.DEFINE_float("min_learning_rate", MIN_LEARNING_RATE, "Stop when the learning rate "
                   "falls below this.", **_IN)
flags.DEFINE_integer("loss_window", LOSS_WINDOW, "Plateau test window, in examples.", **_IN)
flags.DEFINE_integer("max_loss_window", MAX_LOSS_WINDOW, "Largest plateau test window.", **_IN)
flags.DEFINE_integer("patience", -1, "Early-stopping patience (epochs) on the summed "
                     "validation loss; -1 (the original): never stop early, but test the "
                     "best validation epoch's weights.", **_IN)
flags.DEFINE_bool("rotate_loss", True, "Shift-tolerant depth/normal losses (tag.patch's "
                  "default).", **_IN)
flags.DEFINE_bool("augment", True, "Random horizontal flips for training.", **_IN)
flags.DEFINE_integer("limit", None, "Debugging: at most N images per building.", **_IN)
flags.DEFINE_integer("shards", None, "convert: shards per split (default one per 2000 "
                     "images).", **_IN)


# --------------------------------------------------------------------------- training schedule
class PlateauHalving(keras.callbacks.Callback):
    """The original's learning-rate schedule (``Trainer.learning_rate_schedule``).

    After every step from epoch ``start_epoch`` on, once more than ``window // batch_size``
    steps have passed since the last change: compare the first 3/8 and the last 3/8 of the
    last window of per-step training losses (each sorted, 5 % trimmed at both ends, cut to a
    common length) with a paired t-test; if the loss went up (t < 0) or the difference is not
    significant (p > 0.99), halve the learning rate (``lr0 * 0.5 ** halvings``) and double the
    window (at most ``max_window``). Training stops at the end of an epoch whose learning rate
    is below ``min_learning_rate`` (the original checks before the next epoch).

    Per-step losses are recovered from Keras' running epoch mean (equal batch sizes).
    ``get_state()`` / ``set_state()`` (:class:`tag_tf.training.resume.StatefulCallback`): a run
    resumed by :class:`tag_tf.training.resume.StepBackupAndRestore`, even mid-epoch, continues the
    schedule of the uninterrupted run.

    Args:
      batch_size: training batch size (the window is in examples).
      window, max_window: initial and largest window, in examples.
      min_learning_rate: stop below this.
      start_epoch: first epoch (0-based) allowed to halve.
    """

    def __init__(self, batch_size: int, *, window: int = LOSS_WINDOW,
                 max_window: int = MAX_LOSS_WINDOW,
                 min_learning_rate: float = MIN_LEARNING_RATE,
                 start_epoch: int = PLATEAU_START_EPOCH):
        super().__init__()
        if batch_size < 1 or window < batch_size:
            raise ValueError(f"Need 1 <= batch_size <= window. Received: batch_size="
                             f"{batch_size}, window={window}")
        self.batch_size = batch_size
        self.window = window
        self.max_window = max_window
        self.min_learning_rate = min_learning_rate
        self.start_epoch = start_epoch
        self.history: list[float] = []
        self.halvings = 0
        self.last_change = 0
        self.lr0 = None
        self._epoch = 0
        self._epoch_steps = 0  # steps of the current epoch so far
        self._previous_mean = 0.0
        self._resumed_epoch = None  # set_state: the epoch whose counters to keep

    _STATE = ("history", "halvings", "last_change", "lr0", "window", "_epoch", "_epoch_steps",
              "_previous_mean")

    def get_state(self) -> dict:
        """The schedule's state, JSON-ready (for tag_tf.training.resume's backups)."""
        return {name.lstrip("_"): getattr(self, name) for name in self._STATE}

    def set_state(self, state: dict) -> None:
        """Restores :meth:`get_state`; a mid-epoch state survives that epoch's begin."""
        for name in self._STATE:
            value = state[name.lstrip("_")]
            setattr(self, name, list(value) if name == "history" else value)
        self._resumed_epoch = self._epoch

    def _lr(self) -> float:
        return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_train_begin(self, logs=None):
        if self.lr0 is None:
            self.lr0 = self._lr()

    def on_epoch_begin(self, epoch, logs=None):
        if epoch != self._resumed_epoch:
            self._epoch_steps = 0
            self._previous_mean = 0.0
        self._resumed_epoch = None
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if not logs or "loss" not in logs:
            return
        mean = float(logs["loss"])
        done = self._epoch_steps  # (a resumed epoch's `batch` restarts at 0)
        step_loss = (done + 1) * mean - done * self._previous_mean
        self._epoch_steps = done + 1
        self._previous_mean = mean
        self.history.append(step_loss)
        if self._epoch < self.start_epoch:
            return
        steps = self.window // self.batch_size
        if len(self.history) - self.last_change <= steps:
            return
        t, p = plateau_test(self.history[-steps:])
        if t < 0 or p > 0.99:
            self.halvings += 1
            self.last_change = len(self.history)
            self.model.optimizer.learning_rate.assign(self.lr0 * 0.5 ** self.halvings)
            self.window = min(self.max_window, self.window * 2)
            logging.info("Step %d: learning rate halved to %g (t=%.3g, p=%.3g).",
                         len(self.history), self._lr(), t, p)

    def on_epoch_end(self, epoch, logs=None):
        lr = self._lr()
        if logs is not None:
            logs["learning_rate"] = lr
        if lr < self.min_learning_rate:
            logging.info("Learning rate %g < %g: stopping.", lr, self.min_learning_rate)
            self.model.stop_training = True


def plateau_test(window: Sequence[float]) -> tuple[float, float]:
    """The original's paired t-test between the first and last 3/8 of a loss window.

    The slices round as ``Trainer.learning_rate_schedule`` in ``tag.patch`` does: it takes
    ``history[-wind:-wind*5//8]`` and ``history[-wind*3//8:]``, where ``//`` floors a
    *negative* number, so the first part has ``wind - ceil(5 wind / 8)`` losses and the last
    ``ceil(3 wind / 8)`` (not ``floor``) whenever ``8`` does not divide ``5 wind``.
    """
    from scipy import stats  # pylint: disable=g-import-not-at-top
    wind = len(window)
    a = sorted(window[:wind + (-wind * 5) // 8])
    b = sorted(window[wind + (-wind * 3) // 8:])
    a = a[int(len(a) * .05):int(len(a) * .95)]
    b = b[int(len(b) * .05):int(len(b) * .95)]
    length = min(len(a), len(b))
    if length < 2:
        return float("nan"), float("nan")
    result = stats.ttest_rel(a[:length], b[:length], nan_policy="omit")
    return float(result.statistic), float(result.pvalue)


class CoupledSGD(keras.optimizers.SGD):
    """SGD whose weight decay is added to the gradient before momentum (PyTorch's SGD).

    Keras' own ``weight_decay`` is decoupled (``w -= lr * wd * w`` beside the momentum
    update); the original's ``torch.optim.SGD(weight_decay=1e-4)`` adds ``wd * w`` to every
    parameter's gradient, BatchNorm and biases included.

    ``lookahead_momentum`` (None: ``momentum``) is the coefficient of the velocity in TAG's
    ``optimizer`` lookahead (:mod:`tag_tf.core.lookahead`); 0 gives ``tag.patch``'s lookahead
    ``theta - lr * (g + l2 * theta)``. The training step is unaffected.
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, *, l2: float = 0.0,
                 lookahead_momentum: Optional[float] = None, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, **kwargs)
        self.l2 = float(l2)
        self.lookahead_momentum = lookahead_momentum

    def lookahead_gradient(self, gradient, value):
        """The gradient the SGD rule sees (also used by TAG's 'optimizer' lookahead)."""
        if not self.l2:
            return gradient
        return gradient + keras.ops.cast(self.l2, gradient.dtype) * \
            keras.ops.cast(value, gradient.dtype)

    def update_step(self, gradient, variable, learning_rate):
        super().update_step(self.lookahead_gradient(gradient, variable), variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2,
                "lookahead_momentum": self.lookahead_momentum}


class EpochAlignedRecording(keras.callbacks.Callback):
    """Records affinities on batches 0, n, 2n, ... of every epoch, as ``tag.patch``.

    :class:`tag_tf.MultiTaskModel` records when its global step counter is a multiple of
    ``every_n``; the original counts batches from 0 in each epoch, which differs once an
    epoch's length is not a multiple of ``every_n``. At the start of every epoch this
    advances the counter to the next multiple of ``every_n`` and takes the advance back at
    the epoch's end, so the counter (the record's ``train_steps``) stays the true step
    count between epochs. No-op for a model without affinity recording.
    """

    def __init__(self):
        super().__init__()
        self._advance = 0

    def _counter(self):
        if getattr(self.model, "affinity_config", None) is None:
            return None
        return self.model.affinity_state.train_step_counter

    def on_epoch_begin(self, epoch, logs=None):
        counter = self._counter()
        if counter is None:
            return
        step = int(counter.numpy())
        self._advance = -step % self.model.affinity_config.every_n
        counter.assign(step + self._advance)

    def on_epoch_end(self, epoch, logs=None):
        counter = self._counter()
        if counter is not None and self._advance:
            counter.assign(int(counter.numpy()) - self._advance)
        self._advance = 0


# --------------------------------------------------------------------------- experiment
def load_data(data_dir: Optional[str], tasks: str | Sequence[str], *,
              tfrecord_dir: Optional[str] = None, splits_dir: Optional[str] = None,
              seed: int = 0, batch_size: int = BATCH_SIZE,
              eval_batch_size: Optional[int] = None, image_size: int = 256,
              augment: bool = True, limit: Optional[int] = None) -> data_lib.Splits:
    """Fresh datasets of the three splits (:func:`taskonomy.data.load_splits`), logged."""
    tasks = data_lib.parse_tasks(tasks)
    splits = data_lib.load_splits(data_dir, tasks, batch_size=batch_size,
                                  eval_batch_size=eval_batch_size, image_size=image_size,
                                  splits_dir=splits_dir or data_lib.SPLITS_DIR, seed=seed,
                                  augment=augment, limit=limit, tfrecord_dir=tfrecord_dir)
    logging.info("Taskonomy: %d training images, %d steps per epoch, tasks %s.",
                 splits.train_examples, splits.steps_per_epoch, tasks)
    return splits


def build_experiment(tasks: str | Sequence[str], splits: data_lib.Splits, *, seed: int = 0,
                     batch_size: int = BATCH_SIZE, image_size: int = 256,
                     widths: str = "tag", learning_rate: float = LEARNING_RATE,
                     momentum: float = MOMENTUM, weight_decay: float = WEIGHT_DECAY,
                     min_learning_rate: float = MIN_LEARNING_RATE,
                     loss_window: int = LOSS_WINDOW, max_loss_window: int = MAX_LOSS_WINDOW,
                     rotate_loss: bool = True, mixed_precision: bool = False,
                     lookahead: str = "fixed") -> pipeline.Experiment:
    """The Taskonomy :class:`tag_tf.runner.pipeline.Experiment` on ``splits`` (:func:`load_data`).

    The one definition of the experiment, shared by :func:`run_taskonomy` and
    :class:`taskonomy.adapter.TaskonomyAdapter`. Every network gets a new optimizer and a
    new :class:`PlateauHalving`. ``mixed_precision`` builds each network under
    ``mixed_float16`` and wraps the optimizer in a ``LossScaleOptimizer`` (what ``compile``
    does under a global mixed policy), so it also works when nobody sets the global policy.
    ``lookahead="original"``: ``tag.patch``'s lookahead (no momentum, the final conv left
    out of the shared set, recording aligned to epochs); pair it with
    :func:`affinity_settings`' Options.
    """
    import tag_tf  # pylint: disable=g-import-not-at-top
    from tag_tf.runner import pipeline  # pylint: disable=g-import-not-at-top
    from taskonomy import losses as taskonomy_losses  # pylint: disable=g-import-not-at-top
    from taskonomy import model as taskonomy_model  # pylint: disable=g-import-not-at-top

    tasks = data_lib.parse_tasks(tasks)
    script_flags.check_lookahead(lookahead)
    original = lookahead == "original"

    def network(names):
        with _policy("mixed_float16" if mixed_precision else None):
            return taskonomy_model.taskonomy_network(names, image_size=image_size,
                                                     widths=widths, seed=seed)

    def optimizer():
        sgd = CoupledSGD(learning_rate, momentum=momentum, l2=weight_decay,
                         lookahead_momentum=ORIGINAL_LOOKAHEAD_MOMENTUM if original else None)
        return keras.optimizers.LossScaleOptimizer(sgd) if mixed_precision else sgd

    return pipeline.Experiment(
        tasks=tasks,
        network_fn=network,
        shared=_shared_layers(tasks, image_size, widths, include_final_conv=not original),
        loss_fn=lambda task: taskonomy_losses.task_loss(task, shift_tolerant=rotate_loss),
        train_data=splits.train, validation_data=splits.validation, test_data=splits.test,
        train_data_fn=splits.train_data_fn,
        optimizer_fn=optimizer,
        callbacks_fn=lambda: [PlateauHalving(batch_size, window=loss_window,
                                             max_window=max_loss_window,
                                             min_learning_rate=min_learning_rate)]
        + ([EpochAlignedRecording()] if original else []),
        error_name="loss",
        # The original's GradNormRepFunction: at the representation (the output of the last
        # shared layer, final_conv_bn), the weights on the encoder-bound gradient only.
        gradnorm_fn=lambda alpha: tag_tf.RepresentationGradNorm(alpha=alpha))


def affinity_settings(lookahead: str = "fixed", **given) -> dict:
    """``every_n``, ``lookahead_rule``, ``divide_by_lr`` under ``lookahead`` (``given``: explicit
    values; None takes the lookahead's, :data:`ORIGINAL_LOOKAHEAD` for ``original``)."""
    return script_flags.affinity_settings(lookahead, ORIGINAL_LOOKAHEAD, **given)


def build_options(*, epochs: int = EPOCHS, patience: Optional[int] = None,
                  **fields) -> pipeline.Options:
    """:class:`tag_tf.runner.pipeline.Options` as taskonomy.main trains: ``patience`` None or < 0
    (the original) never stops early but tests the best validation epoch's weights;
    affinities average over all epochs. ``fields``: the other Options fields."""
    from tag_tf.runner import pipeline  # pylint: disable=g-import-not-at-top
    fields.setdefault("affinity_epochs", "all")
    return pipeline.Options(
        epochs=epochs, patience=epochs if patience is None or patience < 0 else patience,
        **fields)


@contextlib.contextmanager
def _policy(name: Optional[str]):
    """Sets the global Keras dtype policy to ``name`` (None: unchanged) during the block."""
    previous = keras.config.dtype_policy()
    if name:
        keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


# --------------------------------------------------------------------------- runner
def run_taskonomy(mode: str, *, data_dir: Optional[str], output_dir: str,
                  tasks: str | Sequence[str] = TASKS, tfrecord_dir: Optional[str] = None,
                  splits_dir: Optional[str] = None, seed: int = 0, epochs: int = EPOCHS,
                  batch_size: int = BATCH_SIZE, eval_batch_size: Optional[int] = None,
                  image_size: int = 256, widths: str = "tag",
                  learning_rate: float = LEARNING_RATE, momentum: float = MOMENTUM,
                  weight_decay: float = WEIGHT_DECAY,
                  min_learning_rate: float = MIN_LEARNING_RATE, loss_window: int = LOSS_WINDOW,
                  max_loss_window: int = MAX_LOSS_WINDOW, patience: Optional[int] = None,
                  rotate_loss: bool = True, augment: bool = True,
                  mixed_precision: bool = False, every_n: Optional[int] = None,
                  affinity_batch: str = "train", lookahead: str = "fixed",
                  lookahead_rule: Optional[str] = None, divide_by_lr: Optional[bool] = None,
                  budgets: Sequence[int] = BUDGETS,
                  selection: Optional[str] = None, budget: Optional[int] = None,
                  selection_table: Optional[str] = None, uw_clipped: bool = False,
                  gradnorm_alpha: float = GRADNORM_ALPHA, limit: Optional[int] = None,
                  steps_per_epoch: Optional[int] = None, save_weights: bool = False,
                  tensorboard: bool = False, verbose: int = 2,
                  runtime: Optional[dict] = None) -> dict:
    """Runs one training mode on Taskonomy (see :mod:`tag_tf.runner.pipeline`); returns the results.

    ``runtime``: distribution / precision / backup Options fields (``runtime_fields``) and
    the ``seeds`` / ``bootstrap`` / ``mtl_results`` / ``stl_results`` fields
    (``seed_option_fields``); with ``seeds`` > 1 each training rebuilds the experiment
    (network and data) with its own seed.

    ``patience`` None (the original) never stops early but still tests the weights of the best
    validation epoch. ``every_n``, ``lookahead_rule``, ``divide_by_lr`` None: ``lookahead``'s
    values (:func:`affinity_settings`).
    """
    from tag_tf.runner import pipeline  # pylint: disable=g-import-not-at-top
    from taskonomy import data  # pylint: disable=g-import-not-at-top

    if mode == "groups":
        if not selection:
            raise ValueError("Mode 'groups' needs a selection JSON (--selection).")
        selection, budget, selection_table, tasks = canonical_selection(
            selection, budget=budget, table=selection_table, output_dir=output_dir)
    tasks = data.parse_tasks(tasks)
    recording = affinity_settings(lookahead, every_n=every_n, lookahead_rule=lookahead_rule,
                                  divide_by_lr=divide_by_lr)

    def splits_for(run_seed: int) -> data_lib.Splits:
        return load_data(data_dir, tasks, tfrecord_dir=tfrecord_dir, splits_dir=splits_dir,
                         seed=run_seed, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         image_size=image_size, augment=augment, limit=limit)

    def experiment_for(run_seed: int, run_splits=None) -> pipeline.Experiment:
        return build_experiment(
            tasks, run_splits or splits_for(run_seed), seed=run_seed, batch_size=batch_size,
            image_size=image_size, widths=widths, learning_rate=learning_rate,
            momentum=momentum, weight_decay=weight_decay,
            min_learning_rate=min_learning_rate, loss_window=loss_window,
            max_loss_window=max_loss_window, rotate_loss=rotate_loss,
            mixed_precision=mixed_precision, lookahead=lookahead)

    splits = splits_for(seed)
    experiment = dataclasses.replace(experiment_for(seed, splits), for_seed=experiment_for)
    options = build_options(
        epochs=epochs, patience=patience, seed=seed,
        steps_per_epoch=steps_per_epoch or splits.steps_per_epoch, verbose=verbose,
        affinity_batch=affinity_batch, **recording, budgets=tuple(budgets),
        selection_path=selection,
        budget=budget, selection_table=selection_table, uw_clipped=uw_clipped,
        gradnorm_alpha=gradnorm_alpha, save_weights=save_weights,
        log_dir=os.path.join(output_dir, "tb") if tensorboard else None, **(runtime or {}))
    previous_policy = keras.config.dtype_policy()
    if mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        results = pipeline.run(mode, experiment, options, output_dir=output_dir)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    results["lookahead"] = lookahead
    pipeline.write_results(os.path.join(output_dir, pipeline.RESULTS_FILE), results)
    print(pipeline.format_summary(results))
    print(f"Wrote {os.path.join(output_dir, pipeline.RESULTS_FILE)}")
    return results


def canonical_selection(path: str, *, budget: Optional[int], table: Optional[str],
                        output_dir: str) -> tuple[str, Optional[int], Optional[str], list[str]]:
    """Reads a selection; names given as loss keys (``ss_l``...) or letters become task names.

    ``taskonomy.reproduce_selection`` already writes task names (the published files' loss
    keys and Standley's letters are mapped when loaded, :mod:`taskonomy.published_tables`);
    a selection written with those labels (e.g. by hand, or before that mapping) is
    translated: the chosen networks are rewritten to ``<output_dir>/selection_tasks.json``
    (a bare selection).

    Returns:
      ``(path, budget, table, tasks)`` to hand to the pipeline.
    """
    import json  # pylint: disable=g-import-not-at-top
    from tag_tf.runner import pipeline  # pylint: disable=g-import-not-at-top
    from taskonomy import data  # pylint: disable=g-import-not-at-top
    chosen = pipeline.load_selection(path, budget=budget, table=table)
    aliases = {**{v: k for k, v in data.LOSS_KEYS.items()}, **data.TASK_LETTERS,
               **{t: t for t in data.TASKS}}
    names = {t for network in chosen.networks for t in network.tasks}
    unknown = sorted(names - set(aliases))
    if unknown:
        raise ValueError(f"The selection {path} names unknown task(s) {unknown}; expected "
                         f"task names, loss keys {sorted(data.LOSS_KEYS.values())} or letters.")
    tasks = sorted({aliases[t] for t in names})
    if names <= set(data.TASKS):
        return path, budget, table, tasks
    networks = [{"tasks": [aliases[t] for t in n.tasks], "serves": [aliases[t] for t in n.serves]}
                for n in chosen.networks]
    os.makedirs(output_dir, exist_ok=True)
    translated = os.path.join(output_dir, "selection_tasks.json")
    with open(translated, "w") as f:
        json.dump({"source": os.path.abspath(path), "budget": chosen.budget, "table": chosen.table,
                   "networks": networks}, f, indent=1)
    return translated, None, None, tasks


def _shared_layers(tasks: Sequence[str], image_size: int, widths: str, *,
                   include_final_conv: bool = True) -> list[str]:
    """Names of the encoder layers (identical for every task subset)."""
    from taskonomy import model as taskonomy_model  # pylint: disable=g-import-not-at-top
    probe = taskonomy_model.taskonomy_network(tasks[:1], image_size=image_size, widths=widths)
    names = taskonomy_model.shared_layer_names(probe, include_final_conv=include_final_conv)
    del probe
    keras.backend.clear_session()
    return names


def convert(*, data_dir: str, output_dir: str, tasks: str | Sequence[str] = TASKS,
            splits_dir: Optional[str] = None, shards: Optional[int] = None,
            limit: Optional[int] = None) -> dict:
    """``--mode=convert``: TFRecord shards of the three splits; prints the counts."""
    from taskonomy import data  # pylint: disable=g-import-not-at-top
    num_shards = None if shards is None else {s: shards for s in data.SPLITS}
    info = data.convert_splits(data_dir, tasks, output_dir, splits_dir=splits_dir or
                               data.SPLITS_DIR, num_shards=num_shards, limit=limit)
    counts = {split: v["examples"] for split, v in info["splits"].items()}
    print(f"Wrote TFRecords of {info['tasks']} to {output_dir}: {counts}")
    return info


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.mode is None:
        raise app.UsageError(f"--mode is required: one of {MODES}.")
    if not FLAGS.data_dir and not (FLAGS.tfrecord_dir and FLAGS.mode != "convert"):
        raise app.UsageError("--data_dir (or, for training, --tfrecord_dir) is required.")
    output_dir = FLAGS.output_dir or os.path.join("runs", "taskonomy", FLAGS.mode)
    if FLAGS.mode == "convert":
        convert(data_dir=FLAGS.data_dir, output_dir=output_dir, tasks=FLAGS.tasks,
                splits_dir=FLAGS.splits_dir, shards=FLAGS.shards, limit=FLAGS.limit)
        return
    if FLAGS.mode == "groups" and not FLAGS.selection:
        raise app.UsageError("--mode=groups needs --selection (a selection JSON).")
    budgets = parse_budgets(FLAGS.budgets)
    recording = lookahead_flags(FLAGS, ORIGINAL_LOOKAHEAD)
    run_taskonomy(
        FLAGS.mode, data_dir=FLAGS.data_dir, output_dir=output_dir, tasks=FLAGS.tasks,
        tfrecord_dir=FLAGS.tfrecord_dir, splits_dir=FLAGS.splits_dir, seed=FLAGS.seed,
        epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
        eval_batch_size=FLAGS.eval_batch_size, image_size=FLAGS.image_size,
        widths=FLAGS.widths, learning_rate=FLAGS.learning_rate, momentum=FLAGS.momentum,
        weight_decay=FLAGS.weight_decay, min_learning_rate=FLAGS.min_learning_rate,
        loss_window=FLAGS.loss_window, max_loss_window=FLAGS.max_loss_window,
        patience=FLAGS.patience, rotate_loss=FLAGS.rotate_loss, augment=FLAGS.augment,
        mixed_precision=FLAGS.mixed_precision, affinity_batch=FLAGS.affinity_batch,
        **recording, budgets=budgets, selection=FLAGS.selection,
        budget=FLAGS.budget, selection_table=FLAGS.selection_table,
        uw_clipped=FLAGS.uw_clipped, gradnorm_alpha=FLAGS.gradnorm_alpha, limit=FLAGS.limit,
        steps_per_epoch=FLAGS.steps_per_epoch, save_weights=FLAGS.save_weights,
        tensorboard=FLAGS.tensorboard, verbose=FLAGS.verbose,
        runtime={**runtime_fields(FLAGS), **seed_option_fields(FLAGS)})


if __name__ == "__main__":
    app.run(main, flags_parser=own_registry_parser(FLAGS, __doc__))
