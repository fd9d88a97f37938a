r"""Table 3: groupings found under other hyper-parameters vs the ground-truth optimum.

Ground truth (small ``n`` only): every one of the ``2^n - 1`` task groups is trained as one
multi-task network with the base settings, giving ``err[G][t]``, the test error of task
``t`` in network ``G``. Any grouping's total error is read off this table (each task's
error is that of the network serving it), with no further training. For each budget ``b``:

* **optimal**: at most ``b`` networks, each task served by its lowest-error chosen network
  (networks may overlap), minimising the total. Exact: the value of a *served set* ``S``
  is ``min_{G >= S} sum_{t in S} err[G][t]`` and a subset DP partitions the tasks into at
  most ``b`` served sets (:func:`best_partition`);
* **worst**: the partition of the tasks into exactly ``b`` disjoint networks with the
  highest total;
* **random**: the mean of random partitions (the RG groupings of the other tables,
  :meth:`Harness.random_partitions`), each read off the table.

Then TAG's affinity training is run under each hyper-parameter variant (base, batch size
0.5x, learning rate 2x by default; ``adapter.vary``), groups are selected from it for each
budget, and the selected networks are scored on the *base* ground truth (each task from the
network the selection serves it by). Reported: total error, ``100 * (total - optimal) /
optimal`` (% above optimal, 0 is best) and ``100 * (random - total) / (random - optimal)``
(% of the random-to-optimal gap closed, 100 is optimal), the Pearson correlation of each
variant's affinity matrix with the base one, and CS (cosine similarity) under the base
settings.

  python -m tag_tf.experiments.table3 --output_dir=runs/table3
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import NamedTuple, Optional, Sequence

import numpy as np

from tag_tf.cli.flags import setting
from tag_tf.experiments import cli
from tag_tf.experiments import plot
from tag_tf.experiments import report
from tag_tf.experiments.harness import Harness, Training, rg_saturation_note, seeded_harnesses
from tag_tf.experiments.train_val import pearson
from tag_tf.selection import subset_dp
from tag_tf.selection.problem import mask_members

MAX_TASKS = 8
MIN_GAP = 1e-3  # random within 0.1 % of optimal: no "gap closed" (n/a)


class Variant(NamedTuple):
    """Hyper-parameters of one affinity training, as factors of the base adapter's."""

    name: str
    batch_size_scale: float = 1.0
    learning_rate_scale: float = 1.0

    @property
    def is_base(self) -> bool:
        return self.batch_size_scale == 1.0 and self.learning_rate_scale == 1.0


BASE = Variant("base")
VARIANTS = (BASE, Variant("batch 0.5x", batch_size_scale=0.5),
            Variant("lr 2x", learning_rate_scale=2.0))


def parse_variant(text: str) -> Variant:
    """``"base"``, ``"batch=0.5"``, ``"lr=2"`` or ``"batch=0.5+lr=2"`` -> :class:`Variant`."""
    text = text.strip()
    if text == "base":
        return BASE
    scales = {"batch": 1.0, "lr": 1.0}
    for part in text.split("+"):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in scales:
            raise ValueError(f"A variant is 'base' or 'batch=<factor>', 'lr=<factor>' joined "
                             f"by '+'. Received: {text!r}")
        scales[key] = float(value)
    name = " + ".join(f"{k} {scales[k]:g}x" for k in ("batch", "lr") if scales[k] != 1.0)
    return Variant(name or "base", scales["batch"], scales["lr"])


# ----------------------------------------------------------------------------- exact DP
def mask_of(tasks: Sequence[str], group: Sequence[str]) -> int:
    """Bitmask of ``group`` (bit ``i`` = ``tasks[i]``)."""
    return sum(1 << tasks.index(t) for t in set(group))


def _submasks(mask: int):
    """Every non-empty submask of ``mask``, in increasing order."""
    sub = mask & -mask
    while sub:
        yield sub
        sub = (sub - mask) & mask  # next submask in increasing order


