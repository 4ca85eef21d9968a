"""Studies: one TOML file -> searches + baselines, each graph retrained per balancer and seed.

Everything lands in a run folder, one sub-folder per search and per arm run, each written when it
finishes; rerunning the same study resumes: finished searches and arm runs are read back, an
interrupted training run continues from its last checkpoint.

Layout::

    RUN_DIR/study.toml                       copy of the study file
    RUN_DIR/search/METHOD/seedS/             one search (search seed S): graph.json, search.json (SearchResult.save)
    RUN_DIR/arms/ARM/BALANCER/seedS/         a training run (checkpoint, result.json, model.json)
    RUN_DIR/arms/ARM/BALANCER/seedS/row.json the arm's result row (metrics, params, MACs, times, env)

Seeds: every arm is trained once per training seed (``seeds``). Each search runs once per search seed
(``search_seeds``, default: the method's own ``seed`` option, so one search); training seed number i
retrains the graph found by search seed number i (cycling through ``search_seeds``), so a searched arm's
spread over seeds covers the search's variance as well as the training's, at the cost of one retraining
per training seed. Runs go seed by seed (every arm at the first seed, then the second, ...), so a study
stopped early still compares every arm on the seeds it finished.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import multiprocessing
import os
import queue
import re
import shutil
import signal
import sys
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import torch

from .balancing import Balancer, EqualWeights, create_balancer, parse_balancer
from .balancing.weighting import StaticWeights, simplex_grid
from .baselines import ARMS as BASELINE_ARMS
from .baselines import SOFT_ARMS, primary_directions, train_graph
from .config import build_config, to_options
from .config import options as config_options
from .data import MultiTaskData, create_dataset
from .data.base import DATASETS
from .graph import SharingGraph
from .jobs import LAUNCH_ATTR, SETTINGS_ATTR, Job, JobQueue, count_states, worker_id
from .metrics import delta_m
from .processes import exit_with_parent
from .progress import TimeLeft, estimate_line, remaining_seconds, run_kind
from .registry import is_reference, resolve_reference
from .runs import (
    INTEGER,
    ROW,
    SEARCH_DONE,
    STUDY_RECORD,
    check_settings,
    load_checkpoint,
    read_json,
    read_row,
    read_search_record,
    replace_atomic,
    run_lock,
    run_path,
    write_json_atomic,
)
from .search import SEARCH_METHODS, SearchResult, load_search_methods
from .soft import Coupling
from .space import SearchSpace, load_search_space
from .storage import redact
from .tracking import TrackingConfig, mirror_study, require_mlflow
from .train import CHECKPOINT, Metrics, TrainConfig

T = TypeVar("T")

FORMAT = "nas_mtl.study/1"
_KEYS = (
    "format",
    "name",
    "description",
    "seeds",
    "search_seeds",
    "balancers",
    "data",
    "space",
    "train",
    "arms",
    "search",
    "grid",
    "tracking",
)
GRID_RECORD = "grid.json"


@dataclass(frozen=True)
class StudySpec:
    """A parsed, validated study file."""

    name: str
    data: Mapping[str, Any]
    space: str
    train: TrainConfig
    seeds: tuple[int, ...]
    balancers: tuple[str, ...]
    baselines: tuple[str, ...]
    search: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    couplings: Mapping[str, Coupling] = field(default_factory=dict)
    """The soft-sharing baselines' couplings (``[arms.soft-l2]``, ``[arms.cross-stitch]``)."""
    description: str = ""
    source: str = "<memory>"
    search_seeds: tuple[int, ...] | None = None
    """Seeds each search runs with; ``None``: once, with the method table's own ``seed`` (default 0)."""
    grid: GridSpec | None = None
    """A grid search over static task weights (``[grid]``), or None."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Where finished runs and searches are mirrored (``[tracking]``, :mod:`nas_mtl.tracking`)."""


@dataclass(frozen=True)
class GridSpec:
    """``[grid]``: static task weights searched on a simplex grid for one baseline arm (Sener & Koltun 2018's
    grid-search baseline), chosen by validation Δm at one training seed; the winner (a ``static:...`` balancer)
    is then retrained for that arm over every seed like the study's balancers."""

    step: float
    """Grid spacing on the simplex: weights are positive multiples of T * step summing to T (step = 1/n)."""
    arm: str = "hard"
    """The baseline arm whose weights are searched (a shared one: hard)."""
    seed: int | None = None
    """The training seed of the grid runs (default: the study's first seed)."""


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study TOML; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"study file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML ({err})") from None
    return parse_study(raw, source=str(path), base_dir=path.parent)


