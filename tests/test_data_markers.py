"""The markers dataset (nas_mtl/data/markers.py): its images and targets, its planted answer, that the planting is
real, and each search method scored against it."""

import dataclasses

import numpy as np
import optuna
import pytest
import torch

from nas_mtl.baselines import train_graph
from nas_mtl.data import create_dataset, iterate_batches
from nas_mtl.data.markers import (
    CAST_AXIS,
    RED,
    SMALL_BUDGET_ADASHARE,
    marker_side,
    planted_policy,
    planted_tree,
    skips_as_planted,
    splits_as_planted,
)
from nas_mtl.graph import SharingGraph
from nas_mtl.metrics import delta_m
from nas_mtl.search.adashare import AdaShareConfig, adashare_search
from nas_mtl.search.affinity import AffinityConfig, affinity_search
from nas_mtl.search.branching import BranchSearchConfig, branch_search
from nas_mtl.search.proxy import ProxyConfig
from nas_mtl.space import load_search_space
from nas_mtl.train import TrainConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)

SMALL = {"n_train": 200, "n_val": 50, "n_test": 50}
PLANTED = {"n_train": 1024, "n_val": 256, "n_test": 16}
"""The data every planted-structure test below was measured on (16 px)."""
SEEDS = range(5)
SPACE = "shapes_branch4"  # stem + s0.b0, s0.b1 (8 ch, 16 px), s1.b0 (stride 2), s1.b1 (16 ch, 8 px)
TRAIN = TrainConfig(batch_size=64, lr=3e-3, device="cpu")


def _data(seed: int):
    data = create_dataset("markers", seed=seed, **PLANTED)
    return data, load_search_space(SPACE, input_shape=data.input_shape)


def _raw(data, split: str = "train") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x, y = next(iterate_batches(getattr(data, split), len(getattr(data, split)), shuffle=False))
    norm = data.info["normalization"]
    return x * torch.tensor(norm["std"])[:, None, None] + torch.tensor(norm["mean"])[:, None, None], y


# ---------------------------------------------------------------------- the data
def test_markers_is_deterministic_by_seed_and_lays_out_its_tasks():
    a, b, c = (create_dataset("markers", seed=s, **SMALL) for s in (0, 0, 1))
    (xa, ya), (xb, yb), (xc, _) = _raw(a), _raw(b), _raw(c)
    assert torch.equal(xa, xb) and all(torch.equal(ya[k], yb[k]) for k in ya) and not torch.equal(xa, xc)
    assert a.task_names == ("order", "offset", "tint") and a.input_shape == (3, 16, 16)
    assert a.info["planted_groups"] == [["order", "offset"], ["tint"]] and a.info["shallow_tasks"] == ["tint"]
    for task in a.tasks:
        task.validate_target(ya[task.name], 200)
    sub = create_dataset("markers", tasks="tint,order", **SMALL)
    assert sub.task_names == ("tint", "order") and sub.info["planted_groups"] == [["order"], ["tint"]]
    with pytest.raises(ValueError, match=r"dataset 'markers': tasks: unknown \['hue'\]"):
        create_dataset("markers", tasks="hue", **SMALL)
    with pytest.raises(ValueError, match="dataset 'markers': size must be an integer >= 8"):
        create_dataset("markers", size=4)


def test_targets_follow_the_markers_and_the_cast(seed):
    """The red marker's leftmost column (found in the raw pixels) gives ``order`` exactly and ``offset`` up to the
    blue marker covering part of it; the background's mean along the cast axis gives ``tint`` (Pearson r >= 0.9998
    on seeds 0-4, asserted > 0.99: pixel noise averaged over ~240 background pixels)."""
    data = create_dataset("markers", n_train=500, n_val=10, n_test=10, size=16, seed=seed)
    x, y = _raw(data)
    side = marker_side(16)
    red = (x - torch.tensor(RED)[:, None, None]).abs().amax(1) < 1e-6  # exactly red pixels (noise is elsewhere)
    blue = (x - torch.tensor([0.0, 0.0, 1.0])[:, None, None]).abs().amax(1) < 1e-6
    red_col = red.any(1).float().argmax(1)
    blue_col = blue.any(1).float().argmax(1)
    assert torch.equal((red_col > blue_col).long(), y["order"])  # red is never fully covered: columns differ
    scale = data.info["target_scaling"]
    offset = y["offset"][:, 0] * scale["offset"]["std"] + scale["offset"]["mean"]
    visible = ~(red.any(2) & blue.any(2)).any(1)  # markers in disjoint rows: neither covers the other
    assert torch.allclose(offset[visible] * 16, (red_col - blue_col)[visible].float(), atol=1e-4)
    assert bool(visible.float().mean() > 0.5) and side == 3
    background = ~(red | blue)
    mean_rgb = (x * background[:, None]).sum((2, 3)) / background.sum((1, 2))[:, None]
    along = (mean_rgb[:, 0] + mean_rgb[:, 1]) / 2 - mean_rgb[:, 2]  # 2 x the cast; the grey level cancels
    assert tuple(CAST_AXIS) == (1, 1, -1)
    assert np.corrcoef(along.numpy(), y["tint"][:, 0].numpy())[0, 1] > 0.99


