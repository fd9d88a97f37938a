"""UW, GradNorm, PCGrad and CS affinity against hand-computed NumPy references."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

import tag_tf
from tests import numpy_reference as ref
from tests import toys
from tests.toys import TASKS


pytestmark = pytest.mark.usefixtures("float64_keras")


def numpy_pcgrad(grads, order):
    """Yu et al.'s projection, written directly."""
    out = []
    for i, g in enumerate(grads):
        g = g.copy()
        for j in order:
            if j == i:
                continue
            dot = g @ grads[j]
            if dot < 0:
                g = g - dot / (grads[j] @ grads[j]) * grads[j]
        out.append(g)
    return np.array(out)


# ------------------------------------------------------------------ PCGrad
def test_pcgrad_two_conflicting_gradients_by_hand():
    grads = tf.constant([[1.0, 0.0], [-1.0, 1.0]], tf.float64)
    projected = tag_tf.project_conflicting(grads, tf.constant([0, 1])).numpy()
    np.testing.assert_allclose(projected, [[0.5, 0.5], [0.0, 1.0]])


def test_pcgrad_leaves_agreeing_gradients_alone():
    grads = tf.constant([[1.0, 0.5], [0.5, 1.0]], tf.float64)
    np.testing.assert_allclose(tag_tf.project_conflicting(grads, tf.constant([1, 0])), grads)


def test_pcgrad_three_conflicting_gradients_every_order():
    rng = np.random.default_rng(3)
    grads = np.array([[1.0, 0.2, -0.3], [-0.8, 1.0, 0.1], [-0.5, -0.9, 0.4]])
    assert (grads @ grads.T)[~np.eye(3, dtype=bool)].min() < 0
    results = set()
    for order in itertools.permutations(range(3)):
        got = tag_tf.project_conflicting(tf.constant(grads), tf.constant(order)).numpy()
        np.testing.assert_allclose(got, numpy_pcgrad(grads, order), rtol=1e-12)
        results.add(tuple(np.round(got.ravel(), 9)))
    assert len(results) > 1  # the order matters, so shuffling it matters
    del rng


def test_pcgrad_order_is_shuffled_per_step_and_seeded():
    orders = lambda seed: [tuple(tag_tf.PCGrad(seed=seed).task_order(5).numpy())  # noqa: E731
                           for _ in range(1)]
    pcgrad = tag_tf.PCGrad(seed=7)
    drawn = [tuple(pcgrad.task_order(5).numpy()) for _ in range(8)]
    assert len(set(drawn)) > 3
    assert all(sorted(d) == list(range(5)) for d in drawn)
    again = tag_tf.PCGrad(seed=7)
    assert drawn == [tuple(again.task_order(5).numpy()) for _ in range(8)]
    assert orders(1) == orders(1)


def test_pcgrad_training_step_matches_reference():
    """Two tasks (order irrelevant): shared update = lr * sum of projected gradients."""
    tasks = TASKS[:2]
    network = toys.linear_network()
    network = keras.Model(network.input, {t: network.output[t] for t in tasks})
    model = tag_tf.MultiTaskModel(network, shared=["trunk"], affinity=None,
                                  gradient=tag_tf.PCGrad(seed=0))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    W = network.get_layer("trunk").kernel.numpy()
    V = {t: network.get_layer(t).kernel.numpy() for t in tasks}
    x, y = toys.linear_batches(1)[0]
    y = {t: y[t] for t in tasks}
    grads = ref.task_gradients(W, V, x, y, {t: 1.0 for t in tasks})
    flat = np.array([grads[t][0].ravel() for t in tasks])
    expected = W - 0.1 * numpy_pcgrad(flat, [0, 1]).sum(axis=0).reshape(W.shape)
    model.train_on_batch(*toys.as_floatx((x, y)))
    np.testing.assert_allclose(network.get_layer("trunk").kernel.numpy(), expected, rtol=1e-9)
    for t in tasks:  # heads keep their own gradients
        np.testing.assert_allclose(network.get_layer(t).kernel.numpy(),
                                   V[t] - 0.1 * grads[t][1], rtol=1e-9)


