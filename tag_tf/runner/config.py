"""One typed configuration of a run: how to train, what to record, select and run on.

:class:`RunConfig` holds four frozen sections and the number of seeds::

    RunConfig(training=TrainingConfig(epochs=100, patience=10),
              affinity=tag_tf.AffinityConfig(every_n=10),      # the library's own class
              selection=SelectionConfig(budgets=(2, 3)),
              runtime=RuntimeConfig(strategy="mirrored"),
              seeds=3)

Every field is a :func:`tag_tf.cli.flags.setting`: its help is the command-line flag's help,
and its metadata says whether it changes results. :meth:`RunConfig.result_json` keeps
exactly those (the experiment harness's cache key); :meth:`RunConfig.to_json` keeps
everything (every ``results.json`` records it). Settings are also changed by their flag
names: ``config.replace(epochs=3, every_n=1, lookahead_rule="sgd")``.

Adding an option to a run is adding one field here (with its help) and using it where the
run needs it: the flag, the JSON, the cache key and ``--help`` follow.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping, Optional, Sequence

from tag_tf.cli import flags as flags_lib
from tag_tf.cli.flags import Name, setting
from tag_tf.core.config import AffinityConfig

SECTIONS = ("training", "affinity", "selection", "runtime")
STRATEGIES = ("default", "mirrored", "multi_worker")
SHARD_POLICIES = ("data", "file", "auto")
# What the affinity mode may record as its measure (config.affinity.measures[0]).
AFFINITY_MEASURES = ("lookahead", "taylor")


def _check(ok: bool, name: str, value: Any, what: str) -> None:
    """One-line ValueError naming the field and the received value."""
    if not ok:
        raise ValueError(f"{name} must be {what}. Received: {name}={value!r}")


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """How each network trains (the paper's defaults where it says)."""

    epochs: int = setting(100, help="Maximum epochs per network.")
    patience: Optional[int] = setting(
        10, kind="integer", parse=lambda v: None if v < 0 else v,
        format=lambda v: -1 if v is None else v,
        help="Early-stopping patience (epochs) on the summed (unweighted) validation loss, "
        "the best epoch's weights restored; -1 (None) disables early stopping (every epoch "
        "trained, the final weights kept).")
    seed: int = setting(0, help="Seed of initialisation, shuffling and augmentation "
                        "(keras.utils.set_random_seed before each network).")
    steps_per_epoch: Optional[int] = setting(
        None, help="Steps per epoch (default: the script's rule, e.g. the whole training "
        "split).")
    uw_clipped: bool = setting(
        True, help="uw / pcgrad: clipped uncertainty weights (tag_tf.UncertaintyWeighting("
        "clipped=True), as the original CelebA code); false: Kendall et al.'s log-variance "
        "form.")
    gradnorm_alpha: float = setting(0.1, help="gradnorm: alpha.")

    def __post_init__(self):
        _check(self.epochs >= 1, "epochs", self.epochs, ">= 1")
        _check(self.patience is None or self.patience >= 0, "patience", self.patience,
               ">= 0 or None")
        _check(self.steps_per_epoch is None or self.steps_per_epoch >= 1, "steps_per_epoch",
               self.steps_per_epoch, ">= 1 or None")


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
    """What is selected from the recorded affinities, and what ``groups`` trains."""

    budgets: tuple[int, ...] = setting(
        (), parse=flags_lib.int_list, help="affinity / cs: select networks for these budgets "
        "(those above the number of tasks are dropped; empty: no selection).")
    bootstrap: int = setting(
        200, lower_bound=0, help="affinity / cs: resamples of the selection's robustness check "
        "(stability, confidence interval, best alternative, margin and verdict in "
        "selection.json), resampling the epochs (one run: at best 'stable within this run') "
        "or, with --seeds >= 2, the runs and then their epochs (can say 'robust' across "
        "seeds); 0 = off.")
    time_limit: float = setting(
        60.0, flag="selection_time_limit", help="affinity / cs: seconds per budget for the "
        "large selection solver, used above 16 tasks; each selection reports its certified "
        "gap ('optimal' only when proven).")
    affinity_epochs: Literal["all", "until_best"] = setting(
        "all", help="affinity / cs: average the affinities (and select) over all epochs, or, "
        "when early stopping triggers, only up to the best epoch (the original CelebA code).")
    selection_path: Optional[str] = setting(
        None, flag="selection", help="groups: selection JSON (affinity mode's selection.json, "
        "python -m tag_tf.select or the dataset's reproduce_selection).")
    budget: Optional[int] = setting(
        None, help="groups: which budget of the selection file; affinity / cs: the budget "
        "whose networks the heatmap outlines (default: the first).")
    table: Optional[str] = setting(
        None, flag="selection_table", help="groups: which table (TAG, CS, HOA) of a "
        "reproduce_selection file.")
    mtl_results: Optional[str] = setting(
        None, help="groups: results.json of an mtl run to compare the total test error with "
        "(beat by more than the seed spread, or within it).")
    stl_results: Optional[str] = setting(
        None, help="groups: results.json of an stl run to compare with, as --mtl_results.")

    def __post_init__(self):
        object.__setattr__(self, "budgets", tuple(int(b) for b in self.budgets))
        _check(self.bootstrap >= 0, "bootstrap", self.bootstrap, ">= 0")
        _check(self.time_limit > 0, "selection_time_limit", self.time_limit, "> 0 seconds")
        _check(self.affinity_epochs in ("all", "until_best"), "affinity_epochs",
               self.affinity_epochs, "'all' or 'until_best'")


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """Where and how the trainings run: devices, precision, backups, logs."""

    strategy: Literal["default", "mirrored", "multi_worker"] = setting(
        "default", help="tf.distribute strategy: 'default' (one device), 'mirrored' (every "
        "local GPU; without GPUs, every logical CPU, see --logical_cpus) or 'multi_worker' "
        "(MultiWorkerMirroredStrategy; workers from TF_CONFIG). --batch_size stays the GLOBAL "
        "batch: each of the R replicas gets batch_size / R examples (global batch = "
        "per-replica batch x replicas), so the paper's batch and learning rate hold on any "
        "device count.")
    mixed_precision: bool = setting(
        False, help="mixed_float16 compute with loss scaling (float32 variables and outputs).")
    shard_policy: Literal["data", "file", "auto"] = setting(
        "data", help="multi_worker: how workers split the input (tf.data auto_shard_policy): "
        "'data' = every worker reads the whole pipeline and keeps its share of the batches "
        "(right for any pipeline); 'file' = each worker reads its own input files (faster; "
        "needs at least as many equally sized files as workers); 'auto' = file if possible, "
        "else data.")
    backup_dir: Optional[str] = setting(
        None, results=False, help="Back up training to this directory (one subdirectory per "
        "network) and resume from it after an interruption at the exact batch "
        "(tag_tf.training.resume); rerun the same command to resume.")
    save_freq: int | str = setting(
        "epoch", results=False, kind="string", parse=flags_lib.epoch_or_int,
        help="With --backup_dir: back up every N training batches (an integer) or 'epoch'.")
    logical_cpus: int = setting(
        0, results=False, help="Split the CPU into this many logical devices (0: don't), e.g. "
        "to try --strategy=mirrored without GPUs.")
    save_weights: bool = setting(
        False, results=False, help="Write each network's weights to the output dir "
        "(network_<k>.weights.h5).")
    tensorboard: bool = setting(
        False, results=False, help="Log affinity scalars/heatmaps to <output_dir>/tb.")
    verbose: int = setting(2, results=False, help="Keras fit verbosity.")

    def __post_init__(self):
        _check(self.strategy in STRATEGIES, "strategy", self.strategy, f"one of {STRATEGIES}")
        _check(self.shard_policy in SHARD_POLICIES, "shard_policy", self.shard_policy,
               f"one of {SHARD_POLICIES}")
        _check(self.save_freq == "epoch" or (isinstance(self.save_freq, int)
                                             and not isinstance(self.save_freq, bool)
                                             and self.save_freq >= 1),
               "save_freq", self.save_freq, "'epoch' or a positive integer")
        _check(self.logical_cpus >= 0, "logical_cpus", self.logical_cpus, ">= 0")


def _measure(value: Any) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _window(value: Any) -> Any:
    """``--affinity_window``: a name (first, middle, final), ``start,end`` or ``""``."""
    text = flags_lib.optional_text(value) if isinstance(value, str) else value
    if isinstance(text, str) and "," in text:
        return tuple(float(v) for v in text.split(","))
    return text


def _parallel(value: Any) -> bool | int:
    """``--affinity_parallel``: false, true or a positive number of tasks per pass."""
    text = str(value).strip().lower()
    if text in ("false", "true"):
        return text == "true"
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"must be false, true or a positive integer. Received: {value!r}")
    return number


