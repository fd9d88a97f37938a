"""Training one network of a run: build, fit with early stopping, test each task."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

import tag_tf
from tag_tf.io import atomic
from tag_tf.runner import distribute
from tag_tf.runner import modes as modes_lib
from tag_tf.runner.config import RunConfig
from tag_tf.runner.experiment import Experiment
from tag_tf.runner.results import NetworkResult, finite

SUMMED_LOSS = "val_summed_loss"  # the early-stopping monitor
UNWEIGHTED = "unweighted_loss"  # per-task metric name: the task's loss, never re-weighted


class SummedValidationLoss(keras.callbacks.Callback):
    """Adds ``val_summed_loss`` (sum of the tasks' unweighted validation losses) to the logs.

    Must come before ``EarlyStopping`` in the callback list.
    """

    def __init__(self, tasks: Sequence[str]):
        super().__init__()
        self.tasks = list(tasks)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        values = [metric_value(logs, task, UNWEIGHTED, self.tasks, prefix="val_")
                  for task in self.tasks]
        if all(v is not None for v in values):
            logs[SUMMED_LOSS] = float(sum(values))


def metric_value(logs: Mapping[str, Any], task: str, name: str, tasks: Sequence[str], *,
                 prefix: str = "") -> Optional[float]:
    """A task's metric from Keras logs: ``<prefix><task>_<name>`` (``<prefix><name>`` when
    the model has a single output, which Keras does not prefix)."""
    key = f"{prefix}{task}_{name}"
    if key in logs:
        return logs[key]
    if len(tasks) == 1 and f"{prefix}{name}" in logs:
        return logs[f"{prefix}{name}"]
    return None


def _per_example(loss_spec: Any) -> Callable:
    """The per-example form of a loss (for a metric averaged over examples)."""
    loss = keras.losses.get(loss_spec) if not isinstance(loss_spec, keras.losses.Loss) \
        else loss_spec
    if isinstance(loss, keras.losses.Loss):
        return loss.call
    if callable(loss):
        return loss
    raise ValueError(f"Unsupported loss {loss_spec!r}.")


def select_labels(dataset: tf.data.Dataset, tasks: Sequence[str]) -> tf.data.Dataset:
    """Keeps only ``tasks`` in the label (and sample-weight) dicts of each element."""
    tasks = list(tasks)

    def keep(*element):
        x, y = element[0], element[1]
        missing = [t for t in tasks if t not in y]
        if missing:
            raise ValueError(f"The dataset has no labels for task(s) {missing}; "
                             f"labels: {sorted(y)}")
        out = (x, {t: y[t] for t in tasks})
        if len(element) > 2:
            w = element[2]
            out += ({t: w[t] for t in tasks} if isinstance(w, Mapping) else w,)
        return out

    return dataset.map(keep)


def affinity_config(mode: str, config: RunConfig,
                    validation: Any) -> Optional[tag_tf.AffinityConfig]:
    """The ``MultiTaskModel`` affinity config of ``mode``: ``config.affinity`` recording the
    mode's measures (:meth:`Mode.measures_of`), or None for a mode that records nothing."""
    measures = modes_lib.get(mode).measures_of(config)
    if not measures:
        return None
    return dataclasses.replace(
        config.affinity, measures=measures,
        validation_data=validation if config.affinity.batch == "validation" else None)


