"""Calling a network with substituted variables, as Keras' own ``__call__`` would call it.

``Layer.stateless_call`` calls ``network.call(x, **kwargs)`` directly, so ``training=True``
reaches a subclassed ``call(self, x)`` that has no ``training`` parameter (a TypeError),
whereas ``Layer.__call__`` drops the argument for such a layer and hands the training flag
to the layers inside it through the call context. :func:`stateless_call` does the same.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import keras


def accepts_training(layer: keras.layers.Layer) -> bool:
    """Whether ``layer.call`` takes a ``training`` argument (Keras' own test)."""
    known = getattr(layer, "_call_has_training_arg", None)
    if known is not None:
        return bool(known)
    return "training" in inspect.signature(layer.call).parameters


def stateless_call(network: keras.layers.Layer, trainable_values: Sequence[Any],
                   non_trainable_values: Sequence[Any], inputs: Any, *,
                   training: bool) -> tuple[Any, list]:
    """``network.stateless_call(trainable_values, non_trainable_values, inputs,
    training=training)`` for any network.

    A network whose ``call`` takes ``training`` gets it directly. Any other one is called
    through ``__call__`` inside a :class:`keras.StatelessScope` holding the same values,
    so its inner layers (BatchNormalization, Dropout) run in ``training`` mode exactly as
    in the training forward pass, and nothing is written to the variables.

    Returns:
      ``(outputs, new_non_trainable_values)``, as ``Layer.stateless_call``.
    """
    if accepts_training(network):
        return network.stateless_call(trainable_values, non_trainable_values, inputs,
                                      training=training)
    trainable, non_trainable = network.trainable_variables, network.non_trainable_variables
    if len(trainable_values) != len(trainable) or \
            len(non_trainable_values) != len(non_trainable):
        raise ValueError(
            f"stateless_call needs one value per variable of {network.name!r}: "
            f"{len(trainable)} trainable and {len(non_trainable)} non-trainable. Received: "
            f"{len(trainable_values)} and {len(non_trainable_values)}.")
    mapping = list(zip(trainable, trainable_values)) + \
        list(zip(non_trainable, non_trainable_values))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        outputs = network(inputs, training=training)
    return outputs, [scope.get_current_value(v) for v in non_trainable]
