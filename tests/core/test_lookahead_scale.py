"""AffinityConfig.lookahead_scale: the lookahead step uses lr * scale."""

import keras
import numpy as np
import pytest

import tag_tf
from tests import toys
from tests.toys import TASKS

D, K, LR = toys.LINEAR_INPUTS, toys.LINEAR_WIDTH, 0.1  # the linear toy's shapes and batches

pytestmark = pytest.mark.usefixtures("float64_keras")


def _network():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((D,))
    h = keras.layers.Dense(K, activation="tanh", name="trunk")(inputs)
    outputs = {t: keras.layers.Dense(1, name=t)(h) for t in TASKS}
    return keras.Model(inputs, outputs)


def _model(lr, scale, rule):
    model = tag_tf.MultiTaskModel(
        _network(), shared=["trunk"],
        affinity=tag_tf.AffinityConfig(every_n=1, rule=rule, lookahead_scale=scale))
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    return model


def _step_affinities(scale, rule, steps=3):
    """Per-step Z of (scale s, SGD lr) and (scale 1, SGD lr * s), from the same weights."""
    scaled, reference = _model(LR, scale, rule), _model(LR * scale, 1.0, rule)
    pairs = []
    for batch in toys.linear_batches(steps):
        before = [m.affinity_state.affinity_sum.numpy().copy() for m in (scaled, reference)]
        scaled.train_on_batch(*batch)
        reference.train_on_batch(*batch)
        pairs.append(tuple(m.affinity_state.affinity_sum.numpy() - b
                           for m, b in zip((scaled, reference), before)))
        # Their training steps differ (lr vs lr * s): continue both from the same weights.
        reference.network.set_weights(scaled.network.get_weights())
    return pairs


@pytest.mark.parametrize("scale", [0.1, 10.0])
@pytest.mark.parametrize("rule", ["sgd", "optimizer"])
def test_scale_equals_an_optimizer_with_scaled_lr(scale, rule):
    for step, (z_scaled, z_reference) in enumerate(_step_affinities(scale, rule)):
        np.testing.assert_allclose(z_scaled, z_reference, rtol=1e-9, atol=1e-12,
                                   err_msg=f"step {step}")


def test_scale_changes_the_affinities():
    (z_small, _), = _step_affinities(0.1, "sgd", steps=1)
    (z_large, _), = _step_affinities(10.0, "sgd", steps=1)
    assert not np.allclose(z_small, z_large, rtol=1e-3)


def test_config_validates_and_round_trips():
    config = tag_tf.AffinityConfig(lookahead_scale=2)
    assert config.lookahead_scale == 2.0
    assert config.to_json()["lookahead_scale"] == 2.0
    assert tag_tf.AffinityConfig.from_json(config.to_json()) == config
    legacy = {k: v for k, v in config.to_json().items() if k != "lookahead_scale"}
    assert tag_tf.AffinityConfig.from_json(legacy).lookahead_scale == 1.0
    for bad in (0, -1.0, float("inf"), float("nan"), "2", True):
        with pytest.raises(ValueError, match="lookahead_scale"):
            tag_tf.AffinityConfig(lookahead_scale=bad)
