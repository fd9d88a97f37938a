"""The harness gives the same numbers in every process, whatever trained before.

Two fresh processes, each with its own empty cache, train the same trainings (PCGrad, TAG
affinity, CS) in opposite orders under ``harness.make_deterministic()``; their results
must be identical to the last bit (test errors and losses, the per-epoch history and the
affinity matrices). Before ``make_deterministic`` set one inter-op thread, CS and PCGrad
numbers changed between processes (see ``make_deterministic``).
"""

import json
import os
import subprocess
import sys

import pytest

from tests.experiments.harness_testing import REPO

TOY = dict(num_tasks=4, num_clusters=2, train_examples=320, validation_examples=64,
           test_examples=64, batch_size=32, epochs=2, hidden=8, bottleneck=2, head_hidden=4)

_SCRIPT = r"""
import json, sys
from tag_tf.experiments import harness as harness_lib
harness_lib.make_deterministic()
from tag_tf.experiments import adapter as adapter_lib

cache_dir, order, toy = sys.argv[1], sys.argv[2].split(","), json.loads(sys.argv[3])
harness = harness_lib.Harness(adapter_lib.SyntheticAdapter(**toy), cache_dir,
                              log=lambda _: None)
trainings = {"pcgrad": (["task_0", "task_1", "task_3"], "pcgrad"),
             "affinity": (harness.tasks, "affinity"), "cs": (harness.tasks, "cs"),
             "mtl": (["task_1", "task_2"], "mtl")}
out = {}
for name in order:
    tasks, mode = trainings[name]
    r = harness.train(tasks, mode)
    out[name] = {"test_error": r["test_error"], "test_loss": r["test_loss"],
                 "history": [n["history"] for n in r["networks"]],
                 "affinity": r.get("affinity", {}).get("matrix"),
                 "deterministic": r["deterministic"]}
out["counts"] = [harness.cache.misses, harness.cache.hits, harness.cache.shared]
print(json.dumps(out))
"""


def _run(tmp_path, name: str, order: str) -> dict:
    env = {**os.environ, "PYTHONPATH": REPO, "CUDA_VISIBLE_DEVICES": "",
           "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0"}
    done = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / name), order,
                           json.dumps(TOY)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The same four trainings in two fresh processes, in opposite orders."""
    tmp_path = tmp_path_factory.mktemp("determinism")
    return (_run(tmp_path, "cache_1", "pcgrad,affinity,cs,mtl"),
            _run(tmp_path, "cache_2", "mtl,cs,affinity,pcgrad"))


@pytest.mark.slow
def test_same_numbers_in_fresh_processes_in_any_order(two_processes):
    first, second = two_processes
    for name in ("pcgrad", "affinity", "mtl"):
        assert first[name]["deterministic"] and second[name]["deterministic"]
        assert first[name] == second[name], name  # exact: every float, every entry
    assert first["affinity"]["affinity"] is not None
    assert first["counts"] == second["counts"] == [4, 0, 0]


@pytest.mark.slow
def test_cs_same_numbers_in_fresh_processes(two_processes):
    first, second = two_processes
    assert first["cs"]["deterministic"] and second["cs"]["deterministic"]
    assert first["cs"]["affinity"] is not None
    assert first["cs"] == second["cs"]


@pytest.mark.slow
def test_make_deterministic_refuses_a_running_tensorflow(tmp_path):
    script = ("import tensorflow as tf\n"
              "tf.constant(1.0) + 1.0  # starts the runtime with the default thread pools\n"
              "from tag_tf.experiments import harness\n"
              "try:\n"
              "    harness.make_deterministic()\n"
              "except RuntimeError as e:\n"
              "    print('refused:', e)\n")
    env = {**os.environ, "PYTHONPATH": REPO, "CUDA_VISIBLE_DEVICES": "",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "refused: make_deterministic() must run before TensorFlow" in done.stdout
