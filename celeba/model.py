"""The CelebA network of the TAG paper: a small ResNet trunk shared by one Dense(2) head per task.

Follows google-research `tag/celeba/CelebA.ipynb`: 3x3 conv 64 (no bias) + BN + ReLU,
3x3 / 2 max pool, one residual block (two 3x3x64 conv + BN, identity shortcut), 2x2
average pool, flatten; per task a Dense(2) head trained with softmax cross-entropy.
Unlike the original (every initialiser seeded with 0, which can make all heads identical
under Keras 3), each layer gets its own seed.
"""

from __future__ import annotations

from typing import Sequence

import keras

# Layers whose variables form the shared trunk (TAG's theta_s).
TRUNK_LAYERS = ("conv1", "bn1", "res_conv1", "res_bn1", "res_conv2", "res_bn2")
BN_EPSILON = 1e-3  # the original's tf.nn.batch_normalization epsilon


def celeba_network(tasks: Sequence[str], *, image_size: int = 64, seed: int = 0) -> keras.Model:
    """Builds the shared trunk with one 2-way logit head per task (outputs named by task)."""
    init = lambda k: keras.initializers.GlorotUniform(seed=seed * 1000 + k)  # noqa: E731
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Conv2D(64, 3, padding="same", use_bias=False, kernel_initializer=init(0),
                            name="conv1")(inputs)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D(3, strides=2)(x)
    shortcut = x
    x = keras.layers.Conv2D(64, 3, padding="same", use_bias=False, kernel_initializer=init(1),
                            name="res_conv1")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name="res_bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(64, 3, padding="same", use_bias=False, kernel_initializer=init(2),
                            name="res_conv2")(x)
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name="res_bn2")(x)
    x = keras.layers.ReLU()(keras.layers.Add()([x, shortcut]))
    x = keras.layers.AveragePooling2D(2)(x)
    features = keras.layers.Flatten(name="features")(x)
    outputs = {task: keras.layers.Dense(2, kernel_initializer=init(10 + k), name=task)(features)
               for k, task in enumerate(tasks)}
    return keras.Model(inputs, outputs, name="celeba_network")


def task_loss() -> keras.losses.Loss:
    """Softmax cross-entropy of a task's 2 logits with its 0/1 label (the original's
    ``softmax_cross_entropy_with_logits`` on one-hot labels)."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def error_percent(y_true, y_pred):
    """Per-example classification error in percent: 100 where ``argmax(logits) != label``."""
    y_true = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
    predicted = keras.ops.cast(keras.ops.argmax(y_pred, axis=-1), "int32")
    return 100.0 * keras.ops.cast(keras.ops.not_equal(predicted, y_true), "float32")


def error_metric(name: str = "error_percent") -> keras.metrics.Metric:
    """Mean classification error in percent (100 - accuracy, the paper's CelebA metric)."""
    return keras.metrics.MeanMetricWrapper(error_percent, name=name)
