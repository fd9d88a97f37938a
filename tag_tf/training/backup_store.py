"""The on-disk store of :class:`tag_tf.training.resume.StepBackupAndRestore`: atomic commits.

A backup is committed whole or not at all, so a process killed at any instant (even in the
middle of writing one) resumes from a complete backup. Layout of a ``backup_dir``::

    backup_dir/
      backup-e000001-b000000004/     committed: epoch 1, 4 of its batches trained
        latest.weights.h5            weights, optimizer and affinity state (model.save_weights)
        training_metadata.json       {"epoch", "batch", "batches_done"} (Keras' file + count)
        callback_state.json          history so far, stateful callbacks' states
        replicas.npz                 per-replica copies (replicas_<task>_<i>.npz: one per worker)
        callback_<k>_best_weights.npz
        manifest.json                written last: every file's size and CRC32
      backup-e000001-b000000008/     the newest; the one before it is kept as a fallback
      .staging-e000001-b000000009/   being written (a leftover after a kill: removed)
      .trash-.../                    being deleted

Commit protocol (:class:`Commit`): every file of the backup is written into a fresh
``.staging-*`` directory beside the committed ones (same file system); then each file is
flushed to disk (``fsync``), ``manifest.json`` is written and flushed, the staging
directory is flushed and renamed to ``backup-*`` in one atomic step, and ``backup_dir`` is
flushed. Only then are backups older than the previous one deleted. The flush-and-rename
half may run in a background thread (``async``), overlapping the next training steps:
the training thread pays for the writes only, and the next backup waits for it.

Restore (:func:`scan`): the newest committed backup whose manifest verifies (every file
present with its recorded size and CRC32, metadata readable) is used; a newer one that
fails (truncated or damaged by something else) is reported, and the previous complete one
is used instead. Staging and trash directories are never read.

On object stores (``gs://``) a directory rename is not atomic, but a backup is only used
when its manifest (written last) verifies every file, so a half-renamed one is skipped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import uuid
import zlib
from typing import Callable, NamedTuple, Optional, Sequence

import tensorflow as tf

from tag_tf.io import atomic

METADATA_FILE = "training_metadata.json"  # BackupAndRestore's file name
MANIFEST_FILE = "manifest.json"
FORMAT = "tag_tf.backup/v1"
BACKUP_PREFIX = "backup-"
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
KEEP = 2  # committed backups kept: the newest and the previous one (its fallback)
WORKER_FILE_TIMEOUT = 600.0  # seconds the chief waits for the other workers' files
_NAME = re.compile(r"^backup-e(\d+)-b(\d+)$")


# ---- file operations: os for local paths (fast, no TensorFlow call), tf.io.gfile otherwise
NOT_FOUND = (FileNotFoundError, tf.errors.NotFoundError)
IO_ERRORS = (OSError, tf.errors.OpError)


def _exists(path: str) -> bool:
    return os.path.exists(path) if atomic.is_local(path) else tf.io.gfile.exists(path)


def _isdir(path: str) -> bool:
    return os.path.isdir(path) if atomic.is_local(path) else tf.io.gfile.isdir(path)


def _listdir(path: str) -> list:
    if atomic.is_local(path):
        return os.listdir(path)
    return [e.rstrip("/") for e in tf.io.gfile.listdir(path)]


def _read(path: str) -> bytes:
    if atomic.is_local(path):
        with open(path, "rb") as f:
            return f.read()
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def _rename(src: str, dst: str) -> None:
    if atomic.is_local(src):
        os.rename(src, dst)
    else:
        tf.io.gfile.rename(src, dst)


def _remove(path: str) -> None:
    if atomic.is_local(path):
        os.remove(path)
    else:
        tf.io.gfile.remove(path)


def _rmtree(path: str) -> None:
    if atomic.is_local(path):
        shutil.rmtree(path)
    else:
        tf.io.gfile.rmtree(path)


def makedirs(path: str) -> None:
    if atomic.is_local(path):
        os.makedirs(path, exist_ok=True)
    else:
        tf.io.gfile.makedirs(path)


def write_file(path: str, data: bytes) -> None:
    """Writes a file of a backup being staged (flushed by the commit)."""
    if atomic.is_local(path):
        with open(path, "wb") as f:
            f.write(data)
    else:
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(data)


class Unusable(Exception):
    """A committed backup that cannot be used (missing or damaged file, bad manifest)."""


def backup_name(epoch: int, batches_done: int) -> str:
    """The committed directory name of the point (``backup-e000001-b000000004``)."""
    return f"{BACKUP_PREFIX}e{int(epoch):06d}-b{int(batches_done):09d}"


def staging_name(name: str) -> str:
    """The staging directory name of the committed name ``name``."""
    return STAGING_PREFIX + name[len(BACKUP_PREFIX):]


def committed(backup_dir: str) -> list[str]:
    """Committed backup directories, newest (furthest point) first."""
    if not _isdir(backup_dir):
        return []
    found = []
    for entry in _listdir(backup_dir):
        match = _NAME.match(entry)
        if match:
            found.append(((int(match.group(1)), int(match.group(2))),
                          os.path.join(backup_dir, entry)))
    return [path for _, path in sorted(found, reverse=True)]


def _describe(data: bytes) -> dict:
    return {"bytes": len(data), "crc32": zlib.crc32(data)}


def verify(path: str) -> dict:
    """The metadata of the committed backup ``path`` after checking every file against its
    manifest; raises :class:`Unusable` saying what is wrong."""
    manifest_path = os.path.join(path, MANIFEST_FILE)
    try:
        manifest = json.loads(_read(manifest_path))
    except NOT_FOUND as e:
        raise Unusable(f"{MANIFEST_FILE} is missing") from e
    except (ValueError, *IO_ERRORS) as e:
        raise Unusable(f"{MANIFEST_FILE} is unreadable: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise Unusable(f"{MANIFEST_FILE} is not a {FORMAT} manifest")
    files = manifest.get("files", {})
    if METADATA_FILE not in files:
        raise Unusable(f"the manifest lists no {METADATA_FILE}")
    metadata = None
    for name, expected in sorted(files.items()):
        try:
            data = _read(os.path.join(path, name))
        except NOT_FOUND as e:
            raise Unusable(f"{name} is missing") from e
        except IO_ERRORS as e:
            raise Unusable(f"{name} is unreadable: {e}") from e
        got = _describe(data)
        if got != {"bytes": expected.get("bytes"), "crc32": expected.get("crc32")}:
            raise Unusable(f"{name} has {got['bytes']} bytes (CRC32 {got['crc32']:08x}), the "
                           f"manifest records {expected.get('bytes')} bytes (CRC32 "
                           f"{int(expected.get('crc32', 0)):08x}): damaged after its commit")
        if name == METADATA_FILE:
            try:
                metadata = json.loads(data)
                int(metadata["epoch"])
            except (ValueError, KeyError, TypeError) as e:
                raise Unusable(f"{METADATA_FILE} is not valid: {e}") from e
    return metadata


class Scan(NamedTuple):
    """The committed backups of a directory: ``usable`` ``(path, metadata)`` and
    ``unusable`` ``(path, reason)``, each newest first."""

    usable: list
    unusable: list

    @property
    def newest(self) -> Optional[str]:
        return self.usable[0][0] if self.usable else None

    @property
    def discarded(self) -> list:
        """Unusable backups newer than the newest usable one (what a resume skips)."""
        newest = self.newest
        if newest is None:
            return list(self.unusable)
        key = _key(newest)
        return [(path, reason) for path, reason in self.unusable if _key(path) > key]

    def warning(self) -> Optional[str]:
        """What a resume skips and what it uses instead, naming both (None: nothing)."""
        skipped = self.discarded
        if not skipped:
            return None
        what = "; ".join(f"{path}: {reason}" for path, reason in skipped)
        if self.newest is None:
            return (f"No committed backup can be used ({what}); training starts from the "
                    "beginning.")
        return (f"Backup {skipped[0][0]} cannot be used ({what}); falling back to the "
                f"previous complete backup {self.newest}.")


def _key(path: str) -> tuple:
    match = _NAME.match(os.path.basename(path))
    return (int(match.group(1)), int(match.group(2))) if match else (-1, -1)


def scan(backup_dir: str) -> Scan:
    """Verifies the committed backups of ``backup_dir`` (:func:`verify`)."""
    wait(backup_dir)
    usable, unusable = [], []
    for path in committed(backup_dir):
        try:
            usable.append((path, verify(path)))
        except Unusable as e:
            unusable.append((path, str(e)))
    return Scan(usable, unusable)


def latest(backup_dir: str) -> Optional[str]:
    """The newest complete (verified) backup directory of ``backup_dir``, or None."""
    return scan(backup_dir).newest


def discard(path: str) -> None:
    """Deletes a directory: renamed to a ``.trash-*`` name first (atomic), so a kill while
    deleting never leaves a half-deleted directory under a committed or staging name."""
    if not _exists(path):
        return
    parent, name = os.path.split(path.rstrip("/"))
    trash = os.path.join(parent, f"{TRASH_PREFIX}{uuid.uuid4().hex[:8]}-{name.lstrip('.')}")
    try:
        _rename(path, trash)
    except IO_ERRORS:
        trash = path  # (e.g. vanished meanwhile, or no rename: delete in place)
    if _exists(trash):
        _rmtree(trash)


def remove_leftovers(backup_dir: str) -> list[str]:
    """Deletes the staging and trash directories a killed run left; returns their names."""
    if not _isdir(backup_dir):
        return []
    removed = []
    for entry in _listdir(backup_dir):
        if entry.startswith((STAGING_PREFIX, TRASH_PREFIX)):
            path = os.path.join(backup_dir, entry)
            if entry.startswith(TRASH_PREFIX):
                _rmtree(path)
            else:
                discard(path)
            removed.append(entry)
    return removed


class Commit:
    """Makes the staged backup ``staging`` current as ``final``: waits for the other
    workers' files (``expected``), flushes every file, writes the manifest, renames the
    directory in one step and deletes backups older than the previous one.

    ``legacy_files``: top-level files of an older flat backup (deleted once a backup is
    committed, as they are then stale).
    """

    def __init__(self, backup_dir: str, staging: str, final: str, *,
                 expected: Sequence[str] = (), legacy_files: Sequence[str] = (),
                 timeout: float = WORKER_FILE_TIMEOUT):
        self.backup_dir, self.staging, self.final = backup_dir, staging, final
        self.expected = list(expected)
        self.legacy_files = list(legacy_files)
        self.timeout = timeout
        self.error: Optional[BaseException] = None
        self._thread: Optional[threading.Thread] = None

    def _wait_for_workers(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            missing = [n for n in self.expected
                       if not _exists(os.path.join(self.staging, n))]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"The backup {self.staging} still lacks {missing} after "
                                   f"{self.timeout:.0f} s: was a worker lost?")
            time.sleep(0.01)

    def run(self) -> None:
        """The whole commit, in the calling thread."""
        self._wait_for_workers()
        files = {}
        for name in sorted(_listdir(self.staging)):
            if name == MANIFEST_FILE or name.startswith(atomic.TMP_PREFIX):
                continue
            path = os.path.join(self.staging, name)
            atomic.fsync_file(path)
            files[name] = _describe(_read(path))
        manifest = json.dumps({"format": FORMAT, "files": files}, indent=1, sort_keys=True)
        manifest_path = os.path.join(self.staging, MANIFEST_FILE)
        write_file(manifest_path, manifest.encode())
        atomic.fsync_file(manifest_path)
        atomic.fsync_dir(self.staging)
        if _exists(self.final):  # (a damaged backup at the same point)
            discard(self.final)
        _rename(self.staging, self.final)
        atomic.fsync_dir(self.backup_dir)
        for old in committed(self.backup_dir)[KEEP:]:
            discard(old)
        for path in self.legacy_files:
            if _exists(path):
                _remove(path)

    def _run_catching(self) -> None:
        try:
            self.run()
        except BaseException as e:  # pylint: disable=broad-except
            self.error = e

    def start(self) -> None:
        """Runs the commit in a background thread (see :func:`wait`)."""
        key = _registry_key(self.backup_dir)
        self._thread = threading.Thread(target=self._run_catching,
                                        name=f"tag_tf-backup-commit-{os.path.basename(self.final)}")
        with _LOCK:
            _PENDING[key] = self
        self._thread.start()

    def join(self, raise_error: bool = True) -> None:
        """Waits for a background commit; re-raises its error (``raise_error``)."""
        if self._thread is not None:
            self._thread.join()
            with _LOCK:
                if _PENDING.get(_registry_key(self.backup_dir)) is self:
                    del _PENDING[_registry_key(self.backup_dir)]
        if raise_error and self.error is not None:
            error, self.error = self.error, None
            raise RuntimeError(f"Committing the backup {self.final} failed: {error}") from error


_LOCK = threading.Lock()
_PENDING: dict = {}  # backup_dir -> its running Commit


def _registry_key(backup_dir: str) -> str:
    return os.path.abspath(backup_dir) if atomic.is_local(backup_dir) else backup_dir


def wait(backup_dir: Optional[str] = None) -> None:
    """Waits for the background commits of ``backup_dir`` (all if None) of this process, so
    the directory holds every backup this process made (errors stay with the callback)."""
    with _LOCK:
        pending = [c for key, c in _PENDING.items()
                   if backup_dir is None or key == _registry_key(backup_dir)]
    for commit in pending:
        commit.join(raise_error=False)


def legacy_files(backup_dir: str, names: Callable[[str], bool]) -> list[str]:
    """Top-level files of ``backup_dir`` for which ``names(file name)`` holds."""
    if not _isdir(backup_dir):
        return []
    return [os.path.join(backup_dir, e) for e in _listdir(backup_dir)
            if not _isdir(os.path.join(backup_dir, e)) and names(e)]
