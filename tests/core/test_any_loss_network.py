"""Any loss form and any network Keras accepts also trains under MultiTaskModel.

Losses: strings, Loss objects, plain functions, lambdas, functools.partial and callable
objects, alone or mixed in a dict or a list. Networks: functional, subclassed with and
without a ``training`` argument, nested backbones (a small functional one, and a
keras.applications MobileNetV3Small with weights=None) as the shared part.
"""

import functools
import warnings

import keras
import numpy as np
import pytest

import tag_tf
from tag_tf.core import task_losses

TASKS = ["s", "o", "f", "l", "p", "c"]  # string, object, function, lambda, partial, callable


@keras.saving.register_keras_serializable(package="tests")
def squared_error(y_true, y_pred):
    return keras.ops.mean(keras.ops.square(y_true - y_pred), axis=-1)


def scaled_squared_error(y_true, y_pred, scale):
    return scale * squared_error(y_true, y_pred)


class Cubic:
    """A callable object as a loss (no ``__name__``)."""

    def __call__(self, y_true, y_pred):
        return keras.ops.mean(keras.ops.abs(y_true - y_pred) ** 3, axis=-1)


def every_loss_form():
    return {"s": "mse", "o": keras.losses.MeanAbsoluteError(), "f": squared_error,
            # No global names in the lambda: Keras reloads a lambda without its globals.
            "l": lambda y_true, y_pred: abs(y_true - y_pred),
            "p": functools.partial(scaled_squared_error, scale=2.0), "c": Cubic()}


def functional_network(tasks=TASKS, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((5,))
    h = keras.layers.Dense(6, name="trunk")(inputs)
    return keras.Model(inputs, {t: keras.layers.Dense(1, name=t)(h) for t in tasks})


def loss_form_data(tasks=TASKS, num=16, seed=1, shape=(5,)):
    """Standard normal inputs of ``shape`` and targets for ``tasks``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num, *shape)).astype("float32")
    # 1-D targets for the string task: Keras matches their rank to the (num, 1) output.
    y = {t: rng.normal(size=(num,) if t == "s" else (num, 1)).astype("float32") for t in tasks}
    return x, y


# Every training path of MultiTaskModel: recording (lookahead + cosine), UW, PCGrad (its
# per-task gradient phase) in one model, GradNorm (its kernel-norm phase) in another.
METHODS = {
    "tag_uw_pcgrad": lambda: dict(
        affinity=tag_tf.AffinityConfig(every_n=2, measures=("lookahead", "cosine")),
        weighting=tag_tf.UncertaintyWeighting(), gradient=tag_tf.PCGrad(seed=0)),
    "gradnorm": lambda: dict(affinity=None, weighting=tag_tf.GradNorm()),
}


def build(method, network, **kwargs):
    return tag_tf.MultiTaskModel(network, **METHODS[method](), **kwargs)


def check_trained(model, history, tasks):
    assert np.all(np.isfinite(history.history["loss"]))
    assert all(len(history.history[f"{t}_weight"]) == len(history.history["loss"])
               for t in tasks)
    if model.affinity_config is not None:
        assert int(model.affinity_state.affinity_steps.numpy()) > 0
        assert np.all(np.isfinite(model.affinity_record().affinity))
        assert np.all(np.isfinite(model.affinity_record("cosine").affinity))


# Graph mode (no `eager` fixture) on purpose: a name that is no valid TF name scope (a
# lambda's "<lambda>") fails only when Keras traces the step.
@pytest.mark.parametrize("tasks,as_list", [(["s", "l", "p"], False), (["o", "f", "c"], True)])
def test_mixed_loss_forms_record_and_train_as_plain_keras(tasks, as_list):
    """Recording steps train exactly as Keras' own fit with the same losses."""
    forms = every_loss_form()
    loss = [forms[t] for t in tasks] if as_list else {t: forms[t] for t in tasks}
    x, y = loss_form_data(tasks)
    reference = functional_network(tasks)
    reference.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    network = functional_network(tasks)
    model = tag_tf.MultiTaskModel(network, shared=["trunk"],
                                  affinity=tag_tf.AffinityConfig(every_n=1))
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss)
    for _ in range(2):
        expected = reference.train_on_batch(x, y, return_dict=True)
        logs = model.train_on_batch(x, y, return_dict=True)
        np.testing.assert_allclose(logs["loss"], expected["loss"], rtol=1e-5)
    for got, want in zip(network.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert int(model.affinity_state.affinity_steps.numpy()) == 2
    assert np.all(np.isfinite(model.affinity_record().affinity))


def test_per_task_losses_are_the_given_functions():
    x, y = loss_form_data()
    network = functional_network()
    resolved = task_losses.resolve_task_losses(TASKS, every_loss_form())
    pred = network(x)
    got = [float(v) for v in resolved.compute(y, pred)]
    err = {t: pred[t].numpy() - (y[t][:, None] if t == "s" else y[t]) for t in TASKS}
    want = [np.mean(err["s"] ** 2), np.mean(np.abs(err["o"])), np.mean(err["f"] ** 2),
            np.mean(np.abs(err["l"])), 2 * np.mean(err["p"] ** 2), np.mean(np.abs(err["c"]) ** 3)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    names = [loss.name for loss in resolved.losses]
    assert names[2:] == ["squared_error", "lambda", "partial", "cubic"]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_unnamed_loss_forms_train_with_every_method(method):
    """Lambda, partial and callable object (graph mode) through every training path."""
    tasks = ["l", "p", "c"]
    x, y = loss_form_data(tasks)
    model = build(method, functional_network(tasks), shared=["trunk"])
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss={t: every_loss_form()[t] for t in tasks})
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    check_trained(model, history, tasks)


def test_lambda_loss_saves_and_loads_as_keras_does(tmp_path, eager):
    """Keras warns when saving a lambda and refuses to load it unless safe_mode=False."""
    tasks = ["s", "o", "f", "l"]  # Keras can save none of a partial or a callable object
    loss = {t: every_loss_form()[t] for t in tasks}
    x, y = loss_form_data(tasks)
    model = tag_tf.MultiTaskModel(functional_network(tasks), shared=["trunk"],
                                  affinity=tag_tf.AffinityConfig(every_n=1))
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=loss)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.save(path)
    assert any("lambda" in str(w.message) for w in caught)
    with pytest.raises(ValueError, match="lambda"):
        keras.models.load_model(path)
    loaded = keras.models.load_model(path, safe_mode=False)
    assert loaded.compiled
    np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0),
                               rtol=1e-6)
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert int(loaded.affinity_state.affinity_steps.numpy()) == 4


