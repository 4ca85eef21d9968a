"""The study file: ``parse_study`` reads a TOML table once into typed configs, and every error names the key.

After parsing nothing is a raw table any more: each ``[search.METHOD]`` is that method's config dataclass, the
training settings a :class:`~nas_mtl.train.TrainConfig`, the data a :class:`DataSpec`, tracking a
:class:`~nas_mtl.tracking.TrackingConfig`; each balancer's spelling is kept (it names the run folders) with its
canonical spec. Runtime changes (device, progress, a search's seed) are ``dataclasses.replace`` /
:func:`~nas_mtl.config.with_option` on those.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..balancing import create_balancer, parse_balancer
from ..balancing.weighting import simplex_grid
from ..baselines import ARMS as BASELINE_ARMS
from ..baselines import SOFT_ARMS
from ..config import build_config, to_options, with_option
from ..config import options as config_options
from ..data import MultiTaskData, create_dataset
from ..data.base import DATASETS
from ..registry import is_reference, resolve_reference
from ..search import SEARCH_METHODS, load_search_methods
from ..soft import Coupling
from ..space import SearchSpace, load_search_space
from ..tracking import TrackingConfig
from ..train import TrainConfig

FORMAT = "nas_mtl.study/1"
KEYS = (
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
"""The top-level keys of a study file."""

Fail = Callable[[str, str], ValueError]
"""``fail(key, message)``: the one-line error naming the study file and ``key``."""


@dataclass(frozen=True)
class DataSpec:
    """``[data]``: a dataset name (registered, ``MODULE:FUNCTION`` or ``FILE.py:FUNCTION``) and its factory's
    keyword arguments, checked against the factory's signature when parsed."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``[data]`` table (what the study record holds)."""
        return {"name": self.name, **self.options}

    @classmethod
    def from_dict(cls, table: Mapping[str, Any]) -> DataSpec:
        return cls(table["name"], {k: v for k, v in table.items() if k != "name"})

    def build(self) -> MultiTaskData:
        return create_dataset(self.name, **self.options)


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


@dataclass(frozen=True)
class StudySpec:
    """A parsed, validated study file."""

    name: str
    data: DataSpec
    space: str
    train: TrainConfig
    seeds: tuple[int, ...]
    balancers: tuple[str, ...]
    """Each balancer as the study file spells it (it names the run folders: ``arms/ARM/BALANCER/seedS``)."""
    baselines: tuple[str, ...]
    search: Mapping[str, Any] = field(default_factory=dict)
    """Each search method's config dataclass (``[search.METHOD]``)."""
    couplings: Mapping[str, Coupling] = field(default_factory=dict)
    """The soft-sharing baselines' couplings (``[arms.soft-l2]``, ``[arms.cross-stitch]``)."""
    description: str = ""
    source: str = "<memory>"
    search_seeds: tuple[int, ...] | None = None
    """Seeds each search runs with; ``None``: once, with the method's own ``seed`` option (default 0)."""
    grid: GridSpec | None = None
    """A grid search over static task weights (``[grid]``), or None."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Where finished runs and searches are mirrored (``[tracking]``, :mod:`nas_mtl.tracking`)."""

    def __post_init__(self) -> None:
        if isinstance(self.data, Mapping):  # the Python API may give the [data] table
            object.__setattr__(self, "data", DataSpec.from_dict(self.data))

    def build(self) -> tuple[MultiTaskData, SearchSpace]:
        """The study's data and search space."""
        data = self.data.build()
        return data, load_search_space(self.space, input_shape=data.input_shape)


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
    """A study from its TOML table ``raw`` (``source`` names it in errors; paths are relative to ``base_dir``)."""

    def fail(key: str, msg: str) -> ValueError:
        return ValueError(f"{source}: {key}: {msg}")

    _check_top(raw, fail)
    data = _parse_data(raw.get("data", {}), base_dir, fail)
    space = raw.get("space", {}).get("name")
    if not isinstance(space, str):
        raise fail("space.name", "required (a search-space name or a .toml path)")
    if base_dir is not None and space.endswith(".toml") and not Path(space).is_absolute():
        space = str(base_dir / space)
    train = build_config(TrainConfig, raw.get("train", {}), where=lambda k: f"{source}: train.{k}")
    seeds = _seed_list(raw.get("seeds", [0]), "seeds", fail, low=None)
    search_seeds = None if "search_seeds" not in raw else _seed_list(raw["search_seeds"], "search_seeds", fail, low=0)
    baselines, couplings = _parse_arms(raw.get("arms", {}), source, fail)
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
        balancers=_parse_balancers(raw.get("balancers", ["equal"]), base_dir, fail),
        baselines=baselines,
        search=_parse_search(raw.get("search", {}), search_seeds, source, fail),
        description=str(raw.get("description", "")),
        source=source,
        search_seeds=search_seeds,
        grid=_parse_grid(raw.get("grid"), baselines, seeds, data, fail),
        couplings=couplings,
        tracking=build_config(TrackingConfig, raw.get("tracking", {}), where=lambda k: f"{source}: tracking.{k}"),
    )


