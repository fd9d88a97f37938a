"""taskonomy.adapter: Taskonomy in the reproduction harness, on a tiny fake tree (offline).

32 x 32 inputs, the "tiny" widths, batch 2: one epoch of two steps (4 training images).
Training functions run eagerly, as in test_taskonomy_main (tracing the lookahead graph
costs more than the steps); the slow CLI test covers the compiled path.
"""

import dataclasses
import json
import math

import keras
import numpy as np
import pytest

from tag_tf.experiments import adapter as adapter_lib
from tag_tf.experiments.harness import Harness
from tests.experiments.harness_testing import no_training, run_figure4_cli
from taskonomy import adapter as taskonomy_adapter
from taskonomy import data
from taskonomy import experiment as taskonomy_experiment
from taskonomy import main as taskonomy_main
from taskonomy import presets
from taskonomy import training

pytestmark = pytest.mark.filterwarnings("ignore:Even though:UserWarning")

SPEC = "taskonomy.adapter:TaskonomyAdapter"
TASKS = ["depth_zbuffer", "normal"]
TINY = {"tasks": "dn", "widths": "tiny", "image_size": 32, "batch_size": 2, "epochs": 1,
        "every_n": 1}


@pytest.fixture
def tiny(data_dir):
    return {"data_dir": data_dir, **TINY}


def test_defaults_are_taskonomy_main_flags():
    adapter = taskonomy_adapter.TaskonomyAdapter(data_dir="/nonexistent")
    assert adapter.tasks == tuple(data.parse_tasks("sdntk"))
    assert sorted(adapter.tasks) == sorted(data.TASKS)
    flags = taskonomy_main.FLAGS
    for name in ("image_size", "widths", "batch_size", "eval_batch_size", "learning_rate",
                 "momentum", "weight_decay", "min_learning_rate", "loss_window",
                 "max_loss_window", "epochs", "patience", "rotate_loss", "augment",
                 "mixed_precision", "seed", "every_n", "affinity_batch", "lookahead_rule",
                 "divide_by_lr", "uw_clipped", "gradnorm_alpha", "limit", "steps_per_epoch"):
        assert getattr(adapter, name) == flags[name].default, name
    with pytest.raises(ValueError, match="data_dir"):
        taskonomy_adapter.TaskonomyAdapter()


def test_load_adapter_settings_and_options(tiny):
    adapter = adapter_lib.load_adapter(SPEC, json.dumps(tiny))
    assert isinstance(adapter, adapter_lib.Adapter) and adapter.name == "taskonomy"
    settings = adapter.settings()
    assert json.loads(json.dumps(settings)) == settings
    assert settings["adapter"] == "taskonomy.adapter.TaskonomyAdapter"
    assert settings["tasks"] == TASKS
    expected = {f.name for f in dataclasses.fields(adapter)} - {"verbose"}
    assert set(settings) == expected | {"adapter"}
    options = adapter.config()
    # 2 train buildings x 2 frames, batch 2: the original's rule gives 2 steps per epoch.
    assert options.training.steps_per_epoch == 2
    assert options.training.patience == 1  # patience -1: epochs
    assert options.selection.affinity_epochs == "all" and options.affinity.rule == "optimizer"
    assert adapter_lib.load_adapter(SPEC, {**tiny, "steps_per_epoch": 1}).config() \
        .training.steps_per_epoch == 1


def test_vary_returns_a_new_adapter_with_scaled_settings(tiny):
    adapter = taskonomy_adapter.TaskonomyAdapter(**tiny)
    varied = adapter.vary(batch_size_scale=0.5, learning_rate_scale=0.5)
    assert varied is not adapter and adapter.batch_size == 2
    assert varied.batch_size == 1 and varied.learning_rate == pytest.approx(0.05)
    assert varied.min_learning_rate == pytest.approx(0.5 * adapter.min_learning_rate)
    assert varied.settings() != adapter.settings()
    assert adapter.vary().settings() == adapter.settings()
    assert adapter.vary(batch_size_scale=0.1).batch_size == 1
    assert varied.config().training.steps_per_epoch == 4  # the rule follows the batch size
    with pytest.raises(ValueError, match="positive"):
        adapter.vary(batch_size_scale=-1.0)


def test_experiment_is_fresh_on_every_call(tiny):
    adapter = taskonomy_adapter.TaskonomyAdapter(**tiny)
    first, second = adapter.experiment(), adapter.experiment()
    assert first.train_data is not second.train_data
    assert list(first.tasks) == TASKS and first.error_name == "loss"
    x1, y1 = next(iter(first.train_data))
    x2, y2 = next(iter(second.train_data))
    np.testing.assert_array_equal(x1.numpy(), x2.numpy())
    assert x1.shape == (2, 32, 32, 3) and sorted(y1) == sorted(y2)
    a, b = first.callbacks_fn(), first.callbacks_fn()
    assert isinstance(a[0], training.PlateauHalving) and a[0] is not b[0]
    assert a[0].batch_size == 2 and a[0].history == []
    assert first.optimizer_fn() is not first.optimizer_fn()
    assert isinstance(first.optimizer_fn(), training.CoupledSGD)


