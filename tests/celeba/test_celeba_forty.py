"""CelebA's 40 attributes end to end: ``--tasks=all``, selection with the large solver.

Fast: parsing ``--tasks`` (``all``, unknown and duplicate names), the selection
certificate and the pipeline's selection at 40 tasks on a fixed matrix. Slow: the
``affinity`` mode with 40 heads from the command line on tiny fake CelebA (offline),
selecting b = 2, 3 with the large solver, then ``groups`` from that selection.
"""

import json
import math
import os
from unittest import mock

import numpy as np
import pytest
import tensorflow as tf
from absl import app

from celeba import adapter
from celeba import data
from celeba import main as celeba_main
from tag_tf.io import affinity_io
from tag_tf.runner import choose
from tag_tf.runner import pipeline
from tag_tf.runner.config import SelectionConfig
from tag_tf.selection import api

COMMON = ["--batch_size=4", "--image_size=16", "--every_n=1", "--patience=-1", "--verbose=0"]


def _parse_tasks(argv):
    flags = celeba_main.FLAGS
    flags.unparse_flags()
    flags(["celeba.main", *argv])
    try:
        return list(celeba_main.configuration()[0].tasks)
    finally:
        flags.unparse_flags()


# --------------------------------------------------------------------------- --tasks
def test_tasks_all_is_the_forty_attributes_in_file_order():
    assert _parse_tasks(["--tasks=all"]) == list(data.ATTRIBUTES)
    assert len(data.ATTRIBUTES) == len(set(data.ATTRIBUTES)) == 40
    assert data.ATTRIBUTES[0] == "5_o_Clock_Shadow" and data.ATTRIBUTES[-1] == "Young"
    assert _parse_tasks([]) == list(data.DEFAULT_TASKS)
    assert _parse_tasks(["--tasks=Young,Male"]) == ["Young", "Male"]  # given order kept
    assert data.resolve_tasks("all") == data.resolve_tasks(["all"]) == list(data.ATTRIBUTES)
    assert data.resolve_tasks("Male, Young") == ["Male", "Young"]
    assert data.resolve_tasks(None) == list(data.DEFAULT_TASKS)


def test_tasks_errors_name_the_bad_attributes():
    with pytest.raises(app.UsageError, match=r"--tasks: Unknown CelebA attribute\(s\) "
                       r"\['Blonde_Hair', 'Hat'\]"):
        _parse_tasks(["--tasks=Male,Blonde_Hair,Hat"])
    with pytest.raises(app.UsageError, match=r"Duplicate attribute\(s\) \['Male', 'Young'\]"):
        _parse_tasks(["--tasks=Male,Young,Smiling,Young,Male"])
    with pytest.raises(app.UsageError, match="'all' already means all 40 attributes"):
        _parse_tasks(["--tasks=all,Male"])
    with pytest.raises(app.UsageError, match="Unknown"):
        _parse_tasks(["--tasks=ALL"])  # names are case-sensitive, as in the attribute file
    with pytest.raises(ValueError, match="not one string"):
        data.check_tasks("Male")


def test_main_rejects_bad_tasks_and_time_limit_before_loading_data(run_main, tmp_path):
    missing = str(tmp_path / "no_tfds")  # never read: the flags fail first
    with pytest.raises(app.UsageError, match=r"\['Nope'\]"):
        run_main(["--mode=mtl", f"--data_dir={missing}", "--tasks=Male,Nope"])
    with pytest.raises(app.UsageError, match="selection_time_limit must be > 0"):
        run_main(["--mode=affinity", f"--data_dir={missing}", "--tasks=all",
                  "--selection_time_limit=0"])
    with pytest.raises(ValueError, match="selection_time_limit must be > 0"):
        SelectionConfig(time_limit=-1.0)
    assert not os.path.exists(missing)


def test_adapter_takes_all():
    assert adapter.CelebAAdapter(tasks="all").tasks == data.ATTRIBUTES
    assert adapter.CelebAAdapter(tasks=["all"]).settings()["tasks"] == list(data.ATTRIBUTES)
    with pytest.raises(ValueError, match="At least one"):
        adapter.CelebAAdapter(tasks=())


# --------------------------------------------------------------------------- certificate
def _forty_matrix(seed=0):
    """A structured 40 x 40 affinity: 4 clusters (+1 within, -0.2 across) plus noise."""
    rng = np.random.default_rng(seed)
    cluster = np.arange(40) % 4
    matrix = np.where(cluster[:, None] == cluster[None, :], 1.0, -0.2)
    matrix = matrix + 0.5 * rng.normal(size=(40, 40))
    np.fill_diagonal(matrix, 0.0)
    return matrix


def test_certificate_says_optimal_only_when_proven():
    small = api.select_networks(_forty_matrix()[:6, :6], [2])[0]  # exact DP
    assert small.optimal and api.certificate(small) == "optimal"
    unproven = small._replace(optimal=False, gap=0.25, bound=1.5, objective=1.2)
    text = api.certificate(unproven)
    assert text == "gap 25% (bound 1.5, incumbent 1.2; not proven optimal)"
    assert api.certificate(unproven._replace(gap=math.nan)).startswith(
        "not proven optimal: no bound")
    as_json = api.selection_entries([unproven])[0]
    assert as_json["certificate"] == text and api.certificate(as_json) == text
    report = api.format_selections([unproven])
    assert "certificate: gap 25%" in report and "25 (not proven optimal)" in report


