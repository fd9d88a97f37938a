"""A user's mistake on the command line is one ``error:`` line (tag_tf.cli.errors).

The mechanism itself here; each tool's mistakes in ``test_cli_mistakes.py``.
"""

import os
import subprocess
import sys
import textwrap

import pytest
from absl import flags

from tag_tf.cli import errors

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def one_error_line(err: str) -> str:
    """The single ``error:`` line of ``err`` (asserting there is nothing else)."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_usage_error_from_main_is_one_line_and_exit_status_2(capsys):
    def main(argv):
        raise errors.UsageError("--x must be > 0.\nReceived: --x=0")

    with pytest.raises(SystemExit) as exit_:
        errors.guard_main(main)(["prog"])
    assert exit_.value.code == errors.EXIT_STATUS == 2
    assert one_error_line(capsys.readouterr().err) == "error: --x must be > 0. Received: --x=0"


def test_flag_error_from_the_parser_is_one_line(capsys):
    registry = flags.FlagValues()
    flags.DEFINE_integer("n", 1, "n", lower_bound=1, flag_values=registry)
    with pytest.raises(SystemExit) as exit_:
        errors.guard_parser(registry)(["prog", "--n=0"])
    assert exit_.value.code == 2
    line = one_error_line(capsys.readouterr().err)
    assert line == "error: flag --n=0: 0 is not a positive integer. Pass --help to see the flags."


def test_user_input_maps_only_the_listed_types_and_adds_flag_and_hint():
    with pytest.raises(errors.UsageError, match=r"^--f: No such file or directory: '/nope'\. "
                                                r"Check the path\.$"):
        with errors.user_input(flag="--f", hint="Check the path."):
            open("/nope")  # pylint: disable=consider-using-with,unspecified-encoding
    with pytest.raises(KeyError):  # not a listed type: a bug, left alone
        with errors.user_input():
            raise KeyError("x")
    with pytest.raises(errors.UsageError, match="^bad. chosen$"):
        with errors.user_input(ValueError, hint=lambda e: "chosen" if "bad" in str(e) else None):
            raise ValueError("bad")


def run_script(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), "--flag=3"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_run_under_absl_one_line_for_a_mistake_traceback_for_a_bug():
    """Through the real ``absl.app.run``: a mistake in one line, a bug with its traceback."""
    script = """
        from absl import flags
        from tag_tf.cli import errors
        flags.DEFINE_integer("flag", 0, "A flag.", upper_bound=2)
        def main(argv):
            raise {}
        errors.run(main)
    """
    bad_flag = run_script(script.format("AssertionError('unreached')"))
    assert bad_flag.returncode == 2, bad_flag.stderr
    assert one_error_line(bad_flag.stderr) == (
        "error: flag --flag=3: 3 is not integer <= 2. Pass --help to see "
        "the flags.")
    mistake = run_script(script.replace("upper_bound=2", "upper_bound=5").format(
        "errors.UsageError('--flag must be even. Received: --flag=3')"))
    assert mistake.returncode == 2
    assert one_error_line(mistake.stderr) == "error: --flag must be even. Received: --flag=3"
    bug = run_script(script.replace("upper_bound=2", "upper_bound=5").format(
        "ValueError('a bug')"))
    assert bug.returncode == 1
    assert "Traceback" in bug.stderr and "ValueError: a bug" in bug.stderr
    assert "error: " not in bug.stderr
