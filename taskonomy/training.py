"""Taskonomy's training machinery from ``tag.patch``: the learning-rate schedule, PyTorch's
SGD weight decay, and the epoch-aligned recording of its lookahead.

:class:`PlateauHalving` is ``Trainer.learning_rate_schedule`` (a paired t-test on the loss
window); :class:`CoupledSGD` adds the weight decay to the gradient before momentum, as
``torch.optim.SGD(weight_decay=...)``; :class:`EpochAlignedRecording` records on batches
0, n, 2n, ... of every epoch, as ``Trainer.train_epoch``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras
from absl import logging

from taskonomy.presets import (LOSS_WINDOW, MAX_LOSS_WINDOW, MIN_LEARNING_RATE,
                               PLATEAU_START_EPOCH)

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
