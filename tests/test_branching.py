import dataclasses
import json
import subprocess
import sys
import threading
import time
import warnings

import optuna
import pytest

from nas_mtl.data import create_dataset
from nas_mtl.graph import SharingGraph, enumerate_trees
from nas_mtl.search.branching import (
    SAMPLERS,
    STUDY_ATTR,
    BranchSearchConfig,
    Setup,
    TreeObjective,
    branch_search,
    create_branch_study,
    open_storage,
    run_worker,
    suggest_tree,
    tree_params,
)
from nas_mtl.search.proxy import Proxy, ProxyConfig, Score, graph_from_key, graph_key
from nas_mtl.space import load_search_space
from nas_mtl.train import TrainConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)

TASKS = ("a", "b", "c")
LAYERS = ("l0", "l1", "l2")
SPACE = """
format = "nas_mtl.search_space/1"
[backbone]
name = "resnet_small"
widths = [4]
depths = [3]
[layers]
branchable = ["s0.b0", "s0.b1", "s0.b2"]
skippable = "none"
"""
DATA = {"n_train": 96, "n_val": 48, "n_test": 32, "size": 16, "tasks": "quadrant,orientation,hue"}
TINY = TrainConfig(epochs=1, batch_size=32, device="cpu", progress=False)
PROXY = ProxyConfig(
    warmstart=TINY, finetune=dataclasses.replace(TINY, epochs=2), reference="hard", inherit=True, subset=1.0
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "tiny.toml"
    path.write_text(SPACE)
    data = create_dataset("shapes", **DATA)
    return data, load_search_space(path, input_shape=data.input_shape), path


class StubScorer:
    """Deterministic fake proxy: Δm rewards splitting the last task off early, params = block copies in use."""

    def __init__(self, epochs: int = 3) -> None:
        self.calls: list[str] = []
        self.epochs = epochs

    def score(self, graph, report=None):
        key = graph_key(graph)
        self.calls.append(key)
        copies = sum(graph.copies(layer) for layer in range(graph.num_layers))
        first, last = graph.path(graph.tasks[0]), graph.path(graph.tasks[-1])
        alone = sum(a != b for a, b in zip(first, last))
        final = 2.0 * alone - 0.5 * copies + 0.01 * (sum(map(ord, key)) % 7)
        curve = tuple(final * (e + 1) / self.epochs for e in range(self.epochs))
        for epoch, value in enumerate(curve[:-1], start=1):
            if report is not None:
                report(epoch, value)
        return Score(final, curve, {}, {}, copies, 10 * copies, 0.0)


class FirstChoiceSampler(optuna.samplers.RandomSampler):
    """Always picks the first category: every trial draws the same tree (hard sharing)."""

    def sample_independent(self, study, trial, param_name, param_distribution):
        return param_distribution.choices[0]


def _config(tmp_path, **kw) -> BranchSearchConfig:
    return BranchSearchConfig(**{"proxy": PROXY, "storage": f"journal:{tmp_path / 'study.journal'}", **kw})


def _study(config: BranchSearchConfig) -> optuna.Study:
    return optuna.load_study(study_name=config.study_name, storage=open_storage(config.storage))


# ---------------------------------------------------------------------- parameterisation
@pytest.mark.parametrize("branchable", [LAYERS, ("l1", "l2"), ("l0",), ()])
def test_every_tree_is_reached_exactly_once(branchable):
    graphs = []

    def objective(trial):
        graphs.append(suggest_tree(trial, TASKS, LAYERS, branchable))
        return 0.0

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(sampler=optuna.samplers.BruteForceSampler(seed=0))
    study.optimize(objective)
    expected = set(enumerate_trees(TASKS, LAYERS, branchable))
    assert len(graphs) == len(set(graphs)) == len(expected)  # injective: no two assignments, one tree
    assert set(graphs) == expected  # surjective: every tree reachable
    assert all(g.is_tree() for g in graphs)


def test_each_parameter_name_keeps_one_distribution():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    study.optimize(lambda t: suggest_tree(t, ("a", "b", "c", "d"), LAYERS, LAYERS) and 0.0, n_trials=60)
    seen = {}
    for trial in study.trials:
        for name, dist in trial.distributions.items():
            assert seen.setdefault(name, dist) == dist, name


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"n_trials": 0}, "n_trials"),
        ({"objectives": ("params",)}, "objectives"),
        ({"objectives": ("delta_m", "flops")}, "objectives"),
        ({"sampler": "cmaes"}, "sampler"),
        ({"pruner": "asha"}, "pruner"),
        ({"objectives": ("delta_m", "params"), "pruner": "median"}, "pruner"),
        ({"duplicate_wait_s": -1}, "duplicate_wait_s"),
        ({"proxy": {"reference": "hard"}}, "proxy"),
        ({"progress": "yes"}, "progress"),
    ],
)
def test_config_errors_name_the_field(kw, field):
    with pytest.raises((ValueError, TypeError), match=field):
        BranchSearchConfig(**kw)


