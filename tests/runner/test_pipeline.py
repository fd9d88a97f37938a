"""tag_tf.runner: selection input, epoch restriction, early-stopping monitor, and tiny runs."""

import json
import os
import re

import keras
import numpy as np
import pytest

from tag_tf.io import affinity_io
from tag_tf.runner import affinity as affinity_lib
from tag_tf.runner import choose
from tag_tf.runner import modes
from tag_tf.runner import pipeline
from tag_tf.runner import train
from tag_tf.runner.config import RunConfig, SelectionConfig
from tag_tf.stats import uncertainty
from tag_tf.selection import api as selection_api
from tests.toys import planted_experiment


# ----------------------------------------------------------------------------- fast
def _write(path, payload):
    with open(path, "w") as f:
        json.dump(payload, f)
    return str(path)


def test_load_selection_formats(tmp_path):
    tasks = ["a", "b", "c", "d"]
    matrix = np.array([[0, 3, -1, -1], [3, 0, -1, -1], [-1, -1, 0, 2], [-1, -1, 2, 0.]])
    affinity_path = str(tmp_path / "affinity.json")
    affinity_io.save_affinity_json(affinity_path, affinity_io.AffinityRecord(tasks, matrix))
    path = str(tmp_path / "selection.json")
    selection_api.run_selection(affinity_path=affinity_path, budgets=[1, 2], output_path=path)
    chosen = pipeline.load_selection(path, budget=2)
    assert chosen.budget == 2 and sorted(chosen.tasks) == tasks
    assert [n.tasks for n in chosen.networks] == [("a", "b"), ("c", "d")]
    with pytest.raises(ValueError, match="budgets"):
        pipeline.load_selection(path)  # two budgets: which one?

    with open(path) as f:
        one = json.load(f)["selections"][1]
    tables = _write(tmp_path / "tables.json", {"tables": [
        {"name": "TAG", "selections": [one]}, {"name": "CS", "selections": [one]}]})
    assert pipeline.load_selection(tables, table="CS").networks == chosen.networks
    with pytest.raises(ValueError, match="tables"):
        pipeline.load_selection(tables)

    bare = _write(tmp_path / "bare.json", {"networks": [
        {"tasks": ["a", "b", "c"], "serves": ["a", "b"]}, {"tasks": ["c", "a"]}]})
    chosen = pipeline.load_selection(bare)
    assert chosen.networks[1].serves == ("c",)  # "a" is already served by network 1
    bad = _write(tmp_path / "bad.json", {"networks": [{"tasks": ["a"], "serves": ["b"]}]})
    with pytest.raises(ValueError, match="does not train"):
        pipeline.load_selection(bad)
    with pytest.raises(FileNotFoundError):
        pipeline.load_selection(str(tmp_path / "missing.json"))


def test_restrict_epochs_is_the_count_weighted_mean():
    epochs = [
        {"epoch": 0, "affinity": [[1.0, 2.0], [None, 4.0]], "counts": [[1, 1], [0, 1]],
         "skipped": [[0, 0], [1, 0]]},
        {"epoch": 1, "affinity": [[3.0, 2.0], [5.0, 0.0]], "counts": [[3, 1], [2, 1]],
         "skipped": [[0, 0], [0, 0]]},
        {"epoch": 2, "affinity": [[9.0, 9.0], [9.0, 9.0]], "counts": [[1, 1], [1, 1]],
         "skipped": [[0, 0], [0, 0]]},
    ]
    record = affinity_io.AffinityRecord(["a", "b"], np.zeros((2, 2)), epochs=epochs, config={})
    restricted = affinity_lib.restrict_epochs(record, 1)
    np.testing.assert_allclose(restricted.affinity, [[2.5, 2.0], [5.0, 2.0]])
    np.testing.assert_array_equal(restricted.counts, [[4, 2], [2, 2]])
    np.testing.assert_array_equal(restricted.skipped, [[0, 0], [1, 0]])
    assert restricted.config["epochs_used"] == [0, 1]
    assert len(restricted.epochs) == 3  # the trace itself is kept


