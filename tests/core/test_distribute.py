"""Under MirroredStrategy (two logical CPUs) a model records what one device records.

Same initial weights, same global batches (fit distributes each one over the replicas):
the lookahead and cosine affinities, their counts and the trained weights must match a
OneDeviceStrategy run. Float64, so the comparison can be tight. Tracing a replicated step
takes a while on a small CPU, so all but the first comparison are marked slow.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tag_tf
from tests import toys

pytestmark = pytest.mark.usefixtures("float64_keras")


@pytest.mark.parametrize("rule, optimizer", [
    ("sgd", None),
    pytest.param("optimizer", toys.sgd_momentum, marks=pytest.mark.slow, id="optimizer-momentum")])
def test_mirrored_records_what_one_device_records(rule, optimizer):
    config = tag_tf.AffinityConfig(every_n=1, rule=rule, measures=("lookahead", "cosine"))
    one = toys.one_device_and_mirrored(config=config, optimizer=optimizer)
    assert one["steps"] == toys.STRATEGY_STEPS
    assert np.all(one["lookahead_counts"] == toys.STRATEGY_STEPS)
    assert np.abs(one["lookahead"]).min() > 1e-6  # the comparison is not of zeros


@pytest.mark.slow
def test_mirrored_validation_batches_and_every_n():
    config = tag_tf.AffinityConfig(every_n=2, batch="validation",
                                   validation_data=toys.tanh_validation_data())
    one = toys.one_device_and_mirrored(config=config, optimizer=toys.sgd_momentum, steps=5)
    assert one["steps"] == 3  # steps 0, 2, 4


@pytest.mark.slow
def test_mirrored_window_records_only_its_steps():
    config = tag_tf.AffinityConfig(every_n=1, step_range=(1, 3), rule="optimizer")
    one = toys.one_device_and_mirrored(config=config, optimizer=toys.sgd_momentum)
    assert one["steps"] == 2


@pytest.mark.slow
def test_mirrored_pcgrad():
    config = tag_tf.AffinityConfig(every_n=2, measures=("lookahead", "cosine"))
    toys.one_device_and_mirrored(config=config, gradient=lambda: tag_tf.PCGrad(seed=3))


@pytest.mark.slow
def test_mirrored_pcgrad_without_affinity():
    toys.one_device_and_mirrored(gradient=lambda: tag_tf.PCGrad(seed=3))


@pytest.mark.slow
@pytest.mark.parametrize("weighting", [
    lambda: tag_tf.UncertaintyWeighting(),
    lambda: tag_tf.UncertaintyWeighting(clipped=True),
    lambda: tag_tf.GradNorm(alpha=0.5),
], ids=["uw", "uw_clipped", "gradnorm"])
def test_mirrored_loss_weighting(weighting):
    config = tag_tf.AffinityConfig(every_n=1)
    toys.one_device_and_mirrored(config=config, weighting=weighting)


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
    one = toys.train_under_strategy(toys.one_device_strategy(), **kwargs)
    many = toys.train_under_strategy(toys.mirrored_strategy(), **kwargs)
    assert one["steps"] == many["steps"] == 2
    for key in ("lookahead", "cosine"):
        np.testing.assert_allclose(many[key], one[key], rtol=toys.STRATEGY_RTOL, err_msg=key)


def test_unsupported_strategy_is_named():
    strategy = tf.distribute.experimental.CentralStorageStrategy()
    with strategy.scope():
        model = tag_tf.MultiTaskModel(toys.tanh_network(), shared=["trunk"])
        with pytest.raises(ValueError, match="CentralStorageStrategy"):
            model.compile(optimizer="sgd", loss="mse")


@pytest.mark.slow
def test_steps_per_execution_above_one_is_refused_when_replicated():
    with toys.mirrored_strategy().scope():
        model = tag_tf.MultiTaskModel(toys.tanh_network(), shared=["trunk"],
                                      affinity=tag_tf.AffinityConfig(every_n=1))
        model.compile(optimizer="sgd", loss="mse", steps_per_execution=2)
    x, y = toys.tanh_mixture_data(64)
    with pytest.raises(ValueError, match="steps_per_execution"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0)
