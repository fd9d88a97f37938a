"""tag_tf.cli.flags: flags generated from dataclass fields, one way for every script."""

import dataclasses
from typing import Literal, Optional

import pytest
from absl import app
from absl import flags

from tag_tf.cli import errors
from tag_tf.cli import flags as flags_lib
from tag_tf.cli.flags import setting


def make_registry():
    registry = flags.FlagValues()
    flags.DEFINE_integer("seed", 0, "A seed.", flag_values=registry)
    return registry


def test_parses_own_flags_and_leaves_the_global_registry_alone():
    registry = make_registry()
    remaining = flags_lib.parser(registry, "usage")(["prog", "--seed=3", "extra"])
    assert registry.seed == 3
    assert remaining == ["prog", "extra"]


def test_unknown_flag_and_help_exit(capsys):
    parse = flags_lib.parser(make_registry(), "usage text")
    with pytest.raises(SystemExit) as bad:
        parse(["prog", "--nope=1"])
    # A flag mistake is one line and exit status 2 (tag_tf.cli.errors), no traceback.
    err = capsys.readouterr().err
    assert bad.value.code == errors.EXIT_STATUS == 2
    assert err.splitlines() == [err.strip()] and err.startswith("error: ") and "nope" in err
    with pytest.raises(SystemExit) as help_exit:
        parse(["prog", "--help"])
    assert help_exit.value.code == 0 and "usage text" in capsys.readouterr().out


# ------------------------------------------------------------------ the generator
@dataclasses.dataclass(frozen=True)
class Inner:
    depth: int = setting(3, help="How deep.")
    label: str = setting("x", flag="inner_label", results=False, help="A label.")


@dataclasses.dataclass(frozen=True)
class Args:
    count: int = setting(2, lower_bound=0, help="How many.")
    ratio: float = setting(0.5, help="A ratio.")
    name: Optional[str] = setting(None, help="A name.")
    fast: bool = setting(False, help="Go fast.")
    kind: Literal["a", "b"] = setting("a", help="Which kind.")
    sizes: tuple[int, ...] = setting((1, 2), parse=flags_lib.int_list, help="Sizes.")
    words: Optional[tuple[str, ...]] = setting(None, kind="list", help="Words.")
    every: int | str = setting("epoch", kind="string", parse=flags_lib.epoch_or_int,
                               help="'epoch' or a count.")
    hidden: int = setting(7, flag=None, help="Not a command-line flag.")
    inner: Inner = setting(default_factory=Inner, help="Nested settings.")


def _registry(argv, **kwargs):
    registry = flags.FlagValues()
    flags_lib.define_flags(Args, registry, **kwargs)
    registry(["prog", *argv])
    return registry


def test_kinds_defaults_and_help_come_from_the_fields():
    registry = _registry([])
    kinds = {name: registry[name].flag_type() for name in registry}
    listed = "comma separated list of strings"
    assert kinds == {"count": "int", "ratio": "float", "name": "string", "fast": "bool",
                     "kind": "string enum", "sizes": listed, "words": listed,
                     "every": "string", "depth": "int", "inner_label": "string"}
    assert "hidden" not in registry  # flag=None: a setting, not a flag
    assert registry["count"].help == "How many." and registry["sizes"].default == ["1", "2"]
    assert flags_lib.read_flags(Args, registry) == Args()  # the defaults round trip


def test_flags_are_read_back_as_the_dataclass():
    registry = _registry(["--count=4", "--ratio=2", "--name=n", "--fast", "--kind=b",
                          "--sizes=3,4", "--words=u,v", "--every=5", "--depth=1",
                          "--inner_label=y"])
    assert flags_lib.read_flags(Args, registry) == Args(
        count=4, ratio=2.0, name="n", fast=True, kind="b", sizes=(3, 4), words=("u", "v"),
        every=5, inner=Inner(depth=1, label="y"))
    assert flags_lib.given(Args, registry)["sizes"] == (3, 4)
    only = flags_lib.read_flags(Args, _registry(["--count=9"]), base=Args(ratio=0.1),
                                only_present=True)
    assert (only.count, only.ratio) == (9, 0.1)  # the base keeps what was not given


def test_bad_values_are_usage_errors_naming_the_flag():
    with pytest.raises(app.UsageError, match="--sizes: must be integers. Received"):
        flags_lib.read_flags(Args, _registry(["--sizes=1,x"]))
    with pytest.raises(app.UsageError, match="--every: must be 'epoch'"):
        flags_lib.read_flags(Args, _registry(["--every=0"]))
    with pytest.raises(flags.IllegalFlagValueError):
        _registry(["--count=-1"])  # lower_bound
    with pytest.raises(flags.IllegalFlagValueError):
        _registry(["--kind=c"])


def test_instance_defaults_exclude_choices_and_replace():
    registry = _registry([], instance=Args(count=5), exclude=("ratio",),
                         choices={"kind": ("a", "b", "c")})
    assert registry["count"].default == 5 and "ratio" not in registry
    registry(["prog", "--kind=c"])
    changed = flags_lib.replace(Args(), count=1, depth=9, inner_label="z", label="w")
    assert (changed.count, changed.inner) == (1, Inner(9, "w"))  # field names work too
    assert flags_lib.get(changed, "depth") == 9
    with pytest.raises(ValueError, match="Unknown setting"):
        flags_lib.replace(Args(), nope=1)

    @dataclasses.dataclass(frozen=True)
    class Twice:
        depth: int = setting(1, help="Twice.")
        inner: Inner = setting(default_factory=Inner, help="Nested.")

    with pytest.raises(ValueError, match="unique.*depth"):
        flags_lib.flags_of(Twice)


