"""Executor overhead and prefix-sharing savings, measured side by side in one run.

    python benchmarks/executor.py [--batch 64] [--tasks 4] [--repeats 30] [--out benchmarks/results/executor.json]

Rows (forward + backward time per step, median over interleaved repeats):
  * hard sharing: MultiTaskNetwork vs a hand-written nn.Module with the same weights (target <= 1.05x);
  * a branched tree and an AdaShare-style skip policy: prefix-trie execution vs running every task's
    path separately (what a naive per-task executor does).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from _report import write_report
from torch import nn

from nas_mtl.backbones import create_backbone
from nas_mtl.graph import SKIP, SharingGraph
from nas_mtl.network import MultiTaskNetwork


class HandWrittenHardSharing(nn.Module):
    """The usual hand-coded hard-sharing model: one trunk, T heads."""

    def __init__(self, net: MultiTaskNetwork) -> None:
        super().__init__()
        self.trunk = nn.Sequential(*[copy.deepcopy(row[0]) for row in net.blocks])
        self.heads = copy.deepcopy(net.heads)
        self.tasks = net.tasks

    def forward(self, x):
        h = self.trunk(x)
        return {t: head(h) for t, head in zip(self.tasks, self.heads)}


class PerTaskExecutor(nn.Module):
    """Runs each task's path on its own (shares weights, never computation)."""

    def __init__(self, net: MultiTaskNetwork) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        out = {}
        for j, t in enumerate(self.net.tasks):
            h = x
            for layer, c in enumerate(self.net.graph.path(t)):
                if c != SKIP:
                    h = self.net.blocks[layer][c](h)
            out[t] = self.net.heads[j](h)
        return out


def _step(model: nn.Module, x: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    sum(o.square().mean() for o in model(x).values()).backward()


def _time_pair(a: nn.Module, b: nn.Module, x: torch.Tensor, repeats: int, warmup: int = 3) -> tuple[float, float]:
    for _ in range(warmup):
        _step(a, x)
        _step(b, x)
    ta, tb = [], []
    for i in range(repeats):  # interleaved, alternating order, so drift hits both equally
        for model, sink in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            t0 = time.perf_counter()
            _step(model, x)
            sink.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/executor.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    backbone = create_backbone("resnet_small", in_chans=3, input_size=(32, 32), widths=(16, 32, 64), depths=(2, 2, 2))
    tasks = [f"t{i}" for i in range(args.tasks)]
    layers = backbone.layer_names
    c = backbone.feature_shape[0]

    def heads():
        return {t: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)) for t in tasks}

    half = [tasks[: len(tasks) // 2], tasks[len(tasks) // 2 :]]
    tree = SharingGraph.branched(tasks, layers, [[tasks]] * 3 + [half] * 2 + [[[t] for t in tasks]] * 2)
    select = [[1] * len(tasks)] + [
        [int((layer + j) % 3 != 0) if layers[layer] in backbone.skippable else 1 for j in range(len(tasks))]
        for layer in range(1, len(layers))
    ]
    policy = SharingGraph.from_policy(tasks, layers, select, skippable=backbone.skippable)
    x = torch.randn(args.batch, *backbone.input_shape)
    rows = []

    hard = MultiTaskNetwork(SharingGraph.hard_sharing(tasks, layers), backbone, heads())
    ours, ref = _time_pair(hard, HandWrittenHardSharing(hard), x, args.repeats)
    rows.append(
        {
            "case": "hard sharing",
            "ours_ms": ours * 1e3,
            "baseline": "hand-written nn.Module",
            "baseline_ms": ref * 1e3,
            "ratio": ours / ref,
            "target": "<= 1.05",
        }
    )
    for name, graph in (("branched tree", tree), ("AdaShare skip policy", policy)):
        net = MultiTaskNetwork(graph, backbone, heads())
        ours, ref = _time_pair(net, PerTaskExecutor(net), x, args.repeats)
        block_runs = sum(1 for n in graph.prefix_nodes() if n.copy != SKIP)
        per_task_runs = sum(1 for t in tasks for c in graph.path(t) if c != SKIP)
        rows.append(
            {
                "case": f"{name} ({block_runs} vs {per_task_runs} block runs)",
                "ours_ms": ours * 1e3,
                "baseline": "per-task execution",
                "baseline_ms": ref * 1e3,
                "ratio": ours / ref,
                "target": "< 1",
            }
        )

    header = f"{'case':<46} {'ours ms':>9} {'baseline':<24} {'base ms':>9} {'ratio':>7}  target"
    print(
        f"executor fwd+bwd, batch {args.batch}, {args.tasks} tasks, {args.threads} threads, torch {torch.__version__}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        times = f"{r['ours_ms']:>9.2f} {r['baseline']:<24} {r['baseline_ms']:>9.2f} {r['ratio']:>7.3f}"
        print(f"{r['case']:<46} {times}  {r['target']}")
    report = {
        "benchmark": "executor",
        "batch": args.batch,
        "tasks": args.tasks,
        "threads": args.threads,
        "repeats": args.repeats,
        "rows": rows,
    }
    report = write_report(args.out, report)
    return report


if __name__ == "__main__":
    main()
