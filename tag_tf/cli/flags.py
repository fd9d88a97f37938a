"""Command-line flags generated from dataclass fields: one way for every script.

A script's settings are a frozen dataclass whose fields are made with :func:`setting`: the
field's default is the flag's default, its ``help`` the flag's help, and its type the flag's
kind (``bool``, ``int``, ``float``, ``str``, a ``Literal`` of choices, a tuple for a list)::

    @dataclasses.dataclass(frozen=True)
    class Args:
        budgets: tuple[int, ...] = setting((1, 2, 3), help="Network budgets.")
        minimize: bool = setting(False, help="Minimise instead of maximising.")

    define_flags(Args)                       # --budgets, --minimize in absl's registry
    args = read_flags(Args)                  # Args(budgets=(2, 3), minimize=False)

Nested dataclass fields are flattened: their own settings become flags (``RunConfig``'s
``training.epochs`` is ``--epochs``). A nested class without settings metadata (the library's
:class:`tag_tf.AffinityConfig`) lists its flags in the parent field's ``names``
(:class:`Name` entries). Every name is unique in a class, so :func:`replace` changes a
setting by its flag name from Python as well (``replace(config, every_n=1)``).

The metadata also says whether a field changes a run's results (``results``; e.g. a log
level does not), which :mod:`tag_tf.runner.config` turns into cache keys. Nothing here reads
the flags of a library call: scripts read them once in ``main`` (:func:`read_flags`) and
pass the dataclass on.

Why not ``ml_collections.config_flags``: it is not installed here and not among the
project's dependencies; it overrides by dotted paths (``--config.training.epochs``), which
would rename every flag users have today (``--epochs``); and its ConfigDicts are mutable,
untyped and need a second schema next to the dataclasses. This generator is about 200 lines
over ``dataclasses.fields`` and keeps every flag name.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from typing import Any, Callable, Iterable, Literal, Mapping, NamedTuple, Optional, Sequence

from absl import flags

from tag_tf.cli import errors

# Flags defined here belong to the script calling define_flags (its --help lists them).
flags.disclaim_key_flags()

_KEY = "tag_tf.setting"
KINDS = ("bool", "integer", "float", "string", "enum", "list")


class Setting(NamedTuple):
    """The metadata of a :func:`setting` field (see the module docstring)."""

    help: str
    flag: Optional[str]  # the flag's name ("" = the field's name; None = no flag)
    results: bool  # whether the value changes a run's results
    kind: Optional[str]  # one of KINDS; None: from the field's type
    parse: Optional[Callable[[Any], Any]]  # flag value -> field value
    format: Optional[Callable[[Any], Any]]  # field value -> flag default
    lower_bound: Optional[float]
    names: tuple  # Name entries: the settings of a nested class without metadata


class Name(NamedTuple):
    """A setting of a nested class that has no :func:`setting` metadata of its own."""

    name: str  # the flag (and replace()) name
    field: str  # the nested class's field
    help: str
    kind: str
    choices: tuple = ()
    parse: Optional[Callable[[Any], Any]] = None
    format: Optional[Callable[[Any], Any]] = None
    flag: bool = True  # False: a name for replace() only, no command-line flag
    results: bool = True


def setting(default: Any = dataclasses.MISSING, *, help: str,  # pylint: disable=redefined-builtin
            flag: Optional[str] = "", results: bool = True, kind: Optional[str] = None,
            parse: Optional[Callable[[Any], Any]] = None,
            format: Optional[Callable[[Any], Any]] = None,  # pylint: disable=redefined-builtin
            lower_bound: Optional[float] = None, names: Sequence[Name] = (),
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that is also a command-line flag.

    Args:
      default: the field's (and flag's) default.
      help: what the setting does: the flag's help text.
      flag: the flag's name; ``""`` (default): the field's name; None: no flag.
      results: False for settings that never change results (verbosity, output paths).
      kind: the flag's kind (one of :data:`KINDS`); None: from the field's type.
      parse: converts the flag's value to the field's (e.g. ``"epoch"`` or an int).
      format: converts the field's default to the flag's.
      lower_bound: smallest value of a numeric flag.
      names: for a nested dataclass without settings metadata, its settings.
      default_factory: as ``dataclasses.field``.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}. Received: kind={kind!r}")
    metadata = {_KEY: Setting(help, flag, results, kind, parse, format, lower_bound,
                              tuple(names))}
    return dataclasses.field(default=default, default_factory=default_factory,
                             metadata=metadata)


class Flag(NamedTuple):
    """One flag of a settings class: its name and where its value goes."""

    name: str
    path: tuple[str, ...]  # field names from the outer class down
    kind: str
    help: str
    default: Any  # in the field's form
    choices: tuple = ()
    parse: Optional[Callable[[Any], Any]] = None
    format: Optional[Callable[[Any], Any]] = None
    lower_bound: Optional[float] = None
    results: bool = True
    cli: bool = True  # False: a replace() name only


def _kind_of(annotation: Any) -> tuple[str, tuple]:
    """The flag kind (and choices) of a field type."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _kind_of(rest[0])
        return "string", ()
    if origin is Literal:
        return "enum", tuple(args)
    if annotation is bool:
        return "bool", ()
    if annotation is int:
        return "integer", ()
    if annotation is float:
        return "float", ()
    if annotation is str:
        return "string", ()
    if origin in (tuple, list, Sequence, typing.Sequence) or annotation in (tuple, list):
        return "list", ()
    return "string", ()


