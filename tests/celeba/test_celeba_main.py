"""``python -m celeba.main`` end to end, every mode, on tiny fake CelebA (offline).

The fake original files go through the real TFDS celeb_a builder (``--mode=prepare``), then
each mode trains 16 x 16 images for 1-2 epochs and the written JSON is checked.
"""

import contextlib
import io
import json
import math
import os
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import app

from celeba import adapter
from celeba import experiment as celeba_experiment
from celeba import main as celeba_main
from celeba import model as celeba_model
from celeba import presets
from tag_tf.io import affinity_io
from tag_tf.core import lookahead

TASKS = ["Black_Hair", "Blond_Hair", "No_Beard"]
TWO_TASKS = TASKS[1:]  # the single-method modes: fewer heads (and STL networks), faster
COMMON = ["--batch_size=4", "--image_size=16", "--every_n=1", "--patience=1", "--verbose=0"]
TINY = ["--tasks=" + ",".join(TASKS), "--budgets=1,2,3", *COMMON]


def _results(output_dir):
    with open(os.path.join(output_dir, "results.json")) as f:
        results = json.load(f)
    assert results["format"] == "tag_tf.runner/v2"
    assert results["error_name"] == "error_percent"
    for task in results["tasks"]:
        assert 0.0 <= results["test_error"][task] <= 100.0
        assert math.isfinite(results["test_loss"][task]) and results["test_loss"][task] > 0
    assert results["total_test_error"] == pytest.approx(sum(results["test_error"].values()))
    for network in results["networks"]:
        assert 1 <= network["epochs_run"] <= results["config"]["training"]["epochs"]
        assert network["history"]["val_summed_loss"]
    return results


def _check_matrix(path, tasks):
    record = affinity_io.load_affinity(path)
    assert record.tasks == tasks
    assert record.affinity.shape == (len(tasks), len(tasks))
    assert np.isfinite(record.affinity).all() and (record.counts > 0).all()
    return record


def _check_selection(path, tasks, budgets):
    with open(path) as f:
        payload = json.load(f)
    assert payload["tasks"] == tasks
    assert [s["budget"] for s in payload["selections"]] == budgets
    for selection in payload["selections"]:
        assert 1 <= len(selection["networks"]) <= selection["budget"]
        assert sorted(selection["served_by"]) == sorted(tasks)


def test_prepare_prints_the_splits(data_dir, run_main, capsys):
    run_main(["--mode=prepare", f"--files_dir={os.path.dirname(data_dir)}/files",
              f"--data_dir={data_dir}", "--noverify_checksums"])
    assert "{'train': 12, 'validation': 4, 'test': 4}" in capsys.readouterr().out.replace(
        "Split(", "").replace(")", "")


@pytest.fixture(scope="module")
def affinity_dir(data_dir, run_main, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("affinity"))
    run_main(["--mode=affinity", f"--data_dir={data_dir}", f"--output_dir={out}",
              "--epochs=2", *TINY])
    return out


@pytest.mark.slow
def test_affinity(affinity_dir, capsys):
    results = _results(affinity_dir)
    assert results["mode"] == "affinity" and results["tasks"] == TASKS
    record = _check_matrix(os.path.join(affinity_dir, "affinity.json"), TASKS)
    assert results["affinity"]["epochs_used"] == record.config["epochs_used"]
    assert record.config["rule"] == "optimizer" and record.config["divide_by_lr"]
    _check_selection(os.path.join(affinity_dir, "selection.json"), TASKS, [1, 2, 3])
    assert os.path.exists(os.path.join(affinity_dir, "affinity.png"))


