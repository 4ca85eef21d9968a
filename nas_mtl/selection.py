"""Network selection under a budget (Standley et al., "Which Tasks Should Be Learned Together in Multi-task
Learning?", ICML 2020, Sec. 3.2; TAG, Fifty et al. 2021, Sec. 3.2).

A table lists networks: the tasks each was trained on, its inference cost (1 = one full-size network; Standley's
half-size single-task networks cost 0.5) and each task's score in it. A selection is a set of networks whose
costs sum to at most the budget and that together cover every task; each task is served by the selected network
that scores it best, and groups may overlap. :func:`select` finds the selection with the best total exactly (branch
and bound), :func:`hoa` predicts the networks of three or more tasks from the pairs (Standley Sec. 3.3.2), and
:func:`score_on` scores a selection on another table (select on validation, score on test, as the paper does).

Ties (equal totals, e.g. a task scoring the same alone and in a pair) go to the cheaper selection, then to the one
training fewer (network, task) memberships, then to the earlier networks of the table: on Standley's released
setting-1 tables this is the choice their search made.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

STANDLEY_HALF = 0.5
"""The cost of a half-size single-task network in Standley's tables (the first line)."""
TAG_ALONE = -1e6
"""A task alone in TAG's network selection with overlapping groups (Fifty et al.'s released code): below any group's
score, so a task is served alone only where no selected group trains it."""
MAX_TAG_TASKS = 16
""":func:`tag` lists every group of tasks: at most 2^16 - 1 networks."""


@dataclass(frozen=True)
class Network:
    """A network of a table: the ``tasks`` it was trained on, its ``cost`` and each of those tasks' ``scores``."""

    tasks: tuple[str, ...]
    cost: float
    scores: Mapping[str, float]

    @property
    def name(self) -> str:
        half = "½" if 0 < self.cost < 1 and len(self.tasks) == 1 else ""
        return half + "+".join(self.tasks)


@dataclass(frozen=True)
class NetworkTable:
    """Networks over ``tasks``; ``higher_is_better``: per task (default: every score is a loss, lower is better)."""

    tasks: tuple[str, ...]
    networks: tuple[Network, ...]
    higher_is_better: Mapping[str, bool] = field(default_factory=dict)
    source: str = "table"

    def __post_init__(self) -> None:
        for k, net in enumerate(self.networks):
            where = f"{self.source}: network {k + 1} ({net.name})"
            if not net.tasks or any(t not in self.tasks for t in net.tasks):
                raise ValueError(f"{where}: tasks must be among {list(self.tasks)}, got {list(net.tasks)}")
            if not (isinstance(net.cost, int | float) and math.isfinite(net.cost) and net.cost > 0):
                raise ValueError(f"{where}: cost must be a positive number, got {net.cost!r}")
            bad = [t for t in net.tasks if not math.isfinite(net.scores.get(t, math.nan))]
            if bad:
                raise ValueError(f"{where}: no finite score for task(s) {bad}")
        uncovered = [t for t in self.tasks if not any(t in net.tasks for net in self.networks)]
        if uncovered:
            raise ValueError(f"{self.source}: no network covers task(s) {uncovered}")

    def loss(self, net: Network, task: str) -> float:
        """``net``'s score of ``task`` as a loss (negated where higher is better)."""
        value = net.scores[task]
        return -value if self.higher_is_better.get(task, False) else value


@dataclass(frozen=True)
class Selection:
    """The chosen ``networks`` (table order), which network ``serves`` each task, and the total of the served
    scores (``total``, in the table's units: a sum of losses, or of scores where higher is better)."""

    budget: float
    networks: tuple[Network, ...]
    serves: Mapping[str, Network]
    total: float

    @property
    def cost(self) -> float:
        return math.fsum(n.cost for n in self.networks)


