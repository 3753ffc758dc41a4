"""msrs/bounds.py: tests written for the survivors of scripts/mutation.py (docs/MUTATION.md), each against an
independent value (a closed form, 40-digit arithmetic with mpmath, or a hand-derived count); the mutant each one
kills is named in its docstring."""
from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from statistics import NormalDist

import mpmath
import numpy as np
import pytest
from test_sequential import _cs_end, _log_mixture  # 40-digit references

from msrs import bounds, checks


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


# ---------------------------------------------------------------------- seed-2 sample (`--sample 40 --seed 2`)
def test_goodman_upper_end_of_a_category_with_every_vote_is_at_most_one():
    """Goodman's upper end for n_i = N is (A + 2N + A) / (2 (N + A)) = 1 exactly; in floating point the formula
    lands a few ulps on either side of 1 (above it for N = 62 .. 73 among others, at alpha = 0.05, k = 2), and
    the clip to [0, 1] keeps it a probability (kills clipping at 2.0)."""
    uppers = np.array([bounds.goodman_bounds([n, 0], 0.05)[0, 1] for n in range(1, 200)])
    assert np.all(uppers <= 1.0)
    np.testing.assert_allclose(uppers, 1.0, rtol=0, atol=1e-14)


def test_cs_bounds_broadcast_an_array_of_levels_against_scalar_counts():
    """alpha may be an array: the counts broadcast against it (kills deleting the np.broadcast_arrays line, which
    returned the first level's ends as floats): each end is the 40-digit crossing at its own level."""
    lower, upper = bounds.cs_bounds(7, 10, [0.05, 0.2])
    assert lower.shape == upper.shape == (2,)
    for i, alpha in enumerate((0.05, 0.2)):
        assert lower[i] == pytest.approx(_cs_end(7, 10, alpha, "lower"), rel=1e-9)
        assert upper[i] == pytest.approx(_cs_end(7, 10, alpha, "upper"), rel=1e-9)


def test_cs_bounds_after_one_draw_are_closed_forms():
    """One draw is not "no draw" (kills `empty = t == 1`): with the Jeffreys prior M_1(p) = B(3/2, 1/2) / B(1/2,
    1/2) / p = 1 / (2 p) after a success, so at alpha = 1/2 the CS is p > 1/4: (1/4, 1); after a failure (0, 3/4)."""
    lower, upper = bounds.cs_bounds([1, 0], [1, 1], 0.5)
    assert lower[0] == pytest.approx(0.25, rel=1e-12) and upper[0] == 1.0
    assert lower[1] == 0.0 and upper[1] == pytest.approx(0.75, rel=1e-12)


def test_spending_weights_takes_only_integer_look_counts():
    """num_looks is a count: a float is refused (kills deleting operator.index, which let 1.0 through as one
    look)."""
    for bad in (1.0, 2.0):
        with pytest.raises(TypeError):
            bounds.spending_weights(bad)
    with pytest.raises(TypeError):
        bounds.spending_weights(2.0, weights=[0.4, 0.6])
    np.testing.assert_array_equal(bounds.spending_weights(np.int64(1)), [1.0])


def test_other_classes_upper_groups_may_hold_class_zero():
    """Class 0 may be in a group when another class is excluded (kills `0 < c < k`): one group of classes 0 and
    2, 60 + 40 of 1000 votes, at the full level."""
    up = bounds.other_classes_upper(np.array([60, 900, 40]), 1, 0.01, groups=[[0, 2]])
    assert up == pytest.approx(_cs_end(100, 1000, 0.01, "upper"), rel=1e-9)


def test_other_classes_upper_refuses_groups_that_hold_any_rows_excluded_class():
    """With one excluded class per row, a group holding the excluded class of *any* row is refused (kills
    np.all): row 1 excludes class 1, which is a group."""
    counts = np.array([[900, 60, 40], [60, 900, 40]])
    with pytest.raises(ValueError, match="groups"):
        bounds.other_classes_upper(counts, [0, 1], 0.01, groups=[[1], [2]])


# ---------------------------------------------------------------------- seed-3 sample (`--sample 40 --seed 3`)
def test_radius_refuses_a_non_finite_bound_among_finite_ones():
    """One NaN among valid bounds is refused (kills np.all(~isfinite)): NaN passes the < 0 and >= 1 tests."""
    with pytest.raises(ValueError, match="p_lower"):
        bounds.radius(0.5, [0.7, float("nan")])


def test_toward_zero_works_in_float64_for_float32_input():
    """toward_zero shrinks in float64 (kills dropping dtype=np.float64: float32 cannot hold 1 - 1e-9 and would
    round the margin to a float32 ulp, 6e-8): 1 becomes 1 - 1e-9 less one float64 ulp; infinity passes without a
    floating-point warning (kills dropping the errstate: inf - inf * margin is NaN, discarded, but it warns)."""
    out = bounds.toward_zero(np.float32(1.0))
    assert isinstance(out, float) and 1.0 - out == pytest.approx(bounds.RADIUS_MARGIN, rel=1e-6)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bounds.toward_zero(np.array([np.inf, -np.inf])).tolist() == [np.inf, -np.inf]


def test_counts_with_one_empty_trial_among_others_are_refused():
    """Every n must be >= 1 for Clopper-Pearson (kills np.all(t < min_trials)): one n = 0 among valid ones."""
    with pytest.raises(ValueError, match="n_a, n"):
        bounds.clopper_pearson_lower([1, 0], [10, 0], 0.05)


def test_other_classes_upper_group_checks_one_condition_at_a_time():
    """groups: an empty list, one empty group among others, and a class equal to K are each refused with msrs's
    error naming groups (kills `and` for `or`, and `c <= k`, which let class K reach an IndexError)."""
    counts = np.array([900, 60, 40])
    for groups in ([], [[1], []], [[1], [3]]):
        with pytest.raises(checks.ArgumentValueError, match="groups"):
            bounds.other_classes_upper(counts, 0, 0.01, groups=groups)


def test_other_classes_upper_takes_counts_as_a_list():
    """Counts given as a plain list (kills deleting the np.asarray line): the 40-digit CS end of the larger
    other class at level / 2."""
    up = bounds.other_classes_upper([900, 60, 40], 0, 0.02)
    assert up == pytest.approx(_cs_end(60, 1000, 0.01, "upper"), rel=1e-9)


