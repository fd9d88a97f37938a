"""Per-task loss weighting for multi-task training: Uncertainty Weighting and GradNorm.

GradNorm comes in two forms: :class:`GradNorm` (Chen et al., at a shared kernel, as the
original TAG CelebA notebook) and :class:`RepresentationGradNorm` (at the shared
representation, as Standley et al.'s Taskonomy code used by TAG's Taskonomy runs).
All plug into :class:`tag_tf.MultiTaskModel` as ``weighting=...`` through the protocol of
:mod:`tag_tf.core.parts`. A weighting turns the per-task losses L_t (already multiplied by
``compile``'s ``loss_weights``) into per-task training terms whose sum is the training
loss; validation losses stay the plain sum.

References:
  Kendall, Gal and Cipolla, "Multi-Task Learning Using Uncertainty to Weigh Losses for
  Scene Geometry and Semantics", CVPR 2018.
  Chen et al., "GradNorm: Gradient Normalization for Adaptive Loss Balancing in Deep
  Multitask Networks", ICML 2018.
  Standley et al., "Which Tasks Should Be Learned Together in Multi-task Learning?",
  ICML 2020 (code: tstandley/taskgrouping, ``GradNormRepFunction``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras
import tensorflow as tf

from tag_tf.core import replicas
from tag_tf.core.parts import GradientCombiner, LossWeighting, Needs, StepValues, TaskGradients
from tag_tf.core.representation import RepresentationSplit


@keras.saving.register_keras_serializable(package="tag_tf")
class UncertaintyWeighting(LossWeighting):
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

    def attach(self, tasks: Sequence[str], shared_variables: Sequence[keras.Variable],
               network: Optional[keras.Model] = None) -> None:
        """Creates one variable per task."""
        del shared_variables, network
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
class GradNorm(LossWeighting):
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

    def attach(self, tasks: Sequence[str], shared_variables: Sequence[keras.Variable],
               network: Optional[keras.Model] = None) -> None:
        """Creates the weights and picks the shared kernel W."""
        del network
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

    @property
    def needs(self) -> Needs:
        """The global batch's ``||d L_t / d W||`` at the kernel W, every step."""
        return Needs(kernel=getattr(self, "kernel", None))

    def task_terms(self, losses: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """``w_t * L_t`` with the weights held constant for the network's gradient."""
        w = tf.stop_gradient(tf.convert_to_tensor(self.task_weights))
        return [tf.cast(w[k], loss.dtype) * loss for k, loss in enumerate(losses)]

    def update(self, values: StepValues) -> None:
        """One GradNorm step on the weights, after the model's step, from its global-batch
        losses L_t, ``||dL_t/dW||`` (before the GradNorm weights) and learning rate."""
        losses = tf.cast(tf.stop_gradient(values.losses), "float32")
        norms = tf.cast(tf.stop_gradient(values.kernel_norms), "float32")
        learning_rate = values.learning_rate
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


@keras.saving.register_keras_serializable(package="tag_tf")
class RepresentationGradNorm(LossWeighting, GradientCombiner):
    """GradNorm at the shared representation, as Standley et al.'s Taskonomy code
    (``GradNormRepFunction``, used by TAG's Taskonomy runs).

    Differs from :class:`GradNorm` (Chen et al. at a shared kernel) in where, what and how:
      * G_t is the norm of ``dL_t / dR``, the gradient at the representation R (the output
        of the layer ``representation``) over the whole batch, times ``w_t``;
      * the weights scale only the gradient that flows from R into the encoder,
        ``sum_t w_t dL_t/dR``; the heads get their unweighted gradients and the training
        loss stays ``sum_t L_t`` (``L_t`` after ``compile``'s ``loss_weights``);
      * each step moves every weight by ``step * w_t`` (default 0.01 %) towards a target,
        then renormalises the weights to sum to the number of tasks.

    One step (the original's backward pass; t counts training steps from 1):
      if t < reset_until: L_t(0) = L_t and w = 1 (the original's ``count < 200``);
      G_t = w_t ||dL_t/dR||;  r_t = ratio_t / max(mean(ratio), 1e-8) with
      ratio_t = L_t / max(L_t(0), 1e-7);  target_t = mean(G) * max(r_t, 1e-8) ** alpha;
      u_t = target_t / G_t, renormalised to sum to n (denominator at least 1e-7);
      w_t <- w_t (1 + step) if w_t < u_t else w_t (1 - step); w <- n w / max(sum(w), 1e-7).
    The updated weights scale this step's encoder gradient (the original updates them in
    the backward pass before using them). When a G_t is 0 the weights are left unchanged
    (the original's update raised ZeroDivisionError and was skipped). A network that scales
    the representation's gradient (the original's 1/sqrt(n)) keeps doing so: the weighted
    gradient flows back through whatever lies between R and the encoder's variables.

    It weights gradients, not losses, so it is the model's gradient combiner too, at the
    representation (``needs.representation``): ``MultiTaskModel`` computes the gradients
    from one forward pass of the network with R as an extra output (a functional network
    whose heads see the encoder only through R). Not combinable with affinity recording or
    PCGrad. Under a multi-replica strategy, L_t and ``||dL_t/dR||`` are the global batch's.

    Args:
      representation: name of the layer whose output is R; None: the last layer (in the
        network's order) holding shared variables.
      alpha: the asymmetry hyper-parameter (1.5 in the original).
      step: the relative weight change per step (1e-4 in the original).
      reset_until: L(0) and the weights are reset on the steps t < reset_until (200; at
        least 2, so that L(0) is set).
    """

    def __init__(self, *, representation: Optional[str] = None, alpha: float = 1.5,
                 step: float = 1e-4, reset_until: int = 200,
                 name: str = "representation_gradnorm", **kwargs):
        super().__init__(name=name, **kwargs)
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0. Received: alpha={alpha}")
        if not 0 < step < 1:
            raise ValueError(f"step must be in (0, 1). Received: step={step}")
        if int(reset_until) != reset_until or reset_until < 2:
            raise ValueError(f"reset_until must be an integer >= 2 (L(0) is taken on the steps "
                             f"t < reset_until). "
                             f"Received: reset_until={reset_until}")
        self.representation, self.alpha, self.step = representation, float(alpha), float(step)
        self.reset_until = int(reset_until)

    def attach(self, tasks: Sequence[str], shared_variables: Sequence[keras.Variable],
               network: Optional[keras.Model] = None) -> None:
        """Creates the weights and finds the representation in ``network``."""
        if network is None:
            raise ValueError("RepresentationGradNorm needs the network (MultiTaskModel passes "
                             "it).")
        self.tasks = list(tasks)
        n = len(self.tasks)
        self._layer_name = RepresentationSplit(network, shared_variables,
                                               self.representation).layer.name
        # float64, as the original's Python floats: 1e-4 steps are not lost to rounding.
        make = lambda name, value: self.add_weight(  # noqa: E731
            shape=(n,), name=name, trainable=False, dtype="float64",
            initializer=keras.initializers.Constant(value))
        self.task_weights = make("task_weights", 1.0)
        self.initial_losses = make("initial_losses", 0.0)
        self.steps = self.add_weight(shape=(), name="steps", dtype="int64", trainable=False,
                                     initializer="zeros")
        self.built = True

    @property
    def layer_name(self) -> str:
        """The name of the layer whose output is the representation."""
        return self._layer_name

    @property
    def needs(self) -> Needs:
        """The per-task gradients at the representation, every step."""
        return Needs(task_gradients=True, representation=self._layer_name)

    def task_terms(self, losses: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """The losses themselves: the weights act on the encoder's gradient only."""
        return list(losses)

    def update_weights(self, losses: tf.Tensor, norms: tf.Tensor) -> tf.Tensor:
        """One step of the weights (see the class doc); returns the new weights.

        Args:
          losses: [tasks] this step's losses L_t.
          norms: [tasks] ``||dL_t/dR||`` (any common scale, e.g. a loss scale, cancels).
        """
        losses = tf.cast(tf.stop_gradient(losses), "float64")
        norms = tf.cast(tf.stop_gradient(norms), "float64")
        n = float(len(self.tasks))
        steps = self.steps.value + 1
        self.steps.assign(steps)
        reset = steps < self.reset_until
        w = tf.where(reset, tf.ones_like(losses), tf.convert_to_tensor(self.task_weights))
        initial = tf.where(reset, losses, tf.convert_to_tensor(self.initial_losses))
        self.initial_losses.assign(initial)
        g = norms * w
        ratio = losses / tf.maximum(initial, 1e-7)
        r = ratio / tf.maximum(tf.reduce_mean(ratio), 1e-8)
        target = tf.reduce_mean(g) * tf.maximum(r, 1e-8) ** self.alpha
        u = target / g
        u = u * n / tf.maximum(tf.reduce_sum(u), 1e-7)
        moved = tf.where(w < u, w + self.step * w, w - self.step * w)
        moved = moved * n / tf.maximum(tf.reduce_sum(moved), 1e-7)
        valid = tf.reduce_all(tf.not_equal(g, 0.0)) & tf.reduce_all(tf.math.is_finite(moved))
        w = tf.where(valid, moved, w)
        self.task_weights.assign(w)
        return w

    def combine(self, grads: TaskGradients, values: StepValues) -> list:
        """Updates the weights from this step's losses and ``||dL_t/dR||`` (the original
        updates them in the backward pass, before using them), then weights the gradient
        at R that flows into the encoder: ``sum_t w_t dL_t/dR``."""
        norms = tf.sqrt(tf.linalg.diag_part(grads.inner_products()))
        w = self.update_weights(values.losses, norms)
        return [tf.tensordot(tf.cast(w, g.dtype), g, axes=1) for g in grads.local]

    def weights_by_task(self) -> dict[str, tf.Tensor]:
        w = tf.convert_to_tensor(self.task_weights)
        return {task: w[k] for k, task in enumerate(self.tasks)}

    def get_config(self):
        return {**super().get_config(), "representation": self.representation,
                "alpha": self.alpha, "step": self.step, "reset_until": self.reset_until}
