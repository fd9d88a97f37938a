"""The ``tag_tf`` distribution (pyproject.toml) and the CI install list (requirements.txt).

Fast: the two declare the same requirements. Slow: a fresh virtual environment outside the
checkout installs the package offline and runs it (import, console scripts), without the
checkout's other folders.
"""

import ast
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOT_SHIPPED = ("celeba", "taskonomy", "tests", "benchmarks")


def pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def requirement_lines() -> list[str]:
    """requirements.txt without comments and blank lines."""
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        lines = [re.sub(r"\s+#.*$", "", line).strip() for line in f]
    return [line for line in lines if line and not line.startswith("#")]


def by_name(requirements: list[Requirement]) -> dict[str, tuple[frozenset, str]]:
    """``{name: (extras, specifier)}``; a name twice must have one specifier (its extras
    are merged: ``tensorflow`` plus the ``cuda`` extra's ``tensorflow[and-cuda]``)."""
    out: dict[str, tuple[frozenset, str]] = {}
    for req in requirements:
        assert req.marker is None and req.url is None, f"unsupported requirement: {req}"
        name, spec = canonicalize_name(req.name), str(req.specifier)
        extras, previous = out.get(name, (frozenset(), spec))
        assert previous == spec, f"{name}: specifiers differ: {previous!r} and {spec!r}"
        out[name] = (extras | frozenset(req.extras), spec)
    return out


def test_requirements_txt_and_pyproject_do_not_drift_apart():
    """Every requirement of pyproject (dependencies + every extra) is in requirements.txt with
    the same specifier and extras, and requirements.txt has nothing pyproject lacks."""
    project = pyproject()["project"]
    declared = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        declared += [Requirement(r) for r in extra]
    listed = [Requirement(line) for line in requirement_lines()]
    names = [canonicalize_name(r.name) for r in listed]
    assert len(names) == len(set(names)), f"requirements.txt lists a package twice: {names}"
    assert by_name(listed) == by_name(declared)


def test_extras_and_console_scripts():
    """The extras the README promises, and console scripts that name real zero-argument
    entry points (absl's ``app.run(main)`` wrapped in ``run()``)."""
    config = pyproject()
    project = config["project"]
    assert project["name"] == "tag_tf"
    extras = project["optional-dependencies"]
    assert extras["cuda"] == ["tensorflow[and-cuda]>=2.16"]
    assert {canonicalize_name(Requirement(r).name) for r in extras["datasets"]} == {
        "tensorflow-datasets", "importlib-resources", "dill"}
    assert "pytest" in extras["test"]
    scripts = project["scripts"]
    assert scripts == {"tag-tf-select": "tag_tf.select:run", "tag-tf-demo": "tag_tf.demo:run"}
    for target in scripts.values():  # read, not imported: both define --tasks, --seed ...
        module, function = target.split(":")
        with open(os.path.join(ROOT, *module.split(".")) + ".py") as f:
            tree = ast.parse(f.read())
        entry = [node for node in tree.body
                 if isinstance(node, ast.FunctionDef) and node.name == function]
        assert len(entry) == 1 and not entry[0].args.args, f"{target}: no run() without arguments"
    found = config["tool"]["setuptools"]["packages"]["find"]
    assert found == {"include": ["tag_tf", "tag_tf.*"]}


def test_the_library_reads_no_data_files_beside_its_modules():
    """The wheel ships Python modules only, so the library must not open files relative to
    its own modules (a package-data file it needs would be missing once installed)."""
    offenders = []
    for folder, _, files in os.walk(os.path.join(ROOT, "tag_tf")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path) as f:
                    if re.search(r"__file__|importlib\.resources|pkgutil\.get_data", f.read()):
                        offenders.append(os.path.relpath(path, ROOT))
    assert not offenders, f"add their data files to pyproject.toml's package data: {offenders}"


# --------------------------------------------------------------------------- slow: install
def _copy_checkout(destination: str) -> None:
    """The checkout's files, without VCS data, virtual environments, caches and outputs
    (building in place would leave build/ and tag_tf.egg-info/ in the checkout)."""
    shutil.copytree(ROOT, destination, ignore=shutil.ignore_patterns(
        ".git", ".venv", "venv", "runs", "build", "dist", "*.egg-info", "__pycache__",
        ".pytest_cache"))


def _venv_python(venv: str) -> str:
    return os.path.join(venv, "bin", "python")


