"""Command-line parsing for scripts that keep their flags in their own absl registry.

Dataset scripts define ``--tasks``, ``--seed``, ``--budgets``... which other tag_tf modules
also define in absl's global registry; a private ``flags.FlagValues`` avoids
``DuplicateFlagError`` when several such modules are imported in one process.
"""

from __future__ import annotations

import sys
from typing import Callable

from absl import flags


def own_registry_parser(registry: flags.FlagValues,
                        doc: str) -> Callable[[list[str]], list[str]]:
    """A ``flags_parser`` for ``app.run``: parses ``registry``, then absl's own flags.

    Args:
      registry: the script's private flag registry.
      doc: the script's usage text, printed with ``--help``.
    """

    def parse(argv: list[str]) -> list[str]:
        if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
            print(doc)
            print(registry.get_help(include_special_flags=False))
            raise SystemExit(0)
        try:
            remaining = registry(argv, known_only=True)
            return flags.FLAGS(remaining)
        except flags.Error as e:
            print(f"FATAL Flags parsing error: {e}\nPass --help to see the flags.",
                  file=sys.stderr)
            raise SystemExit(1) from e

    return parse
