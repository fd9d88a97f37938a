"""Dataset adapters: what the experiment harness needs to know about a dataset.

An adapter turns settings into a :class:`tag_tf.pipeline.Experiment` plus default
:class:`tag_tf.pipeline.Options`. The harness never names a dataset; it calls

* ``adapter.name`` -- a short label for reports;
* ``adapter.settings()`` -- a JSON dict of *everything* that changes results (data size,
  model size, optimiser, seed ...). It is part of every cache key, so changing a setting
  never reuses a stale training;
* ``adapter.experiment()`` -- the :class:`~tag_tf.pipeline.Experiment`; called once per
  training (after the global seed is set), it must return *fresh* datasets so a training's
  data order does not depend on the trainings run before it in the process (a reshuffling
  ``tf.data`` dataset continues its shuffle sequence across iterators). Otherwise the
  cache would hold numbers that depend on the order the tables ran in;
* ``adapter.options()`` -- the default training :class:`~tag_tf.pipeline.Options`.

Table 3 (hyper-parameter sensitivity) also needs

* ``adapter.vary(*, batch_size_scale=1.0, learning_rate_scale=1.0)`` -- a *new* adapter
  training with the batch size and the learning rate multiplied by these factors (the
  batch size rounded to an integer >= 1). Its ``settings()`` must show the change, so its
  trainings get their own cache keys; the original adapter is left unchanged. The other
  tables never call it (``load_adapter`` does not require it).

The built-in :class:`SyntheticAdapter` uses :mod:`tag_tf.synthetic` at CPU-small size.
Another dataset's adapter is any object with the same four members (plus ``vary`` for
Table 3); the scripts load one with ``--adapter=package.module:factory``
(``factory(**json.loads(--adapter_args))``). ``isinstance(x, Adapter)`` checks all five.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from typing import Any, Protocol, Sequence, runtime_checkable

import keras

from tag_tf import pipeline
from tag_tf import synthetic


@runtime_checkable
class Adapter(Protocol):
    """The interface every dataset adapter implements (see the module docstring)."""

    name: str

    def settings(self) -> dict: ...

    def experiment(self) -> pipeline.Experiment: ...

    def options(self) -> pipeline.Options: ...

    def vary(self, *, batch_size_scale: float = 1.0,
             learning_rate_scale: float = 1.0) -> "Adapter":
        """A new adapter with scaled batch size / learning rate (only Table 3 needs it)."""
        ...


@dataclasses.dataclass
class SyntheticAdapter:
    """Planted-cluster regression tasks (:mod:`tag_tf.synthetic`), small enough for a CPU.

    The error is the test MSE of each task (``error_name = "mse"``). Training runs a fixed
    number of epochs (``patience=None``) so that the affinity windows of Table 2 are
    fractions of a known number of steps.
    """

    num_tasks: int = 6
    num_clusters: int = 3
    train_examples: int = 2048
    validation_examples: int = 512
    test_examples: int = 1024
    batch_size: int = 64
    learning_rate: float = 0.05
    epochs: int = 10
    hidden: int = 32
    bottleneck: int = 4
    head_hidden: int = 8
    seed: int = 0
    name: str = "synthetic"

    def __post_init__(self):
        self.problem = synthetic.planted_tasks(self.num_tasks, self.num_clusters,
                                               seed=self.seed)

    def settings(self) -> dict:
        values = dataclasses.asdict(self)
        values["adapter"] = "tag_tf.experiments.adapter.SyntheticAdapter"
        return values

    @property
    def cluster_of(self) -> dict[str, int]:
        """The planted ground truth: task -> cluster."""
        return dict(zip(self.problem.tasks, self.problem.cluster_of))

    def experiment(self) -> pipeline.Experiment:
        """A new Experiment with fresh datasets (see the module docstring)."""
        problem, seed = self.problem, self.seed
        data = lambda n, s, shuffle: problem.dataset(  # noqa: E731
            n, batch_size=self.batch_size, seed=s, shuffle=shuffle)
        return pipeline.Experiment(
            tasks=list(problem.tasks),
            network_fn=lambda tasks: synthetic.planted_network(
                list(tasks), problem.input_dim, hidden=self.hidden,
                bottleneck=self.bottleneck, head_hidden=self.head_hidden, seed=seed),
            shared=list(synthetic.SHARED_LAYERS),
            loss_fn=lambda task: keras.losses.MeanSquaredError(),
            train_data=data(self.train_examples, seed + 1, True),
            validation_data=data(self.validation_examples, seed + 2, False),
            test_data=data(self.test_examples, seed + 3, False),
            optimizer_fn=lambda: keras.optimizers.SGD(self.learning_rate, momentum=0.9),
            error_name="mse",
        )

    def options(self) -> pipeline.Options:
        return pipeline.Options(epochs=self.epochs, patience=None, seed=self.seed, verbose=0,
                                every_n=10)

    def vary(self, *, batch_size_scale: float = 1.0,
             learning_rate_scale: float = 1.0) -> "SyntheticAdapter":
        """A copy with ``batch_size * batch_size_scale`` (rounded, >= 1) and
        ``learning_rate * learning_rate_scale``; same data, model and epochs."""
        check_scales(batch_size_scale, learning_rate_scale)
        return dataclasses.replace(
            self, batch_size=scaled_batch_size(self.batch_size, batch_size_scale),
            learning_rate=self.learning_rate * learning_rate_scale)


def check_scales(batch_size_scale: float, learning_rate_scale: float) -> None:
    """Raises ValueError unless both ``vary`` factors are finite and positive."""
    for name, value in (("batch_size_scale", batch_size_scale),
                        ("learning_rate_scale", learning_rate_scale)):
        if not (isinstance(value, (int, float)) and 0 < value < float("inf")):
            raise ValueError(f"{name} must be a positive number. Received: {value!r}")


def check_positive(adapter: Any, fields: Sequence[str]) -> None:
    """Raises ValueError naming every field of ``adapter`` in ``fields`` that is not > 0."""
    bad = {k: getattr(adapter, k) for k in fields if not getattr(adapter, k) > 0}
    if bad:
        raise ValueError(f"{type(adapter).__name__}: must be positive. Received: {bad}")


def scaled_batch_size(batch_size: int, scale: float) -> int:
    """``batch_size * scale`` rounded to an integer >= 1 (what ``vary`` trains with)."""
    return max(1, int(round(batch_size * scale)))


def dataclass_settings(adapter: Any, adapter_id: str,
                       exclude: Sequence[str] = ("verbose",)) -> dict:
    """``settings()`` of a dataclass adapter: every field but ``exclude`` (fields that do not
    change the numbers), tuples as lists, plus ``"adapter": adapter_id``."""
    values = {k: list(v) if isinstance(v, tuple) else v
              for k, v in dataclasses.asdict(adapter).items() if k not in exclude}
    return {"adapter": adapter_id, **values}


def load_adapter(spec: str, args: Any = None) -> Adapter:
    """``"synthetic"`` or ``"package.module:factory"``; ``args`` (dict or JSON string) are
    passed as keyword arguments to the factory (or to :class:`SyntheticAdapter`)."""
    if isinstance(args, str):
        args = json.loads(args) if args.strip() else {}
    args = dict(args or {})
    if spec == "synthetic":
        adapter = SyntheticAdapter(**args)
    else:
        module_name, _, attr = spec.partition(":")
        if not attr:
            raise ValueError(f"--adapter must be 'synthetic' or 'module:factory'. "
                             f"Received: {spec!r}")
        adapter = getattr(importlib.import_module(module_name), attr)(**args)
    missing = [m for m in ("name", "settings", "experiment", "options")
               if not hasattr(adapter, m)]
    if missing:
        raise TypeError(f"Adapter {spec!r} lacks {missing} (see tag_tf.experiments.adapter).")
    return adapter