def _run(cmd, *, cwd, env, timeout=900) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.slow
def test_pip_install_outside_the_checkout(tmp_path):
    """``pip install <checkout>`` into a fresh venv, then, from a directory outside the
    checkout: ``import tag_tf`` comes from site-packages, the ``tag-tf-select`` console script
    selects from a small affinity JSON and writes selection.json, ``tag-tf-demo`` runs at toy
    size, and neither the checkout's other folders nor its tests are installed.

    Offline: the venv sees this environment's packages (TensorFlow & co.) through a ``.pth``
    file (``--system-site-packages`` alone would give the base interpreter's, not this
    venv's), and pip builds with ``--no-build-isolation --no-index`` from what is installed
    (setuptools, listed in requirements.txt).
    """
    import site  # pylint: disable=g-import-not-at-top
    import sysconfig  # pylint: disable=g-import-not-at-top
    start = time.perf_counter()
    source, venv, outside = (str(tmp_path / d) for d in ("source", "venv", "outside"))
    _copy_checkout(source)
    os.makedirs(outside)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", PIP_NO_INDEX="1")
    _run([sys.executable, "-m", "venv", "--system-site-packages", venv], cwd=outside, env=env)
    purelib = subprocess.run(
        [_venv_python(venv), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True).stdout.strip()
    ours = sorted({sysconfig.get_paths()["purelib"], *site.getsitepackages()})
    with open(os.path.join(purelib, "_test_environment.pth"), "w") as f:
        f.write("\n".join(ours) + "\n")
    _run([_venv_python(venv), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
          "--no-index", source], cwd=outside, env=env)
    installed_at = time.perf_counter()

    # import tag_tf: from the venv's site-packages, not from the checkout or its copy.
    where = _run([_venv_python(venv), "-c", "import tag_tf; print(tag_tf.__file__)"],
                 cwd=outside, env=env).stdout.strip()
    assert where == os.path.join(purelib, "tag_tf", "__init__.py")
    for folder in NOT_SHIPPED:  # the checkout's other folders are not installed
        missing = subprocess.run([_venv_python(venv), "-c", f"import {folder}"], cwd=outside,
                                 env=env, capture_output=True, text=True)
        assert missing.returncode != 0 and "ModuleNotFoundError" in missing.stderr, folder

    # The installed files: tag_tf's modules (every one of the checkout's), scripts, metadata.
    info = [d for d in os.listdir(purelib) if d.startswith("tag_tf-") and d.endswith(".dist-info")]
    assert len(info) == 1, info
    with open(os.path.join(purelib, info[0], "RECORD")) as f:
        files = [line.split(",")[0] for line in f if line.strip()]
    assert not [p for p in files if p.split("/")[0] in NOT_SHIPPED], files
    shipped = {p for p in files if p.startswith("tag_tf/") and p.endswith(".py")}
    expected = {os.path.relpath(os.path.join(folder, name), ROOT).replace(os.sep, "/")
                for folder, _, names in os.walk(os.path.join(ROOT, "tag_tf"))
                for name in names if name.endswith(".py")}
    assert shipped == expected
    with open(os.path.join(purelib, info[0], "top_level.txt")) as f:
        assert f.read().split() == ["tag_tf"]

    # The selector's console script on a small affinity file.
    with open(os.path.join(outside, "affinity.json"), "w") as f:
        f.write('{"tasks": ["a", "b", "c", "d"], "matrix": [[0, 0.5, -0.2, -0.1], '
                '[0.4, 0, -0.3, -0.2], [-0.1, -0.2, 0, 0.6], [-0.2, -0.1, 0.5, 0]]}')
    script = os.path.join(venv, "bin", "tag-tf-select")
    selected = _run([script, "--affinity=affinity.json", "--budgets=1,2"], cwd=outside, env=env)
    assert "| 2 | {a,b} {c,d} |" in selected.stdout
    with open(os.path.join(outside, "selection.json")) as f:
        assert '"format": "tag_tf.selection/v1"' in f.read()
    mistake = subprocess.run([script, "--affinity=affinity.json", "--budgets=5"], cwd=outside,
                             env=env, capture_output=True, text=True)
    assert mistake.returncode == 2
    assert mistake.stderr.splitlines() == [
        "error: The budget cannot exceed the number of tasks (4). Received: budget=5. Use "
        "budgets from 1 to 4."]
    helped = subprocess.run([script, "--help"], cwd=outside, env=env, capture_output=True,
                            text=True)
    assert "Selects TAG networks" in helped.stdout and "--affinity" in helped.stdout

    # The demo's console script at toy size.
    demo = _run([os.path.join(venv, "bin", "tag-tf-demo"), "--tasks=4", "--clusters=2",
                 "--steps=100", "--steps_per_epoch=50", "--budgets=2", "--output_dir=demo"],
                cwd=outside, env=env)
    assert "Mean inter-task affinity" in demo.stdout
    assert os.path.exists(os.path.join(outside, "demo", "affinity.json"))
    checks = time.perf_counter() - installed_at
    print(f"install {installed_at - start:.1f} s, checks {checks:.1f} s")