def test_summed_validation_loss():
    callback = train.SummedValidationLoss(["a", "b"])
    logs = {"val_a_unweighted_loss": 1.0, "val_b_unweighted_loss": 2.5, "val_loss": 9.0}
    callback.on_epoch_end(0, logs)
    assert logs["val_summed_loss"] == 3.5
    single = {"val_unweighted_loss": 0.5}  # Keras does not prefix a single output's metrics
    train.SummedValidationLoss(["a"]).on_epoch_end(0, single)
    assert single["val_summed_loss"] == 0.5


def test_argument_errors(tmp_path):
    experiment = planted_experiment()
    with pytest.raises(ValueError, match="mode"):
        pipeline.run("tag", experiment)
    with pytest.raises(ValueError, match="selection_path"):
        pipeline.run("groups", experiment)
    other = _write(tmp_path / "sel.json", {"networks": [{"tasks": ["task_0", "zzz"]}]})
    with pytest.raises(ValueError, match="zzz"):
        pipeline.run("groups", experiment, RunConfig().replace(selection_path=other))
    with pytest.raises(ValueError, match="groups"):
        pipeline.run("mtl", experiment, RunConfig().replace(mtl_results="m.json"))
    for bad in (dict(epochs=0), dict(patience=-1), dict(affinity_epochs="best"),
                dict(seeds=0), dict(bootstrap=-1)):
        with pytest.raises(ValueError, match="Received: "):
            RunConfig().replace(**bad)
    with pytest.raises(ValueError, match="affinity_measure='cosine'"):
        pipeline.run("affinity", experiment, RunConfig().replace(affinity_measure="cosine"))


def test_format_summary():
    results = {
        "mode": "groups", "tasks": ["a", "b"], "seconds": 1.0, "error_name": "error",
        "networks": [{"tasks": ["a", "b"], "serves": ["a"], "epochs_run": 3, "best_epoch": 1,
                      "stopped_early": True, "best_validation_loss": 0.5, "seconds": 0.5},
                     {"tasks": ["b"], "serves": ["b"], "epochs_run": 2, "best_epoch": 1,
                      "stopped_early": False, "best_validation_loss": None, "seconds": 0.5}],
        "test_error": {"a": 1.5, "b": None}, "test_loss": {"a": 0.1, "b": None},
        "total_test_error": None,
        "groups": {"selection_path": "s.json", "budget": 2, "table": "TAG"},
    }
    text = pipeline.format_summary(results)
    assert "mode groups: 2 task(s), 2 network(s)" in text
    assert "best 2 (early stop)" in text and "n/a" in text and "table TAG" in text


def test_affinity_config_of_each_mode():
    options = RunConfig().replace(every_n=3, lookahead_rule="optimizer", divide_by_lr=True,
                                  affinity_window="first")
    config = train.affinity_config("affinity", options, None)
    assert (config.every_n, config.rule, config.divide_by_lr, config.window) == (
        3, "optimizer", True, "first")
    assert train.affinity_config("cs", options, None).measures == ("cosine",)
    assert train.affinity_config("mtl", options, None) is None
    assert options.to_json()["affinity"]["window"] == "first"
    assert [modes.measure_of(m) for m in ("affinity", "cs", "mtl")] == [
        "lookahead", "cosine", None]
    also = options.replace(affinity=options.affinity.__class__(measures=("lookahead", "taylor")))
    assert train.affinity_config("cs", also, None).measures == ("cosine", "taylor")


def _traced_record(epochs=6, noise=0.05, seed=0):
    """Two planted pairs {a,b} {c,d}, one noisy matrix per epoch, as AffinityLogger writes."""
    rng = np.random.default_rng(seed)
    tasks = ["a", "b", "c", "d"]
    truth = np.array([[0, 3, -1, -1], [3, 0, -1, -1], [-1, -1, 0, 2], [-1, -1, 2, 0.]])
    means = truth + noise * rng.standard_normal((epochs, 4, 4))
    trace = [{"epoch": e, "affinity": m.tolist(), "counts": np.full((4, 4), 5).tolist(),
              "skipped": np.zeros((4, 4), int).tolist()} for e, m in enumerate(means)]
    return affinity_io.AffinityRecord(tasks, means.mean(axis=0), counts=np.full((4, 4), 30),
                                      epochs=trace, config={})