@pytest.mark.parametrize("side", ["lower", "upper"])
def test_betting_log_capital_is_the_mean_of_the_grid_products(side):
    """log K(m) from its definition, one observation at a time in exact rational arithmetic: on the lower side a
    success multiplies a bet's capital by (1 - r (1 - m)) / m and a failure by r; on the upper side a failure by
    (1 - r m) / (1 - m) and a success by r; K is the mean over the grid of ratios r (seed-4 survivor: the upper
    side's success term with its sign flipped)."""

    ratios = [Fraction(1, 4), Fraction(1, 2), Fraction(3, 4)]
    for s, t, m in [(7, 10, Fraction(3, 10)), (2, 9, Fraction(3, 5)), (0, 5, Fraction(1, 2)), (6, 6, Fraction(9, 10))]:
        total = Fraction(0)
        for r in ratios:
            if side == "lower":
                win, loss = (1 - r * (1 - m)) / m, r
            else:
                win, loss = r, (1 - r * m) / (1 - m)
            total += win ** s * loss ** (t - s)
        expected = math.log(total / len(ratios))
        got = float(bounds.betting_log_capital(s, t, float(m), [float(r) for r in ratios], side=side))
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-12), (s, t, m, side)


def test_array_arguments_are_refused_when_any_entry_is_bad():
    """One bad entry among good ones is refused (seed-4 survivors: np.all / np.any swapped in the checks)."""
    with pytest.raises(checks.ArgumentValueError, match="^p0: "):
        bounds.radius(0.5, [0.9, 0.9], p0=[0.6, 0.4])
    with pytest.raises(checks.ArgumentValueError, match="successes"):
        bounds.cs_bounds([3, -1], [10, 10], 0.05)


def _betting_end_40(s: int, t: int, alpha: float, side: str) -> float:
    """The end of the one-sided betting confidence sequence from the module docstring's definition alone, in
    40-digit arithmetic: the grid r = 1 / (1 + 2^k), k = -20 .. 20 (41 bets), K+(m) = the mean over the grid of
    ((1 - r (1 - m)) / m)^s r^(t - s) (lower side; the upper side mirrors successes and failures), and the end is
    where K+ crosses 1 / alpha, found by bisection in log m (K+ decreases in m on (0, s / t])."""
    with mpmath.workdps(40):
        # the bets as placed: the doubles nearest 1 / (1 + 2^k) (at r = 1 - 2^-20 the double moves 1 - r by 1e-10)
        ratios = [mpmath.mpf(float(1 / (1 + mpmath.mpf(2) ** k))) for k in range(-20, 21)]
        wins, losses = (s, t - s) if side == "lower" else (t - s, s)
        target = mpmath.log(1 / mpmath.mpf(alpha))

        def log_capital(u):
            terms = [wins * mpmath.log((1 - r * (1 - u)) / u) + losses * mpmath.log(r) for r in ratios]
            return mpmath.log(mpmath.fsum(mpmath.exp(x) for x in terms) / len(ratios))

        if wins == 0:  # nothing excluded
            return 0.0 if side == "lower" else 1.0
        lo, hi = mpmath.log(mpmath.mpf(10) ** -300), mpmath.log(mpmath.mpf(wins) / t)  # in log u: ends near 1e-60
        for _ in range(130):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if log_capital(mpmath.exp(mid)) >= target else (lo, mid)
        end = mpmath.exp(lo)
        return float(end if side == "lower" else 1 - end)


@pytest.mark.parametrize("s,t", [(990, 1000), (100, 100), (5000, 5100), (37, 64)])
def test_betting_bounds_are_the_documented_41_bet_grid_sequence(s, t):
    """betting_bounds at its default grid against the sequence defined in the docstring, computed independently
    (40 digits, bisection): each end within 1e-9 (relative) of the crossing, and on its conservative side up to
    the rounding of log K (full-run survivors: the grid's k range -20 .. 20 moved to -21 .. 20 or -20 .. 21, which
    changes D, the mean's log D cost, and one bet)."""
    alpha = 0.001
    lower, upper = bounds.betting_bounds(s, t, alpha)
    want_lower, want_upper = _betting_end_40(s, t, alpha, "lower"), _betting_end_40(s, t, alpha, "upper")
    assert lower == pytest.approx(want_lower, rel=1e-9)
    assert 1.0 - upper == pytest.approx(1.0 - want_upper, rel=1e-9, abs=1e-15)
    assert lower <= want_lower * (1 + 1e-12) and upper >= want_upper - 1e-12


def test_clopper_pearson_upper_checks_its_counts_with_msrs_errors():
    """clopper_pearson_upper validates n_a and n itself, as binomial_pvalue does: msrs's ArgumentValueError naming
    the counts, not a NaN from scipy (kills deleting `n_a, n = _counts(n_a, n)` in clopper_pearson_upper)."""
    for n_a, n in ((11, 10), (-1, 10), (0, 0), (2.5, 10)):
        with pytest.raises(checks.ArgumentError, match="n_a"):
            bounds.clopper_pearson_upper(n_a, n, 0.01)


def test_radius_takes_a_lower_bound_of_zero_and_refuses_one_among_good_ones():
    """p_lower = 0 is a probability bound (radius -inf: PhiInv(0) = -inf, as signed_radius documents); p_lower = 1
    is refused even as one entry of several (kills `p_lower < 0` -> `p_lower <= 0` and np.any -> np.all in the
    check of p_lower >= 1)."""
    assert bounds.radius(0.5, 0.0) == -math.inf
    with pytest.raises(checks.ArgumentValueError, match="p_lower"):
        bounds.radius(0.5, [0.9, 1.0])


@pytest.mark.parametrize("s,t,alpha", [(1, 1, 0.9), (1, 2, 0.8), (3, 3, 0.5)])
def test_betting_bounds_at_loose_levels_on_a_few_samples(s, t, alpha):
    """At a loose level (1 / alpha below the capital the first few successes already make) the lower end lies above
    s / (t + 1): checked against the 40-digit sequence (seed-4 survivor: the regula falsi bracket capped at s /
    (t + 1) instead of the estimate s / t, through `np.maximum(total, 1.0)` -> 2.0)."""
    lower, _ = bounds.betting_bounds(s, t, alpha)
    want = _betting_end_40(s, t, alpha, "lower")
    assert lower == pytest.approx(want, rel=1e-9) and lower <= want * (1 + 1e-12)



def test_cs_after_one_success_in_one_draw_is_the_closed_form():
    """After one draw, a success: M_1(p) = E[q] / p = (a / (a + b)) / p under a Beta(a, b) prior, so the CS's lower
    end is alpha a / (a + b) exactly. With the prior (10, 1) and alpha = 0.9 it is 0.818..., above 1/2 (kills
    `t > 0` -> `t > 1` in the outer np.where of cs_bounds' phat, which starts the bisection of a one-draw row from
    1/2 instead of s / t = 1 and so never gets above 1/2)."""
    lower, upper = bounds.cs_bounds(1, 1, 0.9, prior=(10.0, 1.0))
    want = 0.9 * 10 / 11
    assert want * (1 - 1e-14) <= lower <= want and upper == 1.0


def test_cs_brentq_upper_end_near_one():
    """cs_bounds(method="brentq"), the check-only path, agrees with the bisection on the upper end where the mixture
    martingale at the largest double below 1 is only just outside the set (g(top) = 0.5, reached at s = 133,421,268
    successes and one failure): the end is that double, not 1 (kills `g(top) > 0` -> `g(top) > 1`)."""
    s = 133_421_268
    up = bounds.cs_bounds(s, s + 1, 0.001, method="brentq")[1]
    assert up == np.nextafter(1.0, 0.0) == bounds.cs_bounds(s, s + 1, 0.001)[1]


