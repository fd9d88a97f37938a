"""Published tables: orientation, both solvers on CelebA TAG, baselines, reproduction."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from tag_tf import selection
from tag_tf.selection import exhaustive, subset_dp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CELEBA = os.path.join(ROOT, "celeba", "published")
TASKONOMY = os.path.join(ROOT, "taskonomy", "published")


def _load(path, field="values"):
    return selection.load_published_table(path, field=field)


def test_transpose_to_source_target():
    table = _load(os.path.join(CELEBA, "celeba_tag_affinity.json"))
    with open(os.path.join(CELEBA, "celeba_tag_affinity.json")) as f:
        raw = json.load(f)["values"]
    s, t = table.tasks.index("Goatee"), table.tasks.index("Mustache")
    # matrix[source, target] = values[recipient=target][source].
    assert table.matrix[s, t] == raw["Mustache"]["Goatee"]
    assert table.matrix[t, s] == raw["Goatee"]["Mustache"]
    assert table.metadata["source"]["cell_id"] == "O12pDbuVLBgX"


def test_taskonomy_inner_key_order_is_by_name():
    table = _load(os.path.join(TASKONOMY, "taskonomy_tag_affinity.json"))
    assert table.tasks == ["ss_l", "depth_l", "norm_l", "key_l", "edge2d_l"]
    d, n = table.tasks.index("depth_l"), table.tasks.index("norm_l")
    assert table.matrix[n, d] == pytest.approx(0.2914147606289435)  # values[depth][norm]


def test_notebook_group_score_convention():
    # The notebook credits values[a][b] to task a: group {Goatee, Mustache} scores Mustache
    # with values["Mustache"]["Goatee"] = -0.8397.
    table = _load(os.path.join(CELEBA, "celeba_tag_affinity.json"))
    scores = selection.group_scores(table.matrix, tasks=table.tasks)
    g, m = table.tasks.index("Goatee"), table.tasks.index("Mustache")
    row = scores.scores[scores.masks.tolist().index((1 << g) | (1 << m))]
    assert row[m] == pytest.approx(-0.8396637863075016)


@pytest.mark.parametrize("budget", [1, 2, 3])
def test_celeba_tag_both_solvers_agree(budget):
    table = _load(os.path.join(CELEBA, "celeba_tag_affinity.json"))
    oracle = exhaustive.solve_exhaustive(table.matrix, budget, tasks=table.tasks,
                                         mode="networks")
    exact = subset_dp.solve_subset_dp(table.matrix, budget, tasks=table.tasks)
    assert exact.objective == pytest.approx(oracle.objective, rel=1e-12)
    assert exact.networks == oracle.networks


def test_celeba_hoa_minimises_error_with_singles():
    table = _load(os.path.join(CELEBA, "celeba_hoa_pairwise.json"),
                  field="error_values_as_computed")
    accuracy = _load(os.path.join(CELEBA, "celeba_hoa_pairwise.json"))
    np.testing.assert_allclose(table.matrix, 100.0 - accuracy.matrix, atol=1e-9)
    sels = selection.select_networks(table.matrix, [1, 2, 3], tasks=table.tasks,
                                     minimize=True, singletons="diagonal")
    objectives = [s.objective for s in sels]
    assert objectives == sorted(objectives, reverse=True)  # more networks, lower error
    oracle = exhaustive.solve_exhaustive(table.matrix, 3, tasks=table.tasks, minimize=True,
                                         singletons="diagonal", mode="partitions")
    assert sels[2].objective == pytest.approx(oracle.objective)


def test_select_hoa_equals_matrix_form():
    with open(os.path.join(TASKONOMY, "taskonomy_hoa_pairwise.json")) as f:
        values = json.load(f)["values"]
    via_pairs = selection.select_hoa(values, [2, 3])
    table = _load(os.path.join(TASKONOMY, "taskonomy_hoa_pairwise.json"))
    via_matrix = selection.select_networks(table.matrix, [2, 3], tasks=table.tasks,
                                           minimize=True, singletons="diagonal")
    assert [s.networks for s in via_pairs] == [s.networks for s in via_matrix]


def test_cs_and_random_groupings():
    table = _load(os.path.join(TASKONOMY, "taskonomy_cs_affinity.json"))
    best = selection.select_cs(table.matrix, 2, tasks=table.tasks)[0]
    rg = selection.random_groupings(table.matrix, 2, tasks=table.tasks, samples=200, seed=3)
    assert rg == selection.random_groupings(table.matrix, 2, tasks=table.tasks, samples=200,
                                            seed=3)
    assert rg.max <= best.objective + 1e-12 and rg.min <= rg.mean <= rg.max
    assert rg.networks == 2 and len(rg.objectives) == 200


def test_reproduce_taskonomy(tmp_path):
    from taskonomy import published_tables  # importable: no flags
    out = tmp_path / "sel.json"
    report = selection.reproduce_tables(tables=published_tables.tables(),
                                        budgets=[1, 2, 3, 4], output_path=str(out),
                                        random_samples=10)
    payload = json.loads(out.read_text())
    assert [t["name"] for t in payload["tables"]] == ["TAG", "CS", "HOA"]
    tag = payload["tables"][0]["selections"][1]
    assert sorted(map(sorted, (n["tasks"] for n in tag["networks"]))) == [
        ["depth_zbuffer", "normal", "segment_semantic"], ["edge_texture", "keypoints2d"]]
    assert "== HOA" in report.text


def test_taskonomy_tables_share_one_task_vocabulary():
    """TAG/CS files say ss_l, depth_l, ...; the HOA file s, d, ...: all load as task names."""
    from taskonomy import data, published_tables
    names = sorted(data.TASKS)
    report = selection.reproduce_tables(tables=published_tables.tables(), budgets=[2],
                                        random_samples=0)
    assert [sorted(entry["tasks"]) for entry in report.payload["tables"]] == [names] * 3
    for label in ("ss_l", "depth_l", "norm_l", "key_l", "edge2d_l"):
        assert label not in report.text
    assert not re.search(r"[{(\[,]\s*'?[sdntk]'?\s*[,)}\]]", report.text)
    for task in names:
        assert task in report.text
    with open(os.path.join(TASKONOMY, "taskonomy_hoa_pairwise.json")) as f:
        assert sorted(json.load(f)["tasks"]) == sorted("sdntk")  # the file stays as shipped


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["celeba", "taskonomy"])
def test_reproduction_scripts_run(dataset, tmp_path):
    # Default --output: runs/<dataset>/published_selection.json under the working directory.
    out = tmp_path / "runs" / dataset / "published_selection.json"
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run(
        [sys.executable, "-m", f"{dataset}.reproduce_selection", "--random_samples=10"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"Wrote {os.path.join('runs', dataset, 'published_selection.json')}" in proc.stdout
    payload = json.loads(out.read_text())
    assert [t["name"] for t in payload["tables"]] == ["TAG", "CS", "HOA"]
    assert all(s["optimal"] for t in payload["tables"] for s in t["selections"])
