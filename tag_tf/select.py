"""Selects TAG networks for several budgets from an affinity file.

  python -m tag_tf.select --affinity=runs/affinity.json --budgets=1,2,3,4,5 \
      [--minimize] [--singletons=diagonal] [--output=runs/selection.json] \
      [--bootstrap=200 --seed=0]
  python -m tag_tf.select --affinity=seed0/affinity.json,seed1/affinity.json,... --bootstrap=200

Reads the ``tag_tf.affinity/v1`` JSON written by the affinity core (or a plain
``{"tasks", "matrix"}`` JSON / ``.npy`` / ``.npz``), prints one table per budget (networks,
who serves whom, helper-only tasks, objective, bound, gap, time) and writes JSON: by
default ``selection.json`` beside the input, the name every selection file has (the
pipelines' and the demo's), replacing an earlier one there.

``--bootstrap`` verdicts name their evidence: one file (one training run) can at best be
"stable within this run"; several files from independent seeds can be "robust" across
seeds (see :mod:`tag_tf.selection.robustness`).
"""

from __future__ import annotations

import tag_tf.cli.quiet  # noqa: F401  (first: quiets TensorFlow's C++ logs without a GPU)

import json
import os

from absl import app
from absl import flags

from tag_tf.cli.script_flags import parse_budgets

FLAGS = flags.FLAGS

flags.DEFINE_string("affinity", None, "Affinity file ([source, target]): JSON, .npy or .npz; "
                    "several comma-separated files (seeds/restarts) are pooled: mean over "
                    "runs, standard error = between-run std / sqrt(runs).")
flags.DEFINE_list("budgets", ["1", "2", "3", "4", "5"],
                  "Comma-separated budgets (maximum numbers of networks).")
flags.DEFINE_bool("minimize", False, "Minimise (errors/losses) instead of maximising.")
flags.DEFINE_string(
    "singletons", None,
    "Single-task networks: unset = not allowed; 'diagonal' = use the matrix diagonal; a JSON "
    "file {task: score}; or comma-separated scores in task order.")
flags.DEFINE_enum("method", "auto", ["auto", "dp", "milp", "exhaustive", "large"],
                  "Solver; 'auto' = exact subset DP up to 16 tasks, else 'large'.")
flags.DEFINE_list("tasks", None, "Task names (needed for .npy files).")
flags.DEFINE_string("output", None, "Where to write the JSON (default: selection.json in "
                    "the input's folder, replacing one there).")
flags.DEFINE_float("time_limit", 60.0, "Seconds per budget for the large-scale solver.")
flags.DEFINE_integer("seed", 0, "Seed of the large-scale solver and of the bootstrap.")
flags.DEFINE_integer("bootstrap", 0, "Resamples for the robustness check (0 = off): stability, "
                     "objective interval, best alternative, margin in SE, verdict per budget "
                     "(one file: 'stable within this run' at best; several seeds' files: "
                     "'robust' across seeds).")


def parse_singletons(value: str | None):
    """Turns the --singletons flag into what ``make_problem`` accepts."""
    if value is None or value.strip() == "" or value == "none":
        return None
    if value == "diagonal":
        return "diagonal"
    if os.path.exists(value):
        with open(value) as f:
            loaded = json.load(f)
        if not isinstance(loaded, (dict, list)):
            raise app.UsageError(f"--singletons file must hold a JSON object or list: {value}")
        return loaded
    try:
        return [float(v) for v in value.split(",")]
    except ValueError as e:
        raise app.UsageError(
            f"--singletons must be 'diagonal', a JSON file or comma-separated numbers. "
            f"Received: {value!r}") from e


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.affinity:
        raise app.UsageError("--affinity is required.")
    budgets = parse_budgets(FLAGS.budgets)
    output = FLAGS.output
    if FLAGS.bootstrap < 0:
        raise app.UsageError(f"--bootstrap must be >= 0. Received: {FLAGS.bootstrap}")
    paths = [p.strip() for p in FLAGS.affinity.split(",") if p.strip()]
    if output is None:  # tag_tf.runner.pipeline.SELECTION_FILE, not imported: --help stays fast
        output = os.path.join(os.path.dirname(paths[0]), "selection.json")
    from tag_tf.selection import api  # pylint: disable=g-import-not-at-top
    report = api.run_selection(
        affinity_path=paths if len(paths) > 1 else paths[0], budgets=budgets,
        minimize=FLAGS.minimize, singletons=parse_singletons(FLAGS.singletons),
        method=FLAGS.method, tasks=FLAGS.tasks, output_path=output,
        time_limit=FLAGS.time_limit, seed=FLAGS.seed, bootstrap=FLAGS.bootstrap)
    print(report.text)
    print(f"\nWrote {output}")


if __name__ == "__main__":
    app.run(main)
