"""A functional network split at one layer's output R: encoder -> R -> heads.

Methods that take the per-task gradients at a shared representation (MGDA-UB, Sener and
Koltun 2018; the GradNorm of Standley et al.'s Taskonomy code) declare the layer in
``Needs.representation``; :class:`tag_tf.MultiTaskModel` then runs the network through
:attr:`RepresentationSplit.probe` (the same layers, R as an extra output) and carries the
combined gradient at R back into the encoder.
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras


class RepresentationSplit:
    """A functional network seen as encoder -> R -> heads (R: one layer's output).

    Reads the network's Keras graph (nodes and their input tensors; Keras 3.15's
    ``_nodes_by_depth``, ``_keras_history`` and ``_inbound_nodes``) without calling any
    layer, so the network's own graph is unchanged.

    Args:
      network: a functional model (``keras.Model(inputs, outputs)``).
      shared_variables: the shared variables (for the default layer).
      layer_name: the layer whose output is R; None: the last layer (in the network's
        order) holding a shared variable.
      method: the method's name for errors.

    Attributes:
      layer: the representation layer.
      encoder_variables: the trainable variables before R.
      probe: a model of the same layers returning ``{"representation": R, "outputs": ...}``.
    """

    def __init__(self, network: keras.Model, shared_variables: Sequence[keras.Variable],
                 layer_name: Optional[str], method: str = "RepresentationGradNorm"):
        self.method = method
        by_depth = getattr(network, "_nodes_by_depth", None)
        if not by_depth or not getattr(network, "inputs", None):
            raise ValueError(f"{method} needs a functional network (built with "
                             f"keras.Model(inputs, outputs)). Received: {type(network).__name__}")
        if layer_name is None:
            shared = {id(v) for v in shared_variables}
            owners = [layer for layer in network.layers
                      if any(id(v) in shared for v in layer.trainable_variables)]
            if not owners:
                raise ValueError("No layer of the network holds a shared variable; name the "
                                 f"representation layer: {method}(representation=...)")
            layer = owners[-1]
        else:
            try:
                layer = network.get_layer(layer_name)
            except ValueError:
                raise ValueError(f"{method}: unknown layer {layer_name!r}. Layers: "
                                 f"{[layer.name for layer in network.layers]}") from None
        nodes = [node for depth in by_depth.values() for node in depth if node.operation is layer]
        if len(nodes) != 1 or len(nodes[0].output_tensors) != 1:
            raise ValueError(f"The representation layer {layer.name!r} must be called once in "
                             f"the network and return one tensor (calls: {len(nodes)}).")
        rep = nodes[0].output_tensors[0]
        self.layer = layer
        head_variables = self._heads_variables(network, rep)  # (raises first: cheap)
        self.encoder_variables = list(keras.Model(network.input, rep).trainable_variables)
        if not self.encoder_variables:
            raise ValueError(f"Nothing trainable comes before the representation {layer.name!r}.")
        encoder_ids = {id(v) for v in self.encoder_variables}
        both = [v.path for v in head_variables if id(v) in encoder_ids]
        if both:
            raise ValueError(f"Variables {both} are used both before and after the "
                             f"representation {layer.name!r}.")
        self.probe = keras.Model(network.input, {"representation": rep, "outputs": network.output})

    def _heads_variables(self, network, rep) -> list:
        """Variables of the layers between R and the outputs; fails when a path from the
        outputs reaches the network's inputs without passing through R."""
        pending = [t for t in keras.tree.flatten(network.output) if t is not rep]
        seen, variables = set(), []
        while pending:
            tensor = pending.pop()
            operation, node_index, _ = tensor._keras_history  # pylint: disable=protected-access
            node = operation._inbound_nodes[node_index]  # pylint: disable=protected-access
            if id(node) in seen:
                continue
            seen.add(id(node))
            if node.is_input:
                raise ValueError(
                    f"{self.method}: the heads must see the encoder only through the "
                    f"output of {self.layer.name!r}, but output path reaches input "
                    f"{tensor.name!r} around it.")
            variables.extend(getattr(operation, "trainable_variables", []))
            pending.extend(t for t in node.input_tensors if t is not rep)
        return variables


def common_representation(network: keras.Model, shared_variables: Sequence[keras.Variable],
                          method: str) -> str:
    """The layer nearest to the outputs through whose output the heads see every shared
    variable (e.g. the CelebA network's ``features``): MGDA-UB's default Z."""
    shared = {id(v) for v in shared_variables}
    for layer in reversed(getattr(network, "layers", [])):
        try:
            split = RepresentationSplit(network, shared_variables, layer.name, method)
        except ValueError:
            continue
        if shared <= {id(v) for v in split.encoder_variables}:
            return layer.name
    RepresentationSplit(network, shared_variables, None, method)  # a functional network?
    raise ValueError(f"{method}: no layer's output carries all that the heads see of the shared "
                     f"variables; name the representation: {method}(representation=...).")
