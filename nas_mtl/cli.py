"""The ``nas-mtl`` command line. User mistakes exit with code 2 and a one-line message
(set NAS_MTL_DEBUG=1 for the traceback); a non-finite loss exits with 1."""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .backbones import list_backbones
from .balancing import create_balancer, list_balancers
from .cli_options import (
    CLI_DEFAULTS,
    UserError,
    add_config_arguments,
    config_from_args,
    device_arguments,
    flag_name,
    parse_key_values,
    show_storage,
)
from .cli_select import add_select_command
from .cli_study import add_status_command, add_study_command
from .data import create_dataset, list_datasets
from .graph import SharingGraph
from .runs import run_lock
from .space import SearchSpace, list_search_spaces, load_search_space
from .train import TrainConfig, resolve_device

EXIT_USER_ERROR = 2
EXIT_RUNTIME_ERROR = 1


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


def _training_parser(
    sub: argparse._SubParsersAction,
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


def _add_demo_command(sub: argparse._SubParsersAction) -> None:
    """``nas-mtl demo``: the baselines on multidigits, one seed (the quickstart is a study file)."""
    p = _training_parser(
        sub,
        "demo",
        "a one-seed demo: single-task vs hard sharing on multidigits (the quickstart study is "
        "nas-mtl study studies/quickstart.toml)",
        out="runs/demo",
        data="multidigits",
        space="resnet_small",
        epochs=6,
    )
    p.add_argument("--arms", default="single,hard", help="comma-separated: single,hard,independent")
    p.set_defaults(func=cmd_baselines)


def _add_baselines_command(sub: argparse._SubParsersAction) -> None:
    """``nas-mtl baselines``."""
    p = _training_parser(sub, "baselines", "train single-task / hard-sharing / independent baselines")
    p.add_argument("--arms", default="single,hard,independent", help="comma-separated: single,hard,independent")
    p.set_defaults(func=cmd_baselines)


def cmd_baselines(args: argparse.Namespace) -> None:
    import pandas as pd

    from .study import run_baselines

    data, space = _data_and_space(args)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    config = _config(args)
    run_baselines(data, space, config, args.out, arms, create_balancer(args.balancer))
    from .layout import load_rows
    from .report import format_table, runs_table, summary_table

    with pd.option_context("display.width", 200, "display.max_columns", 50):  # the table `nas-mtl study` prints
        print(format_table(summary_table(runs_table(load_rows(args.out)))).to_string(index=False))
    print(
        f"one seed ({config.seed}): these numbers have no interval, and differences smaller than the seed-to-seed "
        "noise mean nothing; a study with seeds = [0, 1, 2] (nas-mtl study) reports intervals and a verdict"
    )
    print(f"tables: {Path(args.out) / 'baselines.csv'}")


def _add_train_command(sub: argparse._SubParsersAction) -> None:
    """``nas-mtl train``."""
    p = _training_parser(sub, "train", "train one sharing graph (retrain a search's graph.json)")
    p.add_argument("--graph", default="hard", help="hard | independent | path to a graph JSON")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> None:
    from .baselines import train_graph

    config = _config(args)
    resolve_device(config.device)  # --device cuda without CUDA: the error before a run folder is made
    data, space = _data_and_space(args)
    graph = _graph_arg(args.graph, space, data.task_names)
    balancer = create_balancer(args.balancer)
    out = Path(args.out)
    with run_lock(out):
        net, result = train_graph(graph, data, space, config, balancer, out)
    cost = net.cost()
    print(f"graph: {graph}")
    print(f"params: {cost.params:,}  MACs/sample: {cost.macs:,}  train time: {result.train_seconds:.1f}s")
    _print_metrics("test metrics:", result.test)
    print(f"run folder: {out}")


def _add_search_command(sub: argparse._SubParsersAction) -> None:
    """``nas-mtl search METHOD``: one sub-command per registered search method."""
    from .search import SEARCH_METHODS, load_search_methods

    p = sub.add_parser("search", help="search for a sharing graph")
    methods = p.add_subparsers(dest="method", required=True, metavar="METHOD", help="the search method")
    for name in load_search_methods():
        method = SEARCH_METHODS.create(name)
        mp = methods.add_parser(name, help=method.help, description=method.help)
        _add_data_args(mp)
        mp.add_argument("--out", required=True, help="run folder (resumed if it exists)")
        add_config_arguments(mp, method.config, f"{name} options", CLI_DEFAULTS)
        mp.set_defaults(func=cmd_search)


def cmd_search(args: argparse.Namespace) -> None:
    from .search import SEARCH_METHODS

    method = SEARCH_METHODS.create(args.method)
    config = config_from_args(method.config, args, CLI_DEFAULTS)
    data, space = _data_and_space(args)
    out = Path(args.out)
    if args.method == "branch":
        from .search.branching import study_storage

        show_storage(study_storage(config, out))
    with run_lock(out):
        result = method.run(data, space, config, out)
        path = result.save(out, method.device(config))
    print(f"found ({result.method}, {result.seconds:.1f}s): {result.graph}")
    if result.candidates:
        print(f"{len(result.candidates)} candidate graph(s) in {out / 'candidates'}")
    print(f"graph: {path}   retrain with: nas-mtl train --graph {path} --data {args.data} --space {args.space} ...")


def _add_worker_command(sub: argparse._SubParsersAction) -> None:
    """``nas-mtl worker``: join a branch search."""
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
    p.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    _add_trust_arg(p, "the study's record (dataset, search space's backbone, balancer)")
    p.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> None:

    from .processes import exit_with_parent
    from .search.branching import run_worker
    from .storage import redact

    if args.exit_with_parent:
        exit_with_parent()
    show_storage(args.storage)
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


def _add_report_command(sub: argparse._SubParsersAction) -> None:
    """``nas-mtl report RUN_DIR``."""
    p = sub.add_parser("report", help="tables (Markdown/HTML/CSV) and figures for a study run folder")
    p.add_argument("run_dir", help="a study's run folder (what `nas-mtl study --out` wrote)")
    p.add_argument("--out", help="output folder (default RUN_DIR/report)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> None:
    from .report import write_report

    files = write_report(args.run_dir, args.out)
    text = Path(files["report.md"]).read_text()
    print("\n## ".join(text.split("\n## ")[:3]))  # the title, the verdict and the main table
    print("written: " + ", ".join(str(p) for p in files.values()))


def _add_export_command(sub: argparse._SubParsersAction) -> None:
    """``nas-mtl export RUN_DIR``."""
    p = sub.add_parser("export", help="export a trained run: safetensors + manifest, torch.export, ONNX")
    p.add_argument(
        "run_dir", help="a finished training run's folder (`nas-mtl train`, or a study's arms/ARM/BALANCER/seedS)"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--formats",
        default="safetensors,torch-export,onnx",
        help="comma-separated subset of: safetensors, torch-export, onnx",
    )
    p.add_argument(
        "--best",
        action="store_true",
        help="RUN_DIR is a study folder: export the run its verdict recommends (the seed closest to the mean)",
    )
    p.add_argument("--arm", help="with --best: the run of this arm (ARM or ARM/BALANCER) instead")
    _add_trust_arg(p, "the run's model.json (its backbone)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> None:
    from .export import export_run

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    run_dir = _study_run(args.run_dir, args.arm) if args.best or args.arm else Path(args.run_dir)
    if not (run_dir / "model.json").is_file():
        if (run_dir / "arms").is_dir():
            raise UserError(f"{run_dir}: a study folder; export its recommended run with --best (or --arm ARM)")
        if (run_dir / "search.json").is_file():
            raise UserError(
                f"{run_dir}: a search folder holds a graph, not a trained network; retrain it first: "
                f"nas-mtl train --graph {run_dir / 'graph.json'} ... --out RUN, then export RUN"
            )
    report = export_run(run_dir, args.out, formats, trusted=_trusted(args.trust))
    for fmt, name in report["files"].items():
        print(f"{fmt:>13}: {Path(args.out) / name}   max |Δ| vs PyTorch: {report['max_abs_diff'][fmt]:.3g}")


def _add_predict_command(sub: argparse._SubParsersAction) -> None:
    """``nas-mtl predict EXPORT INPUTS``."""
    p = sub.add_parser("predict", help="predictions of an exported network on new inputs (CSV and .npy)")
    p.add_argument("export", help="an export folder (`nas-mtl export --out`)")
    p.add_argument(
        "inputs", help="raw inputs: a .npy array (N, C, H, W), a folder of images, or a data folder with a tasks.toml"
    )
    p.add_argument("--out", required=True, help="output folder: predictions.csv and one TASK.npy per task")
    p.add_argument("--layout", default="CHW", choices=["CHW", "HWC"], help="channel order of a .npy array's samples")
    p.add_argument("--split", default="test", help="the split of a data folder to predict (default: test)")
    p.add_argument("--batch-size", type=int, default=256, help="inputs per forward pass")
    _add_trust_arg(p, "the export's manifest (its backbone)")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> None:
    from .predict import predict, read_inputs, write_predictions
    from .runs import read_json

    manifest = read_json(Path(args.export) / "manifest.json", "export manifest", ("tasks", "files"), "export again")
    shape = tuple((manifest.get("input") or {}).get("shape") or manifest.get("input_shape") or ())
    if len(shape) != 3:
        raise UserError(f"{args.export}/manifest.json: input.shape: expected (C, H, W)")
    inputs = read_inputs(args.inputs, shape, args.layout, args.split)
    outputs = predict(args.export, inputs, args.batch_size, _trusted(args.trust))
    path = write_predictions(outputs, manifest, args.out)
    print(f"{len(inputs)} inputs, tasks {', '.join(outputs)}: {path}")


def _study_run(study_dir: str, arm: str | None) -> Path:
    """The run folder of a study's recommended row (``--best``), or of ``arm``'s (ARM or ARM/BALANCER) row."""
    from .layout import load_rows
    from .report import runs_table, summary_table, verdict
    from .report.verdict import representative_run

    runs = runs_table(load_rows(study_dir))
    if arm is None:
        run = verdict(runs).run
    else:
        name, _, balancer = arm.partition("/")
        rows = summary_table(runs).loc[lambda t: t.index.get_level_values("arm") == name]
        keys = [k for k in rows.index if not balancer or k[1] == balancer]
        if not keys:
            raise UserError(
                f"--arm: {study_dir} has no row {arm!r}; rows: {[f'{a}/{b}' for a, b in summary_table(runs).index]}"
            )
        run = representative_run(runs, max(keys, key=lambda k: rows.loc[k, "delta_m"]))
    if run is None or ";" in run:
        raise UserError(f"{study_dir}: the chosen row is one network per task; export each of its run folders: {run}")
    print(f"exporting {Path(study_dir) / run}")
    return Path(study_dir) / run


def _add_graph_command(sub: argparse._SubParsersAction) -> None:
    """``nas-mtl graph FILE``."""
    p = sub.add_parser("graph", help="validate and describe a sharing-graph JSON file")
    p.add_argument("file", help="a sharing-graph JSON file (a search's graph.json, or one written by hand)")
    p.add_argument("--space", help="search space to check the graph against and cost it on")
    p.set_defaults(func=cmd_graph)


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


def _add_data_command(sub: argparse._SubParsersAction) -> None:
    """``nas-mtl data check``."""
    p = sub.add_parser("data", help="check a dataset: read every sample and summarise it")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND", help="what to do with the data")
    p = data_sub.add_parser(
        "check",
        help="read every sample of every split, check each target and print sizes, classes, ranges, missing labels",
    )
    p.add_argument(
        "data", help="a data folder with a tasks.toml, a dataset name, or MODULE:FUNCTION / FILE.py:FUNCTION"
    )
    p.add_argument("--data-arg", action="append", default=[], metavar="KEY=VALUE", help="dataset option (repeatable)")
    p.set_defaults(func=cmd_data_check)


def cmd_data_check(args: argparse.Namespace) -> None:
    from .data.folder import format_summary, summarize

    data = create_dataset(args.data, **parse_key_values(args.data_arg, "--data-arg"))
    print(format_summary(summarize(data), data.tasks))
    print("ok: every sample of every split read and checked")


def _add_list_command(sub: argparse._SubParsersAction) -> None:
    """``nas-mtl list``."""
    p = sub.add_parser("list", help="list datasets, backbones, search spaces and balancers")
    p.set_defaults(func=cmd_list)


def cmd_list(args: argparse.Namespace) -> None:
    from .balancing.base import BALANCERS
    from .config import plain_text

    for name, items in (
        ("datasets", list_datasets()),
        ("backbones", list_backbones()),
        ("search spaces", list_search_spaces()),
    ):
        print(f"{name}: {', '.join(items)}")
    print("balancers (NAME or NAME:KEY=VALUE,...; paper; cost per step):")
    for name in list_balancers():
        factory = BALANCERS.factory(name)
        about = plain_text((factory.__doc__ or "").strip().splitlines()[0]) if factory.__doc__ else ""
        print(f"  {name}: {about} [{getattr(factory, 'cost', 'see its documentation')}]")


def build_parser() -> argparse.ArgumentParser:
    """The ``nas-mtl`` parser: the global ``--threads``, then each sub-command as its ``add_*_command`` sets it up
    (beside the command), in the order ``--help`` lists them."""
    parser = argparse.ArgumentParser(prog="nas-mtl", description="Neural architecture search for multi-task learning.")
    parser.add_argument(
        "--threads",
        dest="torch_threads",
        type=int,
        metavar="N",
        help=GLOBAL_HELP,
    )
    parser.add_argument("--version", action="version", version=f"nas-mtl {_version()}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="what to run (nas-mtl COMMAND --help for its options)"
    )
    for add in (
        _add_demo_command,
        _add_baselines_command,
        _add_train_command,
        _add_search_command,
        _add_worker_command,
        add_study_command,
        add_status_command,
        _add_report_command,
        _add_export_command,
        _add_predict_command,
        _add_graph_command,
        add_select_command,
        _add_data_command,
        _add_list_command,
    ):
        add(sub)
    _accept_global_options(sub)
    return parser


GLOBAL_HELP = "torch CPU threads (default: torch's; 1 is often faster on a busy machine)"


def _accept_global_options(sub: argparse._SubParsersAction) -> None:
    """Every sub-command (and theirs) also takes ``--threads`` after its name: ``nas-mtl study FILE --threads 1``
    as ``nas-mtl --threads 1 study FILE`` (default suppressed, so it never overrides the one given before)."""
    for parser in dict.fromkeys(sub.choices.values()):
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            for action in nested:
                _accept_global_options(action)
            continue
        parser.add_argument(
            "--threads", dest="torch_threads", type=int, metavar="N", default=argparse.SUPPRESS, help=GLOBAL_HELP
        )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nas_mtl")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """A command's warnings as ``nas-mtl: warning: MESSAGE`` lines (not Python's file:line and source line)."""
    shown = warnings.formatwarning

    def one_line(message: Warning | str, *args: Any, **kwargs: Any) -> str:
        return f"nas-mtl: warning: {message}\n"

    warnings.formatwarning = one_line
    try:
        yield
    finally:
        warnings.formatwarning = shown


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    try:
        argv = device_arguments(sys.argv[1:] if argv is None else argv)  # --device cuda:N, before CUDA starts
    except UserError as err:
        print(f"nas-mtl: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    args = build_parser().parse_args(argv)
    if args.torch_threads is not None:
        if args.torch_threads < 1:
            print(f"nas-mtl: error: --threads: expected a positive integer, got {args.torch_threads}", file=sys.stderr)
            return EXIT_USER_ERROR
        torch.set_num_threads(args.torch_threads)
    try:
        with one_line_warnings():
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
