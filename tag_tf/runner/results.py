"""Typed results of a run and their ``results.json`` form.

:func:`tag_tf.runner.run` returns a :class:`RunResult` (one :class:`NetworkResult` per
trained network) and writes its :meth:`RunResult.to_json` as ``results.json``::

  {"format", "mode", "tasks", "error_name", "config" (every setting of the run),
   "experiment" (the dataset's own settings), "seconds",
   "networks": [{"tasks", "serves", "epochs_run", "best_epoch", "stopped_early",
                 "best_validation_loss", "seconds", "history": {key: [per epoch]},
                 "test": {task: {"error", "loss"}}, "test_split", "replicas"}],
   "test_error": {task: error of its serving network}, "test_loss": {task: ...},
   "total_test_error": sum over tasks, "mean_test_error": mean over tasks,
   "affinity": {"measure", "path", "tasks", "matrix", "epochs_used"}   # recording modes
   "selection": {"path", "budgets", "solver", "selections", "uncertainty"}
   "groups": {"selection_path", "budget", "table", "comparisons"},     # groups
   "bad_input_files": {"count", "first": [{"path", "reason"}]}}  # input files dropped

``bad_input_files`` is there only when the dataset dropped missing or unreadable input
files (its ``skip_bad_files``; :attr:`Experiment.bad_input_files`): how many, and the first
ones (:data:`tag_tf.io.bad_files.FIRST`) with what is wrong with each.

With several seeds it adds ``"seeds"``, ``"runs"`` (per seed: ``test_error``,
``test_loss``, ``total_test_error``, ``mean_test_error``) and ``<key>_std`` beside those
keys, which then hold the mean over the runs. A :class:`RunResult` reads like that JSON too
(``result["test_error"]``), and :meth:`RunResult.from_json` reads any such file, including
format ``v1`` (which had ``"options"`` instead of ``"config"``).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import json
import math
from typing import Any, Iterator, Mapping, Optional

import numpy as np

from tag_tf.io import affinity_io
from tag_tf.io import atomic
from tag_tf.runner.config import RunConfig

RESULTS_FORMAT = "tag_tf.runner/v2"
_READABLE_FORMATS = (RESULTS_FORMAT, "tag_tf.runner.pipeline/v1")
SUMMED_KEYS = ("test_error", "test_loss", "total_test_error", "mean_test_error")


def finite(value: Any) -> Optional[float]:
    """``float(value)``, or None when it is not finite (JSON has no NaN)."""
    value = float(value)
    return value if math.isfinite(value) else None


def encode_matrix(matrix: Any) -> list[list[Optional[float]]]:
    """A matrix as JSON rows, non-finite entries as null (:func:`affinity_io.decode_matrix`
    reads it back)."""
    return [[finite(v) for v in row] for row in np.asarray(matrix, dtype=np.float64)]


class _JsonView(collections.abc.Mapping):
    """Read access to an object's JSON form by key (``result["test_error"]``)."""

    def _json(self) -> dict:
        cached = self.__dict__.get("_json_cache")
        if cached is None:
            cached = self.to_json()  # pytype: disable=attribute-error
            object.__setattr__(self, "_json_cache", cached)
        return cached

    def __getitem__(self, key: str) -> Any:
        return self._json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._json())

    def __len__(self) -> int:
        return len(self._json())


