"""Under MirroredStrategy (two logical CPUs) a model records what one device records.

Same initial weights, same global batches (fit distributes each one over the replicas):
the lookahead and cosine affinities, their counts and the trained weights must match a
OneDeviceStrategy run. Float64, so the comparison can be tight. Tracing a replicated step
takes a while on a small CPU, so all but the first comparison are marked slow.
"""

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

import tag_tf

TASKS = ["a", "b", "c"]
LOSS_WEIGHTS = {"a": 1.0, "b": 2.0, "c": 0.5}
D, HIDDEN, GLOBAL_BATCH, STEPS = 6, 8, 32, 4
RTOL = 1e-5

pytestmark = pytest.mark.usefixtures("float64_keras")


def network(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((D,))
    h = keras.layers.Dense(HIDDEN, activation="tanh", name="trunk")(inputs)
    outputs = {t: keras.layers.Dense(1, name=t)(h) for t in TASKS}
    return keras.Model(inputs, outputs)


def data(n, seed=0, sample_weight=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D))
    mixing = rng.normal(size=(D, len(TASKS)))
    y = {t: (np.tanh(x @ mixing[:, [k]]) + 0.3 * rng.normal(size=(n, 1)))
         for k, t in enumerate(TASKS)}
    if sample_weight:
        weights = rng.uniform(0.2, 2.0, size=(n,))
        # The first batch trains: with equal sample weights there, Keras' training step is
        # one device's for every reduction (see the uneven-split test).
        weights[:GLOBAL_BATCH] = 1.0
        return x, y, weights
    return x, y


