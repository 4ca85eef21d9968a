"""Write constraints.txt: the exact installed versions of nas_mtl[test]'s dependency closure.

    python .ci/constraints.py        # in an environment where the test suite passes

Walks the Requires-Dist metadata of the installed distributions (markers evaluated for this interpreter,
extras followed), so the file pins what this environment ran and nothing else.
"""

from __future__ import annotations

import importlib.metadata as md
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HEADER = """\
# The exact versions nas_mtl is tested with (CI and the README's commands install with -c constraints.txt).
# pyproject.toml states the ranges a library accepts; this file pins what CI ran (torch and torchvision as the
# matched pair they are built as). Regenerate it from an environment where the tests pass:
#     python .ci/constraints.py
"""


def closure(root: str, extras: set[str]) -> dict[str, str]:
    """``{name: version}`` of everything ``root`` (with ``extras``) requires, as installed (``root`` left out)."""
    pins: dict[str, str] = {}
    visited: set[tuple[str, frozenset[str]]] = set()
    todo = [(canonicalize_name(root), frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in visited:
            continue
        visited.add((name, wanted))
        envs = [{"extra": e} for e in wanted] or [{"extra": ""}]
        for raw in md.distribution(name).requires or []:
            req = Requirement(raw)
            if req.marker is not None and not any(req.marker.evaluate(e) for e in envs):
                continue
            dep = canonicalize_name(req.name)
            pins.setdefault(dep, md.version(req.name))
            todo.append((dep, frozenset(req.extras)))
    pins.pop(canonicalize_name(root), None)
    return pins


def main() -> None:
    pins = closure("nas_mtl", {"test"})
    text = HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))
    out = Path(__file__).resolve().parents[1] / "constraints.txt"
    out.write_text(text)
    print(f"wrote {len(pins)} pins to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