@pytest.mark.slow
def test_groups_from_the_affinity_selection(data_dir, affinity_dir, run_main, tmp_path,
                                            capsys):
    out = str(tmp_path / "groups")
    run_main(["--mode=groups", f"--data_dir={data_dir}", f"--output_dir={out}", "--epochs=1",
              f"--selection={affinity_dir}/selection.json", "--budget=2", *TINY])
    results = _results(out)
    with open(os.path.join(affinity_dir, "selection.json")) as f:
        chosen = next(s for s in json.load(f)["selections"] if s["budget"] == 2)
    assert [n["tasks"] for n in results["networks"]] == [n["tasks"] for n in chosen["networks"]]
    assert sorted(results["test_error"]) == sorted(TASKS)
    for network in results["networks"]:  # each task is served by the network the selection says
        for task in network["serves"]:
            assert results["test_error"][task] == network["test"][task]["error"]
    assert results["groups"]["budget"] == 2
    text = capsys.readouterr().out
    assert "mode groups" in text and "total" in text


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mtl", "stl", "uw", "gradnorm", "pcgrad", "cs"])
def test_mode(mode, data_dir, run_main, tmp_path, capsys):
    out = str(tmp_path / mode)
    run_main([f"--mode={mode}", f"--data_dir={data_dir}", f"--output_dir={out}", "--epochs=1",
              "--tasks=" + ",".join(TWO_TASKS), "--budgets=1,2", *COMMON])
    results = _results(out)
    assert results["mode"] == mode and results["tasks"] == TWO_TASKS
    assert len(results["networks"]) == (len(TWO_TASKS) if mode == "stl" else 1)
    if mode == "cs":
        _check_matrix(os.path.join(out, "cosine_affinity.json"), TWO_TASKS)
        _check_selection(os.path.join(out, "selection.json"), TWO_TASKS, [1, 2])
    assert f"mode {mode}" in capsys.readouterr().out


# ------------------------------------------------------------------ --lookahead=original
def _parse(argv):
    flags = celeba_main.FLAGS
    flags.unparse_flags()
    flags(["celeba.main", *argv])
    try:
        settings, config = celeba_main.configuration()
        return {"lookahead": settings.lookahead, "every_n": config.affinity.every_n,
                "lookahead_rule": config.affinity.rule,
                "divide_by_lr": config.affinity.divide_by_lr}
    finally:
        flags.unparse_flags()


def test_lookahead_original_settings():
    assert _parse([]) == {"lookahead": "fixed", "every_n": 10, "lookahead_rule": "optimizer",
                          "divide_by_lr": True}
    assert _parse(["--lookahead=original"]) == {
        "lookahead": "original", "every_n": 1, "lookahead_rule": "optimizer",
        "divide_by_lr": True}
    assert _parse(["--lookahead=original", "--every_n=1"])["every_n"] == 1
    with pytest.raises(app.UsageError, match="every_n=10"):
        _parse(["--lookahead=original", "--every_n=10"])
    assert _parse(["--lookahead=paper"]) == {
        "lookahead": "paper", "every_n": 10, "lookahead_rule": "sgd", "divide_by_lr": False}
    with pytest.raises(ValueError, match="lookahead='original'"):
        presets.configure("original", divide_by_lr=False)
    with pytest.raises(ValueError, match="lookahead must be one of"):
        celeba_experiment.make_optimizer(lookahead="notebook")
    assert not hasattr(celeba_experiment.make_optimizer(), "lookahead_momentum")
    assert celeba_experiment.make_optimizer(lookahead="original").lookahead_momentum == 1.0
    fixed = adapter.CelebAAdapter()
    original = adapter.CelebAAdapter(lookahead="original")
    assert (original.every_n, original.lookahead_rule, original.divide_by_lr) == \
        (1, "optimizer", True)
    assert original.settings() != fixed.settings()
    assert original.settings()["lookahead"] == "original"
    assert original.config().affinity.every_n == 1 and fixed.config().affinity.every_n == 10


