"""examples/own_model.py, the paper's workflow on a user's Keras model, end to end (slow)."""

import json
import os

import pytest

from examples import own_model


@pytest.mark.slow
def test_own_model_workflow(tmp_path, capsys):
    tag, groups = own_model.main(str(tmp_path))
    # Affinities over 3 seeds, pooled; selection with the bootstrap verdict.
    assert tag.seeds == (0, 1, 2) and tag.affinity.pooled_seeds == (0, 1, 2)
    with open(os.path.join(tmp_path, "affinity", "selection.json")) as f:
        selection = json.load(f)
    assert [s["budget"] for s in selection["selections"]] == [2, 3]
    for s in selection["selections"]:
        assert s["robustness"]["verdict"] and 0 <= s["robustness"]["stability"] <= 1
    # The chosen groups of budget 3 are the planted clusters, trained over the 3 seeds.
    clusters = {}
    for task, cluster in zip(own_model.problem.tasks, own_model.problem.cluster_of):
        clusters.setdefault(cluster, []).append(task)
    chosen = sorted(sorted(n["tasks"]) for n in selection["selections"][1]["networks"])
    assert chosen == sorted(clusters.values())
    assert len(groups.networks) == 3 * 3 and groups.groups["budget"] == 3
    # Compared with MTL and STL against the seed-to-seed spread.
    comparisons = {c["reference"]: c for c in groups.groups["comparisons"]}
    assert set(comparisons) == {"MTL", "STL"}
    for c in comparisons.values():
        assert c["spread"] > 0 and c["verdict"] in ("better", "worse", "within spread")
    assert groups.config.seeds == 3 and groups.total_test_error == pytest.approx(
        sum(groups.test_error.values()))
    out = capsys.readouterr().out
    assert "pooled over seeds [0, 1, 2]" in out
    assert "groups beat MTL" in out or "than MTL" in out or "lose to MTL" in out
