"""TAG's affinity recording, called by :class:`tag_tf.MultiTaskModel`'s ``train_step``.

The model owns the training and hands the recorder what it reads, explicitly
(:class:`RecordingParts`: network, shared variables, task losses, optimizer and the
:class:`~tag_tf.core.state.AffinityState`); on a recording step the
:class:`AffinityRecorder` turns the per-task shared gradients into lookahead affinities
(paper Eq. 1) ``Z[i, j] = 1 - L_j(theta_s - lr * g_i) / L_j(theta_s)``, gradient cosines
and/or Eq. 1 to first order (``"taylor"``, :meth:`AffinityRecorder._taylor_products`), and
adds them to the state's accumulators.

Distribution (see :mod:`tag_tf.core.replicas`): g_i, L_j before and L_j after are the global
batch's, reduced across replicas, so every replica computes the same Z and the
accumulators (``aggregation="only_first_replica"``) are updated once with the value one
device would record. A multi-replica strategy cannot synchronise inside ``tf.cond``, so
there the recording decision is taken in Python before each step
(:meth:`MultiTaskModel.make_train_function`); on one device it is a ``tf.cond``.

Mixed precision: a lookahead step ``lr * g`` is about 1e-3 of the weights, the float16
resolution, so a float16 forward pass would quantise the step itself. Under a mixed
policy the base and lookahead losses are evaluated by a float32 forward pass
(:func:`float32_compute`) of the same weights; training stays mixed.

References:
  Fifty et al., "Efficiently Identifying Task Groupings for Multi-Task
  Learning", NeurIPS 2021.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, NamedTuple, Sequence

import keras
import tensorflow as tf

from tag_tf.core import lookahead
from tag_tf.core.keras_compat import float32_compute, is_mixed
from tag_tf.core import network_call
from tag_tf.core import replicas
from tag_tf.core import per_task
from tag_tf.core.config import AffinityConfig
from tag_tf.core.state import AffinityState
from tag_tf.core.task_losses import TaskLosses, task_outputs


class Validation:
    """The validation batches of ``batch="validation"``, drawn cyclically from the start of a
    dataset (held outside TF/Keras dependency tracking: an iterator is no state to save)."""

    def __init__(self):
        self.iterator = None

    def attach(self, dataset) -> None:
        self.iterator = iter(dataset.repeat())

    @property
    def attached(self) -> bool:
        return self.iterator is not None

    def batch(self):
        """This replica's share of the next global validation batch (the same in all)."""
        batch = replicas.draw_once(lambda: next(self.iterator))
        return keras.utils.unpack_x_y_sample_weight(replicas.replica_shard(batch))


class RecordingParts(NamedTuple):
    """What a recording step reads, handed over explicitly by the model.

    Attributes:
      config: the :class:`AffinityConfig`.
      network: the multi-output network (called with substituted values, never changed).
      shared: the shared variables (TAG's theta_s), in the model's order.
      tasks: the task names.
      task_losses: each task's loss and weight.
      terms: the loss weighting's ``task_terms`` (the identity without one): the training
        terms whose gradients are the per-task gradients.
      optimizer: the model's optimizer (learning rate, loss scale, the lookahead rule).
      state: the :class:`AffinityState` the step adds to.
      validation: the validation batches (``batch="validation"``).
    """

    config: AffinityConfig
    network: keras.Model
    shared: Sequence[Any]
    tasks: Sequence[str]
    task_losses: TaskLosses
    terms: Callable[[list], list]
    optimizer: keras.optimizers.Optimizer
    state: AffinityState
    validation: Validation


