"""Verdicts claim only what their evidence covers: one run vs. independent runs (seeds).

Calibration on synthetic affinity traces with a planted *seed effect*: every run's matrix
is ``truth + seed effect of that run`` (systematic, the same in all of the run's blocks)
plus small block-to-block noise. Also the two-stage bootstrap and the small-sample
(Student-t) rule, each against a NumPy reference.
"""

import json
import re

import numpy as np
import pytest
from scipy import stats

from tag_tf import selection
from tag_tf.io import affinity_io
from tag_tf.selection import api, robustness

ROBUST_WORD = re.compile(r"\brobust\b", flags=re.IGNORECASE)
N, CLUSTERS, BLOCKS = 6, 2, 8
CLUSTER = np.arange(N) % CLUSTERS
SAME = np.equal.outer(CLUSTER, CLUSTER)
TASKS = [f"t{i}" for i in range(N)]


def _run(rng, truth, *, seed_sd, within_sd, blocks=BLOCKS):
    """One training run: a systematic seed effect, then per-block (epoch) noise."""
    effect = truth + seed_sd * rng.normal(size=truth.shape)
    means = effect + within_sd * rng.normal(size=(blocks,) + truth.shape)
    trace = [{"epoch": e, "affinity": m.tolist(), "counts": np.full(truth.shape, 20).tolist()}
             for e, m in enumerate(means)]
    return affinity_io.AffinityRecord(TASKS, means.mean(axis=0), epochs=trace)


def _runs(seed, k, *, signal, seed_sd, within_sd=0.002):
    """``k`` runs of a planted truth (``+signal`` within clusters, ``-signal`` across)."""
    rng = np.random.default_rng(seed)
    truth = np.where(SAME, signal, -signal)
    return [_run(rng, truth, seed_sd=seed_sd, within_sd=within_sd) for _ in range(k)]


def _verdicts(record, budgets=(2, 3), n_resamples=40, seed=0):
    uncertainty = selection.Uncertainty.from_record(record, n_resamples=n_resamples,
                                                    seed=seed)
    chosen = selection.select_networks(record.affinity, list(budgets), tasks=record.tasks,
                                       uncertainty=uncertainty)
    return {s.budget: s for s in chosen}


def _networks(chosen):
    return sorted(tuple(net.tasks) for net in chosen.networks)


# ----------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("seed", range(3))
def test_one_run_is_never_called_robust_across_seeds(seed):
    """Strong signal, tiny noise: one run is "stable within this run", never "robust"."""
    (run,) = _runs(seed, 1, signal=0.05, seed_sd=0.02)
    for chosen in _verdicts(run, budgets=(1, 2, 3)).values():
        r = chosen.robustness
        assert r.runs == 1 and r.evidence == "within-run"
        assert r.verdict in ("stable within this run", "within noise", "forced")
    assert _verdicts(run)[2].robustness.verdict == "stable within this run"
    # Normal draws from one run's stderr: the same.
    est = run._replace(epochs=None, stderr=np.full((N, N), 0.001))
    assert _verdicts(est)[2].robustness.verdict == "stable within this run"
    with pytest.raises(ValueError, match="A block bootstrap covers one run"):
        selection.Uncertainty(block_means=np.zeros((3, N, N)), runs=3)


@pytest.mark.parametrize("seed", range(3))
def test_pooled_runs_are_within_noise_while_the_seed_effect_dominates(seed):
    """A real difference smaller than the seed spread: a run alone can look stable against
    its own batch noise, yet another seed picks differently; pooled, the runs are
    (honestly) within noise."""
    runs = _runs(seed, 3, signal=0.004, seed_sd=0.03)
    singles = [_verdicts(run)[2] for run in runs]
    stable = [s for s in singles if s.robustness.verdict == "stable within this run"]
    assert stable and all(s.robustness.runs == 1 for s in singles)
    assert any(_networks(other) != _networks(stable[0]) for other in singles)
    pooled = _verdicts(affinity_io.pool_records(runs))[2].robustness
    assert pooled.runs == 3 and pooled.evidence == "across-runs"
    assert pooled.verdict == "within noise", pooled