def parse_study(raw: Mapping[str, Any], source: str = "study", base_dir: Path | None = None) -> StudySpec:
    def fail(key: str, msg: str) -> ValueError:
        return ValueError(f"{source}: {key}: {msg}")

    unknown = sorted(set(raw) - set(_KEYS))
    if unknown:
        raise fail(unknown[0], f"unknown key; allowed: {', '.join(_KEYS)}")
    if raw.get("format") != FORMAT:
        raise fail("format", f"expected {FORMAT!r}, got {raw.get('format')!r}")
    for key, kind in (
        ("data", Mapping),
        ("space", Mapping),
        ("train", Mapping),
        ("arms", Mapping),
        ("search", Mapping),
        ("tracking", Mapping),
    ):
        if key in raw and not isinstance(raw[key], kind):
            raise fail(key, "expected a table")
    data = dict(raw.get("data", {}))
    if not isinstance(data.get("name"), str):
        raise fail("data.name", "required (a dataset name, e.g. 'multidigits', or MODULE:FUNCTION / FILE.py:FUNCTION)")
    data["name"] = resolve_reference(data["name"], base_dir)  # a FILE.py relative to the study file
    _resolve_data_paths(data, base_dir)
    _check_dataset_keys(data, fail)  # checked now, not when the run starts (building the data is slow)
    space = raw.get("space", {}).get("name")
    if not isinstance(space, str):
        raise fail("space.name", "required (a search-space name or a .toml path)")
    if base_dir is not None and space.endswith(".toml") and not Path(space).is_absolute():
        space = str(base_dir / space)
    train = build_config(TrainConfig, raw.get("train", {}), where=lambda k: f"{source}: train.{k}")
    seeds = _seed_list(raw.get("seeds", [0]), "seeds", fail, low=None)
    search_seeds = None if "search_seeds" not in raw else _seed_list(raw["search_seeds"], "search_seeds", fail, low=0)
    balancers = raw.get("balancers", ["equal"])
    if not isinstance(balancers, list) or not balancers:
        raise fail("balancers", f"expected a non-empty list, got {balancers!r}")
    try:  # a FILE.py:FUNCTION balancer relative to the study file
        balancers = [_resolve_balancer(b, base_dir) for b in balancers]
    except (TypeError, ValueError) as err:
        raise fail("balancers", str(err)) from None
    seen: dict[str, str] = {}
    for b in balancers:
        try:
            key = create_balancer(b).spec  # b: a name, or NAME:KEY=VALUE,... (e.g. "mgda:normalization=l2")
        except (TypeError, ValueError) as err:
            raise fail("balancers", str(err)) from None
        same = next((s for s, k in seen.items() if k == key), None)
        if same is not None:
            same_as = f"{b!r} is the same balancer as {same!r} (same name and options, defaults filled in)"
            raise fail("balancers", f"{same_as}; list each once")
        seen[b] = key
    arms = raw.get("arms", {})
    extra = sorted(set(arms) - {"baselines", *SOFT_ARMS})
    if extra:
        raise fail(f"arms.{extra[0]}", f"unknown key; allowed: baselines, {', '.join(SOFT_ARMS)}")
    baselines = arms.get("baselines", ["single", "hard"])
    if not isinstance(baselines, list) or any(b not in BASELINE_ARMS for b in baselines):
        raise fail("arms.baselines", f"expected a list from {list(BASELINE_ARMS)}, got {baselines!r}")
    if "single" not in baselines:
        baselines = ["single", *baselines]  # the Δm reference is always trained
    couplings = {}
    for arm, kind in SOFT_ARMS.items():
        options = arms.get(arm, {})
        if not isinstance(options, Mapping):
            raise fail(f"arms.{arm}", "expected a table of coupling options")
        if options and arm not in baselines:
            raise fail(f"arms.{arm}", f"options for an arm not in arms.baselines {baselines}")
        if arm in baselines:
            couplings[arm] = Coupling.from_dict({"kind": kind, **options}, f"{source}: arms.{arm}")
    search = raw.get("search", {})
    methods = load_search_methods()
    for name, options in search.items():
        if name not in methods:
            raise fail(f"search.{name}", f"unknown search method; known: {', '.join(methods)}")
        if not isinstance(options, Mapping):
            raise fail(f"search.{name}", "expected a table of options")
        if search_seeds is not None and "seed" in options:
            raise fail(f"search.{name}.seed", "set by search_seeds as well; give the search seeds in one place")
        if search_seeds is not None and len(search_seeds) > 1:
            shared = next((k for k in ("storage", "study") if k in options), None)
            if shared is not None:  # every search seed would join one Optuna study
                raise fail(f"search.{name}.{shared}", "one per search: not with several search_seeds")
        method_config(name, options, source)  # validate now, not hours later
        if search_seeds is not None and "seed" not in _option_keys(name):
            raise fail("search_seeds", f"search method {name!r} has no seed option to set")
    grid = _parse_grid(raw.get("grid"), baselines, seeds, data, fail)
    tracking = build_config(TrackingConfig, raw.get("tracking", {}), where=lambda k: f"{source}: tracking.{k}")
    name = raw.get("name", Path(source).stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or ".." in name:
        raise fail(
            "name",
            f"expected a name (letters, digits, '.', '_', '-'; the default run folder is runs/NAME), got {name!r}",
        )
    return StudySpec(
        name=name,
        data=data,
        space=space,
        train=train,
        seeds=seeds,
        balancers=tuple(balancers),
        baselines=tuple(baselines),
        search={k: dict(v) for k, v in search.items()},
        description=str(raw.get("description", "")),
        source=source,
        search_seeds=search_seeds,
        grid=grid,
        couplings=couplings,
        tracking=tracking,
    )


def _parse_grid(
    table: Any, baselines: Sequence[str], seeds: Sequence[int], data: Mapping[str, Any], fail: Callable
) -> GridSpec | None:
    if table is None:
        return None
    if not isinstance(table, Mapping):
        raise fail("grid", "expected a table (step, arm, seed)")
    unknown = sorted(set(table) - {"step", "arm", "seed"})
    if unknown:
        raise fail(f"grid.{unknown[0]}", "unknown key; allowed: step, arm, seed")
    if "step" not in table:
        raise fail("grid.step", "required (e.g. 0.1: weights in steps of a tenth of the simplex)")
    arm = table.get("arm", "hard")
    if arm != "hard":
        raise fail("grid.arm", f"expected 'hard' (the grid searches hard sharing's task weights), got {arm!r}")
    if arm not in baselines:
        raise fail("grid.arm", f"add 'hard' to arms.baselines (now {list(baselines)}): the grid searches its weights")
    seed = table.get("seed", seeds[0])
    if seed not in seeds:
        raise fail("grid.seed", f"expected one of the study's seeds {list(seeds)}, got {seed!r}")
    tasks = data.get("tasks")
    try:  # with the tasks known here (a [data] tasks list), a step that fits no grid fails now
        simplex_grid(list(tasks) if isinstance(tasks, list) else ["a", "b"], table["step"])
    except ValueError as err:
        raise fail("grid.step", str(err).removeprefix("step: ")) from None
    return GridSpec(step=float(table["step"]), arm=arm, seed=seed)


def _resolve_data_paths(data: dict[str, Any], base_dir: Path | None) -> None:
    """Make ``[data]`` paths relative to the study file: ``root``, and a data folder given as the name."""
    if base_dir is None:
        return
    name = data["name"]
    folder = base_dir / Path(name).expanduser()
    if name not in DATASETS and not is_reference(name) and (folder / "tasks.toml").is_file():
        data["name"], data["root"] = "folder", str(folder.resolve())
    elif isinstance(data.get("root"), str):
        data["root"] = str((base_dir / Path(data["root"]).expanduser()).resolve())


def _resolve_balancer(spec: str, base_dir: Path | None) -> str:
    """``spec`` with the file of a ``FILE.py:FUNCTION`` balancer made absolute against ``base_dir``."""
    name, _ = parse_balancer(spec)
    resolved = resolve_reference(name, base_dir)
    return spec if resolved == name else resolved + spec.strip()[len(name) :]


def _seed_list(seeds: Any, key: str, fail: Callable[[str, str], ValueError], low: int | None) -> tuple[int, ...]:
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) and (low is None or s >= low) for s in seeds)
    ):
        at_least = "" if low is None else f" >= {low}"
        raise fail(key, f"expected a non-empty list of integers{at_least}, got {seeds!r}")
    twice = sorted({s for s in seeds if seeds.count(s) > 1})
    if twice:
        raise fail(key, f"seed(s) {twice} given twice; each seed once")
    return tuple(seeds)


def _check_dataset_keys(data: Mapping[str, Any], fail: Callable[[str, str], ValueError]) -> None:
    """Raise ``fail`` naming ``data.KEY`` when the [data] table does not fit the dataset factory's signature."""
    name = data["name"]
    try:
        signature = DATASETS.signature(name)  # a registered name, an entry point, or MODULE:FUNCTION / FILE.py:FUNCTION
    except ValueError as err:
        raise fail("data.name", str(err)) from None
    accepted = ", ".join(["name", *signature.parameters])
    kwargs = {k: v for k, v in data.items() if k != "name"}
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    unknown = [] if open_ended else [k for k in kwargs if k not in signature.parameters]
    if unknown:
        raise fail(f"data.{unknown[0]}", f"unknown key for dataset {name!r}; accepted: {accepted}")
    try:
        signature.bind(**kwargs)
    except TypeError as err:  # a required argument (e.g. root) is missing
        raise fail("data", f"dataset {name!r}: {err}; accepted: {accepted}") from None


