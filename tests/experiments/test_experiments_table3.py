"""Table 3 of the reproduction harness: exact ground-truth groupings, variants, toy runs."""

import itertools
import json
import math

import numpy as np
import pytest

from tag_tf.experiments import adapter as adapter_lib
from tag_tf.experiments import table3
from tag_tf.experiments.harness import Harness
from tests.experiments.harness_testing import assert_finite_numbers, no_training
from tag_tf.selection.problem import mask_members
from tag_tf.selection.subset_dp import solve_levels

TOY = dict(num_tasks=3, num_clusters=2, train_examples=128, validation_examples=32,
           test_examples=32, batch_size=32, epochs=1, hidden=8, bottleneck=2, head_hidden=4)


def _toy_harness(cache_dir, **overrides):
    adapter = adapter_lib.SyntheticAdapter(**{**TOY, **overrides})
    return Harness(adapter, str(cache_dir), log=lambda _: None)


# ----------------------------------------------------------------------------- exact DP
def _random_truth(n, seed):
    """A random ``err[group, task]`` table (nan for non-members)."""
    rng = np.random.default_rng(seed)
    err = np.full((1 << n, n), np.nan)
    for g in range(1, 1 << n):
        idx = mask_members(g, n)
        err[g, idx] = rng.uniform(0.1, 1.0, len(idx))
    return err


def _brute_optimal(err, n, budget):
    """Min over every choice of <= budget groups of sum_t min over chosen groups with t."""
    table = np.where(np.isnan(err[1:]), np.inf, err[1:])
    best = np.inf
    for k in range(1, budget + 1):
        combos = np.array(list(itertools.combinations(range(table.shape[0]), k)))
        totals = table[combos].min(axis=1).sum(axis=1)  # inf when a task is uncovered
        best = min(best, float(totals.min()))
    return best


def _partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in _partitions(rest):
        for i in range(len(part)):
            yield part[:i] + [[first] + part[i]] + part[i + 1:]
        yield [[first]] + part


def _brute_worst(err, n, budget):
    best = -np.inf
    for part in _partitions(list(range(n))):
        if len(part) == budget:
            total = sum(err[sum(1 << i for i in block), block].sum() for block in part)
            best = max(best, float(total))
    return best


@pytest.mark.parametrize("n,seeds", [(3, range(4)), (4, range(3)), (5, range(2))])
def test_reference_groupings_match_brute_force(n, seeds):
    tasks = [f"task_{i}" for i in range(n)]
    for seed in seeds:
        err = _random_truth(n, seed)
        values, _ = table3.served_values(err)
        levels = solve_levels(-values, n, n)  # the selection package's DP, maximising
        partitions = {b: [[(tasks, tasks)]] for b in range(1, n + 1)}
        refs = table3.reference_groupings(err, tasks, range(1, n + 1), partitions)
        for b in range(1, n + 1):
            expected = _brute_optimal(err, n, b)
            optimal = refs[b]["optimal"]
            assert optimal["dp_total"] == pytest.approx(expected), (n, seed, b)
            assert optimal["total_error"] == pytest.approx(expected)
            assert optimal["total_error_oracle_serving"] == pytest.approx(expected)
            assert -levels[b - 1][(1 << n) - 1] == pytest.approx(expected)
            assert len(optimal["networks"]) <= b
            served = sorted(t for net in optimal["networks"] for t in net["serves"])
            assert served == tasks
            assert refs[b]["worst"]["total_error"] == pytest.approx(_brute_worst(err, n, b))
            assert len(refs[b]["worst"]["networks"]) == b
            assert refs[b]["random"]["total_error"] == pytest.approx(err[-1].sum())
            assert expected <= refs[b]["random"]["total_error"] + 1e-12
            assert expected <= refs[b]["worst"]["total_error"] + 1e-12


def test_best_partition_exact_and_infeasible():
    values = np.array([np.nan, 1.0, 2.0, 10.0])  # sets {0}, {1}, {0,1}
    assert table3.best_partition(values, 2, 1) == (10.0, [3])
    assert table3.best_partition(values, 2, 2) == (3.0, [1, 2])
    assert table3.best_partition(values, 2, 2, maximize=True) == (10.0, [3])
    assert table3.best_partition(values, 2, 2, maximize=True, exact=True) == (3.0, [1, 2])
    total, sets = table3.best_partition(np.array([np.nan, 1.0, np.inf, np.nan]), 2, 2)
    assert math.isnan(total) and sets == []