def test_harness_trains_and_reuses_the_cache(tiny, tmp_path, eager, monkeypatch):
    adapter = adapter_lib.load_adapter(SPEC, tiny)
    harness = Harness(adapter, str(tmp_path), log=lambda _: None)
    assert harness.tasks == TASKS and harness.error_name == "loss"
    results = harness.train(TASKS[:1], "mtl")
    assert results["tasks"] == TASKS[:1]
    assert math.isfinite(results["test_error"][TASKS[0]])
    assert results["networks"][0]["epochs_run"] == 1
    assert len(results["networks"][0]["history"]["learning_rate"]) == 1  # PlateauHalving
    run = harness.affinity("lookahead")
    assert run.tasks == TASKS and run.matrix.shape == (2, 2)
    assert np.isfinite(run.matrix[~np.eye(2, dtype=bool)]).all()
    assert run.settings["adapter"]["adapter"] == "taskonomy.adapter.TaskonomyAdapter"
    assert harness.cache.misses == 2

    no_training(monkeypatch)
    again = Harness(adapter_lib.load_adapter(SPEC, json.dumps(tiny)), str(tmp_path),
                    log=lambda _: None)
    assert again.train(TASKS[:1], "mtl")["test_error"] == results["test_error"]
    np.testing.assert_array_equal(again.affinity("lookahead").matrix, run.matrix)
    assert (again.cache.hits, again.cache.misses) == (2, 0)


@pytest.mark.slow
def test_mixed_precision_without_a_global_policy(tiny, tmp_path, eager):
    adapter = taskonomy_adapter.TaskonomyAdapter(**tiny, mixed_precision=True)
    experiment = adapter.experiment()
    assert isinstance(experiment.optimizer_fn(), keras.optimizers.LossScaleOptimizer)
    harness = Harness(adapter, str(tmp_path), log=lambda _: None)
    run = harness.affinity("lookahead")
    assert np.isfinite(run.matrix[~np.eye(2, dtype=bool)]).all()
    assert keras.config.dtype_policy().name == "float32"  # the global policy is untouched


@pytest.mark.slow
def test_figure4_command_line(tiny, tmp_path):
    """The documented command (graph mode, op determinism) on the tiny tree."""
    payload = run_figure4_cli(SPEC, tiny, tmp_path, "normal")
    assert payload["adapter_settings"]["adapter"] == "taskonomy.adapter.TaskonomyAdapter"
    values = payload["targets"]["normal"]["sources"]["depth_zbuffer"]
    assert values and all(v is None or math.isfinite(v) for v in values)


@pytest.mark.slow
def test_harness_numbers_equal_taskonomy_main(tiny, tmp_path, eager, capsys):
    """The adapter trains exactly what ``taskonomy.main`` trains with the same settings."""
    harness = Harness(taskonomy_adapter.TaskonomyAdapter(**tiny), str(tmp_path / "cache"),
                      log=lambda _: None)
    cached = harness.train(TASKS[1:], "mtl")
    settings, config = presets.configure(
        data_dir=tiny["data_dir"], tasks="n", widths="tiny", image_size=32, batch_size=2,
        epochs=1, every_n=1, verbose=0)
    direct = taskonomy_experiment.run("mtl", settings, config,
                                      output_dir=str(tmp_path / "main"))
    assert cached["test_loss"] == pytest.approx(direct["test_loss"], rel=1e-6)
    assert cached["networks"][0]["history"]["loss"] == pytest.approx(
        direct["networks"][0]["history"]["loss"], rel=1e-6)


def test_replicate_changes_only_the_training_seed(tiny):
    """harness --seeds: same examples, another seed (its own cache keys)."""
    adapter = taskonomy_adapter.TaskonomyAdapter(**tiny)
    second = adapter_lib.replicate(adapter, 1)
    assert second.seed == adapter.seed + 1
    changed = {k for k in adapter.settings() if adapter.settings()[k] != second.settings()[k]}
    assert changed == {"seed"}
    x1, _ = next(iter(adapter.experiment().validation_data))
    x2, _ = next(iter(second.experiment().validation_data))
    np.testing.assert_array_equal(x1.numpy(), x2.numpy())
    with pytest.raises(ValueError, match="non-negative"):
        adapter.replicate(True)
