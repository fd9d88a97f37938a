r"""Table 1: each task's best auxiliary partner by TAG vs the optimal and worst partner.

TAG's partner for task ``t`` is the task with the highest affinity onto ``t``
(``argmax_s Z[s -> t]``, from the TAG affinity training). Every pair is trained (the same
cached pairwise trainings as HOA in Figure 3); ``t``'s test error next to each partner
gives the optimal and worst partner. Each is normalised against a random partner (the
mean error over all partners): ``100 * (random - error) / random`` (higher is better).

  python -m tag_tf.experiments.table1 --output_dir=runs/table1
"""

from __future__ import annotations

import time

import numpy as np

from tag_tf.experiments import report
from tag_tf.experiments.harness import Harness
from tag_tf.experiments.table2 import improvement


def run(harness: Harness, *, output_dir: str = "runs/table1") -> dict:
    """Writes ``table1.{md,json}``."""
    start = time.perf_counter()
    tasks = harness.tasks
    harness.log("Table 1: TAG affinity training")
    tag = harness.affinity("lookahead")
    harness.log("Table 1: pairwise trainings")
    pairs = harness.pairwise()
    rows = {}
    for j, task in enumerate(tasks):
        partners = [s for s in tasks if s != task]
        errors = {s: pairs["test"][task][s] for s in partners}
        scores = {s: tag.matrix[tasks.index(s), j] for s in partners}
        tag_partner = max(partners, key=lambda s: -np.inf if not np.isfinite(scores[s])
                          else scores[s])
        best = min(partners, key=lambda s: errors[s])
        worst = max(partners, key=lambda s: errors[s])
        random = float(np.mean([errors[s] for s in partners]))
        rows[task] = {
            "tag_partner": tag_partner, "optimal_partner": best, "worst_partner": worst,
            "errors": errors, "affinity_onto_task": scores, "random_partner_error": random,
            "single_task_error": pairs["test"][task][task],
            "tag_vs_random_percent": improvement(errors[tag_partner], random),
            "optimal_vs_random_percent": improvement(errors[best], random),
            "worst_vs_random_percent": improvement(errors[worst], random)}
    means = {k: float(np.mean([r[k] for r in rows.values()]))
             for k in ("tag_vs_random_percent", "optimal_vs_random_percent",
                       "worst_vs_random_percent")}
    payload = {"table": "1", "adapter": harness.adapter.name,
               "adapter_settings": harness.adapter.settings(),
               "config": harness.base_config.to_json(), "tasks": tasks,
               "error_name": harness.error_name,
               "affinity_path": tag.path, "affinity_settings": tag.settings,
               "rows": rows, "mean": means, "seconds": time.perf_counter() - start,
               **report.training_counts([harness.cache])}
    markdown = format_markdown(payload)
    payload["outputs"] = report.write_outputs(output_dir, "table1", payload, markdown)
    payload["markdown"] = markdown
    return payload


def format_markdown(payload: dict) -> str:
    body = [[t, r["tag_partner"], report.fmt(r["tag_vs_random_percent"], "+.1f"),
             r["optimal_partner"], report.fmt(r["optimal_vs_random_percent"], "+.1f"),
             r["worst_partner"], report.fmt(r["worst_vs_random_percent"], "+.1f")]
            for t, r in payload["rows"].items()]
    m = payload["mean"]
    body.append(["mean", "", report.fmt(m["tag_vs_random_percent"], "+.1f"), "",
                 report.fmt(m["optimal_vs_random_percent"], "+.1f"), "",
                 report.fmt(m["worst_vs_random_percent"], "+.1f")])
    return "\n".join([
        f"## Table 1 ({payload['adapter']}: {len(payload['tasks'])} tasks)", "",
        f"Test {payload['error_name']} of each task trained with one partner, relative to a "
        "random partner: `100 * (random - error) / random` in % (higher is better).", "",
        report.markdown_table(["task", "TAG partner", "TAG (%)", "optimal partner",
                               "optimal (%)", "worst partner", "worst (%)"], body), "",
        report.training_counts_text(payload)])


def main(argv):
    from tag_tf.experiments import cli  # pylint: disable=g-import-not-at-top
    cli.no_arguments(argv)
    args = cli.read_args()
    harness = cli.harness_from_flags(args)
    payload = run(harness, output_dir=args.output_dir)
    print(payload["markdown"])


if __name__ == "__main__":
    from tag_tf.cli import errors  # pylint: disable=g-import-not-at-top
    from tag_tf.experiments import cli  # pylint: disable=g-import-not-at-top,reimported
    cli.define_flags(default_output="runs/table1")
    errors.run(main)
