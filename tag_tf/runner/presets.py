"""Named configurations of an experiment: a dataset's settings plus a :class:`RunConfig`.

A dataset folder names its configurations in one file (``celeba/presets.py``,
``taskonomy/presets.py``) as :class:`Preset` entries and resolves a choice plus overrides
(command-line flags, adapter fields) with :func:`configure`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple

from tag_tf.cli import flags as flags_lib
from tag_tf.runner.config import RunConfig


class Preset(NamedTuple):
    """One named configuration.

    Attributes:
      settings: the dataset's own settings (a dataclass of :func:`tag_tf.cli.flags.setting`
        fields: data, network, optimiser, schedule).
      run: the runner's :class:`RunConfig`.
      pinned: setting names the preset fixes: an override may repeat their value but not
        change it (e.g. the original code's ``every_n``).
      note: what the preset is, in one line.
    """

    settings: Any
    run: RunConfig
    pinned: tuple[str, ...] = ()
    note: str = ""


def value_of(preset: Preset, name: str) -> Any:
    """The value of setting ``name`` (a flag name) in ``preset``."""
    own = {f.name for f in flags_lib.flags_of(type(preset.settings))}
    return flags_lib.get(preset.settings if name in own else preset.run, name)


def configure(presets: Mapping[str, Preset], name: str, *, key: str = "lookahead",
              **overrides: Any) -> tuple[Any, RunConfig]:
    """The dataset settings and run config of preset ``name`` with ``overrides`` applied.

    ``overrides`` are setting names (flag names) of either part. An override of a pinned
    setting with another value than the preset's is a ValueError naming both (``key`` is
    the name of the choice, e.g. ``lookahead='original'``).
    """
    if name not in presets:
        raise ValueError(f"{key} must be one of {tuple(presets)}. Received: {key}={name!r}")
    other = overrides.pop(key, name)
    if other != name:
        raise ValueError(f"{key} is given twice, as {name!r} and {other!r}. "
                         f"Received: {key}={other!r}")
    preset = presets[name]
    clash = {k: v for k, v in overrides.items()
             if k in preset.pinned and v != value_of(preset, k)}
    if clash:
        pinned = {k: value_of(preset, k) for k in preset.pinned}
        given = ", ".join(f"{k}={v!r}" for k, v in clash.items())
        raise ValueError(f"{key}={name!r} means {pinned}; it contradicts {given}. "
                         f"Received: {given}")
    own = {f.name for f in flags_lib.flags_of(type(preset.settings))}
    settings = flags_lib.replace(preset.settings, **{k: v for k, v in overrides.items()
                                                     if k in own})
    if getattr(settings, key, name) != name:
        settings = dataclasses.replace(settings, **{key: name})
    run = preset.run.replace(**{k: v for k, v in overrides.items() if k not in own})
    return settings, run
