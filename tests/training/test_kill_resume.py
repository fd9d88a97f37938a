"""Fault injection: training killed with SIGKILL at random instants, 12 times in a row, some
of them in the middle of writing a backup, still finishes, and equals an uninterrupted run
bit for bit (weights, optimizer, affinity sums and counts, steps, history, trace, files)."""

import collections
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tag_tf.io import atomic
from tag_tf.training import backup_store

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KILLS = 12
PAUSE = 0.15  # seconds each backup sleeps mid-write (kill_resume_run): a wider window


def _start(work, pause=PAUSE):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0",
               CUDA_VISIBLE_DEVICES="", PYTHONPATH=REPO)
    err = open(os.path.join(work, "stderr.txt"), "a")  # pylint: disable=consider-using-with
    return subprocess.Popen([sys.executable, "-m", "tests.training.kill_resume_run", str(work),
                             str(pause)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=err, text=True)


def _wait_started(proc, work):
    line = proc.stdout.readline()
    if line.strip() != "STARTED":
        proc.wait()
        with open(os.path.join(work, "stderr.txt")) as f:
            raise AssertionError(f"The training did not start ({line!r}): {f.read()[-3000:]}")


def _finish(proc, work):
    out = proc.stdout.read()
    assert proc.wait(timeout=1200) == 0 and "DONE" in out, open(
        os.path.join(work, "stderr.txt")).read()[-3000:]


def _where(work) -> str:
    """Where the kill landed, from what it left behind."""
    backup = os.path.join(work, "backup")
    entries = os.listdir(backup) if os.path.isdir(backup) else []
    staging = [e for e in entries if e.startswith(backup_store.STAGING_PREFIX)]
    if staging:
        files = set(os.listdir(os.path.join(backup, staging[0])))
        if "latest.weights.h5" not in files or "training_metadata.json" not in files:
            return "mid-backup: writing the weights"
        if backup_store.MANIFEST_FILE in files:
            return "mid-backup: committing (manifest written, not renamed)"
        return "mid-backup: staged files being written or flushed"
    if any(e.startswith(backup_store.TRASH_PREFIX) for e in entries):
        return "deleting an old backup"
    out = os.path.join(work, "out")
    if os.path.isdir(out) and any(e.startswith(atomic.TMP_PREFIX) for e in os.listdir(out)):
        return "mid-write of the affinity trace"
    return "between writes"


def _result(work):
    with open(os.path.join(work, "result.json")) as f:
        meta = json.load(f)
    return meta, dict(np.load(os.path.join(work, "result.npz")))


@pytest.mark.slow  # ~2-4 min on 2 cores: 14 short trainings in fresh processes
def test_sigkill_at_random_instants_resumes_exactly(tmp_path):
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    straight_dir.mkdir()
    killed_dir.mkdir()
    proc = _start(straight_dir)
    _wait_started(proc, straight_dir)
    begin = time.monotonic()
    _finish(proc, straight_dir)
    duration = time.monotonic() - begin  # training (with backups) of the whole run

    rng = np.random.default_rng(23)
    landed = collections.Counter()
    for _ in range(KILLS):
        proc = _start(killed_dir)
        _wait_started(proc, killed_dir)
        # Uniform over a tenth of the run: the 12 kills together cover about 60 % of it.
        time.sleep(float(rng.uniform(0.0, duration / 10)))
        assert proc.poll() is None, "the run finished before it could be killed 12 times"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        landed[_where(killed_dir)] += 1
    print(f"\n{KILLS} kills over a run of {duration:.1f} s; where they landed: "
          f"{dict(landed)}")
    mid_backup = sum(n for where, n in landed.items() if where.startswith("mid-backup"))
    assert mid_backup >= 2, landed  # the kills do hit backups being written

    proc = _start(killed_dir)
    _wait_started(proc, killed_dir)
    _finish(proc, killed_dir)
    (expected, expected_arrays), (got, got_arrays) = _result(straight_dir), _result(killed_dir)
    assert got["steps"] == expected["steps"] == 12
    assert got["epoch"] == expected["epoch"] == [0, 1, 2]
    assert got["history"] == expected["history"]  # every logged float, bit for bit
    assert got["trace"] == expected["trace"]  # the per-epoch affinity means
    assert got["affinity_file"] == expected["affinity_file"]
    assert sorted(got_arrays) == sorted(expected_arrays)
    for name, value in expected_arrays.items():  # weights, optimizer, affinity, RNG
        np.testing.assert_array_equal(got_arrays[name], value, err_msg=name)
    assert not os.path.exists(killed_dir / "backup")  # deleted once finished
