"""The ``groups`` mode's inputs and verdict: a selection's networks, the MTL / STL comparison."""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from tag_tf.runner.config import SelectionConfig
from tag_tf.runner.results import read_json


class ChosenNetwork(NamedTuple):
    """A network to train: its tasks and the tasks it serves."""

    tasks: tuple[str, ...]
    serves: tuple[str, ...]


class LoadedSelection(NamedTuple):
    """Networks read from a selection JSON."""

    tasks: tuple[str, ...]  # every served task, in file order
    networks: tuple[ChosenNetwork, ...]
    budget: Optional[int]
    table: Optional[str]
    # The selection's robustness in today's verdict words (read_robustness), or None.
    robustness: Optional[dict] = None


def load_selection(path: str, *, budget: Optional[int] = None,
                   table: Optional[str] = None) -> LoadedSelection:
    """Reads one selection: the networks to train and whom each serves.

    Accepts ``tag_tf.selection/v1`` from ``python -m tag_tf.select`` / :func:`run` (a
    ``selections`` list, one per budget), from ``reproduce_tables`` (a ``tables`` list;
    pick one with ``table``), or a single selection ``{"networks": [{"tasks", "serves"}]}``
    (``serves`` defaults to ``tasks``; a task served twice keeps its first network).
    Its ``robustness``, if any, is read with
    :func:`tag_tf.selection.robustness.read_robustness`: a file written before verdicts
    named their evidence counts as its ``pooled_runs`` (1 if absent), so an old one-run
    "robust" reads "stable within this run".
    """
    from tag_tf.selection import robustness  # pylint: disable=g-import-not-at-top
    payload = read_json(path, "Selection file")
    runs = payload.get("pooled_runs") if isinstance(payload, dict) else None
    if "tables" in payload:
        names = [t.get("name") for t in payload["tables"]]
        if table is None and len(names) == 1:
            table = names[0]
        if table not in names:
            raise ValueError(f"{path} holds tables {names}; choose one (selection_table). "
                             f"Received: {table!r}")
        payload = payload["tables"][names.index(table)]
    if "selections" in payload:
        selections = payload["selections"]
        budgets = [s.get("budget") for s in selections]
        if budget is None and len(selections) == 1:
            budget = budgets[0]
        if budget not in budgets:
            raise ValueError(f"{path} holds budgets {budgets}; choose one (budget). "
                             f"Received: {budget!r}")
        payload = selections[budgets.index(budget)]
    if "networks" not in payload or not payload["networks"]:
        raise ValueError(f"{path}: no 'networks' in the selection.")
    networks, served = [], []
    for entry in payload["networks"]:
        tasks = tuple(entry["tasks"])
        serves = tuple(t for t in entry.get("serves", tasks) if t not in served)
        unknown = [t for t in serves if t not in tasks]
        if unknown:
            raise ValueError(f"{path}: network {list(tasks)} serves {unknown}, which it does "
                             "not train.")
        served.extend(serves)
        networks.append(ChosenNetwork(tasks, serves))
    return LoadedSelection(tuple(served), tuple(networks), payload.get("budget", budget), table,
                           robustness.read_robustness(payload.get("robustness"), runs=runs))


def std(values: Sequence[float]) -> Optional[float]:
    """Sample standard deviation (ddof 1); None with fewer than 2 values."""
    return float(np.std(values, ddof=1)) if len(values) >= 2 else None


def _seed_totals(results: Mapping[str, Any], tasks: Sequence[str], name: str) -> list[float]:
    """Total test error over ``tasks`` of every run (seed) in ``results``."""
    runs = results.get("runs") or [results]
    totals = []
    for run_result in runs:
        errors = run_result["test_error"]
        missing = [t for t in tasks if errors.get(t) is None]
        if missing:
            raise ValueError(f"The {name} results have no test error for task(s) {missing}; "
                             f"they have {sorted(k for k, v in errors.items() if v is not None)}.")
        totals.append(float(sum(errors[t] for t in tasks)))
    return totals


def compare_errors(results: Mapping[str, Any], reference: Mapping[str, Any], *,
                   name: str, ours: str = "groups") -> dict:
    """Compares total test error (over ``results``' tasks; lower is better) with a reference.

    Both are results (a :class:`RunResult` or its JSON). ``difference`` = reference mean
    total - our mean total (positive: we are better). ``spread`` is the seed-to-seed spread
    of that difference between single trainings, ``sqrt(std_ours^2 + std_reference^2)``
    (std over each side's seeds, ddof 1); a side with one seed is given the other side's
    std (stated in ``note``); with one seed on both sides the spread is unknown. Verdict:
    ``"better"`` if difference > spread, ``"worse"`` if difference < -spread, else
    ``"within spread"``; ``"unknown"`` without a spread.
    """
    tasks = list(results["tasks"])
    mine, theirs = _seed_totals(results, tasks, ours), _seed_totals(reference, tasks, name)
    difference = float(np.mean(theirs) - np.mean(mine))
    std_mine, std_theirs = std(mine), std(theirs)
    note = None
    if std_mine is None and std_theirs is None:
        spread = None
        note = "both sides ran one seed: no seed spread (run with seeds >= 2)"
    else:
        if std_mine is None or std_theirs is None:
            one, other = (ours, name) if std_mine is None else (name, ours)
            note = f"{one} ran one seed; its spread is taken to be {other}'s"
            std_mine = std_theirs if std_mine is None else std_mine
            std_theirs = std_mine if std_theirs is None else std_theirs
        spread = float(math.hypot(std_mine, std_theirs))
    direction = "better" if difference >= 0 else "worse"
    if spread is None:
        verdict = "unknown"
        statement = (f"{ours} are {direction} than {name} by {abs(difference):.4g} total error "
                     f"(seed spread unknown: run with seeds >= 2)")
    elif difference > spread:
        verdict = "better"
        statement = (f"{ours} beat {name} by {difference:.4g} ± {spread:.4g} "
                     "(more than the seed spread)")
    elif difference < -spread:
        verdict = "worse"
        statement = (f"{ours} lose to {name} by {-difference:.4g} ± {spread:.4g} "
                     "(more than the seed spread)")
    else:
        verdict = "within spread"
        statement = (f"{ours} are {direction} than {name} by {abs(difference):.4g} ± "
                     f"{spread:.4g} total error, within the seed-to-seed spread")
    return {"reference": name, "tasks": tasks, "total_test_error": float(np.mean(mine)),
            "reference_total_test_error": float(np.mean(theirs)), "seeds": len(mine),
            "reference_seeds": len(theirs), "difference": difference, "spread": spread,
            "verdict": verdict, "statement": statement, "note": note}


def reference_results(path: str) -> dict:
    """A results JSON to compare with: any file with ``test_error`` (and ``runs``) per task."""
    payload = read_json(path, "Results file")
    if not isinstance(payload, dict) or "test_error" not in payload:
        raise ValueError(f"{path} is not a pipeline results.json (no 'test_error').")
    return payload


def comparisons(results: Mapping[str, Any], selection: SelectionConfig) -> list[dict]:
    """``groups`` results against the MTL / STL results files of ``selection``."""
    out = []
    for name, path in (("MTL", selection.mtl_results), ("STL", selection.stl_results)):
        if path:
            entry = compare_errors(results, reference_results(path), name=name)
            entry["reference_path"] = os.path.abspath(path)
            out.append(entry)
    return out
