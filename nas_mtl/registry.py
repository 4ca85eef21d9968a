"""Name -> factory registries, the extension points of nas_mtl (like timm's ``create_model``).

A name is one of:

- a registered name (``register`` decorator inside nas_mtl or in the user's own code);
- an **entry point** of an installed package, in the registry's group (e.g. ``nas_mtl.datasets``): a project
  declares ``[project.entry-points."nas_mtl.datasets"] mydata = "my_pkg.data:make"`` and ``mydata`` works
  everywhere, ``nas-mtl list`` included;
- a **reference** to a factory in the user's code, ``module.path:function`` (imported with the current folder on
  the path, like ``python -m``) or ``path/to/file.py:function`` (a file; relative paths are resolved against the
  folder of the study or search-space file that names them).

Trust: a reference runs code, so it is accepted only from what the user typed (a study or search-space file, a
CLI flag, the Python API). A name read back from data (an export manifest, a run folder's record, a storage
record) goes through :meth:`Registry.check_stored` first: registered names and installed entry points pass, a
reference only when the user listed it as trusted.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Generic, TypeVar

from .runs import check_name

T = TypeVar("T")

_REFERENCE = re.compile(r"^(?P<target>[^:]+):(?P<attr>[A-Za-z_]\w*)$")
_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def is_reference(name: object) -> bool:
    """Whether ``name`` is ``module.path:function`` or ``path/file.py:function``."""
    m = _REFERENCE.match(name) if isinstance(name, str) else None
    return bool(m) and (m["target"].endswith(".py") or bool(_MODULE.match(m["target"])))


def resolve_reference(name: str, base_dir: str | Path | None) -> str:
    """``name`` with a relative ``file.py`` path made absolute against ``base_dir`` (other names unchanged)."""
    m = _REFERENCE.match(name)
    if not is_reference(name) or not m["target"].endswith(".py") or base_dir is None:
        return name
    path = Path(m["target"])
    return name if path.is_absolute() else f"{(Path(base_dir) / path).resolve()}:{m['attr']}"


def load_reference(name: str, kind: str) -> Callable:
    """The factory a reference names; ValueError naming the reference, the file or module, and what is wrong."""
    m = _REFERENCE.match(name)
    target, attr = m["target"], m["attr"]
    try:
        if target.endswith(".py"):
            path = Path(target).resolve()
            if not path.is_file():
                raise ValueError(f"{kind} {name!r}: file not found: {path}")
            module_name = f"nas_mtl_user_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}_{path.stem}"
            module = sys.modules.get(module_name)
            if module is None:
                spec = importlib.util.spec_from_file_location(module_name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[module_name]
                    raise
        else:
            try:
                module = importlib.import_module(target)
            except ModuleNotFoundError as err:
                if err.name is None or not target.startswith(err.name) or os.getcwd() in sys.path:
                    raise
                sys.path.append(os.getcwd())  # `nas-mtl` (a console script) does not put the current folder on it
                module = importlib.import_module(target)
    except ValueError:
        raise
    except ModuleNotFoundError as err:
        raise ValueError(
            f"{kind} {name!r}: no module {err.name!r} (run from the folder that holds it, add it to PYTHONPATH, or "
            "install it)"
        ) from None
    except (Exception, SystemExit) as err:  # user code that calls sys.exit() is a failed import, not our exit
        raise ValueError(f"{kind} {name!r}: importing {target} failed: {type(err).__name__}: {err}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"{kind} {name!r}: {target} has no function {attr!r}")
    return factory


class Registry(Generic[T]):
    """Factories by name; ``create`` checks the keyword arguments against the factory's signature.

    Args:
        kind: what is registered ("backbone", "dataset", ...), used in error messages.
        group: the entry-point group installed packages register in (e.g. ``nas_mtl.datasets``).
        path_names: registered names become folder names (search methods: ``search/METHOD``), so they must be
            names (:func:`nas_mtl.runs.check_name`).
    """

    def __init__(self, kind: str, group: str | None = None, path_names: bool = False) -> None:
        self.kind, self.group, self.path_names = kind, group, path_names
        self._factories: dict[str, Callable[..., T]] = {}
        self._lazy: dict[str, tuple[str, Callable[[Exception], str]]] = {}
        self._unavailable: dict[str, str] = {}  # module -> why importing it failed (tried once)

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: make ``factory(**kwargs)`` available as ``create(name, **kwargs)``."""

        if self.path_names:
            check_name(name, f"{self.kind} name")

        def deco(factory: Callable[..., T]) -> Callable[..., T]:
            lazy = self._lazy.get(name)
            if name in self._factories or (lazy is not None and factory.__module__ != lazy[0]):
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            self._lazy.pop(name, None)
            return factory

        return deco

    def register_lazy(self, names: tuple[str, ...], module: str, unavailable: Callable[[Exception], str]) -> None:
        """Names whose factories ``module`` registers when imported, which happens the first time one of them is
        used (a module with heavy imports, such as timm's, costs nothing to a process that never uses them). If
        importing it fails, using one of them raises ValueError(``unavailable(error)``)."""
        for name in names:
            if name in self._factories or name in self._lazy:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._lazy[name] = (module, unavailable)

    def _load_lazy(self, name: str) -> None:
        module, unavailable = self._lazy[name]
        if module in self._unavailable:  # a second import of a half-loaded library may fail differently, or slowly
            raise ValueError(self._unavailable[module])
        try:
            importlib.import_module(module)
        except Exception as err:
            self._unavailable[module] = unavailable(err)
            raise ValueError(self._unavailable[module]) from None
        if name not in self._factories:
            raise RuntimeError(f"{module} did not register {self.kind} {name!r}")

    def _entry_points(self) -> dict[str, importlib.metadata.EntryPoint]:
        if self.group is None:
            return {}
        return {ep.name: ep for ep in importlib.metadata.entry_points(group=self.group)}

    def names(self) -> list[str]:
        """Registered names and installed packages' entry points."""
        return sorted(set(self._factories) | set(self._lazy) | set(self._entry_points()))

    def __contains__(self, name: object) -> bool:
        return name in self._factories or name in self._lazy or name in self._entry_points()

    def is_user_code(self, name: str) -> bool:
        """Whether ``name`` is a reference or an entry point (code outside nas_mtl)."""
        ours = name in self._factories or name in self._lazy
        return not ours and (is_reference(name) or name in self._entry_points())

    def factory(self, name: str) -> Callable[..., T]:
        """The factory of ``name`` (see the module doc); ValueError for an unknown name or a bad reference."""
        if name in self._lazy:
            self._load_lazy(name)
        if name in self._factories:
            return self._factories[name]
        if is_reference(name):
            return load_reference(name, self.kind)
        entry = self._entry_points().get(name)
        if entry is not None:
            try:
                return entry.load()
            except Exception as err:
                raise ValueError(
                    f"{self.kind} {name!r}: entry point {entry.value!r} failed to load: {type(err).__name__}: {err}"
                ) from None
        raise ValueError(
            f"unknown {self.kind} {name!r}; known: {', '.join(self.names())} (or MODULE:FUNCTION, FILE.py:FUNCTION)"
        )

    def signature(self, name: str) -> inspect.Signature:
        """The keyword arguments ``create(name, ...)`` accepts (ValueError for an unknown name)."""
        return inspect.signature(self.factory(name))

    def create(self, name: str, **kwargs) -> T:
        """Build ``name``; unknown names and bad keyword arguments raise errors naming them. A factory of the
        user's (reference, entry point) that fails raises ValueError naming it and its error."""
        factory = self.factory(name)
        signature = inspect.signature(factory)
        try:
            signature.bind(**kwargs)
        except TypeError as err:
            raise TypeError(f"{self.kind} {name!r}: {err}; parameters: {list(signature.parameters)}") from None
        if not self.is_user_code(name):
            return factory(**kwargs)
        try:
            return factory(**kwargs)
        except (Exception, SystemExit) as err:
            raise ValueError(f"{self.kind} {name!r} failed: {type(err).__name__}: {err}") from None

    def check_stored(self, name: object, source: str, trusted: Collection[str] = ()) -> str:
        """``name`` as read back from data (``source``: an export manifest, a run record, a storage record):
        a registered name or an installed entry point passes; a code reference only when it is in ``trusted``
        (references the user typed, e.g. ``--trust``); anything else raises ValueError naming ``source``.
        Nothing is imported here."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{source}: {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._factories or name in self._lazy or not is_reference(name):
            return name  # an entry point's name is plain; an unknown one is refused by factory() with the known names
        if name in trusted or resolve_reference(name, Path.cwd()) in trusted:  # a FILE.py is imported from here
            return name
        raise ValueError(
            f"{source}: {self.kind} {name!r} is a reference to code; data never names code to run (only registered "
            f"names and installed entry points): pass --trust {name} (Python: trusted=[...]) if you wrote it"
        )


__all__ = [
    "Registry",
    "is_reference",
    "load_reference",
    "resolve_reference",
]
