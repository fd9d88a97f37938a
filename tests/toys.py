"""Toy networks, data and models shared by several test modules.

Each toy is named by what it builds. The numbers are part of the tests' contract: the
assertions that use a toy were measured on exactly these shapes, seeds and draws (the
same RNG calls in the same order), so change a toy only together with its tests.

Pytest fixtures live in ``conftest.py`` (``float64_keras``, ``eager``, ``restore_policy``;
``tests/celeba`` and ``tests/taskonomy`` have their own data fixtures). This module is
also imported by the subprocess scripts ``tests/training/mirrored_resume_run.py`` and
``tests/core/test_multi_worker.py``, so it sets up nothing when imported.
"""

import functools

import keras
import numpy as np
import tensorflow as tf

import tag_tf

TASKS = ["a", "b", "c"]
LOSS_WEIGHTS = {"a": 1.0, "b": 2.0, "c": 0.5}


# ------------------------------------------------- BatchNorm + Dropout trunk, 6 inputs
def bn_dropout_network(seed: int = 0, dropout: float = 0.3) -> keras.Model:
    """Trunk with BatchNorm and Dropout (RNG state), three heads."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    # No bias before BatchNorm: its gradient is 0 up to rounding, which Adam would amplify.
    h = keras.layers.Dense(8, use_bias=False, name="trunk")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Activation("relu")(h)
    if dropout:
        h = keras.layers.Dropout(dropout, seed=seed, name="drop")(h)
    outputs = {t: keras.layers.Dense(1, name=t)(h) for t in TASKS}
    return keras.Model(inputs, outputs)


def normal_targets_data(num: int = 96, seed: int = 0):
    """``num`` float32 inputs of width 6 and independent standard normal targets per task."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num, 6)).astype("float32")
    y = {t: rng.normal(size=(num, 1)).astype("float32") for t in TASKS}
    return x, y


def bn_dropout_model(config=tag_tf.AffinityConfig(every_n=1), seed: int = 0, optimizer=None,
                     dropout: float = 0.3) -> tag_tf.MultiTaskModel:
    """:func:`bn_dropout_network` as a compiled MultiTaskModel (trunk and BN shared; mse,
    task ``b`` weighted 2; SGD(0.05, momentum=0.9) unless ``optimizer`` is given)."""
    model = tag_tf.MultiTaskModel(bn_dropout_network(seed, dropout), shared=["trunk", "bn"],
                                  affinity=config)
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.05, momentum=0.9), loss="mse",
                  loss_weights={"b": 2.0})
    return model


def shuffled_epoch_batches(epoch: int, num: int = 80) -> tf.data.Dataset:
    """Epoch ``epoch``'s batches of 8 of :func:`normal_targets_data` (``num`` examples): a
    shuffle seeded by the epoch, the same however often the dataset is iterated (under a
    strategy, fit() reads one batch more to build the model)."""
    x, y = normal_targets_data(num)
    return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
        num, seed=100 + epoch, reshuffle_each_iteration=False).batch(8)


# The step-exact resume run (tests/training): shuffled_epoch_batches' 80 examples are 10
# batches per epoch; 3 epochs, a backup every 4 steps.
RESUME_STEPS, RESUME_EPOCHS, RESUME_SAVE_FREQ = 10, 3, 4


class CrashAfterSteps(keras.callbacks.Callback):
    """Raises ``RuntimeError("crash")`` after the ``at``-th training step of this fit() call."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.steps = at, 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == self.at:
            raise RuntimeError("crash")


class CrashAtEpoch(keras.callbacks.Callback):
    """Raises ``RuntimeError("crash")`` when epoch ``epoch`` begins."""

    def __init__(self, epoch: int = 2):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("crash")


# --------------------------------------------- linear trunk and heads, no bias (Eq. 1 by hand)
LINEAR_INPUTS, LINEAR_WIDTH, LINEAR_BATCH = 5, 4, 16


def linear_network(seed: int = 0) -> keras.Model:
    """h = x W (the shared ``trunk``), prediction_t = h V_t: gradients in closed form, as in
    ``tests/numpy_reference.py``."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((LINEAR_INPUTS,))
    h = keras.layers.Dense(LINEAR_WIDTH, use_bias=False, name="trunk")(inputs)
    outputs = {t: keras.layers.Dense(1, use_bias=False, name=t)(h) for t in TASKS}
    return keras.Model(inputs, outputs)


