"""Writes the saved-model fixtures of tag_tf's first state layout (tests/core/test_legacy_files.py).

Layout 1 (tag_tf up to the `moves` branch, before the recording state became one object):
the 31 affinity variables (accumulators, counters, window, standard-error blocks) were
the MultiTaskModel's own variables, saved after the tracked shared variables. The files
here were written by that code, so the test checks that today's code still reads them:

    git worktree add --detach /tmp/layout1 moves
    (cd /tmp/layout1 && TF_ENABLE_ONEDNN_OPTS=0 PYTHONPATH=. \
        python /path/to/this/make_legacy_files.py /path/to/tests/core/data)

It writes, for two small models (TAG + uncertainty weighting + PCGrad; GradNorm without
TAG), a ``.weights.h5`` and a ``.keras`` file and ``<name>_expected.npz``: every saved
value as the writing code read it (state by its layout-1 attribute name, network,
optimizer and method variables by path).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tag_tf  # noqa: E402

TASKS = ["a", "b", "c"]
# Layout 1's state, in its saved order (recorder.STATE then affinity_stderr.STATE).
STATE_NAMES = (
    "affinity_sum", "affinity_count", "affinity_skipped", "cosine_sum", "cosine_count",
    "cosine_skipped", "affinity_steps", "train_step_counter", "window_start", "window_end",
    "taylor_sum", "taylor_count", "taylor_skipped") + tuple(
    f"stderr_{m}_{f}" for m in ("lookahead", "cosine", "taylor")
    for f in ("start_sum", "start_count", "blocks", "weight", "mean", "m2"))


def network(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, use_bias=False, name="trunk")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.Dropout(0.3, seed=seed, name="drop")(h)
    return keras.Model(inputs, {t: keras.layers.Dense(1, name=t)(h) for t in TASKS})


def data(num=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num, 6)).astype("float32")
    return x, {t: rng.normal(size=(num, 1)).astype("float32") for t in TASKS}


def build(kind, seed=0):
    """The fixture's model: ``"tag"`` (TAG, every measure, UW, PCGrad) or ``"gradnorm"``."""
    if kind == "tag":
        parts = dict(affinity=tag_tf.AffinityConfig(
            every_n=1, measures=("lookahead", "cosine", "taylor"), stderr_block=2),
            weighting=tag_tf.UncertaintyWeighting(), gradient=tag_tf.PCGrad(seed=3))
    else:
        parts = dict(affinity=None, weighting=tag_tf.GradNorm(alpha=0.5))
    model = tag_tf.MultiTaskModel(network(seed), shared=["trunk", "bn"], **parts)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse",
                  loss_weights={"b": 2.0})
    return model


def main(out):
    os.makedirs(out, exist_ok=True)
    for kind in ("tag", "gradnorm"):
        model = build(kind)
        x, y = data()
        model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        expected = {f"state/{n}": getattr(model, n).numpy() for n in STATE_NAMES}
        for prefix, variables in (("network", model.network.variables),
                                  ("optimizer", model.optimizer.variables)):
            expected.update({f"{prefix}/{v.path}": v.numpy() for v in variables})
        for part in (model.weighting, model.gradient):
            if part is not None:
                expected.update({f"method/{v.path}": v.numpy() for v in part.variables})
        np.savez(os.path.join(out, f"layout1_{kind}_expected.npz"), **expected)
        model.save_weights(os.path.join(out, f"layout1_{kind}.weights.h5"))
        model.save(os.path.join(out, f"layout1_{kind}.keras"))


if __name__ == "__main__":
    main(sys.argv[1])
