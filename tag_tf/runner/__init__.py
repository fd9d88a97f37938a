"""The dataset-agnostic runner of the paper's workflow on any Keras multi-task model.

Describe the data and the network as an :class:`Experiment`, configure with a
:class:`RunConfig` (the library's :class:`tag_tf.AffinityConfig` is its ``affinity``
section), and :func:`run` a mode (:mod:`tag_tf.runner.modes`): record affinities over seeds,
select networks with the bootstrap verdict, train the chosen groups and compare them with
MTL / STL. See ``docs/own_model.md`` and ``examples/own_model.py``.

Modules: ``config`` (the typed configuration), ``modes`` (the mode registry), ``train``
(one network), ``distribute`` (strategies, sharding, mixed precision), ``seeds``
(replicates and pooling), ``affinity`` / ``choose`` (the recorded matrix and the
selection), ``groups`` (selection input, MTL / STL comparison), ``results`` (typed results
and ``results.json``), ``summary`` and ``pipeline`` (:func:`run`).
"""

import importlib

_EXPORTS = {
    "run": "tag_tf.runner.pipeline",
    "Experiment": "tag_tf.runner.experiment",
    "RunConfig": "tag_tf.runner.config",
    "TrainingConfig": "tag_tf.runner.config",
    "SelectionConfig": "tag_tf.runner.config",
    "RuntimeConfig": "tag_tf.runner.config",
    "AffinityConfig": "tag_tf.core.config",
    "Mode": "tag_tf.runner.modes",
    "MODES": "tag_tf.runner.modes",
    "RunResult": "tag_tf.runner.results",
    "NetworkResult": "tag_tf.runner.results",
    "AffinityResult": "tag_tf.runner.results",
    "load_results": "tag_tf.runner.results",
    "write_results": "tag_tf.runner.results",
    "load_selection": "tag_tf.runner.groups",
    "compare_errors": "tag_tf.runner.groups",
    "format_summary": "tag_tf.runner.summary",
    "make_strategy": "tag_tf.runner.distribute",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tag_tf.runner' has no attribute {name!r}")


def __dir__():
    return __all__
