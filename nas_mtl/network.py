"""MultiTaskNetwork: executes a SharingGraph, running each unique path prefix once."""

from __future__ import annotations

import copy as _copy
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import Backbone, count_macs
from .environment import built_on_cpu
from .graph import SKIP, Cost, GraphError, SharingGraph
from .soft import Coupling, initial_mixing, mix, mixing_macs, pull_copies

PLAN_CACHE = 256
"""Execution plans kept for policies run under gates (the network's own graph's plans are always kept)."""

Gates = Sequence[Tensor | None]
"""One entry per layer: None (every task runs the block) or the (T,) select gates of the tasks (AdaShare)."""


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

    @built_on_cpu
    def __init__(
        self,
        graph: SharingGraph,
        backbone: Backbone,
        heads: Mapping[str, nn.Module],
        inherit: MultiTaskNetwork | Sequence[nn.Module] | None = None,
        coupling: Coupling | None = None,
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
        self._plans: dict[tuple, tuple[tuple[_Step, ...], tuple[tuple[int, int], ...]]] = {}
        self._norms: list[list[nn.Module]] | None = None  # stream-aware BatchNorm layers, made by the first gates
        self.coupling = coupling
        self.coupled: list[int] = [] if coupling is None else _check_coupling(coupling, graph)
        if coupling is not None and coupling.kind == "cross-stitch":  # after every other module: same init RNG
            n = len(graph.tasks)
            self.mixing = nn.ParameterDict(
                {str(i): nn.Parameter(initial_mixing(n, coupling.init)) for i in self.coupled}
            )

    @classmethod
    @built_on_cpu
    def from_tasks(
        cls,
        graph: SharingGraph,
        backbone: Backbone,
        tasks: Sequence,
        inherit: MultiTaskNetwork | Sequence[nn.Module] | None = None,
        coupling: Coupling | None = None,
    ) -> MultiTaskNetwork:
        """Build with each task spec's own head (``TaskSpec.build_head``)."""
        by_name = {t.name: t for t in tasks}
        missing = [t for t in graph.tasks if t not in by_name]
        if missing:
            raise GraphError(f"no task spec for graph task(s) {missing}; specs: {sorted(by_name)}")
        hw = backbone.input_shape[1:]
        heads = {t: by_name[t].build_head(backbone.feature_shape, hw) for t in graph.tasks}
        return cls(graph, backbone, heads, inherit, coupling)

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
    def _plan(
        self, tasks: frozenset[str], graph: SharingGraph
    ) -> tuple[tuple[_Step, ...], tuple[tuple[int, int], ...]]:
        """Steps (one per prefix-trie node of ``graph`` needed by ``tasks``) and (slot, head index) outputs.

        ``graph`` is this network's graph (prefixes keep their own statistics, :attr:`path_stats`) or a policy
        over its blocks (gates: statistics shared).
        """
        own = graph is self.graph
        key = (tasks, graph.assignment, own)
        if key in self._plans:
            return self._plans[key]
        nodes = graph.prefix_nodes()
        keep = [i for i, n in enumerate(nodes) if tasks.intersection(n.tasks)]
        last_reader = {nodes[i].parent: i for i in keep}
        steps = tuple(
            _Step(
                i,
                nodes[i].parent,
                nodes[i].layer,
                nodes[i].copy,
                last_reader[nodes[i].parent] == i and nodes[i].parent >= 0,
                str(i) if own and str(i) in self.path_stats else None,
                self._stat_names(str(i)) if own else (),
            )
            for i in keep
        )
        leaf_of = {t: i for i in keep if nodes[i].layer == graph.num_layers - 1 for t in nodes[i].tasks}
        heads = tuple((leaf_of[t], j) for j, t in enumerate(graph.tasks) if t in tasks)
        if not own and len(self._plans) >= PLAN_CACHE:  # hard-sampled policies: many, each used briefly
            self._plans = {k: v for k, v in self._plans.items() if k[2]}
        self._plans[key] = (steps, heads)
        return steps, heads

    def _stat_names(self, key: str) -> tuple[tuple[str, str], ...]:
        """(name in ``path_stats[key]``, block buffer name) pairs; names only: ``.to()`` replaces the tensors."""
        if key not in self.path_stats:
            return ()
        return tuple((name, name.replace("__", ".")) for name in self.path_stats[key]._buffers)

    def forward(
        self, x: torch.Tensor, tasks: Collection[str] | None = None, gates: Gates | None = None
    ) -> dict[str, torch.Tensor]:
        """Run the graph on a batch; returns ``{task: head output}`` for ``tasks`` (default: all).

        ``gates`` (AdaShare's select/skip decisions, see :data:`Gates`) turn the network into a supernet: task
        t's activation after a gated layer l is ``h + g[t] (block_l(h) − h)``. Gates need a network whose
        every layer has one copy (e.g. ``space.hard_sharing(tasks)``), and return every task. Exact 0/1 gates
        without gradient are a policy: they run as the :class:`~nas_mtl.graph.SharingGraph` of that policy
        (``SharingGraph.from_policy``, each shared prefix once). Other gates (soft ones, or hard ones whose
        gradient is needed) give each task its own stream from the first gated layer on: all streams run in
        one call per block, interleaved along the batch, with BatchNorm statistics per stream
        (:func:`stream_norms`), exactly as if each ran alone. Running statistics are shared by all paths
        under gates (one update per stream, in stream order), as in the AdaShare reference.
        """
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"input: expected shape (B, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}"
            )
        if gates is not None:
            if self.coupling is not None:
                raise ValueError("gates: not for a softly shared network (a coupling ties its task copies)")
            return self._gated_forward(x, gates)
        wanted = frozenset(self.graph.tasks if tasks is None else tasks)
        unknown = wanted - set(self.graph.tasks)
        if unknown:
            raise ValueError(f"tasks: unknown {sorted(unknown)}; network tasks are {list(self.graph.tasks)}")
        if self.coupling is not None and self.coupling.kind == "cross-stitch":  # every task's activations needed
            out = self._stitched_forward(x)
            return {t: out[t] for t in self.graph.tasks if t in wanted}
        return self._run_graph(x, self.graph, wanted)

    def _run_graph(self, x: torch.Tensor, graph: SharingGraph, wanted: frozenset[str]) -> dict[str, torch.Tensor]:
        """The prefix trie of ``graph`` (this network's, or a policy over its blocks) for the tasks ``wanted``."""
        steps, heads = self._plan(wanted, graph)
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
        return {graph.tasks[j]: self.heads[j](features[slot]) for slot, j in heads}

    def _stitched_forward(self, x: Tensor) -> dict[str, Tensor]:
        """Cross-stitch: every task's path block by block, activations mixed after each coupled block."""
        graph = self.graph
        hs = [x] * len(graph.tasks)
        for layer, row in enumerate(graph.assignment):
            hs = [h if c == SKIP else self.blocks[layer][c](h) for h, c in zip(hs, row)]
            if str(layer) in self.mixing:
                hs = mix(self.mixing[str(layer)], hs)
        return {t: self.heads[j](self.neck(h)) for j, (t, h) in enumerate(zip(graph.tasks, hs))}

    @torch.no_grad()
    def couple(self, lr: float) -> None:
        """After an optimiser step with learning rate ``lr``: the ``l2`` coupling's proximal step (nothing for
        other couplings or for λ = 0)."""
        if self.coupling is None or self.coupling.kind != "l2" or self.coupling.strength == 0:
            return
        shrink = 1.0 / (1.0 + 2.0 * self.coupling.strength * lr)
        for layer in self.coupled:
            pull_copies(list(self.blocks[layer]), shrink)

    # ------------------------------------------------------------------ gates (AdaShare)
    def _gated_forward(self, x: Tensor, gates: Gates) -> dict[str, Tensor]:
        if len(gates) != self.graph.num_layers:
            raise ValueError(f"gates: expected {self.graph.num_layers} entries (one per layer), got {len(gates)}")
        if any(len(row) != 1 for row in self.blocks):
            raise ValueError("gates: need a network with one copy of every block (e.g. a hard-sharing graph)")
        n = len(self.graph.tasks)
        fixed = [g for g in gates if g is not None and not g.requires_grad]
        values = torch.stack(fixed).tolist() if fixed else []  # one device-to-host copy
        if len(fixed) == sum(g is not None for g in gates) and all(v in (0.0, 1.0) for row in values for v in row):
            rows = iter(values)
            select = [[True] * n if g is None else [v == 1.0 for v in next(rows)] for g in gates]
            policy = SharingGraph.from_policy(self.graph.tasks, self.graph.layers, select, self.graph.skippable)
            return self._run_graph(x, policy, frozenset(self.graph.tasks))
        norms = self.stream_norms()
        try:
            return self._streamed_forward(x, gates, norms)
        finally:  # a norm outside a streamed forward is a plain one
            for layer_norms in norms:
                for norm in layer_norms:
                    norm.streams = 1

    def _streamed_forward(self, x: Tensor, gates: Gates, norms: list[list[nn.Module]]) -> dict[str, Tensor]:
        n = len(self.graph.tasks)
        h, streams = x, 1  # streams: 1 (every task on one stream) until the first gated layer, then one per task
        for layer, gate in enumerate(gates):
            for norm in norms[layer]:
                norm.streams = streams
            y = self.blocks[layer][0](h)
            if gate is None:
                h = y
                continue
            if streams == 1 and n > 1:  # from here on each task has its own stream
                h, y = _select_streams(h, 1, [0] * n), _select_streams(y, 1, [0] * n)
                streams = n
            hv, yv = _unstack(h, streams), _unstack(y, streams)
            g = gate.view(1, -1, *([1] * (h.dim() - 1)))
            h = (hv + g * (yv - hv)).reshape(h.shape)
        features = _unstack(self.neck(h), streams).unbind(dim=1)  # backward: one stack, not G slice copies
        if streams == 1:
            features = features * n
        return {t: self.heads[j](features[j].contiguous()) for j, t in enumerate(self.graph.tasks)}

    def stream_norms(self) -> list[list[nn.Module]]:
        """Each layer's stream-aware BatchNorm layers, converted on the first call (:func:`stream_norms`; gated
        forwards call it); TypeError for a BatchNorm subclass whose forward a twin cannot reproduce."""
        if self._norms is None:
            self._norms = [stream_norms(row[0]) for row in self.blocks]
        return self._norms

    # ------------------------------------------------------------------ structure
    def parameter_groups(self) -> dict[frozenset[str], list[nn.Parameter]]:
        """Parameters keyed by the set of tasks whose losses they reach (heads: a single task; with cross-stitch
        units, every block up to the last unit reaches every task).

        Copies used by the same task subset are merged into one group; the order is deterministic
        (layer by layer, then heads).
        """
        groups: dict[frozenset[str], list[nn.Parameter]] = {}
        everyone = frozenset(self.graph.tasks)
        mixed_up_to = max(self.coupled) if hasattr(self, "mixing") and self.coupled else -1
        for layer, row in enumerate(self.blocks):
            for c, module in enumerate(row):
                # a block at or before a cross-stitch unit reaches every task's loss through the mixing
                key = everyone if layer <= mixed_up_to else frozenset(self.graph.copy_tasks(layer, c))
                groups.setdefault(key, []).extend(module.parameters())
        for t, head in zip(self.graph.tasks, self.heads):
            groups.setdefault(frozenset({t}), []).extend(head.parameters())
        if hasattr(self, "mixing"):  # cross-stitch units mix every task's activations
            groups.setdefault(frozenset(self.graph.tasks), []).extend(self.mixing.values())
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
        cost = self.graph.cost(costs.params, costs.macs, head_params, head_macs)
        if not hasattr(self, "mixing"):
            return cost
        n = len(self.graph.tasks)
        extra_macs = sum(mixing_macs(n, costs.outputs[layer]) for layer in self.coupled)
        return Cost(cost.params + sum(p.numel() for p in self.mixing.values()), cost.macs + extra_macs)


