"""Per-task losses resolved from ``compile(loss=..., loss_weights=...)``.

TAG needs each task's loss separately (to differentiate and to re-evaluate it
after a lookahead step); Keras only exposes their weighted sum. The specs given
to ``compile`` are resolved here once, with Keras' own reduction and
sample-weight handling (``keras.losses.Loss.__call__``).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, NamedTuple, Sequence

import keras


def loss_name(spec: Any, fn: Any) -> str:
    """A name for a function loss that is also a valid TF name scope.

    As Keras' ``compile``: a string keeps its name, otherwise the object's ``name``,
    ``__name__`` or class name, snake-cased with non-word characters dropped (a lambda is
    ``"lambda"``, a ``functools.partial`` ``"partial"``).
    """
    if isinstance(spec, str):
        raw = spec
    else:
        raw = getattr(fn, "name", None) or getattr(fn, "__name__", None) or \
            type(fn).__name__
    name = re.sub(r"\W+", "", str(raw))
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
    return name or "loss"


def _same_rank(x1, x2):
    """Keras' rule for function losses: a trailing size-1 axis is dropped (or, against a
    rank-1 tensor, added) so that ``y_true`` and ``y_pred`` have the same rank."""
    r1, r2 = len(x1.shape), len(x2.shape)
    if r1 == r2 + 1 and x1.shape[-1] == 1:
        return (x1, keras.ops.expand_dims(x2, -1)) if r2 == 1 else (keras.ops.squeeze(x1, -1), x2)
    if r2 == r1 + 1 and x2.shape[-1] == 1:
        return (keras.ops.expand_dims(x1, -1), x2) if r1 == 1 else (x1, keras.ops.squeeze(x2, -1))
    return x1, x2


class _FunctionLoss(keras.losses.Loss):
    """A ``fn(y_true, y_pred)`` loss (function, lambda, partial, callable object) with
    Keras' default reduction and the rank matching of Keras' own wrapper."""

    def __init__(self, fn, name: str):
        super().__init__(name=name)
        self.fn = fn

    def call(self, y_true, y_pred):
        y_true, y_pred = _same_rank(keras.ops.convert_to_tensor(y_true),
                                    keras.ops.convert_to_tensor(y_pred))
        return self.fn(y_true, y_pred)


def task_outputs(outputs: Any, tasks: Sequence[str]) -> dict:
    """The network's outputs as a dict keyed by task (a dict, or a list in task order)."""
    if isinstance(outputs, Mapping):
        missing = [t for t in tasks if t not in outputs]
        if missing:
            raise ValueError(f"The network's outputs lack task(s) {missing}. "
                             f"Outputs: {sorted(outputs)}")
        return {t: outputs[t] for t in tasks}
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    if len(outputs) != len(tasks):
        raise ValueError(f"The network returned {len(outputs)} outputs for "
                         f"{len(tasks)} tasks {list(tasks)}.")
    return dict(zip(tasks, outputs))


class TaskLosses(NamedTuple):
    """Loss object and weight per task, in task order."""

    tasks: list[str]
    losses: list[keras.losses.Loss]
    weights: list[float]

    def compute(self, y_true: Mapping[str, Any], y_pred: Mapping[str, Any],
                sample_weight: Any = None, *, weighted: bool = True) -> list:
        """Each task's loss (times its weight when ``weighted``), as ``floatx`` scalars."""
        dtype = keras.config.floatx()
        values = []
        for task, loss, weight in zip(self.tasks, self.losses, self.weights):
            task_weight = sample_weight[task] if isinstance(sample_weight, Mapping) \
                else sample_weight
            value = keras.ops.cast(loss(y_true[task], y_pred[task], sample_weight=task_weight),
                                   dtype)
            values.append(value)
        return self.weigh(values) if weighted else values

    def weigh(self, values: Sequence[Any]) -> list:
        """Each task's loss times its weight (weights of 1 leave the value as it is)."""
        return [v * w if w != 1.0 else v for v, w in zip(values, self.weights)]


def _resolve_one(task: str, spec: Any) -> keras.losses.Loss:
    if spec is None:
        raise ValueError(f"Task {task!r} has no loss; every task needs one for TAG.")
    if isinstance(spec, str) and spec.lower() in ("crossentropy", "ce"):
        raise ValueError(f"Task {task!r}: the shape-dependent shorthand {spec!r} is not "
                         "supported; name the crossentropy explicitly.")
    try:
        loss = keras.losses.get(spec)
    except ValueError as e:
        raise ValueError(f"Task {task!r}: unknown loss {spec!r}.") from e
    if isinstance(loss, keras.losses.Loss):
        return loss
    if not callable(loss):
        raise ValueError(f"Task {task!r}: the loss must be a name, a Loss or a callable. "
                         f"Received: {spec!r}")
    return _FunctionLoss(loss, name=loss_name(spec, loss))


def _per_task(tasks: Sequence[str], value: Any, what: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(tasks))
        if unknown:
            raise ValueError(f"{what} names unknown task(s) {unknown}; the model's tasks are "
                             f"{list(tasks)}.")
        return dict(value)
    if isinstance(value, (list, tuple)):
        if len(value) != len(tasks):
            raise ValueError(f"{what} is a list of {len(value)} but the model has "
                             f"{len(tasks)} tasks {list(tasks)}.")
        return dict(zip(tasks, value))
    return {task: value for task in tasks}


def resolve_task_losses(tasks: Sequence[str], loss: Any,
                        loss_weights: Any = None) -> TaskLosses:
    """Resolves compile's ``loss`` and ``loss_weights`` to one loss and weight per task.

    Args:
      tasks: the model's task names.
      loss: one loss for every task, a list in task order, or a dict keyed by task.
      loss_weights: None (all 1), a float for every task, a list, or a dict
        (tasks left out get 1).

    Returns:
      A :class:`TaskLosses`.
    """
    if loss is None:
        raise ValueError("compile() needs a loss for every task. Received: loss=None")
    specs = _per_task(tasks, loss, "loss")
    missing = [t for t in tasks if t not in specs]
    if missing:
        raise ValueError(f"compile(loss=...) has no loss for task(s) {missing}; every task "
                         f"needs one. Tasks: {list(tasks)}")
    weights = _per_task(tasks, 1.0 if loss_weights is None else loss_weights, "loss_weights")
    resolved_weights = []
    for task in tasks:
        weight = float(weights.get(task, 1.0))
        if not weight >= 0 or weight == float("inf"):
            raise ValueError(f"Loss weight of task {task!r} must be finite and >= 0. "
                             f"Received: {weight}")
        resolved_weights.append(weight)
    return TaskLosses(list(tasks), [_resolve_one(t, specs[t]) for t in tasks], resolved_weights)
