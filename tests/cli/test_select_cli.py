"""End-to-end runs of ``python -m tag_tf.select`` (in process, with flagsaver)."""

import json

import numpy as np
import pytest
from absl import app
from absl.testing import flagsaver

from tag_tf.io import affinity_io
from tag_tf import select
from tag_tf.selection import subset_dp


@pytest.fixture(autouse=True)
def _parse_flags():
    if not select.FLAGS.is_parsed():
        select.FLAGS(["select"])


def _write(tmp_path, matrix, tasks):
    path = str(tmp_path / "affinity.json")
    affinity_io.save_affinity_json(path, affinity_io.AffinityRecord(tasks, matrix))
    return path


def test_round_trip(tmp_path, capsys):
    rng = np.random.default_rng(0)
    tasks = [f"t{i}" for i in range(6)]
    matrix = rng.normal(size=(6, 6))
    path = _write(tmp_path, matrix, tasks)
    out = str(tmp_path / "sel.json")
    with flagsaver.flagsaver(affinity=path, budgets=["1", "2", "3"], output=out):
        select.main(["select"])
    text = capsys.readouterr().out
    assert "budget 3:" in text and "helpers:" in text and f"Wrote {out}" in text
    payload = json.loads(open(out).read())
    assert payload["tasks"] == tasks
    for entry, budget in zip(payload["selections"], [1, 2, 3]):
        expected = subset_dp.solve_subset_dp(matrix, budget, tasks=tasks)
        assert entry["objective"] == pytest.approx(expected.objective)
        assert [n["tasks"] for n in entry["networks"]] == [
            list(n.tasks) for n in expected.networks]
        assert entry["optimal"] and entry["gap"] == 0.0
        served = {t for n in entry["networks"] for t in n["serves"]}
        assert served == set(tasks)


def test_default_output_is_selection_json_beside_the_input(tmp_path, capsys):
    path = _write(tmp_path, np.eye(3), ["a", "b", "c"])
    with flagsaver.flagsaver(affinity=path, budgets=["1"], output=None):
        select.main(["select"])
    out = tmp_path / "selection.json"
    assert f"Wrote {out}" in capsys.readouterr().out
    assert json.loads(out.read_text())["tasks"] == ["a", "b", "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["affinity.json", "selection.json"]


def test_minimize_with_singletons_and_plain_matrix(tmp_path):
    err = np.array([[5., 2., 9.], [2., 5., 9.], [9., 9., 1.]])
    path = tmp_path / "plain.json"
    # Plain format in [target][source] orientation exercises load_affinity's transpose.
    path.write_text(json.dumps({"tasks": ["a", "b", "c"], "matrix": err.T.tolist(),
                                "orientation": "target_source"}))
    out = str(tmp_path / "sel.json")
    with flagsaver.flagsaver(affinity=str(path), budgets=["2"], minimize=True,
                             singletons="diagonal", output=out):
        select.main(["select"])
    entry = json.loads(open(out).read())["selections"][0]
    assert [n["tasks"] for n in entry["networks"]] == [["a", "b"], ["c"]]
    assert entry["objective"] == pytest.approx(5 / 3)


def test_bad_flags(tmp_path):
    with flagsaver.flagsaver(affinity=None):
        with pytest.raises(app.UsageError, match="--affinity"):
            select.main(["select"])
    path = _write(tmp_path, np.zeros((3, 3)), ["a", "b", "c"])
    with flagsaver.flagsaver(affinity=path, budgets=["x"]):
        with pytest.raises(app.UsageError, match="integers"):
            select.main(["select"])
    with flagsaver.flagsaver(affinity=path, budgets=["4"], output=str(tmp_path / "o.json")):
        # A budget above the task count is the user's mistake: a usage error (one line).
        with pytest.raises(app.UsageError, match="Received: budget=4"):
            select.main(["select"])
    assert select.parse_singletons("1,2,3") == [1.0, 2.0, 3.0]
    with pytest.raises(app.UsageError, match="--singletons"):
        select.parse_singletons("diag")


def _epoch_trace(rng, truth, epochs):
    return [{"epoch": e, "affinity": (truth + 0.01 * rng.normal(size=truth.shape)).tolist(),
             "counts": np.full(truth.shape, 10).tolist()} for e in range(epochs)]


def test_bootstrap_flag_reports_verdicts_from_the_epochs_trace(tmp_path, capsys):
    rng = np.random.default_rng(1)
    tasks = [f"t{i}" for i in range(6)]
    cluster = np.arange(6) % 2
    truth = np.where(np.equal.outer(cluster, cluster), 0.05, -0.02)
    trace = _epoch_trace(rng, truth, 8)
    mean = np.mean([np.array(e["affinity"]) for e in trace], axis=0)
    path = str(tmp_path / "affinity.json")
    affinity_io.save_affinity_json(path, affinity_io.AffinityRecord(tasks, mean, epochs=trace))
    out = str(tmp_path / "sel.json")
    with flagsaver.flagsaver(affinity=path, budgets=["1", "2", "3"], output=out, bootstrap=30,
                             seed=4):
        select.main(["select"])
    text = capsys.readouterr().out
    assert "robustness: STABLE WITHIN THIS RUN" in text and "| verdict |" in text
    payload = json.loads(open(out).read())
    assert payload["uncertainty"]["source"].startswith("block bootstrap over 8 blocks")
    assert payload["uncertainty"]["runs"] == 1
    assert payload["uncertainty"]["evidence"] == "within-run"
    verdicts = [e["robustness"]["verdict"] for e in payload["selections"]]
    assert verdicts[0] == "forced" and verdicts[1] == "stable within this run"
    assert payload["selections"][1]["robustness"]["seed"] == 4


def test_several_affinity_files_are_pooled(tmp_path):
    rng = np.random.default_rng(2)
    tasks = ["a", "b", "c", "d"]
    paths = []
    for k in range(3):
        path = str(tmp_path / f"run{k}.json")
        affinity_io.save_affinity_json(path, affinity_io.AffinityRecord(
            tasks, rng.normal(size=(4, 4))))
        paths.append(path)
    out = str(tmp_path / "sel.json")
    with flagsaver.flagsaver(affinity=",".join(paths), budgets=["2"], output=out):
        select.main(["select"])
    payload = json.loads(open(out).read())
    assert payload["pooled_runs"] == 3 and len(payload["affinity_paths"]) == 3
    pooled = affinity_io.pool_records([affinity_io.load_affinity(p) for p in paths])
    expected = subset_dp.solve_subset_dp(pooled.affinity, 2, tasks=tasks)
    assert payload["selections"][0]["objective"] == pytest.approx(expected.objective)


def test_bootstrap_needs_uncertainty_and_a_valid_count(tmp_path):
    path = _write(tmp_path, np.random.default_rng(3).normal(size=(3, 3)), ["a", "b", "c"])
    out = str(tmp_path / "o.json")
    with flagsaver.flagsaver(affinity=path, budgets=["2"], output=out, bootstrap=10):
        with pytest.raises(app.UsageError, match="No uncertainty information"):
            select.main(["select"])
    with flagsaver.flagsaver(affinity=path, budgets=["2"], output=out, bootstrap=-1):
        with pytest.raises(app.UsageError, match="--bootstrap"):
            select.main(["select"])