def with_device(spec: StudySpec, device: str) -> StudySpec:
    """``spec`` with every training run and search on ``device`` (``auto``, ``cpu`` or ``cuda``)."""
    if device not in TrainConfig.DEVICES:
        raise ValueError(f"device: expected one of {list(TrainConfig.DEVICES)}, got {device!r}")
    return dataclasses.replace(
        spec, train=dataclasses.replace(spec.train, device=device), search=_set_option(spec.search, "device", device)
    )


def _set_option(search: Mapping[str, Mapping[str, Any]], key: str, value: Any) -> dict[str, dict[str, Any]]:
    """Every method table with option ``key`` set to ``value`` (tables of methods without it unchanged)."""
    return {m: {**o, key: value} if key in _option_keys(m) else dict(o) for m, o in search.items()}


def _option_keys(method: str) -> set[str]:
    return {o.key for o in config_options(SEARCH_METHODS.create(method).config)}


def method_config(method: str, table: Mapping[str, Any], source: str = "study") -> Any:
    """The config of search ``method`` from a study's ``[search.METHOD]`` table (errors name the key)."""
    return build_config(SEARCH_METHODS.create(method).config, table, where=lambda k: f"{source}: search.{method}.{k}")


@dataclass(frozen=True)
class Arm:
    """One graph to retrain: a baseline, or what one run of a search found."""

    name: str
    graph: SharingGraph
    search_seconds: float = 0.0
    single_task: str | None = None  # set for the per-task nets of the single-task arm
    search_seed: int | None = None  # set for a searched arm: the seed of the search that found ``graph``
    coupling: Coupling | None = None  # set for a soft-sharing arm


def run_study(
    spec: StudySpec,
    run_dir: str | Path,
    progress: bool = False,
    jobs: int = 1,
    data: MultiTaskData | None = None,
    space: SearchSpace | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) every search and arm of ``spec``; returns the result rows (seed by seed).

    Finished searches and arm runs are read back here; only the others run, in this process or in ``jobs``
    worker processes.

    Args:
        progress: print progress (bars on a terminal, plain lines otherwise) and one line per finished run.
        jobs: runs (searches, then arm trainings) at once, each in its own process with
            ``torch.get_num_threads() // jobs`` threads (at least 1). The numbers depend on the threads per
            run: ``jobs=2`` on 2 threads gives bitwise the rows of ``jobs=1`` on 1 thread. A failed run stops
            the others (finished runs and epochs stay on disk) and its error is raised here. Workers are
            spawned: a script calling this with ``jobs > 1`` needs the ``if __name__ == "__main__":`` guard.
        data, space: the study's data and search space when already built (default: built from ``spec``);
            with them, runs stay in this process (``jobs`` must be 1).

    With ``spec.tracking.mlflow`` set, every finished arm run and search is then mirrored to MLflow
    (:func:`nas_mtl.tracking.mirror_study`: idempotent; an MLflow failure is a warning, the results stay here).
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs: expected a positive integer, got {jobs!r}")
    if (data is None) != (space is None) or (data is not None and jobs > 1):
        raise ValueError("run_study: give data and space together, and only with jobs=1 (workers build their own)")
    if spec.tracking.mlflow is not None:
        require_mlflow()  # before hours of training, not after
    run_dir = Path(run_dir)
    if data is None:  # before the lock makes the run folder: data that cannot be read leaves none behind
        data, space = _data_and_space(spec)
    with run_lock(run_dir):
        _prepare(spec, data, space, run_dir)
        rows = _run_locked(spec, run_dir, progress, jobs, data, space)
        if spec.tracking.mlflow is not None:
            mirror_study(run_dir, spec.name, spec.tracking.mlflow, progress)
        return rows


def _prepare(spec: StudySpec, data: MultiTaskData, space: SearchSpace, run_dir: Path) -> None:
    """Before any run: check each search's options on this data, record (or check) the study's settings in the
    run folder and copy the study file there."""
    for method, options in spec.search.items():  # options that cannot work on this data, before any run
        runner = SEARCH_METHODS.create(method)
        if runner.check is not None:
            try:
                runner.check(data, space, method_config(method, options, spec.source))
            except ValueError as err:
                raise ValueError(f"{spec.source}: search.{method}: {err}") from None
    _record_settings(spec, space, run_dir)  # refuses a folder made with other settings, before any run
    if spec.source != "<memory>" and Path(spec.source).is_file():
        replace_atomic(run_dir / "study.toml", lambda tmp: shutil.copyfile(spec.source, tmp))


# ------------------------------------------------------------------ distributed studies
QUEUE_RECORD = "queue.json"
"""``RUN_DIR/queue.json``: the storage (when it holds no password) and study of a distributed study."""
MAX_POLL_S = 10.0
"""The longest an idle worker waits before it looks for a job again: it waits ``poll_s`` x (workers seen / 4), at
least ``poll_s``, so the storage answers about 8 idle looks a second however many workers wait."""


def run_distributed_study(
    spec: StudySpec,
    run_dir: str | Path,
    storage: str,
    *,
    worker_only: bool = False,
    progress: bool = False,
    threads: int | None = None,
    local_workers: int = 1,
    heartbeat_s: int | None = None,
    grace_s: int | None = None,
    poll_s: float = 0.5,
    wait_s: float = 0.0,
    outcome: bool = True,
    launch: str | None = None,
) -> list[dict[str, Any]]:
    """Run ``spec``'s jobs from the queue in ``storage`` (:mod:`nas_mtl.jobs`) until none is left; returns
    the result rows (none with ``outcome=False``).

    Without ``worker_only`` this process publishes the study: it checks the search options, records the
    settings in the run folder (as :func:`run_study` does) and in the storage, enqueues every job not done
    (failed ones again), then works like any worker. Workers (``worker_only``, on any machine that sees the
    storage and the run folder) check that their study file agrees with the record in the storage and claim
    jobs one at a time; each job resumes from what the run folder holds. A worker stays until no job is
    waiting or running (a running job may still be returned to the queue by a dead worker).

    Args:
        threads: torch threads per job (recorded as the job's ``threads`` attribute); default: this machine's
            cores / the workers of this study on it: ``local_workers`` or, if more, those seen in the storage.
        local_workers: how many workers of this study this machine runs, when known from the start (``nas-mtl
            study --workers N`` starts them together): the first jobs already split the cores N ways.
        wait_s: a worker waits this long for the study to be published (it may start first).
        outcome: end by raising on failed jobs and mirroring to MLflow (``spec.tracking``); False in the workers
            a launcher started (``--workers``): the launcher does both, once.
        launch: the token of a ``--workers`` launch: the publisher records it once the jobs and settings are in
            the storage, and a worker given it joins only then (it starts beside its launcher, before that), never
            the record a previous run left.
        heartbeat_s, grace_s: heartbeat period and the silence after which a worker counts as dead (default:
            :func:`~nas_mtl.storage.heartbeat_settings`; every worker of a study should use the same).

    Raises:
        ValueError: a bad or unreachable storage, a study file that differs from the record (naming the keys),
            a ``[grid]`` (not distributed yet), or jobs that failed (naming them) once nothing else can run.
    """
    if spec.grid is not None:
        raise ValueError(
            f"{spec.source}: grid: not with --storage yet (the grid's best weights decide later jobs); run the "
            "study without --storage"
        )
    if isinstance(local_workers, bool) or not isinstance(local_workers, int) or local_workers < 1:
        raise ValueError(f"local_workers: expected a positive integer, got {local_workers!r}")
    if outcome and spec.tracking.mlflow is not None:
        require_mlflow()
    run_dir = Path(run_dir)
    data, space = _data_and_space(spec)
    settings = json.loads(json.dumps(_queue_settings(spec, space)))
    beats = {"heartbeat_s": heartbeat_s, "grace_s": grace_s}
    if worker_only:
        queue = JobQueue.join(storage, spec.name, settings, wait_s, launch, **beats)  # once it is published
    else:
        queue = JobQueue(storage, spec.name, create=True, **beats)
        with run_lock(run_dir):  # alone while the folder's record is checked and written
            _prepare(spec, data, space, run_dir)
    # the publisher and every worker then share the run folder's lock for their whole run: a plain `nas-mtl study`
    # on the same folder (exclusive) is refused while any of them runs, and they are refused while it runs
    with run_lock(run_dir, shared=True):
        if not worker_only:
            _publish(queue, spec, run_dir, storage, settings, launch, progress, data, space)
        before = torch.get_num_threads()  # set per job by _work; a Python caller keeps its own
        try:
            _work(spec, run_dir, queue, data, space, progress, threads, local_workers, poll_s)
        finally:
            torch.set_num_threads(before)
        return _outcome(spec, run_dir, queue, progress) if outcome else []