def _check_coupling(coupling: Coupling, graph: SharingGraph) -> list[int]:
    """The coupled layers; GraphError unless every task runs its own copy of every block (the independent
    pattern, which soft sharing couples)."""
    try:
        layers = coupling.coupled(graph.layers)
    except ValueError as err:
        raise GraphError(str(err)) from None
    for layer, row in enumerate(graph.assignment):
        if SKIP in row or len(set(row)) != len(row):
            raise GraphError(
                f"coupling {coupling.kind!r}: block {graph.layers[layer]!r} must be run by every task with its "
                "own copy (soft sharing couples the independent pattern)"
            )
    return layers


def _unstack(h: Tensor, streams: int) -> Tensor:
    """(B * streams, ...) interleaved -> (B, streams, ...) view."""
    return h.reshape(-1, streams, *h.shape[1:])


def _select_streams(h: Tensor, streams: int, index: Sequence[int]) -> Tensor:
    """The interleaved streams ``index`` (in that order, repeats allowed) of ``h``."""
    return _unstack(h, streams)[:, list(index)].reshape(-1, *h.shape[1:])


# ---------------------------------------------------------------------- stream-aware BatchNorm
class _StreamNorm:
    """Mixin for a BatchNorm class: the batch holds ``streams`` interleaved streams (row ``b * streams + s`` is
    sample b of stream s). In training each stream is normalised with its own batch statistics and the
    running statistics get one update per stream, in stream order: exactly as if each stream ran alone.

    One ``F.batch_norm`` call on the (B, streams * C, ...) view does it without copies: the layout makes
    every (stream, channel) pair a channel of its own. :meth:`_after_norm` then applies whatever the class's
    own forward does after its batch norm (per sample, so on all streams at once).
    """

    streams: int = 1

    def _after_norm(self, y: Tensor) -> Tensor:
        return y

    def forward(self, x: Tensor) -> Tensor:
        s = self.streams
        running = self.training and self.track_running_stats
        if s == 1 or not (running or not self.track_running_stats):  # eval: running stats, per sample
            return super().forward(x)
        rest = x.shape[2:]
        if self.momentum is None:  # cumulative average: run the streams one by one
            view = x.reshape(-1, s, x.shape[1], *rest)
            alone = super().forward
            return torch.stack([alone(view[:, i]) for i in range(s)], dim=1).reshape(x.shape)
        mean = var = None
        if running:
            self.num_batches_tracked.add_(s)
            mean, var = self.running_mean.repeat(s), self.running_var.repeat(s)
        weight = None if self.weight is None else self.weight.repeat(s)
        bias = None if self.bias is None else self.bias.repeat(s)
        y = F.batch_norm(x.reshape(-1, s * x.shape[1], *rest), mean, var, weight, bias, True, self.momentum, self.eps)
        if running:
            with torch.no_grad():
                _fold_updates(self.running_mean, mean, s, self.momentum)
                _fold_updates(self.running_var, var, s, self.momentum)
        # not a view of y for autograd: blocks apply in-place ops (ReLU, +=) to their norms' outputs, which on
        # a view would cost a CopySlices copy and non-contiguous gradients in the backward
        return self._after_norm(torch.ops.aten._unsafe_view(y, x.shape))