def test_epoch_stderr_uses_only_the_epochs_of_the_mean():
    record = affinity_lib.restrict_epochs(_traced_record(), 3)  # epochs 0..3 of 0..5
    with_stderr = affinity_lib.with_epoch_stderr(record)
    expected = uncertainty.from_epochs(record.epochs[:4])
    np.testing.assert_allclose(with_stderr.stderr, expected.stderr)
    assert with_stderr.block_means.shape == (4, 4, 4) and len(with_stderr.epochs) == 6
    one_epoch = affinity_lib.restrict_epochs(_traced_record(), 0)
    assert affinity_lib.with_epoch_stderr(one_epoch).stderr is None  # no estimate from 1 block


def test_selection_json_carries_robustness(tmp_path):
    path = str(tmp_path / "affinity.json")
    affinity_io.save_affinity_json(path, affinity_lib.with_epoch_stderr(_traced_record()))
    entry = choose.select(path, ["a", "b", "c", "d"],
                          SelectionConfig(budgets=(1, 2, 3), bootstrap=40), str(tmp_path),
                          seed=1)
    with open(entry["path"]) as f:
        payload = json.load(f)
    assert "epoch" in payload["uncertainty"]["source"]
    assert payload["uncertainty"]["resamples"] == 40 and payload["uncertainty"]["seed"] == 1
    by_budget = {s["budget"]: s["robustness"] for s in payload["selections"]}
    for r in by_budget.values():
        assert {"stability", "objective_ci", "alternative", "margin", "verdict"} <= set(r)
    assert by_budget[1]["verdict"] == "forced"
    assert by_budget[2]["verdict"] == "stable within this run"  # one run: never "robust"
    assert by_budget[2]["stability"] == 1.0 and by_budget[2]["runs"] == 1
    assert payload["uncertainty"]["runs"] == 1
    assert payload["uncertainty"]["evidence"] == "within-run"
    assert entry["selections"] == payload["selections"]
    summary = pipeline.format_summary({
        "mode": "affinity", "tasks": ["a"], "seconds": 0.0, "networks": [],
        "test_error": {"a": 1.0}, "test_loss": {"a": 1.0}, "total_test_error": 1.0,
        "selection": entry})
    assert "STABLE WITHIN THIS RUN: stability 1.00" in summary and "FORCED" in summary
    assert "seed-to-seed variance unknown" in summary and "--seeds=K" in summary

    noisy = str(tmp_path / "noisy" / "affinity.json")
    affinity_io.save_affinity_json(noisy, _traced_record(epochs=6, noise=20.0))
    entry = choose.select(noisy, ["a", "b", "c", "d"], SelectionConfig(budgets=(2,), bootstrap=40),
                          str(tmp_path / "noisy"))
    assert entry["selections"][0]["robustness"]["verdict"] == "within noise"

    bare = str(tmp_path / "bare" / "affinity.json")  # one epoch, no stderr: not assessed
    record = _traced_record(epochs=1)
    affinity_io.save_affinity_json(bare, record)
    entry = choose.select(bare, record.tasks, SelectionConfig(budgets=(2,), bootstrap=40),
                          str(tmp_path / "bare"))
    assert "not assessed" in entry["uncertainty"]["skipped"]
    assert entry["selections"][0]["robustness"] is None

    same = str(tmp_path / "same" / "affinity.json")  # identical runs: zero spread
    affinity_io.save_affinity_json(same, affinity_io.pool_records([record, record]))
    entry = choose.select(same, record.tasks, SelectionConfig(budgets=(2,), bootstrap=40),
                          str(tmp_path / "same"))
    assert "zero" in entry["uncertainty"]["skipped"]


def _old_robustness(verdict="robust"):
    """A robustness entry as files wrote it before verdicts named their evidence."""
    return {"resamples": 40, "seed": 0, "source": "block bootstrap over 6 blocks",
            "stability": 1.0, "confidence": 0.95, "objective_ci": [0.1, 0.2],
            "objective_se": 0.01, "alternative": [["a", "b", "c", "d"]],
            "alternative_source": "runner-up on the point estimate",
            "alternative_frequency": 0.0, "alternative_objective": 0.05, "difference": 0.1,
            "difference_se": 0.01, "margin": 10.0, "verdict": verdict, "advice": "-"}


