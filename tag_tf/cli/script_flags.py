"""Command-line parsing for scripts that keep their flags in their own absl registry.

Dataset scripts define ``--tasks``, ``--seed``, ``--budgets``... which other tag_tf modules
also define in absl's global registry; a private ``flags.FlagValues`` avoids
``DuplicateFlagError`` when several such modules are imported in one process.
:func:`define_pipeline_flags` defines the runner flags every such script shares.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Mapping, Optional, Sequence

from absl import flags

from tag_tf.cli import errors

# Flags defined here belong to the script calling define_pipeline_flags (its --help).
flags.disclaim_key_flags()

# --lookahead: this project's lookahead, or the dataset's original code's (see its README).
LOOKAHEADS = ("fixed", "original")

# Defaults of define_pipeline_flags; a script overrides them with its own (keyword args).
PIPELINE_FLAG_DEFAULTS: dict[str, Any] = {
    "output_dir": None, "seed": 0, "epochs": 100, "batch_size": 32, "learning_rate": 0.01,
    "every_n": 10, "affinity_batch": "train", "lookahead": "fixed", "lookahead_rule": "optimizer",
    "divide_by_lr": True, "budgets": (), "selection": None, "budget": None,
    "selection_table": None, "uw_clipped": True, "gradnorm_alpha": 0.1,
    "steps_per_epoch": None, "save_weights": False, "tensorboard": False, "verbose": 2,
    "seeds": 1, "bootstrap": 200, "mtl_results": None, "stl_results": None,
    "strategy": "default", "mixed_precision": False, "shard_policy": "data",
    "backup_dir": None, "save_freq": "epoch", "logical_cpus": 0,
    "affinity_measure": "lookahead",
}
STRATEGIES = ("default", "mirrored", "multi_worker")
# Flags that configure distribution, precision and fault tolerance: pipeline.Options fields.
RUNTIME_FLAGS = ("strategy", "mixed_precision", "shard_policy", "backup_dir", "save_freq",
                 "logical_cpus")


def define_pipeline_flags(registry: flags.FlagValues, **defaults: Any) -> None:
    """Defines the :mod:`tag_tf.runner.pipeline` runner flags shared by the dataset scripts.

    Training (``--seed --seeds --epochs --batch_size --learning_rate --steps_per_epoch``),
    affinity (``--every_n --affinity_batch --affinity_measure --lookahead --lookahead_rule
    --divide_by_lr --budgets --bootstrap``), groups (``--selection --budget --selection_table --mtl_results
    --stl_results``), baselines (``--uw_clipped
    --gradnorm_alpha``) and output (``--output_dir --save_weights --tensorboard
    --verbose``), and distribution / fault tolerance (``--strategy --mixed_precision
    --shard_policy --backup_dir --save_freq --logical_cpus``; :func:`runtime_fields` turns
    them into :class:`tag_tf.runner.pipeline.Options` fields). Flags whose meaning differs per
    dataset (``--mode``, ``--tasks``, ``--patience``, ...) stay in the scripts; a script
    that defines ``--mixed_precision`` itself keeps its own.

    Args:
      registry: the script's private flag registry.
      **defaults: the script's defaults, overriding :data:`PIPELINE_FLAG_DEFAULTS`.
    """
    unknown = sorted(set(defaults) - set(PIPELINE_FLAG_DEFAULTS))
    if unknown:
        raise ValueError(f"Unknown pipeline flag(s) {unknown}; known: "
                         f"{sorted(PIPELINE_FLAG_DEFAULTS)}.")
    d = {**PIPELINE_FLAG_DEFAULTS, **defaults}
    at = {"flag_values": registry}
    flags.DEFINE_string("output_dir", d["output_dir"], "Where results go; default "
                        "runs/<dataset>/<mode>.", **at)
    flags.DEFINE_integer("seed", d["seed"], "Seed of initialisation, shuffling and "
                         "augmentation.", **at)
    flags.DEFINE_integer("seeds", d["seeds"], "Train K times with seeds seed, seed+1, ..., "
                         "each run in <output_dir>/seed_<s>/. affinity / cs: the K matrices "
                         "are pooled (mean, between-run standard error) into the top-level "
                         "affinity.json and selected from; other modes: each task's test "
                         "error is reported as mean ± std over the K trainings.", lower_bound=1,
                         **at)
    flags.DEFINE_integer("epochs", d["epochs"], "Maximum epochs per network.", **at)
    flags.DEFINE_integer("batch_size", d["batch_size"], "Training batch size.", **at)
    flags.DEFINE_float("learning_rate", d["learning_rate"], "Initial SGD learning rate.",
                       **at)
    flags.DEFINE_integer("steps_per_epoch", d["steps_per_epoch"], "Steps per epoch "
                         "(default: the script's rule, e.g. the whole training split).", **at)
    flags.DEFINE_integer("every_n", d["every_n"], "affinity / cs: record every n training "
                         "steps.", **at)
    flags.DEFINE_enum("affinity_batch", d["affinity_batch"], ["train", "validation"],
                      "affinity / cs: measure the loss change on the training batch or on a "
                      "validation batch.", **at)
    flags.DEFINE_enum("affinity_measure", d["affinity_measure"], ["lookahead", "taylor"],
                      "affinity: 'lookahead' = TAG's exact Eq. 1 (a forward pass per task on "
                      "every recording step); 'taylor' = Eq. 1 to first order in the step, "
                      "<step_i, grad L_j> / L_j, from the per-task gradients alone (cheaper; "
                      "writes taylor_affinity.*).", **at)
    flags.DEFINE_enum("lookahead", d["lookahead"], list(LOOKAHEADS),
                      "affinity: 'fixed' = this project's lookahead (the original's defects "
                      "fixed); 'original' = the lookahead of the dataset's original code, as "
                      "its published numbers were made (sets --every_n, --lookahead_rule and "
                      "--divide_by_lr; see the dataset's README).", **at)
    flags.DEFINE_enum("lookahead_rule", d["lookahead_rule"], ["sgd", "optimizer"],
                      "affinity: lookahead step; 'optimizer' = the optimizer's own step (e.g. "
                      "SGD with momentum); 'sgd' = theta - lr * g (paper Eq. 1).", **at)
    flags.DEFINE_bool("divide_by_lr", d["divide_by_lr"], "affinity: divide Z by the "
                      "learning rate, as the original code (false: Eq. 1 exactly).", **at)
    flags.DEFINE_list("budgets", [str(b) for b in d["budgets"]], "affinity / cs: select "
                      "networks for these budgets (empty: no selection).", **at)
    flags.DEFINE_integer("bootstrap", d["bootstrap"], "affinity / cs: resamples of the "
                         "selection's robustness check (stability, confidence interval, best "
                         "alternative, margin and verdict in selection.json), resampling the "
                         "epochs or, with --seeds, the runs; 0 = off.", lower_bound=0, **at)
    flags.DEFINE_string("selection", d["selection"], "groups: selection JSON (affinity "
                        "mode's selection.json, python -m tag_tf.select or the dataset's "
                        "reproduce_selection).", **at)
    flags.DEFINE_integer("budget", d["budget"], "groups: which budget of the selection "
                         "file.", **at)
    flags.DEFINE_string("selection_table", d["selection_table"], "groups: which table (TAG, "
                        "CS, HOA) of a reproduce_selection file.", **at)
    flags.DEFINE_string("mtl_results", d["mtl_results"], "groups: results.json of an mtl run "
                        "to compare the total test error with (beat by more than the seed "
                        "spread, or within it).", **at)
    flags.DEFINE_string("stl_results", d["stl_results"], "groups: results.json of an stl run "
                        "to compare with, as --mtl_results.", **at)
    flags.DEFINE_bool("uw_clipped", d["uw_clipped"], "uw / pcgrad: clipped uncertainty "
                      "weights (tag_tf.UncertaintyWeighting(clipped=True)); false: Kendall et "
                      "al.'s log-variance form.", **at)
    flags.DEFINE_float("gradnorm_alpha", d["gradnorm_alpha"], "gradnorm: alpha.", **at)
    flags.DEFINE_bool("save_weights", d["save_weights"], "Write each network's weights to "
                      "the output dir.", **at)
    flags.DEFINE_bool("tensorboard", d["tensorboard"], "Log affinity scalars/heatmaps to "
                      "<output_dir>/tb.", **at)
    flags.DEFINE_integer("verbose", d["verbose"], "Keras fit verbosity.", **at)
    # ---- distribution, precision, fault tolerance (tag_tf.runner.pipeline / tag_tf.training.resume)
    flags.DEFINE_enum("strategy", d["strategy"], list(STRATEGIES),
                      "tf.distribute strategy: 'default' (one device), 'mirrored' (every "
                      "local GPU; without GPUs, every logical CPU, see --logical_cpus) or "
                      "'multi_worker' (MultiWorkerMirroredStrategy; workers from TF_CONFIG). "
                      "--batch_size stays the GLOBAL batch: each of the R replicas gets "
                      "batch_size / R examples (global batch = per-replica batch x replicas), "
                      "so the paper's batch and learning rate hold on any device count.", **at)
    flags.DEFINE_bool("mixed_precision", d["mixed_precision"], "mixed_float16 compute with "
                      "loss scaling (float32 variables and outputs).", **at)
    flags.DEFINE_enum("shard_policy", d["shard_policy"], ["data", "file", "auto"],
                      "multi_worker: how workers split the input (tf.data auto_shard_policy): "
                      "'data' = every worker reads the whole pipeline and keeps its share of "
                      "the batches (right for any pipeline); 'file' = each worker reads its "
                      "own input files (faster; needs at least as many equally sized files "
                      "as workers); 'auto' = file if possible, else data.", **at)
    flags.DEFINE_string("backup_dir", d["backup_dir"], "Back up training to this directory "
                        "(one subdirectory per network) and resume from it after an "
                        "interruption at the exact batch (tag_tf.training.resume); rerun the same "
                        "command to resume.", **at)
    flags.DEFINE_string("save_freq", str(d["save_freq"]), "With --backup_dir: back up every "
                        "N training batches (an integer) or 'epoch'.", **at)
    flags.DEFINE_integer("logical_cpus", d["logical_cpus"], "Split the CPU into this many "
                         "logical devices (0: don't), e.g. to try --strategy=mirrored "
                         "without GPUs.", **at)


def parse_save_freq(value: str) -> int | str:
    """``--save_freq`` as ``"epoch"`` or a positive integer (a usage error otherwise)."""
    if str(value) == "epoch":
        return "epoch"
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise errors.UsageError(f"--save_freq must be 'epoch' or a positive integer (batches). "
                                f"Received: {value!r}")
    return number


def runtime_fields(registry: flags.FlagValues) -> dict[str, Any]:
    """The distribution / precision / backup flags as :class:`tag_tf.runner.pipeline.Options` fields
    (``strategy``, ``shard_policy``, ``backup_dir``, ``save_freq``, ``logical_cpus``, and
    ``mixed_precision``); pass them on with ``**runtime_fields(FLAGS)``.

    With ``--logical_cpus`` it also splits the CPU right away: that must happen before any
    TensorFlow work (e.g. loading the data), so call it first thing in ``main``.
    """
    if registry.logical_cpus:
        from tag_tf.runner import pipeline  # pylint: disable=g-import-not-at-top
        pipeline.split_cpu(registry.logical_cpus)
    return {"strategy": registry.strategy, "mixed_precision": registry.mixed_precision,
            "shard_policy": registry.shard_policy, "backup_dir": registry.backup_dir,
            "save_freq": parse_save_freq(registry.save_freq),
            "logical_cpus": registry.logical_cpus}


def seed_option_fields(registry: flags.FlagValues) -> dict[str, Any]:
    """The :class:`tag_tf.runner.pipeline.Options` fields of ``--seeds --bootstrap --mtl_results
    --stl_results --affinity_measure`` (flags defined by :func:`define_pipeline_flags`)."""
    return {name: registry[name].value
            for name in ("seeds", "bootstrap", "mtl_results", "stl_results",
                         "affinity_measure")}


def own_registry_parser(registry: flags.FlagValues,
                        doc: str) -> Callable[[list[str]], list[str]]:
    """A ``flags_parser`` for ``app.run``: parses ``registry``, then absl's own flags.

    Args:
      registry: the script's private flag registry.
      doc: the script's usage text, printed with ``--help``.
    """

    def parse(argv: list[str]) -> list[str]:
        if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
            print(doc)
            print(registry.get_help(include_special_flags=False))
            raise SystemExit(0)
        try:
            remaining = registry(argv, known_only=True)
            return flags.FLAGS(remaining)
        except flags.Error as e:  # one line, exit status 2 (tag_tf.cli.errors)
            errors.fail(errors.flag_error_message(e))

    return parse


def check_pipeline_inputs(registry: flags.FlagValues, mode: str) -> Any:
    """Reads the files the runner flags name before any training, so that a missing or
    malformed one is a usage error now rather than a traceback after the training.

    ``--selection`` (with ``--budget`` / ``--selection_table``) in mode ``groups``;
    ``--mtl_results`` / ``--stl_results`` (mode ``groups`` only).

    Returns:
      The :class:`tag_tf.runner.pipeline.LoadedSelection` of ``--selection`` in mode
      ``groups``, else None.
    """
    from tag_tf.runner import pipeline  # pylint: disable=g-import-not-at-top
    references = [f"--{name}" for name in ("mtl_results", "stl_results") if registry[name].value]
    if references and mode != "groups":
        raise errors.UsageError(f"{' and '.join(references)} are compared with in "
                                f"--mode=groups only. Received: --mode={mode}")
    for name in ("mtl_results", "stl_results"):
        if registry[name].value:
            with errors.user_input(flag=f"--{name}", hint="Pass the results.json of an "
                                   f"{name[:3]} run."):
                pipeline.load_results(registry[name].value)
    if mode != "groups" or not registry.selection:
        return None
    with errors.user_input(flag="--selection"):
        return pipeline.load_selection(registry.selection, budget=registry.budget,
                                       table=registry.selection_table)


def check_directory(flag: str, path: Optional[str], what: str) -> None:
    """A usage error unless ``path`` (the value of ``flag``; None: not given) is a
    directory; ``what`` says what the directory should hold."""
    if path is not None and not os.path.isdir(path):
        raise errors.UsageError(f"{flag}: no such directory. Received: {flag}={path}. "
                                f"Pass {what}.")


def parse_budgets(values: Sequence[str], flag: str = "--budgets") -> list[int]:
    """``--budgets`` as integers >= 1; a usage error (not a traceback) names a bad value."""
    try:
        budgets = [int(b) for b in values]
    except ValueError as e:
        raise errors.UsageError(f"{flag} must be integers (numbers of networks). Received: "
                                f"{flag}={','.join(values)}") from e
    if any(b < 1 for b in budgets):
        raise errors.UsageError(f"{flag} must be at least 1 (numbers of networks). Received: "
                                f"{flag}={','.join(values)}")
    return budgets


def check_budgets(budgets: Sequence[int], num_tasks: int, flag: str = "--budgets") -> list[int]:
    """``budgets`` unless one exceeds ``num_tasks`` (a usage error naming it).

    At most ``num_tasks`` networks can serve ``num_tasks`` tasks (Fifty et al., Sec. 3.2).
    """
    over = [b for b in budgets if b > num_tasks]
    if over:
        raise errors.UsageError(
            f"{flag}: a budget cannot exceed the number of tasks ({num_tasks}). Received: "
            f"{flag}={','.join(str(b) for b in budgets)}. Pass budgets from 1 to {num_tasks}.")
    return list(budgets)


def lookahead_flags(registry: flags.FlagValues,
                    original: Mapping[str, Any]) -> dict[str, Any]:
    """``--every_n --lookahead_rule --divide_by_lr`` as ``--lookahead`` resolves them.

    Args:
      registry: the script's parsed flag registry.
      original: the dataset's values of those flags under ``--lookahead=original``.

    Returns:
      ``{"lookahead", "every_n", "lookahead_rule", "divide_by_lr"}``: the flags as given
      (``fixed``), or ``original``'s values; a flag given explicitly with another value
      than ``original``'s is a usage error rather than silently overridden.
    """
    names = ("every_n", "lookahead_rule", "divide_by_lr")
    values = {name: registry[name].value for name in names}
    if registry["lookahead"].value == "original":
        clash = [f"--{name}={values[name]}" for name in names
                 if registry[name].present and values[name] != original[name]]
        if clash:
            raise errors.UsageError(f"--lookahead=original sets {dict(original)}; it contradicts "
                                    f"{', '.join(clash)}. Drop those flags, or use "
                                    "--lookahead=fixed to set them yourself.")
        values = {name: original[name] for name in names}
    return {"lookahead": registry["lookahead"].value, **values}


def check_lookahead(lookahead: str) -> None:
    """Raises a ValueError unless ``lookahead`` is one of :data:`LOOKAHEADS`."""
    if lookahead not in LOOKAHEADS:
        raise ValueError(f"lookahead must be one of {LOOKAHEADS}. Received: {lookahead!r}")


def affinity_settings(lookahead: str, original: Mapping[str, Any], *,
                      every_n: Optional[int] = None, lookahead_rule: Optional[str] = None,
                      divide_by_lr: Optional[bool] = None) -> dict[str, Any]:
    """``every_n``, ``lookahead_rule``, ``divide_by_lr`` under ``lookahead``.

    None takes the lookahead's value (``fixed``: :data:`PIPELINE_FLAG_DEFAULTS`'; ``original``:
    the dataset's ``original``); under ``original`` another value is a ValueError.
    """
    check_lookahead(lookahead)
    names = ("every_n", "lookahead_rule", "divide_by_lr")
    base = original if lookahead == "original" else \
        {name: PIPELINE_FLAG_DEFAULTS[name] for name in names}
    given = {"every_n": every_n, "lookahead_rule": lookahead_rule, "divide_by_lr": divide_by_lr}
    out = {name: base[name] if given[name] is None else given[name] for name in names}
    if lookahead == "original" and out != {name: original[name] for name in names}:
        raise ValueError(f"lookahead='original' means {dict(original)}. Received: {given}")
    return out
