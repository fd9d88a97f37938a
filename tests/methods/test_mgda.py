"""MGDA / MGDA-UB against a NumPy transcription of Sener and Koltun's min-norm solver.

Linear trunk R = x W and linear heads with mse (closed-form gradients): at every step the
alphas of the normalised per-task gradients (at W for MGDA, at R for MGDA-UB), the shared
update ``sum_t alpha_t g_t`` and the heads' own updates must be the reference's. The
solver itself must reach the minimum norm of a brute-force QP.
"""

import keras
import numpy as np
import pytest
from scipy import optimize

import tag_tf
from tag_tf.methods import mgda
from tests import toys
from tests.toys import TASKS, linear_network
from tests.toys import linear_batches as batches

pytestmark = pytest.mark.usefixtures("float64_keras")
LR = 0.1


def np_line_search(v11, v12, v22):
    """min_c |c x1 + (1 - c) x2|^2 (the authors' clamps at the segment's ends)."""
    if v12 >= v11:
        return 0.999, v11
    if v12 >= v22:
        return 0.001, v22
    gamma = -(v12 - v22) / (v11 + v22 - 2 * v12)
    return gamma, v22 + gamma * (v12 - v22)


def np_min_norm(gram, max_iter=250, stop=1e-5):
    """Best pair in closed form, then Frank-Wolfe steps with exact line search."""
    n = len(gram)
    best = None
    for i in range(n):
        for j in range(i + 1, n):
            c, d = np_line_search(gram[i, i], gram[i, j], gram[j, j])
            if best is None or d < best[3]:
                best = (i, j, c, d)
    sol = np.zeros(n)
    sol[best[0]], sol[best[1]] = best[2], 1 - best[2]
    if n < 3:
        return sol
    for _ in range(max_iter):
        t = int(np.argmin(gram @ sol))
        nc, _ = np_line_search(sol @ gram @ sol, sol @ gram[:, t], gram[t, t])
        new = nc * sol
        new[t] += 1 - nc
        if np.abs(new - sol).sum() < stop:
            return sol
        sol = new
    return sol


def normalisers(kind, losses, norms):
    return {"l2": norms, "loss": losses, "loss+": losses * norms,
            "none": np.ones_like(norms)}[kind]


def reference_step(params, x, y, kind, upper_bound):
    """One MGDA(-UB) step; returns the alphas."""
    W = params["W"]
    R = x @ W
    losses, site_grads, head_grads = [], [], {}
    for t in TASKS:
        err = R @ params[t] - y[t]
        losses.append(np.mean(err ** 2))
        d = 2.0 / err.size * err
        rep_grad = d @ params[t].T  # dL_t / dR
        site_grads.append(rep_grad if upper_bound else x.T @ rep_grad)
        head_grads[t] = R.T @ d
    flat = np.stack([g.ravel() for g in site_grads])
    gram = flat @ flat.T
    scale = normalisers(kind, np.array(losses), np.sqrt(np.diag(gram)))
    alphas = np_min_norm(gram / np.outer(scale, scale))
    combined = sum(a * g for a, g in zip(alphas, site_grads))
    params["W"] = W - LR * (x.T @ combined if upper_bound else combined)
    for t in TASKS:
        params[t] = params[t] - LR * head_grads[t]  # the heads' own gradients
    return alphas


@pytest.mark.parametrize("kind", ["loss+", "l2", "none"])
@pytest.mark.parametrize("upper_bound", [True, False], ids=["ub", "exact"])
def test_steps_match_the_numpy_reference(kind, upper_bound, eager):
    network = linear_network()
    model = tag_tf.MultiTaskModel(network, shared=["trunk"], affinity=None,
                                  gradient=tag_tf.MGDA(upper_bound=upper_bound,
                                                       normalization=kind))
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    params = {"W": network.get_layer("trunk").kernel.numpy()}
    params.update({t: network.get_layer(t).kernel.numpy() for t in TASKS})
    moved = []
    for step, (x, y) in enumerate(batches(4)):
        y = {t: s * v for (t, v), s in zip(y.items(), (1.0, 4.0, 0.3))}
        alphas = reference_step(params, x, y, kind, upper_bound)
        logs = model.train_on_batch(x, y, return_dict=True)
        np.testing.assert_allclose([logs[f"{t}_weight"] for t in TASKS], alphas, rtol=1e-5,
                                   atol=1e-7, err_msg=f"step {step}")
        for name, value in params.items():
            layer = "trunk" if name == "W" else name
            np.testing.assert_allclose(network.get_layer(layer).kernel.numpy(), value,
                                       rtol=1e-9, atol=1e-12, err_msg=f"{name} step {step}")
        moved.append(alphas)
    assert np.ptp(np.array(moved)) > 1e-3  # alphas differ across tasks/steps


