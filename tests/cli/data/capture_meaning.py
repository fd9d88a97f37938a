"""What each dataset-CLI flag means in the code of branch `moves`: the calls it leads to.

python capture_meaning.py celeba|taskonomy out.json
For each argv: the runner call (mode, Options JSON, output_dir, tasks) and the dataset's
experiment / data builder keyword arguments, captured by patching them (nothing trains).
"""
import importlib
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

DATASET, OUT = sys.argv[1], sys.argv[2]
main = importlib.import_module(f"{DATASET}.main")
from tag_tf.runner import pipeline  # noqa: E402

TMP = tempfile.mkdtemp()
SELECTION = os.path.join(TMP, "selection.json")
TABLES = os.path.join(TMP, "tables.json")
if DATASET == "celeba":
    names = ["Black_Hair", "Blond_Hair", "No_Beard"]
else:
    names = ["depth_zbuffer", "normal", "segment_semantic"]
with open(SELECTION, "w") as f:
    json.dump({"selections": [
        {"budget": 1, "networks": [{"tasks": names, "serves": names}]},
        {"budget": 2, "networks": [{"tasks": names[:2], "serves": names[:2]},
                                   {"tasks": names[2:], "serves": names[2:]}]}]}, f)
with open(TABLES, "w") as f:
    json.dump({"tables": [{"name": "TAG", "selections": [
        {"budget": 2, "networks": [{"tasks": names[:2]}, {"tasks": names[2:]}]}]},
        {"name": "CS", "selections": [{"budget": 2, "networks": [{"tasks": names}]}]}]}, f)


class Done(Exception):
    pass


calls = {}


def jsonable(value):
    return json.loads(json.dumps(value, default=repr))


def fake_build(*args, **kwargs):
    calls.setdefault("experiment", []).append(jsonable({"args": list(args)[:1], **kwargs}))
    tasks = kwargs.get("tasks") or args[0]
    if isinstance(tasks, str):
        from taskonomy import data
        tasks = data.parse_tasks(tasks)
    return pipeline.Experiment(tasks=list(tasks), network_fn=None, shared=[], loss_fn=None,
                               train_data=None, validation_data=None, test_data=None,
                               optimizer_fn=None)


class FakeSplits:
    steps_per_epoch = 7


def fake_load_data(*args, **kwargs):
    calls.setdefault("data", []).append(jsonable({"args": list(args), **kwargs}))
    return FakeSplits()


def fake_run(mode, experiment, options=pipeline.Options(), *, output_dir=None):
    calls["run"] = jsonable({"mode": mode, "tasks": list(experiment.tasks),
                             "options": options.to_json(), "output_dir": output_dir})
    # the experiment of a second seed (what --seeds trains)
    if experiment.for_seed is not None:
        experiment.for_seed(options.seed + 1)
    raise Done()


def fake_prepare(**kwargs):
    calls["prepare"] = jsonable(kwargs)


def fake_convert(**kwargs):
    calls["convert"] = jsonable(kwargs)


main.build_experiment = fake_build
pipeline.run = fake_run
if DATASET == "celeba":
    main.prepare = fake_prepare
    EXAMPLES = {
        "seed": "3", "seeds": "2", "epochs": "7", "batch_size": "5", "learning_rate": "0.25",
        "steps_per_epoch": "4", "every_n": "3", "affinity_batch": "validation",
        "affinity_measure": "taylor", "lookahead_rule": "sgd", "divide_by_lr": None,
        "budgets": "2,3", "bootstrap": "7", "uw_clipped": None, "gradnorm_alpha": "0.5",
        "save_weights": True, "tensorboard": True, "verbose": "0", "strategy": "mirrored",
        "mixed_precision": True, "shard_policy": "file", "backup_dir": "bk", "save_freq": "5",
        "tasks": "Black_Hair,No_Beard", "selection_time_limit": "3.5", "image_size": "16",
        "lr_halving_epochs": "4", "patience": "3", "affinity_epochs": "all",
        "cache": "memory", "shuffle_buffer": "8", "limit": "12", "output_dir": "out_x",
        "mtl_results": "m.json", "stl_results": "s.json",
    }
    MODES = ("affinity", "cs", "mtl", "stl", "uw", "gradnorm", "pcgrad")
    BASE = ["--data_dir=/d"]
