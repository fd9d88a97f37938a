"""tag_tf.experiments: the reproduction harness (cache, tables, plots) at toy size."""

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from tag_tf.io import affinity_io
from tag_tf.runner import pipeline
from tag_tf.experiments import adapter as adapter_lib
from tag_tf.experiments import cache as cache_lib
from tag_tf.experiments import figure3, figure4, table1, table2, train_val
from tag_tf.experiments.harness import Harness
from tests.experiments.harness_testing import assert_finite_numbers, no_training

TOY = dict(num_tasks=4, num_clusters=2, train_examples=320, validation_examples=64,
           test_examples=64, batch_size=32, epochs=3, hidden=8, bottleneck=2, head_hidden=4)


def _toy_harness(cache_dir):
    return Harness(adapter_lib.SyntheticAdapter(**TOY), str(cache_dir), log=lambda _: None)


# ----------------------------------------------------------------------------- fast
def test_cache_key_and_reuse(tmp_path):
    cache = cache_lib.Cache(str(tmp_path))
    calls = []

    def produce(directory):
        calls.append(directory)
        pipeline.write_results(os.path.join(directory, "results.json"), {"x": 1.5})
        return {"x": 1.5}

    a = {"mode": "mtl", "tasks": ["a", "b"], "options": {"epochs": 2}}
    assert cache.get_or_run(a, produce)[0] == {"x": 1.5}
    assert cache.get_or_run(dict(reversed(list(a.items()))), produce)[0] == {"x": 1.5}
    # The second call reuses this object's own training: shared, not reused from the cache.
    assert len(calls) == 1 and (cache.hits, cache.misses, cache.shared) == (0, 1, 1)
    other = cache_lib.Cache(str(tmp_path))  # a later command on the same directory
    other.get_or_run(a, produce)
    assert len(calls) == 1 and (other.hits, other.misses, other.shared) == (1, 0, 0)
    with open(os.path.join(calls[0], "settings.json")) as f:
        assert json.load(f) == a
    b = {**a, "options": {"epochs": 3}}
    assert cache_lib.settings_key(a) != cache_lib.settings_key(b)
    cache.get_or_run(b, produce)
    assert len(calls) == 2

    def crash(directory):
        return {}  # wrote nothing: not a finished training
    with pytest.raises(RuntimeError, match="results.json"):
        cache.get_or_run({"other": 1}, crash)
    assert cache.lookup({"other": 1}) is None


def test_load_adapter_and_interface():
    adapter = adapter_lib.load_adapter("synthetic", '{"num_tasks": 4, "num_clusters": 2}')
    assert isinstance(adapter, adapter_lib.Adapter)
    assert adapter.settings()["num_tasks"] == 4
    assert adapter.experiment().tasks == ["task_0", "task_1", "task_2", "task_3"]
    assert adapter.config().training.patience is None
    again = adapter_lib.load_adapter("tag_tf.experiments.adapter:SyntheticAdapter",
                                     {"num_tasks": 4, "num_clusters": 2})
    assert again.settings() == adapter.settings()
    with pytest.raises(ValueError, match="module:factory"):
        adapter_lib.load_adapter("celeba")
    with pytest.raises(TypeError, match="lacks"):
        adapter_lib.load_adapter("json:JSONDecoder")


def test_random_partitions_cover_tasks(tmp_path):
    harness = _toy_harness(tmp_path)
    for budget in (1, 2, 3):
        for partition in harness.random_partitions(budget, 5, seed=1):
            tasks = sorted(t for group, _ in partition for t in group)
            assert tasks == harness.tasks
            assert len(partition) == min(budget, 2)
            assert all(len(group) >= 2 for group, _ in partition)


