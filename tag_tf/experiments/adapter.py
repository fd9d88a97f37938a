"""Dataset adapters: what the experiment harness needs to know about a dataset.

An adapter turns settings into a :class:`tag_tf.runner.Experiment` plus its default
:class:`tag_tf.runner.RunConfig`. The harness never names a dataset; it calls

* ``adapter.name`` -- a short label for reports;
* ``adapter.settings()`` -- a JSON dict of *everything* that changes results (data size,
  model size, optimiser, seed ...). It is part of every cache key, so changing a setting
  never reuses a stale training;
* ``adapter.experiment()`` -- the :class:`~tag_tf.runner.Experiment`; called once per
  training (after the global seed is set), it must return *fresh* datasets so a training's
  data order does not depend on the trainings run before it in the process (a reshuffling
  ``tf.data`` dataset continues its shuffle sequence across iterators). Otherwise the
  cache would hold numbers that depend on the order the tables ran in;
* ``adapter.config()`` -- the default :class:`~tag_tf.runner.RunConfig` of its trainings
  (the harness changes settings of it by name, e.g. ``every_n``, and keys its cache on
  the fields that change results).

Table 3 (hyper-parameter sensitivity) also needs

* ``adapter.vary(*, batch_size_scale=1.0, learning_rate_scale=1.0)`` -- a *new* adapter
  training with the batch size and the learning rate multiplied by these factors (the
  batch size rounded to an integer >= 1). Its ``settings()`` must show the change, so its
  trainings get their own cache keys; the original adapter is left unchanged. The other
  tables never call it (``load_adapter`` does not require it).

Runs over several training seeds (``--seeds=K`` of Figure 3 and Table 3) also need

* ``adapter.replicate(k)`` -- a *new* adapter for the ``k``-th further training seed: the
  same problem and examples, another network initialisation and data order. Its
  ``settings()`` must differ from the original's (its own cache keys); see
  :func:`replicate`.

The built-in :class:`SyntheticAdapter` uses :mod:`tag_tf.synthetic` at CPU-small size;
it and :class:`tag_tf.experiments.synthetic_cases.HelpingTasksAdapter` share
:class:`PlantedNetworkAdapter` (network, optimiser, config, ``vary``).
Another dataset's adapter is any object with the same four members (plus ``vary`` for
Table 3); the scripts load one with ``--adapter=package.module:factory``
(``factory(**json.loads(--adapter_args))``). ``isinstance(x, Adapter)`` checks all five.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
from typing import (Any, Callable, Mapping, Optional, Protocol, Sequence,
                    runtime_checkable)

import keras
import tensorflow as tf

from tag_tf import runner
from tag_tf import synthetic


@runtime_checkable
class Adapter(Protocol):
    """The interface every dataset adapter implements (see the module docstring)."""

    name: str

    def settings(self) -> dict: ...

    def experiment(self) -> runner.Experiment: ...

    def config(self) -> runner.RunConfig: ...

    def vary(self, *, batch_size_scale: float = 1.0,
             learning_rate_scale: float = 1.0) -> "Adapter":
        """A new adapter with scaled batch size / learning rate (only Table 3 needs it)."""
        ...


class PlantedNetworkAdapter:
    """What the synthetic adapters share: the planted network, SGD with momentum, MSE,
    fixed epochs, ``vary`` and ``replicate``.

    A subclass is a dataclass with ``batch_size``, ``learning_rate``, ``epochs``,
    ``hidden``, ``bottleneck``, ``head_hidden`` and a ``problem`` (``tasks``,
    ``input_dim``), and defines :meth:`datasets` (train, validation, test),
    :meth:`training_seed` (network initialisation and training seed) and
    :meth:`replicate`.
    """

    activation: str = "tanh"

    def training_seed(self) -> int:
        raise NotImplementedError

    def datasets(self) -> tuple:
        """Fresh ``(train, validation, test)`` datasets."""
        raise NotImplementedError

    def replicate(self, k: int) -> "PlantedNetworkAdapter":
        """The adapter of the ``k``-th training seed of a ``--seeds`` run (``k = 0``: this
        one): same problem and examples, other initialisation and data order."""
        raise NotImplementedError

    def experiment(self) -> runner.Experiment:
        """A new Experiment with fresh datasets (see the module docstring)."""
        problem, seed = self.problem, self.training_seed()
        train, validation, test = self.datasets()
        return runner.Experiment(
            tasks=list(problem.tasks),
            network_fn=lambda tasks: synthetic.planted_network(
                list(tasks), problem.input_dim, hidden=self.hidden,
                bottleneck=self.bottleneck, head_hidden=self.head_hidden, seed=seed,
                activation=self.activation),
            shared=list(synthetic.SHARED_LAYERS),
            loss_fn=lambda task: keras.losses.MeanSquaredError(),
            train_data=train, validation_data=validation, test_data=test,
            optimizer_fn=lambda: keras.optimizers.SGD(self.learning_rate, momentum=0.9),
            error_name="mse",
        )

    def config(self) -> runner.RunConfig:
        """Fixed epochs (no early stopping), the training seed, affinities every 10 steps."""
        return runner.RunConfig().replace(epochs=self.epochs, patience=None,
                                          seed=self.training_seed(), verbose=0, every_n=10)

    def vary(self, *, batch_size_scale: float = 1.0, learning_rate_scale: float = 1.0):
        """A copy with ``batch_size * batch_size_scale`` (rounded, >= 1) and
        ``learning_rate * learning_rate_scale``; same data, model and epochs."""
        check_scales(batch_size_scale, learning_rate_scale)
        return dataclasses.replace(
            self, batch_size=scaled_batch_size(self.batch_size, batch_size_scale),
            learning_rate=self.learning_rate * learning_rate_scale)


@dataclasses.dataclass
class SyntheticAdapter(PlantedNetworkAdapter):
    """Planted-cluster regression tasks (:mod:`tag_tf.synthetic`), small enough for a CPU.

    The error is the test MSE of each task (``error_name = "mse"``). Training runs a fixed
    number of epochs (``patience=None``) so that the affinity windows of Table 2 are
    fractions of a known number of steps. ``seed`` makes the problem, its examples and (by
    default) the training randomness; ``train_seed`` (None: ``seed``) overrides the last
    only -- the network initialisation and the shuffling -- for runs over several seeds
    (:meth:`replicate`).
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
    train_seed: Optional[int] = None
    name: str = "synthetic"

    def __post_init__(self):
        if self.train_seed == self.seed:
            self.train_seed = None  # one setting, one cache key
        self.problem = synthetic.planted_tasks(self.num_tasks, self.num_clusters,
                                               seed=self.seed)

    def settings(self) -> dict:
        values = dataclasses.asdict(self)
        if values["train_seed"] is None:  # keys of single-seed runs stay as they were
            del values["train_seed"]
        values["adapter"] = "tag_tf.experiments.adapter.SyntheticAdapter"
        return values

    @property
    def cluster_of(self) -> dict[str, int]:
        """The planted ground truth: task -> cluster."""
        return dict(zip(self.problem.tasks, self.problem.cluster_of))

    def training_seed(self) -> int:
        return self.seed if self.train_seed is None else self.train_seed

    def replicate(self, k: int) -> "SyntheticAdapter":
        return dataclasses.replace(self, train_seed=self.training_seed() + int(k))

    def datasets(self) -> tuple:
        # Examples from ``seed`` (as PlantedTasks.dataset); only the shuffle follows the
        # training seed, which is ``seed`` unless replicated (then the same ops as before).
        problem, seed, shuffle_seed = self.problem, self.seed, self.training_seed()

        def data(n, k, shuffle):
            x, y = problem.sample(n, seed + k)
            ds = tf.data.Dataset.from_tensor_slices((x, y))
            if shuffle:
                ds = ds.shuffle(n, seed=shuffle_seed + k, reshuffle_each_iteration=True)
            return ds.batch(self.batch_size).prefetch(tf.data.AUTOTUNE)

        return (data(self.train_examples, 1, True), data(self.validation_examples, 2, False),
                data(self.test_examples, 3, False))


