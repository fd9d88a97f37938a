"""Every flag each command-line tool accepted on branch ``moves`` is still accepted, with
the same kind and default, and the dataset CLIs' flags keep their meaning.

The test data (``tests/cli/data``, see its README) was computed from the code of branch
``moves`` before the flags were generated from the configuration: the flags of every CLI,
and for the two dataset CLIs, what one command line per flag led to (the runner's options,
the dataset's experiment and data builder arguments). Here the same command lines go
through today's CLIs and the same values must arrive at the same places.
"""

import dataclasses
import importlib
import json
import os
import subprocess
import sys

import pytest
from absl import app

import tag_tf.runner
from tag_tf.runner import experiment as experiment_lib

DATA = os.path.join(os.path.dirname(__file__), "data")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(name):
    with open(os.path.join(DATA, name)) as f:
        return json.load(f)


MOVES_FLAGS = _load("moves_flags.json")


def _same_flag(name, old, new):
    """``new`` (an absl Flag) accepts what ``old`` (a recorded flag) did, the same way."""
    assert new.flag_type() == old["type"], name
    default = list(new.default) if isinstance(new.default, (list, tuple)) else new.default
    assert default == old["default"], (name, default, old["default"])
    if "enum_values" in old:
        assert set(old["enum_values"]) <= set(new.parser.enum_values), name
    if "lower_bound" in old:
        assert getattr(new.parser, "lower_bound", None) == old["lower_bound"], name


@pytest.mark.parametrize("module", ["celeba.main", "taskonomy.main"])
def test_dataset_clis_accept_every_flag_of_moves(module):
    registry = importlib.import_module(module).FLAGS
    old = MOVES_FLAGS[module]["flags"]
    missing = sorted(set(old) - set(registry))
    assert not missing, f"{module} lost flags {missing}"
    for name, entry in old.items():
        _same_flag(name, entry, registry[name])


# Flags that now take a list where they took one value (issue 22: the benchmark's first call
# for each --tasks): every old command line still means what it meant.
WIDENED = {("benchmarks.affinity_overhead", "tasks"): ("comma separated list of strings", ["9"])}


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(MOVES_FLAGS))
def test_every_cli_accepts_every_flag_of_moves(module, tmp_path):
    """Each script's flags as it defines them when run (``__main__``), in a fresh process."""
    out = tmp_path / "flags.json"
    env = {**os.environ, "PYTHONPATH": REPO, "CUDA_VISIBLE_DEVICES": "",
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, os.path.join(DATA, "dump_flags.py"), module, str(out)],
                   cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    with open(out) as f:
        now = json.load(f)
    registry = now["own"] if now["own"] is not None else now["global"]
    for name, entry in MOVES_FLAGS[module]["flags"].items():
        assert name in registry, (module, name)
        new = registry[name]
        if (module, name) in WIDENED:  # accepts every old value, and lists of them
            assert (new["type"], new["default"]) == WIDENED[module, name], (module, name)
            assert [str(entry["default"])] == new["default"], (module, name)
            continue
        assert new["type"] == entry["type"], (module, name)
        assert new["default"] == entry["default"], (module, name)
        if "enum_values" in entry:
            assert set(entry["enum_values"]) <= set(new["enum_values"]), (module, name)
        if "lower_bound" in entry:
            assert new.get("lower_bound") == entry["lower_bound"], (module, name)
    assert set(MOVES_FLAGS[module]["framework"]) <= set(now["global"]), module