def served_values(err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best network for every served set ``S``: ``min_{G >= S} sum_{t in S} err[G, t]``.

    ``err`` is ``[2^n, n]`` (row = group bitmask, ``nan`` for non-members / untrained).
    Returns ``(values, network)`` indexed by ``S`` (``inf`` / ``0`` when none serves ``S``;
    ties: the smaller network bitmask).
    """
    size, n = err.shape
    values = np.full(size, np.inf)
    network = np.zeros(size, dtype=np.int64)
    full = size - 1
    for s in range(1, size):
        idx = mask_members(s, n)
        for g in [s] + [s | r for r in _submasks(full ^ s)]:
            total = float(np.sum(err[g, idx]))
            if np.isfinite(total) and total < values[s]:
                values[s], network[s] = total, g
    return values, network


def best_partition(values: np.ndarray, n: int, blocks: int, *, maximize: bool = False,
                   exact: bool = False) -> tuple[float, list[int]]:
    """Partition of all ``n`` tasks into at most (``exact``: exactly) ``blocks`` sets
    minimising (``maximize``: maximising) the sum of ``values[set]``.

    ``values`` is indexed by bitmask; non-finite entries are not allowed as sets. The
    selection package's subset DP (:func:`tag_tf.selection.subset_dp.solve_levels` and
    :func:`~tag_tf.selection.subset_dp.best_served_sets`, which maximise) on ``values`` or
    ``-values``. Returns ``(total, sets)``; ``(nan, [])`` when no partition exists.
    """
    values = np.asarray(values, dtype=np.float64)
    signed = np.where(np.isfinite(values), values if maximize else -values, -np.inf)
    levels = subset_dp.solve_levels(signed, n, blocks - 1, exact=exact)
    try:
        total, sets = subset_dp.best_served_sets(signed, levels, (1 << n) - 1, blocks,
                                                 exact=exact)
    except ValueError:  # no partition covers every task with allowed sets
        return float("nan"), []
    if not np.isfinite(total):
        return float("nan"), []
    return (total if maximize else -total), [int(x) for x in sets]


# ----------------------------------------------------------------------------- ground truth
def ground_truth(harness: Harness) -> dict:
    """Trains (or reuses) every non-empty task group with the base settings.

    Returns ``{"err": [2^n, n] array (nan: non-member or no error), "groups": [JSON row
    per group], "training_seconds"}``.
    """
    tasks, n = harness.tasks, len(harness.tasks)
    err = np.full((1 << n, n), np.nan)
    rows, seconds = [], 0.0
    for mask in range(1, 1 << n):
        group = [tasks[i] for i in mask_members(mask, n)]
        results = harness.train(group, "mtl")
        seconds += float(results["seconds"])
        for i in mask_members(mask, n):
            value = results["test_error"][tasks[i]]
            err[mask, i] = np.nan if value is None else float(value)
        rows.append({"tasks": group, "test_error": {t: results["test_error"][t] for t in group},
                     "total_test_error": results["total_test_error"],
                     "seconds": results["seconds"], "cache_dir": results["cache_dir"]})
    return {"err": err, "groups": rows, "training_seconds": seconds}


def pooled_truth(errs: Sequence[np.ndarray]) -> np.ndarray:
    """Mean over seeds of ``err[group, task]`` tables (nan stays nan: non-members)."""
    stack = np.stack([np.asarray(e, dtype=np.float64) for e in errs])
    out = np.full(stack.shape[1:], np.nan)
    defined = np.all(np.isfinite(stack), axis=0)
    out[defined] = stack[:, defined].mean(axis=0)
    return out


def pooled_groups(truths: Sequence[dict], err: np.ndarray, tasks: Sequence[str]) -> list:
    """The ground-truth rows of the pooled table ``err`` (one per task group)."""
    out = []
    for k, group in enumerate(truths[0]["groups"]):
        g = mask_of(tasks, group["tasks"])
        errors = {t: float(err[g, tasks.index(t)]) for t in group["tasks"]}
        out.append({"tasks": group["tasks"], "test_error": errors,
                    "total_test_error": _finite_sum(errors.values()),
                    "seconds": sum(t["groups"][k]["seconds"] for t in truths),
                    "cache_dirs": [t["groups"][k]["cache_dir"] for t in truths]})
    return out


def score_networks(err: np.ndarray, tasks: Sequence[str],
                   networks: Sequence[tuple[Sequence[str], Sequence[str]]]) -> dict:
    """Total error of ``(tasks, serves)`` networks read off the ground truth: each task from
    the first network serving it; also the total when each task takes its best chosen
    network (``oracle``, the serving rule of the optimum)."""
    served, oracle = {}, {}
    for group, serves in networks:
        g = mask_of(tasks, group)
        for t in serves:
            served.setdefault(t, float(err[g, tasks.index(t)]))
        for t in group:
            value = float(err[g, tasks.index(t)])
            if np.isfinite(value):
                oracle[t] = min(oracle.get(t, np.inf), value)
    missing = [t for t in tasks if t not in served]
    if missing:
        raise ValueError(f"The grouping serves no network for tasks {missing}.")
    return {"networks": [{"tasks": list(g), "serves": list(s)} for g, s in networks],
            "task_error": {t: served[t] for t in tasks},
            "total_error": _finite_sum(served[t] for t in tasks),
            "total_error_oracle_serving": _finite_sum(oracle.get(t, np.nan) for t in tasks)}


def _finite_sum(values) -> Optional[float]:
    values = [float(v) for v in values]
    return float(sum(values)) if all(np.isfinite(values)) else None


def _score_sets(err: np.ndarray, tasks: Sequence[str], networks: list) -> dict:
    """:func:`score_networks`, or an empty entry when the DP found no grouping (only when
    some ground-truth errors are missing)."""
    if not networks:
        return {"networks": [], "task_error": {}, "total_error": None,
                "total_error_oracle_serving": None}
    return score_networks(err, tasks, networks)


def reference_groupings(err: np.ndarray, tasks: Sequence[str], budgets: Sequence[int],
                        partitions: dict) -> dict:
    """Optimal, worst and random groupings for each budget, on the ground truth."""
    n = len(tasks)
    values, network = served_values(err)
    own = np.array([np.sum(err[g, mask_members(g, n)]) if g else np.nan for g in range(1 << n)])
    out = {}
    for b in budgets:
        total, sets = best_partition(values, n, b)
        chosen: dict[int, list[str]] = {}
        for s in sets:
            chosen.setdefault(int(network[s]), []).extend(tasks[i] for i in mask_members(s, n))
        optimal = _score_sets(err, tasks, [
            ([tasks[i] for i in mask_members(g, n)], [t for t in tasks if t in serves])
            for g, serves in sorted(chosen.items())])
        _, worst_sets = best_partition(own, n, b, maximize=True, exact=True)
        worst = _score_sets(err, tasks, [([tasks[i] for i in mask_members(g, n)],) * 2
                                         for g in sorted(worst_sets)])
        samples = [score_networks(err, tasks, p)["total_error"] for p in partitions[b]]
        ok = [v for v in samples if v is not None]
        out[b] = {"optimal": {**optimal, "dp_total": total}, "worst": worst,
                  "random": {"total_error": float(np.mean(ok)) if ok else None,
                             "std": float(np.std(ok)) if ok else None,
                             "min": min(ok) if ok else None, "max": max(ok) if ok else None,
                             "samples": len(samples), "totals": samples}}
    return out


def relative(total: Optional[float], optimal: Optional[float],
             random: Optional[float]) -> dict:
    """``above_optimal_percent`` and ``gap_closed_percent`` (None when undefined).

    The gap closed is None when the random groupings are within :data:`MIN_GAP` (relative)
    of the optimum: dividing by that gap would only amplify noise.
    """
    above = gap = None
    if total is not None and optimal:
        above = 100.0 * (total - optimal) / optimal
    if (total is not None and optimal is not None and random is not None
            and random - optimal > MIN_GAP * abs(optimal)):
        gap = 100.0 * (random - total) / (random - optimal)
    return {"above_optimal_percent": above, "gap_closed_percent": gap}


# ----------------------------------------------------------------------------- variants
def variant_harness(harness: Harness, variant: Variant) -> Harness:
    """The base harness for the base variant, else one on ``adapter.vary(...)`` sharing
    the cache directory (the varied settings give their own cache keys)."""
    if variant.is_base:
        return harness
    adapter = harness.adapter
    if not callable(getattr(adapter, "vary", None)):
        raise TypeError(
            f"Table 3 needs adapter.vary(batch_size_scale=..., learning_rate_scale=...) for "
            f"the variant {variant.name!r}, but adapter {getattr(adapter, 'name', adapter)!r} "
            f"({type(adapter).__module__}.{type(adapter).__qualname__}) has no vary method "
            f"(see tag_tf.experiments.adapter).")
    varied = adapter.vary(batch_size_scale=variant.batch_size_scale,
                          learning_rate_scale=variant.learning_rate_scale)
    return Harness(varied, harness.cache.root, log=harness.log, progress=harness.progress)


TAYLOR_ROW = "TAG (Taylor)"


def selection_rows(harness: Harness, label: str, measure: str, budgets: Sequence[int],
                   err: np.ndarray, references: dict, *, also: Sequence[str] = (),
                   matrix_of: Optional[str] = None) -> dict:
    """One affinity training (cached), its selections, scored on the ground truth.

    ``also``: further measures recorded in the same training; ``matrix_of``: select on one
    of them (e.g. ``"taylor"``) instead of ``measure``'s own matrix.
    """
    harness.log(f"Table 3: {label} affinity training")
    run_ = harness.affinity(measure, also=also)
    matrix = run_.matrix if matrix_of in (None, measure) else harness.also_matrix(run_,
                                                                                 matrix_of)
    selections, sel_seconds = harness.select(matrix, budgets)
    per_budget = {}
    for chosen in selections:
        ref = references[chosen.budget]
        scored = score_networks(err, harness.tasks,
                                [(n.tasks, n.serves) for n in chosen.networks])
        per_budget[chosen.budget] = {
            **scored, **relative(scored["total_error"], ref["optimal"]["total_error"],
                                 ref["random"]["total_error"])}
    return {"measure": matrix_of or measure, "adapter_settings": harness.adapter.settings(),
            "settings": run_.settings, "affinity": matrix, "affinity_path": run_.path,
            "affinity_seconds": run_.seconds, "selection_seconds": sel_seconds,
            "budgets": per_budget}


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


# ----------------------------------------------------------------------------- the table
def check_size(harness: Harness, max_tasks: int) -> None:
    """Refuses more than ``max_tasks`` tasks: the ground truth is ``2^n - 1`` trainings."""
    n = len(harness.tasks)
    if n > max_tasks:
        raise ValueError(
            f"Table 3 trains every task group: 2^{n} - 1 = {(1 << n) - 1} trainings for "
            f"{n} tasks, above max_tasks={max_tasks} ({(1 << max_tasks) - 1} trainings). "
            "Use fewer tasks or raise --max_tasks.")


def run(harness: Harness, *, budgets: Sequence[int] = (2, 3, 4),
        variants: Sequence[Variant] = VARIANTS, include_cs: bool = True,
        rg_samples: int = 1000, seed: int = 0, seeds: int = 1, max_tasks: int = MAX_TASKS,
        taylor: bool = True, output_dir: str = "runs/table3") -> dict:
    """Ground truth, references and every variant (all cached); writes ``table3.*``.

    ``table3.{md,json}`` hold the numbers, ``table3.{png,pdf}`` the figure.

    The base variant is always included (first) as the reference of the correlations.
    ``seeds``: training seeds (``adapter.replicate``). With more than one, the ground truth
    is trained once per seed and *pooled* (each task's error in each group averaged over
    the seeds); the references are read off the pooled table; every row's affinity
    training runs once per seed, each seed's groups are scored on the pooled table, and
    each number is the mean ± sample std over the seeds (``per_seed``: each seed's rows).

    ``taylor``: the base TAG training also records the first-order Taylor measure
    (``measures=("lookahead", "taylor")``, the same steps); the row ``TAG (Taylor)``
    scores the groups its matrix selects, and its *r* is the Pearson correlation of the
    Taylor matrix with the exact lookahead matrix of the same training.
    """
    start = time.perf_counter()
    check_size(harness, max_tasks)
    tasks = harness.tasks
    budgets = [int(b) for b in budgets if 1 <= int(b) <= len(tasks)]
    variants = [BASE] + [v for v in variants if not v.is_base]
    seeded = seeded_harnesses(harness, seeds)
    # Every variant of every seed (fails early without vary).
    grid = [[variant_harness(h, v) for v in variants] for h in seeded]
    # Progress: every training is known up front (selections are scored, not trained).
    for h_seed, hs in zip(seeded, grid):
        for v, h in zip(variants, hs):
            also = ("taylor",) if taylor and v.is_base else ()
            h.plan([h.affinity_training("lookahead", also=also)], complete=False)
        if include_cs:
            h_seed.plan([h_seed.affinity_training("cosine")], complete=False)
        h_seed.plan([Training(tuple(tasks[i] for i in mask_members(mask, len(tasks))))
                     for mask in range(1, 1 << len(tasks))], complete=True)
    truths = []
    for k, h in enumerate(seeded):
        harness.log(f"Table 3: ground truth ({(1 << len(tasks)) - 1} task groups)"
                    + (f", seed {k + 1} of {len(seeded)}" if len(seeded) > 1 else ""))
        truths.append(ground_truth(h))
    err = truths[0]["err"] if len(truths) == 1 else pooled_truth([t["err"] for t in truths])
    partitions = {b: harness.random_partitions(b, rg_samples, seed) for b in budgets}
    references = reference_groupings(err, tasks, budgets, partitions)
    per_seed = [_seed_rows(h_seed, hs, variants, include_cs, budgets, err, references,
                           taylor)
                for h_seed, hs in zip(seeded, grid)]
    rows = per_seed[0] if len(per_seed) == 1 else aggregate_rows(per_seed, budgets)
    caches = list({id(h.cache): h.cache for hs in grid for h in hs}.values())
    payload = {"table": "3", "adapter": harness.adapter.name,
               "adapter_settings": harness.adapter.settings(),
               "config": harness.base_config.to_json(), "budgets": budgets, "tasks": tasks,
               "error_name": harness.error_name, "seeds": len(seeded),
               "ground_truth": (truths[0]["groups"] if len(truths) == 1
                                else pooled_groups(truths, err, tasks)),
               "ground_truth_training_seconds": sum(t["training_seconds"] for t in truths),
               "references": references, "rg_samples": rg_samples, "seed": seed,
               "rows": rows, "seconds": time.perf_counter() - start,
               **report.training_counts(caches)}
    if len(seeded) > 1:
        payload["per_seed"] = [{"adapter_settings": h.adapter.settings(), "rows": r}
                               for h, r in zip(seeded, per_seed)]
    figures = plot.outputs(plot_table(payload, os.path.join(output_dir, "table3.png")))
    markdown = format_markdown(payload) + FIGURE_NOTE
    payload["outputs"] = {**report.write_outputs(output_dir, "table3", payload, markdown),
                          **figures}
    payload["markdown"] = markdown
    return payload


def _seed_rows(harness: Harness, variant_harnesses: Sequence[Harness],
               variants: Sequence[Variant], include_cs: bool, budgets: Sequence[int],
               err: np.ndarray, references: dict, taylor: bool = False) -> dict:
    """One seed's rows: TAG under every variant (and CS), scored on ``err``."""
    rows = {}
    for variant, h in zip(variants, variant_harnesses):
        also = ("taylor",) if taylor and variant.is_base else ()
        rows[f"TAG, {variant.name}"] = {
            **selection_rows(h, variant.name, "lookahead", budgets, err, references,
                             also=also),
            "method": "TAG", "variant": variant._asdict()}
    if taylor:  # the Taylor matrix of the base TAG training (the same steps)
        rows[TAYLOR_ROW] = {
            **selection_rows(harness, "TAG (Taylor): the base TAG", "lookahead", budgets, err,
                             references, also=("taylor",), matrix_of="taylor"),
            "method": TAYLOR_ROW, "variant": BASE._asdict()}
    if include_cs:
        rows["CS, base"] = {**selection_rows(harness, "CS", "cosine", budgets, err, references),
                            "method": "CS", "variant": BASE._asdict()}
    base_matrix = rows[f"TAG, {BASE.name}"]["affinity"]
    for row in rows.values():
        row["pearson_vs_base_tag"] = pearson(base_matrix, row["affinity"])
        row["mean_above_optimal_percent"] = _mean(
            v["above_optimal_percent"] for v in row["budgets"].values())
        row["mean_gap_closed_percent"] = _mean(
            v["gap_closed_percent"] for v in row["budgets"].values())
    if TAYLOR_ROW in rows:  # the same training: Taylor vs exact lookahead
        rows[TAYLOR_ROW]["pearson_taylor_vs_lookahead"] = rows[TAYLOR_ROW]["pearson_vs_base_tag"]
    return rows


_SEED_STATS = ("pearson_vs_base_tag", "affinity_seconds", "mean_above_optimal_percent",
               "mean_gap_closed_percent", "pearson_taylor_vs_lookahead")
_BUDGET_STATS = ("total_error", "above_optimal_percent", "gap_closed_percent")


def aggregate_rows(per_seed: Sequence[dict], budgets: Sequence[int]) -> dict:
    """Mean ± sample std over seeds of every row's numbers: ``<key>`` is the mean,
    ``<key>_std`` the std and ``<key>_seeds`` the per-seed values; ``networks`` are the
    first seed's groups, ``networks_per_seed`` every seed's. Other fields (settings,
    affinity matrix, paths) are the first seed's."""
    rows = {}
    for label, first in per_seed[0].items():
        seed_rows = [r[label] for r in per_seed]
        row = {k: v for k, v in first.items() if k not in _SEED_STATS and k != "budgets"}
        row["seeds"] = len(seed_rows)
        for key in _SEED_STATS:
            if key not in first:
                continue
            values = [r[key] for r in seed_rows]
            stats = report.mean_std(values)
            row.update({key: stats["mean"], f"{key}_std": stats["std"], f"{key}_seeds": values})
        row["budgets"] = {}
        for b in budgets:
            entries = [r["budgets"][b] for r in seed_rows]
            entry = {"networks": entries[0]["networks"],
                     "networks_per_seed": [e["networks"] for e in entries]}
            for key in _BUDGET_STATS:
                values = [e[key] for e in entries]
                stats = report.mean_std(values)
                entry.update({key: stats["mean"], f"{key}_std": stats["std"],
                              f"{key}_seeds": values})
            row["budgets"][b] = entry
        rows[label] = row
    return rows


FIGURE_NOTE = ("\n\nFigure: table3.png (+ PDF): (a) % above optimal and (b) % of the "
               "random-to-optimal gap closed, per budget, for each variant (with several "
               "seeds: ±1 std error bars).")


def plot_table(payload: dict, path: str) -> list[str]:
    """Writes :func:`make_figure` as ``path`` (PNG) and its PDF; returns the paths."""
    return plot.save_figure(make_figure(payload), path)


def make_figure(payload: dict) -> plot.Figure:
    """The table's figure: (a) % above optimal and % gap closed per budget."""
    budgets, rows = payload["budgets"], payload["rows"]
    groups = [_nets(b) for b in budgets]
    fig, (above, gap) = plot.new_figure(12.0, 5.2, ncols=2)

    def errors(key):  # +-1 std over seeds (multi-seed runs only)
        return {label: [row["budgets"][b].get(f"{key}_std") for b in budgets]
                for label, row in rows.items()
                if any(f"{key}_std" in row["budgets"][b] for b in budgets)}

    plot.grouped_bars(above, groups, {label: [row["budgets"][b]["above_optimal_percent"]
                                              for b in budgets] for label, row in rows.items()},
                      errors=errors("above_optimal_percent"))
    above.set_ylabel("above optimal (%), lower is better\n100 (total − optimal) / optimal")
    above.set_title("(a) total test error above the optimal grouping\n(0: optimal)",
                    fontsize=10)
    plot.grouped_bars(gap, groups, {label: [row["budgets"][b]["gap_closed_percent"]
                                            for b in budgets] for label, row in rows.items()},
                      errors=errors("gap_closed_percent"))
    gap.axhline(100, color="grey", linestyle="--", linewidth=1)
    gap.set_ylabel("gap closed (%), higher is better\n100 (random − total) / "
                   "(random − optimal)")
    gap.set_title("(b) random-to-optimal gap closed\n(0: mean random grouping; dashed: "
                  "optimal)", fontsize=10)
    for ax in (above, gap):
        ax.set_xlabel("budget (networks at inference)")
    fig.legend(handles=above.get_legend_handles_labels()[0], loc="outside lower center",
               ncols=min(4, len(rows)), fontsize=8, frameon=False, title="groups found with",
               title_fontsize=8)
    unit = plot.ERROR_UNITS.get(payload["error_name"], payload["error_name"])
    seeds = payload.get("seeds", 1)
    fig.suptitle(f"Table 3 ({payload['adapter']}): groupings scored on the ground truth "
                 f"(total test {unit})"
                 + (f"\nmean ± std over {seeds} training seeds (pooled ground truth)"
                    if seeds > 1 else ""), fontsize=11)
    return fig


def _groups(entry: dict) -> str:
    """``{0,1} {2}``; a network serving only some of its members marks them ``*``; one
    grouping per seed (``a / b``) for a multi-seed row."""
    if "networks_per_seed" in entry:
        return " / ".join(_groups({"networks": n}) for n in entry["networks_per_seed"])
    parts = []
    for net in entry["networks"]:
        names = [t.replace("task_", "") + ("" if t in net["serves"] else "*")
                 for t in net["tasks"]]
        parts.append("{" + ",".join(names) + "}")
    return " ".join(parts)


def _nets(budget: int) -> str:
    return f"{budget} network" + ("" if budget == 1 else "s")


def format_markdown(payload: dict) -> str:
    budgets, name, refs = payload["budgets"], payload["error_name"], payload["references"]
    n = len(payload["tasks"])
    seeds = payload.get("seeds", 1)
    ref_body = []
    for label, key in (("optimal", "optimal"), ("random (mean ± std)", "random"),
                       ("worst", "worst")):
        cells = [label]
        for b in budgets:
            entry = refs[b][key]
            text = report.fmt(entry["total_error"])
            if key == "random":
                text += f" ± {report.fmt(entry['std'], '.2g')}"
            else:
                text += " " + _groups(entry)
            cells.append(text)
        ref_body.append(cells)
    rel_body, total_body = [], []

    def cell(entry, key, spec, std_spec=None):
        return report.pm(entry[key], entry.get(f"{key}_std"), spec, std_spec or spec)

    for label, row in payload["rows"].items():
        rel_body.append(
            [label, cell(row, "pearson_vs_base_tag", ".3f")]
            + [cell(row["budgets"][b], "above_optimal_percent", "+.1f", ".1f")
               for b in budgets]
            + [cell(row, "mean_above_optimal_percent", "+.1f", ".1f")]
            + [cell(row["budgets"][b], "gap_closed_percent", ".0f") for b in budgets]
            + [cell(row, "mean_gap_closed_percent", ".0f")])
        total_body.append([label, cell(row, "affinity_seconds", ".1f")]
                          + [f"{cell(row['budgets'][b], 'total_error', '.4g', '.2g')} "
                             f"{_groups(row['budgets'][b])}" for b in budgets])
    settings = payload["adapter_settings"]
    base = ", ".join(f"{k} {settings[k]}" for k in ("batch_size", "learning_rate")
                     if k in settings)
    return "\n".join([
        f"## Table 3 ({payload['adapter']}: {n} tasks)", "",
        f"Ground truth: all {(1 << n) - 1} task groups trained with the base settings"
        + (f" ({base})" if base else "")
        + (f", once per training seed ({seeds} seeds), each task's error in each group "
           "averaged over the seeds (the pooled table)" if seeds > 1 else "")
        + f"; every grouping's total test {name} over all "
        "tasks is read off these trainings (each task from the network serving it). "
        "Groupings found by TAG's affinity training under each hyper-parameter variant "
        "(and by CS under the base settings), relative to the optimal grouping of the "
        "same budget"
        + ("; each affinity training ran once per seed, each seed's groups are scored on "
           f"the pooled table, and every number is the mean ± sample std over the {seeds} "
           "seeds (groups: one grouping per seed, separated by /)" if seeds > 1 else "")
        + ":", "",
        "* *above optimal*: `100 * (total - optimal) / optimal` in % (0 = optimal, lower "
        "is better);",
        "* *gap closed*: `100 * (random - total) / (random - optimal)` in % (100 = optimal, "
        "0 = as good as the mean random grouping, negative = worse; n/a when random is "
        f"within {100 * MIN_GAP:g} % of optimal);",
        "* *r*: Pearson correlation of the variant's affinity matrix with the base TAG one "
        "(off-diagonal entries)"
        + (f"; for {TAYLOR_ROW}: of the first-order Taylor matrix with the exact lookahead "
           "matrix recorded in the same training (`measures=(\"lookahead\", \"taylor\")`)"
           if TAYLOR_ROW in payload["rows"] else "") + ".", "",
        report.markdown_table(
            ["groups found with", "r vs base"]
            + [f"above optimal, {_nets(b)} (%)" for b in budgets] + ["mean (%)"]
            + [f"gap closed, {_nets(b)} (%)" for b in budgets] + ["mean (%)"], rel_body), "",
        f"Total test {name} of the selected groups (task indices; `*` = trained as a helper, "
        "not served) and the affinity training's wall time:", "",
        report.markdown_table(["groups found with", "affinity training (s)"]
                              + [f"total {name}, {_nets(b)}" for b in budgets], total_body), "",
        f"Reference groupings on the ground truth (total test {name}): optimal = at most "
        "b networks, each task served by its best chosen network (exact subset DP); worst = "
        "the partition into exactly b disjoint networks with the highest total; random = "
        f"mean of {payload['rg_samples']} random partitions (as RG elsewhere, not "
        "trained again).", "",
        report.markdown_table(["grouping"] + [_nets(b) for b in budgets], ref_body)]
        + (["", note] if (note := rg_saturation_note(n, budgets)) else [])
        + ["", report.training_counts_text(payload)])


@dataclasses.dataclass(frozen=True)
class Table3Args(cli.HarnessArgs):
    """Table 3's flags: the shared ones plus its own (random groupings are free here)."""

    rg_samples: int = setting(1000, help="Random partitions read off the ground truth per "
                              "budget (RG; free: nothing is trained).")
    variants: tuple[str, ...] = setting(
        ("batch=0.5", "lr=2"), help="Hyper-parameter variants besides the base: "
        "'batch=<factor>', 'lr=<factor>' or both joined by '+' (e.g. 'lr=0.5,batch=2+lr=2').")
    include_cs: bool = setting(True, help="Also score CS (cosine) groups under the base.")
    taylor: bool = setting(
        True, help="The base TAG training also records the first-order Taylor measure; adds "
        "the row 'TAG (Taylor)' (its r: correlation with the exact matrix of the same "
        "training).")
    max_tasks: int = setting(MAX_TASKS, help="Refuse more tasks: the ground truth is "
                             "2^n - 1 trainings.")


def main(argv):
    from tag_tf.cli import errors  # pylint: disable=g-import-not-at-top
    cli.no_arguments(argv)
    args = cli.read_args(Table3Args)
    with errors.user_input(ValueError, flag="--variants"):
        variants = [parse_variant(v) for v in args.variants]
    harness = cli.harness_from_flags(args)
    with errors.user_input(ValueError):
        check_size(harness, args.max_tasks)
    payload = run(harness, budgets=args.budgets, variants=variants,
                  include_cs=args.include_cs, rg_samples=args.rg_samples, seed=args.seed,
                  seeds=args.seeds, max_tasks=args.max_tasks, taylor=args.taylor,
                  output_dir=args.output_dir)
    print(payload["markdown"])


def define_flags() -> None:
    """The shared flags plus Table 3's own."""
    cli.define_flags("runs/table3", Table3Args)


if __name__ == "__main__":
    from tag_tf.cli import errors  # pylint: disable=g-import-not-at-top
    define_flags()
    errors.run(main)
