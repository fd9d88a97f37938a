"""A short human summary of a run's results (what the dataset scripts print)."""

from __future__ import annotations

from typing import Any, Mapping, Optional

from tag_tf.io import affinity_io
from tag_tf.io import heatmap

# format_summary prints the affinity matrix up to this many tasks (wider tables only wrap).
SUMMARY_MATRIX_MAX_TASKS = 12


def _fmt(value: Optional[float], spec: str = ".4g") -> str:
    return "n/a" if value is None else format(value, spec)


def format_summary(results: Mapping[str, Any]) -> str:
    """A short human summary: networks, per-task test error and loss, total, affinity.

    With several seeds, errors read ``mean ± std`` over the trainings; selections show
    their robustness verdict and what it is evidence of (one run: its batch noise only,
    with how to check across seeds; several: the runs); ``groups`` states how it compares
    with MTL / STL; input files the data dropped (``bad_input_files``) get one line.
    Results written before verdicts named their evidence are read with
    :func:`tag_tf.selection.robustness.read_robustness` (an old one-seed "robust" reads
    "stable within this run").
    """
    from tag_tf.selection import robustness  # pylint: disable=g-import-not-at-top
    tasks = results["tasks"]
    seeds = results.get("seeds")
    lines = [f"mode {results['mode']}: {len(tasks)} task(s), {len(results['networks'])} "
             f"network(s), {results['seconds']:.1f} s"]
    if seeds:
        lines.append(f"  {len(seeds)} trainings, seeds {seeds}: errors are mean ± std over "
                     "them")
    for k, net in enumerate(results["networks"], start=1):
        stop = "early stop" if net["stopped_early"] else "no early stop"
        seed = f" seed {net['seed']}" if "seed" in net else ""
        lines.append(f"  network {k}{seed}: {{{', '.join(net['tasks'])}}}  {net['epochs_run']} "
                     f"epoch(s), best {net['best_epoch'] + 1} ({stop}), summed val loss "
                     f"{_fmt(net['best_validation_loss'])}, {net['seconds']:.1f} s")
    first = [net for net in results["networks"]
             if not seeds or net.get("seed") == seeds[0]]
    served_by = {t: k for k, net in enumerate(first, start=1) for t in net["serves"]}
    width = max(len(t) for t in tasks + ["total"])
    name = results.get("error_name", "error")

    def value(key, task=None):
        mean = results[key] if task is None else results[key][task]
        std = results.get(key + "_std")
        std = std if task is None or std is None else std.get(task)
        return _fmt(mean) + (f" ± {_fmt(std)}" if seeds and std is not None else "")

    lines.append(f"  {'task'.ljust(width)}  network  test {name:>10}  test loss")
    for task in tasks:
        lines.append(f"  {task.ljust(width)}  {str(served_by.get(task, '-')).rjust(7)}  "
                     f"{value('test_error', task).rjust(15)}  {value('test_loss', task)}")
    lines.append(f"  {'total'.ljust(width)}  {''.rjust(7)}  "
                 f"{value('total_test_error').rjust(15)}")
    if "affinity" in results:
        entry = results["affinity"]
        matrix = affinity_io.decode_matrix(entry["matrix"])
        over = (f"pooled over seeds {entry['pooled_seeds']}" if "pooled_seeds" in entry
                else f"over epochs {entry['epochs_used']}")
        lines.append(f"  {entry['measure']} affinity [source, target] {over} -> "
                     f"{entry['path']}")
        if len(entry["tasks"]) <= SUMMARY_MATRIX_MAX_TASKS:
            lines.append("    " + heatmap.format_matrix(matrix, entry["tasks"]).replace(
                "\n", "\n    "))
        else:  # a 40 x 40 table is unreadable in a terminal: the files hold it
            lines.append(f"    {len(matrix)} x {len(matrix)} matrix (printed up to "
                         f"{SUMMARY_MATRIX_MAX_TASKS} tasks): see the JSON and its heatmap PNG")
        if entry.get("warning"):
            lines.append(f"  WARNING: {entry['warning']}")
    if results.get("selection"):
        selection = results["selection"]
        lines.append(f"  selection -> {selection['path']}")
        solver = selection.get("solver") or {}
        if solver.get("resolved") == "large":
            lines.append(f"    {solver['note']}")
        uncertainty = selection.get("uncertainty") or {}
        # Files written before verdicts named their evidence: the runs are the seeds.
        runs = uncertainty.get("runs") or len(
            (results.get("affinity") or {}).get("pooled_seeds") or [None])
        if "source" in uncertainty:
            test = uncertainty.get("criterion") or robustness.criterion(runs)
            lines.append(f"    robustness: {uncertainty['resamples']} resamples, "
                         f"{uncertainty['source']}; {test}")
            lines.append(f"    evidence: {robustness.evidence_text(runs)}")
            if runs < 2:
                lines.append("    to check across seeds: rerun with --seeds=K (K >= 2), or "
                             "python -m tag_tf.select --affinity=<run files, comma-separated> "
                             "--bootstrap=200")
        elif "skipped" in uncertainty:
            lines.append(f"    robustness {uncertainty['skipped']}")
        for s in selection["selections"]:
            nets = " ".join("{" + ",".join(n["tasks"]) + "}" for n in s["networks"])
            proof = s.get("certificate") or ("optimal" if s.get("optimal") else "not proven "
                                             "optimal")
            lines.append(f"    budget {s['budget']}: {nets}  objective {_fmt(s['objective'])}, "
                         f"{proof}")
            r = robustness.read_robustness(s.get("robustness"), runs=runs)
            if r:
                low, high = r["objective_ci"]
                text = (f"      {r['verdict'].upper()}: stability {r['stability']:.2f}, "
                        f"{100 * r['confidence']:.0f}% CI [{_fmt(low)}, {_fmt(high)}]")
                if r.get("alternative"):
                    alt = " ".join("{" + ",".join(n) + "}" for n in r["alternative"])
                    text += f", margin {_fmt(r['margin'], '.3g')} SE over {alt}"
                lines.append(text)
    if "groups" in results:
        g = results["groups"]
        verdict = g.get("verdict")
        lines.append(f"  selection {g['selection_path']} (budget {g['budget']}"
                     + (f", table {g['table']}" if g["table"] else "")
                     + (f", verdict {verdict['verdict']} from {verdict['runs']} run(s)"
                        if verdict else "") + ")")
        for c in g.get("comparisons", []):
            lines.append(f"  {c['statement']}" + (f" [{c['note']}]" if c.get("note") else ""))
    bad = results.get("bad_input_files")
    if bad and bad.get("count"):
        named = [e["path"] for e in bad.get("first") or []]
        lines.append(f"  WARNING: {bad['count']} bad input file(s) skipped (skip_bad_files)"
                     + (f": {named[0]}" + (", ..." if bad["count"] > 1 else "") if named else "")
                     + "; listed with what is wrong under 'bad_input_files' in results.json"
                     + (f" (the first {len(named)})" if bad["count"] > len(named) else ""))
    return "\n".join(lines)