def _publish(
    queue: JobQueue,
    spec: StudySpec,
    run_dir: Path,
    storage: str,
    settings: Mapping[str, Any],
    launch: str | None,
    progress: bool,
    data: MultiTaskData,
    space: SearchSpace,
) -> None:
    """Enqueue every job not done and record the study's settings in the storage (workers join then)."""
    added = queue.publish(study_jobs(spec, data, space))
    # workers join once the settings are recorded (the run folder's record accepted them): after the jobs,
    # so that none joins a queue still empty and leaves at once
    queue.study.set_user_attr(SETTINGS_ATTR, dict(settings))
    if launch is not None:
        queue.study.set_user_attr(LAUNCH_ATTR, launch)
    shown = storage if storage.startswith(("env:", "file:")) or redact(storage) == storage else None
    write_json_atomic({"storage": shown, "study": spec.name}, run_dir / QUEUE_RECORD)
    if progress:
        print(f"study {spec.name!r}: {added} job(s) enqueued in {queue.shown}", file=sys.stderr, flush=True)


def _outcome(spec: StudySpec, run_dir: Path, queue: JobQueue, progress: bool) -> list[dict[str, Any]]:
    """Raise on failed jobs; else mirror to MLflow (``spec.tracking``) and return the rows."""
    lines = queue.table()
    counts = count_states(lines)
    if counts["failed"] or counts["blocked"]:
        failed = [
            f"{line['job']} ({line['error'] or 'worker died ' + str(line['tries']) + ' times'})"
            for line in lines
            if line["state"] == "failed"
        ]
        raise ValueError(
            f"storage {queue.shown}: {counts['failed']} job(s) failed: {'; '.join(failed)}; "
            f"{counts['blocked']} wait for them; fix the cause and rerun `nas-mtl study FILE --storage URL`"
        )
    if spec.tracking.mlflow is not None:
        mirror_study(run_dir, spec.name, spec.tracking.mlflow, progress)
    return load_rows(run_dir)


def _queue_settings(spec: StudySpec, space: SearchSpace) -> dict[str, Any]:
    """What a worker's study file must agree on: the results' settings and what decides its jobs' work."""
    return {
        **_study_settings(spec, space),
        "seeds": list(spec.seeds),
        "search_seeds": None if spec.search_seeds is None else list(spec.search_seeds),
        "balancers": list(spec.balancers),
        "baselines": list(spec.baselines),
    }


def study_jobs(spec: StudySpec, data: MultiTaskData, space: SearchSpace) -> list[Job]:
    """Every search and arm run of ``spec`` as a :class:`~nas_mtl.jobs.Job` keyed by its folder, in the order
    :func:`run_study` runs them (searches, then seed by seed); a searched arm needs every seed of its search
    (which balancers differ from equal weighting depends on all of its graphs, as in :func:`run_study`)."""
    jobs, searches = [], {}
    for method in spec.search:
        for seed in seeds_of_search(spec, method):
            key = f"search/{method}/seed{seed}"
            jobs.append(Job(key, {"kind": "search", "method": method, "seed": seed}))
            searches.setdefault(method, []).append(key)
    baselines = _baseline_arms(spec, data, space)
    for i, seed in enumerate(spec.seeds):
        for arm in baselines:
            for b in _balancers_for([arm], spec.balancers):
                args = {"kind": "arm", "arm": arm.name, "task": arm.single_task, "balancer": b, "seed": seed}
                jobs.append(Job(_arm_key(_arm_name(arm), b, seed), args))
        for method in spec.search:
            seeds = seeds_of_search(spec, method)
            for b in spec.balancers:
                args = {"kind": "arm", "arm": method, "search_seed": seeds[i % len(seeds)], "balancer": b, "seed": seed}
                jobs.append(Job(_arm_key(method, b, seed), args, tuple(searches[method])))
    return jobs


def _arm_key(arm: str, balancer: str, seed: int) -> str:
    return f"arms/{slug(arm)}/{slug(balancer)}/seed{seed}"


def run_job(job: Job, spec: StudySpec, run_dir: Path, data: MultiTaskData, space: SearchSpace) -> dict[str, Any]:
    """Do ``job`` (or read back what the run folder already holds); returns attributes for its record
    (``skipped``: why an arm run was not needed; ``read_back``: the run folder held its result already;
    ``resumed_from_epoch``: the checkpoint it continued)."""
    args = job.args
    legacy = spec.search_seeds is None
    if args["kind"] == "search":
        method, seed = args["method"], args["seed"]
        out = _search_dir(run_dir, method, seed, legacy)
        if _finished_search(out, method, seed) is not None:
            return {"read_back": True}
        options = _set_option(spec.search, "progress", False)[method]
        _run_search(method, options if legacy else {**options, "seed": seed}, out, spec.source, data=data, space=space)
        return {}
    balancer, seed = args["balancer"], args["seed"]
    if "search_seed" in args:
        method = args["arm"]
        group = []
        for s in seeds_of_search(spec, method):
            result = _finished_search(_search_dir(run_dir, method, s, legacy), method, s)
            if result is None:  # the queue hands out a searched arm only after its searches
                raise RuntimeError(f"{job.key}: search {method} seed {s} has no result in {run_dir}")
            group.append(Arm(method, result.graph.with_meta(name=method), result.seconds, search_seed=s))
        arm = next(a for a in group if a.search_seed == args["search_seed"])
        if balancer not in _balancers_for(group, spec.balancers):
            return {"skipped": f"{balancer} trains {method}'s graphs exactly as equal weighting does"}
    else:
        arm = next(
            a for a in _baseline_arms(spec, data, space) if (a.name, a.single_task) == (args["arm"], args["task"])
        )
    out = _arm_dir(run_dir, arm, balancer, seed)
    if _finished_row(out, arm) is not None:
        return {"read_back": True}
    attrs = {}
    if (out / CHECKPOINT).is_file():  # an interrupted run (e.g. its worker died): resumed where it stopped
        attrs["resumed_from_epoch"] = load_checkpoint(out / CHECKPOINT, "cpu", {"epoch": INTEGER})["epoch"]
    _run_arm(arm, balancer, seed, spec, out, False, data=data, space=space)
    return attrs