def _check_top(raw: Mapping[str, Any], fail: Fail) -> None:
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise fail(unknown[0], f"unknown key; allowed: {', '.join(KEYS)}")
    if raw.get("format") != FORMAT:
        raise fail("format", f"expected {FORMAT!r}, got {raw.get('format')!r}")
    for key in ("data", "space", "train", "arms", "search", "tracking"):
        if key in raw and not isinstance(raw[key], Mapping):
            raise fail(key, "expected a table")


def _parse_data(table: Mapping[str, Any], base_dir: Path | None, fail: Fail) -> DataSpec:
    data = dict(table)
    if not isinstance(data.get("name"), str):
        raise fail("data.name", "required (a dataset name, e.g. 'multidigits', or MODULE:FUNCTION / FILE.py:FUNCTION)")
    data["name"] = resolve_reference(data["name"], base_dir)  # a FILE.py relative to the study file
    _resolve_data_paths(data, base_dir)
    _check_dataset_keys(data, fail)  # checked now, not when the run starts (building the data is slow)
    return DataSpec.from_dict(data)


def _parse_balancers(balancers: Any, base_dir: Path | None, fail: Fail) -> tuple[str, ...]:
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
    return tuple(balancers)


def _parse_arms(arms: Mapping[str, Any], source: str, fail: Fail) -> tuple[tuple[str, ...], dict[str, Coupling]]:
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
    return tuple(baselines), couplings


def _parse_search(
    search: Mapping[str, Any], search_seeds: tuple[int, ...] | None, source: str, fail: Fail
) -> dict[str, Any]:
    methods = load_search_methods()
    configs = {}
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
        configs[name] = method_config(name, options, source)
        if search_seeds is not None and "seed" not in option_keys(configs[name]):
            raise fail("search_seeds", f"search method {name!r} has no seed option to set")
    return configs


def _parse_grid(
    table: Any, baselines: Sequence[str], seeds: Sequence[int], data: DataSpec, fail: Fail
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
    tasks = data.options.get("tasks")
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


def _seed_list(seeds: Any, key: str, fail: Fail, low: int | None) -> tuple[int, ...]:
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


def _check_dataset_keys(data: Mapping[str, Any], fail: Fail) -> None:
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


def method_config(method: str, table: Mapping[str, Any], source: str = "study") -> Any:
    """The config of search ``method`` from a study's ``[search.METHOD]`` table (errors name the key)."""
    return build_config(SEARCH_METHODS.create(method).config, table, where=lambda k: f"{source}: search.{method}.{k}")


def option_keys(config: Any) -> set[str]:
    """The flat option keys of a config dataclass (its TOML keys)."""
    return {o.key for o in config_options(type(config))}


def with_search_option(search: Mapping[str, Any], key: str, value: Any) -> dict[str, Any]:
    """Every search config with option ``key`` set to ``value`` (configs without that option unchanged)."""
    return {m: with_option(c, key, value) if key in option_keys(c) else c for m, c in search.items()}


def with_device(spec: StudySpec, device: str) -> StudySpec:
    """``spec`` with every training run and search on ``device`` (``auto``, ``cpu`` or ``cuda``)."""
    if device not in TrainConfig.DEVICES:
        raise ValueError(f"device: expected one of {list(TrainConfig.DEVICES)}, got {device!r}")
    return dataclasses.replace(
        spec,
        train=dataclasses.replace(spec.train, device=device),
        search=with_search_option(spec.search, "device", device),
    )


def seeds_of_search(spec: StudySpec, method: str) -> tuple[int, ...]:
    """The seeds ``method`` runs with in ``spec``: ``search_seeds``, or the method's own ``seed`` option."""
    if spec.search_seeds is not None:
        return spec.search_seeds
    return (to_options(spec.search[method]).get("seed", 0),)


def search_config(spec: StudySpec, method: str, seed: int, progress: bool) -> Any:
    """The config of ``method``'s search with seed ``seed`` (set where the study gives ``search_seeds``), printing
    progress or not."""
    config = with_search_option({method: spec.search[method]}, "progress", progress)[method]
    return config if spec.search_seeds is None else with_option(config, "seed", seed)


__all__ = [
    "FORMAT",
    "KEYS",
    "DataSpec",
    "GridSpec",
    "StudySpec",
    "load_study",
    "method_config",
    "option_keys",
    "parse_study",
    "search_config",
    "seeds_of_search",
    "with_device",
    "with_search_option",
]
