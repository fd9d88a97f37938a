"""Two local worker processes (MultiWorkerMirroredStrategy, CPU) record what one device does.

Each worker runs this file as a script (``python -m tests.test_multi_worker WORKER ...``)
with ``TF_CONFIG`` naming both workers on localhost; the test compares their records
with a one-device run on the same global batches and initial weights.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

TASKS = ["a", "b", "c"]
D, HIDDEN, GLOBAL_BATCH, STEPS = 6, 8, 32, 3


def _train(strategy, validation: bool):
    """Trains the toy under ``strategy`` (float64); returns its records and weights."""
    import keras  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    import tag_tf  # pylint: disable=g-import-not-at-top
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS * GLOBAL_BATCH + 48, D))
    y = {t: np.tanh(x @ rng.normal(size=(D, 1))) + 0.3 * rng.normal(size=(len(x), 1))
         for t in TASKS}
    train = (x[:STEPS * GLOBAL_BATCH], {t: v[:STEPS * GLOBAL_BATCH] for t, v in y.items()})
    val = (x[STEPS * GLOBAL_BATCH:], {t: v[STEPS * GLOBAL_BATCH:] for t, v in y.items()})
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = tf.data.Dataset.from_tensor_slices(train).batch(GLOBAL_BATCH).with_options(options)
    extra = {}
    if validation:
        extra = dict(batch="validation",
                     validation_data=tf.data.Dataset.from_tensor_slices(val).batch(16))
    with strategy.scope():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((D,))
        h = keras.layers.Dense(HIDDEN, activation="tanh", name="trunk")(inputs)
        network = keras.Model(inputs, {t: keras.layers.Dense(1, name=t)(h) for t in TASKS})
        model = tag_tf.MultiTaskModel(
            network, shared=["trunk"], affinity=tag_tf.AffinityConfig(
                every_n=1, rule="optimizer", measures=("lookahead", "cosine"), **extra))
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    model.fit(dataset, epochs=1, verbose=0)
    return {"lookahead": model.affinity_record().affinity.tolist(),
            "cosine": model.affinity_record("cosine").affinity.tolist(),
            "counts": model.affinity_record().counts.tolist(),
            "weights": [w.tolist() for w in model.get_weights()]}


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
@pytest.mark.usefixtures("float64_keras")
@pytest.mark.parametrize("validation", [False, True], ids=["train_batch", "validation_batch"])
def test_two_workers_record_what_one_device_records(tmp_path, validation):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    ports = _free_ports(2)
    workers = [f"localhost:{p}" for p in ports]
    procs = []
    env_base = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for index in range(2):
        env = dict(env_base, TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}),
            PYTHONPATH=root, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3",
            TF_ENABLE_ONEDNN_OPTS="0")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.test_multi_worker", str(tmp_path / f"w{index}.json"),
             "1" if validation else "0"],
            env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    try:
        outputs = [p.communicate(timeout=900)[0].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    expected = _train(tf.distribute.get_strategy(), validation)
    for index in range(2):
        got = json.loads((tmp_path / f"w{index}.json").read_text())
        assert got["counts"] == expected["counts"]
        for key in ("lookahead", "cosine"):
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, err_msg=key)
        for a, b in zip(got["weights"], expected["weights"]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)


if __name__ == "__main__":  # one worker
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    result = _train(tf.distribute.MultiWorkerMirroredStrategy(), sys.argv[2] == "1")
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        json.dump(result, f)
