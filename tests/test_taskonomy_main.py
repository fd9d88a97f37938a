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

from tag_tf import affinity_io
from taskonomy import data
from taskonomy import main as taskonomy_main
from taskonomy import testing

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


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("taskonomy_main") / "data")
    testing.write_fake_taskonomy(root, size=32, frames=2)
    return root


def _results(output_dir, tasks):
    with open(os.path.join(output_dir, "results.json")) as f:
        results = json.load(f)
    assert results["format"] == "tag_tf.pipeline/v1" and results["error_name"] == "loss"
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
    callback = taskonomy_main.PlateauHalving(2, window=40, max_window=80,
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
    t, p = taskonomy_main.plateau_test(list(np.linspace(2.0, 1.0, 80) + noise))
    assert t > 0 and p < 1e-6  # a clear decrease: keep the learning rate
    t, _ = taskonomy_main.plateau_test(list(np.linspace(1.0, 2.0, 80) + noise))
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
    t, p = taskonomy_main.plateau_test(history[-wind:])
    expected = _original_ttest(history, wind)
    assert (t, p) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-12)
    if (5 * wind) % 8:
        window = history[-wind:]
        floor_a = window[:wind - wind * 5 // 8]
        assert len(floor_a) == len(history[-wind:-wind * 5 // 8]) + 1


def test_weight_decay_is_added_to_the_gradient_like_pytorch():
    variable = keras.Variable(np.array([1.0, -2.0], np.float32))
    optimizer = taskonomy_main.CoupledSGD(0.1, momentum=0.9, l2=0.01)
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


def test_published_selection_names_are_translated(tmp_path):
    from taskonomy import published_tables  # pylint: disable=g-import-not-at-top
    from tag_tf import selection  # pylint: disable=g-import-not-at-top
    path = str(tmp_path / "published.json")
    selection.reproduce_tables(tables=published_tables.tables(), budgets=[2],
                               output_path=path, random_samples=0)
    for table in ("TAG", "HOA"):
        translated, budget, name, tasks = taskonomy_main.canonical_selection(
            path, budget=2, table=table, output_dir=str(tmp_path / table))
        assert tasks == sorted(data.TASKS) and budget is None and name is None
        with open(translated) as f:
            networks = json.load(f)["networks"]
        assert {t for n in networks for t in n["serves"]} == set(data.TASKS)
    with open(translated) as f:
        assert "serves" in json.load(f)["networks"][0]


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
