"""The recorded affinity of a run: which epochs its mean covers, its files, pooled seeds."""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

import tag_tf
from tag_tf.io import affinity_io
from tag_tf.io import heatmap
from tag_tf.io.callbacks import FILE_STEMS
from tag_tf.runner.config import RunConfig
from tag_tf.runner.results import AffinityResult, NetworkResult
from tag_tf.stats import uncertainty as uncertainty_lib


def restrict_epochs(record: affinity_io.AffinityRecord,
                    last_epoch: int) -> affinity_io.AffinityRecord:
    """The count-weighted mean over the trace's epochs ``<= last_epoch``."""
    kept = [e for e in (record.epochs or []) if e["epoch"] <= last_epoch]
    if not kept:
        return record
    total = np.zeros_like(np.asarray(record.affinity, dtype=np.float64))
    counts = np.zeros_like(total)
    for epoch in kept:
        mean = affinity_io.decode_matrix(epoch["affinity"])
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


def with_epoch_stderr(record: affinity_io.AffinityRecord) -> affinity_io.AffinityRecord:
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


def _save(path_stem: str, record: affinity_io.AffinityRecord, measure: str) -> None:
    affinity_io.save_affinity_json(path_stem + ".json", record)
    affinity_io.save_affinity_npz(path_stem + ".npz", record)
    heatmap.save_record_heatmap(path_stem + ".png", record, measure=measure)


def finish_affinity(measure: str, config: RunConfig, network: NetworkResult,
                    output_dir: Optional[str],
                    model: tag_tf.MultiTaskModel) -> AffinityResult:
    """Applies ``affinity_epochs``, (re)writes the files of ``measure``; returns the entry."""
    stem = FILE_STEMS[measure]
    path = os.path.join(output_dir, stem + ".json") if output_dir else None
    if path and os.path.exists(path):
        record = affinity_io.load_affinity(path)
    else:
        record = model.affinity_record(measure)
    # Recompute the mean from the per-epoch trace: EarlyStopping(restore_best_weights) also
    # rolls the model's affinity accumulators back to the best epoch.
    last = max((e["epoch"] for e in record.epochs or []), default=None)
    if config.selection.affinity_epochs == "until_best" and network.stopped_early:
        last = network.best_epoch
    if last is not None:
        record = with_epoch_stderr(restrict_epochs(record, last))
        if path:
            _save(os.path.join(output_dir, stem), record, measure)
    epochs_used = (record.config or {}).get("epochs_used") or \
        [int(e["epoch"]) for e in (record.epochs or [])]
    return AffinityResult(measure=measure, path=path, tasks=tuple(record.tasks),
                          matrix=np.asarray(record.affinity, dtype=np.float64),
                          epochs_used=epochs_used)


def pool_affinity(entries: Sequence[AffinityResult], seeds: Sequence[int],
                  output_dir: Optional[str]) -> AffinityResult:
    """Pools the runs' affinity records; writes ``<stem>.{json,npz,png}`` in ``output_dir``."""
    measure = entries[0].measure
    records = [affinity_io.load_affinity(e.path) if e.path else
               affinity_io.AffinityRecord(list(e.tasks), e.matrix) for e in entries]
    pooled = affinity_io.pool_records(records)
    path = None
    if output_dir:
        stem = os.path.join(output_dir, FILE_STEMS[measure])
        path = stem + ".json"
        _save(stem, pooled, measure)
    warning = None
    if np.all(np.nan_to_num(pooled.stderr) == 0):
        warning = ("The runs' matrices are identical: the seeds changed nothing (give "
                   "Experiment.for_seed so the dataset reseeds its network and data).")
    return AffinityResult(
        measure=measure, path=path, tasks=tuple(pooled.tasks),
        matrix=np.asarray(pooled.affinity, dtype=np.float64),
        stderr=np.asarray(pooled.stderr, dtype=np.float64), pooled_seeds=tuple(seeds),
        seed_paths=tuple(e.path for e in entries),
        epochs_used={str(s): e.epochs_used for s, e in zip(seeds, entries)}, warning=warning)
