"""Refactoring guard: a tiny study (every search method, the baselines, equal weights) against the numbers recorded in
``tests/data/pinned_study.json``, in two ways.

* **Bitwise**, where the recorded pin key equals this machine's (:func:`pin_key`: what the floating-point results
  depend on besides the settings and seeds -- library versions, torch threads, default dtype, the CPU and the
  instruction sets its kernels are chosen by). Elsewhere this check is skipped, naming what differs.
* **Within the seed spread**, everywhere: each metric of the pinned run must fall in an interval recorded with the
  pin, derived from the same study run at :data:`SPREAD_SEEDS` seeds (see :func:`intervals`).

Regenerate the file (after a change that is meant to change numbers, and say so in the commit) with
``python tests/test_pinned.py``.
"""

from __future__ import annotations

import json
import math
import sys
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import TINY_ADASHARE, TINY_PROXY

from nas_mtl.environment import cpu_model
from nas_mtl.study import parse_study, run_study

PINNED = Path(__file__).parent / "data" / "pinned_study.json"
THREADS = 1
SEED, SEARCH_SEED = 0, 3
"""The pinned run's training and search seeds."""
SPREAD_SEEDS = 20
"""Runs (training seeds 0..19, search seeds 3..22) that the tolerance intervals are derived from."""
ALPHA = 0.01
"""Chance that the tolerance check fails somewhere for a run that is merely another draw (see :func:`intervals`)."""
SPACE = {
    "backbone": {"name": "resnet_small", "widths": [4], "depths": [3]},
    "layers": {"branchable": ["s0.b1", "s0.b2"], "skippable": ["s0.b1", "s0.b2"]},
}
STUDY = {
    "format": "nas_mtl.study/1",
    "name": "pinned",
    "seeds": [SEED],
    "search_seeds": [SEARCH_SEED],
    "balancers": ["equal"],
    "data": {"name": "shapes", "n_train": 96, "n_val": 48, "n_test": 32, "size": 16, "tasks": "quadrant,hue"},
    "train": {"epochs": 1, "batch_size": 32, "device": "cpu"},
    "arms": {"baselines": ["single", "hard"]},
    "search": {
        "adashare": {**TINY_ADASHARE, "num_samples": 4, "device": "cpu"},
        "branch": {**TINY_PROXY, "n_trials": 3, "sampler": "tpe", "device": "cpu"},
        "affinity": {"measure": "lookahead,gradcos", "epochs": 1, "batch_size": 32, "every": 1, "device": "cpu"},
        # two fine-tuning epochs: the per-epoch curve a pruner reads is pinned too
        "exhaustive": {**TINY_PROXY, "proxy_epochs": 2, "device": "cpu"},
    },
}
VOLATILE = ("seconds", "elapsed", "env", "storage", "run_dir", "worker", "cost_in_hard_sharing_epochs")
"""Keys whose values are times or places, not results."""
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512_vnni")
ISA_FLAGS += ("avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")
"""Instruction sets that decide which kernels torch (ATen, oneDNN, MKL) and NumPy's OpenBLAS run, so the order in
which they add: x86 vector widths, fused multiply-add, the AVX-512 and AMX extensions; ARM's NEON and SVE."""


@cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in ``/proc/cpuinfo`` (empty where there is none)."""
    path = Path("/proc/cpuinfo")
    fields: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() not in fields:
                fields[key.strip()] = value.strip()
    return fields


def pin_key() -> dict[str, Any]:
    """What this study's numbers depend on besides its settings and seeds: the versions of the libraries that
    compute them (torch: kernels, and the MKL / oneDNN it ships; NumPy: its OpenBLAS and random generators; SciPy
    and Optuna: the searches' solvers and samplers), the torch threads a reduction is split over, the default
    dtype, and the CPU (vendor and model: the kernel variants MKL and OpenBLAS pick; torch's CPU capability and
    the instruction-set flags: vector widths and FMA). Not the kernel build or the Python version."""
    import optuna
    import scipy

    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return {
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "optuna": optuna.__version__,
        "threads": THREADS,
        "dtype": str(torch.get_default_dtype()),
        "cpu_vendor": info.get("vendor_id") or info.get("CPU implementer") or "unknown",
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa": sorted(flags & set(ISA_FLAGS)),
    }


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not any(s in k for s in VOLATILE)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def pinned_numbers(tmp: Path, seed: int = SEED, search_seed: int = SEARCH_SEED) -> dict[str, Any]:
    """Run the tiny study in ``tmp`` (at :data:`THREADS` threads, training seed ``seed``, search seed
    ``search_seed``) and return its results without times."""
    lines = ['format = "nas_mtl.search_space/1"']
    for table, values in SPACE.items():  # JSON strings, numbers and lists are TOML too
        lines += [f"[{table}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]
    (tmp / "space.toml").write_text("\n".join(lines) + "\n")
    study = {**STUDY, "seeds": [seed], "search_seeds": [search_seed], "space": {"name": str(tmp / "space.toml")}}
    spec = parse_study(study, source="pinned")
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        rows = [row.to_dict() for row in run_study(spec, tmp / "run")]
    finally:
        torch.set_num_threads(before)
    searches = {
        p.parent.parent.name: json.loads(p.read_text())
        for p in sorted((tmp / "run" / "search").glob("*/*/search.json"))
    }
    rows = sorted(rows, key=lambda r: (r["arm"], r["task"] or "", r["balancer"], r["seed"]))
    table = next((tmp / "run" / "search" / "exhaustive").glob("*/scores.jsonl")).read_text().splitlines()[1:]
    curves = {e["key"]: e["score"]["curve"] for e in map(json.loads, table)}
    return _strip({"searches": searches, "rows": rows, "curves": curves})


def metrics(numbers: dict[str, Any]) -> dict[str, float]:
    """The study's results as ``{name: value}``: every metric of every row (``ARM[/TASK]/SPLIT/TASK/METRIC``) and
    every point of the exhaustive search's fine-tuning curves (``curve/TREE/EPOCH``)."""
    out = {}
    for row in numbers["rows"]:
        arm = row["arm"] if row["task"] is None else f"{row['arm']}/{row['task']}"
        for split in ("val", "test"):
            for task, values in row[split].items():
                out |= {f"{arm}/{split}/{task}/{m}": float(v) for m, v in values.items()}
    for key, curve in numbers["curves"].items():
        out |= {f"curve/{key}/{epoch}": float(v) for epoch, v in enumerate(curve)}
    return out


def resolution(name: str) -> float:
    """The smallest change of metric ``name``: one evaluated image (accuracy) or 0 (a continuous number)."""
    if name.startswith("curve/"):
        return 0.0
    split = name.split("/")[-3]
    return 1.0 / STUDY["data"][f"n_{split}"]


def intervals(runs: list[dict[str, float]]) -> dict[str, Any]:
    """Per metric, the interval the pinned run must fall in on any machine, from the same study at several seeds.

    Derivation. On another machine (other kernels, another summation order) the same seeds give numbers that differ
    from the pinned ones by rounding at first; training can amplify that until the run is as different as a run at
    another seed, but no more: the seeds draw the initialisation, the batch order and the searches' samples, of
    which rounding perturbs only the last bits. So the worst case is a fresh draw from the seed distribution, and
    the interval is the Student-t prediction interval of one new draw from ``n`` runs at seeds 0..n-1:
    ``mean ± t(1 - α'/2; n-1) · sd · sqrt(1 + 1/n)``, Bonferroni-corrected (α' = :data:`ALPHA` / number of metrics),
    so that a run which is merely another draw fails anywhere with probability at most :data:`ALPHA` (under
    normality), widened by the metric's resolution (one image of the evaluation split: an accuracy that no seed
    moved can still move by one image). A refactoring that changes what is computed moves the metrics by more
    than the seed spread, or changes which metrics there are. The worst case is far: at 2 torch threads (another
    summation order) all 30 metrics of this study equal the 1-thread pin (measured on the pinning machine).
    """
    from scipy.stats import t as student_t

    names = sorted(runs[0])
    if any(sorted(r) != names for r in runs):
        raise ValueError("the seeds' runs have different metrics")
    n = len(runs)
    quantile = float(student_t.ppf(1 - ALPHA / len(names) / 2, n - 1))
    out = {}
    for name in names:
        values = np.array([r[name] for r in runs])
        mean, sd = float(values.mean()), float(values.std(ddof=1))
        half = quantile * sd * math.sqrt(1 + 1 / n) + resolution(name)
        out[name] = {"mean": mean, "sd": sd, "interval": [mean - half, mean + half]}
    return {"seeds": n, "alpha": ALPHA, "t": quantile, "metrics": out}


@pytest.fixture(scope="module")
def pinned_run(tmp_path_factory) -> dict[str, Any]:
    """The study at the pinned seeds, run once for both checks."""
    return pinned_numbers(tmp_path_factory.mktemp("pinned"))


@pytest.fixture(scope="module")
def pinned() -> dict[str, Any]:
    return json.loads(PINNED.read_text())


def test_a_tiny_study_gives_the_pinned_numbers_bitwise(pinned_run, pinned):
    now = pin_key()
    changed = {k: (pinned["key"].get(k), v) for k, v in now.items() if pinned["key"].get(k) != v}
    if changed:
        pytest.skip(f"pinned on another machine or libraries ({changed}); regenerate with python {Path(__file__).name}")
    for kind in ("searches", "rows", "curves"):
        assert json.dumps(pinned_run[kind], sort_keys=True) == json.dumps(pinned[kind], sort_keys=True), kind


def test_a_tiny_study_gives_numbers_within_the_seed_spread(pinned_run, pinned):
    """Runs on every machine (see :func:`intervals`)."""
    got = metrics(pinned_run)
    recorded = pinned["tolerance"]["metrics"]
    assert sorted(got) == sorted(recorded)
    outside = {
        name: (value, recorded[name]["interval"])
        for name, value in got.items()
        if not recorded[name]["interval"][0] <= value <= recorded[name]["interval"][1]
    }
    assert not outside, outside


if __name__ == "__main__":
    import tempfile

    runs = []
    for k in range(SPREAD_SEEDS):
        with tempfile.TemporaryDirectory() as tmp:
            numbers = pinned_numbers(Path(tmp), SEED + k, SEARCH_SEED + k)
        if k == 0:
            pin = numbers
        runs.append(metrics(numbers))
        print(f"seed {SEED + k}: done", file=sys.stderr)
    record = {"key": pin_key(), **pin, "tolerance": intervals(runs)}
    PINNED.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"written: {PINNED}", file=sys.stderr)
