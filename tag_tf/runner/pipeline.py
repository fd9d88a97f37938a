"""Runs the paper's experiment modes on any multi-task dataset (dataset-agnostic).

A dataset folder (``celeba/``, ``taskonomy/``) describes its data and model once as an
:class:`Experiment`, picks :class:`Options`, and calls :func:`run`::

    experiment = pipeline.Experiment(
        tasks=["a", "b", "c"],
        network_fn=lambda tasks: build_network(tasks),      # outputs named by task
        shared=["trunk_1", "trunk_2"],                       # layers every network shares
        loss_fn=lambda task: keras.losses.MeanSquaredError(),
        train_data=train, validation_data=val, test_data=test,   # (x, {task: y}) batches
        optimizer_fn=lambda: keras.optimizers.SGD(5e-4, momentum=0.9),
        callbacks_fn=lambda: [keras.callbacks.LearningRateScheduler(schedule)],
        error_fn=lambda task: MyErrorMetric(name="error"),   # optional; default: the loss
    )
    results = pipeline.run("affinity", experiment, pipeline.Options(epochs=100),
                           output_dir="runs/affinity")
    print(pipeline.format_summary(results))

Modes (:data:`MODES`); every one trains with early stopping on the summed (unweighted)
validation loss, restores the best weights and evaluates each task on the test split:

* ``affinity``: one network on all tasks recording TAG's lookahead affinity (Eq. 1) every
  ``every_n`` steps; writes ``affinity.{json,npz,png}`` and, for ``budgets``, the network
  selection ``selection.json`` (:func:`tag_tf.selection.run_selection`); the heatmap
  ``affinity.png`` then outlines the networks of ``budget`` (default: the first budget).
* ``cs``: the same with the gradient cosine similarity baseline; ``cosine_affinity.*``.
* ``mtl``: one network on all tasks, summed loss. ``stl``: one network per task.
* ``uw``: uncertainty weighting; ``gradnorm``: GradNorm; ``pcgrad``: PCGrad with
  uncertainty weighting (as the original CelebA code).
* ``groups``: reads a selection JSON (``python -m tag_tf.select`` or
  ``selection.reproduce_tables`` output, or a bare ``{"networks": [...]}``), trains every
  chosen network on its tasks and serves each task from its serving network.

:func:`run` returns and writes ``results.json`` (format :data:`RESULTS_FORMAT`)::

  {"format", "mode", "tasks", "options", "seconds", "error_name",
   "networks": [{"tasks", "serves", "epochs_run", "best_epoch", "stopped_early",
                 "best_validation_loss", "seconds", "history": {key: [per epoch]},
                 "test": {task: {"error", "loss"}}}],
   "test_error": {task: error of its serving network}, "test_loss": {task: ...},
   "total_test_error": sum over tasks, "mean_test_error": mean over tasks,
   "affinity": {"measure", "path", "tasks", "matrix", "epochs_used"}   # affinity / cs
   "selection": {"path", "budgets", "solver", "selections": [...], "uncertainty"}  # affinity, cs
   "groups": {"selection_path", "budget", "table", "comparisons"}}     # groups

Robustness: with ``Options.bootstrap`` resamples (default 200) every selection in
``selection.json`` carries ``robustness`` (``stability``, ``objective_ci``, ``alternative``,
``margin`` in standard errors, ``runs`` and ``evidence``, ``verdict``), resampling the
epochs the mean is over (their batch-means ``stderr`` is stored in the affinity file) or,
with several seeds, the runs and then the epochs within each run (two-stage; Student-t
between runs for 2-4 seeds). One seed can only be ``stable within this run`` / ``within
noise`` / ``forced``: it shows that run's batch noise, not a re-run's. ``robust`` (a re-run
with another seed would most likely pick the same networks) needs ``Options.seeds >= 2``
(see :mod:`tag_tf.selection.robustness`).

Several seeds (``Options.seeds = K``): each run goes to ``seed_<s>/``; the top-level
``results.json`` adds ``"seeds"``, ``"runs"`` (per seed: ``test_error``, ``test_loss``,
``total_test_error``, ``mean_test_error``) and ``<key>_std`` (std over runs, ddof 1) next
to each of those keys, which then hold the mean over runs; ``affinity`` / ``cs`` write the
pooled matrix (``affinity_io.pool_records``) at the top level and select from it.
``groups`` with ``mtl_results`` / ``stl_results`` adds ``comparisons`` (see
:func:`compare_errors`).

References:
  Fifty et al., "Efficiently Identifying Task Groupings for Multi-Task Learning",
  NeurIPS 2021.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Literal, Mapping, NamedTuple, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

import tag_tf
from tag_tf.io import affinity_io
from tag_tf.io import atomic
from tag_tf.io import heatmap
from tag_tf.stats import uncertainty as uncertainty_lib

MODES = ("affinity", "cs", "mtl", "stl", "uw", "gradnorm", "pcgrad", "groups")
RESULTS_FORMAT = "tag_tf.runner.pipeline/v1"
RESULTS_FILE = "results.json"
SELECTION_FILE = "selection.json"
SUMMED_LOSS = "val_summed_loss"  # the early-stopping monitor
_UNWEIGHTED = "unweighted_loss"  # per-task metric name: the task's loss, never re-weighted
_MEASURE_OF_MODE = {"affinity": "lookahead", "cs": "cosine"}
_FILE_STEMS = {"lookahead": "affinity", "cosine": "cosine_affinity",
               "taylor": "taylor_affinity"}
# What the affinity mode may record (Options.affinity_measure).
AFFINITY_MEASURES = ("lookahead", "taylor")

Mode = Literal["affinity", "cs", "mtl", "stl", "uw", "gradnorm", "pcgrad", "groups"]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything dataset-specific about an experiment.

    Attributes:
      tasks: the task names (network output names; label keys of the datasets).
      network_fn: ``network_fn(tasks) -> keras.Model`` with one output per task, named by
        task; called once per trained network (after seeding).
      shared: the layers (names) every network shares: TAG's theta_s.
      loss_fn: ``loss_fn(task)`` -> a Keras loss (name, ``Loss`` or callable) for the task.
      train_data: batches of ``(x, {task: y})`` holding at least every task's labels
        (shuffled by the dataset itself).
      validation_data: the same for early stopping (and ``affinity_batch="validation"``).
      test_data: the same for the final per-task error; None evaluates on validation.
      optimizer_fn: ``optimizer_fn() -> keras.optimizers.Optimizer`` (a fresh one per network).
      callbacks_fn: ``callbacks_fn() -> list`` of extra Keras callbacks per network, e.g.
        the learning-rate schedule.
      error_fn: ``error_fn(task) -> keras.metrics.Metric`` whose result is the task's test
        error (lower is better; e.g. classification error in %). None: the task's loss.
      error_name: what the error is, for reports (e.g. ``"error_percent"``).
      gradnorm_layer: GradNorm's shared layer (None: :class:`tag_tf.GradNorm`'s default).
      gradnorm_fn: ``gradnorm_fn(alpha)`` -> the ``gradnorm`` mode's weighting, e.g. a
        :class:`tag_tf.RepresentationGradNorm`; None: ``tag_tf.GradNorm(alpha=alpha,
        layer=gradnorm_layer)``.
      for_seed: ``for_seed(seed) -> Experiment``: the same experiment with everything the
        dataset seeds itself (initialisers, data order, augmentation) seeded by ``seed``;
        used for ``Options.seeds > 1``. None: only ``Options.seed`` changes between the
        trainings, which varies nothing that ``network_fn`` or the data seed themselves.
      train_data_fn: ``train_data_fn(epoch)`` -> epoch ``epoch``'s training batches, the
        same however often the dataset is iterated (a shuffle seeded by the epoch with
        ``reshuffle_each_iteration=False``). When given, epoch k trains on it instead of
        ``train_data``: what makes ``Options.backup_dir`` resumes exact under a
        ``tf.distribute`` strategy (:mod:`tag_tf.training.resume`).
    """

    tasks: Sequence[str]
    network_fn: Callable[[Sequence[str]], keras.Model]
    shared: Sequence[str]
    loss_fn: Callable[[str], Any]
    train_data: tf.data.Dataset
    validation_data: tf.data.Dataset
    test_data: Optional[tf.data.Dataset]
    optimizer_fn: Callable[[], keras.optimizers.Optimizer]
    callbacks_fn: Callable[[], list] = list
    error_fn: Optional[Callable[[str], keras.metrics.Metric]] = None
    error_name: str = "loss"
    gradnorm_layer: Optional[str] = None
    gradnorm_fn: Optional[Callable[[float], Any]] = None
    for_seed: Optional[Callable[[int], "Experiment"]] = None
    train_data_fn: Optional[Callable[[int], tf.data.Dataset]] = None


