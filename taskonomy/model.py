"""The Taskonomy network of the TAG paper: an Xception-style encoder shared by one decoder per task.

**Xception-style**, as the original: google-research ``tag/taskonomy/xception_taskonomy_new.patch``
over Standley et al.'s ``model_definitions/xception_taskonomy_new.py`` (``XceptionTaskonomy``). The
paper's numbers come from that network, so a ResNet would change what the affinities measure.

Encoder (``XceptionTaskonomy.encoder``): 3x3/2 conv + BN + ReLU, 3x3 conv + BN + ReLU, three
entry blocks (separable 3x3 convs with BN, downsampling by a learned 2x2/2 conv, 1x1/2 conv + BN
shortcut), eight middle blocks (three separable convs, identity shortcut), ReLU; then the
**shared final** separable 3x3 conv to 512 channels + BN (``final_conv`` / ``final_conv_bn``). The
whole encoder *including the final conv + BN* is TAG's shared set (:func:`shared_layer_names`); the
original's lookahead left the final conv out (``include_final_conv=False``,
``--lookahead=original``).

Decoder per task (the patch's ``small_decoder``): three times [2x2/2 transposed conv + BN + ReLU,
3x3 conv + BN + ReLU] with 128, 64, 48 channels, a fourth 2x2/2 transposed conv (32) + BN + ReLU
and a 3x3 output conv, so a 256x256 input gives 256x256 outputs; segmentation has 18 logits,
depth, keypoints and edges 1 channel, normals 3.

Details kept from the original: the representation's gradient is scaled by 1/sqrt(#tasks)
(``TrevorRepFunction``) before it reaches the encoder; convolutions are initialised
N(0, 2 / (k*k*out_channels)) (the original's loop, transposed convs excluded), BN momentum 0.1
in PyTorch terms (Keras 0.9), epsilon 1e-5; the 3x3/2 stem pads 1 pixel on every side.

Widths are configurable (:data:`PRESETS`, :class:`Widths`) so tests run a tiny copy. Outputs are
float32 under a mixed-precision policy.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import keras
import tensorflow as tf

from taskonomy import data

ENCODER_PREFIX = "enc_"
BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
BN_EPSILON = 1e-5


class Widths(NamedTuple):
    """Channel widths of the network.

    Attributes:
      stem: the two stem convs (``sizes[0:2]`` in the original).
      entry: the three downsampling entry blocks (``sizes[2:5]``).
      middle: the middle blocks' width (``sizes[5:]``, all equal to ``entry[-1]`` there).
      middle_blocks: number of middle blocks (8 in the original).
      representation: the shared final conv's channels (512).
      decoder: the four decoder stages (small decoder: 128, 64, 48, 32).
    """

    stem: tuple[int, int]
    entry: tuple[int, int, int]
    middle: int
    middle_blocks: int
    representation: int
    decoder: tuple[int, int, int, int]


PRESETS = {
    # xception_taskonomy_new in the TAG patch builds size=3: [48, 96, 196, 384, 1092 x 9].
    "tag": Widths((48, 96), (196, 384, 1092), 1092, 8, 512, (128, 64, 48, 32)),
    # Standley et al.'s size=1 ([32, 64, 128, 256, 728 x 9]).
    "standley": Widths((32, 64), (128, 256, 728), 728, 8, 512, (128, 64, 48, 32)),
    # For tests and CPU smoke runs.
    "tiny": Widths((8, 8), (8, 16, 16), 16, 1, 16, (8, 8, 8, 8)),
}


def _conv_init(seed: int):
    """N(0, 2 / (k*k*out)) as the original's init loop (He normal, fan-out)."""
    return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal", seed=seed)


def _depthwise_init(seed: int):
    # PyTorch's grouped conv has out = in channels, so fan-out = k*k*in; a Keras depthwise
    # kernel (k, k, in, 1) calls that fan-in.
    return keras.initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal", seed=seed)


@keras.saving.register_keras_serializable(package="taskonomy")
class GradientScale(keras.layers.Layer):
    """Identity forward; multiplies the incoming gradient by ``scale`` (``TrevorRepFunction``)."""

    def __init__(self, scale: float, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, inputs):
        scale = self.scale

        @tf.custom_gradient
        def identity(x):
            def grad(upstream):
                return upstream * tf.cast(scale, upstream.dtype)
            return tf.identity(x), grad

        return identity(inputs)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


class _Builder:
    """Creates named layers with distinct initialiser seeds."""

    def __init__(self, seed: int):
        self.seed = seed * 10007
        self.count = 0

    def _next(self):
        self.count += 1
        return self.seed + self.count

    def bn(self, name):
        return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                               name=name)

    def conv(self, filters, kernel, name, *, strides=1, padding="same", use_bias=True):
        return keras.layers.Conv2D(filters, kernel, strides=strides, padding=padding,
                                   use_bias=use_bias, kernel_initializer=_conv_init(self._next()),
                                   name=name)

    def separable(self, filters, name):
        return keras.layers.SeparableConv2D(
            filters, 3, padding="same", use_bias=False,
            depthwise_initializer=_depthwise_init(self._next()),
            pointwise_initializer=_conv_init(self._next()), name=name)

    def up(self, filters, name):
        # nn.ConvTranspose2d is not an nn.Conv2d: it keeps PyTorch's default init
        # kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(out*k*k)); Keras calls out*k*k fan-in here.
        return keras.layers.Conv2DTranspose(
            filters, 2, strides=2, name=name,
            kernel_initializer=keras.initializers.VarianceScaling(
                1.0 / 3.0, "fan_in", "uniform", seed=self._next()))


