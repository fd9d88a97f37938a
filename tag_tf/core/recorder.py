"""TAG's affinity recording, called by :class:`tag_tf.MultiTaskModel`'s ``train_step``.

The model owns the state (non-trainable weights, so checkpoints carry it) and the
training; the :class:`AffinityRecorder` decides which steps record and, on those,
turns the per-task shared gradients into lookahead affinities (paper Eq. 1)
``Z[i, j] = 1 - L_j(theta_s - lr * g_i) / L_j(theta_s)``, gradient cosines and/or Eq. 1
to first order (``"taylor"``, :meth:`AffinityRecorder._taylor_products`), and adds them to
the accumulators.

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
import weakref
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from tag_tf.core import lookahead
from tag_tf.core import network_call
from tag_tf.core import replicas
from tag_tf.core import vectorized
from tag_tf.io.affinity_io import AffinityRecord
from tag_tf.core.config import MEASURES

NO_END = np.iinfo(np.int64).max
# Accumulators, counters and the window, in the order the model creates them (this order
# is the saved-weight layout: do not change it).
STATE = (("affinity_sum", "float64", 2), ("affinity_count", "int64", 2),
         ("affinity_skipped", "int64", 2), ("cosine_sum", "float64", 2),
         ("cosine_count", "int64", 2), ("cosine_skipped", "int64", 2),
         ("affinity_steps", "int64", 0), ("train_step_counter", "int64", 0),
         ("window_start", "int64", 0), ("window_end", "int64", 0),
         ("taylor_sum", "float64", 2), ("taylor_count", "int64", 2),
         ("taylor_skipped", "int64", 2))
BOOKKEEPING = tuple(name for name, _, _ in STATE)
# What reset() zeroes: everything but the step counter and the window.
ACCUMULATORS = tuple(name for name in BOOKKEEPING
                     if name not in ("train_step_counter", "window_start", "window_end"))


def add_state(model: keras.Model, num_tasks: int) -> None:
    """Creates the recording state as the model's own non-trainable weights.

    ``aggregation="only_first_replica"``: every replica computes identical (all-reduced)
    updates, and the first replica's is written to all copies once.
    """
    for name, dtype, rank in STATE:
        initializer = keras.initializers.Constant(NO_END) if name == "window_end" else "zeros"
        variable = model.add_weight(shape=(num_tasks,) * rank, dtype=dtype,
                                    initializer=initializer, trainable=False, name=name,
                                    aggregation="only_first_replica")
        setattr(model, name, variable)


def is_mixed(network: keras.Model) -> bool:
    """Whether any layer computes in a lower precision than its variables."""
    return any(layer.compute_dtype != layer.variable_dtype
               for layer in network._flatten_layers(include_self=True))  # pylint: disable=protected-access


@contextlib.contextmanager
def float32_compute(network: keras.Model):
    """Temporarily makes every mixed-precision layer of ``network`` compute in float32.

    Used around ``stateless_call`` while tracing (or running eagerly) the recording step;
    the policies are restored on exit. Only float32-variable layers are switched.
    """
    switched = []
    try:
        for layer in network._flatten_layers(include_self=True):  # pylint: disable=protected-access
            policy = layer._dtype_policy  # pylint: disable=protected-access
            if (isinstance(policy, keras.dtype_policies.DTypePolicy)
                    and not isinstance(policy, keras.dtype_policies.DTypePolicyMap)
                    and policy.quantization_mode is None
                    and policy.variable_dtype == "float32" and policy.compute_dtype != "float32"):
                switched.append((layer, policy))
                layer._dtype_policy = keras.dtype_policies.get("float32")  # pylint: disable=protected-access
        yield
    finally:
        for layer, policy in switched:
            layer._dtype_policy = policy  # pylint: disable=protected-access


class _Holder:
    """Keeps an object out of TF/Keras dependency tracking (e.g. a data iterator)."""

    def __init__(self, value=None):
        self.value = value


class AffinityRecorder:
    """Records affinities for one :class:`tag_tf.MultiTaskModel` (held by weak reference)."""

    def __init__(self, model: keras.Model):
        self._model = weakref.ref(model)
        self._validation = _Holder()

    @property
    def model(self) -> keras.Model:
        return self._model()

    # --------------------------------------------------------------- schedule
    def should_record(self) -> tf.Tensor:
        """Whether this step records (a bool tensor; read in the graph)."""
        model, every_n = self.model, self.model.affinity_config.every_n
        step = model.train_step_counter.value
        return tf.logical_and(
            tf.equal(step % every_n, 0),
            tf.logical_and(step >= model.window_start.value, step < model.window_end.value))

    def records_next_step(self) -> bool:
        """:meth:`should_record` for the next step, in Python (between steps)."""
        model = self.model
        step = int(model.train_step_counter.numpy())
        return (step % model.affinity_config.every_n == 0
                and int(model.window_start.numpy()) <= step < int(model.window_end.numpy()))

    # ------------------------------------------------------------ validation
    def attach_validation(self, dataset) -> None:
        """Draws validation batches cyclically from the start of ``dataset``."""
        self._validation.value = iter(dataset.repeat())

    @property
    def has_validation(self) -> bool:
        return self._validation.value is not None

    def _validation_batch(self):
        """This replica's share of the next global validation batch (the same in all)."""
        batch = replicas.draw_once(lambda: next(self._validation.value))
        return keras.utils.unpack_x_y_sample_weight(replicas.replica_shard(batch))

    # -------------------------------------------------------------- forward
    def _eval_losses(self, values, state, x, y, sample_weight, float32: bool) -> list:
        """Unweighted task losses of the network run with ``values`` (no state changes)."""
        model = self.model
        with float32_compute(model.network) if float32 else contextlib.nullcontext():
            outputs, _ = network_call.stateless_call(model.network, values, state, x,
                                                     training=True)
        return model._require_task_losses().compute(  # pylint: disable=protected-access
            y, model._as_task_dict(outputs), sample_weight, weighted=False)  # pylint: disable=protected-access

    def _float32_gradients(self, x, y, sample_weight, state_before, current, batch):
        """Per-task global shared gradients and base losses from a float32 forward pass.

        Under mixed precision the training tape's gradients went through float16 (about
        1e-3 relative error per element, enough to change small affinities by tens of
        percent); the lookahead uses these instead.
        """
        return self._shared_gradients(x, y, sample_weight, state_before, current, batch,
                                      float32=True, weighted=True)

    def _shared_gradients(self, x, y, sample_weight, state_before, current, batch, *,
                          float32: bool, weighted: bool):
        """Per-task global shared gradients and this replica's unweighted losses, from one
        forward pass with ``current`` values (float32 compute when ``float32``).

        ``weighted``: gradients of the training terms (loss weights and weighting, as the
        training tape's); otherwise of the unweighted losses (Taylor targets on the
        validation batch).
        """
        model = self.model
        network, shared = model.network, model.shared_variables
        task_losses = model._require_task_losses()  # pylint: disable=protected-access
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
            outputs = model._as_task_dict(outputs)  # pylint: disable=protected-access
            if weighted:
                losses = task_losses.compute(y, outputs, sample_weight)
                terms = model.weighting.task_terms(losses) if model.weighting else losses
            else:
                terms = task_losses.compute(y, outputs, sample_weight, weighted=False)
        base = task_losses.compute(y, outputs, sample_weight, weighted=False) if weighted \
            else terms
        config = model.affinity_config
        grads = []
        per_task = vectorized.task_gradients(tape, terms, watched, config.parallel_chunk(),
                                             model.tasks) if config.parallel else None
        for k in range(len(model.tasks)):
            local = per_task[k] if per_task else tape.gradient(terms[k], watched)
            local = [tf.zeros_like(w) if g is None else g for g, w in zip(local, watched)]
            grads.append(batch.gradients(local, k))
        del tape
        return grads, base

    # --------------------------------------------------------------- record
    def record(self, x, y, sample_weight, y_pred, state_before,
               task_gradient: Callable[[int], list], batch: replicas.GlobalBatch) -> tf.Tensor:
        """Adds one step's affinities to the accumulators.

        Args:
          x, y, sample_weight: this replica's training batch; ``y_pred`` its training forward.
          state_before: the network's non-trainable values before the training forward.
          task_gradient: k -> the global-batch gradient of task k's (loss-scaled) training
            term with respect to the shared variables. Called once per task, in order.
          batch: the training batch's :class:`replicas.GlobalBatch`.

        Sources are processed one after another (gradient, lookahead forward, losses),
        chained by control dependencies: run concurrently, their activation gradients
        coexist, which was measured to triple peak memory on CPU (``parallel=True`` batches
        them instead, :mod:`tag_tf.core.vectorized`, same Z). Cosine: cos(g_i, g_j)
        over the shared variables (kernels only by default, as the original CS baseline).
        Taylor: ``<s_i, grad L_j> / L_j`` from the same gradients, no forward pass; on the
        training batch ``grad L_j`` is ``g_j`` divided by ``d term_j / d L_j`` (the loss
        weight times the weighting's factor), on the validation batch one extra forward
        pass and one backward pass per task give it.

        Returns:
          The updated step count (a tensor to return from ``tf.cond``).
        """
        model = self.model
        config = model.affinity_config
        network = model.network
        shared = model.shared_variables
        loss_scale = model.optimizer.scale_loss(tf.constant(1.0))
        lr = lookahead.current_learning_rate(model.optimizer) * config.lookahead_scale
        lookahead_on = "lookahead" in config.measures
        taylor_on = "taylor" in config.measures
        float32 = is_mixed(network)
        current = [v.value for v in network.trainable_variables]
        train_base = None
        if float32:  # mixed precision: measure with float32 gradients and losses
            float32_grads, train_base = self._float32_gradients(
                x, y, sample_weight, state_before, current, batch)
            task_gradient = float32_grads.__getitem__  # unscaled: no loss scale to undo
            loss_scale = tf.constant(1.0)

        eval_grads = None  # Taylor targets on the validation batch: grad of unweighted L_j
        if (lookahead_on or taylor_on) and config.batch == "validation":
            x_eval, y_eval, w_eval = self._validation_batch()
            eval_batch = replicas.GlobalBatch(model._require_task_losses().losses,  # pylint: disable=protected-access
                                              model.tasks, y_eval, w_eval)
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
                base = model._require_task_losses().compute(  # pylint: disable=protected-access
                    y, y_pred, sample_weight, weighted=False)

        shared_index = {id(v): k for k, v in enumerate(shared)}

        def lookahead_row(grads):
            """Every task's loss after the lookahead step on one source's ``grads``."""
            unscaled = [g / tf.cast(loss_scale, g.dtype) for g in grads]
            new_shared = lookahead.lookahead_values(config.rule, model.optimizer, shared,
                                                    unscaled, lr)
            values = [new_shared[shared_index[id(v)]] if id(v) in shared_index else value
                      for v, value in zip(network.trainable_variables, current)]
            return tf.stack(self._eval_losses(values, state_before, x_eval, y_eval, w_eval,
                                              float32))

        rows, task_grads, previous = [], [], []
        if config.parallel:  # batched passes (tag_tf.core.vectorized): same rows
            task_grads = [task_gradient(k) for k in range(len(model.tasks))]
            if lookahead_on:
                rows = tf.unstack(vectorized.chunked_map(
                    lookahead_row, [tf.stack(g) for g in zip(*task_grads)],
                    config.parallel_chunk()))
        for k in range(0 if config.parallel else len(model.tasks)):
            with tf.control_dependencies(previous):
                grads = task_gradient(k)
                task_grads.append(grads)
                if not lookahead_on:
                    previous = grads[:1]
                    continue
                row = lookahead_row(grads)
            rows.append(row)
            previous = [row]

        global_base = None  # [target] global-batch base losses
        if lookahead_on:
            stacked = tf.stack([tf.stop_gradient(v) for v in base])
            both = eval_batch.losses(tf.concat([stacked[tf.newaxis], tf.stack(rows)], axis=0))
            global_base, after = both[0], both[1:]  # after: [source, target]
            self._add_lookahead(after, global_base, lr)
        if taylor_on:
            if global_base is None:
                global_base = eval_batch.losses(tf.stack([tf.stop_gradient(v) for v in base]))
            sources = task_grads
            if not float32 and isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer):
                sources = [[g / tf.cast(loss_scale, g.dtype) for g in grads]
                           for grads in task_grads]
            if eval_grads is None:  # training batch: grad L_j = g_j / (d term_j / d L_j)
                products = self._taylor_products(sources, sources, lr)
                slopes = self._term_slopes(base)
                products = products / slopes[tf.newaxis, :]
                target_ok = tf.not_equal(slopes, 0.0)
            else:
                products = self._taylor_products(sources, eval_grads, lr)
                target_ok = tf.ones([len(model.tasks)], tf.bool)
            self._add_taylor(products, tf.cast(global_base, "float64"), target_ok, lr)
        if "cosine" in config.measures:
            self._add_cosine(task_grads)
        model.affinity_steps.assign_add(1)
        return tf.identity(model.affinity_steps.value)

    def _add_lookahead(self, after: tf.Tensor, base: tf.Tensor, lr: tf.Tensor) -> None:
        model = self.model
        z = 1.0 - after / base[tf.newaxis, :]
        if model.affinity_config.divide_by_lr:
            z = z / tf.cast(lr, z.dtype)
        valid = tf.math.is_finite(z) & tf.math.is_finite(after) & \
            (tf.math.is_finite(base) & tf.not_equal(base, 0.0))[tf.newaxis, :]
        z = tf.cast(tf.where(valid, z, tf.zeros_like(z)), "float64")
        model.affinity_sum.assign_add(z)
        model.affinity_count.assign_add(tf.cast(valid, "int64"))
        model.affinity_skipped.assign_add(tf.cast(tf.logical_not(valid), "int64"))

    def _taylor_products(self, sources, targets, lr) -> tf.Tensor:
        """``[source, target]`` float64 matrix ``<s_i, t_j>`` over the shared variables.

        ``s_i`` is the lookahead step of source i (``lr * g_i``, or the optimizer's step
        ``theta - theta'_i`` computed directly by :func:`lookahead.lookahead_steps`),
        ``t_j`` the target gradients. One shared variable at a time, so only one variable's
        stacked steps exist at once; each variable's products in the gradients' dtype (a
        float32 dot product over a variable is accurate to ~1e-6 relative), summed over
        variables in float64.
        """
        model = self.model
        rule = model.affinity_config.rule
        count = len(sources)
        products = tf.zeros([count, len(targets)], "float64")
        for index, variable in enumerate(model.shared_variables):
            grads = [grads[index] for grads in sources]
            steps = grads if rule == "sgd" else lookahead.lookahead_steps(
                rule, model.optimizer, [variable] * count, grads, lr)
            steps = tf.reshape(tf.stack(steps), [count, -1])
            ends = tf.cast(tf.reshape(tf.stack([t[index] for t in targets]),
                                      [len(targets), -1]), steps.dtype)
            products += tf.cast(tf.matmul(steps, ends, transpose_b=True), "float64")
        if rule == "sgd":
            products *= tf.cast(lr, "float64")
        return products

    def _term_slopes(self, local_losses) -> tf.Tensor:
        """``d term_k / d L_k`` per task (float64): the loss weight times the weighting's
        slope, so ``grad L_k = g_k / slope`` for the training terms ``w_k(state) * L_k +
        const`` of loss weights, uncertainty weighting and GradNorm."""
        model = self.model
        task_losses = model._require_task_losses()  # pylint: disable=protected-access
        losses = [tf.identity(tf.stop_gradient(v)) for v in local_losses]
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(losses)
            weighted = [v * w if w != 1.0 else v for v, w in zip(losses, task_losses.weights)]
            terms = model.weighting.task_terms(weighted) if model.weighting else weighted
        slopes = []
        for k, loss in enumerate(losses):
            slope = tape.gradient(terms[k], loss)
            slopes.append(tf.zeros([], "float64") if slope is None
                          else tf.cast(slope, "float64"))
        del tape
        return tf.stack(slopes)

    def _add_taylor(self, products: tf.Tensor, base: tf.Tensor, target_ok: tf.Tensor,
                    lr: tf.Tensor) -> None:
        """Adds ``Z = <s_i, grad L_j> / L_j`` (divided by lr when ``divide_by_lr``); pairs
        with a non-finite value, a zero or non-finite base loss or an unknown target
        gradient (zero loss weight on the training batch) count as skipped."""
        model = self.model
        z = products / base[tf.newaxis, :]
        if model.affinity_config.divide_by_lr:
            z = z / tf.cast(lr, z.dtype)
        valid = tf.math.is_finite(z) & (tf.math.is_finite(base) & tf.not_equal(base, 0.0)
                                        & target_ok)[tf.newaxis, :]
        model.taylor_sum.assign_add(tf.where(valid, z, tf.zeros_like(z)))
        model.taylor_count.assign_add(tf.cast(valid, "int64"))
        model.taylor_skipped.assign_add(tf.cast(tf.logical_not(valid), "int64"))

    def _add_cosine(self, task_grads) -> None:
        """Adds cos(g_i, g_j) of the per-task shared gradients (CS baseline)."""
        model = self.model
        kernels_only = model.affinity_config.cosine_kernels_only
        shared = model.shared_variables
        keep = [k for k, v in enumerate(shared)
                if len(v.shape) >= 2 or not kernels_only] or range(len(shared))
        flat = tf.stack([tf.cast(tf.concat([tf.reshape(grads[k], [-1]) for k in keep], 0),
                                 "float64") for grads in task_grads])
        norms = tf.norm(flat, axis=1)
        cosine = tf.matmul(flat, flat, transpose_b=True) / (norms[:, None] * norms[None, :])
        valid = tf.math.is_finite(cosine)
        model.cosine_sum.assign_add(tf.where(valid, cosine, tf.zeros_like(cosine)))
        model.cosine_count.assign_add(tf.cast(valid, "int64"))
        model.cosine_skipped.assign_add(tf.cast(tf.logical_not(valid), "int64"))

    # -------------------------------------------------------------- results
    def measure_state(self, measure: str):
        """(sum, count, skipped) variables of one measure."""
        model = self.model
        if measure == "cosine":
            return model.cosine_sum, model.cosine_count, model.cosine_skipped
        if measure == "taylor":
            return model.taylor_sum, model.taylor_count, model.taylor_skipped
        return model.affinity_sum, model.affinity_count, model.affinity_skipped

    def affinity_record(self, measure: str = "lookahead") -> AffinityRecord:
        """The overall mean so far, ``[source, target]``; NaN where nothing was recorded."""
        if measure not in MEASURES:
            raise ValueError(f"measure must be one of {MEASURES}. Received: measure={measure!r}")
        model = self.model
        total_var, count_var, skipped_var = self.measure_state(measure)
        total = np.asarray(total_var.numpy(), dtype=np.float64)
        counts = np.asarray(count_var.numpy())
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(counts > 0, total / np.maximum(counts, 1), np.nan)
        config = model.affinity_config.to_json() if model.affinity_config else {}
        config["measure"] = measure
        config["recorded_steps"] = int(model.affinity_steps.numpy())
        config["train_steps"] = int(model.train_step_counter.numpy())
        return AffinityRecord(list(model.tasks), mean, counts=counts,
                              skipped=np.asarray(skipped_var.numpy()), config=config)

    def reset(self) -> None:
        """Zeroes the accumulators (not the step counter)."""
        for name in ACCUMULATORS:
            variable = getattr(self.model, name)
            variable.assign(np.zeros(variable.shape, dtype=variable.dtype))


