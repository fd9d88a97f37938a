"""Two local worker processes (MultiWorkerMirroredStrategy, CPU) record what one device does,
and resume a crashed run exactly (tag_tf.training.resume).

Each worker runs this file as a script (``python -m tests.core.test_multi_worker WORKER ...``)
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

TASKS = ["a", "b", "c"]  # toys.tanh_network's tasks and inputs
D, GLOBAL_BATCH, STEPS = 6, 32, 3


def _train(strategy, validation: bool):
    """Trains the toy under ``strategy`` (float64); returns its records and weights."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
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
    model = _build(strategy, extra)
    model.fit(dataset, epochs=1, verbose=0)
    return _records(model)


def _build(strategy, extra=None):
    """The toy MultiTaskModel (float64), built and compiled in ``strategy``'s scope."""
    import keras  # pylint: disable=g-import-not-at-top

    import tag_tf  # pylint: disable=g-import-not-at-top
    from tests import toys  # pylint: disable=g-import-not-at-top
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    with strategy.scope():
        network = toys.tanh_network(seed=0)
        model = tag_tf.MultiTaskModel(
            network, shared=["trunk"], affinity=tag_tf.AffinityConfig(
                every_n=1, rule="optimizer", measures=("lookahead", "cosine"), **(extra or {})))
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    return model


def _records(model):
    return {"lookahead": model.affinity_record().affinity.tolist(),
            "cosine": model.affinity_record("cosine").affinity.tolist(),
            "counts": model.affinity_record().counts.tolist(),
            "state": {name: getattr(model.affinity_state, name).numpy().tolist()
                      for name in RESUME_STATE},
            "weights": [w.tolist() for w in model.get_weights()]}


# ---- resume: EPOCHS epochs of RESUME_STEPS global batches, backed up every SAVE_FREQ
# The crash: after epoch 1's 4th batch; the last backup, made when that batch began, is (1, 3).
EPOCHS, RESUME_STEPS, SAVE_FREQ, CRASH_AT = 2, 5, 3, 9
RESUME_STATE = ("affinity_sum", "affinity_count", "affinity_steps", "train_step_counter")


def _epoch_data(epoch):
    """Epoch ``epoch``'s global batches: a shuffle seeded by the epoch, the same on every
    iteration (fit() under a strategy reads the data once more to build the model)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    rng = np.random.default_rng(1)
    x = rng.normal(size=(RESUME_STEPS * GLOBAL_BATCH, D))
    y = {t: np.tanh(x @ rng.normal(size=(D, 1))) + 0.3 * rng.normal(size=(len(x), 1))
         for t in TASKS}
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
        len(x), seed=10 + epoch, reshuffle_each_iteration=False).batch(
            GLOBAL_BATCH).with_options(options)


def _train_resumable(strategy, backup_dir, crash_at=0):
    """resumable_fit of the toy; ``{"crashed": True, ...}`` when the crash callback fired."""
    import keras  # pylint: disable=g-import-not-at-top

    from tag_tf.training import resume  # pylint: disable=g-import-not-at-top
    model = _build(strategy)
    steps = []

    class CountAndCrash(keras.callbacks.Callback):
        """Counts this call's steps; raises after the ``crash_at``-th (on every worker)."""

        def on_train_batch_end(self, batch, logs=None):
            steps.append(batch)
            if len(steps) == crash_at:
                raise RuntimeError("crash")

    callbacks = [CountAndCrash()]
    try:
        history = resume.resumable_fit(model, _epoch_data, backup_dir=backup_dir,
                                       save_freq=SAVE_FREQ, epochs=EPOCHS,
                                       callbacks=callbacks, verbose=0)
    except RuntimeError as e:
        if "crash" not in str(e):
            raise
        return {"crashed": True, "steps": len(steps)}
    return {"crashed": False, "steps": len(steps), "epochs": history.epoch,
            "loss": history.history["loss"], **_records(model)}


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _run_workers(tmp_path, name, *args):
    """Runs two worker processes (``python -m tests.core.test_multi_worker OUT *args``) on
    localhost; returns their JSON results."""
    ports = _free_ports(2)
    workers = [f"localhost:{p}" for p in ports]
    procs = []
    env_base = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    outs = [tmp_path / f"{name}_w{index}.json" for index in range(2)]
    for index in range(2):
        env = dict(env_base, TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}),
            PYTHONPATH=root, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="3",
            TF_ENABLE_ONEDNN_OPTS="0")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tests.core.test_multi_worker", str(outs[index]), *args],
            env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    try:
        outputs = [p.communicate(timeout=900)[0].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    return [json.loads(path.read_text()) for path in outs]


@pytest.mark.slow
@pytest.mark.usefixtures("float64_keras")
@pytest.mark.parametrize("validation", [False, True], ids=["train_batch", "validation_batch"])
def test_two_workers_record_what_one_device_records(tmp_path, validation):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    results = _run_workers(tmp_path, "record", "1" if validation else "0")
    expected = _train(tf.distribute.get_strategy(), validation)
    for got in results:
        assert got["counts"] == expected["counts"]
        for key in ("lookahead", "cosine"):
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, err_msg=key)
        for a, b in zip(got["weights"], expected["weights"]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)


