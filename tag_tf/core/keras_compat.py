"""Workarounds for Keras' internals, in one place (checked against Keras 3.15.1, TF 2.21).

:class:`Workarounds` is mixed into :class:`tag_tf.MultiTaskModel` before ``keras.Model``;
each override says what it works around. When Keras changes, this is the module to check
(``KERAS_CHECKED`` is the version they were last read against):

* :meth:`Workarounds._maybe_symbolic_build`: (1) without a ``tf.distribute`` strategy Keras
  builds the compiled metrics, loss trackers and optimizer inside the first trace of the
  train function; variables created there make ``tf.function`` trace the whole step a
  second time. They are built before, from the batch or the dataset's element spec
  (never reading data). (2) Under ``MultiWorkerMirroredStrategy`` Keras averages the
  first distributed batch with ``strategy.reduce``, which fails for a nested ``(x, {task:
  y})``; one local replica's batch has the shapes the build needs.
* :meth:`Workarounds.make_train_function`: a multi-replica strategy cannot all-reduce
  inside ``tf.cond``, so a step whose structure depends on a decision (record or not) is
  two train functions, chosen in Python before each step.
* :func:`multi_worker_logs`: under ``MultiWorkerMirroredStrategy`` Keras averages each log
  with ``strategy.reduce("MEAN", axis=0)``, which fails on a scalar: scalars become [1].
* :meth:`Workarounds.compile_from_config`: Keras skips re-compiling a loaded model that
  overrides ``compile``.
* :meth:`Workarounds.save_own_variables` / ``load_own_variables``: Keras weight files omit
  RNG states (Dropout's seed, PCGrad's order); exact resumes need them. Also reads the
  affinity state of files written in tag_tf's state layout 1 (:mod:`tag_tf.core.state`).
* :func:`float32_compute`: switches layers' private dtype policies for a float32 forward.
* :func:`track_task_losses`: the per-output ``<task>_loss`` logs come from ``CompileLoss``'s
  private trackers; the step, which computes each task's loss itself, updates them as
  ``CompileLoss.call`` does instead of computing every loss a second time.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional, Sequence

import keras
import tensorflow as tf

from tag_tf.core import replicas

KERAS_CHECKED = "3.15.1"


def multi_worker_logs(model: keras.Model, logs: dict) -> dict:
    """Logs Keras can reduce under ``MultiWorkerMirroredStrategy`` (scalars as shape [1])."""
    if not isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return logs
    return {key: tf.reshape(value, [1]) if tf.convert_to_tensor(value).shape.rank == 0
            else value for key, value in logs.items()}


def track_loss(model: keras.Model, loss: tf.Tensor, batch_size) -> None:
    """The running ``loss`` log, as Keras' own train step updates it."""
    model._loss_tracker.update_state(loss, sample_weight=batch_size)  # pylint: disable=protected-access


def track_task_losses(model: keras.Model, y_pred: dict, losses: Sequence[tf.Tensor]) -> bool:
    """Updates Keras' per-output loss trackers with this step's unweighted task losses (as
    ``CompileLoss.call``); False when they do not map onto the tasks one to one (the caller
    then runs Keras' ``compute_loss``)."""
    compile_loss = getattr(model, "_compile_loss", None)
    entries = getattr(compile_loss, "_flat_losses", None)
    if compile_loss is None or not compile_loss.built or entries is None:
        return False
    by_task = dict(zip(model.tasks, losses))
    metrics = compile_loss.metrics
    if len(entries) != len(by_task) or len(metrics) not in (0, len(entries)) or any(
            len(entry.path) != 1 or entry.path[0] not in by_task for entry in entries):
        return False
    for entry, metric in zip(entries, metrics):
        task = entry.path[0]
        value = tf.cast(by_task[task], compile_loss.dtype)
        metric.update_state(replicas.unscale_loss(value),
                            sample_weight=tf.nest.flatten(y_pred[task])[0].shape[0])
    return True


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


def _element_spec(iterator) -> Optional[object]:
    """The element spec of the dataset behind Keras' epoch iterator, if it has one."""
    dataset = getattr(iterator, "_distributed_dataset", None)
    return getattr(dataset, "element_spec", None)


class Workarounds:
    """Overrides of ``keras.Model`` internals for :class:`tag_tf.MultiTaskModel`.

    The model provides ``_python_decision()``: None, or a function deciding in Python,
    before each step, which of two train functions runs (its result is stored in
    ``_python_choice`` while that function is traced or called).
    """

    _python_choice: Optional[bool] = None

    def _python_decision(self) -> Optional[Callable[[], bool]]:
        return None

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy  # pylint: disable=no-member
        if strategy is None:
            batch = data_batch if data_batch is not None else _element_spec(iterator)
            if batch is not None:
                self._symbolic_build(data_batch=batch)  # pylint: disable=no-member
            return None
        if iterator is not None and isinstance(strategy,
                                               tf.distribute.MultiWorkerMirroredStrategy):
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0]
                    if isinstance(v, tf.distribute.DistributedValues) else v, next(it))
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        decide = self._python_decision()
        if decide is None:
            self._python_choice = None
            super().make_train_function(force=force)
            return self.train_function
        if self.steps_per_execution != 1:
            raise ValueError(
                "Affinity recording under a multi-replica tf.distribute strategy needs "
                "steps_per_execution=1 (the recording decision is taken between steps). "
                f"Received: steps_per_execution={self.steps_per_execution}")
        functions = {}
        for choice in (False, True):
            super().make_train_function(force=True)
            functions[choice] = self.train_function

        def train_function(iterator):
            self._python_choice = decide()
            return functions[self._python_choice](iterator)

        self.train_function = train_function
        return train_function

    def compile_from_config(self, config):
        """Re-compiles a loaded model (Keras skips this for models overriding ``compile``),
        so ``keras.models.load_model`` returns a model that trains and evaluates at once,
        with its optimizer state restored."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built and getattr(self, "optimizer", None) is not None:
            self.optimizer.build(self.trainable_variables)

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
        from tag_tf.core import state as layouts  # pylint: disable=import-outside-toplevel
        own = self._trainable_variables + self._non_trainable_variables
        keys = set(store.keys())
        numbered = sum(key.isdigit() for key in keys)
        if numbered == len(own) + len(layouts.VARIABLES):  # layout 1
            self.affinity_state.load_layout1(store, offset=len(own))
        elif numbered != len(own) or any(str(i) not in keys for i in range(len(own))):
            raise ValueError(
                f"{self.name}: the file holds {numbered} variables of the model itself; this "
                f"model saves {len(own)} (tag_tf state layout {layouts.LAYOUT}) and tag_tf "
                f"state layout 1 saved {len(own) + len(layouts.VARIABLES)}. It was written "
                "for another network, shared set or number of tasks.")
        for i, variable in enumerate(own):
            variable.assign(store[str(i)])
        for i, variable in enumerate(self._rng_states()):
            if f"rng_{i}" in keys:
                variable.assign(store[f"rng_{i}"])
