"""Loss-balancer step time: ours vs LibMTL's and torchjd's implementations, side by side in one run.

    python benchmarks/balancers.py [--tasks 2 4 8] [--batch 32] [--repeats 20] [--threads 2]
                                   [--out benchmarks/results/balancers.json]

One step = zero_grad, forward, per-task cross-entropy, the balancer's backward, SGD step, on a
hard-sharing resnet_small (widths 16/32/64, 32x32 inputs); every implementation starts from the same
weights and sees the same batch. Steps are interleaved (each round runs every implementation once,
in an order that rotates each round); "ms" is the median over rounds, and every ratio is the median
over rounds of the ratio within the round (paired, so load from other processes that drifts over
time cancels out).

Peers are optional and live in their own environment (this script still runs without them, marking
their columns unavailable):

    python -m venv /tmp/peers --system-site-packages
    /tmp/peers/bin/pip install torchjd==0.18.0
    /tmp/peers/bin/pip install --no-deps LibMTL==1.1.5    # its pinned old deps are not needed here
    /tmp/peers/bin/python benchmarks/balancers.py

LibMTL 1.1.5 (the latest release on PyPI) does not import on current torchvision: ``LibMTL/__init__.py``
imports ``LibMTL.model.resnet``, which does ``from torchvision.models.utils import
load_state_dict_from_url`` -> ``ModuleNotFoundError: No module named 'torchvision.models.utils'``
(torchvision dropped that module in 0.11; LibMTL fixed the import in its repository after the 1.1.5
release, LibMTL issue #62). We only need ``LibMTL.weighting``, so before importing it this script
registers a stand-in ``torchvision.models.utils`` module exposing ``torch.hub.load_state_dict_from_url``
(where that function lives now); nothing in site-packages is changed. Its pinned old dependencies are
skipped (``--no-deps``): ``LibMTL.weighting`` needs only torch and numpy.
LibMTL's weightings are mixins of its ``Trainer`` model; :class:`_LibMTLModel` supplies the
attributes they use (``task_num``, ``rep_grad``, ``get_share_params``...) the way LibMTL's
``AbsArchitecture`` does, including its detached per-task copies of the representation for
``rep_grad=True`` (its MGDA-UB). torchjd is used through its documented multi-task API,
``autojac.mtl_backward(losses, features=Z)`` + ``jac_to_grad(shared_params, aggregator)``; it has no
representation-gradient mode, so its MGDA-UB cell is n/a, and its "equal" is that same Jacobian path
with the ``Sum`` aggregator. We pass ``parallel_chunk_size=1`` on CPU (a documented option: one
backward per task): its default differentiates all tasks at once through ``torch.vmap``, whose
batched convolution backward is several times slower on CPU (torchjd's MGDA step at T = 4 / 8 took
1.3x / 1.6x longer that way here). (torchjd's ``autogram`` engine does not support BatchNorm, which
this backbone uses.)

What to expect: MGDA (params) and PCGrad need the exact gradient of every task on the shared
parameters, i.e. one backward pass through the trunk per task, in all three implementations; that is
~90% of their step (convolution backward alone ~75%), so they tie within noise and their cost grows
as ~(1 + 2T)/3 equal-weight steps. MGDA-UB avoids it (per-task backward through the heads only, then
one trunk backward) and costs about one equal-weight step.

The "agree" columns are the cosine between the peer's and our shared-parameter update after one step
from identical weights on the same batch (PCGrad's random orders differ between implementations for
T > 2, so its agreement is only exact at T = 2; LibMTL's MGDA solver is approximate, and its MGDA-UB
(``rep_grad=True``) builds the Gram matrix from representation gradients summed over the batch
(``AbsWeighting._get_grads``) rather than from the paper's ∂L_t/∂Z, so it picks different weights).
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.metadata
import statistics
import sys
import time
import types
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _report import write_report
from torch import nn

from nas_mtl.backbones import create_backbone
from nas_mtl.balancing import create_balancer
from nas_mtl.graph import SharingGraph
from nas_mtl.network import MultiTaskNetwork
from nas_mtl.train import kept_buffers

METHODS = (
    *("equal", "mgda", "mgda-ub", "pcgrad", "cagrad", "imtl-g", "imtl-g-ub", "aligned-mtl", "aligned-mtl-ub"),
    *("upgrad", "nash-mtl"),
    *("uncertainty", "dwa", "rlw", "famo"),
)
LOSS_WEIGHTING = ("uncertainty", "dwa", "rlw", "famo")
LIBMTL = {  # our name -> LibMTL 1.1.5 weighting and its backward() keyword arguments at our defaults
    "equal": ("EW", {}),
    "mgda": ("MGDA", {"mgda_gn": "none"}),
    "mgda-ub": ("MGDA", {"mgda_gn": "none"}),
    "pcgrad": ("PCGrad", {}),
    "uncertainty": ("UW", {}),
    "dwa": ("DWA", {"T": 2.0}),
    "rlw": ("RLW", {"dist": "Normal"}),
}
"""LibMTL 1.1.5 has no UPGrad, Aligned-MTL, Nash-MTL or FAMO; its IMTL is the IMTL-L + IMTL-G hybrid; its CAGrad
works for 3 tasks only (``x.reshape(1, 3)`` in its objective: "cannot reshape array of size 2 into shape (1,3)")."""
TORCHJD = {  # our name -> torchjd aggregator factory (T -> aggregator) at our defaults
    "equal": lambda t, agg: agg.Sum(),
    "mgda": lambda t, agg: agg.MGDA(),
    "pcgrad": lambda t, agg: agg.PCGrad(),
    "cagrad": lambda t, agg: agg.CAGrad(c=0.4),
    "imtl-g": lambda t, agg: agg.IMTLG(),
    "aligned-mtl": lambda t, agg: agg.AlignedMTL(),
    "upgrad": lambda t, agg: agg.UPGrad(),
    "nash-mtl": lambda t, agg: agg.NashMTL(n_tasks=t),
}
"""torchjd aggregates Jacobians: it has no loss-weighting method and no representation-gradient mode (MGDA-UB)."""
RANDOM = ("rlw",)
"""Random weights every step: the implementations draw different ones, so their agreement is not measured."""
Step = Callable[[], None]


# ---------------------------------------------------------------------- peers
def _import_libmtl() -> tuple[types.ModuleType | None, str]:
    try:
        import torchvision.models

        if "torchvision.models.utils" not in sys.modules:
            try:
                import torchvision.models.utils  # noqa: F401
            except ImportError:  # removed in torchvision 0.13; LibMTL.model.resnet still imports it
                shim = types.ModuleType("torchvision.models.utils")
                shim.load_state_dict_from_url = torch.hub.load_state_dict_from_url
                sys.modules["torchvision.models.utils"] = shim
                torchvision.models.utils = shim
        import LibMTL.weighting as weighting

        return weighting, importlib.metadata.version("LibMTL")
    except Exception as err:  # not installed, or fails to import: report, keep benchmarking ours
        return None, f"unavailable ({type(err).__name__}: {err})"


def _import_torchjd() -> tuple[types.ModuleType | None, str]:
    try:
        import torchjd.aggregation
        import torchjd.autojac  # noqa: F401

        return torchjd, importlib.metadata.version("torchjd")
    except Exception as err:
        return None, f"unavailable ({type(err).__name__}: {err})"


class HardSharing(nn.Module):
    """The usual hand-written hard-sharing model (trunk + heads), with our network's weights."""

    def __init__(self, net: MultiTaskNetwork) -> None:
        super().__init__()
        self.trunk = nn.Sequential(*[copy.deepcopy(row[0]) for row in net.blocks])
        self.heads = copy.deepcopy(net.heads)