def replicate(adapter: Any, k: int) -> Any:
    """The adapter of the ``k``-th training seed of a multi-seed run (``--seeds=K``):
    ``adapter`` itself for ``k = 0``, else ``adapter.replicate(k)``, which must keep the
    problem and its examples and change only the training randomness (initialisation,
    data order), with its own ``settings()`` (so its own cache keys)."""
    if k == 0:
        return adapter
    method = getattr(adapter, "replicate", None)
    if not callable(method):
        raise TypeError(
            f"Several seeds need adapter.replicate(k): an adapter with the same problem and "
            f"data and another training seed. Adapter {getattr(adapter, 'name', adapter)!r} "
            f"({type(adapter).__module__}.{type(adapter).__qualname__}) has none.")
    out = method(k)
    if out.settings() == adapter.settings():
        raise ValueError(f"adapter.replicate({k}) returned the same settings as the adapter: "
                         "its trainings would share cache keys with seed 0.")
    return out


def seed_replicate(adapter: Any, k: int) -> Any:
    """``replicate(k)`` for a dataclass adapter whose ``seed`` field only sets the training
    randomness (initialisation, data order): a copy with ``seed + k``."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be a non-negative integer. Received: k={k!r}")
    return dataclasses.replace(adapter, seed=adapter.seed + k)


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


class AdapterError(ValueError):
    """``--adapter`` / ``--adapter_args`` do not give an adapter (the user's input)."""


class NotAnAdapterError(AdapterError, TypeError):
    """The factory returned an object without the adapter members."""


def adapter_args(args: Any) -> dict:
    """``--adapter_args`` (a JSON object string, a dict or None) as a dict."""
    if isinstance(args, str):
        text = args
        try:
            args = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as e:
            raise AdapterError(f"--adapter_args must be a JSON object of keyword arguments "
                               f"(e.g. '{{\"num_tasks\": 9}}'). Received: {text!r} ({e})") from e
    if args is None:
        return {}
    if not isinstance(args, Mapping):
        raise AdapterError(f"--adapter_args must be a JSON object of keyword arguments. "
                           f"Received: {args!r}")
    return dict(args)


def adapter_factory(spec: str) -> Callable[..., Any]:
    """The factory that ``spec`` (``"synthetic"`` or ``"package.module:factory"``) names.

    Raises:
      AdapterError: a malformed spec, a module that does not exist or a missing or
        non-callable attribute. An error inside an existing module (e.g. its own failing
        import) is not caught: it is a bug in that module, with its traceback.
    """
    if spec == "synthetic":
        return SyntheticAdapter
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr.isidentifier():
        raise AdapterError(f"--adapter must be 'synthetic' or 'module:factory' (e.g. "
                           f"'celeba.adapter:CelebAAdapter'). Received: {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not (module_name == e.name or module_name.startswith(e.name + ".")):
            raise  # the module exists; something it imports does not
        raise AdapterError(f"--adapter {spec!r}: there is no module {e.name!r}. Name a module "
                           "importable from here (run from the folder that holds it, or "
                           "install it).") from e
    factory = getattr(module, attr, None)
    if factory is None:
        raise AdapterError(f"--adapter {spec!r}: module {module_name!r} has no {attr!r}. Name "
                           "the adapter class or factory function after the colon.")
    if not callable(factory):
        raise AdapterError(f"--adapter {spec!r}: {attr!r} is not callable. Received: "
                           f"{type(factory).__name__}")
    return factory


def load_adapter(spec: str, args: Any = None) -> Adapter:
    """``"synthetic"`` or ``"package.module:factory"``; ``args`` (dict or JSON string) are
    passed as keyword arguments to the factory (or to :class:`SyntheticAdapter`).

    Raises:
      AdapterError: (a ValueError) the spec or the arguments do not give an adapter
        (:func:`adapter_factory`, :func:`adapter_args`, arguments the factory does not
        take); :class:`NotAnAdapterError` (also a TypeError) when the result lacks the
        adapter members. The factory's own ValueErrors (bad argument values) pass through.
    """
    return build_adapter(adapter_factory(spec), args, spec)


def build_adapter(factory: Callable[..., Any], args: Any, spec: str) -> Adapter:
    """``factory(**args)``, checked as :func:`load_adapter` says (``spec``: its name)."""
    args = adapter_args(args)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no introspectable signature: let the call decide
        signature = None
    if signature is not None:
        try:
            signature.bind(**args)
        except TypeError as e:
            raise AdapterError(f"--adapter_args do not fit {spec!r}: {e}. Received: "
                               f"{json.dumps(args)}") from e
    adapter = factory(**args)
    missing = [m for m in ("name", "settings", "experiment", "config")
               if not hasattr(adapter, m)]
    if missing:
        raise NotAnAdapterError(f"Adapter {spec!r} lacks {missing} (see "
                                "tag_tf.experiments.adapter).")
    return adapter
