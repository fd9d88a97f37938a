"""The paper's CelebA experiment: ``python -m celeba.main --mode=...``.

  # once: build TFDS celeb_a from the original files (no network)
  python -m celeba.main --mode=prepare --files_dir=~/celeba_original --data_dir=~/tfds
  # TAG affinities + network selection for budgets 1..8
  python -m celeba.main --mode=affinity --data_dir=~/tfds --output_dir=runs/celeba/affinity
  # train the chosen networks of one budget, test error per task and in total
  python -m celeba.main --mode=groups --data_dir=~/tfds \
      --selection=runs/celeba/affinity/selection.json --budget=3 --output_dir=runs/celeba/tag3
  # baselines
  python -m celeba.main --mode={cs,mtl,stl,uw,gradnorm,pcgrad} --data_dir=~/tfds ...
  # all 40 attributes (any mode; selection above 16 tasks reports its certified gap)
  python -m celeba.main --mode=affinity --tasks=all --selection_time_limit=60 ...

Hyper-parameters follow google-research ``tag/celeba/CelebA.ipynb``: SGD lr 5e-4 with
momentum 0.9, batch 256, 64 x 64 images, the learning rate halved every 15 epochs, at most
100 epochs, early stopping (patience 10) on the summed validation loss restoring the best
weights; GradNorm alpha 0.1 on the residual block's last conv; uncertainty weights clipped
to [0.01, 10] (``uw`` and ``pcgrad``). Every mode prints a summary and writes
``<output_dir>/results.json`` (see celeba/README.md).
"""

from __future__ import annotations

import tag_tf.cli.quiet  # noqa: F401  (first: quiets TensorFlow's C++ logs without a GPU)

import dataclasses
import os
from typing import TYPE_CHECKING, Optional, Sequence

from absl import app
from absl import flags

from tag_tf.cli import errors
from tag_tf.cli import script_flags
from tag_tf.cli.script_flags import (define_pipeline_flags, lookahead_flags, own_registry_parser,
                                  parse_budgets, runtime_fields, seed_option_fields)

if TYPE_CHECKING:
    from tag_tf.runner import pipeline

# Own flag registry: names such as --tasks, --seed and --budgets are also defined by
# tag_tf.select and celeba.reproduce_selection, which may be imported in the same process.
FLAGS = flags.FlagValues()

# The original notebook's settings.
LEARNING_RATE = 5e-4
MOMENTUM = 0.9
BATCH_SIZE = 256
EPOCHS = 100
PATIENCE = 10
LR_HALVING_EPOCHS = 15
GRADNORM_ALPHA = 0.1
GRADNORM_LAYER = "res_conv2"  # the original's ResBase.trainable_weights[-3]
BUDGETS = tuple(range(1, 9))

# --lookahead=original: the notebook's TAG lookahead (tag/celeba/CelebA.ipynb, train(): the
# training loop calls train_step on every batch; train_step divides each gain by
# optimizer.lr). Its shared set is ResBase.trainable_weights, the whole trunk (as ours).
ORIGINAL_LOOKAHEAD = {"every_n": 1, "lookahead_rule": "optimizer", "divide_by_lr": True}
# train_step's lookahead is ``param + (optimizer._momentum * slot - lr * grad)`` (plain
# ``param - lr * grad`` on the first step, when the velocity slot is still 0). In the
# tf.keras SGD of the time (optimizer_v2/gradient_descent.py, SGD.__init__) ``_momentum`` is
# a bool flag (True for momentum > 0), not the 0.9 coefficient, so the lookahead adds the
# whole velocity: coefficient 1 where the optimizer's real step uses 0.9.
NOTEBOOK_LOOKAHEAD_MOMENTUM = 1.0
MODES = ("prepare", "affinity", "cs", "mtl", "stl", "uw", "gradnorm", "pcgrad", "groups")

_IN = {"flag_values": FLAGS}
# --output_dir --seed --epochs --batch_size --learning_rate --every_n --budgets --selection ...
define_pipeline_flags(FLAGS, epochs=EPOCHS, batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE,
                      budgets=BUDGETS, uw_clipped=True, gradnorm_alpha=GRADNORM_ALPHA)
