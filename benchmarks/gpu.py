"""The prepared device check: one short script for a lent GPU (under 5 minutes), with a CPU fallback.

    python benchmarks/gpu.py [--device cuda] [--height 288 --width 384] [--batch 8] [--repeats 10]
                             [--out benchmarks/results/gpu.json]
    python benchmarks/gpu.py --device cpu --height 64 --width 96 --batch 4 --repeats 3   # the CPU fallback

On a timm ResNet-34 (hard sharing, 21.3M backbone parameters) with segmentation (13 classes), depth and
surface-normal heads, NYUv2-sized inputs (288 x 384):

1. **executor vs a hand-written module**: one training step (forward, the three losses summed, backward) of
   ``MultiTaskNetwork`` against a plain ``nn.Module`` running the same block and head modules in sequence, in
   fp32 and bf16 (autocast); outputs checked equal (fp32: to float32 rounding; bf16: the same module, so equal);
   median milliseconds and the executor / hand-written ratio, interleaved;
2. **balancer steps**: equal, MGDA-UB, PCGrad and FAMO on the same network and batch (median ms, ratio to equal);
3. **peak memory** of each (``torch.cuda.max_memory_allocated``; peak RSS on the CPU);
4. **a short branch search** on shapes with ``--device``: 3 trials of the from-scratch proxy, 1 epoch each.

Writes ``--out`` (default ``benchmarks/results/gpu.json`` on CUDA, ``gpu_cpu.json`` on the CPU). Nothing in CI needs a
GPU; on a lent machine, run it once and keep the JSON.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _report import write_report
from torch import nn

from nas_mtl.backbones import create_backbone
from nas_mtl.balancing import create_balancer
from nas_mtl.graph import SharingGraph
from nas_mtl.network import MultiTaskNetwork
from nas_mtl.tasks import DenseRegressionTask, SegmentationTask, SurfaceNormalTask, labelled_losses
from nas_mtl.train_step import autocast

BALANCERS = ("equal", "mgda-ub", "pcgrad", "famo")


class HandWritten(nn.Module):
    """The same modules as a hard-sharing executor, called in sequence: what the executor is compared with."""

    def __init__(self, network: MultiTaskNetwork) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(row[0] for row in network.blocks)
        self.neck = network.neck
        self.heads = nn.ModuleDict({t: h for t, h in zip(network.tasks, network.heads)})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        for block in self.blocks:
            x = block(x)
        features = self.neck(x)
        return {t: head(features) for t, head in self.heads.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _setup(args: argparse.Namespace, device: torch.device):
    torch.manual_seed(0)
    shape = (3, args.height, args.width)
    backbone = create_backbone("timm_resnet", model="resnet34", input_size=shape[1:])
    tasks = [SegmentationTask("seg", 13), DenseRegressionTask("depth"), SurfaceNormalTask("normal")]
    graph = SharingGraph.hard_sharing([t.name for t in tasks], backbone.layer_names)
    network = MultiTaskNetwork.from_tasks(graph, backbone, tasks).to(device)
    x = torch.randn(args.batch, *shape, device=device)
    normal = torch.nn.functional.normalize(torch.randn(args.batch, 3, *shape[1:], device=device), dim=1)
    y = {
        "seg": torch.randint(0, 13, (args.batch, *shape[1:]), device=device),
        "depth": torch.rand(args.batch, 1, *shape[1:], device=device) + 0.1,
        "normal": normal,
    }
    return network, tasks, x, y


def _step_ms(model, tasks, x, y, precision: str, device: torch.device, repeats: int) -> list[float]:
    times = []
    for i in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        model.zero_grad(set_to_none=True)
        with autocast(precision, device):
            losses, _ = labelled_losses(model(x), y, tasks)
        sum(v.float() for v in losses.values()).backward()
        _sync(device)
        if i:
            times.append(1000 * (time.perf_counter() - t0))
    return times


def executor_vs_hand(args, device) -> dict:
    network, tasks, x, y = _setup(args, device)
    plain = HandWritten(network)
    out = {}
    for precision in ("fp32", "bf16"):
        with torch.no_grad(), autocast(precision, device):
            a, b = network.eval()(x), plain.eval()(x)
        same = all(torch.equal(a[t], b[t]) for t in a)
        network.train()
        ours, theirs = [], []
        for _ in range(args.repeats):  # interleaved, one step each, so drifting load hits both
            ours += _step_ms(network, tasks, x, y, precision, device, 1)
            theirs += _step_ms(plain, tasks, x, y, precision, device, 1)
        out[precision] = {
            "executor_ms": statistics.median(ours),
            "hand_written_ms": statistics.median(theirs),
            "ratio": statistics.median(a / b for a, b in zip(ours, theirs)),
            "outputs_equal": same,
        }
        print(
            f"{precision}: executor {out[precision]['executor_ms']:.1f} ms, hand-written "
            f"{out[precision]['hand_written_ms']:.1f} ms, ratio {out[precision]['ratio']:.3f}, equal {same}"
        )
    return out


def balancer_steps(args, device) -> dict:
    network, tasks, x, y = _setup(args, device)
    out = {}
    for name in BALANCERS:
        balancer = create_balancer(name)
        balancer.prepare(network)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for i in range(args.repeats + 1):
            _sync(device)
            t0 = time.perf_counter()
            network.zero_grad(set_to_none=True)
            losses, _ = labelled_losses(network(x), y, tasks)
            balancer.backward(losses, network)

            def recompute():
                with torch.no_grad():
                    return labelled_losses(network(x), y, tasks)[0]

            balancer.after_step(recompute)
            _sync(device)
            if i:
                times.append(1000 * (time.perf_counter() - t0))
        balancer.detach()
        out[name] = {"ms": statistics.median(times), "peak_mb": _peak_mb(device)}
    for name in BALANCERS:
        out[name]["x_equal"] = out[name]["ms"] / out["equal"]["ms"]
        ms, ratio, peak = out[name]["ms"], out[name]["x_equal"], out[name]["peak_mb"]
        print(f"{name:>8}: {ms:.1f} ms ({ratio:.2f}x equal), peak {peak:.0f} MB")
    return out


def branch_search(args, device) -> dict:
    from nas_mtl import create_dataset, load_search_space
    from nas_mtl.search.branch_config import BranchSearchConfig
    from nas_mtl.search.branching import branch_search as run
    from nas_mtl.search.proxy import ProxyConfig
    from nas_mtl.train import TrainConfig

    data = create_dataset("shapes", n_train=256, n_val=64, n_test=64, size=32, tasks="quadrant,size,hue")
    space = load_search_space("resnet_small", input_shape=data.input_shape)
    train = TrainConfig(epochs=1, batch_size=32, device=device.type)
    config = BranchSearchConfig(proxy=ProxyConfig(warmstart=train, finetune=train), n_trials=3, sampler="random")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(data, space, config, Path(tmp))
    seconds = time.perf_counter() - t0
    print(f"branch search, 3 trials on {device.type}: {seconds:.1f} s; found {result.graph.describe()}")
    return {"seconds": seconds, "graph": result.graph.describe()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--height", type=int, default=288)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here (the CPU fallback: --device cpu with small inputs)")
    out = args.out or f"benchmarks/results/{'gpu' if device.type == 'cuda' else 'gpu_cpu'}.json"
    t0 = time.perf_counter()
    report = {
        "settings": vars(args),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "executor_vs_hand_written": executor_vs_hand(args, device),
        "balancers": balancer_steps(args, device),
        "branch_search": branch_search(args, device),
    }
    report["seconds"] = time.perf_counter() - t0
    return write_report(out, report)


if __name__ == "__main__":
    main()
