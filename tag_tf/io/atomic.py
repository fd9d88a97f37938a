"""Atomic file writes: a reader (or a rerun after a SIGKILL) sees the old file or the new one,
never a part of the new one.

Every writer goes through one pattern: write a temporary file in the target's directory
(``.tmp-<random>-<name>``, hidden, same file system), flush it to disk (``fsync``), then
``os.replace`` it onto the target (atomic on POSIX) and ``fsync`` the directory so the
rename itself survives a power loss. A process killed in the middle leaves at most a hidden
``.tmp-*`` file, never a truncated target.

    atomic_write_text("out/results.json", json.dumps(results))
    atomic_write_bytes("out/affinity.png", png)
    with atomic_path("out/affinity.npz") as tmp:   # for writers that want a path
        np.savez(tmp, **arrays)

Paths with a scheme (``gs://...``) go through ``tf.io.gfile``: the temporary file is
renamed onto the target, which is atomic where that file system's rename is (object
stores write each object atomically).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from typing import Any, Iterator

TMP_PREFIX = ".tmp-"


def is_local(path: str) -> bool:
    """Whether ``path`` is on the local (POSIX) file system rather than a ``scheme://`` one."""
    return "://" not in str(path)


def fsync_file(path: str) -> None:
    """Flushes ``path``'s data to disk (no-op for non-local paths)."""
    if not is_local(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Flushes a directory's entries (renames, new files) to disk (no-op for non-local
    paths, or where directories cannot be opened)."""
    if not is_local(path):
        return
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def temporary_name(path: str) -> str:
    """A fresh hidden name beside ``path`` that ends like it (``.weights.h5``, ``.npz``:
    writers that check or append the extension keep working)."""
    directory, name = os.path.split(str(path))
    return os.path.join(directory, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{name}")


def _makedirs(directory: str) -> None:
    if not directory:
        return
    if is_local(directory):
        os.makedirs(directory, exist_ok=True)
    else:
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
        tf.io.gfile.makedirs(directory)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (temporary file, fsync, ``os.replace``)."""
    path = str(path)
    if is_local(path):
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(data)
        return
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    _makedirs(os.path.dirname(path))
    tmp = temporary_name(path)
    try:
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(data)
        tf.io.gfile.rename(tmp, path, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
        raise


def atomic_write_text(path: str, text: str, encoding: str = "utf-8") -> None:
    """Writes ``text`` to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str, payload: Any, **dump_kwargs) -> None:
    """``json.dump(payload, **dump_kwargs)`` to ``path``, atomically. The payload is
    serialised before anything is written, so an unserialisable value leaves no file."""
    atomic_write_text(path, json.dumps(payload, **dump_kwargs))


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path beside ``path`` (same ending) for a writer that wants a file
    name (``np.savez``, ``savefig``, ``save_weights``); when the block ends without an
    error, the file is flushed and moved onto ``path`` atomically. On an error it is
    removed and ``path`` is left as it was.

    For a non-local ``path`` the writer writes a local temporary file, which is then
    copied with :func:`atomic_write_bytes`.
    """
    path = str(path)
    if not is_local(path):
        local_dir = tempfile.mkdtemp(prefix="tag_tf_atomic_")
        try:
            tmp = os.path.join(local_dir, os.path.basename(path))
            yield tmp
            with open(tmp, "rb") as f:
                atomic_write_bytes(path, f.read())
        finally:
            shutil.rmtree(local_dir, ignore_errors=True)
        return
    directory = os.path.dirname(path)
    _makedirs(directory)
    tmp = temporary_name(path)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_dir(directory)
