"""The phases of :class:`tag_tf.MultiTaskModel`'s training step.

``MultiTaskModel.train_step`` reads like Keras' own (``keras/src/backend/tensorflow/
trainer.py``); this module holds each phase:

1. unpack the batch;
2. :meth:`TrainStep.forward`: the network, each task's loss (Keras' per-output loss logs
   updated from them) and the per-task training terms under one persistent tape; :meth:`TrainStep.values`: what the methods
   asked to be measured (:class:`~tag_tf.core.parts.StepValues`);
3. backward, per task (:meth:`TrainStep.task_gradients`: the T per-task gradients at the
   combiner's site, one traced loop) on the steps that need it, else plain
   (:meth:`TrainStep.plain_gradients`: the gradient of the summed loss, as Keras takes it);
4. :meth:`TrainStep.record`: the affinities of the per-task gradients, on recording steps;
5. :meth:`TrainStep.combine`: the combiner's shared update; the other variables' gradients
   as Keras computes them;
6. apply (the optimizer); 7. the weighting's update; 8. :meth:`TrainStep.finish`: the
   step clock, standard-error blocks, loss tracker and metrics.

The step touches only what the parts declare: the recorder gets the state and the
network explicitly (:class:`~tag_tf.core.recorder.RecordingParts`), a method gets the
gradients and values its ``needs`` name.
"""

from __future__ import annotations

import weakref
from typing import Any, NamedTuple, Optional

import keras
import tensorflow as tf

from tag_tf.core import keras_compat
from tag_tf.core import parts
from tag_tf.core import per_task
from tag_tf.core import replicas
from tag_tf.core.representation import RepresentationSplit
from tag_tf.core.task_losses import TaskLosses, task_outputs


class Forward(NamedTuple):
    """One forward pass under the step's persistent tape.

    Attributes:
      x, y, sample_weight: this replica's batch.
      y_pred: the outputs by task.
      loss: the training loss (the sum of the weighting's terms and the regularisation).
      losses: this replica's task losses before ``loss_weights``.
      task_losses: this replica's task losses L_t (after ``loss_weights``).
      terms: the loss-scaled per-task training terms (their gradients are the per-task
        gradients).
      scaled_loss, scaled_extra: the loss-scaled training loss and regularisation (None
        without any).
      representation: the combiner's site tensor R, or None at the shared variables.
      state_before: the network's non-trainable values before this forward.
      tape: the persistent tape.
      heads_tape: a persistent tape that recorded only the losses and terms from the
        outputs (watched): the cotangents ``d term_k / d output_k`` from it are one small
        backward pass, where the training tape would go through the whole network.
      batch: the :class:`~tag_tf.core.replicas.GlobalBatch` of this batch.
    """

    x: Any
    y: Any
    sample_weight: Any
    y_pred: dict
    loss: tf.Tensor
    losses: list
    task_losses: list
    terms: list
    scaled_loss: tf.Tensor
    scaled_extra: Optional[tf.Tensor]
    representation: Optional[tf.Tensor]
    state_before: list
    tape: tf.GradientTape
    heads_tape: tf.GradientTape
    batch: replicas.GlobalBatch


