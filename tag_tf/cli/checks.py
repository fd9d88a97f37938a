"""Checks of what a command line names, made before any work starts.

Each raises :class:`tag_tf.cli.errors.UsageError` with one line naming the flag, what was
received and what to pass, so a mistake is reported at once (not as a traceback after the
training). No TensorFlow at import: ``--help`` and mistakes stay fast.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

from tag_tf.cli import errors


def parse_budgets(values: Sequence[Any], flag: str = "--budgets") -> list[int]:
    """``--budgets`` as integers >= 1; a usage error (not a traceback) names a bad value."""
    text = ",".join(str(v) for v in values)
    try:
        budgets = [int(b) for b in values]
    except ValueError as e:
        raise errors.UsageError(f"{flag} must be integers (numbers of networks). Received: "
                                f"{flag}={text}") from e
    if any(b < 1 for b in budgets):
        raise errors.UsageError(f"{flag} must be at least 1 (numbers of networks). Received: "
                                f"{flag}={text}")
    return budgets


def check_budgets(budgets: Sequence[int], num_tasks: int, flag: str = "--budgets") -> list[int]:
    """``budgets`` unless one exceeds ``num_tasks`` (a usage error naming it).

    At most ``num_tasks`` networks can serve ``num_tasks`` tasks (Fifty et al., Sec. 3.2).
    """
    over = [b for b in budgets if b > num_tasks]
    if over:
        raise errors.UsageError(
            f"{flag}: a budget cannot exceed the number of tasks ({num_tasks}). Received: "
            f"{flag}={','.join(str(b) for b in budgets)}. Pass budgets from 1 to {num_tasks}.")
    return list(budgets)


def check_directory(flag: str, path: Optional[str], what: str) -> None:
    """A usage error unless ``path`` (the value of ``flag``; None: not given) is a
    directory; ``what`` says what the directory should hold."""
    if path is not None and not os.path.isdir(path):
        raise errors.UsageError(f"{flag}: no such directory. Received: {flag}={path}. "
                                f"Pass {what}.")


def check_run_inputs(mode: str, selection: Any) -> Any:
    """Reads the files a run's :class:`tag_tf.runner.config.SelectionConfig` names, before
    any training: ``--selection`` (with ``--budget`` / ``--selection_table``) and
    ``--mtl_results`` / ``--stl_results``, in mode ``groups`` only.

    Returns:
      The :class:`tag_tf.runner.groups.LoadedSelection` of ``--selection`` in mode
      ``groups``, else None.
    """
    from tag_tf.runner import groups  # pylint: disable=g-import-not-at-top
    references = {"mtl_results": selection.mtl_results, "stl_results": selection.stl_results}
    given = [f"--{name}" for name, path in references.items() if path]
    if given and mode != "groups":
        raise errors.UsageError(f"{' and '.join(given)} are compared with in --mode=groups "
                                f"only. Received: --mode={mode}")
    for name, path in references.items():
        if path:
            with errors.user_input(flag=f"--{name}",
                                   hint=f"Pass the results.json of an {name[:3]} run."):
                groups.reference_results(path)  # what the groups run reads
    if mode != "groups" or not selection.selection_path:
        return None
    with errors.user_input(flag="--selection"):
        return groups.load_selection(selection.selection_path, budget=selection.budget,
                                     table=selection.table)