# ------------------------------------------------------------------ what the flags mean
# Branch moves' runner Options field -> where today's RunConfig holds it.
OPTIONS = {
    "epochs": lambda c: c.training.epochs, "patience": lambda c: c.training.patience,
    "seed": lambda c: c.training.seed, "steps_per_epoch": lambda c: c.training.steps_per_epoch,
    "uw_clipped": lambda c: c.training.uw_clipped,
    "gradnorm_alpha": lambda c: c.training.gradnorm_alpha,
    "every_n": lambda c: c.affinity.every_n, "affinity_batch": lambda c: c.affinity.batch,
    "lookahead_rule": lambda c: c.affinity.rule,
    "divide_by_lr": lambda c: c.affinity.divide_by_lr,
    "affinity_measure": lambda c: c.affinity.measures[0],
    "affinity_window": lambda c: c.affinity.window,
    "affinity_epochs": lambda c: c.selection.affinity_epochs,
    "budgets": lambda c: list(c.selection.budgets), "bootstrap": lambda c: c.selection.bootstrap,
    "selection_time_limit": lambda c: c.selection.time_limit,
    "selection_path": lambda c: c.selection.selection_path,
    "budget": lambda c: c.selection.budget, "selection_table": lambda c: c.selection.table,
    "mtl_results": lambda c: c.selection.mtl_results,
    "stl_results": lambda c: c.selection.stl_results, "seeds": lambda c: c.seeds,
    "strategy": lambda c: c.runtime.strategy,
    "mixed_precision": lambda c: c.runtime.mixed_precision,
    "shard_policy": lambda c: c.runtime.shard_policy,
    "backup_dir": lambda c: c.runtime.backup_dir, "save_freq": lambda c: c.runtime.save_freq,
    "logical_cpus": lambda c: c.runtime.logical_cpus,
    "save_weights": lambda c: c.runtime.save_weights, "verbose": lambda c: c.runtime.verbose,
}


# Arguments of experiment.prepare / convert added after moves (new flags), with their
# defaults: a command line of moves (which cannot give them) must leave them there.
ADDED_ARGUMENTS = {"prepare": {"skip_bad_files": False}, "convert": {}}


class _Done(Exception):
    pass


class _FakeSplits:
    steps_per_epoch = 7


def _selection_files(tmp, dataset):
    """The files capture_meaning.py wrote (its ``<tmp>`` paths)."""
    names = (["Black_Hair", "Blond_Hair", "No_Beard"] if dataset == "celeba"
             else ["depth_zbuffer", "normal", "segment_semantic"])
    with open(os.path.join(tmp, "selection.json"), "w") as f:
        json.dump({"selections": [
            {"budget": 1, "networks": [{"tasks": names, "serves": names}]},
            {"budget": 2, "networks": [{"tasks": names[:2], "serves": names[:2]},
                                       {"tasks": names[2:], "serves": names[2:]}]}]}, f)
    with open(os.path.join(tmp, "tables.json"), "w") as f:
        json.dump({"tables": [{"name": "TAG", "selections": [
            {"budget": 2, "networks": [{"tasks": names[:2]}, {"tasks": names[2:]}]}]},
            {"name": "CS", "selections": [{"budget": 2, "networks": [{"tasks": names}]}]}]}, f)


def _capture(dataset, argv, monkeypatch):
    """Today's CLI on ``argv``: the runner call and the builder calls, nothing trained."""
    main = importlib.import_module(f"{dataset}.main")
    experiment = importlib.import_module(f"{dataset}.experiment")
    calls = {"experiment": [], "data": []}

    def build(settings, splits=None, *, seed=0, mixed_precision=None):
        calls["experiment"].append((settings, seed, mixed_precision))
        tasks = settings.tasks
        if dataset == "taskonomy":
            from taskonomy import data  # pylint: disable=g-import-not-at-top
            tasks = data.parse_tasks(tasks)
        return experiment_lib.Experiment(
            tasks=list(tasks), network_fn=None, shared=[], loss_fn=None, train_data=None,
            validation_data=None, test_data=None, optimizer_fn=None)

    def load_data(settings, *, seed=0):
        calls["data"].append((settings, seed))
        return _FakeSplits()

    def run(mode, exp, config, *, output_dir=None):
        calls["run"] = (mode, list(exp.tasks), config, output_dir)
        if exp.for_seed is not None:
            exp.for_seed(config.training.seed + 1)
        raise _Done()

    monkeypatch.setattr(experiment, "build_experiment", build)
    monkeypatch.setattr(tag_tf.runner, "run", run)
    # The directories and files the flags name are checked before any work
    # (tests/cli/test_cli_mistakes.py); this test is about what the flags mean.
    monkeypatch.setattr(experiment, "check_inputs", lambda *args, **kwargs: None)
    if dataset == "celeba":
        from celeba import data  # pylint: disable=g-import-not-at-top
        monkeypatch.setattr(data, "original_file_paths", lambda files_dir: {})
    if dataset == "taskonomy":
        monkeypatch.setattr(experiment, "load_data", load_data)
        monkeypatch.setattr(experiment, "convert", lambda **kw: calls.update(convert=kw))
    else:
        monkeypatch.setattr(experiment, "prepare", lambda **kw: calls.update(prepare=kw))
    registry = main.FLAGS
    registry.unparse_flags()
    try:
        registry([f"{dataset}.main", *argv])
        main.main([f"{dataset}.main"])
    except _Done:
        pass
    finally:
        registry.unparse_flags()
    return calls


