"""The worker processes of a branch search: :func:`run_worker` (``nas-mtl worker``: join a study by name and
run its trials) and :func:`worker_processes` (the ``workers - 1`` of them a search starts beside itself). See
:mod:`nas_mtl.search.branching` for what happens to a dead worker's trial."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import sys
import warnings
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from ..balancing.base import check_stored_balancer
from ..processes import WorkerProcesses, cores_per_worker, torch_threads
from ..storage import CHILD_ENV, open_storage, redact, resolve
from .branch_config import BranchSearchConfig, Setup
from .branch_objective import TreeObjective, run_trials
from .branch_study import STUDY_ATTR, STUDY_FORMAT, attach_study, check_study_record, fail_running_trials, heartbeats
from .budget import CostModel
from .proxy import Proxy


def run_worker(
    storage: str,
    study_name: str,
    run_dir: str | Path,
    seed: int | None = None,
    trusted: Collection[str] = (),
) -> int:
    """Join the branch-search study ``study_name`` in ``storage`` and run trials until its budget is claimed.

    Everything else (data, space, proxy, budget) comes from the study; the warm start is loaded from (or
    trained into) ``run_dir``, which the caller names (a storage record never says where a worker writes; the
    search's own folder, recorded as ``run_dir`` in the study, is the usual choice). Returns the trials run here.
    The record is data: its dataset, space backbone and balancer must be registered names (or installed entry
    points), or code references listed in ``trusted`` (``nas-mtl worker --trust``).
    """
    handle = open_storage(storage)
    try:
        study = optuna.load_study(study_name=study_name, storage=handle)
    except KeyError:  # optuna: "Record does not exist."
        known = [s.study_name for s in optuna.get_all_study_summaries(handle)]
        raise ValueError(f"study {study_name!r} not found in {redact(storage)!r}; studies there: {known}") from None
    record = study.user_attrs.get(STUDY_ATTR)
    if not isinstance(record, Mapping) or record.get("format") != STUDY_FORMAT:
        raise ValueError(f"study {study_name!r} in {redact(storage)!r} was not created by nas-mtl search branch")
    if record.get("setup") is None:
        raise ValueError(
            f"study {study_name!r} records no dataset setup (started from Python without setup=); workers cannot join"
        )
    source = f"study {study_name!r} in {redact(storage)!r}"
    raw = record.get("config")
    proxy = raw.get("proxy") if isinstance(raw, Mapping) else None
    if isinstance(proxy, Mapping) and "balancer" in proxy:  # before the config, whose checks build the balancer
        check_stored_balancer(proxy["balancer"], f"{source}: config.proxy.balancer", trusted)
    config = BranchSearchConfig.from_dict(raw, f"{source}: config")
    setup = record["setup"]
    if not isinstance(setup, Mapping) or set(setup) != {f.name for f in dataclasses.fields(Setup)}:
        raise ValueError(f"{source}: setup: expected a table with dataset, dataset_kwargs and space")
    data, space = Setup(**setup).build(trusted, source)
    check_study_record(study, data, space, config)
    study = attach_study(study_name, handle, config, seed)
    reference = record.get("reference")
    if reference is not None and not _is_metric_table(reference):
        raise ValueError(f"{source}: reference: expected {{task: {{metric: number}}}} or null")
    proxy = Proxy.prepare(data, space, config.proxy, run_dir, reference=reference)
    costs = CostModel(data, space, config.shortlist_epochs)
    objective = TreeObjective(study, proxy, data.task_names, space.layers, space.branchable, config, costs=costs)
    return run_trials(objective, heartbeats(storage))


def _is_metric_table(value: Any) -> bool:
    return isinstance(value, Mapping) and all(
        isinstance(m, Mapping) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in m.values())
        for m in value.values()
    )


@contextlib.contextmanager
def worker_processes(
    url: str, config: BranchSearchConfig, n: int, run_dir: Path, trusted: Sequence[str] = ()
) -> Iterator[WorkerProcesses]:
    """``n - 1`` ``nas-mtl worker`` processes of the search's study in storage ``url`` (logs in RUN_DIR/workers/),
    joined when the block ends and terminated if it raises. Each process, and this one while they run, gets
    ``cpu_count // n`` torch threads. A worker that died (killed, or an error) is reported with a warning, not as
    a failure of the search: :func:`fail_orphans` fails the trial it left RUNNING so that this process runs it
    again."""
    share = cores_per_worker(n)
    with torch_threads(share if n > 1 else None), WorkerProcesses() as procs:
        if n > 1:
            (run_dir / "workers").mkdir(exist_ok=True)
            env = {**os.environ, CHILD_ENV: resolve(url)}
            for k in range(1, n):
                log = run_dir / "workers" / f"worker-{k}.log"
                procs.start(_worker_command(config, run_dir, k, share, trusted), env=env, log=log)
        yield procs
    for outcome in procs.wait():
        if outcome.kind != "ok":
            rc = outcome.returncode
            how = f"was killed (signal {outcome.signal})" if outcome.signal is not None else f"exited with code {rc}"
            warnings.warn(
                f"branch search: worker {how} (log {outcome.log}); its running trial is failed and the budget "
                "completed by this process",
                stacklevel=3,
            )


def _worker_command(
    config: BranchSearchConfig, run_dir: Path, k: int, threads: int, trusted: Sequence[str]
) -> list[str]:
    """The command line of worker ``k``: the storage URL (and any password) through the environment
    (:data:`~nas_mtl.storage.CHILD_ENV`), never on the command line."""
    return [
        sys.executable,
        "-m",
        "nas_mtl.cli",
        "worker",
        "--storage",
        f"env:{CHILD_ENV}",
        "--study",
        config.study_name,
        "--out",
        str(run_dir),
        "--seed",
        str(config.seed + k),
        "--threads",
        str(threads),
        "--exit-with-parent",
        *(arg for name in trusted for arg in ("--trust", name)),
    ]


def fail_orphans(procs: WorkerProcesses, study: optuna.Study) -> list[int]:
    """Mark FAIL the trials that the workers of ``procs`` which died (so far) left RUNNING (they would count
    against the budget); returns their numbers."""
    dead = tuple(f"{socket.gethostname()}:{o.pid}:" for o in procs.poll() if o.kind != "ok")
    if not dead:
        return []
    return fail_running_trials(
        study, study._storage, of=lambda t: str(t.user_attrs.get("worker", "")).startswith(dead), why="worker_died"
    )


__all__ = ["fail_orphans", "run_worker", "worker_processes"]