def linear_batches(count: int, seed: int = 1, target_scales=None) -> list:
    """``count`` float64 batches ``(x, {task: y})`` of 16 standard normal inputs and targets;
    task ``k``'s targets times ``target_scales[k]`` when given."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        x = rng.normal(size=(LINEAR_BATCH, LINEAR_INPUTS))
        if target_scales is None:
            y = {t: rng.normal(size=(LINEAR_BATCH, 1)) for t in TASKS}
        else:
            y = {t: s * rng.normal(size=(LINEAR_BATCH, 1)) for t, s in zip(TASKS, target_scales)}
        out.append((x, y))
    return out


def as_floatx(batch):
    """A float64 batch in Keras' floatx (the reference computes in float64)."""
    x, y = batch
    dtype = keras.config.floatx()
    return x.astype(dtype), {t: v.astype(dtype) for t, v in y.items()}


# name -> (a Keras optimizer factory, the same optimizer's numpy_reference.Optimizer kwargs)
OPTIMIZERS = {
    "sgd": (lambda: keras.optimizers.SGD(0.1), dict(kind="sgd", lr=0.1)),
    "momentum": (lambda: keras.optimizers.SGD(0.1, momentum=0.9),
                 dict(kind="sgd", lr=0.1, momentum=0.9)),
    "nesterov": (lambda: keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
                 dict(kind="sgd", lr=0.05, momentum=0.9, nesterov=True)),
    "adam": (lambda: keras.optimizers.Adam(0.01), dict(kind="adam", lr=0.01)),
    "adamw": (lambda: keras.optimizers.AdamW(0.01, weight_decay=0.05),
              dict(kind="adam", lr=0.01, weight_decay=0.05)),
    "schedule": (lambda: keras.optimizers.SGD(keras.optimizers.schedules.ExponentialDecay(
        0.2, decay_steps=1, decay_rate=0.5), momentum=0.9),
        dict(kind="sgd", lr=lambda step: 0.2 * 0.5 ** step, momentum=0.9)),
}


# ------------------------------- tanh trunk under tf.distribute (two logical CPUs, float64)
TANH_INPUTS, TANH_WIDTH, GLOBAL_BATCH, STRATEGY_STEPS = 6, 8, 32, 4
STRATEGY_RTOL = 1e-5


def tanh_network(seed: int = 0) -> keras.Model:
    """Dense(8, tanh) ``trunk`` on 6 inputs, three linear heads."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((TANH_INPUTS,))
    h = keras.layers.Dense(TANH_WIDTH, activation="tanh", name="trunk")(inputs)
    outputs = {t: keras.layers.Dense(1, name=t)(h) for t in TASKS}
    return keras.Model(inputs, outputs)


def tanh_mixture_data(n: int, seed: int = 0, sample_weight: bool = False):
    """Targets ``tanh(x m_k) + 0.3 noise``, one random mixing column ``m_k`` per task (float64);
    with ``sample_weight``, weights in [0.2, 2) except 1 on the first global batch."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, TANH_INPUTS))
    mixing = rng.normal(size=(TANH_INPUTS, len(TASKS)))
    y = {t: (np.tanh(x @ mixing[:, [k]]) + 0.3 * rng.normal(size=(n, 1)))
         for k, t in enumerate(TASKS)}
    if sample_weight:
        weights = rng.uniform(0.2, 2.0, size=(n,))
        # The first batch trains: with equal sample weights there, Keras' training step is
        # one device's for every reduction (see test_distribute's uneven-split test).
        weights[:GLOBAL_BATCH] = 1.0
        return x, y, weights
    return x, y


def tanh_validation_data() -> tf.data.Dataset:
    """48 examples of :func:`tanh_mixture_data` (seed 5) in batches of 16."""
    return tf.data.Dataset.from_tensor_slices(tanh_mixture_data(48, seed=5)).batch(16)


@functools.lru_cache(maxsize=None)
def mirrored_strategy() -> tf.distribute.Strategy:
    """One MirroredStrategy per process: a second one would reuse the first one's collective
    instance keys (a TensorFlow limitation), so tests share it."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@functools.lru_cache(maxsize=None)
def one_device_strategy() -> tf.distribute.Strategy:
    return tf.distribute.OneDeviceStrategy("/cpu:0")


def sgd_momentum() -> keras.optimizers.Optimizer:
    """SGD(0.05, momentum=0.9): the tanh toy's optimizer with state."""
    return keras.optimizers.SGD(0.05, momentum=0.9)


