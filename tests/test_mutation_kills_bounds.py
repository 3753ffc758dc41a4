"""msrs/bounds.py: tests written for the survivors of scripts/mutation.py (docs/MUTATION.md), each against an
independent value (a closed form, 40-digit arithmetic with mpmath, or a hand-derived count); the mutant each one
kills is named in its docstring."""
from __future__ import annotations

from fractions import Fraction

import mpmath
import numpy as np
import pytest

from msrs import bounds, checks

from test_sequential import _cs_end  # the CS end by bisection on the 40-digit mixture martingale


def _phi_inv_40(p) -> float:
    """PhiInv(p) = sqrt(2) erfinv(2p - 1) in 40-digit arithmetic."""
    p = Fraction(p)
    with mpmath.workdps(40):
        return float(mpmath.sqrt(2) * mpmath.erfinv(2 * mpmath.mpf(p.numerator) / p.denominator - 1))


def test_binomial_pvalue_checks_its_counts_with_msrs_errors():
    """binomial_pvalue validates n_a and n itself (bounds.py `_counts(n_a, n)`): msrs's ArgumentValueError naming
    the counts, not scipy's bare ValueError from binomtest (kills deleting the check)."""
    for n_a, n in ((11, 10), (-1, 10), (0, 0)):
        with pytest.raises(checks.ArgumentValueError, match="n_a"):
            bounds.binomial_pvalue(n_a, n)


def test_phi_inv_is_the_normal_quantile_for_any_real_number_type():
    """phi_inv (public, unused inside msrs) against 40-digit erfinv; a Fraction or a Decimal converts to float64
    first (kills dropping dtype=np.float64: an object array reaches scipy's ndtri, which has no object loop)."""
    for p in (Fraction(39, 40), Fraction(1, 1000), Fraction(1, 2)):
        value = bounds.phi_inv(p)
        assert isinstance(value, float)
        assert value == pytest.approx(_phi_inv_40(p), rel=1e-14, abs=1e-300)
    out = bounds.phi_inv([0.0, 0.975, 1.0])
    assert out.dtype == np.float64 and out[0] == -np.inf and out[2] == np.inf
    assert out[1] == pytest.approx(_phi_inv_40(Fraction(39, 40)), rel=1e-14)


def test_alpha_spending_at_a_first_look_of_one_sample():
    """A look at trials = 1 is a look like any other (AlphaSpending's `np.where(t > 0, ...)`; kills `t > 1`): with 0
    or 1 success in 1 draw the one-sided Clopper-Pearson bounds are closed forms, 1 - a and a for the spent level
    a = level * w_1 (P_p[X = 0] = 1 - p = a; P_p[X = 1] = p = a)."""
    bound = bounds.AlphaSpending([1, 10], weights=[0.2, 0.8])
    lower, upper = bound([0, 1], [1, 1], 0.1)
    spent = 0.1 * 0.2
    assert lower[0] == 0.0 and upper[1] == 1.0
    assert upper[0] == pytest.approx(1 - spent, rel=1e-14)
    assert lower[1] == pytest.approx(spent, rel=1e-14)


def test_other_classes_upper_with_two_classes():
    """K = 2 is the smallest valid count vector (kills requiring K >= 3): the only other class is one group, and
    its bound is the CS upper end of its votes at the full level (40-digit bisection)."""
    up = bounds.other_classes_upper(np.array([[90, 10], [3, 97]]), [0, 0], 0.01)
    assert up[0] == pytest.approx(_cs_end(10, 100, 0.01, "upper"), rel=1e-9)
    assert up[1] == pytest.approx(_cs_end(97, 100, 0.01, "upper"), rel=1e-9)
