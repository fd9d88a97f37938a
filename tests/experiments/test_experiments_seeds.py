"""--seeds=K in the harness: replicated adapters, mean ± std per method, error bars, Taylor."""

import dataclasses

import numpy as np
import pytest
from matplotlib.container import BarContainer

from tag_tf.experiments import adapter as adapter_lib
from tag_tf.experiments import figure3, report, table3
from tag_tf.experiments.harness import Harness, seeded_harnesses
from tag_tf.experiments.synthetic_cases import HelpingTasksAdapter
from tests.experiments.harness_testing import no_training

TOY = dict(num_tasks=2, num_clusters=1, train_examples=128, validation_examples=32,
           test_examples=32, batch_size=32, epochs=1, hidden=8, bottleneck=2, head_hidden=4)


# ----------------------------------------------------------------------------- adapters
def _batches(dataset):
    return np.concatenate([np.asarray(b[0]) for b in dataset])


def test_replicate_keeps_the_problem_and_changes_the_training_seed():
    adapter = adapter_lib.SyntheticAdapter(**TOY)
    assert adapter_lib.replicate(adapter, 0) is adapter
    assert "train_seed" not in adapter.settings()  # single-seed cache keys unchanged
    other = adapter_lib.replicate(adapter, 1)
    assert other.settings()["train_seed"] == 1 and other.settings() != adapter.settings()
    assert other.config().training.seed == 1 and adapter.config().training.seed == 0
    a, b = adapter.experiment(), other.experiment()
    # Same examples (validation/test unshuffled: identical; train: same set, other order).
    np.testing.assert_array_equal(_batches(a.test_data), _batches(b.test_data))
    np.testing.assert_array_equal(_batches(a.validation_data), _batches(b.validation_data))
    train_a, train_b = _batches(a.train_data), _batches(b.train_data)
    assert not np.array_equal(train_a, train_b)
    np.testing.assert_array_equal(np.sort(train_a, axis=0), np.sort(train_b, axis=0))
    # Other initialisation.
    wa = a.network_fn(a.tasks).get_weights()[0]
    wb = b.network_fn(b.tasks).get_weights()[0]
    assert not np.allclose(wa, wb)
    # train_seed equal to seed is the same setting (one cache key).
    assert adapter_lib.SyntheticAdapter(**TOY, train_seed=0).settings() == adapter.settings()

    helping = HelpingTasksAdapter(tasks=("a_clean", "b_1"))
    assert helping.activation == "tanh"
    assert adapter_lib.replicate(helping, 2).seed == 2
    assert adapter_lib.replicate(helping, 2).problem_seed == helping.problem_seed


def test_replicate_needs_an_adapter_method(tmp_path):
    @dataclasses.dataclass
    class Fixed:
        name: str = "fixed"

        def settings(self):
            return {"x": 1}

        def replicate(self, k):
            return self  # same settings: would share cache keys with seed 0

    class NoReplicate:
        name = "noreplicate"

    with pytest.raises(TypeError, match="'noreplicate'.*replicate"):
        adapter_lib.replicate(NoReplicate(), 1)
    with pytest.raises(ValueError, match="same settings"):
        adapter_lib.replicate(Fixed(), 1)
    harness = Harness(adapter_lib.SyntheticAdapter(**TOY), str(tmp_path), log=lambda _: None)
    with pytest.raises(ValueError, match="at least 1"):
        seeded_harnesses(harness, 0)
    three = seeded_harnesses(harness, 3)
    assert three[0] is harness and len({h.cache.directory(h.training_settings(
        "mtl", h.tasks, h.base_config)) for h in three}) == 3  # seed in every cache key
    assert all(h.progress is harness.progress for h in three)