def _fold_updates(running: Tensor, updated: Tensor, streams: int, momentum: float) -> None:
    """Replace ``running`` by ``streams`` sequential momentum updates, given each one applied alone
    (``updated[s] = (1 - m) running + m stat_s``)."""
    keep = 1.0 - momentum
    steps = updated.view(streams, -1) - keep * running
    decay = keep ** torch.arange(streams - 1, -1, -1, dtype=running.dtype, device=running.device)
    running.mul_(keep**streams).add_((decay[:, None] * steps).sum(dim=0))


class StreamBatchNorm1d(_StreamNorm, nn.BatchNorm1d):
    """:class:`torch.nn.BatchNorm1d` over interleaved streams (see :func:`stream_norms`)."""


class StreamBatchNorm2d(_StreamNorm, nn.BatchNorm2d):
    """:class:`torch.nn.BatchNorm2d` over interleaved streams (see :func:`stream_norms`)."""


class StreamBatchNorm3d(_StreamNorm, nn.BatchNorm3d):
    """:class:`torch.nn.BatchNorm3d` over interleaved streams (see :func:`stream_norms`)."""


_STREAM_CLASSES: dict[object, type] = {nn.BatchNorm1d.forward: StreamBatchNorm1d}
"""Stream class by the norm's ``forward`` (torch's 1d/2d/3d share one): only forwards known to be reproduced."""


