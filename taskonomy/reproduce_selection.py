"""Reproduces the paper's Taskonomy network selections from the published tables.

  python -m taskonomy.reproduce_selection [--budgets=1,2,3,4] [--output=...]

Selects at most b networks (b = 1..4; with 5 tasks and no single-task networks, 4 networks
already allow every useful pairing) for the 5 Taskonomy tasks from the TAG affinities and
CS cosine similarities (maximised, no single-task networks) and the HOA pair losses
(minimised, single-task networks scored by the single-task loss), printing/writing the
selections with a random-grouping reference. Note the HOA table uses Standley's letters
(s, d, n, t, k) while TAG/CS use ss_l, depth_l, norm_l, edge2d_l, key_l; see PROVENANCE.md.
"""

import os

from absl import app
from absl import flags

from tag_tf import selection

from taskonomy.published_tables import tables

FLAGS = flags.FLAGS

flags.DEFINE_list("budgets", ["1", "2", "3", "4"], "Budgets (numbers of networks).")
flags.DEFINE_string("output", os.path.join("outputs", "taskonomy_selection.json"),
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
