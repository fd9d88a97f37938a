"""A small Keras model over pluggable parts that records TAG's inter-task affinity in ``fit()``.

Usage::

    network = keras.Model(inputs, {"a": head_a, "b": head_b})   # any multi-output model
    model = tag_tf.MultiTaskModel(network, shared=["trunk_1", "trunk_2"],
                                  affinity=tag_tf.AffinityConfig(every_n=10))
    model.compile(optimizer="sgd", loss={"a": "mse", "b": "mse"})
    model.fit(dataset, epochs=5, callbacks=[tag_tf.AffinityLogger(output_dir="out")])
    record = model.affinity_record()          # record.affinity[source, target]

The parts: the network; a loss weighting and a gradient combiner
(:mod:`tag_tf.core.parts`: UW, GradNorm, DWA; PCGrad, MGDA...); the recorder
(:mod:`tag_tf.core.recorder`) and its state (:class:`~tag_tf.core.state.AffinityState`).
``train_step`` reads in Keras' phases (:mod:`tag_tf.core.step`); on a recording step it
takes each task's gradient of the shared variables g_i from the training forward pass,
evaluates every task's loss with the shared variables moved by ``- lr * g_i``
(``stateless_call``: no variable, BatchNorm statistic or RNG state changes; dropout masks
are the training pass's), giving paper Eq. 1,
``Z[i, j] = 1 - L_j(theta_s - lr * g_i) / L_j(theta_s)``, and trains with the sum of the
g_i (the gradient Keras takes), so nothing is computed twice. The T per-task passes are
one traced loop each (:mod:`tag_tf.core.per_task`). Keras workarounds live in
:mod:`tag_tf.core.keras_compat`, cross-replica reductions in :mod:`tag_tf.core.replicas`.

References:
  Fifty et al., "Efficiently Identifying Task Groupings for Multi-Task
  Learning", NeurIPS 2021.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import keras
import tensorflow as tf

from tag_tf.core import keras_compat
from tag_tf.core import lookahead
from tag_tf.core import parts
from tag_tf.core import recorder
from tag_tf.core import replicas
from tag_tf.core import step
from tag_tf.core.config import AffinityConfig
from tag_tf.core.state import AffinityState
from tag_tf.core.task_losses import TaskLosses, resolve_task_losses, task_outputs
from tag_tf.io.affinity_io import AffinityRecord, validate_tasks


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
class MultiTaskModel(keras_compat.Workarounds, keras.Model):
    """Wraps a multi-output network; records TAG affinities during ``fit()``.

    Args:
      network: a Keras model returning one output per task (a dict keyed by
        task name, or a list in ``network.output_names`` order).
      shared: the shared layers (objects or names) or variables: the trunk
        whose lookahead step defines the affinity.
      affinity: an :class:`AffinityConfig`, or None to train without recording.
      weighting: None or a :class:`~tag_tf.core.parts.LossWeighting`
        (:class:`tag_tf.UncertaintyWeighting`, :class:`tag_tf.GradNorm`,
        :class:`tag_tf.DynamicWeightAverage`, :class:`tag_tf.RepresentationGradNorm`):
        turns the per-task losses into the training loss.
      gradient: None (the sum) or a :class:`~tag_tf.core.parts.GradientCombiner`
        (:class:`tag_tf.PCGrad`, :class:`tag_tf.MGDA`): combines the per-task gradients.
      tasks: task names, needed only when the network has no ``output_names``.

    With none of ``affinity``, ``weighting`` and ``gradient``, ``train_step`` is Keras' own.
    """

    def __init__(self, network: keras.Model, shared: Sequence[Any], *,
                 affinity: Optional[AffinityConfig] = AffinityConfig(),
                 weighting: Optional[parts.LossWeighting] = None,
                 gradient: Optional[parts.GradientCombiner] = None,
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
        self.weighting, self.gradient = weighting, gradient
        self._methods = parts.resolve(weighting, gradient, affinity, self.tasks,
                                      self.shared_variables, network)
        self._task_losses: Optional[TaskLosses] = None
        self._step: Optional[step.TrainStep] = None  # built by compile()
        self._validation = recorder.Validation()
        # The recording state: one tracked layer, so checkpoints and weight files carry it.
        self.affinity_state = AffinityState(len(self.tasks))
        if network.built:
            self.built = True  # e.g. BackupAndRestore needs a built model before fit()

    def call(self, inputs, training=None):
        return task_outputs(self.network(inputs, training=training), self.tasks)

    # ----------------------------------------------------------------- compile
    def compile(self, optimizer="rmsprop", loss=None, loss_weights=None, **kwargs):
        """Keras ``compile``; ``loss`` / ``loss_weights`` also define each task's loss."""
        self._task_losses = resolve_task_losses(self.tasks, loss, loss_weights)
        keras_loss = dict(zip(self.tasks, self._task_losses.losses))
        keras_weights = None if loss_weights is None else dict(
            zip(self.tasks, self._task_losses.weights))
        if self.affinity_config is not None:  # XLA: opt-in (see README, Benchmarks)
            kwargs.setdefault("jit_compile", False)
        super().compile(optimizer=optimizer, loss=keras_loss, loss_weights=keras_weights,
                        **kwargs)
        # Save the caller's loss arguments (not the resolved per-task objects) for reloading.
        self._compile_config.config.update(loss=loss, loss_weights=loss_weights)
        self._check_strategy()
        config, recording = self.affinity_config, None
        if config is not None:
            lookahead.check_supported(self.optimizer, config.rule)
            if config.batch == "validation" and config.validation_data is not None:
                self._validation.attach(config.validation_data)
            recording = recorder.AffinityRecorder(recorder.RecordingParts(
                config, self.network, self.shared_variables, self.tasks, self._task_losses,
                self._methods.weighting.task_terms, self.optimizer, self.affinity_state,
                self._validation))
        self._step = step.TrainStep(self, self._task_losses, self._methods, recording) \
            if self._uses_custom_step() else None

    def attach_validation_data(self, dataset: Any) -> None:
        """Gives a loaded ``batch="validation"`` model its validation batches again (datasets
        are not saved with the model); batches are drawn cyclically from the start."""
        config = self.affinity_config
        if config is None or config.batch != "validation":
            raise ValueError("attach_validation_data() is for models recording affinity with "
                             "AffinityConfig(batch='validation').")
        self.affinity_config = dataclasses.replace(config, validation_data=dataset)
        self._validation.attach(dataset)

    def fit(self, *args, callbacks=None, **kwargs):
        """Keras ``fit``; first among the callbacks, the step's own hooks (the affinity
        window, standard-error blocks and the methods' epoch ends)."""
        callbacks = list(callbacks or [])
        self._check_strategy()
        config = self.affinity_config
        if config is not None and config.batch == "validation" and \
                not self._validation.attached:
            raise ValueError(
                "This model records affinity on validation batches but has no validation "
                "dataset (datasets are not saved with a model): call "
                "model.attach_validation_data(dataset) after compile() or loading.")
        if self._uses_custom_step():
            callbacks[:0] = [step.StepHooks()]
        return super().fit(*args, callbacks=callbacks, **kwargs)

    # -------------------------------------------------------------- train step
    def train_step(self, data):
        """One step in Keras' phases (:mod:`tag_tf.core.step`)."""
        if self._step is None:  # no affinity, weighting or gradient method: Keras' own
            return keras_compat.multi_worker_logs(self, super().train_step(data))
        run = self._step
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)  # 1. unpack
        forward = run.forward(x, y, sample_weight)  # 2. forward (and what methods measure)
        values = run.values(forward, lookahead.current_learning_rate(self.optimizer))

        def per_task(record):
            grads = run.task_gradients(forward)  # 3. backward, per task
            run.record(forward, grads, record)  # 4. record (on recording steps)
            return run.combine(forward, grads, values)  # 5. combine

        grads = self._per_task_or_plain(per_task, lambda: run.plain_gradients(forward))
        run.apply(grads)  # 6. apply
        self._methods.weighting.update(values)  # 7. update the weighting
        return run.finish(forward)  # 8. step clock, loss and metrics

    def _per_task_or_plain(self, per_task, plain):
        """Per-task backward passes on every step (a combiner needs them) or on recording
        steps only: decided in Python under a multi-replica strategy, else in the graph."""
        record = None if self.affinity_config is None else (
            self._python_choice if self._python_choice is not None
            else self.affinity_state.should_record(self.affinity_config.every_n))
        if self._methods.combiner.needs.task_gradients:
            return per_task(record)
        if record is None or record is False:
            return plain()
        if record is True:
            return per_task(True)
        return tf.cond(record, lambda: per_task(True), plain)

    # ------------------------------------------------------------ distribution
    def _uses_custom_step(self) -> bool:
        return not (self.affinity_config is None and self.weighting is None
                    and self.gradient is None)

    def _check_strategy(self) -> None:
        """Raises for strategies whose exact semantics are not implemented (see replicas)."""
        if self._uses_custom_step():
            replicas.check_strategy(self.distribute_strategy)

    def _python_decision(self):
        """Under Mirrored / MultiWorkerMirrored (steps in replica threads, where ``tf.cond``
        cannot hold all-reduces) a recording model decides each step in Python."""
        replicated = isinstance(self.distribute_strategy, (
            tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy))
        if self.affinity_config is None or not replicated:
            return None
        return lambda: self.affinity_state.records_next_step(self.affinity_config.every_n)

    # ----------------------------------------------------------------- results
    def affinity_record(self, measure: str = "lookahead") -> AffinityRecord:
        """The overall mean so far, ``[source, target]``; NaN where nothing was recorded.

        With recording on, the record also carries the batch-means standard error of each
        mean (``stderr``; NaN where fewer than 2 blocks hold values), the blocks behind it
        (``stderr_blocks``, the unfinished block counted as one) and ``stderr_method``; see
        :mod:`tag_tf.core.state` and ``AffinityConfig.stderr_block``.

        Args:
          measure: ``"lookahead"`` (TAG, Eq. 1), ``"cosine"`` (gradient cosine similarity)
            or ``"taylor"`` (Eq. 1 to first order).
        """
        return self.affinity_state.record(measure, self.tasks, self.affinity_config)

    def reset_affinity(self) -> None:
        """Zeroes the affinity accumulators and standard-error blocks (not the step counter)."""
        self.affinity_state.reset()

    # ----------------------------------------------------------- serialisation
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
        methods = {key: keras.saving.deserialize_keras_object(config[key])
                   if config.get(key) else None for key in ("weighting", "gradient")}
        return cls(network, shared, affinity=affinity, tasks=config["tasks"], name=config["name"],
                   **methods)
