r"""Figure 3: task-grouping quality vs time to find the groups (Fifty et al., 2021).

For each budget: TAG, CS, HOA (all pairwise trainings), RG (random groupings), TAG+PCGrad
(TAG's groups trained with PCGrad); without grouping: MTL, STL, UW, GradNorm, PCGrad, and
two methods the paper did not run: DWA and MGDA-UB.
Reports the total test error over all tasks (each from its serving network) and the time
to find the groups (the affinity training plus selection for TAG / CS; every pair and
single-task training plus selection for HOA; none for RG).

  python -m tag_tf.experiments.figure3 --output_dir=runs/fig3
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Sequence


from matplotlib.lines import Line2D

from tag_tf import selection as selection_lib
from tag_tf.experiments import plot
from tag_tf.experiments import report
from tag_tf.experiments.harness import Harness, Training, rg_saturation_note, seeded_harnesses

GROUPED = ("TAG", "CS", "HOA", "RG", "TAG+PCGrad")
UNGROUPED = ("MTL", "STL", "UW", "GradNorm", "PCGrad", "DWA", "MGDA")
_MODE = {"MTL": "mtl", "UW": "uw", "GradNorm": "gradnorm", "PCGrad": "pcgrad", "DWA": "dwa",
         "MGDA": "mgda"}


def run(harness: Harness, *, budgets: Sequence[int] = (2, 3, 4), rg_samples: int = 2,
        seed: int = 0, seeds: int = 1, output_dir: str = "runs/fig3") -> dict:
    """Runs every method (cached); writes ``figure3.{md,json,png,pdf}``.

    ``seeds``: training seeds (``adapter.replicate``). With more than one, every method
    runs once per seed (its affinity training, the trainings of its chosen groups, the
    random groupings, the ungrouped baselines) and each number is the mean ± sample std
    over the seeds (RG: over every trained random grouping of every seed); ``per_seed``
    holds each seed's own rows.
    """
    start = time.perf_counter()
    n = len(harness.tasks)
    budgets = [int(b) for b in budgets if 1 <= int(b) <= n]
    harnesses = seeded_harnesses(harness, seeds)
    for h in harnesses:  # Progress: the trainings known up front
        h.plan(_known_trainings(h, budgets, rg_samples, seed), complete=False)
    per_seed = []
    for k, h in enumerate(harnesses):
        if len(harnesses) > 1:
            h.log(f"Figure 3: seed {k + 1} of {len(harnesses)}")
        per_seed.append(_seed_rows(h, budgets, rg_samples, seed,
                                   last=k == len(harnesses) - 1))
    rows = per_seed[0] if len(per_seed) == 1 else aggregate_rows(per_seed, budgets)

    error_name = harness.error_name
    payload = {"figure": "3", "adapter": harness.adapter.name,
               "adapter_settings": harness.adapter.settings(),
               "config": harness.base_config.to_json(), "budgets": budgets,
               "tasks": harness.tasks, "error_name": error_name, "methods": rows,
               "seeds": len(harnesses),
               "seconds": time.perf_counter() - start,
               **report.training_counts([h.cache for h in harnesses])}
    if len(harnesses) > 1:
        payload["per_seed"] = [{"adapter_settings": h.adapter.settings(), "methods": r}
                               for h, r in zip(harnesses, per_seed)]
    figures = plot.outputs(plot_figure(rows, budgets, os.path.join(output_dir, "figure3.png"),
                                       error_name=error_name))
    markdown = format_markdown(payload, figures["png"])
    payload["outputs"] = {**report.write_outputs(output_dir, "figure3", payload, markdown),
                          **figures}
    payload["markdown"] = markdown
    return payload


def _seed_rows(harness: Harness, budgets: Sequence[int], rg_samples: int, seed: int, *,
               last: bool = True) -> dict:
    """Every method's row for one training seed (``harness``)."""
    rows: dict[str, dict] = {}

    def grouped(name, selections, find_seconds, mode="mtl", extra=None):
        rows[name] = {"time_to_find_groups": find_seconds, "budgets": {}, **(extra or {})}
        for chosen in selections:
            rows[name]["budgets"][chosen.budget] = harness.evaluate_selection(chosen, mode)

    harness.log("Figure 3: TAG")
    tag = harness.affinity("lookahead")
    tag_sel, tag_sel_seconds = harness.select(tag.matrix, budgets)
    harness.plan(_networks(tag_sel) + _networks(tag_sel, "pcgrad"), complete=False)
    grouped("TAG", tag_sel, tag.seconds + tag_sel_seconds,
            extra={"affinity": tag.matrix, "affinity_path": tag.path,
                   "affinity_training_seconds": tag.seconds,
                   "selection_seconds": tag_sel_seconds, "settings": tag.settings})
    harness.log("Figure 3: CS")
    cs = harness.affinity("cosine")
    cs_sel, cs_sel_seconds = harness.select(cs.matrix, budgets)
    harness.plan(_networks(cs_sel), complete=False)
    grouped("CS", cs_sel, cs.seconds + cs_sel_seconds,
            extra={"similarity": cs.matrix, "affinity_training_seconds": cs.seconds,
                   "selection_seconds": cs_sel_seconds, "settings": cs.settings})
    harness.log("Figure 3: HOA (single-task and pairwise trainings)")
    pairs = harness.pairwise()
    t0 = time.perf_counter()
    hoa_sel = selection_lib.select_hoa(pairs["validation"], budgets, tasks=harness.tasks)
    hoa_sel_seconds = time.perf_counter() - t0
    harness.plan(_networks(hoa_sel), complete=last)
    grouped("HOA", hoa_sel, pairs["seconds"] + hoa_sel_seconds,
            extra={"pair_validation_error": pairs["validation"],
                   "pair_test_error": pairs["test"], "trainings": pairs["trainings"],
                   "selection_seconds": hoa_sel_seconds})
    harness.log("Figure 3: RG")
    rows["RG"] = {"time_to_find_groups": 0.0, "samples": rg_samples, "seed": seed,
                  "budgets": {}}
    rows["RG"]["budgets"] = harness.random_baseline(budgets, rg_samples, seed)
    harness.log("Figure 3: TAG+PCGrad")
    grouped("TAG+PCGrad", tag_sel, tag.seconds + tag_sel_seconds, mode="pcgrad")
    harness.log(f"Figure 3: {', '.join(UNGROUPED)}")
    for name in UNGROUPED:
        if name == "STL":
            result = harness.evaluate([((t,), (t,)) for t in harness.tasks])
        else:
            results = harness.train(harness.tasks, _MODE[name])
            result = {"task_error": results["test_error"],
                      "total_error": results["total_test_error"],
                      "training_seconds": results["seconds"],
                      "networks": [{"tasks": harness.tasks, "serves": harness.tasks,
                                    "cache_dir": results["cache_dir"]}]}
        rows[name] = {"time_to_find_groups": None, "budgets": {b: result for b in budgets}}
    return rows


