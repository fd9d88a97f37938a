"""Helpers shared by the reproduction-harness tests."""

import math

from tag_tf import pipeline


def no_training(monkeypatch) -> None:
    """Makes any training fail: what follows must come from the cache."""
    def fail(*args, **kwargs):
        raise AssertionError("pipeline.run called although the cache holds the training")
    monkeypatch.setattr(pipeline, "run", fail)


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