def test_traced_step_equals_the_reference():
    """Graph mode (the Frank-Wolfe loop is a tf.while_loop)."""
    network = linear_network()
    model = tag_tf.MultiTaskModel(network, shared=["trunk"], affinity=None,
                                  gradient=tag_tf.MGDA())
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    params = {"W": network.get_layer("trunk").kernel.numpy()}
    params.update({t: network.get_layer(t).kernel.numpy() for t in TASKS})
    for x, y in batches(3):
        reference_step(params, x, y, "loss+", True)
        model.train_on_batch(x, y)
    np.testing.assert_allclose(network.get_layer("trunk").kernel.numpy(), params["W"],
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_solver_reaches_the_minimum_norm(seed):
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(5, 7)) + rng.normal(size=(1, 7))
    gram = vectors @ vectors.T
    alphas = mgda.min_norm_weights(tf_constant(gram)).numpy()
    np.testing.assert_allclose(alphas, np_min_norm(gram), rtol=1e-9, atol=1e-12)
    assert np.all(alphas >= -1e-12) and abs(alphas.sum() - 1) < 1e-9
    best = optimize.minimize(lambda a: a @ gram @ a, np.full(5, 0.2), method="SLSQP",
                             bounds=[(0, 1)] * 5,
                             constraints={"type": "eq", "fun": lambda a: a.sum() - 1},
                             options={"ftol": 1e-14, "maxiter": 500})
    assert alphas @ gram @ alphas <= best.fun * (1 + 1e-3) + 1e-9


def tf_constant(value):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf.constant(value, tf.float64)


def test_default_representation_is_where_the_heads_meet():
    """MGDA-UB's default Z: the layer nearest to the heads whose output carries all they see of
    the shared variables (the CelebA network: ``features``, after the residual shortcut)."""
    from celeba.model import TRUNK_LAYERS, celeba_network  # pylint: disable=import-outside-toplevel
    network = celeba_network(["a", "b"], image_size=16)
    mgda_ub = tag_tf.MGDA()
    tag_tf.MultiTaskModel(network, shared=list(TRUNK_LAYERS), affinity=None, gradient=mgda_ub)
    assert mgda_ub.needs.representation == "features"
    rgn = tag_tf.RepresentationGradNorm()  # its default (the original's): the last shared layer
    with pytest.raises(ValueError, match="only through the output of 'res_bn2'"):
        tag_tf.MultiTaskModel(network, shared=list(TRUNK_LAYERS), affinity=None, weighting=rgn)


def test_options_are_checked():
    with pytest.raises(ValueError, match="normalization"):
        tag_tf.MGDA(normalization="max")
    with pytest.raises(ValueError, match="upper_bound=True"):
        tag_tf.MGDA(upper_bound=False, representation="trunk")
    with pytest.raises(ValueError, match="affinity recording"):
        tag_tf.MultiTaskModel(linear_network(), shared=["trunk"], gradient=tag_tf.MGDA())
    # Exact MGDA (at the shared variables) records beside it.
    tag_tf.MultiTaskModel(linear_network(), shared=["trunk"],
                          gradient=tag_tf.MGDA(upper_bound=False))


@pytest.mark.slow
@pytest.mark.parametrize("upper_bound", [True, False], ids=["ub", "exact"])
def test_mirrored_strategy_equals_one_device(upper_bound):
    config = None if upper_bound else tag_tf.AffinityConfig(every_n=2)
    toys.one_device_and_mirrored(config=config,
                                 gradient=lambda: tag_tf.MGDA(upper_bound=upper_bound))
