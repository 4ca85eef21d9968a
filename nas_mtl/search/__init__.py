"""Search methods: each turns (data, search space, budget) into a SharingGraph.

A method registers a :class:`SearchMethod` (CLI arguments + a runner) under a name, so
``nas-mtl search NAME`` and studies find it without editing the CLI.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import MultiTaskData
from ..environment import environment
from ..graph import SharingGraph
from ..registry import Registry
from ..space import SearchSpace
from ..train import resolve_device, write_json_atomic


@dataclass(frozen=True)
class SearchResult:
    """What a search returns: the chosen graph, other candidates (e.g. a Pareto front), cost and details.

    Args:
        graph: the graph to retrain.
        candidates: further graphs worth retraining (e.g. the Pareto front), best first.
        seconds: wall time of the search itself.
        info: JSON-serialisable method-specific details (histories, scores, policies).
    """

    method: str
    graph: SharingGraph
    seconds: float
    candidates: tuple[SharingGraph, ...] = ()
    info: Mapping[str, Any] = field(default_factory=dict)

    def save(self, run_dir: str | Path, device: str = "cpu") -> Path:
        """Write ``graph.json``, ``candidates/NN.json`` and ``search.json`` into ``run_dir``.

        ``search.json`` (written last and atomically: it marks a finished search) also records the
        reproducibility facts of this session, computing on ``device`` (``auto``, ``cpu`` or ``cuda``).
        """
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.graph.save(run_dir / "graph.json")
        for i, g in enumerate(self.candidates):
            (run_dir / "candidates").mkdir(exist_ok=True)
            g.save(run_dir / "candidates" / f"{i:02d}.json")
        summary = {
            "method": self.method,
            "seconds": self.seconds,
            "graph": self.graph.to_dict(),
            "info": self.info,
            "env": environment(resolve_device(device)),
        }
        write_json_atomic(summary, run_dir / "search.json")
        return run_dir / "graph.json"


@dataclass(frozen=True)
class SearchMethod:
    """A search method as the CLI and studies see it.

    Args:
        add_arguments: adds the method's own options to its ``nas-mtl search NAME`` parser.
        run: ``run(args, data, space, run_dir) -> SearchResult`` for parsed CLI arguments.
        help: one line for ``--help``.
    """

    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, MultiTaskData, SearchSpace, Path], SearchResult]
    help: str = ""


SEARCH_METHODS: Registry[SearchMethod] = Registry("search method")
register_search_method = SEARCH_METHODS.register

_BUILTIN_MODULES = ("adashare", "branching", "affinity", "exhaustive")


def load_search_methods() -> list[str]:
    """Import the built-in method modules (each registers itself) and return the registered names."""
    for module in _BUILTIN_MODULES:
        if importlib.util.find_spec(f"{__name__}.{module}") is not None:
            importlib.import_module(f"{__name__}.{module}")
    return SEARCH_METHODS.names()


__all__ = ["SEARCH_METHODS", "SearchMethod", "SearchResult", "load_search_methods", "register_search_method"]