@pytest.mark.parametrize("seed", range(3))
def test_pooled_runs_are_robust_once_the_difference_exceeds_the_seed_spread(seed):
    runs = _runs(seed, 3, signal=0.05, seed_sd=0.005)
    chosen = _verdicts(affinity_io.pool_records(runs))[2]
    assert _networks(chosen) == [("t0", "t2", "t4"), ("t1", "t3", "t5")]
    r = chosen.robustness
    assert r.verdict == "robust" and r.runs == 3
    assert r.margin >= r.required_margin == pytest.approx(stats.t.ppf(stats.norm.cdf(2), 2))
    assert r.source.startswith("two-stage: Student-t draws (2 df) from the spread of 3 runs, "
                               "then 8 blocks within each run")
    # ... and then independent pooled re-runs agree with it.
    again = _verdicts(affinity_io.pool_records(_runs(seed + 100, 3, signal=0.05,
                                                     seed_sd=0.005)))[2]
    assert _networks(again) == _networks(chosen)


@pytest.mark.parametrize("seed", range(2))
def test_pure_noise_pooled_keeps_its_answer_in_the_new_words(seed):
    runs = _runs(seed, 3, signal=0.0, seed_sd=0.0, within_sd=0.01)
    verdicts = {b: s.robustness.verdict
                for b, s in _verdicts(affinity_io.pool_records(runs), (1, 2, 3)).items()}
    assert verdicts == {1: "forced", 2: "within noise", 3: "within noise"}


def test_required_margin_is_the_student_t_quantile():
    assert robustness.required_margin(1) == 2.0
    expected = {2: 13.968, 3: 4.527, 4: 3.307, 5: 2.869}
    for runs, value in expected.items():
        assert robustness.required_margin(runs) == pytest.approx(value, abs=2e-3)
    assert robustness.required_margin(1000) == pytest.approx(2.0, abs=0.01)


# ----------------------------------------------------------------------------- two-stage
def _weighted(values, weights):
    return (values * weights).sum(axis=0) / weights.sum(axis=0)


def _reference_two_stage(run_means, run_blocks, n_resamples, seed):
    """NumPy reference of the K >= 5 two-stage bootstrap: draw K runs with replacement,
    then for every drawn run its blocks with replacement (its deviation from its mean)."""
    rng = np.random.default_rng(seed)
    k = len(run_means)
    out = []
    for _ in range(n_resamples):
        drawn = rng.integers(0, k, size=k)
        values = []
        for j in drawn:
            blocks, counts = run_blocks[j]
            picks = np.bincount(rng.integers(0, len(blocks), size=len(blocks)),
                                minlength=len(blocks))
            resampled = (np.tensordot(picks, blocks * counts, axes=1)
                         / np.tensordot(picks, counts, axes=1))
            values.append(run_means[j] + resampled - _weighted(blocks, counts))
        out.append(np.mean(values, axis=0))
    return out


def test_two_stage_bootstrap_matches_a_numpy_reference():
    rng = np.random.default_rng(11)
    k = 6
    run_means = rng.normal(size=(k, 4, 4))
    run_blocks = [(run_means[j] + 0.1 * rng.normal(size=(b, 4, 4)),
                   rng.integers(1, 5, size=(b, 4, 4)).astype(float))
                  for j, b in enumerate([3, 4, 5, 3, 6, 4])]
    uncertainty = selection.Uncertainty(run_means=run_means, run_blocks=run_blocks,
                                        n_resamples=30, seed=5)
    assert uncertainty.runs == k and not uncertainty.student_t
    got = uncertainty.resamples(run_means.mean(axis=0))
    want = _reference_two_stage(run_means, run_blocks, 30, 5)
    np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-12, atol=1e-12)
    assert uncertainty.source.startswith("two-stage: bootstrap over 6 runs, then 3-6 blocks")


def test_two_stage_adds_the_within_run_noise_to_the_between_run_spread():
    """Run means that agree exactly: only the blocks spread the resamples (one-stage over
    runs would see no noise at all); with run means that differ, both add up."""
    rng = np.random.default_rng(12)
    k, b = 6, 8
    base = rng.normal(size=(4, 4))
    blocks = [base + 0.05 * rng.normal(size=(b, 4, 4)) for _ in range(k)]
    blocks = [(m - m.mean(axis=0) + base, None) for m in blocks]  # every run's mean == base
    same = np.stack([base] * k)
    one_stage = np.stack(selection.Uncertainty(run_means=same, n_resamples=400).resamples(base))
    assert np.allclose(one_stage, base)
    two = np.stack(selection.Uncertainty(run_means=same, run_blocks=blocks,
                                         n_resamples=400).resamples(base))
    within = np.mean([np.var(m, axis=0, ddof=0) / b for m, _ in blocks], axis=0) / k
    np.testing.assert_allclose(two.var(axis=0).mean(), within.mean(), rtol=0.25)
    spread = np.stack([base + 0.2 * rng.normal(size=(4, 4)) for _ in range(k)])
    shifted = [(m - base + s, None) for (m, _), s in zip(blocks, spread)]
    between = np.stack(selection.Uncertainty(run_means=spread, n_resamples=400).resamples(
        spread.mean(axis=0))).var(axis=0).mean()
    both = np.stack(selection.Uncertainty(run_means=spread, run_blocks=shifted,
                                          n_resamples=400).resamples(
        spread.mean(axis=0))).var(axis=0).mean()
    assert both == pytest.approx(between + within.mean(), rel=0.25)