# ---------------------------------------------------------------------- UW
@pytest.mark.parametrize("clipped", [False, True])
def test_uncertainty_weighting_loss_and_gradient(clipped):
    network = toys.linear_network()
    weighting = tag_tf.UncertaintyWeighting(clipped=clipped)
    model = tag_tf.MultiTaskModel(network, shared=["trunk"], affinity=None, weighting=weighting)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    W = network.get_layer("trunk").kernel.numpy()
    V = {t: network.get_layer(t).kernel.numpy() for t in TASKS}
    x, y = toys.linear_batches(1)[0]
    losses = np.array([v for v in ref.task_losses(W, V, x, y).values()])
    s = weighting.log_variance.numpy().copy()
    if clipped:
        u = np.clip(s, 0.01, 10.0)
        expected_loss = np.sum(losses / np.exp(2 * u) + u)
        grad_s = -2 * losses / np.exp(2 * u) + 1  # inside the clip range
    else:
        expected_loss = np.sum(np.exp(-s) * losses + s)
        grad_s = -np.exp(-s) * losses + 1
    logs = model.train_on_batch(*toys.as_floatx((x, y)), return_dict=True)
    np.testing.assert_allclose(logs["loss"], expected_loss, rtol=1e-9)
    np.testing.assert_allclose(weighting.log_variance.numpy(), s - 0.1 * grad_s, rtol=1e-9)
    # The trunk's gradient is the weighted sum of the task gradients.
    factor = np.exp(-2 * np.clip(s, 0.01, 10)) if clipped else np.exp(-s)
    grads = ref.task_gradients(W, V, x, y, dict(zip(TASKS, factor)))
    np.testing.assert_allclose(network.get_layer("trunk").kernel.numpy(),
                               W - 0.1 * sum(g[0] for g in grads.values()), rtol=1e-9)
    assert set(f"{t}_weight" for t in TASKS) <= set(logs)


# ---------------------------------------------------------------- GradNorm
def test_gradnorm_one_weight_update_matches_reference():
    network = toys.linear_network()
    gradnorm = tag_tf.GradNorm(alpha=0.5, momentum=0.9, clip=(0.1, 10.0))
    model = tag_tf.MultiTaskModel(network, shared=["trunk"], affinity=None, weighting=gradnorm)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    lr = 0.1
    params = {"W": network.get_layer("trunk").kernel.numpy()}
    params.update({t: network.get_layer(t).kernel.numpy() for t in TASKS})
    w = np.ones(3)
    velocity = np.zeros(3)
    initial = None
    for step, (x, y) in enumerate(toys.linear_batches(3)):
        V = {t: params[t] for t in TASKS}
        losses = np.array(list(ref.task_losses(params["W"], V, x, y).values()))
        grads = ref.task_gradients(params["W"], V, x, y, {t: 1.0 for t in TASKS})
        norms = np.array([np.linalg.norm(grads[t][0]) for t in TASKS])
        model.train_on_batch(*toys.as_floatx((x, y)))
        # Reference: model step with the old weights, then the GradNorm step.
        weighted = ref.task_gradients(params["W"], V, x, y, dict(zip(TASKS, w)))
        params["W"] = params["W"] - lr * sum(g[0] for g in weighted.values())
        for t in TASKS:
            params[t] = params[t] - lr * weighted[t][1]
        initial = losses if initial is None else initial
        G = w * norms
        ratio = losses / initial
        target = G.mean() * (ratio / ratio.mean()) ** 0.5
        velocity = 0.9 * velocity - lr * np.sign(G - target) * norms
        w = np.clip(w + velocity, 0.1, 10.0)
        w = w * 3 / w.sum()
        np.testing.assert_allclose(gradnorm.task_weights.numpy(), w, rtol=1e-6,
                                   err_msg=f"step {step}")
        np.testing.assert_allclose(network.get_layer("trunk").kernel.numpy(), params["W"],
                                   rtol=1e-6, atol=1e-9)
    assert not np.allclose(w, 1.0)


