"""TAG end to end on the planted-cluster synthetic tasks (the library side of ``tag_tf.demo``).

Trains a shared-trunk network on :mod:`tag_tf.synthetic` tasks, records the lookahead
inter-task affinity every n steps, prints the averaged matrix, writes ``affinity.json`` /
``.npz`` / ``.png`` and ``selection.json`` (the networks chosen for each budget).

It also checks its own claim: that every task trained (final training MSE at most
:data:`LOSS_RATIO_THRESHOLD` times the task's trivial loss, the MSE of predicting the
target mean, i.e. its variance) and that the selection for b = number of clusters is
exactly the planted clusters; both verdicts are printed and returned.

What one run can say: the selection's bootstrap over its epochs shows whether the grouping
is *stable within this run* (its batch noise), not whether a re-run with another seed would
pick it. :func:`run_demo_seeds` (``python -m tag_tf.demo --seeds=K``) trains K seeds on the
same problem, pools them and can call a grouping *robust* across seeds
(:mod:`tag_tf.selection.robustness`).
"""

from __future__ import annotations

import os
import time

import keras
import numpy as np
import tensorflow as tf

from tag_tf import selection, synthetic
from tag_tf.io import affinity_io
from tag_tf.io.callbacks import AffinityLogger
from tag_tf.core.config import AffinityConfig
from tag_tf.io import heatmap
from tag_tf.io import atomic
from tag_tf.io.heatmap import format_matrix
from tag_tf.selection import api as selection_api
from tag_tf.selection import robustness as selection_robustness
from tag_tf.core.model import MultiTaskModel

BOOTSTRAP = 200  # resamples of the selection's robustness check
# A task "trained" if its final training MSE is at most this fraction of its trivial loss.
LOSS_RATIO_THRESHOLD = 0.5
TRAIN_EXAMPLES = 8192
# The default run (``python -m tag_tf.demo`` flags; the slow tests run exactly this).
DEFAULTS = dict(num_tasks=9, num_clusters=3, steps=2000, steps_per_epoch=200, batch_size=64,
                learning_rate=0.05, every_n=10, rule="sgd", seed=0, budgets=[2, 3, 4],
                bottleneck=4, activation="tanh")
# Seeds the quick start suggests for the check across seeds (``--seeds``).
SUGGESTED_SEEDS = 5
# The one line a newcomer reads after a single run's verdict.
ONE_RUN_NOTE = ("One run shows only its own batch noise, not what a re-run with another seed "
                "would pick; to check across seeds: python -m tag_tf.demo "
                f"--seeds={SUGGESTED_SEEDS}")