@dataclasses.dataclass(frozen=True)
class Options:
    """How to train and what to record (defaults follow the paper where it says).

    Attributes:
      epochs: maximum epochs per network.
      patience: early-stopping patience in epochs on the summed validation loss (best
        weights restored); None trains all ``epochs`` and keeps the final weights.
      seed: ``keras.utils.set_random_seed`` before building each network.
      steps_per_epoch: limit the steps of an epoch (debugging); None = the whole dataset.
      verbose: Keras ``fit`` verbosity.
      every_n: record affinities every n steps (``affinity``, ``cs``).
      affinity_batch: ``"train"`` or ``"validation"`` (see :class:`tag_tf.AffinityConfig`).
      lookahead_rule: ``"sgd"`` (Eq. 1) or ``"optimizer"`` (the optimizer's own step, e.g.
        SGD momentum as the original CelebA code).
      divide_by_lr: divide affinities by the learning rate (the original code).
      affinity_measure: what the ``affinity`` mode records: ``"lookahead"`` (TAG, Eq. 1,
        exact) or ``"taylor"`` (Eq. 1 to first order, no lookahead forward passes; files
        ``taylor_affinity.*``).
      affinity_window: record only in part of training: ``AffinityConfig.window`` (a name
        of :data:`tag_tf.WINDOWS` or a ``(start, end)`` fraction pair); None = all.
      affinity_epochs: ``"all"``: average over every epoch; ``"until_best"``: when early
        stopping triggers, only over epochs up to the best one (the original code drops
        the epochs after the best one). The affinity files are rewritten accordingly.
      budgets: budgets to select networks for after ``affinity`` / ``cs`` (those above the
        number of tasks are dropped); empty = no selection.
      selection_time_limit: seconds per budget for the large selection solver (used above
        16 tasks, :data:`tag_tf.selection.AUTO_EXACT_MAX_TASKS`); its selections report
        their certified gap (``certificate`` in ``selection.json``).
      selection_path: the selection JSON for ``groups``.
      budget: which budget of that file (needed when it holds several); in ``affinity`` /
        ``cs`` modes, the budget whose networks the heatmap outlines (default: the first).
      selection_table: which table of a ``reproduce_tables`` file (e.g. ``"TAG"``).
      uw_clipped: ``UncertaintyWeighting(clipped=...)`` for ``uw`` and ``pcgrad``
        (True: the original CelebA code's clipped variant).
      gradnorm_alpha: GradNorm's alpha.
      save_weights: write each trained network's weights to ``network_<k>.weights.h5``.
      log_dir: TensorBoard directory (affinity scalars and heatmaps), or None.
      bootstrap: resamples of the selection's robustness check in ``affinity`` / ``cs``
        (stability, objective interval, best alternative, margin, verdict; see
        :mod:`tag_tf.selection.robustness`), seeded by ``seed``; 0 = off. One seed can
        at best be "stable within this run"; "robust" needs ``seeds >= 2``.
      seeds: train ``seeds`` times with seeds ``seed, seed + 1, ...`` (each run in
        ``output_dir/seed_<s>/``). ``affinity`` / ``cs`` pool the runs' matrices (mean,
        between-run SE; each run's epochs kept for the two-stage bootstrap) and select
        from the pool; the other modes report each task's error as mean and std over
        the runs.
      mtl_results, stl_results: ``results.json`` of ``mtl`` / ``stl`` runs that ``groups``
        compares its total test error with (see :func:`compare_errors`).
      strategy: ``"default"``, ``"mirrored"`` or ``"multi_worker"`` (:func:`make_strategy`);
        the datasets' batch stays the global batch, split over the replicas.
      mixed_precision: build networks under ``mixed_float16`` with a ``LossScaleOptimizer``.
      shard_policy: how workers split the input under ``multi_worker`` (``"data"``,
        ``"file"`` or ``"auto"``, see :func:`distribute_options`).
      backup_dir: back up each network's training to ``<backup_dir>/network_<k>`` and
        resume it at the exact batch (:mod:`tag_tf.training.resume`); None: no backups.
      save_freq: backup frequency: ``"epoch"`` or a number of batches.
      logical_cpus: split the CPU into this many logical devices first (0: don't).
    """

    epochs: int = 100
    patience: Optional[int] = 10
    seed: int = 0
    steps_per_epoch: Optional[int] = None
    verbose: int = 2
    every_n: int = 10
    affinity_batch: Literal["train", "validation"] = "train"
    lookahead_rule: Literal["sgd", "optimizer"] = "sgd"
    divide_by_lr: bool = False
    affinity_measure: Literal["lookahead", "taylor"] = "lookahead"
    affinity_window: Optional[Any] = None
    affinity_epochs: Literal["all", "until_best"] = "all"
    budgets: Sequence[int] = ()
    selection_time_limit: float = 60.0
    selection_path: Optional[str] = None
    budget: Optional[int] = None
    selection_table: Optional[str] = None
    uw_clipped: bool = True
    gradnorm_alpha: float = 0.1
    save_weights: bool = False
    log_dir: Optional[str] = None
    bootstrap: int = 200
    seeds: int = 1
    mtl_results: Optional[str] = None
    stl_results: Optional[str] = None
    strategy: Literal["default", "mirrored", "multi_worker"] = "default"
    mixed_precision: bool = False
    shard_policy: Literal["data", "file", "auto"] = "data"
    backup_dir: Optional[str] = None
    save_freq: Any = "epoch"
    logical_cpus: int = 0

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1. Received: epochs={self.epochs}")
        if self.patience is not None and self.patience < 0:
            raise ValueError(f"patience must be >= 0 or None. Received: patience={self.patience}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}. Received: "
                             f"strategy={self.strategy!r}")
        if self.shard_policy not in _SHARD_POLICIES:
            raise ValueError(f"shard_policy must be one of {sorted(_SHARD_POLICIES)}. "
                             f"Received: shard_policy={self.shard_policy!r}")
        if not (self.save_freq == "epoch" or (isinstance(self.save_freq, int)
                                              and self.save_freq >= 1)):
            raise ValueError("save_freq must be 'epoch' or a positive integer. Received: "
                             f"save_freq={self.save_freq!r}")
        if self.affinity_epochs not in ("all", "until_best"):
            raise ValueError("affinity_epochs must be 'all' or 'until_best'. Received: "
                             f"affinity_epochs={self.affinity_epochs!r}")
        if self.affinity_measure not in AFFINITY_MEASURES:
            raise ValueError(f"affinity_measure must be one of {AFFINITY_MEASURES}. "
                             f"Received: affinity_measure={self.affinity_measure!r}")
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1. Received: seeds={self.seeds}")
        if self.bootstrap < 0:
            raise ValueError(f"bootstrap must be >= 0. Received: bootstrap={self.bootstrap}")
        if not self.selection_time_limit > 0:
            raise ValueError("selection_time_limit must be > 0 seconds. Received: "
                             f"selection_time_limit={self.selection_time_limit}")

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


