import itertools
import json

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nas_mtl.graph import SKIP, GraphError, SharingGraph, canonicalize, enumerate_trees

LAYERS = ("stem", "a", "b", "c")
TASKS = ("x", "y", "z")


# ---------------------------------------------------------------------- strategies
@st.composite
def assignments(draw, max_tasks=4, max_layers=5, allow_skip=True):
    n_t = draw(st.integers(1, max_tasks))
    n_l = draw(st.integers(1, max_layers))
    skippable = draw(st.lists(st.booleans(), min_size=n_l, max_size=n_l)) if allow_skip else [False] * n_l
    rows = []
    for layer in range(n_l):
        choices = st.integers(-1 if skippable[layer] else 0, 6)
        rows.append(draw(st.lists(choices, min_size=n_t, max_size=n_t)))
    tasks = [f"t{i}" for i in range(n_t)]
    layers = [f"l{i}" for i in range(n_l)]
    return tasks, layers, rows, [n for n, s in zip(layers, skippable) if s]


@st.composite
def trees(draw, max_tasks=5, max_layers=5):
    """Random branched trees: each layer refines the previous partition by random splits."""
    n_t = draw(st.integers(1, max_tasks))
    n_l = draw(st.integers(1, max_layers))
    tasks = [f"t{i}" for i in range(n_t)]
    partition = [tasks]
    parts = []
    for _ in range(n_l):
        new = []
        for group in partition:
            labels = draw(st.lists(st.integers(0, 2), min_size=len(group), max_size=len(group)))
            for lab in sorted(set(labels)):
                new.append([t for t, lb in zip(group, labels) if lb == lab])
        partition = new
        parts.append(partition)
    return SharingGraph.branched(tasks, [f"l{i}" for i in range(n_l)], parts)


# ---------------------------------------------------------------------- properties
@given(assignments())
def test_canonicalize_idempotent_and_invariant_to_relabelling(case):
    tasks, layers, rows, skippable = case
    canon = canonicalize(rows)
    assert canonicalize(canon) == canon
    # renaming copies by any injective map per layer gives the same canonical form
    relabelled = [[SKIP if c == SKIP else 100 - 7 * c for c in row] for row in rows]
    assert canonicalize(relabelled) == canon
    g1 = SharingGraph(tasks, layers, rows, skippable)
    g2 = SharingGraph(tasks, layers, relabelled, skippable)
    assert g1 == g2 and hash(g1) == hash(g2)


@given(assignments())
def test_json_round_trip(case):
    tasks, layers, rows, skippable = case
    g = SharingGraph(tasks, layers, rows, skippable, meta={"method": "test", "score": 1.5})
    back = SharingGraph.from_json(g.to_json())
    assert back == g
    assert back.meta == {"method": "test", "score": 1.5}
    assert back.to_dict() == g.to_dict()


@settings(max_examples=60)
@given(trees())
def test_tree_partitions_refine_with_depth(g):
    assert g.is_tree()
    for layer in range(1, g.num_layers):
        coarse = {t: i for i, grp in enumerate(g.partition(layer - 1)) for t in grp}
        for group in g.partition(layer):
            assert len({coarse[t] for t in group}) == 1
    # in a tree, computation sharing == weight sharing: one prefix node per used copy
    nodes = g.prefix_nodes()
    assert len(nodes) == sum(g.copies(layer) for layer in range(g.num_layers))


@given(assignments())
def test_prefix_nodes_are_unique_prefixes(case):
    tasks, layers, rows, skippable = case
    g = SharingGraph(tasks, layers, rows, skippable)
    nodes = g.prefix_nodes()
    expected = {
        tuple(r[j] for r in g.assignment[: layer + 1]) for layer in range(len(layers)) for j in range(len(tasks))
    }
    assert len(nodes) == len(expected)
    for i, n in enumerate(nodes):
        assert n.parent < i  # parents come first
        assert all(g.path(t)[n.layer] == n.copy for t in n.tasks)