def run_demo(*, num_tasks: int, num_clusters: int, steps: int, steps_per_epoch: int,
             batch_size: int, learning_rate: float, every_n: int, rule: str, seed: int,
             budgets: list[int], output_dir: str, hidden: int = 32, bottleneck: int = 4,
             head_hidden: int = 8, activation: str = "tanh", data_seed: int | None = None,
             report: bool = True) -> dict:
    """Trains with TAG on planted clusters; returns the record, selections and verdicts.

    Args:
      seed: seed of the initialisation and the data order (and of the data itself unless
        ``data_seed`` is given).
      data_seed: seed of the planted problem and its training examples (default ``seed``).
        Re-runs of one problem keep ``data_seed`` and change ``seed``
        (:func:`run_demo_seeds`).
      report: print the training log, the matrix, the selection tables and the verdicts
        (``False``: write the files and return, printing nothing of its own).
      The others: the model, training and selection settings (:data:`DEFAULTS`).

    The returned dict holds ``record``, ``selections``, ``seconds``, ``cluster_of``,
    ``losses`` / ``trivial_losses`` / ``loss_ratios`` (per task), ``all_trained`` and
    ``recovered`` (whether the b = ``num_clusters`` selection is the planted clusters).
    """
    data_seed = seed if data_seed is None else int(data_seed)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    problem = synthetic.planted_tasks(num_tasks, num_clusters, seed=data_seed)
    network = synthetic.planted_network(problem.tasks, problem.input_dim, hidden=hidden,
                                        bottleneck=bottleneck, head_hidden=head_hidden,
                                        activation=activation, seed=seed)
    model = MultiTaskModel(network, shared=list(synthetic.SHARED_LAYERS),
                           affinity=AffinityConfig(every_n=every_n, rule=rule))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9), loss="mse")
    train = problem.dataset(TRAIN_EXAMPLES, batch_size=batch_size, seed=data_seed + 1,
                            shuffle_seed=seed + 1).repeat()
    epochs = max(1, steps // steps_per_epoch)
    logger = AffinityLogger(output_dir=output_dir)
    start = time.time()
    # shuffle=False: ``train`` shuffles itself (fit's shuffle is for arrays; Keras warns
    # that it ignores shuffle=True for a tf.data.Dataset).
    history = model.fit(train, epochs=epochs, steps_per_epoch=steps_per_epoch,
                        verbose=2 if report else 0, callbacks=[logger], shuffle=False)
    seconds = time.time() - start
    record = logger.record()
    say = print if report else _silent

    say(f"\nTrained {epochs * steps_per_epoch} steps in {seconds:.1f} s "
        f"(final loss {history.history['loss'][-1]:.3f}); affinity recorded on "
        f"{record.config['recorded_steps']} steps.")
    say(f"Planted clusters: {_groups_text(problem.tasks, problem.cluster_of)}")
    say("\nMean inter-task affinity Z[source -> target] (paper Eq. 1):")
    say(format_matrix(record.affinity, record.tasks))
    same = np.equal.outer(problem.cluster_of, problem.cluster_of)
    off = ~np.eye(num_tasks, dtype=bool)
    within, across = np.nanmean(record.affinity[same & off]), np.nanmean(record.affinity[~same])
    say(f"\nMean off-diagonal affinity within clusters: {within:.4f}; "
        f"across clusters: {across:.4f}")
    selections = _select(record, budgets, output_dir, marked_budget=num_clusters,
                         report=report)

    x, y = problem.sample(TRAIN_EXAMPLES, data_seed + 1)  # the training set, as drawn above
    losses, trivial = task_losses(network, x, y)
    ratios = {task: losses[task] / trivial[task] for task in problem.tasks}
    say("\n" + format_task_losses(losses, trivial))
    check = next((s for s in selections if s.budget == num_clusters), None)
    if check is None:
        check = selection.select_networks(record.affinity, [num_clusters],
                                          tasks=record.tasks)[0]
    recovered = recovers_clusters(check, problem.tasks, problem.cluster_of)
    say(verdict_text(check, problem.tasks, problem.cluster_of, ratios))
    say(f"\nWrote {os.path.join(output_dir, 'affinity.json')} (+ .npz, .png, selection.json).")
    all_trained = all(r <= LOSS_RATIO_THRESHOLD for r in ratios.values())  # False for NaN
    return {"record": record, "selections": selections, "seconds": seconds,
            "cluster_of": problem.cluster_of, "losses": losses, "trivial_losses": trivial,
            "loss_ratios": ratios, "all_trained": all_trained, "recovered": recovered}


def run_demo_seeds(*, seeds: int, seed: int, output_dir: str, report: bool = True,
                   **kwargs) -> dict:
    """Trains the demo ``seeds`` times on one problem, pools the runs and selects from them.

    Run ``k`` uses training seed ``seed + k`` (initialisation and data order) on the
    problem and examples of ``seed`` (``data_seed``), and writes ``output_dir/seed_<s>/``
    (its own one-run ``selection.json``). The pooled matrix
    (:func:`tag_tf.io.affinity_io.pool_records`: mean over runs, each run's epochs kept for
    the two-stage bootstrap) goes to ``output_dir/affinity.{json,npz,png}`` and its
    selection, whose verdicts can say ``robust`` across seeds, to
    ``output_dir/selection.json``.

    Args:
      seeds: number of trainings K (>= 2).
      seed: the first training seed and the problem's seed.
      output_dir: where to write.
      report: print per-run lines, the pooled matrix, selections and verdicts.
      **kwargs: :func:`run_demo`'s other arguments (:data:`DEFAULTS`).

    Returns:
      ``runs`` (each :func:`run_demo` result), ``record`` (pooled), ``selections``,
      ``recovered``, ``all_trained`` (in every run), ``loss_ratios`` (worst over runs)
      and ``seconds``.
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 2:
        raise ValueError(f"Pooling needs at least 2 seeds. Received: seeds={seeds!r}")
    say = print if report else _silent
    num_clusters = kwargs["num_clusters"]
    budgets = kwargs.pop("budgets")
    start = time.time()
    runs = []
    say(f"Training {seeds} seeds ({seed}..{seed + seeds - 1}) on one problem (data seed "
        f"{seed}); each run's files go to {output_dir}/seed_<s>/.")
    for k in range(seeds):
        result = run_demo(**kwargs, budgets=budgets, seed=seed + k, data_seed=seed,
                          output_dir=os.path.join(output_dir, f"seed_{seed + k}"),
                          report=False)
        runs.append(result)
        marked = next((c for c in result["selections"] if c.budget == num_clusters
                       and c.robustness is not None), None)
        within = f"; b = {num_clusters} {marked.robustness.verdict}" if marked else ""
        say(f"  seed {seed + k}: trained in {result['seconds']:.0f} s, worst task loss ratio "
            f"{max(result['loss_ratios'].values()):.3f}{within}")
    record = affinity_io.pool_records([r["record"] for r in runs])
    affinity_io.save_affinity_json(os.path.join(output_dir, "affinity.json"), record)
    affinity_io.save_affinity_npz(os.path.join(output_dir, "affinity.npz"), record)
    tasks = record.tasks
    say(f"\nMean inter-task affinity Z[source -> target] over {seeds} seeds "
        "(paper Eq. 1):")
    say(format_matrix(record.affinity, tasks))
    selections = _select(record, budgets, output_dir, marked_budget=num_clusters,
                         report=report)
    cluster_of = runs[0]["cluster_of"]
    ratios = {t: max(r["loss_ratios"][t] for r in runs) for t in tasks}
    check = next((c for c in selections if c.budget == num_clusters), None)
    if check is None:
        check = selection.select_networks(record.affinity, [num_clusters], tasks=tasks)[0]
    recovered = recovers_clusters(check, tasks, cluster_of)
    say("\n" + verdict_text(check, tasks, cluster_of, ratios))
    say(f"\nWrote {os.path.join(output_dir, 'affinity.json')} (+ .npz, .png, selection.json; "
        f"pooled over {seeds} seeds).")
    return {"runs": runs, "record": record, "selections": selections, "recovered": recovered,
            "all_trained": all(r["all_trained"] for r in runs), "loss_ratios": ratios,
            "cluster_of": cluster_of, "seconds": time.time() - start}


def task_losses(network: keras.Model, x: np.ndarray, y: dict[str, np.ndarray],
                ) -> tuple[dict[str, float], dict[str, float]]:
    """Each task's MSE on ``(x, y)`` and its trivial loss (MSE of predicting the mean)."""
    predictions = network.predict(x, batch_size=1024, verbose=0)
    losses = {task: float(np.mean((np.asarray(predictions[task]) - target) ** 2))
              for task, target in y.items()}
    trivial = {task: float(np.var(target)) for task, target in y.items()}
    return losses, trivial


def format_task_losses(losses: dict[str, float], trivial: dict[str, float]) -> str:
    """A table of final training MSE vs trivial (mean-predictor) MSE per task."""
    lines = [f"Final training loss per task vs its trivial loss (MSE of predicting the mean); "
             f"a task trained if the ratio is <= {LOSS_RATIO_THRESHOLD}:",
             "  task       final MSE  trivial MSE  ratio"]
    for task in losses:
        ratio = losses[task] / trivial[task]
        flag = "" if ratio <= LOSS_RATIO_THRESHOLD else "  <- did NOT train"
        lines.append(f"  {task:<9} {losses[task]:10.4f} {trivial[task]:12.4f} {ratio:6.3f}{flag}")
    return "\n".join(lines)


def planted_groups(tasks: list[str], cluster_of: list[int]) -> list[tuple[str, ...]]:
    """The planted clusters as task tuples, in order of first appearance."""
    groups: dict[int, list[str]] = {}
    for task, cluster in zip(tasks, cluster_of):
        groups.setdefault(cluster, []).append(task)
    return [tuple(g) for g in groups.values()]


def recovers_clusters(chosen: selection.Selection, tasks: list[str],
                      cluster_of: list[int]) -> bool:
    """Whether the chosen networks are exactly the planted clusters (no more, no overlap)."""
    networks = sorted(tuple(sorted(net.tasks)) for net in chosen.networks)
    return networks == sorted(tuple(sorted(g)) for g in planted_groups(tasks, cluster_of))


def verdict_text(chosen: selection.Selection, tasks: list[str], cluster_of: list[int],
                 loss_ratios: dict[str, float]) -> str:
    """The demo's conclusion: did every task train, and did b = clusters recover them?"""
    untrained = [t for t in tasks if not loss_ratios[t] <= LOSS_RATIO_THRESHOLD]
    worst = max(loss_ratios, key=lambda t: loss_ratios[t])
    if untrained:
        lines = [f"NOT every task trained: {', '.join(untrained)} ended above "
                 f"{LOSS_RATIO_THRESHOLD} x their trivial loss (worst {worst}: "
                 f"{loss_ratios[worst]:.3f})."]
    else:
        lines = [f"Every task trained: final loss <= {LOSS_RATIO_THRESHOLD} x trivial loss "
                 f"(worst {worst}: {loss_ratios[worst]:.3f})."]
    planted = _groups_text(tasks, cluster_of)
    chosen_text = " ".join("{" + ", ".join(net.tasks) + "}" for net in chosen.networks)
    if recovers_clusters(chosen, tasks, cluster_of):
        lines.append(f"b = {chosen.budget} recovers the planted clusters: {planted}")
    else:
        lines.append(f"b = {chosen.budget} did NOT recover the planted clusters {planted}; "
                     f"it chose {chosen_text}")
    return "\n".join(lines)


def _groups_text(tasks, cluster_of):
    return " | ".join("{" + ", ".join(g) + "}" for g in planted_groups(tasks, cluster_of))


def robustness_line(chosen: selection.Selection) -> str:
    """The demo's verdict on ``chosen``, naming its evidence (one run, or K seeds)."""
    r = chosen.robustness
    head = (f"b = {chosen.budget} across {r.runs} seeds: {r.verdict}" if r.runs >= 2
            else f"b = {chosen.budget} from one run: {r.verdict}")
    if r.alternative is None:
        text = f"{head} (only one selection is feasible)."
    else:
        text = (f"{head} - chosen in {r.stability:.0%} of {r.resamples} resamples "
                f"({r.source}), margin {r.margin:.1f} SE (needs {r.required_margin:.3g}).")
    if r.runs >= 2:
        advice = r.advice.replace(selection_robustness.SEED_ADVICE, "").strip()
        return f"{text}\n{advice}" if advice else text
    return f"{text}\n{ONE_RUN_NOTE}"


def _silent(*args, **kwargs) -> None:
    del args, kwargs


def _select(record, budgets, output_dir, marked_budget=None, report=True):
    """Chooses networks for each budget from the mean affinity; prints and writes them.

    ``affinity.png`` is redrawn with the networks of ``marked_budget`` (the number of
    planted clusters; else the first budget) outlined. ``report=False`` prints nothing.
    """
    say = print if report else _silent
    budgets = [b for b in budgets if 1 <= b <= len(record.tasks)]
    if not budgets:
        return []
    # Robustness: one run: a block bootstrap over its epochs (one block each) when there
    # are 2+; pooled runs: runs, then epochs within each run (two-stage).
    uncertainty = (selection.Uncertainty.from_record(record, n_resamples=BOOTSTRAP, seed=0)
                   if len(record.epochs or []) >= 2 or record.runs >= 2 else None)
    selections = selection.select_networks(record.affinity, budgets, tasks=record.tasks,
                                           uncertainty=uncertainty)
    say("\nTask groupings chosen from the affinities (paper Sec. 3.2):")
    say(selection.format_selections(selections))
    for s in selections:
        if s.robustness is not None and s.budget == marked_budget:
            say("\n" + robustness_line(s))
    payload = {"tasks": record.tasks, "runs": record.runs,
               "uncertainty": (None if uncertainty is None
                               else selection_api.uncertainty_entry(uncertainty)),
               "selections": [selection.selection_to_dict(s) for s in selections]}
    atomic.atomic_write_json(os.path.join(output_dir, "selection.json"), payload, indent=1,
                             allow_nan=False)
    marked = next((s for s in selections if s.budget == marked_budget), selections[0])
    heatmap.save_record_heatmap(os.path.join(output_dir, "affinity.png"), record,
                                selection=marked)
    return selections
