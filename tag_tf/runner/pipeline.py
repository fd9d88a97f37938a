"""Runs the paper's experiment modes on any multi-task dataset (dataset-agnostic).

A dataset folder (``celeba/``, ``taskonomy/``) or a user with their own Keras model describes
the data and the network once as an :class:`~tag_tf.runner.experiment.Experiment`, picks a
:class:`~tag_tf.runner.config.RunConfig`, and calls :func:`run`::

    experiment = runner.Experiment(
        tasks=["a", "b", "c"],
        network_fn=lambda tasks: build_network(tasks),      # outputs named by task
        shared=["trunk_1", "trunk_2"],                       # layers every network shares
        loss_fn=lambda task: keras.losses.MeanSquaredError(),
        train_data=train, validation_data=val, test_data=test,   # (x, {task: y}) batches
        optimizer_fn=lambda: keras.optimizers.SGD(5e-4, momentum=0.9),
    )
    result = runner.run("affinity", experiment, runner.RunConfig().replace(epochs=100),
                        output_dir="runs/affinity")
    print(runner.format_summary(result))

Modes (:mod:`tag_tf.runner.modes`, one registry): ``affinity`` (TAG's lookahead affinity,
Eq. 1, then network selection), ``cs`` (the gradient cosine similarity baseline), ``mtl``,
``stl``, ``uw``, ``gradnorm``, ``pcgrad`` and ``groups`` (a selection's networks). Every one
trains with early stopping on the summed (unweighted) validation loss, restores the best
weights and evaluates each task on the test split. :func:`run` returns a
:class:`~tag_tf.runner.results.RunResult` and writes it as ``results.json`` (with the full
config it ran with); recording modes also write ``affinity.{json,npz,png}`` (or
``cosine_affinity.*``, ``taylor_affinity.*``) and, for budgets, ``selection.json`` with the
bootstrap's robustness verdicts. Several seeds: :mod:`tag_tf.runner.seeds`.

The names this module had before the runner became a package (``Experiment``,
``load_selection``, ``compare_errors``, ``format_summary``, ...) are still importable here.

References:
  Fifty et al., "Efficiently Identifying Task Groupings for Multi-Task Learning",
  NeurIPS 2021.
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

import keras
import numpy as np
from absl import logging

from tag_tf.io import affinity_io
from tag_tf.runner import choose
from tag_tf.runner import groups as groups_lib
from tag_tf.runner import modes as modes_lib
from tag_tf.runner import seeds as seeds_lib
from tag_tf.runner.affinity import finish_affinity
from tag_tf.runner.config import RunConfig
from tag_tf.runner.experiment import Experiment
from tag_tf.runner.groups import ChosenNetwork
from tag_tf.runner.results import RunResult, write_results
from tag_tf.runner.train import train_network

# Kept importable from here (the runner's names before it became a package).
# pylint: disable=unused-import,g-multiple-import
from tag_tf.runner.distribute import distribute_options, make_strategy, split_cpu  # noqa: F401
from tag_tf.runner.groups import LoadedSelection, compare_errors, load_selection  # noqa: F401
from tag_tf.runner.modes import MODES, RESULTS_FILE, SELECTION_FILE  # noqa: F401
from tag_tf.runner.results import RESULTS_FORMAT, load_results  # noqa: F401
from tag_tf.runner.summary import format_summary  # noqa: F401
from tag_tf.runner.train import SUMMED_LOSS, SummedValidationLoss  # noqa: F401
# pylint: enable=unused-import,g-multiple-import


def run(mode: str, experiment: Experiment, config: RunConfig = RunConfig(), *,
        output_dir: Optional[str] = None) -> RunResult:
    """Runs one mode end to end; returns the result and writes ``results.json``.

    Args:
      mode: a mode of :mod:`tag_tf.runner.modes` (e.g. ``"affinity"``, ``"mtl"``).
      experiment: the dataset's :class:`Experiment`.
      config: the :class:`RunConfig`.
      output_dir: where to write ``results.json`` (and affinity / selection / weight
        files); None writes nothing (affinity selection then needs a directory: skipped).

    Returns:
      The :class:`RunResult` (``result.to_json()`` is what ``results.json`` holds).
    """
    spec = modes_lib.get(mode)
    tasks = affinity_io.validate_tasks(experiment.tasks)
    selection = config.selection
    start = time.perf_counter()
    groups: Optional[dict] = None
    if spec.networks == "selection":
        if not selection.selection_path:
            raise ValueError(f"Mode {mode!r} needs selection_path (a selection JSON; "
                             "--selection on the command line).")
        chosen = groups_lib.load_selection(selection.selection_path, budget=selection.budget,
                                           table=selection.table)
        unknown = sorted({t for n in chosen.networks for t in n.tasks} - set(tasks))
        if unknown:
            raise ValueError(f"The selection trains task(s) {unknown} that the experiment "
                             f"lacks; experiment tasks: {tasks}")
        networks = list(chosen.networks)
        tasks = [t for t in tasks if t in chosen.tasks]
        groups = {"selection_path": os.path.abspath(selection.selection_path),
                  "budget": chosen.budget, "table": chosen.table}
        if chosen.robustness:
            groups["verdict"] = {k: chosen.robustness.get(k) for k in (
                "verdict", "runs", "evidence", "stability", "margin")}
    elif spec.networks == "each":
        networks = [ChosenNetwork((t,), (t,)) for t in tasks]
    else:
        networks = [ChosenNetwork(tuple(tasks), tuple(tasks))]
    if (selection.mtl_results or selection.stl_results) and spec.networks != "selection":
        raise ValueError("mtl_results / stl_results are compared with in mode 'groups' only. "
                         f"Received them with mode={mode!r}.")
    measure = spec.measure_of(config)
    if config.seeds > 1:  # (each seed's run reports its dropped input files)
        return _finish(seeds_lib.run_seeds(run, mode, experiment, config, output_dir),
                       config, output_dir)
    bad_input_files = bad_input_files_json(experiment)

    trained, affinity, chosen_networks = [], None, None
    for k, network in enumerate(networks):
        model, result = train_network(experiment, config, network.tasks, mode=mode,
                                      output_dir=output_dir, index=k)
        trained.append(result.with_(serves=tuple(network.serves)))
        if measure is not None:
            affinity = finish_affinity(measure, config, trained[-1], output_dir, model)
            if selection.budgets and output_dir and affinity.path:
                chosen_networks = choose.select(affinity.path, tasks, selection, output_dir,
                                                measure=measure, seed=config.training.seed,
                                                config=config)
        del model
        keras.backend.clear_session()

    test_error: dict[str, Any] = {}
    test_loss: dict[str, Any] = {}
    for result in trained:
        for task in result.serves:
            test_error[task] = result.test[task]["error"]
            test_loss[task] = result.test[task]["loss"]
    errors = [test_error[t] for t in tasks if test_error.get(t) is not None]
    complete = len(errors) == len(tasks)
    return _finish(RunResult(
        mode=mode, tasks=tuple(tasks), config=config, error_name=experiment.error_name,
        experiment=dict(experiment.settings), seconds=time.perf_counter() - start,
        networks=tuple(trained), test_error={t: test_error.get(t) for t in tasks},
        test_loss={t: test_loss.get(t) for t in tasks},
        total_test_error=float(sum(errors)) if complete else None,
        mean_test_error=float(np.mean(errors)) if complete else None,
        affinity=affinity, selection=chosen_networks, groups=groups,
        bad_input_files=bad_input_files), config, output_dir)


def bad_input_files_json(experiment: Experiment) -> Optional[dict]:
    """The JSON of the input files ``experiment`` dropped (None: none), logged as a
    warning: a run never drops input silently."""
    report = experiment.bad_input_files
    if not report:
        return None
    logging.warning("Input files dropped from this run's data (skip_bad_files), listed in "
                    "results.json under 'bad_input_files': %s", report.summary())
    return report.to_json()


def _finish(result: RunResult, config: RunConfig, output_dir: Optional[str]) -> RunResult:
    """Adds ``groups``' comparisons with MTL / STL results, writes ``results.json``."""
    if result.groups is not None:
        comparisons = groups_lib.comparisons(result, config.selection)
        if comparisons:
            result = result.replace(groups={**result.groups, "comparisons": comparisons})
    if output_dir:
        write_results(os.path.join(output_dir, modes_lib.RESULTS_FILE), result)
    return result
