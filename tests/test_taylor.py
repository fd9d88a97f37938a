"""The first-order ("taylor") affinity: exact against a NumPy reference, equal under
MirroredStrategy, and close to the exact lookahead for small steps."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tag_tf
from tests import numpy_reference as ref
from tests import test_distribute as dist
from tests.test_affinity_exact import OPTIMIZERS, TASKS, WEIGHTS, as_f32, batches, \
    linear_network

pytestmark = pytest.mark.usefixtures("float64_keras")


def run_and_compare(optimizer_name, rule, *, divide_by_lr=False, validation=False, steps=3,
                    measures=("taylor",), loss_weights=WEIGHTS):
    """Trains the linear toy model step by step; each step's Taylor Z equals the reference."""
    make_optimizer, ref_kwargs = OPTIMIZERS[optimizer_name]
    network = linear_network()
    train = batches(steps)
    val = batches(3, seed=7)
    config = dict(every_n=1, rule=rule, divide_by_lr=divide_by_lr, measures=measures)
    if validation:
        val_ds = tf.data.Dataset.from_tensor_slices(
            (np.stack([as_f32(b)[0] for b in val]),
             {t: np.stack([as_f32(b)[1][t] for b in val]) for t in TASKS}))
        config.update(batch="validation", validation_data=val_ds)
    model = tag_tf.MultiTaskModel(network, shared=["trunk"],
                                  affinity=tag_tf.AffinityConfig(**config))
    model.compile(optimizer=make_optimizer(), loss="mse", loss_weights=loss_weights)

    params = {"W": network.get_layer("trunk").kernel.numpy().astype(np.float64)}
    params.update({t: network.get_layer(t).kernel.numpy().astype(np.float64) for t in TASKS})
    opt = ref.Optimizer(**ref_kwargs)
    weights = loss_weights or {t: 1.0 for t in TASKS}
    previous = np.zeros((3, 3))
    for step, (x, y) in enumerate(train):
        V = {t: params[t] for t in TASKS}
        eval_batch = val[step % 3] if validation else None
        expected = ref.taylor_step(params["W"], V, x, y, weights, opt, rule,
                                   divide_by_lr=divide_by_lr, eval_batch=eval_batch)
        exact = ref.tag_step(params["W"], V, x, y, weights, opt, rule,
                             divide_by_lr=divide_by_lr, eval_batch=eval_batch)
        before_lookahead = model.affinity_sum.numpy()
        model.train_on_batch(*as_f32((x, y)))
        total = model.taylor_sum.numpy()
        # rtol as the lookahead's test: Keras keeps Adam's hyper-parameters in float32.
        np.testing.assert_allclose(total - previous, expected, rtol=1e-5, atol=1e-9,
                                   err_msg=f"step {step}")
        assert np.abs(expected).min() > 1e-5  # the comparison is not of zeros
        if "lookahead" in measures:  # recording both leaves the lookahead as it was
            np.testing.assert_allclose(model.affinity_sum.numpy() - before_lookahead, exact,
                                       rtol=1e-5, atol=1e-7)
        previous = total
        ref.train_update(params, x, y, weights, opt)
    np.testing.assert_array_equal(model.taylor_count.numpy(), np.full((3, 3), steps))
    np.testing.assert_array_equal(model.taylor_skipped.numpy(), 0)
    record = model.affinity_record("taylor")
    np.testing.assert_allclose(record.affinity, previous / steps)
    assert record.config["measure"] == "taylor"
    return model


@pytest.mark.parametrize("optimizer_name", ["sgd", "momentum", "schedule"])
def test_sgd_rule_matches_reference(optimizer_name):
    run_and_compare(optimizer_name, "sgd")


@pytest.mark.parametrize("optimizer_name", ["momentum", "nesterov", "adam", "adamw"])
def test_optimizer_rule_matches_reference(optimizer_name):
    run_and_compare(optimizer_name, "optimizer")


def test_divide_by_lr_matches_reference():
    run_and_compare("schedule", "sgd", divide_by_lr=True)
    run_and_compare("adam", "optimizer", divide_by_lr=True, steps=2)


@pytest.mark.parametrize("rule, optimizer_name", [("sgd", "sgd"), ("optimizer", "momentum")])
def test_validation_batch_matches_reference(rule, optimizer_name):
    run_and_compare(optimizer_name, rule, validation=True, steps=4)


def test_recorded_beside_lookahead_and_cosine_without_changing_them():
    model = run_and_compare("momentum", "optimizer", measures=("lookahead", "cosine", "taylor"))
    np.testing.assert_array_equal(model.cosine_count.numpy(), 3)
    run_and_compare("sgd", "sgd", validation=True, measures=("taylor", "lookahead"), steps=2)


