"""RepresentationGradNorm against a NumPy transcription of Standley et al.'s
GradNormRepFunction (the GradNorm of TAG's Taskonomy runs).

Network: a linear encoder R = x W and linear heads p_t = R V_t with mse losses, so every
gradient is written by hand: with e_t = R V_t - y_t, dL_t/dR = (2/B) e_t V_t^T and
dL_t/dV_t = R^T (2/B) e_t.
"""

import keras
import numpy as np
import pytest

import tag_tf
from tests import toys
from tests.toys import TASKS

D, K = toys.LINEAR_INPUTS, toys.LINEAR_WIDTH  # the linear toy's encoder: R = x W, W is D x K
LR = 0.1

pytestmark = pytest.mark.usefixtures("float64_keras")


def scaled_batches(count, seed=1):
    # Task scales differ, so the loss ratios (and the weights) move apart.
    return toys.linear_batches(count, seed, target_scales=(1.0, 3.0, 0.3))


class OriginalGradNorm:
    """GradNormRepFunction's state and backward pass, with Xception.input_per_task_losses'
    reset, transcribed step by step in plain Python."""

    def __init__(self, n, alpha=1.5, step=1e-4, reset_until=200):
        self.n, self.alpha, self.step, self.reset_until = n, alpha, step, reset_until
        self.count = 0
        self.initial = None
        self.weights = [1.0] * n

    def forward(self, losses):  # input_per_task_losses
        self.count += 1
        if self.count < self.reset_until:
            self.initial = list(losses)
            self.weights = [1.0 for _ in losses]
        self.current = list(losses)

    def backward(self, rep_grads):  # returns the encoder-bound gradient
        n = self.n
        giw = [np.sqrt(g.reshape(-1) @ g.reshape(-1)) * self.weights[i]
               for i, g in enumerate(rep_grads)]
        gw_bar = np.mean(giw)
        ratio = [c / max(i, 1e-7) for c, i in zip(self.current, self.initial)]
        mean_ratio = np.mean(ratio)
        r = [x / max(mean_ratio, 1e-8) for x in ratio]
        target_grad = [gw_bar * max(x, 1e-8) ** self.alpha for x in r]
        target = [target_grad[i] / giw[i] for i in range(n)]
        total = max(1e-7, sum(target))
        target = [t * n / total for t in target]
        for i in range(n):
            w = self.weights[i]
            self.weights[i] += self.step * w if w < target[i] else -self.step * w
        total = max(1e-7, sum(self.weights))
        self.weights = [w * n / total for w in self.weights]
        return sum(g * w for g, w in zip(rep_grads, self.weights))


def reference_step(params, x, y, original, heads_weighted=False):
    W = params["W"]
    R = x @ W
    losses, rep_grads, head_grads = [], [], {}
    for t in TASKS:
        err = R @ params[t] - y[t]
        losses.append(np.mean(err ** 2))
        d = 2.0 / err.size * err
        rep_grads.append(d @ params[t].T)
        head_grads[t] = R.T @ d
    original.forward(losses)
    encoder_grad = original.backward(rep_grads)
    params["W"] = W - LR * x.T @ encoder_grad
    for k, t in enumerate(TASKS):
        scale = original.weights[k] if heads_weighted else 1.0
        params[t] = params[t] - LR * scale * head_grads[t]
    return np.array(losses)


def rep_gradnorm_model(network, **kwargs):
    gradnorm = tag_tf.RepresentationGradNorm(**kwargs)
    model = tag_tf.MultiTaskModel(network, shared=["trunk"], affinity=None, weighting=gradnorm)
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    return model, gradnorm


def params_of(network):
    params = {"W": network.get_layer("trunk").kernel.numpy().copy()}
    params.update({t: network.get_layer(t).kernel.numpy().copy() for t in TASKS})
    return params