@pytest.mark.parametrize("s,t,side", [(172, 172, "lower"), (0, 172, "upper")])
def test_betting_bounds_at_the_smallest_levels_reach_the_crossing(s, t, side):
    """At alpha = 1e-300 (need = 690.8 nats) the regula falsi still ends within 1e-12 of the 40-digit crossing, on
    its conservative side (kills `hv >= 0` -> `hv > 0`, after which a point where the capital is exactly 1 / alpha
    is taken as inside: 1e-10 off here)."""
    lower, upper = bounds.betting_bounds(s, t, 1e-300)
    want = _betting_end_40(s, t, 1e-300, side)
    got = lower if side == "lower" else upper
    assert got == pytest.approx(want, rel=1e-12)


def test_betting_bounds_after_one_success_in_a_billion_draws_raise_no_warning():
    """One success in 10^9 draws: the end lies far below the smallest normal double (the 40-digit capital there is
    still below 1 / alpha), where h is flat at the clamped u and the regula falsi's secant is 0 / 0; the step falls
    back to bisection silently and the end is 0 (kills dropping divide="ignore" or the whole errstate around the
    secant: a RuntimeWarning)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lower, _ = bounds.betting_bounds(1, 10**9, 0.001)
    with mpmath.workdps(40):
        tiny = mpmath.mpf(np.finfo(np.float64).tiny)
        ratios = [mpmath.mpf(r) for r in bounds.DEFAULT_BETTING_RATIOS]
        capital = mpmath.fsum((1 - r * (1 - tiny)) / tiny * r ** (10**9 - 1) for r in ratios) / len(ratios)
        assert capital < 1000
    assert lower == 0.0


def test_betting_lower_end_at_a_billion_draws_is_the_crossing_not_the_trivial_zero():
    """At 886,885,343 successes in 10^9 draws and alpha = 1e-100, log K rounds by about 1e-8 (wins * eps * |log|),
    more than the outside start's 1e-9 margin: the start tested inside, the regula falsi had no bracket and the
    bound said nothing (0). Now the start steps outward until it tests outside, and the end is the 40-digit
    crossing to 1e-13 (relative; on either side by the rounding of log K, which the radius margin covers:
    docs/CERTIFICATES.md). Kills dropping the outward steps or their `h_out < 0` condition."""
    lower, _ = bounds.betting_bounds(886_885_343, 10**9, 1e-100)
    assert lower == pytest.approx(_betting_end_40(886_885_343, 10**9, 1e-100, "lower"), rel=1e-13, abs=0)


def test_betting_bounds_and_betting_final_check_their_arguments():
    """betting_bounds refuses a level outside (0, 1) by name (kills deleting its checks.level call); BettingFinal
    refuses looks that are empty, start below one sample or do not increase, also when only a later pair is out of
    order, and takes a first look of one sample (kills `or` -> `and` and the two 1 -> 2 mutants of its check)."""
    for alpha in (0.0, 1.5, float("nan")):
        with pytest.raises(checks.ArgumentValueError, match="alpha"):
            bounds.betting_bounds(5, 10, alpha)
    for looks in ([], [0, 10], [10, 5], [10, 20, 15]):
        with pytest.raises(checks.ArgumentValueError, match="looks"):
            bounds.BettingFinal(looks)
    assert bounds.BettingFinal([1, 10]).n_max == 10


def test_spending_weights_refuse_a_nan_share_among_good_ones():
    """A NaN share passes `w <= 0` and makes the sum NaN, which passes `abs(sum - 1) > 1e-9`; only the finiteness
    check of every share refuses it (kills np.all(np.isfinite(w)) -> np.any)."""
    with pytest.raises(checks.ArgumentValueError, match="weights"):
        bounds.spending_weights(3, weights=[0.25, float("nan"), 0.75])


def test_spending_weights_normalise_given_shares_exactly_and_refuse_a_zero_final_share():
    """Given shares that sum to 1 within the 1e-9 tolerance are divided by their sum: each returned share is w_i / S
    with S the exact (rational) sum, to 1e-15 (kills w / w.sum() -> w * w.sum(), 1e-9 off); with one look a final
    share of 0 is refused by name (kills 0.0 < share -> 0.0 <= share)."""
    given = [0.25, 0.25, 0.5 + 5e-10]
    exact_sum = sum(Fraction(w) for w in given)
    got = bounds.spending_weights(3, weights=given)
    assert got.tolist() == pytest.approx([float(Fraction(w) / exact_sum) for w in given], rel=1e-15)
    with pytest.raises(checks.ArgumentValueError, match="final_share"):
        bounds.spending_weights(1, final_share=0.0)


def test_final_share_ranges_of_the_spending_and_voracek_shares():
    """spending_weights with one look takes a final share in (0, 1] (1.5 refused: kills `share <= 1.0` -> `<= 2.0`);
    voracek_weights takes final_share in (0, 1): 1.0 would leave nothing for the earlier looks and 1.5 would give
    them negative shares, both refused by name (kills `share < 1.0` -> `share <= 1.0` and -> `share < 2.0`)."""
    assert bounds.spending_weights(1, final_share=1.0).tolist() == [1.0]
    with pytest.raises(checks.ArgumentValueError, match="final_share"):
        bounds.spending_weights(1, final_share=1.5)
    for share in (1.0, 1.5):
        with pytest.raises(checks.ArgumentValueError, match="final_share"):
            bounds.voracek_weights(5, final_share=share)


def test_other_classes_upper_checks_level_and_every_excluded_class_and_takes_batches():
    """other_classes_upper refuses a bad level by its name and one out-of-range excluded class among good ones
    (kills deleting checks.level, np.any -> np.all and | -> & in the exclude check); on a [2, 2, 3] batch of counts
    each entry is the bound of that row alone (kills deleting _group_bounds' reshape of the groups to rows)."""
    counts = np.array([[[900, 60, 40], [500, 300, 200]], [[10, 80, 10], [33, 33, 34]]])
    with pytest.raises(checks.ArgumentValueError, match="level"):
        bounds.other_classes_upper(counts[0, 0], 0, 1.5)
    with pytest.raises(checks.ArgumentValueError, match="exclude"):
        bounds.other_classes_upper(counts[0], [0, 3], 0.02)
    exclude = np.array([[0, 1], [1, 2]])
    batch = bounds.other_classes_upper(counts, exclude, 0.02)
    for i in range(2):
        for j in range(2):
            assert batch[i, j] == bounds.other_classes_upper(counts[i, j], int(exclude[i, j]), 0.02)


def test_betting_lower_end_at_a_billion_draws_and_the_smallest_level():
    """831,678,490 successes in 10^9 draws at alpha = 1e-300: the regula falsi reaches the 40-digit crossing (1e-9)
    rather than giving up with the trivial 0 (kills `secant > vo` -> `secant >= vo`, whose secant step that lands on
    the outside end stalls the bracket)."""
    lower, _ = bounds.betting_bounds(831_678_490, 10**9, 1e-300)
    assert lower == pytest.approx(_betting_end_40(831_678_490, 10**9, 1e-300, "lower"), rel=1e-9)


def test_successes_trials_are_float64_and_broadcast_together():
    """The counts helper's contract, on which every bound builds: integer counts come back as float64 arrays of
    the broadcast shape (kills deleting the np.broadcast_arrays(... astype(np.float64)) line)."""
    s, t = bounds._successes_trials(5, [10, 20])
    assert s.dtype == t.dtype == np.float64 and s.shape == t.shape == (2,) and s.tolist() == [5.0, 5.0]


@pytest.mark.parametrize("call, name", [
    (lambda: bounds.binomial_pvalue(3.5, 10), "n_a"),
    (lambda: bounds.binomial_pvalue(True, 2), "n_a"),
    (lambda: bounds.binomial_pvalue(3, 10.5), "n"),
    (lambda: bounds.clopper_pearson_lower(3, np.inf, 0.01), "n"),
    (lambda: bounds.other_classes_upper([[3, 4, 5]], 0.5, 0.01), "exclude"),
    (lambda: bounds.other_classes_upper([[3, 4.5, 5]], 0, 0.01), "counts"),
    (lambda: bounds.other_classes_upper([[3, 4, 5]], True, 0.01), "exclude"),
])
def test_fractional_and_bool_counts_are_refused_not_truncated(call, name):
    """A count or class that is not an integer is refused with an error naming it; before, binomial_pvalue
    truncated 3.5 to 3 (int() before the check) and other_classes_upper truncated counts and `exclude` (an
    int64 cast) and answered for other numbers than it was given."""
    with pytest.raises(checks.ArgumentTypeError, match=f"^{name}: expected integers"):
        call()


def test_integral_float_counts_give_the_integer_answer():
    """Whole floats are counts: binomial_pvalue(3.0, 10.0) is the exact two-sided p-value of 3 in 10,
    (1 + 10 + 45 + 120) * 2 / 1024, and other_classes_upper takes float counts as their integers."""
    assert bounds.binomial_pvalue(3.0, 10.0) == pytest.approx(2 * 176 / 1024, rel=1e-12)
    as_int = bounds.other_classes_upper([[3, 4, 5]], 2, 0.01)
    assert np.array_equal(bounds.other_classes_upper([[3.0, 4.0, 5.0]], 2.0, 0.01), as_int)


# ----------------------------------------------------------------------------------- full run (all mutants, 2026-12)
def test_binomial_pvalue_takes_whole_float_and_numpy_counts():
    """Counts that are whole floats or numpy scalars are counts (binomial_pvalue's `n_a, n = int(n_a), int(n)`;
    kills deleting it, after which scipy's binomtest refuses a float k): 2 of 10 at p = 1/2 has the two-sided
    p-value P[X <= 2] + P[X >= 8] = 2 (1 + 10 + 45) / 2^10 = 112 / 1024."""
    exact = float(Fraction(2 * (1 + 10 + 45), 2**10))
    for n_a, n in ((2.0, 10.0), (np.float64(2), np.float64(10)), (np.int64(2), np.int32(10))):
        assert bounds.binomial_pvalue(n_a, n) == pytest.approx(exact, rel=1e-12)


def test_goodman_bounds_refuse_a_negative_count_among_positive_ones_and_a_zero_total():
    """goodman_bounds needs k >= 2 non-negative counts with a positive total: one negative count among positive
    ones is refused by name (kills np.any(counts < 0) -> np.all), and so is the all-zero vector, whose formula
    divides 0 by 0 (kills `counts.sum() <= 0` -> `< 0`); a vector with one zero count is fine: its interval is
    the closed form [0, A / (N + A)] (n_i = 0 in the module's formula)."""
    for counts in ([-1, 5], [3, -1, 4], [0, 0], [0.0, 0.0, 0.0]):
        with pytest.raises(checks.ArgumentValueError, match="counts"):
            bounds.goodman_bounds(counts, 0.05)
    a = NormalDist().inv_cdf(1 - 0.05 / 2 / 2) ** 2  # chi2(1) quantile = squared normal quantile
    out = bounds.goodman_bounds([0, 7], 0.05)
    assert out[0, 0] == 0.0 and out[0, 1] == pytest.approx(a / (7 + a), rel=1e-12)


def test_radius_of_an_exact_fraction_or_decimal_lower_bound():
    """radius reads p_lower as float64 first (`np.asarray(p_lower, dtype=np.float64)`; kills dropping the dtype,
    after which a Fraction or a Decimal makes an object array that np.isfinite refuses): sigma (PhiInv(p) -
    PhiInv(1/2)) = sigma PhiInv(p), shrunk by RADIUS_MARGIN, against 40-digit erfinv and statistics.NormalDist."""
    for p in (Fraction(3, 4), Decimal("0.975"), [Fraction(9, 10), Decimal("0.6")]):
        ps = [Fraction(v) for v in (p if isinstance(p, list) else [p])]
        expected = [0.5 * _phi_inv_40(v) * (1 - bounds.RADIUS_MARGIN) for v in ps]
        out = np.atleast_1d(bounds.radius(0.5, p))
        assert out.dtype == np.float64
        np.testing.assert_allclose(out, expected, rtol=1e-13)
        np.testing.assert_allclose(out, [0.5 * NormalDist().inv_cdf(float(v)) for v in ps], rtol=1e-8)


def test_radius_refuses_one_bad_entry_among_good_ones_and_takes_the_closed_ends():
    """radius' checks, value by value: one p_lower outside [0, 1) or not finite among good ones is refused by name
    (kills np.any -> np.all and `or` -> `and` on line 235), and so is one p0 outside [1/2, 1) (kills np.all ->
    np.any and & -> |); the closed ends are valid: p_lower = 0 gives -inf, p0 = 1/2 the plain sigma PhiInv(p)
    (kills `< 0` -> `<= 0` and `>= 0.5` -> `> 0.5`), and p_lower = 1 and p0 = 1 are refused (kills `>= 1` ->
    `> 1` and `< 1` -> `<= 1`). Values against statistics.NormalDist, shrunk by RADIUS_MARGIN."""
    for p_lower in ([0.7, -0.1], [0.7, 1.0], [0.7, np.nan], [0.7, np.inf], [-0.1, 0.7], 1.0):
        with pytest.raises(checks.ArgumentValueError, match="p_lower"):
            bounds.radius(0.5, p_lower)
    for p0 in ([0.6, 0.4], [0.4, 0.6], 1.0, 0.4):
        with pytest.raises(checks.ArgumentValueError, match="p0"):
            bounds.radius(0.5, 0.7, p0)
    inv, keep = NormalDist().inv_cdf, 1 - bounds.RADIUS_MARGIN
    out = bounds.radius(0.5, [0.0, 0.7], 0.5)
    assert out[0] == -np.inf and out[1] == pytest.approx(0.5 * inv(0.7) * keep, rel=1e-12)
    out = bounds.radius(0.5, 0.7, [0.5, 0.6])
    np.testing.assert_allclose(out, [0.5 * inv(0.7) * keep, 0.5 * (inv(0.7) - inv(0.6)) * keep], rtol=1e-12)


def test_signed_radius_of_exact_decimal_and_fraction_arguments():
    """signed_radius reads sigma and p as float64 first (`np.asarray(sigma / p, dtype=np.float64)`; kills dropping
    either dtype: a Decimal sigma times a float raises TypeError, and scipy's norm.ppf has no loop for an object
    array of Fractions): sigma (PhiInv(p) - PhiInv(p0)), shrunk by RADIUS_MARGIN, against 40-digit erfinv."""
    keep = 1 - bounds.RADIUS_MARGIN
    out = bounds.signed_radius(Decimal("0.25"), [Fraction(7, 10), Fraction(1, 5)])
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, [0.25 * _phi_inv_40(Fraction(7, 10)) * keep,
                                     0.25 * _phi_inv_40(Fraction(1, 5)) * keep], rtol=1e-13)
    value = bounds.signed_radius(0.5, Decimal("0.9"), 0.6)
    assert value == pytest.approx(0.5 * (_phi_inv_40(Fraction(9, 10)) - _phi_inv_40(Fraction(3, 5))) * keep,
                                  rel=1e-13)


