"""The first-order ("taylor") affinity: exact against a NumPy reference, equal under
MirroredStrategy, and close to the exact lookahead for small steps."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tag_tf
from tag_tf.core import keras_compat
from tag_tf.core import lookahead
from tests import numpy_reference as ref
from absl import flags

from tag_tf.runner import pipeline
from tag_tf.cli import flags as flags_lib
from tag_tf.runner import train
from tag_tf.runner.config import RunConfig
from tests import toys
from tests.toys import LOSS_WEIGHTS, OPTIMIZERS, TASKS

float64 = pytest.mark.usefixtures("float64_keras")


def run_and_compare(optimizer_name, rule, *, divide_by_lr=False, validation=False, steps=3,
                    measures=("taylor",), loss_weights=LOSS_WEIGHTS):
    """Trains the linear toy model step by step; each step's Taylor Z equals the reference."""
    make_optimizer, ref_kwargs = OPTIMIZERS[optimizer_name]
    network = toys.linear_network()
    train = toys.linear_batches(steps)
    val = toys.linear_batches(3, seed=7)
    config = dict(every_n=1, rule=rule, divide_by_lr=divide_by_lr, measures=measures)
    if validation:
        val_ds = tf.data.Dataset.from_tensor_slices(
            (np.stack([toys.as_floatx(b)[0] for b in val]),
             {t: np.stack([toys.as_floatx(b)[1][t] for b in val]) for t in TASKS}))
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
        before_lookahead = model.affinity_state.affinity_sum.numpy()
        model.train_on_batch(*toys.as_floatx((x, y)))
        total = model.affinity_state.taylor_sum.numpy()
        # rtol as the lookahead's test: Keras keeps Adam's hyper-parameters in float32.
        np.testing.assert_allclose(total - previous, expected, rtol=1e-5, atol=1e-9,
                                   err_msg=f"step {step}")
        assert np.abs(expected).min() > 1e-5  # the comparison is not of zeros
        if "lookahead" in measures:  # recording both leaves the lookahead as it was
            np.testing.assert_allclose(
                model.affinity_state.affinity_sum.numpy() - before_lookahead, exact,
                rtol=1e-5, atol=1e-7)
        previous = total
        ref.train_update(params, x, y, weights, opt)
    np.testing.assert_array_equal(model.affinity_state.taylor_count.numpy(), np.full((3, 3), steps))
    np.testing.assert_array_equal(model.affinity_state.taylor_skipped.numpy(), 0)
    record = model.affinity_record("taylor")
    np.testing.assert_allclose(record.affinity, previous / steps)
    assert record.config["measure"] == "taylor"
    return model


def eagerly(run):
    """Runs ``run()`` with tf.functions run eagerly (tracing is most of a toy test's time;
    the traced path is covered by the graph-mode cases)."""
    tf.config.run_functions_eagerly(True)
    try:
        return run()
    finally:
        tf.config.run_functions_eagerly(False)


# (optimizer, traced): a traced and an eager run of each rule.
@float64
@pytest.mark.parametrize("optimizer_name, traced", [("sgd", True), ("momentum", False),
                                                    ("schedule", False)])
def test_sgd_rule_matches_reference(optimizer_name, traced):
    run = lambda: run_and_compare(optimizer_name, "sgd")  # noqa: E731
    if traced:
        run()
    else:
        eagerly(run)


@float64
@pytest.mark.parametrize("optimizer_name, traced", [("momentum", True), ("nesterov", False),
                                                    ("adam", True), ("adamw", False)])
def test_optimizer_rule_matches_reference(optimizer_name, traced):
    run = lambda: run_and_compare(optimizer_name, "optimizer")  # noqa: E731
    if traced:
        run()
    else:
        eagerly(run)


@float64
@pytest.mark.parametrize("optimizer_name, rule", [("schedule", "sgd"), ("adam", "optimizer")])
def test_divide_by_lr_matches_reference(optimizer_name, rule):
    eagerly(lambda: run_and_compare(optimizer_name, rule, divide_by_lr=True))


@float64
@pytest.mark.parametrize("rule, optimizer_name", [("sgd", "sgd"), ("optimizer", "momentum")])
def test_validation_batch_matches_reference(rule, optimizer_name):
    run_and_compare(optimizer_name, rule, validation=True, steps=4)


@float64
def test_recorded_beside_lookahead_and_cosine_without_changing_them():
    model = run_and_compare("momentum", "optimizer", measures=("lookahead", "cosine", "taylor"))
    np.testing.assert_array_equal(model.affinity_state.cosine_count.numpy(), 3)


