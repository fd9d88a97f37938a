"""Immutable results of network selection.

A selection is a set of at most ``budget`` multi-task networks. Every task is *served* by
exactly one chosen network (the one scoring it best) and may additionally be trained as a
*helper* in other chosen networks. Objectives are reported in the units of the input matrix
(mean over tasks of the serving score), maximised for affinities and minimised for errors
or losses (Fifty et al., NeurIPS 2021, Sec. 3.2 "Network Selection").
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple, Optional


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


class Robustness(NamedTuple):
    """How a selection holds up when the affinities are redrawn within their uncertainty.

    See :mod:`tag_tf.selection.robustness` for the procedure and the thresholds.

    Attributes:
      resamples: number of resampled affinity matrices, each solved exactly.
      seed: seed of the resampling.
      source: how matrices were resampled (block bootstrap, or normal draws from SEs).
      stability: fraction of resamples whose optimal selection equals this one.
      confidence: level of ``objective_ci`` (e.g. 0.95).
      objective_ci: percentile interval of this selection's objective over resamples.
      objective_se: standard deviation of that objective over resamples.
      alternative: networks (task-name tuples) of the best alternative selection, or
        ``None`` when the budget allows no other selection.
      alternative_source: ``"most frequent other selection"`` or ``"runner-up on the point
        estimate"`` (used when no resample chose another selection).
      alternative_frequency: fraction of resamples that chose the alternative.
      alternative_objective: the alternative's objective on the point estimate.
      difference: how much better this selection is than the alternative on the point
        estimate (objective units; positive = better, also when minimising).
      difference_se: bootstrap standard deviation of that difference.
      margin: ``difference / difference_se`` (the margin in standard errors).
      verdict: ``"robust"`` (from 2+ independent runs), ``"stable within this run"`` (the
        same test passed on one run's batch noise), ``"within noise"`` or ``"forced"``
        (only one feasible selection).
      advice: what to do next, in words.
      runs: independent trainings (seeds) the resampling covers; "robust" needs 2+.
      evidence: ``"within-run"`` (one run: batch noise only) or ``"across-runs"``.
      required_margin: the margin (SE) the verdict needed: 2 from one run, the Student-t
        quantile with ``runs - 1`` degrees of freedom from several.
    """

    resamples: int
    seed: int
    source: str
    stability: float
    confidence: float
    objective_ci: tuple[float, float]
    objective_se: float
    alternative: Optional[tuple[tuple[str, ...], ...]]
    alternative_source: str
    alternative_frequency: float
    alternative_objective: float
    difference: float
    difference_se: float
    margin: float
    verdict: str
    advice: str
    runs: int = 1
    evidence: str = "within-run"
    required_margin: float = 2.0


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
      robustness: the bootstrap assessment (``select_networks(..., uncertainty=...)``),
        or ``None``.
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
    robustness: Optional[Robustness] = None


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
        "robustness": robustness_to_dict(selection.robustness),
    }


def robustness_to_dict(robustness: Robustness | None) -> dict[str, Any] | None:
    """JSON-serialisable form of a :class:`Robustness` (non-finite -> null)."""
    if robustness is None:
        return None
    out = robustness._asdict()
    for key in ("stability", "confidence", "objective_se", "alternative_frequency",
                "alternative_objective", "difference", "difference_se", "margin",
                "required_margin"):
        out[key] = _json_float(out[key])
    out["objective_ci"] = [_json_float(v) for v in robustness.objective_ci]
    out["alternative"] = (None if robustness.alternative is None
                          else [list(net) for net in robustness.alternative])
    return out
