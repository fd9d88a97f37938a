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
    "config": {...},                 # settings that produced the matrix
    # Optional (absent in older files, which still load):
    "stderr": [[...]],               # standard error of each mean (null = unknown)
    "stderr_blocks": [[...]],        # blocks (or pooled runs) behind each standard error
    "stderr_method": "...",          # how the standard error was computed
    "block_means": [[[...]], ...],   # [blocks][source][target] block means (bootstrap)
    "block_counts": [[[...]], ...],  # values behind each block mean
    "runs": K,                       # independent trainings behind the mean (default 1)
    "run_blocks": [{"block_means": [[[...]]], "block_counts": [[[...]]] or null}, ...]
                                     # pooled runs: each run's own blocks (two-stage bootstrap)
  }

``runs`` is the evidence: a mean over one training can only speak for that training's
batch noise, a mean over ``K >= 2`` independent trainings (seeds) also for the
seed-to-seed spread. Files without it hold one run, except pooled files written before it
existed, which give ``config["pooled_runs"]``.

:func:`load_affinity` reads that format and also a plain
``{"tasks": [...], "matrix": [[...]]}`` JSON (assumed [source][target] unless
``"orientation": "target_source"`` is given) or an ``.npy`` / ``.npz`` file.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from tag_tf.io import atomic

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
    stderr: np.ndarray | None = None  # standard error of each mean, NaN = unknown
    stderr_blocks: np.ndarray | None = None  # blocks (or runs) behind each stderr
    stderr_method: str | None = None
    block_means: np.ndarray | None = None  # [blocks, source, target], for the bootstrap
    block_counts: np.ndarray | None = None  # [blocks, source, target] values per block mean
    # Independent trainings (seeds) behind ``affinity``: 1 for one run, K for K pooled runs.
    runs: int = 1
    # Pooled runs only: per run (pool order, as ``block_means``), its within-run blocks
    # ``(means [B_k, n, n], counts [B_k, n, n] or None)``, for the two-stage bootstrap.
    run_blocks: tuple[tuple[np.ndarray, np.ndarray | None], ...] | None = None


def validate_tasks(tasks: Sequence[str]) -> list[str]:
    """Returns ``tasks`` as a list, raising on empty, non-string or duplicate names."""
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Iterable):
        raise ValueError(f"The tasks must be a list of names. Received: {tasks!r}")
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
    """Checks that ``matrix`` is a finite n x n float array for ``tasks``.

    A ragged nested list (rows of different lengths) is named by its rows, e.g. "row 1 has
    1 value, row 0 has 2"; NaN passes only with ``allow_nan`` (a missing value).
    """
    array = as_float_matrix(matrix, name=name)
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


def _values(count: int) -> str:
    return f"{count} value" if count == 1 else f"{count} values"


def _check_rows(rows: Any, name: str) -> None:
    """Raises a ValueError naming the first row that is not a list, or whose length differs
    from row 0's (what NumPy reports as an "inhomogeneous shape")."""
    if not isinstance(rows, (list, tuple)):
        return
    lengths = []
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple, np.ndarray)):
            if any(isinstance(r, (list, tuple, np.ndarray)) for r in rows):
                raise ValueError(f"The {name} matrix must be a list of rows; row {i} is not a "
                                 f"list. Received: row {i} = {row!r}")
            return
        lengths.append(len(row))
        if len(row) != lengths[0]:
            raise ValueError(
                f"The {name} matrix is ragged: row {i} has {_values(len(row))}, row 0 has "
                f"{_values(lengths[0])}. Every row needs one value per task (null for a "
                "missing value).")


def as_float_matrix(matrix: Any, *, name: str = "affinity") -> np.ndarray:
    """``matrix`` (nested lists or an array) as a float64 array; a ragged matrix or a
    non-number entry is a ValueError naming the row or the value."""
    _check_rows(matrix, name)
    try:
        return np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"The {name} matrix must hold numbers (null for a missing value): "
                         f"{e}") from e


