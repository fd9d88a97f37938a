"""Flags shared by the table scripts (``python -m tag_tf.experiments.<table>``)."""

from __future__ import annotations

import os
from typing import Any, Callable

from absl import flags

from tag_tf.cli import errors
from tag_tf.cli.script_flags import check_budgets, parse_budgets
from tag_tf.experiments import adapter as adapter_lib
from tag_tf.experiments.harness import Harness, make_deterministic

FLAGS = flags.FLAGS


def define_flags(default_output: str) -> None:
    flags.DEFINE_string("adapter", "synthetic",
                        "'synthetic' or 'package.module:factory' returning an adapter "
                        "(see tag_tf.experiments.adapter).")
    flags.DEFINE_string("adapter_args", "",
                        'JSON keyword arguments for the adapter, e.g. \'{"num_tasks": 9}\'.')
    flags.DEFINE_string("output_dir", default_output, "Where to write the table/plot/JSON.")
    flags.DEFINE_string("cache_dir", "runs/cache",
                        "Training cache shared by all tables (reruns reuse trainings).")
    flags.DEFINE_list("budgets", ["2", "3", "4"], "Network budgets.")
    flags.DEFINE_integer("rg_samples", 2, "Random groupings trained per budget (RG).",
                         lower_bound=0)
    flags.DEFINE_integer("seed", 0, "Seed of the random groupings.")
    flags.DEFINE_integer("seeds", 1,
                         "Training seeds (figure3, table3): every method runs once per seed "
                         "(adapter.replicate(k): same problem and data, other initialisation "
                         "and data order; cached per seed) and each number is reported as "
                         "mean ± std over the seeds.", lower_bound=1)
    flags.DEFINE_bool("deterministic", True,
                      "Op determinism and one inter-op thread (harness.make_deterministic): "
                      "the same settings give the same numbers in any process (what the "
                      "cache assumes).")


def no_arguments(argv) -> None:
    """Positional arguments are a mistake (every input is a flag)."""
    if len(argv) > 1:
        raise errors.UsageError(f"Unexpected arguments: {list(argv[1:])}. Pass flags only; "
                                "--help lists them.")


def budgets() -> list[int]:
    """``--budgets`` as integers >= 1 (a usage error otherwise)."""
    return parse_budgets(FLAGS.budgets)


def load_adapter_from_flags(load: Callable[[str, str], Any] = adapter_lib.load_adapter) -> Any:
    """The adapter of ``--adapter`` / ``--adapter_args``; their mistakes (no such module or
    factory, bad JSON, arguments the factory does not take or rejects) are usage errors."""
    with errors.user_input(ValueError):
        return load(FLAGS.adapter, FLAGS.adapter_args)


def harness_from_flags() -> Harness:
    """The harness of ``--adapter``, after checking the flags against its tasks."""
    if FLAGS.deterministic:
        make_deterministic()
    adapter = load_adapter_from_flags()
    with errors.user_input(OSError, flag="--cache_dir"):
        os.makedirs(FLAGS.cache_dir, exist_ok=True)
    harness = Harness(adapter, FLAGS.cache_dir)
    # An explicit budget above the task count is a mistake; the default budgets (2, 3, 4)
    # above it are skipped (Harness.select), so small adapters run with the defaults.
    if FLAGS["budgets"].present:
        check_budgets(budgets(), len(harness.tasks))
    return harness
