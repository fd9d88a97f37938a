"""Fixtures of the CelebA tests: fake CelebA built offline by the real TFDS celeb_a builder,
and ``celeba.main`` run in-process.

The fake original files (celeba.testing) go through ``python -m celeba.main --mode=prepare``'s
code; each prepared tree is built once per session and only read by the tests.
"""

import os
from unittest import mock

import pytest
from tensorflow_datasets.core.download import download_manager

from celeba import main as celeba_main
from celeba import testing


def _no_network(*args, **kwargs):
    raise AssertionError("A test tried to download something.")


def _no_downloads():
    """A context in which any TFDS download fails the test (the fake files are all there is)."""
    return mock.patch.object(download_manager.DownloadManager, "_download", _no_network)


def _run_main(argv):
    """Runs celeba.main's ``main`` with ``argv`` parsed into its own flag registry."""
    flags = celeba_main.FLAGS
    flags.unparse_flags()
    flags(["celeba.main", *argv])
    try:
        with _no_downloads():
            celeba_main.main(["celeba.main"])
    finally:
        flags.unparse_flags()


def _prepared_fake_celeba(root, splits) -> str:
    """Writes the original files of ``splits`` images to ``root/files`` and prepares them
    into ``root/tfds`` (returned) with ``--mode=prepare``."""
    files = os.path.join(root, "files")
    testing.write_fake_celeba(files, splits)
    _run_main(["--mode=prepare", f"--files_dir={files}", f"--data_dir={root}/tfds",
               "--noverify_checksums"])
    return os.path.join(root, "tfds")


@pytest.fixture(scope="session")
def no_downloads():
    """``with no_downloads():`` makes any TFDS download fail the test."""
    return _no_downloads


@pytest.fixture(scope="session")
def run_main():
    """``run_main(argv)`` runs ``python -m celeba.main`` in-process (downloads fail)."""
    return _run_main


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """Fake CelebA with 12 training, 4 validation and 4 test images (a TFDS data dir; the
    original files are in ``../files``)."""
    return _prepared_fake_celeba(str(tmp_path_factory.mktemp("celeba_main")),
                                 {"train": 12, "validation": 4, "test": 4})


@pytest.fixture(scope="session")
def small_data_dir(tmp_path_factory) -> str:
    """Fake CelebA with 8 training, 4 validation and 4 test images (a TFDS data dir)."""
    return _prepared_fake_celeba(str(tmp_path_factory.mktemp("celeba_small")),
                                 {"train": 8, "validation": 4, "test": 4})
