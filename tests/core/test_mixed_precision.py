"""Under mixed_float16 the recorded affinities match a float32 run.

The measurement (gradients, base and lookahead losses) runs in float32 while training
stays mixed; so at the same weights the two agree to float32 round-off, and over a short
training only the (float16) training trajectory separates them.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tag_tf
from tag_tf.core import keras_compat

TASKS = ["a", "b", "c"]
D, BATCH = 8, 64


@pytest.fixture
def restore_policy():
    previous = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(previous)


def data(steps, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(steps * BATCH, D)).astype("float32")
    y = {t: (x @ rng.normal(size=(D, 1)) + 0.1 * rng.normal(size=(len(x), 1))).astype("float32")
         for t in TASKS}
    return x, y


def record(policy, steps, initial=None, measures=("lookahead",)):
    """Trains the toy (Dense(16) trunk, float32 heads, SGD 0.01) under ``policy``."""
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((D,))
    h = keras.layers.Dense(16, activation="tanh", name="trunk")(inputs)
    outputs = {t: keras.layers.Dense(1, name=t, dtype="float32")(h) for t in TASKS}
    network = keras.Model(inputs, outputs)
    if initial is not None:
        network.set_weights(initial)
    initial = network.get_weights()
    model = tag_tf.MultiTaskModel(network, shared=["trunk"],
                                  affinity=tag_tf.AffinityConfig(every_n=1, measures=measures))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    model.fit(tf.data.Dataset.from_tensor_slices(data(steps)).batch(BATCH), epochs=1,
              verbose=0)
    keras.mixed_precision.set_global_policy("float32")
    assert (policy == "float32") != isinstance(model.optimizer,
                                               keras.optimizers.LossScaleOptimizer)
    return model, initial


@pytest.mark.usefixtures("restore_policy", "eager")
def test_same_weights_same_affinities_as_float32():
    measures = ("lookahead", "cosine")
    reference, initial = record("float32", steps=1, measures=measures)
    mixed, _ = record("mixed_float16", steps=1, initial=initial, measures=measures)
    assert keras_compat.is_mixed(mixed.network)
    for measure in measures:
        np.testing.assert_allclose(mixed.affinity_record(measure).affinity,
                                   reference.affinity_record(measure).affinity, rtol=1e-4,
                                   err_msg=measure)


@pytest.mark.usefixtures("restore_policy", "eager")
def test_mixed_precision_training_records_within_one_percent_of_float32():
    reference, initial = record("float32", steps=8)
    mixed, _ = record("mixed_float16", steps=8, initial=initial)
    z32 = reference.affinity_record().affinity
    z16 = mixed.affinity_record().affinity
    assert np.max(np.abs(z16 - z32)) / np.max(np.abs(z32)) < 0.01
    np.testing.assert_allclose(np.diag(z16), np.diag(z32), rtol=0.01)
    # The layers computed in float16 again after recording.
    assert mixed.network.get_layer("trunk").compute_dtype == "float16"


@pytest.mark.slow
@pytest.mark.usefixtures("restore_policy")
def test_mixed_precision_under_mirrored_strategy_records_what_one_device_records():
    """Same weights (one step): the float32 measurement is also reduced across replicas."""
    from tests.core import test_distribute  # pylint: disable=g-import-not-at-top
    keras.mixed_precision.set_global_policy("mixed_float16")
    config = tag_tf.AffinityConfig(every_n=1, measures=("lookahead", "cosine"))
    one = test_distribute.train(test_distribute.one_device(), config=config, steps=1)
    many = test_distribute.train(test_distribute.mirrored(), config=config, steps=1)
    for measure in config.measures:
        np.testing.assert_allclose(many[measure], one[measure], rtol=1e-3, err_msg=measure)
