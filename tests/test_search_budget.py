"""Budgets in hard-sharing trainings, the rsa warm start and the retrained shortlist of the branch search."""

from __future__ import annotations

import dataclasses

import numpy as np
import optuna
import pytest
from test_branching import PROXY, StubScorer, _config, _study, shapes  # noqa: F401  (fixture)

from nas_mtl.balancing import create_balancer
from nas_mtl.baselines import primary_directions, train_graph
from nas_mtl.graph import SharingGraph
from nas_mtl.metrics import delta_m
from nas_mtl.network import MultiTaskNetwork
from nas_mtl.search.branching import BranchSearchConfig, branch_search, spent_budget
from nas_mtl.search.budget import CostModel
from nas_mtl.search.proxy import graph_from_key, graph_key
from nas_mtl.search.shortlist import retrain_shortlist

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _macs(graph, data, space) -> int:
    return MultiTaskNetwork.from_tasks(graph, space.backbone, data.tasks).cost().macs


def test_costs_are_macs_times_passes_relative_to_one_hard_sharing_training(shapes):  # noqa: F811
    data, space, _ = shapes
    costs = CostModel(data, space, unit_epochs=4)
    hard = space.hard_sharing(data.task_names)
    independent = space.independent(data.task_names)
    n, nv = len(data.train), len(data.val)
    assert costs.training(hard, 4) == pytest.approx(1.0, rel=1e-12)
    ratio = _macs(independent, data, space) / _macs(hard, data, space)
    assert ratio > 1.5  # three task copies of every block but the heads
    assert costs.training(independent, 2) == pytest.approx(ratio * 2 / 4, rel=1e-12)
    # 32 of the 96 training samples for 4 epochs, validated after each: (3 * 32 + 48) / (3 * 96 + 48) of a unit
    assert costs.training(hard, 4, 32) == pytest.approx((3 * 32 + nv) / (3 * n + nv), rel=1e-12)
    singles = sum(
        _macs(SharingGraph.hard_sharing([t], space.layers, space.skippable), data, space) for t in data.task_names
    )
    assert costs.singles(4) == pytest.approx(singles / _macs(hard, data, space), rel=1e-12)
    scratch = dataclasses.replace(PROXY, inherit=False, subset=0.5)  # references: hard sharing, 2 epochs, 48 samples
    assert costs.proxy_setup(scratch) == pytest.approx(2 / 4 * (3 * 48 + nv) / (3 * n + nv), rel=1e-12)
    assert costs.proxy_setup(PROXY) == pytest.approx(1 / 4, rel=1e-12)  # the 1-epoch warm start; reference hard


@pytest.mark.parametrize("shortlist", [0, 2])
def test_a_budget_ends_the_search_at_the_first_tree_that_does_not_fit(shapes, tmp_path, shortlist, capfd):  # noqa: F811
    data, space, _ = shapes
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget = 12.0
    config = _config(tmp_path, n_trials=200, sampler="random", budget=budget, shortlist=shortlist, shortlist_epochs=1)
    branch_search(data, space, config, tmp_path / "run", scorer=StubScorer())
    study = _study(config)
    trials = sorted(study.trials, key=lambda t: t.number)
    costs = CostModel(data, space, 1)
    hard_macs = _macs(space.hard_sharing(data.task_names), data, space)
    setup = 1 / 1  # PROXY: a 1-epoch hard-sharing warm start, reference hard (no references trained)
    scored = [t for t in trials if "cost" in t.user_attrs]
    for t in scored:  # each tree: 2 fine-tuning epochs on every sample, relative to a 1-epoch hard sharing
        graph = graph_from_key(t.user_attrs["key"], data.task_names, space.layers)
        assert t.user_attrs["cost"] == pytest.approx(2 * _macs(graph, data, space) / hard_macs, rel=1e-12)
    spent = setup + sum(t.user_attrs["cost"] for t in scored)
    assert spent_budget(study) == pytest.approx(spent, rel=1e-12)
    over = [t for t in trials if t.user_attrs.get("over_budget")]
    assert len(over) == 1 and over[0].number == trials[-1].number < 199  # it stopped there, not at n_trials
    done = [t for t in scored if t.state == optuna.trial.TrialState.COMPLETE]
    best = []
    for t in sorted(done, key=lambda t: (-t.values[0], t.number)):
        if t.user_attrs["key"] not in best:
            best.append(t.user_attrs["key"])
    reserve = sum(costs.training(graph_from_key(k, data.task_names, space.layers), 1) for k in best[:shortlist])
    graph = graph_from_key(over[0].user_attrs["key"], data.task_names, space.layers)
    assert spent + reserve <= budget
    assert spent + 2 * _macs(graph, data, space) / hard_macs + reserve > budget
    err = capfd.readouterr().err
    assert "_OverBudget" not in err and f"Trial {over[0].number} failed" not in err  # an end, not an error


