"""Scripts with a private absl flag registry (celeba.main, taskonomy.main)."""

import pytest
from absl import flags

from tag_tf.cli import errors
from tag_tf.cli.script_flags import own_registry_parser


def make_registry():
    registry = flags.FlagValues()
    flags.DEFINE_integer("seed", 0, "A seed.", flag_values=registry)
    return registry


def test_parses_own_flags_and_leaves_the_global_registry_alone():
    registry = make_registry()
    remaining = own_registry_parser(registry, "usage")(["prog", "--seed=3", "extra"])
    assert registry.seed == 3
    assert remaining == ["prog", "extra"]


def test_unknown_flag_and_help_exit(capsys):
    parse = own_registry_parser(make_registry(), "usage text")
    with pytest.raises(SystemExit) as bad:
        parse(["prog", "--nope=1"])
    # A flag mistake is one line and exit status 2 (tag_tf.cli.errors), no traceback.
    err = capsys.readouterr().err
    assert bad.value.code == errors.EXIT_STATUS == 2
    assert err.splitlines() == [err.strip()] and err.startswith("error: ") and "nope" in err
    with pytest.raises(SystemExit) as help_exit:
        parse(["prog", "--help"])
    assert help_exit.value.code == 0 and "usage text" in capsys.readouterr().out


def test_pipeline_seed_flags_parse_into_options_fields():
    from tag_tf.runner import pipeline
    from tag_tf.cli.script_flags import define_pipeline_flags, seed_option_fields
    registry = flags.FlagValues()
    define_pipeline_flags(registry)
    own_registry_parser(registry, "usage")(["prog"])
    assert seed_option_fields(registry) == {"seeds": 1, "bootstrap": 200, "mtl_results": None,
                                            "stl_results": None,
                                            "affinity_measure": "lookahead"}
    own_registry_parser(registry, "usage")(
        ["prog", "--seeds=3", "--bootstrap=0", "--mtl_results=m.json", "--stl_results=s.json"])
    fields = seed_option_fields(registry)
    assert fields == {"seeds": 3, "bootstrap": 0, "mtl_results": "m.json",
                      "stl_results": "s.json", "affinity_measure": "lookahead"}
    assert pipeline.Options(**fields).seeds == 3
    fresh = flags.FlagValues()
    define_pipeline_flags(fresh)
    with pytest.raises(SystemExit):  # a seed count below 1 is a usage error
        own_registry_parser(fresh, "usage")(["prog", "--seeds=0"])


# ------------------------------------------------- distribution / backup flags (pipeline)
def pipeline_registry():
    from tag_tf.cli.script_flags import define_pipeline_flags  # pylint: disable=g-import-not-at-top
    registry = flags.FlagValues()
    define_pipeline_flags(registry)
    return registry


def test_runtime_flags_become_pipeline_options():
    from tag_tf.runner import pipeline  # pylint: disable=g-import-not-at-top
    from tag_tf.cli.script_flags import runtime_fields  # pylint: disable=g-import-not-at-top
    registry = pipeline_registry()
    registry(["prog", "--strategy=mirrored", "--mixed_precision", "--backup_dir=/tmp/b",
              "--save_freq=250", "--shard_policy=file"])  # --logical_cpus: a subprocess test
    fields = runtime_fields(registry)
    assert fields == {"strategy": "mirrored", "mixed_precision": True, "shard_policy": "file",
                      "backup_dir": "/tmp/b", "save_freq": 250, "logical_cpus": 0}
    options = pipeline.Options(**fields)
    assert options.to_json()["strategy"] == "mirrored"
    registry = pipeline_registry()
    registry(["prog"])
    assert runtime_fields(registry) == {
        "strategy": "default", "mixed_precision": False, "shard_policy": "data",
        "backup_dir": None, "save_freq": "epoch", "logical_cpus": 0}


def test_bad_strategy_and_save_freq_are_usage_errors():
    from absl import app  # pylint: disable=g-import-not-at-top
    from tag_tf.cli.script_flags import runtime_fields  # pylint: disable=g-import-not-at-top
    with pytest.raises(flags.IllegalFlagValueError, match="strategy"):
        pipeline_registry()(["prog", "--strategy=tpu"])
    registry = pipeline_registry()
    registry(["prog", "--save_freq=0"])
    with pytest.raises(app.UsageError, match="save_freq"):
        runtime_fields(registry)


def test_help_says_the_batch_is_global(capsys):
    parse = own_registry_parser(pipeline_registry(), "usage")
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