def test_pearson_improvement_and_traces():
    a = np.array([[9., 1, 2], [3, 9, 4], [5, 6, 9]])
    assert train_val.pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert train_val.pearson(a, -a) == pytest.approx(-1.0)
    assert train_val.pearson(a, np.ones((3, 3))) is None
    assert table2.improvement(8.0, 10.0) == pytest.approx(20.0)
    assert table2.improvement(None, 10.0) is None
    record = affinity_io.AffinityRecord(["a", "b", "c"], a, epochs=[
        {"epoch": 0, "affinity": [[0, 1, 2], [3, 0, 4], [5, 6, 0]],
         "counts": [[1, 1, 1], [1, 1, 1], [1, 1, 0]]},
        {"epoch": 1, "affinity": [[0, 7, 8], [9, 0, 10], [11, 12, 0]],
         "counts": [[1, 1, 1], [1, 1, 0], [1, 1, 1]]}])
    trace = figure4.traces(record, "c")
    assert trace == {"epochs": [0, 1], "sources": {"a": [2.0, 8.0], "b": [4.0, None]}}


def test_train_is_cached_across_harnesses(tmp_path, monkeypatch):
    harness = _toy_harness(tmp_path)
    first = harness.train(["task_0", "task_2"])
    assert harness.cache.misses == 1
    assert math.isfinite(first["total_test_error"])
    assert len(first["epoch_seconds"]) == 1 and len(first["epoch_seconds"][0]) == 3
    no_training(monkeypatch)
    again = _toy_harness(tmp_path)  # a fresh process would look the same
    second = again.train(["task_2", "task_0"])  # order does not matter
    assert (again.cache.hits, again.cache.misses) == (1, 0)
    assert second["total_test_error"] == first["total_test_error"]
    with pytest.raises(AssertionError, match="cache"):
        again.train(["task_0", "task_2"], epochs=1)  # different settings: would train


def test_training_does_not_depend_on_earlier_trainings(tmp_path):
    """A, then B, then A again on a fresh cache: A's numbers are the same (in process)."""
    first = _toy_harness(tmp_path / "a").train(["task_0", "task_1"], epochs=2)
    other = _toy_harness(tmp_path / "b")
    other.train(["task_2", "task_3"], epochs=1)  # consumes the process's RNG / data state
    other.train(["task_1", "task_2", "task_3"], "pcgrad", epochs=1)  # PCGrad's RNG too
    second = other.train(["task_0", "task_1"], epochs=2)
    assert second["test_error"] == first["test_error"]
    assert second["test_loss"] == first["test_loss"]
    assert second["networks"][0]["history"] == first["networks"][0]["history"]


def test_figure4_toy(tmp_path, monkeypatch):
    harness = _toy_harness(tmp_path / "cache")
    out = figure4.run(harness, targets=["task_1"], output_dir=str(tmp_path / "fig4"))
    trace = out["targets"]["task_1"]
    assert trace["epochs"] == [0, 1, 2]
    assert sorted(trace["sources"]) == ["task_0", "task_2", "task_3"]
    assert all(v is not None and math.isfinite(v)
               for values in trace["sources"].values() for v in values)
    assert os.path.exists(out["outputs"]["png"][0])
    assert "Z[source -> task_1]" in open(out["outputs"]["markdown"]).read()
    with open(out["outputs"]["json"]) as f:
        assert_finite_numbers(json.load(f))
    no_training(monkeypatch)
    again = figure4.run(_toy_harness(tmp_path / "cache"), targets=["task_1"],
                        output_dir=str(tmp_path / "fig4b"))
    assert again["targets"] == out["targets"]


