import dataclasses
import json
import shutil

import numpy as np
import optuna
import pytest
from scipy.stats import spearmanr

from nas_mtl.data import create_dataset
from nas_mtl.graph import SKIP, SharingGraph, enumerate_trees
from nas_mtl.search.branching import BranchSearchConfig, branch_search
from nas_mtl.search.ceiling import noise_ceiling
from nas_mtl.search.exhaustive import (
    TABLE,
    TABLE_FORMAT,
    ExhaustiveConfig,
    ScoreTable,
    candidate_graphs,
    count_candidates,
    count_trees,
    exhaustive_search,
    score_header,
)
from nas_mtl.search.proxy import Proxy, ProxyConfig, Score, graph_key
from nas_mtl.search.quality import SeededTruth, minus_random_median
from nas_mtl.space import load_search_space
from nas_mtl.train import TrainConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACE = """
format = "nas_mtl.search_space/1"
[backbone]
name = "resnet_small"
widths = [4]
depths = [2]
[layers]
branchable = ["s0.b0", "s0.b1"]
skippable = "auto"
"""
TINY = TrainConfig(epochs=1, batch_size=32, device="cpu", progress=False)
PROXY = ProxyConfig(
    warmstart=TINY, finetune=dataclasses.replace(TINY, epochs=2), reference="hard", inherit=True, subset=1.0
)
EXHAUSTIVE = ExhaustiveConfig(proxy=PROXY)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "tiny.toml"
    path.write_text(SPACE)
    data = create_dataset("shapes", n_train=96, n_val=48, n_test=32, size=16, tasks="quadrant,orientation,hue")
    return data, load_search_space(path, input_shape=data.input_shape)


@pytest.fixture(scope="module")
def scored(shapes, tmp_path_factory):
    """The tiny space's 12 trees, all scored once (shared by the tests that only read the result)."""
    run_dir = tmp_path_factory.mktemp("exhaustive")
    return exhaustive_search(*shapes, EXHAUSTIVE, run_dir), run_dir


@pytest.mark.parametrize("n_tasks", [1, 2, 3, 4])
@pytest.mark.parametrize("n_branchable", [0, 1, 2, 3])
def test_count_trees_matches_enumeration(n_tasks, n_branchable):
    tasks = [f"t{i}" for i in range(n_tasks)]
    layers = ["stem"] + [f"b{i}" for i in range(n_branchable)]
    assert count_trees(n_tasks, n_branchable) == sum(1 for _ in enumerate_trees(tasks, layers, layers[1:]))


def test_every_policy_once(shapes):
    data, space = shapes
    policies = list(candidate_graphs(data.task_names, space, "policies"))
    assert len(policies) == len(set(policies)) == count_candidates(3, space, "policies") == 2 ** (2 * 3)
    for g in policies:  # the stem (not skippable) always runs; every copy is the one shared block
        assert SKIP not in g.assignment[0] and all(c in (0, SKIP) for row in g.assignment for c in row)


def test_best_is_the_top_score_and_matches_a_direct_evaluation(shapes, scored):
    result, run_dir = scored
    ranking = result.info["ranking"]
    assert result.info["n_candidates"] == len(ranking) == 12
    data, space = shapes
    trees = enumerate_trees(data.task_names, space.layers, space.branchable)
    assert {r["key"] for r in ranking} == {graph_key(g) for g in trees}
    assert graph_key(result.graph) == ranking[0]["key"]
    assert result.graph.meta["delta_m"] == ranking[0]["delta_m"] == max(r["delta_m"] for r in ranking)
    proxy = Proxy.prepare(*shapes, PROXY, run_dir)  # reloads the warm start: the same proxy
    assert proxy.score(result.graph).delta_m == ranking[0]["delta_m"]


def test_killed_run_resumes_scoring_only_the_rest(shapes, tmp_path, monkeypatch):
    calls = []
    real = Proxy.score

    def dying(self, graph, report=None):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(graph_key(graph))
        return real(self, graph, report)

    monkeypatch.setattr(Proxy, "score", dying)
    with pytest.raises(KeyboardInterrupt):
        exhaustive_search(*shapes, EXHAUSTIVE, tmp_path)
    with (tmp_path / TABLE).open("a") as fh:
        fh.write('{"key": "0.0.0/0.1')  # the line being written when the process died
    done = list(calls)
    calls.clear()
    monkeypatch.setattr(
        Proxy, "score", lambda self, graph, report=None: calls.append(graph_key(graph)) or real(self, graph, report)
    )
    result = exhaustive_search(*shapes, EXHAUSTIVE, tmp_path)
    assert len(calls) == 12 - 5 and not set(calls) & set(done)
    assert len(result.info["ranking"]) == 12
    assert len(ScoreTable(tmp_path / TABLE, score_header(shapes[0], shapes[1], PROXY, "trees"))) == 12