def _libmtl_model(weighting: type, net: MultiTaskNetwork, rep_grad: bool) -> nn.Module:
    class _LibMTLModel(weighting):
        """What LibMTL's Trainer model provides to a weighting (AbsArchitecture's attributes)."""

        def __init__(self) -> None:
            super().__init__()
            model = HardSharing(net)
            self.encoder, self.decoders = model.trunk, model.heads
            self.task_name = list(net.tasks)
            self.task_num = len(self.task_name)
            self.device = torch.device("cpu")
            self.rep_grad = rep_grad
            self.rep_tasks: dict[str, torch.Tensor] = {}

        def get_share_params(self):
            return self.encoder.parameters()

        def zero_grad_share_params(self) -> None:
            self.encoder.zero_grad(set_to_none=False)

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            rep = self.encoder(x)
            if not self.rep_grad:
                return [head(rep) for head in self.decoders]
            self.rep = rep  # AbsArchitecture._prepare_rep(same_rep=True)
            outs = []
            for task, head in zip(self.task_name, self.decoders):
                self.rep_tasks[task] = rep.detach().clone()
                self.rep_tasks[task].requires_grad = True
                outs.append(head(self.rep_tasks[task]))
            return outs

    return _LibMTLModel()


# ---------------------------------------------------------------------- steps
def _losses(outputs, ys):
    return [F.cross_entropy(o, y) for o, y in zip(outputs, ys)]


