"""Devices and precision of a training: ``tf.distribute`` strategies, input sharding,
mixed precision."""

from __future__ import annotations

from typing import Optional

import keras
import tensorflow as tf

from tag_tf.runner.config import SHARD_POLICIES, STRATEGIES

_SHARD_POLICIES = {"data": tf.data.experimental.AutoShardPolicy.DATA,
                   "file": tf.data.experimental.AutoShardPolicy.FILE,
                   "auto": tf.data.experimental.AutoShardPolicy.AUTO}
assert set(_SHARD_POLICIES) == set(SHARD_POLICIES)
_STRATEGY_CACHE: dict = {}


def split_cpu(count: int) -> None:
    """Splits the first CPU into ``count`` logical devices (before TensorFlow starts)."""
    if count < 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current and len(current) == count:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
    except RuntimeError as e:
        raise ValueError(f"Cannot split the CPU into {count} logical devices: TensorFlow has "
                         "already started (set logical_cpus before any TensorFlow work).") from e


def make_strategy(name: str = "default", *, logical_cpus: int = 0) -> tf.distribute.Strategy:
    """The ``tf.distribute`` strategy called ``name`` (one per process and name).

    ``"mirrored"``: every local GPU, or without GPUs every logical CPU device (one replica
    per device). ``"multi_worker"``: ``MultiWorkerMirroredStrategy`` (cluster from
    ``TF_CONFIG``; a single worker without it). ``"default"``: no distribution.
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}. Received: {name!r}")
    split_cpu(logical_cpus)
    if name == "default":
        return tf.distribute.get_strategy()
    if name not in _STRATEGY_CACHE:
        if name == "mirrored":
            devices = None if tf.config.list_logical_devices("GPU") else \
                [d.name for d in tf.config.list_logical_devices("CPU")]
            _STRATEGY_CACHE[name] = tf.distribute.MirroredStrategy(devices)
        else:
            _STRATEGY_CACHE[name] = tf.distribute.MultiWorkerMirroredStrategy()
    return _STRATEGY_CACHE[name]


def distribute_options(shard_policy: str = "data") -> tf.data.Options:
    """``tf.data`` options setting how a multi-worker strategy splits a dataset.

    ``"data"`` (the default): every worker runs the whole pipeline and keeps every
    ``num_workers``-th element: correct for any pipeline (file lists decoded in ``map``,
    ``from_tensor_slices``, TFDS), at the cost of reading everything on every worker.
    ``"file"``: each worker reads only its share of the input files: less I/O, but needs at
    least as many (equally sized) files as workers. ``"auto"``: file when the pipeline reads
    files, else data. A single worker (``mirrored``) never shards: each global batch is split
    over its replicas.
    """
    if shard_policy not in _SHARD_POLICIES:
        raise ValueError(f"shard_policy must be one of {sorted(_SHARD_POLICIES)}. "
                         f"Received: {shard_policy!r}")
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = _SHARD_POLICIES[shard_policy]
    return options


class dtype_policy:  # pylint: disable=invalid-name
    """Sets the global Keras dtype policy to ``name`` during the block (None: unchanged)."""

    def __init__(self, name: Optional[str]):
        self.name, self.previous = name, None

    def __enter__(self):
        self.previous = keras.config.dtype_policy()
        if self.name:
            keras.mixed_precision.set_global_policy(self.name)

    def __exit__(self, *exc):
        keras.mixed_precision.set_global_policy(self.previous)
