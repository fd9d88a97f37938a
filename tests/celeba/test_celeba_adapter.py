"""celeba.adapter: CelebA in the reproduction harness, on tiny fake CelebA (offline).

The fake original files go through the real TFDS celeb_a builder once; the harness then
trains 16 x 16 images for one epoch of two steps. Training functions run eagerly (tracing
the lookahead step costs more than the few steps; the graph path is the slow CLI test).
"""

import dataclasses
import json
import math

import numpy as np
import pytest

from celeba import adapter as celeba_adapter
from celeba import data
from celeba import experiment as celeba_experiment
from celeba import main as celeba_main
from celeba import presets
from tag_tf.experiments import adapter as adapter_lib
from tag_tf.experiments.harness import Harness
from tests.experiments.harness_testing import no_training, run_figure4_cli

pytestmark = pytest.mark.filterwarnings("ignore:Even though:UserWarning")

SPEC = "celeba.adapter:CelebAAdapter"
TASKS = ["Black_Hair", "Blond_Hair", "No_Beard"]
TINY = {"tasks": TASKS, "image_size": 16, "batch_size": 4, "epochs": 1, "patience": -1,
        "steps_per_epoch": 2, "every_n": 1}


@pytest.fixture
def tiny(small_data_dir):
    return {"data_dir": small_data_dir, **TINY}


def test_defaults_are_celeba_main_flags():
    adapter = celeba_adapter.CelebAAdapter()
    assert adapter.tasks == tuple(data.DEFAULT_TASKS) and len(adapter.tasks) == 9
    flags = celeba_main.FLAGS
    for name in ("image_size", "batch_size", "learning_rate", "lr_halving_epochs", "epochs",
                 "patience", "seed", "every_n", "affinity_batch", "lookahead_rule",
                 "divide_by_lr", "affinity_epochs", "uw_clipped", "gradnorm_alpha"):
        assert getattr(adapter, name) == flags[name].default, name
    options = adapter.config()
    assert (options.training.epochs, options.training.patience,
            options.training.steps_per_epoch) == (100, 10, None)
    assert options.affinity.rule == "optimizer" and options.affinity.divide_by_lr
    assert celeba_adapter.CelebAAdapter(patience=-1).config().training.patience is None
    # every other setting is the CLI's default configuration (but the harness selects)
    assert options == presets.PRESETS["fixed"].run.replace(budgets=(), verbose=0)


def test_load_adapter_and_json_settings(tiny):
    adapter = adapter_lib.load_adapter(SPEC, json.dumps(tiny))
    assert isinstance(adapter, adapter_lib.Adapter) and adapter.name == "celeba"
    settings = adapter.settings()
    assert json.loads(json.dumps(settings)) == settings
    assert settings["adapter"] == "celeba.adapter.CelebAAdapter"
    assert settings["tasks"] == TASKS and settings["data_dir"] == tiny["data_dir"]
    expected = {f.name for f in dataclasses.fields(adapter)} - {"verbose"}
    assert set(settings) == expected | {"adapter"}
    assert adapter_lib.load_adapter(SPEC, tiny).settings() == settings
    with pytest.raises(ValueError, match="Unknown"):
        celeba_adapter.CelebAAdapter(tasks=["Not_An_Attribute"])


def test_vary_returns_a_new_adapter_with_scaled_settings(tiny):
    adapter = celeba_adapter.CelebAAdapter(**tiny)
    varied = adapter.vary(batch_size_scale=0.5, learning_rate_scale=2.0)
    assert varied is not adapter and adapter.batch_size == 4  # the original is unchanged
    assert varied.batch_size == 2 and varied.learning_rate == pytest.approx(2 * 5e-4)
    assert varied.settings() != adapter.settings()
    assert varied.settings()["batch_size"] == 2
    assert adapter.vary().settings() == adapter.settings()
    assert adapter.vary(batch_size_scale=0.01).batch_size == 1
    assert isinstance(adapter.vary(batch_size_scale=1.3).batch_size, int)
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="positive"):
            adapter.vary(learning_rate_scale=bad)


def _first_batch(dataset):
    images, labels = next(iter(dataset))
    return images.numpy(), {k: v.numpy() for k, v in labels.items()}


