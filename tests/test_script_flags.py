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