# --------------------------------------------------------------------------- selection input
class ChosenNetwork(NamedTuple):
    """A network to train: its tasks and the tasks it serves."""

    tasks: tuple[str, ...]
    serves: tuple[str, ...]


class LoadedSelection(NamedTuple):
    """Networks read from a selection JSON."""

    tasks: tuple[str, ...]  # every served task, in file order
    networks: tuple[ChosenNetwork, ...]
    budget: Optional[int]
    table: Optional[str]
    # The selection's robustness in today's verdict words (read_robustness), or None.
    robustness: Optional[dict] = None


def _read_json(path: str, what: str) -> Any:
    """``json.load`` of ``path`` with clear errors naming ``what`` is missing or malformed."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def load_selection(path: str, *, budget: Optional[int] = None,
                   table: Optional[str] = None) -> LoadedSelection:
    """Reads one selection: the networks to train and whom each serves.

    Accepts ``tag_tf.selection/v1`` from ``python -m tag_tf.select`` / :func:`run` (a
    ``selections`` list, one per budget), from ``reproduce_tables`` (a ``tables`` list;
    pick one with ``table``), or a single selection ``{"networks": [{"tasks", "serves"}]}``
    (``serves`` defaults to ``tasks``; a task served twice keeps its first network).
    Its ``robustness``, if any, is read with
    :func:`tag_tf.selection.robustness.read_robustness`: a file written before verdicts
    named their evidence counts as its ``pooled_runs`` (1 if absent), so an old one-run
    "robust" reads "stable within this run".
    """
    from tag_tf.selection import robustness  # pylint: disable=g-import-not-at-top
    payload = _read_json(path, "Selection file")
    runs = payload.get("pooled_runs") if isinstance(payload, dict) else None
    if "tables" in payload:
        names = [t.get("name") for t in payload["tables"]]
        if table is None and len(names) == 1:
            table = names[0]
        if table not in names:
            raise ValueError(f"{path} holds tables {names}; choose one (selection_table). "
                             f"Received: {table!r}")
        payload = payload["tables"][names.index(table)]
    if "selections" in payload:
        selections = payload["selections"]
        budgets = [s.get("budget") for s in selections]
        if budget is None and len(selections) == 1:
            budget = budgets[0]
        if budget not in budgets:
            raise ValueError(f"{path} holds budgets {budgets}; choose one (budget). "
                             f"Received: {budget!r}")
        payload = selections[budgets.index(budget)]
    if "networks" not in payload or not payload["networks"]:
        raise ValueError(f"{path}: no 'networks' in the selection.")
    networks, served = [], []
    for entry in payload["networks"]:
        tasks = tuple(entry["tasks"])
        serves = tuple(t for t in entry.get("serves", tasks) if t not in served)
        unknown = [t for t in serves if t not in tasks]
        if unknown:
            raise ValueError(f"{path}: network {list(tasks)} serves {unknown}, which it does "
                             "not train.")
        served.extend(serves)
        networks.append(ChosenNetwork(tasks, serves))
    return LoadedSelection(tuple(served), tuple(networks), payload.get("budget", budget), table,
                           robustness.read_robustness(payload.get("robustness"), runs=runs))


# --------------------------------------------------------------------------- training pieces
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
        values = [_metric_value(logs, task, _UNWEIGHTED, self.tasks, prefix="val_")
                  for task in self.tasks]
        if all(v is not None for v in values):
            logs[SUMMED_LOSS] = float(sum(values))


def _metric_value(logs: Mapping[str, Any], task: str, name: str, tasks: Sequence[str], *,
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


def _select_labels(dataset: tf.data.Dataset, tasks: Sequence[str]) -> tf.data.Dataset:
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


def _method(mode: str, options: Options, experiment: Experiment) -> dict:
    """MultiTaskModel keyword arguments for the training method of ``mode``."""
    def need(name):
        if not hasattr(tag_tf, name):
            raise NotImplementedError(f"Mode {mode!r} needs tag_tf.{name}, which this tag_tf "
                                      "does not provide.")
        return getattr(tag_tf, name)

    if mode == "uw":
        return {"weighting": need("UncertaintyWeighting")(clipped=options.uw_clipped)}
    if mode == "gradnorm" and experiment.gradnorm_fn is not None:
        return {"weighting": experiment.gradnorm_fn(options.gradnorm_alpha)}
    if mode == "gradnorm":
        return {"weighting": need("GradNorm")(alpha=options.gradnorm_alpha,
                                              layer=experiment.gradnorm_layer)}
    if mode == "pcgrad":
        return {"weighting": need("UncertaintyWeighting")(clipped=options.uw_clipped),
                "gradient": need("PCGrad")(seed=options.seed)}
    return {}


def _affinity_config(mode: str, options: Options, validation) -> Optional[tag_tf.AffinityConfig]:
    if mode not in _MEASURE_OF_MODE:
        return None
    kwargs = dict(every_n=options.every_n, rule=options.lookahead_rule,
                  divide_by_lr=options.divide_by_lr, batch=options.affinity_batch,
                  window=options.affinity_window,
                  validation_data=validation if options.affinity_batch == "validation"
                  else None)
    kwargs["measures"] = (_measure_of(mode, options),)
    return tag_tf.AffinityConfig(**kwargs)


def _measure_of(mode: str, options: Options) -> str:
    """The measure an ``affinity`` / ``cs`` mode records."""
    return options.affinity_measure if mode == "affinity" else _MEASURE_OF_MODE[mode]


def _finite(value: Any) -> Optional[float]:
    value = float(value)
    return value if math.isfinite(value) else None


def train_network(experiment: Experiment, options: Options, tasks: Sequence[str], *,
                  mode: str = "mtl", output_dir: Optional[str] = None,
                  index: int = 0) -> tuple[tag_tf.MultiTaskModel, dict]:
    """Builds, trains (early stopping) and tests one network on ``tasks``.

    Returns the trained model and a JSON-ready description (history, best epoch, test
    error and loss per task). In ``affinity`` / ``cs`` mode, ``output_dir`` receives the
    affinity files.
    """
    tasks = list(tasks)
    keras.utils.set_random_seed(options.seed)
    start = time.perf_counter()
    train = _select_labels(experiment.train_data, tasks)
    validation = _select_labels(experiment.validation_data, tasks)
    test_source = experiment.test_data if experiment.test_data is not None \
        else experiment.validation_data
    test = _select_labels(test_source, tasks)

    # ---- strategy / mixed precision: everything with variables is built in the scope
    strategy = make_strategy(options.strategy, logical_cpus=options.logical_cpus)
    if options.strategy != "default":
        shard = distribute_options(options.shard_policy)
        train, validation, test = (d.with_options(shard) for d in (train, validation, test))
    with strategy.scope(), _dtype_policy("mixed_float16" if options.mixed_precision else None):
        network = experiment.network_fn(tasks)
        model = tag_tf.MultiTaskModel(network, shared=list(experiment.shared),
                                      affinity=_affinity_config(mode, options, validation),
                                      **_method(mode, options, experiment))
        losses = {task: experiment.loss_fn(task) for task in tasks}
        metrics = {}
        for task in tasks:
            task_metrics = [keras.metrics.MeanMetricWrapper(_per_example(losses[task]),
                                                            name=_UNWEIGHTED)]
            if experiment.error_fn is not None:
                task_metrics.append(experiment.error_fn(task))
            metrics[task] = task_metrics
        optimizer = experiment.optimizer_fn()
        if options.mixed_precision and not isinstance(optimizer,
                                                      keras.optimizers.LossScaleOptimizer):
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(optimizer=optimizer, loss=losses, metrics=metrics)
    # ---- end strategy / mixed precision

    callbacks = list(experiment.callbacks_fn()) + [SummedValidationLoss(tasks)]
    stopper = None
    if options.patience is not None:
        stopper = keras.callbacks.EarlyStopping(monitor=SUMMED_LOSS, mode="min",
                                                patience=options.patience,
                                                restore_best_weights=True)
        callbacks.append(stopper)
    if model.affinity_config is not None:
        callbacks.append(tag_tf.AffinityLogger(output_dir=output_dir, log_dir=options.log_dir))
    # Step-exact backup / resume.
    steps_per_epoch = options.steps_per_epoch
    from tag_tf.training import resume  # pylint: disable=g-import-not-at-top

    def epoch_data(epoch):
        batches = _select_labels(experiment.train_data_fn(epoch), tasks)
        if options.strategy != "default":
            batches = batches.with_options(distribute_options(options.shard_policy))
        return batches

    # Epoch-indexed data gives the same batches however often it is read.
    data = train if experiment.train_data_fn is None else epoch_data
    resume_from = resume.ResumePoint()
    if options.backup_dir:
        steps_per_epoch = steps_per_epoch or resume.steps_of(data)
        backup = resume.StepBackupAndRestore(
            os.path.join(options.backup_dir, f"network_{index}"), options.save_freq,
            steps_per_epoch=steps_per_epoch,
            stateful_callbacks=[c for c in callbacks if resume.has_state(c)])
        resume_from = backup.resume_point
        callbacks.insert(0, backup)  # first: it ends a resumed epoch early (see resume)
        if options.strategy != "default" and resume_from != (0, 0) and \
                experiment.train_data_fn is None:
            logging.warning("Resuming under a tf.distribute strategy without "
                            "Experiment.train_data_fn: exact only when the training data "
                            "gives the same batches on every iteration (see tag_tf.training.resume).")
    if options.backup_dir or experiment.train_data_fn is not None:
        steps_per_epoch = steps_per_epoch or resume.steps_of(data)
        train = resume.resumable_dataset(data, steps_per_epoch=steps_per_epoch,
                                         epochs=options.epochs, start=resume_from)
    # ---- end backup / resume
    history = model.fit(train, validation_data=validation, epochs=options.epochs, shuffle=False,
                        steps_per_epoch=steps_per_epoch, callbacks=callbacks,
                        verbose=options.verbose)
    if options.backup_dir:  # the epochs trained before a resume belong to the run too
        history = backup.complete_history(history)
    summed = history.history.get(SUMMED_LOSS, [])
    epochs_run = len(history.history.get("loss", []))
    stopped_early = bool(stopper is not None and stopper.stopped_epoch > 0)
    finite = [v if v is not None and math.isfinite(v) else math.inf for v in summed]
    best_epoch = int(np.argmin(finite)) if finite else epochs_run - 1  # EarlyStopping's choice

    evaluation = model.evaluate(test, return_dict=True, verbose=0)
    error_key = None if experiment.error_fn is None else metrics[tasks[0]][1].name
    test_result = {}
    for task in tasks:
        loss = _metric_value(evaluation, task, _UNWEIGHTED, tasks)
        error = _metric_value(evaluation, task, error_key, tasks) if error_key else loss
        if loss is None or error is None:
            raise RuntimeError(f"evaluate() did not report task {task!r}'s metrics: "
                               f"{sorted(evaluation)}")
        test_result[task] = {"error": _finite(error), "loss": _finite(loss)}
    if options.save_weights and output_dir:
        os.makedirs(output_dir, exist_ok=True)
        with atomic.atomic_path(os.path.join(output_dir, f"network_{index}.weights.h5")) as tmp:
            model.save_weights(tmp)
    info = {
        "tasks": tasks,
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        "stopped_early": stopped_early,
        "best_validation_loss": _finite(summed[best_epoch]) if summed else None,
        "seconds": time.perf_counter() - start,
        "history": {k: [_finite(v) for v in values] for k, values in history.history.items()},
        "test": test_result,
        "test_split": "test" if experiment.test_data is not None else "validation",
        "replicas": int(strategy.num_replicas_in_sync),  # devices trained on in sync
    }
    return model, info


# --------------------------------------------------------------------------- distribution
# Strategy construction, input sharding, mixed precision.
STRATEGIES = ("default", "mirrored", "multi_worker")
_SHARD_POLICIES = {"data": tf.data.experimental.AutoShardPolicy.DATA,
                   "file": tf.data.experimental.AutoShardPolicy.FILE,
                   "auto": tf.data.experimental.AutoShardPolicy.AUTO}
_STRATEGY_CACHE: dict = {}


def split_cpu(count: int) -> None:
    """Splits the first CPU into ``count`` logical devices (before TensorFlow starts)."""
    if count < 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current and len(current) == count:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError as e:
        raise ValueError(f"Cannot split the CPU into {count} logical devices: TensorFlow has "
                         "already started (set logical_cpus before any TensorFlow work).") from e


def make_strategy(name: str = "default", *, logical_cpus: int = 0) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy called ``name`` (one per process and name).

    ``"mirrored"``: every local GPU, or without GPUs every logical CPU device (one replica
    per device). ``"multi_worker"``: ``MultiWorkerMirroredStrategy`` (cluster from
    ``TF_CONFIG``; a single worker without it). ``"default"``: no distribution.
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}. Received: {name!r}")
    split_cpu(logical_cpus)
    if name == "default":
        return tf.distribute.get_strategy()
    if name not in _STRATEGY_CACHE:
        if name == "mirrored":
            devices = None if tf.config.list_logical_devices("GPU") else \
                [d.name for d in tf.config.list_logical_devices("CPU")]
            _STRATEGY_CACHE[name] = tf.distribute.MirroredStrategy(devices)
        else:
            _STRATEGY_CACHE[name] = tf.distribute.MultiWorkerMirroredStrategy()
    return _STRATEGY_CACHE[name]


def distribute_options(shard_policy: str = "data") -> tf.data.Options:
    """``tf.data`` options setting how a multi-worker strategy splits a dataset.

    ``"data"`` (the default): every worker runs the whole pipeline and keeps every
    ``num_workers``-th element: correct for any pipeline (file lists decoded in ``map``,
    ``from_tensor_slices``, TFDS), at the cost of reading everything on every worker.
    ``"file"``: each worker reads only its share of the input files: less I/O, but needs at
    least as many (equally sized) files as workers. ``"auto"``: file when the pipeline reads
    files, else data. A single worker (``mirrored``) never shards: each global batch is split
    over its replicas.
    """
    if shard_policy not in _SHARD_POLICIES:
        raise ValueError(f"shard_policy must be one of {sorted(_SHARD_POLICIES)}. "
                         f"Received: {shard_policy!r}")
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = _SHARD_POLICIES[shard_policy]
    return options


class _dtype_policy:  # pylint: disable=invalid-name
    """Sets the global Keras dtype policy to ``name`` during the block (None: unchanged)."""

    def __init__(self, name: Optional[str]):
        self.name, self.previous = name, None

    def __enter__(self):
        self.previous = keras.config.dtype_policy()
        if self.name:
            keras.mixed_precision.set_global_policy(self.name)

    def __exit__(self, *exc):
        keras.mixed_precision.set_global_policy(self.previous)


# --------------------------------------------------------------------------- affinity output
def _restrict_epochs(record: affinity_io.AffinityRecord,
                     last_epoch: int) -> affinity_io.AffinityRecord:
    """The count-weighted mean over the trace's epochs ``<= last_epoch``."""
    kept = [e for e in (record.epochs or []) if e["epoch"] <= last_epoch]
    if not kept:
        return record
    total = np.zeros_like(np.asarray(record.affinity, dtype=np.float64))
    counts = np.zeros_like(total)
    for epoch in kept:
        mean = np.array([[np.nan if v is None else v for v in row] for row in epoch["affinity"]],
                        dtype=np.float64)
        count = np.asarray(epoch["counts"], dtype=np.float64)
        total += np.where(count > 0, np.nan_to_num(mean) * count, 0.0)
        counts += count
    with np.errstate(invalid="ignore", divide="ignore"):
        affinity = np.where(counts > 0, total / np.maximum(counts, 1), np.nan)
    skipped = None
    if all("skipped" in e for e in kept):
        skipped = sum(np.asarray(e["skipped"], dtype=np.int64) for e in kept)
    config = dict(record.config or {})
    config["epochs_used"] = [int(e["epoch"]) for e in kept]
    # The whole run's standard error does not describe the kept epochs' mean (callers
    # recompute it from the kept epochs when there are two or more).
    return record._replace(affinity=affinity, counts=counts.astype(np.int64), skipped=skipped,
                           config=config, stderr=None, stderr_blocks=None,
                           stderr_method=None)


