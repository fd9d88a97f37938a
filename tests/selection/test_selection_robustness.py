"""Selection under uncertainty: bootstrap stability, margins, verdicts; no import cycles."""

import ast
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tag_tf.io import affinity_io
from tag_tf import selection
from tag_tf.selection import problem as problem_lib
from tag_tf.selection import robustness

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _planted_blocks(seed, *, n=9, clusters=3, blocks=12, noise=0.01):
    """Block means of a planted matrix: +0.05 within clusters, -0.02 across, plus noise."""
    rng = np.random.default_rng(seed)
    cluster = np.arange(n) % clusters
    truth = np.where(np.equal.outer(cluster, cluster), 0.05, -0.02)
    return truth + noise * rng.normal(size=(blocks, n, n)), cluster


def _noise_blocks(seed, *, n=6, blocks=12, noise=0.01):
    return noise * np.random.default_rng(seed).normal(size=(blocks, n, n))


def _select(block_means, budgets, *, n_resamples=40, seed=0):
    uncertainty = selection.Uncertainty(block_means=block_means, n_resamples=n_resamples,
                                        seed=seed)
    return selection.select_networks(block_means.mean(axis=0), budgets,
                                     uncertainty=uncertainty)


def test_planted_clusters_are_stable_within_the_run_at_three_networks():
    """One run's blocks: the planted clusters stand out, but only "within this run"."""
    blocks, cluster = _planted_blocks(0)
    (chosen,) = _select(blocks, [3])
    r = chosen.robustness
    groups = sorted(tuple(int(t.split("_")[1]) for t in net.tasks) for net in chosen.networks)
    assert groups == [tuple(np.nonzero(cluster == c)[0]) for c in range(3)]
    assert r.verdict == "stable within this run" and r.stability >= robustness.ROBUST_STABILITY
    assert r.margin >= robustness.ROBUST_MARGIN == r.required_margin
    assert r.runs == 1 and r.evidence == "within-run"
    assert r.alternative is not None and r.difference > 0
    low, high = r.objective_ci
    assert low <= chosen.objective <= high and r.resamples == 40


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pure_noise_is_within_noise_for_every_budget(seed):
    budgets = [1, 2, 3, 4, 5]
    selections = _select(_noise_blocks(seed), budgets)
    verdicts = {s.budget: s.robustness.verdict for s in selections}
    # b = 1 has exactly one feasible selection (one network of every task): "forced".
    assert verdicts == {1: "forced", 2: "within noise", 3: "within noise", 4: "within noise",
                        5: "within noise"}
    for s in selections[1:]:
        assert "more steps" in s.robustness.advice


def test_normal_draws_from_stderr_also_separate_signal_from_noise():
    blocks, _ = _planted_blocks(3)
    est_mean, est_se = blocks.mean(axis=0), blocks.std(axis=0, ddof=1) / np.sqrt(len(blocks))
    uncertainty = selection.Uncertainty(mean=est_mean, stderr=est_se, n_resamples=40, seed=1)
    (planted,) = selection.select_networks(est_mean, [3], uncertainty=uncertainty)
    assert planted.robustness.verdict == "stable within this run"
    assert planted.robustness.source.startswith("normal draws")
    noise = _noise_blocks(4)
    uncertainty = selection.Uncertainty(mean=noise.mean(axis=0),
                                        stderr=noise.std(axis=0, ddof=1) / np.sqrt(12),
                                        n_resamples=40, seed=1)
    (flat,) = selection.select_networks(noise.mean(axis=0), [3], uncertainty=uncertainty)
    assert flat.robustness.verdict == "within noise"


def test_bootstrap_is_deterministic_given_its_seed():
    blocks = _noise_blocks(5)
    first = [s.robustness for s in _select(blocks, [2, 3], seed=7)]
    again = [s.robustness for s in _select(blocks, [2, 3], seed=7)]
    other = [s.robustness for s in _select(blocks, [2, 3], seed=8)]
    assert first == again
    assert first != other


