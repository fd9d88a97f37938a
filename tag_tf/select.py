r"""Selects TAG networks for several budgets from an affinity file.

  python -m tag_tf.select --affinity=runs/affinity.json --budgets=1,2,3,4,5 \
      [--minimize] [--singletons=diagonal] [--output=runs/selection.json] \
      [--bootstrap=200 --seed=0]
  python -m tag_tf.select --affinity=seed0/affinity.json,seed1/affinity.json,... --bootstrap=200

Reads the ``tag_tf.affinity/v1`` JSON written by the affinity core (or a plain
``{"tasks", "matrix"}`` JSON / ``.npy`` / ``.npz``), prints one table per budget (networks,
who serves whom, helper-only tasks, objective, bound, gap, time) and writes JSON: by
default ``selection.json`` beside the input, the name every selection file has (the
pipelines' and the demo's), replacing an earlier one there.

Installed with pip, the same tool is the ``tag-tf-select`` command. A mistake in the input
(a missing or malformed file, a ragged or non-square matrix, a budget out of range, a bad
flag) prints one ``error: ...`` line and exits with status 2 (:mod:`tag_tf.cli.errors`).
"""

from __future__ import annotations

import tag_tf.cli.quiet  # noqa: F401  (first: quiets TensorFlow's C++ logs without a GPU)

import json
import os

from absl import flags

from tag_tf.cli import errors
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
                     "objective interval, best alternative, margin in SE, verdict per budget.")


AFFINITY_HINT = ("Pass an affinity.json written by tag_tf, a JSON {\"tasks\": [...], "
                 "\"matrix\": [[...], ...]} (rows = source tasks), or a .npy (with --tasks) "
                 "or .npz file.")


def parse_singletons(value: str | None):
    """Turns the --singletons flag into what ``make_problem`` accepts."""
    if value is None or value.strip() == "" or value == "none":
        return None
    if value == "diagonal":
        return "diagonal"
    if os.path.exists(value):
        with errors.user_input(flag="--singletons",
                               hint="Pass a JSON object {task: score} or a list of scores."):
            with open(value) as f:
                loaded = json.load(f)
        if not isinstance(loaded, (dict, list)):
            raise errors.UsageError(
                f"--singletons file must hold a JSON object {{task: score}} or a list of "
                f"scores. Received: {value} holding {type(loaded).__name__}")
        return loaded
    try:
        return [float(v) for v in value.split(",")]
    except ValueError as e:
        raise errors.UsageError(
            f"--singletons must be 'diagonal', a JSON file or comma-separated numbers. "
            f"Received: {value!r}") from e


def main(argv):
    if len(argv) > 1:
        raise errors.UsageError(f"Unexpected arguments: {argv[1:]}. Pass flags only "
                                "(--affinity=...); --help lists them.")
    if not FLAGS.affinity:
        raise errors.UsageError("--affinity is required: the affinity file to select from "
                                "(e.g. --affinity=runs/demo/affinity.json).")
    budgets = parse_budgets(FLAGS.budgets)
    if FLAGS.bootstrap < 0 or FLAGS.bootstrap == 1:
        raise errors.UsageError(f"--bootstrap must be 0 (off) or at least 2 resamples. "
                                f"Received: --bootstrap={FLAGS.bootstrap}")
    if not FLAGS.time_limit > 0:
        raise errors.UsageError(f"--time_limit must be > 0 seconds. Received: "
                                f"--time_limit={FLAGS.time_limit}")
    paths = [p.strip() for p in FLAGS.affinity.split(",") if p.strip()]
    if not paths:
        raise errors.UsageError(f"--affinity names no file. Received: --affinity={FLAGS.affinity}")
    output = FLAGS.output
    if output is None:  # tag_tf.runner.pipeline.SELECTION_FILE, not imported: --help stays fast
        output = os.path.join(os.path.dirname(paths[0]), "selection.json")
    singletons = parse_singletons(FLAGS.singletons)
    from tag_tf.selection import api  # pylint: disable=g-import-not-at-top

    def hint(error: BaseException) -> str | None:  # about a file: say what a file holds
        about_a_file = isinstance(error, OSError) or str(error).startswith(tuple(paths))
        return AFFINITY_HINT if about_a_file else None

    # The user's input: files, matrix, tasks, budgets, singletons, bootstrap. Its mistakes
    # are one line; the solve below is not guarded (its errors are bugs, with a traceback).
    with errors.user_input(hint=hint):
        given = api.read_selection_input(
            affinity_path=paths if len(paths) > 1 else paths[0], budgets=budgets,
            minimize=FLAGS.minimize, singletons=singletons, method=FLAGS.method,
            tasks=FLAGS.tasks, time_limit=FLAGS.time_limit, seed=FLAGS.seed,
            bootstrap=FLAGS.bootstrap)
    report = api.solve_selection(given)
    print(report.text)
    with errors.user_input(OSError, flag="--output", hint="Pass a writable path."):
        api.write_json(output, report.payload)
    print(f"\nWrote {output}")


def run() -> None:
    """The ``tag-tf-select`` console script (and ``python -m tag_tf.select``)."""
    errors.run(main)


if __name__ == "__main__":
    run()
