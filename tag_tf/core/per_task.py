"""The per-task passes of a training step, in a graph that does not grow with T.

A recording step (and every step of a gradient combiner) needs T per-task gradients, and a
lookahead step needs T forward passes of the network. Unrolled in Python, each is traced T
times, so tracing grows with T (and T^2 for the lookahead's per-task losses). Here each is
ONE traced body in a ``tf.while_loop`` over the task index:

* :func:`task_gradients`: iteration k differentiates the stacked per-task terms with the
  one-hot cotangent e_k on the persistent training tape (``output_gradients``), which is
  task k's gradient; or, given the task outputs (when each term reaches the network only
  through its own output), the outputs with task k's output cotangent alone (each loss is
  differentiated once, not T times); the results are stacked
  ``[T, *shape]`` per source;
* :func:`map_tasks`: iteration k calls a function on row k of stacked tensors (the
  lookahead forward of source task k).

At most :data:`ITERATIONS_IN_FLIGHT` (2) iterations run at once, so peak memory stays that
of two backward (or forward) passes plus the T stacked results, whatever T; each iteration
writes its own row, so the results do not depend on the overlap.
``parallel=True`` / n instead vectorises the T passes with ``pfor``
(:mod:`tag_tf.core.vectorized`); results are the same up to float summation order.

A task whose term depends on no source is an error naming the task. In a traced step the
check walks the graph from each term back through its inputs to the sources (no backward
pass is built for it); when run eagerly it differentiates each term on its own.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import tensorflow as tf

from tag_tf.core import vectorized

# Iterations of a per-task loop that may run at once. Two let the executor overlap one
# task's small ops with the next task's, as the unrolled step did for free (5 % and 8 % of a
# 40-head recording step on a 2-core CPU in two runs, none in a third, both settings timed
# in one process; see docs/benchmarks.md); each extra one costs one more pass's activations.
ITERATIONS_IN_FLIGHT = 2


def _handles(source) -> list:
    """The resource handles of a (Keras, tf or distributed) variable's components."""
    value = getattr(source, "value", source)
    value = source if callable(value) else value  # a tf.Variable's value is a method
    components = getattr(value, "values", None)
    components = components if isinstance(components, (list, tuple)) else [value]
    return [c.handle for c in components if hasattr(c, "handle")]


def _unconnected(terms: Sequence[tf.Tensor], sources: Sequence) -> list[int]:
    """Indices of the traced ``terms`` that no source reaches (walking the graph's inputs)."""
    graph = terms[0].graph
    marks = set()
    for source in sources:
        if isinstance(source, tf.Tensor):
            marks.add(id(source.op))
            continue
        handles = _handles(source)
        for external, internal in getattr(graph, "captures", ()):
            if any(external is h for h in handles):
                marks.add(id(internal.op))
    if not marks:  # nothing to look for in this graph (e.g. nested): no verdict
        return []
    reaches: dict[int, bool] = {}

    def walk(op) -> bool:
        stack = [op]
        while stack:
            top = stack[-1]
            if id(top) in reaches:
                stack.pop()
                continue
            pending = [t.op for t in top.inputs if id(t.op) not in reaches]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            reaches[id(top)] = id(top) in marks or any(reaches[id(t.op)] for t in top.inputs)
        return reaches[id(op)]

    return [k for k, term in enumerate(terms) if not walk(term.op)]


def check_connected(tape: tf.GradientTape, terms: Sequence[tf.Tensor], sources: Sequence,
                    names: Sequence[str], what: str = "the shared variables") -> None:
    """Raises naming the first task whose term does not depend on any of ``sources``."""
    if tf.executing_eagerly():
        missing = [k for k, term in enumerate(terms)
                   if all(g is None for g in tape.gradient(term, list(sources)))]
    else:
        missing = _unconnected(terms, sources)
    if missing:
        raise ValueError(f"The loss of task {names[missing[0]]!r} does not depend on {what}; "
                         "check `shared` and the network's outputs.")


def _through_own_outputs(terms: Sequence[tf.Tensor], outputs: Sequence[tf.Tensor],
                         sources: Sequence) -> bool:
    """Whether each traced ``terms[k]`` reaches the sources only through ``outputs[k]``.

    Walks each term's graph back to the outputs (they end the walk, so only the loss and
    weighting ops are visited): a term that reaches another task's output or a source
    directly (a weighting that mixes tasks, a penalty on shared variables) says no. Run
    eagerly there is no graph to walk: no.
    """
    if tf.executing_eagerly():
        return False
    graph = terms[0].graph
    owner: dict = {}
    for j, output in enumerate(outputs):
        key = (output.op.name, output.value_index)
        if key in owner:  # two tasks read one output tensor
            return False
        owner[key] = j
    marks = {id(s.op) for s in sources if isinstance(s, tf.Tensor)}
    for source in sources:
        handles = _handles(source)
        marks.update(id(internal.op) for external, internal in getattr(graph, "captures", ())
                     if any(external is h for h in handles))
    for k, term in enumerate(terms):
        seen, stack, own = set(), [term], False
        while stack:
            tensor = stack.pop()
            j = owner.get((tensor.op.name, tensor.value_index))
            if j is not None:
                if j != k:
                    return False
                own = True
                continue
            if id(tensor.op) in marks:
                return False
            if id(tensor.op) not in seen:
                seen.add(id(tensor.op))
                stack.extend(tensor.op.inputs)
        if not own:
            return False
    return True