def ours(net: MultiTaskNetwork, method: str, x, ys) -> tuple[Step, Callable[[], torch.Tensor]]:
    net = copy.deepcopy(net)
    balancer = create_balancer(method).prepare(net)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    trunk = [p for row in net.blocks for p in row[0].parameters()]

    def losses() -> dict[str, torch.Tensor]:
        out = net(x)
        return dict(zip(net.tasks, _losses([out[t] for t in net.tasks], ys)))

    def recompute() -> dict[str, torch.Tensor]:  # as the trainer does it
        with torch.no_grad(), kept_buffers(net):
            return losses()

    def step(update: bool = True) -> None:
        opt.zero_grad(set_to_none=True)
        balancer.backward(losses(), net)
        if update:
            opt.step()
            balancer.after_step(recompute)

    return step, lambda: _flat_grad(trunk)


def libmtl(weighting: types.ModuleType, net: MultiTaskNetwork, method: str, x, ys):
    name, kwargs = LIBMTL[method]
    model = _libmtl_model(getattr(weighting, name), net, rep_grad=method == "mgda-ub")
    model.init_param()  # UW's log variances (in the optimiser, as LibMTL's Trainer does)
    model.epoch = 0  # DWA: its first epochs use weight 1 (only its cost is measured here)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step(update: bool = True) -> None:
        opt.zero_grad(set_to_none=True)
        model.backward(torch.stack(_losses(model(x), ys)), **kwargs)
        if update:
            opt.step()

    return step, lambda: _flat_grad(list(model.encoder.parameters()))


def torchjd_step(torchjd: types.ModuleType, net: MultiTaskNetwork, method: str, x, ys):
    model = HardSharing(net)
    aggregator = TORCHJD[method](len(model.heads), torchjd.aggregation)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    shared = list(model.trunk.parameters())

    def step(update: bool = True) -> None:
        opt.zero_grad(set_to_none=True)
        z = model.trunk(x)
        losses = _losses([h(z) for h in model.heads], ys)
        torchjd.autojac.mtl_backward(losses, features=z, parallel_chunk_size=1 if z.device.type == "cpu" else None)
        torchjd.autojac.jac_to_grad(shared, aggregator)
        if update:
            opt.step()

    return step, lambda: _flat_grad(shared)


def _flat_grad(params) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params])


