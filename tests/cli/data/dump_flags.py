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


def fake_run(main, argv=None, flags_parser=None):
    own = None
    if flags_parser is not None:
        registry = getattr(flags_parser, "__closure__", None)
        for cell in registry or ():
            if isinstance(cell.cell_contents, flags.FlagValues):
                own = cell.cell_contents
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