def test_two_stage_is_deterministic_given_its_seed():
    runs = _runs(3, 3, signal=0.01, seed_sd=0.01, within_sd=0.01)
    pooled = affinity_io.pool_records(runs)

    def draw(seed):
        return np.stack(selection.Uncertainty.from_record(
            pooled, n_resamples=20, seed=seed).resamples(pooled.affinity))

    np.testing.assert_array_equal(draw(4), draw(4))
    assert not np.allclose(draw(4), draw(5))


# ----------------------------------------------------------------------------- small sample
def _linear_draws(k, rule_runs, n_resamples, seed=0):
    """Draws of c . R with K runs whose c-projection has sample SE 1 (studentised)."""
    rng = np.random.default_rng(seed)
    run_means = rng.normal(size=(k, 3, 3))
    c = rng.normal(size=(3, 3))
    values = np.tensordot(run_means, c, axes=2)
    se = values.std(ddof=1) / np.sqrt(k)
    centre = run_means.mean(axis=0)
    if rule_runs == "runs":
        uncertainty = selection.Uncertainty(run_means=run_means, n_resamples=n_resamples)
    else:  # the rule the issue forbids: normal draws from the between-run stderr
        uncertainty = selection.Uncertainty(
            mean=centre, stderr=run_means.std(axis=0, ddof=1) / np.sqrt(k),
            n_resamples=n_resamples, runs=rule_runs)
    draws = np.stack(uncertainty.resamples(centre))
    return (np.tensordot(draws, c, axes=2) - np.tensordot(centre, c, axes=2)) / se, uncertainty


@pytest.mark.parametrize("k", [2, 3, 4])
def test_few_runs_draw_student_t_with_k_minus_1_degrees_of_freedom(k):
    """Any linear function of the matrix is drawn as its exact Student-t interval."""
    z, uncertainty = _linear_draws(k, "runs", 20000)
    assert uncertainty.student_t and uncertainty.runs == k
    assert uncertainty.source == f"Student-t draws ({k - 1} df) from the spread of {k} runs"
    for level in (0.75, 0.9, 0.95):
        expected = stats.t.ppf(level, k - 1)
        assert np.quantile(np.abs(z), 2 * level - 1) == pytest.approx(expected, rel=0.08)
    result = stats.kstest(z, stats.t(k - 1).cdf)
    assert result.pvalue > 1e-3, result


def test_two_runs_give_a_much_wider_interval_than_normal_draws():
    t_draws, _ = _linear_draws(2, "runs", 20000)

    def width(z):
        return np.subtract(*np.quantile(z, [0.975, 0.025]))

    # A 95 % interval from 2 runs is t_1 (12.71) wide, not 1.96: about 6.5 times.
    assert width(t_draws) / 2 == pytest.approx(stats.t.ppf(0.975, 1), rel=0.1)
    rng = np.random.default_rng(0)
    normal = rng.standard_normal(20000)
    assert width(t_draws) / width(normal) == pytest.approx(12.71 / 1.96, rel=0.1)
    # Normal draws from a 2-run stderr are Student-t too once runs=2 says where it is from.
    stderr_t = selection.Uncertainty(mean=np.zeros((3, 3)), stderr=np.ones((3, 3)),
                                     n_resamples=20000, runs=2).resamples(np.zeros((3, 3)))
    cell = np.stack(stderr_t)[:, 0, 1]
    assert width(cell) / 2 == pytest.approx(stats.t.ppf(0.975, 1), rel=0.1)
    one_run = selection.Uncertainty(mean=np.zeros((3, 3)), stderr=np.ones((3, 3)),
                                    n_resamples=20000).resamples(np.zeros((3, 3)))
    assert width(np.stack(one_run)[:, 0, 1]) / 2 == pytest.approx(1.96, rel=0.05)


