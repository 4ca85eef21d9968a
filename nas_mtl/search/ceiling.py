"""Noise ceiling of a seeded ground truth: how well a table of scores over seeds can rank candidates at all.

An exhaustive ground truth (:mod:`nas_mtl.search.exhaustive`) scores every candidate under several seeds; the
truth is each candidate's seed mean. Seeds disagree (warm start and fine-tuning are random), so a ranking by
the mean is itself a noisy measurement: a search cannot be shown to agree with the truth better than two
independent copies of the truth agree with each other. :func:`noise_ceiling` measures that agreement.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class NoiseCeiling:
    """What a table of scores over seeds can resolve (see :func:`noise_ceiling`).

    Args:
        candidates: rows of the table; ``seeds``: its columns.
        pairwise_spearman: Spearman correlation of two seeds' scores, averaged over every pair of seeds: how
            well one seed's ranking reproduces under another seed.
        pairwise_min: the lowest of those pairwise correlations.
        split_half: Spearman correlation of the means of two disjoint halves of ``seeds // 2`` seeds each,
            averaged over every such split (an odd seed count leaves one seed out of each split, in turn).
        reliability: ``split_half`` extended to the mean of all ``seeds`` by the Spearman–Brown formula: the
            expected Spearman correlation between this seed-mean ranking and that of an independent run with
            as many other seeds. This is the ceiling; its square root estimates the correlation of the seed
            mean with the mean over infinitely many seeds. 0 when ``split_half`` is negative (no ranking the
            seeds share; the formula is not meant for negative correlations and leaves [-1, 1] there).
        best_hits: fraction of seeds whose own best candidate has a seed mean within one standard error of
            the truth's best mean; the standard error of their difference, paired over seeds (what a seed adds
            to every candidate alike, e.g. its own warm start as Δm's reference, cancels).
        best_regret: truth's best mean minus the seed mean of a seed's own best candidate, averaged over seeds
            (Δm points): the regret a perfect search scored with one seed would have against the truth.
    """

    candidates: int
    seeds: int
    pairwise_spearman: float
    pairwise_min: float
    split_half: float
    reliability: float
    best_hits: float
    best_regret: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def spearman_brown(r: float, factor: float) -> float:
    """Reliability of a measurement ``factor`` times as long as one of reliability ``r`` (Spearman 1910;
    Brown 1910): ``factor * r / (1 + (factor - 1) * r)``; meaningful for ``r >= 0``."""
    return factor * r / (1 + (factor - 1) * r)


def noise_ceiling(scores: Any) -> NoiseCeiling:
    """The noise ceiling of ``scores`` (candidates x seeds, at least 2 of each; higher is better).

    Reliability is estimated split-half, not as the correlation of the mean with a held-out seed: two disjoint
    halves of the seeds give two parallel measurements of the same quantity (means of equally many seeds), so
    their correlation is the reliability of a ``seeds // 2``-seed mean, and the Spearman–Brown formula extends
    it to the full mean by the factor ``seeds / (seeds // 2)``. A held-out seed against the mean of the others
    correlates two measurements of unequal reliability, which estimates neither without a further model, and
    shares the held-out seed with the full mean when that is used instead. The formula assumes Pearson
    correlations of parallel measurements; applied to Spearman's rank correlations it is the usual
    approximation. Every split is used (``C(seeds, seeds // 2)`` of them, times ``seeds`` when odd), so the
    estimate does not depend on which seeds happen to be paired.

    The best-candidate statistics use the full-table truth, the seed's own scores included: that is how a
    search that found one seed's best would be judged against this table (for few seeds, an optimistic
    judge). Their standard error is paired, not each mean's own: the per-candidate standard error includes
    whatever a seed shifts all candidates by, which says nothing about their order.

    Raises:
        ValueError: ``scores`` is not a 2-D table of finite numbers with at least 2 rows and 2 columns.
    """
    table = np.asarray(scores, dtype=float)
    if table.ndim != 2 or table.shape[0] < 2 or table.shape[1] < 2:
        raise ValueError(f"scores: need a candidates x seeds table with >= 2 of each, got shape {table.shape}")
    if not np.isfinite(table).all():
        raise ValueError("scores: every score must be finite")
    n, k = table.shape
    pairs = [_spearman(table[:, a], table[:, b]) for a, b in itertools.combinations(range(k), 2)]
    half = k // 2
    halves = []
    for first in itertools.combinations(range(k), half):
        rest = [s for s in range(k) if s not in first]
        for second in itertools.combinations(rest, half):
            if second[0] > first[0]:  # each unordered split once
                halves.append(_spearman(table[:, first].mean(1), table[:, second].mean(1)))
    split_half = float(np.mean(halves))
    top = int(np.argmax(table.mean(1)))
    gaps = table[top] - table[np.argmax(table, axis=0)]  # row s: the truth's best minus seed s's best, by seed
    regrets = gaps.mean(1)
    se = gaps.std(axis=1, ddof=1) / math.sqrt(k)
    return NoiseCeiling(
        candidates=n,
        seeds=k,
        pairwise_spearman=float(np.mean(pairs)),
        pairwise_min=float(np.min(pairs)),
        split_half=split_half,
        reliability=spearman_brown(max(split_half, 0.0), k / half),
        best_hits=float(np.mean(regrets <= se)),
        best_regret=float(np.mean(regrets)),
    )


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); 0 where one side is constant (no ranking)."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    from scipy.stats import spearmanr  # here: scipy.stats takes half a second to import

    return float(spearmanr(a, b).statistic)


__all__ = ["NoiseCeiling", "noise_ceiling", "spearman_brown"]
