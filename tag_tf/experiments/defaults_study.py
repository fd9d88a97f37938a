r"""Which AffinityConfig defaults pick the best task groups? Evidence on an exact ground truth.

As Table 3 (:mod:`tag_tf.experiments.table3`): every one of the ``2^n - 1`` task groups is
trained, here once per seed, and the ground truth is the *pooled* table (each group's test
error per task averaged over the seeds). Then, for each variant of the affinity recording
(lookahead ``rule``, ``every_n``, ``window``, ``lookahead_scale``), one affinity training
per seed picks groups for every budget, scored on the pooled ground truth as the % of the
random-to-optimal gap closed (``100 * (random - total) / (random - optimal)``, 100 =
optimal). Reported per budget and averaged over budgets: mean ± sample std (ddof 1) over
the seeds. Everything is cached (:mod:`tag_tf.experiments.cache`): a rerun trains nothing.

It also checks that grouping *matters* on the adapter: the optimal grouping (chosen on
the pooled table) at each budget must beat both one network for all tasks and one network
per task by more than their seed-to-seed std on the per-seed tables.

The adapter must be a dataclass with a ``seed`` field that changes only the training
randomness (initialisation, data order), not the problem, so trainings of different seeds
can be pooled -- e.g. :class:`tag_tf.experiments.synthetic_cases.HelpingTasksAdapter` (the
default, ``--adapter=helping``).

  python -m tag_tf.experiments.defaults_study --output_dir=runs/defaults_study
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np

from tag_tf.cli import flags as flags_lib
from tag_tf.cli.flags import setting
from tag_tf.experiments import adapter as adapter_lib
from tag_tf.experiments import report
from tag_tf.experiments import table3
from tag_tf.experiments import harness as harness_lib
from tag_tf.experiments.harness import Harness
from tag_tf.experiments.synthetic_cases import HelpingTasksAdapter


class Variant(NamedTuple):
    """One affinity-recording setting (AffinityConfig fields; the rest at their defaults)."""

    name: str
    rule: str = "sgd"
    every_n: int = 10
    window: Optional[str] = None
    lookahead_scale: float = 1.0


BASE = Variant("base")
VARIANTS = ("base", "rule=optimizer", "scale=0.1", "scale=10", "window=first",
            "window=final", "every_n=50", "every_n=1")
_KEYS = {"rule": "rule", "every_n": "every_n", "window": "window", "scale": "lookahead_scale"}


def parse_variant(text: str) -> Variant:
    """``"base"`` or ``key=value`` pairs joined by ``+``; keys ``rule`` (sgd, optimizer),
    ``every_n`` (int >= 1), ``window`` (first, middle, final, none), ``scale`` (> 0)."""
    text = text.strip()
    if text == "base":
        return BASE
    values: dict[str, Any] = {}
    for part in text.split("+"):
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or key not in _KEYS:
            raise ValueError(f"A variant is 'base' or key=value pairs ({sorted(_KEYS)}) "
                             f"joined by '+'. Received: {text!r}")
        if key == "every_n":
            values["every_n"] = int(value)
        elif key == "scale":
            values["lookahead_scale"] = float(value)
        elif key == "window":
            values["window"] = None if value.lower() == "none" else value
        else:
            values["rule"] = value
    variant = Variant(text, **values)
    import tag_tf  # pylint: disable=g-import-not-at-top
    tag_tf.AffinityConfig(rule=variant.rule, every_n=variant.every_n, window=variant.window,
                          lookahead_scale=variant.lookahead_scale)  # validates
    return variant


# ----------------------------------------------------------------------------- trainings
def variant_affinity(harness: Harness, variant: Variant) -> tuple[np.ndarray, float]:
    """TAG's affinity matrix ([source, target]) under ``variant``, and its seconds: one
    affinity training with the variant's AffinityConfig settings (the rest the adapter's)."""
    results = harness.train(harness.tasks, "affinity", affinity_window=variant.window,
                            every_n=variant.every_n, lookahead_rule=variant.rule,
                            lookahead_scale=variant.lookahead_scale)
    return results.affinity.matrix, float(results.seconds)


def with_seed(adapter: Any, seed: int) -> Any:
    """A copy of a dataclass ``adapter`` with ``seed=seed``."""
    if not dataclasses.is_dataclass(adapter) or "seed" not in {
            f.name for f in dataclasses.fields(adapter)}:
        raise TypeError(f"The defaults study needs a dataclass adapter with a 'seed' field. "
                        f"Received: {type(adapter).__qualname__}")
    return dataclasses.replace(adapter, seed=seed)


def make_adapter(spec: str, args: Any = None) -> Any:
    """``"helping"`` (:class:`HelpingTasksAdapter`) or any :func:`adapter.load_adapter` spec."""
    if spec == "helping":
        return adapter_lib.build_adapter(HelpingTasksAdapter, args, spec)
    return adapter_lib.load_adapter(spec, args)


# ----------------------------------------------------------------------------- scoring
mean_std = report.mean_std


pooled_truth = table3.pooled_truth


def score_selection(err: np.ndarray, tasks: Sequence[str], networks, reference: dict) -> dict:
    """Total error of ``(tasks, serves)`` networks on ``err`` and its % above optimal and
    % of the random-to-optimal gap closed against ``reference`` (one budget's entry of
    :func:`table3.reference_groupings`)."""
    scored = table3.score_networks(err, tasks, networks)
    return {**scored, **table3.relative(scored["total_error"],
                                        reference["optimal"]["total_error"],
                                        reference["random"]["total_error"])}


def partition_total(err: np.ndarray, tasks: Sequence[str], groups) -> Optional[float]:
    """Total error of disjoint ``groups`` (each serving its own tasks) on ``err``."""
    return table3.score_networks(err, tasks, [(g, g) for g in groups])["total_error"]


def grouping_matters(errs: Sequence[np.ndarray], tasks: Sequence[str],
                     references: dict) -> dict:
    """Per budget: the pooled-optimal grouping, all-in-one and single-task totals on each
    seed's table (mean ± std), and whether the optimum beats both by more than the std."""
    def per_seed(networks):
        return [table3.score_networks(e, tasks, networks)["total_error"] for e in errs]

    one_totals = per_seed([(tasks, tasks)])
    stl_totals = per_seed([([t], [t]) for t in tasks])
    one, stl = mean_std(one_totals), mean_std(stl_totals)
    out = {"all_in_one": one, "single_task": stl, "budgets": {}}
    for b, ref in references.items():
        networks = [(n["tasks"], n["serves"]) for n in ref["optimal"]["networks"]]
        if not networks:
            continue
        opt_totals = per_seed(networks)
        opt = mean_std(opt_totals)
        beats = {}
        for name, totals, other in (("all_in_one", one_totals, one),
                                    ("single_task", stl_totals, stl)):
            margin = other["mean"] - opt["mean"]
            paired = mean_std([None if a is None or o is None else a - o
                               for a, o in zip(totals, opt_totals)])
            beats[name] = {"margin": margin,
                           "beyond_std": bool(margin > max(other["std"], opt["std"])),
                           "paired_margin": paired,
                           "paired_beyond_std": bool(paired["mean"] is not None
                                                     and paired["mean"] > paired["std"])}
        out["budgets"][b] = {"optimal": opt, "beats": beats,
                             "matters": all(v["beyond_std"] for v in beats.values())}
    return out


