"""Exhaustive search on small spaces: score every tree (or every select/skip policy) with the search proxy.

The ground truth a search method's regret is measured against: the same warm-start proxy
(:mod:`nas_mtl.search.proxy`) as branch search, applied to every candidate, under one or more seeds (seed
number i trains its own warm start and fine-tunes with the proxy's seeds + i). The truth is each candidate's
seed mean with its standard error; :func:`~nas_mtl.search.ceiling.noise_ceiling` says how well it ranks.
Scores are appended to a JSON lines file as they finish, so a killed run resumes where it stopped (and a run
with more seeds scores only the new ones); the file doubles as a lookup table (:class:`ScoreTable`) that
replays one seed's stored scores in place of the proxy.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import nested, option
from ..data import MultiTaskData, data_fingerprint
from ..graph import SharingGraph, enumerate_trees
from ..runs import check_settings, replace_atomic
from ..space import SearchSpace
from . import SearchMethod, SearchResult, register_search_method
from .ceiling import noise_ceiling
from .proxy import Proxy, ProxyConfig, Report, Score, check_proxy, graph_from_key, graph_key

KINDS = ("trees", "policies")
"""``trees``: every branched tree over the space's branchable layers (:func:`~nas_mtl.graph.enumerate_trees`);
``policies``: every AdaShare select/skip policy over its skippable layers (Sun et al. 2020), 2^(S*T) of them."""
TABLE_FORMAT = "nas_mtl.exhaustive/2"
"""Header of a score table. Version 2 entries carry ``seed`` (the seed number; missing means 0); a version 1
table (one seed, no ``seed`` field) is read as seed 0 and its header rewritten as version 2 on opening."""
_SINGLE_SEED_FORMAT = "nas_mtl.exhaustive/1"
TABLE = "scores.jsonl"


def count_trees(n_tasks: int, n_branchable: int) -> int:
    """Number of trees :func:`~nas_mtl.graph.enumerate_trees` yields for ``n_tasks`` tasks and
    ``n_branchable`` branchable layers (chains of refining set partitions), without enumerating them."""
    return _count_chains((n_tasks,), n_branchable)


@functools.cache
def _count_chains(blocks: tuple[int, ...], steps: int) -> int:
    if steps == 0:
        return 1
    total = 0
    for combo in itertools.product(*(_block_splits(b) for b in blocks)):
        sizes = tuple(sorted(s for split, _ in combo for s in split))
        total += math.prod(n for _, n in combo) * _count_chains(sizes, steps - 1)
    return total


@functools.cache
def _block_splits(size: int) -> tuple[tuple[tuple[int, ...], int], ...]:
    """(block sizes, number of set partitions of ``size`` items with those block sizes) for every shape."""

    def shapes(n: int, largest: int) -> Iterator[tuple[int, ...]]:
        if n == 0:
            yield ()
        for first in range(min(n, largest), 0, -1):
            for rest in shapes(n - first, first):
                yield (first, *rest)

    out = []
    for shape in shapes(size, size):
        ways = math.factorial(size)
        for s in shape:
            ways //= math.factorial(s)
        for m in Counter(shape).values():
            ways //= math.factorial(m)
        out.append((shape, ways))
    return tuple(out)


def count_candidates(n_tasks: int, space: SearchSpace, kind: str = "trees") -> int:
    """How many graphs :func:`candidate_graphs` yields, computed without enumerating them."""
    if kind not in KINDS:
        raise ValueError(f"kind: must be one of {list(KINDS)}, got {kind!r}")
    if kind == "trees":
        return count_trees(n_tasks, len(space.branchable))
    return 2 ** (len(space.skippable) * n_tasks)


def candidate_graphs(tasks: Sequence[str], space: SearchSpace, kind: str = "trees") -> Iterator[SharingGraph]:
    """Every tree (branching at ``space.branchable``) or every select/skip policy (over ``space.skippable``)."""
    count_candidates(len(tasks), space, kind)  # validates kind
    if kind == "trees":
        yield from enumerate_trees(tasks, space.layers, space.branchable)
        return
    rows = [layer in space.skippable for layer in space.layers]
    for bits in itertools.product((True, False), repeat=sum(rows) * len(tasks)):
        free = iter(bits)
        select = [[next(free) for _ in tasks] if skippable else [True] * len(tasks) for skippable in rows]
        yield SharingGraph.from_policy(tasks, space.layers, select, space.skippable)


@dataclass(frozen=True)
class SeededScore:
    """A candidate's scores under each seed; the ground truth is their mean with its standard error.

    Args:
        key: the candidate's :func:`~nas_mtl.search.proxy.graph_key`.
        scores: one score per seed, in seed order.
    """

    key: str
    scores: tuple[Score, ...]

    @property
    def delta_m(self) -> float:
        """Seed mean of the validation Δm (%)."""
        return statistics.fmean(s.delta_m for s in self.scores)

    @property
    def se(self) -> float:
        """Standard error of :attr:`delta_m`: sample standard deviation over seeds / sqrt(seeds); NaN for one."""
        if len(self.scores) < 2:
            return math.nan
        return statistics.stdev(s.delta_m for s in self.scores) / math.sqrt(len(self.scores))

    @property
    def seconds(self) -> float:
        """Proxy time over all seeds."""
        return sum(s.seconds for s in self.scores)


class ScoreTable:
    """Scores by seed and graph key, one JSON line per score after a header line; a killed run's partial last
    line is ignored. Also a scorer (:class:`~nas_mtl.search.proxy.Scorer`) replaying seed ``seed``'s scores.

    Args:
        path: the JSON lines file (created with ``header`` if missing).
        header: what the scores depend on (tasks, layers, kind, proxy config); must match an existing file.
        seed: the seed number whose scores :attr:`scores`, :meth:`score`, ``len`` and ``in`` refer to.
    """

    def __init__(self, path: str | Path, header: Mapping[str, Any], seed: int = 0) -> None:
        self.path = Path(path)
        self.header = {"format": TABLE_FORMAT, **header}
        self.seed = seed
        self.by_seed: dict[int, dict[str, Score]] = {}
        if not self.path.is_file():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            replace_atomic(self.path, lambda tmp: tmp.write_text(json.dumps(self.header) + "\n"))
            return
        text = self.path.read_text(errors="replace")
        lines = text.splitlines()
        try:
            stored = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            stored = None
        if not isinstance(stored, dict) or stored.get("format") not in (TABLE_FORMAT, _SINGLE_SEED_FORMAT):
            raise ValueError(f"{self.path}: damaged score table (no header line); delete it to score the graphs again")
        check_settings({**stored, "format": TABLE_FORMAT}, self.header, self.path, "score table")
        if stored["format"] != TABLE_FORMAT:  # version 1: its entries are seed 0's; mark it as holding seeds
            body = "".join(line + "\n" for line in lines[1:])
            upgraded = json.dumps({**stored, "format": TABLE_FORMAT}) + "\n" + body
            replace_atomic(self.path, lambda tmp: tmp.write_text(upgraded))
        elif not text.endswith("\n"):  # a killed run's partial last line: start the next entry on a new line
            with self.path.open("a") as fh:
                fh.write("\n")
        for line in lines[1:]:
            try:
                entry = json.loads(line)
                seed_number, key, score = entry.get("seed", 0), entry["key"], Score.from_dict(entry["score"])
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):  # a line a killed run was writing
                continue
            self.by_seed.setdefault(seed_number, {})[key] = score

    @property
    def scores(self) -> dict[str, Score]:
        """Seed ``seed``'s scores by graph key."""
        return self.seed_scores(self.seed)

    def seed_scores(self, seed: int) -> dict[str, Score]:
        """Seed number ``seed``'s scores by graph key (empty if it has none)."""
        return self.by_seed.get(seed, {})

    def __len__(self) -> int:
        return len(self.scores)

    def __contains__(self, key: object) -> bool:
        return key in self.scores

    def add(self, key: str, score: Score, seed: int | None = None) -> None:
        """Record ``score`` of seed number ``seed`` (default: the table's) and append it to the file (flushed
        before returning)."""
        seed = self.seed if seed is None else seed
        self.by_seed.setdefault(seed, {})[key] = score
        with self.path.open("a") as fh:
            fh.write(json.dumps({"key": key, "seed": seed, "score": score.to_dict()}) + "\n")

    def ranking(self, seeds: Iterable[int] | None = None) -> list[SeededScore]:
        """Candidates scored under every one of ``seeds`` (default: every seed in the table), by seed mean
        Δm, best first (ties: by key)."""
        seeds = sorted(self.by_seed) if seeds is None else list(seeds)
        keys = set.intersection(*(set(self.seed_scores(s)) for s in seeds)) if seeds else set()
        rows = [SeededScore(k, tuple(self.by_seed[s][k] for s in seeds)) for k in keys]
        return sorted(rows, key=lambda r: (-r.delta_m, r.key))

    def score(self, graph: SharingGraph, report: Report | None = None) -> Score:
        """The stored score of ``graph`` (seed ``seed``), reporting its stored per-epoch curve like the proxy
        would."""
        key = graph_key(graph)
        if key not in self.scores:
            raise KeyError(f"{self.path}: no score for graph {key} (seed number {self.seed})")
        score = self.scores[key]
        if report is not None:
            for epoch, value in enumerate(score.curve[:-1], start=1):
                report(epoch, value)
        return score


