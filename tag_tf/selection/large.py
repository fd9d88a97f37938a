"""Selection for 20-60 tasks: local search plus column generation with a certified gap.

With tens of tasks the ``2^n`` candidate networks cannot be listed. This module combines

1. *Iterated local search* over at most ``b`` networks (toggle a task in a network, move a
   task between networks, open a new pair), restarted from seeded random partitions; the
   objective is the paper's (Fifty et al., NeurIPS 2021, Sec. 3.2): every task is served by
   its best network, the network score onto ``t`` being the mean of ``A[s, t]`` over the
   other members ``s``.
2. *Column generation* on the set-partitioning relaxation over served sets ``X`` with their
   networks ``G >= X`` (see :mod:`tag_tf.selection.subset_dp`). For task prices ``pi`` the
   Lagrangian bound ``sum_t pi_t + b * max(0, P(pi))`` with
   ``P(pi) = max_G sum_{t in G} max(0, score(G, t) - pi_t)`` bounds every selection; columns
   are priced heuristically (local search over ``G``) and ``P`` is then bounded exactly by
   one small MILP per network size (:func:`price_milp`), which is *anytime*: a size cut
   short by the time limit contributes HiGHS' dual bound, so the bound stays valid.
3. The restricted master problem is solved as a MILP over the generated columns; the best
   of it and the local search is returned with ``bound`` and ``gap`` (relative to
   ``|objective|``, in the input's units).

Tie-breaking and determinism: all randomness comes from ``numpy.random.default_rng(seed)``
and ties are broken as in :mod:`tag_tf.selection.problem` (canonical form). The phases are
bounded by wall-clock shares of ``time_limit`` (25 % local search, 25 % heuristic pricing,
35 % exact pricing, 15 % integer master), so when a limit cuts a phase short the result can
depend on machine speed; the reported bound is valid either way.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
from scipy import optimize, sparse

from tag_tf.selection import problem as problem_lib
from tag_tf.selection import result as result_lib

MAX_LARGE_TASKS = 62
_TOL = 1e-9


class Progress:
    """Reports a long solve every ``every`` seconds (phase, iteration, incumbent, bound,
    gap) to ``callback(dict)``, or to ``absl.logging.info`` when ``callback`` is None.

    Objective and bound are means over tasks in the input's units (as
    ``Selection.objective``); ``gap`` is relative to ``|incumbent|`` (None before a bound).
    """

    def __init__(self, problem: problem_lib.SelectionProblem, budget: int, *,
                 every: float = 5.0, callback: Callable[[dict], None] | None = None):
        self.problem, self.budget, self.every, self.callback = problem, budget, every, callback
        self.start = time.perf_counter()
        self._last = self.start
        self.reports = 0

    def __call__(self, phase: str, iteration: int, incumbent: float,
                 bound: float = math.inf) -> None:
        """``incumbent``/``bound``: internal (maximised) totals."""
        now = time.perf_counter()
        if now - self._last < self.every:
            return
        self._last = now
        self.reports += 1
        sign, n = self.problem.sign, self.problem.n
        finite = math.isfinite(bound) and math.isfinite(incumbent)
        info = {"budget": self.budget, "phase": phase, "iteration": iteration,
                "seconds": now - self.start,
                "incumbent": sign * incumbent / n if math.isfinite(incumbent) else None,
                "bound": sign * bound / n if math.isfinite(bound) else None,
                "gap": (bound - incumbent) / max(abs(incumbent), 1e-12) if finite else None}
        if self.callback is not None:
            self.callback(info)
            return
        from absl import logging  # pylint: disable=g-import-not-at-top
        logging.info("solve_large budget %d, %s iteration %d, %.0f s: incumbent %s, bound %s, "
                     "gap %s", self.budget, phase, iteration, info["seconds"],
                     _fmt(info["incumbent"]), _fmt(info["bound"]),
                     "n/a" if info["gap"] is None else f"{info['gap']:.2%}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.6g}"


def solve_large(affinity: Any, budget: int, *, tasks: Sequence[str] | None = None,
                minimize: bool = False, singletons: problem_lib.Singletons = None,
                seed: int = 0, restarts: int = 8, time_limit: float = 60.0,
                target_gap: float = 1e-4, progress: Callable[[dict], None] | None = None,
                progress_every: float = 5.0) -> result_lib.Selection:
    """Finds a good selection for many tasks and certifies its optimality gap.

    References:
      Fifty et al., "Efficiently Identifying Task Groupings for Multi-Task Learning",
      NeurIPS 2021, Sec. 3.2.

    Args:
      affinity: square ``[source, target]`` matrix.
      budget: maximum number of networks, ``1 <= budget <= n``.
      tasks: task names.
      minimize: minimise (errors, losses) instead of maximise (affinities).
      singletons: single-task network scores (see :func:`make_problem`).
      seed: seed of the local-search restarts.
      restarts: number of local-search restarts.
      time_limit: soft wall-clock limit in seconds for the whole solve.
      target_gap: stop improving the bound once the relative gap is below this.
      progress: called with a dict (budget, phase, iteration, seconds, incumbent, bound,
        gap) at most every ``progress_every`` seconds; None logs it (absl, INFO).
      progress_every: seconds between progress reports.

    Returns:
      A :class:`Selection` whose ``bound``/``gap`` are proven (``optimal`` when the gap
      closes).
    """
    problem = problem_lib.make_problem(affinity, tasks=tasks, minimize=minimize,
                                       singletons=singletons)
    return solve_problem_large(problem, budget, seed=seed, restarts=restarts,
                               time_limit=time_limit, target_gap=target_gap,
                               progress=progress, progress_every=progress_every)


def solve_problem_large(problem: problem_lib.SelectionProblem, budget: int, *,
                        seed: int = 0, restarts: int = 8, time_limit: float = 60.0,
                        target_gap: float = 1e-4,
                        initial: Sequence[Sequence[int]] = (),
                        progress: Callable[[dict], None] | None = None,
                        progress_every: float = 5.0) -> result_lib.Selection:
    """Like :func:`solve_large` for a validated problem; ``initial`` seeds the search."""
    budget = problem_lib.check_budget(budget, problem.n)
    if problem.n > MAX_LARGE_TASKS:
        raise ValueError(
            f"Bitmasks limit the solver to {MAX_LARGE_TASKS} tasks. Received: n={problem.n}")
    start = time.perf_counter()
    if budget == 1:
        # One network must contain every task: the full group is the only selection.
        full = (1 << problem.n) - 1
        total = float(np.max(_scores(problem, np.ones(problem.n, dtype=bool)), axis=0).sum())
        return problem_lib.build_selection(
            problem, [full], budget=1, method="large", seconds=time.perf_counter() - start,
            bound_total=total, optimal=True, details={"trivial": True})
    # Time shares: local search, heuristic pricing, exact pricing, integer master.
    search_deadline = start + 0.25 * time_limit
    generation_deadline = start + 0.5 * time_limit
    pricing_deadline = start + 0.85 * time_limit
    deadline = start + time_limit
    rng = np.random.default_rng(seed)
    report = Progress(problem, budget, every=progress_every, callback=progress)
    search = _LocalSearch(problem, budget)
    starts = [np.array(list(s), dtype=bool) for s in initial]
    best_members, best_total = None, -math.inf
    for r in range(restarts):
        members = starts[r] if r < len(starts) else search.random_start(rng)
        members, total = search.iterated(members, rng, deadline=search_deadline)
        if total > best_total + _TOL:
            best_members, best_total = members, total
        report("local search", r + 1, best_total)
        if time.perf_counter() > search_deadline:
            break
    heuristic_seconds = time.perf_counter() - start

    columns = _Columns(problem)
    columns.add_selection(best_members, search)
    for r in range(budget):  # a few extra seeds for the master
        columns.add_selection(search.random_start(rng), search)
    generation = _column_generation(problem, budget, columns, search, rng,
                                    generation_deadline=generation_deadline,
                                    pricing_deadline=pricing_deadline, incumbent=best_total,
                                    target_gap=target_gap, report=report)
    # Integer restricted master: may combine columns better than the local search.
    master_total, master_masks = columns.solve_integer(
        budget, time_limit=max(1.0, deadline - time.perf_counter()))
    masks = [int(m) for m in _masks_of(best_members)]
    if master_masks is not None and master_total > best_total + _TOL:
        members = np.array([_bits(m, problem.n) for m in master_masks], dtype=bool)
        members, total = search.iterated(members, rng, deadline=deadline, rounds=2)
        masks, best_total = [int(m) for m in _masks_of(members)], total
    seconds = time.perf_counter() - start
    details = {
        "heuristic_seconds": heuristic_seconds,
        "columns": len(columns.values),
        "lp_bound_mean": problem.sign * generation.bound / problem.n,
        "exact_pricing_rounds": generation.nodes,
        "pricing_exact": generation.exact,
        "rounds": generation.rounds,
        "absolute_gap": (generation.bound - best_total) / problem.n,
    }
    return problem_lib.build_selection(
        problem, masks, budget=budget, method="large", seconds=seconds,
        bound_total=generation.bound, details=details)


def _bits(mask: int, n: int) -> list[bool]:
    return [bool((mask >> i) & 1) for i in range(n)]


def _masks_of(members: np.ndarray) -> list[int]:
    weights = [1 << i for i in range(members.shape[1])]
    return [sum(w for w, b in zip(weights, row) if b) for row in members if row.any()]


def _scores(problem: problem_lib.SelectionProblem, members: np.ndarray) -> np.ndarray:
    """Gains ``[networks, tasks]`` of networks given as bool rows (``-inf`` off-network)."""
    members = np.atleast_2d(members)
    sizes = members.sum(axis=1)
    sums = members.astype(np.float64) @ problem.gain
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = np.where(members & (sizes >= 2)[:, None],
                          sums / np.maximum(sizes - 1, 1)[:, None], -np.inf)
    if problem.single_gain is not None:
        single = members & (sizes == 1)[:, None]
        scores = np.where(single, problem.single_gain[None, :], scores)
    return scores


class _LocalSearch:
    """Best-improvement local search over ``budget`` network rows (empty rows allowed)."""

    def __init__(self, problem: problem_lib.SelectionProblem, budget: int):
        self.problem = problem
        self.budget = budget
        self.n = problem.n
        self.min_size = 1 if problem.single_gain is not None else 2

    def total(self, members: np.ndarray) -> float:
        return float(_scores(self.problem, members).max(axis=0).sum())

    def random_start(self, rng: np.random.Generator) -> np.ndarray:
        """A random partition into ``k`` networks of at least ``min_size`` tasks."""
        n = self.n
        k = max(1, min(self.budget, n // self.min_size))
        order = rng.permutation(n)
        labels = np.empty(n, dtype=np.int64)
        labels[order[:k * self.min_size]] = np.arange(k * self.min_size) % k
        labels[order[k * self.min_size:]] = rng.integers(0, k, n - k * self.min_size)
        members = np.zeros((self.budget, n), dtype=bool)
        members[labels, np.arange(n)] = True
        return members

    def _toggle_scores(self, row: np.ndarray) -> np.ndarray:
        """Scores ``[t, u]`` of the network ``row`` with task ``t`` toggled."""
        gain = self.problem.gain
        sign = np.where(row, -1.0, 1.0)
        size = row.sum() + sign  # per t
        sums = (row.astype(np.float64) @ gain)[None, :] + sign[:, None] * gain
        new_members = row[None, :] ^ np.eye(self.n, dtype=bool)
        with np.errstate(divide="ignore", invalid="ignore"):
            scores = np.where(new_members & (size >= 2)[:, None],
                              sums / np.maximum(size - 1, 1)[:, None], -np.inf)
        if self.problem.single_gain is not None:
            single = new_members & (size == 1)[:, None]
            scores = np.where(single, self.problem.single_gain[None, :], scores)
        return scores

    def improve(self, members: np.ndarray) -> tuple[np.ndarray, float]:
        """Best-improvement descent with toggle, move and new-pair neighbourhoods."""
        members = members.copy()
        n, k = self.n, members.shape[0]
        gain = self.problem.gain
        while True:
            scores = _scores(self.problem, members)
            current = float(scores.max(axis=0).sum())
            best_value, best_move = current, None
            toggles = [self._toggle_scores(members[j]) for j in range(k)]
            for j in range(k):
                others = np.delete(scores, j, axis=0).max(axis=0) if k > 1 else \
                    np.full(n, -np.inf)
                totals = np.maximum(toggles[j], others[None, :]).sum(axis=1)
                t = int(np.argmax(totals))
                if totals[t] > best_value + _TOL:
                    best_value, best_move = float(totals[t]), ((j, t),)
                for j2 in range(k):
                    if j2 == j:
                        continue
                    rest = np.delete(scores, [j, j2], axis=0).max(axis=0) if k > 2 else \
                        np.full(n, -np.inf)
                    # Move t from j to j2: remove from j (t in j) and add to j2 (t not in j2).
                    valid = members[j] & ~members[j2]
                    if not valid.any():
                        continue
                    totals = np.maximum(np.maximum(toggles[j], toggles[j2]),
                                        rest[None, :]).sum(axis=1)
                    totals = np.where(valid, totals, -np.inf)
                    t = int(np.argmax(totals))
                    if totals[t] > best_value + _TOL:
                        best_value, best_move = float(totals[t]), ((j, t), (j2, t))
            empty = np.nonzero(~members.any(axis=1))[0]
            if empty.size:
                best = scores.max(axis=0)
                gains = (np.maximum(gain - best[None, :], 0.0)
                         + np.maximum(gain.T - best[:, None], 0.0))
                np.fill_diagonal(gains, -np.inf)
                s, t = np.unravel_index(int(np.argmax(gains)), gains.shape)
                if current + gains[s, t] > best_value + _TOL:
                    j = int(empty[0])
                    best_value, best_move = current + float(gains[s, t]), ((j, s), (j, t))
            if best_move is None:
                return members, current
            for j, t in best_move:
                members[j, t] = ~members[j, t]

    def iterated(self, members: np.ndarray, rng: np.random.Generator, *,
                 deadline: float, rounds: int = 25) -> tuple[np.ndarray, float]:
        """Iterated local search: descend, perturb (random toggles), keep the best."""
        best, best_total = self.improve(members)
        stale = 0
        while stale < rounds and time.perf_counter() < deadline:
            trial = best.copy()
            for _ in range(int(rng.integers(2, 5))):
                j = int(rng.integers(0, trial.shape[0]))
                t = int(rng.integers(0, self.n))
                trial[j, t] = ~trial[j, t]
            if not np.isfinite(_scores(self.problem, trial).max(axis=0)).all():
                stale += 1
                continue
            trial, total = self.improve(trial)
            if total > best_total + _TOL:
                best, best_total, stale = trial, total, 0
            else:
                stale += 1
        return best, best_total


class _Columns:
    """Columns ``(X, G)`` of the set-partitioning master: served set, network, value."""

    def __init__(self, problem: problem_lib.SelectionProblem):
        self.problem = problem
        self.served: list[np.ndarray] = []
        self.networks: list[np.ndarray] = []
        self.values: list[float] = []
        self._seen: set[tuple[bytes, bytes]] = set()

    def add(self, served: np.ndarray, network: np.ndarray) -> bool:
        key = (np.packbits(served).tobytes(), np.packbits(network).tobytes())
        if key in self._seen or not served.any():
            return False
        value = float(_scores(self.problem, network)[0][served].sum())
        if not math.isfinite(value):
            return False
        self._seen.add(key)
        self.served.append(served.copy())
        self.networks.append(network.copy())
        self.values.append(value)
        return True

    def add_selection(self, members: np.ndarray, search: _LocalSearch) -> None:
        scores = _scores(self.problem, members)
        if not np.isfinite(scores.max(axis=0)).all():
            return
        serving = np.argmax(scores, axis=0)
        for j in range(members.shape[0]):
            served = serving == j
            if served.any():
                self.add(served, members[j])
                # Single-task served sets keep every task coverable in the master.
                for t in np.nonzero(served)[0]:
                    one = np.zeros(self.problem.n, dtype=bool)
                    one[t] = True
                    self.add(one, members[j])

    def _matrices(self) -> tuple[sparse.csc_matrix, np.ndarray]:
        cover = sparse.csc_matrix(np.array(self.served, dtype=np.float64).T)
        return cover, np.array(self.values)

    def solve_lp(self, budget: int) -> tuple[float, np.ndarray, float]:
        """LP relaxation value with task prices ``pi`` and budget price ``mu``.

        Solves the dual ``min sum(pi) + b mu`` s.t. ``pi(X) + mu >= w(X)`` for every column,
        ``mu >= 0``; among the optimal duals it then takes one with the smallest ``mu``.
        Large ``pi`` (small ``mu``) leaves few tasks with positive pricing contributions,
        which is what lets the exact pricing branch-and-bound prune.
        """
        cover, values = self._matrices()
        n = self.problem.n
        rows = sparse.hstack([cover.T, np.ones((values.size, 1))]).tocsr()
        cost = np.concatenate([np.ones(n), [budget]])
        bounds = [(None, None)] * n + [(0, None)]
        res = optimize.linprog(cost, A_ub=-rows, b_ub=-values, bounds=bounds,
                               method="highs")
        if res.status != 0:
            raise RuntimeError(f"Master dual LP failed: {res.message}")
        value = float(res.fun)
        slack = 1e-9 * max(1.0, abs(value))
        second = optimize.linprog(
            np.concatenate([np.zeros(n), [1.0]]),
            A_ub=sparse.vstack([-rows, sparse.csr_matrix(cost[None, :])]),
            b_ub=np.concatenate([-values, [value + slack]]), bounds=bounds, method="highs")
        x = second.x if second.status == 0 else res.x
        return value, np.asarray(x[:n]), float(x[n])

    def solve_integer(self, budget: int, *, time_limit: float) -> tuple[float, list[int] | None]:
        cover, values = self._matrices()
        res = optimize.milp(-values, constraints=[
            optimize.LinearConstraint(cover, 1.0, 1.0),
            optimize.LinearConstraint(sparse.csc_matrix(np.ones((1, values.size))), 0.0,
                                      float(budget))],
            integrality=np.ones(values.size), bounds=optimize.Bounds(0.0, 1.0),
            options={"time_limit": float(time_limit), "presolve": False})
        if res.x is None:
            return -math.inf, None
        chosen = np.nonzero(res.x > 0.5)[0]
        masks = _masks_of(np.array([self.networks[c] for c in chosen]))
        return -float(res.fun), masks


class _Generation(NamedTuple):
    bound: float
    nodes: int
    exact: bool
    rounds: int


def _pricing_value(problem: problem_lib.SelectionProblem, members: np.ndarray,
                   pi: np.ndarray) -> np.ndarray:
    scores = _scores(problem, members)
    return np.where(np.isfinite(scores), np.maximum(scores - pi[None, :], 0.0), 0.0).sum(1)


def _price_heuristic(problem: problem_lib.SelectionProblem, search: _LocalSearch,
                     columns: _Columns, pi: np.ndarray, rng: np.random.Generator,
                     starts: int = 12) -> list[np.ndarray]:
    """Local search over single networks ``G`` maximising ``sum (score - pi)^+``."""
    n = problem.n
    seeds = [g for g in columns.networks[-60:]]
    gain = problem.gain
    pair = gain + gain.T - pi[None, :] - pi[:, None]
    np.fill_diagonal(pair, -np.inf)
    for flat in np.argsort(pair, axis=None)[::-1][:starts]:
        s, t = np.unravel_index(int(flat), pair.shape)
        g = np.zeros(n, dtype=bool)
        g[[s, t]] = True
        seeds.append(g)
    for _ in range(starts // 2):
        g = np.zeros(n, dtype=bool)
        g[rng.choice(n, size=int(rng.integers(2, max(3, n // 2))), replace=False)] = True
        seeds.append(g)
    found = []
    for g in seeds:
        g = g.copy()
        value = float(_pricing_value(problem, g, pi)[0])
        while True:
            toggled = search._toggle_scores(g)
            vals = np.where(np.isfinite(toggled), np.maximum(toggled - pi[None, :], 0.0),
                            0.0).sum(axis=1)
            t = int(np.argmax(vals))
            if vals[t] <= value + _TOL:
                break
            g[t] = ~g[t]
            value = float(vals[t])
        found.append((value, g))
    return [g for _, g in sorted(found, key=lambda item: -item[0])]


def _add_priced(columns: _Columns, problem: problem_lib.SelectionProblem,
                network: np.ndarray, pi: np.ndarray, mu: float) -> bool:
    scores = _scores(problem, network)[0]
    served = np.isfinite(scores) & (scores > pi)
    if not served.any():
        return False
    value = float((scores[served] - pi[served]).sum())
    if value <= mu + 1e-9 * max(1.0, abs(mu)):
        return False
    return columns.add(served, network)


def _column_generation(problem: problem_lib.SelectionProblem, budget: int,
                       columns: _Columns, search: _LocalSearch, rng: np.random.Generator,
                       *, generation_deadline: float, pricing_deadline: float,
                       incumbent: float, target_gap: float,
                       report: Callable[..., None] = lambda *a, **k: None) -> _Generation:
    best_bound, nodes, exact, rounds = math.inf, 0, False, 0
    while True:
        rounds += 1
        report("column generation", rounds, incumbent, best_bound)
        lp_value, pi, mu = columns.solve_lp(budget)
        added = 0
        for g in _price_heuristic(problem, search, columns, pi, rng):
            added += _add_priced(columns, problem, g, pi, mu)
        if added and time.perf_counter() < generation_deadline:
            continue
        # No heuristic column: bound the pricing problem exactly (anytime).
        bound_p, witnesses, done = price_milp(problem, pi, floor=mu, deadline=pricing_deadline)
        nodes += 1
        best_bound = min(best_bound, float(pi.sum() + budget * max(0.0, bound_p)))
        exact = done
        improved = sum(_add_priced(columns, problem, w, pi, mu) for w in witnesses) > 0
        gap = (best_bound - incumbent) / max(abs(incumbent), 1e-12)
        if not improved or gap <= target_gap or time.perf_counter() > pricing_deadline:
            return _Generation(best_bound, nodes, exact and not improved, rounds)


def price_milp(problem: problem_lib.SelectionProblem, pi: np.ndarray, *, floor: float,
               deadline: float) -> tuple[float, list[np.ndarray], bool]:
    """Upper bound on ``P(pi) = max_G sum_{t in G} max(0, score(G, t) - pi_t)`` via HiGHS.

    For each network size ``m`` the score onto a member is linear in the membership
    vector ``x`` (``sum_s A[s, t] x_s / (m - 1)``), so with ``y_t`` = "t is served" and
    contribution ``c_t`` the pricing problem is the MILP

        max sum_t c_t  s.t.  sum_s x_s = m,  y_t <= x_t,  c_t <= cmax_t y_t,
                             c_t <= score_t(x) - pi_t + M_t (1 - y_t),  x, y binary.

    A size whose MILP hits the time limit contributes HiGHS' dual bound, so the returned
    bound is valid even when the search is cut short.

    Returns:
      ``(bound, witnesses, exact)``: a valid upper bound on ``max(P, floor)``, networks whose
      value beats ``floor``, and whether every size was solved to optimality.
    """
    n = problem.n
    gain = problem.gain
    bound, witnesses, exact = float(floor), [], True
    if problem.single_gain is not None:
        singles = problem.single_gain - pi
        bound = max(bound, float(singles.max()))
        for t in np.nonzero(singles > floor + _TOL)[0]:
            witnesses.append(np.eye(n, dtype=bool)[t])
    off = ~np.eye(n, dtype=bool)
    high = -np.sort(-np.where(off, gain, -np.inf), axis=0)  # per target, descending
    low = np.sort(np.where(off, gain, np.inf), axis=0)
    low_sums = np.cumsum(np.where(np.isfinite(low), low, 0.0), axis=0)
    high_sums = np.cumsum(np.where(np.isfinite(high), high, 0.0), axis=0)
    integrality = np.concatenate([np.ones(2 * n), np.zeros(n)])
    eye = sparse.identity(n, format="csr")
    zero = sparse.csr_matrix((n, n))
    sizes = list(range(2, n + 1))
    for k, m in enumerate(sizes):
        remaining = deadline - time.perf_counter()
        cmax = np.maximum(high_sums[m - 2] / (m - 1) - pi, 0.0)
        lowest = np.minimum(low_sums[m - 2], low_sums[min(m - 1, n - 2)]) / (m - 1) - pi
        big = np.maximum(-lowest, 0.0) + cmax
        if remaining <= 0:
            bound, exact = max(bound, float(np.sort(cmax)[::-1][:m].sum())), False
            continue
        # Variables [x (n), y (n), c (n)].
        score = sparse.csr_matrix(-gain.T / (m - 1))
        constraints = [
            optimize.LinearConstraint(sparse.hstack([sparse.csr_matrix(np.ones((1, n))),
                                                     sparse.csr_matrix((1, 2 * n))]), m, m),
            optimize.LinearConstraint(sparse.hstack([-eye, eye, zero]), -np.inf, 0.0),
            optimize.LinearConstraint(sparse.hstack([zero, -sparse.diags(cmax), eye]),
                                      -np.inf, 0.0),
            optimize.LinearConstraint(sparse.hstack([score, sparse.diags(big), eye]),
                                      -np.inf, big - pi),
        ]
        res = optimize.milp(
            np.concatenate([np.zeros(2 * n), -np.ones(n)]), constraints=constraints,
            integrality=integrality,
            bounds=optimize.Bounds(np.zeros(3 * n), np.concatenate([np.ones(2 * n), cmax])),
            options={"time_limit": max(0.05, remaining / (len(sizes) - k)),
                     "presolve": True})
        dual = getattr(res, "mip_dual_bound", None)
        if res.status == 0 and res.x is not None:
            size_bound = -float(res.fun)
        elif dual is not None and math.isfinite(dual):
            size_bound, exact = -float(dual), False
        else:
            size_bound, exact = float(np.sort(cmax)[::-1][:m].sum()), False
        bound = max(bound, size_bound)
        if res.x is not None and -float(res.fun) > floor + 1e-7 * max(1.0, abs(floor)):
            witnesses.append(res.x[:n] > 0.5)
    return bound, witnesses, exact
