"""SharingGraph: which copy of each backbone block each task uses (or skip).

Every sharing pattern is one object: hard sharing, independent networks, branched trees
(Vandenhende et al. 2019; Guo et al. 2020) and AdaShare select/skip policies (Sun et al. 2020).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx

from .runs import replace_atomic

SKIP = -1
"""Assignment value meaning "task skips this block" (identity; only on skippable blocks)."""

FORMAT = "nas_mtl.sharing_graph/1"
"""Version tag written into and required from graph JSON."""


class GraphError(ValueError):
    """Invalid SharingGraph input; the message names the offending field."""


def canonicalize(assignment: Sequence[Sequence[int]]) -> tuple[tuple[int, ...], ...]:
    """Renumber copies per layer in first-appearance order over tasks; SKIP stays SKIP.

    Two assignments describe the same sharing pattern iff their canonical forms are equal.
    """
    rows = []
    for row in assignment:
        mapping: dict[int, int] = {}
        out = []
        for c in row:
            if c == SKIP:
                out.append(SKIP)
            else:
                out.append(mapping.setdefault(c, len(mapping)))
        rows.append(tuple(out))
    return tuple(rows)


@dataclass(frozen=True)
class Cost:
    """Exact cost of executing a SharingGraph: parameters and per-sample multiply-accumulates."""

    params: int
    macs: int


@dataclass(frozen=True)
class PrefixNode:
    """One unique path prefix: block ``layer`` run with ``copy`` on the output of node ``parent``.

    ``parent`` is -1 for the network input; ``copy`` is SKIP for an identity step (no computation).
    """

    layer: int
    copy: int
    parent: int
    tasks: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class SharingGraph:
    """The layer-task graph: ``assignment[l][t]`` is the copy of block ``l`` task ``t`` runs, or SKIP.

    Copies are numbered per layer; the stored assignment is always canonical (first-appearance
    order), so equal sharing patterns compare and hash equal.

    Args:
        tasks: task names, in head order.
        layers: backbone block names, in execution order.
        assignment: L rows of T entries (int copy index >= 0, or SKIP / "skip").
        skippable: names of the layers that may be skipped (identity shortcut, shape-preserving).
        meta: free-form provenance (search method, scores); not part of equality.
    """

    tasks: tuple[str, ...]
    layers: tuple[str, ...]
    assignment: tuple[tuple[int, ...], ...]
    skippable: frozenset[str] = frozenset()
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        tasks = _names(self.tasks, "tasks")
        layers = _names(self.layers, "layers")
        skippable = frozenset(self.skippable)
        unknown = skippable - set(layers)
        if unknown:
            raise GraphError(f"skippable: unknown layer(s) {sorted(unknown)}; layers are {list(layers)}")
        rows = _check_assignment(self.assignment, tasks, layers, skippable)
        object.__setattr__(self, "tasks", tasks)
        object.__setattr__(self, "layers", layers)
        object.__setattr__(self, "skippable", skippable)
        object.__setattr__(self, "assignment", canonicalize(rows))
        object.__setattr__(self, "meta", dict(self.meta))

    # ------------------------------------------------------------------ identity
    def _key(self) -> tuple:
        return (self.tasks, self.layers, self.assignment, self.skippable)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SharingGraph):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        rows = "; ".join(
            f"{name}: " + " ".join("-" if c == SKIP else str(c) for c in row)
            for name, row in zip(self.layers, self.assignment)
        )
        return f"SharingGraph(tasks={list(self.tasks)}, {rows})"

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def with_meta(self, **meta: Any) -> SharingGraph:
        """Same pattern with extra provenance."""
        return SharingGraph(self.tasks, self.layers, self.assignment, self.skippable, {**self.meta, **meta})

    # ------------------------------------------------------------------ structure
    def copies(self, layer: int) -> int:
        """Number of distinct copies of block ``layer`` in use."""
        return len({c for c in self.assignment[layer] if c != SKIP})

    def copy_tasks(self, layer: int, copy: int) -> tuple[str, ...]:
        """Tasks that use (and so share the weights of) copy ``copy`` of block ``layer``."""
        return tuple(t for t, c in zip(self.tasks, self.assignment[layer]) if c == copy)

    def path(self, task: str) -> tuple[int, ...]:
        """The copies task ``task`` runs through, layer by layer (SKIP where it skips)."""
        j = self._task_index(task)
        return tuple(row[j] for row in self.assignment)

    def partition(self, layer: int) -> tuple[tuple[str, ...], ...]:
        """Tasks grouped by equal path prefix up to and including ``layer`` (shared computation)."""
        groups: dict[tuple[int, ...], list[str]] = {}
        for j, t in enumerate(self.tasks):
            groups.setdefault(tuple(row[j] for row in self.assignment[: layer + 1]), []).append(t)
        return tuple(tuple(g) for g in groups.values())

    def weight_groups(self, layer: int) -> tuple[tuple[str, ...], ...]:
        """Tasks grouped by the copy of block ``layer`` they run (shared weights); tasks that skip it left out."""
        row = self.assignment[layer]
        return tuple(self.copy_tasks(layer, c) for c in dict.fromkeys(c for c in row if c != SKIP))

    def describe(self) -> str:
        """Plain words: which tasks compute together over which blocks, and which blocks each task skips.

        Consecutive blocks with the same :meth:`partition` form one span, e.g. ``stem–s1.b1: all tasks
        shared; s2.b0–s3.b1: left | right; right skips s3.b0``. A graph that is not a tree (:meth:`is_tree`: an
        AdaShare policy, tasks skipping different blocks before one shared copy) is described by its
        :meth:`weight_groups` instead, after ``shared weights, per block:``: what shares weights, not the
        executor's prefixes, which would read as branches.
        """
        tree = self.is_tree()
        groups_at = self.partition if tree else self.weight_groups

        def who(layer: int) -> str:
            groups = groups_at(layer)
            return "all tasks shared" if len(groups) == 1 else " | ".join("+".join(g) for g in groups)

        spans, start = [], 0
        for layer in range(1, self.num_layers + 1):
            if layer < self.num_layers and who(layer) == who(start):
                continue
            where = self.layers[start] if layer - 1 == start else f"{self.layers[start]}–{self.layers[layer - 1]}"
            spans.append(f"{where}: {who(start)}")
            start = layer
        for t in self.tasks:
            skipped = [name for name, c in zip(self.layers, self.path(t)) if c == SKIP]
            if skipped:
                spans.append(f"{t} skips {', '.join(skipped)}")
        return "; ".join(spans) if tree else "shared weights, per block: " + "; ".join(spans)

    def is_tree(self) -> bool:
        """True when weight sharing implies computation sharing: tasks that use the same copy of
        block l have identical paths up to l (a branched tree; partitions refine with depth)."""
        for layer, row in enumerate(self.assignment):
            owner: dict[int, tuple[int, ...]] = {}
            for j, c in enumerate(row):
                if c == SKIP:
                    continue
                prefix = tuple(r[j] for r in self.assignment[:layer])
                if owner.setdefault(c, prefix) != prefix:
                    return False
        return True

    def prefix_nodes(self) -> tuple[PrefixNode, ...]:
        """The prefix trie the executor runs, in depth-first order (parents before children).

        Each node is one unique (prefix, layer, copy); its block runs once for all its tasks.
        """
        nodes: list[PrefixNode] = []

        def visit(layer: int, parent: int, tasks: tuple[int, ...]) -> None:
            if layer == self.num_layers:
                return
            groups: dict[int, list[int]] = {}
            for j in tasks:
                groups.setdefault(self.assignment[layer][j], []).append(j)
            for copy, members in groups.items():
                nodes.append(PrefixNode(layer, copy, parent, tuple(self.tasks[j] for j in members)))
                visit(layer + 1, len(nodes) - 1, tuple(members))

        visit(0, -1, tuple(range(self.num_tasks)))
        return tuple(nodes)

    def _task_index(self, task: str) -> int:
        try:
            return self.tasks.index(task)
        except ValueError:
            raise GraphError(f"unknown task {task!r}; tasks are {list(self.tasks)}") from None

    # ------------------------------------------------------------------ cost
    def cost(
        self,
        layer_params: Sequence[int],
        layer_macs: Sequence[int],
        head_params: Mapping[str, int] | None = None,
        head_macs: Mapping[str, int] | None = None,
    ) -> Cost:
        """Exact cost: params = used copies x block params + heads; MACs = one block run per unique
        non-skip path prefix (what the executor computes) + heads. MACs are per input sample."""
        for name, seq in (("layer_params", layer_params), ("layer_macs", layer_macs)):
            if len(seq) != self.num_layers:
                raise GraphError(f"{name}: expected {self.num_layers} entries (one per layer), got {len(seq)}")
        head_params, head_macs = head_params or {}, head_macs or {}
        params = sum(self.copies(layer) * int(layer_params[layer]) for layer in range(self.num_layers))
        macs = sum(int(layer_macs[n.layer]) for n in self.prefix_nodes() if n.copy != SKIP)
        params += sum(int(head_params.get(t, 0)) for t in self.tasks)
        macs += sum(int(head_macs.get(t, 0)) for t in self.tasks)
        return Cost(params, macs)

    # ------------------------------------------------------------------ views
    def to_networkx(self) -> nx.DiGraph:
        """DiGraph: "input" -> (layer, copy) block nodes -> ("head", task); edges carry ``tasks``
        (frozenset of tasks flowing along them) and ``skipped`` (layers skipped in between)."""
        g = nx.DiGraph(tasks=self.tasks, layers=self.layers)
        g.add_node("input", kind="input")
        for layer, row in enumerate(self.assignment):
            for c in sorted({c for c in row if c != SKIP}):
                g.add_node(
                    (layer, c),
                    kind="block",
                    layer=self.layers[layer],
                    copy=c,
                    tasks=frozenset(self.copy_tasks(layer, c)),
                )
        for t in self.tasks:
            g.add_node(("head", t), kind="head", tasks=frozenset({t}))
            prev: Any = "input"
            skipped: list[str] = []
            for layer, c in enumerate(self.path(t)):
                if c == SKIP:
                    skipped.append(self.layers[layer])
                    continue
                _add_edge(g, prev, (layer, c), t, skipped)
                prev, skipped = (layer, c), []
            _add_edge(g, prev, ("head", t), t, skipped)
        return g

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "tasks": list(self.tasks),
            "layers": [{"name": n, "skippable": n in self.skippable} for n in self.layers],
            "assignment": [["skip" if c == SKIP else c for c in row] for row in self.assignment],
            "meta": _jsonable(self.meta),
        }

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        text = self.to_json() + "\n"
        replace_atomic(path, lambda tmp: tmp.write_text(text))
        return path

    @classmethod
    def from_dict(cls, data: Any, source: str = "graph") -> SharingGraph:
        """Parse the versioned JSON form; errors name ``source`` and the offending field."""
        if not isinstance(data, Mapping):
            raise GraphError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise GraphError(f"{source}: format: expected {FORMAT!r}, got {data.get('format')!r}")
        extra = set(data) - {"format", "tasks", "layers", "assignment", "meta"}
        if extra:
            raise GraphError(f"{source}: unknown field(s) {sorted(extra)}")
        for key in ("tasks", "layers", "assignment"):
            if key not in data:
                raise GraphError(f"{source}: missing field {key!r}")
        layers_raw = data["layers"]
        if not isinstance(layers_raw, list):
            raise GraphError(f"{source}: layers: expected a list, got {type(layers_raw).__name__}")
        names, skippable = [], set()
        for i, entry in enumerate(layers_raw):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
                raise GraphError(f'{source}: layers[{i}]: expected {{"name": str, "skippable": bool}}, got {entry!r}')
            if not isinstance(entry.get("skippable", False), bool):
                raise GraphError(f"{source}: layers[{i}].skippable: expected true/false, got {entry['skippable']!r}")
            names.append(entry["name"])
            if entry.get("skippable", False):
                skippable.add(entry["name"])
        rows = data["assignment"]
        if not isinstance(rows, list):
            raise GraphError(f"{source}: assignment: expected a list of rows, got {type(rows).__name__}")
        parsed = [[SKIP if c == "skip" else c for c in row] if isinstance(row, list) else row for row in rows]
        meta = data.get("meta", {})
        if not isinstance(meta, Mapping):
            raise GraphError(f"{source}: meta: expected an object, got {type(meta).__name__}")
        tasks = tuple(data["tasks"]) if isinstance(data["tasks"], list) else data["tasks"]
        try:
            return cls(tasks, tuple(names), parsed, frozenset(skippable), meta)
        except GraphError as err:
            raise GraphError(f"{source}: {err}") from None

    @classmethod
    def from_json(cls, text: str, source: str = "graph JSON") -> SharingGraph:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise GraphError(f"{source}: not valid JSON ({err})") from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> SharingGraph:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"graph file not found: {path}")
        return cls.from_json(path.read_text(), source=str(path))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def hard_sharing(cls, tasks: Sequence[str], layers: Sequence[str], skippable: Sequence[str] = ()) -> SharingGraph:
        """Every task uses the one copy of every block."""
        return cls(tuple(tasks), tuple(layers), [[0] * len(tasks) for _ in layers], frozenset(skippable))

    @classmethod
    def independent(cls, tasks: Sequence[str], layers: Sequence[str], skippable: Sequence[str] = ()) -> SharingGraph:
        """One private copy of every block per task (T single-task networks)."""
        return cls(tuple(tasks), tuple(layers), [list(range(len(tasks))) for _ in layers], frozenset(skippable))

    @classmethod
    def branched(
        cls,
        tasks: Sequence[str],
        layers: Sequence[str],
        partitions: Sequence[Sequence[Sequence[str]]],
        skippable: Sequence[str] = (),
    ) -> SharingGraph:
        """A branched tree from one task partition per layer; each partition must refine the previous.

        ``partitions[l]`` lists the groups of tasks that share block ``l`` (every task exactly once).
        """
        if len(partitions) != len(layers):
            raise GraphError(f"partitions: expected {len(layers)} (one per layer), got {len(partitions)}")
        tasks = tuple(tasks)
        rows = []
        prev: dict[str, int] | None = None
        for layer, groups in enumerate(partitions):
            seen: dict[str, int] = {}
            for g, group in enumerate(groups):
                if not group:
                    raise GraphError(f"partitions[{layer}][{g}]: empty group")
                for t in group:
                    if t not in tasks:
                        raise GraphError(f"partitions[{layer}]: unknown task {t!r}; tasks are {list(tasks)}")
                    if t in seen:
                        raise GraphError(f"partitions[{layer}]: task {t!r} appears in more than one group")
                    seen[t] = g
                if prev is not None and len({prev[t] for t in group}) > 1:
                    raise GraphError(
                        f"partitions[{layer}][{g}] = {list(group)} merges tasks split at an earlier layer "
                        f"(a tree's partitions must refine with depth)"
                    )
            missing = [t for t in tasks if t not in seen]
            if missing:
                raise GraphError(f"partitions[{layer}]: task(s) {missing} in no group")
            rows.append([seen[t] for t in tasks])
            prev = seen
        return cls(tasks, tuple(layers), rows, frozenset(skippable))

    @classmethod
    def from_policy(
        cls,
        tasks: Sequence[str],
        layers: Sequence[str],
        select: Sequence[Sequence[bool]],
        skippable: Sequence[str] = (),
    ) -> SharingGraph:
        """AdaShare policy (Sun et al. 2020): ``select[l][t]`` True = task t runs the (single, shared)
        block l, False = skips it. Weights are shared by all selecting tasks; computation only where
        their select/skip prefixes agree."""
        if len(select) != len(layers):
            raise GraphError(f"select: expected {len(layers)} rows (one per layer), got {len(select)}")
        rows = []
        for layer, row in enumerate(select):
            if len(row) != len(tasks):
                raise GraphError(f"select[{layer}]: expected {len(tasks)} entries (one per task), got {len(row)}")
            rows.append([0 if bool(s) else SKIP for s in row])
        return cls(tuple(tasks), tuple(layers), rows, frozenset(skippable))

    @classmethod
    def from_groups(
        cls,
        tasks: Sequence[str],
        layers: Sequence[str],
        groups: Sequence[Sequence[str]],
        branch_at: int = 0,
        skippable: Sequence[str] = (),
    ) -> SharingGraph:
        """Task groups (e.g. from TAG, Fifty et al. 2021): blocks before ``branch_at`` are shared by all
        tasks, from ``branch_at`` on each group has its own hard-shared branch."""
        if not 0 <= branch_at <= len(layers):
            raise GraphError(f"branch_at: expected 0..{len(layers)}, got {branch_at}")
        partitions = [[list(tasks)]] * branch_at + [[list(g) for g in groups]] * (len(layers) - branch_at)
        return cls.branched(tasks, layers, partitions, skippable)


# ---------------------------------------------------------------------- helpers
def _names(values: Any, field_name: str) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise GraphError(f"{field_name}: expected a list of names, got {type(values).__name__}")
    names = tuple(values)
    if not names:
        raise GraphError(f"{field_name}: must not be empty")
    for i, n in enumerate(names):
        if not isinstance(n, str) or not n:
            raise GraphError(f"{field_name}[{i}]: expected a non-empty string, got {n!r}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise GraphError(f"{field_name}: duplicate name(s) {dup}")
    return names


def _check_assignment(
    assignment: Any, tasks: tuple[str, ...], layers: tuple[str, ...], skippable: frozenset[str]
) -> list[list[int]]:
    if isinstance(assignment, (str, bytes)) or not isinstance(assignment, Sequence):
        raise GraphError(f"assignment: expected {len(layers)} rows, got {type(assignment).__name__}")
    if len(assignment) != len(layers):
        raise GraphError(f"assignment: expected {len(layers)} rows (one per layer), got {len(assignment)}")
    rows = []
    for layer, row in enumerate(assignment):
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise GraphError(f"assignment[{layer}]: expected a list of {len(tasks)} entries, got {row!r}")
        if len(row) != len(tasks):
            raise GraphError(
                f"assignment[{layer}] (layer {layers[layer]!r}): expected {len(tasks)} entries (one per task), "
                f"got {len(row)}"
            )
        out = []
        for j, c in enumerate(row):
            where = f"assignment[{layer}][{j}] (layer {layers[layer]!r}, task {tasks[j]!r})"
            if isinstance(c, bool) or not isinstance(c, int) or c < SKIP:
                raise GraphError(f"{where}: expected a copy index >= 0 or 'skip', got {c!r}")
            if c == SKIP and layers[layer] not in skippable:
                raise GraphError(f"{where}: skip on a non-skippable layer (skippable: {sorted(skippable)})")
            out.append(int(c))
        rows.append(out)
    return rows


def _add_edge(g: nx.DiGraph, u: Any, v: Any, task: str, skipped: list[str]) -> None:
    if g.has_edge(u, v):
        g.edges[u, v]["tasks"] = g.edges[u, v]["tasks"] | {task}
    else:
        g.add_edge(u, v, tasks=frozenset({task}), skipped=tuple(skipped))


def _jsonable(value: Any) -> Any:
    """Meta values round-trip through JSON; reject what would not."""
    try:
        return json.loads(json.dumps(value))
    except TypeError as err:
        raise GraphError(f"meta: not JSON-serialisable ({err})") from None


def enumerate_trees(
    tasks: Sequence[str], layers: Sequence[str], branchable: Sequence[str] | None = None
) -> Iterator[SharingGraph]:
    """Every branched tree over ``layers`` (no skips), branching only at ``branchable`` layers
    (default: all). Layer 0's partition may already split tasks if layer 0 is branchable."""
    allowed = set(layers if branchable is None else branchable)
    tasks = tuple(tasks)

    def refinements(partition: list[list[str]]) -> Iterator[list[list[str]]]:
        if not partition:
            yield []
            return
        head, *rest = partition
        for split in set_partitions(head):
            for tail in refinements(rest):
                yield split + tail

    def grow(layer: int, partitions: list[list[list[str]]]) -> Iterator[list[list[list[str]]]]:
        if layer == len(layers):
            yield partitions
            return
        prev = partitions[-1] if partitions else [list(tasks)]
        options = refinements(prev) if layers[layer] in allowed else iter([prev])
        for p in options:
            yield from grow(layer + 1, partitions + [p])

    for parts in grow(0, []):
        yield SharingGraph.branched(tasks, layers, parts)


