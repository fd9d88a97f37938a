"""Every command-line tool answers a user's mistake with one ``error:`` line and status 2.

Each case runs the tool's real flag parser and ``main`` as :func:`tag_tf.cli.errors.run` does
(``guard_parser`` then ``guard_main``) and checks stderr is exactly one line starting with
``error: `` (no traceback) that names the problem and the value received. Tools whose flags
live in absl's global registry and clash with others' (``--tasks``, ``--budgets``...) run
their cases in one child process each (:func:`run_cases`); ``python -m tag_tf.select`` also
runs as a real process once.
"""

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from absl.testing import flagsaver

from tag_tf.cli import errors
from tag_tf.cli import flags as flags_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)


def one_error_line(err: str) -> str:
    """The single ``error:`` line of ``err`` (asserting there is nothing else)."""
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def cli_error(capsys, main, argv, parser=errors.parse_flags) -> str:
    """Runs ``parser`` and ``main`` on ``argv`` as ``errors.run`` does; the error line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        errors.guard_main(main)(errors.guard_parser(parser)(argv))
    assert exit_.value.code == errors.EXIT_STATUS
    return one_error_line(capsys.readouterr().err)


_DRIVER = """
import json, sys
from absl import flags
from tag_tf.cli import errors
{setup}
sys.stderr.write("@@ ready\\n")
for main, argv in json.loads(sys.argv[1]):
    flags.FLAGS.unparse_flags()
    status = 0
    try:
        errors.guard_main(eval(main))(errors.guard_parser(errors.parse_flags)(["prog", *argv]))
    except SystemExit as e:
        status = e.code
    sys.stderr.write(f"@@ status {{status}}\\n")
"""


def run_cases(setup: str, cases: list[tuple[str, list[str]]], cwd: str = ROOT) -> list[str]:
    """Runs every ``(main, argv)`` case through a tool's real parser and main in one child
    process (``setup`` imports the tool and defines its flags as its ``__main__`` does);
    returns each case's error line (checking status 2 and nothing else on stderr)."""
    code = _DRIVER.format(setup=textwrap.dedent(setup))
    result = subprocess.run([sys.executable, "-c", code, json.dumps(cases)], capture_output=True,
                            text=True, env=ENV, cwd=cwd, timeout=600)
    assert result.returncode == 0 and "@@ ready\n" in result.stderr, result.stderr
    parts = re.split(r"@@ status (\S+)\n", result.stderr.split("@@ ready\n", 1)[1])
    outputs, statuses = parts[0:-1:2], parts[1::2]
    assert statuses == [str(errors.EXIT_STATUS)] * len(cases), result.stderr
    return [one_error_line(output) for output in outputs]


# --------------------------------------------------------------------------- tag_tf.select
@pytest.fixture
def select_tool():
    from tag_tf import select  # pylint: disable=g-import-not-at-top
    if not select.FLAGS.is_parsed():
        select.FLAGS(["select"])
    return select


def _affinity(tmp_path, payload, name="affinity.json"):
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return str(path)


GOOD = {"tasks": ["a", "b", "c"], "matrix": [[0, 1, 2], [1, 0, 3], [2, 3, 0]]}