def test_score_networks_relative_and_variants():
    tasks = ["task_0", "task_1", "task_2"]
    err = _random_truth(3, 7)
    scored = table3.score_networks(err, tasks, [(tasks[:2], tasks[:1]), (tasks, tasks[1:])])
    assert scored["task_error"] == {"task_0": err[3, 0], "task_1": err[7, 1],
                                    "task_2": err[7, 2]}
    assert scored["total_error_oracle_serving"] == pytest.approx(
        min(err[3, 0], err[7, 0]) + min(err[3, 1], err[7, 1]) + err[7, 2])
    with pytest.raises(ValueError, match="task_2"):
        table3.score_networks(err, tasks, [(tasks[:2], tasks[:2])])
    rel = table3.relative(12.0, 10.0, 20.0)
    assert rel == {"above_optimal_percent": pytest.approx(20.0),
                   "gap_closed_percent": pytest.approx(80.0)}
    assert table3.relative(None, 10.0, 20.0) == {"above_optimal_percent": None,
                                                 "gap_closed_percent": None}
    assert table3.relative(10.0, 10.0, 10.0)["gap_closed_percent"] is None
    assert table3.relative(10.0, 10.0, 10.005)["gap_closed_percent"] is None  # < 0.1 %
    assert table3.parse_variant("base") == table3.BASE
    assert table3.parse_variant("lr=2") == table3.Variant("lr 2x", 1.0, 2.0)
    assert table3.parse_variant("batch=0.5+lr=0.5") == table3.Variant(
        "batch 0.5x + lr 0.5x", 0.5, 0.5)
    with pytest.raises(ValueError, match="variant"):
        table3.parse_variant("momentum=2")


# ----------------------------------------------------------------------------- adapters
def test_vary_changes_settings_and_cache_keys(tmp_path):
    adapter = adapter_lib.SyntheticAdapter(**TOY)
    before = adapter.settings()
    half = adapter.vary(batch_size_scale=0.5)
    fast = adapter.vary(learning_rate_scale=2.0)
    assert adapter.settings() == before  # the original is unchanged
    assert half.settings() == {**before, "batch_size": 16}
    assert fast.settings() == {**before, "learning_rate": 2 * adapter.learning_rate}
    assert adapter.vary().settings() == before
    assert adapter.vary(batch_size_scale=1e-3).batch_size == 1
    assert isinstance(half, adapter_lib.Adapter)
    with pytest.raises(ValueError, match="learning_rate_scale"):
        adapter.vary(learning_rate_scale=0.0)
    base = Harness(adapter, str(tmp_path), log=lambda _: None)
    keys = {base.cache.directory(h.training_settings("affinity", h.tasks, h.base_config))
            for h in [base] + [table3.variant_harness(base, v) for v in table3.VARIANTS[1:]]}
    assert len(keys) == 3


class _NoVary:
    """An adapter with only the four members the other tables need."""

    def __init__(self):
        self._inner = adapter_lib.SyntheticAdapter(**TOY)
        self.name = "novary"

    def settings(self):
        return self._inner.settings()

    def experiment(self):
        return self._inner.experiment()

    def config(self):
        return self._inner.config()


def test_guards_refuse_before_training(tmp_path, monkeypatch):
    no_training(monkeypatch)
    with pytest.raises(ValueError, match=r"2\^4 - 1 = 15 trainings.*max_tasks=3"):
        table3.run(_toy_harness(tmp_path, num_tasks=4), max_tasks=3,
                   output_dir=str(tmp_path / "out"))
    harness = Harness(_NoVary(), str(tmp_path), log=lambda _: None)
    with pytest.raises(TypeError, match="'novary'.*vary"):
        table3.run(harness, output_dir=str(tmp_path / "out"))


# ----------------------------------------------------------------------------- toy runs
def _check_payload(out, variant_rows, budgets):
    assert set(out["rows"]) == set(variant_rows)
    assert len(out["ground_truth"]) == 2 ** len(out["tasks"]) - 1
    assert out["budgets"] == budgets
    for b in budgets:
        ref = out["references"][b]
        optimal = ref["optimal"]["total_error"]
        assert math.isfinite(optimal)
        assert optimal == pytest.approx(ref["optimal"]["dp_total"])
        assert optimal <= ref["worst"]["total_error"] + 1e-9
        assert optimal <= ref["random"]["total_error"] + 1e-9
        for row in out["rows"].values():
            entry = row["budgets"][b]
            assert optimal <= entry["total_error"] + 1e-9
            assert entry["above_optimal_percent"] >= -1e-9
    base = out["rows"]["TAG, base"]
    assert base["pearson_vs_base_tag"] == pytest.approx(1.0)
    md = open(out["outputs"]["markdown"]).read()
    for label in variant_rows:
        assert f"| {label} |" in md
    assert "| optimal |" in md and "| worst |" in md
    with open(out["outputs"]["json"]) as f:
        payload = json.load(f)
    assert_finite_numbers(payload)
    assert payload["references"][str(budgets[0])]["random"]["samples"] == 20


