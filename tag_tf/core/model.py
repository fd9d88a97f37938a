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
Other steps run Keras' own ``train_step`` logic unchanged. Steps 1-2 and the
accumulators live in :mod:`tag_tf.core.recorder`; the cross-replica reductions that
make a ``tf.distribute`` step record what one device records in
:mod:`tag_tf.core.replicas`.

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

from tag_tf.core import lookahead
from tag_tf.core import recorder
from tag_tf.core import replicas
from tag_tf.stats import uncertainty
from tag_tf.core import vectorized
from tag_tf.io.affinity_io import AffinityRecord, validate_tasks
from tag_tf.core.config import AffinityConfig
from tag_tf.core import state as state_layout
from tag_tf.core.state import AffinityState
from tag_tf.methods.pcgrad import PCGrad
from tag_tf.core.task_losses import TaskLosses, resolve_task_losses, task_outputs
from tag_tf.methods.weighting import GradNorm, RepresentationGradNorm, UncertaintyWeighting

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
                raise ValueError(f"Shared layer {item.name!r} has no trainable variables"
                                 + ("" if item.built else " yet: build the network first (call "
                                    "it on a batch)") + ".")
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
      weighting: None, :class:`tag_tf.UncertaintyWeighting`, :class:`tag_tf.GradNorm` or
        :class:`tag_tf.RepresentationGradNorm`: turns the per-task losses into the training
        loss (the last: weights the encoder's gradient; functional networks, no affinity).
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
        if weighting is not None and not isinstance(
                weighting, (UncertaintyWeighting, GradNorm, RepresentationGradNorm)):
            raise ValueError("weighting must be UncertaintyWeighting, GradNorm, "
                             f"RepresentationGradNorm or None. Received: {weighting!r}")
        if gradient is not None and not isinstance(gradient, PCGrad):
            raise ValueError(f"gradient must be PCGrad or None. Received: {gradient!r}")
        if isinstance(weighting, RepresentationGradNorm) and (affinity is not None or
                                                              gradient is not None):
            raise ValueError("RepresentationGradNorm computes its own gradients: it cannot be "
                             "combined with affinity recording or PCGrad (use affinity=None).")
        self.weighting = weighting
        if weighting is not None:
            weighting.attach(self.tasks, self.shared_variables, network=network)
        self.gradient = gradient
        self._task_losses: Optional[TaskLosses] = None
        self._recorder = None  # built by compile()
        self._validation = recorder.Validation()
        self._static_record = None  # set per step under a multi-replica strategy
        # The recording state: one tracked layer, so checkpoints and weight files carry it.
        self.affinity_state = AffinityState(len(self.tasks))
        if network.built:
            self.built = True  # e.g. BackupAndRestore needs a built model before fit()

    # ----------------------------------------------------------------- forward
    def call(self, inputs, training=None):
        return task_outputs(self.network(inputs, training=training), self.tasks)

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
        self._check_strategy()
        config = self.affinity_config
        if config is not None:
            lookahead.check_supported(self.optimizer, config.rule)
            if config.batch == "validation" and config.validation_data is not None:
                self._validation.attach(config.validation_data)
            terms = self.weighting.task_terms if self.weighting is not None else list
            self._recorder = recorder.AffinityRecorder(recorder.RecordingParts(
                config, self.network, self.shared_variables, self.tasks, self._task_losses,
                terms, self.optimizer, self.affinity_state, self._validation))

    def attach_validation_data(self, dataset: Any) -> None:
        """Gives a loaded ``batch="validation"`` model its validation batches again (datasets
        are not saved with the model); batches are drawn cyclically from the start."""
        config = self.affinity_config
        if config is None or config.batch != "validation":
            raise ValueError("attach_validation_data() is for models recording affinity with "
                             "AffinityConfig(batch='validation').")
        self.affinity_config = dataclasses.replace(config, validation_data=dataset)
        self._validation.attach(dataset)
        if self._recorder is not None:
            self._recorder = recorder.AffinityRecorder(
                self._recorder.parts._replace(config=self.affinity_config))

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
        self._check_strategy()
        config = self.affinity_config
        if config is not None and config.batch == "validation" and not self._validation.attached:
            raise ValueError(
                "This model records affinity on validation batches but has no validation "
                "dataset (datasets are not saved with a model): call "
                "model.attach_validation_data(dataset) after compile() or loading.")
        if self.affinity_config is not None:
            # First: the window is set before training, and epoch-end blocks are folded
            # before checkpoints (BackupAndRestore) and loggers read the state.
            callbacks[:0] = [_AffinitySchedule()]
        return super().fit(*args, callbacks=callbacks, **kwargs)

    # ------------------------------------------------------------ distribution
    def _uses_custom_step(self) -> bool:
        return not (self.affinity_config is None and self.weighting is None
                    and self.gradient is None)

    def _check_strategy(self) -> None:
        """Raises for strategies whose exact semantics are not implemented (see replicas)."""
        if self._uses_custom_step():
            replicas.check_strategy(self.distribute_strategy)

    def _replicated(self) -> bool:
        """Whether steps run in replica threads (Mirrored / MultiWorkerMirrored): there
        ``tf.cond`` cannot hold the all-reduces of a recording step."""
        return isinstance(self.distribute_strategy, (tf.distribute.MirroredStrategy,
                                                     tf.distribute.MultiWorkerMirroredStrategy))

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras' symbolic build; under MultiWorkerMirrored from this worker's first batch.

        Keras (3.15) averages the first distributed batch with ``strategy.reduce``, which
        fails for a nested batch (x, {task: y}) under MultiWorkerMirroredStrategy; the
        build needs only shapes and dtypes, so one local replica's batch serves.
        """
        if iterator is not None and isinstance(self.distribute_strategy,
                                               tf.distribute.MultiWorkerMirroredStrategy):
            strategy = self.distribute_strategy
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v, next(it))
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def make_train_function(self, force=False):
        """Keras' train function; under Mirrored / MultiWorkerMirrored with affinity
        recording, two of them (recording and plain step), chosen in Python per step."""
        if self.train_function is not None and not force:
            return self.train_function
        if self.affinity_config is None or not self._replicated():
            self._static_record = None
            super().make_train_function(force=force)
            return self.train_function

        def build():
            super(MultiTaskModel, self).make_train_function(force=True)
            return self.train_function

        self.train_function = _replicated_train_function(self, build)
        return self.train_function

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
        """Regularisation and ``add_loss`` terms, summed and scaled for distribution as Keras
        does (None if there are none)."""
        if not self.losses:
            return None
        return replicas.scale_loss(
            tf.add_n([keras.ops.sum(keras.ops.cast(l, dtype)) for l in self.losses]))

    # -------------------------------------------------------------- train step
    def train_step(self, data):
        return self._multi_worker_logs(self._train_step(data))

    def _multi_worker_logs(self, logs):
        """Under MultiWorkerMirrored, scalar logs as shape [1]: Keras (3.15) averages each
        with ``strategy.reduce("MEAN", axis=0)``, which fails on a scalar there."""
        if not isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return logs
        return {key: tf.reshape(value, [1]) if tf.convert_to_tensor(value).shape.rank == 0
                else value for key, value in logs.items()}

    def _train_step(self, data):
        if not self._uses_custom_step():
            return super().train_step(data)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        if not self.optimizer.built:  # the lookahead reads optimizer slots before apply()
            self.optimizer.build(self.trainable_variables)
        trainable = self.trainable_variables
        none_grads = []  # indices Keras would leave without gradient (filled at trace time)
        # Global-batch weights of this replica's losses (trivial on one replica).
        batch = replicas.GlobalBatch(self._require_task_losses().losses, self.tasks, y,
                                     sample_weight)
        record = self._should_record()
        if isinstance(self.weighting, RepresentationGradNorm):  # weights the encoder's gradient
            outputs = self.weighting.train_phase(self, x, y, sample_weight, none_grads)
        elif self.gradient is not None:  # PCGrad needs the per-task gradients every step
            outputs = self._task_phase(x, y, sample_weight, none_grads, record, batch)
        elif isinstance(record, bool):  # decided in Python (multi-replica strategy)
            outputs = self._task_phase(x, y, sample_weight, none_grads, True, batch) if record \
                else self._plain_phase(x, y, sample_weight, none_grads, batch)
        elif record is not None:
            outputs = tf.cond(
                record,
                functools.partial(self._task_phase, x, y, sample_weight, none_grads, True,
                                  batch),
                functools.partial(self._plain_phase, x, y, sample_weight, none_grads, batch))
        else:
            outputs = self._plain_phase(x, y, sample_weight, none_grads, batch)
        loss, y_pred, grads, task_losses, kernel_norms = outputs
        self.affinity_state.count_step()
        if self.affinity_config is not None:  # stderr_block=K: every K recorded steps
            self.affinity_state.end_block_if_due(self.affinity_config)
        self._loss_tracker.update_state(
            replicas.unscale_loss(loss),
            sample_weight=tf.shape(next(i for i in tf.nest.flatten(x) if i is not None))[0])
        grads = [None if i in none_grads else g for i, g in enumerate(grads)]
        lr = lookahead.current_learning_rate(self.optimizer)
        self.optimizer.apply_gradients(zip(grads, trainable))
        if isinstance(self.weighting, GradNorm):
            global_losses = batch.losses(tf.stack(task_losses))
            self.weighting.update(tf.unstack(global_losses), kernel_norms, lr)
        logs = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        if self.weighting is not None:
            logs = dict(logs)
            logs.update({f"{task}_weight": w
                         for task, w in self.weighting.weights_by_task().items()})
        return logs

    def _should_record(self):
        """Whether this step records: None without affinity; a Python bool under a
        multi-replica strategy (decided before the step); else a bool tensor."""
        if self.affinity_config is None:
            return None
        if self._static_record is not None:
            return self._static_record
        return self.affinity_state.should_record(self.affinity_config.every_n)

    def _kernel_norms(self, tape, task_losses, batch):
        """Global-batch ``||dL_t/dW||`` at GradNorm's kernel (zeros without GradNorm)."""
        if not isinstance(self.weighting, GradNorm):
            return tf.zeros([len(self.tasks)])
        kernel = self.weighting.kernel
        norms = [tf.norm(batch.gradients([tape.gradient(value, kernel)], k)[0])
                 for k, value in enumerate(task_losses)]
        return tf.cast(tf.stack(norms), "float32")

    def _plain_phase(self, x, y, sample_weight, none_grads, batch):
        """Keras' own forward, loss and gradient (backend/tensorflow/trainer.py)."""
        with tf.GradientTape(persistent=isinstance(self.weighting, GradNorm)) as tape:
            y_pred = self(x, training=True)
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                      training=True)
            task_losses = self._require_task_losses().compute(y, y_pred, sample_weight)
            scaled_loss = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled_loss, self.trainable_variables)
        kernel_norms = self._kernel_norms(tape, task_losses, batch)
        del tape
        none_grads.extend(i for i, g in enumerate(grads) if g is None)
        return (loss, y_pred, _zeros_for_none(grads, self.trainable_variables), task_losses,
                kernel_norms)

    def _task_phase(self, x, y, sample_weight, none_grads, record, batch):
        """Forward + per-task shared gradients (+ affinities when ``record``) + training gradient.

        The shared part of the training gradient is assembled from the per-task gradients
        (their sum, or PCGrad's combination), so they are not recomputed. Under a
        multi-replica strategy the sum is of this replica's gradients (the optimizer
        all-reduces them, as in Keras); the affinities and PCGrad use the global batch's.
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
        local_grads = {}

        def local_gradient(k):
            """This replica's gradient of task k's (loss-scaled) term; computed once."""
            config = self.affinity_config
            if k not in local_grads and record is True and self.gradient is None \
                    and config.parallel:  # all tasks in one batched backward pass
                local_grads.update(enumerate(vectorized.task_gradients(
                    tape, scaled, shared, config.parallel_chunk(), self.tasks)))
            if k not in local_grads:
                grads = tape.gradient(scaled[k], shared)
                if all(g is None for g in grads):
                    raise ValueError(
                        f"The loss of task {self.tasks[k]!r} does not depend on the shared "
                        "variables; check `shared` and the network's outputs.")
                local_grads[k] = _zeros_for_none(grads, shared)
            return local_grads[k]

        def task_gradient(k):
            return batch.gradients(local_gradient(k), k)

        if self.gradient is None:  # recording step: gradients interleaved with lookaheads
            self._recorder.record(x, y, sample_weight, y_pred, state_before, task_gradient,
                                  batch)
            task_grads = [local_gradient(k) for k in range(len(self.tasks))]
        else:
            global_grads, previous = [], []
            for k in range(len(self.tasks)):
                with tf.control_dependencies(previous):  # one backward pass at a time
                    global_grads.append(task_gradient(k))
                previous = global_grads[-1][:1]
            if isinstance(record, bool):
                if record:
                    self._recorder.record(x, y, sample_weight, y_pred, state_before,
                                          lambda k: global_grads[k], batch)
            elif record is not None:
                tf.cond(record, lambda: self._recorder.record(
                    x, y, sample_weight, y_pred, state_before, lambda k: global_grads[k],
                    batch), lambda: tf.identity(self.affinity_state.affinity_steps.value))

        # Training gradient: shared part from the per-task gradients, the rest as Keras does.
        shared_ids = {id(v) for v in shared}
        others = [v for v in self.trainable_variables if id(v) not in shared_ids]
        other_grads = dict(zip(map(id, others), tape.gradient(scaled_loss, others)))
        extra_grads = tape.gradient(scaled_extra, shared) if scaled_extra is not None \
            else [None] * len(shared)
        kernel_norms = self._kernel_norms(tape, task_losses, batch)
        del tape
        if self.gradient is not None:
            # PCGrad of the global gradients, identical in every replica; the optimizer sums
            # the replicas' gradients, so each hands in its share.
            combined = self.gradient.combine(global_grads)
            if batch.replicas > 1:
                combined = [g / tf.cast(batch.replicas, g.dtype) for g in combined]
        else:
            combined = [tf.add_n([grads[k] for grads in task_grads]) for k in range(len(shared))]
        summed = {id(v): g if e is None else g + e
                  for v, g, e in zip(shared, combined, extra_grads)}
        grads = [summed[id(v)] if id(v) in summed else other_grads[id(v)]
                 for v in self.trainable_variables]
        return (loss, y_pred, _zeros_for_none(grads, self.trainable_variables), task_losses,
                kernel_norms)

    def _require_task_losses(self) -> TaskLosses:
        if self._task_losses is None:
            raise ValueError("Call compile(loss=...) before training a MultiTaskModel.")
        return self._task_losses

    # ----------------------------------------------------------------- results
    def affinity_record(self, measure: str = "lookahead") -> AffinityRecord:
        """The overall mean so far, ``[source, target]``; NaN where nothing was recorded.

        With recording on, the record also carries the batch-means standard error of each
        mean (``stderr``; NaN where fewer than 2 blocks hold values), the blocks behind it
        (``stderr_blocks``, the unfinished block counted as one) and ``stderr_method``; see
        :mod:`tag_tf.core.state` and ``AffinityConfig.stderr_block``.

        Args:
          measure: ``"lookahead"`` (TAG, Eq. 1) or ``"cosine"`` (gradient cosine similarity).
        """
        return self.affinity_state.record(measure, self.tasks, self.affinity_config)

    def reset_affinity(self) -> None:
        """Zeroes the affinity accumulators and standard-error blocks (not the step counter)."""
        self.affinity_state.reset()

    # ----------------------------------------------------------- serialisation
    def _rng_states(self) -> list:
        """RNG state variables (Dropout, PCGrad's order...), which Keras weight files omit."""
        saved = {id(v) for v in self.weights + self.affinity_state.variables}
        return [v for v in self.non_trainable_variables if id(v) not in saved]

    def save_own_variables(self, store):
        """Saves this model's variables and the network's RNG states (exact resumes)."""
        super().save_own_variables(store)
        for i, variable in enumerate(self._rng_states()):
            store[f"rng_{i}"] = variable

    def load_own_variables(self, store):
        """Loads what :meth:`save_own_variables` wrote (RNG states when present), and the
        affinity state of a file in tag_tf's state layout 1 (see :mod:`tag_tf.core.state`)."""
        own = self._trainable_variables + self._non_trainable_variables
        keys = set(store.keys())
        numbered = sum(key.isdigit() for key in keys)
        if numbered == len(own) + len(state_layout.VARIABLES):  # layout 1
            self.affinity_state.load_layout1(store, offset=len(own))
        elif numbered != len(own) or any(str(i) not in keys for i in range(len(own))):
            raise ValueError(
                f"{self.name}: the file holds {numbered} variables of the model itself; this "
                f"model saves {len(own)} (tag_tf state layout {state_layout.LAYOUT}) and tag_tf "
                f"state layout 1 saved {len(own) + len(state_layout.VARIABLES)}. It was written "
                "for another network, shared set or number of tasks.")
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


class _AffinitySchedule(keras.callbacks.Callback):
    """Put first by ``MultiTaskModel.fit``: resolves the affinity window to steps when
    training starts, and ends a standard-error block at every epoch end (before checkpoints
    such as ``BackupAndRestore`` and loggers read the state)."""

    def on_train_begin(self, logs=None):
        epochs, steps = self.params.get("epochs"), self.params.get("steps")
        start, end = self.model.affinity_config.step_window(
            epochs * steps if epochs and steps else None)
        self.model.affinity_state.set_window(start, end)

    def on_epoch_end(self, epoch, logs=None):
        config = self.model.affinity_config
        if config.stderr_block == "epoch":
            self.model.affinity_state.end_block(config.measures)


def _replicated_train_function(model: keras.Model, build: Callable[[], Optional[object]]):
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

    def train_function(iterator):
        record = model.affinity_state.records_next_step(model.affinity_config.every_n)
        model._static_record = record  # pylint: disable=protected-access
        return functions[record](iterator)

    return train_function