@functools.lru_cache(maxsize=None)
def mirrored():
    """One MirroredStrategy per process: a second one would reuse the first one's collective
    instance keys (a TensorFlow limitation), so tests share it."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@functools.lru_cache(maxsize=None)
def one_device():
    return tf.distribute.OneDeviceStrategy("/cpu:0")


def train(strategy, *, config=None, weighting=None, gradient=None, optimizer=None,
          steps=STEPS, batch=GLOBAL_BATCH, extra=0, sample_weight=False, loss="mse"):
    """Trains a fresh toy model under ``strategy``; returns what it recorded and learned."""
    with strategy.scope():
        net = network()
        model = tag_tf.MultiTaskModel(
            net, shared=["trunk"], affinity=config,
            weighting=weighting() if weighting else None,
            gradient=gradient() if gradient else None)
        model.compile(optimizer=optimizer() if optimizer else keras.optimizers.SGD(0.05),
                      loss=loss, loss_weights=LOSS_WEIGHTS)
    dataset = tf.data.Dataset.from_tensor_slices(
        data(steps * batch + extra, sample_weight=sample_weight)).batch(batch)
    model.fit(dataset, epochs=1, verbose=0)
    out = {"weights": model.get_weights()}
    if config is not None:
        for measure in config.measures:
            record = model.affinity_record(measure)
            out[measure] = record.affinity
            out[measure + "_counts"] = record.counts
        out["steps"] = int(model.affinity_state.affinity_steps.numpy())
    return out


def assert_same(one, many):
    assert one.keys() == many.keys()
    for key in one:
        if key == "weights":
            for a, b in zip(one[key], many[key]):
                np.testing.assert_allclose(b, a, rtol=RTOL, atol=1e-9)
        else:
            np.testing.assert_allclose(many[key], one[key], rtol=RTOL, atol=0, err_msg=key)


def compare(**kwargs):
    one, many = train(one_device(), **kwargs), train(mirrored(), **kwargs)
    assert_same(one, many)
    return one


def momentum():
    return keras.optimizers.SGD(0.05, momentum=0.9)


def validation_data():
    return tf.data.Dataset.from_tensor_slices(data(48, seed=5)).batch(16)


@pytest.mark.parametrize("rule, optimizer", [
    ("sgd", None), pytest.param("optimizer", momentum, marks=pytest.mark.slow)])
def test_mirrored_records_what_one_device_records(rule, optimizer):
    config = tag_tf.AffinityConfig(every_n=1, rule=rule, measures=("lookahead", "cosine"))
    one = compare(config=config, optimizer=optimizer)
    assert one["steps"] == STEPS
    assert np.all(one["lookahead_counts"] == STEPS)
    assert np.abs(one["lookahead"]).min() > 1e-6  # the comparison is not of zeros


@pytest.mark.slow
def test_mirrored_validation_batches_and_every_n():
    config = tag_tf.AffinityConfig(every_n=2, batch="validation",
                                   validation_data=validation_data())
    one = compare(config=config, optimizer=momentum, steps=5)
    assert one["steps"] == 3  # steps 0, 2, 4


@pytest.mark.slow
def test_mirrored_window_records_only_its_steps():
    config = tag_tf.AffinityConfig(every_n=1, step_range=(1, 3), rule="optimizer")
    one = compare(config=config, optimizer=momentum)
    assert one["steps"] == 2


@pytest.mark.slow
def test_mirrored_pcgrad():
    config = tag_tf.AffinityConfig(every_n=2, measures=("lookahead", "cosine"))
    compare(config=config, gradient=lambda: tag_tf.PCGrad(seed=3))


@pytest.mark.slow
def test_mirrored_pcgrad_without_affinity():
    compare(gradient=lambda: tag_tf.PCGrad(seed=3))


@pytest.mark.slow
@pytest.mark.parametrize("weighting", [
    lambda: tag_tf.UncertaintyWeighting(),
    lambda: tag_tf.UncertaintyWeighting(clipped=True),
    lambda: tag_tf.GradNorm(alpha=0.5),
], ids=["uw", "uw_clipped", "gradnorm"])
def test_mirrored_loss_weighting(weighting):
    config = tag_tf.AffinityConfig(every_n=1)
    compare(config=config, weighting=weighting)


@pytest.mark.slow
@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "mean_with_sample_weight", "sum"])
def test_uneven_split_and_sample_weights_give_the_global_batch_affinity(reduction):
    """The last global batch of 31 splits 16/15: each replica's losses are weighted by its
    share of the loss's denominator (samples, or sum of sample weights).

    Two steps (32 then 31 samples): both record at weights trained on the first batch
    only, which splits evenly with equal sample weights (Keras' own training gradient is
    the sum of the replicas' means over the number of replicas: one device's only when
    the replicas' denominators are equal; and Keras' fit needs an even first batch).
    """
    config = tag_tf.AffinityConfig(every_n=1, measures=("lookahead", "cosine"))
    loss = keras.losses.MeanSquaredError(reduction=reduction)  # float64 (made after floatx)
    kwargs = dict(config=config, steps=1, batch=32, extra=31, sample_weight=True, loss=loss)
    one, many = train(one_device(), **kwargs), train(mirrored(), **kwargs)
    assert one["steps"] == many["steps"] == 2
    for key in ("lookahead", "cosine"):
        np.testing.assert_allclose(many[key], one[key], rtol=RTOL, err_msg=key)


def test_unsupported_strategy_is_named():
    strategy = tf.distribute.experimental.CentralStorageStrategy()
    with strategy.scope():
        model = tag_tf.MultiTaskModel(network(), shared=["trunk"])
        with pytest.raises(ValueError, match="CentralStorageStrategy"):
            model.compile(optimizer="sgd", loss="mse")


@pytest.mark.slow
def test_steps_per_execution_above_one_is_refused_when_replicated():
    with mirrored().scope():
        model = tag_tf.MultiTaskModel(network(), shared=["trunk"],
                                      affinity=tag_tf.AffinityConfig(every_n=1))
        model.compile(optimizer="sgd", loss="mse", steps_per_execution=2)
    x, y = data(64)
    with pytest.raises(ValueError, match="steps_per_execution"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
