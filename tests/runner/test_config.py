"""tag_tf.runner's configuration, mode registry, presets and typed results (no training)."""

import dataclasses
import json

import numpy as np
import pytest

import tag_tf
from tag_tf.io import affinity_io
from tag_tf.runner import modes
from tag_tf.runner import presets as presets_lib
from tag_tf.runner.config import (RunConfig, RuntimeConfig, SelectionConfig,
                                  TrainingConfig)
from tag_tf.runner.results import NetworkResult, RunResult


def _config():
    return RunConfig(
        training=TrainingConfig(epochs=3, patience=None, seed=4, steps_per_epoch=5,
                                uw_clipped=False, gradnorm_alpha=1.5),
        affinity=tag_tf.AffinityConfig.from_json({"every_n": 2, "rule": "optimizer",
                                                  "batch": "validation", "window": "first",
                                                  "measures": ["taylor", "cosine"]}),
        selection=SelectionConfig(budgets=(2, 3), bootstrap=7, time_limit=3.0,
                                  affinity_epochs="until_best", selection_path="s.json",
                                  budget=2, table="TAG", mtl_results="m.json"),
        runtime=RuntimeConfig(strategy="mirrored", mixed_precision=True, backup_dir="b",
                              save_freq=3, verbose=0, tensorboard=True),
        seeds=2)


def test_json_round_trip_and_the_affinity_section_is_the_library_class():
    config = _config()
    assert isinstance(config.affinity, tag_tf.AffinityConfig)
    payload = json.loads(json.dumps(config.to_json()))
    assert RunConfig.from_json(payload) == config
    assert RunConfig.from_json({}) == RunConfig()
    assert payload["affinity"] == config.affinity.to_json()
    with pytest.raises(ValueError, match="no field"):
        RunConfig.from_json({"training": {"epoch": 3}})


def test_result_fields_are_the_cache_key():
    config = _config()
    key = config.result_json()
    assert "verbose" not in key["runtime"] and "backup_dir" not in key["runtime"]
    assert "tensorboard" not in key["runtime"] and key["runtime"]["strategy"] == "mirrored"
    assert key["training"] == config.to_json()["training"] and key["seeds"] == 2
    quieter = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime,
                                                                     verbose=2))
    assert quieter.result_json() == key  # verbosity changes no result
    mtl = modes.get("mtl").result_json(config)
    assert "affinity" not in mtl and "selection" not in mtl  # recording settings: no effect
    cs = modes.get("cs").result_json(config)
    assert cs["affinity"]["measures"] == ["cosine"]  # what cs records, not the spelling
    assert modes.get("affinity").result_json(config)["affinity"]["measures"] == [
        "taylor", "cosine"]
    assert "selection" in modes.get("groups").result_json(config)


def test_replace_by_flag_or_field_name_and_one_line_errors():
    config = RunConfig().replace(epochs=3, lookahead_rule="optimizer", selection="s.json",
                                 selection_table="CS", affinity_batch="validation", seeds=2)
    assert (config.training.epochs, config.affinity.rule, config.selection.selection_path,
            config.selection.table, config.affinity.batch, config.seeds) == (
        3, "optimizer", "s.json", "CS", "validation", 2)
    assert config.replace(selection_path="t.json", rule="sgd").affinity.rule == "sgd"
    assert config.replace(training=TrainingConfig(epochs=9)).training.epochs == 9
    with pytest.raises(ValueError, match="Unknown setting"):
        RunConfig().replace(epoch=3)
    for bad, text in ((dict(epochs=0), "epochs must be >= 1. Received: epochs=0"),
                      (dict(strategy="tpu"), "Received: strategy='tpu'"),
                      (dict(save_freq=0), "Received: save_freq=0"),
                      (dict(selection_time_limit=0.0), "Received: selection_time_limit=0.0"),
                      (dict(seeds=0), "Received: seeds=0"),
                      (dict(every_n=0), "Received: every_n=0")):
        with pytest.raises(ValueError, match=text) as e:
            RunConfig().replace(**bad)
        assert "\n" not in str(e.value)


