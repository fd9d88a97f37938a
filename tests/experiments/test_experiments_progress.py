"""Harness progress lines, honest training counters, the RG note; solve_large progress."""

import logging
import os
import re

import numpy as np

from tag_tf import runner
from tag_tf.experiments import adapter as adapter_lib
from tag_tf.experiments import cache as cache_lib
from tag_tf.experiments import figure3, report
from tag_tf.experiments.harness import (Harness, Progress, Training, format_duration,
                                        rg_saturation_note)
from tag_tf.selection import large

TOY = dict(num_tasks=4, num_clusters=2, train_examples=64, validation_examples=32,
           test_examples=32, batch_size=32, epochs=1, hidden=4, bottleneck=2, head_hidden=2)


def _fake_training(monkeypatch, calls):
    """runner.run without TensorFlow: records the call and returns a result."""
    def run(mode, experiment, config, *, output_dir=None):
        calls.append((mode, tuple(experiment.tasks)))
        results = runner.RunResult(
            mode=mode, tasks=tuple(experiment.tasks), config=config, seconds=2.0,
            networks=(), test_error={t: 1.0 for t in experiment.tasks}, test_loss={},
            total_test_error=float(len(calls)), mean_test_error=None, error_name="mse")
        runner.write_results(os.path.join(output_dir, "results.json"), results)
        return results
    monkeypatch.setattr(runner, "run", run)


def _harness(tmp_path, lines):
    return Harness(adapter_lib.SyntheticAdapter(**TOY), str(tmp_path / "cache"),
                   log=lines.append)


def _progress(lines):
    return [line for line in lines if line.startswith("[")]


def test_progress_lines_count_planned_trainings(tmp_path, monkeypatch):
    calls, lines = [], []
    _fake_training(monkeypatch, calls)
    harness = _harness(tmp_path, lines)
    harness.train(["task_0", "task_1"])  # nothing planned yet: N unknown
    assert re.fullmatch(r"\[1/\?\] mtl on \{task_0, task_1\}; elapsed \d+s, ETA \?",
                        _progress(lines)[0])
    new = harness.plan([Training(("task_0", "task_1")),  # already cached: not counted
                        Training(("task_2",)), Training(("task_3",), "uw"),
                        harness.affinity_training("lookahead")], complete=False)
    assert new == 3
    harness.train(["task_2"])
    assert _progress(lines)[1].startswith("[2/>=4] mtl on {task_2}; elapsed ")
    assert _progress(lines)[1].endswith("ETA >=6s")  # 2 s per training so far, 3 to go
    harness.plan([Training(("task_0", "task_3"))])  # now complete
    harness.train(["task_3"], "uw")
    assert _progress(lines)[2].startswith("[3/5] uw on {task_3}; ")
    assert _progress(lines)[2].endswith("ETA 6s")
    tag = harness.affinity_training("lookahead")  # what harness.affinity() trains
    harness.train(tag.tasks, tag.mode, **dict(tag.overrides))
    assert _progress(lines)[-1].startswith("[4/5] affinity on {task_0, task_1, task_2, task_3}")
    harness.train(["task_3", "task_0"])
    assert _progress(lines)[-1].startswith("[5/5] mtl on {task_0, task_3}; ")
    harness.train(["task_1", "task_2"])  # beyond the plan: N unknown again
    assert _progress(lines)[-1].startswith("[6/?] mtl on {task_1, task_2}; ")
    harness.train(["task_2"])  # cached: no line
    assert len(_progress(lines)) == 6 and len(calls) == 6


def test_progress_is_shared_and_formats_durations():
    lines = []
    progress = Progress(lines.append)
    progress.plan(["a", "b"])
    assert progress.total() == (2, True)
    progress.started("mtl on {x}")
    progress.finished("a", 100.0)
    assert progress.line("mtl on {y}").startswith("[2/2] mtl on {y}; ")
    assert progress.line("mtl on {y}").endswith("ETA 1m40s")
    assert [format_duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]