else:
    main.load_data = fake_load_data
    main.convert = fake_convert
    EXAMPLES = {
        "seed": "3", "seeds": "2", "epochs": "7", "batch_size": "5", "learning_rate": "0.25",
        "steps_per_epoch": "4", "every_n": "3", "affinity_batch": "validation",
        "affinity_measure": "taylor", "lookahead_rule": "sgd", "divide_by_lr": None,
        "budgets": "2,3", "bootstrap": "7", "uw_clipped": True, "gradnorm_alpha": "0.5",
        "save_weights": True, "tensorboard": True, "verbose": "0", "strategy": "mirrored",
        "mixed_precision": True, "shard_policy": "file", "backup_dir": "bk", "save_freq": "5",
        "tasks": "dn", "tfrecord_dir": "/t", "splits_dir": "/s", "eval_batch_size": "3",
        "image_size": "32", "widths": "tiny", "momentum": "0.5", "weight_decay": "0.001",
        "min_learning_rate": "0.01", "loss_window": "1000", "max_loss_window": "4000",
        "patience": "3", "rotate_loss": None, "augment": None, "limit": "2",
        "output_dir": "out_x", "mtl_results": "m.json", "stl_results": "s.json",
    }
    MODES = ("affinity", "cs", "mtl", "stl", "uw", "gradnorm", "pcgrad")
    BASE = ["--data_dir=/d"]


def arg(name, value):
    if value is True:
        return f"--{name}"
    if value is None:
        return f"--no{name}"
    return f"--{name}={value}"


cases = [[f"--mode={m}", *BASE] for m in MODES]
cases += [["--mode=affinity", *BASE, arg(k, v)] for k, v in EXAMPLES.items()]
cases += [["--mode=affinity", *BASE, "--patience=-1"],
          ["--mode=affinity", *BASE, "--lookahead=original"],
          ["--mode=affinity", *BASE, "--lookahead=original", "--budgets="],
          ["--mode=groups", *BASE, f"--selection={SELECTION}", "--budget=2"],
          ["--mode=groups", *BASE, f"--selection={TABLES}", "--selection_table=TAG",
           "--budget=2", "--mtl_results=m.json", "--stl_results=s.json"],
          ["--mode=affinity", *BASE, "--seeds=2", "--seed=4"]]
if DATASET == "celeba":
    cases += [["--mode=affinity", *BASE, "--tasks=all"],
              ["--mode=prepare", "--files_dir=/f", "--data_dir=/d"],
              ["--mode=prepare", "--files_dir=/f", "--noverify_checksums"],
              ["--mode=affinity", *BASE, "--lookahead=original", "--every_n=10"]]
else:
    cases += [["--mode=mtl", "--tfrecord_dir=/t"],
              ["--mode=convert", "--data_dir=/d", "--output_dir=o", "--shards=3", "--limit=2",
               "--tasks=dn", "--splits_dir=/s"],
              ["--mode=affinity", *BASE, "--lookahead=original", "--every_n=1"]]

records = []
for argv in cases:
    calls.clear()
    registry = main.FLAGS
    registry.unparse_flags()
    entry = {"argv": [a.replace(TMP, "<tmp>") for a in argv]}
    try:
        registry([f"{DATASET}.main", *argv])
        main.main([f"{DATASET}.main"])
    except Done:
        pass
    except Exception as e:  # noqa: BLE001
        entry["error"] = f"{type(e).__name__}: {e}".replace(TMP, "<tmp>")
    finally:
        registry.unparse_flags()
    text = json.dumps(calls).replace(TMP, "<tmp>")
    entry["calls"] = json.loads(text)
    records.append(entry)

with open(OUT, "w") as f:
    json.dump(records, f, indent=1, sort_keys=True)
print(len(records), "cases")
