"""The absl entry point shared by the dataset scripts that reproduce published selections
(``python -m <dataset>.reproduce_selection``): flags, selection, printing."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from absl import flags

from tag_tf.cli import checks
from tag_tf.cli import errors
from tag_tf.cli import flags as flags_lib
from tag_tf.cli.flags import setting
from tag_tf.selection import api
from tag_tf.selection import published

# The flags defined here belong to the calling script (its --help).
flags.disclaim_key_flags()


@dataclasses.dataclass(frozen=True)
class Args:
    """The flags of a ``reproduce_selection`` script."""

    budgets: tuple[int, ...] = setting((1, 2, 3), parse=flags_lib.int_list,
                                       help="Budgets (numbers of networks).")
    output: str = setting("selection.json", help="Where to write the JSON.")
    random_samples: int = setting(1000, lower_bound=0,
                                  help="Random groupings per budget (0 to skip).")


def define_flags(*, budgets: Sequence[int], output: str) -> None:
    """Defines ``--budgets --output --random_samples`` with the script's defaults."""
    flags_lib.define_flags(Args, instance=Args(budgets=tuple(budgets), output=output))


def main(argv: Sequence[str], tables: Callable[[], Sequence[api.TableSpec]]) -> None:
    """Selects networks from ``tables()`` for every ``--budgets``; prints and writes them."""
    if len(argv) > 1:
        raise errors.UsageError(f"Unexpected arguments: {argv[1:]}. Pass flags only; --help "
                                "lists them.")
    args = flags_lib.read_flags(Args)
    specs = tables()
    budgets = checks.parse_budgets(args.budgets)
    tasks = min(len(published.load_published_table(s.path, field=s.field).tasks)
                for s in specs)
    checks.check_budgets(budgets, tasks)
    report = api.reproduce_tables(tables=specs, budgets=budgets,
                                  random_samples=args.random_samples)
    print(report.text)
    with errors.user_input(OSError, flag="--output", hint="Pass a writable path."):
        api.write_json(args.output, report.payload)
    print(f"\nWrote {args.output}")