def _hints(cls: type) -> dict[str, Any]:
    module = sys.modules.get(cls.__module__)
    return typing.get_type_hints(cls, vars(module) if module else None)


def flags_of(cls: type, instance: Any = None, *, prefix: tuple[str, ...] = ()) -> list[Flag]:
    """Every setting of dataclass ``cls`` as a :class:`Flag` (nested classes flattened).

    ``instance``: take the defaults from it instead of the fields' defaults.
    """
    out: list[Flag] = []
    hints = _hints(cls)
    for field in dataclasses.fields(cls):
        meta = field.metadata.get(_KEY)
        if meta is None:
            continue
        if instance is not None:
            default = getattr(instance, field.name)
        elif field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = None
        path = prefix + (field.name,)
        nested = hints.get(field.name)
        if meta.names:
            out += [Flag(n.name, path + (n.field,), n.kind, n.help,
                         getattr(default, n.field), tuple(n.choices), n.parse, n.format,
                         None, n.results, n.flag) for n in meta.names]
            continue
        if dataclasses.is_dataclass(nested):
            out += flags_of(nested, default, prefix=path)
            continue
        kind, choices = _kind_of(nested)
        out.append(Flag(meta.flag or field.name, path, meta.kind or kind, meta.help, default,
                        choices, meta.parse, meta.format, meta.lower_bound, meta.results,
                        meta.flag is not None))
    names = [f.name for f in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"{cls.__name__}: setting names must be unique. Received twice: {twice}")
    return out


def define_flags(cls: type, registry: flags.FlagValues = flags.FLAGS, *,
                 instance: Any = None, exclude: Iterable[str] = (),
                 choices: Optional[Mapping[str, Sequence[Any]]] = None) -> list[Flag]:
    """Defines an absl flag for every command-line setting of ``cls`` in ``registry``.

    ``instance``: defaults from this object (e.g. a preset); ``exclude``: flag names left
    out (a script that defines them another way); ``choices``: the choices of enum flags
    known only at run time (e.g. ``{"mode": ...}``). Returns the defined flags.
    """
    exclude = set(exclude)
    defined = [f for f in flags_of(cls, instance) if f.cli and f.name not in exclude]
    defined = [f._replace(choices=tuple((choices or {}).get(f.name, f.choices)))
               for f in defined]
    for f in defined:
        default = f.format(f.default) if f.format else f.default
        at = {"flag_values": registry}
        if f.kind == "bool":
            flags.DEFINE_bool(f.name, default, f.help, **at)
        elif f.kind == "integer":
            flags.DEFINE_integer(f.name, default, f.help, lower_bound=f.lower_bound, **at)
        elif f.kind == "float":
            flags.DEFINE_float(f.name, default, f.help, lower_bound=f.lower_bound, **at)
        elif f.kind == "enum":
            flags.DEFINE_enum(f.name, default, [str(c) for c in f.choices], f.help, **at)
        elif f.kind == "list":
            flags.DEFINE_list(f.name, None if default is None else [str(v) for v in default],
                              f.help, **at)
        else:
            flags.DEFINE_string(f.name, None if default is None else str(default), f.help, **at)
    return defined


def _value(f: Flag, registry: flags.FlagValues) -> Any:
    raw = registry[f.name].value
    if f.parse is None or raw is None:
        return tuple(raw) if f.kind == "list" and raw is not None else raw
    try:
        return f.parse(raw)
    except ValueError as e:  # the parser says what is wrong; here: the flag and its value
        text = ",".join(str(v) for v in raw) if isinstance(raw, (list, tuple)) else raw
        raise errors.UsageError(f"--{f.name}: {e}. Received: --{f.name}={text}") from None


