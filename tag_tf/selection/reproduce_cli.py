"""The absl entry point shared by the dataset scripts that reproduce published selections
(``python -m <dataset>.reproduce_selection``): flags, selection, printing."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from absl import app
from absl import flags

from tag_tf.cli import flags as flags_lib
from tag_tf.cli.flags import setting
from tag_tf.selection import api

# The flags defined here belong to the calling script (its --help).
flags.disclaim_key_flags()


@dataclasses.dataclass(frozen=True)
class Args:
    """The flags of a ``reproduce_selection`` script."""

    budgets: tuple[int, ...] = setting((1, 2, 3), parse=flags_lib.int_list,
                                       help="Budgets (numbers of networks).")
    output: str = setting("selection.json", help="Where to write the JSON.")
    random_samples: int = setting(1000, help="Random groupings per budget (0 to skip).")


def define_flags(*, budgets: Sequence[int], output: str) -> None:
    """Defines ``--budgets --output --random_samples`` with the script's defaults."""
    flags_lib.define_flags(Args, instance=Args(budgets=tuple(budgets), output=output))


def main(argv: Sequence[str], tables: Callable[[], Sequence[api.TableSpec]]) -> None:
    """Selects networks from ``tables()`` for every ``--budgets``; prints and writes them."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    args = flags_lib.read_flags(Args)
    report = api.reproduce_tables(tables=tables(), budgets=list(args.budgets),
                                  output_path=args.output, random_samples=args.random_samples)
    print(report.text)
    print(f"\nWrote {args.output}")
