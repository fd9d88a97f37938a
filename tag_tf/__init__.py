"""tag_tf: Task Affinity Grouping (Fifty et al., NeurIPS 2021) for TensorFlow/Keras.

Public names are loaded on first use (PEP 562), so NumPy-only parts such as
``tag_tf.selection`` and ``python -m tag_tf.select`` do not import TensorFlow.
"""

import importlib

_EXPORTS = {
    "AffinityConfig": "tag_tf.config",
    "AffinityLogger": "tag_tf.callbacks",
    "AffinityRecord": "tag_tf.affinity_io",
    "GradNorm": "tag_tf.weighting",
    "MEASURES": "tag_tf.config",
    "MultiTaskModel": "tag_tf.model",
    "PCGrad": "tag_tf.pcgrad",
    "RepresentationGradNorm": "tag_tf.weighting",
    "UncertaintyWeighting": "tag_tf.weighting",
    "WINDOWS": "tag_tf.config",
    "load_affinity": "tag_tf.affinity_io",
    "project_conflicting": "tag_tf.pcgrad",
    "save_affinity_json": "tag_tf.affinity_io",
    "save_affinity_npz": "tag_tf.affinity_io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    try:
        return importlib.import_module(f"tag_tf.{name}")  # submodules, e.g. tag_tf.lookahead
    except ModuleNotFoundError as e:
        if e.name != f"tag_tf.{name}":
            raise  # the submodule exists but a dependency of it is missing
        raise AttributeError(f"module 'tag_tf' has no attribute {name!r}") from None


def __dir__():
    return __all__
