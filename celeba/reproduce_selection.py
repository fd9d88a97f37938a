"""Reproduces the paper's CelebA network selections from the published tables.

  python -m celeba.reproduce_selection [--budgets=1,...,8] [--output=...]
  # default --output: runs/celeba/published_selection.json

Selects at most b networks (b = 1..8) for the 9 CelebA attributes from the TAG affinities,
the CS cosine similarities (both maximised, no single-task networks) and the HOA pair
results (validation error = 100 - accuracy, exactly as the notebook computes it, minimised,
single-task networks scored by the single-task error), and prints/writes the selections
with a random-grouping reference. Tables: ``celeba/published`` (see PROVENANCE.md).
"""

import tag_tf.cli.quiet  # noqa: F401  (first: quiets TensorFlow's C++ logs without a GPU)

import os

from tag_tf.cli import errors
from tag_tf.selection import reproduce_cli

from celeba.published_tables import tables

reproduce_cli.define_flags(budgets=range(1, 9),
                           output=os.path.join("runs", "celeba", "published_selection.json"))


def main(argv):
    reproduce_cli.main(argv, tables)


if __name__ == "__main__":
    errors.run(main)
