"""Judging a search's answer against a seeded ground truth: regret with its noise, rank, hit, and chance floors.

A seeded exhaustive table (:mod:`nas_mtl.search.exhaustive`, :class:`~nas_mtl.search.exhaustive.ScoreTable`)
scores every candidate under the same seeds; the truth is the seed mean. A search's answer is scored under the
same seeds (looked up in the table, or scored with the same seeded proxy when it lies outside the table's space,
e.g. an AdaShare policy judged against the tree space). Everything here compares seed by seed: what a seed adds
to every candidate alike (its own warm start, Δm's reference) cancels in a difference, so the standard error of
a regret is the paired one, as in :func:`~nas_mtl.search.ceiling.noise_ceiling`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Verdict:
    """One answer judged against a :class:`SeededTruth`.

    Args:
        key: the answer's graph key.
        delta_m: the answer's seed mean (Δm %, higher is better).
        regret: the truth's best seed mean minus ``delta_m`` (≥ 0 inside the table's space; Δm points).
        regret_se: paired standard error of ``regret`` over seeds (NaN with one seed).
        hit: the answer is the truth's best candidate.
        hit_within_se: ``regret <= regret_se``: the answer cannot be told from the best with these seeds.
        rank: 1 + how many candidates of the truth have a higher seed mean (1 = at least as good as the best).
        params: the answer's parameter count.
    """

    key: str
    delta_m: float
    regret: float
    regret_se: float
    hit: bool
    hit_within_se: bool
    rank: int
    params: int


class SeededTruth:
    """The seed means of a candidates x seeds table of Δm scores (higher is better), with what judges an answer.

    Args:
        scores: candidate key -> its Δm under each seed (every candidate the same seeds, in the same order).
        params: candidate key -> parameter count (for :meth:`same_params`).
    """

    def __init__(self, scores: Mapping[str, Sequence[float]], params: Mapping[str, int]) -> None:
        if not scores:
            raise ValueError("seeded truth: no candidates")
        self.keys = sorted(scores)
        self.table = np.asarray([list(scores[k]) for k in self.keys], dtype=float)
        if self.table.ndim != 2 or not np.isfinite(self.table).all():
            raise ValueError("seeded truth: every candidate needs the same number of finite scores")
        missing = [k for k in self.keys if k not in params]
        if missing:
            raise ValueError(f"seeded truth: no parameter count for {missing[0]}")
        self.params = np.asarray([params[k] for k in self.keys], dtype=float)
        if (self.params <= 0).any():
            raise ValueError("seeded truth: parameter counts must be positive")
        self.mean = self.table.mean(axis=1)
        self.best = int(np.argmax(self.mean))
        self.index = {k: i for i, k in enumerate(self.keys)}

    @property
    def seeds(self) -> int:
        return self.table.shape[1]

    @property
    def best_key(self) -> str:
        return self.keys[self.best]

    def judge(self, key: str, scores: Sequence[float] | None = None, params: int | None = None) -> Verdict:
        """Judge the answer ``key``: its scores are the table's, or ``scores`` (one per seed, same seeds) and
        ``params`` for an answer outside the table."""
        if scores is None:
            if key not in self.index:
                raise KeyError(f"seeded truth: {key} is not in the table; pass its scores and params")
            row, params = self.table[self.index[key]], int(self.params[self.index[key]])
        else:
            row = np.asarray(scores, dtype=float)
            if row.shape != (self.seeds,):
                raise ValueError(f"seeded truth: {key}: expected {self.seeds} scores (one per seed), got {row.shape}")
            if params is None:
                raise ValueError(f"seeded truth: {key}: an answer outside the table needs its params")
        gaps = self.table[self.best] - row
        regret = float(gaps.mean())
        se = float(gaps.std(ddof=1) / math.sqrt(self.seeds)) if self.seeds > 1 else math.nan
        return Verdict(
            key=key,
            delta_m=float(row.mean()),
            regret=regret,
            regret_se=se,
            hit=key == self.best_key,
            hit_within_se=bool(regret <= se) if self.seeds > 1 else regret <= 0,
            rank=1 + int((self.mean > (self.mean[self.index[key]] if scores is None else row.mean())).sum()),
            params=int(params),
        )

    def same_params(self, params: int) -> np.ndarray:
        """Indices of the candidates whose parameter count is closest to ``params`` in log ratio (all ties; exact
        when the table has that count): the pool a random graph "of the same size" is drawn from."""
        if params <= 0:
            raise ValueError(f"seeded truth: params must be positive, got {params}")
        distance = np.abs(np.log(self.params) - math.log(params))
        return np.flatnonzero(distance <= distance.min() + 1e-12)

    def random_regret(self, params: int | None = None) -> tuple[float, float]:
        """Expected regret and hit rate (the best's share) of a candidate drawn uniformly from the table, or from
        the candidates with ``params``' parameter count (:meth:`same_params`): exact, no sampling."""
        pool = np.arange(len(self.keys)) if params is None else self.same_params(params)
        regrets = self.mean[self.best] - self.mean[pool]
        return float(regrets.mean()), float(np.mean(pool == self.best))


def payoff(
    answers: Sequence[Sequence[float]] | np.ndarray,
    versus: Sequence[float] | Sequence[Sequence[float]] | np.ndarray,
    n_boot: int = 4000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, tuple[float, float]]:
    """How much a search method's retrained answers beat an alternative, with both sources of noise in its interval.

    ``answers[s][t]``: the score (e.g. test Δm) of the answer of search seed ``s`` retrained with training seed
    ``t``. ``versus``: a free alternative's score per training seed (``[t]``: hard sharing, independent networks,
    a planted tree), or another method's answers (``[s'][t]``: random search), retrained with the same training
    seeds. The statistic: the mean over search seeds and training seeds of ``answers`` minus the same mean of
    ``versus`` (a training seed's shift common to every graph cancels in expectation, since both sides use every
    training seed). Its interval is a percentile bootstrap that resamples search seeds (each side's own, with
    replacement) and training seeds (one draw shared by both sides, which pairs them). A t interval over search
    seeds alone would miss the training seeds' noise, and have zero width when every search returned one graph.

    Returns:
        (statistic, (low, high)).
    """
    a = np.asarray(answers, dtype=float)
    b = np.asarray(versus, dtype=float)
    b = b[None, :] if b.ndim == 1 else b
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not a.size or not b.size:
        raise ValueError(
            "payoff: expected answers (search seeds x training seeds) and versus over the same training seeds, got "
            f"shapes {a.shape} and {np.shape(versus)}"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("payoff: scores must be finite")
    rng = np.random.default_rng(seed)
    n_train = a.shape[1]
    stats = np.empty(n_boot)
    for k in range(n_boot):
        t = rng.integers(0, n_train, n_train)
        sa = rng.integers(0, a.shape[0], a.shape[0])
        sb = rng.integers(0, b.shape[0], b.shape[0])
        stats[k] = a[np.ix_(sa, t)].mean() - b[np.ix_(sb, t)].mean()
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(a.mean() - b.mean()), (float(low), float(high))


def minus_random_median(
    answers: Sequence[Sequence[float]], pools: Sequence[Any], n_boot: int = 4000, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """How far answers lie above the median of random alternatives, with every source of noise in its interval.

    ``answers[i]``: answer i's score under each scoring seed; ``pools[i]``: its random alternatives' scores
    (alternatives x the same seeds). The statistic: per answer, its score minus the pool's median, seed by seed
    (what a seed adds to every graph alike cancels), averaged over seeds; then the mean over answers (e.g. one per
    search seed). Its 95 % interval is a hierarchical percentile bootstrap that resamples the answers, then within
    each the scoring seeds (the same draw for the answer and its pool) and the pool's alternatives. A t interval
    over answers alone would miss the last two, and have zero width when every answer is the same graph.

    Returns:
        (statistic, (low, high)).
    """
    if not answers or len(answers) != len(pools):
        raise ValueError(f"minus_random_median: need as many pools as answers (>= 1), got {len(answers)}, {len(pools)}")
    a = [np.asarray(x, dtype=float) for x in answers]
    p = [np.asarray(x, dtype=float) for x in pools]
    for i, (row, pool) in enumerate(zip(a, p)):
        if row.ndim != 1 or pool.ndim != 2 or pool.shape[1] != row.shape[0] or pool.shape[0] < 1:
            raise ValueError(f"minus_random_median: answer {i}: pool must be alternatives x {row.shape[0]} seeds")
    point = float(np.mean([(row - np.median(pool, axis=0)).mean() for row, pool in zip(a, p)]))
    rng = np.random.default_rng(seed)
    stats = np.empty(n_boot)
    for b in range(n_boot):
        total = 0.0
        for i in rng.integers(0, len(a), len(a)):
            seeds = rng.integers(0, len(a[i]), len(a[i]))
            rows = rng.integers(0, len(p[i]), len(p[i]))
            total += float((a[i][seeds] - np.median(p[i][rows][:, seeds], axis=0)).mean())
        stats[b] = total / len(a)
    return point, (float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5)))


__all__ = ["SeededTruth", "Verdict", "minus_random_median", "payoff"]
