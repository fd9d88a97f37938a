"""Your own Keras model through the paper's workflow (Fifty et al., NeurIPS 2021).

  python -m examples.own_model [output_dir]      # about 3 minutes on a 2-core CPU

Affinities over 3 seeds, network selection with the bootstrap verdict, the chosen groups
trained, and their total test error compared with MTL and STL against the seed-to-seed
spread. "Your data" are the built-in synthetic tasks (6 regression tasks in 3 planted
clusters); replace ``data`` and ``network`` with yours. See docs/own_model.md.
"""

import sys

import keras
import tensorflow as tf

from tag_tf import runner, synthetic

problem = synthetic.planted_tasks(6, 3, seed=0)  # your tasks: a name and a target each


def data(n, seed, shuffle_seed=None):  # (x, {task: y}) batches; the same examples per seed
    x, y = problem.sample(n, seed)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    return (ds if shuffle_seed is None else ds.shuffle(n, seed=shuffle_seed)).batch(64)


def network(tasks):  # your model: a shared trunk, one head per task, outputs named by task
    x = keras.Input((problem.input_dim,))
    h = keras.layers.Dense(32, activation="tanh", name="trunk_1")(x)
    h = keras.layers.Dense(4, activation="tanh", name="trunk_2")(h)
    heads = {t: keras.layers.Dense(8, activation="tanh", name=f"{t}_hidden")(h) for t in tasks}
    return keras.Model(x, {t: keras.layers.Dense(1, name=t)(heads[t]) for t in tasks})


def experiment(seed=0):  # seed: the data order of one training (initialisers follow it)
    return runner.Experiment(
        tasks=problem.tasks, network_fn=network, shared=["trunk_1", "trunk_2"],
        loss_fn=lambda task: "mse", train_data=data(2048, 1, shuffle_seed=seed),
        validation_data=data(512, 2), test_data=data(1024, 3), error_name="mse",
        optimizer_fn=lambda: keras.optimizers.SGD(0.05, momentum=0.9), for_seed=experiment)


def main(out="runs/own_model"):
    config = runner.RunConfig().replace(epochs=8, patience=None, verbose=0, seeds=3,
                                        every_n=10, budgets=(2, 3), bootstrap=200)
    tag = runner.run("affinity", experiment(), config, output_dir=f"{out}/affinity")
    for mode in ("mtl", "stl"):
        runner.run(mode, experiment(), config, output_dir=f"{out}/{mode}")
    groups = runner.run("groups", experiment(), config.replace(
        selection=tag.selection["path"], budget=3, mtl_results=f"{out}/mtl/results.json",
        stl_results=f"{out}/stl/results.json"), output_dir=f"{out}/groups")
    print(runner.format_summary(tag), runner.format_summary(groups), sep="\n\n")
    return tag, groups


if __name__ == "__main__":
    main(*sys.argv[1:])
