"""tag_tf.cli.quiet: entry points hide TensorFlow's C++ start-up lines without a GPU, not errors."""

import os
import re
import subprocess
import sys

import pytest

from tag_tf.cli import quiet

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# A C++ log line of TensorFlow / absl: "I0000 00:00:1795986563.540719    6017 port.cc:153] ..."
CPP_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:[\d.]+ +\d+ \S+:\d+\]", re.M)


def _env(**values):
    """The environment of a user shell: without the test suite's TF settings (conftest)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")}
    env["PYTHONPATH"] = ROOT
    env.update(values)
    return env


def _level_after_import(env):
    code = "import os, tag_tf.cli.quiet; print(os.environ['TF_CPP_MIN_LOG_LEVEL'])"
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
    return proc.stdout.strip()


def test_level_depends_on_a_visible_gpu():
    assert not quiet.gpu_visible({"CUDA_VISIBLE_DEVICES": ""})
    assert not quiet.gpu_visible({"CUDA_VISIBLE_DEVICES": "-1"})
    assert quiet.default_log_level({"CUDA_VISIBLE_DEVICES": "-1"}) == "3"
    assert quiet.default_log_level({}) == ("1" if quiet.gpu_visible({}) else "3")


def test_the_users_setting_wins():
    assert _level_after_import(_env(TF_CPP_MIN_LOG_LEVEL="0")) == "0"
    assert _level_after_import(_env(CUDA_VISIBLE_DEVICES="-1")) == "3"
    assert _level_after_import(_env()) == quiet.default_log_level(_env())


def _run_taskonomy(env):
    return subprocess.run(
        [sys.executable, "-m", "taskonomy.main", "--mode=mtl", "--data_dir=/nonexistent",
         "--widths=tiny"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
        check=False)


@pytest.mark.slow
def test_entry_point_hides_start_up_lines_but_not_errors():
    quiet_run = _run_taskonomy(_env())
    assert quiet_run.returncode != 0
    # The real error, in full: a missing data dir is the user's mistake, one line (and the
    # last one) naming it (tag_tf.cli.errors).
    error = ("error: --data_dir: no such directory. Received: --data_dir=/nonexistent. Pass "
             "the Taskonomy root (rgb/<building>/*.png and one folder per task).")
    assert quiet_run.stderr.splitlines()[-1] == error, quiet_run.stderr
    assert "cuInit" not in quiet_run.stderr and "cpu_feature_guard" not in quiet_run.stderr
    loud = _run_taskonomy(_env(TF_CPP_MIN_LOG_LEVEL="0"))  # the user asks for everything
    assert loud.stderr.splitlines()[-1] == error, loud.stderr
    assert len(CPP_LOG_LINE.findall(loud.stderr)) > len(CPP_LOG_LINE.findall(quiet_run.stderr))