def test_counters_separate_cache_reuse_from_sharing(tmp_path, monkeypatch):
    calls, lines = [], []
    _fake_training(monkeypatch, calls)
    harness = _harness(tmp_path, lines)
    for tasks in (["task_0"], ["task_1"], ["task_0"], ["task_0"]):
        harness.train(tasks)
    cache = harness.cache
    assert (cache.misses, cache.hits, cache.shared) == (2, 0, 2)
    assert cache.summary() == "2 trainings run, 0 reused from the cache, 2 shared between methods"
    again = _harness(tmp_path, lines)  # another command on the same cache
    for tasks in (["task_0"], ["task_0"], ["task_1"], ["task_2"]):
        again.train(tasks)
    assert (again.cache.misses, again.cache.hits, again.cache.shared) == (1, 2, 1)
    counts = report.training_counts([harness.cache, again.cache])
    assert counts == {"trainings_run": 3, "trainings_reused": 2, "trainings_shared": 3}
    text = report.training_counts_text({**counts, "seconds": 12.0})
    assert text.startswith("3 trainings run, 2 reused from the cache, 3 shared between")
    assert text.endswith("12 s in all.")


def test_cache_counts_in_process_reuse_as_shared(tmp_path):
    cache = cache_lib.Cache(str(tmp_path))

    def produce(directory):
        runner.write_results(os.path.join(directory, "results.json"), {"x": 1})
        return {"x": 1}

    cache.get_or_run({"a": 1}, produce)
    cache.get_or_run({"a": 1}, produce)
    assert (cache.misses, cache.hits, cache.shared) == (1, 0, 1)
    assert cache.holds({"a": 1}) and not cache.holds({"a": 2})


def test_rg_saturation_note():
    note = rg_saturation_note(6, [2, 3, 4])
    assert "at most 6 // 2 = 3 groups" in note and "budgets 3, 4" in note
    assert rg_saturation_note(6, [2, 3]) is None  # only one budget at the cap
    assert rg_saturation_note(9, [2, 3, 4]) is None


def test_figure3_markdown_has_counts_and_rg_note():
    rows = {m: {"time_to_find_groups": None,
                "budgets": {b: {"total_error": 1.0, "networks": [{"tasks": ["task_0"]}]}
                            for b in (2, 3, 4)}} for m in figure3.GROUPED + figure3.UNGROUPED}
    payload = {"methods": rows, "budgets": [2, 3, 4], "error_name": "mse",
               "adapter": "synthetic", "tasks": [f"task_{i}" for i in range(6)],
               "seconds": 7.0, "trainings_run": 39, "trainings_reused": 0,
               "trainings_shared": 46}
    md = figure3.format_markdown(payload)
    assert "39 trainings run, 0 reused from the cache, 46 shared between methods" in md
    assert "RG saturates at 3 networks" in md
    assert md.index("| PCGrad |") < md.index("RG saturates") < md.index("Chosen groups")


def _matrix(n, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n))


def test_solve_large_reports_progress_to_a_callback():
    reports = []
    sel = large.solve_large(_matrix(6, 3), 3, time_limit=4.0, progress=reports.append,
                            progress_every=0.0)
    assert reports, "no progress report"
    phases = {r["phase"] for r in reports}
    assert "local search" in phases and "column generation" in phases
    for r in reports:
        assert set(r) == {"budget", "phase", "iteration", "seconds", "incumbent", "bound",
                          "gap"}
        assert r["budget"] == 3 and r["iteration"] >= 1
        assert r["incumbent"] <= sel.objective + 1e-12  # maximising: the incumbent improves
    bounded = [r for r in reports if r["bound"] is not None]
    assert all(r["bound"] >= sel.objective - 1e-7 and r["gap"] >= -1e-9 for r in bounded)


def test_solve_large_logs_progress_with_absl(caplog):
    with caplog.at_level(logging.INFO):
        large.solve_large(_matrix(6, 4), 2, time_limit=4.0, progress_every=0.0)
    messages = [r.getMessage() for r in caplog.records if "solve_large" in r.getMessage()]
    assert any(re.search(r"solve_large budget 2, local search iteration 1, \d+ s: "
                         r"incumbent -?[\d.e-]+, bound n/a, gap n/a", m) for m in messages)
    assert any("column generation" in m for m in messages)


def test_solve_large_is_quiet_below_the_interval():
    reports = []
    large.solve_large(_matrix(6, 4), 2, time_limit=4.0, progress=reports.append,
                      progress_every=3600.0)
    assert reports == []
