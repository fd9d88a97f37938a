"""``AffinityLogger``: per-epoch affinity trace, JSON/NPZ/PNG export and TensorBoard."""

from __future__ import annotations

import json
import os
from typing import Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tag_tf.io.affinity_io import AffinityRecord, save_affinity_json, save_affinity_npz
from tag_tf.io import heatmap
from tag_tf.io import atomic

TRACE_FILE = "affinity_trace.json"
# Output file stem per measure: affinity.*, cosine_affinity.* and taylor_affinity.* (json, npz, png).
FILE_STEMS = {"lookahead": "affinity", "cosine": "cosine_affinity",
              "taylor": "taylor_affinity"}


def _epoch_mean(total: np.ndarray, counts: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, total / np.maximum(counts, 1), np.nan)


class AffinityLogger(keras.callbacks.Callback):
    """Records the mean affinity of each epoch (paper Fig. 4) and exports the results.

    Args:
      output_dir: if given, writes ``affinity.json`` (format ``tag_tf.affinity/v1``),
        ``affinity.npz`` and ``affinity.png`` when training ends (``cosine_affinity.*``
        too when the cosine measure is recorded), and the trace so
        far after every epoch (``affinity_trace.json``), which a resumed run
        (``BackupAndRestore``) reads back so no epoch is lost.
      log_dir: if given, per epoch: TensorBoard scalars ``affinity/<source>-><target>``
        (the epoch's mean) and the epoch's heatmap
        (:func:`tag_tf.io.heatmap.affinity_figure`) as an image; and the overall mean so far
        with its batch-means standard error: scalars ``affinity_overall/<pair>``,
        ``affinity_stderr/<pair>``, ``affinity_stderr/within_2se`` (the fraction of
        off-diagonal cells with ``|mean| < 2 SE``) and the image
        ``affinity_overall_heatmap`` with those cells hatched.

    The PNG heatmaps show task names, cell values, a colour bar centred at 0 (red: the
    source helps the target) and the number of recorded steps; ``affinity.png`` hatches
    the cells not distinguishable from 0 (``|mean| < 2 SE``). The JSON/NPZ files carry
    the standard errors the model keeps (:mod:`tag_tf.core.state`).

    The trace is also available as :attr:`epochs` (per measure) and through :meth:`record`.
    """

    def __init__(self, output_dir: Optional[str] = None, log_dir: Optional[str] = None):
        super().__init__()
        self.output_dir = output_dir
        self.log_dir = log_dir
        self.epochs: dict[str, list[dict]] = {}
        self._start = None
        self._start_at = None  # (epoch, step) where self._start was taken
        self._saved_start = None  # the interrupted epoch's start state, read on resume
        self._writer = None

    def on_train_begin(self, logs=None):
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            path = os.path.join(self.output_dir, TRACE_FILE)
            if os.path.exists(path) and not self.epochs:
                with open(path) as f:
                    payload = json.load(f)
                self.epochs = payload["epochs"]
                self._saved_start = payload.get("epoch_start")
        for measure in self._measures():
            self.epochs.setdefault(measure, [])
        if self.log_dir and self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)

    def _measures(self):
        return self.model.affinity_config.measures if self.model.affinity_config else ()

    def _state(self, measure):
        return [np.asarray(v.numpy()) for v in self.model.affinity_state.measure_state(measure)]

    def on_epoch_begin(self, epoch, logs=None):
        # A resumed run replays from `epoch`: drop trace entries from that epoch on.
        self.epochs = {m: [e for e in trace if e["epoch"] < epoch]
                       for m, trace in self.epochs.items()}
        self._start = {m: self._state(m) for m in self._measures()}
        # A run resumed in the middle of `epoch` (tag_tf.training.resume) has trained some of its steps
        # already: that epoch's mean starts from the state saved when the epoch began.
        step = int(self.model.affinity_state.train_step_counter.numpy())
        saved = self._saved_start
        self._saved_start = None
        if saved and saved["epoch"] == epoch and saved["step"] < step:
            self._start = {m: [np.asarray(v) for v in saved["state"][m]] for m in self._start}
            step = saved["step"]
        self._start_at = (int(epoch), int(step))
        if self.output_dir:
            self._write_json(os.path.join(self.output_dir, TRACE_FILE), {
                "tasks": list(self.model.tasks), "epochs": self.epochs,
                "epoch_start": {"epoch": int(epoch), "step": step, "state": {
                    m: [v.tolist() for v in state] for m, state in self._start.items()}}})

    def get_state(self) -> dict:
        """The trace so far and the current epoch's start state, JSON-ready.

        :class:`tag_tf.training.resume.StepBackupAndRestore` backs this up with the model
        (``resumable_fit`` finds the logger), so a run resumed from any backup, even one
        made mid-epoch or just before an epoch's end was backed up, reports the same
        per-epoch means as an uninterrupted run, whatever the trace file held.
        """
        state = {"epochs": self.epochs}
        if self._start is not None and self._start_at is not None:
            state["epoch_start"] = {
                "epoch": self._start_at[0], "step": self._start_at[1],
                "state": {m: [np.asarray(v).tolist() for v in values]
                          for m, values in self._start.items()}}
        return state

    def set_state(self, state: dict) -> None:
        """Restores :meth:`get_state` (after ``on_train_begin``, before the resumed
        epoch's ``on_epoch_begin``)."""
        self.epochs = {m: list(trace) for m, trace in state.get("epochs", {}).items()}
        for measure in self._measures():
            self.epochs.setdefault(measure, [])
        self._saved_start = state.get("epoch_start")

    def on_epoch_end(self, epoch, logs=None):
        for measure in self._measures():
            self._end_epoch(measure, epoch)
        if self._writer is not None:
            self._writer.flush()
        if self.output_dir:
            self._write_json(os.path.join(self.output_dir, TRACE_FILE),
                             {"tasks": list(self.model.tasks), "epochs": self.epochs})

    def _end_epoch(self, measure, epoch):
        total, counts, skipped = (now - before for now, before in
                                  zip(self._state(measure), self._start[measure]))
        mean = _epoch_mean(total, counts)
        self.epochs[measure].append({"epoch": int(epoch), "affinity": mean.tolist(),
                                     "counts": counts.tolist(), "skipped": skipped.tolist()})
        tasks = self.model.tasks
        if np.any(skipped):
            pairs = [(tasks[i], tasks[j], int(skipped[i, j])) for i, j in zip(*np.nonzero(skipped))]
            logging.warning("Epoch %d: skipped %d %s entries with a zero or non-finite "
                            "loss, (source, target, count): %s", epoch, int(skipped.sum()), measure,
                            pairs[:10])
        if self._writer is not None:
            stem = FILE_STEMS[measure]
            with self._writer.as_default(step=epoch):
                for i, source in enumerate(tasks):
                    for j, target in enumerate(tasks):
                        if np.isfinite(mean[i, j]):
                            tf.summary.scalar(f"{stem}/{source}->{target}", mean[i, j])
                figure = heatmap.affinity_figure(
                    mean, tasks, measure=measure, recorded_steps=int(np.max(counts, initial=0)),
                    title=f"epoch {epoch + 1}")
                image = heatmap.figure_to_rgb(figure, dpi=heatmap.TENSORBOARD_DPI)
                tf.summary.image(f"{stem}_heatmap", image[None])
                self._log_overall(measure, stem)

    def _log_overall(self, measure, stem):
        """TensorBoard: the overall mean so far, its standard error and hatched heatmap."""
        record = self.model.affinity_record(measure)
        tasks, mean, stderr = record.tasks, record.affinity, record.stderr
        for i, source in enumerate(tasks):
            for j, target in enumerate(tasks):
                if np.isfinite(mean[i, j]):
                    tf.summary.scalar(f"{stem}_overall/{source}->{target}", mean[i, j])
                if stderr is not None and np.isfinite(stderr[i, j]):
                    tf.summary.scalar(f"{stem}_stderr/{source}->{target}", stderr[i, j])
        if stderr is not None:
            off = ~np.eye(len(tasks), dtype=bool) & np.isfinite(mean) & np.isfinite(stderr)
            if off.any():
                weak = np.abs(mean[off]) < 2 * stderr[off]
                tf.summary.scalar(f"{stem}_stderr/within_2se", float(weak.mean()))
        figure = heatmap.record_figure(record, measure=measure, title="overall mean so far")
        image = heatmap.figure_to_rgb(figure, dpi=heatmap.TENSORBOARD_DPI)
        tf.summary.image(f"{stem}_overall_heatmap", image[None])

    def record(self, measure: str = "lookahead") -> AffinityRecord:
        """The model's overall mean for ``measure`` with this logger's per-epoch trace.

        The standard errors are the model's; when no cell has one yet (fewer than 2 blocks)
        they are left out (None), as in files written before they existed, so no reader
        (e.g. the selection bootstrap) takes an all-unknown matrix for exact values.
        """
        record = self.model.affinity_record(measure)._replace(
            epochs=list(self.epochs.get(measure, [])))
        if record.stderr is not None and not np.isfinite(record.stderr).any():
            record = record._replace(stderr=None, stderr_blocks=None, stderr_method=None)
        return record

    def on_train_end(self, logs=None):
        if not self.output_dir:
            return
        for measure in self._measures():
            record = self.record(measure)
            stem = os.path.join(self.output_dir, FILE_STEMS[measure])
            save_affinity_json(stem + ".json", record)
            save_affinity_npz(stem + ".npz", record)
            heatmap.save_record_heatmap(stem + ".png", record, measure=measure)

    @staticmethod
    def _write_json(path, payload):
        atomic.atomic_write_json(path, payload, allow_nan=True)
