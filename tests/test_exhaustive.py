import dataclasses
import json

import optuna
import pytest

from nas_mtl.data import create_dataset
from nas_mtl.graph import SKIP, enumerate_trees
from nas_mtl.search.branching import BranchSearchConfig, branch_search
from nas_mtl.search.exhaustive import (
    TABLE,
    ExhaustiveConfig,
    ScoreTable,
    candidate_graphs,
    count_candidates,
    count_trees,
    exhaustive_search,
    score_header,
)
from nas_mtl.search.proxy import Proxy, ProxyConfig, graph_key
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
PROXY = ProxyConfig(warmstart=TINY, finetune=dataclasses.replace(TINY, epochs=2), reference="hard")
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
    assert len(ScoreTable(tmp_path / TABLE, score_header(shapes[0].task_names, shapes[1], PROXY, "trees"))) == 12


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
    table = ScoreTable(run_dir / TABLE, score_header(shapes[0].task_names, shapes[1], PROXY, "trees"))
    config = BranchSearchConfig(
        proxy=PROXY, n_trials=12, sampler="bruteforce", pruner="none", storage=f"journal:{tmp_path / 'j.journal'}"
    )
    found = branch_search(*shapes, config, tmp_path, scorer=table)
    assert found.info["trials"]["trees_scored"] == 12
    assert found.graph.meta["delta_m"] == result.graph.meta["delta_m"]  # regret 0 (ties: any best tree)
    assert table.scores[graph_key(found.graph)].delta_m == result.info["ranking"][0]["delta_m"]