def train_network(experiment: Experiment, config: RunConfig, tasks: Sequence[str], *,
                  mode: str = "mtl", output_dir: Optional[str] = None,
                  index: int = 0) -> tuple[tag_tf.MultiTaskModel, NetworkResult]:
    """Builds, trains (early stopping) and tests one network on ``tasks``.

    Returns the trained model and its :class:`NetworkResult` (history, best epoch, test
    error and loss per task; ``serves`` = ``tasks``). A recording mode writes its affinity
    files into ``output_dir``.
    """
    tasks = list(tasks)
    training, runtime = config.training, config.runtime
    keras.utils.set_random_seed(training.seed)
    start = time.perf_counter()
    train = select_labels(experiment.train_data, tasks)
    validation = select_labels(experiment.validation_data, tasks)
    test_source = experiment.test_data if experiment.test_data is not None \
        else experiment.validation_data
    test = select_labels(test_source, tasks)

    # ---- strategy / mixed precision: everything with variables is built in scope
    strategy = distribute.make_strategy(runtime.strategy, logical_cpus=runtime.logical_cpus)
    if runtime.strategy != "default":
        shard = distribute.distribute_options(runtime.shard_policy)
        train, validation, test = (d.with_options(shard) for d in (train, validation, test))
    with strategy.scope(), distribute.dtype_policy(
            "mixed_float16" if runtime.mixed_precision else None):
        network = experiment.network_fn(tasks)
        model = tag_tf.MultiTaskModel(network, shared=list(experiment.shared),
                                      affinity=affinity_config(mode, config, validation),
                                      **modes_lib.get(mode).method(config, experiment))
        losses = {task: experiment.loss_fn(task) for task in tasks}
        metrics = {}
        for task in tasks:
            task_metrics = [keras.metrics.MeanMetricWrapper(_per_example(losses[task]),
                                                            name=UNWEIGHTED)]
            if experiment.error_fn is not None:
                task_metrics.append(experiment.error_fn(task))
            metrics[task] = task_metrics
        optimizer = experiment.optimizer_fn()
        if runtime.mixed_precision and not isinstance(optimizer,
                                                      keras.optimizers.LossScaleOptimizer):
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(optimizer=optimizer, loss=losses, metrics=metrics)

    callbacks = list(experiment.callbacks_fn()) + [SummedValidationLoss(tasks)]
    stopper = None
    if training.patience is not None:
        stopper = keras.callbacks.EarlyStopping(monitor=SUMMED_LOSS, mode="min",
                                                patience=training.patience,
                                                restore_best_weights=True)
        callbacks.append(stopper)
    if model.affinity_config is not None:
        log_dir = os.path.join(output_dir, "tb") if runtime.tensorboard and output_dir else None
        callbacks.append(tag_tf.AffinityLogger(output_dir=output_dir, log_dir=log_dir))
    history, backup = _fit(model, experiment, config, tasks, train, validation, callbacks,
                           index)
    if backup is not None:  # the epochs trained before a resume belong to the run
        history = backup.complete_history(history)
    summed = history.history.get(SUMMED_LOSS, [])
    epochs_run = len(history.history.get("loss", []))
    stopped_early = bool(stopper is not None and stopper.stopped_epoch > 0)
    ranked = [v if v is not None and math.isfinite(v) else math.inf for v in summed]
    best_epoch = int(np.argmin(ranked)) if ranked else epochs_run - 1  # EarlyStopping's choice

    evaluation = model.evaluate(test, return_dict=True, verbose=0)
    error_key = None if experiment.error_fn is None else metrics[tasks[0]][1].name
    test_result = {}
    for task in tasks:
        loss = metric_value(evaluation, task, UNWEIGHTED, tasks)
        error = metric_value(evaluation, task, error_key, tasks) if error_key else loss
        if loss is None or error is None:
            raise RuntimeError(f"evaluate() did not report task {task!r}'s metrics: "
                               f"{sorted(evaluation)}")
        test_result[task] = {"error": finite(error), "loss": finite(loss)}
    if runtime.save_weights and output_dir:
        os.makedirs(output_dir, exist_ok=True)
        with atomic.atomic_path(os.path.join(output_dir, f"network_{index}.weights.h5")) as tmp:
            model.save_weights(tmp)
    return model, NetworkResult(
        tasks=tuple(tasks), serves=tuple(tasks), epochs_run=epochs_run, best_epoch=best_epoch,
        stopped_early=stopped_early,
        best_validation_loss=finite(summed[best_epoch]) if summed else None,
        seconds=time.perf_counter() - start,
        history={k: [finite(v) for v in values] for k, values in history.history.items()},
        test=test_result,
        test_split="test" if experiment.test_data is not None else "validation",
        replicas=int(strategy.num_replicas_in_sync))


def _fit(model, experiment: Experiment, config: RunConfig, tasks: list[str],
         train: tf.data.Dataset, validation: tf.data.Dataset, callbacks: list,
         index: int) -> tuple[Any, Any]:
    """``model.fit`` with step-exact backups and epoch-indexed data; (history, backup)."""
    from tag_tf.training import resume  # pylint: disable=g-import-not-at-top
    training, runtime = config.training, config.runtime
    steps_per_epoch = training.steps_per_epoch

    def epoch_data(epoch):
        batches = select_labels(experiment.train_data_fn(epoch), tasks)
        if runtime.strategy != "default":
            batches = batches.with_options(distribute.distribute_options(runtime.shard_policy))
        return batches

    # Epoch-indexed data gives the same batches however often it is read.
    data = train if experiment.train_data_fn is None else epoch_data
    resume_from, backup = resume.ResumePoint(), None
    if runtime.backup_dir:
        steps_per_epoch = steps_per_epoch or resume.steps_of(data)
        backup = resume.StepBackupAndRestore(
            os.path.join(runtime.backup_dir, f"network_{index}"), runtime.save_freq,
            steps_per_epoch=steps_per_epoch,
            stateful_callbacks=[c for c in callbacks if resume.has_state(c)])
        resume_from = backup.resume_point
        callbacks.insert(0, backup)  # first: it ends a resumed epoch early (see resume)
        if runtime.strategy != "default" and resume_from != (0, 0) and \
                experiment.train_data_fn is None:
            logging.warning("Resuming under a tf.distribute strategy without "
                            "Experiment.train_data_fn: exact only when the training data "
                            "gives the same batches on every iteration (see "
                            "tag_tf.training.resume).")
    if runtime.backup_dir or experiment.train_data_fn is not None:
        steps_per_epoch = steps_per_epoch or resume.steps_of(data)
        train = resume.resumable_dataset(data, steps_per_epoch=steps_per_epoch,
                                         epochs=training.epochs, start=resume_from)
    history = model.fit(train, validation_data=validation, epochs=training.epochs,
                        shuffle=False, steps_per_epoch=steps_per_epoch, callbacks=callbacks,
                        verbose=runtime.verbose)
    return history, backup
