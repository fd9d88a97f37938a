"""Unreadable input files are never dropped silently: found before training, then either an
error naming the file or (``skip_bad_files=True``) dropped and reported.

``tf.data``'s ``ignore_errors`` drops a failing element without saying which file it was, and
an error raised while training names no file either. :func:`find_bad` decodes every input
once in a ``tf.data`` pipeline that carries each input's index, drops failures with
``ignore_errors``, and compares the indices that came through with all of them: the missing
ones are the bad inputs, each decoded once more (eagerly) to say what is wrong with it.
:func:`handle` then raises :class:`BadFileError` naming the first one, or records them in a
:class:`BadFiles` report (count and the first paths with their reasons) for the log, the
summary and ``results.json``::

    report = BadFiles()
    bad = find_bad_files(paths, tf.io.decode_png)   # [(path, reason)]
    handle(bad, skip_bad_files=False, report=report, what="training image")
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Optional, Sequence

import tensorflow as tf
from absl import logging

FIRST = 20  # bad files listed by name in a report (all are counted)


class BadFileError(ValueError):
    """An input file is missing or unreadable (the message names it and the problem)."""


@dataclasses.dataclass
class BadFiles:
    """Input files found missing or unreadable and dropped (``skip_bad_files=True``).

    Attributes:
      count: how many were dropped.
      first: the first :data:`FIRST` of them as ``(path, reason)``.
    """

    count: int = 0
    first: list = dataclasses.field(default_factory=list)

    def add(self, path: str, reason: str) -> None:
        self.count += 1
        if len(self.first) < FIRST:
            self.first.append((str(path), str(reason)))

    def extend(self, bad: Iterable[tuple[str, str]]) -> None:
        for path, reason in bad:
            self.add(path, reason)

    def merge(self, other: "BadFiles") -> None:
        """Adds ``other``'s count and the first of its named files."""
        self.count += other.count
        self.first.extend(other.first[:max(FIRST - len(self.first), 0)])

    def __bool__(self) -> bool:
        return self.count > 0

    @property
    def paths(self) -> list[str]:
        """The first paths (up to :data:`FIRST`)."""
        return [path for path, _ in self.first]

    def to_json(self) -> dict:
        """``{"count": n, "first": [{"path", "reason"}, ...]}`` (for ``results.json``)."""
        return {"count": self.count,
                "first": [{"path": p, "reason": r} for p, r in self.first]}

    @classmethod
    def from_json(cls, payload: Optional[dict]) -> "BadFiles":
        payload = payload or {}
        return cls(int(payload.get("count", 0)),
                   [(e["path"], e["reason"]) for e in payload.get("first", [])])

    def summary(self, shown: int = 3) -> str:
        """One line, e.g. ``2 bad input file(s) skipped: a.png (Invalid PNG data), b.png
        (missing)``; empty when there are none."""
        if not self.count:
            return ""
        listed = ", ".join(f"{p} ({r})" for p, r in self.first[:shown])
        more = f", ... ({self.count - shown} more)" if self.count > shown else ""
        return f"{self.count} bad input file(s) skipped: {listed}{more}"


def describe_error(error: BaseException) -> str:
    """The first line of a TensorFlow / OS error, without TF's node decorations."""
    if isinstance(error, tf.errors.NotFoundError):
        return "missing (no such file)"
    text = getattr(error, "message", None) or str(error)
    text = re.sub(r"\{\{[^}]*\}\}|\[\[[^\]]*\]\]|\[Op:[^\]]*\].*", " ", text)
    text = " ".join(text.split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def find_bad(dataset: tf.data.Dataset, check: Callable[[Any], Any], *,
             count: Optional[int] = None, item_at: Optional[Callable[[int], Any]] = None,
             num_parallel_calls: int = tf.data.AUTOTUNE) -> list[tuple[int, str]]:
    """The inputs of ``dataset`` that ``check`` fails on, as ``(index, reason)``.

    Every input is checked once, in parallel; the failures are found by their indices
    missing after ``ignore_errors``, then checked once more eagerly (the first
    :data:`FIRST` of them) to say what is wrong.

    Args:
      dataset: the inputs (e.g. file paths, serialized records), in a fixed order.
      check: a graph function of one input that raises on a bad one (e.g. reads and
        decodes a file: ``NotFoundError`` for a missing file, ``InvalidArgumentError``
        for a corrupt one).
      count: the number of inputs (default: the dataset's cardinality, or one pass).
      item_at: input ``i`` (default: read from ``dataset``), for the eager re-check.
      num_parallel_calls: check parallelism.
    """
    if count is None:
        count = int(dataset.cardinality())
        if count < 0:
            count = int(dataset.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
    if count == 0:
        return []

    def one(index, item):
        # The decoded sizes are outputs too, so no optimisation prunes the check away.
        return index, [tf.size(t) for t in tf.nest.flatten(check(item))]

    good = dataset.enumerate().map(one, num_parallel_calls=num_parallel_calls,
                                   deterministic=False).ignore_errors()
    seen = set(int(i) for i, _ in good.as_numpy_iterator())
    missing = [i for i in range(count) if i not in seen]
    bad = []
    for k, index in enumerate(missing):
        if k >= FIRST:  # (counted; only the first ones are named with a reason)
            bad.append((index, "unreadable"))
            continue
        try:  # once more, eagerly, to say what is wrong
            item = item_at(index) if item_at else next(iter(dataset.skip(index).take(1)))
            check(item)
            reason = "failed in the input pipeline"  # (not reproduced eagerly)
        except (tf.errors.OpError, ValueError, OSError, KeyError) as e:
            reason = describe_error(e)
        bad.append((index, reason))
    return bad


def find_bad_files(paths: Sequence[str], decode: Callable[[tf.Tensor], Any], *,
                   num_parallel_calls: int = tf.data.AUTOTUNE) -> list[tuple[str, str]]:
    """The files of ``paths`` that are missing or that ``decode`` (of the file's bytes)
    fails on, as ``(path, reason)`` in the order of ``paths``."""
    paths = list(paths)
    if not paths:
        return []
    bad = find_bad(tf.data.Dataset.from_tensor_slices(paths),
                   lambda path: decode(tf.io.read_file(path)), count=len(paths),
                   item_at=lambda i: tf.constant(paths[i]),
                   num_parallel_calls=num_parallel_calls)
    return [(paths[i], reason) for i, reason in bad]


def handle(bad: Sequence[tuple[str, str]], *, skip_bad_files: bool,
           report: Optional[BadFiles] = None, what: str = "input") -> None:
    """Raises :class:`BadFileError` naming the first bad file (``skip_bad_files=False``), or
    logs them and adds them to ``report``."""
    if not bad:
        return
    path, reason = bad[0]
    if not skip_bad_files:
        more = f" ({len(bad)} bad files in all; the next: {bad[1][0]})" if len(bad) > 1 else ""
        raise BadFileError(
            f"Bad {what} file {path}: {reason}{more}. Fix or remove it, or pass "
            "skip_bad_files=True (--skip_bad_files) to drop such examples; they are then "
            "counted and listed in the results.")
    shown = ", ".join(f"{p} ({r})" for p, r in bad[:3])
    logging.warning("Skipping %d bad %s file(s) (skip_bad_files=True): %s%s", len(bad), what,
                    shown, ", ..." if len(bad) > 3 else "")
    if report is not None:
        report.extend(bad)