def test_experiment_has_fresh_datasets(tiny):
    adapter = celeba_adapter.CelebAAdapter(**tiny)
    first, second = adapter.experiment(), adapter.experiment()
    assert first.train_data is not second.train_data
    assert first.test_data is not second.test_data
    assert list(first.tasks) == TASKS and first.error_name == "error_percent"
    images, labels = _first_batch(first.train_data)
    assert images.shape == (4, 16, 16, 3) and sorted(labels) == sorted(TASKS)
    _first_batch(first.train_data)  # iterating one dataset does not move the other
    again_images, again_labels = _first_batch(second.train_data)
    np.testing.assert_array_equal(again_images, images)
    for task in TASKS:
        np.testing.assert_array_equal(again_labels[task], labels[task])
    schedule = first.callbacks_fn()
    assert schedule[0] is not first.callbacks_fn()[0]


def test_harness_trains_and_reuses_the_cache(tiny, tmp_path, eager, monkeypatch):
    adapter = adapter_lib.load_adapter(SPEC, tiny)
    harness = Harness(adapter, str(tmp_path), log=lambda _: None)
    assert harness.tasks == TASKS and harness.error_name == "error_percent"
    results = harness.train(TASKS[:2], "mtl")
    assert results["tasks"] == TASKS[:2]
    for task in TASKS[:2]:
        assert 0.0 <= results["test_error"][task] <= 100.0
    assert results["networks"][0]["epochs_run"] == 1
    run = harness.affinity("lookahead")
    assert run.tasks == TASKS and run.matrix.shape == (3, 3)
    off_diagonal = run.matrix[~np.eye(3, dtype=bool)]
    assert np.isfinite(off_diagonal).all()
    assert run.settings["adapter"]["adapter"] == "celeba.adapter.CelebAAdapter"
    assert harness.cache.misses == 2

    no_training(monkeypatch)
    again = Harness(adapter_lib.load_adapter(SPEC, json.dumps(tiny)), str(tmp_path),
                    log=lambda _: None)
    assert again.train(TASKS[:2], "mtl")["test_error"] == results["test_error"]
    np.testing.assert_array_equal(again.affinity("lookahead").matrix, run.matrix)
    assert (again.cache.hits, again.cache.misses) == (2, 0)
    varied = Harness(adapter.vary(batch_size_scale=0.5), str(tmp_path), log=lambda _: None)
    with pytest.raises(AssertionError, match="cache"):  # other settings: not a cache hit
        varied.train(TASKS[:2], "mtl")


@pytest.mark.slow
def test_figure4_command_line(tiny, tmp_path):
    """The documented command (graph mode, op determinism) on the tiny data."""
    payload = run_figure4_cli(SPEC, tiny, tmp_path, "Blond_Hair")
    assert payload["adapter_settings"]["adapter"] == "celeba.adapter.CelebAAdapter"
    values = [v for trace in payload["targets"].values()
              for series in trace["sources"].values() for v in series]
    assert values and all(v is None or math.isfinite(v) for v in values)


def test_harness_numbers_equal_celeba_main(tiny, tmp_path, eager, capsys):
    """The adapter trains exactly what ``celeba.main`` trains with the same settings."""
    harness = Harness(celeba_adapter.CelebAAdapter(**tiny), str(tmp_path / "cache"),
                      log=lambda _: None)
    cached = harness.train(TASKS[1:], "mtl")
    settings, config = presets.configure(
        data_dir=tiny["data_dir"], tasks=tuple(TASKS[1:]), epochs=1, batch_size=4,
        image_size=16, patience=None, steps_per_epoch=2, every_n=1, verbose=0)
    direct = celeba_experiment.run("mtl", settings, config, output_dir=str(tmp_path / "main"))
    assert cached["test_loss"] == pytest.approx(direct["test_loss"], rel=1e-6)
    assert cached["test_error"] == pytest.approx(direct["test_error"])


def test_replicate_changes_only_the_training_seed(tiny):
    """harness --seeds: same examples, another seed (its own cache keys)."""
    adapter = celeba_adapter.CelebAAdapter(**tiny)
    assert adapter_lib.replicate(adapter, 0) is adapter
    second = adapter_lib.replicate(adapter, 2)
    assert second.seed == adapter.seed + 2 and adapter.seed == tiny.get("seed", 0)
    changed = {k for k in adapter.settings() if adapter.settings()[k] != second.settings()[k]}
    assert changed == {"seed"}
    first_val = _first_batch(adapter.experiment().validation_data)
    second_val = _first_batch(second.experiment().validation_data)
    np.testing.assert_array_equal(first_val[0], second_val[0])
    with pytest.raises(ValueError, match="non-negative"):
        adapter.replicate(-1)
