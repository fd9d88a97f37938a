"""The Taskonomy experiment for the runner: build it from a configuration, and run a mode.

Every default is in :mod:`taskonomy.presets` (``tag.patch``'s settings); the training
machinery of the original (plateau schedule, PyTorch-style weight decay, epoch-aligned
recording) is in :mod:`taskonomy.training`. Shared by ``python -m taskonomy.main`` and the
harness adapter (:mod:`taskonomy.adapter`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Optional, Sequence

import keras
from absl import logging

from tag_tf import runner
from tag_tf.cli import checks
from tag_tf.cli import errors
from tag_tf.io import atomic
from tag_tf.runner.config import RunConfig
from taskonomy import data
from taskonomy.presets import LOOKAHEADS, ORIGINAL_LOOKAHEAD_MOMENTUM, TASKS, TaskonomySettings
from taskonomy.training import CoupledSGD, EpochAlignedRecording, PlateauHalving


def load_data(settings: TaskonomySettings, *, seed: int = 0) -> data.Splits:
    """Fresh datasets of the three splits (:func:`taskonomy.data.load_splits`), logged.

    A missing or unreadable file raises :class:`tag_tf.io.bad_files.BadFileError` naming
    it, or with ``settings.skip_bad_files`` is dropped (``Splits.bad_files``).
    """
    tasks = data.parse_tasks(settings.tasks)
    splits = data.load_splits(settings.data_dir, tasks, batch_size=settings.batch_size,
                              eval_batch_size=settings.eval_batch_size,
                              image_size=settings.image_size,
                              splits_dir=settings.splits_dir or data.SPLITS_DIR, seed=seed,
                              augment=settings.augment, limit=settings.limit,
                              tfrecord_dir=settings.tfrecord_dir,
                              skip_bad_files=settings.skip_bad_files)
    logging.info("Taskonomy: %d training images, %d steps per epoch, tasks %s.",
                 splits.train_examples, splits.steps_per_epoch, tasks)
    return splits


def build_experiment(settings: TaskonomySettings, splits: data.Splits, *, seed: int = 0,
                     mixed_precision: bool = False) -> runner.Experiment:
    """The Taskonomy :class:`tag_tf.runner.Experiment` on ``splits`` (:func:`load_data`).

    Every network gets a new optimizer and a new :class:`PlateauHalving`.
    ``mixed_precision`` builds each network under ``mixed_float16`` and wraps the optimizer
    in a ``LossScaleOptimizer`` (what ``compile`` does under a global mixed policy), so it
    also works when nobody sets the global policy. ``settings.lookahead == "original"``:
    ``tag.patch``'s lookahead (no momentum, the final conv left out of the shared set,
    recording aligned to epochs).
    """
    from taskonomy import losses as taskonomy_losses  # pylint: disable=g-import-not-at-top
    from taskonomy import model as taskonomy_model  # pylint: disable=g-import-not-at-top
    import tag_tf  # pylint: disable=g-import-not-at-top

    s = settings
    tasks = data.parse_tasks(s.tasks)
    if s.lookahead not in LOOKAHEADS:
        raise ValueError(f"lookahead must be one of {LOOKAHEADS}. Received: {s.lookahead!r}")
    original = s.lookahead == "original"

    def network(names):
        with _policy("mixed_float16" if mixed_precision else None):
            return taskonomy_model.taskonomy_network(names, image_size=s.image_size,
                                                     widths=s.widths, seed=seed)

    def optimizer():
        sgd = CoupledSGD(s.learning_rate, momentum=s.momentum, l2=s.weight_decay,
                         lookahead_momentum=ORIGINAL_LOOKAHEAD_MOMENTUM if original else None)
        return keras.optimizers.LossScaleOptimizer(sgd) if mixed_precision else sgd

    return runner.Experiment(
        tasks=tasks,
        network_fn=network,
        shared=_shared_layers(tasks, s.image_size, s.widths, include_final_conv=not original),
        loss_fn=lambda task: taskonomy_losses.task_loss(task, shift_tolerant=s.rotate_loss),
        train_data=splits.train, validation_data=splits.validation, test_data=splits.test,
        train_data_fn=splits.train_data_fn,
        optimizer_fn=optimizer,
        callbacks_fn=lambda: [PlateauHalving(s.batch_size, window=s.loss_window,
                                             max_window=s.max_loss_window,
                                             min_learning_rate=s.min_learning_rate)]
        + ([EpochAlignedRecording()] if original else []),
        error_name="loss",
        # The original's GradNormRepFunction: at the representation (the output of the last
        # shared layer, final_conv_bn), the weights on the encoder-bound gradient only.
        gradnorm_fn=lambda alpha: tag_tf.RepresentationGradNorm(alpha=alpha),
        settings={**s.to_json(), "tasks": tasks},
        bad_input_files=splits.bad_files or None)


@contextlib.contextmanager
def _policy(name: Optional[str]):
    """Sets the global Keras dtype policy to ``name`` (None: unchanged) during the block."""
    previous = keras.config.dtype_policy()
    if name:
        keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def check_inputs(mode: str, settings: TaskonomySettings, config: RunConfig, output_dir: str,
                 *, budgets_given: bool = True) -> None:
    """The tasks, directories and files the flags name, checked before any work: their
    mistakes are one-line usage errors (:mod:`tag_tf.cli.errors`). ``budgets_given``: the
    budgets were given on the command line (the preset's are capped, not refused)."""
    with errors.user_input(ValueError, flag="--tasks"):
        tasks = data.parse_tasks(settings.tasks)
    if settings.tfrecord_dir and mode != "convert":
        checks.check_directory("--tfrecord_dir", settings.tfrecord_dir,
                               "the output folder of --mode=convert")
        if not os.path.isfile(os.path.join(settings.tfrecord_dir, "info.json")):
            raise errors.UsageError(
                f"--tfrecord_dir holds no info.json: it was not written by --mode=convert. "
                f"Received: --tfrecord_dir={settings.tfrecord_dir}. Pass the output folder "
                "of --mode=convert.")
    else:
        root = "the Taskonomy root (rgb/<building>/*.png and one folder per task)"
        checks.check_directory("--data_dir", settings.data_dir, root)
        if not os.path.isdir(os.path.join(settings.data_dir, data.INPUT_DOMAIN)):
            raise errors.UsageError(
                f"--data_dir has no {data.INPUT_DOMAIN}/ folder. Received: "
                f"--data_dir={settings.data_dir}. Pass {root}.")
    checks.check_directory("--splits_dir", settings.splits_dir,
                           "a folder with {train,val,test}_models.txt")
    if mode == "convert":
        return
    if mode != "groups" and budgets_given:
        checks.check_budgets(checks.parse_budgets(config.selection.budgets), len(tasks))
    checks.check_run_inputs(mode, config.selection)
    if mode == "groups":
        with errors.user_input(flag="--selection"):
            canonical_selection(config.selection.selection_path, budget=config.selection.budget,
                                table=config.selection.table, output_dir=output_dir)


def run(mode: str, settings: TaskonomySettings, config: RunConfig, *,
        output_dir: str) -> runner.RunResult:
    """Runs one mode (:mod:`tag_tf.runner.modes`) on Taskonomy; returns the result.

    ``groups`` trains the selection's tasks (named by task, loss key or letter:
    :func:`canonical_selection`). ``config.training.steps_per_epoch`` None: the original's
    rule (:func:`taskonomy.data.steps_per_epoch`). With ``config.seeds`` > 1 each training
    rebuilds the experiment (network and data) with its own seed.
    """
    selection = config.selection
    if mode == "groups":
        if not selection.selection_path:
            raise ValueError("Mode 'groups' needs a selection JSON (--selection). "
                             "Received: selection=None")
        path, budget, table, tasks = canonical_selection(
            selection.selection_path, budget=selection.budget, table=selection.table,
            output_dir=output_dir)
        config = config.replace(selection_path=path, budget=budget, table=table)
        settings = dataclasses.replace(settings, tasks=",".join(tasks))
    mixed = config.runtime.mixed_precision

    def experiment_for(seed: int, splits: Optional[data.Splits] = None) -> runner.Experiment:
        return build_experiment(settings, splits or load_data(settings, seed=seed), seed=seed,
                                mixed_precision=mixed)

    seed = config.training.seed
    splits = load_data(settings, seed=seed)
    experiment = dataclasses.replace(experiment_for(seed, splits), for_seed=experiment_for)
    if config.training.steps_per_epoch is None:
        config = config.replace(steps_per_epoch=splits.steps_per_epoch)
    with _policy("mixed_float16" if mixed else None):
        return runner.run(mode, experiment, config, output_dir=output_dir)


def canonical_selection(path: str, *, budget: Optional[int], table: Optional[str],
                        output_dir: str) -> tuple[str, Optional[int], Optional[str], list[str]]:
    """Reads a selection; names given as loss keys (``ss_l``...) or letters become task names.

    ``taskonomy.reproduce_selection`` already writes task names (the published files' loss
    keys and Standley's letters are mapped when loaded, :mod:`taskonomy.published_tables`);
    a selection written with those labels (e.g. by hand, or before that mapping) is
    translated: the chosen networks are rewritten to ``<output_dir>/selection_tasks.json``
    (a bare selection).

    Returns:
      ``(path, budget, table, tasks)`` to hand to the pipeline.
    """
    chosen = runner.load_selection(path, budget=budget, table=table)
    aliases = {**{v: k for k, v in data.LOSS_KEYS.items()}, **data.TASK_LETTERS,
               **{t: t for t in data.TASKS}}
    names = {t for network in chosen.networks for t in network.tasks}
    unknown = sorted(names - set(aliases))
    if unknown:
        raise ValueError(f"The selection {path} names unknown task(s) {unknown}; expected "
                         f"task names, loss keys {sorted(data.LOSS_KEYS.values())} or letters.")
    tasks = sorted({aliases[t] for t in names})
    if names <= set(data.TASKS):
        return path, budget, table, tasks
    networks = [{"tasks": [aliases[t] for t in n.tasks], "serves": [aliases[t] for t in n.serves]}
                for n in chosen.networks]
    os.makedirs(output_dir, exist_ok=True)
    translated = os.path.join(output_dir, "selection_tasks.json")
    atomic.atomic_write_json(translated, {"source": os.path.abspath(path), "budget": chosen.budget,
                                          "table": chosen.table, "networks": networks},
                             indent=1)
    return translated, None, None, tasks


def _shared_layers(tasks: Sequence[str], image_size: int, widths: str, *,
                   include_final_conv: bool = True) -> list[str]:
    """Names of the encoder layers (identical for every task subset)."""
    from taskonomy import model as taskonomy_model  # pylint: disable=g-import-not-at-top
    probe = taskonomy_model.taskonomy_network(tasks[:1], image_size=image_size, widths=widths)
    names = taskonomy_model.shared_layer_names(probe, include_final_conv=include_final_conv)
    del probe
    keras.backend.clear_session()
    return names


def convert(*, data_dir: str, output_dir: str, tasks: str | Sequence[str] = TASKS,
            splits_dir: Optional[str] = None, shards: Optional[int] = None,
            limit: Optional[int] = None) -> dict:
    """``--mode=convert``: TFRecord shards of the three splits; prints the counts."""
    num_shards = None if shards is None else {s: shards for s in data.SPLITS}
    info = data.convert_splits(data_dir, tasks, output_dir, splits_dir=splits_dir or
                               data.SPLITS_DIR, num_shards=num_shards, limit=limit)
    counts = {split: v["examples"] for split, v in info["splits"].items()}
    print(f"Wrote TFRecords of {info['tasks']} to {output_dir}: {counts}")
    return info