def _work(
    spec: StudySpec,
    run_dir: Path,
    queue: JobQueue,
    data: MultiTaskData,
    space: SearchSpace,
    progress: bool,
    threads: int | None,
    local_workers: int,
    poll_s: float,
) -> int:
    """Claim and run jobs until none is waiting or running; returns how many this process ran. With ``progress``,
    each finished job prints the time the study's jobs still need, estimated from this worker's whole runs."""
    worker, ran = worker_id(), 0
    timed: dict[str, list[float]] = {}  # kind -> seconds of this worker's whole runs (not read back or resumed)
    planned = {job.key: _plain(job) for job in study_jobs(spec, data, space)}
    while True:
        claim = queue.claim(worker)
        if claim is not None and planned.get(claim.job.key) != _plain(claim.job):
            # a storage record is data: a job runs only as this worker's own study file plans it (a record that
            # names another balancer, e.g. code, is refused)
            why = f"job {claim.job.key!r} in storage {queue.shown} is not one of {spec.source} as this worker plans it"
            queue.fail(claim, why)
            raise ValueError(f"{why}; refused (was the storage changed by hand?)")
        if claim is None:
            counts = queue.counts()
            if not counts["waiting"] and not counts["running"]:
                break
            # every idle worker reads the whole queue each time: the more workers, the less often each looks
            time.sleep(min(MAX_POLL_S, poll_s * max(1.0, queue.workers(worker) / 4)))
            continue
        workers = max(local_workers, queue.local_workers(worker))
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // workers))
        t0 = time.perf_counter()
        try:
            with queue.heartbeat(claim, worker):
                attrs = run_job(claim.job, spec, run_dir, data, space)
        except BaseException as err:
            queue.fail(claim, f"{type(err).__name__}: {err}".splitlines()[0], retry=isinstance(err, KeyboardInterrupt))
            raise
        seconds = time.perf_counter() - t0
        queue.finish(claim, seconds, threads=torch.get_num_threads(), **attrs)
        ran += 1
        if progress:
            again = f", try {claim.retries + 1}" if claim.retries else ""
            print(f"[{worker}] {claim.job.key} done ({seconds:.0f} s{again})", file=sys.stderr, flush=True)
            if not attrs:  # skipped, read back or resumed: not a whole run's time
                timed.setdefault(run_kind(claim.job.key), []).append(seconds)
            print(_queue_estimate(queue, timed, worker), file=sys.stderr, flush=True)
    queue.leave(worker)
    return ran


def _queue_estimate(queue: JobQueue, timed: Mapping[str, Sequence[float]], worker: str) -> str:
    """The time-left line of a distributed study: its jobs as the queue holds them (those of every worker and
    session), the durations from ``timed``, on the workers seen now."""
    lines = queue.table()
    pending = [run_kind(line["job"]) for line in lines if line["state"] in ("waiting", "running")]
    done, workers = sum(line["state"] == "done" for line in lines), queue.workers(worker)
    left = remaining_seconds(timed, pending, workers)
    return estimate_line(done, done + len(pending), left, workers, what="jobs")


def _plain(job: Job) -> dict[str, Any]:
    """A job as JSON holds it (tuples as lists): how a claimed job is compared with the planned one."""
    return json.loads(json.dumps({"key": job.key, "args": dict(job.args), "needs": list(job.needs)}))


def _record_settings(spec: StudySpec, space: SearchSpace, run_dir: Path) -> None:
    """Write what the study's results depend on to ``RUN_DIR/study.json``, or check it against the record there.

    Once a search or an arm run has finished, data, search space, training settings and each search's options
    must be the record's (runtime keys such as the device aside); seeds, search seeds, balancers, baselines and
    new search methods may be added, as they only add runs. The record then grows by what was added. Before
    anything finished (e.g. a study stopped by a mistake in its file), the record is replaced.
    """
    now = json.loads(json.dumps(_study_settings(spec, space)))  # tuples -> lists, as stored
    path = run_dir / STUDY_RECORD
    finished = any(run_dir.glob(f"arms/**/{ROW}")) or any(run_dir.glob(f"search/**/{SEARCH_DONE}"))
    if path.is_file() and finished:  # while nothing finished, a corrected study file simply replaces the record
        saved = read_json(path, "study record", ("settings",), f"delete it only if {run_dir} was made with this study")
        old = saved["settings"]
        if not isinstance(old, Mapping):
            raise ValueError(f"{path}: damaged study record (settings is not a table); restore it or use a new folder")
        both = {m: now["search"][m] for m in now["search"] if m in old.get("search", {})}
        check_settings({**old, "search": {m: old["search"][m] for m in both}}, {**now, "search": both}, path, "study")
        now["search"] = {**old.get("search", {}), **now["search"]}
    write_json_atomic({"format": FORMAT, "settings": now}, path)


def _study_settings(spec: StudySpec, space: SearchSpace) -> dict[str, Any]:
    return {
        "data": dict(spec.data),
        "space": {
            "name": space.name,
            "backbone": space.backbone.name,
            "backbone_config": dict(space.backbone.config),
            "layers": list(space.layers),
            "branchable": list(space.branchable),
            "skippable": list(space.skippable),
        },
        "train": {k: v for k, v in spec.train.identity().items() if k != "seed"},  # arms set their own seeds
        "search": {m: _redacted(to_options(method_config(m, o, spec.source))) for m, o in spec.search.items()},
    }


def _redacted(options: Mapping[str, Any]) -> dict[str, Any]:
    """A search's options with a storage URL's password hidden (the record is a results file)."""
    return {k: redact(v) if k == "storage" and isinstance(v, str) else v for k, v in options.items()}


