"""Flags shared by the table scripts (``python -m tag_tf.experiments.<table>``).

Each table's flags are a dataclass of :func:`tag_tf.cli.flags.setting` fields
(:class:`HarnessArgs`, extended by a table with its own), defined and read back by
:mod:`tag_tf.cli.flags` like every other script's.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Optional

from absl import flags

from tag_tf.cli import checks
from tag_tf.cli import errors
from tag_tf.cli import flags as flags_lib
from tag_tf.cli.flags import setting
from tag_tf.experiments import adapter as adapter_lib
from tag_tf.experiments.harness import Harness, make_deterministic

FLAGS = flags.FLAGS
# Flags defined here belong to the table script calling define_flags (its --help).
flags.disclaim_key_flags()


@dataclasses.dataclass(frozen=True)
class HarnessArgs:
    """The flags every table shares."""

    adapter: str = setting("synthetic", help="'synthetic' or 'package.module:factory' "
                           "returning an adapter (see tag_tf.experiments.adapter).")
    adapter_args: str = setting("", help="JSON keyword arguments for the adapter, e.g. "
                                "'{\"num_tasks\": 9}'.")
    output_dir: str = setting("runs/table", help="Where to write the table/plot/JSON.")
    cache_dir: str = setting("runs/cache", help="Training cache shared by all tables (reruns "
                             "reuse trainings).")
    budgets: tuple[int, ...] = setting((2, 3, 4), parse=flags_lib.int_list,
                                       help="Network budgets.")
    rg_samples: int = setting(2, lower_bound=0,
                              help="Random groupings trained per budget (RG).")
    seed: int = setting(0, help="Seed of the random groupings.")
    seeds: int = setting(
        1, lower_bound=1, help="Training seeds (figure3, table3): every method runs once per "
        "seed (adapter.replicate(k): same problem and data, other initialisation and data "
        "order; cached per seed) and each number is reported as mean ± std over the seeds.")
    deterministic: bool = setting(
        True, help="Op determinism and one inter-op thread (harness.make_deterministic): the "
        "same settings give the same numbers in any process (what the cache assumes).")


def define_flags(default_output: str, args: type = HarnessArgs, **defaults: Any) -> None:
    """Defines a table's flags (``args``: :class:`HarnessArgs` or a subclass) in absl's
    registry, with ``--output_dir`` defaulting to ``default_output``."""
    flags_lib.define_flags(args, FLAGS, instance=args(output_dir=default_output, **defaults))


def no_arguments(argv) -> None:
    """Positional arguments are a mistake (every input is a flag)."""
    if len(argv) > 1:
        raise errors.UsageError(f"Unexpected arguments: {list(argv[1:])}. Pass flags only; "
                                "--help lists them.")


def read_args(args: type = HarnessArgs) -> Any:
    """The parsed flags as ``args``; ``--budgets`` must be integers >= 1."""
    parsed = flags_lib.read_flags(args, FLAGS)
    checks.parse_budgets(parsed.budgets)
    return parsed


def load_adapter_from_flags(args: HarnessArgs,
                            load: Callable[[str, str], Any] = adapter_lib.load_adapter) -> Any:
    """The adapter of ``--adapter`` / ``--adapter_args``; their mistakes (no such module or
    factory, bad JSON, arguments the factory does not take or rejects) are usage errors."""
    with errors.user_input(ValueError):
        return load(args.adapter, args.adapter_args)


def harness_from_flags(args: Optional[HarnessArgs] = None) -> Harness:
    """The harness of ``--adapter`` (made deterministic first under ``--deterministic``),
    after checking the flags against its tasks."""
    args = args or read_args()
    if args.deterministic:
        make_deterministic()
    adapter = load_adapter_from_flags(args)
    with errors.user_input(OSError, flag="--cache_dir"):
        os.makedirs(args.cache_dir, exist_ok=True)
    harness = Harness(adapter, args.cache_dir)
    # An explicit budget above the task count is a mistake; the default budgets (2, 3, 4)
    # above it are skipped (Harness.select), so small adapters run with the defaults.
    if FLAGS["budgets"].present:
        checks.check_budgets(args.budgets, len(harness.tasks))
    return harness
