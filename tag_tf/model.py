"""A Keras model that records TAG's lookahead inter-task affinity during ``fit()``.

Usage::

    network = keras.Model(inputs, {"a": head_a, "b": head_b})   # any multi-output model
    model = tag_tf.MultiTaskModel(network, shared=["trunk_1", "trunk_2"],
                                  affinity=tag_tf.AffinityConfig(every_n=10))
    model.compile(optimizer="sgd", loss={"a": "mse", "b": "mse"})
    model.fit(dataset, epochs=5, callbacks=[tag_tf.AffinityLogger(output_dir="out")])
    record = model.affinity_record()          # record.affinity[source, target]

On a recording step, ``train_step`` (paper Eq. 1):
  1. runs the forward pass once under a persistent tape and takes each task's
     gradient of the shared variables, g_i;
  2. for every source task i, evaluates all task losses with the shared
     variables replaced by their lookahead values (``stateless_call``: no
     variable, BatchNorm statistic or RNG state is changed; dropout masks are
     those of the training forward pass), giving
     ``Z[i, j] = 1 - L_j(theta_s - lr * g_i) / L_j(theta_s)``;
  3. trains with the gradient Keras would use: the shared part is sum_i g_i
     (plus regularisation), so step 1 is reused, not recomputed.
Other steps run Keras' own ``train_step`` logic unchanged.

References:
  Fifty et al., "Efficiently Identifying Task Groupings for Multi-Task
  Learning", NeurIPS 2021.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from tag_tf import lookahead
from tag_tf.affinity_io import AffinityRecord, validate_tasks
from tag_tf.config import MEASURES, AffinityConfig
from tag_tf.pcgrad import PCGrad
from tag_tf.task_losses import TaskLosses, resolve_task_losses
from tag_tf.weighting import GradNorm, UncertaintyWeighting

_NO_END = np.iinfo(np.int64).max


class _Holder:
    """Keeps an object out of TF/Keras dependency tracking (e.g. a data iterator)."""

    def __init__(self, value=None):
        self.value = value


def network_task_names(network: keras.Model) -> list[str]:
    """Task names of a functional multi-output model: its output names."""
    names = getattr(network, "output_names", None)
    if not names:
        raise ValueError("Cannot read task names from the network; pass tasks=[...] (the keys "
                         "of the dict the network returns).")
    return validate_tasks(names)


def resolve_shared_variables(network: keras.Model, shared: Sequence[Any]) -> list:
    """Resolves layers, layer names or variables to the network's shared trainable variables."""
    if isinstance(shared, (str, keras.layers.Layer, keras.Variable)):
        shared = [shared]
    by_id = {id(v): v for v in network.trainable_variables}
    found = []
    for item in shared:
        if isinstance(item, str):
            try:
                item = network.get_layer(item)
            except ValueError:
                raise ValueError(f"shared names an unknown layer {item!r}. Layers: "
                                 f"{[layer.name for layer in network.layers]}") from None
        if isinstance(item, keras.layers.Layer):
            variables = item.trainable_variables
            if not variables:
                raise ValueError(f"Shared layer {item.name!r} has no trainable variables.")
        elif isinstance(item, keras.Variable):
            variables = [item]
        else:
            raise ValueError(f"shared must hold layers, layer names or variables. "
                             f"Received: {item!r}")
        for variable in variables:
            if id(variable) not in by_id:
                raise ValueError(f"Shared variable {variable.path!r} is not a trainable "
                                 "variable of the network.")
            if all(variable is not v for v in found):
                found.append(variable)
    if not found:
        raise ValueError("The shared set is empty: name the layers (or variables) that all "
                         "tasks share. Received: shared=[]")
    return found