def select(table: NetworkTable, budget: float) -> Selection:
    """The best selection of ``table``'s networks within ``budget`` (exact; ties as the module docstring says).

    Raises:
        ValueError: no set of networks within the budget covers every task (naming the cheapest that does).
    """
    tasks, nets = table.tasks, table.networks
    loss = [[table.loss(n, t) if t in n.tasks else math.inf for t in tasks] for n in nets]
    order = sorted(range(len(nets)), key=lambda k: (nets[k].cost, k))
    best: list = [None]

    def key(chosen: list[int], served: list[float]) -> tuple:
        total = math.fsum(served)
        members = sum(len(nets[k].tasks) for k in chosen)
        return (total, math.fsum(nets[k].cost for k in chosen), members, tuple(sorted(chosen)))

    def bound(served: list[float], rest: Sequence[int], left: float) -> float:
        affordable = [k for k in rest if nets[k].cost <= left + 1e-12]
        return math.fsum(min([served[i], *(loss[k][i] for k in affordable)]) for i in range(len(tasks)))

    def search(start: int, chosen: list[int], served: list[float], left: float) -> None:
        if all(math.isfinite(v) for v in served):
            candidate = key(chosen, served)
            if best[0] is None or candidate < best[0]:
                best[0] = candidate
        rest = order[start:]
        if best[0] is not None and bound(served, rest, left) > best[0][0]:
            return
        for pos in range(start, len(order)):
            k = order[pos]
            if nets[k].cost > left + 1e-12 or all(loss[k][i] >= served[i] for i in range(len(tasks))):
                continue  # unaffordable, or improves no task
            improved = [min(a, b) for a, b in zip(served, loss[k])]
            search(pos + 1, [*chosen, k], improved, left - nets[k].cost)

    search(0, [], [math.inf] * len(tasks), float(budget))
    if best[0] is None:
        raise ValueError(f"{table.source}: budget {budget:g}: no set of networks within it covers every task")
    chosen = sorted(best[0][3])
    serves = {}
    for i, t in enumerate(tasks):
        serves[t] = nets[min((k for k in chosen if t in nets[k].tasks), key=lambda k: (loss[k][i], k))]
    total = math.fsum(serves[t].scores[t] for t in tasks)
    return Selection(float(budget), tuple(nets[k] for k in chosen), serves, total)


def score_on(selection: Selection, table: NetworkTable, serve: str = "chosen") -> float:
    """The total of ``selection`` scored on ``table`` (e.g. test), its networks looked up by tasks and cost.

    Args:
        serve: ``"chosen"``: each task served by the network that serves it in the selection (fixed when
            choosing); ``"best"``: by whichever selected network scores it best on ``table``, the protocol of
            Standley et al.'s released curves (``translate_scores_to_test_set`` then the per-task best).
    """
    if serve not in ("chosen", "best"):
        raise ValueError(f"serve: expected 'chosen' or 'best', got {serve!r}")
    by_key = {(frozenset(n.tasks), n.cost): n for n in table.networks}
    there = {}
    for net in selection.networks:
        other = by_key.get((frozenset(net.tasks), net.cost))
        if other is None:
            raise ValueError(f"{table.source}: no network {net.name} (cost {net.cost:g}) to score the selection on")
        there[id(net)] = other
    total = []
    for task, net in selection.serves.items():
        if serve == "best":
            candidates = [there[id(n)] for n in selection.networks if task in n.tasks]
            net = min(candidates, key=lambda n: table.loss(n, task))
            total.append(net.scores[task])
        else:
            total.append(there[id(net)].scores[task])
    return math.fsum(total)


def random_selection(table: NetworkTable, budget: float, rng: random.Random) -> list[Network]:
    """One random selection as Standley et al.'s baseline draws it: the networks in a random order, each added when
    it fits in what is left of ``budget``, until less than the cheapest network's cost is left (a pass that runs
    out of networks starts afresh); redrawn until the selection covers every task."""
    cheapest = min(n.cost for n in table.networks)
    for _ in range(100_000):
        chosen: list[Network] = []
        left = float(budget)
        while left >= cheapest:
            order = list(table.networks)
            rng.shuffle(order)
            chosen, left = [], float(budget)
            for net in order:
                if net.cost <= left:
                    chosen.append(net)
                    left -= net.cost
                if left < cheapest:
                    break
        if _covers(table, chosen):
            return chosen
    raise ValueError(f"{table.source}: budget {budget:g}: none of 100000 random selections covered every task")


def _covers(table: NetworkTable, networks: Sequence[Network]) -> bool:
    return all(any(t in n.tasks for n in networks) for t in table.tasks)


def best_total(table: NetworkTable, networks: Sequence[Network]) -> float:
    """The total of ``networks`` on ``table`` with each task served by the one that scores it best."""
    return math.fsum(
        min((n for n in networks if t in n.tasks), key=lambda n: table.loss(n, t)).scores[t] for t in table.tasks
    )


def hoa(table: NetworkTable) -> NetworkTable:
    """Standley's higher-order approximation (Sec. 3.3.2): every network of three or more tasks predicted from
    the pairs, each task's score the mean of its score in the pair networks inside the group; networks of one or
    two tasks stay as measured. Every group of three or more tasks gets a network (cost: that of the pairs)."""
    pairs = [n for n in table.networks if len(n.tasks) == 2]
    if not pairs:
        raise ValueError(f"{table.source}: hoa needs networks of task pairs")
    cost = max(n.cost for n in pairs)
    kept = [n for n in table.networks if len(n.tasks) <= 2]
    for size in range(3, len(table.tasks) + 1):
        for group in combinations(table.tasks, size):
            inside = [p for p in pairs if set(p.tasks) <= set(group)]
            scores = {}
            for t in group:
                values = [p.scores[t] for p in inside if t in p.tasks]
                if not values:
                    break
                scores[t] = math.fsum(values) / len(values)
            else:
                kept.append(Network(group, cost, scores))
    return NetworkTable(table.tasks, tuple(kept), table.higher_is_better, f"{table.source} (hoa)")