def test_old_files_robust_from_one_run_is_not_read_as_robust_across_seeds(tmp_path):
    networks = [{"tasks": ["a", "b"], "serves": ["a", "b"]},
                {"tasks": ["c", "d"], "serves": ["c", "d"]}]
    old = {"format": "tag_tf.selection/v1", "pooled_runs": 1, "selections": [
        {"budget": 2, "networks": networks, "robustness": _old_robustness()}]}
    chosen = pipeline.load_selection(_write(tmp_path / "old.json", old), budget=2)
    assert [n.tasks for n in chosen.networks] == [("a", "b"), ("c", "d")]
    assert chosen.robustness["verdict"] == "stable within this run"
    assert chosen.robustness["relabelled_from"] == "robust"
    assert chosen.robustness["runs"] == 1 and chosen.robustness["evidence"] == "within-run"
    pooled = dict(old, pooled_runs=3)  # an old file pooled from 3 runs says so explicitly
    chosen = pipeline.load_selection(_write(tmp_path / "pooled.json", pooled), budget=2)
    assert chosen.robustness["verdict"] == "robust" and chosen.robustness["runs"] == 3
    bare = {"networks": networks}  # no robustness at all
    assert pipeline.load_selection(_write(tmp_path / "bare.json", bare)).robustness is None
    # An old results.json (one seed, "robust_if", no runs) prints the new words.
    summary = pipeline.format_summary({
        "mode": "affinity", "tasks": ["a"], "seconds": 0.0, "networks": [],
        "test_error": {"a": 1.0}, "test_loss": {"a": 1.0}, "total_test_error": 1.0,
        "selection": {"path": "selection.json", "selections": [
            {"budget": 2, "networks": networks, "objective": 0.1, "optimal": True,
             "robustness": _old_robustness()}],
            "uncertainty": {"source": "block bootstrap over 6 blocks", "resamples": 40,
                            "seed": 0, "confidence": 0.95,
                            "robust_if": "stability >= 0.8 and margin >= 2.0 SE"}}})
    assert "STABLE WITHIN THIS RUN: stability 1.00" in summary
    assert re.search(r"\brobust\b", summary, flags=re.IGNORECASE) is None, summary


def _results(totals_by_seed, tasks=("a", "b")):
    """Made-up results.json content: per-seed errors split evenly over ``tasks``."""
    runs = [{"test_error": {t: total / len(tasks) for t in tasks}} for total in totals_by_seed]
    return {"tasks": list(tasks), "test_error": runs[0]["test_error"],
            **({"runs": runs} if len(runs) > 1 else {})}


def test_compare_errors_states_beat_or_within_spread():
    groups = _results([10.0, 10.2])  # std 0.141
    beat = pipeline.compare_errors(groups, _results([11.0, 11.2]), name="MTL")
    assert beat["verdict"] == "better" and beat["difference"] == pytest.approx(1.0)
    assert beat["spread"] == pytest.approx(0.2)  # hypot(0.141, 0.141)
    assert beat["statement"] == "groups beat MTL by 1 ± 0.2 (more than the seed spread)"
    within = pipeline.compare_errors(groups, _results([10.0, 10.4]), name="STL")
    assert within["verdict"] == "within spread"
    assert within["statement"] == ("groups are better than STL by 0.1 ± 0.3162 total error, "
                                   "within the seed-to-seed spread")
    worse = pipeline.compare_errors(groups, _results([9.0]), name="MTL")
    assert worse["verdict"] == "worse" and "MTL ran one seed" in worse["note"]
    unknown = pipeline.compare_errors(_results([10.0]), _results([9.0]), name="MTL")
    assert unknown["verdict"] == "unknown" and unknown["spread"] is None
    with pytest.raises(ValueError, match="no test error for task"):
        pipeline.compare_errors(groups, _results([9.0, 9.1], tasks=("a",)), name="MTL")