def aggregate_rows(per_seed: Sequence[dict], budgets: Sequence[int]) -> dict:
    """Mean ± sample std over seeds of every method's numbers (``per_seed``: one
    :func:`_seed_rows` result per seed).

    Per method and budget: ``total_error`` (mean), ``std``, ``totals`` (one per seed),
    ``task_error`` / ``task_error_std`` (per task), ``networks`` (the first seed's) and
    ``networks_per_seed``. RG's ``totals`` are every trained random grouping of every seed
    (``std`` over all of them: the groupings' and the seeds' spread). ``time_to_find_groups``
    is the mean over seeds (``time_to_find_groups_std``).
    """
    rows = {}
    for method in per_seed[0]:
        seed_rows = [r[method] for r in per_seed]
        find = [r["time_to_find_groups"] for r in seed_rows]
        row = {"time_to_find_groups": None if find[0] is None else
               report.mean_std(find)["mean"], "seeds": len(per_seed), "budgets": {}}
        if find[0] is not None:
            row["time_to_find_groups_std"] = report.mean_std(find)["std"]
        if method == "RG":
            row.update(samples=seed_rows[0]["samples"], seed=seed_rows[0]["seed"])
        for b in budgets:
            entries = [r["budgets"][b] for r in seed_rows]
            if method == "RG":
                totals = [s["total_error"] for e in entries for s in e["samples"]]
            else:
                totals = [e["total_error"] for e in entries]
            stats = report.mean_std(totals)
            tasks = list(entries[0].get("task_error") or {})
            per_task = {t: report.mean_std([(e.get("task_error") or {}).get(t)
                                            for e in entries]) for t in tasks}
            networks = [e.get("networks") or [] for e in entries]
            if method == "RG":
                networks = [s["networks"] for e in entries for s in e["samples"]]
            row["budgets"][b] = {
                "total_error": stats["mean"], "std": stats["std"], "totals": totals,
                "task_error": {t: v["mean"] for t, v in per_task.items()},
                "task_error_std": {t: v["std"] for t, v in per_task.items()},
                "networks": networks[0], "networks_per_seed": networks}
        rows[method] = row
    return rows


