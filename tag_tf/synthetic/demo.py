"""TAG end to end on the planted-cluster synthetic tasks (the library side of ``tag_tf.demo``).

Trains a shared-trunk network on :mod:`tag_tf.synthetic` tasks, records the lookahead
inter-task affinity every n steps, prints the averaged matrix, writes ``affinity.json`` /
``.npz`` / ``.png`` and ``selection.json`` (the networks chosen for each budget).

It also checks its own claim: that every task trained (final training MSE at most
:data:`LOSS_RATIO_THRESHOLD` times the task's trivial loss, the MSE of predicting the
target mean, i.e. its variance) and that the selection for b = number of clusters is
exactly the planted clusters; both verdicts are printed and returned.
"""

from __future__ import annotations

import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from tag_tf import selection, synthetic
from tag_tf.io.callbacks import AffinityLogger
from tag_tf.core.config import AffinityConfig
from tag_tf.io import heatmap
from tag_tf.io.heatmap import format_matrix
from tag_tf.core.model import MultiTaskModel

BOOTSTRAP = 200  # resamples of the selection's robustness check
# A task "trained" if its final training MSE is at most this fraction of its trivial loss.
LOSS_RATIO_THRESHOLD = 0.5
TRAIN_EXAMPLES = 8192
# The default run (``python -m tag_tf.demo`` flags; the slow tests run exactly this).
DEFAULTS = dict(num_tasks=9, num_clusters=3, steps=2000, steps_per_epoch=200, batch_size=64,
                learning_rate=0.05, every_n=10, rule="sgd", seed=0, budgets=[2, 3, 4],
                bottleneck=4, activation="tanh")


def run_demo(*, num_tasks: int, num_clusters: int, steps: int, steps_per_epoch: int,
             batch_size: int, learning_rate: float, every_n: int, rule: str, seed: int,
             budgets: list[int], output_dir: str, hidden: int = 32, bottleneck: int = 4,
             head_hidden: int = 8, activation: str = "tanh") -> dict:
    """Trains with TAG on planted clusters; returns the record, selections and verdicts.

    The returned dict holds ``record``, ``selections``, ``seconds``, ``cluster_of``,
    ``losses`` / ``trivial_losses`` / ``loss_ratios`` (per task), ``all_trained`` and
    ``recovered`` (whether the b = ``num_clusters`` selection is the planted clusters).
    """
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    problem = synthetic.planted_tasks(num_tasks, num_clusters, seed=seed)
    network = synthetic.planted_network(problem.tasks, problem.input_dim, hidden=hidden,
                                        bottleneck=bottleneck, head_hidden=head_hidden,
                                        activation=activation, seed=seed)
    model = MultiTaskModel(network, shared=list(synthetic.SHARED_LAYERS),
                           affinity=AffinityConfig(every_n=every_n, rule=rule))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9), loss="mse")
    train = problem.dataset(TRAIN_EXAMPLES, batch_size=batch_size, seed=seed + 1).repeat()
    epochs = max(1, steps // steps_per_epoch)
    logger = AffinityLogger(output_dir=output_dir)
    start = time.time()
    # shuffle=False: ``train`` shuffles itself (fit's shuffle is for arrays; Keras warns
    # that it ignores shuffle=True for a tf.data.Dataset).
    history = model.fit(train, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=2,
                        callbacks=[logger], shuffle=False)
    seconds = time.time() - start
    record = logger.record()

    print(f"\nTrained {epochs * steps_per_epoch} steps in {seconds:.1f} s "
          f"(final loss {history.history['loss'][-1]:.3f}); affinity recorded on "
          f"{record.config['recorded_steps']} steps.")
    print(f"Planted clusters: {_groups_text(problem.tasks, problem.cluster_of)}")
    print("\nMean inter-task affinity Z[source -> target] (paper Eq. 1):")
    print(format_matrix(record.affinity, record.tasks))
    same = np.equal.outer(problem.cluster_of, problem.cluster_of)
    off = ~np.eye(num_tasks, dtype=bool)
    within, across = np.nanmean(record.affinity[same & off]), np.nanmean(record.affinity[~same])
    print(f"\nMean off-diagonal affinity within clusters: {within:.4f}; "
          f"across clusters: {across:.4f}")
    selections = _select(record, budgets, output_dir, marked_budget=num_clusters)

    x, y = problem.sample(TRAIN_EXAMPLES, seed + 1)  # the training set, as drawn above
    losses, trivial = task_losses(network, x, y)
    ratios = {task: losses[task] / trivial[task] for task in problem.tasks}
    print("\n" + format_task_losses(losses, trivial))
    check = next((s for s in selections if s.budget == num_clusters), None)
    if check is None:
        check = selection.select_networks(record.affinity, [num_clusters],
                                          tasks=record.tasks)[0]
    recovered = recovers_clusters(check, problem.tasks, problem.cluster_of)
    print(verdict_text(check, problem.tasks, problem.cluster_of, ratios))
    print(f"\nWrote {os.path.join(output_dir, 'affinity.json')} (+ .npz, .png, selection.json).")
    all_trained = all(r <= LOSS_RATIO_THRESHOLD for r in ratios.values())  # False for NaN
    return {"record": record, "selections": selections, "seconds": seconds,
            "cluster_of": problem.cluster_of, "losses": losses, "trivial_losses": trivial,
            "loss_ratios": ratios, "all_trained": all_trained, "recovered": recovered}


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


def _select(record, budgets, output_dir, marked_budget=None):
    """Chooses networks for each budget from the mean affinity; prints and writes them.

    ``affinity.png`` is redrawn with the networks of ``marked_budget`` (the number of
    planted clusters; else the first budget) outlined.
    """
    budgets = [b for b in budgets if 1 <= b <= len(record.tasks)]
    if not budgets:
        return []
    # Robustness: a block bootstrap over the epochs (one block each) when there are 2+.
    uncertainty = (selection.Uncertainty.from_record(record, n_resamples=BOOTSTRAP, seed=0)
                   if len(record.epochs or []) >= 2 else None)
    selections = selection.select_networks(record.affinity, budgets, tasks=record.tasks,
                                           uncertainty=uncertainty)
    print("\nTask groupings chosen from the affinities (paper Sec. 3.2):")
    print(selection.format_selections(selections))
    for s in selections:
        if s.robustness is not None and s.budget == marked_budget:
            print(f"\nIs b = {s.budget} robust? {s.robustness.verdict}: chosen in "
                  f"{s.robustness.stability:.0%} of {s.robustness.resamples} resamples "
                  f"({s.robustness.source}), margin {s.robustness.margin:.1f} SE. "
                  f"{s.robustness.advice}")
    with open(os.path.join(output_dir, "selection.json"), "w") as f:
        json.dump({"tasks": record.tasks,
                   "selections": [selection.selection_to_dict(s) for s in selections]}, f,
                  indent=1)
    marked = next((s for s in selections if s.budget == marked_budget), selections[0])
    heatmap.save_record_heatmap(os.path.join(output_dir, "affinity.png"), record,
                                selection=marked)
    return selections
