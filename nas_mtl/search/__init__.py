"""Search methods: each turns (data, search space, budget) into a SharingGraph.

A method registers a :class:`SearchMethod` (a config dataclass + ``run(data, space, config, run_dir)``) under a
name, so ``nas-mtl search NAME`` and studies find it, options included, without editing the CLI.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import to_options
from ..data import MultiTaskData
from ..environment import environment
from ..graph import SharingGraph
from ..layout import SEARCH_DONE, read_search_record
from ..registry import Registry
from ..runs import write_json_atomic
from ..space import SearchSpace
from ..train import resolve_device


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

    def save(self, run_dir: str | Path, device: str = "cpu", study: Mapping[str, Any] | None = None) -> Path:
        """Write ``graph.json``, ``candidates/NN.json`` and ``search.json`` into ``run_dir``.

        ``search.json`` (written last and atomically: it marks a finished search) also records the
        reproducibility facts of this session, computing on ``device`` (``auto``, ``cpu`` or ``cuda``), and
        ``study``: which search of a study this is (its method and seed, checked against the folder on resume).
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
            **({"study": dict(study)} if study is not None else {}),
        }
        write_json_atomic(summary, run_dir / SEARCH_DONE)
        return run_dir / "graph.json"

    @classmethod
    def load(cls, run_dir: str | Path) -> SearchResult:
        """The result :meth:`save` wrote into ``run_dir`` (graph, cost, info; candidates stay in their files); a
        damaged ``search.json`` is one ValueError naming the file and the key."""
        done = Path(run_dir) / SEARCH_DONE
        summary = read_search_record(done, f"delete {run_dir} to rerun that search")
        graph = SharingGraph.from_dict(summary["graph"], source=str(done))
        return cls(summary["method"], graph, summary["seconds"], info=summary.get("info", {}))


@dataclass(frozen=True)
class SearchMethod:
    """A search method: its config class and its runner.

    Args:
        config: a frozen config dataclass (see :mod:`nas_mtl.config`): its fields are the method's options,
            as study-file keys and ``nas-mtl search NAME`` flags, with help from its docstring's ``Args:``.
        run: ``run(data, space, config, run_dir) -> SearchResult``; resumes what ``run_dir`` holds.
        help: one line for ``--help``.
        check: ``check(data, space, config)`` raises ValueError for options that cannot work on this data and
            space (a study calls it for every search before it trains anything); None: nothing to check.
    """

    config: type
    run: Callable[[MultiTaskData, SearchSpace, Any, Path], SearchResult]
    help: str = ""
    check: Callable[[MultiTaskData, SearchSpace, Any], None] | None = None

    def device(self, config: Any) -> str:
        """The device ``config`` computes on (``cpu`` for a method without a device option)."""
        return to_options(config).get("device", "cpu")


SEARCH_METHODS: Registry[SearchMethod] = Registry("search method", path_names=True)
register_search_method = SEARCH_METHODS.register

_BUILTIN_MODULES = ("adashare", "branching", "affinity", "exhaustive", "network_selection")


def load_search_methods() -> list[str]:
    """Import the built-in method modules (each registers itself) and return the registered names."""
    for module in _BUILTIN_MODULES:
        if importlib.util.find_spec(f"{__name__}.{module}") is not None:
            importlib.import_module(f"{__name__}.{module}")
    return SEARCH_METHODS.names()


__all__ = ["SEARCH_METHODS", "SearchMethod", "SearchResult", "load_search_methods", "register_search_method"]