def test_unsavable_losses_fail_at_save_as_in_keras(tmp_path, eager):
    """A functools.partial cannot be saved by Keras either: compile and fit work, save
    raises Keras' own error."""
    loss = {"s": "mse", "p": every_loss_form()["p"]}
    x, y = loss_form_data(["s", "p"])
    plain = functional_network(["s", "p"])
    plain.compile(optimizer="sgd", loss=loss)
    with pytest.raises(TypeError) as keras_error:
        plain.save(str(tmp_path / "plain.keras"))
    model = tag_tf.MultiTaskModel(functional_network(["s", "p"]), shared=["trunk"])
    model.compile(optimizer="sgd", loss=loss)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    with pytest.raises(TypeError, match="partial") as error:
        model.save(str(tmp_path / "m.keras"))
    assert type(error.value) is type(keras_error.value)


# ------------------------------------------------------------------ networks
class _Subclassed(keras.Model):
    """Trunk (Dense + BatchNorm + Dropout) and two heads; optionally no ``training`` arg."""

    def __init__(self, seed=0):
        super().__init__()
        self.trunk = keras.layers.Dense(6, use_bias=False, name="trunk")
        self.bn = keras.layers.BatchNormalization(name="bn")
        self.drop = keras.layers.Dropout(0.3, seed=seed, name="drop")
        self.head_a = keras.layers.Dense(1, name="a")
        self.head_b = keras.layers.Dense(1, name="b")

    def heads(self, h):
        return {"a": self.head_a(h), "b": self.head_b(h)}


class WithoutTraining(_Subclassed):
    def call(self, x):
        return self.heads(self.drop(self.bn(self.trunk(x))))


