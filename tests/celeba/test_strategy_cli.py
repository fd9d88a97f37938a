"""``--strategy`` / ``--mixed_precision`` / ``--backup_dir`` through the dataset CLIs and the
shared runner (tag_tf.runner) on tiny fake CelebA."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tag_tf.runner import distribute
from tag_tf.runner.config import RuntimeConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TASKS = ["Black_Hair", "Blond_Hair"]
TINY = ["--tasks=" + ",".join(TASKS), "--batch_size=4", "--image_size=16", "--every_n=1",
        "--patience=-1", "--verbose=0", "--budgets=", "--epochs=2"]


def _results(output_dir):
    with open(os.path.join(output_dir, "results.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_mixed_precision_on_celeba(data_dir, run_main, tmp_path, eager):
    previous = keras.config.dtype_policy().name
    out = str(tmp_path / "mp")
    run_main(["--mode=affinity", f"--data_dir={data_dir}", f"--output_dir={out}",
              "--mixed_precision", *TINY])
    results = _results(out)
    assert results["config"]["runtime"]["mixed_precision"] is True
    assert results["networks"][0]["replicas"] == 1
    assert all(v is not None for v in results["test_loss"].values())
    assert keras.config.dtype_policy().name == previous  # the policy is restored


def test_options_reject_unknown_strategy():
    with pytest.raises(ValueError, match="strategy"):
        RuntimeConfig(strategy="tpu")
    with pytest.raises(ValueError, match="save_freq"):
        RuntimeConfig(save_freq=0)
    with pytest.raises(ValueError, match="shard_policy"):
        distribute.distribute_options("rows")


def test_data_sharding_policy_is_explicit():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    policy = tf.data.experimental.AutoShardPolicy
    assert distribute.distribute_options().experimental_distribute.auto_shard_policy == \
        policy.DATA
    assert distribute.distribute_options("file").experimental_distribute.auto_shard_policy == \
        policy.FILE


@pytest.mark.slow
def test_mirrored_two_logical_cpus_with_backups(data_dir, tmp_path):
    """celeba.main --strategy=mirrored on 2 logical CPUs (a subprocess: the CPU is split
    before TensorFlow starts), backing up every batch."""
    out, backup = str(tmp_path / "mirrored"), str(tmp_path / "backup")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0",
               CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(
        [sys.executable, "-m", "celeba.main", "--mode=affinity", f"--data_dir={data_dir}",
         f"--output_dir={out}", "--strategy=mirrored", "--logical_cpus=2",
         f"--backup_dir={backup}", "--save_freq=1", *TINY],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = _results(out)
    assert results["config"]["runtime"]["strategy"] == "mirrored"
    network = results["networks"][0]
    assert network["replicas"] == 2
    assert network["epochs_run"] == 2
    assert results["affinity"]["matrix"] and all(
        v is not None for row in results["affinity"]["matrix"] for v in row)
    assert not os.path.exists(os.path.join(backup, "network_0"))  # removed when finished


def _weights(path):
    import h5py  # pylint: disable=g-import-not-at-top
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: arrays.__setitem__(name, item[()])
                     if isinstance(item, h5py.Dataset) else None)
    return arrays


@pytest.mark.slow
def test_mirrored_cli_resume_is_exact(data_dir, tmp_path):
    """celeba.main --strategy=mirrored --logical_cpus=2 --backup_dir, crashed mid-epoch and
    run again, equals the uninterrupted run exactly: weights, affinity matrix and trace,
    history, test losses (the epochs' data come from Experiment.train_data_fn)."""
    from tag_tf.training import resume  # pylint: disable=g-import-not-at-top
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", TF_ENABLE_ONEDNN_OPTS="0",
               CUDA_VISIBLE_DEVICES="")

    def cli(name, crash_at=0):
        return subprocess.run(
            [sys.executable, "-m", "tests.training.mirrored_resume_run", "cli", str(crash_at),
             "--mode=affinity", f"--data_dir={data_dir}", f"--output_dir={tmp_path / name}",
             "--strategy=mirrored", "--logical_cpus=2", f"--backup_dir={tmp_path / 'b' / name}",
             "--save_freq=1", "--save_weights", *TINY],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)

    done = cli("straight")
    assert done.returncode == 0, done.stderr[-3000:]
    crashed = cli("resumed", crash_at=5)  # 3 batches per epoch: backup (1, 1), crash at (1, 2)
    assert crashed.returncode != 0 and "crash" in crashed.stderr, crashed.stderr[-3000:]
    backup = str(tmp_path / "b" / "resumed" / "network_0")
    assert resume.read_resume_point(backup, 3) == (1, 1)
    done = cli("resumed")
    assert done.returncode == 0, done.stderr[-3000:]
    straight, resumed = _results(str(tmp_path / "straight")), _results(str(tmp_path / "resumed"))
    assert resumed["networks"][0]["replicas"] == 2
    for key in ("history", "epochs_run", "best_epoch", "test"):
        assert resumed["networks"][0][key] == straight["networks"][0][key], key
    assert resumed["affinity"]["matrix"] == straight["affinity"]["matrix"]
    assert resumed["test_loss"] == straight["test_loss"]
    for name in ("affinity.json",):
        with open(tmp_path / "straight" / name) as f, open(tmp_path / "resumed" / name) as g:
            assert json.load(g)["epochs"] == json.load(f)["epochs"]
    expected = _weights(tmp_path / "straight" / "network_0.weights.h5")
    got = _weights(tmp_path / "resumed" / "network_0.weights.h5")
    assert sorted(got) == sorted(expected) and expected
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
