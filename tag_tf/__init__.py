"""tag_tf: Task Affinity Grouping (Fifty et al., NeurIPS 2021) for TensorFlow/Keras.

The public API is the names in ``__all__``; everything else lives in subpackages by role:
``core`` (the model and its recording step), ``methods`` (loss weightings, gradient
combiners), ``stats`` (standard errors), ``io`` (records, heatmaps, the logger callback),
``training`` (step-exact resume), ``selection``, ``runner``, ``experiments``, ``synthetic``.

Names are loaded on first use (PEP 562), so NumPy-only parts such as ``tag_tf.selection``
and ``python -m tag_tf.select`` do not import TensorFlow.
"""

import importlib

_EXPORTS = {
    "AffinityConfig": "tag_tf.core.config",
    "AffinityLogger": "tag_tf.io.callbacks",
    "AffinityRecord": "tag_tf.io.affinity_io",
    "GradNorm": "tag_tf.methods.weighting",
    "MEASURES": "tag_tf.core.config",
    "MultiTaskModel": "tag_tf.core.model",
    "PCGrad": "tag_tf.methods.pcgrad",
    "RepresentationGradNorm": "tag_tf.methods.weighting",
    "UncertaintyWeighting": "tag_tf.methods.weighting",
    "WINDOWS": "tag_tf.core.config",
    "load_affinity": "tag_tf.io.affinity_io",
    "project_conflicting": "tag_tf.methods.pcgrad",
    "save_affinity_json": "tag_tf.io.affinity_io",
    "save_affinity_npz": "tag_tf.io.affinity_io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tag_tf' has no attribute {name!r}")


def __dir__():
    return __all__
