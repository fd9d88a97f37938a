"""Fixtures of the Taskonomy tests: a tiny fake Taskonomy tree (offline)."""

import pytest

from taskonomy import testing


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """A fake Taskonomy tree in the original layout: 32 x 32 images, 2 frames per building
    (taskonomy.testing); built once per session and only read by the tests."""
    root = str(tmp_path_factory.mktemp("taskonomy") / "data")
    testing.write_fake_taskonomy(root, size=32, frames=2)
    return root