# ---------------------------------------------------------------------- constructors
def test_constructors_and_is_tree():
    hard = SharingGraph.hard_sharing(TASKS, LAYERS)
    ind = SharingGraph.independent(TASKS, LAYERS)
    assert hard.is_tree() and ind.is_tree()
    assert [hard.copies(i) for i in range(4)] == [1, 1, 1, 1]
    assert [ind.copies(i) for i in range(4)] == [3, 3, 3, 3]
    tree = SharingGraph.branched(TASKS, LAYERS, [[TASKS], [TASKS], [["x", "y"], ["z"]], [["x"], ["y"], ["z"]]])
    assert tree.assignment == ((0, 0, 0), (0, 0, 0), (0, 0, 1), (0, 1, 2))
    assert tree.partition(2) == (("x", "y"), ("z",))
    groups = SharingGraph.from_groups(TASKS, LAYERS, [["x", "z"], ["y"]], branch_at=2)
    assert groups.assignment == ((0, 0, 0), (0, 0, 0), (0, 1, 0), (0, 1, 0))
    policy = SharingGraph.from_policy(TASKS, LAYERS, [[1, 1, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]], skippable=["a", "c"])
    assert policy.assignment[1] == (0, SKIP, 0)
    # x and y both use copy 0 of block b after different prefixes: weight sharing without a tree
    assert not policy.is_tree()
    merge = SharingGraph(TASKS, LAYERS, [[0, 0, 0], [0, 1, 1], [0, 0, 0], [0, 1, 2]])
    assert not merge.is_tree()


def test_branched_rejects_non_refining_partitions():
    with pytest.raises(GraphError, match=r"partitions\[2\].*refine"):
        SharingGraph.branched(TASKS, LAYERS, [[TASKS], [["x"], ["y", "z"]], [["x", "y"], ["z"]], [["x"], ["y"], ["z"]]])
    with pytest.raises(GraphError, match="in no group"):
        SharingGraph.branched(TASKS, LAYERS, [[["x", "y"]]] * 4)


def test_enumerate_trees_matches_brute_force():
    """Every canonical no-skip assignment that is a tree, found by exhaustive enumeration."""
    tasks, layers = ("a", "b", "c"), ("l0", "l1", "l2")
    brute = set()
    for flat in itertools.product(range(3), repeat=len(tasks) * len(layers)):
        rows = [flat[i * 3 : (i + 1) * 3] for i in range(len(layers))]
        g = SharingGraph(tasks, layers, rows)
        if g.is_tree():
            brute.add(g)
    enumerated = list(enumerate_trees(tasks, layers))
    assert len(enumerated) == len(set(enumerated))  # no duplicates
    assert set(enumerated) == brute
    # branching only after l0: l0 must be shared
    restricted = set(enumerate_trees(tasks, layers, branchable=["l1", "l2"]))
    assert restricted == {g for g in brute if g.copies(0) == 1}


# ---------------------------------------------------------------------- networkx + cost
def test_networkx_view_labels_task_sets():
    g = SharingGraph.from_policy(["x", "y"], ["s", "a", "b"], [[1, 1], [1, 0], [1, 1]], skippable=["a"])
    d = g.to_networkx()
    assert isinstance(d, nx.DiGraph) and nx.is_directed_acyclic_graph(d)
    assert d.edges["input", (0, 0)]["tasks"] == {"x", "y"}
    assert d.edges[(0, 0), (2, 0)]["tasks"] == {"y"} and d.edges[(0, 0), (2, 0)]["skipped"] == ("a",)
    assert d.nodes[(2, 0)]["tasks"] == {"x", "y"}
    assert d.has_edge((2, 0), ("head", "x"))
    for t in ("x", "y"):  # following the edges labelled with t walks exactly t's path
        own = d.edge_subgraph([(u, v) for u, v, ts in d.edges(data="tasks") if t in ts])
        path = nx.shortest_path(own, "input", ("head", t))
        assert path[1:-1] == [(layer, c) for layer, c in enumerate(g.path(t)) if c != SKIP]
        assert own.number_of_edges() == len(path) - 1


