"""Dynamic Weight Average (DWA): task weights from the rate each task's loss falls.

For epoch t (counted from 1) and K tasks::

    w_k(t) = K exp(r_k(t - 1) / T) / sum_i exp(r_i(t - 1) / T),
    r_k(t - 1) = L_k(t - 1) / L_k(t - 2),

with L_k(t) the average of task k's training loss over epoch t's steps and temperature T
(2 in the paper); the first two epochs use w = 1. A task whose loss falls more slowly gets
a larger weight. The training loss is ``sum_k w_k L_k`` (L_k after ``compile``'s
``loss_weights``; a constant weight cancels in r).

The running epoch sums live in the layer's variables, so a step-exact resume in the middle
of an epoch continues the same averages. Epochs are ``fit()``'s: ``MultiTaskModel.fit``
calls :meth:`DynamicWeightAverage.end_epoch` at every epoch end (before checkpoints);
without ``fit()`` the weights stay 1.

References:
  Liu, Johns and Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019,
  Sec. 3.3 (code: lorenmt/mtan).
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from tag_tf.core.parts import LossWeighting, StepValues


@keras.saving.register_keras_serializable(package="tag_tf")
class DynamicWeightAverage(LossWeighting):
    """DWA loss weights (Liu et al., CVPR 2019), updated at every epoch end.

    Args:
      temperature: T; larger is softer (T -> inf: all weights 1). The paper uses 2.
    """

    def __init__(self, *, temperature: float = 2.0, name: str = "dynamic_weight_average",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        if isinstance(temperature, bool) or not 0 < float(temperature) < float("inf"):
            raise ValueError(f"temperature must be a positive finite number. Received: "
                             f"temperature={temperature!r}")
        self.temperature = float(temperature)

    def attach(self, tasks: Sequence[str], shared_variables: Sequence[keras.Variable],
               network: Optional[keras.Model] = None) -> None:
        """Creates the weights (1) and the epoch averages' state."""
        del shared_variables, network
        self.tasks = list(tasks)
        n = len(self.tasks)
        make = lambda name, shape, dtype, value=0.0: self.add_weight(  # noqa: E731
            shape=shape, name=name, dtype=dtype, trainable=False,
            initializer=keras.initializers.Constant(value), aggregation="only_first_replica")
        self.task_weights = make("task_weights", (n,), "float64", 1.0)
        self.epoch_sum = make("epoch_sum", (n,), "float64")  # this epoch's loss sums
        self.epoch_steps = make("epoch_steps", (), "int64")
        self.previous = make("previous", (2, n), "float64")  # L(t - 2), L(t - 1)
        self.epochs = make("epochs", (), "int64")  # finished epochs
        self.built = True

    def task_terms(self, losses: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """``w_k * L_k``, the weights held constant for the gradient."""
        w = tf.stop_gradient(tf.convert_to_tensor(self.task_weights))
        return [tf.cast(w[k], loss.dtype) * loss for k, loss in enumerate(losses)]

    def update(self, values: StepValues) -> None:
        """Adds the step's global-batch losses to the epoch's sums."""
        self.epoch_sum.assign_add(tf.cast(tf.stop_gradient(values.losses), "float64"))
        self.epoch_steps.assign_add(1)

    def end_epoch(self) -> None:
        """Closes the epoch's average and sets the next epoch's weights."""
        steps = int(self.epoch_steps.numpy())
        if steps == 0:
            return
        average = self.epoch_sum.numpy() / steps
        previous = np.stack([self.previous.numpy()[1], average])
        epochs = int(self.epochs.numpy()) + 1
        self.previous.assign(previous)
        self.epochs.assign(epochs)
        self.epoch_sum.assign(np.zeros(len(self.tasks)))
        self.epoch_steps.assign(0)
        if epochs >= 2:
            self.task_weights.assign(dwa_weights(previous[1], previous[0], self.temperature))

    def weights_by_task(self) -> dict[str, tf.Tensor]:
        w = tf.convert_to_tensor(self.task_weights)
        return {task: w[k] for k, task in enumerate(self.tasks)}

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


def dwa_weights(last: np.ndarray, before: np.ndarray, temperature: float) -> np.ndarray:
    """``K softmax(r / T)`` with ``r = last / before`` (float64; a stable softmax)."""
    rates = np.asarray(last, np.float64) / np.asarray(before, np.float64)
    scaled = rates / temperature
    weights = np.exp(scaled - np.max(scaled))
    return len(rates) * weights / weights.sum()


DWA = DynamicWeightAverage  # the paper's name
