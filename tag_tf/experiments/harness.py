"""The shared machinery of the tables: cached trainings, affinities, groupings, scores.

Every training is one :func:`tag_tf.runner.run` of a network on a subset of the tasks with
the adapter's :class:`tag_tf.runner.RunConfig` (changed by setting name, e.g.
``harness.train(tasks, "affinity", every_n=1, window="first")``), cached by the adapter's
settings, the mode, the tasks and the config's result-changing fields
(:meth:`tag_tf.runner.modes.Mode.result_json`; :mod:`tag_tf.experiments.cache`).
Groupings are evaluated network by network, so a network chosen by several methods or
budgets is trained once. A task's error is the test error of the network serving it; a
grouping's total is the sum over all tasks (Fifty et al., NeurIPS 2021, Sec. 4).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import time
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence

import keras
import numpy as np

from tag_tf.io import affinity_io
from tag_tf import runner
from tag_tf import selection as selection_lib
from tag_tf.experiments import adapter as adapter_lib
from tag_tf.experiments import cache as cache_lib
from tag_tf.runner import modes as modes_lib


class EpochTimer(keras.callbacks.Callback):
    """Wall time of every epoch (``seconds``)."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def make_deterministic() -> None:
    """Same settings, same numbers, in any process: call before TensorFlow runs anything.

    ``enable_op_determinism`` alone is not enough on CPU: with more than one inter-op
    thread, TensorFlow runs independent ops of a training step concurrently, and the
    per-task gradient phases (CS, PCGrad) then gave float results that changed from one
    process to the next (measured: CS total test error 4.1198107 / 4.1198129 / 4.1198138 /
    4.1198142 over runs of one setting; the same value in 6 of 6 runs with one inter-op
    thread). Each op still uses every core (intra-op threads are left alone).

    Grappler's graph rewriting (the meta optimizer) is turned off too: with it on, CS
    trainings still flipped one rounding now and then between processes (toy size: 2 of 10
    and 1 of 6 fresh processes; with it off, 14 of 14 identical), as its rewrite of the
    recording step's graph is not the same in every process.

    Raises:
      RuntimeError: TensorFlow already started with several inter-op threads (call this
        before building any dataset or model).
    """
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.experimental.enable_op_determinism()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    if tf.config.threading.get_inter_op_parallelism_threads() == 1:
        return
    try:
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError as e:
        raise RuntimeError(
            "make_deterministic() must run before TensorFlow is initialised (it sets one "
            "inter-op thread); TensorFlow already runs with "
            f"{tf.config.threading.get_inter_op_parallelism_threads()} (0 = one per core)."
        ) from e


