"""DynamicWeightAverage against a NumPy transcription of Liu et al.'s DWA (CVPR 2019).

Linear trunk and heads with mse (closed-form gradients, tests/numpy_reference.py), SGD:
the weights of every epoch and the weights of the network after every epoch must be the
reference's. Epochs 1-2 train with weights 1, then w_k = K softmax(r_k / T) with
r_k = L_k(t - 1) / L_k(t - 2), L_k(t) epoch t's mean training loss.
"""

import keras
import numpy as np
import pytest

import tag_tf
from tag_tf.methods import dwa
from tests import numpy_reference as ref
from tests.toys import TASKS, linear_network

pytestmark = pytest.mark.usefixtures("float64_keras")

LR, EPOCHS, STEPS, BATCH = 0.05, 5, 3, 8


def data(seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(STEPS * BATCH, 5))
    # Different scales and noise: the tasks' losses fall at different rates.
    y = {t: s * (x @ rng.normal(size=(5, 1))) + n * rng.normal(size=(len(x), 1))
         for t, s, n in zip(TASKS, (1.0, 3.0, 0.5), (0.1, 1.0, 0.3))}
    return x, y


def reference(params, x, y, temperature):
    """(weights used in each epoch, params after each epoch) of DWA with plain SGD."""
    weights, used, after = np.ones(len(TASKS)), [], []
    history = []  # epoch mean losses
    for epoch in range(EPOCHS):
        if epoch >= 2:
            rates = history[-1] / history[-2]
            weights = len(TASKS) * np.exp(rates / temperature) / np.exp(rates / temperature).sum()
        used.append(weights.copy())
        total = np.zeros(len(TASKS))
        for step in range(STEPS):
            xb = x[step * BATCH:(step + 1) * BATCH]
            yb = {t: v[step * BATCH:(step + 1) * BATCH] for t, v in y.items()}
            V = {t: params[t] for t in TASKS}
            total += np.array(list(ref.task_losses(params["W"], V, xb, yb).values()))
            grads = ref.task_gradients(params["W"], V, xb, yb, dict(zip(TASKS, weights)))
            params["W"] = params["W"] - LR * sum(g[0] for g in grads.values())
            for t in TASKS:
                params[t] = params[t] - LR * grads[t][1]
        history.append(total / STEPS)
        after.append({k: v.copy() for k, v in params.items()})
    return used, after


@pytest.mark.parametrize("temperature", [2.0, 0.5])
def test_weights_and_training_match_the_numpy_reference(temperature):
    network = linear_network()
    model = tag_tf.MultiTaskModel(network, shared=["trunk"], affinity=None,
                                  weighting=tag_tf.DynamicWeightAverage(temperature=temperature))
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    params = {"W": network.get_layer("trunk").kernel.numpy()}
    params.update({t: network.get_layer(t).kernel.numpy() for t in TASKS})
    x, y = data()
    used, after = reference(params, x, y, temperature)
    seen = []

    class Check(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append([logs[f"{t}_weight"] for t in TASKS])
            for name, value in after[epoch].items():
                layer = "trunk" if name == "W" else name
                np.testing.assert_allclose(network.get_layer(layer).kernel.numpy(), value,
                                           rtol=1e-9, atol=1e-12, err_msg=f"{name} {epoch}")

    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0,
              callbacks=[Check()])
    np.testing.assert_allclose(seen, used, rtol=1e-12)
    assert np.ptp(used[-1]) > 1e-3  # the weights moved apart: the comparison means something
    np.testing.assert_allclose(used[-1].sum(), len(TASKS))


def test_state_survives_a_mid_epoch_save_and_load(tmp_path):
    x, y = data()

    def make():
        model = tag_tf.MultiTaskModel(linear_network(), shared=["trunk"], affinity=None,
                                      weighting=tag_tf.DWA())
        model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
        return model

    straight = make()
    straight.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0)
    first = make()
    first.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    first.train_on_batch(x[:BATCH], {t: v[:BATCH] for t, v in y.items()})
    path = str(tmp_path / "m.keras")
    first.save(path)
    resumed = keras.models.load_model(path)
    assert isinstance(resumed.weighting, tag_tf.DynamicWeightAverage)
    assert int(resumed.weighting.epoch_steps.numpy()) == 1
    resumed.fit(x[BATCH:], {t: v[BATCH:] for t, v in y.items()}, batch_size=BATCH, epochs=1,
                shuffle=False, verbose=0)
    for name in ("task_weights", "previous", "epochs"):
        np.testing.assert_allclose(getattr(resumed.weighting, name).numpy(),
                                   getattr(straight.weighting, name).numpy(), rtol=1e-12)
    assert not np.allclose(resumed.weighting.task_weights.numpy(), 1.0)


def test_weights_function_and_bad_temperature():
    np.testing.assert_allclose(dwa.dwa_weights([1.0, 1.0], [2.0, 2.0], 2.0), [1.0, 1.0])
    w = dwa.dwa_weights([1.0, 2.0, 1.0], [1.0, 1.0, 1.0], 1.0)
    np.testing.assert_allclose(w, 3 * np.exp([1, 2, 1]) / np.exp([1, 2, 1]).sum())
    for bad in (0, -1.0, float("inf"), True):
        with pytest.raises(ValueError, match="temperature"):
            tag_tf.DynamicWeightAverage(temperature=bad)