def test_beta_prior_needs_both_parameters_positive():
    """_check_prior refuses a = 0 or b = 0 by name (kills `a > 0` / `b > 0` -> `>= 0`) and takes Jeffreys' (1/2,
    1/2) (kills `0` -> `1` in either): log M_1(p) after one success is log(B(3/2, 1/2) / B(1/2, 1/2)) - log p =
    log(a / (a + b)) - log p = log 2 at p = 1/4."""
    for prior in ((1.0, 0.0), (0.0, 1.0), (0, 0)):
        with pytest.raises(checks.ArgumentValueError, match="prior"):
            bounds.log_martingale(1, 1, 0.25, prior=prior)
    assert bounds.log_martingale(1, 1, 0.25, prior=(0.5, 0.5)) == pytest.approx(math.log(2), rel=1e-14)


def test_counts_checks_catch_one_bad_entry_among_good_ones():
    """_successes_trials checks every entry: one fractional count among whole ones is refused as a type error
    (kills np.all(v == np.floor(v)) -> np.any), and one count above its trials, one negative count or one trial
    count below the minimum among good ones as a value error (kills np.any(s > t), np.any(s < 0) and np.any(t <
    min_trials) -> np.all), each naming the counts; whole float counts are fine: 2.0 of 10.0 has the CS ends of 2
    of 10 (40-digit bisection)."""
    with pytest.raises(checks.ArgumentTypeError, match="successes"):
        bounds.cs_bounds([2.0, 2.5], 10, 0.05)
    with pytest.raises(checks.ArgumentTypeError, match="trials"):
        bounds.cs_bounds(2, [10.0, 10.5], 0.05)
    for s, t in (([3, 11], 10), ([3, -1], 10), ([-1, 3], [10, 10])):
        with pytest.raises(checks.ArgumentValueError, match="successes"):
            bounds.cs_bounds(s, t, 0.05)
    with pytest.raises(checks.ArgumentValueError, match="n_a"):
        bounds.clopper_pearson_lower([1, 0], [10, 0], 0.05)  # n >= 1 there
    lower, upper = bounds.cs_bounds([2.0, 2.0], [10.0, 10.0], 0.05)
    assert lower[0] == pytest.approx(_cs_end(2, 10, 0.05, "lower"), rel=1e-9)
    assert upper[1] == pytest.approx(_cs_end(2, 10, 0.05, "upper"), rel=1e-9)


