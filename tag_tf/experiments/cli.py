"""Flags shared by the table scripts (``python -m tag_tf.experiments.<table>``)."""

from __future__ import annotations

import os

from absl import flags

from tag_tf.experiments import adapter as adapter_lib
from tag_tf.experiments.harness import Harness, make_deterministic
from tag_tf.cli.script_flags import parse_budgets

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
    flags.DEFINE_integer("rg_samples", 2, "Random groupings trained per budget (RG).")
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


def budgets() -> list[int]:
    return parse_budgets(FLAGS.budgets)


def harness_from_flags() -> Harness:
    if FLAGS.deterministic:
        make_deterministic()
    adapter = adapter_lib.load_adapter(FLAGS.adapter, FLAGS.adapter_args)
    os.makedirs(FLAGS.cache_dir, exist_ok=True)
    return Harness(adapter, FLAGS.cache_dir)