def test_gradnorm_rejects_unknown_layer():
    with pytest.raises(ValueError, match="GradNorm layer 'a'"):
        tag_tf.MultiTaskModel(toys.linear_network(), shared=["trunk"],
                              weighting=tag_tf.GradNorm(layer="a"))


# ---------------------------------------------------------------- CS
def test_cosine_affinity_matches_reference_and_shares_the_step():
    network = toys.linear_network()
    model = tag_tf.MultiTaskModel(network, shared=["trunk"], affinity=tag_tf.AffinityConfig(
        every_n=1, measures=("lookahead", "cosine")))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    params = {"W": network.get_layer("trunk").kernel.numpy()}
    params.update({t: network.get_layer(t).kernel.numpy() for t in TASKS})
    opt = ref.Optimizer(kind="sgd", lr=0.1)
    expected_cos, expected_z = np.zeros((3, 3)), np.zeros((3, 3))
    data = toys.linear_batches(3)
    for x, y in data:
        V = {t: params[t] for t in TASKS}
        grads = ref.task_gradients(params["W"], V, x, y, {t: 1.0 for t in TASKS})
        flat = np.array([grads[t][0].ravel() for t in TASKS])
        norms = np.linalg.norm(flat, axis=1)
        expected_cos += flat @ flat.T / np.outer(norms, norms)
        expected_z += ref.tag_step(params["W"], V, x, y, {t: 1.0 for t in TASKS}, opt, "sgd")
        model.train_on_batch(*toys.as_floatx((x, y)))
        ref.train_update(params, x, y, {t: 1.0 for t in TASKS}, opt)
    np.testing.assert_allclose(model.affinity_record("cosine").affinity, expected_cos / 3,
                               rtol=1e-9)
    np.testing.assert_allclose(model.affinity_record().affinity, expected_z / 3, rtol=1e-6)
    with pytest.raises(ValueError, match="measure"):
        model.affinity_record("pearson")
    with pytest.raises(ValueError, match="measures"):
        tag_tf.AffinityConfig(measures=("lookahead", "hessian"))


# ------------------------------------------------- fit(), callbacks, save/load
def test_fit_with_tag_pcgrad_and_uw_end_to_end(tmp_path):
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("float32")
    network = toys.linear_network()
    model = tag_tf.MultiTaskModel(
        network, shared=["trunk"],
        affinity=tag_tf.AffinityConfig(every_n=2, measures=("lookahead", "cosine")),
        weighting=tag_tf.UncertaintyWeighting(clipped=True), gradient=tag_tf.PCGrad(seed=1))
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    batches = [toys.as_floatx(b) for b in toys.linear_batches(4)]
    x = np.concatenate([b[0] for b in batches])
    y = {t: np.concatenate([b[1][t] for b in batches]) for t in TASKS}
    out = str(tmp_path / "out")
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, validation_data=(x, y),
                        callbacks=[tag_tf.AffinityLogger(output_dir=out, log_dir=str(tmp_path)),
                                   keras.callbacks.EarlyStopping(patience=3,
                                                                 restore_best_weights=True)])
    for task in TASKS:
        assert len(history.history[f"{task}_weight"]) == 2
    assert int(model.affinity_state.affinity_steps.numpy()) == 4
    assert np.all(np.isfinite(tag_tf.load_affinity(out + "/affinity.json").affinity))
    assert np.all(np.isfinite(tag_tf.load_affinity(out + "/cosine_affinity.json").affinity))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.weighting, tag_tf.UncertaintyWeighting) and loaded.weighting.clipped
    assert isinstance(loaded.gradient, tag_tf.PCGrad)
    np.testing.assert_array_equal(loaded.weighting.log_variance.numpy(),
                                  model.weighting.log_variance.numpy())
    np.testing.assert_allclose(loaded.predict(x, verbose=0)["a"], model.predict(x, verbose=0)["a"],
                               rtol=1e-6)
    assert loaded.compiled  # losses and optimizer restored: evaluate/fit need no compile()
    np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0),
                               rtol=1e-6)