def test_log_martingale_of_a_list_or_fraction_of_probabilities():
    """log_martingale reads p as float64 (`p = np.asarray(p, dtype=np.float64)`; kills deleting it, where -p of a
    list raises TypeError, and dropping the dtype, where scipy's xlogy has no loop for a Fraction): after one
    success in one draw, log M_1(p) = log(B(3/2, 1/2) / B(1/2, 1/2)) - log p = log(1 / (2 p)) (Jeffreys prior)."""
    np.testing.assert_allclose(bounds.log_martingale(1, 1, [0.25, 0.5]), [math.log(2), 0.0], rtol=1e-14, atol=1e-15)
    assert bounds.log_martingale(1, 1, Fraction(1, 4)) == pytest.approx(math.log(2), rel=1e-14)


def test_cs_end_that_lands_exactly_on_the_crossing_is_the_crossing():
    """The CS is {p : M_t(p) < 1/alpha}, so a point where M_t(p) = 1/alpha exactly is outside it and is the end
    (cs_bounds' `outside(p)`: `... >= 0`; kills `> 0`, which takes the crossing for inside and ends one ulp
    further out). Uniform prior (1, 1), one draw, alpha = 1/2: M_1(p) = 1 / (2p) after a success and 1 / (2 (1 - p))
    after a failure, so the ends are exactly 1/4 and 3/4, dyadic points the bisection lands on."""
    lower, upper = bounds.cs_bounds([1, 0], [1, 1], 0.5, prior=(1, 1))
    assert lower.tolist() == [0.25, 0.0] and upper.tolist() == [1.0, 0.75]


def test_brentq_ends_at_extreme_levels_and_counts():
    """cs_bounds(method="brentq"), the checking path: the lower end of 2 in 10^6 at alpha = 1e-250 needs 483 of
    brentq's iterations and is where the 40-digit log M_t crosses log(1/alpha), within 1e-9 relative on either
    side (kills dropping maxiter=500 there: scipy's 100 give up); the upper end of 1 in 10^7 is the 40-digit
    crossing to 1e-12 (kills dropping xtol=1e-300: scipy's absolute 2e-12 stops 7e-9 relative short); and with
    one failure in one draw at alpha = 1e-20 the set reaches every float below 1 (M_1(p) = 1 / (2 (1 - p)) <=
    2^52 < 1e20), so the upper end is 1 for both methods (kills `else 1.0` -> `else 2.0`)."""
    alpha = 1e-250
    lower, _ = bounds.cs_bounds(2, 10**6, alpha, method="brentq")
    assert 0 < lower < 1e-100
    assert _log_mixture(2, 10**6, lower * (1 - 1e-9)) >= -math.log(alpha)
    assert _log_mixture(2, 10**6, lower * (1 + 1e-9)) < -math.log(alpha)
    _, upper = bounds.cs_bounds(1, 10**7, 0.001, method="brentq")
    assert upper == pytest.approx(_cs_end(1, 10**7, 0.001, "upper"), rel=1e-12, abs=0)
    for method in ("brentq", "bisect"):
        assert bounds.cs_bounds(0, 1, 1e-20, method=method) == (0.0, 1.0)


