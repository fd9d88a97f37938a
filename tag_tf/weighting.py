"""Per-task loss weighting for multi-task training: Uncertainty Weighting and GradNorm.

Both plug into :class:`tag_tf.MultiTaskModel` as ``weighting=...``. A weighting turns the
per-task losses L_t (already multiplied by ``compile``'s ``loss_weights``) into per-task
training terms whose sum is the training loss; validation losses stay the plain sum.

References:
  Kendall, Gal and Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for
  Scene Geometry and Semantics", CVPR 2018.
  Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
  Multitask Networks", ICML 2018.
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras
import tensorflow as tf

from tag_tf import replicas


@keras.saving.register_keras_serializable(package="tag_tf")
class UncertaintyWeighting(keras.layers.Layer):
    """Learned homoscedastic-uncertainty weights (Kendall et al., 2018).

    Standard form, with a trainable log-variance ``s_t = log sigma_t^2`` per task
    (initialised to 0): ``term_t = exp(-s_t) * L_t + s_t``.

    ``clipped=True`` is the original TAG CelebA notebook's variant: a trainable
    ``u_t`` (initialised to 1) clipped to [0.01, 10] and ``term_t = L_t / exp(2 u) + u``
    with ``u = clip(u_t)``.

    The variables are trainable weights of the model, so the model's optimizer learns
    them with the network and checkpoints carry them.
    """

    def __init__(self, *, clipped: bool = False, name: str = "uncertainty_weighting", **kwargs):
        super().__init__(name=name, **kwargs)
        self.clipped = clipped
        self.log_variance = None

    def attach(self, tasks: Sequence[str], shared_variables: Sequence[keras.Variable]) -> None:
        """Creates one variable per task."""
        del shared_variables
        self.tasks = list(tasks)
        self.log_variance = self.add_weight(
            shape=(len(self.tasks),), name="log_variance", trainable=True,
            initializer=keras.initializers.Constant(1.0 if self.clipped else 0.0))
        self.built = True

    def task_terms(self, losses: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """Per-task training terms whose sum is the training loss."""
        # Under a multi-replica strategy the replicas' gradients are summed and each loss
        # already carries 1/replicas (Keras); the additive term must carry it too.
        scale = replicas.scale_loss
        terms = []
        for k, loss in enumerate(losses):
            s = tf.cast(self.log_variance[k], loss.dtype)
            if self.clipped:
                u = tf.clip_by_value(s, 0.01, 10.0)
                terms.append(loss / tf.exp(2.0 * u) + scale(u))
            else:
                terms.append(tf.exp(-s) * loss + scale(s))
        return terms

    def weights_by_task(self) -> dict[str, tf.Tensor]:
        """The effective multiplier of each task's loss (for logs)."""
        s = tf.convert_to_tensor(self.log_variance)
        factor = tf.exp(-2.0 * tf.clip_by_value(s, 0.01, 10.0)) if self.clipped else tf.exp(-s)
        return {task: factor[k] for k, task in enumerate(self.tasks)}

    def get_config(self):
        return {**super().get_config(), "clipped": self.clipped}


