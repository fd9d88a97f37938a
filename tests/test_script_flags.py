"""Scripts with a private absl flag registry (celeba.main, taskonomy.main)."""

import pytest
from absl import flags

from tag_tf.script_flags import own_registry_parser


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
    assert bad.value.code == 1 and "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit) as help_exit:
        parse(["prog", "--help"])
    assert help_exit.value.code == 0 and "usage text" in capsys.readouterr().out


def test_pipeline_seed_flags_parse_into_options_fields():
    from tag_tf import pipeline
    from tag_tf.script_flags import define_pipeline_flags, seed_option_fields
    registry = flags.FlagValues()
    define_pipeline_flags(registry)
    own_registry_parser(registry, "usage")(["prog"])
    assert seed_option_fields(registry) == {"seeds": 1, "bootstrap": 200, "mtl_results": None,
                                            "stl_results": None}
    own_registry_parser(registry, "usage")(
        ["prog", "--seeds=3", "--bootstrap=0", "--mtl_results=m.json", "--stl_results=s.json"])
    fields = seed_option_fields(registry)
    assert fields == {"seeds": 3, "bootstrap": 0, "mtl_results": "m.json",
                      "stl_results": "s.json"}
    assert pipeline.Options(**fields).seeds == 3
    fresh = flags.FlagValues()
    define_pipeline_flags(fresh)
    with pytest.raises(SystemExit):  # a seed count below 1 is a usage error
        own_registry_parser(fresh, "usage")(["prog", "--seeds=0"])
