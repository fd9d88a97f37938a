"""Under mixed_float16 the recorded affinities match a float32 run.

The measurement (gradients, base and lookahead losses) runs in float32 while training
stays mixed; so at the same weights the two agree to float32 round-off, and over a short
training only the (float16) training trajectory separates them.
"""

import keras
import numpy as np
import pytest

import tag_tf
from tag_tf.core import recorder
from tests import toys


@pytest.mark.usefixtures("restore_policy", "eager")
def test_same_weights_same_affinities_as_float32():
    measures = ("lookahead", "cosine")
    reference, initial = toys.train_under_policy("float32", steps=1, measures=measures)
    mixed, _ = toys.train_under_policy("mixed_float16", steps=1, initial=initial,
                                       measures=measures)
    assert recorder.is_mixed(mixed.network)
    for measure in measures:
        np.testing.assert_allclose(mixed.affinity_record(measure).affinity,
                                   reference.affinity_record(measure).affinity, rtol=1e-4,
                                   err_msg=measure)


@pytest.mark.usefixtures("restore_policy", "eager")
def test_mixed_precision_training_records_within_one_percent_of_float32():
    reference, initial = toys.train_under_policy("float32", steps=8)
    mixed, _ = toys.train_under_policy("mixed_float16", steps=8, initial=initial)
    z32 = reference.affinity_record().affinity
    z16 = mixed.affinity_record().affinity
    assert np.max(np.abs(z16 - z32)) / np.max(np.abs(z32)) < 0.01
    np.testing.assert_allclose(np.diag(z16), np.diag(z32), rtol=0.01)
    # The layers computed in float16 again after recording.
    assert mixed.network.get_layer("trunk").compute_dtype == "float16"


@pytest.mark.slow
@pytest.mark.usefixtures("restore_policy")
def test_mixed_precision_under_mirrored_strategy_records_what_one_device_records():
    """Same weights (one step): the float32 measurement is also reduced across replicas."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    config = tag_tf.AffinityConfig(every_n=1, measures=("lookahead", "cosine"))
    one = toys.train_under_strategy(toys.one_device_strategy(), config=config, steps=1)
    many = toys.train_under_strategy(toys.mirrored_strategy(), config=config, steps=1)
    for measure in config.measures:
        np.testing.assert_allclose(many[measure], one[measure], rtol=1e-3, err_msg=measure)
