"""The paper's Taskonomy experiment: ``python -m taskonomy.main --mode=...``.

  # TAG affinities (every 10 steps) + network selection for budgets 1..4
  python -m taskonomy.main --mode=affinity --data_dir=/data/taskonomy \\
      --output_dir=runs/taskonomy/affinity --mixed_precision
  # train the chosen networks of one budget; test loss per task and in total
  python -m taskonomy.main --mode=groups --data_dir=/data/taskonomy \\
      --selection=runs/taskonomy/affinity/selection.json --budget=3 --output_dir=runs/taskonomy/tag3
  # baselines
  python -m taskonomy.main --mode={cs,mtl,stl,uw,gradnorm,pcgrad,dwa,mgda} --data_dir=/data/taskonomy ...
  # optional: pack the PNGs of the three splits into TFRecords, then train from them
  python -m taskonomy.main --mode=convert --data_dir=/data/taskonomy --output_dir=/data/tfrec
  python -m taskonomy.main --mode=mtl --tfrecord_dir=/data/tfrec ...

Every default (tag.patch's settings) is in taskonomy/presets.py (--lookahead picks the
preset; the flags given override it). Every mode prints a summary and writes
``<output_dir>/results.json`` with the full configuration it ran with (see
taskonomy/README.md).
"""

from __future__ import annotations

import tag_tf.cli.quiet  # noqa: F401  (first: quiets TensorFlow's C++ logs without a GPU)

import dataclasses
import os
from typing import Optional

from absl import app
from absl import flags

from tag_tf.cli import errors
from tag_tf.cli import flags as flags_lib
from tag_tf.cli.flags import setting
from tag_tf.runner import modes
from tag_tf.runner.config import RunConfig
from taskonomy import presets

MODES = modes.names() + ("convert",)


@dataclasses.dataclass(frozen=True)
class Script:
    """The flags of this script itself (the experiment's are in taskonomy/presets.py)."""

    mode: Optional[str] = setting(None, kind="enum", help="What to run (see "
                                  f"taskonomy/README.md): {modes.describe()}; convert.")
    output_dir: Optional[str] = setting(None, help="Where results go; default "
                                        "runs/taskonomy/<mode>.")
    shards: Optional[int] = setting(None, help="convert: shards per split (default one per "
                                    "2000 images).")


# Own flag registry (names such as --tasks also exist in tag_tf.select and other scripts).
FLAGS = flags.FlagValues()
flags_lib.define_flags(Script, FLAGS, choices={"mode": MODES})
flags_lib.define_flags(presets.TaskonomySettings, FLAGS,
                       instance=presets.PRESETS["fixed"].settings)
# --patience is the dataset's (-1: the original's rule), not TrainingConfig's.
flags_lib.define_flags(RunConfig, FLAGS, instance=presets.PRESETS["fixed"].run,
                       exclude=("patience",))


def configuration() -> tuple[presets.TaskonomySettings, RunConfig]:
    """The preset ``--lookahead`` names with every flag given on the command line."""
    given = {**flags_lib.given(presets.TaskonomySettings, FLAGS),
             **flags_lib.given(RunConfig, FLAGS, exclude=("patience",))}
    try:
        return presets.configure(given.pop("lookahead", FLAGS.lookahead), **given)
    except ValueError as e:
        raise app.UsageError(str(e)) from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    script = flags_lib.read_flags(Script, FLAGS)
    if script.mode is None:
        raise app.UsageError(f"--mode is required: one of {MODES}.")
    settings, config = configuration()
    if not settings.data_dir and not (settings.tfrecord_dir and script.mode != "convert"):
        raise app.UsageError("--data_dir (or, for training, --tfrecord_dir) is required.")
    output_dir = script.output_dir or os.path.join("runs", "taskonomy", script.mode)
    if script.mode == "groups" and not config.selection.selection_path:
        raise app.UsageError("--mode=groups needs --selection (a selection JSON).")
    if config.runtime.logical_cpus:  # before any TensorFlow work (e.g. loading the data)
        from tag_tf.runner import distribute  # pylint: disable=g-import-not-at-top
        distribute.split_cpu(config.runtime.logical_cpus)
    from taskonomy import experiment  # pylint: disable=g-import-not-at-top
    experiment.check_inputs(script.mode, settings, config, output_dir,
                            budgets_given=FLAGS["budgets"].present)
    if script.mode == "convert":
        experiment.convert(data_dir=settings.data_dir, output_dir=output_dir,
                           tasks=settings.tasks, splits_dir=settings.splits_dir,
                           shards=script.shards, limit=settings.limit)
        return
    from tag_tf.io.bad_files import BadFileError  # pylint: disable=g-import-not-at-top
    # A missing or unreadable input file (found before training) is the user's input: one
    # line naming it; its message says --skip_bad_files drops such files.
    with errors.user_input(BadFileError):
        result = experiment.run(script.mode, settings, config, output_dir=output_dir)
    from tag_tf import runner  # pylint: disable=g-import-not-at-top
    print(runner.format_summary(result))
    print(f"Wrote {os.path.join(output_dir, modes.RESULTS_FILE)}")


if __name__ == "__main__":
    errors.run(main, flags_parser=flags_lib.parser(FLAGS, __doc__))
