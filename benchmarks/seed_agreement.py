"""Does a "robust" verdict predict the selection of an independent re-run? (planted demo case)

  python -m benchmarks.seed_agreement --cache_dir=/tmp/seed_agreement --runs=15 --k=3

Trains the demo's planted case (``tag_tf.synthetic.demo.DEFAULTS``: 9 tasks, 3 clusters,
2000 steps) ``--runs`` times with training seeds ``0 .. runs-1`` on one problem
(``data_seed`` fixed), caching each run's ``affinity.json`` under ``--cache_dir`` (a run
already there is reused, so the training is paid once). Then, without training again:

* **pooled**: the runs are cut into disjoint sets of ``--k`` seeds; each set is pooled
  (:func:`tag_tf.io.affinity_io.pool_records`) and gets its verdict per budget. For every
  set whose verdict is ``robust``, every *other* set is an independent pooled re-run: the
  agreement rate is the fraction of (robust set, other set) pairs that chose the same
  networks.
  A second rate compares each robust set with every single run outside it (a re-run
  of one seed).
* **single runs**: the same for each run's one-run verdict (``stable within this run``)
  against every other single run.

Prints one markdown table per kind, the overall rates and the wall time of the training.
The selection part is deterministic given ``--seed`` (the bootstrap's).

Measured (16 runs, seeds 0-15, data seed 0, TF_ENABLE_ONEDNN_OPTS=0, 200 resamples; the
16 trainings took 3,194 s wall on a shared 2-core machine, the analysis 221 s):

* b = 3 (the planted clusters): every "robust" verdict was followed by the same selection
  in every independent pooled re-run: K = 4: 6/6 pairs (2 of 4 sets robust), K = 5: 6/6
  (3 of 3 sets robust); against single re-runs outside the set 57/57. K = 2 and 3 gave no
  "robust" at b = 3 (the Student-t margin, 13.97 and 4.53 SE, was not reached).
* all budgets (2, 3, 4): 15/19 pairs = 0.79 (K = 3: 2/4, K = 4: 7/9, K = 5: 6/6). The
  misses are b = 2, where the runs split about 9:7 between two selections: 3 or 4 runs
  that happened to agree closely were called robust, and other pooled sets chose the
  other selection. From 5 runs no set was robust at b = 2 or 4.
* single runs: "stable within this run" was followed by another seed's selection in
  313/495 pairs = 0.63 (b = 2: 0.48, b = 3: 1.00, b = 4: 0.40): why one run must not
  say robust.
"""

import tag_tf.cli.quiet  # noqa: F401  (first: quiets TensorFlow's C++ logs without a GPU)

import os
import time

from absl import flags

from tag_tf.cli import errors

FLAGS = flags.FLAGS
flags.DEFINE_string("cache_dir", None, "Where each run's affinity.json is cached "
                    "(seed_<s>/affinity.json); runs found there are not trained again.")
flags.DEFINE_integer("runs", 15, "Demo trainings (training seeds 0 .. runs-1).")
flags.DEFINE_list("k", ["3"], "Seeds per pooled set (one analysis per value).")
flags.DEFINE_list("budgets", ["2", "3", "4"], "Budgets whose verdicts are checked.")
flags.DEFINE_integer("data_seed", 0, "Seed of the planted problem (fixed across runs).")
flags.DEFINE_integer("bootstrap", 200, "Resamples per verdict.")
flags.DEFINE_integer("seed", 0, "Seed of the bootstrap.")
flags.DEFINE_bool("train_only", False, "Only fill the cache.")


def train_runs(cache_dir: str, runs: int, data_seed: int) -> dict:
    """Trains (or finds) every run; returns ``{seed: affinity.json path}`` and timings."""
    from tag_tf.synthetic import demo  # pylint: disable=g-import-not-at-top
    paths, seconds = {}, {}
    for seed in range(runs):
        directory = os.path.join(cache_dir, f"seed_{seed}")
        path = os.path.join(directory, "affinity.json")
        if not os.path.exists(path):
            start = time.perf_counter()
            demo.run_demo(**dict(demo.DEFAULTS, seed=seed), data_seed=data_seed,
                          output_dir=directory, report=False)
            seconds[seed] = time.perf_counter() - start
            print(f"trained seed {seed} in {seconds[seed]:.0f} s (wall)", flush=True)
        paths[seed] = path
    return {"paths": paths, "seconds": seconds}


def _networks(chosen) -> tuple:
    return tuple(sorted(tuple(sorted(net.tasks)) for net in chosen.networks))


