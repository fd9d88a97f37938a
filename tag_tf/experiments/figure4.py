r"""Figure 4: per-epoch affinity onto chosen tasks over training.

Reads the per-epoch trace of the TAG affinity training (the affinity JSON's ``epochs``;
the same cached training as Figure 3) and, for each chosen target task, tabulates and
plots the affinity ``Z[source -> target]`` of every other task per epoch.

  python -m tag_tf.experiments.figure4 --output_dir=runs/fig4 --targets=task_0
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional, Sequence

import matplotlib.ticker
import numpy as np

from tag_tf.cli.flags import setting
from tag_tf.experiments import cli
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


def plot_trace(trace: dict, target: str, path: str) -> list[str]:
    """Writes :func:`trace_figure` as ``path`` (PNG) and its PDF; returns the paths."""
    return plot.save_figure(trace_figure(trace, target), path)


def trace_figure(trace: dict, target: str) -> plot.Figure:
    """Figure 4: ``Z[source -> target]`` per epoch (1-based), one line per source.

    An epoch without a recorded value leaves a gap (no line is drawn across it); markers
    show every recorded epoch.
    """
    sources = list(trace["sources"])
    epochs = [e + 1 for e in trace["epochs"]]
    columns = min(3, max(1, len(sources)))
    legend_rows = -(-len(sources) // columns)
    fig, (ax,) = plot.new_figure(7.5, 4.2 + 0.2 * legend_rows)
    ax.axhline(0, color="grey", linewidth=1, zorder=1)
    for k, source in enumerate(sources):
        values = [np.nan if v is None else v for v in trace["sources"][source]]
        ax.plot(epochs, values, marker="o", markersize=3.5, linewidth=1.5,
                color=plot.colour(k), label=f"{source} → {target}", zorder=2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"affinity Z[source → {target}]\n(> 0: the source helps {target})")
    ax.set_title(f"Figure 4: lookahead affinity onto {target} per epoch", fontsize=11)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    fig.legend(fontsize=8, loc="outside lower center", ncols=columns, frameon=False)
    return fig


def check_targets(harness: Harness, targets: Optional[Sequence[str]]) -> list[str]:
    """``targets`` (default: the first task), each one of the harness's tasks."""
    targets = list(targets or harness.tasks[:1])
    unknown = [t for t in targets if t not in harness.tasks]
    if unknown:
        raise ValueError(f"Unknown target task(s) {unknown}; tasks: {harness.tasks}")
    return targets


def run(harness: Harness, *, targets: Optional[Sequence[str]] = None,
        output_dir: str = "runs/fig4") -> dict:
    """Writes ``figure4.{md,json}`` and ``figure4_<target>.{png,pdf}``."""
    start = time.perf_counter()
    targets = check_targets(harness, targets)
    harness.log("Figure 4: TAG affinity training")
    run_ = harness.affinity("lookahead")
    record = run_.record()
    if not record.epochs:
        raise ValueError(f"{run_.path} holds no per-epoch trace.")
    os.makedirs(output_dir, exist_ok=True)
    per_target, paths = {}, []
    for target in targets:
        trace = traces(record, target)
        per_target[target] = trace
        paths += plot_trace(trace, target, os.path.join(output_dir, f"figure4_{target}.png"))
    figures = plot.outputs(paths)
    payload = {"figure": "4", "adapter": harness.adapter.name,
               "adapter_settings": harness.adapter.settings(),
               "config": harness.base_config.to_json(), "tasks": harness.tasks,
               "affinity_path": run_.path, "settings": run_.settings, "targets": per_target,
               "seconds": time.perf_counter() - start}
    markdown = format_markdown(payload, figures["png"])
    payload["outputs"] = {**report.write_outputs(output_dir, "figure4", payload, markdown),
                          **figures}
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
            lines += ["", f"Figure: {os.path.basename(png)} (+ PDF), one line per source; "
                      "n/a epochs are gaps."]
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Figure4Args(cli.HarnessArgs):
    """Figure 4's flags: the shared ones plus the target tasks."""

    targets: tuple[str, ...] = setting((), help="Target tasks (default: the first task).")


def main(argv):
    from tag_tf.cli import errors  # pylint: disable=g-import-not-at-top
    cli.no_arguments(argv)
    args = cli.read_args(Figure4Args)
    harness = cli.harness_from_flags(args)
    with errors.user_input(ValueError, flag="--targets"):
        check_targets(harness, list(args.targets))
    payload = run(harness, targets=list(args.targets), output_dir=args.output_dir)
    print(payload["markdown"])


if __name__ == "__main__":
    from tag_tf.cli import errors  # pylint: disable=g-import-not-at-top
    cli.define_flags("runs/fig4", Figure4Args)
    errors.run(main)
