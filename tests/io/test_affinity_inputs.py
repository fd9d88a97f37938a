"""Malformed affinity input is a ValueError naming the problem (tag_tf.io.affinity_io).

The Python API and the CLIs (which print these messages in one line) get the same text.
"""

import json

import numpy as np
import pytest

from tag_tf import load_affinity
from tag_tf.io import affinity_io


def _json(tmp_path, payload, name="affinity.json"):
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return str(path)


def test_ragged_matrix_names_the_row(tmp_path):
    path = _json(tmp_path, {"tasks": ["a", "b"], "matrix": [[1, 2], [3]]})
    with pytest.raises(ValueError, match=r"ragged: row 1 has 1 value, row 0 has 2 values"):
        load_affinity(path)
    with pytest.raises(ValueError, match=r"row 2 has 3 values, row 0 has 2 values"):
        affinity_io.validate_matrix([[0, 1], [1, 0], [1, 2, 3]], ["a", "b", "c"])
    # The written format too (its "affinity" entry).
    path = _json(tmp_path, {"format": affinity_io.FORMAT, "tasks": ["a", "b"],
                            "affinity": [[0.0], [1.0, 0.0]]})
    with pytest.raises(ValueError, match=f"^{path}: .*row 1 has 2 values, row 0 has 1 value\\."):
        load_affinity(path)


def test_matrix_shape_and_content(tmp_path):
    cases = {
        "square": {"tasks": ["a", "b"], "matrix": [[0, 1, 2], [1, 0, 3]]},
        r"2x2 but there are 3 tasks": {"tasks": ["a", "b", "c"], "matrix": [[0, 1], [1, 0]]},
        r"list of rows \(lists of numbers\)\. Received: 5": {"tasks": ["a"], "matrix": 5},
        r"row 1 is not a list\. Received: row 1 = 3": {"tasks": ["a", "b"], "matrix": [[1, 2], 3]},
        r"must hold numbers .*'x'": {"tasks": ["a", "b"], "matrix": [[0, "x"], [1, 0]]},
        r"tasks must be a list of names\. Received: 'ab'": {"tasks": "ab", "matrix": [[0]]},
        r"expected an 'affinity' or 'matrix' entry\. Received: keys \['tasks'\]":
            {"tasks": ["a", "b"]},
        r"expected a JSON object with a 'tasks' list\. Received: \[1, 2\]": [1, 2],
    }
    for message, payload in cases.items():
        path = _json(tmp_path, payload)
        with pytest.raises(ValueError, match=message):
            load_affinity(path)


def test_not_json_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_affinity(_json(tmp_path, "not json"))
    binary = tmp_path / "affinity.json"
    binary.write_bytes(b"\x93NUMPY\xff\xfe")
    with pytest.raises(ValueError, match="is not valid JSON .*not UTF-8"):
        load_affinity(str(binary))
    with pytest.raises(FileNotFoundError, match="Affinity file not found: .*nope.json"):
        load_affinity(str(tmp_path / "nope.json"))


def test_numpy_files(tmp_path):
    text = tmp_path / "m.npy"
    text.write_text("not numpy")
    with pytest.raises(ValueError, match=r"m\.npy: not a NumPy \.npy file \(it starts with"):
        load_affinity(str(text), tasks=["a", "b"])
    one = str(tmp_path / "one.npy")
    np.save(one, np.array([[0.0, np.nan], [1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"non-finite entries at \(source, target\) "
                                         r"\[\('a', 'b'\)\]"):
        load_affinity(one, tasks=["a", "b"])
    renamed = tmp_path / "one.npz"
    renamed.write_bytes(open(one, "rb").read())
    with pytest.raises(ValueError, match=r"not a \.npz file \(it holds one array"):
        load_affinity(str(renamed))
    other = str(tmp_path / "other.npz")
    np.savez(other, x=np.ones(2))
    with pytest.raises(ValueError, match=r"no 'affinity' array\. Received arrays: \['x'\]"):
        load_affinity(other)