def _block(b: _Builder, x, in_filters, out_filters, reps, strides, start_with_relu, name):
    """Xception block (``Block`` with grow_first=True)."""
    p = f"{ENCODER_PREFIX}{name}_"
    if out_filters != in_filters or strides != 1:
        skip = b.conv(out_filters, 1, p + "skip", strides=strides, padding="valid",
                      use_bias=False)(x)
        skip = b.bn(p + "skip_bn")(skip)
    else:
        skip = x
    y = x
    for r in range(reps):
        if r > 0 or start_with_relu:
            y = keras.layers.ReLU(name=p + f"relu{r}")(y)
        y = b.separable(out_filters, p + f"sep{r}")(y)
        y = b.bn(p + f"bn{r}")(y)
    if strides != 1:
        y = b.conv(out_filters, 2, p + "down", strides=2, padding="valid")(y)
    return keras.layers.Add(name=p + "add")([y, skip])


def _encoder(b: _Builder, image, widths: Widths):
    p = ENCODER_PREFIX
    x = keras.layers.ZeroPadding2D(1, name=p + "pad1")(image)
    x = b.conv(widths.stem[0], 3, p + "conv1", strides=2, padding="valid", use_bias=False)(x)
    x = keras.layers.ReLU(name=p + "relu1")(b.bn(p + "bn1")(x))
    x = b.conv(widths.stem[1], 3, p + "conv2", use_bias=False)(x)
    x = keras.layers.ReLU(name=p + "relu2")(b.bn(p + "bn2")(x))
    filters = widths.stem[1]
    for k, out in enumerate(widths.entry):
        x = _block(b, x, filters, out, 2, 2, start_with_relu=k > 0, name=f"block{k + 1}")
        filters = out
    for k in range(widths.middle_blocks):
        x = _block(b, x, filters, widths.middle, 3, 1, start_with_relu=True,
                   name=f"block{k + 4}")
        filters = widths.middle
    x = keras.layers.ReLU(name=p + "relu_out")(x)
    # The shared final conv + BN (XceptionTaskonomy.final_conv / final_conv_bn).
    x = b.separable(widths.representation, p + "final_conv")(x)
    return b.bn(p + "final_conv_bn")(x)


def _decoder(b: _Builder, rep, task: str, outputs: int, widths: Widths):
    x = rep
    for k, filters in enumerate(widths.decoder):
        x = b.up(filters, f"{task}_upconv{k + 1}")(x)
        x = keras.layers.ReLU(name=f"{task}_uprelu{k + 1}")(b.bn(f"{task}_bn_upconv{k + 1}")(x))
        if k < len(widths.decoder) - 1:
            x = b.conv(filters, 3, f"{task}_conv_decode{k + 1}")(x)
            x = keras.layers.ReLU(name=f"{task}_relu{k + 1}")(b.bn(f"{task}_bn_decode{k + 1}")(x))
    x = b.conv(outputs, 3, f"{task}_conv_decode{len(widths.decoder)}")(x)
    # Float32 outputs under mixed precision; the layer's name is the task (the output name).
    return keras.layers.Activation("linear", dtype="float32", name=task)(x)


def taskonomy_network(tasks: Sequence[str], *, image_size: int = data.IMAGE_SIZE,
                      widths: Widths | str = "tag", scale_rep_gradient: bool = True,
                      seed: int = 0) -> keras.Model:
    """Builds the shared encoder with one decoder per task; outputs are a dict keyed by task.

    Args:
      tasks: task names (see :data:`taskonomy.data.TASKS`).
      image_size: input side, a multiple of 16 (outputs have the same size).
      widths: a :class:`Widths` or a :data:`PRESETS` name ("tag" is the paper's network).
      scale_rep_gradient: scale the representation's gradient by 1/sqrt(len(tasks)) as the
        original does.
      seed: initialiser seed.
    """
    tasks = data.parse_tasks(tasks)
    if image_size % 16:
        raise ValueError(f"image_size must be a multiple of 16 (four 2x downsamplings). "
                         f"Received: image_size={image_size}")
    if isinstance(widths, str):
        if widths not in PRESETS:
            raise ValueError(f"Unknown widths preset; presets are {sorted(PRESETS)}. "
                             f"Received: widths={widths!r}")
        widths = PRESETS[widths]
    b = _Builder(seed)
    image = keras.Input((image_size, image_size, 3), name="image")
    rep = _encoder(b, image, widths)
    if scale_rep_gradient:
        rep = GradientScale(1.0 / math.sqrt(len(tasks)), name="rep_gradient_scale")(rep)
    outputs = {task: _decoder(b, rep, task, data.DOMAINS[task].outputs, widths)
               for task in tasks}
    return keras.Model(image, outputs, name="taskonomy_network")


FINAL_CONV_LAYERS = (ENCODER_PREFIX + "final_conv", ENCODER_PREFIX + "final_conv_bn")


def shared_layer_names(network: keras.Model, *, include_final_conv: bool = True) -> list[str]:
    """Every encoder layer with weights, the final conv + BN included (TAG's shared set).

    ``include_final_conv=False``: without the final conv + BN (:data:`FINAL_CONV_LAYERS`),
    the set the original's lookahead stepped: ``tag.patch``'s ``Trainer.encoder_trainble``
    is ``model.encoder.parameters()``, and ``XceptionTaskonomy.final_conv`` /
    ``final_conv_bn`` sit outside ``encoder`` (``xception_taskonomy_new.patch``).
    """
    names = [layer.name for layer in network.layers
             if layer.name.startswith(ENCODER_PREFIX) and layer.trainable_weights
             and (include_final_conv or layer.name not in FINAL_CONV_LAYERS)]
    if not names:
        raise ValueError("The network has no encoder layers (names starting with "
                         f"{ENCODER_PREFIX!r}); build it with taskonomy_network().")
    return names