@pytest.mark.parametrize("step,reset_until,steps", [(1e-4, 3, 6), (0.05, 3, 8), (0.05, 2, 5)])
def test_matches_a_numpy_transcription_of_the_original(step, reset_until, steps, eager):
    network = toys.linear_network()
    model, gradnorm = rep_gradnorm_model(network, alpha=1.5, step=step, reset_until=reset_until)
    params = params_of(network)
    original = OriginalGradNorm(len(TASKS), alpha=1.5, step=step, reset_until=reset_until)
    for k, (x, y) in enumerate(scaled_batches(steps)):
        losses = reference_step(params, x, y, original)
        logs = model.train_on_batch(x, y, return_dict=True)
        np.testing.assert_allclose(logs["loss"], losses.sum(), rtol=1e-9)
        np.testing.assert_allclose(gradnorm.task_weights.numpy(), original.weights, rtol=1e-9,
                                   err_msg=f"step {k + 1}")
        np.testing.assert_allclose([logs[f"{t}_weight"] for t in TASKS], original.weights,
                                   rtol=1e-9)
        np.testing.assert_allclose(gradnorm.initial_losses.numpy(), original.initial, rtol=1e-9)
        for name, value in params_of(network).items():
            np.testing.assert_allclose(value, params[name], rtol=1e-9, atol=1e-12,
                                       err_msg=f"{name} after step {k + 1}")
    # The weights really moved (after the resets), so the comparison above means something.
    assert np.ptp(original.weights) > (0.05 if step > 1e-3 else 1e-4)


def test_resets_until_step_and_weights_only_the_encoder_gradient(eager):
    network = toys.linear_network()
    model, gradnorm = rep_gradnorm_model(network, step=0.05, reset_until=4)
    params = params_of(network)
    original = OriginalGradNorm(len(TASKS), step=0.05, reset_until=4)
    history = []
    for x, y in scaled_batches(6):
        losses = reference_step(params, x, y, original)
        model.train_on_batch(x, y)
        history.append((losses, gradnorm.task_weights.numpy().copy()))
    # Steps 1..3 (t < 4): L(0) is the step's own losses and the weights restart from 1, so
    # they are 1 +- 5 % renormalised: w / min(w) is 1 or 1.05 / 0.95. From step 4 on L(0)
    # stays and the nudges accumulate.
    for losses, w in history[:3]:
        ratios = w / w.min()
        assert np.all(np.isclose(ratios, 1.0) | np.isclose(ratios, 1.05 / 0.95)), w
        assert not np.allclose(w, 1.0)
    np.testing.assert_allclose(gradnorm.initial_losses.numpy(), history[2][0], rtol=1e-12)
    assert np.abs(history[5][1] - 1.0).max() > 0.06  # accumulated past one nudge
    # Heads unweighted: a reference that also weights the heads ends elsewhere.
    params_weighted = params_of(toys.linear_network())
    weighted = OriginalGradNorm(len(TASKS), step=0.05, reset_until=4)
    for x, y in scaled_batches(6):
        reference_step(params_weighted, x, y, weighted, heads_weighted=True)
    assert not np.allclose(params_weighted["b"], network.get_layer("b").kernel.numpy())
    np.testing.assert_allclose(network.get_layer("b").kernel.numpy(), params["b"], rtol=1e-9)


def test_state_is_checkpointed_and_resumes_exactly(tmp_path, eager):
    data = scaled_batches(8)
    straight, _ = rep_gradnorm_model(toys.linear_network(), step=0.05, reset_until=3)
    for x, y in data:
        straight.train_on_batch(x, y)
    first, _ = rep_gradnorm_model(toys.linear_network(), step=0.05, reset_until=3)
    for x, y in data[:4]:
        first.train_on_batch(x, y)
    path = str(tmp_path / "m.keras")
    first.save(path)
    resumed = keras.models.load_model(path)
    assert isinstance(resumed.weighting, tag_tf.RepresentationGradNorm)
    assert resumed.weighting.reset_until == 3 and resumed.weighting.layer_name == "trunk"
    assert int(resumed.weighting.steps.numpy()) == 4
    for x, y in data[4:]:
        resumed.train_on_batch(x, y)
    for a, b in zip(resumed.weights, straight.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_fit_logs_weights_and_mixed_precision_trains():
    """Graph mode (the other tests run eagerly), a LossScaleOptimizer, float16 gradients."""
    keras.config.set_floatx("float32")
    keras.config.set_dtype_policy("mixed_float16")
    network = toys.linear_network()
    model = tag_tf.MultiTaskModel(network, shared=["trunk"], affinity=None,
                                  weighting=tag_tf.RepresentationGradNorm(step=0.05,
                                                                          reset_until=2))
    model.compile(optimizer=keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(LR)),
                  loss="mse")
    x = np.concatenate([b[0] for b in scaled_batches(4)]).astype("float32")
    y = {t: np.concatenate([b[1][t] for b in scaled_batches(4)]).astype("float32") for t in TASKS}
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    weights = np.array([history.history[f"{t}_weight"] for t in TASKS])
    assert np.all(np.isfinite(weights)) and not np.allclose(weights[:, -1], 1.0)
    np.testing.assert_allclose(weights.sum(axis=0), len(TASKS), rtol=1e-5)


