"""Dumps the flags a CLI module accepts: its own registry (if any) and absl's global one.

Usage: python dump_flags.py <module> <out.json>. Runs the module as __main__ with app.run
patched, so the flags its __main__ block defines are defined.
"""
import json
import os
import runpy
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
from absl import app, flags


def describe(flag):
    entry = {"type": flag.flag_type(), "default": flag.default,
             "short_name": flag.short_name}
    if hasattr(flag.parser, "enum_values"):
        entry["enum_values"] = list(flag.parser.enum_values)
    lower = getattr(flag.parser, "lower_bound", None)
    if lower is not None:
        entry["lower_bound"] = lower
    if isinstance(entry["default"], tuple):
        entry["default"] = list(entry["default"])
    return entry


class Done(Exception):
    pass


def own_registry(parser, depth=0):
    """The FlagValues a flags parser closes over (through wrappers such as
    tag_tf.cli.errors.guard_parser), or None."""
    for cell in getattr(parser, "__closure__", None) or ():
        value = cell.cell_contents
        if isinstance(value, flags.FlagValues):
            return value
        if callable(value) and depth < 3:
            found = own_registry(value, depth + 1)
            if found is not None:
                return found
    return None


def fake_run(main, argv=None, flags_parser=None):
    own = None if flags_parser is None else own_registry(flags_parser)
    out = {"module": MODULE, "own": None, "global": {}}
    if own is not None:
        out["own"] = {name: describe(own[name]) for name in own}
    out["global"] = {}
    for name in flags.FLAGS:
        entry = describe(flags.FLAGS[name])
        entry["module"] = flags.FLAGS.find_module_defining_flag(name)
        out["global"][name] = entry
    with open(OUT, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True, default=repr)
    raise Done()


MODULE, OUT = sys.argv[1], sys.argv[2]
sys.argv = [MODULE]
app.run = fake_run
try:
    runpy.run_module(MODULE, run_name="__main__", alter_sys=True)
except Done:
    pass