# The affinity section is the library's own AffinityConfig; these are its flags.
AFFINITY_NAMES = (
    Name("every_n", "every_n", "affinity / cs: record every n training steps.", "integer"),
    Name("lookahead_rule", "rule", "affinity: lookahead step; 'optimizer' = the optimizer's "
         "own step (e.g. SGD with momentum); 'sgd' = theta - lr * g (paper Eq. 1).", "enum",
         ("sgd", "optimizer")),
    Name("divide_by_lr", "divide_by_lr", "affinity: divide Z by the learning rate, as the "
         "original code (false: Eq. 1 exactly).", "bool"),
    Name("affinity_batch", "batch", "affinity / cs: measure the loss change on the training "
         "batch or on a validation batch.", "enum", ("train", "validation")),
    Name("affinity_measure", "measures", "affinity: 'lookahead' = TAG's exact Eq. 1 (a "
         "forward pass per task on every recording step); 'taylor' = Eq. 1 to first order in "
         "the step, <step_i, grad L_j> / L_j, from the per-task gradients alone (cheaper; "
         "writes taylor_affinity.*). Further measures recorded by any recording mode follow "
         "it in AffinityConfig.measures.", "enum", AFFINITY_MEASURES, parse=_measure,
         format=lambda measures: measures[0]),
    Name("affinity_window", "window", "affinity / cs: record only in part of training: "
         "first, middle or final (25 %), or 'start,end' fractions; empty: all of training.",
         "string", parse=_window,
         format=lambda w: None if w is None else (w if isinstance(w, str)
                                                   else ",".join(f"{v:g}" for v in w))),
    Name("lookahead_scale", "lookahead_scale", "affinity: the lookahead step uses "
         "lr * lookahead_scale (1: Eq. 1's step).", "float"),
    Name("affinity_step_range", "step_range", "Record only in these global steps "
         "(start, end).", "list", flag=False),
    Name("cosine_kernels_only", "cosine_kernels_only", "cs: cosine over kernels only.",
         "bool", flag=False),
    Name("stderr_block", "stderr_block", "Blocks of the batch-means standard error.",
         "string", flag=False),
    Name("affinity_parallel", "parallel", "affinity / cs: run a recording step's per-task "
         "backward passes and lookahead forwards as batched passes (same affinities, faster "
         "at many tasks, more memory): 'false', 'true', or at most N tasks per pass.",
         "string", parse=_parallel, format=str),
)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a run of :func:`tag_tf.runner.run` is configured by.

    Attributes:
      training: :class:`TrainingConfig`.
      affinity: the recording modes' :class:`tag_tf.AffinityConfig` (``validation_data`` is
        filled in by the runner); ``measures[0]`` is what the ``affinity`` mode records
        (``"lookahead"`` or ``"taylor"``), ``measures[1:]`` are recorded beside any
        recording mode's own measure (``cs`` records ``"cosine"``).
      selection: :class:`SelectionConfig`.
      runtime: :class:`RuntimeConfig`.
      seeds: train K times with seeds ``seed, seed + 1, ...``.
    """

    training: TrainingConfig = setting(default_factory=TrainingConfig, help="Training.")
    affinity: AffinityConfig = setting(default_factory=AffinityConfig, help="Recording.",
                                       names=AFFINITY_NAMES)
    selection: SelectionConfig = setting(default_factory=SelectionConfig, help="Selection.")
    runtime: RuntimeConfig = setting(default_factory=RuntimeConfig, help="Runtime.")
    seeds: int = setting(
        1, lower_bound=1, help="Train K times with seeds seed, seed+1, ..., each run in "
        "<output_dir>/seed_<s>/. affinity / cs: the K matrices are pooled (mean, between-run "
        "standard error) into the top-level affinity.json and selected from; other modes: "
        "each task's test error is reported as mean ± std over the K trainings.")

    def __post_init__(self):
        _check(isinstance(self.seeds, int) and self.seeds >= 1, "seeds", self.seeds, ">= 1")
        for name, cls in (("training", TrainingConfig), ("affinity", AffinityConfig),
                          ("selection", SelectionConfig), ("runtime", RuntimeConfig)):
            value = getattr(self, name)
            _check(isinstance(value, cls), name, type(value).__name__, f"a {cls.__name__}")
        _check(self.affinity.measures[0] in AFFINITY_MEASURES, "affinity_measure",
               self.affinity.measures[0], f"one of {AFFINITY_MEASURES} (what the affinity "
               "mode records; other measures may follow it)")

    def replace(self, **values: Any) -> "RunConfig":
        """A copy with settings changed by their flag names (``epochs=3``,
        ``lookahead_rule="sgd"``, ``affinity_window="first"``, ``selection="sel.json"``) or
        field names where unambiguous (``selection_path``), or whole sections
        (``affinity=AffinityConfig(...)``)."""
        sections = {k: values.pop(k) for k in list(values)
                    if k in SECTIONS and dataclasses.is_dataclass(values[k])}
        config = dataclasses.replace(self, **sections) if sections else self
        return flags_lib.replace(config, **values) if values else config

    def to_json(self) -> dict:
        """Every setting, as JSON (``from_json`` restores it)."""
        return {"training": _section_json(self.training),
                "affinity": self.affinity.to_json(),
                "selection": _section_json(self.selection),
                "runtime": _section_json(self.runtime),
                "seeds": self.seeds}

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> "RunConfig":
        """Restores :meth:`to_json` (missing keys take their defaults)."""
        return cls(training=_section(TrainingConfig, payload.get("training")),
                   affinity=AffinityConfig.from_json(dict(payload.get("affinity") or {})),
                   selection=_section(SelectionConfig, payload.get("selection")),
                   runtime=_section(RuntimeConfig, payload.get("runtime")),
                   seeds=int(payload.get("seeds", 1)))

    def result_json(self, sections: Sequence[str] = SECTIONS) -> dict:
        """The settings that change results (field metadata ``results``), as JSON.

        ``sections``: the sections that matter (a mode that records nothing leaves the
        affinity section out: see :meth:`tag_tf.runner.modes.Mode.result_json`). The
        experiment harness keys its cache on this.
        """
        unknown = sorted(set(sections) - set(SECTIONS))
        if unknown:
            raise ValueError(f"sections must be among {SECTIONS}. Received: {unknown}")
        out: dict[str, Any] = {}
        for name in SECTIONS:
            if name in sections:
                section = getattr(self, name)
                out[name] = (section.to_json() if name == "affinity"
                             else _section_json(section, results_only=True))
        out["seeds"] = self.seeds
        return out


def _section_json(section: Any, *, results_only: bool = False) -> dict:
    out = {}
    for field in dataclasses.fields(section):
        meta = field.metadata.get("tag_tf.setting")
        if results_only and meta is not None and not meta.results:
            continue
        value = getattr(section, field.name)
        out[field.name] = list(value) if isinstance(value, tuple) else value
    return out


def _section(cls: type, values: Optional[Mapping[str, Any]]) -> Any:
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; fields: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