def _finish_affinity(mode: str, options: Options, info: dict, output_dir: Optional[str],
                     model: tag_tf.MultiTaskModel) -> dict:
    """Applies ``affinity_epochs``, (re)writes the files, selects networks; returns the entry."""
    measure = _measure_of(mode, options)
    stem = _FILE_STEMS[measure]
    path = os.path.join(output_dir, stem + ".json") if output_dir else None
    if path and os.path.exists(path):
        record = affinity_io.load_affinity(path)
    else:
        record = model.affinity_record(measure)
    # Recompute the mean from the per-epoch trace: EarlyStopping(restore_best_weights) also
    # rolls the model's affinity accumulators back to the best epoch.
    last = max((e["epoch"] for e in record.epochs or []), default=None)
    if options.affinity_epochs == "until_best" and info["stopped_early"]:
        last = info["best_epoch"]
    if last is not None:
        record = _with_epoch_stderr(_restrict_epochs(record, last))
        if path:
            affinity_io.save_affinity_json(path, record)
            affinity_io.save_affinity_npz(os.path.join(output_dir, stem + ".npz"), record)
            heatmap.save_record_heatmap(os.path.join(output_dir, stem + ".png"), record,
                                        measure=measure)
    epochs_used = (record.config or {}).get("epochs_used") or \
        [int(e["epoch"]) for e in (record.epochs or [])]
    entry = {"measure": measure, "path": path, "tasks": list(record.tasks),
             "matrix": [[_finite(v) for v in row] for row in np.asarray(record.affinity)],
             "epochs_used": epochs_used}
    return entry