def decode_matrix(rows: Any, name: str = "affinity") -> np.ndarray:
    """A JSON matrix (rows of numbers, null for a missing value) as a float64 array, null as
    NaN: the one reader of every matrix the library writes with nulls. A ragged matrix or a
    non-number entry is a ValueError naming the row or the value (:func:`as_float_matrix`)."""
    _check_rows(rows, name)
    if not isinstance(rows, (list, tuple)) or not all(isinstance(r, (list, tuple))
                                                      for r in rows):
        raise ValueError(f"The {name} matrix must be a list of rows (lists of numbers). "
                         f"Received: {_short(rows)}")
    return as_float_matrix([[np.nan if v is None else v for v in row] for row in rows],
                           name=name)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_blocks(blocks: Any, tasks: Sequence[str], name: str) -> np.ndarray:
    array = np.asarray(blocks, dtype=np.float64)
    n = len(tasks)
    if array.ndim != 3 or array.shape[1:] != (n, n):
        raise ValueError(f"{name} must be [blocks, {n}, {n}] for tasks {list(tasks)}. "
                         f"Received shape {array.shape}.")
    return array


def _optional_matrix(payload: Mapping[str, Any], key: str) -> np.ndarray | None:
    value = payload.get(key)
    return None if value is None else decode_matrix(value, key)


def _optional_blocks(payload: Mapping[str, Any], key: str) -> np.ndarray | None:
    value = payload.get(key)
    if not value:
        return None
    return np.stack([decode_matrix(m, key) for m in value])


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
    if record.stderr is not None:
        payload["stderr"] = _to_json_matrix(
            validate_matrix(record.stderr, tasks, name="stderr", allow_nan=True))
        payload["stderr_blocks"] = _to_json_matrix(record.stderr_blocks)
        payload["stderr_method"] = record.stderr_method
    if record.block_means is not None:
        means = _check_blocks(record.block_means, tasks, "block_means")
        payload["block_means"] = [_to_json_matrix(m) for m in means]
        if record.block_counts is not None:
            counts = _check_blocks(record.block_counts, tasks, "block_counts")
            payload["block_counts"] = [_to_json_matrix(c) for c in counts]
    payload["runs"] = _check_runs(record.runs)
    if record.run_blocks is not None:
        payload["run_blocks"] = [
            {"block_means": [_to_json_matrix(m) for m in _check_blocks(means, tasks,
                                                                       "run_blocks means")],
             "block_counts": None if counts is None else [
                 _to_json_matrix(c) for c in _check_blocks(counts, tasks, "run_blocks counts")]}
            for means, counts in record.run_blocks]
    atomic.atomic_write_json(path, payload, indent=1)


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
    for key in ("stderr", "stderr_blocks", "block_means", "block_counts"):
        if getattr(record, key) is not None:
            arrays[key] = np.asarray(getattr(record, key))
    if record.stderr_method is not None:
        arrays["stderr_method"] = np.array(record.stderr_method)
    arrays["runs"] = np.array(_check_runs(record.runs))
    if record.run_blocks is not None:  # ragged: stacked, with each run's block count
        arrays["run_block_sizes"] = np.array([len(m) for m, _ in record.run_blocks])
        arrays["run_block_means"] = np.concatenate([np.asarray(m) for m, _ in record.run_blocks])
        if all(c is not None for _, c in record.run_blocks):
            arrays["run_block_counts"] = np.concatenate(
                [np.asarray(c) for _, c in record.run_blocks])
    with atomic.atomic_path(path) as tmp:
        np.savez(tmp, **arrays)


