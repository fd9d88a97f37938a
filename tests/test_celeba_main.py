"""``python -m celeba.main`` end to end, every mode, on tiny fake CelebA (offline).

The fake original files go through the real TFDS celeb_a builder (``--mode=prepare``), then
each mode trains 16 x 16 images for 1-2 epochs and the written JSON is checked.
"""

import json
import math
import os
from unittest import mock

import numpy as np
import pytest
from tensorflow_datasets.core.download import download_manager

from celeba import main as celeba_main
from celeba import testing
from tag_tf import affinity_io

TASKS = ["Black_Hair", "Blond_Hair", "No_Beard"]
TWO_TASKS = TASKS[1:]  # the single-method modes: fewer heads (and STL networks), faster
COMMON = ["--batch_size=4", "--image_size=16", "--every_n=1", "--patience=1", "--verbose=0"]
TINY = ["--tasks=" + ",".join(TASKS), "--budgets=1,2,3", *COMMON]


def _no_network(*args, **kwargs):
    raise AssertionError("A test tried to download something.")


def run_main(argv):
    """Runs celeba.main's ``main`` with ``argv`` parsed into its own flag registry."""
    flags = celeba_main.FLAGS
    flags.unparse_flags()
    flags(["celeba.main", *argv])
    try:
        with mock.patch.object(download_manager.DownloadManager, "_download", _no_network):
            celeba_main.main(["celeba.main"])
    finally:
        flags.unparse_flags()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("celeba_main")
    files = str(root / "files")
    testing.write_fake_celeba(files, {"train": 12, "validation": 4, "test": 4})
    run_main(["--mode=prepare", f"--files_dir={files}", f"--data_dir={root / 'tfds'}",
              "--noverify_checksums"])
    return str(root / "tfds")


def _results(output_dir):
    with open(os.path.join(output_dir, "results.json")) as f:
        results = json.load(f)
    assert results["format"] == "tag_tf.pipeline/v1"
    assert results["error_name"] == "error_percent"
    for task in results["tasks"]:
        assert 0.0 <= results["test_error"][task] <= 100.0
        assert math.isfinite(results["test_loss"][task]) and results["test_loss"][task] > 0
    assert results["total_test_error"] == pytest.approx(sum(results["test_error"].values()))
    for network in results["networks"]:
        assert 1 <= network["epochs_run"] <= results["options"]["epochs"]
        assert network["history"]["val_summed_loss"]
    return results


def _check_matrix(path, tasks):
    record = affinity_io.load_affinity(path)
    assert record.tasks == tasks
    assert record.affinity.shape == (len(tasks), len(tasks))
    assert np.isfinite(record.affinity).all() and (record.counts > 0).all()
    return record


def _check_selection(path, tasks, budgets):
    with open(path) as f:
        payload = json.load(f)
    assert payload["tasks"] == tasks
    assert [s["budget"] for s in payload["selections"]] == budgets
    for selection in payload["selections"]:
        assert 1 <= len(selection["networks"]) <= selection["budget"]
        assert sorted(selection["served_by"]) == sorted(tasks)


def test_prepare_prints_the_splits(data_dir, capsys):
    run_main(["--mode=prepare", f"--files_dir={os.path.dirname(data_dir)}/files",
              f"--data_dir={data_dir}", "--noverify_checksums"])
    assert "{'train': 12, 'validation': 4, 'test': 4}" in capsys.readouterr().out.replace(
        "Split(", "").replace(")", "")


@pytest.fixture(scope="module")
def affinity_dir(data_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("affinity"))
    run_main(["--mode=affinity", f"--data_dir={data_dir}", f"--output_dir={out}",
              "--epochs=2", *TINY])
    return out


@pytest.mark.slow
def test_affinity(affinity_dir, capsys):
    results = _results(affinity_dir)
    assert results["mode"] == "affinity" and results["tasks"] == TASKS
    record = _check_matrix(os.path.join(affinity_dir, "affinity.json"), TASKS)
    assert results["affinity"]["epochs_used"] == record.config["epochs_used"]
    assert record.config["rule"] == "optimizer" and record.config["divide_by_lr"]
    _check_selection(os.path.join(affinity_dir, "selection.json"), TASKS, [1, 2, 3])
    assert os.path.exists(os.path.join(affinity_dir, "affinity.png"))


@pytest.mark.slow
def test_groups_from_the_affinity_selection(data_dir, affinity_dir, tmp_path, capsys):
    out = str(tmp_path / "groups")
    run_main(["--mode=groups", f"--data_dir={data_dir}", f"--output_dir={out}", "--epochs=1",
              f"--selection={affinity_dir}/selection.json", "--budget=2", *TINY])
    results = _results(out)
    with open(os.path.join(affinity_dir, "selection.json")) as f:
        chosen = next(s for s in json.load(f)["selections"] if s["budget"] == 2)
    assert [n["tasks"] for n in results["networks"]] == [n["tasks"] for n in chosen["networks"]]
    assert sorted(results["test_error"]) == sorted(TASKS)
    for network in results["networks"]:  # each task is served by the network the selection says
        for task in network["serves"]:
            assert results["test_error"][task] == network["test"][task]["error"]
    assert results["groups"]["budget"] == 2
    text = capsys.readouterr().out
    assert "mode groups" in text and "total" in text


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["mtl", "stl", "uw", "gradnorm", "pcgrad", "cs"])
def test_mode(mode, data_dir, tmp_path, capsys):
    out = str(tmp_path / mode)
    run_main([f"--mode={mode}", f"--data_dir={data_dir}", f"--output_dir={out}", "--epochs=1",
              "--tasks=" + ",".join(TWO_TASKS), "--budgets=1,2", *COMMON])
    results = _results(out)
    assert results["mode"] == mode and results["tasks"] == TWO_TASKS
    assert len(results["networks"]) == (len(TWO_TASKS) if mode == "stl" else 1)
    if mode == "cs":
        _check_matrix(os.path.join(out, "cosine_affinity.json"), TWO_TASKS)
        _check_selection(os.path.join(out, "selection.json"), TWO_TASKS, [1, 2])
    assert f"mode {mode}" in capsys.readouterr().out
