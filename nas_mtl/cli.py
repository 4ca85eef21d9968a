"""The ``nas-mtl`` command line. User mistakes exit with code 2 and a one-line message
(set NAS_MTL_DEBUG=1 for the traceback); a non-finite loss exits with 1."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .backbones import list_backbones
from .balancing import create_balancer, list_balancers
from .balancing.base import parse_key_value
from .config import build_config, options, to_options
from .data import create_dataset, list_datasets
from .graph import SharingGraph
from .runs import TEXT, or_null, read_record, run_lock
from .space import SearchSpace, list_search_spaces, load_search_space
from .storage import GRACE_S, HEARTBEAT_S
from .tracking import TrackingConfig
from .train import TrainConfig

EXIT_USER_ERROR = 2
EXIT_RUNTIME_ERROR = 1


class UserError(Exception):
    """A mistake in the command line or input files: reported in one line, no traceback."""


def parse_key_values(items: Sequence[str], flag: str) -> dict[str, Any]:
    """``["k=v", ...]`` (values parsed as numbers / booleans where they look like one) -> ``{k: v}``."""
    out: dict[str, Any] = {}
    for item in items:
        pair = parse_key_value(item)
        if pair is None:
            raise UserError(f"{flag}: expected KEY=VALUE, got {item!r}")
        out[pair[0]] = pair[1]
    return out


def flag_name(key: str) -> str:
    """The command-line flag of config option ``key``."""
    return "--" + key.replace("_", "-")


def add_config_arguments(
    parser: argparse.ArgumentParser, cls: type, title: str, defaults: Mapping[str, Any] | None = None
) -> None:
    """One flag per option of config class ``cls`` (see :mod:`nas_mtl.config`), help from its docstring.

    Flags not given leave no attribute, so :func:`config_from_args` keeps the dataclass's defaults (or
    ``defaults``, e.g. progress bars on for the command line). Booleans get ``--x`` / ``--no-x``, mappings are
    repeatable ``KEY=VALUE`` flags, lists are comma-separated.
    """
    group = parser.add_argument_group(title)
    defaults = defaults or {}
    for opt in options(cls):
        default = defaults.get(opt.key, opt.default)
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help = f"{opt.help.rstrip('.')} (default: {'none' if shown is None else shown})" if opt.help else None
        kw: dict[str, Any] = {"dest": opt.key, "default": argparse.SUPPRESS, "help": help}
        if opt.type is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(opt.default, Mapping):
            kw.update(action="append", metavar="KEY=VALUE")
        elif opt.choices is not None:
            kw["choices"] = opt.choices
        else:
            kw["metavar"] = opt.key.upper()
        group.add_argument(flag_name(opt.key), *opt.flags, **kw)


def config_from_args(cls: type, args: argparse.Namespace, defaults: Mapping[str, Any] | None = None) -> Any:
    """The ``cls`` config of the flags :func:`add_config_arguments` added (one-line errors naming the flag)."""
    keys = {o.key for o in options(cls)}
    given = {**{k: v for k, v in (defaults or {}).items() if k in keys}}
    given.update({k: v for k, v in vars(args).items() if k in keys})
    return build_config(cls, given, where=flag_name, text=True)


CLI_DEFAULTS = {"progress": True}
"""Where the command line differs from the library: progress is shown (``--no-progress`` hides it)."""


def _add_train_args(p: argparse.ArgumentParser, epochs: int = 10) -> None:
    add_config_arguments(p, TrainConfig, "training", {**CLI_DEFAULTS, "epochs": epochs})
    p.add_argument(
        "--balancer",
        default="equal",
        metavar="NAME[:KEY=VALUE,...]",
        help=f"loss balancer ({', '.join(list_balancers())}), e.g. mgda:normalization=l2",
    )


def _add_data_args(p: argparse.ArgumentParser, data: str | None = None, space: str | None = None) -> None:
    g = p.add_argument_group("data and search space")
    g.add_argument("--data", required=data is None, default=data, help=f"dataset ({', '.join(list_datasets())})")
    g.add_argument(
        "--data-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset option, e.g. n_train=2000 or root=/data/nyuv2 (repeatable)",
    )
    g.add_argument(
        "--space",
        required=space is None,
        default=space,
        help=f"search space name or .toml path ({', '.join(list_search_spaces())})",
    )


def _config(args: argparse.Namespace) -> TrainConfig:
    return config_from_args(TrainConfig, args, {**CLI_DEFAULTS, "epochs": args.default_epochs})


def _data_and_space(args: argparse.Namespace):
    data = create_dataset(args.data, **parse_key_values(args.data_arg, "--data-arg"))
    space = load_search_space(args.space, input_shape=data.input_shape)
    return data, space


def _graph_arg(value: str, space: SearchSpace, tasks: Sequence[str]) -> SharingGraph:
    if value == "hard":
        return space.hard_sharing(tasks)
    if value == "independent":
        return space.independent(tasks)
    return SharingGraph.load(value)


def _print_metrics(title: str, metrics: dict[str, dict[str, float]]) -> None:
    print(title)
    for task, values in metrics.items():
        print(f"  {task:>14}: " + "  ".join(f"{k}={v:.4f}" for k, v in values.items()))


def cmd_train(args: argparse.Namespace) -> None:
    from .baselines import train_graph

    data, space = _data_and_space(args)
    graph = _graph_arg(args.graph, space, data.task_names)
    balancer = create_balancer(args.balancer)
    out = Path(args.out)
    with run_lock(out):
        net, result = train_graph(graph, data, space, _config(args), balancer, out)
    cost = net.cost()
    print(f"graph: {graph}")
    print(f"params: {cost.params:,}  MACs/sample: {cost.macs:,}  train time: {result.train_seconds:.1f}s")
    _print_metrics("test metrics:", result.test)
    print(f"run folder: {out}")


def cmd_baselines(args: argparse.Namespace) -> None:
    import pandas as pd

    from .study import run_baselines

    data, space = _data_and_space(args)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    config = _config(args)
    table = run_baselines(data, space, config, args.out, arms, create_balancer(args.balancer))
    with pd.option_context("display.width", 200, "display.max_columns", 50, "display.float_format", "{:.4f}".format):
        print(table.to_string())
    print(
        f"one seed ({config.seed}): these numbers have no interval, and differences smaller than the seed-to-seed "
        "noise mean nothing; a study with seeds = [0, 1, 2] (nas-mtl study) reports intervals and a verdict"
    )
    print(f"tables: {Path(args.out) / 'baselines.csv'}")


def cmd_search(args: argparse.Namespace) -> None:
    from .search import SEARCH_METHODS

    method = SEARCH_METHODS.create(args.method)
    config = config_from_args(method.config, args, CLI_DEFAULTS)
    data, space = _data_and_space(args)
    out = Path(args.out)
    if args.method == "branch":
        from .search.branching import study_storage

        _show_storage(study_storage(config, out))
    with run_lock(out):
        result = method.run(data, space, config, out)
        path = result.save(out, method.device(config))
    print(f"found ({result.method}, {result.seconds:.1f}s): {result.graph}")
    if result.candidates:
        print(f"{len(result.candidates)} candidate graph(s) in {out / 'candidates'}")
    print(f"graph: {path}   retrain with: nas-mtl train --graph {path} --data {args.data} --space {args.space} ...")


def _show_storage(spec: str) -> None:
    """Say on stderr, once per command, which storage ``spec`` opens (password hidden)."""
    from .storage import describe

    print(f"nas-mtl: storage: {describe(spec)}", file=sys.stderr, flush=True)


def cmd_worker(args: argparse.Namespace) -> None:
    import torch

    from .processes import exit_with_parent
    from .search.branching import run_worker
    from .storage import redact

    if args.exit_with_parent:
        exit_with_parent()
    if args.threads:
        torch.set_num_threads(args.threads)
    _show_storage(args.storage)
    n = run_worker(args.storage, args.study, args.out, args.seed, trusted=_trusted(args.trust))
    print(f"worker: {n} trial(s) run; study {args.study!r} in {redact(args.storage)}")


def _trusted(references: Sequence[str]) -> tuple[str, ...]:
    """``--trust`` references as records store them (a relative ``FILE.py`` made absolute)."""
    from .registry import resolve_reference

    return tuple(resolve_reference(r, Path.cwd()) for r in references)


def _add_trust_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="MODULE:FUNCTION",
        help=f"a code reference (MODULE:FUNCTION or FILE.py:FUNCTION) that {what} may name; without it, data never "
        "names code to run, only registered names (repeatable)",
    )


def cmd_study(args: argparse.Namespace) -> None:
    import time

    from .study import load_study, run_distributed_study, run_study, with_device

    if args.worker and not args.storage:
        raise UserError("--worker: needs --storage (the storage the study's jobs are in)")
    if args.workers < 1:
        raise UserError(
            f"--workers: expected a positive integer (worker processes on this machine), got {args.workers}"
        )
    if args.workers > 1 and not args.storage:
        raise UserError("--workers: needs --storage (the workers share its job queue); without one, --jobs N")
    if args.storage and args.jobs != 1:
        raise UserError("--jobs: not with --storage; start one worker per device instead (--worker or --workers N)")
    spec = load_study(args.file)
    if args.device is not None:
        spec = with_device(spec, _one_device(args.device))
    spec = dataclasses.replace(spec, tracking=config_from_args(TrackingConfig, args, to_options(spec.tracking)))
    out = Path(args.out) if args.out else Path("runs") / spec.name
    t0 = time.perf_counter()
    if not args.storage:
        rows = run_study(spec, out, progress=not args.no_progress, jobs=args.jobs)
        _print_study(spec.name, out, rows, t0)
        return
    if not args.launched:  # a launched worker's launcher said it
        _show_storage(args.storage)
    if args.launched:  # one of another process's --workers: it ends with that process
        from .processes import exit_with_parent

        exit_with_parent()
        if os.getppid() != args.launched:  # it died while this one started
            raise UserError("--workers: the process that started this worker has ended")
        signal.signal(signal.SIGTERM, _interrupt)
    with _LocalWorkers(args, out) as workers:
        rows = run_distributed_study(
            spec,
            out,
            args.storage,
            worker_only=args.worker,
            progress=not args.no_progress,
            threads=args.torch_threads,
            local_workers=args.workers,
            heartbeat_s=args.heartbeat_s,
            grace_s=args.grace_s,
            wait_s=math.inf if args.launched else args.wait_s,  # its launcher publishes the study, or ends it
            outcome=not args.launched,
            launch=args.launch or workers.launch,  # a worker joins what its launcher publishes, not an older record
        )
        if not args.launched:  # the launcher reports, once
            _print_study(spec.name, out, rows, t0)
            workers.join()


def _print_study(name: str, out: Path, rows: list[dict[str, Any]], t0: float) -> None:
    """Write the report of run folder ``out`` and print its summary table and verdict."""
    import time

    from .report import format_table, runs_table, summary_table, verdict, write_report

    files = write_report(out)
    runs = runs_table(rows)
    print(format_table(summary_table(runs)).to_string(index=False))
    found = verdict(runs, rows)
    print("\nVerdict:\n" + "\n".join(f"- {line}" for line in (*found.warnings, *found.lines)))
    print(f"\nstudy {name!r}: {time.perf_counter() - t0:.0f}s this session; report: {files['report.md']}")


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM as Ctrl-C: the running job returns to the queue at once and launched workers are stopped."""
    raise KeyboardInterrupt