def test_select_mistakes(tmp_path, capsys, select_tool):
    def error(*argv):
        # Each case from the defaults (flagsaver; not unparse_flags, which would also reset
        # absl's --verbosity and so the absl logger's level for later tests).
        with flagsaver.flagsaver():
            return cli_error(capsys, select_tool.main, ["select", *argv])

    good = _affinity(tmp_path, GOOD, "good.json")
    ragged = _affinity(tmp_path, {"tasks": ["a", "b"], "matrix": [[1, 2], [3]]})
    assert error(f"--affinity={ragged}").startswith(
        f"error: {ragged}: The affinity matrix is ragged: row 1 has 1 value, row 0 has 2 "
        "values.")
    assert "Pass an affinity.json written by tag_tf" in error(f"--affinity={ragged}")
    missing = str(tmp_path / "nope.json")
    assert error(f"--affinity={missing}").startswith(f"error: Affinity file not found: {missing}.")
    not_json = _affinity(tmp_path, "{not json", "bad.json")
    assert f"{not_json} is not valid JSON" in error(f"--affinity={not_json}")
    no_matrix = _affinity(tmp_path, {"tasks": ["a", "b"]}, "nomatrix.json")
    assert "expected an 'affinity' or 'matrix' entry. Received: keys ['tasks']" in error(
        f"--affinity={no_matrix}")
    square = _affinity(tmp_path, {"tasks": ["a", "b"], "matrix": [[0, 1, 2], [1, 0, 3]]},
                       "square.json")
    assert "must be square. Received shape (2, 3)" in error(f"--affinity={square}")
    mismatch = _affinity(tmp_path, {"tasks": ["a", "b", "c"], "matrix": [[0, 1], [1, 0]]},
                         "mismatch.json")
    assert "matrix is 2x2 but there are 3 tasks" in error(f"--affinity={mismatch}")
    nan = _affinity(tmp_path, '{"tasks": ["a", "b", "c"], "matrix": '
                              '[[0, 1, 2], [1, 0, NaN], [2, 3, 0]]}', "nan.json")
    assert "non-finite off-diagonal entries at (source, target) [('b', 'c')]" in error(
        f"--affinity={nan}")
    np.save(tmp_path / "m.npy", np.zeros((2, 2)))
    assert "a .npy matrix needs the task names" in error(f"--affinity={tmp_path / 'm.npy'}")
    # Flags and budgets.
    assert error(f"--affinity={good}", "--budgets=0") == (
        "error: --budgets must be at least 1 (numbers of networks). Received: --budgets=0")
    assert error(f"--affinity={good}", "--budgets=4") == (
        "error: The budget cannot exceed the number of tasks (3). Received: budget=4. Use "
        "budgets from 1 to 3.")
    assert error(f"--affinity={good}", "--budgets=two") == (
        "error: --budgets: must be integers. Received: --budgets=two")
    assert error(f"--affinity={good}", "--bootstrap=-1") == (
        "error: --bootstrap must be 0 (off) or at least 2 resamples. Received: --bootstrap=-1")
    assert error(f"--affinity={good}", "--method=fast").startswith(
        "error: flag --method=fast: value should be one of <auto|dp|milp|exhaustive|large>.")
    assert error(f"--affinity={good}", "--singletons=1,2").startswith(
        "error: Expected 3 single-task scores (one per task). Received: 2 values.")
    assert error(f"--affinity={good}", "--time_limit=0") == (
        "error: --time_limit must be > 0 seconds. Received: --time_limit=0.0")
    assert error(f"--affinity={good}", "--budgets=1", f"--output={good}/x.json").startswith(
        "error: --output: ")
    assert error("--affinity=" + good, "--nope=1") == (
        "error: Unknown command line flag 'nope'. Pass --help to see the flags.")
    assert error().startswith("error: --affinity is required")
    assert error("--affinity=,") == "error: --affinity names no file. Received: --affinity=,"
    assert error(f"--affinity={good}", "extra").startswith(
        "error: Unexpected arguments: ['extra'].")


def test_select_as_a_real_process(tmp_path):
    ragged = _affinity(tmp_path, {"tasks": ["a", "b"], "matrix": [[1, 2], [3]]})
    result = subprocess.run([sys.executable, "-m", "tag_tf.select", f"--affinity={ragged}"],
                            capture_output=True, text=True, env=ENV, cwd=str(tmp_path),
                            timeout=120)
    assert result.returncode == 2
    assert "row 1 has 1 value, row 0 has 2 values" in one_error_line(result.stderr)


# --------------------------------------------------------------------------- tag_tf.demo
def test_demo_mistakes():
    lines = run_cases("from tag_tf import demo", [
        ("demo.main", ["--tasks=0"]),
        ("demo.main", ["--tasks=3", "--clusters=5"]),
        ("demo.main", ["--learning_rate=0"]),
        ("demo.main", ["--rule=adam"]),
        ("demo.main", ["--budgets=0"]),
        ("demo.main", ["--tasks=4", "--clusters=2", "--budgets=2,5"]),
    ])
    assert lines == [
        "error: flag --tasks=0: 0 is not integer >= 2. Pass --help to see the flags.",
        "error: flags tasks=3, clusters=5: --clusters cannot exceed --tasks (each cluster holds "
        "at least one task). Pass --help to see the flags.",
        "error: flag --learning_rate=0.0: --learning_rate must be > 0. Pass --help to see the "
        "flags.",
        "error: flag --rule=adam: value should be one of <sgd|optimizer>. Pass --help to see the "
        "flags.",
        "error: --budgets must be at least 1 (numbers of networks). Received: --budgets=0",
        "error: --budgets: a budget cannot exceed the number of tasks (4). Received: "
        "--budgets=2,5. Pass budgets from 1 to 4.",
    ]


