"""Every benchmark script still imports: a module the package moved or renamed fails here, not months later when
somebody reruns a measurement (benchmarks/distributed.py kept importing nas_mtl.jobs after it moved)."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parent.parent / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.stem for p in BENCHMARKS])
def test_the_benchmark_script_imports(path, monkeypatch):
    monkeypatch.syspath_prepend(str(path.parent))  # scripts import their helpers (_report.py) by name
    spec = importlib.util.spec_from_file_location(f"benchmark_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)  # defining, not running: each script runs under `if __name__ == "__main__"`
    assert module.__doc__, f"{path.name}: no docstring saying what it measures"