class TrainStep:
    """The phases of one compiled model's training step (see the module docstring).

    Args:
      model: the :class:`tag_tf.MultiTaskModel` (held by weak reference).
      task_losses: the per-task losses from ``compile``.
      methods: the model's :class:`~tag_tf.core.parts.Methods`.
      recorder: the :class:`~tag_tf.core.recorder.AffinityRecorder`, or None.
    """

    def __init__(self, model: keras.Model, task_losses: TaskLosses, methods: parts.Methods,
                 recorder=None):
        self._model = weakref.ref(model)
        self.task_losses = task_losses
        self.weighting, self.combiner = methods.weighting, methods.combiner
        self.recorder = recorder
        site = self.combiner.needs.representation
        self.split = None if site is None else RepresentationSplit(
            model.network, model.shared_variables, site, type(self.combiner).__name__)
        self.none_grads: set = set()  # variables Keras would leave without gradient

    @property
    def model(self) -> keras.Model:
        return self._model()

    # ------------------------------------------------------------------ 2. forward
    def forward(self, x, y, sample_weight) -> Forward:
        """The training forward pass, the task losses (also Keras' per-output loss logs) and
        the training terms."""
        model = self.model
        optimizer = model.optimizer
        if not optimizer.built:  # the lookahead reads optimizer slots before apply()
            optimizer.build(model.trainable_variables)
        batch = replicas.GlobalBatch(self.task_losses.losses, model.tasks, y, sample_weight)
        state_before = [tf.identity(v.value) for v in model.network.non_trainable_variables]
        with tf.GradientTape(persistent=True) as tape:
            if self.split is None:
                y_pred, representation = model(x, training=True), None
            else:
                outputs = self.split.probe(x, training=True)
                y_pred = task_outputs(outputs["outputs"], model.tasks)
                representation = outputs["representation"]
            with tf.GradientTape(persistent=True, watch_accessed_variables=False) as heads:
                heads.watch([y_pred[task] for task in model.tasks])
                losses = self.task_losses.compute(y, y_pred, sample_weight, weighted=False)
                task_losses = self.task_losses.weigh(losses)
                terms = self.weighting.task_terms(task_losses)
                scaled_terms = [optimizer.scale_loss(t) for t in terms]
            if not keras_compat.track_task_losses(model, y_pred, losses):
                model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                   training=True)  # Keras' per-output loss logs
            dtype = keras.config.floatx()
            extra = None if not model.losses else replicas.scale_loss(tf.add_n(
                [keras.ops.sum(keras.ops.cast(v, dtype)) for v in model.losses]))
            loss = tf.add_n([tf.cast(t, dtype) for t in terms])
            loss = loss if extra is None else loss + extra
            scaled_loss = optimizer.scale_loss(loss)
            scaled_extra = None if extra is None else optimizer.scale_loss(extra)
        return Forward(x, y, sample_weight, y_pred, loss, losses, task_losses, scaled_terms,
                       scaled_loss, scaled_extra, representation, state_before, tape, heads,
                       batch)

    def values(self, forward: Forward, learning_rate: tf.Tensor) -> parts.StepValues:
        """The global batch's task losses and what the methods' ``needs`` ask for."""
        losses = forward.batch.losses(tf.stack(forward.task_losses))
        kernel_norms = None
        kernel = next((m.needs.kernel for m in (self.weighting, self.combiner)
                       if m.needs.kernel is not None), None)
        if kernel is not None:
            local = per_task.task_gradients(forward.tape, forward.task_losses, [kernel],
                                            outputs=self._outputs(forward),
                                            outputs_tape=forward.heads_tape)
            grads = forward.batch.stacked_gradients(local)[0]
            kernel_norms = tf.cast(tf.norm(tf.reshape(grads, [tf.shape(grads)[0], -1]), axis=1),
                                   "float32")
        return parts.StepValues(losses, learning_rate, kernel_norms)

    # ----------------------------------------------------------------- 3. backward
    def plain_gradients(self, forward: Forward) -> list:
        """Keras' gradient of the (loss-scaled) training loss, zeros where none."""
        trainable = self.model.trainable_variables
        grads = forward.tape.gradient(forward.scaled_loss, trainable)
        self.none_grads.update(i for i, g in enumerate(grads) if g is None)
        return [tf.zeros_like(v.value) if g is None else g for g, v in zip(grads, trainable)]

    def task_gradients(self, forward: Forward) -> parts.TaskGradients:
        """This replica's T per-task gradients of the training terms at the site."""
        model, config = self.model, self.model.affinity_config
        if self.split is None:
            sources, what = model.shared_variables, "the shared variables"
        else:
            sources = [forward.representation]
            what = f"the representation (the output of {self.split.layer.name!r})"
        per_task.check_connected(forward.tape, forward.terms, sources, model.tasks, what)
        local = per_task.task_gradients(
            forward.tape, forward.terms, sources, outputs=self._outputs(forward),
            outputs_tape=forward.heads_tape,
            parallel=bool(config and config.parallel),
            chunk=config.parallel_chunk() if config else None)
        return parts.TaskGradients(local, forward.batch, representation=self.split is not None)

    def _outputs(self, forward: Forward) -> list:
        """Each task's output, in task order (its term depends on the network through it)."""
        return [forward.y_pred[task] for task in self.model.tasks]

    # ------------------------------------------------------------------- 4. record
    def record(self, forward: Forward, grads: parts.TaskGradients, record) -> None:
        """Adds the affinities of this step when ``record`` (a bool, or a bool tensor)."""
        if self.recorder is None or record is None or record is False:
            return
        state = self.model.affinity_state
        global_grads = grads.global_values()

        def run():
            return self.recorder.record(forward.x, forward.y, forward.sample_weight,
                                        forward.losses, forward.state_before, global_grads,
                                        forward.batch)

        if record is True:
            run()
        else:
            tf.cond(record, run, lambda: tf.identity(state.affinity_steps.value))

    # ------------------------------------------------------------------ 5. combine
    def combine(self, forward: Forward, grads: parts.TaskGradients,
                values: parts.StepValues) -> list:
        """The training gradient: the combiner's update of the site's variables (the shared
        ones, or the encoder below the representation) plus the regularisation's, and the
        other variables' gradients of the training loss, as Keras takes them."""
        model, tape = self.model, forward.tape
        combined = self.combiner.combine(grads, values)
        if self.split is None:
            site, site_grads = model.shared_variables, combined
        else:
            site = self.split.encoder_variables
            site_grads = tape.gradient(forward.representation, site,
                                       output_gradients=combined[0])
        if forward.scaled_extra is not None:
            extra = tape.gradient(forward.scaled_extra, site)
            site_grads = [g if e is None else g + e for g, e in zip(site_grads, extra)]
        by_id = dict(zip(map(id, site), site_grads))
        trainable = model.trainable_variables
        others = [v for v in trainable if id(v) not in by_id]
        by_id.update(zip(map(id, others), tape.gradient(forward.scaled_loss, others)))
        self.none_grads.update(i for i, v in enumerate(trainable) if by_id[id(v)] is None)
        return [tf.zeros_like(v.value) if by_id[id(v)] is None else by_id[id(v)]
                for v in trainable]

    # --------------------------------------------------------- 6-8. apply, finish
    def apply(self, grads: list) -> None:
        """The optimizer step (variables Keras leaves without gradient get none)."""
        model = self.model
        grads = [None if i in self.none_grads else g for i, g in enumerate(grads)]
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))

    def finish(self, forward: Forward) -> dict:
        """Counts the step (and closes a standard-error block when due), tracks the loss
        and returns Keras' metrics with the methods' weights by task."""
        model = self.model
        model.affinity_state.count_step()
        if model.affinity_config is not None:  # stderr_block=K: every K recorded steps
            model.affinity_state.end_block_if_due(model.affinity_config)
        size = tf.shape(next(i for i in tf.nest.flatten(forward.x) if i is not None))[0]
        keras_compat.track_loss(model, replicas.unscale_loss(forward.loss), size)
        logs = dict(model.compute_metrics(forward.x, forward.y, forward.y_pred,
                                          sample_weight=forward.sample_weight))
        weights = {**self.weighting.weights_by_task(), **self.combiner.weights_by_task()}
        logs.update({f"{task}_weight": w for task, w in weights.items()})
        return keras_compat.multi_worker_logs(model, logs)


class StepHooks(keras.callbacks.Callback):
    """Put first by ``MultiTaskModel.fit``: resolves the affinity window to steps when
    training starts; at every epoch end, before checkpoints (``BackupAndRestore``) and
    loggers read the state, ends a standard-error block (``stderr_block="epoch"``) and
    calls the methods' ``end_epoch`` (e.g. DWA's epoch-average losses)."""

    def on_train_begin(self, logs=None):
        config = self.model.affinity_config
        if config is not None:
            epochs, steps = self.params.get("epochs"), self.params.get("steps")
            start, end = config.step_window(epochs * steps if epochs and steps else None)
            self.model.affinity_state.set_window(start, end)

    def on_epoch_end(self, epoch, logs=None):
        config = self.model.affinity_config
        if config is not None and config.stderr_block == "epoch":
            self.model.affinity_state.end_block(config.measures)
        methods = self.model._methods  # pylint: disable=protected-access
        methods.weighting.end_epoch()
        if methods.combiner is not methods.weighting:
            methods.combiner.end_epoch()