def test_planted_answers_by_hand():
    data, space = _data(0)
    tasks = data.task_names
    tree = planted_tree(tasks, space)
    assert [list(r) for r in tree.assignment] == [[0, 0, 0]] + [[0, 0, 1]] * 4
    policy = planted_policy(tasks, space)
    assert (
        policy.describe() == "shared weights, per block: stem–s1.b1: all tasks shared; tint skips s0.b0, s0.b1, s1.b1"
    )
    assert splits_as_planted(tree, space) and splits_as_planted(policy, space)
    assert splits_as_planted(space.independent(tasks), space)  # tint alone; the relational tasks may split too
    assert not splits_as_planted(space.hard_sharing(tasks), space)
    late = SharingGraph.branched(tasks, space.layers, [[tasks]] * 2 + [[["order", "offset"], ["tint"]]] * 3)
    assert not splits_as_planted(late, space)  # one block too late
    assert skips_as_planted(policy) and not skips_as_planted(tree) and not skips_as_planted(space.hard_sharing(tasks))
    all_skip = [[name not in space.skippable] * 3 for name in space.layers]
    assert not skips_as_planted(SharingGraph.from_policy(tasks, space.layers, all_skip, space.skippable))
    with pytest.raises(ValueError, match=r"markers: unknown task\(s\) \['hue'\]"):
        planted_tree(["hue"], space)
    flat = dataclasses.replace(space, branchable=(), skippable=())
    with pytest.raises(ValueError, match="no branchable layer"):
        planted_tree(tasks, flat)
    with pytest.raises(ValueError, match="no skippable layer"):
        planted_policy(tasks, flat)


# ---------------------------------------------------------------------- the planting is real
def test_the_planted_split_and_skips_beat_hard_sharing(seed):
    """Retrained from scratch (8 epochs), the planted tree and the planted policy beat hard sharing.

    Measured on data and training seeds 0-4 at 1 thread (benchmarks/results/planted.json): tint's MAE is 0.37-0.65 x
    hard sharing's with the planted tree and 0.37-0.59 x with the planted policy (asserted < 0.8 x); offset's MAE
    0.67-0.87 x (tree) and 0.68-0.86 x (policy); order's accuracy -0.012 to +0.059 (tree). Δm of the tree against hard
    sharing over the three primary metrics +20 % to +33 % (asserted > +10 %), of the policy +20 % to +34 %.
    """
    data, space = _data(seed)
    config = dataclasses.replace(TRAIN, epochs=8, seed=seed)
    val = {
        name: train_graph(graph, data, space, config)[1].val
        for name, graph in (
            ("hard", space.hard_sharing(data.task_names)),
            ("tree", planted_tree(data.task_names, space)),
            ("policy", planted_policy(data.task_names, space)),
        )
    }
    directions = {t.name: {t.primary_metric: t.metric_directions[t.primary_metric]} for t in data.tasks}
    for planted in ("tree", "policy"):
        assert val[planted]["tint"]["mae"] < 0.8 * val["hard"]["tint"]["mae"], (planted, val)
    assert delta_m(val["tree"], val["hard"], directions) > 10.0, val


# ---------------------------------------------------------------------- each method against the planted answer


