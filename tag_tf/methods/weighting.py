"""Per-task loss weighting for multi-task training: Uncertainty Weighting and GradNorm.

GradNorm comes in two forms: :class:`GradNorm` (Chen et al., at a shared kernel, as the
original TAG CelebA notebook) and :class:`RepresentationGradNorm` (at the shared
representation, as Standley et al.'s Taskonomy code used by TAG's Taskonomy runs).
All plug into :class:`tag_tf.MultiTaskModel` as ``weighting=...``. A weighting turns the
per-task losses L_t (already multiplied by ``compile``'s ``loss_weights``) into per-task
training terms whose sum is the training loss; validation losses stay the plain sum.

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
from tag_tf.core.task_losses import task_outputs


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


@keras.saving.register_keras_serializable(package="tag_tf")
class RepresentationGradNorm(keras.layers.Layer):
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

    ``MultiTaskModel`` computes the gradients from one forward pass of the network with R
    as an extra output: a functional network whose heads see the encoder only through R.
    Not combinable with affinity recording or PCGrad.

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
        """Creates the weights and splits ``network`` at the representation."""
        if network is None:
            raise ValueError("RepresentationGradNorm needs the network (MultiTaskModel passes "
                             "it).")
        self.tasks = list(tasks)
        n = len(self.tasks)
        self._split = _RepresentationSplit(network, shared_variables, self.representation)
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
        return self._split.layer.name

    def task_terms(self, losses: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """The losses themselves: the weights act on the encoder's gradient only."""
        return list(losses)

    def update(self, losses: tf.Tensor, norms: tf.Tensor) -> tf.Tensor:
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

    def train_phase(self, model, x, y, sample_weight, none_grads: list) -> tuple:
        """Forward, loss and gradients of one training step of ``model`` (a MultiTaskModel),
        updating the weights; returns what ``MultiTaskModel``'s phases return."""
        split = self._split
        trainable = model.trainable_variables
        encoder_ids = {id(v) for v in split.encoder_variables}
        heads = [v for v in trainable if id(v) not in encoder_ids]  # and the weighting's own
        with tf.GradientTape(persistent=True) as tape:
            outputs = split.probe(x, training=True)
            rep = outputs["representation"]
            y_pred = task_outputs(outputs["outputs"], model.tasks)
            loss = model._compute_loss(  # pylint: disable=protected-access
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            task_losses = model._require_task_losses().compute(  # pylint: disable=protected-access
                y, y_pred, sample_weight)
            scaled = [model.optimizer.scale_loss(value) for value in task_losses]
            extra = model._extra_loss(loss.dtype)  # pylint: disable=protected-access
            scaled_extra = model.optimizer.scale_loss(extra) if extra is not None else None
        rep_grads, norms, head_grads = [], [], {}
        previous = []
        for k, task in enumerate(self.tasks):
            with tf.control_dependencies(previous):  # one heads backward pass at a time
                grads = tape.gradient(scaled[k], [rep] + heads)
            if grads[0] is None:
                raise ValueError(f"The loss of task {task!r} does not depend on the "
                                 f"representation (the output of {self.layer_name!r}).")
            rep_grads.append(grads[0])
            norms.append(tf.norm(tf.cast(grads[0], "float64")))
            for v, g in zip(heads, grads[1:]):
                if g is not None:
                    head_grads[id(v)] = g if id(v) not in head_grads else head_grads[id(v)] + g
            previous = [grads[0]]
        w = self.update(tf.stack([tf.cast(v, "float64") for v in task_losses]), tf.stack(norms))
        weighted = tf.add_n([tf.cast(w[k], g.dtype) * g for k, g in enumerate(rep_grads)])
        encoder = dict(zip(map(id, split.encoder_variables), tape.gradient(
            rep, split.encoder_variables, output_gradients=weighted)))
        extra_grads = dict(zip(map(id, trainable), tape.gradient(scaled_extra, trainable))) \
            if scaled_extra is not None else {}
        del tape
        grads = []
        for i, v in enumerate(trainable):
            parts = [p for p in (head_grads.get(id(v)), encoder.get(id(v)),
                                 extra_grads.get(id(v))) if p is not None]
            if not parts:
                none_grads.append(i)
                grads.append(tf.zeros_like(v.value))
            else:
                grads.append(tf.add_n(parts) if len(parts) > 1 else parts[0])
        return loss, y_pred, grads, task_losses, tf.zeros([len(self.tasks)])  # no kernel norms

    def weights_by_task(self) -> dict[str, tf.Tensor]:
        w = tf.convert_to_tensor(self.task_weights)
        return {task: w[k] for k, task in enumerate(self.tasks)}

    def get_config(self):
        return {**super().get_config(), "representation": self.representation,
                "alpha": self.alpha, "step": self.step, "reset_until": self.reset_until}


class _RepresentationSplit:
    """A functional network seen as encoder -> R -> heads (R: one layer's output).

    Reads the network's Keras graph (nodes and their input tensors) without building a
    model from R, which would add nodes to the network's layers.
    """

    def __init__(self, network: keras.Model, shared_variables: Sequence[keras.Variable],
                 layer_name: Optional[str]):
        by_depth = getattr(network, "_nodes_by_depth", None)
        if not by_depth or not getattr(network, "inputs", None):
            raise ValueError("RepresentationGradNorm needs a functional network (built with "
                             f"keras.Model(inputs, outputs)). Received: {type(network).__name__}")
        if layer_name is None:
            shared = {id(v) for v in shared_variables}
            owners = [layer for layer in network.layers
                      if any(id(v) in shared for v in layer.trainable_variables)]
            if not owners:
                raise ValueError("No layer of the network holds a shared variable; name the "
                                 "representation layer: RepresentationGradNorm(representation=...)")
            layer = owners[-1]
        else:
            try:
                layer = network.get_layer(layer_name)
            except ValueError:
                raise ValueError(f"RepresentationGradNorm: unknown layer {layer_name!r}. Layers: "
                                 f"{[layer.name for layer in network.layers]}") from None
        nodes = [node for depth in by_depth.values() for node in depth if node.operation is layer]
        if len(nodes) != 1 or len(nodes[0].output_tensors) != 1:
            raise ValueError(f"The representation layer {layer.name!r} must be called once in "
                             f"the network and return one tensor (calls: {len(nodes)}).")
        rep = nodes[0].output_tensors[0]
        self.layer = layer
        self.encoder_variables = list(keras.Model(network.input, rep).trainable_variables)
        if not self.encoder_variables:
            raise ValueError(f"Nothing trainable comes before the representation {layer.name!r}.")
        head_variables = self._heads_variables(network, rep)
        encoder_ids = {id(v) for v in self.encoder_variables}
        both = [v.path for v in head_variables if id(v) in encoder_ids]
        if both:
            raise ValueError(f"Variables {both} are used both before and after the "
                             f"representation {layer.name!r}.")
        self.probe = keras.Model(network.input, {"representation": rep, "outputs": network.output})

    def _heads_variables(self, network, rep) -> list:
        """Variables of the layers between R and the outputs; fails when a path from the
        outputs reaches the network's inputs without passing through R."""
        pending = [t for t in keras.tree.flatten(network.output) if t is not rep]
        seen, variables = set(), []
        while pending:
            tensor = pending.pop()
            operation, node_index, _ = tensor._keras_history  # pylint: disable=protected-access
            node = operation._inbound_nodes[node_index]  # pylint: disable=protected-access
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.is_input:
                raise ValueError(
                    f"RepresentationGradNorm: the heads must see the encoder only through the "
                    f"output of {self.layer.name!r}, but output path reaches input "
                    f"{tensor.name!r} around it.")
            variables.extend(getattr(operation, "trainable_variables", []))
            pending.extend(t for t in node.input_tensors if t is not rep)
        return variables
