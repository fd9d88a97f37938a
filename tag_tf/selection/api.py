"""One entry point over the solvers, plus reading, reporting and writing selections.

``select_networks`` picks the solver: the subset DP (exact, ``n <= 16`` by default), or the
large-scale solver with a certified gap above that. ``run_selection`` is what the
``python -m tag_tf.select`` CLI calls: it reads an affinity file, solves every budget,
returns a readable report and writes JSON.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import numpy as np

from tag_tf.io import affinity_io
from tag_tf.io import atomic
from tag_tf.selection import baselines
from tag_tf.selection import problem as problem_lib
from tag_tf.selection import published
from tag_tf.selection import result as result_lib
from tag_tf.selection import robustness
from tag_tf.selection import solvers

OUTPUT_FORMAT = "tag_tf.selection/v1"

# Re-exported: the solver entry point lives in solvers.py (no import cycle with baselines).
Method = solvers.Method
AUTO_EXACT_MAX_TASKS = solvers.AUTO_EXACT_MAX_TASKS
select_networks = solvers.select_networks


class SelectionReport(NamedTuple):
    """What :func:`run_selection` produced: the selections, a text report and the JSON."""

    selections: list[result_lib.Selection]
    text: str
    payload: dict[str, Any]


class SelectionInput(NamedTuple):
    """The checked input of a selection (:func:`read_selection_input`): nothing solved yet."""

    paths: list[str]
    record: affinity_io.AffinityRecord
    budgets: list[int]
    minimize: bool
    singletons: problem_lib.Singletons
    method: Method
    time_limit: float
    seed: int
    uncertainty: robustness.Uncertainty | None


METHODS = ("auto", "dp", "milp", "exhaustive", "large")


def read_selection_input(*, affinity_path: str | Sequence[str], budgets: Sequence[int],
                         minimize: bool = False, singletons: problem_lib.Singletons = None,
                         method: Method = "auto", tasks: Sequence[str] | None = None,
                         time_limit: float = 60.0, seed: int = 0,
                         bootstrap: int = 0) -> SelectionInput:
    """Reads the affinity file(s) and checks every input of :func:`run_selection`.

    Solves nothing, so every mistake in the input surfaces here, before any work: a
    missing or malformed file, a ragged or non-square matrix, one that does not fit its
    tasks, NaN off the diagonal, a budget outside ``1..n``, bad single-task scores, a
    bootstrap without uncertainty information. The arguments are :func:`run_selection`'s.

    Raises:
      FileNotFoundError: an affinity file does not exist.
      ValueError: any other mistake, naming it and what was received.
    """
    paths = [affinity_path] if isinstance(affinity_path, str) else list(affinity_path)
    if not paths:
        raise ValueError("At least one affinity file is needed. Received: affinity_path=[]")
    records = [affinity_io.load_affinity(p, tasks=tasks) for p in paths]
    record = records[0] if len(records) == 1 else affinity_io.pool_records(records)
    problem = problem_lib.make_problem(record.affinity, tasks=record.tasks, minimize=minimize,
                                       singletons=singletons)
    budgets = [budgets] if isinstance(budgets, (int, np.integer)) else list(budgets)
    if not budgets:
        raise ValueError("At least one budget is needed. Received: budgets=[]")
    budgets = [problem_lib.check_budget(b, problem.n) for b in budgets]
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}. Received: method={method!r}")
    if not time_limit > 0:
        raise ValueError(f"time_limit must be > 0 seconds. Received: time_limit={time_limit!r}")
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be 0 (off) or a number of resamples. Received: "
                         f"bootstrap={bootstrap}")
    uncertainty = None
    if bootstrap:
        if problem.n > robustness.MAX_BOOTSTRAP_TASKS:
            raise ValueError(f"The bootstrap solves every resample exactly and is limited to "
                             f"{robustness.MAX_BOOTSTRAP_TASKS} tasks. Received: n={problem.n}")
        uncertainty = robustness.Uncertainty.from_record(record, n_resamples=bootstrap,
                                                         seed=seed)
    return SelectionInput(paths, record, budgets, bool(minimize), singletons, method,
                          float(time_limit), seed, uncertainty)


def solve_selection(given: SelectionInput) -> SelectionReport:
    """Selects networks for every budget of ``given``; the report and its JSON payload
    (write it with :func:`write_json`)."""
    record, uncertainty = given.record, given.uncertainty
    selections = select_networks(record.affinity, given.budgets, tasks=record.tasks,
                                 minimize=given.minimize, singletons=given.singletons,
                                 method=given.method, time_limit=given.time_limit,
                                 seed=given.seed, uncertainty=uncertainty)
    payload = {
        "format": OUTPUT_FORMAT,
        "affinity_path": os.path.abspath(given.paths[0]),
        "affinity_paths": [os.path.abspath(p) for p in given.paths],
        "pooled_runs": len(given.paths),
        "uncertainty": None if uncertainty is None else uncertainty_entry(uncertainty),
        "tasks": list(record.tasks),
        "minimize": given.minimize,
        "singletons": _describe_singletons(given.singletons),
        "method": given.method,
        "solver": solver_note(len(record.tasks), given.method, given.time_limit),
        "selections": selection_entries(selections),
    }
    return SelectionReport(selections, format_selections(selections), payload)


def run_selection(*, affinity_path: str | Sequence[str], budgets: Sequence[int],
                  minimize: bool = False, singletons: problem_lib.Singletons = None,
                  method: Method = "auto", tasks: Sequence[str] | None = None,
                  output_path: str | None = None, time_limit: float = 60.0, seed: int = 0,
                  bootstrap: int = 0) -> SelectionReport:
    """Reads affinity file(s), selects networks for every budget, reports and writes JSON.

    :func:`read_selection_input` (reads and checks everything) then
    :func:`solve_selection`.

    Args:
      affinity_path: file read with :func:`tag_tf.io.affinity_io.load_affinity`
        (``tag_tf.affinity/v1`` JSON, plain ``{"tasks", "matrix"}`` JSON, ``.npy``/``.npz``),
        or several (runs from different seeds/restarts), pooled with
        :func:`tag_tf.io.affinity_io.pool_records` (mean over runs, between-run SE).
      budgets: budgets to solve.
      minimize: minimise (errors, losses).
      singletons: single-task scores (see :func:`make_problem`).
      method: solver (see :func:`select_networks`).
      tasks: task names (needed for ``.npy``).
      output_path: where to write the JSON (``None``: do not write).
      time_limit: seconds per budget for the large-scale solver.
      seed: seed of the large-scale solver and of the bootstrap.
      bootstrap: number of resamples for the robustness assessment (0: none); needs
        uncertainty in the input (block means, an epochs trace of 2+ epochs, a stderr
        matrix, or several files), see :meth:`robustness.Uncertainty.from_record`.

    Returns:
      A :class:`SelectionReport`.
    """
    report = solve_selection(read_selection_input(
        affinity_path=affinity_path, budgets=budgets, minimize=minimize,
        singletons=singletons, method=method, tasks=tasks, time_limit=time_limit, seed=seed,
        bootstrap=bootstrap))
    if output_path:
        write_json(output_path, report.payload)
    return report


def uncertainty_entry(uncertainty: robustness.Uncertainty) -> dict[str, Any]:
    """selection.json's ``uncertainty``: how it was resampled and what it is evidence of.

    ``runs`` (independent trainings) and ``evidence`` (``within-run`` / ``across-runs``)
    say what the verdicts may claim; ``criterion`` is the verdicts' test in words.
    """
    return {"source": uncertainty.source, "resamples": uncertainty.n_resamples,
            "seed": uncertainty.seed, "confidence": uncertainty.confidence,
            "runs": uncertainty.runs, "evidence": uncertainty.evidence,
            "required_margin": robustness.required_margin(uncertainty.runs),
            "criterion": robustness.criterion(uncertainty.runs)}


def _describe_singletons(singletons: problem_lib.Singletons) -> Any:
    if singletons is None or isinstance(singletons, str):
        return singletons
    if isinstance(singletons, dict):
        return {k: float(v) for k, v in singletons.items()}
    return [float(v) for v in np.asarray(singletons).reshape(-1)]


def write_json(path: str, payload: dict[str, Any]) -> None:
    """Writes ``payload`` as indented JSON, creating the directory (atomically: a killed
    process leaves the previous file or none, never a part)."""
    atomic.atomic_write_json(path, payload, indent=1, allow_nan=False)


def _fmt(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.6g}"


def certificate(selection: result_lib.Selection | Mapping[str, Any]) -> str:
    """What is proven about a selection (a :class:`Selection` or its JSON dict), in words.

    ``"optimal"`` only when the solver proved it (exact DP / MILP / exhaustive, or the
    large solver's gap closed); otherwise the certified relative gap in %, the proven
    bound and the incumbent (the returned selection's objective), or ``"no bound"``.
    """
    get = selection.get if isinstance(selection, Mapping) else \
        (lambda key: getattr(selection, key))
    if get("optimal"):
        return "optimal"
    gap, bound, objective = get("gap"), get("bound"), get("objective")
    if gap is None or not math.isfinite(gap):
        return f"not proven optimal: no bound (incumbent {_fmt(objective)})"
    return (f"gap {100 * gap:.3g}% (bound {_fmt(bound)}, incumbent {_fmt(objective)}; "
            "not proven optimal)")


def selection_entries(selections: Sequence[result_lib.Selection]) -> list[dict[str, Any]]:
    """The JSON entries of ``selections``: :func:`result.selection_to_dict` plus
    ``certificate`` (:func:`certificate`)."""
    return [{**result_lib.selection_to_dict(s), "certificate": certificate(s)}
            for s in selections]


def solver_note(n: int, method: Method, time_limit: float) -> dict[str, Any]:
    """Which solver ``method`` resolves to for ``n`` tasks, and what it proves."""
    resolved = method if method != "auto" else (
        "dp" if n <= AUTO_EXACT_MAX_TASKS else "large")
    note: dict[str, Any] = {"method": method, "resolved": resolved, "tasks": n}
    if resolved == "large":
        note["time_limit_per_budget"] = float(time_limit)
        note["note"] = (f"{n} tasks: the large solver (local search + column generation), "
                        f"about {time_limit:g} s per budget; each selection reports its "
                        "certified gap ('optimal' only when the gap closed)")
    elif resolved == "milp":
        note["time_limit_per_budget"] = float(time_limit)
    return note


def format_selection(selection: result_lib.Selection) -> str:
    """A readable table: networks, who serves whom, helpers, objective, time and gap."""
    goal = "minimised" if selection.minimize else "maximised"
    proof = "optimal" if selection.optimal else f"gap {_fmt(100 * selection.gap)}%"
    lines = [
        f"budget {selection.budget}: objective {_fmt(selection.objective)} ({goal}), "
        f"bound {_fmt(selection.bound)}, {proof}, method {selection.method}, "
        f"{selection.seconds:.3f} s",
    ]
    if not selection.optimal:
        lines.append(f"  certificate: {certificate(selection)}")
    width = max(len(t) for t in selection.tasks)
    for k, net in enumerate(selection.networks, start=1):
        lines.append(f"  network {k}: {{{', '.join(net.tasks)}}}")
        served = ", ".join(f"{t} ({_fmt(s)})" for t, s in zip(net.serves, net.scores))
        lines.append(f"    serves:  {served}")
        lines.append(f"    helpers: {', '.join(net.helpers) if net.helpers else '-'}")
    lines.append(f"  {'task'.ljust(width)}  network  score")
    for task, k, score in zip(selection.tasks, selection.served_by, selection.task_scores):
        lines.append(f"  {task.ljust(width)}  {str(k + 1).rjust(7)}  {_fmt(score)}")
    if selection.robustness is not None:
        lines.extend(format_robustness(selection.robustness))
    return "\n".join(lines)


def _networks_text(networks: Sequence[Sequence[str]]) -> str:
    return " ".join("{" + ",".join(net) + "}" for net in networks)


def format_robustness(r: result_lib.Robustness) -> list[str]:
    """Indented lines: verdict, its evidence, stability, objective interval, alternative
    and margin. (The one-run note on seeds is printed once by :func:`format_selections`.)"""
    low, high = r.objective_ci
    lines = [f"  robustness: {r.verdict.upper()} - chosen in {r.stability:.0%} of {r.resamples} "
             f"resamples ({r.source}, seed {r.seed})",
             f"    evidence: {robustness.evidence_text(r.runs)}",
             f"    objective {100 * r.confidence:.0f}% interval [{_fmt(low)}, {_fmt(high)}], "
             f"SE {_fmt(r.objective_se)}"]
    if r.alternative is not None:
        lines.append(f"    alternative ({r.alternative_source}, chosen in "
                     f"{r.alternative_frequency:.0%}): {_networks_text(r.alternative)}, "
                     f"objective {_fmt(r.alternative_objective)}")
        lines.append(f"    margin: {_fmt(r.difference)} better = {_fmt(r.margin)} SE "
                     f"(SE of the difference {_fmt(r.difference_se)})")
    advice = r.advice.replace(robustness.SEED_ADVICE, "").strip()
    if advice:
        lines.append(f"    next: {advice}")
    return lines


def format_selections(selections: Sequence[result_lib.Selection]) -> str:
    """All budgets' tables, then a one-line-per-budget summary."""
    blocks = [format_selection(s) for s in selections]
    robust = any(s.robustness is not None for s in selections)
    summary = ["| budget | networks | objective | bound | gap (%) | method | seconds |",
               "|---|---|---|---|---|---|---|"]
    if robust:
        summary = [summary[0] + " stability | objective CI | margin (SE) | verdict |",
                   summary[1] + "---|---|---|---|"]
    for s in selections:
        nets = _networks_text([net.tasks for net in s.networks])
        gap = "0 (optimal)" if s.optimal else f"{_fmt(100 * s.gap)} (not proven optimal)"
        row = (f"| {s.budget} | {nets} | {_fmt(s.objective)} | {_fmt(s.bound)} | "
               f"{gap} | {s.method} | {s.seconds:.3f} |")
        r = s.robustness
        if r is not None:
            row += (f" {r.stability:.2f} | [{_fmt(r.objective_ci[0])}, {_fmt(r.objective_ci[1])}]"
                    f" | {_fmt(r.margin)} | {r.verdict} |")
        elif robust:
            row += " - | - | - | - |"
        summary.append(row)
    if any(s.robustness is not None and s.robustness.runs < 2 for s in selections):
        summary.append(f"Note: {robustness.SEED_ADVICE}")
    return "\n\n".join(blocks + ["\n".join(summary)])


class TableSpec(NamedTuple):
    """One published table to select from (see :func:`reproduce_tables`).

    Attributes:
      name: label (e.g. the method, "TAG").
      path: JSON with nested ``values[recipient][source]`` (see :mod:`published`).
      field: which nested mapping to read.
      minimize: minimise (errors, losses).
      singletons: ``"diagonal"`` to allow single-task networks scored by the diagonal.
      rename: ``{label in the file: task name}``, applied when the table is loaded (the
        file stays as published), so tables labelling tasks differently print alike.
    """

    name: str
    path: str
    field: str = "values"
    minimize: bool = False
    singletons: problem_lib.Singletons = None
    rename: Optional[Mapping[str, str]] = None


def reproduce_tables(*, tables: Sequence[TableSpec], budgets: Sequence[int],
                     output_path: str | None = None, method: Method = "auto",
                     random_samples: int = 1000, seed: int = 0) -> SelectionReport:
    """Selects networks from published tables for every budget, with an RG reference.

    Args:
      tables: the tables (loaded with :func:`load_published_table`, transposed to
        ``[source, target]``).
      budgets: budgets to solve for every table.
      output_path: where to write the JSON (``None``: do not write).
      method: solver (see :func:`select_networks`).
      random_samples: samples of the random-grouping baseline per budget (0 to skip).
      seed: seed of the random groupings.

    Returns:
      A :class:`SelectionReport` over all tables (selections concatenated in order).
    """
    all_selections, texts, entries = [], [], []
    for spec in tables:
        table = published.load_published_table(spec.path, field=spec.field)
        if spec.rename:
            table = table._replace(tasks=[spec.rename.get(t, t) for t in table.tasks])
        selections = select_networks(table.matrix, budgets, tasks=table.tasks,
                                     minimize=spec.minimize, singletons=spec.singletons,
                                     method=method)
        random = []
        if random_samples:
            random = [baselines.random_groupings(
                table.matrix, b, tasks=table.tasks, minimize=spec.minimize,
                singletons=spec.singletons, samples=random_samples, seed=seed)
                for b in budgets]
        goal = "minimised" if spec.minimize else "maximised"
        header = (f"== {spec.name}: {os.path.basename(spec.path)} [{spec.field}], {goal}, "
                  f"single-task networks: {spec.singletons or 'not allowed'}")
        lines = [header, format_selections(selections)]
        if random:
            lines.append("Random groupings (same objective, seed "
                         f"{seed}, {random_samples} samples):\n"
                         "| budget | networks | mean | std | min | max |\n"
                         "|---|---|---|---|---|---|\n"
                         + "\n".join(f"| {r.budget} | {r.networks} | {_fmt(r.mean)} | "
                                     f"{_fmt(r.std)} | {_fmt(r.min)} | {_fmt(r.max)} |"
                                     for r in random))
        texts.append("\n\n".join(lines))
        all_selections.extend(selections)
        entries.append({
            "name": spec.name,
            "path": os.path.abspath(spec.path),
            "field": spec.field,
            "minimize": spec.minimize,
            "singletons": _describe_singletons(spec.singletons),
            "source": table.metadata.get("source"),
            "tasks": list(table.tasks),
            "selections": selection_entries(selections),
            "random_groupings": [
                {"budget": r.budget, "networks": r.networks, "mean": r.mean, "std": r.std,
                 "min": r.min, "max": r.max, "samples": len(r.objectives), "seed": r.seed}
                for r in random],
        })
    payload = {"format": OUTPUT_FORMAT, "budgets": list(budgets), "tables": entries}
    if output_path:
        write_json(output_path, payload)
    return SelectionReport(all_selections, "\n\n".join(texts), payload)