def load_affinity(path: str, tasks: Sequence[str] | None = None) -> AffinityRecord:
    """Reads an affinity matrix in [source, target] orientation.

    Args:
      path: a ``tag_tf.affinity/v1`` JSON, a plain ``{"tasks", "matrix"}`` JSON,
        or an ``.npy`` / ``.npz`` file.
      tasks: task names; required for ``.npy`` files, otherwise checked against
        the file's own names when given.

    Returns:
      An :class:`AffinityRecord`.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: a malformed file, naming it and the problem (not JSON / NumPy, no
        matrix, a ragged or non-square matrix, a matrix that does not fit the tasks,
        non-finite values in a .npy).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"Affinity file not found: {path}")
    try:
        if path.endswith(".npy"):
            record = _load_npy(path, tasks)
        elif path.endswith(".npz"):
            record = _load_npz(path, tasks)
        else:
            record = _load_json(path)
    except ValueError as e:  # name the file in every message
        if str(e).startswith(path):
            raise
        raise ValueError(f"{path}: {e}") from e
    if tasks is not None and list(tasks) != record.tasks:
        raise ValueError(f"{path}: file tasks {record.tasks} differ from the given tasks {list(tasks)}.")
    return record


def _check_runs(runs: Any) -> int:
    if isinstance(runs, bool) or not isinstance(runs, (int, np.integer)) or runs < 1:
        raise ValueError(f"runs (independent trainings behind the mean) must be an integer "
                         f">= 1. Received: runs={runs!r}")
    return int(runs)


def _runs_of(payload: Mapping[str, Any], path: str) -> int:
    """The ``runs`` of a JSON payload; older pooled files give ``config["pooled_runs"]``."""
    runs = payload.get("runs")
    if runs is None:
        runs = (payload.get("config") or {}).get("pooled_runs", 1)
    try:
        return _check_runs(runs)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _npz_runs(data: Any) -> int:
    """An NPZ's ``runs``; pooled NPZs written before it existed (no config in NPZs) are
    known by their ``stderr_method``, and hold one block per run."""
    if "runs" in data:
        return _check_runs(int(data["runs"]))
    if ("stderr_method" in data and str(data["stderr_method"]) == POOLED_METHOD
            and "block_means" in data):
        return max(1, len(data["block_means"]))
    return 1


def _json_run_blocks(value: Any, tasks: Sequence[str], path: str):
    if not value:
        return None
    out = []
    for k, entry in enumerate(value):
        if not isinstance(entry, Mapping) or not entry.get("block_means"):
            raise ValueError(f"{path}: run_blocks[{k}] needs 'block_means'.")
        means = _check_blocks(np.stack([decode_matrix(m) for m in entry["block_means"]]),
                              tasks, f"run_blocks[{k}] block_means")
        counts = entry.get("block_counts")
        if counts is not None:
            counts = np.stack([decode_matrix(c) for c in counts])
            if counts.shape != means.shape:
                raise ValueError(f"{path}: run_blocks[{k}] block_counts {counts.shape} do not "
                                 f"match its block_means {means.shape}.")
        out.append((means, counts))
    return tuple(out)


def _npz_run_blocks(data: Any, tasks: Sequence[str]):
    if "run_block_sizes" not in data:
        return None
    ends = np.cumsum(data["run_block_sizes"])
    means = _check_blocks(data["run_block_means"], tasks, "run_block_means")
    counts = data.get("run_block_counts")
    return tuple((means[end - size:end], None if counts is None else counts[end - size:end])
                 for size, end in zip(data["run_block_sizes"], ends))


def within_run_blocks(record: AffinityRecord) -> tuple[np.ndarray, np.ndarray | None] | None:
    """One run's own blocks ``(means [B, n, n], counts or None)``, or ``None`` (< 2 blocks).

    Its ``block_means`` when there are 2 or more, else its epochs trace (the epochs in
    ``config["epochs_used"]`` when given). A pooled record (``runs > 1``) has none: its
    ``block_means`` are runs.
    """
    if record.runs > 1:
        return None
    if record.block_means is not None and len(record.block_means) >= 2:
        return (np.asarray(record.block_means, dtype=np.float64),
                None if record.block_counts is None
                else np.asarray(record.block_counts, dtype=np.float64))
    used = (record.config or {}).get("epochs_used")
    epochs = [e for e in record.epochs or [] if used is None or e["epoch"] in used]
    if len(epochs) < 2:
        return None
    means = np.stack([decode_matrix(e["affinity"]) for e in epochs])
    counts = (np.stack([np.asarray(e["counts"], dtype=np.float64) for e in epochs])
              if all(e.get("counts") is not None for e in epochs) else None)
    return means, counts
_MAGIC = {".npy": b"\x93NUMPY", ".npz": b"PK"}  # NumPy's format; .npz is a zip archive


def _np_load(path: str, kind: str) -> Any:
    """``np.load(path)``; a file that is not a NumPy file is a ValueError saying so."""
    with open(path, "rb") as f:
        start = f.read(6)
    if not any(start.startswith(magic) for magic in _MAGIC.values()):
        raise ValueError(f"not a NumPy {kind} file (it starts with {start!r}, not "
                         f"{_MAGIC[kind]!r}).")
    try:
        return np.load(path)
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"not a valid NumPy {kind} file ({e}).") from e


def _load_npy(path: str, tasks: Sequence[str] | None) -> AffinityRecord:
    if tasks is None:
        raise ValueError(f"{path}: a .npy matrix needs the task names (tasks=...).")
    tasks = validate_tasks(tasks)
    array = _np_load(path, ".npy")
    if not isinstance(array, np.ndarray):
        raise ValueError("not a .npy file (it holds several arrays: name it .npz).")
    return AffinityRecord(tasks, validate_matrix(array, tasks))


def _load_npz(path: str, tasks: Sequence[str] | None) -> AffinityRecord:
    data = _np_load(path, ".npz")
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError("not a .npz file (it holds one array: name it .npy).")
    with data:
        if "affinity" not in data:
            raise ValueError(f"the NPZ has no 'affinity' array. Received arrays: "
                             f"{sorted(data.files)}")
        file_tasks = [str(t) for t in data["tasks"]] if "tasks" in data else tasks
        if file_tasks is None:
            raise ValueError(f"{path}: the NPZ has no 'tasks' array; pass tasks=...")
        file_tasks = validate_tasks(file_tasks)
        return AffinityRecord(
            file_tasks, validate_matrix(data["affinity"], file_tasks, allow_nan=True),
            counts=data["counts"] if "counts" in data else None,
            skipped=data["skipped"] if "skipped" in data else None,
            stderr=data["stderr"] if "stderr" in data else None,
            stderr_blocks=data["stderr_blocks"] if "stderr_blocks" in data else None,
            stderr_method=str(data["stderr_method"]) if "stderr_method" in data else None,
            block_means=data["block_means"] if "block_means" in data else None,
            block_counts=data["block_counts"] if "block_counts" in data else None,
            runs=_npz_runs(data),
            run_blocks=_npz_run_blocks(data, file_tasks))


def _load_json(path: str) -> AffinityRecord:
    try:
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not valid JSON (not UTF-8 text: {e}); .npy and .npz "
                         "files need those extensions.") from e
    if not isinstance(payload, Mapping) or "tasks" not in payload:
        received = f"keys {sorted(payload)}" if isinstance(payload, Mapping) else _short(payload)
        raise ValueError(f"{path}: expected a JSON object with a 'tasks' list. Received: "
                         f"{received}")
    file_tasks = validate_tasks(payload["tasks"])
    if "affinity" in payload:
        matrix = decode_matrix(payload["affinity"])
        orientation = "source_target"
    elif "matrix" in payload:
        matrix = decode_matrix(payload["matrix"])
        orientation = payload.get("orientation", "source_target")
    else:
        raise ValueError(f"{path}: expected an 'affinity' or 'matrix' entry. Received: keys "
                         f"{sorted(payload)}")
    if orientation == "target_source":
        matrix = matrix.T
    elif orientation != "source_target" and payload.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown orientation {orientation!r}; "
                         "use 'source_target' or 'target_source'.")
    matrix = validate_matrix(matrix, file_tasks, allow_nan=True)
    record = AffinityRecord(
        file_tasks, matrix,
        counts=decode_matrix(payload["counts"], "counts") if payload.get("counts") else None,
        skipped=(decode_matrix(payload["skipped"], "skipped") if payload.get("skipped")
                 else None),
        epochs=payload.get("epochs"), config=payload.get("config"),
        stderr=_optional_matrix(payload, "stderr"),
        stderr_blocks=_optional_matrix(payload, "stderr_blocks"),
        stderr_method=payload.get("stderr_method"),
        block_means=_optional_blocks(payload, "block_means"),
        block_counts=_optional_blocks(payload, "block_counts"),
        runs=_runs_of(payload, path),
        run_blocks=_json_run_blocks(payload.get("run_blocks"), file_tasks, path))
    if record.stderr is not None:
        validate_matrix(record.stderr, file_tasks, name="stderr", allow_nan=True)
    if record.block_means is not None:
        _check_blocks(record.block_means, file_tasks, "block_means")
    return record


POOLED_METHOD = ("between-runs: mean over K runs (each run weighted equally), "
                 "stderr = std over runs (ddof=1) / sqrt(K)")


def pool_records(records: Sequence[AffinityRecord]) -> AffinityRecord:
    """Combines affinity records of several seeds or restarts into one with between-run errors.

    Per (source, target) cell over the ``K`` runs where the cell is finite: the mean is the
    plain mean over runs, and ``stderr = std(ddof=1) / sqrt(K)`` (NaN where ``K < 2``).
    Tasks must be the same set in every record; matrices are reordered by name when the
    orders differ (the result then lists tasks sorted by name). Records are put in a
    canonical order (by their values) before summing, so the result is bitwise the same
    for any input order. The run means become ``block_means`` (one block per run) so a
    bootstrap resamples runs; ``counts``/``skipped`` are summed when every record has them.
    ``runs`` is the number of records (the evidence: independent trainings). When every
    run has its own blocks (:func:`within_run_blocks`: recorded blocks or an epochs trace
    of 2+ epochs) they are kept as ``run_blocks``, in the same order as ``block_means``, so
    the bootstrap can resample runs and then blocks within each run (two-stage).

    Raises:
      ValueError: fewer than 2 records, or task sets that differ.
    """
    records = list(records)
    if len(records) < 2:
        raise ValueError(f"Pooling needs at least 2 affinity records. Received: {len(records)}")
    names = [validate_tasks(r.tasks) for r in records]
    reference = set(names[0])
    for k, tasks in enumerate(names[1:], start=1):
        if set(tasks) != reference:
            raise ValueError(
                f"Pooled runs must have the same tasks. Run 0 has {names[0]}, run {k} has "
                f"{tasks} (missing: {sorted(reference - set(tasks))}, extra: "
                f"{sorted(set(tasks) - reference)}).")
    same_order = all(t == names[0] for t in names)
    tasks = list(names[0]) if same_order else sorted(reference)

    def reorder(array: Any, order: list[str]) -> np.ndarray | None:
        if array is None:
            return None
        index = [order.index(t) for t in tasks]
        return np.asarray(array, dtype=np.float64)[..., index, :][..., index]

    def reorder_blocks(blocks, order):
        if blocks is None:
            return None
        return (_check_blocks(reorder(blocks[0], order), tasks, "block_means"),
                reorder(blocks[1], order))

    runs = []
    for record, order in zip(records, names):
        affinity = validate_matrix(reorder(record.affinity, order), tasks, allow_nan=True)
        runs.append((affinity, reorder(record.counts, order), reorder(record.skipped, order),
                     record.config, reorder_blocks(within_run_blocks(record), order)))

    def blocks_key(blocks):
        if blocks is None:
            return b""
        return blocks[0].tobytes() + (b"" if blocks[1] is None else blocks[1].tobytes())

    # Canonical order (by content), so sums below do not depend on the input order.
    runs.sort(key=lambda run: (run[0].tobytes(),
                               b"" if run[1] is None else run[1].tobytes(),
                               b"" if run[2] is None else run[2].tobytes(),
                               json.dumps(run[3], sort_keys=True, default=str),
                               blocks_key(run[4])))
    stack = np.stack([run[0] for run in runs])
    finite = np.isfinite(stack)
    k = finite.sum(axis=0)
    safe_k = np.maximum(k, 1)
    total = np.zeros(stack.shape[1:])
    for matrix, ok in zip(stack, finite):
        total = total + np.where(ok, matrix, 0.0)
    mean = np.where(k > 0, total / safe_k, np.nan)
    squares = np.zeros(stack.shape[1:])
    for matrix, ok in zip(stack, finite):
        squares = squares + np.where(ok, (matrix - mean) ** 2, 0.0)
    stderr = np.where(k >= 2, np.sqrt(squares / np.maximum(k - 1, 1)) / np.sqrt(safe_k), np.nan)

    def summed(index: int) -> np.ndarray | None:
        parts = [run[index] for run in runs]
        if any(p is None for p in parts):
            return None
        out = np.zeros(stack.shape[1:])
        for p in parts:
            out = out + p
        return out.astype(np.int64)

    return AffinityRecord(
        tasks, mean, counts=summed(1), skipped=summed(2), epochs=None,
        config={"pooled_runs": len(runs), "run_configs": [run[3] or {} for run in runs]},
        stderr=stderr, stderr_blocks=k.astype(np.int64), stderr_method=POOLED_METHOD,
        block_means=stack, block_counts=None, runs=len(runs),
        run_blocks=(None if any(run[4] is None for run in runs)
                    else tuple(run[4] for run in runs)))