def is_deterministic() -> bool:
    """Whether :func:`make_deterministic` is in force (op determinism, one inter-op thread,
    no Grappler rewriting)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return (tf.config.threading.get_inter_op_parallelism_threads() == 1
            and _op_determinism_enabled()
            and bool(tf.config.optimizer.get_experimental_options().get(
                "disable_meta_optimizer")))


def _op_determinism_enabled() -> bool:
    # pylint: disable-next=g-import-not-at-top
    from tensorflow.python.framework import config as tf_config
    return bool(tf_config.is_op_determinism_enabled())


def _onednn_setting() -> Optional[str]:
    """``TF_ENABLE_ONEDNN_OPTS`` (None: unset): oneDNN's CPU kernels round differently, so
    the same training gives other (equally reproducible) numbers with and without them."""
    return os.environ.get("TF_ENABLE_ONEDNN_OPTS")


def steady_seconds(results: dict) -> Optional[float]:
    """Training wall time without the first epoch (tracing, warm-up), or None."""
    epochs = (results.get("epoch_seconds") or [[]])[0]
    return float(sum(epochs[1:])) if len(epochs) > 1 else None


class AffinityRun(NamedTuple):
    """One affinity (TAG lookahead or CS cosine) training."""

    tasks: list[str]
    matrix: np.ndarray  # [source, target], mean over the epochs used
    seconds: float  # wall time of the training that recorded it
    path: str  # affinity JSON (holds the per-epoch trace)
    settings: dict
    results: runner.RunResult

    def record(self) -> affinity_io.AffinityRecord:
        return affinity_io.load_affinity(self.path)


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Counts the trainings a command runs and prints one line as each starts.

    ``[k/N] <mode> on {tasks}; elapsed <t>, ETA <t>``: ``N`` is the number of trainings
    this command runs. While the plan is incomplete (later trainings depend on earlier
    results, e.g. the groups an affinity selects), ``N`` is shown as a lower bound
    ``>=N`` (``?`` when nothing is planned); the ETA is the mean time of the trainings so
    far times the ones left (``>=`` likewise).
    """

    def __init__(self, log: Callable[[str], None] = print):
        self.log = log
        self.start = time.perf_counter()
        self.seconds = 0.0  # in finished trainings
        self._done: set[str] = set()
        self._planned: set[str] = set()
        self.complete = False

    @property
    def done(self) -> int:
        return len(self._done)

    def plan(self, keys: Iterable[str], *, complete: bool = True) -> None:
        """Adds trainings (cache keys of unfinished ones) this command will run;
        ``complete``: with these, every training is planned."""
        self._planned |= set(keys)
        self.complete = self.complete or complete

    def total(self) -> tuple[Optional[int], bool]:
        """(trainings this command runs or a lower bound, exact?); (None, False) unknown."""
        total = len(self._done | self._planned)
        if total <= self.done:  # nothing (more) planned
            return None, False
        return total, self.complete

    def line(self, description: str) -> str:
        """The progress line of the next training."""
        k = self.done + 1
        total, exact = self.total()
        elapsed = format_duration(time.perf_counter() - self.start)
        if total is None:
            return f"[{k}/?] {description}; elapsed {elapsed}, ETA ?"
        bound = "" if exact else ">="
        eta = "?"
        if self.done:
            eta = bound + format_duration(self.seconds / self.done * (total - self.done))
        return f"[{k}/{bound}{total}] {description}; elapsed {elapsed}, ETA {eta}"

    def started(self, description: str) -> None:
        self.log(self.line(description))

    def finished(self, key: str, seconds: float) -> None:
        self._done.add(key)
        self.seconds += seconds


class Training(NamedTuple):
    """A training the harness can run: ``Harness.train(tasks, mode, **dict(overrides))``
    (``overrides``: RunConfig settings by name)."""

    tasks: tuple[str, ...]
    mode: str = "mtl"
    overrides: tuple[tuple[str, Any], ...] = ()


