"""Reading and writing inter-task affinity matrices (JSON and NPZ).

Orientation convention, used everywhere in tag_tf:
  ``affinity[source, target]`` is the effect on task ``target``'s loss of a
  lookahead step on the shared parameters taken with task ``source``'s gradient
  (paper Eq. 1: Z[source -> target]). Rows are sources, columns are targets,
  tasks are indexed by their position in the ``tasks`` list.

The JSON written by :func:`save_affinity_json` (format ``tag_tf.affinity/v1``)::

  {
    "format": "tag_tf.affinity/v1",
    "orientation": "affinity[source][target] ...",
    "tasks": ["a", "b", ...],
    "affinity": [[...], ...],        # overall mean, n x n (NaN written as null)
    "counts": [[...], ...],          # recorded (finite) entries per pair
    "skipped": [[...], ...],         # entries skipped as zero / non-finite
    "epochs": [{"epoch": 0, "affinity": [[...]], "counts": [[...]],
                "skipped": [[...]]}, ...],
    "config": {...}                  # settings that produced the matrix
  }

:func:`load_affinity` reads that format and also a plain
``{"tasks": [...], "matrix": [[...]]}`` JSON (assumed [source][target] unless
``"orientation": "target_source"`` is given) or an ``.npy`` / ``.npz`` file.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

FORMAT = "tag_tf.affinity/v1"
ORIENTATION = (
    "affinity[source][target]: 1 - L_target(x, theta_s - lr * g_source, theta_target)"
    " / L_target(x, theta_s, theta_target), averaged over recorded steps"
    " (paper Eq. 1, Z[source -> target]); rows are sources, columns targets."
)


class AffinityRecord(NamedTuple):
    """An affinity matrix with its task names and optional bookkeeping."""

    tasks: list[str]
    affinity: np.ndarray  # [source, target]
    counts: np.ndarray | None = None
    skipped: np.ndarray | None = None
    epochs: list[dict[str, Any]] | None = None
    config: dict[str, Any] | None = None


def validate_tasks(tasks: Sequence[str]) -> list[str]:
    """Returns ``tasks`` as a list, raising on empty, non-string or duplicate names."""
    tasks = list(tasks)
    if not tasks:
        raise ValueError("The task list is empty.")
    for name in tasks:
        if not isinstance(name, str) or not name:
            raise ValueError(f"Task names must be non-empty strings. Received: {name!r}")
    seen = set()
    duplicates = sorted({t for t in tasks if t in seen or seen.add(t)})
    if duplicates:
        raise ValueError(f"Duplicate task names: {duplicates}. Received: {tasks}")
    return tasks


def validate_matrix(matrix: Any, tasks: Sequence[str], *, name: str = "affinity",
                    allow_nan: bool = False) -> np.ndarray:
    """Checks that ``matrix`` is a finite n x n float array for ``tasks``."""
    array = np.asarray(matrix, dtype=np.float64)
    n = len(tasks)
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise ValueError(f"The {name} matrix must be square. Received shape {array.shape}.")
    if array.shape[0] != n:
        raise ValueError(
            f"The {name} matrix is {array.shape[0]}x{array.shape[1]} but there are {n} tasks: "
            f"{list(tasks)}")
    bad = ~np.isfinite(array)
    if allow_nan:
        bad &= ~np.isnan(array)
    if bad.any():
        where = [(tasks[i], tasks[j]) for i, j in zip(*np.nonzero(bad))][:5]
        raise ValueError(f"The {name} matrix has non-finite entries at (source, target) {where}.")
    return array


def _to_json_matrix(array: np.ndarray | None) -> list[list[Any]] | None:
    if array is None:
        return None
    out = []
    for row in np.asarray(array).tolist():
        out.append([None if isinstance(v, float) and not math.isfinite(v) else v for v in row])
    return out


def _from_json_matrix(rows: Any) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=np.float64)


def save_affinity_json(path: str, record: AffinityRecord) -> None:
    """Writes ``record`` as ``tag_tf.affinity/v1`` JSON (see the module docstring)."""
    tasks = validate_tasks(record.tasks)
    validate_matrix(record.affinity, tasks, allow_nan=True)
    payload = {
        "format": FORMAT,
        "orientation": ORIENTATION,
        "tasks": tasks,
        "affinity": _to_json_matrix(np.asarray(record.affinity, dtype=np.float64)),
        "counts": _to_json_matrix(record.counts),
        "skipped": _to_json_matrix(record.skipped),
        "epochs": [
            {key: (_to_json_matrix(np.asarray(value)) if key != "epoch" else value)
             for key, value in epoch.items()}
            for epoch in (record.epochs or [])
        ],
        "config": record.config or {},
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)


def save_affinity_npz(path: str, record: AffinityRecord) -> None:
    """Writes the matrices of ``record`` to an NPZ (per-epoch matrices stacked)."""
    arrays = {"tasks": np.array(record.tasks), "affinity": np.asarray(record.affinity)}
    if record.counts is not None:
        arrays["counts"] = np.asarray(record.counts)
    if record.skipped is not None:
        arrays["skipped"] = np.asarray(record.skipped)
    if record.epochs:
        arrays["epoch_index"] = np.array([e["epoch"] for e in record.epochs])
        arrays["epoch_affinity"] = np.stack([np.asarray(e["affinity"]) for e in record.epochs])
        arrays["epoch_counts"] = np.stack([np.asarray(e["counts"]) for e in record.epochs])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **arrays)


def load_affinity(path: str, tasks: Sequence[str] | None = None) -> AffinityRecord:
    """Reads an affinity matrix in [source, target] orientation.

    Args:
      path: a ``tag_tf.affinity/v1`` JSON, a plain ``{"tasks", "matrix"}`` JSON,
        or an ``.npy`` / ``.npz`` file.
      tasks: task names; required for ``.npy`` files, otherwise checked against
        the file's own names when given.

    Returns:
      An :class:`AffinityRecord`.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"Affinity file not found: {path}")
    if path.endswith(".npy"):
        if tasks is None:
            raise ValueError(f"{path}: a .npy matrix needs the task names (tasks=...).")
        tasks = validate_tasks(tasks)
        return AffinityRecord(tasks, validate_matrix(np.load(path), tasks))
    if path.endswith(".npz"):
        with np.load(path) as data:
            file_tasks = [str(t) for t in data["tasks"]] if "tasks" in data else tasks
            if file_tasks is None:
                raise ValueError(f"{path}: the NPZ has no 'tasks' array; pass tasks=...")
            file_tasks = validate_tasks(file_tasks)
            record = AffinityRecord(
                file_tasks, validate_matrix(data["affinity"], file_tasks, allow_nan=True),
                counts=data["counts"] if "counts" in data else None,
                skipped=data["skipped"] if "skipped" in data else None)
    else:
        try:
            with open(path) as f:
                payload = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(payload, Mapping) or "tasks" not in payload:
            raise ValueError(f"{path}: expected a JSON object with a 'tasks' list.")
        file_tasks = validate_tasks(payload["tasks"])
        if "affinity" in payload:
            matrix = _from_json_matrix(payload["affinity"])
            orientation = "source_target"
        elif "matrix" in payload:
            matrix = _from_json_matrix(payload["matrix"])
            orientation = payload.get("orientation", "source_target")
        else:
            raise ValueError(f"{path}: expected an 'affinity' or 'matrix' entry.")
        if orientation == "target_source":
            matrix = matrix.T
        elif orientation != "source_target" and payload.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown orientation {orientation!r}; "
                             "use 'source_target' or 'target_source'.")
        matrix = validate_matrix(matrix, file_tasks, allow_nan=True)
        record = AffinityRecord(
            file_tasks, matrix,
            counts=_from_json_matrix(payload["counts"]) if payload.get("counts") else None,
            skipped=_from_json_matrix(payload["skipped"]) if payload.get("skipped") else None,
            epochs=payload.get("epochs"), config=payload.get("config"))
    if tasks is not None and list(tasks) != record.tasks:
        raise ValueError(f"{path}: file tasks {record.tasks} differ from the given tasks {list(tasks)}.")
    return record