def test_mean_std_and_pm():
    assert report.mean_std([1.0, 2.0, 3.0, None]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert report.mean_std([4.0]) == {"mean": 4.0, "std": 0.0, "n": 1}
    assert report.mean_std([None, float("nan")])["mean"] is None
    assert report.pm(0.12345, 0.0312) == "0.1235 ± 0.031"
    assert report.pm(0.5, None) == "0.5"


# ----------------------------------------------------------------------------- Figure 3
def _seed_rows(shift):
    """Made-up per-seed Figure 3 rows: method k's total is 10 + k + shift."""
    rows = {}
    for k, m in enumerate(figure3.GROUPED + figure3.UNGROUPED):
        entry = {"total_error": 10.0 + k + shift, "task_error": {"t0": 1.0 + shift},
                 "networks": [{"tasks": ["task_0"], "serves": ["task_0"]}]}
        time = None if m in figure3.UNGROUPED else (0.0 if m == "RG" else 5.0 + shift)
        rows[m] = {"time_to_find_groups": time, "budgets": {2: dict(entry)}}
    rg = rows["RG"]
    rg.update(samples=2, seed=0)
    rg["budgets"][2] = {"total_error": 20.5 + shift, "std": 0.5,
                        "samples": [{"total_error": 20.0 + shift, "networks": []},
                                    {"total_error": 21.0 + shift, "networks": []}]}
    return rows


def test_figure3_aggregates_seeds_and_draws_error_bars_for_every_method(tmp_path):
    rows = figure3.aggregate_rows([_seed_rows(0.0), _seed_rows(2.0)], [2])
    tag = rows["TAG"]["budgets"][2]
    assert tag["total_error"] == 11.0 and tag["std"] == pytest.approx(np.sqrt(2.0))
    assert tag["totals"] == [10.0, 12.0] and tag["task_error_std"]["t0"] == pytest.approx(
        np.sqrt(2.0))
    assert rows["TAG"]["time_to_find_groups"] == 6.0
    assert rows["TAG"]["time_to_find_groups_std"] == pytest.approx(np.sqrt(2.0))
    assert rows["MTL"]["time_to_find_groups"] is None
    # RG: over every trained random grouping of every seed.
    rg = rows["RG"]["budgets"][2]
    assert rg["totals"] == [20.0, 21.0, 22.0, 23.0]
    assert rg["std"] == pytest.approx(np.std([20, 21, 22, 23], ddof=1))
    assert len(tag["networks_per_seed"]) == 2

    fig = figure3.make_figure(rows, [2])
    bars = fig.axes[0]
    with_errors = {c.get_label() for c in bars.containers
                   if isinstance(c, BarContainer) and c.errorbar is not None}
    assert with_errors == set(figure3.GROUPED + figure3.UNGROUPED)
    assert "2 training seeds" in bars.get_title()
    payload = {"methods": rows, "budgets": [2], "error_name": "mse", "adapter": "toy",
               "tasks": ["task_0"], "trainings_run": 1, "trainings_reused": 0,
               "seconds": 1.0, "seeds": 2}
    text = figure3.format_markdown(payload)
    assert "Mean ± sample std over 2 training seeds" in text
    assert "| TAG | 6.0 ± 1.4 | 11 ± 1.4 |" in text
    assert "{0} / {0}" in text  # the groups of each seed


# ----------------------------------------------------------------------------- Table 3
def _table3_seed(shift):
    rows = {}
    for k, label in enumerate(["TAG, base", table3.TAYLOR_ROW]):
        rows[label] = {"measure": "lookahead", "affinity": np.eye(2), "affinity_seconds": 3.0,
                       "pearson_vs_base_tag": 1.0 - 0.1 * k - shift / 10,
                       "mean_above_optimal_percent": 5.0 + shift,
                       "mean_gap_closed_percent": 50.0 + 10 * shift,
                       "budgets": {2: {"total_error": 1.0 + shift,
                                       "above_optimal_percent": 5.0 + shift,
                                       "gap_closed_percent": 50.0 + 10 * shift,
                                       "networks": [{"tasks": ["task_0", "task_1"],
                                                     "serves": ["task_0", "task_1"]}]}}}
    rows[table3.TAYLOR_ROW]["pearson_taylor_vs_lookahead"] = 0.9 - shift / 10
    return rows


def test_table3_aggregates_seeds_with_error_bars():
    rows = table3.aggregate_rows([_table3_seed(0.0), _table3_seed(1.0)], [2])
    entry = rows["TAG, base"]["budgets"][2]
    assert entry["gap_closed_percent"] == 55.0
    assert entry["gap_closed_percent_std"] == pytest.approx(np.sqrt(50.0))
    assert entry["gap_closed_percent_seeds"] == [50.0, 60.0]
    taylor = rows[table3.TAYLOR_ROW]
    assert taylor["pearson_taylor_vs_lookahead"] == pytest.approx(0.85)
    assert "pearson_taylor_vs_lookahead" not in rows["TAG, base"]
    payload = {"rows": rows, "budgets": [2], "error_name": "mse", "adapter": "toy",
               "seeds": 2, "tasks": ["task_0", "task_1"], "rg_samples": 5,
               "adapter_settings": {}, "trainings_run": 0, "trainings_reused": 0,
               "seconds": 1.0,
               "references": {2: {k: {"total_error": 1.0, "std": 0.1, "networks": []}
                                  for k in ("optimal", "random", "worst")}}}
    text = table3.format_markdown(payload)
    assert "| TAG, base | 0.950 ± 0.071 | +5.5 ± 0.7 | +5.5 ± 0.7 | 55 ± 7 | 55 ± 7 |" in text
    assert "mean ± sample std over the 2 seeds" in text
    assert "Taylor matrix with the exact lookahead matrix" in text
    fig = table3.make_figure(payload)
    for ax in fig.axes:
        assert {c.get_label() for c in ax.containers if isinstance(c, BarContainer)
                and c.errorbar is not None} == {"TAG, base", table3.TAYLOR_ROW}


# ----------------------------------------------------------------------------- toy runs
@pytest.mark.slow
def test_table3_two_seeds_taylor_row_and_rerun(tmp_path, monkeypatch):
    """2 tasks, 2 seeds: 3 ground-truth trainings and one TAG (+ Taylor) training per seed."""
    def harness():
        return Harness(adapter_lib.SyntheticAdapter(**TOY), str(tmp_path / "cache"),
                       log=lambda _: None)

    kwargs = dict(budgets=[1, 2], variants=[table3.BASE], include_cs=False, rg_samples=20)
    one = table3.run(harness(), output_dir=str(tmp_path / "one"), **kwargs)
    assert one["trainings_run"] == 3 + 1 and one["seeds"] == 1
    taylor = one["rows"][table3.TAYLOR_ROW]
    assert taylor["measure"] == "taylor"
    assert taylor["pearson_taylor_vs_lookahead"] == taylor["pearson_vs_base_tag"]
    assert taylor["affinity_path"] == one["rows"]["TAG, base"]["affinity_path"]  # same run
    assert not np.allclose(taylor["affinity"], one["rows"]["TAG, base"]["affinity"])
    two = table3.run(harness(), output_dir=str(tmp_path / "two"), seeds=2, **kwargs)
    # Seed 0 comes from the cache; only the replicate's trainings are new.
    assert (two["trainings_run"], two["trainings_reused"]) == (3 + 1, 3 + 1)
    per_seed = two["per_seed"]
    assert per_seed[1]["adapter_settings"]["train_seed"] == 1
    for label in ("TAG, base", table3.TAYLOR_ROW):
        seeds = two["rows"][label]["budgets"][1]["total_error_seeds"]
        assert seeds[0] == per_seed[0]["rows"][label]["budgets"][1]["total_error"]
        assert two["rows"][label]["budgets"][1]["total_error_std"] is not None
    # The pooled ground truth is the mean of the seeds' tables.
    assert len(two["ground_truth"]) == 3 and len(two["ground_truth"][0]["cache_dirs"]) == 2
    no_training(monkeypatch)
    again = table3.run(harness(), output_dir=str(tmp_path / "again"), seeds=2, **kwargs)
    assert again["trainings_run"] == 0
    assert again["rows"][table3.TAYLOR_ROW]["budgets"] == two["rows"][table3.TAYLOR_ROW][
        "budgets"]


@pytest.mark.slow
def test_figure3_two_seeds_every_method_has_a_spread(tmp_path, monkeypatch):
    def harness():
        return Harness(adapter_lib.SyntheticAdapter(**TOY), str(tmp_path / "cache"),
                       log=lambda _: None)

    out = figure3.run(harness(), budgets=[1], rg_samples=1, seeds=2,
                      output_dir=str(tmp_path / "f3"))
    assert out["seeds"] == 2 and len(out["per_seed"]) == 2
    for name, row in out["methods"].items():
        entry = row["budgets"][1]
        assert len(entry["totals"]) == 2, name
        assert entry["total_error"] == pytest.approx(np.mean(entry["totals"]))
        assert entry["std"] == pytest.approx(np.std(entry["totals"], ddof=1))
    # The two seeds trained different networks (other initialisation and order).
    mtl = out["methods"]["MTL"]["budgets"][1]["totals"]
    assert mtl[0] != mtl[1]
    no_training(monkeypatch)
    again = figure3.run(harness(), budgets=[1], rg_samples=1, seeds=2,
                        output_dir=str(tmp_path / "f3b"))
    assert again["trainings_run"] == 0
    assert again["methods"]["TAG"]["budgets"][1]["totals"] == \
        out["methods"]["TAG"]["budgets"][1]["totals"]


@pytest.mark.slow
def test_recording_taylor_beside_lookahead_changes_nothing_else(tmp_path):
    """The Taylor measure rides along: same lookahead matrix and test error, own cache key."""
    harness = Harness(adapter_lib.SyntheticAdapter(**TOY), str(tmp_path), log=lambda _: None)
    alone = harness.affinity("lookahead")
    both = harness.affinity("lookahead", also=("taylor",))
    assert alone.path != both.path and both.settings["config"]["affinity"]["measures"] == [
        "lookahead", "taylor"]
    np.testing.assert_array_equal(alone.matrix, both.matrix)
    assert alone.results["total_test_error"] == both.results["total_test_error"]
    taylor = Harness.also_matrix(both, "taylor")
    assert taylor.shape == both.matrix.shape and np.all(np.isfinite(taylor))
    assert not np.array_equal(taylor, both.matrix)
    with pytest.raises(ValueError, match="did not record 'taylor'"):
        Harness.also_matrix(alone, "taylor")
