"""A settings-keyed cache of finished trainings: reruns (and crashed runs) reuse them.

Key: SHA-256 of the canonical JSON of the settings (adapter settings, mode, tasks,
training options, extra switches). Value: the directory ``<root>/<key[:20]>/`` holding the
pipeline's ``results.json`` (plus its affinity files) and ``settings.json``. A training
counts as finished only once ``results.json`` exists (the pipeline writes it atomically,
last), so an interrupted training is simply redone.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Optional

HARNESS_VERSION = 2  # 2: fresh datasets per training (order-independent numbers)
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
      hits, misses: how many :meth:`get_or_run` calls reused / produced results.
    """

    def __init__(self, root: str):
        self.root = root
        self.hits = 0
        self.misses = 0

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
        cached = self.lookup(settings)
        if cached is not None:
            self.hits += 1
            return cached, directory
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, SETTINGS_FILE), "w") as f:
            json.dump(settings, f, indent=1, sort_keys=True, default=str)
        results = produce(directory)
        if not os.path.exists(os.path.join(directory, RESULTS_FILE)):
            raise RuntimeError(f"The training did not write {RESULTS_FILE} in {directory}.")
        self.misses += 1
        return results, directory


def to_json_value(value: Any) -> Any:
    """Tuples to lists, recursively (for settings dicts)."""
    if isinstance(value, dict):
        return {k: to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    return value
