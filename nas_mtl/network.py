"""MultiTaskNetwork: executes a SharingGraph, running each unique path prefix once."""

from __future__ import annotations

import copy as _copy
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .backbones import Backbone, count_macs
from .graph import SKIP, Cost, GraphError, SharingGraph


@dataclass(frozen=True)
class _Step:
    node: int  # slot this step writes
    parent: int  # slot it reads (-1 = input)
    layer: int
    copy: int  # SKIP = identity
    free_parent: bool  # last reader of the parent slot
    stats: str | None = None  # key in ``path_stats`` when this prefix keeps its own normalisation statistics
    stat_names: tuple[tuple[str, str], ...] = ()  # (buffer in ``path_stats[stats]``, the block's buffer it replaces)


class MultiTaskNetwork(nn.Module):
    """A multi-task network laid out by a SharingGraph.

    ``blocks[l][c]`` is copy ``c`` of backbone block ``l``; ``heads[i]`` is the head of
    ``graph.tasks[i]``. The forward pass walks the graph's prefix trie, so a block runs once per
    unique path prefix however many tasks pass through it. A copy that runs under several prefixes
    (after a skip, in AdaShare policies) shares its weights across them but keeps BatchNorm running
    statistics per prefix (``path_stats``), so evaluation normalises each path with its own statistics.

    Args:
        graph: the sharing pattern; its layers must be the backbone's blocks.
        backbone: supplies the blocks (fresh copies) and the neck.
        heads: one module per task of the graph, mapping the (B, C, H, W) feature map to the output.
        inherit: initialise copies (and heads of same-named tasks) from a trained network instead of
            a fresh init: copy c of block l starts as the block that the first task using it ran in
            ``inherit`` (the warm start of branch search). A sequence of L modules (one trunk) works too.
    """

    def __init__(
        self,
        graph: SharingGraph,
        backbone: Backbone,
        heads: Mapping[str, nn.Module],
        inherit: MultiTaskNetwork | Sequence[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if graph.layers != backbone.layer_names:
            raise GraphError(
                f"graph layers {list(graph.layers)} do not match backbone {backbone.name!r} blocks "
                f"{list(backbone.layer_names)}"
            )
        bad_skip = sorted(graph.skippable - set(backbone.skippable))
        if bad_skip:
            raise GraphError(
                f"graph marks layer(s) {bad_skip} skippable but backbone {backbone.name!r} cannot skip them "
                f"(skippable: {list(backbone.skippable)})"
            )
        if set(heads) != set(graph.tasks):
            raise GraphError(f"heads {sorted(heads)} do not match graph tasks {list(graph.tasks)}")
        self.graph = graph
        self.backbone = backbone
        self.input_shape = backbone.input_shape
        copies = [graph.copies(layer) for layer in range(graph.num_layers)]
        if inherit is None:
            built = backbone.build_copies(copies)
        else:
            built = [
                [_copy.deepcopy(_source_block(inherit, graph, layer, c)) for c in range(n)]
                for layer, n in enumerate(copies)
            ]
        self.blocks = nn.ModuleList(nn.ModuleList(row) for row in built)
        self.neck = backbone.neck
        self.heads = nn.ModuleList(heads[t] for t in graph.tasks)
        if isinstance(inherit, MultiTaskNetwork):
            for i, t in enumerate(graph.tasks):
                if t in inherit.graph.tasks:
                    self.heads[i] = _copy.deepcopy(inherit.heads[inherit.graph.tasks.index(t)])
        self.path_stats = _path_statistics(graph, self.blocks)
        self._register_load_state_dict_pre_hook(self._fill_path_statistics)
        self._plans: dict[frozenset[str], tuple[tuple[_Step, ...], tuple[tuple[int, int], ...]]] = {}

    @classmethod
    def from_tasks(
        cls,
        graph: SharingGraph,
        backbone: Backbone,
        tasks: Sequence,
        inherit: MultiTaskNetwork | Sequence[nn.Module] | None = None,
    ) -> MultiTaskNetwork:
        """Build with each task spec's own head (``TaskSpec.build_head``)."""
        by_name = {t.name: t for t in tasks}
        missing = [t for t in graph.tasks if t not in by_name]
        if missing:
            raise GraphError(f"no task spec for graph task(s) {missing}; specs: {sorted(by_name)}")
        hw = backbone.input_shape[1:]
        heads = {t: by_name[t].build_head(backbone.feature_shape, hw) for t in graph.tasks}
        return cls(graph, backbone, heads, inherit)

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.graph.tasks

    def _fill_path_statistics(self, state_dict: dict, prefix: str, *args: object) -> None:
        """Weights saved before per-path statistics existed: each path starts from its block's statistics."""
        nodes = self.graph.prefix_nodes()
        for key, holder in self.path_stats.items():
            node = nodes[int(key)]
            for name in holder._buffers:
                target = f"{prefix}path_stats.{key}.{name}"
                source = f"{prefix}blocks.{node.layer}.{node.copy}.{name.replace('__', '.')}"
                if target not in state_dict and source in state_dict:
                    state_dict[target] = state_dict[source].clone()

    # ------------------------------------------------------------------ execution
    def _plan(self, tasks: frozenset[str]) -> tuple[tuple[_Step, ...], tuple[tuple[int, int], ...]]:
        """Steps (one per prefix-trie node needed by ``tasks``) and (slot, head index) outputs."""
        if tasks in self._plans:
            return self._plans[tasks]
        nodes = self.graph.prefix_nodes()
        keep = [i for i, n in enumerate(nodes) if tasks.intersection(n.tasks)]
        last_reader = {nodes[i].parent: i for i in keep}
        steps = tuple(
            _Step(
                i,
                nodes[i].parent,
                nodes[i].layer,
                nodes[i].copy,
                last_reader[nodes[i].parent] == i and nodes[i].parent >= 0,
                str(i) if str(i) in self.path_stats else None,
                self._stat_names(str(i)),
            )
            for i in keep
        )
        leaf_of = {t: i for i in keep if nodes[i].layer == self.graph.num_layers - 1 for t in nodes[i].tasks}
        heads = tuple((leaf_of[t], j) for j, t in enumerate(self.graph.tasks) if t in tasks)
        self._plans[tasks] = (steps, heads)
        return steps, heads

    def _stat_names(self, key: str) -> tuple[tuple[str, str], ...]:
        """(name in ``path_stats[key]``, block buffer name) pairs; names only: ``.to()`` replaces the tensors."""
        if key not in self.path_stats:
            return ()
        return tuple((name, name.replace("__", ".")) for name in self.path_stats[key]._buffers)

    def forward(self, x: torch.Tensor, tasks: Collection[str] | None = None) -> dict[str, torch.Tensor]:
        """Run the graph on a batch; returns ``{task: head output}`` for ``tasks`` (default: all)."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"input: expected shape (B, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}"
            )
        wanted = frozenset(self.graph.tasks if tasks is None else tasks)
        unknown = wanted - set(self.graph.tasks)
        if unknown:
            raise ValueError(f"tasks: unknown {sorted(unknown)}; network tasks are {list(self.graph.tasks)}")
        steps, heads = self._plan(wanted)
        slots: dict[int, torch.Tensor] = {}
        for s in steps:
            h = x if s.parent < 0 else slots[s.parent]
            if s.free_parent:
                del slots[s.parent]
            if s.copy == SKIP:
                slots[s.node] = h
            elif s.stats is None:
                slots[s.node] = self.blocks[s.layer][s.copy](h)
            else:  # same weights, this prefix's own running statistics (updated in place in training)
                held = self.path_stats[s.stats]._buffers
                own = {name: held[key] for key, name in s.stat_names}
                slots[s.node] = torch.func.functional_call(self.blocks[s.layer][s.copy], own, (h,))
        features = {slot: self.neck(slots[slot]) for slot in {slot for slot, _ in heads}}
        return {self.graph.tasks[j]: self.heads[j](features[slot]) for slot, j in heads}

    # ------------------------------------------------------------------ structure
    def parameter_groups(self) -> dict[frozenset[str], list[nn.Parameter]]:
        """Parameters keyed by the set of tasks that share them (heads: a single task).

        Copies used by the same task subset are merged into one group; the order is deterministic
        (layer by layer, then heads).
        """
        groups: dict[frozenset[str], list[nn.Parameter]] = {}
        for layer, row in enumerate(self.blocks):
            for c, module in enumerate(row):
                key = frozenset(self.graph.copy_tasks(layer, c))
                groups.setdefault(key, []).extend(module.parameters())
        for t, head in zip(self.graph.tasks, self.heads):
            groups.setdefault(frozenset({t}), []).extend(head.parameters())
        return groups

    def cost(self) -> Cost:
        """Params and per-sample MACs from the graph's cost model (exact for this network)."""
        costs = self.backbone.layer_costs()
        fmap = torch.zeros(1, *self.backbone.feature_shape)
        head_params = {t: sum(p.numel() for p in h.parameters()) for t, h in zip(self.graph.tasks, self.heads)}
        was_training = self.training
        self.eval()
        head_macs = {t: count_macs(h, fmap) for t, h in zip(self.graph.tasks, self.heads)}
        self.train(was_training)
        return self.graph.cost(costs.params, costs.macs, head_params, head_macs)


def _path_statistics(graph: SharingGraph, blocks: nn.ModuleList) -> nn.ModuleDict:
    """Own normalisation statistics for every prefix that runs a block copy another prefix runs first.

    With skips (AdaShare policies) one copy can run on differently distributed inputs (after another
    block, or after the identity); one set of BatchNorm running statistics would then be a mixture that
    fits neither at evaluation. Each extra prefix-trie node of such a copy gets its own running
    statistics (weights and affine parameters stay shared): ``path_stats[str(node)]`` holds them as
    buffers named like the block's, with ``__`` for ``.``. Trees never need this (a copy of a tree runs
    under one prefix).
    """
    out = nn.ModuleDict()
    seen: set[tuple[int, int]] = set()
    for i, node in enumerate(graph.prefix_nodes()):
        if node.copy == SKIP:
            continue
        if (node.layer, node.copy) not in seen:
            seen.add((node.layer, node.copy))
            continue
        block = blocks[node.layer][node.copy]
        holder = nn.Module()
        for name, module in block.named_modules():
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
                for b, buf in module.named_buffers(recurse=False):
                    if buf is not None:
                        key = f"{name}.{b}" if name else b
                        holder.register_buffer(key.replace(".", "__"), buf.detach().clone())
        if len(holder._buffers):
            out[str(i)] = holder
    return out


def _source_block(
    source: MultiTaskNetwork | Sequence[nn.Module], graph: SharingGraph, layer: int, copy: int
) -> nn.Module:
    if not isinstance(source, MultiTaskNetwork):
        if len(source) != graph.num_layers:
            raise GraphError(f"inherit: expected {graph.num_layers} blocks (one per layer), got {len(source)}")
        return source[layer]
    if source.graph.layers != graph.layers:
        raise GraphError("inherit: source network has different layers")
    users = graph.copy_tasks(layer, copy)
    shared = [t for t in users if t in source.graph.tasks]
    src_copy = source.graph.path(shared[0])[layer] if shared else 0
    if src_copy == SKIP:  # the source task skipped this block: inherit the most used copy instead
        row = [c for c in source.graph.assignment[layer] if c != SKIP]
        if not row:
            raise GraphError(f"inherit: source network runs no copy of layer {graph.layers[layer]!r}")
        src_copy = max(set(row), key=row.count)
    return source.blocks[layer][src_copy]