def _all_selections(problem, budget):
    """Brute force: every distinct selection (canonical network set) with its total gain."""
    n = problem.n
    groups = [m for m in range(1, 1 << n) if bin(m).count("1") >= 2]
    found = {}
    for k in range(1, budget + 1):
        for combo in itertools.combinations(groups, k):
            if np.bitwise_or.reduce(combo) != (1 << n) - 1:
                continue
            kept, _, gains = problem_lib.canonicalize(problem, combo)
            found[kept] = float(gains.sum())
    return found


@pytest.mark.parametrize("seed", range(4))
def test_runner_up_is_the_exact_second_best(seed):
    matrix = np.random.default_rng(seed).normal(size=(5, 5))
    problem = problem_lib.make_problem(matrix)
    for budget in (2, 3):
        (chosen,) = selection.select_networks(matrix, budget)
        ranked = sorted(_all_selections(problem, budget).items(), key=lambda kv: -kv[1])
        runner_up = robustness._runner_up(problem, chosen)  # pylint: disable=protected-access
        assert ranked[0][0] == robustness._masks(chosen)  # pylint: disable=protected-access
        assert robustness._total(problem, runner_up) == pytest.approx(ranked[1][1])  # pylint: disable=protected-access


def test_uncertainty_from_record_and_bad_input():
    rng = np.random.default_rng(6)
    tasks = ["a", "b", "c"]
    epochs = [{"epoch": e, "affinity": rng.normal(size=(3, 3)).tolist(),
               "counts": np.full((3, 3), 4).tolist()} for e in range(6)]
    record = affinity_io.AffinityRecord(tasks, rng.normal(size=(3, 3)), epochs=epochs)
    from_epochs = selection.Uncertainty.from_record(record, n_resamples=10)
    assert from_epochs.source == "block bootstrap over 6 blocks (one block per epoch)"
    with_se = record._replace(epochs=epochs[:3], stderr=np.full((3, 3), 0.1),
                              stderr_method="batch-means")
    assert selection.Uncertainty.from_record(with_se).source.startswith("normal draws")
    assert selection.Uncertainty.from_record(
        record._replace(epochs=epochs[:3])).source.startswith("block bootstrap over 3")
    with pytest.raises(ValueError, match="No uncertainty information"):
        selection.Uncertainty.from_record(record._replace(epochs=None))
    with pytest.raises(ValueError, match="either block_means"):
        selection.Uncertainty()
    with pytest.raises(ValueError, match="at least 2 blocks"):
        selection.Uncertainty(block_means=np.zeros((1, 3, 3)))
    with pytest.raises(ValueError, match="n_resamples"):
        selection.Uncertainty(block_means=np.zeros((4, 3, 3)), n_resamples=1)
    with pytest.raises(ValueError, match="limited to 14 tasks"):
        selection.select_networks(np.zeros((15, 15)), 2, uncertainty=selection.Uncertainty(
            block_means=np.zeros((3, 15, 15))))
    with pytest.raises(ValueError, match="uncertainty is for 3 tasks"):
        selection.select_networks(np.zeros((4, 4)), 2,
                                  uncertainty=selection.Uncertainty(block_means=np.zeros((4, 3, 3))))


def test_unknown_stderr_is_never_taken_as_exact():
    """A one-block record has NaN errors: no verdict from it, and no 'robust' by accident."""
    tasks = ["a", "b", "c"]
    mean = np.array([[0.1, 0.05, -0.02], [0.04, 0.1, 0.01], [-0.03, 0.02, 0.1]])
    nan_se = affinity_io.AffinityRecord(tasks, mean, stderr=np.full((3, 3), np.nan),
                                        stderr_method="batch means, one block per epoch")
    with pytest.raises(ValueError, match="No uncertainty information"):
        selection.Uncertainty.from_record(nan_se)
    partly = np.full((3, 3), 0.01)
    partly[0, 2] = np.nan
    with pytest.raises(ValueError, match=r"unknown .* \[source, target\] = \[\(0, 2\)\]"):
        selection.Uncertainty(mean=mean, stderr=partly)
    diagonal_only = np.full((3, 3), 0.01)
    np.fill_diagonal(diagonal_only, np.nan)  # self-affinities do not enter group scores
    assert selection.Uncertainty(mean=mean, stderr=diagonal_only).n == 3