def test_five_runs_and_more_bootstrap_the_runs():
    rng = np.random.default_rng(13)
    means = rng.normal(size=(5, 3, 3))
    uncertainty = selection.Uncertainty(run_means=means, n_resamples=10, seed=2)
    assert not uncertainty.student_t and uncertainty.source == "bootstrap over 5 runs"
    # Exactly the block bootstrap over the run means (the behaviour before runs existed).
    old = selection.Uncertainty(block_means=means, n_resamples=10, seed=2)
    np.testing.assert_array_equal(np.stack(uncertainty.resamples(means.mean(axis=0))),
                                  np.stack(old.resamples(means.mean(axis=0))))


# ----------------------------------------------------------------------------- outputs
def _single_run_file(tmp_path):
    (run,) = _runs(0, 1, signal=0.05, seed_sd=0.01)
    path = str(tmp_path / "affinity.json")
    affinity_io.save_affinity_json(path, run)
    return path, run


def _strings(value):
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_no_single_run_output_uses_the_word_robust(tmp_path, capsys):
    """The selector's text and JSON, the demo's report and the pipeline summary of one run."""
    path, run = _single_run_file(tmp_path)
    report = api.run_selection(affinity_path=path, budgets=[1, 2, 3], bootstrap=40,
                               output_path=str(tmp_path / "selection.json"))
    assert "STABLE WITHIN THIS RUN" in report.text
    assert not ROBUST_WORD.search(report.text), report.text
    written = json.loads((tmp_path / "selection.json").read_text())
    assert not [s for s in _strings(written) if ROBUST_WORD.search(s)]
    assert written["uncertainty"]["runs"] == 1
    assert {e["robustness"]["evidence"] for e in written["selections"]} == {"within-run"}
    assert robustness.SEED_ADVICE in report.text  # how to measure the seed spread

    from tag_tf.synthetic import demo  # pylint: disable=g-import-not-at-top
    demo._select(run, [2, 3], str(tmp_path), marked_budget=2)  # pylint: disable=protected-access
    printed = capsys.readouterr().out
    assert "b = 2 from one run: stable within this run" in printed
    assert demo.ONE_RUN_NOTE in printed
    assert not ROBUST_WORD.search(printed), printed
    demo_json = json.loads((tmp_path / "selection.json").read_text())
    assert not [s for s in _strings(demo_json) if ROBUST_WORD.search(s)]

    from tag_tf.runner import choose  # pylint: disable=g-import-not-at-top
    from tag_tf.runner import summary as summary_lib  # pylint: disable=g-import-not-at-top
    from tag_tf.runner.config import SelectionConfig  # pylint: disable=g-import-not-at-top
    entry = choose.select(path, TASKS, SelectionConfig(budgets=(1, 2, 3), bootstrap=40),
                          str(tmp_path))
    summary = summary_lib.format_summary({
        "mode": "affinity", "tasks": TASKS, "seconds": 0.0, "networks": [],
        "test_error": dict.fromkeys(TASKS, 1.0), "test_loss": dict.fromkeys(TASKS, 1.0),
        "total_test_error": 6.0, "selection": entry})
    assert "STABLE WITHIN THIS RUN" in summary and "--seeds=K" in summary
    assert not ROBUST_WORD.search(summary), summary


def test_pooled_output_says_how_many_runs_it_rests_on(tmp_path):
    paths = []
    for k, run in enumerate(_runs(1, 3, signal=0.05, seed_sd=0.005)):
        paths.append(str(tmp_path / f"seed{k}.json"))
        affinity_io.save_affinity_json(paths[-1], run)
    report = api.run_selection(affinity_path=paths, budgets=[2], bootstrap=40)
    (chosen,) = report.selections
    assert chosen.robustness.verdict == "robust"
    assert "robustness: ROBUST" in report.text
    assert "the between-run part rests on 3 runs" in report.text
    assert report.payload["uncertainty"]["runs"] == 3
    assert report.payload["uncertainty"]["evidence"] == "across-runs"
    assert report.payload["uncertainty"]["criterion"].startswith("robust (across 3 runs) if")
    assert report.payload["selections"][0]["robustness"]["runs"] == 3


def test_read_robustness_of_old_files():
    old = {"verdict": "robust", "stability": 1.0, "margin": 9.0}
    assert robustness.read_robustness(old)["verdict"] == "stable within this run"
    assert robustness.read_robustness(old)["relabelled_from"] == "robust"
    assert robustness.read_robustness(old, runs=4)["verdict"] == "robust"
    assert robustness.read_robustness(old, runs=4)["evidence"] == "across-runs"
    new = {"verdict": "within noise", "runs": 2, "evidence": "across-runs"}
    assert robustness.read_robustness(new, runs=1) == new  # what a new file says wins
    assert robustness.read_robustness(None) is None
