"""``--strategy`` / ``--mixed_precision`` / ``--backup_dir`` through the dataset CLIs and the
shared runner (tag_tf.pipeline) on tiny fake CelebA."""

import json
import os
import subprocess
import sys

import keras
import pytest

from tag_tf import pipeline
from tests.test_celeba_main import TASKS, data_dir, run_main  # noqa: F401  (fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--tasks=" + ",".join(TASKS[:2]), "--batch_size=4", "--image_size=16", "--every_n=1",
        "--patience=-1", "--verbose=0", "--budgets=", "--epochs=2"]


def _results(output_dir):
    with open(os.path.join(output_dir, "results.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_mixed_precision_on_celeba(data_dir, tmp_path, eager):  # noqa: F811
    previous = keras.config.dtype_policy().name
    out = str(tmp_path / "mp")
    run_main(["--mode=affinity", f"--data_dir={data_dir}", f"--output_dir={out}",
              "--mixed_precision", *TINY])
    results = _results(out)
    assert results["options"]["mixed_precision"] is True
    assert results["networks"][0]["replicas"] == 1
    assert all(v is not None for v in results["test_loss"].values())
    assert keras.config.dtype_policy().name == previous  # the policy is restored


def test_options_reject_unknown_strategy():
    with pytest.raises(ValueError, match="strategy"):
        pipeline.Options(strategy="tpu")
    with pytest.raises(ValueError, match="save_freq"):
        pipeline.Options(save_freq=0)
    with pytest.raises(ValueError, match="shard_policy"):
        pipeline.distribute_options("rows")


def test_data_sharding_policy_is_explicit():
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    policy = tf.data.experimental.AutoShardPolicy
    assert pipeline.distribute_options().experimental_distribute.auto_shard_policy == \
        policy.DATA
    assert pipeline.distribute_options("file").experimental_distribute.auto_shard_policy == \
        policy.FILE


@pytest.mark.slow
def test_mirrored_two_logical_cpus_with_backups(data_dir, tmp_path):  # noqa: F811
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
    assert results["options"]["strategy"] == "mirrored"
    network = results["networks"][0]
    assert network["replicas"] == 2
    assert network["epochs_run"] == 2
    assert results["affinity"]["matrix"] and all(
        v is not None for row in results["affinity"]["matrix"] for v in row)
    assert not os.path.exists(os.path.join(backup, "network_0"))  # removed when finished