def variant_row(harnesses: Sequence[Harness], variant: Variant, budgets: Sequence[int],
                err: np.ndarray, references: dict) -> dict:
    """One affinity training per seed under ``variant``, its groups scored on ``err``."""
    tasks = harnesses[0].tasks
    seeds = []
    for h in harnesses:
        h.log(f"defaults study: {variant.name}, seed {h.adapter.seed}")
        matrix, seconds = variant_affinity(h, variant)
        selections, _ = h.select(matrix, budgets)
        per_budget = {c.budget: score_selection(err, tasks, [(n.tasks, n.serves)
                                                             for n in c.networks],
                                                references[c.budget])
                      for c in selections}
        gaps = [per_budget[b]["gap_closed_percent"] for b in budgets if b in per_budget]
        seeds.append({"seed": h.adapter.seed, "affinity": matrix.tolist(),
                      "affinity_seconds": seconds, "budgets": per_budget,
                      "mean_gap_closed_percent": mean_std(gaps)["mean"]})
    summary = {b: {key: mean_std([s["budgets"][b][key] for s in seeds])
                   for key in ("gap_closed_percent", "above_optimal_percent", "total_error")}
               for b in budgets}
    return {"variant": variant._asdict(), "seeds": seeds, "budgets": summary,
            "mean_gap_closed_percent": mean_std([s["mean_gap_closed_percent"] for s in seeds]),
            "affinity_seconds": mean_std([s["affinity_seconds"] for s in seeds])}