flags.DEFINE_enum("mode", None, list(MODES), "What to run (see celeba/README.md).", **_IN)
flags.DEFINE_string("data_dir", None, "TFDS data directory holding (or receiving) celeb_a; "
                    "default: TFDS's (~/tensorflow_datasets).", **_IN)
flags.DEFINE_string("files_dir", None, "--mode=prepare: folder with the original files "
                    "img_align_celeba.zip, list_attr_celeba.txt, list_eval_partition.txt, "
                    "list_landmarks_align_celeba.txt, identity_CelebA.txt.", **_IN)
flags.DEFINE_bool("verify_checksums", True, "--mode=prepare: compare the files' SHA-256 with "
                  "the originals (a mismatch only warns).", **_IN)
flags.DEFINE_list("tasks", None, "Attributes to predict: comma-separated names (any of the "
                  "40), or 'all' for the 40 in list_attr_celeba.txt order; default: the "
                  "paper's 9. Mode 'groups' takes them from the selection.", **_IN)
flags.DEFINE_float("selection_time_limit", 60.0, "affinity / cs: seconds per budget for the "
                   "large selection solver, used above 16 tasks (e.g. --tasks=all); each "
                   "selection reports its certified gap ('optimal' only when proven).", **_IN)
flags.DEFINE_integer("image_size", 64, "Images are resized to image_size x image_size.", **_IN)
flags.DEFINE_integer("lr_halving_epochs", LR_HALVING_EPOCHS,
                     "Halve the learning rate every this many epochs (0: never).", **_IN)
flags.DEFINE_integer("patience", PATIENCE, "Early-stopping patience (epochs) on the summed "
                     "validation loss; -1 disables early stopping.", **_IN)
flags.DEFINE_enum("affinity_epochs", "until_best", ["all", "until_best"],
                  "affinity / cs: average over all epochs, or (notebook) only up to the best "
                  "epoch when early stopping triggers.", **_IN)
flags.DEFINE_string("cache", None, "Cache decoded images: 'memory' or a file prefix.", **_IN)
flags.DEFINE_integer("shuffle_buffer", None, "Training shuffle buffer (default: the split).",
                     **_IN)
flags.DEFINE_integer("limit", None, "Debugging: use only the first N examples of each split.",
                     **_IN)


