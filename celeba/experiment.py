"""The CelebA experiment for the runner: build it from a configuration, and run a mode.

Hyper-parameters follow google-research ``tag/celeba/CelebA.ipynb`` (every default is in
:mod:`celeba.presets`): SGD lr 5e-4 with momentum 0.9, batch 256, 64 x 64 images, the
learning rate halved every 15 epochs, at most 100 epochs, early stopping (patience 10) on
the summed validation loss restoring the best weights; GradNorm alpha 0.1 on the residual
block's last conv; uncertainty weights clipped to [0.01, 10] (``uw`` and ``pcgrad``).
Shared by ``python -m celeba.main`` and the harness adapter (:mod:`celeba.adapter`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from celeba import data
from celeba.presets import (GRADNORM_LAYER, LEARNING_RATE, LOOKAHEADS, LR_HALVING_EPOCHS,
                            MOMENTUM, NOTEBOOK_LOOKAHEAD_MOMENTUM, CelebASettings)
from tag_tf import runner
from tag_tf.cli import checks
from tag_tf.cli import errors
from tag_tf.io.bad_files import BadFiles
from tag_tf.runner.config import RunConfig


def learning_rate_at(epoch: int, base: float = LEARNING_RATE,
                     halving_epochs: int = LR_HALVING_EPOCHS) -> float:
    """The notebook's schedule: halved at the start of epochs 15, 30, ... (1-based 15, 30)."""
    if halving_epochs <= 0:
        return base
    return base * 0.5 ** ((epoch + 1) // halving_epochs)


def make_optimizer(learning_rate: float = LEARNING_RATE, lookahead: str = "fixed"):
    """The notebook's SGD (momentum 0.9); under ``lookahead="original"`` its TAG lookahead
    adds the whole velocity (:data:`celeba.presets.NOTEBOOK_LOOKAHEAD_MOMENTUM`, read by
    :mod:`tag_tf.core.lookahead`); the training step is the same either way."""
    import keras  # pylint: disable=g-import-not-at-top
    if lookahead not in LOOKAHEADS:
        raise ValueError(f"lookahead must be one of {LOOKAHEADS}. Received: {lookahead!r}")
    optimizer = keras.optimizers.SGD(learning_rate, momentum=MOMENTUM)
    if lookahead == "original":
        optimizer.lookahead_momentum = NOTEBOOK_LOOKAHEAD_MOMENTUM
    return optimizer


def prepare(*, files_dir: str, data_dir: Optional[str], verify_checksums: bool = True,
            skip_bad_files: bool = False) -> None:
    """Builds TFDS celeb_a from the original files and prints the split sizes.

    A bad image (missing, or not a complete JPEG) raises
    :class:`tag_tf.io.bad_files.BadFileError` naming it; with ``skip_bad_files`` it is left
    out, and the count and first names are printed (and kept beside the dataset, so every
    training on it reports them: :func:`celeba.data.read_bad_files`).
    """
    if data_dir is None:
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
        data_dir = os.path.expanduser(tfds.core.constants.DATA_DIR)
    report = BadFiles()
    builder = data.prepare_from_files(files_dir, data_dir, verify_checksums=verify_checksums,
                                      skip_bad_files=skip_bad_files, report=report)
    sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
    print(f"celeb_a {builder.info.version} prepared in {builder.data_dir}: {sizes}")
    if report:
        print(f"WARNING: {report.summary()}; listed in "
              f"{os.path.join(builder.data_dir, data.BAD_FILES_FILE)}, and in the results.json "
              "(bad_input_files) of every run on this data.")
    differs = {k: v for k, v in sizes.items() if data.SPLIT_SIZES.get(k) != v}
    if differs:
        print(f"Note: split sizes differ from the full CelebA {data.SPLIT_SIZES}.")


def build_experiment(settings: CelebASettings, *, seed: int = 0) -> runner.Experiment:
    """The CelebA :class:`tag_tf.runner.Experiment`, with fresh datasets on every call.

    ``settings.tasks``: attribute names, ``("all",)`` for the 40, None for the paper's 9.
    ``seed`` seeds the network's initialisers, the shuffling and the flips.
    """
    import keras  # pylint: disable=g-import-not-at-top
    from celeba import model as celeba_model  # pylint: disable=g-import-not-at-top

    s = dataclasses.replace(settings, tasks=tuple(data.resolve_tasks(settings.tasks)))
    tasks = list(s.tasks)
    common = dict(tasks=tasks, batch_size=s.batch_size, image_size=s.image_size, seed=seed,
                  cache=s.cache, shuffle_buffer=s.shuffle_buffer, limit=s.limit)
    splits = data.load_splits(s.data_dir, **common)

    def schedule(epoch, lr=None):
        del lr
        return learning_rate_at(epoch, s.learning_rate, s.lr_halving_epochs)

    return runner.Experiment(
        tasks=tasks,
        network_fn=lambda names: celeba_model.celeba_network(names, image_size=s.image_size,
                                                             seed=seed),
        shared=list(celeba_model.TRUNK_LAYERS),
        loss_fn=lambda task: celeba_model.task_loss(),
        train_data=splits.train, validation_data=splits.validation, test_data=splits.test,
        train_data_fn=data.train_data_fn(s.data_dir, **common),
        optimizer_fn=lambda: make_optimizer(s.learning_rate, s.lookahead),
        callbacks_fn=lambda: [keras.callbacks.LearningRateScheduler(schedule)],
        error_fn=lambda task: celeba_model.error_metric(),
        error_name="error_percent",
        gradnorm_layer=GRADNORM_LAYER,
        settings=s.to_json(),
        # Images the prepare step left out (skip_bad_files): reported by every run.
        bad_input_files=splits.bad_files or None)


def check_inputs(mode: str, settings: CelebASettings, config: RunConfig, *,
                 budgets_given: bool = True) -> None:
    """The data directory, budgets and the files the flags name, read before any training:
    their mistakes are one-line usage errors (:mod:`tag_tf.cli.errors`). ``budgets_given``:
    the budgets were given on the command line (the preset's are capped, not refused)."""
    if mode != "groups" and budgets_given:
        checks.check_budgets(checks.parse_budgets(config.selection.budgets), len(settings.tasks))
    prepared = ("the TFDS data directory that --mode=prepare wrote (it holds "
                f"{data.DATASET_NAME}/)")
    checks.check_directory("--data_dir", settings.data_dir, prepared)
    if settings.data_dir and not os.path.isdir(os.path.join(settings.data_dir,
                                                            data.DATASET_NAME)):
        raise errors.UsageError(
            f"--data_dir holds no {data.DATASET_NAME}/: CelebA is not prepared there. Received: "
            f"--data_dir={settings.data_dir}. Pass {prepared}, or prepare it: python -m "
            "celeba.main --mode=prepare --files_dir=<the original files> --data_dir=...")
    with errors.user_input(FileNotFoundError, flag="--data_dir"):
        data.load_builder(settings.data_dir)
    chosen = checks.check_run_inputs(mode, config.selection)
    if chosen is not None:
        unknown = sorted({t for n in chosen.networks for t in n.tasks} - set(data.ATTRIBUTES))
        if unknown:
            raise errors.UsageError(
                f"--selection names task(s) that are not CelebA attributes: {unknown}. "
                f"Received: --selection={config.selection.selection_path}. Pass a selection "
                "made for CelebA.")


def run(mode: str, settings: CelebASettings, config: RunConfig, *,
        output_dir: Optional[str]) -> runner.RunResult:
    """Runs one mode (:mod:`tag_tf.runner.modes`) on CelebA; returns the result.

    ``groups`` trains the selection's tasks (``settings.tasks`` is ignored). With
    ``config.seeds`` > 1 each training rebuilds the experiment (network and data) with its
    own seed.
    """
    if mode == "groups":
        selection = config.selection
        if not selection.selection_path:
            raise ValueError("Mode 'groups' needs a selection JSON (--selection). "
                             "Received: selection=None")
        chosen = runner.load_selection(selection.selection_path, budget=selection.budget,
                                       table=selection.table)
        trained = {t for network in chosen.networks for t in network.tasks}
        settings = dataclasses.replace(
            settings, tasks=tuple(t for t in data.ATTRIBUTES if t in trained))
    settings = dataclasses.replace(settings, tasks=tuple(data.resolve_tasks(settings.tasks)))

    def experiment_for(seed: int) -> runner.Experiment:
        return build_experiment(settings, seed=seed)

    experiment = dataclasses.replace(experiment_for(config.training.seed),
                                     for_seed=experiment_for)
    return runner.run(mode, experiment, config, output_dir=output_dir)
