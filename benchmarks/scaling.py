"""Step time and peak memory of each balancer as the number of tasks grows, on a ResNet-18-sized backbone.

    python benchmarks/scaling.py [--tasks 2 5 10 20 40] [--balancers equal,mgda,...] [--size 64] [--batch 16]
                                 [--repeats 3] [--threads 2] [--out benchmarks/results/scaling.json]

One step = zero_grad, forward (hard sharing: timm ResNet-18, 11.2M backbone parameters, one linear head per task
on its pooled features), one cross-entropy loss per task, the balancer's backward, SGD step. Each (balancer, T)
runs in its own process, so its peak memory is its own: ``rss_mb`` is the process's peak resident memory (CPU;
``torch.cuda.max_memory_allocated`` on a GPU with ``--device cuda``) over the steps, ``extra_mb`` that minus the
same process's peak after the network, a batch and one warm-up forward (what the balancer's step adds: per-task
gradients, Gram matrices, graphs kept for several backward passes). ``ms`` is the median of ``--repeats`` timed
steps after one warm-up step; ``x_equal`` the ratio to equal weighting at the same T (medians, one process each:
absolute times move 2-4x on a shared machine, the ratios less).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

BALANCERS = ("equal", "mgda", "mgda-ub", "pcgrad", "cagrad", "nash-mtl", "famo")


def _losses(network, x, y) -> dict:
    """Every task's loss of one forward pass (what the trainer's recomputation after a step gives FAMO)."""
    import torch

    with torch.no_grad():
        out = network(x)
    return {n: torch.nn.functional.cross_entropy(out[n], y[n]) for n in y}


def _one(balancer: str, tasks: int, size: int, batch: int, repeats: int, threads: int, device: str) -> dict:
    """Run in a child process: time ``repeats`` steps and measure peak memory."""
    import resource

    import torch

    from nas_mtl.balancing import create_balancer
    from nas_mtl.graph import SharingGraph
    from nas_mtl.network import MultiTaskNetwork
    from nas_mtl.space import load_search_space
    from nas_mtl.tasks import ClassificationTask

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    space = load_search_space("timm_resnet18", input_shape=(3, size, size))
    names = [f"t{i:02d}" for i in range(tasks)]
    specs = [ClassificationTask(n, 10) for n in names]
    graph = SharingGraph.hard_sharing(names, space.layers)
    network = MultiTaskNetwork.from_tasks(graph, space.backbone, specs).to(dev)
    x = torch.randn(batch, 3, size, size, device=dev)
    y = {n: torch.randint(0, 10, (batch,), device=dev) for n in names}
    optimizer = torch.optim.SGD(network.parameters(), lr=1e-3)
    b = create_balancer(balancer)
    b.prepare(network)

    def peak_mb() -> float:
        if dev.type == "cuda":
            return torch.cuda.max_memory_allocated(dev) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    with torch.no_grad():
        network(x)
    base = peak_mb()
    times = []
    for i in range(repeats + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out = network(x)
        losses = {n: torch.nn.functional.cross_entropy(out[n], y[n]) for n in names}
        b.backward(losses, network)
        optimizer.step()
        b.after_step(lambda: _losses(network, x, y))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i:  # the first step warms up allocators and caches
            times.append(time.perf_counter() - t0)
    b.detach()
    params = sum(p.numel() for p in network.blocks.parameters())
    return {"ms": 1000 * statistics.median(times), "rss_mb": peak_mb(), "extra_mb": peak_mb() - base, "params": params}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 5, 10, 20, 40])
    parser.add_argument("--balancers", default=",".join(BALANCERS))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/results/scaling.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # BALANCER,T: run one cell and print its JSON
    args = parser.parse_args(argv)
    if args.child:
        balancer, tasks = args.child.rsplit(",", 1)
        print(json.dumps(_one(balancer, int(tasks), args.size, args.batch, args.repeats, args.threads, args.device)))
        return {}
    from _report import write_report

    rows = []
    balancers = [b.strip() for b in args.balancers.split(",") if b.strip()]
    common = ["--size", str(args.size), "--batch", str(args.batch), "--repeats", str(args.repeats)]
    common += ["--threads", str(args.threads), "--device", args.device]
    for tasks in args.tasks:
        for balancer in balancers:
            done = subprocess.run(
                [sys.executable, __file__, "--child", f"{balancer},{tasks}", *common], capture_output=True, text=True
            )
            if done.returncode:
                cell = {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
            else:
                cell = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append({"balancer": balancer, "tasks": tasks, **cell})
            shown = (
                f"{cell['ms']:9.1f} ms  {cell['rss_mb']:7.0f} MB peak  +{cell['extra_mb']:6.0f} MB"
                if "ms" in cell
                else cell["error"]
            )
            print(f"T={tasks:3d} {balancer:>9}: {shown}", flush=True)
    for row in rows:
        equal = next((r for r in rows if r["balancer"] == "equal" and r["tasks"] == row["tasks"] and "ms" in r), None)
        if equal is not None and "ms" in row:
            row["x_equal"] = row["ms"] / equal["ms"]
    settings = {k: getattr(args, k) for k in ("tasks", "size", "batch", "repeats", "threads", "device")}
    return write_report(args.out, {"settings": settings, "rows": rows})


if __name__ == "__main__":
    main()