def _known_trainings(harness: Harness, budgets: Sequence[int], rg_samples: int,
                     seed: int) -> list[Training]:
    """The trainings Figure 3 needs whatever the affinities select."""
    tasks = tuple(harness.tasks)
    known = [harness.affinity_training("lookahead"), harness.affinity_training("cosine")]
    known += [Training((t,)) for t in tasks]
    known += [Training(pair) for pair in itertools.combinations(tasks, 2)]
    known += [Training(tuple(group)) for b in budgets
              for partition in harness.random_partitions(b, rg_samples, seed)
              for group, _ in partition]
    known += [Training(tasks, mode) for mode in ("mtl", *_MODE.values())]
    return known


def _networks(selections, mode: str = "mtl") -> list[Training]:
    return [Training(tuple(n.tasks), mode) for chosen in selections for n in chosen.networks]


def format_markdown(payload: dict, pngs: Sequence[str] = ()) -> str:
    rows, budgets = payload["methods"], payload["budgets"]
    name = payload["error_name"]
    body = []
    for method in GROUPED + UNGROUPED:
        row = rows[method]
        find = row["time_to_find_groups"]
        cells = [method, "no groups" if find is None else
                 ("0 (no search)" if find == 0 else
                  report.pm(find, row.get("time_to_find_groups_std"), ".1f", ".1f"))]
        for b in budgets:
            entry = row["budgets"][b]
            text = report.fmt(entry["total_error"])
            if "std" in entry:
                text += f" ± {report.fmt(entry['std'], '.2g')}"
            cells.append(text)
        body.append(cells)
    seeds = payload.get("seeds", 1)
    over = (f" Mean ± sample std over {seeds} training seeds: each method ran once per seed "
            "(its affinity training and the trainings of the groups it chose); RG over every "
            f"trained random grouping of every seed ({seeds} x "
            f"{rows['RG'].get('samples')} per budget)." if seeds > 1 else "")
    lines = [f"## Figure 3 ({payload['adapter']}: {len(payload['tasks'])} tasks)", "",
             f"Total test {name} over all tasks (lower is better) and time to find the "
             "groups (s)." + over, "",
             report.markdown_table(["method", "time to find groups (s)"]
                                   + [f"total {name}, {b} networks" for b in budgets], body),
             "", "Chosen groups (task indices"
             + ("; one grouping per seed, separated by /" if seeds > 1 else "") + "):", "",
             report.markdown_table(["method"] + [f"{b} networks" for b in budgets],
                                   [[m] + [_groups_cell(rows[m]["budgets"][b]) for b in budgets]
                                    for m in ("TAG", "CS", "HOA")]),
             "", report.training_counts_text(payload)]
    note = rg_saturation_note(len(payload["tasks"]), budgets)
    if note:
        lines[5:5] = ["", note]
    if pngs:
        lines += ["", f"Figure: {', '.join(os.path.basename(p) for p in pngs)} (+ PDF): (a) "
                  "total test error per budget, methods side by side (RG: mean ± std error "
                  "bars); (b) total error vs time to find the groups (log scale) for the "
                  "methods that search."]
    return "\n".join(lines)


def _groups_cell(entry: dict) -> str:
    """The chosen groups; ``a / b / c`` per seed for a multi-seed row."""
    per_seed = entry.get("networks_per_seed")
    if per_seed is None:
        return report.groups_text(entry["networks"])
    return " / ".join(report.groups_text(n) for n in per_seed)


def plot_figure(rows: dict, budgets: Sequence[int], path: str, *,
                error_name: str = "error") -> list[str]:
    """Writes :func:`make_figure` as ``path`` (PNG) and its PDF; returns the paths."""
    return plot.save_figure(make_figure(rows, budgets, error_name=error_name), path)


