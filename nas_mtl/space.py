"""Declarative search spaces (TOML): a backbone plus where tasks may branch and which blocks may be skipped."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backbones import BACKBONES, Backbone, create_backbone
from .graph import SharingGraph
from .registry import is_reference, resolve_reference

FORMAT = "nas_mtl.search_space/1"
ENV_DIRS = "NAS_MTL_SEARCH_SPACES"


@dataclass(frozen=True, eq=False)
class SearchSpace:
    """A backbone's blocks and the decisions a search may take over them.

    Args:
        name: the file stem (or given name).
        backbone: the block sequence.
        branchable: blocks at which tasks may start using different copies (tree search).
        skippable: blocks tasks may skip (subset of the backbone's identity-shortcut blocks).
        source: where the space was loaded from (for messages and manifests).
    """

    name: str
    backbone: Backbone
    branchable: tuple[str, ...]
    skippable: tuple[str, ...]
    source: str = "<memory>"
    description: str = ""

    @property
    def layers(self) -> tuple[str, ...]:
        return self.backbone.layer_names

    def hard_sharing(self, tasks: Sequence[str]) -> SharingGraph:
        return SharingGraph.hard_sharing(tasks, self.layers, self.skippable)

    def independent(self, tasks: Sequence[str]) -> SharingGraph:
        return SharingGraph.independent(tasks, self.layers, self.skippable)

    def check_graph(self, graph: SharingGraph) -> None:
        """Raise ValueError if ``graph`` does not fit this space (layers, skips)."""
        if graph.layers != self.layers:
            raise ValueError(f"graph layers {list(graph.layers)} do not match space {self.name!r} {list(self.layers)}")
        bad = sorted(graph.skippable - set(self.skippable))
        if bad:
            raise ValueError(f"graph skips layer(s) {bad}, not skippable in space {self.name!r}")


def search_space_dirs() -> list[Path]:
    """Where ``load_search_space(name)`` looks: $NAS_MTL_SEARCH_SPACES (os.pathsep-separated),
    ./search_spaces, and the repository's search_spaces/ next to the package."""
    dirs = [Path(p) for p in os.environ.get(ENV_DIRS, "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "search_spaces", Path(__file__).resolve().parent.parent / "search_spaces"]
    return dirs


def list_search_spaces() -> list[str]:
    return sorted({p.stem for d in search_space_dirs() if d.is_dir() for p in d.glob("*.toml")})


def find_search_space(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"search space file not found: {path}")
        return path
    for d in search_space_dirs():
        candidate = d / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate
    raise ValueError(f"unknown search space {str(name_or_path)!r}; known: {', '.join(list_search_spaces())}")


def load_search_space(
    name_or_path: str | Path, input_shape: Sequence[int] | None = None, trusted: Sequence[str] | None = None
) -> SearchSpace:
    """Load a search space by name (``search_spaces/NAME.toml``) or path.

    ``input_shape`` (C, H, W) fills the backbone's ``in_chans`` / ``input_size`` when the file leaves
    them out; when the file sets them they must agree. Errors name the file and the key. ``trusted``: None
    when the user named this file; else the file was named by a record (a storage), and its backbone must be
    registered or one of these code references (see :meth:`nas_mtl.registry.Registry.check_stored`).
    """
    path = find_search_space(name_or_path)
    return parse_search_space(_read(path), str(path), path.stem, input_shape, trusted)


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from None


def backbone_reference(name_or_path: str | Path) -> str | None:
    """The code reference a search-space file names as its backbone (a ``FILE.py`` made absolute), or None
    for a registered backbone: what a process that rebuilds the space from a record must trust."""
    path = find_search_space(name_or_path)
    table = _read(path).get("backbone")
    name = table.get("name") if isinstance(table, Mapping) else None
    if not isinstance(name, str) or name in BACKBONES:
        return None
    resolved = resolve_reference(name, path.parent)
    return resolved if is_reference(resolved) else None


def parse_search_space(
    data: Mapping[str, Any],
    source: str,
    name: str,
    input_shape: Sequence[int] | None = None,
    trusted: Sequence[str] | None = None,
) -> SearchSpace:
    def fail(key: str, msg: str) -> ValueError:
        return ValueError(f"{source}: {key}: {msg}")

    unknown = sorted(set(data) - {"format", "description", "backbone", "layers"})
    if unknown:
        raise fail(unknown[0], "unknown key; allowed: format, description, backbone, layers")
    if data.get("format") != FORMAT:
        raise fail("format", f"expected {FORMAT!r}, got {data.get('format')!r}")
    bb = data.get("backbone")
    if not isinstance(bb, Mapping) or not isinstance(bb.get("name"), str):
        raise fail("backbone", 'expected a table with a string "name"')
    kwargs = {k: v for k, v in bb.items() if k != "name"}
    if input_shape is not None:
        c, h, w = (int(v) for v in input_shape)
        for key, want in (("in_chans", c), ("input_size", [h, w])):
            have = kwargs.setdefault(key, want)
            if (list(have) if isinstance(have, (list, tuple)) else have) != want:
                raise fail(f"backbone.{key}", f"{have!r} does not match the dataset's {want!r}")
    base = Path(source).parent if Path(source).is_file() else None
    if isinstance(kwargs.get("weights"), str) and base is not None and not Path(kwargs["weights"]).is_absolute():
        kwargs["weights"] = str(base / kwargs["weights"])  # a weights file relative to the search-space file
    reference = resolve_reference(bb["name"], base)  # FILE.py relative to this file
    if trusted is not None:
        BACKBONES.check_stored(reference, f"{source}: backbone.name", trusted)
    try:
        backbone = create_backbone(reference, **kwargs)
    except (ValueError, TypeError) as err:
        raise fail("backbone", str(err)) from None
    layers_tbl = data.get("layers", {})
    if not isinstance(layers_tbl, Mapping):
        raise fail("layers", "expected a table")
    extra = sorted(set(layers_tbl) - {"branchable", "skippable"})
    if extra:
        raise fail(f"layers.{extra[0]}", "unknown key; allowed: branchable, skippable")
    names = backbone.layer_names
    branchable = _layer_list(layers_tbl.get("branchable", "all"), names, names, "layers.branchable", fail)
    skippable = _layer_list(layers_tbl.get("skippable", "auto"), names, backbone.skippable, "layers.skippable", fail)
    return SearchSpace(name, backbone, branchable, skippable, source, str(data.get("description", "")))


def _layer_list(value: Any, names: tuple[str, ...], allowed: tuple[str, ...], key: str, fail) -> tuple[str, ...]:
    if value in ("all", "auto"):
        return tuple(allowed)
    if value == "none":
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise fail(key, f'expected "all"/"auto", "none" or a list of block names, got {value!r}')
    for v in value:
        if v not in names:
            raise fail(key, f"unknown block {v!r}; blocks: {list(names)}")
        if v not in allowed:
            raise fail(key, f"block {v!r} is not allowed here (allowed: {list(allowed)})")
    return tuple(n for n in names if n in value)


__all__ = [
    "ENV_DIRS",
    "FORMAT",
    "SearchSpace",
    "backbone_reference",
    "find_search_space",
    "list_search_spaces",
    "load_search_space",
    "parse_search_space",
    "search_space_dirs",
]