def _with_epoch_stderr(record: affinity_io.AffinityRecord) -> affinity_io.AffinityRecord:
    """Adds batch-means standard errors (one block per used epoch) to ``record``.

    Only the epochs the mean is over (``config["epochs_used"]``) count; the full trace
    is kept. With fewer than 2 such epochs there is no estimate: ``record`` is unchanged.
    """
    used = (record.config or {}).get("epochs_used")
    kept = [e for e in record.epochs or [] if used is None or e["epoch"] in used]
    if len(kept) < uncertainty_lib.MIN_BLOCKS:
        return record
    with_stderr = uncertainty_lib.with_epoch_stderr(record._replace(epochs=kept))
    return with_stderr._replace(epochs=record.epochs)


def _selection_uncertainty(record: affinity_io.AffinityRecord, bootstrap: int,
                           seed: int) -> tuple[Any, Optional[str]]:
    """The bootstrap's :class:`Uncertainty` for ``record``, or None and the reason."""
    from tag_tf.selection import robustness  # pylint: disable=g-import-not-at-top
    if bootstrap <= 0:
        return None, None
    if len(record.tasks) > robustness.MAX_BOOTSTRAP_TASKS:
        return None, (f"not assessed: the bootstrap is limited to "
                      f"{robustness.MAX_BOOTSTRAP_TASKS} tasks ({len(record.tasks)} here)")
    if record.stderr is not None and not np.any(np.nan_to_num(record.stderr) > 0):
        return None, ("not assessed: every standard error is zero or unknown (identical "
                      "runs or epochs?)")
    used = (record.config or {}).get("epochs_used")
    kept = [e for e in record.epochs or [] if used is None or e["epoch"] in used]
    try:
        return robustness.Uncertainty.from_record(record._replace(epochs=kept),
                                                  n_resamples=bootstrap, seed=seed), None
    except ValueError as e:  # no blocks, epochs or stderr: nothing to resample
        return None, f"not assessed: {e}"