def test_config_round_trips_through_the_study_record():
    config = BranchSearchConfig(proxy=PROXY, objectives=("delta_m", "macs"), n_trials=7, storage="journal:x")
    assert BranchSearchConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown key"):
        BranchSearchConfig.from_dict({**config.to_dict(), "budget_s": 3})


# ---------------------------------------------------------------------- dedup, pruning, objectives
def test_a_tree_already_scored_is_not_trained_again(shapes, tmp_path, monkeypatch):
    monkeypatch.setitem(SAMPLERS, "first", lambda seed, n: FirstChoiceSampler())
    stub = StubScorer()
    config = _config(tmp_path, n_trials=4, sampler="first")
    result = branch_search(*shapes[:2], config, tmp_path, scorer=stub)
    study = _study(config)
    assert len(stub.calls) == 1
    assert [t.user_attrs.get("duplicate_of") for t in study.trials] == [None, 0, 0, 0]
    assert len({t.value for t in study.trials}) == 1
    assert result.info["trials"]["trees_scored"] == 1 and result.info["trials"]["duplicates"] == 3


@pytest.mark.parametrize("wait", [5.0, 0.0])
def test_a_tree_being_scored_elsewhere_is_waited_for(shapes, wait):
    data, space = shapes[:2]
    study = optuna.create_study(direction="maximize", sampler=FirstChoiceSampler())
    first = study.ask()
    first.set_user_attr("key", graph_key(suggest_tree(first, data.task_names, space.layers, space.branchable)))
    stub = StubScorer()
    config = BranchSearchConfig(proxy=PROXY, n_trials=5, duplicate_wait_s=wait)
    objective = TreeObjective(study, stub, data.task_names, space.layers, space.branchable, config)
    threading.Timer(0.3, lambda: study.tell(first, 1.25)).start()  # the other worker finishes
    second = study.ask()
    value = objective(second)
    if wait:
        assert value == 1.25 and not stub.calls and second.user_attrs["duplicate_of"] == 0
    else:  # no patience: trains it itself
        assert len(stub.calls) == 1 and "duplicate_of" not in second.user_attrs


@pytest.mark.parametrize("pruner", ["median", "halving", "hyperband"])
def test_pruner_sees_every_epoch_and_stops_bad_trials(shapes, tmp_path, seed, pruner):
    """Sampler seeds 0-4: 8-12 distinct trees trained, 1-6 of them pruned by the median rule (asserted for each
    pruner: at least one)."""
    stub = StubScorer(epochs=3)
    config = _config(tmp_path, n_trials=16, sampler="random", pruner=pruner, seed=seed)
    branch_search(*shapes[:2], config, tmp_path, scorer=stub)
    study = _study(config)
    trained = [t for t in study.trials if "duplicate_of" not in t.user_attrs]
    assert all(set(t.intermediate_values) in ({1}, {1, 2}) for t in trained if t.state.name == "PRUNED")
    assert all(set(t.intermediate_values) == {1, 2} for t in trained if t.state.name == "COMPLETE")
    assert any(t.state.name == "PRUNED" for t in trained)
    assert (tmp_path / "history.png").stat().st_size > 1000  # Optuna history figure for the report


def _dominates(u, v, signs):
    return all(s * a >= s * b for a, b, s in zip(u, v, signs)) and u != v


