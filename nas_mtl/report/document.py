"""The report documents: Markdown and self-contained HTML pages, CSV tables, figures and training curves."""

from __future__ import annotations

import base64
import dataclasses
import re
import shutil
import struct
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..graph import SharingGraph, graph_key
from ..layout import CURVES, GRID_RECORD, ROW, STUDY_COPY, RunRow, load_rows, read_row, slug
from ..plots import curves_plot, draw_topology, pareto_plot
from ..runs import read_json, replace_atomic, write_json_atomic
from ..train import CURVE_COLUMNS, read_curves
from .selection import EXPLAINED as SELECTION_EXPLAINED
from .selection import curve_figure, curve_table, searches_with_curves, selection_curves
from .tables import (
    SINGLE,
    VERSUS,
    format_paired,
    format_runs,
    format_table,
    paired_table,
    row_name,
    runs_table,
    signed_text,
    summary_table,
)
from .verdict import (
    HOW_TO_READ,
    Verdict,
    cost_unit,
    environment_lines,
    export_commands,
    hard_training_seconds,
    search_facts,
    verdict,
)


# ------------------------------------------------------------------ documents
@dataclasses.dataclass(frozen=True)
class _Figure:
    caption: str
    name: str


@dataclasses.dataclass(frozen=True)
class _Warning:
    text: str


@dataclasses.dataclass(frozen=True)
class _Code:
    text: str


Block = str | list[str] | pd.DataFrame | _Figure | _Warning | _Code
"""A paragraph, a bullet list, a table, a figure, a warning or a shell command of a report section."""


@dataclasses.dataclass(frozen=True)
class _Section:
    heading: str
    blocks: Sequence[Block]
    children: Sequence[_Section] = ()
    anchor: str = ""

    @property
    def id(self) -> str:
        """The HTML id: lower case, every run of other characters than letters and digits one ``-``."""
        return re.sub(r"[^a-z0-9]+", "-", (self.anchor or self.heading).lower()).strip("-")


_TEXT_COLUMNS = frozenset({"arm", "balancer", "reference", "outcome", "versus", "task", "metric", "graph"})
"""Table columns shown left-aligned and sorted as text."""


def _block(block: Block, figures: Path, embed: bool) -> dict[str, Any]:
    """What a template needs of a block (``embed``: figures as data: URIs, read from ``figures``)."""
    if isinstance(block, pd.DataFrame):
        table = block.astype(str)
        return {
            "kind": "table",
            "caption": "",
            "columns": list(table.columns),
            "rows": table.values.tolist(),
            "text": [c in _TEXT_COLUMNS for c in table.columns],
            "markdown": block.to_markdown(index=False, disable_numparse=True),
        }
    if isinstance(block, _Figure):
        out = {"kind": "figure", "caption": block.caption, "name": block.name}
        if embed:
            data = (figures / block.name).read_bytes()
            width, height = struct.unpack(">II", data[16:24])  # the PNG IHDR chunk
            out |= {"src": "data:image/png;base64," + base64.b64encode(data).decode(), "width": width, "height": height}
        return out
    if isinstance(block, _Warning):
        return {"kind": "warning", "text": block.text}
    if isinstance(block, _Code):
        return {"kind": "code", "text": block.text}
    if isinstance(block, list):
        return {"kind": "list", "lines": block}
    return {"kind": "p", "text": block}