def test_table3_toy_and_rerun_without_training(tmp_path, monkeypatch):
    """Fast: 2 tasks (3 ground-truth trainings), base and lr 2x, no CS."""
    lines = []
    harness = Harness(adapter_lib.SyntheticAdapter(**{**TOY, "num_tasks": 2,
                                                      "num_clusters": 1}),
                      str(tmp_path / "cache"), log=lines.append)
    variants = [table3.BASE, table3.Variant("lr 2x", learning_rate_scale=2.0)]
    kwargs = dict(budgets=[1, 2], variants=variants, include_cs=False, rg_samples=20)
    out = table3.run(harness, output_dir=str(tmp_path / "t3"), **kwargs)
    _check_payload(out, ["TAG, base", "TAG, lr 2x", table3.TAYLOR_ROW], [1, 2])
    assert (out["trainings_run"], out["trainings_reused"]) == (3 + 2, 0)
    # The Taylor row selects on the base TAG training's own first-order matrix.
    taylor = out["rows"][table3.TAYLOR_ROW]
    assert taylor["affinity_path"] == out["rows"]["TAG, base"]["affinity_path"]
    assert taylor["measure"] == "taylor"
    assert taylor["settings"]["config"]["affinity"]["measures"] == ["lookahead", "taylor"]
    # Every training is planned up front, the variant's too: [1/5] ... [5/5].
    progress = [line for line in lines if line.startswith("[")]
    assert [line.split("]")[0] for line in progress] == [f"[{k}/5" for k in range(1, 6)]
    assert "RG saturates at 1 network:" in out["markdown"]
    rows = out["rows"]
    assert rows["TAG, lr 2x"]["adapter_settings"]["learning_rate"] == pytest.approx(
        2 * out["adapter_settings"]["learning_rate"])
    assert rows["TAG, lr 2x"]["affinity_path"] != rows["TAG, base"]["affinity_path"]
    # Budget 2 of 2 tasks: the optimum may use single-task networks, never worse than STL.
    stl = sum(g["total_test_error"] for g in out["ground_truth"] if len(g["tasks"]) == 1)
    assert out["references"][2]["optimal"]["total_error"] <= stl + 1e-9

    no_training(monkeypatch)
    again = table3.run(_toy_harness(tmp_path / "cache", num_tasks=2, num_clusters=1),
                       output_dir=str(tmp_path / "t3b"), **kwargs)
    assert (again["trainings_run"], again["trainings_reused"]) == (0, 3 + 2)
    for label, row in rows.items():
        for b in (1, 2):
            assert again["rows"][label]["budgets"][b]["total_error"] == \
                row["budgets"][b]["total_error"]


@pytest.mark.slow
def test_table3_toy_default_variants_and_cs(tmp_path, monkeypatch):
    """3 tasks (7 ground-truth trainings), the default variants and CS, then a rerun."""
    kwargs = dict(budgets=[1, 2, 3], rg_samples=20)
    out = table3.run(_toy_harness(tmp_path / "cache"), output_dir=str(tmp_path / "t3"),
                     **kwargs)
    labels = ["TAG, base", "TAG, batch 0.5x", "TAG, lr 2x", "CS, base", table3.TAYLOR_ROW]
    _check_payload(out, labels, [1, 2, 3])
    assert (out["trainings_run"], out["trainings_reused"]) == (7 + 4, 0)
    assert out["rows"]["TAG, batch 0.5x"]["adapter_settings"]["batch_size"] == 16
    assert out["rows"]["CS, base"]["measure"] == "cosine"
    for row in out["rows"].values():
        r = row["pearson_vs_base_tag"]
        assert r is None or -1.0 <= r <= 1.0
    no_training(monkeypatch)
    again = table3.run(_toy_harness(tmp_path / "cache"), output_dir=str(tmp_path / "t3b"),
                       **kwargs)
    assert (again["trainings_run"], again["trainings_reused"]) == (0, 7 + 4)
    assert again["references"] == out["references"]