@keras.saving.register_keras_serializable(package="tag_tf")
class GradNorm(keras.layers.Layer):
    """GradNorm task weights (Chen et al., 2018), as in the original TAG CelebA notebook.

    Each step, with task weights w_t (start at 1), L_t(0) the task losses of the first
    training step and W the chosen shared kernel:
      G_t = || d(w_t L_t) / dW ||,   r_t = (L_t / L_t(0)) / mean_k(L_k / L_k(0)),
      L_grad = sum_t | G_t - stop_gradient(mean_k(G_k) * r_t ** alpha) |.
    The weights take one SGD-with-momentum step on L_grad (learning rate = the model
    optimizer's current one times ``lr_multiplier``), are clipped to ``clip`` and
    renormalised to sum to the number of tasks. The training loss is sum_t w_t L_t.

    Args:
      alpha: the asymmetry hyper-parameter (0.1: the original CelebA setting).
      layer: name of the shared layer whose kernel is W; default the last shared
        variable with rank >= 2 (the original used its last shared conv kernel).
      momentum: momentum of the weights' SGD step (0.9, as the original optimizer).
      lr_multiplier: scales the weights' learning rate.
      clip: (min, max) for the weights before renormalising; None to skip.
    """

    def __init__(self, *, alpha: float = 0.1, layer: Optional[str] = None,
                 momentum: float = 0.9, lr_multiplier: float = 1.0,
                 clip: Optional[tuple[float, float]] = (0.1, 10.0), name: str = "gradnorm",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0. Received: alpha={alpha}")
        self.alpha, self.layer_name, self.momentum = alpha, layer, momentum
        self.lr_multiplier, self.clip = lr_multiplier, tuple(clip) if clip else None

    def attach(self, tasks: Sequence[str], shared_variables: Sequence[keras.Variable]) -> None:
        """Creates the weights and picks the shared kernel W."""
        self.tasks = list(tasks)
        n = len(self.tasks)
        candidates = [v for v in shared_variables if len(v.shape) >= 2]
        if self.layer_name is not None:
            candidates = [v for v in candidates if v.path.split("/")[0] == self.layer_name]
            if not candidates:
                raise ValueError(f"GradNorm layer {self.layer_name!r} is not a shared layer with "
                                 "a kernel.")
            self.kernel = candidates[0]
        else:
            if not candidates:
                raise ValueError("GradNorm needs a shared kernel (rank >= 2 variable).")
            self.kernel = candidates[-1]
        # Updated from global-batch (all-reduced) values, identical in every replica.
        make = lambda name, value: self.add_weight(  # noqa: E731
            shape=(n,), name=name, trainable=False, dtype="float32",
            initializer=keras.initializers.Constant(value), aggregation="only_first_replica")
        self.task_weights = make("task_weights", 1.0)
        self.velocity = make("velocity", 0.0)
        self.initial_losses = make("initial_losses", 0.0)
        self.initialized = self.add_weight(shape=(), name="initialized", dtype="bool",
                                           trainable=False, initializer="zeros",
                                           aggregation="only_first_replica")
        self.built = True

    def task_terms(self, losses: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """``w_t * L_t`` with the weights held constant for the network's gradient."""
        w = tf.stop_gradient(tf.convert_to_tensor(self.task_weights))
        return [tf.cast(w[k], loss.dtype) * loss for k, loss in enumerate(losses)]

    def update(self, losses: Sequence[tf.Tensor], kernel_grad_norms: tf.Tensor,
               learning_rate: tf.Tensor) -> None:
        """One GradNorm step on the weights.

        Args:
          losses: the per-task losses L_t of this step.
          kernel_grad_norms: ``||dL_t/dW||`` per task (before the GradNorm weights).
          learning_rate: the model optimizer's current learning rate.
        """
        losses = tf.cast(tf.stack([tf.stop_gradient(l) for l in losses]), "float32")
        norms = tf.cast(tf.stop_gradient(kernel_grad_norms), "float32")
        first = tf.logical_not(self.initialized.value)
        self.initial_losses.assign(tf.where(first, losses, self.initial_losses.value))
        self.initialized.assign(True)
        w = tf.convert_to_tensor(self.task_weights)
        g = w * norms
        ratio = losses / self.initial_losses.value
        r = ratio / tf.reduce_mean(ratio)
        target = tf.stop_gradient(tf.reduce_mean(g) * r ** self.alpha)
        grad_w = tf.sign(g - target) * norms  # d/dw_t of sum_t |w_t n_t - target_t|
        lr = tf.cast(learning_rate, "float32") * self.lr_multiplier
        velocity = self.momentum * self.velocity.value - lr * grad_w
        self.velocity.assign(velocity)
        w = w + velocity
        if self.clip is not None:
            w = tf.clip_by_value(w, self.clip[0], self.clip[1])
        self.task_weights.assign(w * len(self.tasks) / tf.reduce_sum(w))

    def weights_by_task(self) -> dict[str, tf.Tensor]:
        w = tf.convert_to_tensor(self.task_weights)
        return {task: w[k] for k, task in enumerate(self.tasks)}

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "layer": self.layer_name,
                "momentum": self.momentum, "lr_multiplier": self.lr_multiplier,
                "clip": list(self.clip) if self.clip else None}