class AffinityWindow(keras.callbacks.Callback):
    """Resolves the affinity window to global steps when ``fit()`` starts."""

    def on_train_begin(self, logs=None):
        model = self.model
        epochs = self.params.get("epochs")
        steps = self.params.get("steps")
        total = epochs * steps if epochs and steps else None
        start, end = model.affinity_config.step_window(total)
        model.window_start.assign(start)
        model.window_end.assign(NO_END if end is None else end)


def make_replicated_train_function(model: keras.Model, build: Callable[[], Optional[object]]):
    """A train function choosing, in Python before each step, a recording or a plain step.

    Args:
      model: the MultiTaskModel (its ``_static_record`` flag is read by ``train_step``
        while each function is traced, or at each eager call).
      build: returns a fresh Keras train function (``Trainer.make_train_function``).
    """
    if model.steps_per_execution != 1:
        raise ValueError(
            "Affinity recording under a multi-replica tf.distribute strategy needs "
            "steps_per_execution=1 (the recording decision is taken between steps). "
            f"Received: steps_per_execution={model.steps_per_execution}")
    functions = {record: build() for record in (False, True)}
    recorder = model._recorder  # pylint: disable=protected-access

    def train_function(iterator):
        record = recorder.records_next_step()
        model._static_record = record  # pylint: disable=protected-access
        return functions[record](iterator)

    return train_function