def learning_rate_at(epoch: int, base: float = LEARNING_RATE,
                     halving_epochs: int = LR_HALVING_EPOCHS) -> float:
    """The notebook's schedule: halved at the start of epochs 15, 30, ... (1-based 15, 30)."""
    if halving_epochs <= 0:
        return base
    return base * 0.5 ** ((epoch + 1) // halving_epochs)


def prepare(*, files_dir: str, data_dir: Optional[str], verify_checksums: bool = True) -> None:
    """Builds TFDS celeb_a from the original files and prints the split sizes."""
    from celeba import data  # pylint: disable=g-import-not-at-top
    if data_dir is None:
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
        data_dir = os.path.expanduser(tfds.core.constants.DATA_DIR)
    builder = data.prepare_from_files(files_dir, data_dir, verify_checksums=verify_checksums)
    sizes = {name: split.num_examples for name, split in builder.info.splits.items()}
    print(f"celeb_a {builder.info.version} prepared in {builder.data_dir}: {sizes}")
    differs = {k: v for k, v in sizes.items() if data.SPLIT_SIZES.get(k) != v}
    if differs:
        print(f"Note: split sizes differ from the full CelebA {data.SPLIT_SIZES}.")


def affinity_settings(lookahead: str = "fixed", **given) -> dict:
    """``every_n``, ``lookahead_rule``, ``divide_by_lr`` under ``lookahead`` (``given``: explicit
    values; None takes the lookahead's, :data:`ORIGINAL_LOOKAHEAD` for ``original``)."""
    return script_flags.affinity_settings(lookahead, ORIGINAL_LOOKAHEAD, **given)


def make_optimizer(learning_rate: float = LEARNING_RATE, lookahead: str = "fixed"):
    """The notebook's SGD (momentum 0.9); under ``lookahead="original"`` its TAG lookahead
    adds the whole velocity (:data:`NOTEBOOK_LOOKAHEAD_MOMENTUM`, read by
    :mod:`tag_tf.core.lookahead`); the training step is the same either way."""
    import keras  # pylint: disable=g-import-not-at-top
    script_flags.check_lookahead(lookahead)
    optimizer = keras.optimizers.SGD(learning_rate, momentum=MOMENTUM)
    if lookahead == "original":
        optimizer.lookahead_momentum = NOTEBOOK_LOOKAHEAD_MOMENTUM
    return optimizer


def build_experiment(*, data_dir: Optional[str], tasks: Sequence[str], seed: int = 0,
                     batch_size: int = BATCH_SIZE, image_size: int = 64,
                     learning_rate: float = LEARNING_RATE,
                     lr_halving_epochs: int = LR_HALVING_EPOCHS, cache: Optional[str] = None,
                     shuffle_buffer: Optional[int] = None, limit: Optional[int] = None,
                     lookahead: str = "fixed") -> pipeline.Experiment:
    """The CelebA :class:`tag_tf.runner.pipeline.Experiment`, with fresh datasets on every call.

    The one definition of the experiment, shared by :func:`run_celeba` and
    :class:`celeba.adapter.CelebAAdapter` (the reproduction harness). ``lookahead`` picks
    the optimizer's lookahead (:func:`make_optimizer`); pair ``"original"`` with
    :func:`affinity_settings`' Options.
    """
    import keras  # pylint: disable=g-import-not-at-top
    from celeba import data  # pylint: disable=g-import-not-at-top
    from celeba import model as celeba_model  # pylint: disable=g-import-not-at-top
    from tag_tf.runner import pipeline  # pylint: disable=g-import-not-at-top

    tasks = data.check_tasks(tasks)
    splits = data.load_splits(data_dir, tasks=tasks, batch_size=batch_size,
                              image_size=image_size, seed=seed, cache=cache,
                              shuffle_buffer=shuffle_buffer, limit=limit)

    def schedule(epoch, lr=None):
        del lr
        return learning_rate_at(epoch, learning_rate, lr_halving_epochs)

    return pipeline.Experiment(
        tasks=tasks,
        network_fn=lambda names: celeba_model.celeba_network(names, image_size=image_size,
                                                             seed=seed),
        shared=list(celeba_model.TRUNK_LAYERS),
        loss_fn=lambda task: celeba_model.task_loss(),
        train_data=splits.train, validation_data=splits.validation, test_data=splits.test,
        train_data_fn=data.train_data_fn(data_dir, tasks=tasks, batch_size=batch_size,
                                         image_size=image_size, seed=seed, cache=cache,
                                         shuffle_buffer=shuffle_buffer, limit=limit),
        optimizer_fn=lambda: make_optimizer(learning_rate, lookahead),
        callbacks_fn=lambda: [keras.callbacks.LearningRateScheduler(schedule)],
        error_fn=lambda task: celeba_model.error_metric(),
        error_name="error_percent",
        gradnorm_layer=GRADNORM_LAYER)


def build_options(*, patience: Optional[int] = PATIENCE, **fields) -> pipeline.Options:
    """:class:`tag_tf.runner.pipeline.Options` as celeba.main trains (``patience`` < 0 or None: no
    early stopping); ``fields`` are the other Options fields. Shared with the adapter."""
    from tag_tf.runner import pipeline  # pylint: disable=g-import-not-at-top
    return pipeline.Options(patience=None if patience is None or patience < 0 else patience,
                            **fields)


def run_celeba(mode: str, *, data_dir: Optional[str], output_dir: str,
               tasks: Optional[Sequence[str]] = None, seed: int = 0, epochs: int = EPOCHS,
               batch_size: int = BATCH_SIZE, image_size: int = 64,
               learning_rate: float = LEARNING_RATE,
               lr_halving_epochs: int = LR_HALVING_EPOCHS, patience: Optional[int] = PATIENCE,
               every_n: Optional[int] = None, affinity_batch: str = "train",
               lookahead: str = "fixed", lookahead_rule: Optional[str] = None,
               divide_by_lr: Optional[bool] = None, affinity_epochs: str = "until_best",
               budgets: Sequence[int] = BUDGETS, selection_time_limit: float = 60.0,
               selection: Optional[str] = None, budget: Optional[int] = None,
               selection_table: Optional[str] = None, uw_clipped: bool = True,
               gradnorm_alpha: float = GRADNORM_ALPHA, cache: Optional[str] = None,
               shuffle_buffer: Optional[int] = None, limit: Optional[int] = None,
               steps_per_epoch: Optional[int] = None, save_weights: bool = False,
               tensorboard: bool = False, verbose: int = 2,
               runtime: Optional[dict] = None) -> dict:
    """Runs one training mode on CelebA (see :mod:`tag_tf.runner.pipeline`); returns the results.

    ``tasks``: attribute names, ``["all"]`` / ``"all"`` for the 40, None for the paper's 9
    (:func:`celeba.data.resolve_tasks`; ignored by ``groups``, which trains the
    selection's). ``selection_time_limit``: seconds per budget of the large selection
    solver (above 16 tasks).

    ``every_n``, ``lookahead_rule``, ``divide_by_lr`` None: ``lookahead``'s values
    (:func:`affinity_settings`). ``runtime``: distribution / precision / backup Options
    fields (``runtime_fields``) and the ``seeds`` / ``bootstrap`` / ``mtl_results`` /
    ``stl_results`` fields (``seed_option_fields``); with ``seeds`` > 1 each training
    rebuilds the experiment (network and data) with its own seed.
    """
    from celeba import data  # pylint: disable=g-import-not-at-top
    from tag_tf.runner import pipeline  # pylint: disable=g-import-not-at-top

    if mode == "groups":
        if not selection:
            raise ValueError("Mode 'groups' needs a selection JSON (--selection).")
        chosen = pipeline.load_selection(selection, budget=budget, table=selection_table)
        trained = {t for network in chosen.networks for t in network.tasks}
        tasks = [t for t in data.ATTRIBUTES if t in trained]
    tasks = data.resolve_tasks(tasks)
    recording = affinity_settings(lookahead, every_n=every_n, lookahead_rule=lookahead_rule,
                                  divide_by_lr=divide_by_lr)

    def experiment_for(run_seed: int) -> pipeline.Experiment:
        return build_experiment(
            data_dir=data_dir, tasks=tasks, seed=run_seed, batch_size=batch_size,
            image_size=image_size, learning_rate=learning_rate,
            lr_halving_epochs=lr_halving_epochs, cache=cache, shuffle_buffer=shuffle_buffer,
            limit=limit, lookahead=lookahead)

    experiment = dataclasses.replace(experiment_for(seed), for_seed=experiment_for)
    options = build_options(
        epochs=epochs, patience=patience, seed=seed, steps_per_epoch=steps_per_epoch,
        verbose=verbose, affinity_batch=affinity_batch, **recording,
        affinity_epochs=affinity_epochs, budgets=tuple(budgets),
        selection_time_limit=selection_time_limit, selection_path=selection,
        budget=budget, selection_table=selection_table, uw_clipped=uw_clipped,
        gradnorm_alpha=gradnorm_alpha, save_weights=save_weights,
        log_dir=os.path.join(output_dir, "tb") if tensorboard else None, **(runtime or {}))
    results = pipeline.run(mode, experiment, options, output_dir=output_dir)
    results["lookahead"] = lookahead
    pipeline.write_results(os.path.join(output_dir, pipeline.RESULTS_FILE), results)
    print(pipeline.format_summary(results))
    print(f"Wrote {os.path.join(output_dir, pipeline.RESULTS_FILE)}")
    return results


def parse_tasks(values: Optional[Sequence[str]]) -> list[str]:
    """``--tasks`` as attribute names (``all``: the 40; unset: the paper's 9); a bad list
    (unknown or duplicate names, ``all`` with names) is a usage error naming them."""
    from celeba import data  # pylint: disable=g-import-not-at-top
    try:
        return data.resolve_tasks(values)
    except ValueError as e:
        raise app.UsageError(f"--tasks: {e}") from e


def check_inputs(mode: str) -> None:
    """The data directory and the files the flags name, read before any training: their
    mistakes are one-line usage errors (tag_tf.cli.errors)."""
    from celeba import data  # pylint: disable=g-import-not-at-top
    prepared = ("the TFDS data directory that --mode=prepare wrote (it holds "
                f"{data.DATASET_NAME}/)")
    script_flags.check_directory("--data_dir", FLAGS.data_dir, prepared)
    if FLAGS.data_dir and not os.path.isdir(os.path.join(FLAGS.data_dir, data.DATASET_NAME)):
        raise errors.UsageError(
            f"--data_dir holds no {data.DATASET_NAME}/: CelebA is not prepared there. Received: "
            f"--data_dir={FLAGS.data_dir}. Pass {prepared}, or prepare it: python -m "
            "celeba.main --mode=prepare --files_dir=<the original files> --data_dir=...")
    with errors.user_input(FileNotFoundError, flag="--data_dir"):
        data.load_builder(FLAGS.data_dir)
    chosen = script_flags.check_pipeline_inputs(FLAGS, mode)
    if chosen is not None:
        unknown = sorted({t for n in chosen.networks for t in n.tasks} - set(data.ATTRIBUTES))
        if unknown:
            raise errors.UsageError(
                f"--selection names task(s) that are not CelebA attributes: {unknown}. "
                f"Received: --selection={FLAGS.selection}. Pass a selection made for CelebA.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.mode is None:
        raise app.UsageError(f"--mode is required: one of {MODES}.")
    if FLAGS.mode == "prepare":
        if not FLAGS.files_dir:
            raise app.UsageError("--mode=prepare needs --files_dir (the original files).")
        from celeba import data  # pylint: disable=g-import-not-at-top
        with errors.user_input(FileNotFoundError, flag="--files_dir"):
            data.original_file_paths(FLAGS.files_dir)
        prepare(files_dir=FLAGS.files_dir, data_dir=FLAGS.data_dir,
                verify_checksums=FLAGS.verify_checksums)
        return
    if FLAGS.mode == "groups" and not FLAGS.selection:
        raise app.UsageError("--mode=groups needs --selection (a selection JSON).")
    tasks = parse_tasks(FLAGS.tasks) if FLAGS.mode != "groups" else None
    if not FLAGS.selection_time_limit > 0:
        raise app.UsageError("--selection_time_limit must be > 0 seconds. Received: "
                             f"{FLAGS.selection_time_limit}")
    budgets = parse_budgets(FLAGS.budgets)
    if tasks is not None and FLAGS["budgets"].present:
        script_flags.check_budgets(budgets, len(tasks))
    recording = lookahead_flags(FLAGS, ORIGINAL_LOOKAHEAD)
    check_inputs(FLAGS.mode)
    run_celeba(
        FLAGS.mode, data_dir=FLAGS.data_dir,
        output_dir=FLAGS.output_dir or os.path.join("runs", "celeba", FLAGS.mode),
        tasks=tasks, seed=FLAGS.seed, epochs=FLAGS.epochs, batch_size=FLAGS.batch_size,
        image_size=FLAGS.image_size, learning_rate=FLAGS.learning_rate,
        lr_halving_epochs=FLAGS.lr_halving_epochs, patience=FLAGS.patience,
        affinity_batch=FLAGS.affinity_batch, **recording,
        affinity_epochs=FLAGS.affinity_epochs, budgets=budgets,
        selection_time_limit=FLAGS.selection_time_limit, selection=FLAGS.selection,
        budget=FLAGS.budget, selection_table=FLAGS.selection_table,
        uw_clipped=FLAGS.uw_clipped, gradnorm_alpha=FLAGS.gradnorm_alpha, cache=FLAGS.cache,
        shuffle_buffer=FLAGS.shuffle_buffer, limit=FLAGS.limit,
        steps_per_epoch=FLAGS.steps_per_epoch, save_weights=FLAGS.save_weights,
        tensorboard=FLAGS.tensorboard, verbose=FLAGS.verbose,
        runtime={**runtime_fields(FLAGS), **seed_option_fields(FLAGS)})


if __name__ == "__main__":
    errors.run(main, flags_parser=own_registry_parser(FLAGS, __doc__))