def test_rerun_with_another_proxy_is_refused(shapes, scored):
    _, run_dir = scored
    other = ExhaustiveConfig(proxy=dataclasses.replace(PROXY, subset=0.5))
    with pytest.raises(ValueError, match="proxy"):
        exhaustive_search(*shapes, other, run_dir)


def test_large_spaces_are_refused(shapes, tmp_path):
    with pytest.raises(ValueError, match="limit"):
        exhaustive_search(*shapes, ExhaustiveConfig(proxy=PROXY, kind="policies", limit=10), tmp_path)
    with pytest.raises(ValueError, match="kind"):
        exhaustive_search(*shapes, ExhaustiveConfig(proxy=PROXY, kind="forests"), tmp_path)


def test_policies_are_scored_with_the_same_proxy(tmp_path):
    data = create_dataset("shapes", n_train=64, n_val=32, n_test=32, size=16, tasks="quadrant,hue")
    (tmp_path / "tiny.toml").write_text(SPACE)
    space = load_search_space(tmp_path / "tiny.toml", input_shape=data.input_shape)
    result = exhaustive_search(data, space, ExhaustiveConfig(proxy=PROXY, kind="policies"), tmp_path / "run")
    assert len(result.info["ranking"]) == 16
    assert result.graph in set(candidate_graphs(data.task_names, space, "policies"))
    lines = (tmp_path / "run" / TABLE).read_text().splitlines()
    assert json.loads(lines[0])["kind"] == "policies" and len(lines) == 17


def test_bruteforce_search_over_the_table_finds_the_exhaustive_best(shapes, scored, tmp_path):
    """A stored table replays as a scorer: an Optuna search over it has regret 0 once it has seen every tree."""
    result, run_dir = scored
    table = ScoreTable(run_dir / TABLE, score_header(shapes[0], shapes[1], PROXY, "trees"))
    config = BranchSearchConfig(
        proxy=PROXY, n_trials=12, sampler="bruteforce", pruner="none", storage=f"journal:{tmp_path / 'j.journal'}"
    )
    found = branch_search(*shapes, config, tmp_path, scorer=table)
    assert found.info["trials"]["trees_scored"] == 12
    assert found.graph.meta["delta_m"] == result.graph.meta["delta_m"]  # regret 0 (ties: any best tree)
    assert table.scores[graph_key(found.graph)].delta_m == result.info["ranking"][0]["delta_m"]


def _file_scores(path):
    """{(seed, key): Δm} read straight from a score table's lines (version 1 lines: seed 0)."""
    entries = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    return {(e.get("seed", 0), e["key"]): e["score"]["delta_m"] for e in entries}


@pytest.fixture(scope="module")
def seeded(shapes, scored, tmp_path_factory):
    """The 12 trees under 3 seeds, in a copy of the single-seed run (whose scores are seed 0's)."""
    run_dir = tmp_path_factory.mktemp("seeded")
    shutil.copytree(scored[1], run_dir, dirs_exist_ok=True)
    return exhaustive_search(*shapes, dataclasses.replace(EXHAUSTIVE, seeds=3), run_dir), run_dir


def test_seeded_truth_is_the_seed_mean_with_its_standard_error(scored, seeded):
    result, run_dir = seeded
    kept = _file_scores(run_dir / TABLE)
    assert len(kept) == 3 * 12
    for row in result.info["ranking"]:
        per_seed = np.array([kept[(seed, row["key"])] for seed in range(3)])
        assert row["delta_m_seeds"] == per_seed.tolist()
        assert row["delta_m"] == pytest.approx(per_seed.mean(), rel=4 * np.finfo(float).eps, abs=1e-12)
        assert row["delta_m_se"] == pytest.approx(per_seed.std(ddof=1) / np.sqrt(3), rel=1e-12, abs=1e-12)
    means = [r["delta_m"] for r in result.info["ranking"]]
    assert means == sorted(means, reverse=True) and result.graph.meta["delta_m"] == means[0]
    single = {r["key"]: r["delta_m"] for r in scored[0].info["ranking"]}
    assert all(kept[(0, key)] == value for key, value in single.items())  # seed 0 is the single-seed table
    assert any(kept[(0, key)] != kept[(1, key)] for key in single)  # the seeds differ
    assert result.info["noise_ceiling"]["seeds"] == 3 and result.info["noise_ceiling"]["candidates"] == 12


