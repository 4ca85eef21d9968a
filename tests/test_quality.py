"""nas_mtl.search.quality.payoff: a method's retrained answers against an alternative, checked by hand."""

import itertools

import numpy as np
import pytest

from nas_mtl.search.quality import payoff


def test_the_statistic_is_the_difference_of_the_two_means():
    answers = [[1.0, 2.0], [3.0, 4.0]]
    assert payoff(answers, [0.5, 1.5])[0] == pytest.approx(2.5 - 1.0, abs=4 * np.finfo(float).eps)
    assert payoff(answers, [[0.0, 1.0], [2.0, 2.0], [1.0, 1.0]])[0] == pytest.approx(2.5 - 7 / 6, rel=1e-15)


def test_training_seeds_pair_the_two_sides():
    """A training seed's shift common to both sides cancels in every resample: answers = versus + c gives the
    interval [c, c] exactly, however large the seeds' shifts."""
    versus = np.array([0.0, 40.0, -25.0])
    low, high = payoff(np.stack([versus + 2.0] * 4), versus)[1]
    assert low == pytest.approx(2.0, abs=1e-12) and high == pytest.approx(2.0, abs=1e-12)


def test_one_graph_from_every_search_still_has_the_training_seeds_noise():
    """Every search seed returned the same graph: a t interval over search seeds would have zero width."""
    answers = np.array([[1.0, 5.0, 3.0]] * 5)
    low, high = payoff(answers, [0.0, 0.0, 0.0])[1]
    assert low < 3.0 < high and high - low > 1.0


def test_the_interval_is_the_exact_bootstrap_distributions_quantiles():
    """2 search seeds x 3 training seeds: the 2^2 x 3^3 equally likely resamples, enumerated, give the exact
    distribution of the statistic; its 2.5 % and 97.5 % quantiles (inverse CDF) are atoms holding more than 2.5 %
    of the mass each here, so 20,000 draws land on them exactly."""
    answers = np.array([[1.0, 4.0, 2.0], [2.0, 9.0, 2.0]])
    versus = np.array([0.5, 3.0, 1.0])
    values = np.sort(
        [
            answers[np.ix_(s, t)].mean() - versus[list(t)].mean()
            for s in itertools.product(range(2), repeat=2)
            for t in itertools.product(range(3), repeat=3)
        ]
    )
    cdf = np.arange(1, len(values) + 1) / len(values)
    exact_low, exact_high = values[np.argmax(cdf >= 0.025)], values[np.argmax(cdf >= 0.975)]
    assert np.mean(values == exact_low) > 0.025 and np.mean(values == exact_high) > 0.025  # atoms, as said
    low, high = payoff(answers, versus, n_boot=20000)[1]
    assert low == pytest.approx(exact_low, abs=1e-12) and high == pytest.approx(exact_high, abs=1e-12)


@pytest.mark.parametrize(
    "answers, versus", [([[1.0, 2.0]], [1.0]), ([1.0, 2.0], [1.0, 2.0]), ([[np.nan, 1.0]], [0.0, 0.0])]
)
def test_bad_shapes_and_values_are_refused(answers, versus):
    with pytest.raises(ValueError, match="payoff"):
        payoff(answers, versus)
