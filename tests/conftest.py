"""Shared test setup: quiet TensorFlow logs, CPU only, bit-reproducible kernels.

oneDNN's CPU kernels may reorder float sums between runs in one process; turning them off
(before TensorFlow is imported) makes seeded runs bit-identical.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