def versus_base(row: dict, base: dict) -> dict:
    """The variant's mean-over-budgets gap closed minus the base's, paired by seed (mean ±
    std), and whether it is beyond the spread: ``|difference|`` larger than either row's
    std over seeds and than the std of the paired differences."""
    diffs = [None if a["mean_gap_closed_percent"] is None
             or b["mean_gap_closed_percent"] is None
             else a["mean_gap_closed_percent"] - b["mean_gap_closed_percent"]
             for a, b in zip(row["seeds"], base["seeds"])]
    stats = mean_std(diffs)
    spread = max([(r["mean_gap_closed_percent"]["std"] or 0.0) for r in (row, base)]
                 + [stats["std"] or 0.0])
    beyond = stats["mean"] is not None and abs(stats["mean"]) > spread
    return {**stats, "beyond_spread": bool(beyond)}


# ----------------------------------------------------------------------------- the study
def run(adapter: Any, *, cache_dir: str, output_dir: str, seeds: Sequence[int] = (0, 1, 2),
        budgets: Sequence[int] = (2, 3, 4), variants: Sequence[Variant] = (),
        rg_samples: int = 1000, rg_seed: int = 0, max_tasks: int = table3.MAX_TASKS,
        log: Callable[[str], None] = print) -> dict:
    """Ground truth per seed, pooled references, every variant (all cached); writes
    ``defaults_study.{md,json}`` into ``output_dir``."""
    start = time.perf_counter()
    seeds = [int(s) for s in seeds]
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"Need at least 2 distinct seeds. Received: seeds={seeds}")
    variants = [BASE] + [v for v in (variants or [parse_variant(t) for t in VARIANTS])
                         if v != BASE]
    harnesses = [Harness(with_seed(adapter, s), cache_dir, log=log) for s in seeds]
    table3.check_size(harnesses[0], max_tasks)
    tasks = harnesses[0].tasks
    budgets = [int(b) for b in budgets if 1 <= int(b) <= len(tasks)]
    truths = []
    for h in harnesses:
        log(f"defaults study: ground truth, seed {h.adapter.seed} "
            f"({(1 << len(tasks)) - 1} task groups)")
        truths.append(table3.ground_truth(h))
    errs = [t["err"] for t in truths]
    err = pooled_truth(errs)
    partitions = {b: harnesses[0].random_partitions(b, rg_samples, rg_seed)
                  for b in budgets}
    references = table3.reference_groupings(err, tasks, budgets, partitions)
    matters = grouping_matters(errs, tasks, references)
    rows = {v.name: variant_row(harnesses, v, budgets, err, references) for v in variants}
    for row in rows.values():
        row["vs_base"] = versus_base(row, rows[BASE.name])
    payload = {
        "study": "defaults", "adapter": adapter.name,
        "adapter_settings": harnesses[0].adapter.settings(), "tasks": tasks,
        "seeds": seeds, "budgets": budgets, "error_name": harnesses[0].error_name,
        "pooled_ground_truth": [
            {"tasks": g["tasks"], "test_error": {t: float(err[table3.mask_of(tasks, g["tasks"]),
                                                              tasks.index(t)])
                                                 for t in g["tasks"]}}
            for g in truths[0]["groups"]],
        "ground_truth_training_seconds": sum(t["training_seconds"] for t in truths),
        "references": references, "rg_samples": rg_samples,
        "grouping_matters": matters, "rows": rows,
        **report.training_counts([h.cache for h in harnesses]),
        "seconds": time.perf_counter() - start}
    markdown = format_markdown(payload)
    payload["outputs"] = report.write_outputs(output_dir, "defaults_study", payload, markdown)
    payload["markdown"] = markdown
    return payload


