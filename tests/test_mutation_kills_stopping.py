"""msrs/stopping.py: tests written for the survivors of scripts/mutation.py (docs/MUTATION.md), each against an
independent value (a closed form for unanimous votes, a hand-derived outcome, the documented formula restated with
Python's statistics module); the mutant each one kills is named in its docstring."""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from msrs import bounds, stopping

SIGMA, ALPHA = 0.5, 0.01
PHI_INV = NormalDist().inv_cdf


def _at_p0(successes, trials, level):
    """A bound object whose lower end is exactly p0 = 1/2 (and upper end 0.9) at every count: a running lower
    bound that reaches p0 but can never exceed it."""
    shape = np.shape(np.atleast_1d(successes))
    return np.full(shape, 0.5), np.full(shape, 0.9)


def _unanimous(idx, num, start):
    """run_sequential's draw: every sample votes for the selected class."""
    return np.full(len(idx), num)


def _unanimous_votes(num_classes=2, cls=1, dtype=np.int64):
    """run_cascade_sequential's draw: every sample, selection and estimation, votes for class `cls`."""
    def draw(idx, stream, num, start):
        votes = np.zeros((len(idx), num_classes), dtype=dtype)
        votes[:, cls] = num
        return votes
    return draw


def _radius(lower: float, sigma: float = SIGMA) -> float:
    """sigma PhiInv(lower) (p0 = 1/2) shrunk toward zero by RADIUS_MARGIN, as msrs reports it."""
    return sigma * PHI_INV(lower) * (1 - bounds.RADIUS_MARGIN)


# ------------------------------------------------------------------------------- single-sigma rule (decide_many)
def test_single_sigma_rule_ends_an_image_whose_best_lower_is_exactly_p0():
    """Certifying needs lower > p0 (radius 0 certifies nothing, Cohen's rule), so an image whose best reachable
    lower bound is exactly p0 can never be certified: it abstains at once instead of drawing to n_max (regression
    test for decide_many's no-target rule `best <= p0`; it was `best < p0`, which kept such images running)."""
    assert stopping.decide(50, 100, 1000, SIGMA, ALPHA, None, prediction=1, bound=_at_p0) == (-1, 0.0)
    result = stopping.run_sequential(_unanimous, [1], 1000, SIGMA, ALPHA, None, points=[100, 1000], bound=_at_p0)
    assert result.prediction.tolist() == [-1] and result.samples.tolist() == [100]

    def rises_to_p0(successes, trials, level):  # lower 0.4 now, exactly p0 at the final look (n_max = 1000)
        shape = np.shape(np.atleast_1d(successes))
        final = np.broadcast_to(np.asarray(trials) == 1000, shape)
        return np.where(final, 0.5, 0.4), np.full(shape, 0.9)

    # with target radii (bucket 0, next threshold p0): the same (it was `best < p0` there too)
    assert stopping.decide(50, 100, 1000, SIGMA, ALPHA, [0.25], prediction=1, bound=rises_to_p0) == (-1, 0.0)
    # ... while a best reachable lower above p0 keeps the image running, with and without target radii
    def rises_above_p0(successes, trials, level):
        lower, upper = rises_to_p0(successes, trials, level)
        return np.where(lower == 0.5, 0.6, lower), upper

    for radii in (None, [0.25]):
        assert stopping.decide(50, 100, 1000, SIGMA, ALPHA, radii, bound=rises_above_p0) == "continue"