def train_under_strategy(strategy, *, config=None, weighting=None, gradient=None,
                         optimizer=None, steps=STRATEGY_STEPS, batch=GLOBAL_BATCH, extra=0,
                         sample_weight=False, loss="mse") -> dict:
    """Trains a fresh :func:`tanh_network` model under ``strategy`` (one epoch of ``steps``
    batches of ``batch``, plus ``extra`` examples); returns what it recorded and learned."""
    with strategy.scope():
        net = tanh_network()
        model = tag_tf.MultiTaskModel(
            net, shared=["trunk"], affinity=config,
            weighting=weighting() if weighting else None,
            gradient=gradient() if gradient else None)
        model.compile(optimizer=optimizer() if optimizer else keras.optimizers.SGD(0.05),
                      loss=loss, loss_weights=LOSS_WEIGHTS)
    dataset = tf.data.Dataset.from_tensor_slices(
        tanh_mixture_data(steps * batch + extra, sample_weight=sample_weight)).batch(batch)
    model.fit(dataset, epochs=1, verbose=0)
    out = {"weights": model.get_weights()}
    if config is not None:
        for measure in config.measures:
            record = model.affinity_record(measure)
            out[measure] = record.affinity
            out[measure + "_counts"] = record.counts
        out["steps"] = int(model.affinity_state.affinity_steps.numpy())
    return out


def assert_same_training(one: dict, many: dict) -> None:
    """Two :func:`train_under_strategy` results agree to ``STRATEGY_RTOL``."""
    assert one.keys() == many.keys()
    for key in one:
        if key == "weights":
            for a, b in zip(one[key], many[key]):
                np.testing.assert_allclose(b, a, rtol=STRATEGY_RTOL, atol=1e-9)
        else:
            np.testing.assert_allclose(many[key], one[key], rtol=STRATEGY_RTOL, atol=0,
                                       err_msg=key)


def one_device_and_mirrored(**kwargs) -> dict:
    """Trains under OneDeviceStrategy and MirroredStrategy, asserts they agree, returns
    the one-device result."""
    one = train_under_strategy(one_device_strategy(), **kwargs)
    many = train_under_strategy(mirrored_strategy(), **kwargs)
    assert_same_training(one, many)
    return one


# ------------------------------------------------- mixed precision: Dense(16, tanh), 8 inputs
MIXED_INPUTS, MIXED_BATCH = 8, 64


def linear_targets_data(steps: int, seed: int = 0):
    """``steps`` batches of 64 float32 inputs; targets ``x w_t + 0.1 noise`` per task."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(steps * MIXED_BATCH, MIXED_INPUTS)).astype("float32")
    y = {t: (x @ rng.normal(size=(MIXED_INPUTS, 1)) + 0.1 * rng.normal(size=(len(x), 1))).astype(
        "float32") for t in TASKS}
    return x, y


def train_under_policy(policy: str, steps: int, initial=None, measures=("lookahead",)):
    """Trains the toy (Dense(16) trunk, float32 heads, SGD 0.01) under dtype ``policy``.

    Returns ``(model, initial_weights)``; pass ``initial`` to start from the same weights.
    Leaves the global policy at float32 (use the ``restore_policy`` fixture).
    """
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((MIXED_INPUTS,))
    h = keras.layers.Dense(16, activation="tanh", name="trunk")(inputs)
    outputs = {t: keras.layers.Dense(1, name=t, dtype="float32")(h) for t in TASKS}
    network = keras.Model(inputs, outputs)
    if initial is not None:
        network.set_weights(initial)
    initial = network.get_weights()
    model = tag_tf.MultiTaskModel(network, shared=["trunk"],
                                  affinity=tag_tf.AffinityConfig(every_n=1, measures=measures))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    model.fit(tf.data.Dataset.from_tensor_slices(linear_targets_data(steps)).batch(MIXED_BATCH),
              epochs=1, verbose=0)
    keras.mixed_precision.set_global_policy("float32")
    assert (policy == "float32") != isinstance(model.optimizer,
                                               keras.optimizers.LossScaleOptimizer)
    return model, initial


# ------------------------------------------------ the runner on planted synthetic tasks
def planted_experiment(num_tasks: int = 3, seed: int = 0, **overrides):
    """A ``pipeline.Experiment`` on planted tasks (tag_tf.synthetic): 64 training examples
    in batches of 16 (4 steps per epoch), 32 validation and 32 test; fields in
    ``overrides`` replace the defaults."""
    from tag_tf import synthetic  # pylint: disable=g-import-not-at-top
    from tag_tf.runner import pipeline  # pylint: disable=g-import-not-at-top
    problem = synthetic.planted_tasks(num_tasks, min(num_tasks, 3))
    kwargs = dict(
        tasks=problem.tasks,
        network_fn=lambda tasks: synthetic.planted_network(list(tasks), problem.input_dim,
                                                           seed=seed),
        shared=list(synthetic.SHARED_LAYERS),
        loss_fn=lambda task: "mse",
        train_data=problem.dataset(64, batch_size=16, seed=0),
        validation_data=problem.dataset(32, batch_size=16, seed=1, shuffle=False),
        test_data=problem.dataset(32, batch_size=16, seed=2, shuffle=False),
        optimizer_fn=lambda: keras.optimizers.SGD(0.05, momentum=0.9))
    kwargs.update(overrides)
    return pipeline.Experiment(**kwargs)
