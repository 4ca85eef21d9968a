"""Typed configs: a frozen dataclass is the one schema of a component's options.

A config dataclass declares each option once, as a field with a default and a line in the class docstring's
``Args:`` section. Two thin adapters read it: study TOML tables (:func:`build_config`, here) and command-line
flags (:func:`nas_mtl.cli.add_config_arguments`). Neither keeps a list of options of its own, so a new field
is a new TOML key and a new ``--flag`` with its help, and nothing else changes.

A field holding another config dataclass can be *nested* (:func:`nested`): its options then appear among the
outer ones, flat (``epochs`` rather than ``train.epochs``), restricted to ``only`` and renamed by ``rename``.
Two fields that flatten to the same key are one option setting both (e.g. one ``seed`` for the warm start,
the fine-tuning and the sampler of a tree search); their defaults must agree.

Values are checked against the field's type (``int``, ``float``, ``bool``, ``str``, ``X | None``,
``tuple[str, ...]`` from a list or a comma-separated string, ``Mapping[str, float]`` from a table or
``KEY=VALUE`` pairs), then by the dataclass's own ``__post_init__``; every error is one line naming the key.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_NESTED = "nas_mtl.nested"
_KEY = "nas_mtl.key"
_CHOICES = "nas_mtl.choices"
_FLAGS = "nas_mtl.flags"

_NOT_SET = object()


def nested(
    default: Any,
    *,
    only: Sequence[str] | None = None,
    rename: Mapping[str, str] | None = None,
    helps: Mapping[str, str] | None = None,
) -> Any:
    """A field holding the config dataclass ``default``, whose options (``only`` these, keys ``rename``-d, help
    lines replaced by ``helps`` by key) appear flat among the options of the class that holds it."""
    spec = (tuple(only) if only is not None else None, dict(rename or {}), dict(helps or {}))
    return dataclasses.field(default=default, metadata={_NESTED: spec})


def option(
    default: Any = _NOT_SET,
    *,
    key: str | None = None,
    choices: Sequence[Any] | None = None,
    flags: Sequence[str] = (),
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A field with a TOML key / flag name other than its own (``key``), a closed set of values (``choices``,
    shown in ``--help``), or extra command-line spellings (``flags``, e.g. ``("--task-weight",)``); a mutable
    default comes from ``default_factory``."""
    metadata: dict[str, Any] = {}
    if key is not None:
        metadata[_KEY] = key
    if choices is not None:
        metadata[_CHOICES] = tuple(choices)
    if flags:
        metadata[_FLAGS] = tuple(flags)
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Option:
    """One flat option of a config class.

    Args:
        key: its name in TOML tables (``--key-with-dashes`` on the command line).
        paths: the attribute paths it sets (several for a shared key), e.g. ``(("train", "epochs"),)``.
        type: the field's type; ``choices``: its allowed values, if closed.
        default: the value when not given; ``help``: the field's line of the class docstring.
        flags: extra command-line spellings.
    """

    key: str
    paths: tuple[tuple[str, ...], ...]
    type: Any
    default: Any
    help: str = ""
    choices: tuple[Any, ...] | None = None
    flags: tuple[str, ...] = ()


def is_config(cls: Any) -> bool:
    return isinstance(cls, type) and dataclasses.is_dataclass(cls)


@functools.cache
def options(cls: type) -> tuple[Option, ...]:
    """The flat options of config class ``cls``, in field order (TypeError for clashing shared keys)."""
    merged: dict[str, Option] = {}
    for opt in _walk(cls, (), cls(), None, {}, {}):
        old = merged.get(opt.key)
        if old is None:
            merged[opt.key] = opt
            continue
        if old.type != opt.type or old.default != opt.default:
            raise TypeError(
                f"{cls.__name__}: option {opt.key!r} is shared by {old.paths + opt.paths} with different "
                f"types or defaults ({old.default!r} vs {opt.default!r})"
            )
        merged[opt.key] = dataclasses.replace(old, paths=old.paths + opt.paths, help=old.help or opt.help)
    return tuple(merged.values())