# ----------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_affinity_selection_groups_chain(tmp_path):
    experiment = planted_experiment()
    options = RunConfig().replace(epochs=2, patience=1, verbose=0, every_n=1, budgets=(1, 2, 9),
                                  affinity_epochs="until_best")
    out = str(tmp_path / "affinity")
    results = pipeline.run("affinity", experiment, options, output_dir=out)
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f) == json.loads(json.dumps(results.to_json()))
    assert pipeline.load_results(os.path.join(out, "results.json")).config == options
    with open(results["selection"]["path"]) as f:  # selection.json records it too
        assert RunConfig.from_json(json.load(f)["config"]) == options
    network = results["networks"][0]
    summed = network["history"]["val_summed_loss"]
    assert network["best_epoch"] == int(np.argmin(summed))
    record = affinity_io.load_affinity(os.path.join(out, "affinity.json"))
    used = results["affinity"]["epochs_used"]
    last = network["best_epoch"] if network["stopped_early"] else network["epochs_run"] - 1
    assert used == list(range(last + 1)) == record.config["epochs_used"]
    expected = affinity_lib.restrict_epochs(record, last)
    np.testing.assert_allclose(record.affinity, expected.affinity)
    assert np.isfinite(record.affinity).all() and record.affinity.shape == (3, 3)
    assert results["selection"]["budgets"] == [1, 2]  # 9 > 3 tasks is dropped
    for task in experiment.tasks:  # error_fn=None: the error is the test loss
        assert results["test_error"][task] == results["test_loss"][task] > 0

    groups = pipeline.run("groups", experiment, RunConfig().replace(
        epochs=1, verbose=0, patience=None, selection_path=results["selection"]["path"],
        budget=2), output_dir=str(tmp_path / "groups"))
    chosen = pipeline.load_selection(results["selection"]["path"], budget=2)
    assert [tuple(n["tasks"]) for n in groups["networks"]] == [n.tasks for n in chosen.networks]
    assert sorted(groups["test_error"]) == sorted(experiment.tasks)
    assert groups["total_test_error"] == pytest.approx(sum(groups["test_error"].values()))
    assert "mode groups" in pipeline.format_summary(groups)


@pytest.mark.slow
def test_stl_with_an_error_metric(tmp_path):
    experiment = planted_experiment(2, error_fn=lambda task: keras.metrics.MeanAbsoluteError(
        name="mae"), error_name="mae", test_data=None)
    results = pipeline.run("stl", experiment, RunConfig().replace(epochs=1, verbose=0),
                           output_dir=str(tmp_path))
    assert [n["tasks"] for n in results["networks"]] == [["task_0"], ["task_1"]]
    for network in results["networks"]:
        assert network["test_split"] == "validation"
        (task,) = network["tasks"]
        assert results["test_error"][task] == network["test"][task]["error"] > 0
        assert results["test_error"][task] != results["test_loss"][task]



def _seeded_experiment():
    return planted_experiment(for_seed=lambda seed: planted_experiment(seed=seed))


