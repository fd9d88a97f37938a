"""AffinityConfig(parallel=...) records the same affinities as the sequential default.

The batched passes (tag_tf.core.vectorized) change only the order of float sums, so in float64
the recorded Z, cosines, counts and the trained weights agree to ~1e-9; the test allows
1e-5 relative. The toy has what the CelebA trunk has: a convolution, BatchNormalization
(training mode in the lookahead forward) and dropout-free dense heads.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tag_tf
from tag_tf.core import vectorized
from tests import toys

TASKS = ["a", "b", "c", "d"]
WEIGHTS = {"a": 1.0, "b": 2.0, "c": 0.5, "d": 1.5}
SIDE, BATCH, STEPS = 6, 8, 3
RTOL = 1e-5


def conv_network(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIDE, SIDE, 2))
    h = keras.layers.Conv2D(3, 3, padding="same", use_bias=False, name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Activation("tanh")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(5, activation="tanh", name="dense")(h)
    outputs = {t: keras.layers.Dense(1, name=t)(h) for t in TASKS}
    return keras.Model(inputs, outputs)


def dense_network(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIDE, SIDE, 2))
    h = keras.layers.Flatten()(inputs)
    h = keras.layers.Dense(5, activation="tanh", name="dense")(h)
    outputs = {t: keras.layers.Dense(1, name=t)(h) for t in TASKS}
    return keras.Model(inputs, outputs)


NETWORKS = {"conv": (conv_network, ["conv", "bn", "dense"]), "dense": (dense_network, ["dense"])}


def image_data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, SIDE, SIDE, 2))
    y = {t: rng.normal(size=(n, 1)) + 0.5 * x[:, k, k, :1] for k, t in enumerate(TASKS)}
    return x, y


def record(parallel, *, rule="sgd", optimizer=None, validation=False,
           measures=("lookahead", "taylor", "cosine"), net="conv"):
    extra = {}
    if validation:
        extra = dict(batch="validation",
                     validation_data=tf.data.Dataset.from_tensor_slices(image_data(16, 3)).batch(8))
    config = tag_tf.AffinityConfig(every_n=1, rule=rule, measures=measures, parallel=parallel,
                                   **extra)
    build, shared = NETWORKS[net]
    model = tag_tf.MultiTaskModel(build(), shared=shared, affinity=config)
    model.compile(optimizer=optimizer() if optimizer else keras.optimizers.SGD(0.1),
                  loss="mse", loss_weights=WEIGHTS)
    model.fit(tf.data.Dataset.from_tensor_slices(image_data(STEPS * BATCH)).batch(BATCH), epochs=1,
              verbose=0)
    out = {"weights": model.get_weights()}
    for measure in measures:
        out[measure] = model.affinity_record(measure).affinity
        out[measure + "_counts"] = model.affinity_record(measure).counts
    return out


def assert_same(sequential, parallel):
    assert sequential.keys() == parallel.keys()
    for key, value in sequential.items():
        if key == "weights":
            for a, b in zip(value, parallel[key]):
                np.testing.assert_allclose(b, a, rtol=RTOL, atol=1e-12)
        else:
            assert np.all(np.isfinite(value)), key
            np.testing.assert_allclose(parallel[key], value, rtol=RTOL, atol=0, err_msg=key)


def momentum():
    return keras.optimizers.SGD(0.1, momentum=0.9)


def adam():
    return keras.optimizers.Adam(0.01, clipnorm=0.5)


@pytest.mark.usefixtures("float64_keras")
@pytest.mark.parametrize("net, parallel, rule, optimizer, validation", [
    ("conv", True, "sgd", None, False),
    pytest.param("dense", 2, "optimizer", adam, True,  # chunks; per-task clipnorm
                 marks=pytest.mark.slow),
    pytest.param("conv", 3, "sgd", None, True, marks=pytest.mark.slow),  # chunks of 3 and 1
    pytest.param("conv", True, "optimizer", momentum, False, marks=pytest.mark.slow),
    pytest.param("conv", 2, "optimizer", adam, True, marks=pytest.mark.slow),
])
def test_parallel_records_what_sequential_records(net, parallel, rule, optimizer, validation):
    sequential = record(False, rule=rule, optimizer=optimizer, validation=validation, net=net)
    batched = record(parallel, rule=rule, optimizer=optimizer, validation=validation, net=net)
    assert_same(sequential, batched)
    # Not a trivially equal pair: tasks differ, so the off-diagonal Z do too.
    z = sequential["lookahead"]
    assert np.ptp(z[~np.eye(len(TASKS), dtype=bool)]) > 1e-4


@pytest.mark.usefixtures("float64_keras")
@pytest.mark.slow
@pytest.mark.parametrize("measures, validation", [(("cosine",), False), (("taylor",), True)])
def test_parallel_without_lookahead_matches(measures, validation):
    assert_same(record(False, measures=measures, validation=validation, net="dense"),
                record(True, measures=measures, validation=validation, net="dense"))


@pytest.mark.slow
@pytest.mark.usefixtures("restore_policy")
def test_parallel_under_mixed_precision_records_what_sequential_records():
    """Both measure with float32 gradients and losses (tag_tf.core.recorder); float32 round-off."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    sequential = record(False, net="dense")
    batched = record(True, net="dense")
    keras.mixed_precision.set_global_policy("float32")
    for measure in ("lookahead", "taylor", "cosine"):
        np.testing.assert_allclose(batched[measure], sequential[measure], rtol=1e-4,
                                   err_msg=measure)