def read_flags(cls: type, registry: flags.FlagValues = flags.FLAGS, *, base: Any = None,
               exclude: Iterable[str] = (), only_present: bool = False) -> Any:
    """An instance of ``cls`` from the parsed flags (the inverse of :func:`define_flags`).

    ``base``: start from this instance (default: ``cls()``); ``only_present``: apply only
    the flags given on the command line (a preset's values stay for the others).
    """
    exclude = set(exclude)
    values = {}
    for f in flags_of(cls):
        if not f.cli or f.name in exclude or f.name not in registry:
            continue
        if only_present and not registry[f.name].present:
            continue
        values[f.name] = _value(f, registry)
    return replace(base if base is not None else cls(), **values)


def given(cls: type, registry: flags.FlagValues = flags.FLAGS, *,
          exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The settings of ``cls`` given on the command line: ``{flag name: field value}``."""
    exclude = set(exclude)
    return {f.name: _value(f, registry) for f in flags_of(cls)
            if f.cli and f.name not in exclude and f.name in registry
            and registry[f.name].present}


def get(instance: Any, name: str) -> Any:
    """The value of the setting called ``name`` (a flag name) in dataclass ``instance``."""
    for f in flags_of(type(instance), instance):
        if f.name == name:
            return f.default
    raise ValueError(f"{type(instance).__name__} has no setting {name!r}. Received: {name}")


def replace(instance: Any, **values: Any) -> Any:
    """A copy of dataclass ``instance`` with settings changed by their (flag) names.

    A field's own name also works where no other setting has it (``selection_path`` for
    ``--selection``, ``rule`` for ``--lookahead_rule``).

    Nested dataclasses are rebuilt (with their own ``from_json``/``to_json`` when they have
    them, so e.g. an AffinityConfig's validation batch needs no dataset here).
    """
    known = flags_of(type(instance))
    by_name = {f.name: f for f in known}
    fields = [f.path[-1] for f in known]
    for f in known:  # a field's own name works too where it is unambiguous
        if f.path[-1] not in by_name and fields.count(f.path[-1]) == 1:
            by_name[f.path[-1]] = f
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        raise ValueError(f"Unknown setting(s) {unknown} of {type(instance).__name__}; known: "
                         f"{sorted(by_name)}")
    changes: dict[tuple[str, ...], Any] = {by_name[k].path: v for k, v in values.items()}
    return _apply(instance, changes)


def _apply(instance: Any, changes: Mapping[tuple[str, ...], Any]) -> Any:
    own = {path[0]: v for path, v in changes.items() if len(path) == 1}
    nested: dict[str, dict] = {}
    for path, v in changes.items():
        if len(path) > 1:
            nested.setdefault(path[0], {})[path[1:]] = v
    for name, sub in nested.items():
        current = getattr(instance, name)
        if hasattr(current, "to_json") and hasattr(type(current), "from_json") and \
                all(len(p) == 1 for p in sub) and not _settings_class(type(current)):
            own[name] = type(current).from_json(
                {**current.to_json(), **{p[0]: v for p, v in sub.items()}})
        else:
            own[name] = _apply(current, sub)
    return dataclasses.replace(instance, **own) if own else instance


def _settings_class(cls: type) -> bool:
    return any(_KEY in f.metadata for f in dataclasses.fields(cls))


def parser(registry: flags.FlagValues, doc: str) -> Callable[[list[str]], list[str]]:
    """A ``flags_parser`` for ``app.run``: a script's own registry, then absl's flags.

    Dataset scripts keep their flags in a private ``flags.FlagValues`` (names such as
    ``--tasks`` or ``--seed`` also exist in other modules' global flags, which may be
    imported in the same process).
    """

    def parse(argv: list[str]) -> list[str]:
        if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
            print(doc)
            print(registry.get_help(include_special_flags=False))
            raise SystemExit(0)
        try:
            remaining = registry(argv, known_only=True)
            return flags.FLAGS(remaining)
        except flags.Error as e:  # one line, exit status 2 (tag_tf.cli.errors)
            errors.fail(errors.flag_error_message(e))

    return parse


# ----------------------------------------------------------------------------- parsers
def int_list(values: Sequence[Any]) -> tuple[int, ...]:
    """A list flag as integers (``--budgets=1,2,3``)."""
    try:
        return tuple(int(v) for v in values)
    except ValueError:
        raise ValueError("must be integers") from None


def epoch_or_int(value: Any) -> int | str:
    """``"epoch"`` or a positive integer (``--save_freq``)."""
    if str(value) == "epoch":
        return "epoch"
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError("must be 'epoch' or a positive integer")
    return number


def optional_text(value: Any) -> Optional[str]:
    """A string flag where ``""`` means unset."""
    return None if value is None or str(value).strip() == "" else str(value)