class _LocalWorkers:
    """``nas-mtl study --workers N``: N - 1 ``--worker`` processes of the same study started beside this one.

    They get this process's study file, run folder and options, the storage URL through the environment
    (:data:`~nas_mtl.storage.CHILD_ENV`, never on a command line) and the worker count, so every job splits the
    cores N ways from the first; they leave the outcome (failed jobs, MLflow, the report) to this process. They
    start at once, beside this process (their imports overlap its own), but join the study only once this process
    has published it with their launch token (:data:`~nas_mtl.jobs.LAUNCH_ATTR`), never the record a previous run
    left. They run in their own session (a terminal's Ctrl-C reaches this process only) and end with it: Ctrl-C
    or SIGTERM here terminates them (their running jobs return to the queue at once), and they exit when this
    process dies; a worker killed by itself leaves its job to the heartbeat recovery (:mod:`nas_mtl.jobs`): the
    others take it over after the grace period.
    """

    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args, self.out = args, out
        self.procs: list[subprocess.Popen] = []
        self.stopped: set[int] = set()  # pids this process had to kill
        self.previous: Any = None
        self.env: dict[str, str] = {}
        self.launch: str | None = None

    def __enter__(self) -> _LocalWorkers:
        args = self.args
        if args.workers == 1 or args.launched:
            return self
        from .storage import CHILD_ENV, resolve

        self.env = {**os.environ, CHILD_ENV: resolve(args.storage)}  # a bad env:/file: spec fails here, first
        cmd = [sys.executable, "-m", "nas_mtl.cli"]
        cmd += ["--threads", str(args.torch_threads)] if args.torch_threads else []
        cmd += ["study", args.file, "--out", str(self.out), "--storage", f"env:{CHILD_ENV}", "--worker"]
        cmd += ["--launched", str(os.getpid()), "--workers", str(args.workers)]
        if not args.worker:  # this process publishes: they wait for this launch (a joining one: they join as it does)
            self.launch = uuid.uuid4().hex
            cmd += ["--launch", self.launch]
        cmd += ["--no-progress"] if args.no_progress else []
        for flag, value in (
            ("--device", args.device),
            ("--heartbeat-s", args.heartbeat_s),
            ("--grace-s", args.grace_s),
        ):
            cmd += [flag, str(value)] if value is not None else []
        self.previous = signal.signal(signal.SIGTERM, _interrupt)
        for _ in range(args.workers - 1):
            self.procs.append(subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL, start_new_session=True))
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        if kind is not None:
            for proc in self.procs:
                if proc.poll() is None:
                    proc.terminate()
        self._wait()

    def _wait(self) -> None:
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.stopped.add(proc.pid)
                proc.kill()
                proc.wait()

    def join(self) -> None:
        """Wait for the workers (they end once no job is left). One killed by a signal or stopped (exit 130) is a
        warning: its job was returned or taken over; one that exited with an error a :class:`UserError` naming
        it."""
        self._wait()
        for proc in self.procs:
            if proc.pid in self.stopped:
                print(
                    f"nas-mtl: warning: --workers: worker process {proc.pid} did not end within 60 s of the "
                    "study's end and was killed",
                    file=sys.stderr,
                )
            elif proc.returncode < 0 or proc.returncode == 130:
                how = f"killed (signal {-proc.returncode})" if proc.returncode < 0 else "interrupted"
                print(
                    f"nas-mtl: warning: --workers: worker process {proc.pid} was {how}; the others took its job over",
                    file=sys.stderr,
                )
        failed = [p for p in self.procs if p.returncode > 0 and p.returncode != 130 and p.pid not in self.stopped]
        if failed:
            codes = ", ".join(f"{p.pid} exited with code {p.returncode}" for p in failed)
            raise UserError(f"--workers: worker process {codes} (its error is above); the others finished the study")


