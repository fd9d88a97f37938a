"""TAG end to end on the planted-cluster synthetic tasks (the library side of ``tag_tf.demo``).

Trains a shared-trunk network on :mod:`tag_tf.synthetic` tasks, records the lookahead
inter-task affinity every n steps, prints the averaged matrix, writes ``affinity.json`` /
``.npz`` / ``.png`` and ``selection.json`` (the networks chosen for each budget).
"""

from __future__ import annotations

import json
import os
import time

import keras
import numpy as np
import tensorflow as tf

from tag_tf import selection, synthetic
from tag_tf.callbacks import AffinityLogger
from tag_tf.config import AffinityConfig
from tag_tf import heatmap
from tag_tf.heatmap import format_matrix
from tag_tf.model import MultiTaskModel

BOOTSTRAP = 200  # resamples of the selection's robustness check


def run_demo(*, num_tasks: int, num_clusters: int, steps: int, steps_per_epoch: int,
             batch_size: int, learning_rate: float, every_n: int, rule: str, seed: int,
             budgets: list[int], output_dir: str) -> dict:
    """Trains with TAG on planted clusters; returns the affinity record and selections."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    problem = synthetic.planted_tasks(num_tasks, num_clusters, seed=seed)
    network = synthetic.planted_network(problem.tasks, problem.input_dim, seed=seed)
    model = MultiTaskModel(network, shared=list(synthetic.SHARED_LAYERS),
                           affinity=AffinityConfig(every_n=every_n, rule=rule))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9), loss="mse")
    train = problem.dataset(8192, batch_size=batch_size, seed=seed + 1).repeat()
    epochs = max(1, steps // steps_per_epoch)
    logger = AffinityLogger(output_dir=output_dir)
    start = time.time()
    history = model.fit(train, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=2,
                        callbacks=[logger])
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
    print(f"\nWrote {os.path.join(output_dir, 'affinity.json')} (+ .npz, .png, selection.json).")
    return {"record": record, "selections": selections, "seconds": seconds,
            "cluster_of": problem.cluster_of}


def _groups_text(tasks, cluster_of):
    groups = {}
    for task, cluster in zip(tasks, cluster_of):
        groups.setdefault(cluster, []).append(task)
    return " | ".join("{" + ", ".join(g) + "}" for g in groups.values())


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