# --------------------------------------------------------------------------- experiments
def test_experiments_mistakes(tmp_path):
    cache = f"--cache_dir={tmp_path / 'cache'}"
    lines = run_cases("""
        from tag_tf.experiments import figure4, table2, table3
        table3.define_flags()
        flags.DEFINE_list("targets", [], "figure4's targets.")
        """, [
        ("table2.main", ["--adapter=nope", cache]),
        ("table2.main", ["--adapter=no_such_module:make", cache]),
        ("table2.main", ["--adapter=tag_tf.experiments.adapter:NoSuchFactory", cache]),
        ("table2.main", ["--adapter_args={bad json", cache]),
        ("table2.main", ['--adapter_args={"no_such_argument": 1}', cache]),
        ("table2.main", ["--budgets=0", cache]),
        ("table2.main", ["--budgets=2,99", cache]),
        ("table2.main", ["--seeds=0", cache]),
        ("figure4.main", ["--targets=no_such_task", cache]),
        ("table3.main", ["--variants=speed=2", cache]),
        ("table3.main", ["--max_tasks=3", cache]),
        ("table2.main", [cache, "extra"]),
    ])
    assert lines[0] == ("error: --adapter must be 'synthetic' or 'module:factory' (e.g. "
                        "'celeba.adapter:CelebAAdapter'). Received: 'nope'")
    assert lines[1].startswith("error: --adapter 'no_such_module:make': there is no module "
                               "'no_such_module'.")
    assert lines[2].startswith("error: --adapter 'tag_tf.experiments.adapter:NoSuchFactory': "
                               "module 'tag_tf.experiments.adapter' has no 'NoSuchFactory'.")
    assert lines[3].startswith("error: --adapter_args must be a JSON object of keyword "
                               "arguments") and "Received: '{bad json'" in lines[3]
    assert lines[4] == ("error: --adapter_args do not fit 'synthetic': got an unexpected keyword "
                        'argument \'no_such_argument\'. Received: {"no_such_argument": 1}')
    assert lines[5] == ("error: --budgets must be at least 1 (numbers of networks). Received: "
                        "--budgets=0")
    assert lines[6] == ("error: --budgets: a budget cannot exceed the number of tasks (6). "
                        "Received: --budgets=2,99. Pass budgets from 1 to 6.")
    assert lines[7] == ("error: flag --seeds=0: 0 is not a positive integer. Pass --help to see "
                        "the flags.")
    assert lines[8].startswith("error: --targets: Unknown target task(s) ['no_such_task']")
    assert lines[9].startswith("error: --variants: A variant is 'base' or 'batch=<factor>'") \
        and "Received: 'speed=2'" in lines[9]
    assert lines[10].startswith("error: Table 3 trains every task group: 2^6 - 1 = 63 "
                                "trainings for 6 tasks, above max_tasks=3")
    assert lines[11].startswith("error: Unexpected arguments: ['extra'].")
    assert not os.path.exists(tmp_path / "cache") or not os.listdir(tmp_path / "cache")


@pytest.mark.slow  # its own TensorFlow process; the shared flags are tested just above
def test_defaults_study_mistakes():
    lines = run_cases("""
        from tag_tf.experiments import defaults_study
        defaults_study.define_flags()
        """, [
        ("defaults_study.main", ["--seeds=1"]),
        ("defaults_study.main", ["--variants=rule=sgd+bogus"]),
        ("defaults_study.main", ['--adapter_args={"bogus": 1}']),
    ])
    assert lines == [
        "error: --seeds must be at least 2 distinct integers (the study compares seeds). "
        "Received: --seeds=1",
        "error: --variants: A variant is 'base' or key=value pairs (['every_n', 'rule', "
        "'scale', 'window']) joined by '+'. Received: 'rule=sgd+bogus'",
        "error: --adapter_args do not fit 'helping': got an unexpected keyword argument "
        "'bogus'. Received: {\"bogus\": 1}",
    ]


