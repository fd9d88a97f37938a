"""Taskonomy network and losses: shapes, the shared set, gradient scaling, loss values."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from taskonomy import data
from taskonomy import losses
from taskonomy import model


@pytest.fixture(scope="module")
def network():
    return model.taskonomy_network("sdntk", image_size=32, widths="tiny", seed=1)


def test_outputs_shapes_and_names(network):
    outputs = network(tf.zeros((2, 32, 32, 3)), training=False)
    assert sorted(outputs) == sorted(data.TASKS) == sorted(network.output_names)
    expected = {"segment_semantic": 18, "depth_zbuffer": 1, "normal": 3, "keypoints2d": 1,
                "edge_texture": 1}
    for task, channels in expected.items():
        assert outputs[task].shape == (2, 32, 32, channels)
        assert outputs[task].dtype == "float32"


def test_whole_encoder_with_final_conv_is_shared(network):
    shared = model.shared_layer_names(network)
    assert {"enc_final_conv", "enc_final_conv_bn", "enc_conv1", "enc_block1_sep0"} <= set(shared)
    shared_ids = {id(v) for name in shared for v in network.get_layer(name).trainable_weights}
    for variable in network.trainable_variables:
        in_decoder = any(variable.path.startswith(t + "_") for t in data.TASKS)
        assert (id(variable) in shared_ids) != in_decoder, variable.path


def test_presets_and_size_checks():
    assert model.PRESETS["tag"].entry == (196, 384, 1092)  # xception_taskonomy_new, size=3
    assert model.PRESETS["tag"].middle_blocks == 8
    with pytest.raises(ValueError, match="multiple of 16"):
        model.taskonomy_network("d", image_size=40, widths="tiny")
    with pytest.raises(ValueError, match="preset"):
        model.taskonomy_network("d", image_size=32, widths="huge")


def test_representation_gradient_is_scaled_by_one_over_sqrt_tasks():
    x = tf.random.normal((1, 4))
    layer = model.GradientScale(1.0 / math.sqrt(5))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(layer(x) * 3.0)
    np.testing.assert_allclose(tape.gradient(y, x), np.full((1, 4), 3.0 / math.sqrt(5)),
                               rtol=1e-6)
    np.testing.assert_array_equal(layer(x), x)


def test_mixed_precision_outputs_stay_float32():
    previous = keras.config.dtype_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        net = model.taskonomy_network("dn", image_size=32, widths="tiny")
        outputs = net(tf.zeros((1, 32, 32, 3)))
        assert net.get_layer("enc_final_conv").compute_dtype == "float16"
        assert all(o.dtype == "float32" for o in outputs.values())
    finally:
        keras.mixed_precision.set_global_policy(previous)


# ----------------------------------------------------------------------------- losses
def test_segmentation_loss_ignores_label_zero():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 3, 18)).astype(np.float32)
    labels = rng.integers(0, 18, size=(2, 3, 3, 1)).astype(np.float32)
    labels[0, 0, 0, 0] = 0
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ids = labels[..., 0].astype(int)
    picked = np.take_along_axis(log_p, ids[..., None], -1)[..., 0]
    expected = -picked[ids != 0].mean()
    loss = losses.SegmentationLoss()
    np.testing.assert_allclose(loss(labels, logits), expected, rtol=1e-5)
    assert float(loss(np.zeros_like(labels), logits)) == 0.0


def _masked_target(rng, channels):
    target = rng.normal(size=(2, 6, 6, channels)).astype(np.float32)
    mask = (rng.random((2, 6, 6, 1)) > 0.3).astype(np.float32)
    return target, mask, np.concatenate([target, mask], -1)


def test_masked_l1_keeps_masked_pixels_in_the_denominator():
    rng = np.random.default_rng(1)
    target, mask, packed = _masked_target(rng, 3)
    pred = rng.normal(size=target.shape).astype(np.float32)
    expected = (np.abs(pred - target) * mask).mean()
    np.testing.assert_allclose(losses.MaskedL1Loss()(packed, pred), expected, rtol=1e-5)


def test_shift_tolerant_loss_is_the_minimum_over_nine_shifts():
    rng = np.random.default_rng(2)
    target, mask, packed = _masked_target(rng, 1)
    pred = rng.normal(size=target.shape).astype(np.float32)
    t, m = target[:, 1:-1, 1:-1], mask[:, 1:-1, 1:-1]
    per_shift = [(np.abs(pred[:, dy:dy + 4, dx:dx + 4] - t) * m).mean(axis=(1, 2, 3))
                 for dy in range(3) for dx in range(3)]
    expected = np.min(per_shift, axis=0).mean()
    loss = losses.MaskedL1Loss(shift_tolerant=True)
    np.testing.assert_allclose(loss(packed, pred), expected, rtol=1e-5)
    shifted = np.roll(target, 1, axis=2)  # prediction off by one pixel: no loss left
    assert float(loss(packed, shifted)) < 1e-7 < float(losses.MaskedL1Loss()(packed, shifted))


def test_plain_l1_and_the_task_table():
    y, p = np.ones((2, 4, 4, 1), np.float32), np.zeros((2, 4, 4, 1), np.float32)
    assert float(losses.L1Loss()(y, p)) == 1.0
    table = losses.task_losses("sdntk", shift_tolerant=False)
    assert isinstance(table["segment_semantic"], losses.SegmentationLoss)
    assert isinstance(table["depth_zbuffer"], losses.MaskedL1Loss)
    assert isinstance(table["normal"], losses.MaskedL1Loss)
    assert not table["normal"].shift_tolerant
    assert isinstance(table["keypoints2d"], losses.L1Loss)
    assert isinstance(table["edge_texture"], losses.L1Loss)