def prefill(adapter: Any, seed: int, *, cache_dir: str, variants: Sequence[Variant] = (),
            ground_truth: bool = True, log: Callable[[str], None] = print) -> int:
    """Trains (into the cache) one seed's ground truth (unless ``ground_truth=False``) and
    variant affinity runs, so seeds (and the two parts) can run in separate processes
    before :func:`run` reads them all. Returns the number of trainings run."""
    harness = Harness(with_seed(adapter, seed), cache_dir, log=log)
    if ground_truth:
        table3.ground_truth(harness)
    for variant in [BASE] + [v for v in variants if v != BASE]:
        variant_affinity(harness, variant)
    return harness.cache.misses


# ----------------------------------------------------------------------------- markdown
def _pm(stats: dict, spec: str = ".0f") -> str:
    if stats["mean"] is None:
        return "n/a"
    return f"{stats['mean']:{spec}} ± {stats['std']:{spec}}"


def _vs(stats: dict) -> str:
    if stats["mean"] is None:
        return "n/a"
    return f"{stats['mean']:+.0f} ± {stats['std']:.0f}" + (" *" if stats["beyond_spread"] else "")


def _groups(entry: dict) -> str:
    return " ".join("{" + ",".join(t + ("" if t in n["serves"] else "*") for t in n["tasks"])
                    + "}" for n in entry["networks"])


def format_markdown(payload: dict) -> str:
    budgets, name, refs = payload["budgets"], payload["error_name"], payload["references"]
    seeds, matters = payload["seeds"], payload["grouping_matters"]
    body = []
    for label, row in payload["rows"].items():
        body.append([label] + [_pm(row["budgets"][b]["gap_closed_percent"]) for b in budgets]
                    + [_pm(row["mean_gap_closed_percent"])]
                    + [_vs(row["vs_base"]) if label != BASE.name else "",
                       _pm(row["affinity_seconds"], ".0f")])
    ref_body = [[f"optimal, {b} networks", _groups(refs[b]["optimal"]),
                 report.fmt(refs[b]["optimal"]["total_error"]),
                 report.fmt(refs[b]["random"]["total_error"])] for b in budgets]
    check_body = [["all tasks in one network", _pm(matters["all_in_one"], ".4g"), "", "", ""],
                  ["one network per task", _pm(matters["single_task"], ".4g"), "", "", ""]]
    for b, entry in matters["budgets"].items():
        beats = entry["beats"]
        check_body.append([f"pooled optimum, {b} networks", _pm(entry["optimal"], ".4g"),
                           f"{beats['all_in_one']['margin']:.4g} / "
                           f"{beats['single_task']['margin']:.4g}",
                           "yes" if entry["matters"] else "no",
                           " / ".join(_pm(beats[k]["paired_margin"], ".3g")
                                      for k in ("all_in_one", "single_task"))])
    n = len(payload["tasks"])
    return "\n".join([
        f"## Defaults study ({payload['adapter']}: {n} tasks, seeds {seeds})", "",
        f"Ground truth: all {(1 << n) - 1} task groups trained once per seed; the test "
        f"{name} of each task in each group averaged over the {len(seeds)} seeds. Each "
        "variant's affinity training is run once per seed, groups are selected for each "
        "budget and scored on the pooled ground truth as the % of the random-to-optimal gap "
        "closed (`100 * (random - total) / (random - optimal)`, 100 = optimal, 0 = mean "
        f"random grouping). Mean ± sample std over the {len(seeds)} seeds:", "",
        report.markdown_table(["variant"] + [f"gap closed, {b} networks (%)" for b in budgets]
                              + ["mean over budgets (%)", "vs base (points)",
                                 "affinity training (s)"], body), "",
        "*vs base*: the mean-over-budgets difference to the base, paired by seed (mean ± "
        "std); `*` = beyond the spread (|difference| larger than either row's std and than "
        "the std of the paired differences).", "",
        f"Does grouping matter here? Total test {name} on each seed's own table (mean ± std "
        "over seeds); margins = all-in-one minus optimum / single-task minus optimum; "
        "\"yes\" when both margins exceed the larger of the two stds; paired margins = the "
        "same differences per seed (mean ± std):", "",
        report.markdown_table(["grouping", f"total {name}", "margins", "matters",
                               "paired margins"], check_body), "",
        f"Reference groupings on the pooled table (random: mean of {payload['rg_samples']} "
        "random partitions; `*` = a helper, not served):", "",
        report.markdown_table(["grouping", "groups", f"total {name}", f"random total {name}"],
                              ref_body), "",
        report.training_counts_text(payload)])