def test_one_mode_registry():
    assert modes.MODES == ("affinity", "cs", "mtl", "stl", "uw", "gradnorm", "pcgrad", "dwa",
                           "mgda", "groups")
    assert [modes.measure_of(m) for m in ("affinity", "cs", "uw")] == [
        "lookahead", "cosine", None]
    assert modes.measure_of("affinity", RunConfig().replace(affinity_measure="taylor")) == \
        "taylor"
    assert modes.mode_of_measure("cosine") == "cs" and modes.mode_of_measure("taylor") == \
        "affinity"
    config = RunConfig().replace(budgets=(2,))
    assert modes.get("affinity").files(config) == (
        "results.json", "affinity.json", "affinity.npz", "affinity.png", "selection.json")
    assert modes.get("mtl").files(config) == ("results.json",)
    with pytest.raises(ValueError, match="Received: mode='tag'"):
        modes.get("tag")
    # A new method is one entry.
    entry = modes.Mode("uw_log", "Kendall et al.'s log-variance weights",
                       method=lambda cfg, experiment: {
                           "weighting": tag_tf.UncertaintyWeighting(clipped=False)})
    try:
        modes.register(entry)
        assert "uw_log" in modes.names() and modes.get("uw_log").method(config, None)
        with pytest.raises(ValueError, match="already"):
            modes.register(entry)
    finally:
        modes.REGISTRY.pop("uw_log", None)


def test_presets_of_both_datasets():
    from celeba import presets as celeba  # pylint: disable=g-import-not-at-top
    from taskonomy import presets as taskonomy  # pylint: disable=g-import-not-at-top
    for module in (celeba, taskonomy):
        assert set(module.PRESETS) == {"fixed", "original", "paper"}
        fixed = module.PRESETS["fixed"].run.affinity
        assert (fixed.rule, fixed.divide_by_lr, fixed.every_n) == ("optimizer", True, 10)
        paper = module.PRESETS["paper"].run.affinity
        assert (paper.rule, paper.divide_by_lr) == ("sgd", False)
        settings, config = module.configure("paper", batch_size=8, epochs=2)
        assert (settings.lookahead, settings.batch_size, config.training.epochs) == (
            "paper", 8, 2)
        with pytest.raises(ValueError, match="lookahead='original'.*every_n=3"):
            module.configure("original", every_n=3)
        with pytest.raises(ValueError, match="Received: lookahead='late'"):
            module.configure("late")
    assert celeba.configure("original")[1].affinity.every_n == 1
    assert taskonomy.configure(patience=-1, epochs=7)[1].training.patience == 7
    assert taskonomy.configure(patience=3)[1].training.patience == 3
    assert presets_lib.value_of(celeba.PRESETS["fixed"], "batch_size") == 256
    # Every default of a setup is in its presets file: the run config spelled out there
    # equals the library's defaults only where the file says so.
    assert celeba.RUN.runtime == RuntimeConfig() and taskonomy.RUN.seeds == 1


def _network(**changes):
    values = dict(tasks=("a", "b"), serves=("a",), epochs_run=2, best_epoch=1,
                  stopped_early=False, best_validation_loss=0.5, seconds=1.0,
                  history={"loss": [1.0, None]}, test={"a": {"error": 0.1, "loss": 0.2}})
    return NetworkResult(**{**values, **changes})


def test_results_round_trip_and_read_like_json():
    from tag_tf.runner.results import AffinityResult  # pylint: disable=g-import-not-at-top
    result = RunResult(
        mode="affinity", tasks=("a", "b"), config=_config(), seconds=2.0,
        networks=(_network(), _network(seed=3)), test_error={"a": 0.1, "b": None},
        test_loss={"a": 0.2, "b": None}, total_test_error=None, mean_test_error=None,
        affinity=AffinityResult("lookahead", "x.json", ("a", "b"),
                                np.array([[np.nan, 1.0], [2.0, 3.0]]), [0, 1]),
        selection={"path": "s"}, experiment={"dataset": "toy"}, extra={"cache_dir": "c"})
    payload = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert payload["affinity"]["matrix"] == [[None, 1.0], [2.0, 3.0]]
    again = RunResult.from_json(payload)
    assert again.to_json() == payload and again.config == result.config
    np.testing.assert_array_equal(again.affinity.matrix, result.affinity.matrix)
    assert result["test_error"] == {"a": 0.1, "b": None} and result["cache_dir"] == "c"
    assert again.networks[1].seed == 3 and again.networks[0]["history"]["loss"] == [1.0, None]
    old = {"format": "tag_tf.runner.pipeline/v1", "mode": "mtl", "tasks": ["a"],
           "options": {"epochs": 2}, "networks": [], "test_error": {"a": 1.0}}
    v1 = RunResult.from_json(old)
    assert v1.config is None and v1.extra["options"] == {"epochs": 2}
    with pytest.raises(ValueError, match="Unknown results format"):
        RunResult.from_json({**old, "format": "other/v9"})
    assert np.isnan(affinity_io.decode_matrix([[None, 1]])[0, 0])
