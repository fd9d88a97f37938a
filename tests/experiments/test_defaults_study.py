"""The defaults study: pooled ground truth, gap closed per variant, the helping-tasks case."""

import json
import math

import numpy as np
import pytest

from tag_tf.experiments import defaults_study as study
from tag_tf.experiments import table3
from tag_tf.experiments.synthetic_cases import DEFAULT_TASKS, HELPING_TASKS, HelpingTasksAdapter
from tests.experiments.harness_testing import assert_finite_numbers, no_training

TASKS = ["x", "y", "z"]


def _made_up_truth():
    """3 tasks: x and y help each other, z is best alone (err[group, task])."""
    err = np.full((8, 3), np.nan)
    table = {(0,): [1.0], (1,): [1.0], (2,): [1.0], (0, 1): [0.5, 0.6],
             (0, 2): [1.2, 1.3], (1, 2): [1.1, 1.4], (0, 1, 2): [0.9, 0.9, 1.5]}
    for members, values in table.items():
        err[sum(1 << i for i in members), list(members)] = values
    return err


# ----------------------------------------------------------------------------- fast
def test_gap_closed_formula_on_a_made_up_table():
    err = _made_up_truth()
    partitions = {2: [[(["x", "z"], ["x", "z"]), (["y"], ["y"])],
                      [(["x", "y", "z"], ["x", "y", "z"])]]}
    refs = table3.reference_groupings(err, TASKS, [2], partitions)
    assert refs[2]["optimal"]["total_error"] == pytest.approx(0.5 + 0.6 + 1.0)
    random = np.mean([1.2 + 1.3 + 1.0, 0.9 + 0.9 + 1.5])
    assert refs[2]["random"]["total_error"] == pytest.approx(random)
    # {x, z} + {y}: 3.5 -> gap closed 100 * (random - 3.5) / (random - 2.1).
    scored = study.score_selection(err, TASKS, [(["x", "z"], ["x", "z"]), (["y"], ["y"])],
                                   refs[2])
    assert scored["total_error"] == pytest.approx(3.5)
    assert scored["gap_closed_percent"] == pytest.approx(100 * (random - 3.5) / (random - 2.1))
    assert scored["above_optimal_percent"] == pytest.approx(100 * (3.5 - 2.1) / 2.1)
    best = study.score_selection(err, TASKS, [(["x", "y"], ["x", "y"]), (["z"], ["z"])],
                                 refs[2])
    assert best["gap_closed_percent"] == pytest.approx(100.0)


def test_pooled_truth_mean_std_and_grouping_matters():
    base = _made_up_truth()
    errs = [base + 0.01, base - 0.01, base]
    pooled = study.pooled_truth(errs)
    np.testing.assert_allclose(pooled, base)
    assert np.isnan(pooled[1, 1])  # non-members stay nan
    stats = study.mean_std([1.0, 2.0, None, 3.0])
    assert stats == {"mean": 2.0, "std": pytest.approx(1.0), "n": 3}
    assert study.mean_std([None])["mean"] is None
    refs = table3.reference_groupings(pooled, TASKS, [2], {2: [[(TASKS, TASKS)]]})
    matters = study.grouping_matters(errs, TASKS, refs)
    assert matters["all_in_one"]["mean"] == pytest.approx(3.3)
    assert matters["single_task"]["mean"] == pytest.approx(3.0)
    entry = matters["budgets"][2]
    assert entry["optimal"]["mean"] == pytest.approx(2.1)
    assert entry["beats"]["single_task"]["margin"] == pytest.approx(0.9)
    assert entry["matters"]
    paired = entry["beats"]["single_task"]["paired_margin"]
    assert paired["mean"] == pytest.approx(0.9) and paired["std"] == pytest.approx(0.0)
    assert entry["beats"]["single_task"]["paired_beyond_std"]
    # Seeds that disagree by more than the margin: not "matters".
    noisy = [base, base + np.where(np.isnan(base), np.nan, 2.0)]
    refs = table3.reference_groupings(study.pooled_truth(noisy), TASKS, [2],
                                      {2: [[(TASKS, TASKS)]]})
    assert not study.grouping_matters(noisy, TASKS, refs)["budgets"][2]["matters"]