def test_the_rsa_warm_start_splits_the_rsa_groups_at_every_branchable_layer(shapes, tmp_path):  # noqa: F811
    from nas_mtl.search.affinity import AffinityConfig, affinity_search

    data, space, _ = shapes
    config = _config(tmp_path, n_trials=4, sampler="random", warm_start=("rsa",))
    branch_search(data, space, config, tmp_path / "run", scorer=StubScorer())
    trials = sorted(_study(config).trials, key=lambda t: t.number)
    rsa = AffinityConfig(train=PROXY.warmstart, measures=("rsa",), plots=False)
    groups = affinity_search(data, space, rsa, tmp_path / "again").info["measures"]["rsa"]["groups"]
    expected: dict[str, str] = {}
    for layer in space.branchable:
        tree = SharingGraph.from_groups(data.task_names, space.layers, groups, space.layers.index(layer))
        expected.setdefault(graph_key(tree), f"rsa@{layer}")
    warm = [t for t in trials if "warm_start" in t.user_attrs]
    assert [(t.user_attrs["key"], t.user_attrs["warm_start"]) for t in warm] == list(expected.items())
    assert trials[: len(warm)] == warm


def test_the_shortlist_returns_the_best_validation_tree_of_the_proxys_first_places(shapes, tmp_path):  # noqa: F811
    data, space, _ = shapes
    config = _config(tmp_path, n_trials=8, sampler="random", shortlist=3, top_k=5, shortlist_epochs=2)
    searched = branch_search(data, space, dataclasses.replace(config, shortlist=0), tmp_path / "a", scorer=StubScorer())
    result = branch_search(data, space, config, tmp_path / "b", scorer=StubScorer())
    first = [graph_key(g) for g in searched.candidates[:3]]
    assert sorted(row["key"] for row in result.info["shortlist"]) == sorted(first)
    # by hand: each of the three trained with the proxy's fine-tuning settings for 2 epochs, seed 0
    train = dataclasses.replace(PROXY.finetune, epochs=2, seed=0)
    val = [train_graph(g, data, space, train, create_balancer("equal"))[1].val for g in searched.candidates[:3]]
    directions = primary_directions(data)
    reference = {t: {m: float(np.mean([v[t][m] for v in val])) for m in ms} for t, ms in directions.items()}
    scores = [delta_m(v, reference, directions) for v in val]
    by_key = {row["key"]: row["val_delta_m"] for row in result.info["shortlist"]}
    assert [by_key[k] for k in first] == pytest.approx(scores, abs=1e-9)
    assert graph_key(result.graph) == first[int(np.argmax(scores))]
    order = sorted(range(3), key=lambda i: (-scores[i], i))  # ties: the proxy's order
    assert [row["proxy_rank"] for row in result.info["shortlist"]] == [1 + i for i in order]


def test_the_shortlist_passes_over_trees_the_budget_cannot_train(shapes, tmp_path):  # noqa: F811
    data, space, _ = shapes
    result = branch_search(
        data, space, _config(tmp_path, n_trials=6, sampler="random"), tmp_path / "a", scorer=StubScorer()
    )
    costs = CostModel(data, space, 1)
    train = dataclasses.replace(PROXY.finetune, epochs=1)
    prices = [costs.training(g, 1) for g in result.candidates[:3]]
    left = prices[0] + prices[2] + 1e-6 if prices[1] > prices[2] else prices[0] + prices[1] + 1e-6
    chosen = retrain_shortlist(data, space, result, 3, train, tmp_path / "s", costs=costs, budget=left)
    trained = {row["key"] for row in chosen.info["shortlist"]}
    assert graph_key(result.candidates[0]) in trained and len(trained) == 2
    assert chosen.info["shortlist_cost"] <= left
    alone = retrain_shortlist(data, space, result, 3, train, tmp_path / "t", costs=costs, budget=prices[0])
    assert alone is result  # one tree fits: nothing to choose between, the proxy's first place stands


def test_budget_and_shortlist_settings_are_checked():
    with pytest.raises(ValueError, match="budget must be a finite number > 0"):
        BranchSearchConfig(budget=0)
    with pytest.raises(ValueError, match="shortlist .* at most top_k"):
        BranchSearchConfig(shortlist=6, top_k=5)
    with pytest.raises(ValueError, match="shortlist_epochs must be an integer >= 1"):
        BranchSearchConfig(shortlist_epochs=0)


def test_a_budget_too_small_for_one_tree_is_refused_before_anything_trains(shapes, tmp_path):  # noqa: F811
    data, space, _ = shapes
    costs = CostModel(data, space, 1)
    hard = space.hard_sharing(data.task_names)
    # by hand: the 1-epoch warm start (1 unit) + hard sharing's 2-epoch proxy score (2) + its 1-epoch retrain (1)
    assert costs.proxy_setup(PROXY) + costs.proxy_trial(hard, PROXY) + costs.training(hard, 1) == pytest.approx(4.0)
    config = _config(tmp_path, n_trials=5, budget=3.9, shortlist=1, shortlist_epochs=1)
    with pytest.raises(ValueError, match=r"budget 3.9 hard-sharing trainings .* needs at least 4.00"):
        branch_search(data, space, config, tmp_path / "run")  # the real proxy: it would train first
    assert not (tmp_path / "run" / "warmstart").exists()


def test_the_rsa_warm_start_needs_a_branchable_layer(shapes, tmp_path):  # noqa: F811
    data, space, _ = shapes
    flat = dataclasses.replace(space, branchable=())
    with pytest.raises(ValueError, match="warm_start: search space .* has no branchable layer"):
        branch_search(
            data, flat, _config(tmp_path, n_trials=3, warm_start=("rsa",)), tmp_path / "r", scorer=StubScorer()
        )
