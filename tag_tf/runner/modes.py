"""The runner's modes in one registry: what each trains, records and writes.

A mode is one :class:`Mode` entry: its name, which networks it trains (all tasks in one,
one per task, or a selection's), the affinity measure it records (if any) and the training
method (``MultiTaskModel`` keyword arguments). A new weighting or gradient method is one
more entry, e.g.::

    register(Mode("mydwa", "DWA at T=1", method=lambda config, experiment:
                  {"weighting": tag_tf.DWA(temperature=1.0)}))

and ``--mode=mydwa`` on the dataset scripts follows (their ``--mode`` choices are
:data:`MODES` plus their own). Output files: ``results.json`` always; a recording mode also
writes ``<stem>.{json,npz,png}`` per measure (stems: :data:`tag_tf.io.callbacks.FILE_STEMS`)
and, with budgets, ``selection.json``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Literal, Optional

from tag_tf.io.callbacks import FILE_STEMS
from tag_tf.runner.config import AFFINITY_MEASURES, RunConfig

if TYPE_CHECKING:
    from tag_tf.runner.experiment import Experiment

RESULTS_FILE = "results.json"
SELECTION_FILE = "selection.json"
# Mode.measure of the affinity mode: the configured measure, config.affinity.measures[0].
CONFIGURED = "configured"

Method = Callable[[RunConfig, "Experiment"], dict]


def _plain(config: RunConfig, experiment: "Experiment") -> dict:
    del config, experiment
    return {}


def _uw(config: RunConfig, experiment: "Experiment") -> dict:
    del experiment
    import tag_tf  # pylint: disable=g-import-not-at-top
    return {"weighting": tag_tf.UncertaintyWeighting(clipped=config.training.uw_clipped)}


def _gradnorm(config: RunConfig, experiment: "Experiment") -> dict:
    import tag_tf  # pylint: disable=g-import-not-at-top
    alpha = config.training.gradnorm_alpha
    if experiment.gradnorm_fn is not None:
        return {"weighting": experiment.gradnorm_fn(alpha)}
    return {"weighting": tag_tf.GradNorm(alpha=alpha, layer=experiment.gradnorm_layer)}


def _pcgrad(config: RunConfig, experiment: "Experiment") -> dict:
    import tag_tf  # pylint: disable=g-import-not-at-top
    return {**_uw(config, experiment), "gradient": tag_tf.PCGrad(seed=config.training.seed)}


def _dwa(config: RunConfig, experiment: "Experiment") -> dict:
    del config, experiment
    import tag_tf  # pylint: disable=g-import-not-at-top
    return {"weighting": tag_tf.DynamicWeightAverage()}


def _mgda(config: RunConfig, experiment: "Experiment") -> dict:
    del config, experiment
    import tag_tf  # pylint: disable=g-import-not-at-top
    return {"gradient": tag_tf.MGDA()}


@dataclasses.dataclass(frozen=True)
class Mode:
    """One mode of :func:`tag_tf.runner.run`.

    Attributes:
      name: the ``--mode`` name.
      description: one line for ``--help`` and the docs.
      networks: ``"all"`` (one network on all tasks), ``"each"`` (one per task) or
        ``"selection"`` (the networks of ``config.selection.selection_path``).
      measure: the affinity measure it records (:data:`CONFIGURED`: the config's first
        measure), or None (no recording).
      method: ``method(config, experiment)`` -> ``MultiTaskModel`` keyword arguments
        (``weighting``, ``gradient``).
    """

    name: str
    description: str
    networks: Literal["all", "each", "selection"] = "all"
    measure: Optional[str] = None
    method: Method = _plain

    @property
    def records(self) -> bool:
        """Whether the mode records affinities (and may select networks)."""
        return self.measure is not None

    def measure_of(self, config: RunConfig) -> Optional[str]:
        """The measure the mode records and selects from (None: no recording)."""
        if self.measure != CONFIGURED:
            return self.measure
        measure = config.affinity.measures[0]
        if measure not in AFFINITY_MEASURES:
            raise ValueError(f"The {self.name} mode records one of {AFFINITY_MEASURES}. "
                             f"Received: affinity_measure={measure!r}")
        return measure

    def measures_of(self, config: RunConfig) -> tuple[str, ...]:
        """Every measure recorded: the mode's own, then ``config.affinity.measures[1:]``."""
        own = self.measure_of(config)
        if own is None:
            return ()
        return (own,) + tuple(m for m in config.affinity.measures[1:] if m != own)

    def result_json(self, config: RunConfig) -> dict:
        """The settings of ``config`` that change this mode's results (a cache key): the
        affinity section only for a recording mode, the selection section only for modes
        that select or read a selection."""
        sections = ["training", "runtime"]
        if self.records:
            sections.append("affinity")
        if self.records or self.networks == "selection":
            sections.append("selection")
        out = config.result_json(sections)
        if self.records:  # what is recorded, not how the config spells it
            out["affinity"]["measures"] = list(self.measures_of(config))
        return out

    def files(self, config: RunConfig) -> tuple[str, ...]:
        """The files the mode writes into the output directory."""
        out = [RESULTS_FILE]
        for measure in self.measures_of(config):
            out += [FILE_STEMS[measure] + ext for ext in (".json", ".npz", ".png")]
        if self.records and config.selection.budgets:
            out.append(SELECTION_FILE)
        return tuple(out)


