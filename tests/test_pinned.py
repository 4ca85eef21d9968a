"""Refactoring guard: a tiny study (every search method, the baselines, equal weights) gives bitwise the
numbers recorded in ``tests/data/pinned_study.json`` when run in the environment recorded there.

The numbers of a training run depend on the floating-point order (CPU kind, thread count, library versions);
in another environment this test is skipped, naming what differs. Regenerate the file (after a change that is
meant to change numbers, and say so in the commit) with ``python tests/test_pinned.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from nas_mtl.environment import environment
from nas_mtl.study import parse_study, run_study

PINNED = Path(__file__).parent / "data" / "pinned_study.json"
THREADS = 1
SPACE = {
    "backbone": {"name": "resnet_small", "widths": [4], "depths": [3]},
    "layers": {"branchable": ["s0.b1", "s0.b2"], "skippable": ["s0.b1", "s0.b2"]},
}
STUDY = {
    "format": "nas_mtl.study/1",
    "name": "pinned",
    "seeds": [0],
    "search_seeds": [3],
    "balancers": ["equal"],
    "data": {"name": "shapes", "n_train": 96, "n_val": 48, "n_test": 32, "size": 16, "tasks": "quadrant,hue"},
    "train": {"epochs": 1, "batch_size": 32, "device": "cpu"},
    "arms": {"baselines": ["single", "hard"]},
    "search": {
        "adashare": {
            "epochs": 2,
            "warmup_epochs": 1,
            "batch_size": 16,
            "weight_steps": 2,
            "policy_steps": 2,
            "curriculum_speed": 1,
            "num_samples": 4,
            "device": "cpu",
        },
        "branch": {
            "n_trials": 3,
            "sampler": "tpe",
            "inherit": True,
            "subset": 1.0,
            "warmstart_epochs": 1,
            "proxy_epochs": 1,
            "batch_size": 32,
            "reference": "hard",
            "device": "cpu",
        },
        "affinity": {"measure": "lookahead,gradcos", "epochs": 1, "batch_size": 32, "every": 1, "device": "cpu"},
        "exhaustive": {  # two fine-tuning epochs: the per-epoch curve a pruner reads is pinned too
            "inherit": True,
            "subset": 1.0,
            "warmstart_epochs": 1,
            "proxy_epochs": 2,
            "batch_size": 32,
            "reference": "hard",
            "device": "cpu",
        },
    },
}
VOLATILE = ("seconds", "elapsed", "env", "storage", "run_dir", "worker", "cost_in_hard_sharing_epochs")
"""Keys whose values are times or places, not results."""
ENV_KEYS = ("python", "torch", "numpy", "threads", "cpu", "platform")


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not any(s in k for s in VOLATILE)}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def pinned_numbers(tmp: Path) -> dict[str, Any]:
    """Run the tiny study in ``tmp`` (at :data:`THREADS` threads) and return its results without times."""
    lines = ['format = "nas_mtl.search_space/1"']
    for table, values in SPACE.items():  # JSON strings, numbers and lists are TOML too
        lines += [f"[{table}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]
    (tmp / "space.toml").write_text("\n".join(lines) + "\n")
    spec = parse_study({**STUDY, "space": {"name": str(tmp / "space.toml")}}, source="pinned")
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        rows = run_study(spec, tmp / "run")
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


def _env() -> dict[str, Any]:
    env = environment(torch.device("cpu"))
    return {k: env.get(k) for k in ENV_KEYS} | {"threads": THREADS}


def test_a_tiny_study_gives_the_pinned_numbers(tmp_path):
    pinned = json.loads(PINNED.read_text())
    now = _env()
    changed = {k: (pinned["env"].get(k), now[k]) for k in ENV_KEYS if pinned["env"].get(k) != now[k]}
    if changed:
        pytest.skip(f"pinned in another environment ({changed}); regenerate with python {Path(__file__).name}")
    got = pinned_numbers(tmp_path)
    for kind in ("searches", "rows", "curves"):
        assert json.dumps(got[kind], sort_keys=True) == json.dumps(pinned[kind], sort_keys=True), kind


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        numbers = pinned_numbers(Path(tmp))
    PINNED.write_text(json.dumps({"env": _env(), **numbers}, indent=1, sort_keys=True) + "\n")
    print(f"written: {PINNED}", file=sys.stderr)