def test_multi_objective_returns_the_pareto_front(shapes, tmp_path):
    config = _config(tmp_path, n_trials=20, objectives=("params", "delta_m"), sampler="random")
    assert config.objectives == ("delta_m", "params")  # Δm first whatever the order given
    result = branch_search(*shapes[:2], config, tmp_path, scorer=StubScorer())
    signs = (1, -1)  # maximise Δm, minimise params
    front = [(g.meta["delta_m"], g.meta["params"]) for g in result.candidates]
    assert result.graph == result.candidates[0] and front[0][0] == max(f[0] for f in front)
    assert not any(_dominates(u, v, signs) for u in front for v in front)
    study = _study(config)
    points = {tuple(t.values) for t in study.trials if t.state.name == "COMPLETE"}
    assert set(front) == {p for p in points if not any(_dominates(q, p, signs) for q in points)}
    assert len({graph_key(g) for g in result.candidates}) == len(result.candidates)
    assert study.metric_names == ["proxy_delta_m", "params"]  # named in optuna-dashboard, as the proxy's


def test_killed_run_resumes_failing_its_running_trial(shapes, tmp_path):
    data, space = shapes[:2]
    config = _config(tmp_path, n_trials=3, sampler="random", storage=None)  # default: RUN_DIR/study.db
    first = branch_search(data, space, config, tmp_path, scorer=StubScorer())
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.load_study(study_name="branch", storage=storage)
    before = [(t.number, t.values, t.params) for t in study.trials]
    killed = study.ask()  # a trial that was running when the process died
    suggest_tree(killed, data.task_names, space.layers, space.branchable)
    stub = StubScorer()
    again = branch_search(data, space, dataclasses.replace(config, n_trials=6), tmp_path, scorer=stub)
    trials = optuna.load_study(study_name="branch", storage=storage).trials
    assert [(t.number, t.values, t.params) for t in trials[:3]] == before  # finished trials kept
    assert trials[3].state.name == "FAIL" and trials[3].user_attrs["stale"]
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 6
    assert again.info["trials"]["stale_failed"] == [3] and first.info["trials"]["complete"] == 3
    assert len(stub.calls) <= 3  # only the new trials were scored


def test_resuming_with_another_proxy_is_refused(shapes, tmp_path):
    data, space = shapes[:2]
    branch_search(data, space, _config(tmp_path, n_trials=1), tmp_path, scorer=StubScorer())
    other = ProxyConfig(warmstart=TINY, finetune=TINY, reference="hard", inherit=True, subset=1.0)
    with pytest.raises(ValueError, match="proxy"):
        branch_search(data, space, _config(tmp_path, n_trials=2, proxy=other), tmp_path, scorer=StubScorer())
    # another device or progress setting is the same proxy: the study resumes (e.g. `nas-mtl study --device`)
    moved = dataclasses.replace(
        PROXY,
        warmstart=dataclasses.replace(PROXY.warmstart, device="auto", progress=True),
        finetune=dataclasses.replace(PROXY.finetune, device="auto"),
    )
    result = branch_search(data, space, _config(tmp_path, n_trials=2, proxy=moved), tmp_path, scorer=StubScorer())
    assert result.info["trials"]["complete"] == 2