@pytest.mark.slow
@pytest.mark.usefixtures("float64_keras")
def test_two_workers_crash_and_resume_exactly(tmp_path):
    """Both workers crash mid-epoch (after a backup by the chief), two fresh workers resume
    from the chief's backup: the result equals an uninterrupted two-worker run (and the
    one-device run to 1e-5)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    from tag_tf.training import resume  # pylint: disable=g-import-not-at-top
    straight = _run_workers(tmp_path, "straight", "resume", str(tmp_path / "straight"), "0")
    crashed = _run_workers(tmp_path, "crashed", "resume", str(tmp_path / "backup"),
                           str(CRASH_AT))
    assert [r["crashed"] for r in crashed] == [True, True]
    assert resume.read_resume_point(str(tmp_path / "backup"), RESUME_STEPS) == (1, 3)
    # Only the chief wrote the backup; each worker added its own replica's metric sums and
    # copies of the per-replica variables. (Atomic backups: the chief committed each one,
    # with every worker's file, as one directory; nothing half written is left.)
    latest = resume.latest_backup(str(tmp_path / "backup"))
    assert all(name.startswith("backup-") for name in os.listdir(tmp_path / "backup"))
    assert sorted(os.listdir(latest)) == sorted(
        [resume.WEIGHTS_FILE, resume.METADATA_FILE, resume.STATE_FILE,
         "replicas_worker_0.npz", "replicas_worker_1.npz", resume.MANIFEST_FILE])
    resumed = _run_workers(tmp_path, "resumed", "resume", str(tmp_path / "backup"), "0")
    assert not os.path.exists(tmp_path / "backup")  # the chief deleted it when finished
    one_device = _train_resumable(tf.distribute.get_strategy(), str(tmp_path / "one"))
    for run in straight + resumed:
        assert not run["crashed"] and run["epochs"] == [0, 1]
    assert [r["steps"] for r in resumed] == [RESUME_STEPS - 3] * 2  # epoch 1 from (1, 3)
    for got, expected in zip(resumed, straight):
        for key in ("state", "counts", "lookahead", "cosine", "weights", "loss"):
            assert got[key] == expected[key], key  # bit-identical
    got = resumed[0]
    for name in RESUME_STATE:
        np.testing.assert_allclose(got["state"][name], one_device["state"][name], rtol=1e-5,
                                   atol=1e-12, err_msg=name)
    for key in ("lookahead", "cosine"):
        np.testing.assert_allclose(got[key], one_device[key], rtol=1e-5, err_msg=key)
    for a, b in zip(got["weights"], one_device["weights"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(got["loss"], one_device["loss"], rtol=1e-5)


if __name__ == "__main__":  # one worker
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if sys.argv[2] == "resume":  # OUT resume BACKUP_DIR CRASH_AT
        result = _train_resumable(tf.distribute.MultiWorkerMirroredStrategy(), sys.argv[3],
                                  int(sys.argv[4]))
    else:  # OUT VALIDATION
        result = _train(tf.distribute.MultiWorkerMirroredStrategy(), sys.argv[2] == "1")
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        json.dump(result, f)