def _check_settings(old, settings, seed, mixed_precision):
    for key, value in old.items():
        if key == "args":
            continue
        if key == "seed":
            assert seed == value
        elif key == "mixed_precision":
            assert mixed_precision == value
        elif key == "tasks" and isinstance(settings.tasks, str):
            from taskonomy import data  # pylint: disable=g-import-not-at-top
            assert data.parse_tasks(settings.tasks) == value
        elif key == "tasks":
            assert list(settings.tasks) == value
        else:
            assert getattr(settings, key) == value, key


@pytest.mark.parametrize("dataset", ["celeba", "taskonomy"])
def test_dataset_cli_flags_mean_what_they_meant(dataset, tmp_path, monkeypatch):
    records = _load(f"moves_meaning_{dataset}.json")
    _selection_files(str(tmp_path), dataset)
    checked = {"error": 0, "run": 0, "other": 0}
    for record in records:
        argv = [a.replace("<tmp>", str(tmp_path)) for a in record["argv"]]
        if "error" in record:
            with pytest.raises(app.UsageError) as e:
                _capture(dataset, argv, monkeypatch)
            flag = argv[-1].lstrip("-")  # the contradicting flag is named
            assert flag in str(e.value), (argv, str(e.value))
            checked["error"] += 1
            continue
        calls = _capture(dataset, argv, monkeypatch)
        old = json.loads(json.dumps(record["calls"]).replace("<tmp>", str(tmp_path)))
        for key in ("prepare", "convert"):
            if key in old:
                # The arguments of moves, unchanged; an argument added since (a new flag)
                # must be in ADDED_ARGUMENTS and, with its flag not given, at its default.
                added = {k: v for k, v in calls[key].items() if k not in old[key]}
                assert {k: v for k, v in calls[key].items() if k in old[key]} == old[key], argv
                assert added == {k: ADDED_ARGUMENTS[key][k] for k in added}, argv
        if "run" not in old:
            checked["other"] += 1
            continue
        mode, tasks, config, output_dir = calls["run"]
        assert (mode, tasks, output_dir) == (old["run"]["mode"], old["run"]["tasks"],
                                             old["run"]["output_dir"]), argv
        config_json = json.loads(json.dumps(dataclasses.asdict(config), default=str))
        for key, value in old["run"]["options"].items():
            if key == "log_dir":  # --tensorboard: <output_dir>/tb
                assert config.runtime.tensorboard == (value is not None), argv
                assert value in (None, os.path.join(output_dir, "tb")), argv
                continue
            got = OPTIONS[key](config)
            got = list(got) if isinstance(got, tuple) else got
            if key == "selection_path" and value and dataset == "taskonomy":
                value, got = os.path.abspath(value), os.path.abspath(got)
            assert got == value, (argv, key, got, value, config_json)
        assert len(calls["experiment"]) == len(old["experiment"]), argv
        for before, (settings, seed, mixed) in zip(old["experiment"], calls["experiment"]):
            _check_settings(before, settings, seed, mixed)
        assert len(calls["data"]) == len(old.get("data", [])), argv
        for before, (settings, seed) in zip(old.get("data", []), calls["data"]):
            assert before["args"][0] == settings.data_dir
            _check_settings(before, settings, seed, None)
        checked["run"] += 1
    assert checked["run"] >= 45 and checked["error"] == 1 and sum(checked.values()) == len(
        records), checked
