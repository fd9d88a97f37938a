"""Helpers shared by the reproduction-harness tests."""

import json
import math
import os
import subprocess
import sys

from tag_tf import runner

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def no_training(monkeypatch) -> None:
    """Makes any training fail: what follows must come from the cache."""
    def fail(*args, **kwargs):
        raise AssertionError("runner.run called although the cache holds the training")
    monkeypatch.setattr(runner, "run", fail)


def assert_finite_numbers(value, path: str = "$") -> None:
    """Every float in a JSON tree is finite (``path`` names the first offender)."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert_finite_numbers(v, f"{path}.{k}")
    elif isinstance(value, list):
        for k, v in enumerate(value):
            assert_finite_numbers(v, f"{path}[{k}]")
    elif isinstance(value, float):
        assert math.isfinite(value), path


def run_figure4_cli(adapter_spec: str, adapter_args: dict, tmp_path, target: str, *,
                    timeout: float = 900) -> dict:
    """Runs the documented ``figure4`` command in a subprocess (graph mode, op determinism)
    and returns its ``figure4.json``."""
    out = tmp_path / "fig4"
    env = {**os.environ, "PYTHONPATH": REPO, "CUDA_VISIBLE_DEVICES": "",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-m", "tag_tf.experiments.figure4",
                    f"--adapter={adapter_spec}", f"--adapter_args={json.dumps(adapter_args)}",
                    f"--output_dir={out}", f"--cache_dir={tmp_path / 'cache'}",
                    f"--targets={target}"],
                   cwd=REPO, env=env, check=True, capture_output=True, timeout=timeout)
    with open(out / "figure4.json") as f:
        return json.load(f)
