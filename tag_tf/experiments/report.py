"""Writing the tables: markdown, JSON (every number with its settings), formatting."""

from __future__ import annotations

import math
import os
import platform
import time
from typing import Any, Optional, Sequence

import numpy as np

from tag_tf.io import atomic


def fmt(value: Optional[float], spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return format(value, spec)


def mean_std(values: Sequence[Optional[float]]) -> dict:
    """``{"mean", "std" (sample std, ddof 1; 0 for one value), "n"}`` of the defined values
    (None when there are none)."""
    ok = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not ok:
        return {"mean": None, "std": None, "n": 0}
    std = float(np.std(ok, ddof=1)) if len(ok) > 1 else 0.0
    return {"mean": float(np.mean(ok)), "std": std, "n": len(ok)}


def pm(value: Optional[float], std: Optional[float], spec: str = ".4g",
       std_spec: str = ".2g") -> str:
    """``0.1204 ± 0.0031`` (just the value when ``std`` is None)."""
    text = fmt(value, spec)
    return text if std is None or value is None else f"{text} ± {fmt(std, std_spec)}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def groups_text(networks: Sequence[dict]) -> str:
    return " ".join("{" + ",".join(t.replace("task_", "") for t in n["tasks"]) + "}"
                    for n in networks)


def training_counts(caches: Sequence[Any]) -> dict:
    """``trainings_run`` / ``_reused`` (finished by an earlier command) / ``_shared`` (a
    network this command already used, used again) summed over ``caches``
    (:class:`tag_tf.experiments.cache.Cache`)."""
    return {"trainings_run": sum(c.misses for c in caches),
            "trainings_reused": sum(c.hits for c in caches),
            "trainings_shared": sum(c.shared for c in caches)}


def training_counts_text(payload: dict) -> str:
    """E.g. ``39 trainings run, 0 reused from the cache, 46 shared between methods; 441 s in
    all.`` (*shared*: one network used by several methods or budgets, trained once)."""
    return (f"{payload['trainings_run']} trainings run, {payload['trainings_reused']} reused "
            f"from the cache, {payload.get('trainings_shared', 0)} shared between methods "
            f"(a network one method or budget already used); {payload['seconds']:.0f} s in all.")


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return _clean(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_outputs(output_dir: str, stem: str, payload: dict, markdown: str) -> dict:
    """Writes ``<stem>.json`` (payload + environment) and ``<stem>.md`` (each atomically);
    returns paths."""
    os.makedirs(output_dir, exist_ok=True)
    payload = dict(payload)
    payload.setdefault("environment", {
        "written": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(),
        "machine": platform.machine(), "cpus": os.cpu_count()})
    json_path = os.path.join(output_dir, stem + ".json")
    atomic.atomic_write_json(json_path, _clean(payload), indent=1, allow_nan=False)
    md_path = os.path.join(output_dir, stem + ".md")
    atomic.atomic_write_text(md_path, markdown.rstrip() + "\n")
    return {"json": json_path, "markdown": md_path}