def _walk(
    cls: type,
    prefix: tuple[str, ...],
    default: Any,
    only: tuple[str, ...] | None,
    rename: Mapping[str, str],
    helps: Mapping[str, str],
) -> list[Option]:
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        value = getattr(default, f.name)
        if _NESTED in f.metadata:
            out += _walk(hints[f.name], (*prefix, f.name), value, *f.metadata[_NESTED])
            continue
        key = rename.get(f.name, f.metadata.get(_KEY, f.name))
        out.append(
            Option(
                key,
                ((*prefix, f.name),),
                hints[f.name],
                value,
                helps.get(key, docs.get(f.name, "")),
                f.metadata.get(_CHOICES),
                f.metadata.get(_FLAGS, ()),
            )
        )
    return out


_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def plain_text(text: str) -> str:
    """``text`` as a terminal shows help: reStructuredText's double back-quotes dropped, a role such as
    ":data:" reduced to its target (to the target's last name where it starts with a tilde)."""

    def role(match: re.Match) -> str:
        target = match.group(1)
        return target.rsplit(".", 1)[-1] if match.group(0).startswith(":") and "`~" in match.group(0) else target

    return _ROLE.sub(role, text).replace("``", "")


def field_docs(cls: type) -> dict[str, str]:
    """``{field: one-line help}`` from the ``Args:`` section of ``cls``'s docstring (``a, b: text`` lines
    document several fields; indented lines continue the entry above)."""
    doc = cls.__doc__ or ""
    section = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    out: dict[str, str] = {}
    names: list[str] = []
    indent = None
    for line in section.splitlines():
        if not line.strip():
            if names:
                break
            continue
        width = len(line) - len(line.lstrip())
        head = re.match(r"\s*([\w, ]+?):\s+(.*)$", line)
        if head and (indent is None or width == indent):
            indent = width
            names = [n.strip() for n in head.group(1).split(",")]
            for n in names:
                out[n] = head.group(2).strip()
        elif names and indent is not None and width > indent:
            for n in names:
                out[n] += " " + line.strip()
        else:
            break
    return {name: plain_text(text) for name, text in out.items()}


def build_config(
    cls: type,
    values: Mapping[str, Any],
    where: Callable[[str], str] = str,
    base: Any = None,
    text: bool = False,
) -> Any:
    """An instance of config class ``cls`` from flat ``values`` ``{key: value}`` (missing keys: defaults,
    or ``base``'s values).

    Args:
        where: names a key in error messages, e.g. ``lambda k: f"study.toml: search.branch.{k}"``.
        text: values are command-line strings (``"3"``, ``"true"``, ``"a=1"``), not TOML values.

    Raises:
        ValueError: one line naming the key (unknown key, wrong type, or the dataclass's own check).
    """
    by_key = {o.key: o for o in options(cls)}
    unknown = [k for k in values if k not in by_key]
    if unknown:
        raise ValueError(f"{where(unknown[0])}: unknown option; allowed: {', '.join(sorted(by_key))}")
    config = cls() if base is None else base
    changes: dict[tuple[str, ...], Any] = {}
    for key, value in values.items():
        opt = by_key[key]
        value = coerce(value, opt.type, where(key), text)
        if opt.choices is not None and value not in opt.choices:
            raise ValueError(f"{where(key)}: expected one of {list(opt.choices)}, got {value!r}")
        for path in opt.paths:
            changes[path] = value
    try:
        return _replace(config, changes)
    except (TypeError, ValueError) as err:  # the dataclass's own check: name the key its message names
        prefix = where(_key_named(err, [by_key[k] for k in values])) if values else ""
        prefix = prefix or where("").rstrip(".-").strip()
        raise ValueError(f"{prefix}: {err}" if prefix else str(err)) from None


def _key_named(err: Exception, given: Sequence[Option]) -> str:
    """The given option a dataclass's error message names: the one whose longest dotted path suffix
    (``finetune.epochs`` before ``epochs``) or key appears in it; "" when none does."""
    best, score = "", 0
    for opt in given:
        for path in opt.paths:
            for n in range(len(path), 0, -1):
                if n > score and re.search(rf"\b{re.escape('.'.join(path[-n:]))}\b", str(err)):
                    best, score = opt.key, n
        if score == 0 and re.search(rf"\b{re.escape(opt.key)}\b", str(err)):
            best, score = opt.key, 1
    return best


