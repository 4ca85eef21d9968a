"""The package's shape: the library never imports the command line, and modules import each other without cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

import nas_mtl

ROOT = Path(nas_mtl.__file__).parent


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every import statement in ``path``, function-level ones included."""
    module, package = _module(path), path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level:
                base = module.split(".") if package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join([*base, *([node.module] if node.module else [])])
            out.append((name, [a.name for a in node.names]))
    return out


def import_graph() -> nx.DiGraph:
    """Module -> imported nas_mtl module (``from . import x`` of a submodule counts as importing it)."""
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    graph = nx.DiGraph()
    for module, path in files.items():
        graph.add_node(module)
        for name, names in _imports(path):
            for target in [name, *(f"{name}.{n}" for n in names)]:
                if target in files and target != module:
                    graph.add_edge(module, target)
    return graph


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 30 and graph.has_edge("nas_mtl.study.units", "nas_mtl.search")  # the walk sees the package
    assert list(nx.simple_cycles(graph)) == []


def _is_command_line(module: str) -> bool:
    """``nas_mtl.cli`` and the modules it is split into (``nas_mtl.cli_*``)."""
    return module == "nas_mtl.cli" or module.startswith("nas_mtl.cli_")


def test_the_library_never_imports_the_command_line():
    """Search methods and studies take config dataclasses; only ``nas_mtl.cli`` (and its ``cli_*`` parts) knows
    argparse."""
    for path in ROOT.rglob("*.py"):
        if _is_command_line(_module(path)):
            continue
        names = {name for name, _ in _imports(path)}
        assert "argparse" not in names and not any(_is_command_line(n) for n in names), path


def test_no_module_imports_another_modules_private_names():
    for path in ROOT.rglob("*.py"):
        for name, names in _imports(path):
            if name.startswith("nas_mtl"):
                private = [n for n in names if n.startswith("_")]
                assert not private, f"{_module(path)} imports {private} from {name}"


def test_every_module_lists_its_public_names():
    """``__all__`` everywhere, naming only what the module defines or re-exports (each name resolves)."""
    import importlib

    for path in ROOT.rglob("*.py"):
        tree = ast.parse(path.read_text())
        listed = [
            node.value
            for node in tree.body
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
        ]
        assert listed, f"{path}: no __all__"
        module = importlib.import_module(_module(path))
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert not missing, f"{path}: __all__ names {missing}, which it does not define"


def test_the_module_map_covers_every_module():
    """docs/design.md names every module: by its import path, or as ``.name`` in its package's row."""
    page = (ROOT.parent / "docs" / "design.md").read_text()
    table = page.split("## What is where", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    for path in ROOT.rglob("*.py"):
        module = _module(path)
        if module == "nas_mtl" or path.name == "__init__.py" and module.count(".") == 1:
            continue
        package, _, name = module.rpartition(".")
        named = any(f"`{module}`" in row or (f"`{package}`" in row and f"`.{name}`" in row) for row in rows)
        assert named, f"docs/design.md's module map misses {module}"


MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def test_no_module_or_function_outgrows_one_screenful_of_jobs():
    """A module does one job (at most 600 lines) and a function one step (at most 80 lines, docstring included):
    past that, a newcomer cannot change it in one place."""
    long_modules, long_functions = [], []
    for path in ROOT.rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(ROOT.parent)} ({text.count(chr(10))} lines)")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name} ({length} lines)")
    assert not long_modules, long_modules
    assert not long_functions, long_functions


def test_every_file_is_written_atomically():
    """Writes go through runs.replace_atomic (a temporary file renamed over the path): every file-writing call
    sits in the lambda handed to it, so a killed process never leaves half a file. Logs streamed by worker
    processes (``open(..., "w")``) and append-only score tables are the exceptions, by design."""
    writers = {"write_text", "write_bytes", "to_csv", "savefig", "copyfile", "save_file", "save"}
    for path in ROOT.rglob("*.py"):
        if path.name == "runs.py":
            continue
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            func = node.func if isinstance(node, ast.Call) else None
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name not in writers or (name == "save" and not _is_torch_save(func)):
                continue
            up = node
            while up in parents and not isinstance(up, ast.Lambda):
                up = parents[up]
            assert isinstance(up, ast.Lambda), f"{path}:{node.lineno}: {name}(...) writes in place"


def _is_torch_save(func: ast.expr) -> bool:
    return isinstance(func, ast.Attribute) and getattr(func.value, "id", None) == "torch"
