"""README.md and docs/*.md: every Python example runs, every module and path they name exists.

How an example is run. Every fenced block needs a language (```python, ```bash, ```text,
```json): an unlabelled fence is an error, so Python cannot hide in one. Every ```python
block is executed, in a fresh temporary working directory (examples write ``runs/...``).
HTML comments on the lines just before a block (blank lines allowed) say how:

* ``<!-- example-setup: NAME -->`` runs the hidden setup NAME first (:data:`SETUPS`); its
  names (``network``, ``train_ds``, ...) are what the page says the example continues from.
* ``<!-- example-slow: REASON -->`` runs the block only under ``pytest -m slow``.
* ``<!-- example-skip: REASON -->`` does not run it; the reason is required and shown.

Anything else in such a comment is an error, as is an unknown setup name.

What is named must exist: every ``python -m X`` (as an importable module spec), every
dotted ``tag_tf.*``, ``celeba.*``, ``taskonomy.*``, ``benchmarks.*`` name (a module, or an
attribute of one), every repository path (``tag_tf/...``, ``tests/...``, ``docs/...``, ...;
``{a,b}`` and ``*`` expanded, ``::test_name`` looked up in the file), every relative link
target, and every entry of README's layout tree; the tree lists every subpackage of tag_tf.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import itertools
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import keras
import numpy as np
import pytest
import tensorflow as tf

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
# Dataset READMEs: their module names and paths are checked too (they hold no Python examples).
NAMED_ONLY = [ROOT / "celeba" / "README.md", ROOT / "taskonomy" / "README.md"]
LANGUAGES = {"python", "bash", "text", "json"}
# Topic pages that must exist (README links to each) and hold at least this many runnable
# Python examples: a parser that finds fewer has broken, not the docs.
PAGES = {"affinity": 1, "state": 2, "distributed": 2, "training": 1, "selection": 1,
         "reproducing": 0, "benchmarks": 0, "differences": 0, "install": 0}


class Block(NamedTuple):
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    setup: str | None
    slow: str | None
    skip: str | None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


_DIRECTIVE = re.compile(r"<!--\s*example-(setup|slow|skip):\s*(.*?)\s*-->\s*$")


def parse_blocks(path: Path) -> list[Block]:
    """Fenced blocks of a markdown file, with the directives in the comments before each."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = re.match(r"^(\s*)```(.*)$", lines[i])
        if not match:
            i += 1
            continue
        indent, language = match.group(1), match.group(2).strip()
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i].removeprefix(indent))
            i += 1
        if i == len(lines):
            raise AssertionError(f"{path}:{start + 1}: fence never closed")
        i += 1
        directives, j = {}, start - 1
        while j >= 0 and (not lines[j].strip() or lines[j].lstrip().startswith("<!--")):
            text = lines[j].strip()
            if text:
                found = _DIRECTIVE.match(text)
                if not found and "example" in text:
                    raise AssertionError(f"{path}:{j + 1}: malformed example directive {text!r}")
                if found:
                    directives[found.group(1)] = found.group(2)
            j -= 1
        blocks.append(Block(path, start + 1, language, "\n".join(body) + "\n",
                            directives.get("setup"), directives.get("slow"),
                            directives.get("skip")))
    return blocks


ALL_BLOCKS = [block for path in DOCS for block in parse_blocks(path)]
PYTHON = [block for block in ALL_BLOCKS if block.language == "python"]


# ------------------------------------------------------------------ hidden setups
def _toy_problem():
    from tag_tf.synthetic import planted_tasks  # pylint: disable=g-import-not-at-top
    return planted_tasks(num_tasks=4, num_clusters=2)


def _network(problem, seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((problem.input_dim,))
    trunk = keras.layers.Dense(16, activation="tanh", name="trunk")(inputs)
    return keras.Model(inputs, {t: keras.layers.Dense(1, name=t)(trunk) for t in problem.tasks})


def setup_toy_network() -> dict:
    """README's example, smaller: ``problem``, ``network``, ``train_ds``, ``val_ds``."""
    problem = _toy_problem()
    return {"problem": problem, "network": _network(problem),
            "train_ds": problem.dataset(256, batch_size=32, seed=0),
            "val_ds": problem.dataset(64, batch_size=32, seed=1, shuffle=False)}


def setup_toy_model() -> dict:
    """``setup_toy_network`` plus ``model``: compiled, recording every 2 steps, not trained."""
    import tag_tf  # pylint: disable=g-import-not-at-top
    names = setup_toy_network()
    model = tag_tf.MultiTaskModel(names["network"], shared=["trunk"],
                                  affinity=tag_tf.AffinityConfig(every_n=2))
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="mse")
    return {**names, "model": model}


def setup_affinity_file() -> dict:
    """``runs/tag/affinity.json``: a 6-task matrix with 2 planted clusters and 8 epoch blocks."""
    import tag_tf  # pylint: disable=g-import-not-at-top
    tasks = [f"task_{k}" for k in range(6)]
    cluster = np.arange(6) % 2
    mean = np.where(cluster[:, None] == cluster[None, :], 0.1, -0.02)
    rng = np.random.default_rng(0)
    blocks = mean + 0.01 * rng.normal(size=(8, 6, 6))
    record = tag_tf.AffinityRecord(
        tasks=tasks, affinity=blocks.mean(axis=0), counts=np.full((6, 6), 80),
        stderr=blocks.std(axis=0, ddof=1) / np.sqrt(8), stderr_blocks=np.full((6, 6), 8),
        stderr_method="batch means", block_means=blocks, block_counts=np.full((8, 6, 6), 10))
    os.makedirs("runs/tag", exist_ok=True)
    tag_tf.save_affinity_json("runs/tag/affinity.json", record)
    return {}


SETUPS: dict[str, Callable[[], dict]] = {
    "toy_network": setup_toy_network,
    "toy_model": setup_toy_model,
    "affinity_file": setup_affinity_file,
}


# ------------------------------------------------------------------ the examples
def test_every_fence_has_a_language_and_every_python_block_a_valid_directive():
    for block in ALL_BLOCKS:
        assert block.language in LANGUAGES, (
            f"{block.id}: fence language {block.language!r}; use one of {sorted(LANGUAGES)}")
        if block.language != "python":
            assert (block.setup, block.slow, block.skip) == (None, None, None), (
                f"{block.id}: example directives only apply to python blocks")
    for block in PYTHON:
        assert block.setup is None or block.setup in SETUPS, (
            f"{block.id}: unknown setup {block.setup!r}; known: {sorted(SETUPS)}")
        for reason in (block.slow, block.skip):
            assert reason is None or len(reason) > 10, f"{block.id}: give a reason"


def test_topic_pages_exist_and_hold_their_examples():
    for page, minimum in PAGES.items():
        path = ROOT / "docs" / f"{page}.md"
        assert path.exists(), f"missing docs page {path}"
        assert f"(docs/{page}.md)" in README.read_text(), f"README does not link {path.name}"
        runnable = [b for b in PYTHON if b.path == path and b.skip is None]
        assert len(runnable) >= minimum, f"{path.name}: {len(runnable)} runnable examples"
    readme = [b for b in PYTHON if b.path == README and b.skip is None]
    assert readme, "README's fit() example was not found"
    first = readme[0]
    assert first.line <= 45 and "fit(" in first.code, "the fit() example must be on README's first screen"


@pytest.fixture
def clean_keras(tmp_path, monkeypatch):
    """A fresh working directory and Keras state around each example."""
    monkeypatch.chdir(tmp_path)
    policy = keras.config.dtype_policy()
    keras.backend.clear_session()
    yield
    keras.config.set_dtype_policy(policy)
    keras.config.set_floatx("float32")
    keras.backend.clear_session()


def _params(slow: bool):
    for block in PYTHON:
        marks = [pytest.mark.slow] if block.slow else []
        if block.skip:
            marks.append(pytest.mark.skip(reason=f"listed in the doc: {block.skip}"))
        if bool(block.slow) == slow:
            yield pytest.param(block, id=block.id, marks=marks)


def _run(block: Block) -> dict:
    namespace: dict = {"__name__": "__doc_example__"}
    if block.setup:  # the names README's example imported
        import tag_tf  # pylint: disable=g-import-not-at-top
        namespace.update(keras=keras, tf=tf, np=np, tag_tf=tag_tf)
        namespace.update(SETUPS[block.setup]())
    exec(compile(block.code, block.id, "exec"), namespace)  # noqa: S102  (running the docs is the point)
    return namespace


def _check(block: Block, namespace: dict) -> None:
    """What every example promises beyond running: its records hold finite numbers, and
    README's example writes the files it says."""
    import tag_tf  # pylint: disable=g-import-not-at-top
    records = [v for v in namespace.values() if isinstance(v, tag_tf.AffinityRecord)]
    for record in records:
        off_diagonal = ~np.eye(len(record.tasks), dtype=bool)
        assert np.isfinite(record.affinity[off_diagonal]).all(), block.id
    if block.path == README:
        assert records and records[0].counts.min() > 0, "README's example recorded nothing"
        for name in ("affinity.json", "affinity.npz", "affinity.png"):
            assert os.path.exists(os.path.join("runs", "tag", name)), name


@pytest.mark.usefixtures("clean_keras")
@pytest.mark.parametrize("block", list(_params(slow=False)))
def test_example_runs(block):
    _check(block, _run(block))


_ISOLATED = """
import sys
from tests.docs import test_examples as t
(block,) = [b for b in t.PYTHON if b.id == sys.argv[1]]
t._check(block, t._run(block))
print("EXAMPLE OK")
"""


@pytest.mark.slow
@pytest.mark.parametrize("block", list(_params(slow=True)))
def test_slow_example_runs(block, tmp_path):
    """Each slow example in a fresh process, as a user runs it (TensorFlow allows one
    MirroredStrategy per process, and other tests may have made theirs)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", _ISOLATED, block.id], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0 and "EXAMPLE OK" in result.stdout, (
        result.stdout[-2000:] + result.stderr[-4000:])


# ------------------------------------------------------------------ named things exist
_MODULE_RUN = re.compile(r"python3? -m ([A-Za-z_][\w.]*)")
_DOTTED = re.compile(r"(?<![\w./-])((?:tag_tf|celeba|taskonomy|benchmarks)(?:\.[A-Za-z_]\w*)+)")
_PATH = re.compile(r"(?<![\w./$<-])((?:tag_tf|celeba|taskonomy|tests|benchmarks|docs|\.ci)"
                   r"/[\w./{},*-]*(?:::\w+)?)")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _expand(pattern: str) -> list[str]:
    """``a{b,c}d`` -> ``[abd, acd]`` (nested braces are not used in the docs)."""
    parts = re.split(r"\{([^{}]*)\}", pattern)
    choices = [[p] if k % 2 == 0 else p.split(",") for k, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def _is_module(name: str) -> bool:
    """Whether ``name`` is an importable module, without importing it (scripts define flags)."""
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _resolves(name: str) -> bool:
    """A module, or an attribute (chain) of the longest module prefix of ``name``."""
    if _is_module(name):
        return True
    parts = name.split(".")
    for k in range(len(parts) - 1, 0, -1):
        if not _is_module(".".join(parts[:k])):
            continue
        value = importlib.import_module(".".join(parts[:k]))
        for attr in parts[k:]:
            if not hasattr(value, attr):
                return False
            value = getattr(value, attr)
        return True
    return False


def _named(paths):
    for path in paths:
        text = path.read_text()
        for match in _MODULE_RUN.finditer(text):
            yield path, "module", match.group(1).rstrip(".")
        for match in _DOTTED.finditer(text):
            name = match.group(1).rstrip(".")
            if text[match.end():match.end() + 2] == "/v":  # format names: tag_tf.affinity/v1
                continue
            if name.rsplit(".", 1)[-1] in ("md", "py", "json", "txt", "png"):  # file names
                continue
            yield path, "name", name
        for match in _PATH.finditer(text):
            yield path, "path", match.group(1).rstrip(".,")
        for match in _LINK.finditer(text):
            if "://" not in match.group(1):
                yield path, "link", match.group(1)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def test_named_modules_names_and_paths_exist():
    missing, checked = [], 0
    for path, kind, name in _named(DOCS + NAMED_ONLY):
        checked += 1
        where = f"{path.relative_to(ROOT)}: {kind} {name}"
        if kind == "module":
            if not _is_module(name):
                missing.append(where)
        elif kind == "name":
            if not _resolves(name):
                missing.append(where)
        elif kind == "link":
            file, _, anchor = name.partition("#")
            target = (path.parent / file) if file else path
            if not target.exists():
                missing.append(where)
            elif anchor and anchor not in _anchors(target):
                missing.append(f"{where} (no such heading)")
        else:
            file, _, test = name.partition("::")
            base = ROOT
            for candidate in _expand(file):
                found = glob.glob(str(base / candidate))
                if not found:
                    missing.append(where)
                elif test and f"def {test}(" not in Path(found[0]).read_text():
                    missing.append(f"{where} (no such test)")
    assert not missing, "named in the docs but missing:\n" + "\n".join(missing)
    assert checked > 100, f"only {checked} names found: the patterns are broken"


def _layout_entries() -> list[str]:
    text = README.read_text()
    section = text.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    tree = re.search(r"```text\n(.*?)```", section, re.DOTALL).group(1)
    entries, stack = [], []
    for line in tree.splitlines():
        match = re.match(r"^( *)(\S+/|\S+\.py)(?:\s|$)", line)
        if not match:
            continue
        depth = len(match.group(1)) // 2
        stack = stack[:depth] + [match.group(2)]
        entries.append("".join(stack))
    return entries


def test_readme_layout_tree_is_real_and_complete():
    entries = _layout_entries()
    assert len(entries) >= 15, entries
    for entry in entries:
        assert (ROOT / entry).exists(), f"README's layout lists {entry}, which does not exist"
    packages = {f"tag_tf/{p.parent.name}/" for p in (ROOT / "tag_tf").glob("*/__init__.py")}
    assert packages <= set(entries), f"layout misses {sorted(packages - set(entries))}"
