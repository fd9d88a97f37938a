r"""Table 2: affinity every {1, 5, 10, 25, 50, 100} steps and in first/middle/final 25 %.

For each setting: one TAG affinity training, the groups it selects for each budget and
their trained total test error; reported as the improvement over random groupings (RG,
the same trained random groupings as Figure 3), ``100 * (RG - error) / RG`` per budget
and averaged, and the measured speed-up of the affinity training relative to recording
every step (its wall time over this setting's).

  python -m tag_tf.experiments.table2 --output_dir=runs/table2
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np

from tag_tf.experiments import plot
from tag_tf.experiments import report
from tag_tf.experiments.harness import Harness, steady_seconds

FREQUENCIES = (1, 5, 10, 25, 50, 100)
WINDOWS = ("first", "middle", "final")


def improvement(error, random_error):
    """``100 * (random - error) / random`` (None when either is missing)."""
    if error is None or random_error is None or random_error == 0:
        return None
    return 100.0 * (random_error - error) / random_error


def run(harness: Harness, *, budgets: Sequence[int] = (2, 3, 4),
        frequencies: Sequence[int] = FREQUENCIES, windows: Sequence[str] = WINDOWS,
        window_every_n: int | None = None, rg_samples: int = 2, seed: int = 0,
        output_dir: str = "runs/table2") -> dict:
    """Runs every setting (cached); writes ``table2.{md,json,png,pdf}``."""
    start = time.perf_counter()
    budgets = [int(b) for b in budgets if 1 <= int(b) <= len(harness.tasks)]
    window_every_n = window_every_n or harness.base_config.affinity.every_n
    harness.log("Table 2: random groupings")
    random = harness.random_baseline(budgets, rg_samples, seed)
    settings = [{"every_n": int(n), "window": None} for n in frequencies]
    settings += [{"every_n": int(window_every_n), "window": w} for w in windows]
    rows = []
    for setting in settings:
        harness.log(f"Table 2: {setting}")
        run_ = harness.affinity("lookahead", every_n=setting["every_n"],
                                window=setting["window"])
        selections, sel_seconds = harness.select(run_.matrix, budgets)
        per_budget = {}
        for chosen in selections:
            evaluated = harness.evaluate_selection(chosen)
            per_budget[chosen.budget] = {
                **evaluated,
                "vs_random_percent": improvement(evaluated["total_error"],
                                                 random[chosen.budget]["total_error"])}
        gains = [v["vs_random_percent"] for v in per_budget.values()
                 if v["vs_random_percent"] is not None]
        recorded = (run_.record().config or {}).get("recorded_steps")
        rows.append({**setting, "affinity_seconds": run_.seconds,
                     "affinity_seconds_after_first_epoch": steady_seconds(run_.results),
                     "selection_seconds": sel_seconds, "recorded_steps": recorded,
                     "affinity": run_.matrix, "affinity_path": run_.path,
                     "settings": run_.settings, "budgets": per_budget,
                     "mean_vs_random_percent": float(np.mean(gains)) if gains else None})
    reference = next((r for r in rows if r["every_n"] == 1 and r["window"] is None), None)
    for row in rows:
        row["speedup_vs_every_step"] = (reference["affinity_seconds"] / row["affinity_seconds"]
                                        if reference else None)
        steady = row["affinity_seconds_after_first_epoch"]
        ref = reference and reference["affinity_seconds_after_first_epoch"]
        row["steady_speedup_vs_every_step"] = ref / steady if ref and steady else None
    payload = {"table": "2", "adapter": harness.adapter.name,
               "adapter_settings": harness.adapter.settings(),
               "config": harness.base_config.to_json(), "budgets": budgets,
               "tasks": harness.tasks, "error_name": harness.error_name,
               "random": random, "rg_samples": rg_samples, "seed": seed, "rows": rows,
               "seconds": time.perf_counter() - start,
               **report.training_counts([harness.cache])}
    figures = plot.outputs(plot_table(payload, os.path.join(output_dir, "table2.png")))
    markdown = format_markdown(payload) + FIGURE_NOTE
    payload["outputs"] = {**report.write_outputs(output_dir, "table2", payload, markdown),
                          **figures}
    payload["markdown"] = markdown
    return payload


FIGURE_NOTE = ("\n\nFigure: table2.png (+ PDF): (a) improvement over RG per setting and "
               "budget, (b) the affinity training's speed-up vs recording every step.")


def setting_label(row: dict) -> str:
    """``every 10`` or ``every 10, first 25 %``."""
    return f"every {row['every_n']}" + (f", {row['window']} 25 %" if row["window"] else "")


def plot_table(payload: dict, path: str) -> list[str]:
    """Writes :func:`make_figure` as ``path`` (PNG) and its PDF; returns the paths."""
    return plot.save_figure(make_figure(payload), path)


def make_figure(payload: dict) -> plot.Figure:
    """The table's figure: (a) % improvement over RG, (b) speed-up."""
    rows, budgets = payload["rows"], payload["budgets"]
    labels = [setting_label(r).replace(", ", "\n") for r in rows]
    fig, (gain, speed) = plot.new_figure(10.0, 8.5, nrows=2)
    series = {f"{b} network{'s' if b != 1 else ''}": [r["budgets"][b]["vs_random_percent"]
                                                       for r in rows] for b in budgets}
    series["mean over budgets"] = [r["mean_vs_random_percent"] for r in rows]
    plot.grouped_bars(gain, labels, series)
    gain.set_xlabel("affinity recorded")
    gain.set_ylabel("improvement over RG, 100 (RG − error) / RG (%)\n(higher is better)")
    unit = plot.ERROR_UNITS.get(payload["error_name"], payload["error_name"])
    gain.set_title(f"(a) total test {unit} of the selected groups vs random groupings",
                   fontsize=10)
    gain.legend(fontsize=8, title="budget", title_fontsize=8, loc="center left",
                bbox_to_anchor=(1.0, 0.5), frameon=False)
    plot.grouped_bars(speed, labels, {
        "whole training": [r["speedup_vs_every_step"] for r in rows],
        "epochs 2+": [r["steady_speedup_vs_every_step"] for r in rows]})
    speed.axhline(1, color="grey", linestyle="--", linewidth=1)
    speed.set_xlabel("affinity recorded")
    speed.set_ylabel("speed-up vs every step (×)\n(wall time of 'every 1' / this setting's)")
    speed.set_title("(b) affinity training speed-up (dashed: 1×)", fontsize=10)
    speed.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    for ax in (gain, speed):
        ax.tick_params(axis="x", labelsize=8.5)
    fig.suptitle(f"Table 2 ({payload['adapter']}): recording frequency and window",
                 fontsize=11)
    return fig