# --------------------------------------------------------------------------- reproduce, benchmarks
@pytest.mark.parametrize("dataset,tasks", [
    ("celeba", 9),
    pytest.param("taskonomy", 5, marks=pytest.mark.slow),  # imports TensorFlow: slow
])
def test_reproduce_selection_mistakes(dataset, tasks, tmp_path):
    (tmp_path / "file").write_text("")  # a file where --output needs a folder
    lines = run_cases(f"from {dataset} import reproduce_selection as tool", [
        ("tool.main", ["--budgets=0"]),
        ("tool.main", [f"--budgets=1,{tasks + 1}"]),
        ("tool.main", ["--random_samples=-1"]),
        ("tool.main", ["--budgets=1", "--random_samples=0",
                       f"--output={tmp_path / 'file'}/x.json"]),
    ], cwd=str(tmp_path))
    assert lines[0] == ("error: --budgets must be at least 1 (numbers of networks). Received: "
                        "--budgets=0")
    assert lines[1] == (f"error: --budgets: a budget cannot exceed the number of tasks "
                        f"({tasks}). Received: --budgets=1,{tasks + 1}. Pass budgets from 1 to "
                        f"{tasks}.")
    assert lines[2] == ("error: flag --random_samples=-1: -1 is not a non-negative integer. "
                        "Pass --help to see the flags.")
    assert lines[3].startswith("error: --output: ") and "Pass a writable path." in lines[3]


def test_benchmark_mistakes():
    lines = run_cases("from benchmarks import affinity_overhead", [
        ("affinity_overhead.main", ["--tasks=1"]),
        ("affinity_overhead.main", ["--slope_tasks=2"]),
        ("affinity_overhead.main", ["--mode=fastest"]),
        ("affinity_overhead.main", ["extra"]),
        ("affinity_overhead.main", ["--mode=steady:fastest"]),
    ])
    assert lines[0] == "error: --tasks must be integers >= 2 (heads). Received: --tasks=1"
    assert "--slope_tasks must be at least two different task counts" in lines[1]
    assert lines[2].startswith("error: flag --mode=fastest: --mode must be one of")
    assert lines[3].startswith("error: Unexpected arguments: ['extra'].")
    assert lines[4].startswith("error: flag --mode=steady:fastest: --mode must be one of")
    lines = run_cases("from benchmarks import selection as bench", [
        ("bench.main", ["--sizes=3"]),
        ("bench.main", ["--large_time_limit=0"]),
    ])
    assert lines == [
        "error: --sizes must be integers >= 5 (numbers of tasks). Received: --sizes=3",
        "error: --large_time_limit must be > 0 seconds. Received: --large_time_limit=0.0",
    ]


def test_more_benchmark_mistakes():
    assert run_cases("from benchmarks import seed_agreement", [
        ("seed_agreement.main", [])]) == [
        "error: --cache_dir is required (runs are cached there)."]
    assert run_cases("from benchmarks import backup_cost", [
        ("backup_cost.main", ["--nope"])]) == [
        "error: Unknown command line flag 'nope'. Pass --help to see the flags."]


@pytest.mark.slow  # checking --measure imports TensorFlow
def test_benchmark_measure_mistake():
    assert run_cases("from benchmarks import affinity_overhead", [
        ("affinity_overhead.main", ["--measure=speed"])]) == [
        "error: --measure must name measures of ('lookahead', 'cosine', 'taylor'). Received: "
        "--measure=speed"]


# --------------------------------------------------------------------------- dataset mains
def _dataset_error(capsys, module, argv):
    registry = module.FLAGS
    registry.unparse_flags()
    try:
        return cli_error(capsys, module.main, ["main", *argv],
                         parser=flags_lib.parser(registry, module.__doc__))
    finally:
        registry.unparse_flags()