def make_figure(rows: dict, budgets: Sequence[int], *,
                error_name: str = "error") -> plot.Figure:
    """Figure 3: (a) total error per budget, (b) total error vs time to find the groups.

    (a): grouped bars, one group per budget, every method side by side; RG is the mean
    of its trained random groupings with +-1 std error bars; with several seeds every
    method is its mean over the seeds with +-1 std error bars (in (b) too). (b): total error against
    the time to find the groups (log scale) for the methods that search (TAG, CS, HOA,
    TAG+PCGrad), one marker per budget.
    """
    methods = [m for m in GROUPED + UNGROUPED if m in rows]
    colours = {m: plot.colour(i) for i, m in enumerate(GROUPED + UNGROUPED)}
    fig, (bars, times) = plot.new_figure(13.0, 5.0, ncols=2)
    fig.get_layout_engine().set(wspace=0.05)
    series = {m: [rows[m]["budgets"][b]["total_error"] for b in budgets] for m in methods}
    errors = {m: [rows[m]["budgets"][b].get("std") for b in budgets] for m in methods
              if any("std" in rows[m]["budgets"][b] for b in budgets)}
    plot.grouped_bars(bars, [f"{b} network{'s' if b != 1 else ''}" for b in budgets], series,
                      errors=errors, colours=colours)
    bars.set_xlabel("budget (networks at inference)")
    bars.set_ylabel(plot.error_label(error_name) + "\n(lower is better)")
    samples = rows.get("RG", {}).get("samples")
    seeds = rows.get("TAG", {}).get("seeds", 1)
    if seeds > 1:
        subtitle = (f"\nmean ± std over {seeds} training seeds (RG: over {seeds} x {samples} "
                    "trained random groupings)")
    else:
        subtitle = (f"\nRG: mean ± std of {samples} trained random groupings" if samples
                    else "")
    bars.set_title("(a) total test error per budget" + subtitle, fontsize=10)
    fig.legend(handles=bars.get_legend_handles_labels()[0], loc="outside lower center",
               ncols=len(methods), fontsize=8, frameon=False)

    markers = "osD^v<>p*h"
    searched = [m for m in methods if rows[m]["time_to_find_groups"]]
    for m in searched:
        for k, b in enumerate(budgets):
            error = rows[m]["budgets"][b]["total_error"]
            if error is not None:
                if seeds > 1:  # +-1 std over seeds in both directions
                    times.errorbar(rows[m]["time_to_find_groups"], error,
                                   yerr=rows[m]["budgets"][b].get("std"),
                                   xerr=rows[m].get("time_to_find_groups_std"),
                                   color=colours[m], linewidth=1, capsize=2, zorder=2)
                times.scatter(rows[m]["time_to_find_groups"], error, s=45,
                              color=colours[m], marker=markers[k % len(markers)],
                              edgecolors="black", linewidths=0.5, zorder=3)
    times.set_xscale("log")
    plot.plain_log_ticks(times.xaxis)
    times.set_xlabel("time to find the groups (s, log scale)")
    times.set_ylabel(plot.error_label(error_name) + "\n(lower is better)")
    times.set_title("(b) error vs time to find the groups\n(not shown: RG, no search; MTL, "
                    "STL, UW, GradNorm, PCGrad, no groups)", fontsize=10)
    times.margins(x=0.1, y=0.1)
    times.grid(alpha=0.3, which="both")
    handles = [Line2D([], [], linestyle="none", marker=markers[k % len(markers)],
                       color="grey", label=f"{b} network{'s' if b != 1 else ''}")
                for k, b in enumerate(budgets)]
    times.legend(handles=handles, fontsize=8, loc="best", framealpha=0.9,
                 title="marker: budget; colour: method", title_fontsize=8)
    fig.suptitle(f"Figure 3: total test {plot.ERROR_UNITS.get(error_name, error_name)} "
                 "of the task groupings", fontsize=11)
    return fig


def main(argv):
    from tag_tf.experiments import cli  # pylint: disable=g-import-not-at-top
    cli.no_arguments(argv)
    args = cli.read_args()
    harness = cli.harness_from_flags(args)
    payload = run(harness, budgets=args.budgets, rg_samples=args.rg_samples, seed=args.seed,
                  seeds=args.seeds, output_dir=args.output_dir)
    print(payload["markdown"])


if __name__ == "__main__":
    from tag_tf.cli import errors  # pylint: disable=g-import-not-at-top
    from tag_tf.experiments import cli  # pylint: disable=g-import-not-at-top,reimported
    cli.define_flags(default_output="runs/fig3")
    errors.run(main)
