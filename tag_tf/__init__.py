"""tag_tf: Task Affinity Grouping (Fifty et al., NeurIPS 2021) for TensorFlow/Keras."""

from tag_tf.affinity_io import (AffinityRecord, load_affinity, save_affinity_json,
                                save_affinity_npz)
from tag_tf.callbacks import AffinityLogger
from tag_tf.config import MEASURES, WINDOWS, AffinityConfig
from tag_tf.model import MultiTaskModel
from tag_tf.pcgrad import PCGrad, project_conflicting
from tag_tf.weighting import GradNorm, UncertaintyWeighting

__all__ = [
    "AffinityConfig",
    "AffinityLogger",
    "AffinityRecord",
    "GradNorm",
    "MultiTaskModel",
    "PCGrad",
    "UncertaintyWeighting",
    "MEASURES",
    "WINDOWS",
    "load_affinity",
    "project_conflicting",
    "save_affinity_json",
    "save_affinity_npz",
]
