"""AdaShare search step: our batched supernet vs the reference's per-task execution, measured side by side.

    python benchmarks/adashare.py [--tasks 2,4,8] [--batch 32] [--repeats 9] [--threads 1]
                                  [--out benchmarks/results/adashare.json]

The reference code (github.com/sunxm2357/AdaShare, ``models/deeplab_resnet.py``, ``MTL2.forward``) runs the
whole backbone once per task per step, every block gated by that task's Gumbel-softmax sample
(``fx * p_select + residual * p_skip``). Our executor (:class:`~nas_mtl.network.MultiTaskNetwork` under gates, inside
:class:`~nas_mtl.search.adashare.AdaShareSupernet`) runs the blocks without a decision once for all tasks and every
other block once on the task streams stacked along the batch.

Rows (median over interleaved repeats, order rotated; one step = forward + backward + optimiser step on the
same batch, weights and logits; times are process CPU time, robust on a shared machine with one thread, the
wall-clock speedup is printed too):

* weight step (SGD on the weights, soft gates sampled without gradient) and policy step (Adam on the logits,
  weights frozen, loss + λ terms), at the first curriculum stage (only the last block decided, 1/4) and with
  every block decided (4/4, the rest of the search);
* weight (hard): the weight step with the reference's ``hard_sampling`` (exact 0/1 samples): the reference
  still computes every block for every task and multiplies by 0 or 1, our executor runs the policy's sharing
  graph: skipped blocks not at all, equal select/skip prefixes once (one call per unique prefix).

Baseline: the reference's execution on the same modules with plain BatchNorm (one call per task: per-task
batch statistics, as our per-stream BatchNorm), without its multiplications by the constant gates of
undecided blocks. A hard-sharing training step (MultiTaskNetwork, Adam), interleaved in the same repeats,
gives the scale. ``loss_diff`` checks that both executions compute the same loss. resnet_small at 3 x 32 x 32
(widths 16/32/64), T classification heads.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _report import write_report
from torch import nn

from nas_mtl.backbones import create_backbone
from nas_mtl.graph import SharingGraph
from nas_mtl.network import MultiTaskNetwork
from nas_mtl.search.adashare import SELECT, AdaShareConfig, AdaShareSupernet, policy_regularizer
from nas_mtl.tasks import ClassificationTask, labelled_losses


class ReferenceStyle(nn.Module):
    """The reference's execution: the backbone once per task, each block gated by that task's sample."""

    def __init__(self, net: AdaShareSupernet, backbone) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(backbone.build())  # plain BatchNorm
        for block, source in zip(self.blocks, net.blocks):
            block.load_state_dict(source.state_dict())
        self.neck = backbone.neck
        self.heads = copy.deepcopy(net.heads)
        self.logits = nn.Parameter(net.logits.detach().clone())
        self.policy_layers = net.policy_layers
        self.tasks = net.tasks

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name != "logits"]

    def forward(self, x: torch.Tensor, gates) -> dict[str, torch.Tensor]:
        out = {}
        for t, name in enumerate(self.tasks):
            h = x
            for block, gate in zip(self.blocks, gates):
                y = block(h)
                h = y if gate is None else y * gate[t] + h * (1 - gate[t])
            out[name] = self.heads[t](self.neck(h))
        return out


def _gates(
    logits: torch.Tensor, layers: int, policy_layers, active: int, tau: float, seed: int, grad: bool, hard: bool = False
):
    """Gumbel-softmax select gates of the last ``active`` policy blocks (None: no decision); ``hard``: exact
    0/1 samples (the weight phase with the reference's ``hard_sampling``)."""
    start = len(policy_layers) - active
    z = logits[start:] if grad else logits[start:].detach()
    torch.manual_seed(seed)
    soft = F.gumbel_softmax(z, tau, hard=False)[..., SELECT]
    gates = (soft > 0.5).to(soft.dtype) if hard else soft
    out = [None] * layers
    for row, layer in enumerate(policy_layers[start:]):
        out[layer] = gates[row]
    return out


def _steps(model: nn.Module, specs, x, y, active: int, config: AdaShareConfig) -> dict[str, Callable[[], float]]:
    """The weight step and the policy step of ``model`` (either execution); each returns the task loss."""
    weights = model.weight_parameters()
    weight_opt = torch.optim.SGD(weights, lr=config.train.lr, momentum=0.9, weight_decay=config.train.weight_decay)
    policy_opt = torch.optim.Adam([model.logits], lr=config.policy_lr)
    layers, policy_layers = len(model.blocks), model.policy_layers
    calls = {"n": 0}

    def loss(grad: bool, hard: bool = False) -> torch.Tensor:
        calls["n"] += 1  # same noise for both executions at the same call count
        gates = _gates(model.logits, layers, policy_layers, active, config.tau, calls["n"], grad, hard)
        return sum(labelled_losses(model(x, gates), y, specs)[0].values())

    def weight_step(hard: bool = False) -> float:
        total = loss(grad=False, hard=hard)
        weight_opt.zero_grad(set_to_none=True)
        total.backward()
        weight_opt.step()
        return float(total.detach())

    def policy_step() -> float:
        for p in weights:
            p.requires_grad_(False)
        total = loss(grad=True)
        policy_opt.zero_grad(set_to_none=True)
        (total + policy_regularizer(model.logits, active, config)).backward()
        policy_opt.step()
        for p in weights:
            p.requires_grad_(True)
        return float(total.detach())

    return {"weight step": weight_step, "policy step": policy_step, "weight (hard)": lambda: weight_step(hard=True)}


def _time_interleaved(fns: list[Callable[[], float]], repeats: int, warmup: int = 1) -> tuple[list[float], list[float]]:
    """Median wall and process-CPU seconds per call of each function; calls interleaved, order rotated every
    repeat, so that drift and other load hit every function alike (CPU time is the robust one on a shared
    machine: with one thread it is the compute time, whatever else runs)."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    wall: list[list[float]] = [[] for _ in fns]
    cpu: list[list[float]] = [[] for _ in fns]
    for i in range(repeats):
        for k in ((i + j) % len(fns) for j in range(len(fns))):
            w0, c0 = time.perf_counter(), time.process_time()
            fns[k]()
            cpu[k].append(time.process_time() - c0)
            wall[k].append(time.perf_counter() - w0)
    return [statistics.median(t) for t in wall], [statistics.median(t) for t in cpu]


def _hard_sharing_step(backbone, specs, x, y) -> Callable[[], float]:
    graph = SharingGraph.hard_sharing([t.name for t in specs], backbone.layer_names)
    net = MultiTaskNetwork.from_tasks(graph, backbone, specs).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step() -> float:
        total = sum(labelled_losses(net(x), y, specs)[0].values())
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        return float(total.detach())

    return step


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="2,4,8", help="comma-separated task counts")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/adashare.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    backbone = create_backbone("resnet_small", in_chans=3, input_size=(32, 32), widths=(16, 32, 64), depths=(2, 2, 2))
    policy_layers = [i for i, n in enumerate(backbone.layer_names) if n in backbone.skippable]
    config = AdaShareConfig()
    rows = []
    started = time.perf_counter()
    for num_tasks in (int(t) for t in args.tasks.split(",")):
        specs = [ClassificationTask(f"t{i}", 10) for i in range(num_tasks)]
        g = torch.Generator().manual_seed(num_tasks)
        x = torch.randn(args.batch, *backbone.input_shape, generator=g)
        y = {t.name: torch.randint(0, 10, (args.batch,), generator=g) for t in specs}
        hard = _hard_sharing_step(backbone, specs, x, y)
        every = len(policy_layers)
        for active, phase in [
            (1, "weight step"),
            (1, "policy step"),
            (every, "weight step"),
            (every, "policy step"),
            (every, "weight (hard)"),
        ]:
            torch.manual_seed(0)
            net = AdaShareSupernet(backbone, specs, policy_layers).train()
            ref = ReferenceStyle(net, backbone).train()
            ours_fn = _steps(net, specs, x, y, active, config)[phase]
            ref_fn = _steps(ref, specs, x, y, active, config)[phase]
            loss_diff = abs(ours_fn() - ref_fn())  # same weights, same noise: same loss
            wall, cpu = _time_interleaved([ours_fn, ref_fn, hard], args.repeats)
            (ours, base, hard_ms), (ours_w, base_w, hard_w) = ([t * 1e3 for t in m] for m in (cpu, wall))
            rows.append(
                {
                    "tasks": num_tasks,
                    "phase": phase,
                    "decided_blocks": f"{active}/{len(policy_layers)}",
                    "ours_ms": ours,
                    "reference_style_ms": base,
                    "speedup": base / ours,
                    "hard_sharing_step_ms": hard_ms,
                    "ours_vs_hard_sharing": ours / hard_ms,
                    "wall_ours_ms": ours_w,
                    "wall_reference_style_ms": base_w,
                    "wall_speedup": base_w / ours_w,
                    "wall_hard_sharing_step_ms": hard_w,
                    "loss_diff": loss_diff,
                }
            )
    header = (
        f"{'T':>2} {'phase':<13} {'decided':>7} {'ours ms':>9} {'ref-style ms':>12} {'speedup':>8} "
        f"{'hard-sharing ms':>15} {'ours/hard':>9} {'wall speedup':>12} {'loss diff':>9}"
    )
    print(
        f"AdaShare search step, resnet_small 3x32x32, batch {args.batch}, {args.threads} thread(s), "
        f"torch {torch.__version__}, median of {args.repeats} (ms: process CPU time per step)"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['tasks']:>2} {r['phase']:<13} {r['decided_blocks']:>7} {r['ours_ms']:>9.1f} "
            f"{r['reference_style_ms']:>12.1f} {r['speedup']:>7.2f}x {r['hard_sharing_step_ms']:>15.1f} "
            f"{r['ours_vs_hard_sharing']:>8.2f}x {r['wall_speedup']:>11.2f}x {r['loss_diff']:>9.1e}"
        )
    report = {
        "benchmark": "adashare",
        "backbone": "resnet_small (3x32x32, widths 16/32/64, depths 2/2/2)",
        "batch": args.batch,
        "threads": args.threads,
        "repeats": args.repeats,
        "seconds": time.perf_counter() - started,
        "rows": rows,
    }
    report = write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