def _outputs_chained(outputs: Sequence[tf.Tensor]) -> bool:
    """Whether some traced output is computed from another one (one walk of the graph
    behind the outputs)."""
    keys = {(o.op.name, o.value_index) for o in outputs}
    seen, stack = set(), [t for o in outputs for t in o.op.inputs]
    while stack:
        tensor = stack.pop()
        if (tensor.op.name, tensor.value_index) in keys:
            return True
        if tensor.op.name not in seen:
            seen.add(tensor.op.name)
            stack.extend(tensor.op.inputs)
    return False


def task_gradients(tape: tf.GradientTape, terms: Sequence[tf.Tensor], sources: Sequence, *,
                   outputs: Optional[Sequence[tf.Tensor]] = None, parallel=False,
                   chunk: Optional[int] = None,
                   names: Optional[Sequence[str]] = None,
                   outputs_tape: Optional[tf.GradientTape] = None) -> list[tf.Tensor]:
    """``[T, *source.shape]`` per source: row k is d terms[k] / d source.

    Args:
      tape: a persistent tape that recorded ``terms`` from ``sources``.
      terms: T scalars (one per task).
      sources: variables or tensors the tape watched.
      outputs: optionally, each task's network output. In a traced step where every
        ``terms[k]`` reaches the sources only through ``outputs[k]`` (checked), the
        cotangents ``d terms[k] / d outputs[k]`` are taken once, and each iteration
        differentiates the outputs with task k's cotangent alone (no loss is differentiated
        T times); otherwise the stacked terms are differentiated.
      parallel: vectorise the T backward passes (``pfor``) instead of looping.
      chunk: with ``parallel``, at most this many tasks per vectorised pass.
      names: task names; given, a term that depends on no source is an error naming it.
      outputs_tape: optionally, a tape that recorded ``terms`` from the watched ``outputs``
        alone (not the network): the outputs path takes the cotangents from it, one
        backward pass through the losses only.

    Returns:
      One stacked tensor per source (zeros where a term does not reach it).
    """
    sources = list(sources)
    count = len(terms)
    if names is not None:
        check_connected(tape, terms, sources, names)
    if parallel:
        return vectorized.task_gradients(tape, terms, sources, chunk, names)
    if outputs is not None and not _through_own_outputs(terms, outputs, sources):
        outputs = None
    if outputs is None:
        with tape:  # the stacking must be recorded to be differentiated
            targets = [tf.stack([tf.reshape(t, []) for t in terms])]
        cotangent = lambda k: [tf.one_hot(k, count, dtype=targets[0].dtype)]  # noqa: E731
    else:
        targets = list(outputs)
        # d terms[k] / d outputs[k] of each task's own term. When no output is computed from
        # another, the gradient of all terms at once is exactly that (term j reaches the
        # network only through output j), in one backward pass: the tape does not stop at the
        # outputs, so T calls would trace T backward passes through the network. Otherwise
        # the total would also carry task j's term into output k through output j: one call
        # per task.
        if outputs_tape is not None:  # it holds no op between outputs: each term's own
            own = outputs_tape.gradient(list(terms), targets)
        elif _outputs_chained(targets):
            own = [tape.gradient(t, o) for t, o in zip(terms, targets)]
        else:
            own = tape.gradient(list(terms), targets)
        cotangents = [tf.zeros_like(o) if c is None else c for o, c in zip(targets, own)]
        cotangent = lambda k: [c * tf.cast(tf.equal(k, j), c.dtype)  # noqa: E731
                               for j, c in enumerate(cotangents)]
    arrays = [tf.TensorArray(_dtype(s), size=count, element_shape=s.shape) for s in sources]

    def body(k, arrays):
        grads = tape.gradient(targets, sources, output_gradients=cotangent(k),
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return k + 1, [a.write(k, g) for a, g in zip(arrays, grads)]

    _, arrays = tf.while_loop(lambda k, _: k < count, body, (tf.constant(0), arrays),
                              parallel_iterations=ITERATIONS_IN_FLIGHT)
    return [a.stack() for a in arrays]


def map_tasks(fn: Callable[[list], tf.Tensor], stacked: Sequence[tf.Tensor], dtype, *,
              parallel=False, chunk: Optional[int] = None) -> tf.Tensor:
    """``fn`` on row k of every tensor in ``stacked``, for each task k, stacked.

    Args:
      fn: one task's rows (a list, one per element of ``stacked``) -> a tensor of ``dtype``.
      stacked: tensors whose first axis is the task axis.
      dtype: the dtype of ``fn``'s result.
      parallel, chunk: vectorise (``tf.vectorized_map``), at most ``chunk`` tasks at a time.
    """
    if parallel:
        return vectorized.chunked_map(fn, list(stacked), chunk)
    count = int(stacked[0].shape[0])
    results = tf.TensorArray(dtype, size=count)

    def body(k, results):
        return k + 1, results.write(k, fn([s[k] for s in stacked]))

    _, results = tf.while_loop(lambda k, _: k < count, body, (tf.constant(0), results),
                               parallel_iterations=ITERATIONS_IN_FLIGHT)
    return results.stack()


def _dtype(source) -> tf.DType:
    return tf.as_dtype(source.dtype)