@keras.saving.register_keras_serializable(package="tag_tf")
class MultiTaskModel(keras.Model):
    """Wraps a multi-output network; records TAG affinities during ``fit()``.

    Args:
      network: a Keras model returning one output per task (a dict keyed by
        task name, or a list in ``network.output_names`` order).
      shared: the shared layers (objects or names) or variables: the trunk
        whose lookahead step defines the affinity.
      affinity: an :class:`AffinityConfig`, or None to train without recording.
      weighting: None, :class:`tag_tf.UncertaintyWeighting` or :class:`tag_tf.GradNorm`:
        turns the per-task losses into the training loss.
      gradient: None or :class:`tag_tf.PCGrad`: combines the per-task gradients of the
        shared variables.
      tasks: task names, needed only when the network has no ``output_names``.

    With none of ``affinity``, ``weighting`` and ``gradient``, ``train_step`` is Keras' own.
    """

    def __init__(self, network: keras.Model, shared: Sequence[Any], *,
                 affinity: Optional[AffinityConfig] = AffinityConfig(),
                 weighting: Optional[keras.layers.Layer] = None,
                 gradient: Optional[PCGrad] = None,
                 tasks: Optional[Sequence[str]] = None, name: str = "multi_task_model",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        self.network = network
        self.tasks = validate_tasks(tasks) if tasks is not None else network_task_names(network)
        self._shared_spec = list(shared) if isinstance(shared, (list, tuple)) else [shared]
        self.shared_variables = resolve_shared_variables(network, self._shared_spec)
        if affinity is not None and not isinstance(affinity, AffinityConfig):
            raise ValueError(f"affinity must be an AffinityConfig or None. Received: {affinity!r}")
        self.affinity_config = affinity
        if weighting is not None and not isinstance(weighting, (UncertaintyWeighting, GradNorm)):
            raise ValueError("weighting must be UncertaintyWeighting, GradNorm or None. "
                             f"Received: {weighting!r}")
        if gradient is not None and not isinstance(gradient, PCGrad):
            raise ValueError(f"gradient must be PCGrad or None. Received: {gradient!r}")
        self.weighting = weighting
        if weighting is not None:
            weighting.attach(self.tasks, self.shared_variables)
        self.gradient = gradient
        self._task_losses: Optional[TaskLosses] = None
        self._validation = _Holder()
        n = len(self.tasks)
        # Affinity state: non-trainable weights, so checkpoints carry it.
        self.affinity_sum = self.add_weight(shape=(n, n), dtype="float64", initializer="zeros",
                                            trainable=False, name="affinity_sum")
        self.affinity_count = self.add_weight(shape=(n, n), dtype="int64", initializer="zeros",
                                              trainable=False, name="affinity_count")
        self.affinity_skipped = self.add_weight(shape=(n, n), dtype="int64",
                                                initializer="zeros", trainable=False,
                                                name="affinity_skipped")
        self.cosine_sum = self.add_weight(shape=(n, n), dtype="float64", initializer="zeros",
                                          trainable=False, name="cosine_sum")
        self.cosine_count = self.add_weight(shape=(n, n), dtype="int64", initializer="zeros",
                                            trainable=False, name="cosine_count")
        self.cosine_skipped = self.add_weight(shape=(n, n), dtype="int64", initializer="zeros",
                                              trainable=False, name="cosine_skipped")
        self.affinity_steps = self.add_weight(shape=(), dtype="int64", initializer="zeros",
                                              trainable=False, name="affinity_steps")
        self.train_step_counter = self.add_weight(shape=(), dtype="int64", initializer="zeros",
                                                  trainable=False, name="train_step_counter")
        self.window_start = self.add_weight(shape=(), dtype="int64", initializer="zeros",
                                            trainable=False, name="window_start")
        self.window_end = self.add_weight(
            shape=(), dtype="int64", trainable=False, name="window_end",
            initializer=keras.initializers.Constant(_NO_END))
        if network.built:
            self.built = True  # e.g. BackupAndRestore needs a built model before fit()

    # ----------------------------------------------------------------- forward
    def call(self, inputs, training=None):
        return self._as_task_dict(self.network(inputs, training=training))

    def _as_task_dict(self, outputs) -> dict:
        if isinstance(outputs, dict):
            missing = [t for t in self.tasks if t not in outputs]
            if missing:
                raise ValueError(f"The network's outputs lack task(s) {missing}. "
                                 f"Outputs: {sorted(outputs)}")
            return {t: outputs[t] for t in self.tasks}
        outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
        if len(outputs) != len(self.tasks):
            raise ValueError(f"The network returned {len(outputs)} outputs for "
                             f"{len(self.tasks)} tasks {self.tasks}.")
        return dict(zip(self.tasks, outputs))

    # ----------------------------------------------------------------- compile
    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, **kwargs):
        """Keras ``compile``; ``loss`` / ``loss_weights`` also define each task's loss."""
        self._task_losses = resolve_task_losses(self.tasks, loss, loss_weights)
        keras_loss = dict(zip(self.tasks, self._task_losses.losses))
        keras_weights = None if loss_weights is None else dict(
            zip(self.tasks, self._task_losses.weights))
        if self.affinity_config is not None:
            # XLA on the unrolled lookahead was measured to allocate ~8 GB on CPU: opt-in only.
            kwargs.setdefault("jit_compile", False)
        super().compile(optimizer=optimizer, loss=keras_loss, loss_weights=keras_weights,
                        **kwargs)
        # Save the caller's loss arguments (not the resolved per-task objects) for reloading.
        self._compile_config.config.update(loss=loss, loss_weights=loss_weights)
        config = self.affinity_config
        if config is not None:
            lookahead.check_supported(self.optimizer, config.rule)
            if config.batch == "validation" and config.validation_data is not None:
                self._validation.value = iter(config.validation_data.repeat())

    def attach_validation_data(self, dataset: Any) -> None:
        """Gives a loaded ``batch="validation"`` model its validation batches again (datasets
        are not saved with the model); batches are drawn cyclically from the start."""
        config = self.affinity_config
        if config is None or config.batch != "validation":
            raise ValueError("attach_validation_data() is for models recording affinity with "
                             "AffinityConfig(batch='validation').")
        self.affinity_config = dataclasses.replace(config, validation_data=dataset)
        self._validation.value = iter(dataset.repeat())

    def compile_from_config(self, config):
        """Re-compiles a loaded model (Keras skips this for models overriding ``compile``),
        so ``keras.models.load_model`` returns a model that trains and evaluates at once,
        with its optimizer state restored."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built and getattr(self, "optimizer", None) is not None:
            self.optimizer.build(self.trainable_variables)

    def fit(self, *args, callbacks=None, **kwargs):
        """Keras ``fit``; also resolves a fractional affinity window to steps."""
        callbacks = list(callbacks or [])
        config = self.affinity_config
        if config is not None and config.batch == "validation" and self._validation.value is None:
            raise ValueError(
                "This model records affinity on validation batches but has no validation "
                "dataset (datasets are not saved with a model): call "
                "model.attach_validation_data(dataset) after compile() or loading.")
        if self.affinity_config is not None:
            callbacks.insert(0, _AffinityWindow())
        return super().fit(*args, callbacks=callbacks, **kwargs)

    # ------------------------------------------------------------------- loss
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Keras' loss; in training with a ``weighting``, the weighted per-task terms instead.

        Keras' own computation still runs (it tracks the per-task loss metrics); validation
        losses stay the plain ``loss_weights`` sum, comparable across methods.
        """
        total = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        if self.weighting is None or not training:
            return total
        terms = self.weighting.task_terms(
            self._require_task_losses().compute(y, y_pred, sample_weight))
        extra = self._extra_loss(total.dtype)
        return tf.add_n(terms) + extra if extra is not None else tf.add_n(terms)

    def _extra_loss(self, dtype):
        """Regularisation and ``add_loss`` terms, summed as Keras does (None if there are none)."""
        if not self.losses:
            return None
        return tf.add_n([keras.ops.sum(keras.ops.cast(l, dtype)) for l in self.losses])

    # -------------------------------------------------------------- train step
    def train_step(self, data):
        if self.affinity_config is None and self.weighting is None and self.gradient is None:
            return super().train_step(data)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if not self.optimizer.built:  # the lookahead reads optimizer slots before apply()
            self.optimizer.build(self.trainable_variables)
        trainable = self.trainable_variables
        none_grads = []  # indices Keras would leave without gradient (filled at trace time)
        record = self._should_record()
        if self.gradient is not None:  # PCGrad needs the per-task gradients every step
            outputs = self._task_phase(x, y, sample_weight, none_grads, record)
        elif record is not None:
            outputs = tf.cond(
                record,
                functools.partial(self._task_phase, x, y, sample_weight, none_grads, True),
                functools.partial(self._plain_phase, x, y, sample_weight, none_grads))
        else:
            outputs = self._plain_phase(x, y, sample_weight, none_grads)
        loss, y_pred, grads, task_losses, kernel_norms = outputs
        self.train_step_counter.assign_add(1)
        self._loss_tracker.update_state(
            loss, sample_weight=tf.shape(next(i for i in tf.nest.flatten(x) if i is not None))[0])
        grads = [None if i in none_grads else g for i, g in enumerate(grads)]
        lr = lookahead.current_learning_rate(self.optimizer)
        self.optimizer.apply_gradients(zip(grads, trainable))
        if isinstance(self.weighting, GradNorm):
            self.weighting.update(task_losses, kernel_norms, lr)
        logs = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        if self.weighting is not None:
            logs = dict(logs)
            logs.update({f"{task}_weight": w
                         for task, w in self.weighting.weights_by_task().items()})
        return logs

    def _should_record(self):
        """Whether this step records affinities (a bool tensor), or None without affinity."""
        if self.affinity_config is None:
            return None
        step = self.train_step_counter.value
        return tf.logical_and(
            tf.equal(step % self.affinity_config.every_n, 0),
            tf.logical_and(step >= self.window_start.value, step < self.window_end.value))

    def _kernel_norms(self, tape, task_losses):
        """``||dL_t/dW||`` at GradNorm's kernel (zeros without GradNorm)."""
        if not isinstance(self.weighting, GradNorm):
            return tf.zeros([len(self.tasks)])
        norms = [tf.norm(tape.gradient(value, self.weighting.kernel)) for value in task_losses]
        return tf.cast(tf.stack(norms), "float32")

    def _plain_phase(self, x, y, sample_weight, none_grads):
        """Keras' own forward, loss and gradient (backend/tensorflow/trainer.py)."""
        with tf.GradientTape(persistent=isinstance(self.weighting, GradNorm)) as tape:
            y_pred = self(x, training=True)
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                      training=True)
            task_losses = self._require_task_losses().compute(y, y_pred, sample_weight)
            scaled_loss = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled_loss, self.trainable_variables)
        kernel_norms = self._kernel_norms(tape, task_losses)
        del tape
        none_grads.extend(i for i, g in enumerate(grads) if g is None)
        return (loss, y_pred, _zeros_for_none(grads, self.trainable_variables), task_losses,
                kernel_norms)

    def _task_phase(self, x, y, sample_weight, none_grads, record):
        """Forward + per-task shared gradients (+ affinities when ``record``) + training gradient.

        The shared part of the training gradient is assembled from the per-task gradients
        (their sum, or PCGrad's combination), so they are not recomputed.
        """
        network = self.network
        state_before = [tf.identity(v.value) for v in network.non_trainable_variables]
        with tf.GradientTape(persistent=True) as tape:
            y_pred = self(x, training=True)
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                      training=True)
            task_losses = self._require_task_losses().compute(y, y_pred, sample_weight)
            terms = self.weighting.task_terms(task_losses) if self.weighting else task_losses
            scaled = [self.optimizer.scale_loss(value) for value in terms]
            scaled_loss = self.optimizer.scale_loss(loss)
            extra = self._extra_loss(loss.dtype)
            scaled_extra = self.optimizer.scale_loss(extra) if extra is not None else None
        shared = self.shared_variables

        def task_gradient(k):
            grads = tape.gradient(scaled[k], shared)
            if all(g is None for g in grads):
                raise ValueError(f"The loss of task {self.tasks[k]!r} does not depend on the "
                                 "shared variables; check `shared` and the network's outputs.")
            return _zeros_for_none(grads, shared)

        if self.gradient is None:  # recording step: gradients interleaved with lookaheads
            task_grads = self._record_affinity(x, y, sample_weight, y_pred, state_before,
                                               task_gradient)
        else:
            task_grads, previous = [], []
            for k in range(len(self.tasks)):
                with tf.control_dependencies(previous):  # one backward pass at a time
                    task_grads.append(task_gradient(k))
                previous = task_grads[-1][:1]
            if record is not None:
                tf.cond(record, lambda: self._record_affinity(
                    x, y, sample_weight, y_pred, state_before, lambda k: task_grads[k])[0],
                    lambda: [tf.zeros_like(v.value) for v in shared])

        # Training gradient: shared part from the per-task gradients, the rest as Keras does.
        shared_ids = {id(v) for v in shared}
        others = [v for v in self.trainable_variables if id(v) not in shared_ids]
        other_grads = dict(zip(map(id, others), tape.gradient(scaled_loss, others)))
        extra_grads = tape.gradient(scaled_extra, shared) if scaled_extra is not None \
            else [None] * len(shared)
        kernel_norms = self._kernel_norms(tape, task_losses)
        del tape
        if self.gradient is not None:
            combined = self.gradient.combine(task_grads)
        else:
            combined = [tf.add_n([grads[k] for grads in task_grads]) for k in range(len(shared))]
        summed = {id(v): g if e is None else g + e
                  for v, g, e in zip(shared, combined, extra_grads)}
        grads = [summed[id(v)] if id(v) in summed else other_grads[id(v)]
                 for v in self.trainable_variables]
        return (loss, y_pred, _zeros_for_none(grads, self.trainable_variables), task_losses,
                kernel_norms)

    def _record_affinity(self, x, y, sample_weight, y_pred, state_before,
                         task_gradient: Callable[[int], list]) -> list:
        """Adds one step's affinities to the accumulators; returns the task gradients.

        Lookahead (paper Eq. 1): sources are processed one after another (gradient,
        lookahead forward, losses), chained by control dependencies: run concurrently,
        their activation gradients coexist, which was measured to triple peak memory and
        slow the step down on CPU. Cosine: cos(g_i, g_j) over the shared variables
        (kernels only by default, as the original CS baseline).
        """
        config = self.affinity_config
        task_losses = self._task_losses
        network = self.network
        loss_scale = self.optimizer.scale_loss(tf.constant(1.0))
        lr = lookahead.current_learning_rate(self.optimizer) * config.lookahead_scale
        lookahead_on = "lookahead" in config.measures

        if lookahead_on and config.batch == "validation":
            x_eval, y_eval, w_eval = keras.utils.unpack_x_y_sample_weight(
                next(self._validation.value))
            eval_pred, _ = network.stateless_call(
                [v.value for v in network.trainable_variables], state_before, x_eval,
                training=True)
            base = task_losses.compute(y_eval, self._as_task_dict(eval_pred), w_eval,
                                       weighted=False)
        elif lookahead_on:
            x_eval, y_eval, w_eval = x, y, sample_weight
            base = task_losses.compute(y, y_pred, sample_weight, weighted=False)

        shared_index = {id(v): k for k, v in enumerate(self.shared_variables)}
        rows, task_grads, previous = [], [], []
        for k in range(len(self.tasks)):
            with tf.control_dependencies(previous):
                grads = task_gradient(k)
                if not lookahead_on:
                    task_grads.append(grads)
                    previous = grads[:1]
                    continue
                unscaled = [g / tf.cast(loss_scale, g.dtype) for g in grads]
                new_shared = lookahead.lookahead_values(
                    config.rule, self.optimizer, self.shared_variables, unscaled, lr)
                values = [new_shared[shared_index[id(v)]] if id(v) in shared_index else v.value
                          for v in network.trainable_variables]
                outputs, _ = network.stateless_call(values, state_before, x_eval, training=True)
                row = tf.stack(task_losses.compute(
                    y_eval, self._as_task_dict(outputs), w_eval, weighted=False))
            rows.append(row)
            task_grads.append(grads)
            previous = [row]

        if lookahead_on:
            base = tf.stack([tf.stop_gradient(v) for v in base])
            after = tf.stack(rows)  # [source, target]
            z = 1.0 - after / base[tf.newaxis, :]
            if config.divide_by_lr:
                z = z / tf.cast(lr, z.dtype)
            valid = tf.math.is_finite(z) & tf.math.is_finite(after) & \
                (tf.math.is_finite(base) & tf.not_equal(base, 0.0))[tf.newaxis, :]
            z = tf.cast(tf.where(valid, z, tf.zeros_like(z)), "float64")
            self.affinity_sum.assign_add(z)
            self.affinity_count.assign_add(tf.cast(valid, "int64"))
            self.affinity_skipped.assign_add(tf.cast(tf.logical_not(valid), "int64"))
        if "cosine" in config.measures:
            self._record_cosine(task_grads)
        self.affinity_steps.assign_add(1)
        return task_grads

    def _record_cosine(self, task_grads):
        """Adds cos(g_i, g_j) of the per-task shared gradients (CS baseline)."""
        kernels_only = self.affinity_config.cosine_kernels_only
        keep = [k for k, v in enumerate(self.shared_variables)
                if len(v.shape) >= 2 or not kernels_only] or range(len(self.shared_variables))
        flat = tf.stack([tf.cast(tf.concat([tf.reshape(grads[k], [-1]) for k in keep], 0),
                                 "float64") for grads in task_grads])
        norms = tf.norm(flat, axis=1)
        cosine = tf.matmul(flat, flat, transpose_b=True) / (norms[:, None] * norms[None, :])
        valid = tf.math.is_finite(cosine)
        self.cosine_sum.assign_add(tf.where(valid, cosine, tf.zeros_like(cosine)))
        self.cosine_count.assign_add(tf.cast(valid, "int64"))
        self.cosine_skipped.assign_add(tf.cast(tf.logical_not(valid), "int64"))

    def _require_task_losses(self) -> TaskLosses:
        if self._task_losses is None:
            raise ValueError("Call compile(loss=...) before training a MultiTaskModel.")
        return self._task_losses

    # ----------------------------------------------------------------- results
    def affinity_record(self, measure: str = "lookahead") -> AffinityRecord:
        """The overall mean so far, ``[source, target]``; NaN where nothing was recorded.

        Args:
          measure: ``"lookahead"`` (TAG, Eq. 1) or ``"cosine"`` (gradient cosine similarity).
        """
        if measure not in MEASURES:
            raise ValueError(f"measure must be one of {MEASURES}. Received: measure={measure!r}")
        total_var, count_var = self.measure_state(measure)[:2]
        total = np.asarray(total_var.numpy(), dtype=np.float64)
        counts = np.asarray(count_var.numpy())
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(counts > 0, total / np.maximum(counts, 1), np.nan)
        config = self.affinity_config.to_json() if self.affinity_config else {}
        config["measure"] = measure
        config["recorded_steps"] = int(self.affinity_steps.numpy())
        config["train_steps"] = int(self.train_step_counter.numpy())
        return AffinityRecord(list(self.tasks), mean, counts=counts,
                              skipped=np.asarray(self.measure_state(measure)[2].numpy()),
                              config=config)

    def measure_state(self, measure: str):
        """(sum, count, skipped) variables of one measure."""
        if measure == "cosine":
            return self.cosine_sum, self.cosine_count, self.cosine_skipped
        return self.affinity_sum, self.affinity_count, self.affinity_skipped

    def reset_affinity(self) -> None:
        """Zeroes the affinity accumulators (not the step counter)."""
        for variable in (self.affinity_sum, self.affinity_count, self.affinity_skipped,
                         self.cosine_sum, self.cosine_count, self.cosine_skipped,
                         self.affinity_steps):
            variable.assign(np.zeros(variable.shape, dtype=variable.dtype))

    # ----------------------------------------------------------- serialisation
    def _bookkeeping(self) -> list:
        """Affinity accumulators and step counters: the record of the run, not its weights."""
        return [self.affinity_sum, self.affinity_count, self.affinity_skipped, self.cosine_sum,
                self.cosine_count, self.cosine_skipped, self.affinity_steps,
                self.train_step_counter, self.window_start, self.window_end]

    def get_weights(self) -> list:
        """Keras ``get_weights`` without the affinity bookkeeping.

        ``EarlyStopping(restore_best_weights=True)`` swaps weights with these methods;
        the affinities recorded after the best epoch must not be rolled back with the
        network (checkpoint files still carry everything).
        """
        skip = {id(v) for v in self._bookkeeping()}
        return [v.numpy() for v in self.weights if id(v) not in skip]

    def set_weights(self, weights) -> None:
        """Inverse of :meth:`get_weights` (the bookkeeping is left as it is)."""
        skip = {id(v) for v in self._bookkeeping()}
        variables = [v for v in self.weights if id(v) not in skip]
        if len(variables) != len(weights):
            raise ValueError(f"set_weights expected {len(variables)} arrays (affinity "
                             f"bookkeeping excluded). Received: {len(weights)}")
        for variable, value in zip(variables, weights):
            if tuple(variable.shape) != tuple(np.shape(value)):
                raise ValueError(f"Shape mismatch for {variable.path}: {variable.shape} vs "
                                 f"{np.shape(value)}")
            variable.assign(value)

    def _rng_states(self) -> list:
        """RNG state variables (Dropout, PCGrad's order...), which Keras weight files omit."""
        saved = {id(v) for v in self.weights}
        return [v for v in self.non_trainable_variables if id(v) not in saved]

    def save_own_variables(self, store):
        """Saves this model's variables and the network's RNG states (exact resumes)."""
        super().save_own_variables(store)
        for i, variable in enumerate(self._rng_states()):
            store[f"rng_{i}"] = variable

    def load_own_variables(self, store):
        """Loads what :meth:`save_own_variables` wrote (RNG states when present)."""
        own = self._trainable_variables + self._non_trainable_variables
        keys = set(store.keys())
        missing = [str(i) for i in range(len(own)) if str(i) not in keys]
        if missing:
            raise ValueError(f"{self.name}: the saved state lacks {len(missing)} of "
                             f"{len(own)} variables (affinity accumulators, counters).")
        for i, variable in enumerate(own):
            variable.assign(store[str(i)])
        for i, variable in enumerate(self._rng_states()):
            if f"rng_{i}" in keys:
                variable.assign(store[f"rng_{i}"])

    def get_config(self):
        shared = []
        for item in self._shared_spec:
            if isinstance(item, keras.layers.Layer):
                shared.append({"layer": item.name})
            elif isinstance(item, keras.Variable):
                shared.append({"variable": item.path})
            else:
                shared.append({"layer": item})
        config = self.affinity_config
        return {
            "name": self.name,
            "network": keras.saving.serialize_keras_object(self.network),
            "shared": shared,
            "tasks": list(self.tasks),
            "affinity": None if config is None else config.to_json(),
            "weighting": None if self.weighting is None else
            keras.saving.serialize_keras_object(self.weighting),
            "gradient": None if self.gradient is None else
            keras.saving.serialize_keras_object(self.gradient),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        network = keras.saving.deserialize_keras_object(config["network"],
                                                        custom_objects=custom_objects)
        paths = {v.path: v for v in network.trainable_variables}
        shared = [item["layer"] if "layer" in item else paths[item["variable"]]
                  for item in config["shared"]]
        affinity = config.get("affinity")
        if affinity is not None:
            affinity = AffinityConfig.from_json(affinity)
        parts = {key: keras.saving.deserialize_keras_object(config[key])
                 if config.get(key) else None for key in ("weighting", "gradient")}
        return cls(network, shared, affinity=affinity, tasks=config["tasks"], name=config["name"],
                   **parts)


def _zeros_for_none(grads, variables):
    return [tf.zeros_like(v.value) if g is None else g for g, v in zip(grads, variables)]


class _AffinityWindow(keras.callbacks.Callback):
    """Resolves the affinity window to global steps when ``fit()`` starts."""

    def on_train_begin(self, logs=None):
        model = self.model
        epochs = self.params.get("epochs")
        steps = self.params.get("steps")
        total = epochs * steps if epochs and steps else None
        start, end = model.affinity_config.step_window(total)
        model.window_start.assign(start)
        model.window_end.assign(_NO_END if end is None else end)
