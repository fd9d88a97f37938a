"""``AffinityLogger``: per-epoch affinity trace, JSON/NPZ/PNG export and TensorBoard."""

from __future__ import annotations

import json
import os
from typing import Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tag_tf.affinity_io import AffinityRecord, save_affinity_json, save_affinity_npz
from tag_tf.heatmap import heatmap_image, write_heatmap_png

TRACE_FILE = "affinity_trace.json"
AFFINITY_JSON = "affinity.json"
AFFINITY_NPZ = "affinity.npz"
HEATMAP_PNG = "affinity.png"


def _epoch_mean(total: np.ndarray, counts: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, total / np.maximum(counts, 1), np.nan)


class AffinityLogger(keras.callbacks.Callback):
    """Records the mean affinity of each epoch (paper Fig. 4) and exports the results.

    Args:
      output_dir: if given, writes ``affinity.json`` (format ``tag_tf.affinity/v1``),
        ``affinity.npz`` and ``affinity.png`` when training ends, and the trace so
        far after every epoch (``affinity_trace.json``), which a resumed run
        (``BackupAndRestore``) reads back so no epoch is lost.
      log_dir: if given, TensorBoard scalars ``affinity/<source>-><target>`` and a
        heatmap image per epoch.

    The trace is also available as :attr:`epochs` and through :meth:`record`.
    """

    def __init__(self, output_dir: Optional[str] = None, log_dir: Optional[str] = None):
        super().__init__()
        self.output_dir = output_dir
        self.log_dir = log_dir
        self.epochs: list[dict] = []
        self._start = None
        self._writer = None

    def on_train_begin(self, logs=None):
        if self.output_dir:
            os.makedirs(self.output_dir, exist_ok=True)
            path = os.path.join(self.output_dir, TRACE_FILE)
            if os.path.exists(path) and not self.epochs:
                with open(path) as f:
                    self.epochs = json.load(f)["epochs"]
        if self.log_dir and self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)

    def _state(self):
        model = self.model
        return (np.asarray(model.affinity_sum.numpy()), np.asarray(model.affinity_count.numpy()),
                np.asarray(model.affinity_skipped.numpy()))

    def on_epoch_begin(self, epoch, logs=None):
        # A resumed run replays from `epoch`: drop trace entries from that epoch on.
        self.epochs = [e for e in self.epochs if e["epoch"] < epoch]
        self._start = self._state()

    def on_epoch_end(self, epoch, logs=None):
        total, counts, skipped = (now - before for now, before in zip(self._state(), self._start))
        mean = _epoch_mean(total, counts)
        self.epochs.append({"epoch": int(epoch), "affinity": mean.tolist(),
                            "counts": counts.tolist(), "skipped": skipped.tolist()})
        tasks = self.model.tasks
        if skipped.any():
            pairs = [(tasks[i], tasks[j], int(skipped[i, j])) for i, j in zip(*np.nonzero(skipped))]
            logging.warning("Epoch %d: skipped %d affinity entries with a zero or non-finite "
                            "loss, (source, target, count): %s", epoch, int(skipped.sum()),
                            pairs[:10])
        if self._writer is not None:
            with self._writer.as_default(step=epoch):
                for i, source in enumerate(tasks):
                    for j, target in enumerate(tasks):
                        if np.isfinite(mean[i, j]):
                            tf.summary.scalar(f"affinity/{source}->{target}", mean[i, j])
                tf.summary.image("affinity_heatmap", heatmap_image(mean)[None])
            self._writer.flush()
        if self.output_dir:
            self._write_json(os.path.join(self.output_dir, TRACE_FILE),
                             {"tasks": list(tasks), "epochs": self.epochs})

    def record(self) -> AffinityRecord:
        """The model's overall mean affinity with this logger's per-epoch trace."""
        return self.model.affinity_record()._replace(epochs=list(self.epochs))

    def on_train_end(self, logs=None):
        if not self.output_dir:
            return
        record = self.record()
        save_affinity_json(os.path.join(self.output_dir, AFFINITY_JSON), record)
        save_affinity_npz(os.path.join(self.output_dir, AFFINITY_NPZ), record)
        write_heatmap_png(os.path.join(self.output_dir, HEATMAP_PNG), record.affinity)

    @staticmethod
    def _write_json(path, payload):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(payload, f, allow_nan=True)
        os.replace(tmp, path)
