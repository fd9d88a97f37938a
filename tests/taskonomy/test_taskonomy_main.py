"""``python -m taskonomy.main`` end to end on a tiny fake Taskonomy tree (offline).

32 x 32 inputs, the "tiny" widths, batch 2, one epoch of two steps. Training functions run
eagerly (``tf.config.run_functions_eagerly``): tracing the lookahead graph of even the tiny
network costs far more than its few steps; ``test_all_tasks_in_graph_mode`` (slow) covers
the compiled path.
"""

import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tag_tf.io import affinity_io
from tag_tf.core import lookahead
from taskonomy import adapter
from taskonomy import data
from taskonomy import experiment as taskonomy_experiment
from taskonomy import main as taskonomy_main
from taskonomy import model as taskonomy_model
from taskonomy import presets
from taskonomy import training

pytestmark = pytest.mark.filterwarnings("ignore:Even though:UserWarning")

TWO = "dn"
COMMON = ["--widths=tiny", "--image_size=32", "--batch_size=2", "--epochs=1", "--every_n=1",
          "--verbose=0"]


def run_main(argv):
    flags = taskonomy_main.FLAGS
    flags.unparse_flags()
    flags(["taskonomy.main", *argv])
    try:
        taskonomy_main.main(["taskonomy.main"])
    finally:
        flags.unparse_flags()


def _results(output_dir, tasks):
    with open(os.path.join(output_dir, "results.json")) as f:
        results = json.load(f)
    assert results["format"] == "tag_tf.runner/v2" and results["error_name"] == "loss"
    assert results["tasks"] == tasks
    for task in tasks:
        assert math.isfinite(results["test_loss"][task]) and results["test_loss"][task] > 0
    assert results["total_test_error"] == pytest.approx(sum(results["test_error"].values()))
    for network in results["networks"]:
        assert network["epochs_run"] == 1 and network["test_split"] == "test"
        assert len(network["history"]["learning_rate"]) == 1
    return results


def _mode(mode, data_dir, tmp_path, tasks=TWO, extra=()):
    out = str(tmp_path / mode)
    run_main([f"--mode={mode}", f"--data_dir={data_dir}", f"--output_dir={out}",
              f"--tasks={tasks}", *COMMON, *extra])
    return out, _results(out, data.parse_tasks(tasks))


# ----------------------------------------------------------------------------- schedule
class _Probe(keras.Model):
    def __init__(self, lr):
        super().__init__()
        self.optimizer = keras.optimizers.SGD(lr)
        self.optimizer.build([])


def _feed(callback, losses, epoch):
    callback.on_epoch_begin(epoch)
    running = 0.0
    for k, loss in enumerate(losses):
        running += (loss - running) / (k + 1)
        callback.on_train_batch_end(k, {"loss": running})
    logs = {}
    callback.on_epoch_end(epoch, logs)
    return logs


def test_plateau_halving_follows_the_original_rule():
    probe = _Probe(0.1)
    callback = training.PlateauHalving(2, window=40, max_window=80,
                                             min_learning_rate=0.03)
    callback.set_model(probe)
    callback.on_train_begin()
    decreasing = list(np.linspace(5.0, 1.0, 30))
    _feed(callback, decreasing, 0)
    _feed(callback, decreasing, 1)  # epochs 0 and 1 never halve
    assert callback.halvings == 0
    np.testing.assert_allclose(callback.history, decreasing * 2, rtol=1e-5)
    logs = _feed(callback, list(np.linspace(1.0, 1.2, 21)), 2)  # loss goes up: halve once
    assert callback.halvings == 1 and callback.window == 80
    assert logs["learning_rate"] == pytest.approx(0.05)
    assert not getattr(probe, "stop_training", False)
    _feed(callback, list(np.linspace(1.0, 2.0, 41)), 3)  # next test after 40 steps; stop
    assert callback.halvings == 2
    assert float(probe.optimizer.learning_rate) == pytest.approx(0.025)
    assert probe.stop_training


def test_plateau_t_test_statistic():
    noise = 0.01 * np.random.default_rng(0).normal(size=80)
    t, p = training.plateau_test(list(np.linspace(2.0, 1.0, 80) + noise))
    assert t > 0 and p < 1e-6  # a clear decrease: keep the learning rate
    t, _ = training.plateau_test(list(np.linspace(1.0, 2.0, 80) + noise))
    assert t < 0


