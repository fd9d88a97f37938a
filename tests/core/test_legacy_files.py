"""Files written by tag_tf's first state layout still load (tag_tf.core.state).

The fixtures in tests/core/data were written by the code of branch ``moves`` (the affinity
state as 31 variables of the model itself) with ``data/make_legacy_files.py``; today's
model must read every value back: the affinity state, the network, the optimizer and the
methods' variables. A file that does not fit fails with an error naming the layouts.
"""

import importlib.util
import os

import keras
import numpy as np
import pytest

import tag_tf
from tag_tf.core import state

DATA = os.path.join(os.path.dirname(__file__), "data")
_spec = importlib.util.spec_from_file_location(
    "make_legacy_files", os.path.join(DATA, "make_legacy_files.py"))
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)


def expected(kind):
    with np.load(os.path.join(DATA, f"layout1_{kind}_expected.npz")) as stored:
        return {key: stored[key] for key in stored.files}


def group(values, prefix):
    return [value for key, value in values.items() if key.startswith(prefix + "/")]


def assert_same_as_saved(model, kind):
    values = expected(kind)
    assert len(fixtures.STATE_NAMES) == len(state.VARIABLES)
    for name in fixtures.STATE_NAMES:
        np.testing.assert_array_equal(getattr(model.affinity_state, name).numpy(),
                                      values[f"state/{name}"], err_msg=name)
    for prefix, variables in (("network", model.network.variables),
                              ("optimizer", model.optimizer.variables)):
        saved = group(values, prefix)
        assert len(saved) == len(variables), prefix
        for variable, value in zip(variables, saved):
            np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
    methods = [v for part in (model.weighting, model.gradient) if part is not None
               for v in part.variables]
    for variable, value in zip(methods, group(values, "method"), strict=True):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)


@pytest.mark.parametrize("kind", ["tag", "gradnorm"])
def test_layout1_weights_file_loads_every_value(kind):
    model = fixtures.build(kind, seed=5)  # another init: everything comes from the file
    x, y = fixtures.data(16)
    model.train_on_batch(x, y)  # optimizer slots exist, as in the run that saved
    model.load_weights(os.path.join(DATA, f"layout1_{kind}.weights.h5"))
    assert_same_as_saved(model, kind)
    if kind == "tag":
        assert int(model.affinity_state.affinity_steps.numpy()) == 6
        assert np.isfinite(model.affinity_record("taylor").stderr).all()


@pytest.mark.parametrize("kind", ["tag", "gradnorm"])
def test_layout1_keras_file_loads_and_trains_on(kind):
    model = keras.models.load_model(os.path.join(DATA, f"layout1_{kind}.keras"))
    assert_same_as_saved(model, kind)
    x, y = fixtures.data(16)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    # The clock runs on from the saved 6 steps.
    assert int(model.affinity_state.train_step_counter.numpy()) == 7


def test_layout1_file_for_another_model_names_the_layout():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    h = keras.layers.BatchNormalization(name="bn")(keras.layers.Dense(8, use_bias=False,
                                                                       name="trunk")(inputs))
    network = keras.Model(inputs, {t: keras.layers.Dense(1, name=t)(h) for t in ("a", "b")})
    model = tag_tf.MultiTaskModel(network, shared=["trunk", "bn"])
    with pytest.raises(ValueError, match="layout 1"):
        model.load_weights(os.path.join(DATA, "layout1_tag.weights.h5"))


def test_layout2_round_trip_keeps_the_state_out_of_weights(tmp_path):
    model = fixtures.build("tag")
    x, y = fixtures.data(16)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not {id(v) for v in model.affinity_state.variables} & {id(v) for v in model.weights}
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    other = fixtures.build("tag", seed=4)
    other.train_on_batch(x, y)
    other.load_weights(path)
    for a, b in zip(model.affinity_state.variables, other.affinity_state.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