def verdicts(records, budgets, *, bootstrap: int, seed: int):
    """``{budget: (networks, verdict)}`` for one record (a single run or a pool)."""
    from tag_tf import selection  # pylint: disable=g-import-not-at-top
    uncertainty = selection.Uncertainty.from_record(records, n_resamples=bootstrap, seed=seed)
    chosen = selection.select_networks(records.affinity, budgets, tasks=records.tasks,
                                       uncertainty=uncertainty)
    return {s.budget: (_networks(s), s.robustness.verdict, s.robustness) for s in chosen}


def agreement(results: list[dict], budgets, claim: str) -> tuple[list[str], int, int]:
    """Rows per budget and the overall (agreeing, total) pairs for verdicts ``claim``."""
    rows, agree_all, total_all = [], 0, 0
    for b in budgets:
        claimed = [k for k, r in enumerate(results) if r[b][1] == claim]
        agree = total = 0
        for k in claimed:
            for other in range(len(results)):
                if other != k:
                    total += 1
                    agree += results[other][b][0] == results[k][b][0]
        counts = {}
        for r in results:
            counts[r[b][1]] = counts.get(r[b][1], 0) + 1
        distinct = len({r[b][0] for r in results})
        rate = f"{agree / total:.2f}" if total else "n/a"
        rows.append(f"| {b} | {len(results)} | "
                    + ", ".join(f"{v}: {c}" for v, c in sorted(counts.items()))
                    + f" | {distinct} | {agree}/{total} | {rate} |")
        agree_all, total_all = agree_all + agree, total_all + total
    return rows, agree_all, total_all


def run(*, cache_dir, runs, ks, budgets, data_seed, bootstrap, seed, train_only=False):
    from tag_tf.io import affinity_io  # pylint: disable=g-import-not-at-top
    start = time.perf_counter()
    trained = train_runs(cache_dir, runs, data_seed)
    print(f"training: {len(trained['seconds'])} new run(s) in "
          f"{time.perf_counter() - start:.0f} s wall; {runs - len(trained['seconds'])} cached")
    if train_only:
        return {}
    records = [affinity_io.load_affinity(trained["paths"][s]) for s in range(runs)]
    header = ["| budget | sets | verdicts | distinct selections | agreeing pairs | rate |",
              "|---|---|---|---|---|---|"]
    out = {}
    single = [verdicts(r, budgets, bootstrap=bootstrap, seed=seed) for r in records]
    rows, agree, total = agreement(single, budgets, "stable within this run")
    print(f"\nSingle runs ({runs} seeds): does 'stable within this run' predict another "
          "seed's selection?")
    print("\n".join(header + rows))
    print(f"overall: {agree}/{total}" + (f" = {agree / total:.2f}" if total else ""))
    out["single"] = (agree, total)
    for k in ks:
        sets = [list(range(i, i + k)) for i in range(0, runs - k + 1, k)]
        pooled = [verdicts(affinity_io.pool_records([records[s] for s in members]), budgets,
                           bootstrap=bootstrap, seed=seed) for members in sets]
        rows, agree, total = agreement(pooled, budgets, "robust")
        print(f"\nPooled sets of K = {k} seeds {sets}: does 'robust' predict an independent "
              "pooled re-run's selection?")
        print("\n".join(header + rows))
        one_agree = one_total = 0
        for members, result in zip(sets, pooled):
            for b in budgets:
                if result[b][1] == "robust":
                    others = [s for s in range(runs) if s not in members]
                    one_total += len(others)
                    one_agree += sum(single[s][b][0] == result[b][0] for s in others)
        print(f"robust sets vs single re-runs outside them: {one_agree}/{one_total}"
              + (f" = {one_agree / one_total:.2f}" if one_total else ""))
        for members, result in zip(sets, pooled):
            print(f"  seeds {members}: " + "; ".join(
                f"b={b} {result[b][1]} (stability {result[b][2].stability:.2f}, margin "
                f"{result[b][2].margin:.1f} SE)" for b in budgets))
        print(f"overall: {agree}/{total}" + (f" = {agree / total:.2f}" if total else ""))
        out[k] = (agree, total, one_agree, one_total)
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s")
    return out


def main(argv):
    del argv
    if not FLAGS.cache_dir:
        raise errors.UsageError("--cache_dir is required (runs are cached there).")
    run(cache_dir=FLAGS.cache_dir, runs=FLAGS.runs, ks=[int(k) for k in FLAGS.k],
        budgets=[int(b) for b in FLAGS.budgets], data_seed=FLAGS.data_seed,
        bootstrap=FLAGS.bootstrap, seed=FLAGS.seed, train_only=FLAGS.train_only)


if __name__ == "__main__":
    errors.run(main)
