"""What a study's results depend on, recorded in its run folder (``study.json``) and checked on every rerun."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import to_options
from ..data import MultiTaskData
from ..layout import ROW, SEARCH_DONE, STUDY_COPY, STUDY_RECORD
from ..runs import check_settings, read_json, replace_atomic, write_json_atomic
from ..search import SEARCH_METHODS
from ..space import SearchSpace
from ..storage import redact
from .spec import FORMAT, StudySpec


def prepare(spec: StudySpec, data: MultiTaskData, space: SearchSpace, run_dir: Path) -> None:
    """Before any run: check each search's options on this data, record (or check) the study's settings in the
    run folder and copy the study file there."""
    for method, config in spec.search.items():  # options that cannot work on this data, before any run
        runner = SEARCH_METHODS.create(method)
        if runner.check is not None:
            try:
                runner.check(data, space, config)
            except ValueError as err:
                raise ValueError(f"{spec.source}: search.{method}: {err}") from None
    record_settings(spec, space, run_dir)  # refuses a folder made with other settings, before any run
    if spec.source != "<memory>" and Path(spec.source).is_file():
        replace_atomic(run_dir / STUDY_COPY, lambda tmp: shutil.copyfile(spec.source, tmp))


def record_settings(spec: StudySpec, space: SearchSpace, run_dir: Path) -> None:
    """Write what the study's results depend on to ``RUN_DIR/study.json``, or check it against the record there.

    Once a search or an arm run has finished, data, search space, training settings and each search's options
    must be the record's (runtime keys such as the device aside); seeds, search seeds, balancers, baselines and
    new search methods may be added, as they only add runs. The record then grows by what was added. Before
    anything finished (e.g. a study stopped by a mistake in its file), the record is replaced.
    """
    now = json.loads(json.dumps(study_settings(spec, space)))  # tuples -> lists, as stored
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


def study_settings(spec: StudySpec, space: SearchSpace) -> dict[str, Any]:
    """What the study's results depend on: data, search space, training settings and each search's options."""
    return {
        "data": spec.data.to_dict(),
        "space": {
            "name": space.name,
            "backbone": space.backbone.name,
            "backbone_config": dict(space.backbone.config),
            "layers": list(space.layers),
            "branchable": list(space.branchable),
            "skippable": list(space.skippable),
        },
        "train": {k: v for k, v in spec.train.identity().items() if k != "seed"},  # arms set their own seeds
        "search": {m: _redacted(to_options(c)) for m, c in spec.search.items()},
    }


def queue_settings(spec: StudySpec, space: SearchSpace) -> dict[str, Any]:
    """What a distributed study's worker must agree on: the results' settings and what decides its jobs."""
    grid = None if spec.grid is None else {"step": spec.grid.step, "arm": spec.grid.arm, "seed": spec.grid.seed}
    return json.loads(
        json.dumps(
            {
                **study_settings(spec, space),
                "seeds": list(spec.seeds),
                "search_seeds": None if spec.search_seeds is None else list(spec.search_seeds),
                "balancers": list(spec.balancers),
                "baselines": list(spec.baselines),
                "grid": grid,
            }
        )
    )


def _redacted(options: Mapping[str, Any]) -> dict[str, Any]:
    """A search's options with a storage URL's password hidden (the record is a results file)."""
    return {k: redact(v) if k == "storage" and isinstance(v, str) else v for k, v in options.items()}


__all__ = ["prepare", "queue_settings", "record_settings", "study_settings"]
