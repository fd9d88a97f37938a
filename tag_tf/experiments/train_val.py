r"""Train vs validation batch: does measuring the lookahead on held-out data change TAG?

Two TAG affinity trainings, measuring the loss change on the training batch (the paper's
default) and on a validation batch (the lookahead step always uses the training
gradient). Reports the Pearson correlation of the two matrices (off-diagonal entries,
and all entries) and the total test error of the groups each selects per budget.

  python -m tag_tf.experiments.train_val --output_dir=runs/train_val
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from tag_tf.experiments import report
from tag_tf.experiments.harness import Harness

BATCHES = ("train", "validation")


def pearson(a: np.ndarray, b: np.ndarray, *, off_diagonal: bool = True) -> float | None:
    """Pearson correlation of the (off-diagonal) entries of two square matrices."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mask = ~np.eye(a.shape[0], dtype=bool) if off_diagonal else np.ones(a.shape, dtype=bool)
    mask &= np.isfinite(a) & np.isfinite(b)
    x, y = a[mask], b[mask]
    if x.size < 2 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def run(harness: Harness, *, budgets: Sequence[int] = (2, 3, 4),
        output_dir: str = "runs/train_val") -> dict:
    """Runs both affinity batches (cached); writes ``train_val.{md,json}``."""
    start = time.perf_counter()
    budgets = [int(b) for b in budgets if 1 <= int(b) <= len(harness.tasks)]
    rows = {}
    for batch in BATCHES:
        harness.log(f"Train vs validation: affinity on the {batch} batch")
        run_ = harness.affinity("lookahead", batch=batch)
        selections, sel_seconds = harness.select(run_.matrix, budgets)
        rows[batch] = {"affinity": run_.matrix, "affinity_path": run_.path,
                       "affinity_seconds": run_.seconds, "selection_seconds": sel_seconds,
                       "settings": run_.settings,
                       "budgets": {s.budget: harness.evaluate_selection(s) for s in selections}}
    payload = {"table": "train_vs_validation", "adapter": harness.adapter.name,
               "adapter_settings": harness.adapter.settings(),
               "config": harness.base_config.to_json(), "budgets": budgets,
               "tasks": harness.tasks, "error_name": harness.error_name,
               "pearson_off_diagonal": pearson(rows["train"]["affinity"],
                                               rows["validation"]["affinity"]),
               "pearson_all": pearson(rows["train"]["affinity"],
                                      rows["validation"]["affinity"], off_diagonal=False),
               "rows": rows, "seconds": time.perf_counter() - start,
               **report.training_counts([harness.cache])}
    markdown = format_markdown(payload)
    payload["outputs"] = report.write_outputs(output_dir, "train_val", payload, markdown)
    payload["markdown"] = markdown
    return payload


def format_markdown(payload: dict) -> str:
    budgets, name = payload["budgets"], payload["error_name"]
    body = [[batch, report.fmt(row["affinity_seconds"], ".1f")]
            + [f"{report.fmt(row['budgets'][b]['total_error'])} "
               f"{report.groups_text(row['budgets'][b]['networks'])}" for b in budgets]
            for batch, row in payload["rows"].items()]
    return "\n".join([
        f"## Train vs validation batch ({payload['adapter']}: {len(payload['tasks'])} tasks)",
        "", f"Pearson correlation of the two affinity matrices: "
        f"{report.fmt(payload['pearson_off_diagonal'], '.3f')} (off-diagonal entries), "
        f"{report.fmt(payload['pearson_all'], '.3f')} (all entries).", "",
        report.markdown_table(["affinity batch", "training (s)"]
                              + [f"total {name}, {b} nets (groups)" for b in budgets], body),
        "", report.training_counts_text(payload)])


def main(argv):
    from tag_tf.experiments import cli  # pylint: disable=g-import-not-at-top
    cli.no_arguments(argv)
    args = cli.read_args()
    harness = cli.harness_from_flags(args)
    payload = run(harness, budgets=args.budgets, output_dir=args.output_dir)
    print(payload["markdown"])


if __name__ == "__main__":
    from tag_tf.cli import errors  # pylint: disable=g-import-not-at-top
    from tag_tf.experiments import cli  # pylint: disable=g-import-not-at-top,reimported
    cli.define_flags(default_output="runs/train_val")
    errors.run(main)