def test_betting_ratios_as_fractions_and_one_bad_ratio_among_good_ones():
    """_check_ratios reads the grid as float64 (`np.asarray(ratios, dtype=np.float64)`; kills dropping the dtype,
    after which a list of Fractions is an object array that np.isfinite refuses): log K(m) of 7 in 10 at m = 3/10
    on the lower side is log of the mean over r of ((1 - r (1 - m)) / m)^7 r^3, in exact rational arithmetic. One
    NaN or infinite ratio among good ones is refused by name (kills np.all(np.isfinite(r)) -> np.any)."""
    ratios, m = [Fraction(1, 4), Fraction(1, 2), Fraction(3, 4)], Fraction(3, 10)
    exact = sum(((1 - r * (1 - m)) / m) ** 7 * r ** 3 for r in ratios) / len(ratios)
    got = float(bounds.betting_log_capital(7, 10, float(m), ratios))
    assert got == pytest.approx(math.log(exact), rel=1e-12, abs=0)
    for bad in ([0.5, np.nan], [np.inf, 0.5], [0.25, -np.inf, 0.75]):
        with pytest.raises(checks.ArgumentValueError, match="ratios"):
            bounds.betting_log_capital(7, 10, 0.3, bad)


def test_betting_log_capital_at_a_fractional_mean():
    """betting_log_capital reads m as float64 (`np.asarray(m, dtype=np.float64)`; kills dropping the dtype, after
    which a Fraction m is an object array that the capital's numpy logs refuse): 7 in 10 at m = 3/10 on the lower
    side, log of the mean over r of ((1 - r (1 - m)) / m)^7 r^3 in exact rational arithmetic."""
    ratios, m = [0.25, 0.5, 0.75], Fraction(3, 10)
    exact = sum(((1 - Fraction(r) * (1 - m)) / m) ** 7 * Fraction(r) ** 3 for r in ratios) / len(ratios)
    got = bounds.betting_log_capital(7, 10, m, ratios)
    assert got.dtype == np.float64 and float(got) == pytest.approx(math.log(exact), rel=1e-12, abs=0)


def test_betting_ratios_must_lie_strictly_between_zero_and_one():
    """Every failure ratio must lie in the open interval (0, 1): 0 and 1 themselves are refused (kills `r <= 0` ->
    `r < 0` and `r >= 1` -> `r > 1`), and so is one bad ratio among good ones (kills np.any -> np.all in both), and
    an empty grid; the grid's ends just inside are accepted, and a grid of one ratio r = 1/2 on one success at m =
    1/2 has log K = log((1 - r (1 - m)) / m) = log(3/2)."""
    for bad in ([0.5, 0.0], [0.0], [0.5, -0.25], [0.5, 1.0], [1.0], [1.5, 0.5], []):
        with pytest.raises(checks.ArgumentValueError, match="ratios"):
            bounds.betting_log_capital(1, 1, 0.5, bad)
    assert np.isfinite(bounds.betting_log_capital(1, 1, 0.5, [5e-324, np.nextafter(1.0, 0.0)]))
    assert float(bounds.betting_log_capital(1, 1, 0.5, [0.5])) == pytest.approx(math.log(1.5), rel=1e-14, abs=0)


def test_betting_ends_at_a_level_just_below_one():
    """At alpha = 1 - 2^-53 the sets shrink onto the estimate, the regula falsi's inside start: the lower end of 2
    in 2 lies within the regula falsi's width (1e-15 in log u, 4.5 ulps at 1) below the 40-digit crossing, and the
    upper end of 0 in 2 within 4e-16 above it, both on the conservative side. (Earlier kills here, of a bracket
    capped at log(wins) and of the fallback to the estimate when the first inside start rounded to outside, went
    with the start they tested: the estimate is now the inside start itself.)"""
    alpha = 1 - 2.0**-53
    lower, _ = bounds.betting_bounds(2, 2, alpha)
    want = _betting_end_40(2, 2, alpha, "lower")
    assert want - 4 * np.spacing(want) <= lower <= want  # the regula falsi's width: 1e-15 in log u, 4.5 ulps at 1
    _, upper = bounds.betting_bounds(0, 2, alpha)
    want = _betting_end_40(0, 2, alpha, "upper")
    assert want <= upper <= want + 4e-16


def test_betting_upper_end_at_a_tiny_level_converges_to_the_crossing():
    """The upper end of 10,959 in 29,661 at alpha = 1.0685e-224 is the 40-digit crossing of the 41-bet grid to
    1e-13 (relative), on the conservative side (the regula falsi's bracket starts at the largest one-bet end,
    `np.max(...)` in one_bet_end; kills np.min, whose other bracket ends 1.7e-12 further out, and `np.log1p(-r)`
    -> `np.log1p(r)` there)."""
    alpha = 1.06850051263938e-224
    _, upper = bounds.betting_bounds(10_959, 29_661, alpha)
    want = _betting_end_40(10_959, 29_661, alpha, "upper")
    assert upper >= want and upper == pytest.approx(want, rel=1e-13, abs=0)


def test_betting_bounds_of_a_batch_are_each_rows_own_ends():
    """A batch of counts gets each row's own ends (one_bet_end's max over the grid is per row, `axis=-1`; kills
    dropping the axis, which takes the largest one-bet end over every row and ratio and leaves the other rows
    with the trivial (0, 1)): the ends it spoils, each within 1e-9 of its 40-digit crossing, on the conservative
    side up to the rounding of log K (1e-12)."""
    s, t = [5, 900, 37], [1000, 1000, 64]
    lower, upper = bounds.betting_bounds(s, t, 0.001)
    for i, side in ((0, "lower"), (2, "lower"), (1, "upper"), (2, "upper")):
        want, got = _betting_end_40(s[i], t[i], 0.001, side), (lower if side == "lower" else upper)[i]
        assert (got <= want * (1 + 1e-12)) if side == "lower" else (got >= want * (1 - 1e-12))
        assert got == pytest.approx(want, rel=1e-9, abs=0)


def test_betting_upper_end_where_the_illinois_step_matters():
    """The upper end of 64,080 in 868,106 at alpha = 4.49e-102 is the 40-digit crossing of the 41-bet grid to 1e-13
    (relative), on the conservative side: the Illinois rule halves the kept outside end's h only when that end was
    kept the step before (`np.where(k == 1, 0.5 * ho, ho)`; kills `k != 1`, which halves it at the wrong steps and
    ends 1.6e-11 further out)."""
    alpha = 4.4924184785019654e-102
    _, upper = bounds.betting_bounds(64_080, 868_106, alpha)
    want = _betting_end_40(64_080, 868_106, alpha, "upper")
    assert upper >= want and upper == pytest.approx(want, rel=1e-13, abs=0)


