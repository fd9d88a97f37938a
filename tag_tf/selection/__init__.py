"""Network selection for Task Affinity Grouping (Fifty et al., NeurIPS 2021, Sec. 3.2).

Given an inter-task affinity matrix ``A[source, target]`` choose at most ``b`` multi-task
networks; each task is served by the chosen network that scores it best (score onto ``t``
= mean of ``A[s, t]`` over the network's other members ``s``). Solvers:

* :func:`solve_subset_dp` — exact, dynamic programming over subsets (up to ~16 tasks).
* :func:`solve_milp` — exact, set-partitioning MILP on HiGHS (cross-check, small n).
* :func:`solve_exhaustive` — reference oracle (network combinations or partitions).
* :func:`solve_large` — 20-60 tasks: local search + column generation, certified gap.
* :func:`select_networks` — picks one of the above for a list of budgets.

Baselines: :func:`select_cs`, :func:`select_hoa`, :func:`random_groupings`.

Robustness: ``select_networks(..., uncertainty=Uncertainty(...))`` bootstraps the affinities
and reports per budget stability, an objective interval, the best alternative and a verdict
that names its evidence (:mod:`tag_tf.selection.robustness`): one run can only be "stable
within this run"; "robust" across seeds needs 2+ runs pooled (``Uncertainty.from_record`` of
:func:`tag_tf.io.affinity_io.pool_records`' result).
"""

from tag_tf.selection.api import (SelectionReport, TableSpec, format_robustness,
                                  format_selection, format_selections, reproduce_tables,
                                  run_selection)
from tag_tf.selection.baselines import (RandomGroupings, hoa_matrix, random_groupings,
                                        select_cs, select_hoa)
from tag_tf.selection.exhaustive import solve_exhaustive
from tag_tf.selection.large import solve_large
from tag_tf.selection.milp import solve_milp
from tag_tf.selection.problem import SelectionProblem, make_problem
from tag_tf.selection.published import PublishedTable, load_published_table
from tag_tf.selection.result import Network, Robustness, Selection, selection_to_dict
from tag_tf.selection.robustness import Uncertainty, assess
from tag_tf.selection.scoring import GroupScores, block_values, group_scores
from tag_tf.selection.solvers import select_networks
from tag_tf.selection.subset_dp import solve_subset_dp

__all__ = [
    "GroupScores",
    "Network",
    "PublishedTable",
    "RandomGroupings",
    "Robustness",
    "Selection",
    "SelectionProblem",
    "SelectionReport",
    "TableSpec",
    "Uncertainty",
    "assess",
    "block_values",
    "format_robustness",
    "format_selection",
    "format_selections",
    "group_scores",
    "hoa_matrix",
    "load_published_table",
    "make_problem",
    "random_groupings",
    "reproduce_tables",
    "run_selection",
    "select_cs",
    "select_hoa",
    "select_networks",
    "selection_to_dict",
    "solve_exhaustive",
    "solve_large",
    "solve_milp",
    "solve_subset_dp",
]
