"""A user's mistake on the command line becomes one line, not a traceback.

Every command-line tool of the project runs its ``main`` through :func:`run` (instead of
``absl.app.run``). A mistake in what the user gave (a flag value, a file, a directory)
then ends the process with one line on stderr::

  error: <what is wrong>. Received: <the value>. <what to do>

and exit status :data:`EXIT_STATUS` (2, as ``argparse``; an unexpected exception still
prints its traceback and exits with Python's 1, so a script can tell the two apart).

What counts as a mistake:

* a :class:`UsageError` (or absl's ``app.UsageError``, its base) raised by ``main``;
* a flag that does not parse or fails its validator (``lower_bound``, ``DEFINE_enum``,
  ``flags.register_validator``): absl's ``FATAL Flags parsing error`` and hint become
  one line;
* a ``ValueError`` / ``OSError`` raised where the tool reads the user's input, inside
  ``with user_input(...):``. The library raises those with clear messages
  (``load_affinity``, ``validate_matrix``...); the tool decides where they mean "your
  input is wrong", so a ``ValueError`` from a bug elsewhere keeps its traceback.

This module imports absl only (no TensorFlow), so ``--help`` and mistakes stay fast.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterator, NoReturn, Optional, Sequence, Union

from absl import app
from absl import flags

# Exit status of a user's mistake (a crash exits with Python's 1).
EXIT_STATUS = 2
PREFIX = "error: "
FLAGS_HINT = "Pass --help to see the flags."


class UsageError(app.UsageError):
    """A mistake in the user's input: :func:`run` prints it as one ``error:`` line.

    A subclass of absl's ``app.UsageError``, so code and tests that raise or expect that
    one keep working.
    """


def one_line(text: str) -> str:
    """``text`` with its line breaks and runs of spaces collapsed to single spaces."""
    return " ".join(str(text).split())


def error_line(message: Any) -> str:
    """The line :func:`fail` prints: ``error: <message>`` (one line)."""
    return PREFIX + one_line(message)


def fail(message: Any) -> NoReturn:
    """Prints :func:`error_line` of ``message`` to stderr and exits with :data:`EXIT_STATUS`."""
    sys.stdout.flush()
    sys.stderr.write(error_line(message) + "\n")
    sys.stderr.flush()
    raise SystemExit(EXIT_STATUS)


def flag_error_message(error: Exception) -> str:
    """absl's flag-parsing error (``flag --n=0: 0 is not a positive integer``) plus the hint."""
    text = one_line(str(error)).rstrip(".")
    return f"{text}. {FLAGS_HINT}"


def _message(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        # "[Errno 2] No such file or directory: 'x'" -> "No such file or directory: 'x'".
        return f"{error.strerror}: {error.filename!r}"
    return str(error) or type(error).__name__


Hint = Union[None, str, Callable[[BaseException], Optional[str]]]


@contextlib.contextmanager
def user_input(*types: type[BaseException], flag: Optional[str] = None,
               hint: Hint = None) -> Iterator[None]:
    """Turns the listed exceptions raised in the block into a :class:`UsageError`.

    Use it only around code that reads or checks what the user gave (flags, files,
    directories); the training or the solve itself stays outside, so its bugs keep their
    traceback.

    Args:
      *types: the exception types that mean "the input is wrong" (default ``ValueError``
        and ``OSError``: a missing, unreadable or malformed file).
      flag: the flag the input came from (``"--affinity"``): the message starts with it.
      hint: what to do, appended to the message; or a function of the exception
        returning it (None: no hint).
    """
    types = types or (ValueError, OSError)
    try:
        yield
    except types as e:  # pylint: disable=catching-non-exception
        message = one_line(_message(e))
        if flag:
            message = f"{flag}: {message}"
        advice = hint(e) if callable(hint) else hint
        if advice:
            message = f"{message.rstrip('.')}. {advice}"
        raise UsageError(message) from e


def parse_flags(argv: Sequence[str]) -> list[str]:
    """Parses the global flag registry (``absl.app.run``'s default parser, without its
    multi-line error: :func:`guard_parser` reports a ``flags.Error`` in one line)."""
    return flags.FLAGS(list(argv))


def guard_parser(parser: Callable[[list[str]], Any]) -> Callable[[list[str]], Any]:
    """``parser`` (an ``absl.app.run`` flags parser) with a flag mistake (``flags.Error``)
    or a :class:`UsageError` printed as one line (:func:`fail`)."""

    def parse(argv: list[str]) -> Any:
        try:
            return parser(argv)
        except flags.Error as e:
            fail(flag_error_message(e))
        except app.UsageError as e:
            fail(e)

    return parse


def guard_main(main: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``main`` with a :class:`UsageError` (absl's included) printed as one line
    (:func:`fail`); any other exception passes through, traceback and all."""

    def guarded(argv: Any) -> Any:
        try:
            return main(argv)
        except app.UsageError as e:
            fail(e)

    return guarded


def _help_from(module_name: str) -> None:
    """Started through a console script (``tag-tf-select``), ``__main__`` is pip's stub:
    ``--help`` then shows ``module_name``'s docstring and flags, as ``python -m`` does."""
    main_module = sys.modules.get("__main__")
    module = sys.modules.get(module_name)
    if module_name == "__main__" or main_module is None or module is None:
        return
    if not getattr(main_module, "__doc__", None):
        main_module.__doc__ = module.__doc__
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def run(main: Callable[[list[str]], Any], *,
        flags_parser: Optional[Callable[[list[str]], Any]] = None,
        argv: Optional[Sequence[str]] = None) -> NoReturn:
    """``absl.app.run(main)``, with the user's mistakes as one ``error:`` line.

    Args:
      main: the tool's ``main(argv)``.
      flags_parser: parses the command line (default :func:`parse_flags`, the global
        registry); a ``flags.Error`` or ``UsageError`` it raises is a mistake too.
      argv: the command line (default ``sys.argv``).
    """
    _help_from(getattr(main, "__module__", "__main__"))
    app.run(guard_main(main), argv=None if argv is None else list(argv),
            flags_parser=guard_parser(flags_parser or parse_flags))
    raise AssertionError("absl.app.run returned")  # it always exits
