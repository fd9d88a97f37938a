"""Reproduces the paper's CelebA network selections from the published tables.

  python -m celeba.reproduce_selection [--budgets=1,...,8] [--output=...]

Selects at most b networks (b = 1..8) for the 9 CelebA attributes from the TAG affinities,
the CS cosine similarities (both maximised, no single-task networks) and the HOA pair
results (validation error = 100 - accuracy, exactly as the notebook computes it, minimised,
single-task networks scored by the single-task error), and prints/writes the selections
with a random-grouping reference. Tables: ``celeba/published`` (see PROVENANCE.md).
"""

import os

from absl import app
from absl import flags

from tag_tf import selection

from celeba.published_tables import tables

FLAGS = flags.FLAGS

flags.DEFINE_list("budgets", [str(b) for b in range(1, 9)], "Budgets (numbers of networks).")
flags.DEFINE_string("output", os.path.join("outputs", "celeba_selection.json"),
                    "Where to write the JSON.")
flags.DEFINE_integer("random_samples", 1000, "Random groupings per budget (0 to skip).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    budgets = [int(b) for b in FLAGS.budgets]
    report = selection.reproduce_tables(tables=tables(), budgets=budgets,
                                        output_path=FLAGS.output,
                                        random_samples=FLAGS.random_samples)
    print(report.text)
    print(f"\nWrote {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