@pytest.mark.slow
def test_affinity_with_two_seeds_pools_the_runs(tmp_path):
    options = RunConfig().replace(epochs=2, patience=None, verbose=0, every_n=1, budgets=(2,),
                                  seeds=2, seed=5, bootstrap=30)
    out = str(tmp_path / "affinity")
    results = pipeline.run("affinity", _seeded_experiment(), options, output_dir=out)
    assert results["seeds"] == [5, 6]
    runs = [affinity_io.load_affinity(os.path.join(out, f"seed_{s}", "affinity.json"))
            for s in (5, 6)]
    assert all(r.stderr is not None for r in runs)  # batch-means SE over the 2 epochs
    assert not np.allclose(runs[0].affinity, runs[1].affinity)  # the seeds differ
    pooled = affinity_io.load_affinity(os.path.join(out, "affinity.json"))
    for order in (runs, runs[::-1]):
        expected = affinity_io.pool_records(order)
        np.testing.assert_array_equal(pooled.affinity, expected.affinity)
        np.testing.assert_array_equal(pooled.stderr, expected.stderr)
    assert os.path.exists(os.path.join(out, "affinity.npz"))
    assert not os.path.exists(os.path.join(out, "seed_5", "selection.json"))
    with open(os.path.join(out, "selection.json")) as f:
        selection = json.load(f)
    # 2 runs with 2 epochs each: Student-t (1 df) between the runs, then their epochs.
    assert selection["uncertainty"]["source"].startswith(
        "two-stage: Student-t draws (1 df) from the spread of 2 runs, then 2 blocks")
    assert selection["uncertainty"]["runs"] == 2
    assert selection["uncertainty"]["evidence"] == "across-runs"
    assert selection["selections"][0]["robustness"]["verdict"] in ("robust", "within noise")
    for task in results["tasks"]:
        per_seed = [run["test_error"][task] for run in results["runs"]]
        assert results["test_error"][task] == pytest.approx(np.mean(per_seed))
        assert results["test_error_std"][task] == pytest.approx(np.std(per_seed, ddof=1))
    summary = pipeline.format_summary(results)
    assert "pooled over seeds [5, 6]" in summary and " ± " in summary
    assert "the between-run part rests on 2 runs" in summary


@pytest.mark.slow
def test_groups_with_two_seeds_reports_spread_and_compares(tmp_path):
    experiment = _seeded_experiment()
    tasks = list(experiment.tasks)
    selection = _write(tmp_path / "sel.json", {"networks": [{"tasks": tasks[:2]},
                                                            {"tasks": tasks[2:]}]})
    made_up = {"mtl": 1e6, "stl": 0.0}  # far worse / far better than any real run
    paths = {}
    for name, error in made_up.items():
        paths[name] = _write(tmp_path / f"{name}.json", {
            "tasks": tasks, "test_error": {t: error for t in tasks},
            "runs": [{"test_error": {t: error + d for t in tasks}} for d in (0.0, 0.01)]})
    options = RunConfig().replace(epochs=1, patience=None, verbose=0, seeds=2,
                                  selection_path=selection, mtl_results=paths["mtl"],
                                  stl_results=paths["stl"])
    out = str(tmp_path / "groups")
    results = pipeline.run("groups", experiment, options, output_dir=out)
    assert len(results["networks"]) == 4 and len(results["runs"]) == 2
    assert all(os.path.exists(os.path.join(out, f"seed_{s}", "results.json")) for s in (0, 1))
    totals = [run["total_test_error"] for run in results["runs"]]
    assert results["total_test_error_std"] == pytest.approx(np.std(totals, ddof=1))
    assert results["total_test_error_std"] > 0  # the seeds differ
    mtl, stl = results["groups"]["comparisons"]
    assert mtl["verdict"] == "better" and "groups beat MTL by" in mtl["statement"]
    assert stl["verdict"] == "worse" and "groups lose to STL by" in stl["statement"]
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["groups"]["comparisons"][0]["reference"] == "MTL"
    summary = pipeline.format_summary(results)
    assert "(more than the seed spread)" in summary and " ± " in summary


@pytest.mark.parametrize("mode, part, cls", [("dwa", "weighting", "DynamicWeightAverage"),
                                             ("mgda", "gradient", "MGDA")])
def test_dwa_and_mgda_modes_train_through_the_runner(mode, part, cls, tmp_path, eager):
    """Issue 22's two methods are runner modes (``--mode=dwa`` / ``--mode=mgda`` on the
    dataset scripts): one registry entry each, trained like any other mode."""
    import tag_tf  # pylint: disable=g-import-not-at-top
    config = RunConfig().replace(epochs=3, verbose=0)
    experiment = planted_experiment(3)
    parts = modes.get(mode).method(config, experiment)
    assert list(parts) == [part] and isinstance(parts[part], getattr(tag_tf, cls))
    result = pipeline.run(mode, experiment, config, output_dir=str(tmp_path / mode))
    assert result.mode == mode and sorted(result.test_error) == sorted(experiment.tasks)
    assert all(np.isfinite(v) for v in result.test_error.values())
    with open(tmp_path / mode / "results.json") as f:
        assert json.load(f)["mode"] == mode