class Harness:
    """Cached trainings on one adapter's experiment.

    Args:
      adapter: a :class:`tag_tf.experiments.adapter.Adapter`.
      cache_dir: the training cache directory (shared by every table).
      log: progress printer.
      progress: the :class:`Progress` counter (share one between the harnesses of one
        command); None: a new one.
    """

    def __init__(self, adapter, cache_dir: str, *, log: Callable[[str], None] = print,
                 progress: Optional[Progress] = None):
        self.adapter = adapter
        self.cache = cache_lib.Cache(cache_dir)
        self.base_config: runner.RunConfig = adapter.config()
        self.log = log
        self.progress = progress if progress is not None else Progress(log)
        experiment = adapter.experiment()
        self.tasks = list(experiment.tasks)
        self.error_name = experiment.error_name

    # ------------------------------------------------------------------ trainings
    def config(self, **overrides) -> runner.RunConfig:
        """The adapter's config with settings changed by name (``every_n=1``)."""
        return self.base_config.replace(**overrides)

    def training_settings(self, mode: str, tasks: Sequence[str],
                          config: runner.RunConfig) -> dict:
        """The cache key's settings: the adapter's, the mode, the tasks, the config's fields
        that change this mode's results, and the oneDNN setting."""
        settings = {"adapter": self.adapter.settings(), "mode": mode, "tasks": list(tasks),
                    "config": modes_lib.get(mode).result_json(config),
                    "onednn": _onednn_setting()}
        return cache_lib.to_json_value(settings)

    def _settings(self, tasks: Sequence[str], mode: str, overrides: dict
                  ) -> tuple[list[str], runner.RunConfig, dict]:
        tasks = [t for t in self.tasks if t in set(tasks)]
        config = self.config(**overrides)
        return tasks, config, self.training_settings(mode, tasks, config)

    def plan(self, trainings: Iterable[Training], *, complete: bool = True) -> int:
        """Tells :attr:`progress` which trainings this command will need (those not in the
        cache yet are counted); ``complete``: all of them. Returns how many are new."""
        keys = set()
        for t in trainings:
            _, _, settings = self._settings(t.tasks, t.mode, dict(t.overrides))
            if not self.cache.holds(settings):
                keys.add(cache_lib.settings_key(settings))
        self.progress.plan(keys, complete=complete)
        return len(keys)

    def affinity_training(self, measure: str = "lookahead", *, every_n: Optional[int] = None,
                          window: Any = None, batch: str = "train",
                          also: Sequence[str] = (), **overrides) -> Training:
        """The :class:`Training` :meth:`affinity` runs: the mode recording ``measure``
        (``also``: further measures of the same steps), ``window`` and ``batch``."""
        mode = modes_lib.mode_of_measure(measure)
        # measures[0] is the affinity mode's own; other modes record theirs and the rest.
        first = measure if mode == "affinity" else self.base_config.affinity.measures[0]
        changes = {"affinity_batch": batch, "affinity_window": window,
                   "measures": (first,) + tuple(m for m in also if m not in (measure, first)),
                   **overrides}
        if every_n is not None:
            changes["every_n"] = every_n
        return Training(tuple(self.tasks), mode, tuple(sorted(changes.items())))

    def train(self, tasks: Sequence[str], mode: str = "mtl", **overrides) -> runner.RunResult:
        """The result of ``mode`` on ``tasks`` (one network; trained or from the cache), with
        the config's settings changed by name (``overrides``).

        A training seeds everything itself (``config.training.seed``) before building its
        datasets and network, so its numbers do not depend on what ran before it; with
        :func:`make_deterministic` they are the same in any process. ``extra`` holds the
        harness's annotations (``cache_dir``, ``epoch_seconds``, ``deterministic``).
        """
        tasks, config, settings = self._settings(tasks, mode, overrides)
        key = cache_lib.settings_key(settings)
        shown = {k: v for k, v in overrides.items() if v is not None}

        def produce(directory):
            self.progress.started(f"{mode} on {{{', '.join(tasks)}}}"
                                  + (f" {shown}" if shown else ""))
            if not is_deterministic():
                self.log("    (not deterministic: call harness.make_deterministic() first; "
                         "this training's numbers may differ in another process)")
            # Same global seed state before the datasets are built, whatever ran before.
            keras.utils.set_random_seed(config.training.seed)
            base = self.adapter.experiment()
            timers = []

            def callbacks():
                timers.append(EpochTimer())
                return list(base.callbacks_fn()) + [timers[-1]]

            experiment = dataclasses.replace(base, tasks=tasks, callbacks_fn=callbacks)
            result = runner.run(mode, experiment, config, output_dir=directory)
            # Per-epoch wall times (the first epoch includes tracing), one list per network.
            result = result.replace(extra={"epoch_seconds": [t.seconds for t in timers],
                                           "deterministic": is_deterministic()})
            runner.write_results(os.path.join(directory, cache_lib.RESULTS_FILE), result)
            self.progress.finished(key, result.seconds)
            self.log(f"    done in {result.seconds:.1f} s, total test "
                     f"{result.error_name} {result.total_test_error}")
            return result.to_json()

        payload, directory = self.cache.get_or_run(settings, produce)
        result = runner.RunResult.from_json(payload)
        return result.replace(extra={**result.extra, "cache_dir": directory})

    def affinity(self, measure: str = "lookahead", *, every_n: Optional[int] = None,
                 window: Any = None, batch: str = "train", also: Sequence[str] = (),
                 **overrides) -> AffinityRun:
        """A TAG (``"lookahead"``) or CS (``"cosine"``) affinity training on all tasks.

        ``also``: further measures recorded in the same training (e.g. ``("taylor",)``: the
        first-order Eq. 1 from the same steps' gradients), read with :meth:`also_matrix`;
        ``overrides``: further config settings by name (``lookahead_scale=0.1``).
        """
        training = self.affinity_training(measure, every_n=every_n, window=window, batch=batch,
                                          also=also, **overrides)
        changes = dict(training.overrides)
        results = self.train(self.tasks, training.mode, **changes)
        entry = results.affinity
        settings = self.training_settings(training.mode, self.tasks, self.config(**changes))
        return AffinityRun(list(entry.tasks), entry.matrix, float(results.seconds),
                           entry.path, settings, results)

    @staticmethod
    def also_matrix(run: AffinityRun, measure: str) -> np.ndarray:
        """The mean matrix ([source, target]) of ``measure``, recorded in ``run``'s training
        beside its own (``affinity(..., also=(measure,))``), in ``run.tasks`` order."""
        import tag_tf.io.callbacks  # pylint: disable=g-import-not-at-top
        stem = tag_tf.io.callbacks.FILE_STEMS[measure]
        directory = os.path.dirname(run.path)  # beside the training's own affinity file
        path = os.path.join(directory, stem + ".json")
        if not os.path.exists(path):
            raise ValueError(f"The affinity training in {directory} did not record "
                             f"{measure!r} (no {stem}.json): pass also=({measure!r},).")
        record = affinity_io.load_affinity(path)
        order = [list(record.tasks).index(t) for t in run.tasks]
        return np.asarray(record.affinity, dtype=np.float64)[np.ix_(order, order)]

    # ------------------------------------------------------------------ groupings
    def select(self, matrix: np.ndarray, budgets: Sequence[int], *, minimize: bool = False,
               singletons: Any = None) -> tuple[list, float]:
        """``select_networks`` for each usable budget; returns (selections, seconds)."""
        start = time.perf_counter()
        usable = [b for b in budgets if 1 <= b <= len(self.tasks)]
        matrix = np.nan_to_num(np.asarray(matrix, dtype=np.float64))
        selections = selection_lib.select_networks(matrix, usable, tasks=self.tasks,
                                                   minimize=minimize, singletons=singletons)
        return selections, time.perf_counter() - start

    def evaluate(self, networks: Sequence[tuple[Sequence[str], Sequence[str]]],
                 mode: str = "mtl") -> dict:
        """Trains each ``(tasks, serves)`` network; each task's error from its server."""
        error, seconds, served = {}, 0.0, []
        for tasks, serves in networks:
            results = self.train(tasks, mode)
            seconds += results.seconds
            for task in serves:
                if task not in error:
                    error[task] = results.test_error[task]
            served.append({"tasks": list(tasks), "serves": list(serves),
                           "cache_dir": results.extra["cache_dir"]})
        missing = [t for t in self.tasks if t not in error]
        if missing:
            raise ValueError(f"The grouping serves no network for tasks {missing}.")
        return {"networks": served, "task_error": {t: error[t] for t in self.tasks},
                "total_error": _total(error[t] for t in self.tasks),
                "training_seconds": seconds}

    def evaluate_selection(self, chosen, mode: str = "mtl") -> dict:
        """:meth:`evaluate` of a :class:`tag_tf.selection.Selection`."""
        out = self.evaluate([(n.tasks, n.serves) for n in chosen.networks], mode)
        out["selection"] = selection_lib.selection_to_dict(chosen)
        return out

    def random_partitions(self, budget: int, samples: int, seed: int = 0) -> list:
        """RG: ``samples`` random splits of the tasks into ``min(budget, n // 2)`` groups of
        at least 2 tasks (as :func:`tag_tf.selection.random_groupings` samples them)."""
        n = len(self.tasks)
        k = rg_group_count(budget, n)
        rng = np.random.default_rng(seed)
        partitions = []
        for _ in range(samples):
            order = rng.permutation(n)
            labels = np.empty(n, dtype=np.int64)
            size = min(2, n // k)
            labels[order[:k * size]] = np.arange(k * size) % k
            labels[order[k * size:]] = rng.integers(0, k, n - k * size)
            groups = [[self.tasks[i] for i in range(n) if labels[i] == j] for j in range(k)]
            partitions.append([(g, g) for g in groups if g])
        return partitions

    def random_baseline(self, budgets: Sequence[int], samples: int, seed: int = 0) -> dict:
        """RG: ``{budget: {"total_error" (mean), "std", "samples"}}`` of trained random
        groupings (shared with Figure 3 through the cache)."""
        out = {}
        for b in budgets:
            runs = [self.evaluate(p) for p in self.random_partitions(b, samples, seed)]
            totals = [r["total_error"] for r in runs]
            ok = [t for t in totals if t is not None]
            out[b] = {"total_error": float(np.mean(ok)) if ok else None,
                      "std": float(np.std(ok)) if ok else None, "samples": runs}
        return out

    # ------------------------------------------------------------------ pairwise (HOA)
    def pairwise(self) -> dict:
        """Trains every single task and every pair. Returns the validation and test tables
        ``{task: {partner: value}}`` (``partner == task``: single-task) and the seconds."""
        validation, test, seconds = {}, {}, 0.0
        groups = [(t,) for t in self.tasks] + list(itertools.combinations(self.tasks, 2))
        for group in groups:
            results = self.train(group, "mtl")
            seconds += results.seconds
            net = results.networks[0]
            for task in group:
                partner = next((p for p in group if p != task), task)
                validation.setdefault(task, {})[partner] = _validation_error(net, task, group)
                test.setdefault(task, {})[partner] = results.test_error[task]
        return {"validation": validation, "test": test, "seconds": seconds,
                "trainings": len(groups)}


def seeded_harnesses(harness: Harness, seeds: int) -> list[Harness]:
    """``harness`` and one harness per further training seed (``adapter.replicate(k)``,
    same problem and data, other initialisation and data order), sharing the cache
    directory (the replicate's settings give its own cache keys) and the progress."""
    if int(seeds) < 1:
        raise ValueError(f"seeds must be at least 1. Received: {seeds}")
    return [harness] + [
        type(harness)(adapter_lib.replicate(harness.adapter, k), harness.cache.root,
                log=harness.log, progress=harness.progress) for k in range(1, int(seeds))]


def rg_group_count(budget: int, num_tasks: int) -> int:
    """Groups of a random grouping (RG): ``budget``, at most ``num_tasks // 2`` (each group
    has at least 2 tasks), at least 1."""
    return max(1, min(budget, num_tasks // 2))


def rg_saturation_note(num_tasks: int, budgets: Sequence[int]) -> Optional[str]:
    """One line saying which budgets' RG statistics coincide and why (None if none do)."""
    cap = rg_group_count(num_tasks, num_tasks)
    same = [b for b in budgets if b >= cap]
    if len(same) < 2:
        return None
    plural = "s" if cap != 1 else ""
    return (f"RG saturates at {cap} network{plural}: a random group has at least 2 tasks, "
            f"so {num_tasks} tasks give at most {num_tasks} // 2 = {cap} group{plural}, and "
            f"budgets "
            f"{', '.join(map(str, same))} draw the same random partitions (same seed): "
            "their RG statistics are the same numbers.")


def _validation_error(net: runner.NetworkResult, task: str, group: Sequence[str]) -> float:
    """The task's unweighted validation loss at the network's best epoch."""
    history = net.history
    key = f"val_{task}_unweighted_loss"
    if key not in history and len(group) == 1:
        key = "val_unweighted_loss"
    values = history.get(key)
    if not values:
        return net.test[task]["error"]
    value = values[net.best_epoch]
    return float("inf") if value is None else float(value)


def _total(values) -> Optional[float]:
    values = list(values)
    if any(v is None or not math.isfinite(v) for v in values):
        return None
    return float(sum(values))
