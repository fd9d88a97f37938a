"""A settings-keyed cache of finished trainings: reruns (and crashed runs) reuse them.

Key: SHA-256 of the canonical JSON of the settings (adapter settings, mode, tasks, the
run config's fields that change the mode's results, the oneDNN setting). Value: the directory ``<root>/<key[:20]>/`` holding the
runner's ``results.json`` (plus its affinity files) and ``settings.json``. A training
counts as finished only once ``results.json`` exists (the runner writes it atomically,
last), so an interrupted training is simply redone.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Optional

from tag_tf.io import atomic

# 2: fresh datasets per training (order-independent numbers).
# 3: one inter-op thread (harness.make_deterministic): version-2 entries may hold numbers
#    of a nondeterministic run, so they are not reused.
# 4: the planted synthetic problem changed (unit-variance targets, relative spread, tanh).
# 5: --deterministic also turns Grappler's meta optimizer off (CS flipped roundings).
# 6: keys hold the RunConfig's result-changing fields ("config") instead of the flat
#    pipeline Options ("options", "window", "measures"); results.json is format v2.
HARNESS_VERSION = 6
SETTINGS_FILE = "settings.json"
RESULTS_FILE = "results.json"


def settings_key(settings: dict) -> str:
    """Hex SHA-256 of the canonical JSON of ``settings``."""
    text = json.dumps({"harness_version": HARNESS_VERSION, **settings}, sort_keys=True,
                      separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class Cache:
    """Maps settings to a results JSON on disk.

    Attributes:
      root: the cache directory.
      misses: trainings run by this object (the cache did not hold them).
      hits: distinct trainings found in the cache, finished before this object first
        asked for them (by an earlier command, or another process).
      shared: further :meth:`get_or_run` calls for a training this object already ran
        or found (one network used by several methods or budgets).
    """

    def __init__(self, root: str):
        self.root = root
        self.hits = 0
        self.misses = 0
        self.shared = 0
        self._seen: set[str] = set()

    def summary(self) -> str:
        """E.g. ``"39 trainings run, 0 reused from the cache, 46 shared between methods"``."""
        return (f"{self.misses} trainings run, {self.hits} reused from the cache, "
                f"{self.shared} shared between methods")

    def holds(self, settings: dict) -> bool:
        """Whether the training of ``settings`` is finished (on disk)."""
        return os.path.exists(os.path.join(self.directory(settings), RESULTS_FILE))

    def directory(self, settings: dict) -> str:
        return os.path.join(self.root, settings_key(settings)[:20])

    def lookup(self, settings: dict) -> Optional[dict]:
        path = os.path.join(self.directory(settings), RESULTS_FILE)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def get_or_run(self, settings: dict, produce: Callable[[str], dict]) -> tuple[dict, str]:
        """The cached results for ``settings``, or ``produce(directory)``'s (which must
        write ``results.json`` into ``directory``). Returns ``(results, directory)``."""
        directory = self.directory(settings)
        key = settings_key(settings)
        cached = self.lookup(settings)
        if cached is not None:
            if key in self._seen:
                self.shared += 1
            else:
                self.hits += 1
                self._seen.add(key)
            return cached, directory
        os.makedirs(directory, exist_ok=True)
        atomic.atomic_write_json(os.path.join(directory, SETTINGS_FILE), settings, indent=1,
                                 sort_keys=True, default=str)
        results = produce(directory)
        if not os.path.exists(os.path.join(directory, RESULTS_FILE)):
            raise RuntimeError(f"The training did not write {RESULTS_FILE} in {directory}.")
        self.misses += 1
        self._seen.add(key)
        return results, directory


def to_json_value(value: Any) -> Any:
    """Tuples to lists, recursively (for settings dicts)."""
    if isinstance(value, dict):
        return {k: to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    return value