@pytest.mark.slow
@pytest.mark.usefixtures("float64_keras")
def test_parallel_under_mirrored_strategy_records_what_one_device_records():
    config = tag_tf.AffinityConfig(every_n=1, measures=("lookahead", "cosine"))
    one = toys.train_under_strategy(toys.one_device_strategy(), config=config)
    many = toys.train_under_strategy(toys.mirrored_strategy(),
                                     config=tag_tf.AffinityConfig(
                                         every_n=1, measures=("lookahead", "cosine"),
                                         parallel=2))
    toys.assert_same_training(one, many)


def test_task_gradients_equal_per_task_tape_gradients():
    rng = np.random.default_rng(0)
    w = tf.Variable(rng.normal(size=(3, 2)))
    v = tf.Variable(rng.normal(size=(2,)))
    x = tf.constant(rng.normal(size=(5, 3)))
    with tf.GradientTape(persistent=True) as tape:
        h = tf.tanh(x @ w + v)
        losses = [tf.reduce_sum(h[:, 0] ** 2), tf.reduce_mean(h), tf.reduce_sum(h[:, 1]) * 3.0]
    for chunk in (None, 1, 2):
        batched = vectorized.task_gradients(tape, losses, [w, v], chunk)
        for k, loss in enumerate(losses):
            for got, want in zip([g[k] for g in batched], tape.gradient(loss, [w, v])):
                np.testing.assert_allclose(got, want, rtol=1e-12)


def test_task_gradients_name_tasks_that_ignore_the_shared_variables():
    w = tf.Variable([1.0, 2.0])
    u = tf.Variable(3.0)
    with tf.GradientTape(persistent=True) as tape:
        losses = [u * 2.0, u ** 2]
    with pytest.raises(ValueError, match=r"\['a', 'b'\] do not depend on the shared"):
        vectorized.task_gradients(tape, losses, [w], task_names=["a", "b"])


def test_chunked_map_stacks_every_chunk():
    stacked = [tf.reshape(tf.range(12.0), (4, 3)), tf.constant([1.0, 2.0, 3.0, 4.0])]
    for chunk in (None, 1, 3, 10):
        out = vectorized.chunked_map(lambda e: tf.reduce_sum(e[0]) * e[1], stacked, chunk)
        np.testing.assert_allclose(out, [3.0, 24.0, 63.0, 120.0])


@pytest.mark.parametrize("bad", [0, -2, 1.5, "yes", None])
def test_bad_parallel_is_refused(bad):
    with pytest.raises(ValueError, match="parallel must be"):
        tag_tf.AffinityConfig(parallel=bad)


def test_parallel_round_trips_through_json():
    config = tag_tf.AffinityConfig(parallel=8)
    assert config.to_json()["parallel"] == 8
    assert tag_tf.AffinityConfig.from_json(config.to_json()) == config
    assert config.parallel_chunk() == 8 and tag_tf.AffinityConfig(parallel=True).parallel_chunk() is None