def test_notebook_lookahead_adds_the_whole_velocity():
    """The notebook's train_step: param + (optimizer._momentum * slot - lr * grad), with
    ``_momentum`` the bool True of the tf.keras SGD of the time."""
    variable = keras.Variable(np.array([1.0, -2.0], np.float32))
    optimizer = celeba_experiment.make_optimizer(0.1, lookahead="original")
    optimizer.build([variable])
    first = lookahead.lookahead_values("optimizer", optimizer, [variable],
                                       [tf.constant([0.5, 0.5])], tf.constant(0.1))
    np.testing.assert_allclose(first[0], [0.95, -2.05], rtol=1e-6)  # first step: plain SGD
    optimizer.apply_gradients([(tf.constant([0.5, 0.5]), variable)])  # velocity -0.05
    ahead = lookahead.lookahead_values("optimizer", optimizer, [variable],
                                       [tf.constant([0.2, -0.4])], tf.constant(0.1))
    weights = np.array([0.95, -2.05])
    np.testing.assert_allclose(ahead[0], weights + (-0.05) - 0.1 * np.array([0.2, -0.4]),
                               rtol=1e-6)
    real = celeba_experiment.make_optimizer(0.1)  # fixed: the optimizer's own 0.9
    real.build([variable])
    real.apply_gradients([(tf.constant([0.5, 0.5]), variable)])
    ahead = lookahead.lookahead_values("optimizer", real, [variable],
                                       [tf.constant([0.2, -0.4])], tf.constant(0.1))
    np.testing.assert_allclose(ahead[0], variable.numpy() + 0.9 * -0.05 - 0.1 * np.array(
        [0.2, -0.4]), rtol=1e-6)


def _notebook_affinity(data_dir, steps, coefficient):
    """The notebook's TAG gains over ``steps`` one-batch epochs, computed directly: on every
    step, for each source task, ``trunk + coefficient * velocity - lr * g_source``, the
    training-mode losses of every task there, ``(1 - after / before) / lr``; then one SGD
    momentum step on the summed loss."""
    experiment = celeba_experiment.build_experiment(presets.CelebASettings(
        data_dir=data_dir, tasks=tuple(TASKS), batch_size=12, image_size=16,
        lookahead="original"))
    keras.utils.set_random_seed(0)
    network = experiment.network_fn(TASKS)
    trunk = {id(v) for name in celeba_model.TRUNK_LAYERS
             for v in network.get_layer(name).trainable_variables}
    loss = experiment.loss_fn(TASKS[0])
    lr = presets.LEARNING_RATE
    values = [tf.convert_to_tensor(v.value) for v in network.trainable_variables]
    state = [v.value for v in network.non_trainable_variables]
    velocity = [tf.zeros_like(v) for v in values]
    gains = []
    x, y = next(iter(experiment.train_data))  # the whole split: the batch of every step
    for _ in range(steps):
        def task_losses(vals, x=x, y=y):
            outputs, _ = network.stateless_call(vals, state, x, training=True)
            return [loss(y[t], outputs[t]) for t in TASKS]
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(values)
            before = task_losses(values)
            total = tf.add_n(before)
        z = np.zeros((len(TASKS), len(TASKS)))
        for i in range(len(TASKS)):
            grads = tape.gradient(before[i], values)
            ahead = [v + coefficient * m - lr * g if id(var) in trunk else v
                     for v, m, g, var in zip(values, velocity, grads,
                                             network.trainable_variables)]
            after = task_losses(ahead)
            z[i] = [(1.0 - float(a) / float(b)) / lr for a, b in zip(after, before)]
        gains.append(z)
        grads = tape.gradient(total, values)
        velocity = [0.9 * m - lr * g for m, g in zip(velocity, grads)]
        values = [v + m for v, m in zip(values, velocity)]
    return np.mean(gains, axis=0)


@pytest.mark.slow
def test_lookahead_original_records_the_notebook_step(data_dir, run_main, tmp_path, eager):
    # One batch of all 12 training images per epoch, so the batch order cannot differ.
    out = str(tmp_path / "original")
    run_main(["--mode=affinity", f"--data_dir={data_dir}", f"--output_dir={out}",
              "--lookahead=original", "--tasks=" + ",".join(TASKS), "--batch_size=12",
              "--image_size=16", "--epochs=2", "--patience=-1", "--budgets=", "--verbose=0"])
    record = affinity_io.load_affinity(os.path.join(out, "affinity.json"))
    assert (record.counts == 2).all()  # every step (every_n=1)
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["experiment"]["lookahead"] == "original"
    expected = _notebook_affinity(data_dir, 2, coefficient=1.0)
    np.testing.assert_allclose(record.affinity, expected, rtol=2e-3, atol=2e-3)
    momentum_09 = _notebook_affinity(data_dir, 2, coefficient=0.9)  # the fixed lookahead
    assert np.abs(record.affinity - momentum_09).max() > 20 * np.abs(
        record.affinity - expected).max()


