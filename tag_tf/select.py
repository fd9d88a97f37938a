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

``--bootstrap`` verdicts name their evidence: one file (one training run) can at best be
"stable within this run"; several files from independent seeds can be "robust" across
seeds (see :mod:`tag_tf.selection.robustness`).

Installed with pip, the same tool is the ``tag-tf-select`` command. A mistake in the input
(a missing or malformed file, a ragged or non-square matrix, a budget out of range, a bad
flag) prints one ``error: ...`` line and exits with status 2 (:mod:`tag_tf.cli.errors`).
"""

from __future__ import annotations

import tag_tf.cli.quiet  # noqa: F401  (first: quiets TensorFlow's C++ logs without a GPU)

import dataclasses
import json
import os
from typing import Literal, Optional

from absl import flags

from tag_tf.cli import checks
from tag_tf.cli import errors
from tag_tf.cli import flags as flags_lib
from tag_tf.cli.flags import setting

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Args:
    """The selector's settings (its flags)."""

    affinity: Optional[str] = setting(
        None, help="Affinity file ([source, target]): JSON, .npy or .npz; several "
        "comma-separated files (seeds/restarts) are pooled: mean over runs, standard error = "
        "between-run std / sqrt(runs).")
    budgets: tuple[int, ...] = setting(
        (1, 2, 3, 4, 5), parse=flags_lib.int_list,
        help="Comma-separated budgets (maximum numbers of networks).")
    minimize: bool = setting(False, help="Minimise (errors/losses) instead of maximising.")
    singletons: Optional[str] = setting(
        None, help="Single-task networks: unset = not allowed; 'diagonal' = use the matrix "
        "diagonal; a JSON file {task: score}; or comma-separated scores in task order.")
    method: Literal["auto", "dp", "milp", "exhaustive", "large"] = setting(
        "auto", help="Solver; 'auto' = exact subset DP up to 16 tasks, else 'large'.")
    tasks: Optional[tuple[str, ...]] = setting(None, kind="list",
                                               help="Task names (needed for .npy files).")
    output: Optional[str] = setting(
        None, help="Where to write the JSON (default: selection.json in the input's folder, "
        "replacing one there).")
    time_limit: float = setting(60.0, help="Seconds per budget for the large-scale solver.")
    seed: int = setting(0, help="Seed of the large-scale solver and of the bootstrap.")
    bootstrap: int = setting(
        0, help="Resamples for the robustness check (0 = off): stability, objective interval, "
        "best alternative, margin in SE, verdict per budget (one file: 'stable within this "
        "run' at best; several seeds' files: 'robust' across seeds).")


flags_lib.define_flags(Args)


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
    args = flags_lib.read_flags(Args, FLAGS)
    if not args.affinity:
        raise errors.UsageError("--affinity is required: the affinity file to select from "
                                "(e.g. --affinity=runs/demo/affinity.json).")
    budgets = checks.parse_budgets(args.budgets)
    if args.bootstrap < 0 or args.bootstrap == 1:
        raise errors.UsageError(f"--bootstrap must be 0 (off) or at least 2 resamples. "
                                f"Received: --bootstrap={args.bootstrap}")
    if not args.time_limit > 0:
        raise errors.UsageError(f"--time_limit must be > 0 seconds. Received: "
                                f"--time_limit={args.time_limit}")
    paths = [p.strip() for p in args.affinity.split(",") if p.strip()]
    if not paths:
        raise errors.UsageError(f"--affinity names no file. Received: "
                                f"--affinity={args.affinity}")
    output = args.output
    if output is None:  # tag_tf.runner.modes.SELECTION_FILE, not imported: --help stays fast
        output = os.path.join(os.path.dirname(paths[0]), "selection.json")
    singletons = parse_singletons(args.singletons)
    from tag_tf.selection import api  # pylint: disable=g-import-not-at-top

    def hint(error: BaseException) -> str | None:  # about a file: say what a file holds
        about_a_file = isinstance(error, OSError) or str(error).startswith(tuple(paths))
        return AFFINITY_HINT if about_a_file else None

    # The user's input: files, matrix, tasks, budgets, singletons, bootstrap. Its mistakes
    # are one line; the solve below is not guarded (its errors are bugs, with a traceback).
    with errors.user_input(hint=hint):
        given = api.read_selection_input(
            affinity_path=paths if len(paths) > 1 else paths[0], budgets=budgets,
            minimize=args.minimize, singletons=singletons, method=args.method,
            tasks=None if args.tasks is None else list(args.tasks),
            time_limit=args.time_limit, seed=args.seed, bootstrap=args.bootstrap)
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
