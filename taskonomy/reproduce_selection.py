"""Reproduces the paper's Taskonomy network selections from the published tables.

  python -m taskonomy.reproduce_selection [--budgets=1,2,3,4] [--output=...]
  # default --output: runs/taskonomy/published_selection.json

Selects at most b networks (b = 1..4; with 5 tasks and no single-task networks, 4 networks
already allow every useful pairing) for the 5 Taskonomy tasks from the TAG affinities and
CS cosine similarities (maximised, no single-task networks) and the HOA pair losses
(minimised, single-task networks scored by the single-task loss), printing/writing the
selections with a random-grouping reference. The files label tasks as published (HOA by
Standley's letters s, d, n, t, k; TAG/CS by the loss keys ss_l, depth_l, ...; see
PROVENANCE.md); every table is printed and written with the task names (segment_semantic,
depth_zbuffer, normal, edge_texture, keypoints2d), as ``taskonomy.main`` names them.
"""

import tag_tf.cli.quiet  # noqa: F401  (first: quiets TensorFlow's C++ logs without a GPU)

import os

from tag_tf.cli import errors
from tag_tf.selection import reproduce_cli

from taskonomy.published_tables import tables

reproduce_cli.define_flags(budgets=(1, 2, 3, 4),
                           output=os.path.join("runs", "taskonomy", "published_selection.json"))


def main(argv):
    reproduce_cli.main(argv, tables)


if __name__ == "__main__":
    errors.run(main)
