"""What every ``nas-mtl`` command shares: the one-line :class:`UserError`, config dataclasses as flags
(:func:`add_config_arguments`, :func:`config_from_args`: the flags are generated from the config, see
:mod:`nas_mtl.config`) and the line that names the storage a command opens."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .balancing.base import parse_key_value
from .config import build_config, options
from .train_config import DEVICES


class UserError(Exception):
    """A mistake in the command line or input files: reported in one line, no traceback."""


def parse_key_values(items: Sequence[str], flag: str) -> dict[str, Any]:
    """``["k=v", ...]`` (values parsed as numbers / booleans where they look like one) -> ``{k: v}``."""
    out: dict[str, Any] = {}
    for item in items:
        pair = parse_key_value(item)
        if pair is None:
            raise UserError(f"{flag}: expected KEY=VALUE, got {item!r}")
        out[pair[0]] = pair[1]
    return out


def flag_name(key: str) -> str:
    """The command-line flag of config option ``key``."""
    return "--" + key.replace("_", "-")


def add_config_arguments(
    parser: argparse.ArgumentParser, cls: type, title: str, defaults: Mapping[str, Any] | None = None
) -> None:
    """One flag per option of config class ``cls`` (see :mod:`nas_mtl.config`), help from its docstring.

    Flags not given leave no attribute, so :func:`config_from_args` keeps the dataclass's defaults (or
    ``defaults``, e.g. progress bars on for the command line). Booleans get ``--x`` / ``--no-x``, mappings are
    repeatable ``KEY=VALUE`` flags, lists are comma-separated.
    """
    group = parser.add_argument_group(title)
    defaults = defaults or {}
    for opt in options(cls):
        default = defaults.get(opt.key, opt.default)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help = f"{opt.help.rstrip('.')} (default: {'none' if shown is None else shown})" if opt.help else None
        kw: dict[str, Any] = {"dest": opt.key, "default": argparse.SUPPRESS, "help": help}
        if opt.type is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(opt.default, Mapping):
            kw.update(action="append", metavar="KEY=VALUE")
        elif opt.choices is not None:
            kw["choices"] = opt.choices
        else:
            kw["metavar"] = opt.key.upper()
        group.add_argument(flag_name(opt.key), *opt.flags, **kw)


def config_from_args(cls: type, args: argparse.Namespace, defaults: Mapping[str, Any] | None = None) -> Any:
    """The ``cls`` config of the flags :func:`add_config_arguments` added (one-line errors naming the flag)."""
    keys = {o.key for o in options(cls)}
    given = {**{k: v for k, v in (defaults or {}).items() if k in keys}}
    given.update({k: v for k, v in vars(args).items() if k in keys})
    return build_config(cls, given, where=flag_name, text=True)


CLI_DEFAULTS = {"progress": True}
"""Where the command line differs from the library: progress is shown (``--no-progress`` hides it)."""


def show_storage(spec: str) -> None:
    """Say on stderr, once per command, which storage ``spec`` opens (password hidden)."""
    from .storage import describe

    print(f"nas-mtl: storage: {describe(spec)}", file=sys.stderr, flush=True)


def one_device(device: str) -> str:
    """``cuda:N`` shows this process GPU N only (``CUDA_VISIBLE_DEVICES``, before CUDA starts) and is then
    ``cuda``: one process per GPU, for every command; other values pass through, checked."""
    match = re.fullmatch(r"cuda:(\d+)", device)
    if match is None:
        if device not in DEVICES:
            raise UserError(f"--device: expected one of {list(DEVICES)} or cuda:N, got {device!r}")
        return device
    os.environ["CUDA_VISIBLE_DEVICES"] = match.group(1)
    return "cuda"


def device_arguments(argv: Sequence[str]) -> list[str]:
    """``argv`` with every ``--device cuda:N`` (or ``--device=cuda:N``) made ``cuda`` on GPU N alone
    (:func:`one_device`): the one grammar of ``--device`` for every command."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--device" and i + 1 < len(out) and out[i + 1].startswith("cuda:"):
            out[i + 1] = one_device(out[i + 1])
        elif arg.startswith("--device=cuda:"):
            out[i] = "--device=" + one_device(arg.split("=", 1)[1])
    return out


__all__ = [
    "device_arguments",
    "one_device",
    "CLI_DEFAULTS",
    "UserError",
    "add_config_arguments",
    "config_from_args",
    "flag_name",
    "parse_key_values",
    "show_storage",
]