# ------------------------------------------------------------------ bad input files
def _damaged_files(root):
    """Fake original files (8 / 4 / 4 images) with one training JPEG cut to 200 bytes."""
    from celeba import data  # pylint: disable=g-import-not-at-top
    from celeba import testing  # pylint: disable=g-import-not-at-top
    files = os.path.join(root, "files")
    testing.write_fake_celeba(files, {"train": 8, "validation": 4, "test": 4})
    path = os.path.join(files, data.ORIGINAL_FILES["img_align_celeba"])
    with zipfile.ZipFile(path) as archive:
        items = [(i.filename, archive.read(i.filename)) for i in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in items:
            archive.writestr(name, content[:200] if name.endswith("000002.jpg") else content)
    return files, "img_align_celeba.zip:img_align_celeba/000002.jpg"


@pytest.fixture(scope="module")
def skipped_dir(tmp_path_factory, no_downloads):
    """--mode=prepare on the damaged files without, then with --skip_bad_files, as
    ``errors.run`` runs it: ``(tfds dir, bad name, [status], [stdout], [stderr])``."""
    from tag_tf.cli import errors  # pylint: disable=g-import-not-at-top
    root = str(tmp_path_factory.mktemp("celeba_bad"))
    files, bad = _damaged_files(root)
    tfds_dir = os.path.join(root, "tfds")
    argv = ["--mode=prepare", f"--files_dir={files}", f"--data_dir={tfds_dir}",
            "--noverify_checksums"]
    flags = celeba_main.FLAGS
    out, err, status = [], [], []
    for extra in ([], ["--skip_bad_files"]):
        flags.unparse_flags()
        flags(["celeba.main", *argv, *extra])
        stdout, stderr = io.StringIO(), io.StringIO()
        try:
            with no_downloads(), contextlib.redirect_stdout(stdout), \
                    contextlib.redirect_stderr(stderr):
                errors.guard_main(celeba_main.main)(["celeba.main"])
            status.append(0)
        except SystemExit as e:
            status.append(e.code)
        finally:
            flags.unparse_flags()
        out.append(stdout.getvalue())
        err.append(stderr.getvalue())
    return tfds_dir, bad, status, out, err


def test_prepare_with_a_bad_image_stops_naming_it(skipped_dir):
    _, bad, status, _, err = skipped_dir
    assert status[0] == 2
    assert "Traceback" not in err[0] and len(err[0].splitlines()) == 1, err[0]
    assert err[0].startswith("error: Bad CelebA image file " + bad)
    assert "--skip_bad_files" in err[0]


def test_prepare_skip_bad_files_leaves_it_out_and_every_run_reports_it(skipped_dir):
    tfds_dir, bad, status, out, _ = skipped_dir
    assert status[1] == 0
    assert "'train': 7," in out[1].replace("Split(", "").replace(")", "")  # 8, one left out
    warning = [line for line in out[1].splitlines() if line.startswith("WARNING")]
    assert len(warning) == 1 and "1 bad input file(s) skipped: " + bad in warning[0]
    assert "bad_files.json" in warning[0]
    settings = presets.CelebASettings(data_dir=tfds_dir, tasks=tuple(TWO_TASKS),
                                      batch_size=4, image_size=16)
    experiment = celeba_experiment.build_experiment(settings)
    assert experiment.bad_input_files.count == 1
    assert experiment.bad_input_files.paths == [bad]


@pytest.mark.slow
def test_training_on_data_prepared_with_skipped_files_reports_them(skipped_dir, run_main,
                                                                   tmp_path, capsys):
    tfds_dir, bad, *_ = skipped_dir
    out = str(tmp_path / "mtl")
    run_main(["--mode=mtl", f"--data_dir={tfds_dir}", f"--output_dir={out}", "--epochs=1",
              "--tasks=" + ",".join(TWO_TASKS), *COMMON])
    results = _results(out)
    assert results["bad_input_files"]["count"] == 1
    assert results["bad_input_files"]["first"][0]["path"] == bad
    lines = [line for line in capsys.readouterr().out.splitlines() if "bad input file" in line]
    assert len(lines) == 1 and bad in lines[0]