class AffinityRecorder:
    """Turns one step's per-task gradients into affinities added to the state."""

    def __init__(self, parts: RecordingParts):
        self.parts = parts

    # -------------------------------------------------------------- forward
    def _eval_losses(self, values, state, x, y, sample_weight, float32: bool) -> list:
        """Unweighted task losses of the network run with ``values`` (no state changes)."""
        parts = self.parts
        with float32_compute(parts.network) if float32 else contextlib.nullcontext():
            outputs, _ = network_call.stateless_call(parts.network, values, state, x,
                                                     training=True)
        return parts.task_losses.compute(y, task_outputs(outputs, parts.tasks), sample_weight,
                                         weighted=False)

    def _shared_gradients(self, x, y, sample_weight, state_before, current, batch, *,
                          float32: bool, weighted: bool):
        """Per-task global shared gradients (stacked ``[T, *shape]``) and this replica's
        unweighted losses, from one forward pass with ``current`` values.

        ``float32``: the forward computes in float32 (mixed precision: the training tape's
        gradients went through float16, about 1e-3 relative error per element, enough to
        change small affinities by tens of percent). ``weighted``: gradients of the training
        terms (loss weights and weighting, as the training tape's); otherwise of the
        unweighted losses (Taylor targets on the validation batch).
        """
        parts = self.parts
        network, shared, task_losses = parts.network, parts.shared, parts.task_losses
        position = {id(v): k for k, v in enumerate(network.trainable_variables)}
        watched = [tf.identity(current[position[id(v)]]) for v in shared]
        values = list(current)
        for variable, value in zip(shared, watched):
            values[position[id(variable)]] = value
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(watched)
            with float32_compute(network) if float32 else contextlib.nullcontext():
                outputs, _ = network_call.stateless_call(network, values, state_before, x,
                                                         training=True)
            outputs = task_outputs(outputs, parts.tasks)
            base = task_losses.compute(y, outputs, sample_weight, weighted=False)
            terms = parts.terms(task_losses.weigh(base)) if weighted else base
        config = parts.config
        local = per_task.task_gradients(tape, terms, watched,
                                        outputs=[outputs[t] for t in parts.tasks],
                                        parallel=config.parallel, chunk=config.parallel_chunk())
        del tape
        return batch.stacked_gradients(local), base

    # --------------------------------------------------------------- record
    def record(self, x, y, sample_weight, losses: Sequence[tf.Tensor], state_before,
               task_grads: Sequence[tf.Tensor], batch: replicas.GlobalBatch) -> tf.Tensor:
        """Adds one step's affinities to the accumulators.

        Args:
          x, y, sample_weight: this replica's training batch.
          losses: this replica's unweighted task losses of the training forward pass.
          state_before: the network's non-trainable values before the training forward.
          task_grads: the global batch's per-task gradients of the (loss-scaled) training
            terms with respect to the shared variables: one ``[T, *shape]`` tensor per shared
            variable (row k: task k), identical in every replica.
          batch: the training batch's :class:`replicas.GlobalBatch`.

        Lookahead: the T lookahead forwards are one traced body in a ``tf.while_loop`` over
        the source task (:func:`tag_tf.core.per_task.map_tasks`), at most
        ``per_task.ITERATIONS_IN_FLIGHT`` at a time so that the activations of T forwards
        never coexist (``parallel=True`` batches them
        instead, :mod:`tag_tf.core.vectorized`, same Z). Cosine: cos(g_i, g_j) over the shared
        variables (kernels only by default, as the original CS baseline). Taylor:
        ``<s_i, grad L_j> / L_j`` from the same gradients, no forward pass; on the training
        batch ``grad L_j`` is ``g_j`` divided by ``d term_j / d L_j`` (the loss weight times
        the weighting's factor), on the validation batch one extra forward pass and T
        backward passes give it.

        Returns:
          The updated step count (a tensor to return from ``tf.cond``).
        """
        parts = self.parts
        config, network, shared, tasks = parts.config, parts.network, parts.shared, parts.tasks
        loss_scale = parts.optimizer.scale_loss(tf.constant(1.0))
        lr = lookahead.current_learning_rate(parts.optimizer) * config.lookahead_scale
        lookahead_on = "lookahead" in config.measures
        taylor_on = "taylor" in config.measures
        float32 = is_mixed(network)
        current = [v.value for v in network.trainable_variables]
        train_base = None
        if float32:  # mixed precision: measure with float32 gradients and losses
            task_grads, train_base = self._shared_gradients(
                x, y, sample_weight, state_before, current, batch, float32=True, weighted=True)
            loss_scale = tf.constant(1.0)  # unscaled: no loss scale to undo
        task_grads = [g / tf.cast(loss_scale, g.dtype) for g in task_grads]

        eval_grads = None  # Taylor targets on the validation batch: grad of unweighted L_j
        if (lookahead_on or taylor_on) and config.batch == "validation":
            x_eval, y_eval, w_eval = parts.validation.batch()
            eval_batch = replicas.GlobalBatch(parts.task_losses.losses, tasks, y_eval, w_eval)
            if taylor_on:  # one forward with a tape serves the gradients and the base losses
                eval_grads, base = self._shared_gradients(
                    x_eval, y_eval, w_eval, state_before, current, eval_batch,
                    float32=float32, weighted=False)
            else:
                base = self._eval_losses(current, state_before, x_eval, y_eval, w_eval,
                                         float32)
        elif lookahead_on or taylor_on:
            x_eval, y_eval, w_eval, eval_batch = x, y, sample_weight, batch
            if float32:  # the training forward ran in float16: use the float32 one
                base = train_base
            else:
                base = list(losses)

        shared_index = {id(v): k for k, v in enumerate(shared)}

        def lookahead_row(grads):
            """Every task's loss after the lookahead step on one source's ``grads``."""
            new_shared = lookahead.lookahead_values(config.rule, parts.optimizer, shared,
                                                    grads, lr)
            values = [new_shared[shared_index[id(v)]] if id(v) in shared_index else value
                      for v, value in zip(network.trainable_variables, current)]
            return tf.stack(self._eval_losses(values, state_before, x_eval, y_eval, w_eval,
                                              float32))

        global_base = None  # [target] global-batch base losses
        if lookahead_on or taylor_on:
            stacked_base = tf.stack([tf.stop_gradient(v) for v in base])
        if lookahead_on:
            rows = per_task.map_tasks(lookahead_row, task_grads, stacked_base.dtype,
                                      parallel=config.parallel, chunk=config.parallel_chunk())
            both = eval_batch.losses(tf.concat([stacked_base[tf.newaxis], rows], axis=0))
            global_base, after = both[0], both[1:]  # after: [source, target]
            self._add_lookahead(after, global_base, lr)
        if taylor_on:
            if global_base is None:
                global_base = eval_batch.losses(stacked_base)
            if eval_grads is None:  # training batch: grad L_j = g_j / (d term_j / d L_j)
                slopes = self._term_slopes(base)
                products = self._taylor_products(task_grads, task_grads, lr)
                products = products / slopes[tf.newaxis, :]
                target_ok = tf.not_equal(slopes, 0.0)
            else:
                products = self._taylor_products(task_grads, eval_grads, lr)
                target_ok = tf.ones([len(tasks)], tf.bool)
            self._add_taylor(products, tf.cast(global_base, "float64"), target_ok, lr)
        if "cosine" in config.measures:
            self._add_cosine(task_grads)
        return parts.state.count_record()

    def _add_lookahead(self, after: tf.Tensor, base: tf.Tensor, lr: tf.Tensor) -> None:
        z = 1.0 - after / base[tf.newaxis, :]
        if self.parts.config.divide_by_lr:
            z = z / tf.cast(lr, z.dtype)
        valid = tf.math.is_finite(z) & tf.math.is_finite(after) & \
            (tf.math.is_finite(base) & tf.not_equal(base, 0.0))[tf.newaxis, :]
        self.parts.state.add("lookahead", tf.where(valid, z, tf.zeros_like(z)), valid)

    def _taylor_products(self, sources, targets, lr) -> tf.Tensor:
        """``[source, target]`` float64 matrix ``<s_i, t_j>`` over the shared variables.

        ``s_i`` is the lookahead step of source i (``lr * g_i``, or the optimizer's step
        ``theta - theta'_i`` computed directly by :func:`lookahead.lookahead_steps`, for all
        sources at once), ``t_j`` the target gradients; both stacked ``[T, *shape]`` per
        shared variable. Each variable's products in the gradients' dtype (a float32 dot
        product over a variable is accurate to ~1e-6 relative), summed in float64.
        """
        parts = self.parts
        rule = parts.config.rule
        products = tf.zeros([len(parts.tasks)] * 2, "float64")
        for variable, grads, ends in zip(parts.shared, sources, targets):
            steps = grads if rule == "sgd" else lookahead.lookahead_steps(
                rule, parts.optimizer, [variable], [grads], lr, stacked=True)[0]
            steps = tf.reshape(steps, [tf.shape(steps)[0], -1])
            ends = tf.cast(tf.reshape(ends, [tf.shape(ends)[0], -1]), steps.dtype)
            products += tf.cast(tf.matmul(steps, ends, transpose_b=True), "float64")
        if rule == "sgd":
            products *= tf.cast(lr, "float64")
        return products

    def _term_slopes(self, local_losses) -> tf.Tensor:
        """``d term_k / d L_k`` per task (float64): the loss weight times the weighting's
        slope, so ``grad L_k = g_k / slope`` for the training terms ``w_k(state) * L_k +
        const`` of loss weights, uncertainty weighting and GradNorm (each term depends on
        its own loss only, so one gradient of their sum gives every slope)."""
        task_losses = self.parts.task_losses
        losses = tf.stop_gradient(tf.stack(list(local_losses)))
        with tf.GradientTape() as tape:
            tape.watch(losses)
            unstacked = tf.unstack(losses)
            weighted = [v * w if w != 1.0 else v for v, w in zip(unstacked, task_losses.weights)]
            total = tf.add_n([tf.reshape(t, []) for t in self.parts.terms(weighted)])
        slopes = tape.gradient(total, losses, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return tf.cast(slopes, "float64")

    def _add_taylor(self, products: tf.Tensor, base: tf.Tensor, target_ok: tf.Tensor,
                    lr: tf.Tensor) -> None:
        """Adds ``Z = <s_i, grad L_j> / L_j`` (divided by lr when ``divide_by_lr``); pairs
        with a non-finite value, a zero or non-finite base loss or an unknown target
        gradient (zero loss weight on the training batch) count as skipped."""
        z = products / base[tf.newaxis, :]
        if self.parts.config.divide_by_lr:
            z = z / tf.cast(lr, z.dtype)
        valid = tf.math.is_finite(z) & (tf.math.is_finite(base) & tf.not_equal(base, 0.0)
                                        & target_ok)[tf.newaxis, :]
        self.parts.state.add("taylor", z, valid)

    def _add_cosine(self, task_grads) -> None:
        """Adds cos(g_i, g_j) of the per-task shared gradients (CS baseline)."""
        kernels_only = self.parts.config.cosine_kernels_only
        shared = self.parts.shared
        keep = [k for k, v in enumerate(shared)
                if len(v.shape) >= 2 or not kernels_only] or range(len(shared))
        flat = tf.concat([tf.reshape(tf.cast(task_grads[k], "float64"),
                                     [tf.shape(task_grads[k])[0], -1]) for k in keep], axis=1)
        norms = tf.norm(flat, axis=1)
        cosine = tf.matmul(flat, flat, transpose_b=True) / (norms[:, None] * norms[None, :])
        self.parts.state.add("cosine", cosine, tf.math.is_finite(cosine))