def _select(affinity_path: str, tasks: Sequence[str], budgets: Sequence[int],
            output_dir: str, marked_budget: Optional[int] = None,
            measure: str = "lookahead", bootstrap: int = 0, seed: int = 0,
            time_limit: float = 60.0) -> dict:
    """Selects networks for ``budgets`` from the affinity file and writes ``selection.json``.

    With ``bootstrap`` resamples, every selection also gets its robustness (stability,
    objective interval, alternative, margin, verdict), resampling the used epochs or the
    pooled runs of the record. Above 16 tasks the large solver runs ``time_limit`` seconds
    per budget; what each selection proves (optimal, or the certified gap) is logged,
    written (``certificate``) and returned.
    """
    from tag_tf.selection import api  # pylint: disable=g-import-not-at-top
    from tag_tf.selection import robustness  # pylint: disable=g-import-not-at-top
    usable = sorted({int(b) for b in budgets if 1 <= int(b) <= len(tasks)})
    if not usable:
        return {}
    path = os.path.join(output_dir, SELECTION_FILE)
    solver = api.solver_note(len(tasks), "auto", time_limit)
    if solver["resolved"] == "large":
        nontrivial = sum(b > 1 for b in usable)
        logging.info("Selecting networks for %d tasks, budgets %s: %s (up to about %.0f s).",
                     len(tasks), usable, solver["note"], nontrivial * time_limit)
    report = api.run_selection(affinity_path=affinity_path, budgets=usable,
                               time_limit=time_limit, seed=seed)
    for selection in report.selections:
        logging.info("Selection, budget %d (%s, %.1f s): %s", selection.budget,
                     selection.method, selection.seconds, api.certificate(selection))
    record = affinity_io.load_affinity(affinity_path)
    payload = report.payload
    uncertainty, note = _selection_uncertainty(record, bootstrap, seed)
    if uncertainty is not None:
        assessed = robustness.assess(record.affinity, report.selections, uncertainty,
                                     tasks=record.tasks)
        payload["selections"] = api.selection_entries(assessed)
        payload["uncertainty"] = api.uncertainty_entry(uncertainty)
    elif note:
        payload["uncertainty"] = {"skipped": note}
    api.write_json(path, payload)
    selections = payload["selections"]
    # Redraw the heatmap with one budget's networks outlined: ``budget`` if given, else the first.
    marked = next((s for s in selections if s["budget"] == marked_budget), selections[0])
    heatmap.save_record_heatmap(affinity_path[:-len(".json")] + ".png", record,
                                measure=measure, selection=marked)
    return {"path": path, "budgets": usable, "solver": payload["solver"],
            "selections": selections, "uncertainty": payload.get("uncertainty")}


# --------------------------------------------------------------------------- several seeds
def _run_seeds(mode: str, experiment: Experiment, options: Options,
               output_dir: Optional[str]) -> dict:
    """``options.seeds`` runs of ``mode`` (seeds ``seed, seed + 1, ...``), then combined.

    Each run is :func:`run` with one seed, written to ``output_dir/seed_<s>/``. Affinity
    modes pool the matrices (:func:`affinity_io.pool_records`) into the top-level
    affinity files and select from the pool; every mode reports the per-task test error
    as mean and std (ddof 1) over the runs.
    """
    start = time.perf_counter()
    tasks = affinity_io.validate_tasks(experiment.tasks)
    seeds = [options.seed + k for k in range(options.seeds)]
    runs = []
    for seed in seeds:
        seeded = experiment if experiment.for_seed is None else experiment.for_seed(seed)
        if not isinstance(seeded, Experiment) or list(seeded.tasks) != tasks:
            raise ValueError(f"experiment.for_seed({seed}) must return an Experiment with the "
                             f"same tasks {tasks}. Received: {seeded!r:.200}")
        per_seed = {k: os.path.join(getattr(options, k), f"seed_{seed}")
                    for k in ("backup_dir", "log_dir") if getattr(options, k)}
        single = dataclasses.replace(options, seed=seed, seeds=1, budgets=(), bootstrap=0,
                                     mtl_results=None, stl_results=None, **per_seed)
        directory = os.path.join(output_dir, f"seed_{seed}") if output_dir else None
        runs.append(run(mode, seeded, single, output_dir=directory))
    served = runs[0]["tasks"]
    results = {"format": RESULTS_FORMAT, "mode": mode, "tasks": list(served),
               "error_name": experiment.error_name, "options": options.to_json(),
               "seeds": seeds,
               "runs": [{"seed": s, "results_path": (os.path.join(output_dir, f"seed_{s}",
                                                                   RESULTS_FILE)
                                                      if output_dir else None),
                         **{k: r[k] for k in ("test_error", "test_loss", "total_test_error",
                                              "mean_test_error")}}
                        for s, r in zip(seeds, runs)],
               "networks": [{**net, "seed": s} for s, r in zip(seeds, runs)
                            for net in r["networks"]]}
    for key in ("test_error", "test_loss"):
        per_task = {t: [r[key][t] for r in runs if r[key].get(t) is not None] for t in served}
        results[key] = {t: _mean(v) for t, v in per_task.items()}
        results[key + "_std"] = {t: _std(v) for t, v in per_task.items()}
    for key in ("total_test_error", "mean_test_error"):
        values = [r[key] for r in runs if r[key] is not None]
        complete = len(values) == len(runs)
        results[key] = _mean(values) if complete else None
        results[key + "_std"] = _std(values) if complete else None
    if mode in _MEASURE_OF_MODE:
        results["affinity"] = _pool_affinity(runs, seeds, output_dir)
        path = results["affinity"]["path"]
        if options.budgets and path:
            results["selection"] = _select(path, served, options.budgets, output_dir,
                                           options.budget, results["affinity"]["measure"],
                                           options.bootstrap, options.seed,
                                           options.selection_time_limit)
    if mode == "groups":
        results["groups"] = runs[0]["groups"]
    results["seconds"] = time.perf_counter() - start
    return results


def _mean(values: Sequence[float]) -> Optional[float]:
    return float(np.mean(values)) if values else None


def _std(values: Sequence[float]) -> Optional[float]:
    """Sample standard deviation (ddof 1); None with fewer than 2 values."""
    return float(np.std(values, ddof=1)) if len(values) >= 2 else None


def _pool_affinity(runs: Sequence[dict], seeds: Sequence[int],
                   output_dir: Optional[str]) -> dict:
    """Pools the runs' affinity records; writes ``<stem>.{json,npz,png}`` in ``output_dir``."""
    entries = [r["affinity"] for r in runs]
    measure = entries[0]["measure"]
    records = [affinity_io.load_affinity(e["path"]) if e["path"] else
               affinity_io.AffinityRecord(e["tasks"], np.array(
                   [[np.nan if v is None else v for v in row] for row in e["matrix"]]))
               for e in entries]
    pooled = affinity_io.pool_records(records)
    path = None
    if output_dir:
        stem = os.path.join(output_dir, _FILE_STEMS[measure])
        path = stem + ".json"
        affinity_io.save_affinity_json(path, pooled)
        affinity_io.save_affinity_npz(stem + ".npz", pooled)
        heatmap.save_record_heatmap(stem + ".png", pooled, measure=measure)
    entry = {"measure": measure, "path": path, "tasks": list(pooled.tasks),
             "matrix": [[_finite(v) for v in row] for row in np.asarray(pooled.affinity)],
             "stderr": [[_finite(v) for v in row] for row in np.asarray(pooled.stderr)],
             "pooled_seeds": list(seeds), "seed_paths": [e["path"] for e in entries],
             "epochs_used": {str(s): e["epochs_used"] for s, e in zip(seeds, entries)}}
    if np.all(np.nan_to_num(pooled.stderr) == 0):
        entry["warning"] = ("The runs' matrices are identical: the seeds changed nothing (give "
                            "Experiment.for_seed so the dataset reseeds its network and data).")
    return entry


