"""The paper's CelebA experiment: ``python -m celeba.main --mode=...``.

  # once: build TFDS celeb_a from the original files (no network)
  python -m celeba.main --mode=prepare --files_dir=~/celeba_original --data_dir=~/tfds
  # TAG affinities + network selection for budgets 1..8
  python -m celeba.main --mode=affinity --data_dir=~/tfds --output_dir=runs/celeba/affinity
  # train the chosen networks of one budget, test error per task and in total
  python -m celeba.main --mode=groups --data_dir=~/tfds \\
      --selection=runs/celeba/affinity/selection.json --budget=3 --output_dir=runs/celeba/tag3
  # baselines
  python -m celeba.main --mode={cs,mtl,stl,uw,gradnorm,pcgrad,dwa,mgda} --data_dir=~/tfds ...
  # all 40 attributes (any mode; selection above 16 tasks reports its certified gap)
  python -m celeba.main --mode=affinity --tasks=all --selection_time_limit=60 ...

Every default is in celeba/presets.py (--lookahead picks the preset; the flags given
override it). Every mode prints a summary and writes ``<output_dir>/results.json`` with the
full configuration it ran with (see celeba/README.md).
"""

from __future__ import annotations

import tag_tf.cli.quiet  # noqa: F401  (first: quiets TensorFlow's C++ logs without a GPU)

import dataclasses
import os
from typing import Optional

from absl import app
from absl import flags

from celeba import presets
from tag_tf.cli import errors
from tag_tf.cli import flags as flags_lib
from tag_tf.cli.flags import setting
from tag_tf.runner import modes
from tag_tf.runner.config import RunConfig

MODES = ("prepare",) + modes.names()


@dataclasses.dataclass(frozen=True)
class Script:
    """The flags of this script itself (the experiment's are in celeba/presets.py)."""

    mode: Optional[str] = setting(None, kind="enum", help="What to run (see "
                                  f"celeba/README.md): prepare; {modes.describe()}.")
    output_dir: Optional[str] = setting(None, help="Where results go; default "
                                        "runs/celeba/<mode>.")
    files_dir: Optional[str] = setting(
        None, help="--mode=prepare: folder with the original files img_align_celeba.zip, "
        "list_attr_celeba.txt, list_eval_partition.txt, list_landmarks_align_celeba.txt, "
        "identity_CelebA.txt.")
    verify_checksums: bool = setting(True, help="--mode=prepare: compare the files' SHA-256 "
                                     "with the originals (a mismatch only warns).")
    skip_bad_files: bool = setting(
        False, help="--mode=prepare: leave images missing from the archive or the label files, "
        "or not complete JPEGs, out of the dataset instead of stopping with an error naming "
        "the first; they are counted and named (bad_files.json beside the dataset), and every "
        "training on it reports them (log, summary, results.json bad_input_files).")


# Own flag registry: names such as --tasks, --seed and --budgets are also defined by
# tag_tf.select and celeba.reproduce_selection, which may be imported in the same process.
FLAGS = flags.FlagValues()
flags_lib.define_flags(Script, FLAGS, choices={"mode": MODES})
flags_lib.define_flags(presets.CelebASettings, FLAGS, instance=presets.PRESETS["fixed"].settings)
flags_lib.define_flags(RunConfig, FLAGS, instance=presets.PRESETS["fixed"].run)


def configuration() -> tuple[presets.CelebASettings, RunConfig]:
    """The preset ``--lookahead`` names with every flag given on the command line (and
    ``--tasks`` resolved, except for ``groups``, which trains the selection's)."""
    given = {**flags_lib.given(presets.CelebASettings, FLAGS), **flags_lib.given(RunConfig, FLAGS)}
    try:
        settings, config = presets.configure(given.pop("lookahead", FLAGS.lookahead), **given)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    if FLAGS.mode == "groups":
        return settings, config
    from celeba import data  # pylint: disable=g-import-not-at-top
    try:
        tasks = tuple(data.resolve_tasks(settings.tasks))
    except ValueError as e:
        raise app.UsageError(f"--tasks: {e}") from None
    return dataclasses.replace(settings, tasks=tasks), config


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    script = flags_lib.read_flags(Script, FLAGS)
    if script.mode is None:
        raise app.UsageError(f"--mode is required: one of {MODES}.")
    from celeba import experiment  # pylint: disable=g-import-not-at-top
    if script.mode == "prepare":
        if not script.files_dir:
            raise app.UsageError("--mode=prepare needs --files_dir (the original files).")
        from celeba import data  # pylint: disable=g-import-not-at-top
        with errors.user_input(FileNotFoundError, flag="--files_dir"):
            data.original_file_paths(script.files_dir)
        from tag_tf.io.bad_files import BadFileError  # pylint: disable=g-import-not-at-top
        # A bad image names itself in one line; its message says --skip_bad_files drops it.
        with errors.user_input(BadFileError):
            experiment.prepare(files_dir=script.files_dir, data_dir=FLAGS.data_dir,
                               verify_checksums=script.verify_checksums,
                               skip_bad_files=script.skip_bad_files)
        return
    settings, config = configuration()
    if script.mode == "groups" and not config.selection.selection_path:
        raise app.UsageError("--mode=groups needs --selection (a selection JSON).")
    if config.runtime.logical_cpus:  # before any TensorFlow work (e.g. loading the data)
        from tag_tf.runner import distribute  # pylint: disable=g-import-not-at-top
        distribute.split_cpu(config.runtime.logical_cpus)
    experiment.check_inputs(script.mode, settings, config,
                            budgets_given=FLAGS["budgets"].present)
    output_dir = script.output_dir or os.path.join("runs", "celeba", script.mode)
    result = experiment.run(script.mode, settings, config, output_dir=output_dir)
    from tag_tf import runner  # pylint: disable=g-import-not-at-top
    print(runner.format_summary(result))
    print(f"Wrote {os.path.join(output_dir, modes.RESULTS_FILE)}")


if __name__ == "__main__":
    errors.run(main, flags_parser=flags_lib.parser(FLAGS, __doc__))