def test_betting_upper_end_where_the_inside_illinois_step_matters():
    """The upper end of 1,244 in 158,117 at alpha = 1.97e-91 is the 40-digit crossing of the 41-bet grid to 5e-14
    (relative), on the conservative side: the Illinois rule halves the kept inside end's h only when that end was
    kept the step before (`np.where(k == -1, 0.5 * hi_, hi_)`; kills `k != -1`, which ends 4.2e-13 further out)."""
    alpha = 1.9721859273303368e-91
    _, upper = bounds.betting_bounds(1244, 158_117, alpha)
    want = _betting_end_40(1244, 158_117, alpha, "upper")
    assert upper >= want and upper == pytest.approx(want, rel=5e-14, abs=0)


def test_betting_upper_end_is_at_most_one():
    """An upper end whose failure-side end is below 2^-53 rounds to 1 - 0 = 1 and is stepped up one ulp for
    safety, then clipped to 1 (betting_bounds' `np.minimum(np.nextafter(1.0 - ..., 2.0), 1.0)`; kills the clip
    at 2.0, which returns 1 + 2^-52 there): one failure in 10 at alpha = 1e-30, and in 100 at 1e-300, have their
    failure-side ends below 2^-54, and an end of a probability is at most 1."""
    lower, upper = bounds.betting_bounds([9, 99], [10, 100], [1e-30, 1e-300])
    assert upper.tolist() == [1.0, 1.0] and np.all(lower > 0)


def test_betting_final_looks_are_increasing_integer_counts():
    """BettingFinal's looks are integer sample counts, strictly increasing (its `[operator.index(p) for p in
    looks]`; kills deleting it: whole floats are refused, as for AlphaSpending; and `b <= a` -> `b < a`: a repeated
    look is refused by name); increasing counts from 1 are fine, and n_max is the last."""
    with pytest.raises(TypeError):
        bounds.BettingFinal([10.0, 20.0])
    for looks in ([10, 10, 20], [10, 20, 20], [20, 10]):
        with pytest.raises(checks.ArgumentValueError, match="looks"):
            bounds.BettingFinal(looks)
    assert bounds.BettingFinal([1, 10, 20]).n_max == 20


def test_betting_final_checks_its_share_and_its_level():
    """BettingFinal's final_share lies in the open interval (0, 1): 0 would leave the final look no Clopper-Pearson
    share, and is refused by name (kills `0.0 < final_share` -> `<=`), as is 1; its level is checked by name at
    every look (kills deleting `level = checks.level("level", level)` in __call__, after which a level of 1.5 at a
    look before n_max silently spends 1.5 * 0.1 on the betting sequence)."""
    for share in (0.0, 1.0):
        with pytest.raises(checks.ArgumentValueError, match="final_share"):
            bounds.BettingFinal([10, 20], final_share=share)
    bound = bounds.BettingFinal([10, 20])
    for level in (1.5, 0.0, -0.1):
        with pytest.raises(checks.ArgumentValueError, match="level"):
            bound([5], [10], level)


def test_spending_weights_given_as_exact_fractions():
    """spending_weights reads given weights as float64 (`np.asarray(weights, dtype=np.float64)`; kills dropping the
    dtype, after which Fractions make an object array that np.isfinite refuses): 1/4 and 3/4 are the shares 0.25
    and 0.75, exactly."""
    w = bounds.spending_weights(2, weights=[Fraction(1, 4), Fraction(3, 4)])
    assert w.dtype == np.float64 and w.tolist() == [0.25, 0.75]


def test_voracek_weights_of_two_looks_and_a_float_count():
    """voracek_weights on two looks is w_1 = 5 / (5 * 6) = 1/6 and the tail 5 / (2 + 4) = 5/6 (kills `num_looks ==
    1` -> `== 2`, which gives two looks the single weight [1]); with final_share 0.9: [0.1, 0.9]; a float look
    count is refused (kills deleting `num_looks = operator.index(num_looks)`), as for spending_weights."""
    np.testing.assert_allclose(bounds.voracek_weights(2), [1 / 6, 5 / 6], rtol=1e-15)
    np.testing.assert_allclose(bounds.voracek_weights(2, final_share=0.9), [0.1, 0.9], rtol=1e-15)
    assert bounds.voracek_weights(1).tolist() == [1.0]
    with pytest.raises(TypeError):
        bounds.voracek_weights(3.0)


def test_voracek_final_share_lies_strictly_between_zero_and_one():
    """voracek_weights' final_share on several looks lies in the open interval (0, 1): 0 would leave the final look
    nothing, and is refused by name (kills `0.0 < share` -> `<=`), as is 1; 0.5 on three looks gives the early
    looks the rest in the proportions 1 / ((j + 4)(j + 5)) = 1/30 : 1/42, i.e. 0.5 * (7/12, 5/12)."""
    for share in (0.0, 1.0):
        with pytest.raises(checks.ArgumentValueError, match="final_share"):
            bounds.voracek_weights(3, final_share=share)
    np.testing.assert_allclose(bounds.voracek_weights(3, final_share=0.5), [7 / 24, 5 / 24, 0.5], rtol=1e-15)


def test_alpha_spending_refuses_trials_past_its_last_look_by_name():
    """AlphaSpending is defined only at its looks: a count past the last one is refused by name like any other
    count that is not a look (shares' `np.minimum(np.searchsorted(...), self.looks.size - 1)`; kills `size + 1`,
    which indexes past the looks and raises a bare IndexError); at a look the share is the one given (a = 0.1 *
    0.2 at the first look: after 0 successes in 10 the upper end is 1 - a^(1/10), the closed form)."""
    bound = bounds.AlphaSpending([10, 20], weights=[0.2, 0.8])
    for trials in ([30], [10, 30], [15]):
        with pytest.raises(checks.ArgumentValueError, match="trials"):
            bound(np.zeros(len(trials), dtype=np.int64), trials, 0.1)
    _, upper = bound([0], [10], 0.1)
    assert upper[0] == pytest.approx(1 - (0.1 * 0.2) ** (1 / 10), rel=1e-12)


def test_alpha_spending_error_names_the_first_five_bad_counts():
    """The refusal of counts that are not looks lists the first five distinct bad counts, sorted (shares' `[:5]`;
    kills `[:6]`): six bad counts 16, 11, .., 15 are reported as [11, 12, 13, 14, 15]."""
    bound = bounds.AlphaSpending([10, 20], weights=[0.2, 0.8])
    with pytest.raises(checks.ArgumentValueError, match=r"got \[11, 12, 13, 14, 15\]$"):
        bound(np.zeros(7, dtype=np.int64), [16, 11, 12, 13, 14, 15, 10], 0.1)


