r"""Figure 4: per-epoch affinity onto chosen tasks over training.

Reads the per-epoch trace of the TAG affinity training (the affinity JSON's ``epochs``;
the same cached training as Figure 3) and, for each chosen target task, tabulates and
plots the affinity ``Z[source -> target]`` of every other task per epoch.

  python -m tag_tf.experiments.figure4 --output_dir=runs/fig4 --targets=task_0
"""

from __future__ import annotations

import os
import time
from typing import Optional, Sequence

import numpy as np

from tag_tf.experiments import plot
from tag_tf.experiments import report
from tag_tf.experiments.harness import Harness


def traces(record, target: str) -> dict:
    """``{source: [affinity onto target per epoch]}`` and the epochs, from a record."""
    tasks = list(record.tasks)
    j = tasks.index(target)
    epochs = [int(e["epoch"]) for e in record.epochs or []]
    out = {}
    for i, source in enumerate(tasks):
        if i == j:
            continue
        values = []
        for e in record.epochs or []:
            value, count = e["affinity"][i][j], e["counts"][i][j]
            values.append(None if value is None or not count else float(value))
        out[source] = values
    return {"epochs": epochs, "sources": out}


def plot_trace(trace: dict, target: str, path: str) -> None:
    """Writes one PNG: ``Z[source -> target]`` per epoch (1-based, as in the markdown)."""
    sources = list(trace["sources"])
    epochs = [e + 1 for e in trace["epochs"]]
    ys = [v for s in sources for v in trace["sources"][s] if v is not None]
    canvas = plot.Canvas(epochs, ys, x_integer=True,
                         title=f"Figure 4: affinity onto {target} per epoch",
                         x_label="epoch", y_label=f"affinity Z[source -> {target}]")
    canvas.zero_line()
    for k, source in enumerate(sources):
        canvas.line(epochs, trace["sources"][source], plot.colour(k)[1],
                    label=f"{source} -> {target}")
    canvas.write(path)


def run(harness: Harness, *, targets: Optional[Sequence[str]] = None,
        output_dir: str = "runs/fig4") -> dict:
    """Writes ``figure4.{md,json}`` and ``figure4_<target>.png``."""
    start = time.perf_counter()
    targets = list(targets or harness.tasks[:1])
    unknown = [t for t in targets if t not in harness.tasks]
    if unknown:
        raise ValueError(f"Unknown target task(s) {unknown}; tasks: {harness.tasks}")
    harness.log("Figure 4: TAG affinity training")
    run_ = harness.affinity("lookahead")
    record = run_.record()
    if not record.epochs:
        raise ValueError(f"{run_.path} holds no per-epoch trace.")
    os.makedirs(output_dir, exist_ok=True)
    per_target, pngs = {}, []
    for target in targets:
        trace = traces(record, target)
        per_target[target] = trace
        path = os.path.join(output_dir, f"figure4_{target}.png")
        plot_trace(trace, target, path)
        pngs.append(path)
    payload = {"figure": "4", "adapter": harness.adapter.name,
               "adapter_settings": harness.adapter.settings(),
               "options": harness.base_options.to_json(), "tasks": harness.tasks,
               "affinity_path": run_.path, "settings": run_.settings, "targets": per_target,
               "seconds": time.perf_counter() - start}
    markdown = format_markdown(payload, pngs)
    payload["outputs"] = report.write_outputs(output_dir, "figure4", payload, markdown)
    payload["outputs"]["png"] = pngs
    payload["markdown"] = markdown
    return payload


def format_markdown(payload: dict, pngs: Sequence[str] = ()) -> str:
    lines = [f"## Figure 4 ({payload['adapter']}): per-epoch affinity onto chosen tasks"]
    for (target, trace), png in zip(payload["targets"].items(), list(pngs) + [None] * 99):
        sources = list(trace["sources"])
        body = [[e + 1] + [report.fmt(trace["sources"][s][k], ".4f") for s in sources]
                for k, e in enumerate(trace["epochs"])]
        lines += ["", f"Z[source -> {target}] per epoch:", "",
                  report.markdown_table(["epoch"] + sources, body)]
        if png:
            legend = ", ".join(f"{s} = {plot.colour(k)[0]}" for k, s in enumerate(sources))
            lines += ["", f"Plot {os.path.basename(png)} (x: epoch, y: affinity, grey line: "
                      f"0). Colours: {legend}."]
    return "\n".join(lines)


def main(argv):
    del argv
    from tag_tf.experiments import cli  # pylint: disable=g-import-not-at-top
    harness = cli.harness_from_flags()
    payload = run(harness, targets=cli.FLAGS.targets, output_dir=cli.FLAGS.output_dir)
    print(payload["markdown"])


if __name__ == "__main__":
    from absl import app, flags  # pylint: disable=g-import-not-at-top
    from tag_tf.experiments import cli  # pylint: disable=g-import-not-at-top,reimported
    cli.define_flags(default_output="runs/fig4")
    flags.DEFINE_list("targets", [], "Target tasks (default: the first task).")
    app.run(main)