def test_versus_base_is_paired_by_seed():
    def row(gaps):
        return {"seeds": [{"mean_gap_closed_percent": g} for g in gaps],
                "mean_gap_closed_percent": study.mean_std(gaps)}
    base = row([50.0, 60.0, 70.0])
    close = study.versus_base(row([55.0, 65.0, 75.0]), base)
    assert close["mean"] == pytest.approx(5.0) and close["std"] == pytest.approx(0.0)
    assert not close["beyond_spread"]  # 5 points < the seeds' std of 10
    far = study.versus_base(row([90.0, 95.0, 100.0]), base)
    assert far["mean"] == pytest.approx(35.0) and far["beyond_spread"]
    # Steady rows but paired differences that swing more than the mean difference: no.
    swing = study.versus_base(row([75.0, 55.0, 65.0]), row([40.0, 60.0, 50.0]))
    assert swing["mean"] == pytest.approx(15.0)  # > both rows' std of 10
    assert swing["std"] == pytest.approx(20.0) and not swing["beyond_spread"]


def test_markdown_of_a_made_up_study():
    err = _made_up_truth()
    refs = table3.reference_groupings(err, TASKS, [2], {2: [[(TASKS, TASKS)]]})
    rows = {}
    for name, gaps in (("base", [100.0, 50.0]), ("scale=10", [None, 20.0])):
        seeds = [{"seed": k, "budgets": {2: {"gap_closed_percent": g}},
                  "mean_gap_closed_percent": g, "affinity_seconds": 1.0}
                 for k, g in enumerate(gaps)]
        rows[name] = {"seeds": seeds, "mean_gap_closed_percent": study.mean_std(gaps),
                      "budgets": {2: {"gap_closed_percent": study.mean_std(gaps)}},
                      "affinity_seconds": study.mean_std([1.0, 1.0])}
    for row in rows.values():
        row["vs_base"] = study.versus_base(row, rows["base"])
    assert rows["scale=10"]["vs_base"]["n"] == 1  # seed 0 has no gap: left out
    payload = {"budgets": [2], "error_name": "mse", "references": refs, "seeds": [0, 1],
               "grouping_matters": study.grouping_matters([err, err], TASKS, refs),
               "rows": rows, "tasks": TASKS, "adapter": "made_up", "rg_samples": 1,
               "trainings_run": 0, "trainings_reused": 0, "seconds": 0.0}
    md = study.format_markdown(payload)
    assert "| base | 75 ± 35 | 75 ± 35 |  | 1 ± 0 |" in md
    assert "| scale=10 | 20 ± 0 | 20 ± 0 | -30 ± 0 |" in md
    assert "| pooled optimum, 2 networks |" in md


def test_parse_variant():
    assert study.parse_variant("base") == study.BASE
    v = study.parse_variant("rule=optimizer+every_n=1+window=final+scale=0.1")
    assert (v.rule, v.every_n, v.window, v.lookahead_scale) == ("optimizer", 1, "final", 0.1)
    assert study.parse_variant("window=none").window is None
    for bad in ("lr=2", "scale=0", "every_n=0", "window=late", "rule=adam", "scale"):
        with pytest.raises(ValueError):
            study.parse_variant(bad)
    for text in study.VARIANTS:
        study.parse_variant(text)


def test_seeds_and_adapter_checks(tmp_path):
    with pytest.raises(ValueError, match="2 distinct seeds"):
        study.run(HelpingTasksAdapter(), cache_dir=str(tmp_path), output_dir=str(tmp_path),
                  seeds=[0, 0])
    with pytest.raises(TypeError, match="seed"):
        study.with_seed(object(), 1)
    assert study.with_seed(HelpingTasksAdapter(), 3).seed == 3