def test_betting_bounds_keep_the_shape_of_two_dimensional_inputs():
    """betting_bounds broadcasts as its docstring says, 2-D included (its output shape was taken from the
    flattened alpha: a [2, 2] input raised a broadcasting error): a [2, 2] grid of successes against a [2, 1]
    column of levels gives [2, 2] ends, each the 40-digit crossing of its own row's level."""
    s, alpha = np.array([[3, 40], [77, 100]]), np.array([[1e-3], [1e-6]])
    lower, upper = bounds.betting_bounds(s, 100, alpha)
    assert lower.shape == upper.shape == (2, 2)
    for i, j in np.ndindex(2, 2):
        a = float(alpha[i, 0])
        assert lower[i, j] == pytest.approx(_betting_end_40(int(s[i, j]), 100, a, "lower"), rel=1e-12, abs=0)
        assert upper[i, j] == pytest.approx(_betting_end_40(int(s[i, j]), 100, a, "upper"), rel=1e-12, abs=0)


def test_betting_bounds_at_the_smallest_double_level():
    """alpha = 5e-324 (the smallest subnormal): log(1 / alpha) overflowed (1 / alpha = inf, a RuntimeWarning and a
    trivial bound); -log(alpha) = 744.4 is the level's log. 300 successes in 300 draws: the lower end is the 40-digit
    crossing, without a warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lower, upper = bounds.betting_bounds(300, 300, 5e-324)
    assert upper == 1.0 and lower == pytest.approx(_betting_end_40(300, 300, 5e-324, "lower"), rel=1e-12, abs=0)


@pytest.mark.parametrize("s,t,alpha", [(1, 3, 1.8066198677796083e-27), (1, 46, 7.713524707927086e-27),
                                       (4, 9_761_336, 5.361426788962846e-10), (3, 5_816_147, 0.0007525188507364516)])
def test_betting_lower_end_of_a_few_successes_converges_to_the_crossing(s, t, alpha):
    """A few successes: the end is the 40-digit crossing of the grid as placed to 1e-13. Two things spoiled it by
    about 3e-9 and 1e-10: (first two) the secant landing on a bracket end, where h is far nearer 0 than at the
    other end, after which the old rule bisected and 30 steps could not close a bracket 2 wide (now the point is
    kept a quarter of the final width inside the bracket); (last two, 10^6 to 10^7 draws) log1p(-r (1 - u)) at
    r = 1 - 2^-20, which loses the digits of 1 - r (1e-10 noise in log K; now log((1 - r) + r u) for r >= 1/2,
    where 1 - r is exact)."""
    lower, _ = bounds.betting_bounds(s, t, alpha)
    want = _betting_end_40(s, t, alpha, "lower")
    assert lower == pytest.approx(want, rel=1e-13, abs=0) and lower <= want * (1 + 1e-15)


def test_voracek_weights_of_one_look_check_the_share():
    """With one look all of the level is spent there, whatever the share, but the share is still checked by name
    as spending_weights checks it, in (0, 1] (voracek_weights(1, final_share=1.5) returned [1.] unchecked)."""
    for share in (1.5, 0.0, -0.5, float("nan")):
        with pytest.raises(checks.ArgumentValueError, match="final_share"):
            bounds.voracek_weights(1, final_share=share)
        with pytest.raises(checks.ArgumentValueError, match="final_share"):
            bounds.spending_weights(1, final_share=share)
    for share in (1.0, 0.5, None):
        assert bounds.voracek_weights(1, final_share=share).tolist() == [1.0]


def test_betting_lower_end_of_one_success_in_fifty_million_draws():
    """One success in 48,292,440 draws at alpha = 0.0115: the outside start (where one bet alone reaches D / alpha)
    tests inside, as log K rounds by about 1e-8 there, and must be stepped outward like any other row's (kills
    `wins > 0` -> `wins > 1` in the stepping's row selection: the row then keeps a bracket with no outside end and
    the bound says nothing, 0). The end is the 40-digit crossing, 2.7e-30."""
    lower, _ = bounds.betting_bounds(1, 48_292_440, 0.0115103518592918)
    assert lower == pytest.approx(_betting_end_40(1, 48_292_440, 0.0115103518592918, "lower"), rel=1e-12, abs=0)


BUDGET_CASES = [(990, 1000, 1e-3), (5000, 5100, 1e-3), (37, 64, 1e-3), (10_959, 29_661, 1.06850051263938e-224),
                (64_080, 868_106, 4.4924184785019654e-102), (1244, 158_117, 1.9721859273303368e-91),
                (1, 3, 1.8066198677796083e-27), (4, 9_761_336, 5.361426788962846e-10),
                (886_885_343, 10**9, 1e-100), (831_678_490, 10**9, 1e-300), (1, 48_292_440, 0.0115103518592918),
                (2, 348_526, 8.509119455593161e-71)]


def test_betting_ends_converge_within_ten_regula_falsi_steps(monkeypatch):
    """The regula falsi's bracket and its Illinois steps make it converge fast: with its step budget cut from 30
    to 10, every end of twelve hard rows (10^3 to 10^9 draws, one success to all but 3%, levels down to 1e-300) is
    still the 40-digit crossing to 2e-9 (relative; 1e-9 is the 1 - u rounding of an upper end near 2e-7, the rest
    agree far closer). Kills changes that keep the answer but slow the search: the outside end's h divided by 2
    instead of halved, a first outward step of 1 in log u, an inside start beyond the estimate, a one-success
    row's start computed as for two successes (each 3e-5 to 100 % off after 10 steps)."""
    monkeypatch.setattr(bounds, "_BETTING_STEPS", 10)
    for s, t, alpha in BUDGET_CASES:
        lower, upper = bounds.betting_bounds(s, t, alpha)
        for side, got in (("lower", lower), ("upper", upper)):
            assert got == pytest.approx(_betting_end_40(s, t, alpha, side), rel=2e-9, abs=0), (s, t, alpha, side)


def test_betting_end_below_the_smallest_normal_double_is_zero():
    """An end below the smallest normal double is returned as 0, as documented, not as the subnormal start the
    search began from (kills `(wins > 0) & ok` -> `|` in the return, which gives 3.1e-318 here): one success in
    281,921 draws at alpha = 9.8e-311, where the 40-digit capital at the smallest normal double is still below
    1 / alpha, so the crossing lies below it."""
    alpha = 9.7996400585683e-311
    lower, _ = bounds.betting_bounds(1, 281_921, alpha)
    with mpmath.workdps(40):
        tiny = mpmath.mpf(np.finfo(np.float64).tiny)
        ratios = [mpmath.mpf(r) for r in bounds.DEFAULT_BETTING_RATIOS]
        capital = mpmath.fsum((1 - r * (1 - tiny)) / tiny * r ** 281_920 for r in ratios) / len(ratios)
        assert capital < 1 / mpmath.mpf(alpha)
    assert lower == 0.0