def test_pipeline_selects_forty_tasks_with_the_large_solver(tmp_path, caplog):
    tasks = list(data.ATTRIBUTES)
    path = str(tmp_path / "affinity.json")
    affinity_io.save_affinity_json(path, affinity_io.AffinityRecord(tasks, _forty_matrix()))
    # The 40 x 40 heatmap is tested in test_heatmap.py; drawing it here would take seconds.
    with caplog.at_level("INFO"), mock.patch.object(choose.heatmap,
                                                     "save_record_heatmap") as draw:
        entry = choose.select(path, tasks, SelectionConfig(budgets=(1, 2), bootstrap=50,
                                                           time_limit=1.0), str(tmp_path))
    assert draw.call_args.kwargs["selection"]["budget"] == 1
    with open(entry["path"]) as f:
        payload = json.load(f)
    assert payload["solver"]["resolved"] == "large"
    assert payload["solver"]["time_limit_per_budget"] == 1.0
    assert payload["uncertainty"]["skipped"].startswith("not assessed: the bootstrap is "
                                                        "limited to")
    one, two = payload["selections"]
    assert one["method"] == "large" and one["optimal"] and one["certificate"] == "optimal"
    assert two["method"] == "large" and math.isfinite(two["gap"]) and two["gap"] >= 0
    assert two["bound"] >= two["objective"] - 1e-9  # maximised: the bound is above
    assert two["certificate"] == api.certificate(two)
    if not two["optimal"]:
        assert two["certificate"].startswith(f"gap {100 * two['gap']:.3g}%")
    assert sorted(two["served_by"]) == sorted(tasks)
    logged = caplog.text
    assert "Selecting networks for 40 tasks" in logged
    assert "budget 2 (large" in logged and two["certificate"] in logged
    summary = pipeline.format_summary({
        "mode": "affinity", "tasks": tasks, "seconds": 1.0, "networks": [],
        "test_error": {t: None for t in tasks}, "test_loss": {t: None for t in tasks},
        "total_test_error": None,
        "affinity": {"measure": "lookahead", "path": path, "tasks": tasks,
                     "matrix": _forty_matrix().tolist(), "epochs_used": [0]},
        "selection": entry})
    assert "40 x 40 matrix" in summary and "source \\ target" not in summary
    assert f"objective {two['objective']:.4g}, {two['certificate']}" in summary
    assert "the large solver" in summary


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def affinity_dir(small_data_dir, run_main, tmp_path_factory):
    """The affinity mode with 40 heads, run eagerly: tracing the 40-task recording step
    costs far more than the toy run's 4 steps (see celeba/README.md, "All 40 attributes")."""
    out = str(tmp_path_factory.mktemp("affinity40"))
    tf.config.run_functions_eagerly(True)
    try:
        run_main(["--mode=affinity", "--tasks=all", f"--data_dir={small_data_dir}",
                  f"--output_dir={out}", "--epochs=2", "--budgets=2,3",
                  "--selection_time_limit=2", *COMMON])
    finally:
        tf.config.run_functions_eagerly(False)
    return out


@pytest.mark.slow
def test_affinity_with_forty_heads_selects_with_a_certificate(affinity_dir):
    tasks = list(data.ATTRIBUTES)
    with open(os.path.join(affinity_dir, "results.json")) as f:
        results = json.load(f)
    assert results["tasks"] == tasks and results["config"]["selection"]["time_limit"] == 2.0
    assert all(0 <= results["test_error"][t] <= 100 for t in tasks)
    record = affinity_io.load_affinity(os.path.join(affinity_dir, "affinity.json"))
    assert record.tasks == tasks and record.affinity.shape == (40, 40)
    assert np.isfinite(record.affinity).all() and (record.counts == 4).all()  # 2 x 2 steps
    with open(os.path.join(affinity_dir, "selection.json")) as f:
        payload = json.load(f)
    assert payload["tasks"] == tasks and payload["solver"]["resolved"] == "large"
    assert [s["budget"] for s in payload["selections"]] == [2, 3]
    for s in payload["selections"]:
        assert s["method"] == "large"
        assert s["bound"] is not None and s["gap"] is not None and s["gap"] >= 0
        assert s["certificate"] == api.certificate(s)
        assert s["optimal"] == (s["certificate"] == "optimal")
        assert 1 <= len(s["networks"]) <= s["budget"]
        assert sorted(s["served_by"]) == sorted(tasks)
    assert results["selection"]["selections"] == payload["selections"]


@pytest.mark.slow
def test_groups_from_a_forty_task_selection(small_data_dir, affinity_dir, run_main, tmp_path,
                                            eager):
    out = str(tmp_path / "groups")
    run_main(["--mode=groups", f"--data_dir={small_data_dir}", f"--output_dir={out}",
              "--epochs=1", f"--selection={affinity_dir}/selection.json", "--budget=2",
              *COMMON])
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(affinity_dir, "selection.json")) as f:
        chosen = next(s for s in json.load(f)["selections"] if s["budget"] == 2)
    assert [n["tasks"] for n in results["networks"]] == [n["tasks"] for n in chosen["networks"]]
    assert results["tasks"] == list(data.ATTRIBUTES)  # every task served, in file order
    assert all(results["test_error"][t] is not None for t in data.ATTRIBUTES)
    assert results["total_test_error"] == pytest.approx(sum(results["test_error"].values()))