def _original_ttest(history, wind):
    """tag.patch's Trainer.learning_rate_schedule slices, written with its negative indices."""
    from scipy import stats
    a = sorted(history[-wind:-wind * 5 // 8])
    b = sorted(history[-wind * 3 // 8:])
    a = a[int(len(a) * .05):int(len(a) * .95)]
    b = b[int(len(b) * .05):int(len(b) * .95)]
    n = min(len(a), len(b))
    return stats.ttest_rel(a[:n], b[:n])


@pytest.mark.parametrize("wind", [44, 45, 46, 48])
def test_plateau_window_slices_round_like_the_original(wind):
    # 5 * 44 = 220 is not a multiple of 8: floor(-220 / 8) = -28 keeps 16 losses in the first
    # part where floor(220 / 8) = 27 would keep 17 (and the last part 17 instead of 16).
    history = list(np.random.default_rng(wind).normal(size=wind + 7))
    t, p = training.plateau_test(history[-wind:])
    expected = _original_ttest(history, wind)
    assert (t, p) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-12)
    if (5 * wind) % 8:
        window = history[-wind:]
        floor_a = window[:wind - wind * 5 // 8]
        assert len(floor_a) == len(history[-wind:-wind * 5 // 8]) + 1


def test_weight_decay_is_added_to_the_gradient_like_pytorch():
    variable = keras.Variable(np.array([1.0, -2.0], np.float32))
    optimizer = training.CoupledSGD(0.1, momentum=0.9, l2=0.01)
    weights, buffer = np.array([1.0, -2.0]), None
    for grad in ([0.5, 0.5], [0.1, -0.3], [0.0, 0.2]):
        optimizer.apply_gradients([(tf.constant(grad, tf.float32), variable)])
        step = np.array(grad) + 0.01 * weights  # torch.optim.SGD(weight_decay=0.01)
        buffer = step if buffer is None else 0.9 * buffer + step
        weights = weights - 0.1 * buffer
    np.testing.assert_allclose(variable.numpy(), weights, rtol=1e-6)


# ----------------------------------------------------------------------------- end to end
def test_affinity_then_groups(data_dir, tmp_path, eager):
    out, results = _mode("affinity", data_dir, tmp_path, extra=["--budgets=1,2"])
    tasks = data.parse_tasks(TWO)
    record = affinity_io.load_affinity(os.path.join(out, "affinity.json"))
    assert sorted(record.tasks) == tasks
    assert np.isfinite(record.affinity).all() and (record.counts == 2).all()
    assert record.config["rule"] == "optimizer" and record.config["divide_by_lr"]
    assert results["affinity"]["epochs_used"] == [0]
    assert [s["budget"] for s in results["selection"]["selections"]] == [1, 2]
    for name in ("affinity.npz", "affinity.png", "selection.json"):
        assert os.path.exists(os.path.join(out, name))

    groups = str(tmp_path / "groups")
    run_main(["--mode=groups", f"--data_dir={data_dir}", f"--output_dir={groups}",
              f"--selection={os.path.join(out, 'selection.json')}", "--budget=2", *COMMON])
    grouped = _results(groups, tasks)
    served = sorted(t for network in grouped["networks"] for t in network["serves"])
    assert served == tasks


def test_published_selections_use_task_names(tmp_path):
    from taskonomy import published_tables  # pylint: disable=g-import-not-at-top
    from tag_tf import selection  # pylint: disable=g-import-not-at-top
    path = str(tmp_path / "published.json")
    selection.reproduce_tables(tables=published_tables.tables(), budgets=[2],
                               output_path=path, random_samples=0)
    for table in ("TAG", "CS", "HOA"):
        same, budget, name, tasks = taskonomy_experiment.canonical_selection(
            path, budget=2, table=table, output_dir=str(tmp_path / table))
        assert (same, budget, name) == (path, 2, table)  # already task names: no rewrite
        assert tasks == sorted(data.TASKS)


def test_selection_letters_and_loss_keys_are_translated(tmp_path):
    path = tmp_path / "old.json"  # a selection written with the files' own labels
    path.write_text(json.dumps({"networks": [{"tasks": ["s", "d", "n"], "serves": ["s", "d"]},
                                             {"tasks": ["norm_l", "key_l", "edge2d_l"],
                                              "serves": ["norm_l", "key_l", "edge2d_l"]}]}))
    translated, budget, name, tasks = taskonomy_experiment.canonical_selection(
        str(path), budget=None, table=None, output_dir=str(tmp_path / "out"))
    assert tasks == sorted(data.TASKS) and budget is None and name is None
    with open(translated) as f:
        networks = json.load(f)["networks"]
    assert networks[0]["serves"] == ["segment_semantic", "depth_zbuffer"]
    assert {t for n in networks for t in n["serves"]} == set(data.TASKS)


def test_usage_errors():
    from absl import app
    with pytest.raises(app.UsageError, match="--mode"):
        run_main([])
    with pytest.raises(app.UsageError, match="data_dir"):
        run_main(["--mode=mtl"])
    with pytest.raises(app.UsageError, match="selection"):
        run_main(["--mode=groups", "--data_dir=/nonexistent"])


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["cs", "mtl", "stl", "uw", "gradnorm", "pcgrad"])
def test_mode(mode, data_dir, tmp_path, eager):
    out, results = _mode(mode, data_dir, tmp_path)
    assert len(results["networks"]) == (2 if mode == "stl" else 1)
    if mode == "cs":
        record = affinity_io.load_affinity(os.path.join(out, "cosine_affinity.json"))
        assert np.isfinite(record.affinity).all()


@pytest.mark.slow
def test_mixed_precision_affinity(data_dir, tmp_path, eager):
    out, _ = _mode("affinity", data_dir, tmp_path, extra=["--mixed_precision", "--budgets="])
    record = affinity_io.load_affinity(os.path.join(out, "affinity.json"))
    assert np.isfinite(record.affinity).all()
    assert keras.config.dtype_policy().name == "float32"  # restored


@pytest.mark.slow
def test_convert_then_train_from_tfrecords(data_dir, tmp_path, eager):
    records = str(tmp_path / "records")
    run_main(["--mode=convert", f"--data_dir={data_dir}", f"--output_dir={records}",
              "--tasks=sdntk"])
    out = str(tmp_path / "mtl")
    run_main(["--mode=mtl", f"--tfrecord_dir={records}", f"--output_dir={out}",
              f"--tasks={TWO}", *COMMON])
    _results(out, data.parse_tasks(TWO))


@pytest.mark.slow
def test_all_tasks_in_graph_mode(data_dir, tmp_path):
    out, _ = _mode("affinity", data_dir, tmp_path, tasks="sdntk", extra=["--budgets=1,2,3,4"])
    record = affinity_io.load_affinity(os.path.join(out, "affinity.json"))
    assert sorted(record.tasks) == sorted(data.TASKS)
    assert np.isfinite(record.affinity).all()


# ----------------------------------------------------------------------------- --lookahead=original
def _lookahead_flags(argv):
    flags = taskonomy_main.FLAGS
    flags.unparse_flags()
    flags(["taskonomy.main", *argv])
    try:
        settings, config = taskonomy_main.configuration()
        return {"lookahead": settings.lookahead, "every_n": config.affinity.every_n,
                "lookahead_rule": config.affinity.rule,
                "divide_by_lr": config.affinity.divide_by_lr}
    finally:
        flags.unparse_flags()


def test_lookahead_original_builds_the_tag_patch_setup(data_dir):
    from absl import app
    assert _lookahead_flags(["--lookahead=original"]) == {
        "lookahead": "original", "every_n": 10, "lookahead_rule": "optimizer",
        "divide_by_lr": True}
    with pytest.raises(app.UsageError, match="every_n=1"):
        _lookahead_flags(["--lookahead=original", "--every_n=1"])
    common = dict(data_dir=data_dir, tasks=TWO, batch_size=2, image_size=32, widths="tiny")
    splits = taskonomy_experiment.load_data(presets.TaskonomySettings(**common))
    fixed = taskonomy_experiment.build_experiment(presets.TaskonomySettings(**common), splits)
    original = taskonomy_experiment.build_experiment(
        presets.TaskonomySettings(lookahead="original", **common), splits)
    left_out = set(fixed.shared) - set(original.shared)
    assert left_out == set(taskonomy_model.FINAL_CONV_LAYERS)
    assert fixed.optimizer_fn().lookahead_momentum is None
    assert original.optimizer_fn().lookahead_momentum == 0.0
    assert not any(isinstance(c, training.EpochAlignedRecording)
                   for c in fixed.callbacks_fn())
    assert any(isinstance(c, training.EpochAlignedRecording)
               for c in original.callbacks_fn())
    plain = adapter.TaskonomyAdapter(data_dir=data_dir)
    tag_patch = adapter.TaskonomyAdapter(data_dir=data_dir, lookahead="original")
    assert tag_patch.settings() != plain.settings()
    assert tag_patch.settings()["lookahead"] == "original"
    with pytest.raises(ValueError, match="lookahead='original'"):
        adapter.TaskonomyAdapter(data_dir=data_dir, lookahead="original", divide_by_lr=False)


def test_tag_patch_lookahead_ignores_momentum_but_not_weight_decay():
    variable = keras.Variable(np.array([1.0, -2.0], np.float32))
    optimizer = training.CoupledSGD(0.1, momentum=0.9, l2=0.01, lookahead_momentum=0.0)
    optimizer.build([variable])
    optimizer.apply_gradients([(tf.constant([0.5, 0.5]), variable)])  # a non-zero velocity
    theta = variable.numpy().astype(np.float64)
    grad = np.array([0.2, -0.4])
    ahead = lookahead.lookahead_values("optimizer", optimizer, [variable],
                                       [tf.constant(grad, tf.float32)], tf.constant(0.1))
    np.testing.assert_allclose(ahead[0], theta - 0.1 * (grad + 0.01 * theta), rtol=1e-6)


def _tag_patch_affinity(data_dir, tasks, steps, lookahead_momentum):
    """tag.patch's transference over ``steps`` one-batch epochs, computed directly: on every
    step, for each source task, ``encoder + m * velocity - lr * (g + wd * encoder)`` on the
    encoder without the final conv, the training-mode losses of every task there,
    ``(1 - after / before) / lr``; then one CoupledSGD step on the summed loss."""
    keras.utils.set_random_seed(0)  # the run's shuffling seeds: the same batch order
    settings = presets.TaskonomySettings(data_dir=data_dir, tasks=",".join(tasks),
                                         batch_size=4, image_size=32, augment=False,
                                         widths="tiny", lookahead="original")
    splits = taskonomy_experiment.load_data(settings)
    experiment = taskonomy_experiment.build_experiment(settings, splits)
    keras.utils.set_random_seed(0)
    network = experiment.network_fn(tasks)
    shared = {id(v) for name in experiment.shared
              for v in network.get_layer(name).trainable_variables}
    losses = {t: experiment.loss_fn(t) for t in tasks}
    lr, wd = presets.LEARNING_RATE, presets.WEIGHT_DECAY
    values = [tf.convert_to_tensor(v.value) for v in network.trainable_variables]
    state = [v.value for v in network.non_trainable_variables]
    velocity = [tf.zeros_like(v) for v in values]
    batches = iter(splits.train)  # each batch: the whole training split, one epoch
    gains = []
    for _ in range(steps):
        x, y = next(batches)

        def task_losses(vals):
            outputs, _ = network.stateless_call(vals, state, x, training=True)
            return [losses[t](y[t], outputs[t]) for t in tasks]
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(values)
            before = task_losses(values)
            total = tf.add_n(before)
        z = np.zeros((len(tasks), len(tasks)))
        for i in range(len(tasks)):
            grads = tape.gradient(before[i], values)
            ahead = [v + lookahead_momentum * m - lr * (g + wd * v) if id(var) in shared else v
                     for v, m, g, var in zip(values, velocity, grads,
                                             network.trainable_variables)]
            z[i] = [(1.0 - float(a) / float(b)) / lr
                    for a, b in zip(task_losses(ahead), before)]
        gains.append(z)
        grads = tape.gradient(total, values)
        velocity = [0.9 * m - lr * (g + wd * v) for m, g, v in zip(velocity, grads, values)]
        values = [v + m for v, m in zip(values, velocity)]
    return np.mean(gains, axis=0)


@pytest.mark.slow
def test_lookahead_original_records_the_tag_patch_step(data_dir, tmp_path, eager):
    # 4 training images in one batch: one step per epoch. With every_n=10 only the epoch
    # alignment records epoch 1's step (global step 1). Segmentation (cross-entropy) and
    # keypoints (L1 on targets far from the outputs): losses whose gradients do not jump
    # under float noise, unlike the shift-tolerant minimum or L1 near zero residuals.
    keras.utils.set_random_seed(0)  # the same shuffling as _tag_patch_affinity's
    out = str(tmp_path / "original")
    run_main(["--mode=affinity", f"--data_dir={data_dir}", f"--output_dir={out}",
              "--tasks=sk", "--lookahead=original", "--widths=tiny", "--image_size=32",
              "--batch_size=4", "--epochs=2", "--noaugment", "--budgets=", "--verbose=0"])
    record = affinity_io.load_affinity(os.path.join(out, "affinity.json"))
    assert (record.counts == 2).all() and record.config["train_steps"] == 2
    tasks = data.parse_tasks("sk")
    assert sorted(record.tasks) == sorted(tasks)
    order = [tasks.index(t) for t in record.tasks]
    expected = _tag_patch_affinity(data_dir, tasks, 2, lookahead_momentum=0.0)
    expected = expected[np.ix_(order, order)]
    np.testing.assert_allclose(record.affinity, expected, rtol=1e-3, atol=1e-3)
    with_momentum = _tag_patch_affinity(data_dir, tasks, 2, lookahead_momentum=0.9)
    with_momentum = with_momentum[np.ix_(order, order)]
    assert np.abs(record.affinity - with_momentum).max() > 20 * np.abs(
        record.affinity - expected).max()


# ----------------------------------------------------------------------------- bad input files
def test_corrupt_png_stops_the_cli_naming_it_or_is_skipped_and_reported(tmp_path, capsys,
                                                                        eager):
    """The issue's case through ``python -m taskonomy.main``: an rgb PNG of a training
    building truncated to 200 bytes. By default one ``error:`` line (status 2) names it and
    --skip_bad_files; with --skip_bad_files the run finishes, and results.json, the summary
    and the log report it."""
    from tag_tf.cli import errors  # pylint: disable=g-import-not-at-top
    from taskonomy import testing  # pylint: disable=g-import-not-at-top
    root = str(tmp_path / "data")
    testing.write_fake_taskonomy(root, size=32, frames=2)
    bad = data.split_examples(root, TWO, "train").paths["rgb"][1]
    with open(bad, "r+b") as f:
        f.truncate(200)
    out = str(tmp_path / "mtl")
    argv = ["--mode=mtl", f"--data_dir={root}", f"--output_dir={out}", f"--tasks={TWO}",
            *COMMON]

    flags = taskonomy_main.FLAGS
    flags.unparse_flags()
    flags(["taskonomy.main", *argv])
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit) as exit_:
            errors.guard_main(taskonomy_main.main)(["taskonomy.main"])
    finally:
        flags.unparse_flags()
    assert exit_.value.code == errors.EXIT_STATUS == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("error: ") and bad in err and "Invalid PNG data" in err
    assert "--skip_bad_files" in err
    assert not os.path.exists(os.path.join(out, "results.json"))

    run_main([*argv, "--skip_bad_files"])
    printed = capsys.readouterr().out
    results = _results(out, data.parse_tasks(TWO))
    assert results["experiment"]["skip_bad_files"] is True
    assert results["bad_input_files"]["count"] == 1
    assert [e["path"] for e in results["bad_input_files"]["first"]] == [bad]
    assert "Invalid PNG data" in results["bad_input_files"]["first"][0]["reason"]
    lines = [line for line in printed.splitlines() if "bad input file" in line]
    assert len(lines) == 1 and "1 bad input file(s) skipped" in lines[0] and bad in lines[0]


def test_selection_tasks_json_is_written_atomically(tmp_path, monkeypatch):
    """A translated selection is written through tag_tf.io.atomic: if the final rename
    fails (a kill at that instant), the previous file stays whole and no partial one is
    left."""
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"networks": [{"tasks": ["s", "d"], "serves": ["s", "d"]}]}))
    out = tmp_path / "out"
    out.mkdir()
    translated = out / "selection_tasks.json"
    translated.write_text("previous")

    def fail(src, dst):
        raise OSError("killed before the rename")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="killed before the rename"):
        taskonomy_experiment.canonical_selection(str(path), budget=None, table=None,
                                                 output_dir=str(out))
    assert translated.read_text() == "previous"
    assert sorted(os.listdir(out)) == ["selection_tasks.json"]  # no temporary file left
    monkeypatch.undo()
    taskonomy_experiment.canonical_selection(str(path), budget=None, table=None,
                                             output_dir=str(out))
    assert json.loads(translated.read_text())["networks"][0]["tasks"] == [
        "segment_semantic", "depth_zbuffer"]
