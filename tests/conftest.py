"""Shared test setup: quiet TensorFlow logs, CPU only, bit-reproducible kernels.

oneDNN's CPU kernels may reorder float sums between runs in one process; turning them off
(before TensorFlow is imported) makes seeded runs bit-identical.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


import keras  # noqa: E402  (after the environment above)
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402


def _split_cpu_in_two():
    """Two logical CPU devices, so tests can run MirroredStrategy on one machine.

    Must happen before TensorFlow initialises its devices (hence at import); ops still run
    on CPU:0 unless a strategy places them, so other tests are unaffected.
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    except RuntimeError:  # already initialised (e.g. imported by another conftest)
        pass


_split_cpu_in_two()


@pytest.fixture
def float64_keras():
    """Float64 Keras, so a small Z (1 - a ratio near 1) is not lost to float32 rounding.

    Sets the dtype policy too, in case an earlier test pinned one.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    yield
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy(previous)


@pytest.fixture
def eager():
    """Runs tf.functions eagerly: tracing costs more than the few steps of a toy training."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


@pytest.fixture
def restore_policy():
    """Restores Keras' global dtype policy after a test that sets one (mixed precision)."""
    previous = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(previous)