def _render(template: str, title: str, subtitle: str, sections: Sequence[_Section], figures: Path, embed: bool) -> str:
    """The report page from ``nas_mtl/templates/TEMPLATE`` (HTML escaped; Markdown as is)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("nas_mtl", "templates"),
        autoescape=jinja2.select_autoescape(["html.j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )

    def section(s: _Section) -> dict[str, Any]:
        return {
            "heading": s.heading,
            "id": s.id,
            "blocks": [_block(b, figures, embed) for b in s.blocks],
            "children": [section(c) for c in s.children],
        }

    return env.get_template(template).render(
        title=title, subtitle=subtitle, sections=[section(s) for s in sections], version=_version()
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nas_mtl")
    except PackageNotFoundError:
        return "(not installed)"


_METHOD = (
    "Δm (Maninis et al. 2019): mean relative change of each task's primary test metric vs the single-task "
    "nets, in %, positive = better. The single-task reference is averaged over all seeds (a per-seed "
    "reference adds its own seed noise to every Δm); the single-task nets' own Δm shows the seed noise. "
    "Per arm and balancer: n seeds, the mean and, from 2 seeds on, the std (ddof 1) and the 95 % Student-t "
    "interval of the mean. Paired differences use the training seeds both rows share (paired t, 95 %); hard "
    "sharing is paired with the same balancer when it was trained with it, else hard/equal. Intervals are per "
    "comparison (no multiplicity correction). A searched arm's seeds may retrain graphs from different search "
    "seeds, so its spread includes the search's."
)


@dataclasses.dataclass(frozen=True)
class _Figures:
    """The figures of a report: the Pareto plot, topologies per arm, search figures per method, curves."""

    pareto: _Figure
    topologies: Mapping[str, Sequence[_Figure]]
    searches: Mapping[str, Sequence[_Figure]]
    curves: Sequence[_Figure]


def _sections(
    v: Verdict,
    runs: pd.DataFrame,
    rows: Sequence[RunRow],
    summary: pd.DataFrame,
    paired: pd.DataFrame,
    figures: _Figures,
    grid: Mapping[str, Any] | None = None,
    improving: pd.DataFrame | None = None,
    selections: Sequence[_Section] = (),
    run_dir: Path | None = None,
) -> list[_Section]:
    """The report in reading order: verdict (``v``) and main table, each search, then the details."""
    read = [HOW_TO_READ] if (paired["outcome"] != "untested").any() else []  # no interval, nothing to read
    paired = format_paired(paired)
    warnings = [_Warning(w) for w in v.warnings]
    if improving is not None and len(improving):
        names = ", ".join(dict.fromkeys(f"{a}/{b}" for a, b in zip(improving["arm"], improving["balancer"])))
        warnings.append(
            _Warning(
                f"still improving at the last epoch: {names} (see Training curves); "
                "their numbers may rise with more epochs"
            )
        )
    sections = [
        _Section("Verdict", [*_conclusion_blocks(v, run_dir), *warnings, *read, list(v.lines)]),
        _Section(
            "Summary (mean over seeds)",
            [
                "Per arm and balancer, best mean Δm first: n seeds, Δm vs the single-task nets (%, mean, std and "
                "95 % interval), each task's primary test metric (mean and std), parameters, multiply-accumulates "
                "per sample, and the mean time of one retraining and of one search.",
                format_table(summary),
                figures.pareto,
            ],
        ),
    ]
    searches = _search_sections(runs, rows, figures)
    if searches:
        sections.append(
            _Section("Searches", [f"What each search found and what it cost ({cost_unit(runs)})."], searches)
        )
    if selections:
        sections.append(_Section("Network selection: budget curve", [SELECTION_EXPLAINED], selections))
    comparisons = [
        _Section(f"vs {versus}", [paired[paired["versus"] == versus].drop(columns="versus")], anchor=f"vs {versus}")
        for versus in VERSUS
        if (paired["versus"] == versus).any()
    ]
    if comparisons:
        sections.append(_Section("Paired differences", [_PAIRED], comparisons))
    if grid is not None:
        sections.append(_Section("Grid search over static task weights", _grid_blocks(grid, runs)))
    if improving is not None:
        sections.append(_Section("Training curves", [*_curve_blocks(improving), *figures.curves]))
    searched = {c.heading for c in searches}
    baselines = [f for arm, shown in figures.topologies.items() if arm not in searched for f in shown]
    if baselines:
        sections.append(_Section("Baseline graphs", baselines))
    sections.append(
        _Section("Runs", ["Every training run (Δm against the seed-averaged single-task nets).", format_runs(runs)])
    )
    sections.append(_Section("Method", [_METHOD]))
    sections.append(_Section("Reproducibility", [environment_lines(rows)[0]]))
    return sections


def _conclusion_blocks(v: Verdict, run_dir: Path | None) -> list[Block]:
    """The verdict's opening: its plain sentences, then the recommended run's folder and how to export it."""
    blocks: list[Block] = [" ".join(v.conclusion)] if v.conclusion else []
    if v.run is None or run_dir is None:
        return blocks
    folders = v.run.split(";")
    where = "Its run folder" if len(folders) == 1 else "Its run folders (one network per task)"
    blocks.append(f"{where} (the seed whose Δm is closest to the mean): {', '.join(folders)}. Export it with:")
    blocks.append(_Code("\n".join(export_commands(v.run, run_dir))))
    return blocks


_PAIRED = (
    "Δm(row) − Δm(reference) on the training seeds both share, with the paired-t 95 % interval: an interval "
    "above 0 means better, below 0 worse, containing 0 a tie."
)


def _graphs(rows: Sequence[RunRow]) -> dict[str, SharingGraph]:
    """Every multi-task graph the rows trained, by its canonical key (what ``runs_table``'s graph column holds)."""
    return {graph_key(r.graph): r.graph for r in rows if r.arm != SINGLE}


def _search_sections(runs: pd.DataFrame, rows: Sequence[RunRow], figures: _Figures) -> list[_Section]:
    """Per search method: the graphs it found (in words, with the search seeds), its cost and its figures."""
    facts = search_facts(runs)
    graphs = _graphs(rows)
    out = []
    for arm in dict.fromkeys([*facts, *figures.searches]):
        lines = []
        found = runs[runs["arm"] == arm]
        keys = list(dict.fromkeys(found["graph"].dropna()))
        for i, key in enumerate(keys):
            seeds = sorted({int(s) for s in found.loc[found["graph"] == key, "search_seed"].dropna()})
            which = f"Graph {i + 1} of {len(keys)}" if len(keys) > 1 else "Graph"
            lines.append(f"{which}{f' (search seeds {seeds})' if seeds else ''}: {graphs[key].describe()}.")
        if arm in facts:
            cost, repeat = facts[arm]
            lines += [f"Cost: {cost}.", f"Repeatability: {repeat}."]
        else:
            lines.append("No retrained arm uses this search yet.")
        out.append(
            _Section(
                arm,
                [lines, *figures.topologies.get(arm, ()), *figures.searches.get(arm, ())],
                anchor=f"search {arm}",
            )
        )
    return out


def _curve_blocks(improving: pd.DataFrame) -> list[Block]:
    rule = (
        "Each run keeps its per-epoch training and validation losses and validation primary metric "
        "(curves.csv in its folder; all runs in this report's curves.csv; figures below). Still improving: the "
        "mean over seeds is best at the last epoch and rose over the last quarter of the epochs by more than "
        "the seed-to-seed std of the final value."
    )
    if not len(improving):
        return [rule, "No arm was still improving at the end of training by that rule."]
    table = improving.assign(
        gain=improving["gain"].map(lambda v: f"{v:+.3g}"), final_std=improving["final_std"].map(lambda v: f"{v:.3g}")
    )
    return [rule, table.rename(columns={"gain": "gain (last quarter)", "final_std": "final std"})]


def _grid_blocks(grid: Mapping[str, Any], runs: pd.DataFrame) -> list[Block]:
    """What the grid tried (validation Δm of each weight vector at one seed), what it chose and what it cost."""
    unit = hard_training_seconds(runs)
    cost = f"{grid['train_seconds']:.1f} s"
    if np.isfinite(unit) and unit > 0:
        cost += f", {grid['train_seconds'] / unit:.1f}× one hard/equal training"
    line = (
        f"{grid['runs']} weight vectors (step {grid['step']} of the simplex, weights summing to T) trained on the "
        f"{grid['arm']} graph at seed {grid['seed']} and scored by validation Δm; the best, {grid['best']}, is "
        f"retrained over every seed above (balancer {grid['best']}). Cost of the grid: {cost}."
    )
    table = pd.DataFrame(
        [
            {**{f"w {t}": f"{w:g}" for t, w in p["weights"].items()}, "val Δm %": signed_text(p["val_delta_m"])}
            for p in grid["points"]
        ]
    )
    return [line, table]


def load_curves(run_dir: str | Path) -> pd.DataFrame:
    """Every arm run's ``curves.csv`` with its arm, balancer and seed (empty when no run kept curves)."""
    frames = []
    for path in sorted(Path(run_dir).glob(f"arms/**/{ROW}")):
        if not (path.parent / CURVES).is_file():
            continue
        row = read_row(path, f"delete {path.parent} to retrain that run (nas-mtl study)")
        frame = pd.DataFrame(read_curves(path.parent / CURVES), columns=CURVE_COLUMNS)
        frame = frame.astype({c: float for c in ("train_loss", "val_loss", "val_metric", "seconds")})
        directions = {t: bool(hib) for t, (_, hib) in row.primary.items()}
        frame = frame.assign(
            arm=row.arm,
            balancer=row.balancer,
            seed=row.seed,
            higher_is_better=frame["task"].map(lambda t, d=directions: d.get(t, True)),
        )
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def still_improving(curves: pd.DataFrame) -> pd.DataFrame:
    """Arms whose validation primary metric still rose at the end of training, per (arm, balancer, task).

    The rule: over the seeds, the mean curve is best at the last epoch and its gain over the last quarter of
    the epochs (from epoch ⌊3E/4⌋) is larger than the seed-to-seed std of the final value (with one seed: any
    gain). Columns: arm, balancer, task, metric, gain (in the metric's units, signed so that > 0 is better),
    final_std, seeds.
    """
    out = []
    if curves.empty:
        return pd.DataFrame(columns=["arm", "balancer", "task", "metric", "gain", "final_std", "seeds"])
    for (arm, balancer, task), g in curves.dropna(subset=["val_metric"]).groupby(["arm", "balancer", "task"]):
        table = g.pivot_table(index="epoch", columns="seed", values="val_metric")
        last = int(table.index.max())
        start = max(int(table.index.min()), (3 * last) // 4)
        if last <= start or start not in table.index:
            continue
        sign = 1.0 if bool(g["higher_is_better"].iloc[0]) else -1.0
        mean = table.mean(axis=1) * sign
        gain = float(mean.loc[last] - mean.loc[start])
        final_std = float(table.loc[last].std()) if table.shape[1] > 1 else 0.0
        if mean.idxmax() == last and gain > final_std:
            out.append((arm, balancer, task, g["metric"].iloc[0], gain, final_std, table.shape[1]))
    return pd.DataFrame(out, columns=["arm", "balancer", "task", "metric", "gain", "final_std", "seeds"])


def _curve_figures(curves: pd.DataFrame, figures: Path) -> list[_Figure]:
    """Per arm, the validation primary metric of each task by epoch: mean over seeds, band from min to max."""
    out = []
    if curves.empty:
        return out
    for arm, g in curves.dropna(subset=["val_metric"]).groupby("arm", sort=False):
        panels, labels = {}, {}
        for (task, balancer), h in g.groupby(["task", "balancer"], sort=False):
            table = h.pivot_table(index="epoch", columns="seed", values="val_metric")
            panels.setdefault(task, {})[balancer] = list(
                zip(table.index, table.mean(axis=1), table.min(axis=1), table.max(axis=1))
            )
            labels[task] = f"val {h['metric'].iloc[0]}"
        name = f"curves_{slug(arm)}.png"
        seeds = g["seed"].nunique()
        curves_plot(
            panels, labels, f"{arm}: validation by epoch (mean over {seeds} seeds, band: min-max)", figures / name
        )
        out.append(_Figure(f"training curves: {arm}", name))
    return out


def _topologies(runs: pd.DataFrame, rows: Sequence[RunRow], figures: Path) -> dict[str, list[_Figure]]:
    """Per arm, one topology figure per distinct graph (searches repeated over seeds may find several)."""
    graphs = _graphs(rows)
    out: dict[str, list[_Figure]] = {}
    for arm, g in runs[runs["arm"] != SINGLE].groupby("arm", sort=False):
        keys = list(dict.fromkeys(g["graph"]))
        for i, key in enumerate(keys):
            seeds = sorted({int(s) for s in g.loc[g["graph"] == key, "search_seed"].dropna()})
            caption = f"topology: {arm}" + (f", graph {i + 1} of {len(keys)}" if len(keys) > 1 else "")
            caption += f" (search seeds {seeds})" if seeds else ""
            name = f"topology_{slug(arm)}{f'_{i + 1}' if i else ''}.png"
            draw_topology(graphs[key], caption.removeprefix("topology: "), figures / name)
            out.setdefault(arm, []).append(_Figure(caption, name))
    return out


def _search_figures(run_dir: Path, figures: Path) -> dict[str, list[_Figure]]:
    """Per search method, the figures its searches left under ``search/``, copied to
    ``figures/search_METHOD_NAME.png``; their folders (e.g. ``seed5``) join the name only where two figures of
    one method share a name."""
    pngs = sorted(run_dir.glob("search/*/**/*.png"))
    where = [png.relative_to(run_dir / "search").parts for png in pngs]
    short = Counter(f"{parts[0]}_{parts[-1]}" for parts in where)
    out: dict[str, list[_Figure]] = {}
    for png, parts in zip(pngs, where):
        shown = parts if short[f"{parts[0]}_{parts[-1]}"] > 1 else (parts[0], parts[-1])
        target = figures / ("search_" + "_".join(map(slug, shown)))
        replace_atomic(target, lambda tmp, png=png: shutil.copyfile(png, tmp))
        out.setdefault(parts[0], []).append(_Figure(f"{' '.join(shown[:-1])}: {png.stem}", target.name))
    return out


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Verdict, tables and figures for the study in ``run_dir``; returns the files written.

    Writes ``report.md`` and ``report.html`` (verdict and main table first, then one section per search, then
    the details; the HTML is one self-contained file with its figures embedded), ``runs.csv`` (:func:`runs_table`),
    ``summary.csv`` (:func:`summary_table`: n, mean, std, ci_low, ci_high), ``paired.csv``
    (:func:`paired_table`), ``verdict.json`` (:func:`verdict`'s fields: the conclusion, the recommended row and its
    run folder, the lines), ``curves.csv`` (every run's per-epoch curves, :func:`load_curves`) and ``figures/``
    (Pareto front Δm vs params with 95 % intervals, one topology per graph, the figures the searches left in
    their folders, and per arm its validation curves with arms still improving flagged).
    """
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    figures = out_dir / "figures"
    rows = load_rows(run_dir)
    curves = load_curves(run_dir)  # every record is read (and checked) before anything is written
    figures.mkdir(parents=True, exist_ok=True)
    runs = runs_table(rows)
    summary = summary_table(runs)
    files = {name: out_dir / name for name in ("runs.csv", "summary.csv", "paired.csv", "report.md", "report.html")}
    replace_atomic(files["runs.csv"], lambda tmp: runs.to_csv(tmp, index=False))
    replace_atomic(files["summary.csv"], lambda tmp: summary.to_csv(tmp))
    paired = paired_table(runs)
    replace_atomic(files["paired.csv"], lambda tmp: paired.to_csv(tmp, index=False))
    files["verdict.json"] = out_dir / "verdict.json"
    found = verdict(runs, rows)
    write_json_atomic(dataclasses.asdict(found), files["verdict.json"])

    points = [(row_name(k), float(r["params"]), float(r["delta_m"])) for k, r in summary.iterrows()]
    intervals = list(zip(summary["delta_m ci_low"], summary["delta_m ci_high"]))
    title = "arms: mean over seeds, 95 % interval"
    pareto_plot(points, "parameters", "Δm vs single-task (%)", title, figures / "pareto_params.png", intervals)
    if not curves.empty:
        replace_atomic(out_dir / "curves.csv", lambda tmp: curves.to_csv(tmp, index=False))
        files["curves.csv"] = out_dir / "curves.csv"
    shown = _Figures(
        pareto=_Figure("Δm vs parameters (bars: 95 % interval over seeds)", "pareto_params.png"),
        topologies=_topologies(runs, rows, figures),
        searches=_search_figures(run_dir, figures),
        curves=_curve_figures(curves, figures),
    )

    title = _study_title(run_dir)
    grid_file = run_dir / GRID_RECORD
    grid = read_json(grid_file, "grid search record", ("points", "best")) if grid_file.is_file() else None
    sections = _sections(
        found,
        runs,
        rows,
        summary,
        paired,
        shown,
        grid,
        still_improving(curves),
        _selection_sections(run_dir, figures),
        run_dir,
    )
    seeds = sorted(runs["seed"].unique())
    subtitle = (
        f"{len(summary)} arm/balancer rows, {len(runs)} training runs over seeds {', '.join(map(str, seeds))}; "
        f"written {time.strftime('%Y-%m-%d %H:%M')}."
    )
    markdown = _render("report.md.j2", title, subtitle, sections, figures, embed=False)
    page = _render("report.html.j2", title, subtitle, sections, figures, embed=True)
    replace_atomic(files["report.md"], lambda tmp: tmp.write_text(markdown))
    replace_atomic(files["report.html"], lambda tmp: tmp.write_text(page))
    return files


def _selection_sections(run_dir: Path, figures: Path) -> list[_Section]:
    """Per selection search: its budget curve as a table and a figure (``figures/selection_SEARCH.png``)."""
    curves = selection_curves(run_dir)
    out = []
    for search in searches_with_curves(curves):
        name = f"selection_{slug(search)}.png"
        curve_figure(curves, search, figures / name)
        figure = _Figure(f"{search}: test Δm by budget (bands: 95 % interval over search seeds)", name)
        out.append(_Section(search, [curve_table(curves, search), figure], anchor=f"selection {search}"))
    return out


def _study_title(run_dir: Path) -> str:
    toml = run_dir / STUDY_COPY
    if toml.is_file():
        import tomllib

        name = tomllib.loads(toml.read_text()).get("name")
        if name:
            return f"Study: {name}"
    return f"Study: {run_dir.name}"


__all__ = [
    "load_curves",
    "still_improving",
    "write_report",
]
