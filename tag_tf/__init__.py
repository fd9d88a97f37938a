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
    # core: the model and what a recording step measures
    "MultiTaskModel": "tag_tf.core.model",
    "AffinityConfig": "tag_tf.core.config",
    "MEASURES": "tag_tf.core.config",
    "WINDOWS": "tag_tf.core.config",
    # methods: loss weightings and gradient combiners
    "UncertaintyWeighting": "tag_tf.methods.weighting",
    "GradNorm": "tag_tf.methods.weighting",
    "RepresentationGradNorm": "tag_tf.methods.weighting",
    "DynamicWeightAverage": "tag_tf.methods.dwa",
    "DWA": "tag_tf.methods.dwa",
    "PCGrad": "tag_tf.methods.pcgrad",
    "project_conflicting": "tag_tf.methods.pcgrad",
    "MGDA": "tag_tf.methods.mgda",
    "LossWeighting": "tag_tf.core.parts",
    "GradientCombiner": "tag_tf.core.parts",
    "Needs": "tag_tf.core.parts",
    # io: records, files, figures, the logging callback
    "AffinityRecord": "tag_tf.io.affinity_io",
    "AffinityLogger": "tag_tf.io.callbacks",
    "load_affinity": "tag_tf.io.affinity_io",
    "pool_records": "tag_tf.io.affinity_io",
    "save_affinity_json": "tag_tf.io.affinity_io",
    "save_affinity_npz": "tag_tf.io.affinity_io",
    "save_affinity_heatmap": "tag_tf.io.heatmap",
    # training: step-exact backup and resume
    "resumable_fit": "tag_tf.training.resume",
    "resumable_dataset": "tag_tf.training.resume",
    "StepBackupAndRestore": "tag_tf.training.resume",
    "StatefulCallback": "tag_tf.training.resume",
    # selection: from an affinity matrix to at most b networks
    "select_networks": "tag_tf.selection.solvers",
    "Selection": "tag_tf.selection.result",
    "Uncertainty": "tag_tf.selection.robustness",
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