def test_unweighted_tasks():
    run_and_compare("sgd", "sgd", loss_weights=None)


def test_lookahead_steps_equal_the_lookahead_difference():
    """theta - lookahead_values, computed without cancellation, for every optimizer."""
    for name, (make_optimizer, _) in OPTIMIZERS.items():
        network = linear_network()
        model = tag_tf.MultiTaskModel(network, shared=["trunk"], affinity=None)
        model.compile(optimizer=make_optimizer(), loss="mse")
        for batch in batches(2):
            model.train_on_batch(*as_f32(batch))
        kernel = network.get_layer("trunk").kernel
        grad = tf.random.stateless_normal(kernel.shape, seed=(1, 2), dtype=kernel.dtype)
        lr = tag_tf.lookahead.current_learning_rate(model.optimizer)
        for rule in ("sgd", "optimizer"):
            new = tag_tf.lookahead.lookahead_values(rule, model.optimizer, [kernel], [grad],
                                                    lr)[0]
            step = tag_tf.lookahead.lookahead_steps(rule, model.optimizer, [kernel], [grad],
                                                    lr)[0]
            np.testing.assert_allclose(step.numpy(), (kernel.value - new).numpy(),
                                       rtol=1e-9, atol=1e-14, err_msg=f"{name} {rule}")


def one_step_affinities(lr):
    """Lookahead and Taylor Z of one recording step of plain SGD(lr) on the toy model."""
    model = tag_tf.MultiTaskModel(linear_network(), shared=["trunk"],
                                  affinity=tag_tf.AffinityConfig(
                                      every_n=1, measures=("lookahead", "taylor")))
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse", loss_weights=WEIGHTS)
    model.train_on_batch(*as_f32(batches(1)[0]))
    return model.affinity_sum.numpy(), model.taylor_sum.numpy()


def test_taylor_approaches_the_lookahead_like_lr():
    """The neglected term is O(lr^2) against Z = O(lr): the relative gap scales like lr."""
    gaps = []
    for lr in (1e-2, 1e-3, 1e-4):
        exact, taylor = one_step_affinities(lr)
        gaps.append(np.max(np.abs(taylor - exact)) / np.max(np.abs(exact)))
    assert gaps[0] < 0.2
    for larger, smaller in zip(gaps, gaps[1:]):
        assert 5 < larger / smaller < 20, gaps  # about 10x per 10x smaller lr


def test_zero_loss_weight_target_is_skipped_not_guessed():
    """With a zero loss weight the training tape has no gradient of L_j: column skipped."""
    model = tag_tf.MultiTaskModel(linear_network(), shared=["trunk"],
                                  affinity=tag_tf.AffinityConfig(every_n=1,
                                                                 measures=("taylor",)))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse",
                  loss_weights={"a": 1.0, "b": 0.0, "c": 1.0})
    for batch in batches(2):
        model.train_on_batch(*as_f32(batch))
    np.testing.assert_array_equal(model.taylor_skipped.numpy()[:, 1], 2)
    np.testing.assert_array_equal(model.taylor_count.numpy()[:, [0, 2]], 2)
    record = model.affinity_record("taylor")
    assert np.isnan(record.affinity[:, 1]).all()
    np.testing.assert_array_equal(record.affinity[1, [0, 2]], 0.0)  # no step from b


def test_bad_measures_are_named():
    with pytest.raises(ValueError, match="measures must be a non-empty subset.*taylor"):
        tag_tf.AffinityConfig(measures=("taylor", "tailor"))
    with pytest.raises(ValueError, match="measures must be"):
        tag_tf.AffinityConfig(measures=("taylor", "taylor"))
    model = tag_tf.MultiTaskModel(linear_network(), shared=["trunk"],
                                  affinity=tag_tf.AffinityConfig(measures="taylor"))
    assert model.affinity_config.measures == ("taylor",)
    with pytest.raises(ValueError, match="measure must be one of"):
        model.affinity_record("taylors")


def test_mirrored_records_what_one_device_records():
    config = tag_tf.AffinityConfig(every_n=1, measures=("taylor",))
    one = dist.compare(config=config)
    assert np.all(one["taylor_counts"] == dist.STEPS)
    assert np.abs(one["taylor"]).min() > 1e-6


@pytest.mark.slow
def test_mirrored_optimizer_rule_and_validation_batch():
    config = tag_tf.AffinityConfig(every_n=2, rule="optimizer", batch="validation",
                                   validation_data=dist.validation_data(),
                                   measures=("taylor",))
    one = dist.compare(config=config, optimizer=dist.momentum, steps=5)
    assert one["steps"] == 3