@dataclasses.dataclass(frozen=True, eq=False)
class NetworkResult(_JsonView):
    """One trained network: its tasks, training history and test results."""

    tasks: tuple[str, ...]
    serves: tuple[str, ...]
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    best_validation_loss: Optional[float]
    seconds: float
    history: Mapping[str, list]  # per epoch, non-finite values as None
    test: Mapping[str, Mapping[str, Optional[float]]]  # task -> {"error", "loss"}
    test_split: str = "test"
    replicas: int = 1
    seed: Optional[int] = None  # the training seed, in a run of several seeds
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    _KEYS = ("tasks", "epochs_run", "best_epoch", "stopped_early", "best_validation_loss",
             "seconds", "history", "test", "test_split", "replicas", "serves")

    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in self._KEYS}
        out["tasks"], out["serves"] = list(self.tasks), list(self.serves)
        out["history"] = {k: list(v) for k, v in self.history.items()}
        out["test"] = {t: dict(v) for t, v in self.test.items()}
        if self.seed is not None:
            out["seed"] = self.seed
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> "NetworkResult":
        known = set(cls._KEYS) | {"seed"}
        tasks = tuple(payload["tasks"])
        return cls(tasks=tasks, serves=tuple(payload.get("serves", tasks)),
                   epochs_run=int(payload["epochs_run"]), best_epoch=int(payload["best_epoch"]),
                   stopped_early=bool(payload["stopped_early"]),
                   best_validation_loss=payload.get("best_validation_loss"),
                   seconds=float(payload["seconds"]), history=dict(payload.get("history", {})),
                   test=dict(payload.get("test", {})),
                   test_split=payload.get("test_split", "test"),
                   replicas=int(payload.get("replicas", 1)), seed=payload.get("seed"),
                   extra={k: v for k, v in payload.items() if k not in known})

    def with_(self, **changes: Any) -> "NetworkResult":
        """A copy with fields changed (the JSON view is rebuilt)."""
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True, eq=False)
class AffinityResult(_JsonView):
    """The affinity a recording mode recorded (pooled over the seeds of a multi-seed run)."""

    measure: str
    path: Optional[str]  # the affinity JSON (None when nothing was written)
    tasks: tuple[str, ...]
    matrix: np.ndarray  # [source, target]
    epochs_used: Any  # the epochs of the mean (per seed: {seed: [...]})
    stderr: Optional[np.ndarray] = None  # pooled runs: the between-run standard error
    pooled_seeds: Optional[tuple[int, ...]] = None
    seed_paths: Optional[tuple[Optional[str], ...]] = None
    warning: Optional[str] = None

    def to_json(self) -> dict:
        out = {"measure": self.measure, "path": self.path, "tasks": list(self.tasks),
               "matrix": encode_matrix(self.matrix), "epochs_used": self.epochs_used}
        if self.stderr is not None:
            out["stderr"] = encode_matrix(self.stderr)
        if self.pooled_seeds is not None:
            out["pooled_seeds"] = list(self.pooled_seeds)
            out["seed_paths"] = list(self.seed_paths or ())
        if self.warning:
            out["warning"] = self.warning
        return out

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> "AffinityResult":
        stderr = payload.get("stderr")
        pooled = payload.get("pooled_seeds")
        return cls(measure=payload["measure"], path=payload.get("path"),
                   tasks=tuple(payload["tasks"]),
                   matrix=affinity_io.decode_matrix(payload["matrix"]),
                   epochs_used=payload.get("epochs_used"),
                   stderr=None if stderr is None else affinity_io.decode_matrix(stderr),
                   pooled_seeds=None if pooled is None else tuple(pooled),
                   seed_paths=None if pooled is None else tuple(payload.get("seed_paths", ())),
                   warning=payload.get("warning"))