def _replace(config: Any, changes: Mapping[tuple[str, ...], Any]) -> Any:
    """``config`` with each attribute path in ``changes`` set (nested configs rebuilt, so each one's checks run)."""
    direct = {path[0]: v for path, v in changes.items() if len(path) == 1}
    deeper: dict[str, dict[tuple[str, ...], Any]] = {}
    for path, v in changes.items():
        if len(path) > 1:
            deeper.setdefault(path[0], {})[path[1:]] = v
    for name, inner in deeper.items():
        direct[name] = _replace(getattr(config, name), inner)
    return dataclasses.replace(config, **direct) if direct else config


def config_from_dict(cls: type, data: Mapping[str, Any], source: str) -> Any:
    """``cls`` from its nested dict form (``dataclasses.asdict``, e.g. a recorded config), nested config fields
    given as tables; unknown keys and failed checks raise ValueError naming ``source`` and the key."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    values = {
        k: config_from_dict(hints[k], v, f"{source}: {k}") if is_config(hints[k]) and isinstance(v, Mapping) else v
        for k, v in data.items()
    }
    values = {
        k: tuple(v) if isinstance(v, list) and typing.get_origin(hints[k]) is tuple else v for k, v in values.items()
    }
    return cls(**values)


def with_option(config: Any, key: str, value: Any) -> Any:
    """``config`` with its flat option ``key`` set to ``value`` (every path a shared key sets; checks rerun)."""
    return build_config(type(config), {key: value}, base=config)


def to_options(config: Any) -> dict[str, Any]:
    """``{key: value}`` of every flat option of ``config`` (the inverse of :func:`build_config`)."""
    out = {}
    for opt in options(type(config)):
        value = config
        for name in opt.paths[0]:
            value = getattr(value, name)
        out[opt.key] = dict(value) if isinstance(value, Mapping) else list(value) if isinstance(value, tuple) else value
    return out


def coerce(value: Any, tp: Any, where: str, text: bool = False) -> Any:
    """``value`` as type ``tp`` (see the module doc); ValueError ``"WHERE: expected ..., got ..."``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (text and isinstance(value, str) and value.lower() == "none")
        if is_none and type(None) in args:
            return None
        errors = []
        for arm in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arm, where, text)
            except ValueError as err:
                errors.append(str(err).split(": expected ", 1)[-1].split(", got")[0])
        raise ValueError(f"{where}: expected {' or '.join(errors)}{' or none' * (type(None) in args)}, got {value!r}")
    if tp is bool:
        if text and isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if text and isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if text and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ValueError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"{where}: expected a string, got {value!r}")
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        items = [s.strip() for s in value.split(",") if s.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"{where}: expected a list (or a comma-separated string), got {value!r}")
        return tuple(coerce(v, args[0], where, text) for v in items)
    if origin in (Mapping, dict, typing.Mapping) or tp in (Mapping, dict):
        return _mapping(value, args[1] if args else Any, where)
    if tp is Any:
        return value
    raise TypeError(f"{where}: options of type {tp!r} are not supported")


def _mapping(value: Any, value_type: Any, where: str) -> dict[str, Any]:
    """A table, or ``"K=V,K=V"`` strings (one, or a list of them: repeated flags)."""
    if isinstance(value, Mapping):
        return {str(k): coerce(v, value_type, f"{where}.{k}") for k, v in value.items()}
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"{where}: expected a table or KEY=VALUE pairs, got {value!r}")
    out = {}
    for item in (part.strip() for entry in items for part in entry.split(",") if part.strip()):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{where}: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = coerce(raw.strip(), value_type, f"{where}.{key.strip()}", text=True)
    return out


__all__ = [
    "Option",
    "build_config",
    "coerce",
    "config_from_dict",
    "field_docs",
    "is_config",
    "nested",
    "option",
    "options",
    "to_options",
    "with_option",
]