def _timm_norm_act() -> None:
    """Define :class:`StreamBatchNormAct2d`, the twin of timm's BatchNorm + activation (EfficientNet / MobileNet
    blocks), once timm is imported: a module holding a ``BatchNormAct2d`` means timm is, and importing timm here
    would cost every process seconds (none when timm cannot load beside this torch)."""
    global StreamBatchNormAct2d
    if "StreamBatchNormAct2d" in globals() or "timm.layers.norm_act" not in sys.modules:
        return
    from timm.layers.norm_act import BatchNormAct2d

    class StreamBatchNormAct2d(_StreamNorm, BatchNormAct2d):
        """timm's ``BatchNormAct2d`` over interleaved streams: batch norm, then ``self.drop``, then ``self.act``."""

        def _after_norm(self, y: Tensor) -> Tensor:
            return self.act(self.drop(y))

    StreamBatchNormAct2d.__qualname__ = "StreamBatchNormAct2d"
    _STREAM_CLASSES[BatchNormAct2d.forward] = StreamBatchNormAct2d


def __getattr__(name: str) -> type:
    if name == "StreamBatchNormAct2d":
        try:
            import timm.layers.norm_act  # noqa: F401
        except Exception as err:  # a torchvision built for another torch raises RuntimeError, no timm ImportError
            raise AttributeError(f"{__name__}.{name}: timm cannot be imported ({type(err).__name__})") from None
        _timm_norm_act()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def stream_norms(module: nn.Module) -> list[nn.Module]:
    """Replace every BatchNorm layer of ``module`` by its stream-aware twin (:class:`StreamBatchNorm2d`, ...) and
    return them; the twins hold the same parameter and buffer tensors under the same state-dict keys, like
    :meth:`torch.nn.SyncBatchNorm.convert_sync_batchnorm`. With ``streams = 1`` a twin is the layer itself.

    Raises TypeError (before replacing any) for a BatchNorm subclass with a forward of its own, which a twin
    cannot reproduce exactly.
    """
    found = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if any(name == "" for name, _ in found):
        raise ValueError("stream_norms: pass the module that holds the BatchNorm layer, not the layer itself")
    _timm_norm_act()
    plan = []
    for name, m in found:
        if isinstance(m, _StreamNorm):
            plan.append((name, m, None))
            continue
        cls = _STREAM_CLASSES.get(type(m).forward)
        if cls is StreamBatchNorm1d:
            cls = {1: StreamBatchNorm1d, 2: StreamBatchNorm2d, 3: StreamBatchNorm3d}.get(_dims(m), StreamBatchNorm2d)
        if cls is None:
            raise TypeError(
                f"BatchNorm subclass {type(m).__module__}.{type(m).__qualname__} has its own forward, which the "
                f"stream-aware BatchNorm cannot reproduce exactly; supported: torch's BatchNorm1d/2d/3d and timm's "
                f"BatchNormAct2d"
            )
        plan.append((name, m, cls))
    out = []
    for name, m, cls in plan:
        if cls is None:
            out.append(m)
            continue
        twin = cls.__new__(cls)
        nn.Module.__init__(twin)
        twin.__dict__.update({k: v for k, v in m.__dict__.items() if k != "training"})
        twin.training = m.training
        path, _, attr = name.rpartition(".")
        setattr(module.get_submodule(path) if path else module, attr, twin)
        out.append(twin)
    return out


def _dims(norm: nn.Module) -> int:
    for cls, d in ((nn.BatchNorm1d, 1), (nn.BatchNorm2d, 2), (nn.BatchNorm3d, 3)):
        if isinstance(norm, cls):
            return d
    return 2


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


__all__ = [
    "Gates",
    "MultiTaskNetwork",
    "PLAN_CACHE",
    "StreamBatchNorm1d",
    "StreamBatchNorm2d",
    "StreamBatchNorm3d",
    "StreamBatchNormAct2d",
    "stream_norms",
]