def test_celeba_main_mistakes(tmp_path, capsys):
    from celeba import main as celeba_main  # pylint: disable=g-import-not-at-top
    empty = tmp_path / "empty"
    empty.mkdir()

    def error(*argv):
        return _dataset_error(capsys, celeba_main, argv)

    assert error("--mode=mtl", "--data_dir=/nope") == (
        "error: --data_dir: no such directory. Received: --data_dir=/nope. Pass the TFDS data "
        "directory that --mode=prepare wrote (it holds celeb_a/).")
    assert error("--mode=mtl", f"--data_dir={empty}").startswith(
        f"error: --data_dir holds no celeb_a/: CelebA is not prepared there. Received: "
        f"--data_dir={empty}.")
    assert error("--mode=mtl", "--tasks=Smiling,Nope", f"--data_dir={empty}").startswith(
        "error: --tasks: Unknown CelebA attribute(s) ['Nope'].")
    assert error("--mode=affinity", "--tasks=Smiling,Young", "--budgets=3",
                 f"--data_dir={empty}") == (
        "error: --budgets: a budget cannot exceed the number of tasks (2). Received: "
        "--budgets=3. Pass budgets from 1 to 2.")
    assert error("--mode=prepare", f"--files_dir={empty}").startswith(
        f"error: --files_dir: {empty} lacks the original CelebA file(s)")
    assert error("--mode=fast") == (
        "error: flag --mode=fast: value should be one of <prepare|affinity|cs|mtl|stl|uw|"
        "gradnorm|pcgrad|dwa|mgda|groups>. Pass --help to see the flags.")
    assert error("--mode=mtl", "--epochs=ten").startswith("error: flag --epochs=ten: ")
    assert error("--mode=mtl", "--seeds=0") == (
        "error: flag --seeds=0: 0 is not a positive integer. Pass --help to see the flags.")


def test_taskonomy_main_mistakes(tmp_path, capsys):
    from taskonomy import main as taskonomy_main  # pylint: disable=g-import-not-at-top
    empty, root = tmp_path / "empty", tmp_path / "root"
    empty.mkdir()
    (root / "rgb").mkdir(parents=True)
    malformed = tmp_path / "selection.json"
    malformed.write_text("{not json")

    def error(*argv):
        return _dataset_error(capsys, taskonomy_main, [*argv, f"--output_dir={tmp_path}/out"])

    assert error("--mode=mtl", "--data_dir=/nope").startswith(
        "error: --data_dir: no such directory. Received: --data_dir=/nope. Pass the Taskonomy "
        "root")
    assert error("--mode=mtl", f"--data_dir={empty}").startswith(
        f"error: --data_dir has no rgb/ folder. Received: --data_dir={empty}.")
    assert error("--mode=mtl", "--tasks=sdx", f"--data_dir={root}").startswith(
        "error: --tasks: Unknown task letter(s) ['x']")
    assert error("--mode=mtl", "--tasks=segment_semantic,nope", f"--data_dir={root}").startswith(
        "error: --tasks: Unknown task(s) ['nope']")
    assert error("--mode=affinity", "--tasks=sd", "--budgets=3", f"--data_dir={root}") == (
        "error: --budgets: a budget cannot exceed the number of tasks (2). Received: "
        "--budgets=3. Pass budgets from 1 to 2.")
    assert error("--mode=groups", f"--data_dir={root}",
                 f"--selection={tmp_path}/nope.json") == (
        f"error: --selection: Selection file not found: {tmp_path}/nope.json")
    assert error("--mode=groups", f"--data_dir={root}", f"--selection={malformed}").startswith(
        f"error: --selection: {malformed} is not valid JSON")
    assert error("--mode=mtl", f"--data_dir={root}", f"--mtl_results={malformed}") == (
        "error: --mtl_results are compared with in --mode=groups only. Received: --mode=mtl")
    assert error("--mode=mtl", f"--tfrecord_dir={empty}").startswith(
        "error: --tfrecord_dir holds no info.json")
    assert error("--mode=mtl", f"--data_dir={root}", f"--splits_dir={empty}/x").startswith(
        f"error: --splits_dir: no such directory. Received: --splits_dir={empty}/x.")
    assert error("--mode=mtl", "--strategy=tpu").startswith("error: flag --strategy=tpu: ")