# ----------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_figure3_toy_and_rerun_without_training(tmp_path, monkeypatch):
    harness = _toy_harness(tmp_path / "cache")
    out = figure3.run(harness, budgets=[1, 2], rg_samples=1, output_dir=str(tmp_path / "f3"))
    methods = out["methods"]
    assert set(methods) == set(figure3.GROUPED + figure3.UNGROUPED)
    for name, row in methods.items():
        assert sorted(row["budgets"]) == [1, 2], name
        for entry in row["budgets"].values():
            assert entry["total_error"] is not None and math.isfinite(entry["total_error"])
    assert methods["HOA"]["trainings"] == 4 + 6
    assert methods["HOA"]["time_to_find_groups"] > methods["TAG"]["selection_seconds"]
    assert methods["RG"]["time_to_find_groups"] == 0
    assert methods["MTL"]["time_to_find_groups"] is None
    # STL total = sum of the single-task errors that HOA also trained.
    stl = methods["STL"]["budgets"][1]["total_error"]
    assert stl == pytest.approx(sum(methods["HOA"]["pair_test_error"][t][t]
                                    for t in out["tasks"]))
    md = open(out["outputs"]["markdown"]).read()
    for name in figure3.GROUPED + figure3.UNGROUPED:
        assert f"| {name} |" in md
    for png in out["outputs"]["png"]:
        assert tf.io.decode_png(tf.io.read_file(png)).shape[-1] == 3
    assert [p[:-4] for p in out["outputs"]["pdf"]] == [p[:-4] for p in out["outputs"]["png"]]
    with open(out["outputs"]["json"]) as f:
        payload = json.load(f)
    assert_finite_numbers(payload)
    assert payload["adapter_settings"]["num_tasks"] == 4
    trained = out["trainings_run"]
    assert trained >= 15
    # An empty cache reuses nothing; networks several methods chose were trained once.
    assert out["trainings_reused"] == 0 and out["trainings_shared"] > 0
    assert f"{trained} trainings run, 0 reused from the cache" in md

    no_training(monkeypatch)
    again = figure3.run(_toy_harness(tmp_path / "cache"), budgets=[1, 2], rg_samples=1,
                        output_dir=str(tmp_path / "f3b"))
    assert again["trainings_run"] == 0 and again["trainings_reused"] == trained
    for name in methods:
        for b in (1, 2):
            assert again["methods"][name]["budgets"][b]["total_error"] == \
                methods[name]["budgets"][b]["total_error"]

    # Table 1 needs only the TAG and pairwise trainings Figure 3 cached.
    t1 = table1.run(_toy_harness(tmp_path / "cache"), output_dir=str(tmp_path / "t1"))
    assert t1["trainings_run"] == 0
    assert sorted(t1["rows"]) == out["tasks"]
    for task, row in t1["rows"].items():
        assert task not in (row["tag_partner"], row["optimal_partner"], row["worst_partner"])
        assert row["worst_vs_random_percent"] <= row["tag_vs_random_percent"] \
            <= row["optimal_vs_random_percent"]
    assert "| mean |" in open(t1["outputs"]["markdown"]).read()
    with open(t1["outputs"]["json"]) as f:
        assert_finite_numbers(json.load(f))


@pytest.mark.slow
def test_table2_and_train_val_toy(tmp_path):
    harness = _toy_harness(tmp_path / "cache")
    out = table2.run(harness, budgets=[2], frequencies=(1, 5), windows=("first", "final"),
                     window_every_n=2, rg_samples=1, output_dir=str(tmp_path / "t2"))
    rows = out["rows"]
    assert [(r["every_n"], r["window"]) for r in rows] == [
        (1, None), (5, None), (2, "first"), (2, "final")]
    assert rows[0]["speedup_vs_every_step"] == pytest.approx(1.0)
    steps = 3 * 10  # 3 epochs of 10 batches
    assert rows[0]["recorded_steps"] == steps
    assert rows[1]["recorded_steps"] == len(range(0, steps, 5))
    assert 0 < rows[2]["recorded_steps"] < steps // 2
    for row in rows:
        assert math.isfinite(row["speedup_vs_every_step"]) and row["speedup_vs_every_step"] > 0
        assert row["steady_speedup_vs_every_step"] > 0
        assert math.isfinite(row["budgets"][2]["vs_random_percent"])
    assert "| every 5 |" in open(out["outputs"]["markdown"]).read()
    with open(out["outputs"]["json"]) as f:
        assert_finite_numbers(json.load(f))

    out = train_val.run(harness, budgets=[2], output_dir=str(tmp_path / "tv"))
    assert -1.0 <= out["pearson_off_diagonal"] <= 1.0
    assert set(out["rows"]) == {"train", "validation"}
    for row in out["rows"].values():
        assert math.isfinite(row["budgets"][2]["total_error"])
    assert not np.allclose(out["rows"]["train"]["affinity"],
                           out["rows"]["validation"]["affinity"])
