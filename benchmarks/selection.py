"""Times the network selectors side by side and prints a markdown table.

  python -m benchmarks.selection [--large_time_limit=60] [--oracle_max_combinations=3e8]

Matrices are synthetic ``[source, target]`` affinities with planted task clusters
(``A = 1[same cluster] + 0.5 * N(0, 1)``, seeded), like real affinities where some tasks
help each other. Rows: n = 9 (every b = 1..8), 12, 16 (b = 1..5, exact subset DP), 20 and
40 (b = 1..5, large-scale solver with its certified gap); the exhaustive network-combination
oracle (what the original notebook does) runs where its combination count is below
``--oracle_max_combinations``, and its objective is checked against the solver's.
"""

import tag_tf.cli.quiet  # noqa: F401  (first: quiets TensorFlow's C++ logs without a GPU)

import dataclasses
import math
import time

import numpy as np

from tag_tf import selection
from tag_tf.cli import errors
from tag_tf.cli import flags as flags_lib
from tag_tf.cli.flags import setting
from tag_tf.selection import exhaustive, problem, scoring



@dataclasses.dataclass(frozen=True)
class Args:
    """The benchmark's flags."""

    large_time_limit: float = setting(60.0, help="Time limit per budget of the large solver.")
    oracle_max_combinations: float = setting(3e8, lower_bound=0, help="Skip the oracle above this many "
                                             "combos.")
    sizes: tuple[int, ...] = setting((9, 12, 16, 20, 40), parse=flags_lib.int_list,
                                     help="Numbers of tasks (each >= 5: budgets 1..5 are solved).")
    seed: int = setting(0, help="Seed of the synthetic matrices.")


flags_lib.define_flags(Args)


def planted_affinity(n: int, *, clusters: int, seed: int) -> np.ndarray:
    """A seeded ``[source, target]`` matrix with planted clusters."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, clusters, n)
    return (labels[:, None] == labels[None, :]) * 1.0 + 0.5 * rng.normal(size=(n, n))


def run(*, sizes, large_time_limit, oracle_max_combinations, seed):
    rows = ["| n | b | solver | objective | bound | gap | solver s | oracle s | oracle == |",
            "|---|---|---|---|---|---|---|---|---|"]
    for n in sizes:
        matrix = planted_affinity(n, clusters=max(2, n // 6), seed=seed + n)
        budgets = list(range(1, 9)) if n == 9 else list(range(1, 6))
        method = "dp" if n <= 16 else "large"
        start = time.perf_counter()
        sels = selection.select_networks(matrix, budgets, method=method,
                                         time_limit=large_time_limit)
        total = time.perf_counter() - start
        prob = problem.make_problem(matrix)
        candidates = (1 << n) - 1 - n if n <= scoring.MAX_ENUMERATED_TASKS else math.inf
        for sel in sels:
            oracle_s, same = "skipped", ""
            count = scoring.combinations_count(candidates, sel.budget) \
                if math.isfinite(candidates) else math.inf
            if count <= oracle_max_combinations:
                t0 = time.perf_counter()
                ref = exhaustive.solve_problem_exhaustive(prob, sel.budget, mode="networks")
                oracle_s = f"{time.perf_counter() - t0:.3f}"
                same = "yes" if math.isclose(ref.objective, sel.objective, rel_tol=1e-9,
                                             abs_tol=1e-12) else "NO"
            else:
                oracle_s = f"skipped ({count:.2g} combos)"
            gap = "0 (proven)" if sel.optimal else f"{100 * sel.gap:.3g}%"
            rows.append(f"| {n} | {sel.budget} | {sel.method} | {sel.objective:.6g} | "
                        f"{sel.bound:.6g} | {gap} | {sel.seconds:.3f} | {oracle_s} | {same} |")
        rows.append(f"| {n} | all | {method} total | | | | {total:.3f} | | |")
    return "\n".join(rows)


def main(argv):
    if len(argv) > 1:
        raise errors.UsageError(f"Unexpected arguments: {argv[1:]}. Pass flags only; --help "
                                "lists them.")
    args = flags_lib.read_flags(Args)
    if not args.large_time_limit > 0:
        raise errors.UsageError(f"--large_time_limit must be > 0 seconds. Received: "
                                f"--large_time_limit={args.large_time_limit}")
    if not args.sizes or any(n < 5 for n in args.sizes):
        raise errors.UsageError(f"--sizes must be integers >= 5 (numbers of tasks). Received: "
                                f"--sizes={','.join(str(n) for n in args.sizes)}")
    print(run(sizes=list(args.sizes), large_time_limit=args.large_time_limit,
              oracle_max_combinations=args.oracle_max_combinations, seed=args.seed))


if __name__ == "__main__":
    errors.run(main)