def _run_locked(
    spec: StudySpec, run_dir: Path, progress: bool, jobs: int, data: MultiTaskData, space: SearchSpace
) -> list[dict[str, Any]]:
    with _Runner(spec, data, space, jobs, progress, run_dir) as runner:
        show = progress and jobs == 1  # bars and search logs of parallel runs would interleave
        search = _set_option(spec.search, "progress", show)
        found: dict[tuple[str, int], SearchResult | None] = {}
        todo: list[tuple[str, Mapping[str, Any], Path, str]] = []
        for method, options in search.items():
            for seed in seeds_of_search(spec, method):
                out = _search_dir(run_dir, method, seed, legacy=spec.search_seeds is None)
                found[method, seed] = _finished_search(out, method, seed)
                if found[method, seed] is None:
                    todo.append((method, options if spec.search_seeds is None else {**options, "seed": seed}, out))
        runner.clock.plan(_pending_keys(spec, run_dir, data, space, found))
        pending = [key for key, result in found.items() if result is None]
        labels = [f"search {m} seed {s}" for m, s in pending]
        keys = [_key(run_dir, t[2]) for t in todo]
        for key, result in zip(pending, runner.map(_run_search, [(*t, spec.source) for t in todo], labels, keys)):
            found[key] = result
        groups = [[arm] for arm in _baseline_arms(spec, data, space)]
        for method in search:
            groups.append(
                [
                    Arm(method, result.graph.with_meta(name=method), result.seconds, search_seed=seed)
                    for (m, seed), result in found.items()
                    if m == method
                ]
            )
        extra = {} if spec.grid is None else {spec.grid.arm: _grid_search(spec, run_dir, runner, groups, data, show)}
        rows: list[dict[str, Any] | None] = []
        todo_arms = []
        for i, seed in enumerate(spec.seeds):
            for group in groups:
                arm = group[i % len(group)]  # training seed number i retrains search seed number i's graph
                for balancer in dict.fromkeys((*_balancers_for(group, spec.balancers), *extra.get(arm.name, ()))):
                    out = _arm_dir(run_dir, arm, balancer, seed)
                    rows.append(_finished_row(out, arm))
                    if rows[-1] is None:
                        todo_arms.append((len(rows) - 1, (arm, balancer, seed, spec, out, show)))
        labels = [f"{_arm_name(a)} {b} seed {s}" for _, (a, b, s, *_) in todo_arms]
        keys = [_key(run_dir, job[4]) for _, job in todo_arms]
        runner.clock.plan(keys)  # now exact: the balancers each searched arm's graphs need are known
        for (k, _), row in zip(todo_arms, runner.map(_run_arm, [job for _, job in todo_arms], labels, keys)):
            rows[k] = row
    return rows


def _key(run_dir: Path, out: Path) -> str:
    """A run's folder as the key of its job (``arms/ARM/BALANCER/seedS``)."""
    return out.relative_to(run_dir).as_posix()


def _pending_keys(
    spec: StudySpec,
    run_dir: Path,
    data: MultiTaskData,
    space: SearchSpace,
    found: Mapping[tuple[str, int], SearchResult | None],
) -> list[str]:
    """The folders of the runs still to do, as planned before the searches end (a searched arm with every
    balancer; the grid's runs are added when it starts)."""
    searches = {f"search/{m}/seed{s}": result for (m, s), result in found.items()}
    return [
        job.key
        for job in study_jobs(spec, data, space)
        if (searches[job.key] is None if job.key in searches else not (run_dir / job.key / ROW).is_file())
    ]


def _grid_search(
    spec: StudySpec, run_dir: Path, runner: _Runner, groups: Sequence[Sequence[Arm]], data: MultiTaskData, show: bool
) -> tuple[str]:
    """Train ``spec.grid.arm`` with every static weight vector of the grid (and the single-task nets, equal
    weights) at the grid seed; record each one's validation Δm and the cost in ``RUN_DIR/grid.json``; return the
    best vector's balancer spec. Finished runs are read back (the single-task ones are the study's own)."""
    grid = spec.grid
    seed = grid.seed
    singles = [g[0] for g in groups if g[0].single_task is not None]
    target = next(g[0] for g in groups if g[0].name == grid.arm)
    points = [
        StaticWeights(**w).spec for w in _checked_grid(simplex_grid(list(data.task_names), grid.step), spec.source)
    ]
    jobs = [(arm, "equal", _arm_dir(run_dir, arm, "equal", seed)) for arm in singles]
    jobs += [(target, b, run_path(run_dir, "grid", slug(b), f"seed{seed}")) for b in points]
    rows = [_finished_row(out, arm) for arm, _, out in jobs]
    todo = [k for k, row in enumerate(rows) if row is None]
    labels = [f"grid {jobs[k][1]} seed {seed}" for k in todo]
    args = [(jobs[k][0], jobs[k][1], seed, spec, jobs[k][2], show) for k in todo]
    keys = [_key(run_dir, jobs[k][2]) for k in todo]
    for k, row in zip(todo, runner.map(_run_arm, args, labels, keys)):
        rows[k] = row
    single = {row["task"]: row["val"][row["task"]] for row in rows[: len(singles)]}
    results = []
    for balancer, row in zip(points, rows[len(singles) :]):
        hib = {t: {m: bool(h)} for t, (m, h) in row["primary"].items()}
        results.append(
            {
                "balancer": balancer,
                "weights": StaticWeights(**parse_balancer(balancer)[1]).weights,
                "val_delta_m": delta_m(row["val"], single, hib),
                "train_seconds": row["train_seconds"],
            }
        )
    best = max(results, key=lambda r: r["val_delta_m"])  # Δm: positive = better than single-task
    record = {
        "arm": grid.arm,
        "step": grid.step,
        "seed": seed,
        "points": results,
        "best": best["balancer"],
        "runs": len(results),
        "train_seconds": sum(r["train_seconds"] for r in results),
    }
    write_json_atomic(record, run_dir / GRID_RECORD)
    return (best["balancer"],)


def _checked_grid(points: list[dict[str, float]], source: str, limit: int = 200) -> list[dict[str, float]]:
    if len(points) > limit:
        raise ValueError(f"{source}: grid.step: {len(points)} weight vectors (over {limit}); use a larger step")
    return points


def run_baselines(
    data: MultiTaskData,
    space: SearchSpace,
    config: TrainConfig,
    run_dir: str | Path,
    arms: Sequence[str] = ("single", "hard"),
    balancer: Balancer | None = None,
) -> pd.DataFrame:
    """Train the baseline arms (one seed: ``config.seed``) and tabulate test metrics, Δm vs single-task, params
    and MACs; also written to ``run_dir/baselines.csv`` and ``.json``.

    The arms run as a study of baselines only (:func:`run_study`, the same runner and folder
    layout ``arms/ARM/BALANCER/seedS``), so a killed run resumes where it stopped, finished arms are read
    back, and ``nas-mtl report RUN_DIR`` works on the folder. Single-task networks are always trained: they
    are the reference of Δm.
    """
    unknown = sorted(set(arms) - set(BASELINE_ARMS))
    if unknown:
        raise ValueError(f"arms: unknown {unknown}; allowed: {list(BASELINE_ARMS)}")
    spec = StudySpec(
        name="baselines",
        data=dict(data.origin or {"name": data.name}),
        space=space.source,
        train=config,
        seeds=(config.seed,),
        balancers=((balancer or EqualWeights()).spec,),
        baselines=tuple(dict.fromkeys(["single", *arms])),
    )
    rows = run_study(spec, run_dir, progress=config.progress, data=data, space=space)
    # one row per arm (and task): graphs without shared parameters also train with "equal" (identical for the
    # built-in balancers); keep the requested balancer's row where there is one
    chosen: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        key = (r["arm"], r["task"])
        if key not in chosen or r["balancer"] == spec.balancers[0]:
            chosen[key] = r
    rows = list(chosen.values())
    single_rows = [r for r in rows if r["arm"] == "single-task"]
    single: Metrics = {r["task"]: r["test"][r["task"]] for r in single_rows}
    table = []
    if "single" in arms:
        params, macs = sum(r["params"] for r in single_rows), sum(r["macs"] for r in single_rows)
        seconds = sum(r["train_seconds"] for r in single_rows)
        table.append(_baseline_row("single-task", single, single, data, params, macs, seconds))
    for r in rows:
        if r["arm"] != "single-task":
            table.append(_baseline_row(r["arm"], r["test"], single, data, r["params"], r["macs"], r["train_seconds"]))
    frame = pd.DataFrame(table).set_index("arm")
    replace_atomic(Path(run_dir) / "baselines.csv", lambda tmp: frame.to_csv(tmp))
    write_json_atomic(frame.reset_index().to_dict(orient="records"), Path(run_dir) / "baselines.json")
    return frame