def test_seed_i_moves_both_the_warm_start_and_the_fine_tuning_seed(shapes, seeded, tmp_path):
    result, run_dir = seeded
    moved = dataclasses.replace(
        PROXY,
        warmstart=dataclasses.replace(PROXY.warmstart, seed=PROXY.warmstart.seed + 2),
        finetune=dataclasses.replace(PROXY.finetune, seed=PROXY.finetune.seed + 2),
    )
    assert PROXY.seeded(2) == moved
    proxy = Proxy.prepare(*shapes, moved, tmp_path)  # trained afresh in another folder
    assert proxy.score(result.graph).delta_m == _file_scores(run_dir / TABLE)[(2, graph_key(result.graph))]
    table = ScoreTable(run_dir / TABLE, score_header(shapes[0], shapes[1], PROXY, "trees"), seed=2)
    assert table.score(result.graph).delta_m == proxy.score(result.graph).delta_m  # a replay of seed 2


def test_more_seeds_score_only_the_new_seed_and_a_killed_seed_resumes(shapes, seeded, tmp_path, monkeypatch):
    _, run_dir = seeded
    shutil.copytree(run_dir, tmp_path, dirs_exist_ok=True)
    calls = []
    real = Proxy.score

    def dying(self, graph, report=None):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(graph_key(graph))
        return real(self, graph, report)

    monkeypatch.setattr(Proxy, "score", dying)
    with pytest.raises(KeyboardInterrupt):
        exhaustive_search(*shapes, dataclasses.replace(EXHAUSTIVE, seeds=4), tmp_path)
    calls.clear()
    monkeypatch.setattr(
        Proxy, "score", lambda self, graph, report=None: calls.append(graph_key(graph)) or real(self, graph, report)
    )
    result = exhaustive_search(*shapes, dataclasses.replace(EXHAUSTIVE, seeds=4), tmp_path)
    assert len(calls) == 12 - 4 and len(result.info["ranking"]) == 12
    assert {seed for seed, _ in _file_scores(tmp_path / TABLE)} == {0, 1, 2, 3}
    fewer = exhaustive_search(*shapes, dataclasses.replace(EXHAUSTIVE, seeds=2), tmp_path)  # a subset: no training
    assert len(calls) == 8 and all(len(r["delta_m_seeds"]) == 2 for r in fewer.info["ranking"])


def test_a_single_seed_table_of_version_1_is_read_as_seed_0(tmp_path):
    path = tmp_path / TABLE
    entry = {"key": "0.0", "score": Score(1.5, (1.5,), {}, {}, 1, 1, 0.1).to_dict()}
    path.write_text(json.dumps({"format": "nas_mtl.exhaustive/1", "kind": "trees"}) + "\n" + json.dumps(entry) + "\n")
    table = ScoreTable(path, {"kind": "trees"})
    assert table.seed_scores(0)["0.0"].delta_m == 1.5 and not table.seed_scores(1)
    assert json.loads(path.read_text().splitlines()[0]) == {"format": TABLE_FORMAT, "kind": "trees"}
    table.add("0.0", Score(2.5, (2.5,), {}, {}, 1, 1, 0.1), seed=1)
    (row,) = ScoreTable(path, {"kind": "trees"}).ranking()
    assert (row.delta_m, row.se) == (2.0, 0.5)  # mean of 1.5 and 2.5; std 1/sqrt(2) over sqrt(2) seeds
    with pytest.raises(ValueError, match="seeds must be an integer >= 1"):
        ExhaustiveConfig(seeds=0)


def test_noise_ceiling_of_an_exact_small_table():
    """4 candidates x 3 seeds; Spearman by hand (1 - 6 sum d^2 / (n (n^2 - 1))): seeds 0/1 0.8, 0/2 0.8, 1/2 0.6."""
    scores = np.array([[1, 2, 1], [2, 1, 2], [3, 3, 4.5], [5, 5, 4]])
    c = noise_ceiling(scores)
    assert (c.candidates, c.seeds) == (4, 3)
    assert c.pairwise_spearman == pytest.approx(11 / 15) and c.pairwise_min == pytest.approx(0.6)
    assert c.split_half == pytest.approx(11 / 15)  # 3 seeds: halves of one seed, the pairs again
    assert c.reliability == pytest.approx(33 / 37)  # 3 r / (1 + 2 r), r = 11/15
    # truth: best = candidate 3 (mean 14/3); seeds 0 and 1 find it; seed 2's best (candidate 2) trails it by
    # (2, 2, -0.5) over the seeds: mean 7/6 > paired standard error sqrt(75/36 / 3) = 5/6, a miss
    assert c.best_hits == pytest.approx(2 / 3) and c.best_regret == pytest.approx(7 / 18)
    shifted = noise_ceiling(scores + np.array([10.0, -3.0, 40.0]))  # a seed moving every candidate alike
    assert shifted.best_hits == c.best_hits and shifted.best_regret == pytest.approx(c.best_regret)
    assert shifted.reliability == pytest.approx(c.reliability)