@float64
def test_recorded_beside_lookahead_on_the_validation_batch():
    run_and_compare("sgd", "sgd", validation=True, measures=("taylor", "lookahead"), steps=2)


@float64
def test_unweighted_tasks():
    eagerly(lambda: run_and_compare("sgd", "sgd", loss_weights=None))


@float64
def test_lookahead_steps_equal_the_lookahead_difference():
    """theta - lookahead_values, computed without cancellation, for every optimizer (with
    its state after two real steps)."""
    for name, (make_optimizer, _) in OPTIMIZERS.items():
        kernel = keras.Variable(np.random.default_rng(0).normal(size=(5, 4)), name="kernel")
        optimizer = make_optimizer()
        optimizer.build([kernel])
        for seed in range(2):
            optimizer.apply([tf.random.stateless_normal(kernel.shape, seed=(seed, 9),
                                                        dtype=kernel.dtype)], [kernel])
        grad = tf.random.stateless_normal(kernel.shape, seed=(1, 2), dtype=kernel.dtype)
        lr = lookahead.current_learning_rate(optimizer)
        for rule in ("sgd", "optimizer"):
            new = lookahead.lookahead_values(rule, optimizer, [kernel], [grad], lr)[0]
            step = lookahead.lookahead_steps(rule, optimizer, [kernel], [grad], lr)[0]
            assert np.abs(step.numpy()).min() > 0
            np.testing.assert_allclose(step.numpy(), (kernel.value - new).numpy(),
                                       rtol=1e-9, atol=1e-14, err_msg=f"{name} {rule}")


def one_step_affinities(lr):
    """Lookahead and Taylor Z of one recording step of plain SGD(lr) on the toy model."""
    model = tag_tf.MultiTaskModel(toys.linear_network(), shared=["trunk"],
                                  affinity=tag_tf.AffinityConfig(
                                      every_n=1, measures=("lookahead", "taylor")))
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse", loss_weights=LOSS_WEIGHTS)
    model.train_on_batch(*toys.as_floatx(toys.linear_batches(1)[0]))
    return model.affinity_state.affinity_sum.numpy(), model.affinity_state.taylor_sum.numpy()


@float64
@pytest.mark.usefixtures("eager")
def test_taylor_approaches_the_lookahead_like_lr():
    """The neglected term is O(lr^2) against Z = O(lr): the relative gap scales like lr."""
    gaps = []
    for lr in (1e-2, 1e-3, 1e-4):
        exact, taylor = one_step_affinities(lr)
        gaps.append(np.max(np.abs(taylor - exact)) / np.max(np.abs(exact)))
    assert gaps[0] < 0.2
    for larger, smaller in zip(gaps, gaps[1:]):
        assert 5 < larger / smaller < 20, gaps  # about 10x per 10x smaller lr


@float64
@pytest.mark.usefixtures("eager")
def test_uncertainty_weighting_targets_are_the_unweighted_losses_gradients():
    """Sources step on the weighted term (as the lookahead), targets are d L_j (Eq. 1's
    unweighted L_j): at a small lr the Taylor Z equals the lookahead's, column by column,
    although the weights exp(-s_j) * w_j differ by up to 6x."""
    model = tag_tf.MultiTaskModel(toys.linear_network(), shared=["trunk"],
                                  weighting=tag_tf.UncertaintyWeighting(),
                                  affinity=tag_tf.AffinityConfig(
                                      every_n=1, measures=("lookahead", "taylor")))
    model.compile(optimizer=keras.optimizers.SGD(1e-4), loss="mse", loss_weights=LOSS_WEIGHTS)
    first, second = toys.linear_batches(2)
    model.train_on_batch(*toys.as_floatx(first))  # builds the weighting
    model.weighting.log_variance.assign([0.5, -0.3, 1.0])
    model.reset_affinity()  # zeroes the Taylor state too
    np.testing.assert_array_equal(model.affinity_state.taylor_count.numpy(), 0)
    model.train_on_batch(*toys.as_floatx(second))
    exact, taylor = model.affinity_state.affinity_sum.numpy(), model.affinity_state.taylor_sum.numpy()
    assert int(model.affinity_state.affinity_steps.numpy()) == 1
    np.testing.assert_allclose(taylor, exact, rtol=2e-3)