def test_cost_counts_copies_and_unique_prefixes():
    params, macs = [10, 20, 30, 40], [1, 2, 3, 4]
    tree = SharingGraph.branched(TASKS, LAYERS, [[TASKS], [TASKS], [["x", "y"], ["z"]], [["x"], ["y"], ["z"]]])
    c = tree.cost(params, macs, head_params={"x": 1, "y": 1, "z": 1}, head_macs={"x": 5, "y": 5, "z": 5})
    assert c.params == 10 + 20 + 2 * 30 + 3 * 40 + 3
    assert c.macs == 1 + 2 + 2 * 3 + 3 * 4 + 15
    # AdaShare policy: one copy of each block (params), but prefixes diverge (MACs)
    policy = SharingGraph.from_policy(["x", "y"], LAYERS, [[1, 1], [1, 0], [1, 1], [1, 1]], skippable=["a"])
    c = policy.cost(params, macs)
    assert c.params == 100
    assert c.macs == 1 + 2 + 2 * 3 + 2 * 4  # b and c run once per distinct prefix
    with pytest.raises(GraphError, match="layer_macs"):
        tree.cost(params, macs[:2])


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"assignment": [[0, 0, 0]] * 3}, "expected 4 rows"),
        ({"assignment": [[0, 0, 0], [0, 0], [0, 0, 0], [0, 0, 0]]}, r"assignment\[1\].*expected 3 entries"),
        ({"assignment": [[0, 0, 0], [0, "1", 0], [0, 0, 0], [0, 0, 0]]}, r"assignment\[1\]\[1\].*task 'y'"),
        ({"assignment": [[0, 0, 0], [0, SKIP, 0], [0, 0, 0], [0, 0, 0]]}, "skip on a non-skippable layer"),
        ({"assignment": [[0, 0, 0], [0, 1.0, 0], [0, 0, 0], [0, 0, 0]]}, "copy index"),
        ({"tasks": ("x", "x", "z")}, "duplicate"),
        ({"tasks": "xyz"}, "tasks: expected a list"),
        ({"skippable": frozenset({"nope"})}, "skippable: unknown layer"),
    ],
)
def test_validation_errors_name_the_field(kwargs, match):
    base = {"tasks": TASKS, "layers": LAYERS, "assignment": [[0, 0, 0]] * 4}
    with pytest.raises(GraphError, match=match):
        SharingGraph(**{**base, **kwargs})


def test_unknown_task_error():
    g = SharingGraph.hard_sharing(TASKS, LAYERS)
    with pytest.raises(GraphError, match="unknown task 'w'"):
        g.path("w")


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.update(format="nas_mtl.sharing_graph/9"), "format"),
        (lambda d: d.pop("assignment"), "missing field 'assignment'"),
        (lambda d: d.update(extra=1), "unknown field"),
        (lambda d: d["layers"].__setitem__(1, {"nom": "a"}), r"layers\[1\]"),
        (lambda d: d["layers"][1].update(skippable="yes"), r"layers\[1\]\.skippable"),
        (lambda d: d["assignment"][2].__setitem__(0, "skip"), r"assignment\[2\]\[0\].*non-skippable"),
        (lambda d: d["assignment"][0].__setitem__(0, None), r"assignment\[0\]\[0\]"),
    ],
)
def test_bad_json_errors_name_file_and_field(tmp_path, mutate, match):
    g = SharingGraph.hard_sharing(TASKS, LAYERS, skippable=["a"])
    d = json.loads(g.to_json())
    mutate(d)
    path = tmp_path / "g.json"
    path.write_text(json.dumps(d))
    with pytest.raises(GraphError, match=match) as err:
        SharingGraph.load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="graph file not found"):
        SharingGraph.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(GraphError, match="not valid JSON"):
        SharingGraph.load(bad)


def test_save_load(tmp_path):
    g = SharingGraph.from_policy(TASKS, LAYERS, [[1, 1, 1], [0, 1, 1], [1, 1, 0], [1, 1, 1]], ["a", "b"])
    assert SharingGraph.load(g.save(tmp_path / "g.json")) == g


def test_describe_names_each_span_of_blocks_with_its_task_groups_and_skips():
    layers = ["stem", "l1", "l2", "l3"]
    tree = SharingGraph.branched(
        ["a", "b", "c"], layers, [[["a", "b", "c"]]] * 2 + [[["a", "b"], ["c"]], [["a"], ["b"], ["c"]]]
    )
    assert tree.describe() == "stem–l1: all tasks shared; l2: a+b | c; l3: a | b | c"
    assert SharingGraph.hard_sharing(["a", "b"], layers).describe() == "stem–l3: all tasks shared"
    select = [[True, True], [True, False], [True, True], [False, True]]
    policy = SharingGraph.from_policy(["a", "b"], layers, select, skippable=layers[1:])
    # b skips l1, so from l1 on the two tasks' computations differ, but they share every block's weights: said so
    assert policy.describe() == "shared weights, per block: stem–l3: all tasks shared; a skips l3; b skips l1"
    rows = ((0, 0, 0), (0, SKIP, 1), (0, 0, 1), (0, 0, 0))
    split = SharingGraph(("a", "b", "c"), tuple(layers), rows, frozenset(layers[1:]))
    assert split.describe() == (
        "shared weights, per block: stem: all tasks shared; l1: a | c; l2: a+b | c; l3: all tasks shared; b skips l1"
    )