def test_adashare_finds_the_planted_skips():
    """AdaShare's policy has tint skip all three skippable blocks while order and offset run some of them.

    Measured on data and search seeds 0-4 at 1 and 2 threads (same policies): 5 of 5; tint's highest select probability
    on any block 0.42, 0.16, 0.09, 0.16, 0.22 (seed 0 is the close one); the relational tasks keep 1-3 blocks each
    (AdaShare's sparsity term lets them drop s0.b0 or s0.b1, which retraining says they need). Asserted: 4 of 5 (one
    seed of margin).
    """
    hits, worst = 0, []
    for seed in SEEDS:
        data, space = _data(seed)
        train = dataclasses.replace(AdaShareConfig().train, epochs=10, batch_size=64, lr=3e-3, seed=seed, device="cpu")
        result = adashare_search(data, space, AdaShareConfig(train=train, **SMALL_BUDGET_ADASHARE))
        hits += skips_as_planted(result.graph)
        worst.append(max(p[data.task_names.index("tint")] for p in result.info["select_prob"]))
    assert hits >= 4, (hits, worst)


def test_branch_search_with_the_real_proxy_finds_the_planted_split(tmp_path):
    """Optuna tree search (TPE + median pruning, 6 trials of 35 trees, warm start 2 epochs, 3 fine-tuning epochs)
    returns a tree in which tint leaves the relational tasks at s0.b0.

    Measured on data and sampler seeds 0-4 at 1 and 2 threads: 5 of 5 (with 4 fine-tuning epochs 5 of 5 at 1 thread
    as well, 4 of 5 when this test was written: seed 4 returned tint with order down to s0.b1, the proxy's
    third-best tree there; scored exhaustively, that proxy's best tree split as planted on all five seeds, and the
    five planted trees held ranks 1-6 of 35; with 2 fine-tuning epochs 4 of 5). Asserted: 3 of 5. A tree drawn
    uniformly splits as planted with probability 5/35 (Optuna's parameterisation draws one with probability 5/12).
    """
    hits = []
    for seed in SEEDS:
        data, space = _data(seed)
        train = dataclasses.replace(TRAIN, seed=seed)
        proxy = ProxyConfig(
            inherit=True,
            subset=1.0,
            warmstart=dataclasses.replace(train, epochs=2),
            finetune=dataclasses.replace(train, epochs=3),
            reference="hard",
        )
        config = BranchSearchConfig(proxy=proxy, n_trials=6, sampler="tpe", pruner="median", seed=seed)
        result = branch_search(data, space, config, tmp_path / f"seed{seed}")
        hits.append(splits_as_planted(result.graph, space))
    assert sum(hits) >= 3, hits


def test_affinity_groups_split_the_planted_task(tmp_path):
    """Lookahead and gradient cosine from one hard-sharing run (4 epochs, measured at every 2nd of its 64 steps),
    k = 2 groups branching at s0.b0.

    Measured on data and training seeds 0-4 at 1 and 2 threads: lookahead gives the planted groups on 5 of 5 seeds
    (asserted 4), gradient cosine on 4 of 5 (seed 2: order+tint | offset; asserted 3). Tint's gradient cosine with
    order and with offset is negative on 9 of the 10 (-0.017 to -0.110; seed 0 with offset: +0.001 / +0.004 at 1 / 2
    threads; mean over seeds and the two tasks -0.042, asserted < -0.01), order's with offset positive on 4 of 5
    (mean +0.28, asserted > 0.1): the conflict the planted split rests on. Measured at every step (twice the cost
    of the run): the same counts, means -0.041 and +0.28.
    """
    exact = {"lookahead": 0, "gradcos": 0}
    tint_cos, pair_cos = [], []
    for seed in SEEDS:
        data, space = _data(seed)
        config = AffinityConfig(
            train=dataclasses.replace(TRAIN, epochs=4, seed=seed),
            measures=("lookahead", "gradcos"),
            k=2,
            every=2,
            plots=False,
        )
        result = affinity_search(data, space, config, tmp_path / f"seed{seed}")
        for measure, info in result.info["measures"].items():
            exact[measure] += splits_as_planted(SharingGraph.from_dict(info["graph"]), space)
        cos = np.array(result.info["measures"]["gradcos"]["matrix"])
        tint_cos += [cos[2, 0], cos[2, 1]]
        pair_cos.append(cos[0, 1])
    assert exact["lookahead"] >= 4 and exact["gradcos"] >= 3, exact
    assert np.mean(tint_cos) < -0.01 and np.mean(pair_cos) > 0.1, (tint_cos, pair_cos)