def _one_device(device: str) -> str:
    """``cuda:N`` shows this process GPU N only (``CUDA_VISIBLE_DEVICES``, before CUDA starts) and is then
    ``cuda``: one worker per GPU; other values pass through."""
    match = re.fullmatch(r"cuda:(\d+)", device)
    if match is None:
        if device not in TrainConfig.DEVICES:
            raise UserError(f"--device: expected one of {list(TrainConfig.DEVICES)} or cuda:N, got {device!r}")
        return device
    os.environ["CUDA_VISIBLE_DEVICES"] = match.group(1)
    return "cuda"


def cmd_status(args: argparse.Namespace) -> None:
    from .jobs import JobQueue, count_states
    from .storage import check_exists
    from .study import QUEUE_RECORD

    record = Path(args.run_dir) / QUEUE_RECORD
    if not record.is_file():
        raise UserError(f"{record}: missing; {args.run_dir} is not a distributed study (nas-mtl study --storage)")
    schema = {"storage": or_null(TEXT), "study": TEXT}
    saved = read_record(record, "distributed study record", schema, "rerun nas-mtl study --storage")
    storage = args.storage or saved.get("storage")
    if not storage:
        raise UserError(f"{record}: the storage URL holds a password and is not recorded; give --storage URL")
    check_exists(storage)  # a read-only command: a storage named by the record is opened, never made
    queue = JobQueue(storage, saved["study"])
    lines = queue.table()
    counts = count_states(lines)
    print(f"study {saved['study']!r} in {queue.shown}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    shown = [line for line in lines if args.all or line["state"] != "done"]
    if shown:
        import pandas as pd

        table = pd.DataFrame(shown).fillna("")
        table["seconds"] = table["seconds"].map(lambda v: f"{v:.0f}" if v != "" else "")
        print(table.to_string(index=False))


def cmd_report(args: argparse.Namespace) -> None:
    from .report import write_report

    files = write_report(args.run_dir, args.out)
    text = Path(files["report.md"]).read_text()
    print("\n## ".join(text.split("\n## ")[:3]))  # the title, the verdict and the main table
    print("written: " + ", ".join(str(p) for p in files.values()))


def cmd_export(args: argparse.Namespace) -> None:
    from .export import export_run

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    report = export_run(args.run_dir, args.out, formats, trusted=_trusted(args.trust))
    for fmt, name in report["files"].items():
        print(f"{fmt:>13}: {Path(args.out) / name}   max |Δ| vs PyTorch: {report['max_abs_diff'][fmt]:.3g}")


def cmd_graph(args: argparse.Namespace) -> None:
    graph = SharingGraph.load(args.file)
    print(graph)
    print(f"tree: {graph.is_tree()}  copies per layer: {[graph.copies(i) for i in range(graph.num_layers)]}")
    if args.space:
        space = load_search_space(args.space)
        space.check_graph(graph)
        c = space.backbone.layer_costs()
        cost = graph.cost(c.params, c.macs)
        print(f"backbone params: {cost.params:,}  backbone MACs/sample: {cost.macs:,} (heads excluded)")


def cmd_data_check(args: argparse.Namespace) -> None:
    from .data.folder import format_summary, summarize

    data = create_dataset(args.data, **parse_key_values(args.data_arg, "--data-arg"))
    print(format_summary(summarize(data), data.tasks))
    print("ok: every sample of every split read and checked")


def cmd_list(args: argparse.Namespace) -> None:
    from .balancing.base import BALANCERS

    for name, items in (
        ("datasets", list_datasets()),
        ("backbones", list_backbones()),
        ("search spaces", list_search_spaces()),
    ):
        print(f"{name}: {', '.join(items)}")
    print("balancers (NAME or NAME:KEY=VALUE,...; paper; cost per step):")
    for name in list_balancers():
        factory = BALANCERS.factory(name)
        about = (factory.__doc__ or "").strip().splitlines()[0] if factory.__doc__ else ""
        print(f"  {name}: {about} [{getattr(factory, 'cost', 'see its documentation')}]")


def _training_parser(
    sub,
    name: str,
    help: str,
    out: str | None = None,
    data: str | None = None,
    space: str | None = None,
    epochs: int = 10,
) -> argparse.ArgumentParser:
    """A sub-command that trains: data/space options, training options, ``--out`` (required without a default)."""
    p = sub.add_parser(name, help=help, description=help)
    _add_data_args(p, data=data, space=space)
    _add_train_args(p, epochs=epochs)
    p.set_defaults(default_epochs=epochs)
    p.add_argument("--out", required=out is None, default=out, help="run folder (resumed if it exists)")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nas-mtl", description="Neural architecture search for multi-task learning.")
    parser.add_argument(
        "--threads",
        dest="torch_threads",
        type=int,
        metavar="N",
        help="torch CPU threads (default: torch's; 1 is often faster on a busy machine)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = _training_parser(
        sub,
        "quickstart",
        "single-task vs hard-sharing baselines on multidigits, one seed",
        out="runs/quickstart-baselines",
        data="multidigits",
        space="resnet_small",
        epochs=6,
    )
    p.add_argument("--arms", default="single,hard", help="comma-separated: single,hard,independent")
    p.set_defaults(func=cmd_baselines)

    p = _training_parser(sub, "baselines", "train single-task / hard-sharing / independent baselines")
    p.add_argument("--arms", default="single,hard,independent", help="comma-separated: single,hard,independent")
    p.set_defaults(func=cmd_baselines)

    p = _training_parser(sub, "train", "train one sharing graph (retrain a search's graph.json)")
    p.add_argument("--graph", default="hard", help="hard | independent | path to a graph JSON")
    p.set_defaults(func=cmd_train)

    from .search import SEARCH_METHODS, load_search_methods

    p = sub.add_parser("search", help="search for a sharing graph")
    methods = p.add_subparsers(dest="method", required=True, metavar="METHOD")
    for name in load_search_methods():
        method = SEARCH_METHODS.create(name)
        mp = methods.add_parser(name, help=method.help, description=method.help)
        _add_data_args(mp)
        mp.add_argument("--out", required=True, help="run folder (resumed if it exists)")
        add_config_arguments(mp, method.config, f"{name} options", CLI_DEFAULTS)
        mp.set_defaults(func=cmd_search)

    p = sub.add_parser("worker", help="join a branch search (Optuna study) by name and run its trials")
    p.add_argument(
        "--storage",
        required=True,
        help="the study's storage: URL (sqlite:///..., postgresql://...), journal:PATH, or env:VAR / file:PATH "
        "holding the URL (keeps a password off the command line)",
    )
    p.add_argument("--study", default="branch", help="study name")
    p.add_argument(
        "--out",
        required=True,
        help="run folder holding the warm start (the search's --out, or a copy of it; the worker trains it there "
        "if missing)",
    )
    p.add_argument("--seed", type=int, help="sampler seed (default: random)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    _add_trust_arg(p, "the study's record (dataset, search space's backbone, balancer)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("study", help="run (or resume) a study file: searches + baselines x balancers x seeds")
    p.add_argument("file", help="study TOML, e.g. studies/quickstart.toml")
    p.add_argument("--out", help="run folder (default runs/NAME; resumed if it exists)")
    p.add_argument(
        "--device",
        help="override the device of every run and search: auto, cpu, cuda or cuda:N (this process sees GPU N only)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--storage",
        help="run the study as jobs in this Optuna storage (sqlite:///PATH on one machine, postgresql://... across "
        "machines, or env:VAR / file:PATH holding the URL): records and enqueues the jobs, then works on them",
    )
    p.add_argument(
        "--worker",
        action="store_true",
        help="with --storage: only work on the jobs of a study already started there (start any number, anywhere "
        "that sees the storage and the run folder)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="with --storage: N worker processes on this machine, this one and N - 1 it starts (they end with it; "
        "each job gets cores / N torch threads unless --threads is given; default 1)",
    )
    p.add_argument("--launched", type=int, metavar="PID", help=argparse.SUPPRESS)  # started by PID's --workers
    p.add_argument("--launch", metavar="TOKEN", help=argparse.SUPPRESS)  # join what that launch publishes
    p.add_argument(
        "--wait-s",
        type=float,
        default=600.0,
        help="with --worker: how long to wait for the study to be published in the storage (default 600)",
    )
    p.add_argument(
        "--heartbeat-s",
        type=int,
        help=f"with --storage: seconds between a job's heartbeats (default: NAS_MTL_HEARTBEAT_S or {HEARTBEAT_S})",
    )
    p.add_argument(
        "--grace-s",
        type=int,
        help="with --storage: seconds without a heartbeat after which a job's worker counts as dead and the job "
        f"returns to the queue (default: NAS_MTL_GRACE_S or {GRACE_S})",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at once, each in its own process with threads/jobs torch threads (at least 1); "
        "the numbers depend on the threads per run (recorded in each row's env), so --jobs 2 on "
        "2 threads reproduces --threads 1 bitwise",
    )
    add_config_arguments(p, TrackingConfig, "tracking (overrides the study file's [tracking])")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("status", help="the jobs of a distributed study: done, running (where, since when), waiting")
    p.add_argument("run_dir", help="the study's run folder")
    p.add_argument("--storage", help="the storage, when its URL holds a password (not recorded in the run folder)")
    p.add_argument("--all", action="store_true", help="list finished jobs too")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("report", help="tables (Markdown/HTML/CSV) and figures for a study run folder")
    p.add_argument("run_dir")
    p.add_argument("--out", help="output folder (default RUN_DIR/report)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="export a trained run: safetensors + manifest, torch.export, ONNX")
    p.add_argument("run_dir", help="a finished `nas-mtl train` run folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--formats", default="safetensors,torch-export,onnx", help="comma-separated subset")
    _add_trust_arg(p, "the run's model.json (its backbone)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("graph", help="validate and describe a sharing-graph JSON file")
    p.add_argument("file")
    p.add_argument("--space", help="search space to check the graph against and cost it on")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("data", help="check a dataset: read every sample and summarise it")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser(
        "check",
        help="read every sample of every split, check each target and print sizes, classes, ranges, missing labels",
    )
    p.add_argument(
        "data", help="a data folder with a tasks.toml, a dataset name, or MODULE:FUNCTION / FILE.py:FUNCTION"
    )
    p.add_argument("--data-arg", action="append", default=[], metavar="KEY=VALUE", help="dataset option (repeatable)")
    p.set_defaults(func=cmd_data_check)

    p = sub.add_parser("list", help="list datasets, backbones, search spaces and balancers")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    args = build_parser().parse_args(argv)
    if args.torch_threads is not None:
        if args.torch_threads < 1:
            print(f"nas-mtl: error: --threads: expected a positive integer, got {args.torch_threads}", file=sys.stderr)
            return EXIT_USER_ERROR
        torch.set_num_threads(args.torch_threads)
    try:
        args.func(args)
    except (UserError, ValueError, TypeError, OSError) as err:  # OSError: a bad path (a file, read-only, ...)
        if os.environ.get("NAS_MTL_DEBUG"):
            raise
        print(f"nas-mtl: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (MemoryError, torch.OutOfMemoryError) as err:  # host or GPU memory
        if os.environ.get("NAS_MTL_DEBUG"):
            raise
        where = "GPU" if isinstance(err, torch.OutOfMemoryError) else "host"
        print(f"nas-mtl: error: out of {where} memory (smaller data sizes or batch sizes?)", file=sys.stderr)
        return EXIT_USER_ERROR
    except FloatingPointError as err:
        print(f"nas-mtl: training stopped: {err}", file=sys.stderr)
        return EXIT_RUNTIME_ERROR
    except KeyboardInterrupt:
        if not getattr(args, "launched", False):  # a launched worker's launcher says it once
            print("nas-mtl: interrupted; finished epochs are kept in the run folder's checkpoint", file=sys.stderr)
        return 130
    return 0


def console() -> None:
    """The ``nas-mtl`` command (and ``python -m nas_mtl.cli``): :func:`main`, then exit without the interpreter's
    final garbage collections, which walked every object torch, pandas, optuna and the run left (1.3 s of each
    command's and worker's exit, measured on a study); the memory goes back to the system all the same, and exit
    handlers (``atexit``, ``weakref.finalize``) still run; ``__del__`` of objects in reference cycles does not
    (every file nas_mtl writes is closed by then)."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    console()


__all__ = [
    "CLI_DEFAULTS",
    "EXIT_RUNTIME_ERROR",
    "EXIT_USER_ERROR",
    "UserError",
    "add_config_arguments",
    "build_parser",
    "config_from_args",
    "console",
    "flag_name",
    "main",
    "parse_key_values",
]