def format_markdown(payload: dict) -> str:
    budgets = payload["budgets"]
    body = []
    for row in payload["rows"]:
        label = setting_label(row)
        body.append([label, row["recorded_steps"], report.fmt(row["affinity_seconds"], ".1f"),
                     report.fmt(row["speedup_vs_every_step"], ".2f") + "x",
                     report.fmt(row["affinity_seconds_after_first_epoch"], ".1f"),
                     report.fmt(row["steady_speedup_vs_every_step"], ".2f") + "x"]
                    + [report.fmt(row["budgets"][b]["vs_random_percent"], "+.1f")
                       for b in budgets]
                    + [report.fmt(row["mean_vs_random_percent"], "+.1f")])
    name = payload["error_name"]
    random = ", ".join(f"{b}: {report.fmt(payload['random'][b]['total_error'])}"
                       for b in budgets)
    return "\n".join([
        f"## Table 2 ({payload['adapter']}: {len(payload['tasks'])} tasks)", "",
        f"Improvement of the selected groups' total test {name} over random groupings, "
        "`100 * (RG - error) / RG` in % (higher is better), and the affinity training's "
        "measured speed-up relative to recording every step: over the whole training, and "
        "over epochs 2+ (without the first epoch's tracing and warm-up).", "",
        report.markdown_table(["affinity recorded", "recorded steps", "training (s)",
                               "speed-up", "epochs 2+ (s)", "speed-up, epochs 2+"] + [f"vs RG, {b} nets (%)" for b in budgets]
                              + ["mean (%)"], body), "",
        f"RG total test {name} (mean of {payload['rg_samples']} trained random groupings): "
        f"{random}.",
        report.training_counts_text(payload)])


def main(argv):
    from tag_tf.experiments import cli  # pylint: disable=g-import-not-at-top
    cli.no_arguments(argv)
    args = cli.read_args()
    harness = cli.harness_from_flags(args)
    payload = run(harness, budgets=args.budgets, rg_samples=args.rg_samples, seed=args.seed,
                  output_dir=args.output_dir)
    print(payload["markdown"])


if __name__ == "__main__":
    from tag_tf.cli import errors  # pylint: disable=g-import-not-at-top
    from tag_tf.experiments import cli  # pylint: disable=g-import-not-at-top,reimported
    cli.define_flags(default_output="runs/table2")
    errors.run(main)