# ------------------------------------------------------------------ the run config's flags
def pipeline_registry():
    from tag_tf.runner.config import RunConfig  # pylint: disable=g-import-not-at-top
    registry = flags.FlagValues()
    flags_lib.define_flags(RunConfig, registry)
    return registry


def test_pipeline_seed_flags_parse_into_config_fields():
    from tag_tf.runner.config import RunConfig  # pylint: disable=g-import-not-at-top
    registry = pipeline_registry()
    flags_lib.parser(registry, "usage")(["prog"])
    config = flags_lib.read_flags(RunConfig, registry)
    assert (config.seeds, config.selection.bootstrap, config.selection.mtl_results,
            config.selection.stl_results, config.affinity.measures) == (
        1, 200, None, None, ("lookahead",))
    flags_lib.parser(registry, "usage")(
        ["prog", "--seeds=3", "--bootstrap=0", "--mtl_results=m.json", "--stl_results=s.json"])
    config = flags_lib.read_flags(RunConfig, registry)
    assert (config.seeds, config.selection.bootstrap, config.selection.mtl_results,
            config.selection.stl_results) == (3, 0, "m.json", "s.json")
    fresh = pipeline_registry()
    with pytest.raises(SystemExit):  # a seed count below 1 is a usage error
        flags_lib.parser(fresh, "usage")(["prog", "--seeds=0"])


def test_runtime_flags_become_config_fields():
    from tag_tf.runner.config import RunConfig, RuntimeConfig  # pylint: disable=g-import-not-at-top
    registry = pipeline_registry()
    registry(["prog", "--strategy=mirrored", "--mixed_precision", "--backup_dir=/tmp/b",
              "--save_freq=250", "--shard_policy=file"])  # --logical_cpus: a subprocess test
    runtime = flags_lib.read_flags(RunConfig, registry).runtime
    assert runtime == RuntimeConfig(strategy="mirrored", mixed_precision=True,
                                    shard_policy="file", backup_dir="/tmp/b", save_freq=250)
    assert RunConfig(runtime=runtime).to_json()["runtime"]["strategy"] == "mirrored"
    registry = pipeline_registry()
    registry(["prog"])
    assert flags_lib.read_flags(RunConfig, registry).runtime == RuntimeConfig()


def test_affinity_config_fields_are_flags_too():
    from tag_tf.runner.config import RunConfig  # pylint: disable=g-import-not-at-top
    registry = pipeline_registry()
    registry(["prog", "--affinity_parallel=8", "--affinity_window=0.25,0.5",
              "--lookahead_scale=0.5", "--lookahead_rule=optimizer"])
    affinity = flags_lib.read_flags(RunConfig, registry).affinity
    assert (affinity.parallel, affinity.window, affinity.lookahead_scale, affinity.rule) == (
        8, (0.25, 0.5), 0.5, "optimizer")
    registry = pipeline_registry()
    registry(["prog", "--affinity_parallel=true", "--affinity_window=first"])
    affinity = flags_lib.read_flags(RunConfig, registry).affinity
    assert (affinity.parallel, affinity.window) == (True, "first")
    registry = pipeline_registry()
    registry(["prog", "--affinity_parallel=0"])
    with pytest.raises(app.UsageError, match="--affinity_parallel: must be false, true or"):
        flags_lib.read_flags(RunConfig, registry)


def test_bad_strategy_and_save_freq_are_usage_errors():
    from tag_tf.runner.config import RunConfig  # pylint: disable=g-import-not-at-top
    with pytest.raises(flags.IllegalFlagValueError, match="strategy"):
        pipeline_registry()(["prog", "--strategy=tpu"])
    registry = pipeline_registry()
    registry(["prog", "--save_freq=0"])
    with pytest.raises(app.UsageError, match="save_freq"):
        flags_lib.read_flags(RunConfig, registry)


def test_help_says_the_batch_is_global(capsys):
    parse = flags_lib.parser(pipeline_registry(), "usage")
    with pytest.raises(SystemExit):
        parse(["prog", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--strategy", "--[no]mixed_precision", "--backup_dir", "--save_freq",
                 "--shard_policy", "--logical_cpus"):
        assert flag in text
    assert "GLOBAL batch" in text and "per-replica batch x replicas" in text


@pytest.mark.parametrize("module", ["celeba.main", "taskonomy.main"])
def test_dataset_scripts_have_the_runtime_flags(module):
    import importlib  # pylint: disable=g-import-not-at-top
    registry = importlib.import_module(module).FLAGS
    for name in ("strategy", "mixed_precision", "backup_dir", "save_freq", "shard_policy"):
        assert name in registry, (module, name)
    assert registry["strategy"].default == "default"


def test_generated_flags_are_the_scripts_own_in_help():
    """``--help`` lists the flags a script defines through the generator (absl shows the
    main module's key flags only)."""
    import os  # pylint: disable=g-import-not-at-top
    import subprocess  # pylint: disable=g-import-not-at-top
    import sys  # pylint: disable=g-import-not-at-top
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-m", "tag_tf.select", "--help"], cwd=root,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": root})
    for flag in ("--affinity", "--budgets", "--[no]minimize", "--method", "--bootstrap"):
        assert flag in done.stdout, flag