@dataclass(frozen=True)
class ExhaustiveConfig:
    """Settings of an exhaustive search.

    Args:
        proxy: how candidates are scored (the same proxy as tree search).
        kind: trees (every branched tree) or policies (every select/skip policy).
        limit: refuse spaces with more candidates than this.
        top_k: best graphs kept as candidates.
        seeds: seeds each candidate is scored with: seed number i trains its own warm start and fine-tunes with
            the proxy's seeds + i; candidates rank by the seed mean (with its standard error from 2 seeds on).
    """

    proxy: ProxyConfig = nested(ProxyConfig())
    kind: str = option("trees", choices=KINDS)
    limit: int = 2000
    top_k: int = 5
    seeds: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.proxy, ProxyConfig):
            raise TypeError(f"exhaustive search: proxy must be a ProxyConfig, got {type(self.proxy).__name__}")
        if self.kind not in KINDS:
            raise ValueError(f"exhaustive search: kind must be one of {list(KINDS)}, got {self.kind!r}")
        for name in ("limit", "top_k", "seeds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"exhaustive search: {name} must be an integer >= 1, got {value!r}")


def exhaustive_search(
    data: MultiTaskData, space: SearchSpace, config: ExhaustiveConfig, run_dir: str | Path
) -> SearchResult:
    """Score every candidate of ``config.kind`` with the proxy under each of ``config.seeds`` seeds (resuming
    from ``run_dir/scores.jsonl``; warm starts in :func:`seed_dir`).

    Refuses (ValueError) spaces with more than ``config.limit`` candidates. Returns the best graph by seed mean,
    the ``top_k`` best as candidates, and in ``info`` the full ranking (``key``, Δm = seed mean, params, MACs,
    seconds; from 2 seeds on also ``delta_m_se`` and every seed's ``delta_m_seeds``, and the table's
    ``noise_ceiling``, :func:`~nas_mtl.search.ceiling.noise_ceiling`).
    """
    t0 = time.perf_counter()
    kind, limit, top_k = config.kind, config.limit, config.top_k
    tasks = data.task_names
    n = count_candidates(len(tasks), space, kind)
    if n > limit:
        raise ValueError(
            f"exhaustive search: space {space.name!r} has {n:,} {kind} for {len(tasks)} tasks, above limit={limit:,}"
        )
    run_dir = Path(run_dir)
    table = ScoreTable(run_dir / TABLE, score_header(data, space, config.proxy, kind))
    candidates = list(candidate_graphs(tasks, space, kind))
    proxies = []
    for seed in range(config.seeds):  # seed by seed: a killed run leaves whole seeds behind it
        proxy = Proxy.prepare(data, space, config.proxy.seeded(seed), seed_dir(run_dir, seed))
        proxies.append(proxy)
        for graph in candidates:
            key = graph_key(graph)
            if key not in table.seed_scores(seed):
                table.add(key, proxy.score(graph), seed)
    ranking = table.ranking(range(config.seeds))
    skippable = space.skippable if kind == "policies" else ()
    graphs = tuple(
        graph_from_key(r.key, tasks, space.layers, skippable).with_meta(method="exhaustive", rank=i, delta_m=r.delta_m)
        for i, r in enumerate(ranking[:top_k])
    )
    seeded = config.seeds > 1
    info = {
        "kind": kind,
        "n_candidates": n,
        "proxy_seconds": sum(r.seconds for r in ranking),
        "reference": proxies[0].reference,
        "ranking": [
            {
                "key": r.key,
                "delta_m": r.delta_m,
                **({"delta_m_se": r.se, "delta_m_seeds": [s.delta_m for s in r.scores]} if seeded else {}),
                "params": r.scores[0].params,
                "macs": r.scores[0].macs,
                "seconds": r.seconds,
            }
            for r in ranking
        ],
    }
    if seeded:
        info["seeds"] = config.seeds
        info["seed_references"] = [p.reference for p in proxies]
        info["noise_ceiling"] = noise_ceiling([[s.delta_m for s in r.scores] for r in ranking]).to_dict()
    # cost over all sessions: warm starts + references + every score (a resumed run reads them back)
    seconds = sum(p.setup_seconds for p in proxies) + info["proxy_seconds"]
    info["session_seconds"] = time.perf_counter() - t0
    return SearchResult("exhaustive", graphs[0], seconds, graphs, info)


def seed_dir(run_dir: str | Path, seed: int) -> Path:
    """Where seed number ``seed`` of an exhaustive run keeps its warm start (and single-task references):
    ``run_dir`` itself for seed 0 (as before seeds), ``run_dir/seed-<seed>`` for the others."""
    return Path(run_dir) / f"seed-{seed}" if seed else Path(run_dir)


def score_header(data: MultiTaskData, space: SearchSpace, config: ProxyConfig, kind: str) -> dict[str, Any]:
    """What a table of scores depends on (checked when a run folder is resumed): the data's
    :func:`~nas_mtl.data.data_fingerprint` (its tasks included), the layers, the proxy and the kind of graphs."""
    return {
        "kind": kind,
        "tasks": list(data.task_names),
        "layers": list(space.layers),
        "proxy": config.to_dict(),
        "data": data_fingerprint(data),
    }


def _check(data: MultiTaskData, space: SearchSpace, config: ExhaustiveConfig) -> None:
    check_proxy(data, config.proxy)
    n = count_candidates(len(data.task_names), space, config.kind)
    if n > config.limit:
        raise ValueError(
            f"exhaustive search: space {space.name!r} has {n:,} {config.kind} for {len(data.task_names)} tasks, "
            f"above limit={config.limit:,}"
        )


@register_search_method("exhaustive")
def _method() -> SearchMethod:
    return SearchMethod(
        ExhaustiveConfig,
        exhaustive_search,
        check=_check,
        help="score every tree (or select/skip policy) of a small space with the search proxy: the ground truth",
    )


__all__ = [
    "ExhaustiveConfig",
    "KINDS",
    "ScoreTable",
    "SeededScore",
    "TABLE",
    "TABLE_FORMAT",
    "candidate_graphs",
    "count_candidates",
    "count_trees",
    "exhaustive_search",
    "score_header",
    "seed_dir",
]