def test_default_representation_is_the_last_shared_layer():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((D,))
    h = keras.layers.Dense(K, name="first")(inputs)
    h = keras.layers.Dense(K, name="second")(h)
    h = keras.layers.Activation("relu", name="act")(h)
    network = keras.Model(inputs, {t: keras.layers.Dense(1, name=t)(h) for t in TASKS})
    weighting = tag_tf.RepresentationGradNorm()
    tag_tf.MultiTaskModel(network, shared=["first", "second"], affinity=None,
                          weighting=weighting)
    assert weighting.layer_name == "second"
    named = tag_tf.RepresentationGradNorm(representation="act")
    tag_tf.MultiTaskModel(network, shared=["first", "second"], affinity=None, weighting=named)
    assert named.layer_name == "act"


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.trunk = keras.layers.Dense(K, name="trunk")
        self.heads = {t: keras.layers.Dense(1, name=t) for t in TASKS}

    def call(self, x):
        h = self.trunk(x)
        return {t: head(h) for t, head in self.heads.items()}


def test_clear_errors():
    def build(network, **kwargs):
        options = dict(affinity=None, weighting=tag_tf.RepresentationGradNorm(**kwargs))
        return tag_tf.MultiTaskModel(network, shared=["trunk"], **options)

    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        build(toys.linear_network(), representation="nope")
    with pytest.raises(ValueError, match="affinity recording or PCGrad"):
        tag_tf.MultiTaskModel(toys.linear_network(), shared=["trunk"],
                              weighting=tag_tf.RepresentationGradNorm())
    subclassed = _Subclassed()
    subclassed(np.zeros((2, D)))
    with pytest.raises(ValueError, match="functional network"):
        tag_tf.MultiTaskModel(subclassed, shared=["trunk"], tasks=TASKS, affinity=None,
                              weighting=tag_tf.RepresentationGradNorm())
    inputs = keras.Input((D,))
    rep = keras.layers.Dense(K, name="trunk")(inputs)
    skip = keras.layers.Concatenate()([rep, inputs])  # a head sees the input directly
    network = keras.Model(inputs, {"a": keras.layers.Dense(1, name="a")(skip),
                                   "b": keras.layers.Dense(1, name="b")(rep)})
    with pytest.raises(ValueError, match="only through the output of 'trunk'"):
        build(network)
    for bad in (dict(alpha=-1.0), dict(step=0.0), dict(step=1.5), dict(reset_until=1)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            tag_tf.RepresentationGradNorm(**bad)


def test_taskonomy_gradnorm_mode_is_the_original():
    """``taskonomy.main --mode=gradnorm`` weights the representation's gradient (alpha 1.5,
    at the final shared conv + BN, before the 1/sqrt(n) gradient scale); training it end to
    end is tests/taskonomy/test_taskonomy_main.py::test_mode[gradnorm] (slow)."""
    import types
    from taskonomy import experiment as taskonomy_experiment
    from taskonomy import presets
    tasks = ["depth_zbuffer", "normal"]
    experiment = taskonomy_experiment.build_experiment(
        presets.TaskonomySettings(tasks=",".join(tasks), image_size=32, widths="tiny"),
        types.SimpleNamespace(train=None, validation=None, test=None, train_data_fn=None,
                              bad_files=None))
    weighting = experiment.gradnorm_fn(presets.RUN.training.gradnorm_alpha)
    assert isinstance(weighting, tag_tf.RepresentationGradNorm)
    assert (weighting.alpha, weighting.step, weighting.reset_until) == (1.5, 1e-4, 200)
    network = experiment.network_fn(tasks)
    tag_tf.MultiTaskModel(network, shared=experiment.shared, affinity=None, weighting=weighting)
    assert weighting.layer_name == "enc_final_conv_bn"
    assert network.get_layer("rep_gradient_scale")  # the original's 1/sqrt(n), after R