# --------------------------------------------------------------------------- comparison
def load_results(path: str) -> dict:
    """Reads a pipeline ``results.json`` (one seed or several)."""
    results = _read_json(path, "Results file")
    if not isinstance(results, dict) or "test_error" not in results:
        raise ValueError(f"{path} is not a pipeline results.json (no 'test_error').")
    return results


def _seed_totals(results: Mapping[str, Any], tasks: Sequence[str], name: str) -> list[float]:
    """Total test error over ``tasks`` of every run (seed) in ``results``."""
    runs = results.get("runs") or [results]
    totals = []
    for run_result in runs:
        errors = run_result["test_error"]
        missing = [t for t in tasks if errors.get(t) is None]
        if missing:
            raise ValueError(f"The {name} results have no test error for task(s) {missing}; "
                             f"they have {sorted(k for k, v in errors.items() if v is not None)}.")
        totals.append(float(sum(errors[t] for t in tasks)))
    return totals


def compare_errors(results: Mapping[str, Any], reference: Mapping[str, Any], *,
                   name: str, ours: str = "groups") -> dict:
    """Compares total test error (over ``results``' tasks; lower is better) with a reference.

    ``difference`` = reference mean total - our mean total (positive: we are better).
    ``spread`` is the seed-to-seed spread of that difference between single trainings,
    ``sqrt(std_ours^2 + std_reference^2)`` (std over each side's seeds, ddof 1); a side
    with one seed is given the other side's std (stated in ``note``); with one seed on both
    sides the spread is unknown. Verdict: ``"better"`` if difference > spread, ``"worse"``
    if difference < -spread, else ``"within spread"``; ``"unknown"`` without a spread.
    """
    tasks = list(results["tasks"])
    mine, theirs = _seed_totals(results, tasks, ours), _seed_totals(reference, tasks, name)
    difference = float(np.mean(theirs) - np.mean(mine))
    std_mine, std_theirs = _std(mine), _std(theirs)
    note = None
    if std_mine is None and std_theirs is None:
        spread = None
        note = "both sides ran one seed: no seed spread (run with seeds >= 2)"
    else:
        if std_mine is None or std_theirs is None:
            one, other = (ours, name) if std_mine is None else (name, ours)
            note = f"{one} ran one seed; its spread is taken to be {other}'s"
            std_mine = std_theirs if std_mine is None else std_mine
            std_theirs = std_mine if std_theirs is None else std_theirs
        spread = float(math.hypot(std_mine, std_theirs))
    direction = "better" if difference >= 0 else "worse"
    if spread is None:
        verdict = "unknown"
        statement = (f"{ours} are {direction} than {name} by {abs(difference):.4g} total error "
                     f"(seed spread unknown: run with seeds >= 2)")
    elif difference > spread:
        verdict = "better"
        statement = (f"{ours} beat {name} by {difference:.4g} ± {spread:.4g} "
                     "(more than the seed spread)")
    elif difference < -spread:
        verdict = "worse"
        statement = (f"{ours} lose to {name} by {-difference:.4g} ± {spread:.4g} "
                     "(more than the seed spread)")
    else:
        verdict = "within spread"
        statement = (f"{ours} are {direction} than {name} by {abs(difference):.4g} ± "
                     f"{spread:.4g} total error, within the seed-to-seed spread")
    return {"reference": name, "tasks": tasks, "total_test_error": float(np.mean(mine)),
            "reference_total_test_error": float(np.mean(theirs)), "seeds": len(mine),
            "reference_seeds": len(theirs), "difference": difference, "spread": spread,
            "verdict": verdict, "statement": statement, "note": note}


def _comparisons(results: Mapping[str, Any], options: Options) -> list[dict]:
    """``groups`` results against the MTL / STL results files given in ``options``."""
    out = []
    for name, path in (("MTL", options.mtl_results), ("STL", options.stl_results)):
        if path:
            entry = compare_errors(results, load_results(path), name=name)
            entry["reference_path"] = os.path.abspath(path)
            out.append(entry)
    return out


# --------------------------------------------------------------------------- entry point
def run(mode: Mode, experiment: Experiment, options: Options = Options(), *,
        output_dir: Optional[str] = None) -> dict:
    """Runs one mode end to end; returns the results and writes ``results.json``.

    Args:
      mode: one of :data:`MODES`.
      experiment: the dataset's :class:`Experiment`.
      options: :class:`Options`.
      output_dir: where to write ``results.json`` (and affinity / selection / weight
        files); None writes nothing (affinity selection then needs a directory: skipped).

    Returns:
      The results dict (see the module docstring).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}. Received: mode={mode!r}")
    tasks = affinity_io.validate_tasks(experiment.tasks)
    start = time.perf_counter()
    extra: dict[str, Any] = {}
    if mode == "groups":
        if not options.selection_path:
            raise ValueError("Mode 'groups' needs options.selection_path (a selection JSON).")
        chosen = load_selection(options.selection_path, budget=options.budget,
                                table=options.selection_table)
        unknown = sorted({t for n in chosen.networks for t in n.tasks} - set(tasks))
        if unknown:
            raise ValueError(f"The selection trains task(s) {unknown} that the experiment "
                             f"lacks; experiment tasks: {tasks}")
        networks = list(chosen.networks)
        tasks = [t for t in tasks if t in chosen.tasks]
        extra["groups"] = {"selection_path": os.path.abspath(options.selection_path),
                           "budget": chosen.budget, "table": chosen.table}
        if chosen.robustness:
            extra["groups"]["verdict"] = {k: chosen.robustness.get(k) for k in (
                "verdict", "runs", "evidence", "stability", "margin")}
    elif mode == "stl":
        networks = [ChosenNetwork((t,), (t,)) for t in tasks]
    else:
        networks = [ChosenNetwork(tuple(tasks), tuple(tasks))]
    if (options.mtl_results or options.stl_results) and mode != "groups":
        raise ValueError("mtl_results / stl_results are compared with in mode 'groups' only. "
                         f"Received them with mode={mode!r}.")
    if options.seeds > 1:
        return _finish_results(_run_seeds(mode, experiment, options, output_dir), options,
                               output_dir)

    infos = []
    for k, chosen_network in enumerate(networks):
        model, info = train_network(experiment, options, chosen_network.tasks, mode=mode,
                                    output_dir=output_dir, index=k)
        info["serves"] = list(chosen_network.serves)
        infos.append(info)
        if mode in _MEASURE_OF_MODE:
            extra["affinity"] = _finish_affinity(mode, options, info, output_dir, model)
            if options.budgets and output_dir and extra["affinity"]["path"]:
                extra["selection"] = _select(extra["affinity"]["path"], tasks,
                                             options.budgets, output_dir, options.budget,
                                             extra["affinity"]["measure"],
                                             options.bootstrap, options.seed,
                                             options.selection_time_limit)
        del model
        keras.backend.clear_session()

    test_error, test_loss = {}, {}
    for info in infos:
        for task in info["serves"]:
            test_error[task] = info["test"][task]["error"]
            test_loss[task] = info["test"][task]["loss"]
    errors = [test_error[t] for t in tasks if test_error.get(t) is not None]
    results = {
        "format": RESULTS_FORMAT,
        "mode": mode,
        "tasks": list(tasks),
        "error_name": experiment.error_name,
        "options": options.to_json(),
        "seconds": time.perf_counter() - start,
        "networks": infos,
        "test_error": {t: test_error.get(t) for t in tasks},
        "test_loss": {t: test_loss.get(t) for t in tasks},
        "total_test_error": float(sum(errors)) if len(errors) == len(tasks) else None,
        "mean_test_error": float(np.mean(errors)) if len(errors) == len(tasks) else None,
        **extra,
    }
    return _finish_results(results, options, output_dir)


def _finish_results(results: dict, options: Options, output_dir: Optional[str]) -> dict:
    """Adds ``groups``' comparisons with MTL / STL results, writes ``results.json``."""
    if results["mode"] == "groups":
        comparisons = _comparisons(results, options)
        if comparisons:
            results["groups"]["comparisons"] = comparisons
    if output_dir:
        write_results(os.path.join(output_dir, RESULTS_FILE), results)
    return results


