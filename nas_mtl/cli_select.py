"""``nas-mtl select TABLE``: network selection under budgets from a table of measured networks
(:mod:`nas_mtl.selection`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .cli_options import UserError


def add_select_command(sub: argparse._SubParsersAction) -> None:
    """``nas-mtl select TABLE --budgets ...``."""
    p = sub.add_parser(
        "select",
        help="choose the networks (task groups, overlapping allowed) that serve every task best within budgets",
    )
    p.add_argument("table", help="the measured networks (validation): a CSV (tasks,cost,TASK...) or Standley's format")
    p.add_argument("--budgets", default="1,1.5,2,2.5,3,3.5,4,4.5,5", help="comma-separated budgets (full networks)")
    p.add_argument("--format", choices=("csv", "standley"), default="csv", help="the tables' format (default: csv)")
    p.add_argument("--tasks", help="comma-separated task names of a standley table (default: task1, task2, ...)")
    p.add_argument("--test", help="a second table (e.g. test) the choices are scored on")
    p.add_argument(
        "--predictor",
        choices=("exact", "hoa"),
        default="exact",
        help="exact: the table as measured; hoa: groups of 3+ tasks predicted from the pairs (Standley et al.)",
    )
    p.add_argument(
        "--serve",
        choices=("chosen", "best"),
        default="chosen",
        help="on --test, each task served by the network chosen for it (default) or by the selected network best on "
        "the test table (Standley et al.'s curves)",
    )
    p.add_argument("--json", help="also write the selections to this JSON file")
    p.set_defaults(func=cmd_select)


def cmd_select(args: argparse.Namespace) -> None:
    from .runs import write_json_atomic
    from .selection import hoa, read_csv, read_standley, score_on, select

    try:
        budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    except ValueError:
        raise UserError(f"--budgets: expected comma-separated numbers, got {args.budgets!r}") from None
    if not budgets or any(b <= 0 for b in budgets):
        raise UserError(f"--budgets: expected positive numbers, got {args.budgets!r}")
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else None
    if args.format == "standley":
        read = lambda path: read_standley(path, tasks)  # noqa: E731
    elif tasks is not None:
        raise UserError("--tasks: only with --format standley (a csv table names its tasks in its header)")
    else:
        read = read_csv
    for path in (args.table, args.test):
        if path is not None and not Path(path).is_file():
            raise UserError(f"table not found: {path}")
    table = read(args.table)
    test = read(args.test) if args.test else None
    chosen_from = hoa(table) if args.predictor == "hoa" else table
    out: list[dict[str, Any]] = []
    print(f"{'budget':>6}  {'predicted':>9}  {'test':>9}  networks (tasks each serves)")
    for budget in budgets:
        found = select(chosen_from, budget)
        entry: dict[str, Any] = {"budget": budget, "networks": [], "predicted_total": found.total}
        for net in found.networks:
            serves = [t for t in table.tasks if found.serves[t] is net]
            entry["networks"].append({"tasks": list(net.tasks), "cost": net.cost, "serves": serves})
        if test is not None:
            entry["test_total"] = score_on(found, test, args.serve)
        out.append(entry)
        shown = "; ".join(f"{'+'.join(n['tasks'])} ({n['cost']:g}): {','.join(n['serves'])}" for n in entry["networks"])
        scored = f"{entry['test_total']:9.5f}" if test is not None else f"{'':>9}"
        print(f"{budget:>6g}  {found.total:9.5f}  {scored}  {shown}")
    if args.json:
        write_json_atomic({"budgets": out}, args.json)


__all__ = ["add_select_command", "cmd_select"]