def _baseline_row(
    arm: str, test: Metrics, single: Metrics, data: MultiTaskData, params: int, macs: int, seconds: float
) -> dict:
    directions = primary_directions(data)
    row: dict = {"arm": arm}
    for t, d in directions.items():
        metric = next(iter(d))
        row[f"{t}.{metric}"] = test[t][metric]
    row["delta_m_%"] = delta_m(test, single, directions)
    row["params"], row["MMACs"], row["train_s"] = params, macs / 1e6, seconds
    return row


def _data_and_space(spec: StudySpec) -> tuple[MultiTaskData, SearchSpace]:
    data = create_dataset(spec.data["name"], **{k: v for k, v in spec.data.items() if k != "name"})
    return data, load_search_space(spec.space, input_shape=data.input_shape)


def _balancers_for(group: Sequence[Arm], balancers: Sequence[str]) -> tuple[str, ...]:
    """``balancers``, less those that train ``group``'s graphs exactly as equal weighting does (equal stays).

    Gradient-combining balancers only change the update of parameters shared by several tasks, so a graph
    without any (single-task nets, independent nets) trains identically with each; on single-task nets most
    loss weightings are equal weighting too (their one weight is always 1)."""
    if any(_shares_parameters(arm.graph) or _mixes(arm) for arm in group):
        return tuple(balancers)
    one_task = all(len(arm.graph.tasks) == 1 for arm in group)
    differ = []
    for b in balancers:
        balancer = create_balancer(b)
        if not balancer.shared_only and not (one_task and balancer.one_task_is_equal):
            differ.append(b)
    return tuple(dict.fromkeys(["equal", *differ]))


