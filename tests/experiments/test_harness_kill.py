"""A harness command killed (SIGKILL) in the middle of a training: rerunning it reuses only
the complete cache entries, redoes the interrupted one, and ends with the same tables as an
uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tag_tf.experiments import cache as cache_lib
from tests.experiments.harness_testing import REPO

TOY = dict(num_tasks=4, num_clusters=2, train_examples=320, validation_examples=64,
           test_examples=64, batch_size=32, epochs=2, hidden=8, bottleneck=2, head_hidden=4)
TRAININGS = 4  # three MTL trainings and Figure 4's affinity training

_SCRIPT = r"""
import json, sys
from tag_tf.experiments import harness as harness_lib
harness_lib.make_deterministic()
from tag_tf.experiments import adapter as adapter_lib, figure4, report

cache_dir, out_dir, toy = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
harness = harness_lib.Harness(adapter_lib.SyntheticAdapter(**toy), cache_dir,
                              log=lambda _: None)
rows = []
for tasks in (["task_0", "task_1"], ["task_2", "task_3"], ["task_0", "task_2"]):
    r = harness.train(tasks, "mtl")
    rows.append([",".join(tasks), report.fmt(r["total_test_error"], ".17g")])
fig = figure4.run(harness, targets=["task_1"], output_dir=out_dir)
report.write_outputs(out_dir, "errors", {"rows": rows, "figure4": fig["targets"]},
                     report.markdown_table(["tasks", "total test error"], rows))
print(json.dumps({"counts": [harness.cache.misses, harness.cache.hits, harness.cache.shared]}))
"""


def _start(cache_dir, out_dir):
    env = {**os.environ, "PYTHONPATH": REPO, "CUDA_VISIBLE_DEVICES": "",
           "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0"}
    return subprocess.Popen([sys.executable, "-c", _SCRIPT, str(cache_dir), str(out_dir),
                             json.dumps(TOY)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc) -> dict:
    out, err = proc.communicate(timeout=1800)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def _entries(cache_dir):
    """(complete, incomplete) cache entry directories."""
    if not os.path.isdir(cache_dir):
        return [], []
    dirs = [os.path.join(cache_dir, d) for d in sorted(os.listdir(cache_dir))]
    complete = [d for d in dirs if os.path.exists(os.path.join(d, cache_lib.RESULTS_FILE))]
    return complete, [d for d in dirs if d not in complete]


def _tables(out_dir):
    with open(os.path.join(out_dir, "errors.json")) as f:
        payload = json.load(f)
    with open(os.path.join(out_dir, "figure4.json")) as f:
        figure = json.load(f)
    with open(os.path.join(out_dir, "errors.md")) as f:
        markdown = f.read()
    return payload["rows"], payload["figure4"], figure["targets"], markdown


@pytest.mark.slow  # ~9 toy trainings in 3 processes
def test_harness_killed_mid_training_reuses_only_complete_entries(tmp_path):
    straight = _finish(_start(tmp_path / "cache_a", tmp_path / "out_a"))
    assert straight["counts"] == [TRAININGS, 0, 0]

    cache_dir = tmp_path / "cache_b"
    proc = _start(cache_dir, tmp_path / "out_b")
    while True:  # until the second training has started
        complete, incomplete = _entries(cache_dir)
        if complete and incomplete:
            break
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    # In its training: a toy training takes well under a second since the per-task loop
    # (issue 22), so the kill follows within 0.1 s of its cache entry appearing.
    time.sleep(float(np.random.default_rng(5).uniform(0.0, 0.1)))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    complete, incomplete = _entries(cache_dir)
    assert len(complete) == 1 and len(incomplete) == 1, (complete, incomplete)
    assert not os.listdir(tmp_path / "out_b") if (tmp_path / "out_b").exists() else True

    rerun = _finish(_start(cache_dir, tmp_path / "out_b"))
    assert rerun["counts"] == [TRAININGS - 1, 1, 0]  # only the complete entry was reused
    assert _tables(tmp_path / "out_b") == _tables(tmp_path / "out_a")
    complete, incomplete = _entries(cache_dir)
    assert len(complete) == TRAININGS and not incomplete