REGISTRY: dict[str, Mode] = {}


def register(mode: Mode) -> Mode:
    """Adds ``mode`` to the registry (a new method is one entry); returns it."""
    if mode.name in REGISTRY:
        raise ValueError(f"Mode {mode.name!r} is already registered.")
    if mode.networks not in ("all", "each", "selection"):
        raise ValueError(f"networks must be 'all', 'each' or 'selection'. Received: "
                         f"networks={mode.networks!r}")
    REGISTRY[mode.name] = mode
    return mode


for _mode in (
        Mode("affinity", "TAG: one network on all tasks recording the lookahead affinity "
             "(Eq. 1), then network selection", measure=CONFIGURED),
        Mode("cs", "The same with the gradient cosine similarity baseline", measure="cosine"),
        Mode("mtl", "One network on all tasks, summed loss"),
        Mode("stl", "One network per task", networks="each"),
        Mode("uw", "Uncertainty weighting", method=_uw),
        Mode("gradnorm", "GradNorm", method=_gradnorm),
        Mode("pcgrad", "PCGrad with uncertainty weighting (as the original CelebA code)",
             method=_pcgrad),
        Mode("dwa", "Dynamic Weight Average (Liu et al., 2019; temperature 2)", method=_dwa),
        Mode("mgda", "MGDA-UB (Sener and Koltun, 2018): min-norm combination of the task "
             "gradients at the shared representation", method=_mgda),
        Mode("groups", "Train a selection's networks; each task from its serving network",
             networks="selection")):
    register(_mode)


def names() -> tuple[str, ...]:
    """The registered mode names, in registration order."""
    return tuple(REGISTRY)


# The built-in modes (names() also lists those registered later).
MODES = names()


def get(name: str) -> Mode:
    """The :class:`Mode` called ``name`` (a ValueError naming the choices otherwise)."""
    if name not in REGISTRY:
        raise ValueError(f"mode must be one of {names()}. Received: mode={name!r}")
    return REGISTRY[name]


def measure_of(name: str, config: RunConfig = RunConfig()) -> Optional[str]:
    """The measure mode ``name`` records under ``config`` (None: it records none)."""
    return get(name).measure_of(config)


def mode_of_measure(measure: str) -> str:
    """The mode that records ``measure`` as its own (``"lookahead"`` -> ``"affinity"``)."""
    for mode in REGISTRY.values():
        if mode.measure == measure or (mode.measure == CONFIGURED
                                       and measure in AFFINITY_MEASURES):
            return mode.name
    raise ValueError(f"No mode records {measure!r}. Received: measure={measure!r}")


def describe() -> str:
    """One line per mode (for ``--help``)."""
    return "; ".join(f"{m.name}: {m.description}" for m in REGISTRY.values())