class _Runner:
    """Runs study jobs ``fn(*args, data=, space=)`` here (``jobs=1``) or in a pool of ``jobs`` worker processes
    that build the study's data and search space once each. The first failed job, or Ctrl-C, terminates the
    pool (runs write checkpoints and results atomically, so finished epochs and runs are kept) and its error
    is raised here with its own type. ``clock`` times the runs: with ``progress``, each finished run prints the
    time the study's runs still need (:class:`~nas_mtl.progress.TimeLeft`; a run resumed from a checkpoint in its
    folder is not timed as a whole run)."""

    def __init__(
        self, spec: StudySpec, data: MultiTaskData, space: SearchSpace, jobs: int, progress: bool, run_dir: Path
    ):
        self.spec, self.data, self.space, self.jobs, self.progress = spec, data, space, jobs, progress
        self.pool: Any = None  # started by the first job that needs it (a finished study starts no worker)
        self.clock = TimeLeft(jobs, partial=lambda key: (run_dir / key / CHECKPOINT).is_file())

    def __enter__(self) -> _Runner:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if self.pool is not None:
            if kind is None:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()

    def map(self, fn: Callable[..., T], jobs: Sequence[tuple], labels: Sequence[str], keys: Sequence[str]) -> list[T]:
        """``fn`` of every job, in job order; ``keys``: the jobs' folders under the run folder."""
        t0 = time.perf_counter()
        out: list[Any] = [None] * len(jobs)
        self.clock.expect(keys)
        if self.jobs > 1 and jobs and self.pool is None:
            threads = max(1, torch.get_num_threads() // self.jobs)
            context = multiprocessing.get_context("spawn")
            self.pool = context.Pool(self.jobs, initializer=_init_worker, initargs=(self.spec, threads))
        if self.pool is None:
            for k, args in enumerate(jobs):
                out[k], seconds = _timed(fn, *args, data=self.data, space=self.space)
                self._done(k, len(jobs), labels[k], t0, keys[k], seconds)
            return out
        finished: queue.SimpleQueue = queue.SimpleQueue()
        for k, args in enumerate(jobs):
            self.pool.apply_async(
                _in_worker,
                (fn, *args),
                callback=lambda result, k=k: finished.put((k, result, None)),
                error_callback=lambda error, k=k: finished.put((k, None, error)),
            )
        for count in range(len(jobs)):
            k, result, error = _get(finished)
            if error is not None:
                raise error  # __exit__ terminates the other runs
            out[k], seconds = result
            self._done(count, len(jobs), labels[k], t0, keys[k], seconds)
        return out

    def _done(self, count: int, n: int, label: str, t0: float, key: str, seconds: float) -> None:
        line = self.clock.finished(key, seconds)
        if self.progress:
            print(f"[{count + 1}/{n}] {label} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
            print(line, file=sys.stderr, flush=True)


def _get(finished: queue.SimpleQueue) -> Any:
    """The next item, waiting in short slices: a wait without a timeout does not see Ctrl-C."""
    while True:
        try:
            return finished.get(timeout=0.2)
        except queue.Empty:
            continue


_WORKER: dict[str, Any] = {}
"""In a study's worker process only: its data and search space, built once by :func:`_init_worker`."""


def _init_worker(spec: StudySpec, threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it terminates the pool
    exit_with_parent()  # a killed study leaves no worker training on behind it
    torch.set_num_threads(threads)
    load_search_methods()  # a spawned process starts with only the registrations its imports make
    data, space = _data_and_space(spec)
    _WORKER.update(data=data, space=space)


def _in_worker(fn: Callable[..., T], *args: Any) -> tuple[T, float]:
    return _timed(fn, *args, data=_WORKER["data"], space=_WORKER["space"])


def _timed(fn: Callable[..., T], *args: Any, data: MultiTaskData, space: SearchSpace) -> tuple[T, float]:
    """``fn(*args, data=, space=)`` and the wall seconds it took."""
    t0 = time.perf_counter()
    return fn(*args, data=data, space=space), time.perf_counter() - t0


def seeds_of_search(spec: StudySpec, method: str) -> tuple[int, ...]:
    """The seeds ``method`` runs with in ``spec``: ``search_seeds``, or the method table's own ``seed``."""
    if spec.search_seeds is not None:
        return spec.search_seeds
    return (to_options(method_config(method, spec.search[method], spec.source)).get("seed", 0),)


def _search_dir(run_dir: Path, method: str, seed: int, legacy: bool) -> Path:
    """``search/METHOD/seedS``; a finished search of a study made before search seeds (``search/METHOD``) is
    read where it is when the study still runs one search per method."""
    old = run_path(run_dir, "search", method)
    if legacy and (old / SEARCH_DONE).is_file() and not (old / f"seed{seed}").exists():
        return old
    return old / f"seed{seed}"


def _mixes(arm: Arm) -> bool:
    """Cross-stitch units: parameters every task's loss reaches, so gradient-combining balancers matter."""
    return arm.coupling is not None and arm.coupling.kind == "cross-stitch"


def _shares_parameters(graph: SharingGraph) -> bool:
    """Whether some block copy is used by two or more tasks."""
    return any(
        len(graph.copy_tasks(layer, c)) > 1 for layer in range(graph.num_layers) for c in range(graph.copies(layer))
    )


def _baseline_arms(spec: StudySpec, data: MultiTaskData, space: SearchSpace) -> list[Arm]:
    arms = []
    for b in spec.baselines:
        if b == "single":
            for t in data.task_names:
                graph = SharingGraph.hard_sharing([t], space.layers, space.skippable).with_meta(name=f"single:{t}")
                arms.append(Arm("single-task", graph, single_task=t))
        else:
            tasks = data.task_names
            graph = space.hard_sharing(tasks) if b == "hard" else space.independent(tasks)
            arms.append(Arm(b, graph.with_meta(name=b), coupling=spec.couplings.get(b)))
    return arms


def _finished_search(out: Path, method: str, seed: int) -> SearchResult | None:
    """The search finished earlier in ``out`` (its ``search.json``), or None; refused when it records another
    method or seed than the study's search of that folder (a file copied from another folder)."""
    done = out / SEARCH_DONE
    if not done.is_file():
        return None
    summary = read_search_record(done, f"delete {out} to rerun that search")
    unit = summary.get("study")  # written by a study since it records the unit; a search run alone has none
    if isinstance(unit, dict):
        for key, value, want in (("method", unit.get("method"), method), ("seed", unit.get("seed"), seed)):
            if value != want:
                folder = f"seed{seed}" if key == "seed" else method
                raise ValueError(
                    f"{done}: {key} {value!r} does not match its folder ({folder}); delete {out} to rerun it"
                )
    return SearchResult.load(out)


def _run_search(
    method: str, options: Mapping[str, Any], out: Path, source: str, *, data: MultiTaskData, space: SearchSpace
) -> SearchResult:
    runner = SEARCH_METHODS.create(method)
    config = method_config(method, options, source)
    t0 = time.perf_counter()
    result = runner.run(data, space, config, out)
    if result.seconds <= 0:
        result = SearchResult(result.method, result.graph, time.perf_counter() - t0, result.candidates, result.info)
    result.save(out, runner.device(config), study={"method": method, "seed": to_options(config).get("seed", 0)})
    return result


def _arm_name(arm: Arm) -> str:
    return f"{arm.name}/{arm.single_task}" if arm.single_task else arm.name


def _arm_dir(run_dir: Path, arm: Arm, balancer: str, seed: int) -> Path:
    """``arms/ARM/BALANCER/seedS``."""
    return run_path(run_dir, "arms", slug(_arm_name(arm)), slug(balancer), f"seed{seed}")


def _finished_row(out: Path, arm: Arm) -> dict[str, Any] | None:
    """The row of the arm run finished earlier in ``out``, or None; refused when it trained another graph."""
    if not (out / ROW).is_file():
        return None
    row = read_row(out / ROW, f"delete {out} to retrain that run")
    _check_row_place(row, out / ROW, slug(_arm_name(arm)))
    coupling = arm.coupling.to_dict() if arm.coupling is not None else None
    if row.get("coupling") != coupling:
        raise ValueError(
            f"{out / ROW}: this run was trained with coupling {row.get('coupling')}, the study's {arm.name!r} now "
            f"has {coupling}; use a new run folder or the same [arms.{arm.name}] options"
        )
    if SharingGraph.from_dict(row["graph"], source=str(out / ROW)) != arm.graph:  # equality ignores meta
        searched = f" (search seed {arm.search_seed})" if arm.search_seed is not None else ""
        raise ValueError(
            f"{out / ROW}: this run trained another graph than the study's {arm.name!r}{searched} now has "
            "(changed search_seeds, seeds or search settings?); use a new run folder or the same settings"
        )
    return row


def _run_arm(
    arm: Arm,
    balancer: str,
    seed: int,
    spec: StudySpec,
    out: Path,
    progress: bool,
    *,
    data: MultiTaskData,
    space: SearchSpace,
) -> dict[str, Any]:
    config = TrainConfig(**{**spec.train.to_dict(), "seed": seed, "progress": progress})
    net, result = train_graph(arm.graph, data, space, config, create_balancer(balancer), out, coupling=arm.coupling)
    cost = net.cost()
    row = {
        "arm": arm.name,
        "task": arm.single_task,
        "balancer": balancer,
        "seed": seed,
        "graph": arm.graph.to_dict(),
        **({"coupling": arm.coupling.to_dict()} if arm.coupling is not None else {}),
        "test": result.test,
        "val": result.val,
        "params": cost.params,
        "macs": cost.macs,
        "train_seconds": result.train_seconds,
        "search_seconds": arm.search_seconds,
        "search_seed": arm.search_seed,
        "env": result.env,
        "primary": {t: [m, hib] for t, d in primary_directions(data).items() for m, hib in d.items()},
    }
    write_json_atomic(row, out / ROW)
    return row


def slug(name: str) -> str:
    """A file or folder name for an arm or balancer spec ("single-task/left", "mgda:normalization=l2"): other
    characters become ``_``, and so do leading dots (never ``.``, ``..`` or a hidden name)."""
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    dots = len(out) - len(out.lstrip("."))
    return "_" * dots + out[dots:] or "_"


def _check_row_place(row: Mapping[str, Any], path: Path, arm_folder: str | None) -> None:
    """Raise ValueError (one line naming ``path`` and the key) unless ``row`` is what the run of its folder
    (``[ARM/]BALANCER/seedS/row.json``; ``arm_folder``: the ARM part, None where unknown) wrote: a row copied
    from another seed, balancer or arm is never reused."""
    arm = f"{row['arm']}/{row['task']}" if row.get("task") else row["arm"]
    places = [("seed", row["seed"], path.parent.name, f"seed{row['seed']}")]
    places.append(("balancer", row["balancer"], path.parent.parent.name, slug(row["balancer"])))
    if arm_folder is not None:
        places.append(("arm", arm, arm_folder, slug(arm)))
    for key, value, folder, want in places:
        if folder != want:
            raise ValueError(
                f"{path}: {key} {value!r} does not match its folder ({folder}); delete {path.parent} to retrain it"
            )


def load_rows(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every finished arm run's row under ``run_dir`` (what a report is built from), each checked against its
    folder (``arms/ARM/BALANCER/seedS``)."""
    rows = []
    for p in sorted(Path(run_dir).glob(f"arms/**/{ROW}")):
        rows.append(read_row(p, f"delete {p.parent} to retrain that run (nas-mtl study)"))
        parts = p.relative_to(run_dir).parts
        _check_row_place(rows[-1], p, parts[1] if len(parts) == 5 else None)
    if not rows:
        raise ValueError(f"{run_dir}: no finished arm runs (arms/**/{ROW}); run `nas-mtl study` first")
    return rows


__all__ = [
    "Arm",
    "StudySpec",
    "load_rows",
    "load_study",
    "method_config",
    "parse_study",
    "run_baselines",
    "run_distributed_study",
    "run_job",
    "run_study",
    "study_jobs",
    "seeds_of_search",
    "slug",
    "with_device",
]
