"""Loader for published selection tables (nested ``values[recipient][source]`` JSON).

The tables shipped with the project hold the literals of the original network-selection
notebooks: a mapping ``values[outer][inner]`` where the outer key is the task being scored
(recipient, or the task whose result is reported) and the inner key its partner (source).
tag_tf indexes matrices ``[source, target]``, so :func:`load_published_table` transposes
here, in one place, by task *name* (inner dicts may list their keys in another order).
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from tag_tf.io import affinity_io


class PublishedTable(NamedTuple):
    """A published table converted to tag_tf's ``[source, target]`` orientation.

    Attributes:
      tasks: task names in the table's outer-key order (the order the notebooks use).
      matrix: ``[source, target]`` matrix (``matrix[s, t] = values[t][s]``).
      metadata: every other top-level entry of the file (provenance, orientation, ...).
    """

    tasks: list[str]
    matrix: np.ndarray
    metadata: dict[str, Any]


def nested_to_matrix(values: Mapping[str, Mapping[str, float]],
                     tasks: Sequence[str] | None = None, *,
                     name: str = "table") -> tuple[list[str], np.ndarray]:
    """Converts ``values[recipient][source]`` to a ``[source, target]`` matrix.

    Args:
      values: nested mapping, outer key = recipient (scored task), inner key = source.
      tasks: task order (default: the outer keys in order).
      name: what to call the table in error messages.

    Returns:
      ``(tasks, matrix)`` with ``matrix[s, t] = values[tasks[t]][tasks[s]]``.

    Raises:
      ValueError: naming the missing, unknown or non-finite entries.
    """
    tasks = affinity_io.validate_tasks(list(values) if tasks is None else tasks)
    unknown = sorted(set(values) - set(tasks))
    if unknown:
        raise ValueError(f"The {name} has rows for unknown tasks {unknown}.")
    n = len(tasks)
    matrix = np.full((n, n), np.nan)
    missing = []
    for t, recipient in enumerate(tasks):
        row = values.get(recipient)
        if row is None:
            missing.extend((recipient, source) for source in tasks)
            continue
        extra = sorted(set(row) - set(tasks))
        if extra:
            raise ValueError(f"The {name} row {recipient!r} names unknown tasks {extra}.")
        for s, source in enumerate(tasks):
            value = row.get(source)
            if value is None or not math.isfinite(float(value)):
                missing.append((recipient, source))
            else:
                matrix[s, t] = float(value)
    if missing:
        raise ValueError(
            f"The {name} is missing (or has non-finite) entries for (recipient, source) "
            f"pairs {missing[:8]}{' ...' if len(missing) > 8 else ''}.")
    return tasks, matrix


def load_published_table(path: str, *, field: str = "values") -> PublishedTable:
    """Reads a published table JSON and transposes it to ``[source, target]``.

    Args:
      path: JSON file with ``tasks`` and a nested ``values[recipient][source]`` mapping.
      field: which nested mapping to read (e.g. ``"error_values_as_computed"``).

    Returns:
      A :class:`PublishedTable`.
    """
    with open(path) as f:
        payload = json.load(f)
    if not isinstance(payload, Mapping) or field not in payload:
        raise ValueError(f"{path}: expected a JSON object with a {field!r} entry.")
    tasks, matrix = nested_to_matrix(payload[field], payload.get("tasks"),
                                     name=f"table {path}:{field}")
    metadata = {k: v for k, v in payload.items()
                if k not in ("values", "error_values_as_computed")}
    return PublishedTable(tasks, matrix, metadata)