@dataclasses.dataclass(frozen=True, eq=False)
class RunResult(_JsonView):
    """What one :func:`tag_tf.runner.run` produced (see the module docstring).

    ``std`` holds the ``<key>_std`` entries of a multi-seed run (keys of
    :data:`SUMMED_KEYS`); ``extra`` anything else a caller added (kept through JSON).
    """

    mode: str
    tasks: tuple[str, ...]
    config: Optional[RunConfig]  # None only for a v1 file (its "options" are in extra)
    seconds: float
    networks: tuple[NetworkResult, ...]
    test_error: Mapping[str, Optional[float]]
    test_loss: Mapping[str, Optional[float]]
    total_test_error: Optional[float]
    mean_test_error: Optional[float]
    error_name: str = "loss"
    experiment: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    affinity: Optional[AffinityResult] = None
    selection: Optional[Mapping[str, Any]] = None
    groups: Optional[Mapping[str, Any]] = None
    seeds: Optional[tuple[int, ...]] = None
    runs: Optional[tuple[Mapping[str, Any], ...]] = None
    std: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Input files dropped as missing or unreadable: {"count", "first": [{"path", "reason"}]}
    # (tag_tf.io.bad_files.BadFiles.to_json); None when none were.
    bad_input_files: Optional[Mapping[str, Any]] = None

    def to_json(self) -> dict:
        out: dict[str, Any] = {"format": RESULTS_FORMAT, "mode": self.mode,
                               "tasks": list(self.tasks), "error_name": self.error_name,
                               "config": None if self.config is None else self.config.to_json(),
                               "experiment": dict(self.experiment), "seconds": self.seconds}
        if self.seeds is not None:
            out["seeds"] = list(self.seeds)
            out["runs"] = [dict(r) for r in self.runs or ()]
        out["networks"] = [n.to_json() for n in self.networks]
        for key in SUMMED_KEYS:
            value = getattr(self, key)
            out[key] = dict(value) if isinstance(value, Mapping) else value
            if key + "_std" in self.std:
                out[key + "_std"] = self.std[key + "_std"]
        for key in ("affinity", "selection", "groups"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value.to_json() if key == "affinity" else dict(value)
        if self.bad_input_files is not None:
            out["bad_input_files"] = {"count": int(self.bad_input_files["count"]),
                                      "first": [dict(e) for e in self.bad_input_files["first"]]}
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> "RunResult":
        """Reads :meth:`to_json` (also the ``v1`` format of earlier versions)."""
        fmt = payload.get("format", RESULTS_FORMAT)
        if fmt not in _READABLE_FORMATS:
            raise ValueError(f"Unknown results format {fmt!r}; readable: {_READABLE_FORMATS}")
        known = {"format", "mode", "tasks", "error_name", "config", "experiment", "seconds",
                 "seeds", "runs", "networks", "affinity", "selection", "groups",
                 "bad_input_files",
                 *SUMMED_KEYS, *(k + "_std" for k in SUMMED_KEYS)}
        affinity = payload.get("affinity")
        seeds = payload.get("seeds")
        return cls(
            mode=payload["mode"], tasks=tuple(payload["tasks"]),
            config=RunConfig.from_json(payload["config"]) if payload.get("config") else None,
            seconds=float(payload.get("seconds", 0.0)),
            networks=tuple(NetworkResult.from_json(n) for n in payload.get("networks", [])),
            test_error=dict(payload["test_error"]), test_loss=dict(payload.get("test_loss", {})),
            total_test_error=payload.get("total_test_error"),
            mean_test_error=payload.get("mean_test_error"),
            error_name=payload.get("error_name", "loss"),
            experiment=dict(payload.get("experiment") or {}),
            affinity=None if affinity is None else AffinityResult.from_json(affinity),
            selection=payload.get("selection"), groups=payload.get("groups"),
            seeds=None if seeds is None else tuple(seeds),
            runs=None if seeds is None else tuple(payload.get("runs", ())),
            std={k + "_std": payload[k + "_std"] for k in SUMMED_KEYS if k + "_std" in payload},
            bad_input_files=payload.get("bad_input_files"),
            extra={k: v for k, v in payload.items() if k not in known})

    def replace(self, **changes: Any) -> "RunResult":
        """A copy with fields changed (e.g. ``extra``); the JSON view is rebuilt."""
        return dataclasses.replace(self, **changes)


def write_results(path: str, results: RunResult | Mapping[str, Any]) -> None:
    """Writes results as indented JSON (non-finite numbers are an error: they are null)."""
    payload = results.to_json() if isinstance(results, RunResult) else dict(results)
    atomic.atomic_write_json(path, payload, indent=1, allow_nan=False)


def read_json(path: str, what: str) -> Any:
    """``json.load`` of ``path`` with clear errors naming ``what`` is missing or malformed."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e


def load_results(path: str) -> RunResult:
    """Reads a runner ``results.json`` (one seed or several, this format or v1)."""
    payload = read_json(path, "Results file")
    if not isinstance(payload, dict) or "test_error" not in payload:
        raise ValueError(f"{path} is not a pipeline results.json (no 'test_error').")
    return RunResult.from_json(payload)