def test_noise_ceiling_splits_four_seeds_into_every_pair_of_halves():
    scores = np.random.default_rng(0).normal(size=(30, 4)) + np.linspace(0, 3, 30)[:, None]
    splits = [((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2))]
    r = np.mean([spearmanr(scores[:, a].mean(1), scores[:, b].mean(1)).statistic for a, b in splits])
    c = noise_ceiling(scores)
    assert c.split_half == pytest.approx(r, rel=1e-12) and c.reliability == pytest.approx(2 * r / (1 + r), rel=1e-12)
    pairs = [spearmanr(scores[:, a], scores[:, b]).statistic for a in range(4) for b in range(a + 1, 4)]
    assert c.pairwise_spearman == pytest.approx(np.mean(pairs), rel=1e-12) and c.pairwise_min == min(pairs)


def test_identical_seeds_have_a_perfect_ceiling_and_opposite_seeds_none():
    column = np.random.default_rng(1).normal(size=20)
    c = noise_ceiling(np.repeat(column[:, None], 5, axis=1))
    assert c.pairwise_spearman == c.split_half == c.reliability == c.best_hits == 1.0 and c.best_regret == 0.0
    opposite = noise_ceiling(np.stack([column, -column], axis=1))
    assert opposite.split_half == -1.0 and opposite.reliability == 0.0
    assert opposite.best_hits == 1.0 and opposite.best_regret == 0.0  # the truth (mean 0) ties every candidate


@pytest.mark.parametrize("seed", range(5))
def test_noise_ceiling_of_gaussian_tables(seed):
    """Truth N(0, 1) plus seed noise N(0, sigma^2): one seed's Pearson reliability is 1 / (1 + sigma^2), a k-seed
    mean's k r / (1 + (k - 1) r) (classical test theory, exact for Gaussians), and Spearman's correlation of a
    bivariate normal with Pearson rho is 6/pi asin(rho / 2). Margins: >= 4 standard deviations of each estimate
    at 2000 candidates (measured over 200 other generator seeds: 0.008, 0.034, 0.012, 0.009); they hold for
    generator seeds 0-4."""
    rng = np.random.default_rng(seed)
    n, k = 2000, 4
    independent = noise_ceiling(rng.normal(size=(n, k)))
    assert abs(independent.pairwise_spearman) < 0.05 and 0 <= independent.reliability < 0.17
    truth = rng.normal(size=(n, 1))
    noisy = noise_ceiling(truth + rng.normal(size=(n, k)))  # sigma = 1: one seed's r = 1/2, 4 seeds' 4/5
    assert noisy.pairwise_spearman == pytest.approx(6 / np.pi * np.arcsin(0.5 / 2), abs=0.06)
    assert noisy.reliability == pytest.approx(6 / np.pi * np.arcsin(0.8 / 2), abs=0.05)


def test_noise_ceiling_refuses_tables_it_cannot_rank():
    with pytest.raises(
        ValueError, match=r"scores: need a candidates x seeds table with >= 2 of each, got shape \(3, 1\)"
    ):
        noise_ceiling(np.ones((3, 1)))
    with pytest.raises(ValueError, match="scores: every score must be finite"):
        noise_ceiling([[1.0, np.nan], [2.0, 3.0]])