@float64
@pytest.mark.usefixtures("eager")
def test_zero_loss_weight_target_is_skipped_not_guessed():
    """With a zero loss weight the training tape has no gradient of L_j: column skipped."""
    model = tag_tf.MultiTaskModel(toys.linear_network(), shared=["trunk"],
                                  affinity=tag_tf.AffinityConfig(every_n=1,
                                                                 measures=("taylor",)))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse",
                  loss_weights={"a": 1.0, "b": 0.0, "c": 1.0})
    for batch in toys.linear_batches(2):
        model.train_on_batch(*toys.as_floatx(batch))
    np.testing.assert_array_equal(model.affinity_state.taylor_skipped.numpy()[:, 1], 2)
    np.testing.assert_array_equal(model.affinity_state.taylor_count.numpy()[:, [0, 2]], 2)
    record = model.affinity_record("taylor")
    assert np.isnan(record.affinity[:, 1]).all()
    np.testing.assert_array_equal(record.affinity[1, [0, 2]], 0.0)  # no step from b


@float64
def test_bad_measures_are_named():
    with pytest.raises(ValueError, match="measures must be a non-empty subset.*taylor"):
        tag_tf.AffinityConfig(measures=("taylor", "tailor"))
    with pytest.raises(ValueError, match="measures must be"):
        tag_tf.AffinityConfig(measures=("taylor", "taylor"))
    model = tag_tf.MultiTaskModel(toys.linear_network(), shared=["trunk"],
                                  affinity=tag_tf.AffinityConfig(measures="taylor"))
    assert model.affinity_config.measures == ("taylor",)
    with pytest.raises(ValueError, match="measure must be one of"):
        model.affinity_record("taylors")


@float64
def test_mirrored_records_what_one_device_records():
    config = tag_tf.AffinityConfig(every_n=1, measures=("taylor",))
    one = toys.one_device_and_mirrored(config=config)
    assert np.all(one["taylor_counts"] == toys.STRATEGY_STEPS)
    assert np.abs(one["taylor"]).min() > 1e-6


@float64
@pytest.mark.slow
def test_mirrored_optimizer_rule_and_validation_batch():
    config = tag_tf.AffinityConfig(every_n=2, rule="optimizer", batch="validation",
                                   validation_data=toys.tanh_validation_data(),
                                   measures=("taylor",))
    one = toys.one_device_and_mirrored(config=config, optimizer=toys.sgd_momentum, steps=5)
    assert one["steps"] == 3


@pytest.mark.usefixtures("restore_policy", "eager")
def test_mixed_precision_measures_in_float32():
    """Under mixed_float16 the Taylor Z uses the float32 gradients and losses (as the
    lookahead): at the same weights it equals a float32 run's."""
    measures = ("taylor", "lookahead")
    reference, initial = toys.train_under_policy("float32", steps=1, measures=measures)
    mixed_model, _ = toys.train_under_policy("mixed_float16", steps=1, initial=initial,
                                             measures=measures)
    assert keras_compat.is_mixed(mixed_model.network)
    np.testing.assert_allclose(mixed_model.affinity_record("taylor").affinity,
                               reference.affinity_record("taylor").affinity, rtol=1e-4)


def test_affinity_measure_flag_and_option():
    registry = flags.FlagValues()
    flags_lib.define_flags(RunConfig, registry)
    flags_lib.parser(registry, "usage")(["prog", "--affinity_measure=taylor"])
    options = flags_lib.read_flags(RunConfig, registry)
    assert options.affinity.measures == ("taylor",)
    assert train.affinity_config("affinity", options, None).measures == ("taylor",)
    assert train.affinity_config("cs", options, None).measures == ("cosine",)
    assert train.affinity_config("affinity", RunConfig(), None).measures == ("lookahead",)
    with pytest.raises(ValueError, match="affinity_measure must be one of.*'cosine'"):
        RunConfig().replace(affinity_measure="cosine")
    with pytest.raises(SystemExit):
        flags_lib.parser(registry, "usage")(["prog", "--affinity_measure=x"])


@pytest.mark.slow
def test_pipeline_affinity_mode_records_and_selects_from_taylor(tmp_path):
    options = RunConfig().replace(epochs=1, patience=None, verbose=0, every_n=1, budgets=(2,),
                                  bootstrap=0, affinity_measure="taylor")
    out = str(tmp_path / "affinity")
    results = pipeline.run("affinity", toys.planted_experiment(), options, output_dir=out)
    assert results["affinity"]["measure"] == "taylor"
    assert results["affinity"]["path"] == os.path.join(out, "taylor_affinity.json")
    assert not os.path.exists(os.path.join(out, "affinity.json"))
    for suffix in (".json", ".npz", ".png"):
        assert os.path.exists(os.path.join(out, "taylor_affinity" + suffix))
    with open(results["affinity"]["path"]) as f:
        saved = json.load(f)
    assert saved["config"]["measure"] == "taylor"
    assert np.isfinite(np.asarray(results["affinity"]["matrix"], dtype=float)).all()
    assert results["selection"]["budgets"] == [2]