# ---------------------------------------------------------------------- timing
def _time_all(steps: dict, repeats: int, warmup: int = 3) -> dict[object, list[float]]:
    """Seconds per step of each implementation, one entry per round (rounds interleave all of them)."""
    names = list(steps)
    for _ in range(warmup):
        for n in names:
            steps[n]()
    times: dict[object, list[float]] = {n: [] for n in names}
    for r in range(repeats):  # interleaved, rotating order so drift hits all alike
        for n in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            steps[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def _paired(times: dict[object, list[float]], num: object, den: object) -> float:
    """Median over rounds of ``num``'s time / ``den``'s time in the same round."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/balancers.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    lib, lib_version = _import_libmtl()
    jd, jd_version = _import_torchjd()
    backbone = create_backbone("resnet_small", in_chans=3, input_size=(32, 32), widths=(16, 32, 64), depths=(2, 2, 2))
    c = backbone.feature_shape[0]
    rows = []
    for n_tasks in args.tasks:
        torch.manual_seed(n_tasks)
        tasks = [f"t{i}" for i in range(n_tasks)]
        heads = {t: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)) for t in tasks}
        net = MultiTaskNetwork(SharingGraph.hard_sharing(tasks, backbone.layer_names), backbone, heads)
        x = torch.randn(args.batch, *backbone.input_shape)
        ys = [torch.randint(0, 10, (args.batch,)) for _ in tasks]
        steps, grads = {}, {}
        for method in METHODS:
            impls: dict[str, Callable] = {"ours": ours}
            if lib is not None and method in LIBMTL:
                impls["LibMTL"] = functools.partial(libmtl, lib)
            if jd is not None and method in TORCHJD:
                impls["torchjd"] = functools.partial(torchjd_step, jd)
            for impl, build in impls.items():
                step, grad = build(net, method, x, ys)
                step(update=False)  # same weights, same batch: compare the shared update
                grads[(method, impl)] = grad().clone()
                steps[(method, impl)] = step
        times = _time_all(steps, args.repeats)
        medians = {k: statistics.median(v) for k, v in times.items()}
        for method in METHODS:
            row = {"tasks": n_tasks, "method": method, "ours_ms": medians[(method, "ours")] * 1e3}
            row["ours_vs_equal"] = _paired(times, (method, "ours"), ("equal", "ours"))
            for impl in ("LibMTL", "torchjd"):
                key = impl.lower()
                if (method, impl) in medians:
                    row[f"{key}_ms"] = medians[(method, impl)] * 1e3
                    row[f"{key}_over_ours"] = _paired(times, (method, impl), (method, "ours"))
                    row[f"{key}_agree"] = (
                        None
                        if method in RANDOM
                        else float(F.cosine_similarity(grads[(method, impl)], grads[(method, "ours")], dim=0))
                    )
                else:
                    row[f"{key}_ms"] = row[f"{key}_over_ours"] = row[f"{key}_agree"] = None
            rows.append(row)
        print(
            f"T={n_tasks} done: " + ", ".join(f"{r['method']} {r['ours_ms']:.0f} ms" for r in rows[-len(METHODS) :]),
            flush=True,
        )
        del steps, grads, times

    def cell(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    print(
        f"balancer step (fwd + balance + SGD), hard sharing resnet_small 32x32, batch {args.batch}, "
        f"{args.threads} threads, torch {torch.__version__}; LibMTL {lib_version}; torchjd {jd_version}; "
        f"ms: median of {args.repeats} interleaved rounds, ratios: median of per-round ratios"
    )
    header = (
        f"{'T':>2} {'method':<14} {'ours ms':>8} {'x equal':>7} | {'LibMTL ms':>9} {'/ours':>6} {'agree':>6} |"
        f" {'torchjd ms':>10} {'/ours':>6} {'agree':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['tasks']:>2} {r['method']:<14} {r['ours_ms']:>8.1f} {r['ours_vs_equal']:>7.2f} |"
            f" {cell(r['libmtl_ms'], '9.1f'):>9} {cell(r['libmtl_over_ours'], '6.2f'):>6}"
            f" {cell(r['libmtl_agree'], '6.3f'):>6} |"
            f" {cell(r['torchjd_ms'], '10.1f'):>10} {cell(r['torchjd_over_ours'], '6.2f'):>6}"
            f" {cell(r['torchjd_agree'], '6.3f'):>6}"
        )
    targets = _targets(rows)
    for name, ok in targets.items():
        print(f"target {name}: {'met' if ok else 'NOT met' if ok is not None else 'not measured'}")
    report = {
        "benchmark": "balancers",
        "batch": args.batch,
        "threads": args.threads,
        "repeats": args.repeats,
        "libmtl": lib_version,
        "torchjd": jd_version,
        "rows": rows,
        "targets": targets,
    }
    report = write_report(args.out, report)
    return report


def _targets(rows: list[dict]) -> dict[str, bool | None]:
    by = {(r["tasks"], r["method"]): r for r in rows}
    ub4 = by.get((4, "mgda-ub"))
    out: dict[str, bool | None] = {
        "MGDA-UB <= 1.15x equal at T=4": None if ub4 is None else ub4["ours_vs_equal"] <= 1.15
    }
    for method in ("mgda", "pcgrad"):
        ratios = [
            by[(t, method)][f"{peer}_over_ours"] for t in (4, 8) if (t, method) in by for peer in ("libmtl", "torchjd")
        ]
        measured = [r for r in ratios if r is not None]
        out[f"{method} faster than both peers at T=4, 8"] = (
            None if len(measured) < 4 else all(r > 1.0 for r in measured)
        )
    at8 = [by[(8, m)] for m in LOSS_WEIGHTING if (8, m) in by]
    out["loss weighting <= 1.15x equal at T=8 (FAMO <= 1.5x: its extra forward pass)"] = (
        None if not at8 else all(r["ours_vs_equal"] <= (1.5 if r["method"] == "famo" else 1.15) for r in at8)
    )
    return out


if __name__ == "__main__":
    main()