def tag(
    affinity: Sequence[Sequence[float]],
    tasks: Sequence[str],
    alone: float = TAG_ALONE,
    cost: float = 1.0,
    max_size: int | None = None,
) -> NetworkTable:
    """TAG's predicted table (Fifty et al. 2021, Sec. 3.2): one network per group of tasks (up to ``max_size``
    tasks), each member's score the mean inter-task affinity onto it from the other members, higher is better.

    Args:
        affinity: (T, T); ``affinity[j][i]`` is task j's effect on task i (the lookahead affinity of
            :mod:`nas_mtl.search.affinity`, rows = the task whose step is taken); the diagonal is not used.
        alone: the score of a task in a network of its own (TAG's released selection with overlap:
            :data:`TAG_ALONE`; 0 scores "no transfer", as :func:`~nas_mtl.search.grouping.partition_score` does).
        cost: every network's cost (TAG trains one full-size network per group).

    TAG averages the served scores where :func:`select` sums them: the same choice at every budget.
    """
    names = tuple(tasks)
    n = len(names)
    if not 1 <= n <= MAX_TAG_TASKS:
        raise ValueError(f"tag: expected 1 to {MAX_TAG_TASKS} tasks, got {n}")
    rows = [list(map(float, row)) for row in affinity]
    if len(rows) != n or any(len(row) != n for row in rows):
        raise ValueError(f"tag: affinity must be a {n}x{n} matrix (one row per task {list(names)})")
    if not all(math.isfinite(v) for row in rows for v in row) or not math.isfinite(alone):
        raise ValueError("tag: affinity and alone must be finite")
    largest = n if max_size is None else max_size
    networks = []
    for size in range(1, largest + 1):
        for group in combinations(range(n), size):
            scores = {
                names[i]: (math.fsum(rows[j][i] for j in group if j != i) / (size - 1) if size > 1 else float(alone))
                for i in group
            }
            networks.append(Network(tuple(names[i] for i in group), float(cost), scores))
    return NetworkTable(names, tuple(networks), dict.fromkeys(names, True), "tag")


def read_standley(path: str | Path, tasks: Sequence[str] | None = None) -> NetworkTable:
    """A table in Standley's released format (``network_selection/results*.txt``): tab-separated, one column per
    task; the first line the half-size single-task networks (cost 0.5), then one full-size network per line
    (cost 1), an empty cell for a task the network was not trained on. Lower is better (losses)."""
    path = Path(path)
    try:
        lines = [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not readable as a text table ({err})") from None
    if not lines:
        raise ValueError(f"{path}: empty table")
    width = len(lines[0].split("\t"))
    names = tuple(tasks) if tasks is not None else tuple(f"task{i + 1}" for i in range(width))
    if len(names) != width:
        raise ValueError(f"{path}: {width} columns but {len(names)} task names")
    networks = []
    for number, line in enumerate(lines, 1):
        cells = (line.split("\t") + [""] * width)[:width]
        try:
            values = {t: float(c) for t, c in zip(names, cells) if c.strip()}
        except ValueError as err:
            raise ValueError(f"{path}: line {number}: {err}") from None
        if number == 1:
            networks += [Network((t,), STANDLEY_HALF, {t: v}) for t, v in values.items()]
        elif values:
            networks.append(Network(tuple(t for t in names if t in values), 1.0, values))
    return NetworkTable(names, tuple(networks), {}, str(path))


def read_csv(path: str | Path) -> NetworkTable:
    """A tidy table: one row per network, columns ``tasks`` (names joined by ``+``), ``cost``, then one column per
    task (empty: the network was not trained on it). Lower is better."""
    path = Path(path)
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or "tasks" not in rows[0] or "cost" not in rows[0]:
        raise ValueError(f"{path}: expected a header with tasks, cost and one column per task")
    names = tuple(c for c in rows[0] if c not in ("tasks", "cost"))
    networks = []
    for number, row in enumerate(rows, 2):
        try:
            group = tuple(t for t in row["tasks"].split("+") if t)
            scores = {t: float(row[t]) for t in group}
            networks.append(Network(group, float(row["cost"]), scores))
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: row {number}: {err}") from None
    return NetworkTable(names, tuple(networks), {}, str(path))


__all__ = [
    "MAX_TAG_TASKS",
    "STANDLEY_HALF",
    "TAG_ALONE",
    "Network",
    "NetworkTable",
    "Selection",
    "best_total",
    "hoa",
    "read_csv",
    "random_selection",
    "read_standley",
    "score_on",
    "select",
    "tag",
]