# ---------------------------------------------------------------------- real proxy, processes
def test_real_proxy_search_is_deterministic_per_tree(shapes, tmp_path):
    data, space, _ = shapes
    config = _config(tmp_path, n_trials=3, sampler="random")
    result = branch_search(data, space, config, tmp_path)
    assert result.graph in set(enumerate_trees(data.task_names, space.layers, space.branchable))
    assert result.info["n_trees_in_space"] == 22
    study = _study(config)
    proxy = Proxy.prepare(data, space, PROXY, tmp_path)  # reloads the warm start
    best = max((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert proxy.score(result.graph).delta_m == best.value == result.graph.meta["delta_m"]
    assert all(1 in t.intermediate_values for t in study.trials if "score" in t.user_attrs)


def _finished_correctly(study, n, failed_because=("over_budget",), dead=()):
    """``dead``: numbers of trials whose worker died (failed by the storage's heartbeat check, no attribute)."""
    trials = study.get_trials()
    states = [t.state.name for t in trials]
    assert [t.number for t in trials] == list(range(len(trials)))  # no duplicate or missing numbers
    assert states.count("COMPLETE") + states.count("PRUNED") == n
    assert "RUNNING" not in states and "WAITING" not in states
    failed = [t for t in trials if t.state.name == "FAIL" and t.number not in dead]
    assert all(any(t.user_attrs.get(a) for a in failed_because) for t in failed)
    assert all(trials[k].state.name == "FAIL" for k in dead)
    keys = {t.number: t.user_attrs["key"] for t in trials if "key" in t.user_attrs}
    for t in trials:  # every duplicate points at a trial of the same tree
        if "duplicate_of" in t.user_attrs:
            assert keys[t.user_attrs["duplicate_of"]] == keys[t.number]
    return trials


def test_two_workers_claim_exactly_the_budget(shapes, tmp_path):
    """Two workers (threads here, each with its own storage handle, as processes would) on one journal."""
    data, space, path = shapes
    config = _config(tmp_path, n_trials=12, sampler="random")
    create_branch_study(data, space, config, tmp_path, setup=Setup("shapes", DATA, str(path)))
    ran, errors = [], []

    def work(seed):
        try:
            ran.append(run_worker(config.storage, "branch", tmp_path, seed=seed))
        except Exception as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(k,)) for k in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    trials = _finished_correctly(_study(config), 12)
    assert sum(ran) == len([t for t in trials if "worker" in t.user_attrs]) and min(ran) > 0


@pytest.mark.slow
def test_two_worker_processes_complete_one_journal_study(shapes, tmp_path):
    data, space, path = shapes
    url = f"journal:{tmp_path / 'study.journal'}"
    config = BranchSearchConfig(proxy=PROXY, n_trials=14, sampler="random", storage=url)
    study = create_branch_study(data, space, config, tmp_path, setup=Setup("shapes", DATA, str(path)))
    assert study.user_attrs[STUDY_ATTR]["setup"]["dataset"] == "shapes" and not study.trials
    cmd = [sys.executable, "-m", "nas_mtl.cli", "worker", "--storage", url, "--out", str(tmp_path), "--threads", "1"]
    cmd += ["--seed"]
    procs = [subprocess.Popen([*cmd, str(k)], stderr=subprocess.PIPE, text=True) for k in (1, 2)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    trials = _finished_correctly(_study(config), 14)
    assert len({t.user_attrs["worker"] for t in trials if "worker" in t.user_attrs}) == 2  # both took part


@pytest.mark.slow
def test_cli_search_with_workers_resumes_to_a_larger_budget(shapes, tmp_path):
    from nas_mtl.cli import main

    _, _, path = shapes
    argv = [
        "search",
        "branch",
        "--data",
        "shapes",
        "--space",
        str(path),
        "--out",
        str(tmp_path),
        "--workers",
        "2",
        "--sampler",
        "random",
        "--warmstart-epochs",
        "1",
        "--proxy-epochs",
        "2",
        "--inherit",
        "--subset",
        "1",
        "--batch-size",
        "32",
        "--reference",
        "hard",
        "--device",
        "cpu",
        "--storage",
        f"journal:{tmp_path / 'study.journal'}",
        *[f"--data-arg={k}={v}" for k, v in DATA.items()],
    ]
    assert main([*argv, "--n-trials", "6"]) == 0
    assert (tmp_path / "graph.json").is_file() and (tmp_path / "workers" / "worker-1.log").is_file()
    assert main([*argv, "--n-trials", "9"]) == 0
    storage = open_storage(f"journal:{tmp_path / 'study.journal'}")
    _finished_correctly(optuna.load_study(study_name="branch", storage=storage), 9)


@pytest.mark.slow
def test_a_killed_spawned_worker_loses_no_trial_and_the_search_finishes(shapes, tmp_path):
    """SIGKILL the worker that `search branch --workers 2` started while it runs a trial: the search warns, fails
    that trial, runs the budget to the end itself and writes its result (before: exit 1, no search.json)."""
    import os
    import signal
    import time

    _, _, path = shapes
    journal = tmp_path / "study.journal"
    argv = [sys.executable, "-m", "nas_mtl.cli", "search", "branch", "--data", "shapes", "--space", str(path)]
    argv += ["--out", str(tmp_path / "run"), "--workers", "2", "--sampler", "random", "--n-trials", "16"]
    argv += ["--warmstart-epochs", "1", "--proxy-epochs", "4", "--batch-size", "32", "--reference", "hard"]
    argv += ["--inherit", "--subset", "1"]
    slower = {**DATA, "n_train": 800}  # trials of ~1 s: the worker is up (~6 s) before the budget is gone
    argv += ["--device", "cpu", "--storage", f"journal:{journal}", *[f"--data-arg={k}={v}" for k, v in slower.items()]]
    main = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and main.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        if not journal.exists():
            continue
        try:
            trials = optuna.load_study(study_name="branch", storage=open_storage(f"journal:{journal}")).trials
        except Exception:  # the study is being created
            continue
        for t in trials:
            pid = int(str(t.user_attrs.get("worker", "h:0:")).split(":")[1])
            if t.state.name == "RUNNING" and pid not in (0, main.pid):
                os.kill(pid, signal.SIGKILL)
                killed = t.number
                break
    out, err = main.communicate(timeout=300)
    assert killed is not None, "the spawned worker never ran a trial before the search ended"
    assert main.returncode == 0, err
    assert "worker was killed (signal 9)" in err
    study = optuna.load_study(study_name="branch", storage=open_storage(f"journal:{journal}"))
    trials = _finished_correctly(study, 16, failed_because=("over_budget", "worker_died"))
    dead = [t for t in trials if t.number == killed]
    assert dead[0].state.name == "FAIL" and dead[0].user_attrs.get("worker_died")
    info = json.loads((tmp_path / "run" / "search.json").read_text())
    assert killed in info["info"]["trials"]["stale_failed"] and (tmp_path / "run" / "graph.json").is_file()


def test_a_duplicate_does_not_wait_for_a_dead_worker():
    """_alive: this process is alive; a killed child is not (a zombie before it is reaped, then gone); a worker on
    another machine is presumed alive (the storage's heartbeat decides there)."""
    import os
    import signal
    import socket
    import types

    from nas_mtl.search.branch_objective import _alive

    def trial(worker):
        return types.SimpleNamespace(user_attrs={"worker": worker})

    host = socket.gethostname()
    assert _alive(trial(f"{host}:{os.getpid()}:MainThread"))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    os.kill(child.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(trial(f"{host}:{child.pid}:MainThread")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the kill takes effect asynchronously
    assert not _alive(trial(f"{host}:{child.pid}:MainThread"))  # a zombie: killed, not yet reaped
    child.wait()
    assert not _alive(trial(f"{host}:{child.pid}:MainThread"))
    assert _alive(trial(f"another-machine:{child.pid}:MainThread"))


def test_a_worker_joining_after_the_grace_period_fails_a_dead_workers_trial_and_reruns_its_place(
    shapes, tmp_path, monkeypatch
):
    """A trial whose worker died (its heartbeat stopped) once counted against the budget forever: a worker joining
    later ran 0 trials. Now it fails the stale trial and runs the trial that replaces it."""
    import time

    monkeypatch.setenv("NAS_MTL_HEARTBEAT_S", "1")
    monkeypatch.setenv("NAS_MTL_GRACE_S", "2")
    data, space, path = shapes
    config = _config(tmp_path, n_trials=3, sampler="random", storage=f"sqlite:///{tmp_path / 'study.db'}")
    study = create_branch_study(data, space, config, tmp_path, setup=Setup("shapes", DATA, str(path)))
    assert run_worker(config.storage, "branch", tmp_path, seed=1) == 3
    config = dataclasses.replace(config, n_trials=4)
    create_branch_study(data, space, config, tmp_path, setup=Setup("shapes", DATA, str(path)))  # a larger budget
    storage = open_storage(config.storage)
    dead = optuna.load_study(study_name="branch", storage=storage).ask()  # the 4th trial, on another machine
    suggest_tree(dead, data.task_names, space.layers, space.branchable)
    dead.set_user_attr("worker", "elsewhere:1:MainThread")
    storage.record_heartbeat(dead._trial_id)  # then that machine went silent
    time.sleep(2.5)
    assert run_worker(config.storage, "branch", tmp_path, seed=2) == 1
    _finished_correctly(_study(config), 4, dead=(dead.number,))
    assert len(study.get_trials()) == 5


@pytest.mark.slow
def test_on_postgresql_a_killed_workers_trial_is_rerun_by_the_workers_that_join_after_it(
    shapes, tmp_path, postgres_url, monkeypatch
):
    """A `nas-mtl worker` is SIGKILLed mid-trial; two more join while its trial still looks alive. Before, they
    ended with that trial RUNNING and the budget one short (exit 0); now they wait, fail it once its heartbeat is
    older than the grace period (4 s here) and run its place: the budget is finished exactly."""
    import os
    import signal
    import time

    data, space, path = shapes
    monkeypatch.setenv("NAS_DB", postgres_url)
    monkeypatch.setenv("NAS_MTL_HEARTBEAT_S", "1")
    monkeypatch.setenv("NAS_MTL_GRACE_S", "4")
    name = f"join-{tmp_path.name}"
    config = BranchSearchConfig(proxy=PROXY, n_trials=10, sampler="random", storage="env:NAS_DB", study_name=name)
    create_branch_study(data, space, config, tmp_path, setup=Setup("shapes", DATA, str(path)))
    join = [sys.executable, "-m", "nas_mtl.cli", "worker", "--storage", "env:NAS_DB", "--study", name]
    join += ["--out", str(tmp_path)]
    first = subprocess.Popen([*join, "--threads", "1", "--seed", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    storage = open_storage(postgres_url)
    killed, deadline = None, time.monotonic() + 300
    while killed is None:  # the first worker alone: it takes a trial as soon as its warm start is trained
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.1)
        for t in optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False):
            if t.state.name == "RUNNING" and str(t.user_attrs.get("worker", "")).split(":")[1:2] == [str(first.pid)]:
                os.kill(first.pid, signal.SIGKILL)
                killed = t.number
                break
    first.wait(timeout=60)
    others = [
        subprocess.Popen([*join, "--threads", "1", "--seed", str(k)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for k in (2, 3)
    ]
    for proc in others:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    study = optuna.load_study(study_name=name, storage=storage)
    trials = _finished_correctly(study, 10, dead=(killed,))
    pids = {str(t.user_attrs.get("worker", "")).split(":")[1] for t in trials if t.state.name in ("COMPLETE", "PRUNED")}
    survivors = {str(p.pid) for p in others}
    assert pids & survivors and pids <= survivors | {str(first.pid)}  # the survivors finished the budget


# ---------------------------------------------------------------------- warm starts
@pytest.mark.parametrize("branchable", [LAYERS, ("l1", "l2"), ("l0",)])
def test_tree_params_inverts_suggest_tree_on_every_tree(branchable):
    """Exhaustive: each tree of the space (enumerate_trees) is drawn back from its parameters, and distinct trees
    get distinct parameters."""
    trees = list(enumerate_trees(TASKS, LAYERS, branchable))
    seen = set()
    for graph in trees:
        params = tree_params(graph, LAYERS, branchable)
        assert graph_key(suggest_tree(optuna.trial.FixedTrial(params), TASKS, LAYERS, branchable)) == graph_key(graph)
        seen.add(tuple(sorted(params.items())))
    assert len(seen) == len(trees)


def test_a_graph_that_is_not_a_tree_of_the_space_is_no_warm_start():
    split_early = SharingGraph.from_groups(TASKS, LAYERS, [["a"], ["b", "c"]], 1)
    with pytest.raises(ValueError, match="not a tree of this space that branches only at"):
        tree_params(split_early, LAYERS, ("l2",))


def test_warm_start_trees_are_the_first_trials_and_count_in_the_budget(shapes, tmp_path):
    data, space, _ = shapes
    graph = SharingGraph.from_groups(data.task_names, space.layers, [["quadrant", "hue"], ["orientation"]], 2)
    graph.save(tmp_path / "mine.json")
    warm = ("hard", "independent", str(tmp_path / "mine.json"))
    config = _config(tmp_path, n_trials=6, sampler="random", warm_start=warm)
    branch_search(data, space, config, tmp_path, scorer=StubScorer())
    trials = sorted(_study(config).trials, key=lambda t: t.number)
    assert len(trials) == 6 and [t.user_attrs.get("warm_start") for t in trials[:3]] == list(warm)
    independent = SharingGraph.from_groups(data.task_names, space.layers, [[t] for t in data.task_names], 1)
    expected = [space.hard_sharing(data.task_names), independent, graph]
    assert [t.user_attrs["key"] for t in trials[:3]] == [graph_key(g) for g in expected]
    assert all("warm_start" not in t.user_attrs for t in trials[3:])
    again = dataclasses.replace(config, n_trials=8)  # a resume enqueues nothing again
    branch_search(data, space, again, tmp_path, scorer=StubScorer())
    assert sum("warm_start" in t.user_attrs for t in _study(config).trials) == 3


def test_the_affinity_warm_start_is_the_affinity_searchs_tree(shapes, tmp_path):
    from nas_mtl.search.affinity import AffinityConfig, affinity_search

    data, space, _ = shapes
    config = _config(tmp_path, n_trials=2, sampler="random", warm_start=("affinity",))
    branch_search(data, space, config, tmp_path / "run", scorer=StubScorer())
    first = min(_study(config).trials, key=lambda t: t.number)
    affinity = AffinityConfig(train=PROXY.warmstart, branch_at=space.branchable[0], plots=False)
    expected = affinity_search(data, space, affinity, tmp_path / "again").graph
    assert first.user_attrs["warm_start"] == "affinity" and first.user_attrs["key"] == graph_key(expected)
    assert (tmp_path / "run" / "affinity").is_dir()


def test_a_saved_search_result_reads_back(shapes, tmp_path):
    from nas_mtl.search import SearchResult

    config = _config(tmp_path, n_trials=3, sampler="random")
    result = branch_search(*shapes[:2], config, tmp_path / "run", scorer=StubScorer())
    result.save(tmp_path / "saved")
    again = SearchResult.load(tmp_path / "saved")
    assert (again.method, graph_key(again.graph), again.seconds) == ("branch", graph_key(result.graph), result.seconds)
    assert json.loads(json.dumps(result.info)) == again.info


def test_each_trial_names_its_tree_in_words_with_its_drawing_and_one_progress_line(shapes, tmp_path, capfd):
    """What optuna-dashboard shows beside the sampler's encoded parameters: the tree in plain words (user attribute
    ``tree``, equal to the graph the trial's key decodes to) and its topology drawing (a PNG artifact in
    ``RUN_DIR/artifacts``); with ``progress``, one readable line per trial on stderr and none of Optuna's INFO
    lines (raw parameter names)."""
    from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta

    data, space, _ = shapes
    config = _config(tmp_path, n_trials=4, progress=True)
    optuna.logging.set_verbosity(optuna.logging.INFO)  # Optuna's default, which a study's queue may have changed
    capfd.readouterr()
    branch_search(data, space, config, tmp_path, scorer=StubScorer())
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("branch trial ")]
    assert len(lines) == 4 and "[I " not in err and "parameters:" not in err, err
    study = _study(config)
    store = FileSystemArtifactStore(str(tmp_path / "artifacts"))
    for trial in study.get_trials():
        graph = graph_from_key(trial.user_attrs["key"], data.task_names, space.layers)
        assert trial.user_attrs["tree"] == graph.describe()
        if "duplicate_of" in trial.user_attrs:
            continue
        (meta,) = get_all_artifact_meta(trial, storage=study._storage)
        out = tmp_path / f"t{trial.number}.png"
        download_artifact(artifact_store=store, file_path=str(out), artifact_id=meta.artifact_id)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        line = lines[trial.number]
        assert f"trial {trial.number} ({trial.number + 1}/4 finished):" in line and graph.describe() in line