def test_json_and_table_carry_the_assessment():
    blocks, _ = _planted_blocks(7, n=6, clusters=2)
    selections = _select(blocks, [1, 2], n_resamples=20)
    entry = json.loads(json.dumps(selection.selection_to_dict(selections[1])))
    assert entry["robustness"]["verdict"] == "stable within this run"
    assert entry["robustness"]["runs"] == 1 and entry["robustness"]["evidence"] == "within-run"
    assert len(entry["robustness"]["objective_ci"]) == 2
    assert entry["robustness"]["alternative"] and entry["robustness"]["margin"] > 2
    forced = selection.selection_to_dict(selections[0])["robustness"]
    assert forced["verdict"] == "forced" and forced["margin"] is None
    text = selection.format_selections(selections)
    assert "robustness: STABLE WITHIN THIS RUN" in text and "| verdict |" in text
    assert "| stable within this run |" in text
    assert selection.selection_to_dict(selection.select_networks(blocks[0], 2)[0])[
        "robustness"] is None


def test_pooled_files_select_the_same_for_any_file_order(tmp_path):
    blocks, _ = _planted_blocks(8, n=6, clusters=2, blocks=5, noise=0.02)
    paths = []
    for k, matrix in enumerate(blocks):  # each "run" is one seed's affinity file
        path = str(tmp_path / f"seed{k}.json")
        affinity_io.save_affinity_json(path, affinity_io.AffinityRecord(
            [f"t{i}" for i in range(6)], matrix))
        paths.append(path)
    reports = [selection.run_selection(affinity_path=[paths[i] for i in order],
                                       budgets=[2, 3], bootstrap=20, seed=3)
               for order in ([0, 1, 2, 3, 4], [4, 2, 0, 3, 1], [1, 0, 4, 3, 2])]
    def without_times(report):
        return [{k: v for k, v in entry.items() if k != "seconds"}
                for entry in report.payload["selections"]]

    for report in reports[1:]:
        assert without_times(report) == without_times(reports[0])
    assert reports[0].payload["pooled_runs"] == 5
    assert "between-runs" in reports[0].payload["uncertainty"]["source"]


def _imports(path, package_modules):
    """Every tag_tf module imported anywhere in ``path`` (top level and inside functions)."""
    tree = ast.parse(open(path).read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tag_tf"):
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in package_modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("tag_tf"))
    return found


def test_selection_modules_have_no_import_cycle():
    folder = os.path.join(ROOT, "tag_tf", "selection")
    modules = {f"tag_tf.selection.{f[:-3]}": os.path.join(folder, f)
               for f in os.listdir(folder) if f.endswith(".py") and f != "__init__.py"}
    graph = {m: _imports(p, modules) & set(modules) for m, p in modules.items()}
    assert "tag_tf.selection.solvers" in graph["tag_tf.selection.baselines"]
    visiting, done = set(), set()

    def visit(module, path):
        if module in visiting:
            raise AssertionError(f"Import cycle: {' -> '.join(path + [module])}")
        if module in done:
            return
        visiting.add(module)
        for dep in sorted(graph[module]):
            visit(dep, path + [module])
        visiting.discard(module)
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    # And importing baselines first, in a fresh interpreter, works.
    result = subprocess.run([sys.executable, "-c", "import tag_tf.selection.baselines as b; "
                             "print(b.select_cs([[0, 1], [1, 0]], 1)[0].objective)"],
                            cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1.0"
