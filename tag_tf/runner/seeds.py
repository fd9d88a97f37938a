"""Several seeds of one mode: replicate trainings, then pool them.

Each seed's run is a single-seed :func:`tag_tf.runner.run` written to
``output_dir/seed_<s>/``. Every mode reports each task's test error and loss as the mean
over the runs with the sample std (ddof 1) beside it (``<key>_std``); recording modes pool
the runs' matrices (:func:`tag_tf.io.affinity_io.pool_records`: mean and between-run
standard error) into the top-level affinity files and select from the pool.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable, Optional, Sequence

import numpy as np

from tag_tf.io import affinity_io
from tag_tf.runner import choose
from tag_tf.runner import modes as modes_lib
from tag_tf.runner.affinity import pool_affinity
from tag_tf.runner.config import RunConfig
from tag_tf.runner.experiment import Experiment
from tag_tf.runner.groups import std
from tag_tf.runner.results import SUMMED_KEYS, RunResult

RunFn = Callable[..., RunResult]


def mean(values: Sequence[float]) -> Optional[float]:
    return float(np.mean(values)) if values else None


def seed_config(config: RunConfig, seed: int) -> RunConfig:
    """The config of one seed's run: that training seed, no selection or comparison (the
    pooled run does them), backups in ``<backup_dir>/seed_<s>``."""
    runtime = config.runtime
    if runtime.backup_dir:
        runtime = dataclasses.replace(runtime,
                                      backup_dir=os.path.join(runtime.backup_dir, f"seed_{seed}"))
    return dataclasses.replace(
        config, seeds=1, runtime=runtime,
        training=dataclasses.replace(config.training, seed=seed),
        selection=dataclasses.replace(config.selection, budgets=(), bootstrap=0,
                                      mtl_results=None, stl_results=None))


def run_seeds(run: RunFn, mode: str, experiment: Experiment, config: RunConfig,
              output_dir: Optional[str]) -> RunResult:
    """``config.seeds`` runs of ``mode`` (seeds ``seed, seed + 1, ...``), then combined."""
    start = time.perf_counter()
    tasks = affinity_io.validate_tasks(experiment.tasks)
    seeds = [config.training.seed + k for k in range(config.seeds)]
    runs: list[RunResult] = []
    for seed in seeds:
        seeded = experiment if experiment.for_seed is None else experiment.for_seed(seed)
        if not isinstance(seeded, Experiment) or list(seeded.tasks) != tasks:
            raise ValueError(f"experiment.for_seed({seed}) must return an Experiment with the "
                             f"same tasks {tasks}. Received: {seeded!r:.200}")
        directory = os.path.join(output_dir, f"seed_{seed}") if output_dir else None
        runs.append(run(mode, seeded, seed_config(config, seed), output_dir=directory))
    served = list(runs[0].tasks)
    entries = tuple({"seed": s,
                     "results_path": (os.path.join(output_dir, f"seed_{s}",
                                                   modes_lib.RESULTS_FILE)
                                      if output_dir else None),
                     **{k: r[k] for k in SUMMED_KEYS}} for s, r in zip(seeds, runs))
    values, stds = {}, {}
    for key in ("test_error", "test_loss"):
        per_task = {t: [getattr(r, key)[t] for r in runs if getattr(r, key).get(t) is not None]
                    for t in served}
        values[key] = {t: mean(v) for t, v in per_task.items()}
        stds[key + "_std"] = {t: std(v) for t, v in per_task.items()}
    for key in ("total_test_error", "mean_test_error"):
        totals = [getattr(r, key) for r in runs if getattr(r, key) is not None]
        complete = len(totals) == len(runs)
        values[key] = mean(totals) if complete else None
        stds[key + "_std"] = std(totals) if complete else None
    affinity = selection = None
    measure = modes_lib.get(mode).measure_of(config)
    if measure is not None:
        affinity = pool_affinity([r.affinity for r in runs], seeds, output_dir)
        if config.selection.budgets and affinity.path:
            selection = choose.select(affinity.path, served, config.selection, output_dir,
                                      measure=affinity.measure, seed=config.training.seed,
                                      config=config)
    return RunResult(
        mode=mode, tasks=tuple(served), config=config, error_name=experiment.error_name,
        experiment=dict(experiment.settings), seeds=tuple(seeds), runs=entries,
        networks=tuple(net.with_(seed=s) for s, r in zip(seeds, runs) for net in r.networks),
        affinity=affinity, selection=selection, groups=runs[0].groups, std=stds,
        seconds=time.perf_counter() - start,
        # The seeds read the same data: the input files the first one dropped (if any).
        bad_input_files=next((r.bad_input_files for r in runs if r.bad_input_files), None),
        **values)
