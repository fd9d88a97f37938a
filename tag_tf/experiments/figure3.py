r"""Figure 3: task-grouping quality vs time to find the groups (Fifty et al., 2021).

For each budget: TAG, CS, HOA (all pairwise trainings), RG (random groupings), TAG+PCGrad
(TAG's groups trained with PCGrad); without grouping: MTL, STL, UW, GradNorm, PCGrad.
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

import numpy as np

from tag_tf import selection as selection_lib
from tag_tf.experiments import plot
from tag_tf.experiments import report
from tag_tf.experiments.harness import Harness, Training, rg_saturation_note

GROUPED = ("TAG", "CS", "HOA", "RG", "TAG+PCGrad")
UNGROUPED = ("MTL", "STL", "UW", "GradNorm", "PCGrad")
_MODE = {"MTL": "mtl", "UW": "uw", "GradNorm": "gradnorm", "PCGrad": "pcgrad"}


def run(harness: Harness, *, budgets: Sequence[int] = (2, 3, 4), rg_samples: int = 2,
        seed: int = 0, output_dir: str = "runs/fig3") -> dict:
    """Runs every method (cached), writes ``figure3.{md,json}`` and ``figure3_b<b>.png``."""
    start = time.perf_counter()
    n = len(harness.tasks)
    budgets = [int(b) for b in budgets if 1 <= int(b) <= n]
    rows: dict[str, dict] = {}

    def grouped(name, selections, find_seconds, mode="mtl", extra=None):
        rows[name] = {"time_to_find_groups": find_seconds, "budgets": {}, **(extra or {})}
        for chosen in selections:
            rows[name]["budgets"][chosen.budget] = harness.evaluate_selection(chosen, mode)

    # Progress: the trainings known up front, then those the selections add.
    harness.plan(_known_trainings(harness, budgets, rg_samples, seed), complete=False)
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
    harness.plan(_networks(hoa_sel), complete=True)
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
    harness.log("Figure 3: MTL, STL, UW, GradNorm, PCGrad")
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

    error_name = harness.error_name
    payload = {"figure": "3", "adapter": harness.adapter.name,
               "adapter_settings": harness.adapter.settings(),
               "options": harness.base_options.to_json(), "budgets": budgets,
               "tasks": harness.tasks, "error_name": error_name, "methods": rows,
               "seconds": time.perf_counter() - start,
               **report.training_counts([harness.cache])}
    pngs = _plots(rows, budgets, output_dir, error_name=error_name)
    markdown = format_markdown(payload, pngs)
    payload["outputs"] = report.write_outputs(output_dir, "figure3", payload, markdown)
    payload["outputs"]["png"] = pngs
    payload["markdown"] = markdown
    return payload


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
                 ("0 (no search)" if find == 0 else report.fmt(find, ".1f"))]
        for b in budgets:
            entry = row["budgets"][b]
            text = report.fmt(entry["total_error"])
            if "std" in entry:
                text += f" ± {report.fmt(entry['std'], '.2g')}"
            cells.append(text)
        body.append(cells)
    lines = [f"## Figure 3 ({payload['adapter']}: {len(payload['tasks'])} tasks)", "",
             f"Total test {name} over all tasks (lower is better) and time to find the "
             "groups (s).", "",
             report.markdown_table(["method", "time to find groups (s)"]
                                   + [f"total {name}, {b} networks" for b in budgets], body),
             "", "Chosen groups (task indices):", "",
             report.markdown_table(["method"] + [f"{b} networks" for b in budgets],
                                   [[m] + [report.groups_text(rows[m]["budgets"][b]["networks"])
                                           for b in budgets]
                                    for m in ("TAG", "CS", "HOA")]),
             "", report.training_counts_text(payload)]
    note = rg_saturation_note(len(payload["tasks"]), budgets)
    if note:
        lines[5:5] = ["", note]
    if pngs:
        legend = ", ".join(f"{m} = {plot.colour(i)[0]}"
                           for i, m in enumerate(GROUPED + UNGROUPED))
        lines += ["", f"Plots: {', '.join(os.path.basename(p) for p in pngs)} (x: time to "
                  "find groups, log scale, decade grid lines; y: total error; squares: "
                  "grouping methods, RG drawn at a tenth of the fastest search; dashed "
                  f"lines: methods without groups). Colours: {legend}."]
    return "\n".join(lines)


def _plots(rows: dict, budgets: Sequence[int], output_dir: str,
           error_name: str = "error") -> list[str]:
    """One ``figure3_b<b>.png`` per budget: error vs time to find the groups (log x)."""
    os.makedirs(output_dir, exist_ok=True)
    times = [rows[m]["time_to_find_groups"] for m in GROUPED
             if rows[m]["time_to_find_groups"]]
    floor = min(times) / 10 if times else 1.0
    paths = []
    for b in budgets:
        xs, ys = [], []
        for m in GROUPED + UNGROUPED:
            t = rows[m]["time_to_find_groups"]
            xs.append(floor if t == 0 else t)
            ys.append(rows[m]["budgets"][b]["total_error"])
        canvas = plot.Canvas(
            [x for x in xs if x], ys, log_x=True,
            title=f"Figure 3: total test {error_name}, {b} networks",
            x_label="time to find groups (s, log scale)",
            y_label=f"total test {error_name} (lower is better)")
        for i, m in enumerate(GROUPED + UNGROUPED):
            rgb = plot.colour(i)[1]
            if m in GROUPED:
                no_search = rows[m]["time_to_find_groups"] == 0
                canvas.point(xs[i], ys[i], rgb,
                             label=f"{m} (0 s, drawn at min/10)" if no_search else m)
            else:
                canvas.hline(ys[i], rgb, label=f"{m} (no groups)")
        path = os.path.join(output_dir, f"figure3_b{b}.png")
        canvas.write(path)
        paths.append(path)
    return paths


def main(argv):
    del argv
    from tag_tf.experiments import cli  # pylint: disable=g-import-not-at-top
    harness = cli.harness_from_flags()
    payload = run(harness, budgets=cli.budgets(), rg_samples=cli.FLAGS.rg_samples,
                  seed=cli.FLAGS.seed, output_dir=cli.FLAGS.output_dir)
    print(payload["markdown"])


if __name__ == "__main__":
    from absl import app  # pylint: disable=g-import-not-at-top
    from tag_tf.experiments import cli  # pylint: disable=g-import-not-at-top,reimported
    cli.define_flags(default_output="runs/fig3")
    app.run(main)