# ----------------------------------------------------------------------------- script
@dataclasses.dataclass(frozen=True)
class StudyArgs:
    """The defaults study's flags."""

    adapter: str = setting("helping", help="'helping' (synthetic_cases.HelpingTasksAdapter), "
                           "'synthetic' or 'package.module:factory'; a dataclass whose 'seed' "
                           "does not change the problem.")
    adapter_args: str = setting("", help="JSON keyword arguments for the adapter.")
    output_dir: str = setting("runs/defaults_study", help="Where to write the study.")
    cache_dir: str = setting("runs/cache", help="Training cache (reruns train nothing).")
    seeds: tuple[int, ...] = setting((0, 1, 2), parse=flags_lib.int_list,
                                     help="Training seeds (at least 2).")
    budgets: tuple[int, ...] = setting((2, 3, 4), parse=flags_lib.int_list,
                                       help="Network budgets.")
    variants: tuple[str, ...] = setting(
        VARIANTS, help="Affinity variants: 'base' or key=value joined by '+', keys rule "
        "(sgd|optimizer), every_n, window (first|middle|final|none), scale.")
    rg_samples: int = setting(1000, help="Random partitions of the random baseline.")
    max_tasks: int = setting(table3.MAX_TASKS, help="Refuse more tasks (2^n - 1 groups).")
    deterministic: bool = setting(
        True, help="harness.make_deterministic(): op determinism, one inter-op thread, no "
        "Grappler rewriting (same numbers in any process).")
    prefill_seed: Optional[int] = setting(
        None, help="Only train this seed's ground truth and variant runs into the cache (no "
        "report): run one process per seed, then the study without it.")
    prefill_ground_truth: bool = setting(
        True, help="With --prefill_seed: also train the ground truth (--noprefill_ground_"
        "truth: only the variant affinity runs, e.g. in another process).")
def parse_seeds(values: Sequence[Any]) -> list[int]:
    """``--seeds`` as at least 2 distinct integers (a usage error otherwise)."""
    from tag_tf.cli import errors  # pylint: disable=g-import-not-at-top
    try:
        seeds = [int(s) for s in values]
    except ValueError:
        seeds = []
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise errors.UsageError(f"--seeds must be at least 2 distinct integers (the study "
                                f"compares seeds). Received: --seeds="
                                f"{','.join(str(v) for v in values)}")
    return seeds


def define_flags() -> None:
    flags_lib.define_flags(StudyArgs)


def main(argv):
    from tag_tf.cli import checks  # pylint: disable=g-import-not-at-top
    from tag_tf.cli import errors  # pylint: disable=g-import-not-at-top
    from tag_tf.experiments import cli  # pylint: disable=g-import-not-at-top
    cli.no_arguments(argv)
    args = flags_lib.read_flags(StudyArgs)
    with errors.user_input(ValueError, flag="--variants"):
        variants = [parse_variant(v) for v in args.variants]
    parse_seeds(args.seeds)
    checks.parse_budgets(args.budgets)
    if args.deterministic:
        harness_lib.make_deterministic()
    adapter = cli.load_adapter_from_flags(args, make_adapter)
    if args.prefill_seed is not None:
        count = prefill(adapter, args.prefill_seed, cache_dir=args.cache_dir,
                        variants=variants, ground_truth=args.prefill_ground_truth)
        print(f"seed {args.prefill_seed}: {count} trainings run")
        return
    payload = run(adapter, cache_dir=args.cache_dir, output_dir=args.output_dir,
                  seeds=list(args.seeds), budgets=list(args.budgets), variants=variants,
                  rg_samples=args.rg_samples, max_tasks=args.max_tasks)
    print(payload["markdown"])


if __name__ == "__main__":
    from tag_tf.cli import errors  # pylint: disable=g-import-not-at-top
    define_flags()
    errors.run(main)
