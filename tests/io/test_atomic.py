"""tag_tf.io.atomic and the writers that use it: an interrupted write leaves the previous file
(or none), never a part of the new one, and no temporary file behind."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tag_tf.io import affinity_io, atomic, heatmap
from tag_tf.experiments import cache as cache_lib
from tag_tf.experiments import report
from tag_tf.runner import pipeline
from tag_tf.selection import api

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic.atomic_write_json(str(path), {"x": 1})
    atomic.atomic_write_text(str(path), "new")
    assert path.read_text() == "new"
    atomic.atomic_write_bytes(str(path), b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    with atomic.atomic_path(str(tmp_path / "b.npz")) as tmp:
        assert tmp.endswith("b.npz") and os.path.dirname(tmp) == str(tmp_path)
        np.savez(tmp, a=np.arange(3))
    np.testing.assert_array_equal(np.load(tmp_path / "b.npz")["a"], np.arange(3))
    assert sorted(os.listdir(tmp_path)) == ["b.npz", "sub"]
    assert os.listdir(tmp_path / "sub") == ["a.json"]


def test_a_failing_writer_keeps_the_old_file(tmp_path):
    path = tmp_path / "a.npz"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk"):
        with atomic.atomic_path(str(path)) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half of the new")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.npz"]
    with pytest.raises(TypeError):
        atomic.atomic_write_json(str(path), {"x": object()})  # fails before writing
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.npz"]


def _record(v):
    tasks = ["a", "b"]
    return affinity_io.AffinityRecord(tasks, np.array([[0.0, 0.1], [0.2 + v, 0.0]]),
                                      counts=np.ones((2, 2), int), skipped=np.zeros((2, 2), int))


def _figure(v):
    fig = heatmap.new_figure(2, 2)
    fig.add_subplot().plot([0, 1 + v])
    return fig


# Every writer of outputs written during or at the end of long work:
# name -> write(path, version) (versions differ in content).
WRITERS = {
    "affinity.json": lambda p, v: affinity_io.save_affinity_json(p, _record(v)),
    "affinity.npz": lambda p, v: affinity_io.save_affinity_npz(p, _record(v)),
    "affinity.png": lambda p, v: heatmap.save_record_heatmap(p, _record(v)),
    "figure.png": lambda p, v: heatmap.save_figure(_figure(v), p, pdf=True),
    "selection.json": lambda p, v: api.write_json(p, {"x": v}),
    "results.json": lambda p, v: pipeline.write_results(p, {"x": v}),
    "table.json": lambda p, v: report.write_outputs(os.path.dirname(p), "table", {"x": v},
                                                    f"| {v} |"),
    "settings.json": lambda p, v: cache_lib.Cache(os.path.dirname(p)).get_or_run(
        {"v": v}, lambda d: pipeline.write_results(os.path.join(d, "results.json"), {})),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_writers_are_atomic(tmp_path, monkeypatch, name):
    """Each writer, failing at its final rename, leaves the earlier complete files as they
    were and no temporary file."""
    path = str(tmp_path / name)
    WRITERS[name](path, 1)

    def files():
        return {os.path.relpath(os.path.join(d, f), tmp_path): open(os.path.join(d, f), "rb").read()
                for d, _, names in os.walk(tmp_path) for f in names}

    before = files()
    assert before

    def broken_replace(src, dst):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated"):
        WRITERS[name](path, 2)
    assert files() == before


def test_cache_entry_without_results_is_not_complete(tmp_path):
    """A harness killed mid-training leaves settings.json only: the entry is redone."""
    cache = cache_lib.Cache(str(tmp_path))
    settings = {"mode": "mtl"}

    def killed(directory):
        raise KeyboardInterrupt  # stands in for the process dying mid-training

    with pytest.raises(KeyboardInterrupt):
        cache.get_or_run(settings, killed)
    assert os.path.exists(os.path.join(cache.directory(settings), cache_lib.SETTINGS_FILE))
    assert not cache.holds(settings) and cache.lookup(settings) is None


def test_sigkill_during_writes_never_leaves_a_partial_file(tmp_path):
    """A process rewriting a 4 MB file in a loop, killed at once: the file is always one
    complete version."""
    path = tmp_path / "big.json"
    script = textwrap.dedent(f"""
        import json, sys
        from tag_tf.io import atomic
        for k in range(10**6):
            atomic.atomic_write_json({str(path)!r}, {{"k": k, "pad": "x" * 4_000_000}})
            if k == 1:
                print("ready", flush=True)
    """)
    rng = np.random.default_rng(0)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO,
                                env={**os.environ, "PYTHONPATH": REPO},
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        import time  # pylint: disable=g-import-not-at-top
        time.sleep(float(rng.uniform(0.0, 0.3)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        payload = json.loads(path.read_text())  # complete JSON, whichever version
        assert len(payload["pad"]) == 4_000_000
