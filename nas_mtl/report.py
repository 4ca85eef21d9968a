"""Study reports: pandas tables (Markdown, HTML, CSV) and figures from a study's run folder."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .graph import SharingGraph
from .metrics import delta_m
from .plots import draw_topology, pareto_plot
from .study import load_rows, slug

SINGLE = "single-task"


def _directions(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, bool]]:
    primary: dict[str, list] = {}
    for r in rows:
        primary.update(r["primary"])
    return {t: {m: bool(hib)} for t, (m, hib) in primary.items()}


def _single_reference(rows: Sequence[Mapping[str, Any]]) -> dict[int, dict[str, dict[str, float]]]:
    """Single-task test metrics per seed: ``{seed: {task: {metric: value}}}``."""
    ref: dict[int, dict[str, dict[str, float]]] = {}
    for r in rows:
        if r["arm"] == SINGLE:
            ref.setdefault(r["seed"], {})[r["task"]] = r["test"][r["task"]]
    return ref


def runs_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (arm, balancer, seed): primary test metric per task, Δm vs single-task, cost, times.

    The single-task arm is merged across its per-task networks (params, MACs and times add up).
    Δm uses the single-task nets of the same seed (Maninis et al. 2019), or their mean over seeds
    when that seed has none.
    """
    directions = _directions(rows)
    ref = _single_reference(rows)
    if not ref:
        raise ValueError("report: no single-task runs; Δm needs them (keep 'single' in arms.baselines)")
    mean_ref = {
        t: {m: float(np.mean([ref[s][t][m] for s in ref if t in ref[s]])) for m in d} for t, d in directions.items()
    }
    merged: dict[tuple[str, str, int], dict[str, Any]] = {}
    for r in rows:
        key = (r["arm"], r["balancer"], r["seed"])
        entry = merged.setdefault(
            key, {"test": {}, "params": 0, "macs": 0, "train_seconds": 0.0, "search_seconds": 0.0}
        )
        tasks = [r["task"]] if r["arm"] == SINGLE else list(r["test"])
        for t in tasks:
            entry["test"][t] = r["test"][t]
        entry["params"] += r["params"]
        entry["macs"] += r["macs"]
        entry["train_seconds"] += r["train_seconds"]
        entry["search_seconds"] = r["search_seconds"]
        entry["graph"] = r["graph"]
    records = []
    for (arm, balancer, seed), e in merged.items():
        rec: dict[str, Any] = {"arm": arm, "balancer": balancer, "seed": seed}
        for t, d in directions.items():
            metric = next(iter(d))
            rec[f"{t}.{metric}"] = e["test"].get(t, {}).get(metric, np.nan)
        complete = all(t in e["test"] for t in directions)
        single = ref.get(seed, mean_ref) if all(t in ref.get(seed, {}) for t in directions) else mean_ref
        rec["delta_m"] = delta_m(e["test"], single, directions) if complete else np.nan
        rec.update(params=e["params"], macs=e["macs"], train_seconds=e["train_seconds"])
        rec["search_seconds"] = e["search_seconds"]
        records.append(rec)
    return pd.DataFrame.from_records(records).sort_values(["arm", "balancer", "seed"]).reset_index(drop=True)


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (arm, balancer); columns ``X`` (mean) and ``X std``."""
    value_cols = [c for c in runs.columns if c not in ("arm", "balancer", "seed")]
    grouped = runs.groupby(["arm", "balancer"], sort=False)
    mean = grouped[value_cols].mean()
    std = grouped[value_cols].std(ddof=1).fillna(0.0)
    out = mean.copy()
    for c in value_cols:
        if c not in ("params", "macs"):
            out[f"{c} std"] = std[c]
    out.insert(0, "seeds", grouped.size())
    order = ["seeds"] + [c for col in value_cols for c in (col, f"{col} std") if c in out.columns]
    return out[order].sort_values("delta_m", ascending=False)


def format_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Human-readable strings: "mean ± std", params in M, MACs in M, seconds rounded."""
    shown = pd.DataFrame(index=summary.index)
    shown["seeds"] = summary["seeds"]
    for c in summary.columns:
        if c in ("seeds", "params", "macs") or c.endswith(" std"):
            continue
        digits = 1 if c.endswith("seconds") else (2 if c == "delta_m" else 4)
        label = {"delta_m": "Δm %", "train_seconds": "retrain s", "search_seconds": "search s"}.get(c, c)
        shown[label] = [f"{m:.{digits}f} ± {s:.{digits}f}" for m, s in zip(summary[c], summary[f"{c} std"])]
    shown["params M"] = (summary["params"] / 1e6).map("{:.3f}".format)
    shown["MMACs"] = (summary["macs"] / 1e6).map("{:.2f}".format)
    return shown.reset_index()


def write_report(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Tables and figures for the study in ``run_dir``; returns the files written.

    Writes ``report.md``, ``report.html``, ``runs.csv`` (one row per run), ``summary.csv`` (mean/std
    per arm and balancer) and ``figures/`` (Pareto front Δm vs params, one topology per arm, and the
    figures the searches left in their folders: AdaShare policy, affinity heatmaps, Optuna history).
    """
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    rows = load_rows(run_dir)
    runs = runs_table(rows)
    summary = summary_table(runs)
    shown = format_table(summary)
    files = {"runs.csv": out_dir / "runs.csv", "summary.csv": out_dir / "summary.csv"}
    runs.to_csv(files["runs.csv"], index=False)
    summary.to_csv(files["summary.csv"])

    figs: list[tuple[str, Path]] = []
    points = [(f"{a}/{b}", float(r["params"]), float(r["delta_m"])) for (a, b), r in summary.iterrows()]
    figs.append(("Δm vs parameters", figures / "pareto_params.png"))
    pareto_plot(points, "parameters", "Δm vs single-task (%)", "arms (mean over seeds)", figs[-1][1])
    graphs = {r["arm"]: r["graph"] for r in rows if r["arm"] != SINGLE}
    for arm, graph in graphs.items():
        figs.append((f"topology: {arm}", figures / f"topology_{slug(arm)}.png"))
        draw_topology(SharingGraph.from_dict(graph), f"{arm}", figs[-1][1])
    for png in sorted(run_dir.glob("search/*/**/*.png")):
        method = png.relative_to(run_dir / "search").parts[0]
        target = figures / f"search_{method}_{png.name}"
        shutil.copyfile(png, target)
        figs.append((f"{method}: {png.stem}", target))

    title = _study_title(run_dir)
    md = [f"# {title}", "", "Test metrics (primary metric per task), Δm vs single-task networks (Maninis et al. "
          "2019; positive = better), mean ± std over seeds.", "", shown.to_markdown(index=False), ""]  # fmt: skip
    md += ["## Figures", ""] + [f"![{cap}](figures/{p.name})" for cap, p in figs] + [""]
    files["report.md"] = out_dir / "report.md"
    files["report.md"].write_text("\n".join(md))
    figure_html = "".join(
        f'<figure><img src="figures/{p.name}"><figcaption>{cap}</figcaption></figure>' for cap, p in figs
    )
    files["report.html"] = out_dir / "report.html"
    files["report.html"].write_text(
        f"<!doctype html><meta charset='utf-8'><title>{title}</title><h1>{title}</h1>"
        f"{shown.to_html(classes='summary', index=False)}<h2>Figures</h2>{figure_html}\n"
    )
    return files


def _study_title(run_dir: Path) -> str:
    toml = run_dir / "study.toml"
    if toml.is_file():
        import tomllib

        name = tomllib.loads(toml.read_text()).get("name")
        if name:
            return f"Study: {name}"
    return f"Study: {run_dir.name}"
