"""Lookahead affinities match an independent NumPy reference (paper Eq. 1)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tag_tf
from tag_tf.core import lookahead
from tests import numpy_reference as ref
from tests import toys
from tests.toys import LOSS_WEIGHTS, OPTIMIZERS, TASKS

pytestmark = pytest.mark.usefixtures("float64_keras")


def run_and_compare(optimizer_name, rule, *, divide_by_lr=False, validation=False, steps=4):
    make_optimizer, ref_kwargs = OPTIMIZERS[optimizer_name]
    network = toys.linear_network()
    train = toys.linear_batches(steps)
    val = toys.linear_batches(3, seed=7)
    config = dict(every_n=1, rule=rule, divide_by_lr=divide_by_lr)
    if validation:
        val_ds = tf.data.Dataset.from_tensor_slices(
            (np.stack([toys.as_floatx(b)[0] for b in val]),
             {t: np.stack([toys.as_floatx(b)[1][t] for b in val]) for t in TASKS}))
        config.update(batch="validation", validation_data=val_ds)
    model = tag_tf.MultiTaskModel(network, shared=["trunk"],
                                  affinity=tag_tf.AffinityConfig(**config))
    model.compile(optimizer=make_optimizer(), loss="mse", loss_weights=LOSS_WEIGHTS)

    params = {"W": network.get_layer("trunk").kernel.numpy().astype(np.float64)}
    params.update({t: network.get_layer(t).kernel.numpy().astype(np.float64) for t in TASKS})
    opt = ref.Optimizer(**ref_kwargs)
    previous = np.zeros((3, 3))
    for step, batch in enumerate(train):
        x, y = batch
        expected = ref.tag_step(params["W"], {t: params[t] for t in TASKS}, x, y, LOSS_WEIGHTS,
                                opt, rule, divide_by_lr=divide_by_lr,
                                eval_batch=val[step % 3] if validation else None)
        model.train_on_batch(*toys.as_floatx(batch))
        total = model.affinity_state.affinity_sum.numpy()
        np.testing.assert_allclose(total - previous, expected, rtol=1e-5, atol=1e-7,
                                   err_msg=f"step {step}")
        previous = total
        ref.train_update(params, x, y, LOSS_WEIGHTS, opt)
        # The training update itself also matches the reference.
        np.testing.assert_allclose(network.get_layer("trunk").kernel.numpy(), params["W"],
                                   rtol=1e-5, atol=1e-7)  # Keras keeps hyper-parameters in float32
    np.testing.assert_array_equal(model.affinity_state.affinity_count.numpy(),
                                  np.full((3, 3), steps))
    assert int(model.affinity_state.affinity_steps.numpy()) == steps


@pytest.mark.parametrize("optimizer_name", ["sgd", "momentum", "adam", "schedule"])
def test_sgd_rule_matches_reference(optimizer_name):
    run_and_compare(optimizer_name, "sgd")


@pytest.mark.parametrize("optimizer_name", ["sgd", "momentum", "nesterov", "adam", "adamw",
                                            "schedule"])
def test_optimizer_rule_matches_reference(optimizer_name):
    run_and_compare(optimizer_name, "optimizer")


def test_divide_by_lr_matches_reference():
    run_and_compare("schedule", "sgd", divide_by_lr=True)


def test_validation_batches_are_drawn_cyclically():
    run_and_compare("momentum", "optimizer", validation=True, steps=5)


def test_optimizer_rule_equals_the_real_optimizer_step():
    """The 'optimizer' lookahead equals what optimizer.apply would do (on a copy)."""
    for name in ["momentum", "nesterov", "adamw"]:
        make_optimizer, _ = OPTIMIZERS[name]
        network = toys.linear_network()
        model = tag_tf.MultiTaskModel(network, shared=["trunk"], affinity=None)
        model.compile(optimizer=make_optimizer(), loss="mse")
        for batch in toys.linear_batches(3):
            model.train_on_batch(*toys.as_floatx(batch))
        kernel = network.get_layer("trunk").kernel
        grad = tf.random.stateless_normal(kernel.shape, seed=(1, 2))
        lr = lookahead.current_learning_rate(model.optimizer)
        predicted = lookahead.lookahead_values("optimizer", model.optimizer, [kernel],
                                                      [grad], lr)[0].numpy()
        before = [v.numpy() for v in model.optimizer.variables]
        grads = [grad if v is kernel else tf.zeros_like(v) for v in model.trainable_variables]
        model.optimizer.apply(grads, model.trainable_variables)
        np.testing.assert_allclose(kernel.numpy(), predicted, rtol=1e-6, atol=1e-9,
                                   err_msg=name)
        assert any(not np.array_equal(a, v.numpy())
                   for a, v in zip(before, model.optimizer.variables))


class L2SGD(keras.optimizers.SGD):
    """SGD with coupled L2 (gradient + l2 * w), declaring it for the lookahead."""

    def lookahead_gradient(self, gradient, value):
        return gradient + 0.1 * value

    def update_step(self, gradient, variable, learning_rate):
        super().update_step(self.lookahead_gradient(gradient, variable), variable, learning_rate)


class SecretSGD(keras.optimizers.SGD):
    def update_step(self, gradient, variable, learning_rate):
        super().update_step(2 * gradient, variable, learning_rate)


def test_optimizer_subclass_hook_and_rejection():
    network = toys.linear_network()
    model = tag_tf.MultiTaskModel(network, shared=["trunk"], affinity=None)
    model.compile(optimizer=L2SGD(0.1, momentum=0.9), loss="mse")
    for batch in toys.linear_batches(2):
        model.train_on_batch(*toys.as_floatx(batch))
    kernel = network.get_layer("trunk").kernel
    grad = tf.random.stateless_normal(kernel.shape, seed=(3, 4), dtype=kernel.dtype)
    lookahead.check_supported(model.optimizer, "optimizer")
    predicted = lookahead.lookahead_values(
        "optimizer", model.optimizer, [kernel], [grad],
        lookahead.current_learning_rate(model.optimizer))[0].numpy()
    model.optimizer.apply([grad if v is kernel else tf.zeros_like(v)
                           for v in model.trainable_variables], model.trainable_variables)
    np.testing.assert_allclose(kernel.numpy(), predicted, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="SecretSGD overrides update_step"):
        lookahead.check_supported(SecretSGD(0.1), "optimizer")