def set_partitions(items: Sequence[str]) -> Iterator[list[list[str]]]:
    """All set partitions of ``items`` (Bell-number many), groups in first-appearance order."""
    if not items:
        yield []
        return
    first, *rest = items
    for sub in set_partitions(rest):
        yield [[first], *sub]
        for i in range(len(sub)):
            yield [*sub[:i], [first, *sub[i]], *sub[i + 1 :]]


def graph_key(graph: SharingGraph) -> str:
    """Canonical identity of a sharing pattern within one space: equal graphs, equal keys.

    Rows (layers) are joined by ``/``, copies by ``.``, ``-`` marks a skip: ``"0.0.0/0.0.1"``.
    """
    return "/".join(".".join("-" if c == SKIP else str(c) for c in row) for row in graph.assignment)


def graph_from_key(
    key: str, tasks: Sequence[str], layers: Sequence[str], skippable: Sequence[str] = ()
) -> SharingGraph:
    """The graph of :func:`graph_key` ``key`` over ``tasks`` and ``layers`` (validated as any graph)."""
    rows = [[SKIP if c == "-" else int(c) for c in row.split(".")] for row in key.split("/")]
    return SharingGraph(tuple(tasks), tuple(layers), rows, frozenset(skippable))


__all__ = [
    "graph_from_key",
    "graph_key",
    "Cost",
    "FORMAT",
    "GraphError",
    "PrefixNode",
    "SKIP",
    "SharingGraph",
    "canonicalize",
    "enumerate_trees",
    "set_partitions",
]