def test_seeded_truth_judges_answers_seed_by_seed():
    """Regret, its paired standard error, rank and hit against numbers computed by hand on a 4 x 3 table."""
    scores = {"a": [1, 2, 1], "b": [2, 1, 2], "c": [3, 3, 4.5], "d": [5, 5, 4]}
    truth = SeededTruth(scores, {"a": 10, "b": 20, "c": 20, "d": 40})
    assert truth.best_key == "d" and truth.seeds == 3
    c = truth.judge("c")  # gaps to d by seed: 2, 2, -0.5: mean 7/6, std sqrt(75/36 / 2) ... / sqrt(3) = 5/6
    assert (c.regret, c.regret_se, c.rank, c.hit, c.hit_within_se) == (
        pytest.approx(7 / 6),
        pytest.approx(5 / 6),
        2,
        0,
        0,
    )
    d = truth.judge("d")
    assert (d.regret, d.regret_se, d.rank, d.hit, d.hit_within_se) == (0, 0, 1, True, True)
    # an answer outside the table (a policy judged against the trees): its own scores under the same seeds
    out = truth.judge("x", [5, 5, 4], params=15)  # d's scores, another graph
    assert out.regret == pytest.approx(0.0) and out.rank == 1 and out.hit_within_se and not out.hit
    assert truth.judge("y", [0, 0, 0], params=1).rank == 5
    # a seed moving every candidate alike changes no regret and no standard error
    moved = SeededTruth({k: np.add(v, [10, -3, 40]) for k, v in scores.items()}, {k: 1 for k in scores})
    assert moved.judge("c").regret == pytest.approx(c.regret) and moved.judge("c").regret_se == pytest.approx(
        c.regret_se
    )
    with pytest.raises(KeyError, match="not in the table"):
        truth.judge("x")
    with pytest.raises(ValueError, match="expected 3 scores"):
        truth.judge("x", [1, 2], params=1)


def test_seeded_truth_random_floors_are_exact_expectations():
    rng = np.random.default_rng(0)
    keys = [f"k{i}" for i in range(40)]
    table = {k: list(rng.normal(size=3) + i / 10) for i, k in enumerate(keys)}
    params = {k: 100 * (1 + i % 4) for i, k in enumerate(keys)}
    truth = SeededTruth(table, params)
    means = {k: np.mean(v) for k, v in table.items()}
    best = max(means.values())
    regret, hit = truth.random_regret()
    assert regret == pytest.approx(np.mean([best - m for m in means.values()])) and hit == 1 / 40
    same = [k for k in keys if params[k] == 200]
    assert truth.random_regret(200)[0] == pytest.approx(np.mean([best - means[k] for k in same]))
    # no tree of 210 parameters: the nearest count (200) is the pool
    assert truth.random_regret(210) == truth.random_regret(200)


def test_minus_random_median_pairs_seeds_and_keeps_the_pool_noise():
    shift = np.array([10.0, -3.0, 40.0])  # what each scoring seed adds to every graph
    pool = np.array([[1.0, 2.0, 0.0], [3.0, 1.0, 2.0], [2.0, 5.0, 1.0]]) + shift  # medians by seed: 2, 2, 1
    answer = np.array([4.0, 3.0, 2.0]) + shift  # minus the medians: 2, 1, 1
    point, (low, high) = minus_random_median([answer, answer], [pool, pool])
    assert point == pytest.approx(4 / 3)
    # the same answer twice: a t interval over answers would have zero width; seeds and pool members still vary
    assert low < point < high and high - low > 0.5
    flat = np.tile(np.array([5.0, 6.0, 7.0]), (4, 1))  # every alternative alike: only the +2 is left
    assert minus_random_median([flat[0] + 2], [flat]) == (pytest.approx(2.0), (pytest.approx(2.0), pytest.approx(2.0)))
    with pytest.raises(ValueError, match="pool must be alternatives x 3 seeds"):
        minus_random_median([answer], [pool[:, :2]])


def test_a_proxy_without_inheritance_scores_a_tree_as_training_it_from_scratch(shapes, tmp_path):
    """inherit=False: a candidate's score is its own training from scratch with the fine-tuning settings (bitwise,
    against train_graph), and the reference is hard sharing trained the same way (its Δm is 0 exactly)."""
    from nas_mtl.baselines import primary_directions, train_graph
    from nas_mtl.metrics import delta_m
    from nas_mtl.search.proxy import Proxy

    data, space = shapes
    config = dataclasses.replace(PROXY, inherit=False, reference="hard")
    proxy = Proxy.prepare(data, space, config, tmp_path)
    assert proxy.network is None and not (tmp_path / "single").exists()
    groups = [list(data.task_names[:1]), list(data.task_names[1:])]
    graph = SharingGraph.from_groups(data.task_names, space.layers, groups, 1)
    score = proxy.score(graph)
    val = train_graph(graph, data, space, config.finetune)[1].val
    hard = train_graph(space.hard_sharing(data.task_names), data, space, config.finetune)[1].val
    assert score.delta_m == delta_m(val, hard, primary_directions(data))
    assert proxy.score(space.hard_sharing(data.task_names)).delta_m == 0.0