class WithTraining(_Subclassed):
    def call(self, x, training=None):
        h = self.bn(self.trunk(x), training=training)
        return self.heads(self.drop(h, training=training))


def subclassed(cls, seed=0):
    keras.utils.set_random_seed(seed)
    network = cls(seed)
    network(np.zeros((2, 5), "float32"))  # build: the shared variables must exist
    return network


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("cls", [WithoutTraining, WithTraining])
def test_subclassed_networks_train_with_every_method(cls, method, eager):
    x, y = loss_form_data(["a", "b"])
    network = subclassed(cls)
    model = build(method, network, shared=[network.trunk, "bn"], tasks=["a", "b"])
    assert {id(v) for v in model.shared_variables} == \
        {id(v) for v in network.trunk.trainable_variables + network.bn.trainable_variables}
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    check_trained(model, history, ["a", "b"])


def test_unbuilt_subclassed_network_is_a_clear_error():
    with pytest.raises(ValueError, match="build the network first"):
        tag_tf.MultiTaskModel(WithoutTraining(), shared=["trunk"], tasks=["a", "b"])


def test_network_without_training_arg_records_in_training_mode(eager):
    """Its lookahead runs BatchNorm and Dropout in training mode, as the training pass: the
    same affinities and weights as the same network whose call passes ``training`` on."""
    x, y = loss_form_data(["a", "b"])
    results = []
    for cls in (WithoutTraining, WithTraining):
        network = subclassed(cls)
        model = tag_tf.MultiTaskModel(network, shared=["trunk", "bn"], tasks=["a", "b"],
                                      affinity=tag_tf.AffinityConfig(every_n=1))
        model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
        model.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
        results.append((model.affinity_record().affinity, network.get_weights()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5, atol=1e-7)
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # In inference mode the lookahead losses would differ (BatchNorm's moving statistics,
    # no dropout): the affinities must not be those of an inference-mode lookahead.
    assert not np.allclose(results[0][0], 0.0)


def nested_network(backbone, tasks=("a", "b"), shape=(5,)):
    inputs = keras.Input(shape)
    h = backbone(inputs)
    if len(h.shape) > 2:
        h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    return keras.Model(inputs, {t: keras.layers.Dense(1, name=t)(h) for t in tasks})


def small_backbone():
    inner = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6, activation="relu"),
                              keras.layers.BatchNormalization()], name="inner")
    inputs = keras.Input((5,))
    return keras.Model(inputs, keras.layers.Dense(4, name="proj")(inner(inputs)),
                       name="backbone")


@pytest.mark.parametrize("by_name,method", [(False, "tag_uw_pcgrad"), (True, "gradnorm")])
def test_nested_backbone_as_the_shared_part(by_name, method, eager):
    keras.utils.set_random_seed(0)
    backbone = small_backbone()
    network = nested_network(backbone)
    model = build(method, network, shared=["backbone"] if by_name else [backbone])
    assert {id(v) for v in model.shared_variables} == {id(v) for v in backbone.trainable_variables}
    assert len(model.shared_variables) == 6  # two Dense (kernel, bias) + BatchNorm (gamma, beta)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    x, y = loss_form_data(["a", "b"])
    before = [v.numpy().copy() for v in backbone.trainable_variables]
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    check_trained(model, history, ["a", "b"])
    assert all(not np.allclose(a, v.numpy()) for a, v in zip(before, backbone.trainable_variables))


@pytest.mark.slow
def test_keras_applications_backbone_records_and_trains(eager):
    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV3Small(weights=None, include_top=False,
                                                   input_shape=(32, 32, 3))
    network = nested_network(backbone, shape=(32, 32, 3))
    model = tag_tf.MultiTaskModel(network, shared=[backbone.name],
                                  affinity=tag_tf.AffinityConfig(every_n=1),
                                  weighting=tag_tf.UncertaintyWeighting())
    assert {id(v) for v in model.shared_variables} == {id(v) for v in backbone.trainable_variables}
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    x, y = loss_form_data(["a", "b"], num=4, shape=(32, 32, 3))
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert int(model.affinity_state.affinity_steps.numpy()) == 2
    assert np.all(np.isfinite(model.affinity_record().affinity))
