"""Immutable results of network selection.

A selection is a set of at most ``budget`` multi-task networks. Every task is *served* by
exactly one chosen network (the one scoring it best) and may additionally be trained as a
*helper* in other chosen networks. Objectives are reported in the units of the input matrix
(mean over tasks of the serving score), maximised for affinities and minimised for errors
or losses (Fifty et al., NeurIPS 2021, Sec. 3.2 "Network Selection").
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple


class Network(NamedTuple):
    """One chosen multi-task network.

    Attributes:
      tasks: every task trained in the network, in task-list order.
      serves: the tasks this network serves (their best-scoring chosen network).
      helpers: members trained only to help the served tasks (``tasks`` minus ``serves``).
      scores: the network's score onto each task in ``serves`` (same order).
    """

    tasks: tuple[str, ...]
    serves: tuple[str, ...]
    helpers: tuple[str, ...]
    scores: tuple[float, ...]


class Selection(NamedTuple):
    """The networks chosen for one budget, with the proof of optimality when there is one.

    Attributes:
      tasks: all task names, in input order.
      budget: the maximum number of networks that was allowed.
      networks: the chosen networks (no redundant ones), sorted by their member indices.
      served_by: for each task (input order), the index into ``networks`` serving it.
      task_scores: for each task, the score of its serving network onto it.
      objective: mean over tasks of ``task_scores``.
      bound: the best proven bound on the optimal objective (an upper bound when
        maximising, a lower bound when minimising); ``nan`` when the method proves none.
      gap: relative optimality gap ``|bound - objective| / max(|objective|, 1e-12)``;
        ``0`` for a proven optimum, ``nan`` when there is no bound.
      optimal: whether the selection is proven optimal.
      minimize: whether the objective was minimised.
      method: the solver that produced the selection.
      seconds: wall time spent in the solver.
      details: solver statistics (JSON-serialisable values).
    """

    tasks: tuple[str, ...]
    budget: int
    networks: tuple[Network, ...]
    served_by: tuple[int, ...]
    task_scores: tuple[float, ...]
    objective: float
    bound: float
    gap: float
    optimal: bool
    minimize: bool
    method: str
    seconds: float
    details: Mapping[str, Any]


def _json_float(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def selection_to_dict(selection: Selection) -> dict[str, Any]:
    """Returns a JSON-serialisable dict describing ``selection`` (non-finite -> null)."""
    return {
        "budget": selection.budget,
        "objective": _json_float(selection.objective),
        "bound": _json_float(selection.bound),
        "gap": _json_float(selection.gap),
        "optimal": selection.optimal,
        "minimize": selection.minimize,
        "method": selection.method,
        "seconds": selection.seconds,
        "networks": [
            {"tasks": list(net.tasks), "serves": list(net.serves),
             "helpers": list(net.helpers), "scores": [float(s) for s in net.scores]}
            for net in selection.networks
        ],
        "served_by": {task: list(selection.networks[i].tasks)
                      for task, i in zip(selection.tasks, selection.served_by)},
        "task_scores": dict(zip(selection.tasks, map(float, selection.task_scores))),
        "details": dict(selection.details),
    }
