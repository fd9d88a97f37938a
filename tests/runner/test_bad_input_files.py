"""Input files a dataset dropped (``skip_bad_files``) reach the run's outputs: a warning in
the log, ``bad_input_files`` in ``results.json`` (kept when loaded again) and one summary line."""

import json
import logging
import os

import pytest

from tag_tf.io.bad_files import BadFiles
from tag_tf.runner import pipeline
from tag_tf.runner.config import RunConfig
from tag_tf.runner.results import RunResult, load_results
from tests.toys import planted_experiment

pytestmark = pytest.mark.filterwarnings("ignore:Even though:UserWarning")

DROPPED = BadFiles(3, [("/data/rgb/b1/a.png", "InvalidArgumentError: Invalid PNG data, size 200"),
                       ("/data/normal/b1/a.png", "missing (no such file)")])


def _result_json(**changes):
    payload = {"format": "tag_tf.runner/v2", "mode": "mtl", "tasks": ["a"], "seconds": 1.0,
               "error_name": "loss", "config": RunConfig().to_json(), "experiment": {},
               "networks": [{"tasks": ["a"], "serves": ["a"], "epochs_run": 1, "best_epoch": 0,
                             "stopped_early": False, "best_validation_loss": 0.5,
                             "seconds": 0.5, "history": {}, "test": {}}],
               "test_error": {"a": 0.5}, "test_loss": {"a": 0.5}, "total_test_error": 0.5,
               "mean_test_error": 0.5}
    payload.update(changes)
    return payload


def test_results_json_round_trip_keeps_bad_input_files(tmp_path):
    path = str(tmp_path / "results.json")
    with open(path, "w") as f:
        json.dump(_result_json(bad_input_files=DROPPED.to_json()), f)
    loaded = load_results(path)
    assert loaded.bad_input_files == DROPPED.to_json()
    assert "bad_input_files" not in loaded.extra
    assert loaded.to_json()["bad_input_files"] == DROPPED.to_json()
    assert BadFiles.from_json(loaded["bad_input_files"]) == DROPPED

    without = str(tmp_path / "old.json")  # written before the key existed, or nothing dropped
    with open(without, "w") as f:
        json.dump(_result_json(), f)
    old = load_results(without)
    assert old.bad_input_files is None and "bad_input_files" not in old.to_json()
    assert "skipped" not in pipeline.format_summary(old)


def test_summary_line_names_the_count_the_first_file_and_where_they_are_listed():
    text = pipeline.format_summary(RunResult.from_json(
        _result_json(bad_input_files=DROPPED.to_json())))
    lines = [line for line in text.splitlines() if "bad input file" in line]
    assert len(lines) == 1
    assert "3 bad input file(s) skipped" in lines[0]
    assert "/data/rgb/b1/a.png" in lines[0] and "'bad_input_files' in results.json" in lines[0]


def test_run_copies_the_experiments_report_into_results_and_warns(tmp_path, caplog, eager):
    out = str(tmp_path / "mtl")
    experiment = planted_experiment(2, bad_input_files=DROPPED)
    with caplog.at_level(logging.WARNING):
        result = pipeline.run("mtl", experiment, RunConfig().replace(epochs=1, verbose=0),
                              output_dir=out)
    assert result.bad_input_files == DROPPED.to_json()
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["bad_input_files"] == DROPPED.to_json()
    warnings = [r.getMessage() for r in caplog.records if "bad input file" in r.getMessage()]
    assert len(warnings) == 1 and "3 bad input file(s)" in warnings[0]
    assert "/data/rgb/b1/a.png" in warnings[0]

    clean = pipeline.run("mtl", planted_experiment(2, bad_input_files=BadFiles()),
                         RunConfig().replace(epochs=1, verbose=0), output_dir=str(tmp_path / "c"))
    assert clean.bad_input_files is None and "bad_input_files" not in clean.to_json()