def test_helping_tasks_adapter():
    adapter = HelpingTasksAdapter()
    assert adapter.problem.tasks == list(DEFAULT_TASKS)
    assert HelpingTasksAdapter(tasks=tuple(HELPING_TASKS)).problem.tasks == list(HELPING_TASKS)
    weights = adapter.problem.label_weights(64)
    assert weights["a_clean"].sum() == 64 and weights["a_few"].sum() == 4
    assert weights["b_1"].sum() == weights["b_2"].sum() == 16
    assert not np.any(weights["b_1"] * weights["b_2"])  # disjoint labels
    # The seed changes the training randomness only, not the problem or its data.
    other = study.with_seed(adapter, 5)
    np.testing.assert_array_equal(other.problem.projections, adapter.problem.projections)
    assert other.settings() != adapter.settings()
    assert adapter.vary(learning_rate_scale=2).learning_rate == 2 * adapter.learning_rate
    with pytest.raises(ValueError, match="tasks"):
        HelpingTasksAdapter(tasks=("a_clean", "nope"))
    with pytest.raises(ValueError, match="positive"):
        HelpingTasksAdapter(epochs=0)


# ----------------------------------------------------------------------------- toy run
TOY = dict(train_examples=64, validation_examples=32, test_examples=32, batch_size=32,
           epochs=1, hidden=4, head_hidden=2, tasks=("a_clean", "a_few", "b_1"))


@pytest.mark.slow
@pytest.mark.usefixtures("eager")
def test_toy_study_and_rerun_without_training(tmp_path, monkeypatch):
    """3 tasks, 2 seeds: 7 ground-truth trainings and 2 variants per seed, then a rerun."""
    variants = [study.BASE, study.parse_variant("scale=10+every_n=1")]
    kwargs = dict(cache_dir=str(tmp_path / "cache"), seeds=[0, 1], budgets=[1, 2],
                  variants=variants, rg_samples=20, log=lambda _: None)
    # Seed 0's variant runs prefilled (as another process would): run() reuses them.
    assert study.prefill(HelpingTasksAdapter(**TOY), 0, cache_dir=kwargs["cache_dir"],
                         variants=variants, ground_truth=False, log=lambda _: None) == 2
    out = study.run(HelpingTasksAdapter(**TOY), output_dir=str(tmp_path / "s"), **kwargs)
    assert (out["trainings_run"], out["trainings_reused"]) == (2 * (7 + 2) - 2, 2)
    with open(out["outputs"]["json"]) as f:
        payload = json.load(f)
    assert_finite_numbers(payload)
    assert set(payload["rows"]) == {"base", "scale=10+every_n=1"}
    assert len(payload["pooled_ground_truth"]) == 7
    for row in payload["rows"].values():
        assert [s["seed"] for s in row["seeds"]] == [0, 1]
        for b in ("1", "2"):
            for s in row["seeds"]:
                entry = s["budgets"][b]
                ref = payload["references"][b]
                gap = entry["gap_closed_percent"]
                if gap is not None:  # the formula, on the pooled table
                    assert gap == pytest.approx(
                        100 * (ref["random"]["total_error"] - entry["total_error"])
                        / (ref["random"]["total_error"] - ref["optimal"]["total_error"]))
            gaps = [s["budgets"][b]["gap_closed_percent"] for s in row["seeds"]]
            if None not in gaps:
                assert row["budgets"][b]["gap_closed_percent"]["mean"] == pytest.approx(
                    np.mean(gaps))
    # The pooled table is the mean of the two seeds' tables.
    single = payload["pooled_ground_truth"][0]
    assert single["tasks"] == ["a_clean"] and math.isfinite(single["test_error"]["a_clean"])
    assert "| base |" in open(out["outputs"]["markdown"]).read()
    scaled = out["rows"]["scale=10+every_n=1"]["seeds"][0]["affinity"]
    assert not np.allclose(scaled, out["rows"]["base"]["seeds"][0]["affinity"])

    no_training(monkeypatch)
    again = study.run(HelpingTasksAdapter(**TOY), output_dir=str(tmp_path / "s2"), **kwargs)
    assert (again["trainings_run"], again["trainings_reused"]) == (0, 2 * (7 + 2))
    assert again["rows"]["base"]["mean_gap_closed_percent"] == \
        out["rows"]["base"]["mean_gap_closed_percent"]
