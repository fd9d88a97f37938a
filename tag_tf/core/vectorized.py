"""Vectorised per-task passes of a recording step (``AffinityConfig(parallel=True)``).

The default recording step (:mod:`tag_tf.core.per_task`) runs one backward pass and one
lookahead forward pass per task, one after another in a ``tf.while_loop``. Here both
become batched computations over the task axis, vectorised by TensorFlow's ``pfor``:

* :func:`task_gradients`: the T per-task gradients of the shared variables as ONE
  Jacobian of the stacked task losses (``GradientTape.jacobian`` with pfor: one backward
  pass with T cotangents side by side);
* :func:`chunked_map`: the T lookahead forwards as ONE ``tf.vectorized_map`` over the
  stacked per-task gradients (each iteration takes the lookahead step and runs the
  network's ``stateless_call``).

Batching holds T passes' activations at once. ``chunk`` bounds that: at most ``chunk``
tasks are vectorised together, the chunks running one after another (chained by control
dependencies, as the sequential path chains its tasks). Results equal the sequential
path's up to float summation order. Ops pfor cannot vectorise (e.g. a convolution whose
filter differs per task) fall back to a ``tf.while_loop`` inside the batched computation:
still correct, but not faster. That is why this is an option, measured in
``benchmarks/affinity_overhead.py``.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import tensorflow as tf


def _chunks(count: int, chunk: Optional[int]) -> list[tuple[int, int]]:
    """``[start, end)`` task ranges of at most ``chunk`` tasks (all at once for None)."""
    size = count if not chunk else min(chunk, count)
    return [(start, min(start + size, count)) for start in range(0, count, size)]


class _QuietPfor:
    """Silences pfor's per-op "using a while_loop" warnings while tracing (expected for
    convolutions with per-task filters; the result is still exact)."""

    def __enter__(self):
        self._logger = logging.getLogger("tensorflow")
        self._level = self._logger.level
        self._logger.setLevel(max(self._level, logging.ERROR))

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)


def task_gradients(tape: tf.GradientTape, targets: Sequence[tf.Tensor],
                   sources: Sequence[tf.Tensor], chunk: Optional[int] = None,
                   task_names: Optional[Sequence[str]] = None) -> list[tf.Tensor]:
    """Gradients of each scalar in ``targets`` w.r.t. ``sources``, batched over targets.

    Args:
      tape: a persistent tape that recorded ``targets`` from ``sources``.
      targets: T scalar losses (one per task).
      sources: the shared variables (or watched tensors).
      chunk: at most this many targets per vectorised backward pass (None: all T).
      task_names: for the error naming a task whose loss ignores every source.

    Returns:
      ``grads[v]``, ``[T, *sources[v].shape]``: row k is d targets[k] / d sources[v] (zeros
      where unconnected).

    Raises:
      ValueError: if some target does not depend on any source (checked per task on the
        stacked result when the graph connects none of them at all).
    """
    count = len(targets)
    pieces, previous = [], []
    for start, end in _chunks(count, chunk):
        with tf.control_dependencies(previous):
            with tape:  # the stacking must be recorded to be differentiated
                part = tf.stack([tf.reshape(t, []) for t in targets[start:end]])
            with _QuietPfor():
                grads = tape.jacobian(part, list(sources), experimental_use_pfor=True,
                                      unconnected_gradients=tf.UnconnectedGradients.NONE)
        if all(g is None for g in grads):
            names = list(task_names or range(count))[start:end]
            raise ValueError(f"The losses of tasks {names} do not depend on the shared "
                             "variables; check `shared` and the network's outputs.")
        grads = [tf.zeros((end - start,) + tuple(s.shape), s.dtype) if g is None else g
                 for g, s in zip(grads, sources)]
        pieces.append(grads)
        previous = grads[:1]
    return [tf.concat([p[v] for p in pieces], axis=0) if len(pieces) > 1
            else pieces[0][v] for v in range(len(sources))]


def chunked_map(fn: Callable[[list], tf.Tensor], stacked: Sequence[tf.Tensor],
                chunk: Optional[int] = None) -> tf.Tensor:
    """``tf.vectorized_map(fn, stacked)`` over the leading (task) axis, ``chunk`` at a time.

    Args:
      fn: one task's inputs (a list, one tensor per element of ``stacked``) -> a tensor.
      stacked: tensors whose first axis is the task axis (all the same length T).
      chunk: at most this many tasks per vectorised call (None: all T).

    Returns:
      ``fn``'s results stacked over the T tasks.
    """
    count = int(stacked[0].shape[0])
    pieces, previous = [], []
    for start, end in _chunks(count, chunk):
        with tf.control_dependencies(previous):
            part = [s[start:end] for s in stacked]
            with _QuietPfor():
                out = tf.vectorized_map(lambda elems: fn(list(elems)), part,
                                        fallback_to_while_loop=True)
        pieces.append(out)
        previous = [out]
    return pieces[0] if len(pieces) == 1 else tf.concat(pieces, axis=0)
