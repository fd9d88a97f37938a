"""tag_tf: Task Affinity Grouping (Fifty et al., NeurIPS 2021) for TensorFlow/Keras."""

from tag_tf.affinity_io import (AffinityRecord, load_affinity, save_affinity_json,
                                save_affinity_npz)
from tag_tf.callbacks import AffinityLogger
from tag_tf.config import WINDOWS, AffinityConfig
from tag_tf.model import MultiTaskModel

__all__ = [
    "AffinityConfig",
    "AffinityLogger",
    "AffinityRecord",
    "MultiTaskModel",
    "WINDOWS",
    "load_affinity",
    "save_affinity_json",
    "save_affinity_npz",
]
