"""The absl entry point shared by the dataset scripts that reproduce published selections
(``python -m <dataset>.reproduce_selection``): flags, selection, printing."""

from __future__ import annotations

from typing import Callable, Sequence

from absl import flags

from tag_tf.cli import errors
from tag_tf.cli.script_flags import check_budgets, parse_budgets
from tag_tf.selection import api
from tag_tf.selection import published

# The flags defined here belong to the calling script (its --help).
flags.disclaim_key_flags()


def define_flags(*, budgets: Sequence[int], output: str) -> None:
    """Defines ``--budgets --output --random_samples`` with the script's defaults."""
    flags.DEFINE_list("budgets", [str(b) for b in budgets], "Budgets (numbers of networks).")
    flags.DEFINE_string("output", output, "Where to write the JSON.")
    flags.DEFINE_integer("random_samples", 1000, "Random groupings per budget (0 to skip).",
                         lower_bound=0)


def main(argv: Sequence[str], tables: Callable[[], Sequence[api.TableSpec]]) -> None:
    """Selects networks from ``tables()`` for every ``--budgets``; prints and writes them."""
    if len(argv) > 1:
        raise errors.UsageError(f"Unexpected arguments: {argv[1:]}. Pass flags only; --help "
                                "lists them.")
    values = flags.FLAGS
    specs = tables()
    budgets = parse_budgets(values.budgets)
    tasks = min(len(published.load_published_table(s.path, field=s.field).tasks)
                for s in specs)
    check_budgets(budgets, tasks)
    report = api.reproduce_tables(tables=specs, budgets=budgets,
                                  random_samples=values.random_samples)
    print(report.text)
    with errors.user_input(OSError, flag="--output", hint="Pass a writable path."):
        api.write_json(values.output, report.payload)
    print(f"\nWrote {values.output}")

