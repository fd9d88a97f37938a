"""The README's main job, `python -m tag_tf.demo`, end to end at toy size."""

import json
import os
import subprocess
import sys

import numpy as np

from tag_tf import load_affinity
from tag_tf.planted_demo import run_demo


def test_run_demo_writes_affinity_and_selection(tmp_path, capsys):
    out = str(tmp_path / "demo")
    result = run_demo(num_tasks=4, num_clusters=2, steps=200, steps_per_epoch=100,
                           batch_size=32, learning_rate=0.05, every_n=5, rule="sgd", seed=0,
                           budgets=[1, 2], output_dir=out)
    printed = capsys.readouterr().out
    assert "Mean inter-task affinity" in printed and "budget" in printed
    record = load_affinity(os.path.join(out, "affinity.json"))
    assert record.tasks == ["task_0", "task_1", "task_2", "task_3"]
    assert np.all(np.isfinite(record.affinity))
    assert [e["epoch"] for e in record.epochs] == [0, 1]
    assert record.config["recorded_steps"] == 40
    with open(os.path.join(out, "selection.json")) as f:
        selections = json.load(f)["selections"]
    assert [s["budget"] for s in selections] == [1, 2]
    assert os.path.getsize(os.path.join(out, "affinity.png")) > 0
    assert len(result["selections"]) == 2


def test_command_line(tmp_path):
    out = str(tmp_path / "cli")
    subprocess.run([sys.executable, "-m", "tag_tf.demo", "--tasks=3", "--clusters=1",
                    "--steps=20", "--steps_per_epoch=20", "--every_n=10", "--budgets=1",
                    f"--output_dir={out}"], check=True, capture_output=True,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert os.path.exists(os.path.join(out, "affinity.json"))
    assert os.path.exists(os.path.join(out, "selection.json"))


def test_demo_selection_reports_robustness(tmp_path, capsys):
    """The demo's selection is bootstrapped over the epochs and says whether b is robust."""
    from tag_tf import AffinityRecord, planted_demo
    rng = np.random.default_rng(0)
    truth = np.array([[0, 3, -1, -1], [3, 0, -1, -1], [-1, -1, 0, 2], [-1, -1, 2, 0.]])
    epochs = [{"epoch": e, "affinity": (truth + 0.05 * rng.standard_normal((4, 4))).tolist()}
              for e in range(6)]
    record = AffinityRecord(["a", "b", "c", "d"], truth, epochs=epochs)
    selections = planted_demo._select(record, [1, 2], str(tmp_path), marked_budget=2)
    printed = capsys.readouterr().out
    assert [s.robustness.verdict for s in selections] == ["forced", "robust"]
    assert "Is b = 2 robust? robust: chosen in 100% of 200 resamples" in printed
    with open(os.path.join(tmp_path, "selection.json")) as f:
        assert json.load(f)["selections"][1]["robustness"]["verdict"] == "robust"
