"""Keeps TensorFlow's C++ start-up log lines out of a script's output on machines without a GPU.

Imported first by every command-line entry point (``import tag_tf.cli.quiet  # noqa: F401``,
before anything imports TensorFlow). If the user has not set ``TF_CPP_MIN_LOG_LEVEL``, it
sets it to

* ``"3"`` when no GPU is visible (``CUDA_VISIBLE_DEVICES`` is ``""`` or ``"-1"``, or there is
  no ``/dev/nvidia<N>`` nor ``/dev/dxg`` device): this hides the CUDA plugin's ``failed call
  to cuInit: ... (303)`` line, which TensorFlow logs at ERROR level, and the INFO/WARNING
  lines (``cpu_feature_guard``). Only C++ log lines are hidden: an error that stops a run is
  a Python exception and still prints (a user's mistake as one ``error:`` line, see
  :mod:`tag_tf.cli.errors`; anything else with its traceback and TensorFlow's message);
* ``"1"`` otherwise (INFO lines hidden; warnings and errors, e.g. about the GPU, still shown).

A value the user set (``TF_CPP_MIN_LOG_LEVEL=0`` shows everything) is never changed. The
``oneDNN custom operations are on`` lines are logged before TensorFlow reads this setting, so
they stay; ``TF_ENABLE_ONEDNN_OPTS=0`` removes them but also turns oneDNN's CPU kernels off.
"""

from __future__ import annotations

import glob
import os
from typing import Mapping, Optional

LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL"


def gpu_visible(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Whether a GPU may be visible to TensorFlow (NVIDIA device files, WSL's /dev/dxg)."""
    environ = os.environ if environ is None else environ
    if environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/dxg"))


def default_log_level(environ: Optional[Mapping[str, str]] = None) -> str:
    """``"1"`` with a visible GPU, else ``"3"`` (see the module docstring)."""
    return "1" if gpu_visible(environ) else "3"


os.environ.setdefault(LOG_LEVEL, default_log_level())
