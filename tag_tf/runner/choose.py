"""Network selection after a recording run: ``selection.json`` with its robustness."""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import numpy as np
from absl import logging

from tag_tf.io import affinity_io
from tag_tf.io import heatmap
from tag_tf.runner.config import RunConfig, SelectionConfig
from tag_tf.runner.modes import SELECTION_FILE


def selection_uncertainty(record: affinity_io.AffinityRecord, bootstrap: int,
                          seed: int) -> tuple[Any, Optional[str]]:
    """The bootstrap's :class:`Uncertainty` for ``record``, or None and the reason."""
    from tag_tf.selection import robustness  # pylint: disable=g-import-not-at-top
    if bootstrap <= 0:
        return None, None
    if len(record.tasks) > robustness.MAX_BOOTSTRAP_TASKS:
        return None, (f"not assessed: the bootstrap is limited to "
                      f"{robustness.MAX_BOOTSTRAP_TASKS} tasks ({len(record.tasks)} here)")
    if record.stderr is not None and not np.any(np.nan_to_num(record.stderr) > 0):
        return None, ("not assessed: every standard error is zero or unknown (identical "
                      "runs or epochs?)")
    used = (record.config or {}).get("epochs_used")
    kept = [e for e in record.epochs or [] if used is None or e["epoch"] in used]
    try:
        return robustness.Uncertainty.from_record(record._replace(epochs=kept),
                                                  n_resamples=bootstrap, seed=seed), None
    except ValueError as e:  # no blocks, epochs or stderr: nothing to resample
        return None, f"not assessed: {e}"


def select(affinity_path: str, tasks: Sequence[str], selection: SelectionConfig,
           output_dir: str, *, measure: str = "lookahead", seed: int = 0,
           config: Optional[RunConfig] = None) -> dict:
    """Selects networks for ``selection.budgets`` from the affinity file; writes
    ``selection.json``.

    With ``selection.bootstrap`` resamples, every selection also gets its robustness
    (stability, objective interval, alternative, margin, ``runs``, ``evidence``, verdict),
    resampling the used epochs of one run or, for pooled runs, the runs and then the epochs
    within each run (two-stage; Student-t between runs for 2-4 seeds). One seed can only be
    "stable within this run" / "within noise" / "forced"; "robust" needs pooled seeds
    (:mod:`tag_tf.selection.robustness`). Above 16 tasks the large solver runs
    ``selection.time_limit`` seconds per budget; what each selection proves (optimal, or
    the certified gap) is logged, written (``certificate``) and returned. The heatmap is
    redrawn with the networks of ``selection.budget`` (default: the first) outlined.
    ``config``: the run's full configuration, recorded in ``selection.json``.
    """
    from tag_tf.selection import api  # pylint: disable=g-import-not-at-top
    from tag_tf.selection import robustness  # pylint: disable=g-import-not-at-top
    usable = sorted({int(b) for b in selection.budgets if 1 <= int(b) <= len(tasks)})
    if not usable:
        return {}
    time_limit = selection.time_limit
    path = os.path.join(output_dir, SELECTION_FILE)
    solver = api.solver_note(len(tasks), "auto", time_limit)
    if solver["resolved"] == "large":
        nontrivial = sum(b > 1 for b in usable)
        logging.info("Selecting networks for %d tasks, budgets %s: %s (up to about %.0f s).",
                     len(tasks), usable, solver["note"], nontrivial * time_limit)
    report = api.run_selection(affinity_path=affinity_path, budgets=usable,
                               time_limit=time_limit, seed=seed)
    for chosen in report.selections:
        logging.info("Selection, budget %d (%s, %.1f s): %s", chosen.budget,
                     chosen.method, chosen.seconds, api.certificate(chosen))
    record = affinity_io.load_affinity(affinity_path)
    payload = report.payload
    uncertainty, note = selection_uncertainty(record, selection.bootstrap, seed)
    if uncertainty is not None:
        assessed = robustness.assess(record.affinity, report.selections, uncertainty,
                                     tasks=record.tasks)
        payload["selections"] = api.selection_entries(assessed)
        payload["uncertainty"] = api.uncertainty_entry(uncertainty)
    elif note:
        payload["uncertainty"] = {"skipped": note}
    if config is not None:
        payload["config"] = config.to_json()
    api.write_json(path, payload)
    selections = payload["selections"]
    marked = next((s for s in selections if s["budget"] == selection.budget), selections[0])
    heatmap.save_record_heatmap(affinity_path[:-len(".json")] + ".png", record,
                                measure=measure, selection=marked)
    return {"path": path, "budgets": usable, "solver": payload["solver"],
            "selections": selections, "uncertainty": payload.get("uncertainty")}