def write_results(path: str, results: dict) -> None:
    """Writes ``results`` as indented JSON (non-finite numbers become null)."""
    atomic.atomic_write_json(path, results, indent=1, allow_nan=False)


# format_summary prints the affinity matrix up to this many tasks (wider tables only wrap).
SUMMARY_MATRIX_MAX_TASKS = 12


def _fmt(value: Optional[float], spec: str = ".4g") -> str:
    return "n/a" if value is None else format(value, spec)


def format_summary(results: Mapping[str, Any]) -> str:
    """A short human summary: networks, per-task test error and loss, total, affinity.

    With several seeds, errors read ``mean ± std`` over the trainings; selections show
    their robustness verdict and what it is evidence of (one run: its batch noise only,
    with how to check across seeds; several: the runs); ``groups`` states how it compares
    with MTL / STL. Results written before verdicts named their evidence are read with
    :func:`tag_tf.selection.robustness.read_robustness` (an old one-seed "robust" reads
    "stable within this run").
    """
    from tag_tf.selection import robustness  # pylint: disable=g-import-not-at-top
    tasks = results["tasks"]
    seeds = results.get("seeds")
    lines = [f"mode {results['mode']}: {len(tasks)} task(s), {len(results['networks'])} "
             f"network(s), {results['seconds']:.1f} s"]
    if seeds:
        lines.append(f"  {len(seeds)} trainings, seeds {seeds}: errors are mean ± std over "
                     "them")
    for k, net in enumerate(results["networks"], start=1):
        stop = "early stop" if net["stopped_early"] else "no early stop"
        seed = f" seed {net['seed']}" if "seed" in net else ""
        lines.append(f"  network {k}{seed}: {{{', '.join(net['tasks'])}}}  {net['epochs_run']} "
                     f"epoch(s), best {net['best_epoch'] + 1} ({stop}), summed val loss "
                     f"{_fmt(net['best_validation_loss'])}, {net['seconds']:.1f} s")
    first = [net for net in results["networks"]
             if not seeds or net.get("seed") == seeds[0]]
    served_by = {t: k for k, net in enumerate(first, start=1) for t in net["serves"]}
    width = max(len(t) for t in tasks + ["total"])
    name = results.get("error_name", "error")

    def value(key, task=None):
        mean = results[key] if task is None else results[key][task]
        std = results.get(key + "_std")
        std = std if task is None or std is None else std.get(task)
        return _fmt(mean) + (f" ± {_fmt(std)}" if seeds and std is not None else "")

    lines.append(f"  {'task'.ljust(width)}  network  test {name:>10}  test loss")
    for task in tasks:
        lines.append(f"  {task.ljust(width)}  {str(served_by.get(task, '-')).rjust(7)}  "
                     f"{value('test_error', task).rjust(15)}  {value('test_loss', task)}")
    lines.append(f"  {'total'.ljust(width)}  {''.rjust(7)}  "
                 f"{value('total_test_error').rjust(15)}")
    if "affinity" in results:
        entry = results["affinity"]
        matrix = np.array([[np.nan if v is None else v for v in row] for row in entry["matrix"]])
        over = (f"pooled over seeds {entry['pooled_seeds']}" if "pooled_seeds" in entry
                else f"over epochs {entry['epochs_used']}")
        lines.append(f"  {entry['measure']} affinity [source, target] {over} -> "
                     f"{entry['path']}")
        if len(entry["tasks"]) <= SUMMARY_MATRIX_MAX_TASKS:
            lines.append("    " + heatmap.format_matrix(matrix, entry["tasks"]).replace(
                "\n", "\n    "))
        else:  # a 40 x 40 table is unreadable in a terminal: the files hold it
            lines.append(f"    {len(matrix)} x {len(matrix)} matrix (printed up to "
                         f"{SUMMARY_MATRIX_MAX_TASKS} tasks): see the JSON and its heatmap PNG")
        if entry.get("warning"):
            lines.append(f"  WARNING: {entry['warning']}")
    if results.get("selection"):
        selection = results["selection"]
        lines.append(f"  selection -> {selection['path']}")
        solver = selection.get("solver") or {}
        if solver.get("resolved") == "large":
            lines.append(f"    {solver['note']}")
        uncertainty = selection.get("uncertainty") or {}
        # Files written before verdicts named their evidence: the runs are the seeds.
        runs = uncertainty.get("runs") or len(
            (results.get("affinity") or {}).get("pooled_seeds") or [None])
        if "source" in uncertainty:
            test = uncertainty.get("criterion") or robustness.criterion(runs)
            lines.append(f"    robustness: {uncertainty['resamples']} resamples, "
                         f"{uncertainty['source']}; {test}")
            lines.append(f"    evidence: {robustness.evidence_text(runs)}")
            if runs < 2:
                lines.append("    to check across seeds: rerun with --seeds=K (K >= 2), or "
                             "python -m tag_tf.select --affinity=<run files, comma-separated> "
                             "--bootstrap=200")
        elif "skipped" in uncertainty:
            lines.append(f"    robustness {uncertainty['skipped']}")
        for s in selection["selections"]:
            nets = " ".join("{" + ",".join(n["tasks"]) + "}" for n in s["networks"])
            proof = s.get("certificate") or ("optimal" if s.get("optimal") else "not proven "
                                             "optimal")
            lines.append(f"    budget {s['budget']}: {nets}  objective {_fmt(s['objective'])}, "
                         f"{proof}")
            r = robustness.read_robustness(s.get("robustness"), runs=runs)
            if r:
                low, high = r["objective_ci"]
                text = (f"      {r['verdict'].upper()}: stability {r['stability']:.2f}, "
                        f"{100 * r['confidence']:.0f}% CI [{_fmt(low)}, {_fmt(high)}]")
                if r.get("alternative"):
                    alt = " ".join("{" + ",".join(n) + "}" for n in r["alternative"])
                    text += f", margin {_fmt(r['margin'], '.3g')} SE over {alt}"
                lines.append(text)
    if "groups" in results:
        g = results["groups"]
        verdict = g.get("verdict")
        lines.append(f"  selection {g['selection_path']} (budget {g['budget']}"
                     + (f", table {g['table']}" if g["table"] else "")
                     + (f", verdict {verdict['verdict']} from {verdict['runs']} run(s)"
                        if verdict else "") + ")")
        for c in g.get("comparisons", []):
            lines.append(f"  {c['statement']}" + (f" [{c['note']}]" if c.get("note") else ""))
    return "\n".join(lines)
