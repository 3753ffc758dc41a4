"""msrs.sequential: the confidence sequence's bounds, its coverage under optional stopping (and the failure of the
invalid fixed-n Clopper-Pearson re-evaluated after every sample, on the same simulation), the stopping rule, and the
validity of the sequential certified radius on the linear classifier of SCIENCE.md section 4."""
from __future__ import annotations

import math
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import beta, binom, norm

from msrs import bounds, decisions, stopping

from test_validity import HindsightBetting, NaiveClopperPearson, PredictedFinal  # invalid rules, negative controls


def _se(alpha, n):
    return math.sqrt(alpha * (1 - alpha) / n)


BETTING_FLOOR = 0.2  # the betting CS's error under the adversary is at least this fraction of alpha here


# ------------------------------------------------------------------------------------------------------ bounds
def test_bounds_contain_the_estimate_and_are_sane():
    rng = np.random.default_rng(1)
    t = rng.integers(1, 200_000, size=3000)
    s = rng.binomial(t, rng.random(3000))
    s[:50], s[50:100] = 0, t[50:100]
    for alpha in (0.001, 0.05):
        lo, hi = bounds.cs_bounds(s, t, alpha)
        phat = s / t
        assert np.all((0 <= lo) & (lo <= phat + 1e-12) & (phat - 1e-12 <= hi) & (hi <= 1))
        assert np.all(lo[:50] == 0) and np.all(hi[50:100] == 1)
        assert np.all(lo[s > 0] > 0) and np.all(hi[s < t] < 1)
        # the CS is wider than the fixed-n Clopper-Pearson interval at the same level (the price of anytime validity)
        cp_lo = np.where(s > 0, beta.ppf(alpha / 2, np.maximum(s, 1), t - s + 1), 0.0)
        cp_hi = np.where(s < t, beta.ppf(1 - alpha / 2, s + 1, np.maximum(t - s, 1)), 1.0)
        assert np.all(lo <= cp_lo + 1e-12) and np.all(hi >= cp_hi - 1e-12)
        # the ends are where the martingale crosses 1/alpha
        inner = (s > 0) & (s < t)
        level = math.log(1 / alpha)
        assert np.all(bounds.log_martingale(s[inner], t[inner], lo[inner]) >= level - 1e-6)
        assert np.all(bounds.log_martingale(s[inner], t[inner], hi[inner]) >= level - 1e-6)


def test_bounds_monotone():
    t = 5000
    s = np.arange(t + 1)
    lo, hi = bounds.cs_bounds(s, t, 0.01)
    assert np.all(np.diff(lo) > 0) and np.all(np.diff(hi) > 0)  # more successes: both ends move up
    # more data at the same rate: the interval shrinks
    ts = np.array([100, 1000, 10_000, 100_000, 1_000_000])
    lo, hi = bounds.cs_bounds(ts * 9 // 10, ts, 0.01)
    assert np.all(np.diff(hi - lo) < 0)
    # smaller alpha: wider
    a = bounds.cs_bounds(900, 1000, 0.01)
    b = bounds.cs_bounds(900, 1000, 0.001)
    assert b[0] < a[0] and b[1] > a[1]


def test_bisection_matches_brentq_and_handles_edges():
    cases = np.array([[0, 0], [0, 1], [1, 1], [0, 10], [10, 10], [5, 10], [999_990, 1_000_000], [3, 1000],
                      [50_000, 100_000], [100_000, 100_000]])
    lo, hi = bounds.cs_bounds(cases[:, 0], cases[:, 1], 0.001)
    lo2, hi2 = bounds.cs_bounds(cases[:, 0], cases[:, 1], 0.001, method="brentq")
    np.testing.assert_allclose(lo, lo2, rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(hi, hi2, rtol=1e-10)
    assert bounds.cs_bounds(0, 0, 0.05) == (0.0, 1.0)
    assert isinstance(bounds.cs_bounds(3, 10, 0.05)[0], float)
    with pytest.raises(ValueError, match="successes"):
        bounds.cs_bounds(11, 10, 0.05)
    with pytest.raises(ValueError, match="alpha"):
        bounds.cs_bounds(1, 10, 1.5)
    with pytest.raises(ValueError, match="prior"):
        bounds.cs_bounds(1, 10, 0.05, prior=(0, 1))
    with pytest.raises(ValueError, match="integer"):
        bounds.cs_bounds(1.5, 10, 0.05)


def test_spending_bound_is_clopper_pearson_at_the_spent_level_of_each_look():
    looks = stopping.checkpoints(1000, growth=2.0)  # [64, 128, 256, 512, 1000]
    bound = bounds.AlphaSpending(looks)
    np.testing.assert_allclose(bound.weights, [0.025] * 4 + [0.9])
    assert bound.weights.sum() == pytest.approx(1.0, abs=1e-15)
    rng = np.random.default_rng(0)
    for k, t in enumerate(looks):
        s = rng.integers(0, t + 1, size=50)
        s[:2] = 0, t
        lo, hi = bound(s, t, 0.01)
        np.testing.assert_array_equal(lo, bounds.clopper_pearson_lower(s, t, 0.01 * bound.weights[k]))
        np.testing.assert_array_equal(hi, bounds.clopper_pearson_upper(s, t, 0.01 * bound.weights[k]))
    # the final look is nearly the fixed-n bound (0.9 alpha); an early look is much wider than CP at alpha
    assert bound(900, 1000, 0.01)[0][0] == pytest.approx(bounds.clopper_pearson_lower(900, 1000, 0.009))
    assert bound(60, 64, 0.01)[0][0] < bounds.clopper_pearson_lower(60, 64, 0.01) - 0.03
    lo, hi = bound([0, 3], [0, 64], 0.01)
    assert (lo[0], hi[0]) == (0.0, 1.0)  # no samples yet: (0, 1)
    with pytest.raises(ValueError, match="trials.*looks"):
        bound(5, 100, 0.01)  # not a look: the spent level is undefined
    # other shares; the rules accept the bound object
    np.testing.assert_allclose(bounds.AlphaSpending(looks, final_share=0.6).weights, [0.1] * 4 + [0.6])
    np.testing.assert_allclose(bounds.AlphaSpending([10, 20], weights=[0.3, 0.7]).weights, [0.3, 0.7])
    assert bounds.AlphaSpending([500]).weights.tolist() == [1.0]
    assert stopping.route_stage(600, 1000, 1000, 0.01, bound=bound) == "certify"
    assert bounds.other_classes_upper(np.array([900, 60, 40]), 0, 0.02, bound=bound) == pytest.approx(
        bounds.clopper_pearson_upper(60, 1000, 0.01 * 0.9))
    assert isinstance(stopping.make_bound("cs", looks), stopping.ConfidenceSequence)
    assert stopping.make_bound(bound, looks) is bound


class _Wald:
    """A broken bound (negative control): the normal approximation at the same level, tighter than any valid bound
    near 0 and 1 (at s = t its interval is the single point 1)."""

    def __call__(self, successes, trials, level):
        s, t = np.asarray(successes, dtype=np.float64), np.asarray(trials, dtype=np.float64)
        p = s / t
        half = norm.ppf(1 - level) * np.sqrt(p * (1 - p) / t)
        return np.clip(p - half, 0, 1), np.clip(p + half, 0, 1)


@pytest.mark.parametrize("name", ["spending", "voracek", "cs", "betting", "betting-final", "wald (broken)"])
def test_no_bound_is_tighter_than_clopper_pearson_at_the_full_level_at_any_look(name):
    """A bound valid at every look is, at each fixed count, a fixed-n bound too, and one-sided ends that are a
    monotone function of the counts can then never lie inside exact Clopper-Pearson's at the full level (were the
    lower end above CP's at s of t, every p between them would be missed with probability P_p(S >= s) > alpha). So
    no rule certifies a bucket at a look where fixed-n Clopper-Pearson at the full alpha does not already reach it
    (the hindsight oracle of benchmarks/sequential_savings.py stops at the first look where it reaches the final
    bucket). Checked at every default look of a 100,000-sample budget and counts from 0 to t; the normal
    approximation fails it."""
    n_max, alpha = 100_000, 0.001
    looks = stopping.checkpoints(n_max)
    bound = _Wald() if name == "wald (broken)" else bounds.make_bound(name, looks)
    fractions = np.array([0.0, 1e-4, 0.01, 0.3, 0.5, 0.7, 0.99, 0.9999, 1.0])
    t = np.repeat(np.asarray(looks, dtype=np.int64), fractions.size)
    s = np.round(np.tile(fractions, len(looks)) * t).astype(np.int64)
    lower, upper = bound(s, t, alpha)
    inside = (lower > bounds.clopper_pearson_lower(s, t, alpha)) | (upper < bounds.clopper_pearson_upper(s, t, alpha))
    if name == "wald (broken)":
        assert inside.any()
    else:
        assert not inside.any(), [(int(a), int(b)) for a, b in zip(s[inside][:5], t[inside][:5])]


@pytest.mark.parametrize("kwargs, message", [
    ({"final_share": 0.0}, "final_share"), ({"final_share": 1.0}, "final_share"), ({"final_share": 1.5}, "final_share"),
    ({"final_share": float("nan")}, "final_share"), ({"final_share": 0.1}, "final_share"),  # < 1/5: not the largest
    ({"weights": [0.2, 0.2, 0.2, 0.4]}, "weights"), ({"weights": [0.1, 0.1, 0.1, 0.1, 0.5]}, "weights"),
    ({"weights": [-0.1, 0.1, 0.1, 0.1, 0.8]}, "weights"), ({"weights": [0.1, 0.1, 0.1, 0.5, 0.2]}, "weights"),
    ({"weights": [0.2] * 5, "final_share": 0.2}, "final_share"),
])
def test_spending_bad_shares_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        bounds.AlphaSpending(stopping.checkpoints(1000, growth=2.0), **kwargs)


def test_bad_bound_arguments():
    looks = stopping.checkpoints(1000)
    with pytest.raises(ValueError, match="bound"):
        stopping.make_bound("bonferroni", looks)
    with pytest.raises(TypeError, match="bound"):
        stopping.make_bound(3, looks)
    with pytest.raises(ValueError, match="final_share"):
        stopping.make_bound("cs", looks, final_share=0.5)
    with pytest.raises(ValueError, match="looks"):
        bounds.AlphaSpending([64, 64, 128])
    with pytest.raises(ValueError, match="final_share"):
        stopping.run_sequential(lambda idx, n, s: np.zeros(len(idx), dtype=int), [0], 1000, 0.25, 0.01, final_share=2.0)


# ---------------------------------------------------------------------------------- coverage under optional stopping
@pytest.mark.parametrize("p", [0.5, 0.9])
def test_cs_covers_under_adversarial_optional_stopping_and_cp_does_not(p):
    """Stop each sequence at the first t where the lower bound exceeds the true p (the stopping time that
    maximises the error), else at T. The CS errs with probability <= alpha; the fixed-n Clopper-Pearson bound
    re-evaluated after every sample errs far more often on the same sequences, so the test has power."""
    rng = np.random.default_rng(12345 + int(p * 100))
    sequences, horizon, alpha = 2000, 1000, 0.05
    x = rng.random((sequences, horizon)) < p
    s = np.cumsum(x, axis=1)
    t = np.arange(1, horizon + 1)
    # CS: p < lower_t  <=>  M_t(p) >= 1/alpha on the side p < S_t / t (exact, every t)
    cs_wrong = ((bounds.log_martingale(s, t, p) >= math.log(1 / alpha)) & (s > p * t)).any(axis=1)
    # Clopper-Pearson one-sided lower bound at level alpha: lower_t > p  <=>  P(Bin(t, p) >= S_t) <= alpha
    cp_wrong_any = (binom.sf(s - 1, t, p) <= alpha).any(axis=1)
    cp_wrong_fixed = binom.sf(s[:, -1] - 1, horizon, p) <= alpha  # CP at the fixed n: valid
    bound = alpha + 3 * _se(alpha, sequences)
    assert cs_wrong.mean() <= bound
    assert cp_wrong_fixed.mean() <= bound
    assert cp_wrong_any.mean() > bound + 0.05, cp_wrong_any.mean()  # optional stopping breaks CP


def test_cs_bounds_cover_at_a_data_dependent_checkpoint():
    """The same through cs_bounds itself, at geometric checkpoints, with a realistic stopping time: stop once the
    interval is narrower than 0.05 or the lower bound passes 0.85 (p = 0.8)."""
    rng = np.random.default_rng(7)
    sequences, p, alpha = 4000, 0.8, 0.1
    points = stopping.checkpoints(4096, first=16, growth=1.5)
    x = rng.random((sequences, points[-1])) < p
    s_all = np.cumsum(x, axis=1)
    stopped = np.zeros(sequences, dtype=bool)
    lower_at_stop = np.zeros(sequences)
    running = np.zeros(sequences)
    for point in points:
        lo, hi = bounds.cs_bounds(s_all[:, point - 1], point, alpha)
        running = np.maximum(running, lo)  # the running intersection is covered too
        stop = ~stopped & ((hi - lo < 0.05) | (running > 0.85) | (point == points[-1]))
        lower_at_stop[stop] = running[stop]
        stopped |= stop
    assert stopped.all()
    wrong = (lower_at_stop > p).mean()
    assert wrong <= alpha + 3 * _se(alpha, sequences), wrong


def _betting_wrong_anywhere(s, t, p, alpha):
    """([sequences], [sequences]): whether the lower betting bound ever exceeds p, i.e. K+_t(p) >= 1/alpha at some
    t (monotone in m), with the grid's capitals at p combined by their mean (the valid CS) and by their max (the
    best bet in hindsight), in chunks of samples (the [sequences, t, bets] capitals would not fit at once)."""
    valid, hindsight = np.zeros(s.shape[0], dtype=bool), np.zeros(s.shape[0], dtype=bool)
    r = np.asarray(bounds.DEFAULT_BETTING_RATIOS)
    for lo in range(0, t.size, 100):
        ss, tt = s[:, lo:lo + 100, None], t[None, lo:lo + 100, None]
        log_k = ss * (np.log1p(-r * (1 - p)) - math.log(p)) + (tt - ss) * np.log(r)
        valid |= (logsumexp(log_k, axis=-1) - math.log(r.size) >= math.log(1 / alpha)).any(axis=1)
        hindsight |= (log_k.max(axis=-1) >= math.log(1 / alpha)).any(axis=1)
    return valid, hindsight


@pytest.mark.parametrize("p", [0.5, 0.9])
def test_betting_covers_under_adversarial_optional_stopping_and_hindsight_bets_do_not(p):
    """As test_cs_covers_...: stop each sequence at the first t where the betting CS's lower end exceeds the true p
    (by monotonicity in m: where K+_t(p) >= 1/alpha), else at T. The betting CS errs with probability <= alpha
    (0.43 and 0.53 alpha here: the check sees errors); choosing the bet in hindsight (the grid's largest capital
    instead of its mean: not predictable) errs in 0.12 and 0.11 of the same sequences, above the allowed 0.065."""
    rng = np.random.default_rng(2024 + int(p * 1000))
    sequences, horizon, alpha = 2000, 1000, 0.05
    s = np.cumsum(rng.random((sequences, horizon)) < p, axis=1)
    t = np.arange(1, horizon + 1)
    allowed = alpha + 3 * _se(alpha, sequences)
    valid, hindsight = (v.mean() for v in _betting_wrong_anywhere(s, t, p, alpha))
    print(f"p={p}: betting CS wrong at some t in {valid:.4f}, hindsight bets {hindsight:.4f} (allowed {allowed:.4f})")
    assert valid <= allowed
    assert valid > BETTING_FLOOR * alpha  # the adversary finds errors: the check is not vacuous
    assert hindsight > allowed + 0.03
    # the bound itself agrees with its capital: where the lower end at T exceeds p, K+_T(p) >= 1/alpha
    lower = bounds.betting_bounds(s[:, -1], horizon, alpha)[0]
    assert np.all(_betting_wrong_anywhere(s[:, -1:], t[-1:], p, alpha)[0][lower > p])


@pytest.mark.parametrize("p", [0.7, 0.9])
def test_spending_is_valid_under_adversarial_stopping_and_naive_cp_is_not(p):
    """run_sequential with the target radius just above the true radius sigma PhiInv(p): an image stops (and
    certifies) exactly when its bound has become wrong, else runs to n_max (futility=None: no image given up on
    early), the stopping rule that maximises the error. Alpha spending and the CS err in at most alpha of the
    runs, and so does the default rule (futility on, default looks); Clopper-Pearson at the full alpha at every
    look (the naive rule) and the futility prediction used as the certificate (PredictedFinal) err in far more
    on the same simulation, so the check has power."""
    sigma, alpha, runs, n_max = 0.5, 0.1, 4000, 4096
    truth = sigma * norm.ppf(p)
    allowed = alpha + 3 * _se(alpha, runs)
    looks = {"first": 16, "growth": 1.5}
    adversary = {**looks, "futility": None}
    variants = {"spending": ("spending", adversary), "cs": ("cs", adversary), "default": ("spending", {}),
                "voracek": ("voracek", adversary), "naive": (NaiveClopperPearson(), adversary),
                "predicted": (PredictedFinal(stopping.checkpoints(n_max, **looks)), adversary)}
    rates = {}
    for name, (bound, options) in variants.items():
        rng = np.random.default_rng(5)
        res = stopping.run_sequential(lambda idx, num, start, rng=rng: rng.binomial(num, p, size=idx.size),
                                      np.ones(runs, int), n_max, sigma, alpha, [truth * (1 + 1e-9)], bound=bound,
                                      **options)
        rates[name] = (res.radius > truth).mean()
    print(f"p={p}: violation rates {rates} (allowed {allowed:.4f})")
    assert rates["spending"] <= allowed and rates["cs"] <= allowed and rates["default"] <= allowed
    assert rates["voracek"] <= allowed
    assert rates["spending"] > 0.5 * alpha  # tight: the final look spends 0.9 alpha
    assert rates["voracek"] > 0.3 * alpha  # Voracek's shares: large at the first looks, where few errors occur
    assert rates["naive"] > allowed + 0.1 and rates["predicted"] > allowed + 0.1


def test_betting_is_valid_under_adversarial_stopping_and_hindsight_bets_are_not():
    """The adversary of the test above (p = 0.7) for the betting confidence sequence ("betting") and betting CS +
    Clopper-Pearson at n ("betting-final"), 2000 runs (the betting bounds cost more). Both err in at most alpha of
    the runs; "betting-final" in a good part of it (its final look spends 0.9 alpha), "betting" in 0.14 alpha here
    (Ville's inequality at 17 looks is loose), still far from 0; the bet chosen in hindsight (HindsightBetting:
    not predictable) errs in more than the allowed fraction on the same simulation."""
    p, sigma, alpha, runs, n_max = 0.7, 0.5, 0.1, 2000, 4096
    truth = sigma * norm.ppf(p)
    allowed = alpha + 3 * _se(alpha, runs)
    adversary = {"first": 16, "growth": 1.5, "futility": None}
    rates = {}
    for name, bound in (("betting", "betting"), ("betting-final", "betting-final"), ("hindsight", HindsightBetting())):
        rng = np.random.default_rng(5)
        res = stopping.run_sequential(lambda idx, num, start, rng=rng: rng.binomial(num, p, size=idx.size),
                                      np.ones(runs, int), n_max, sigma, alpha, [truth * (1 + 1e-9)], bound=bound,
                                      **adversary)
        rates[name] = (res.radius > truth).mean()
    print(f"violation rates {rates} (allowed {allowed:.4f})")
    assert rates["betting"] <= allowed and rates["betting-final"] <= allowed
    assert rates["betting"] > 0.1 * alpha and rates["betting-final"] > 0.5 * alpha
    assert rates["hindsight"] > allowed


# ---------------------------------------------------------------------------------------------- stopping rule
RADII = [0.0, 0.25, 0.5, 0.75, 1.0]


def test_thresholds_and_radius():
    ths = stopping.thresholds(RADII, 0.25)
    np.testing.assert_allclose(ths, [0.5, norm.cdf(1), norm.cdf(2), norm.cdf(3), norm.cdf(4)])
    ths = stopping.thresholds([0.5], 0.5, p0=0.6)
    np.testing.assert_allclose(ths, [0.6, norm.cdf(1 + norm.ppf(0.6))])
    np.testing.assert_allclose(stopping.radius_from_lower([0.4, 0.5, norm.cdf(2)], 0.25), [0, 0, 0.5])
    with pytest.raises(ValueError, match="p0"):
        stopping.thresholds(RADII, 0.25, p0=0.4)


def test_decide_outcomes():
    n_max, sigma, alpha = 100_000, 0.25, 0.001
    assert stopping.decide(300, 1000, n_max, sigma, alpha, RADII, prediction=7) == (-1, 0.0)  # upper < 0.5: abstain
    assert stopping.decide(520, 1000, n_max, sigma, alpha, RADII, prediction=7) == "continue"
    assert stopping.decide(520, 1000, 1000, sigma, alpha, RADII, prediction=7) == (-1, 0.0)  # budget spent, undecided
    assert stopping.decide(990, 1000, n_max, sigma, alpha, RADII, prediction=7) == "continue"
    # p about 0.9 after 10^4 samples: lower > Phi(1) (radius 0.25), upper < Phi(2) (radius 0.5): settled
    pred, radius = stopping.decide(9000, 10_000, n_max, sigma, alpha, RADII, prediction=7)
    lo, hi = bounds.cs_bounds(9000, 10_000, alpha)
    assert pred == 7 and radius == pytest.approx(sigma * norm.ppf(lo)) and 0.25 <= radius < 0.5
    assert hi < norm.cdf(2)
    # the top bucket reached: stop
    pred, radius = stopping.decide(20_000, 20_000, n_max, sigma, alpha, [0.25, 0.5, 0.75], prediction=2)
    assert pred == 2 and radius >= 0.75
    # the next radius is out of reach within n_max even if every remaining sample succeeds
    pred, radius = stopping.decide(19_900, 20_000, 30_000, sigma, alpha, RADII, prediction=1)
    assert pred == 1 and 0.5 <= radius < 0.75
    # at n_max with lower >= p0: certified with the CS radius
    pred, radius = stopping.decide(600, 1000, 1000, sigma, alpha, None, prediction=4)
    assert pred == 4 and radius == pytest.approx(sigma * norm.ppf(bounds.cs_bounds(600, 1000, alpha)[0]))
    # no target radii: never stops early while it can still certify
    assert stopping.decide(9990, 10_000, n_max, sigma, alpha, None) == "continue"
    assert stopping.decide(200, 1000, n_max, sigma, alpha, None) == (-1, 0.0)


def test_route_stage():
    n = 10_000
    assert stopping.route_stage(900, 1000, n, 0.001) == "certify"
    assert stopping.route_stage(300, 1000, n, 0.001) == "fall_through"
    assert stopping.route_stage(510, 1000, n, 0.001) == "continue"
    assert stopping.route_stage(5000, 10_000, n, 0.001) == "undecided"  # budget spent
    assert stopping.route_stage(510, 1000, 1050, 0.001) == "undecided"  # neither side reachable any more
    codes = stopping.route_stage_many([900, 300, 510], [1000, 1000, 1000], n, 0.001)
    assert codes.tolist() == [stopping.ROUTE_CERTIFY, stopping.ROUTE_FALL_THROUGH, stopping.ROUTE_CONTINUE]


def test_other_classes_upper():
    counts = np.array([[900, 60, 40], [10, 20, 970]])
    up = bounds.other_classes_upper(counts, [0, 2], 0.002)
    np.testing.assert_allclose(up, [bounds.cs_bounds(60, 1000, 0.001)[1], bounds.cs_bounds(20, 1000, 0.001)[1]])
    assert bounds.other_classes_upper(counts[0], 1, 0.002) == pytest.approx(bounds.cs_bounds(900, 1000, 0.001)[1])
    # groups (pooled on selection counts): one CS per group on its summed votes, Bonferroni over the groups
    many = np.array([800, 100, 50, 20, 10, 10, 5, 3, 1, 1])
    grouped = bounds.other_classes_upper(many, 0, 0.002, groups=[[1], [2], [3, 4, 5, 6, 7, 8, 9]])
    assert grouped == pytest.approx(bounds.cs_bounds(100, 1000, 0.002 / 3)[1])
    assert grouped < bounds.other_classes_upper(many, 0, 0.002)  # fewer groups than classes: a smaller split
    with pytest.raises(ValueError, match="groups"):
        bounds.other_classes_upper(many, 0, 0.002, groups=[[0, 1]])
    # valid under optional stopping: simulated 3-class votes, stop at the first time the bound on the two small
    # classes drops below their true max, else at the horizon
    rng = np.random.default_rng(3)
    p, level, runs = np.array([0.7, 0.2, 0.1]), 0.1, 2000
    points = stopping.checkpoints(2048, first=16, growth=1.5)
    votes = rng.multinomial(1, p, size=(runs, points[-1]))
    cum = np.cumsum(votes, axis=1)
    wrong = np.zeros(runs, dtype=bool)
    for point in points:
        wrong |= bounds.other_classes_upper(cum[:, point - 1], 0, level) < 0.2
    assert wrong.mean() <= level + 3 * _se(level, runs)


def test_checkpoints():
    assert stopping.checkpoints(1000, growth=2.0) == [64, 128, 256, 512, 1000]
    assert stopping.checkpoints(100_000, first=390, growth=2.0)[-2:] == [49_920, 100_000]
    # the default: from 64, each look 10% after the one before (rounded up), the last one n_max
    looks = stopping.checkpoints(100_000)
    expected = [64]
    while expected[-1] < 100_000:
        t = expected[-1]
        step = math.ceil(t * 1.1) - t
        expected.append(100_000 if 100_000 - t - step < step / 2 else t + step)
    assert looks == expected and len(looks) == 77
    assert stopping.checkpoints(1000)[:6] == [64, 71, 79, 87, 96, 106]
    assert stopping.checkpoints(10, "fixed", chunk=4) == [4, 8, 10]
    for pts in (stopping.checkpoints(12345, first=7, growth=1.3), stopping.checkpoints(5)):
        assert pts == sorted(set(pts)) and pts[-1] in (12345, 5)


# ------------------------------------------------------------------------------- sequential certify, simulated
def _linear_case(margins, sigma):
    """A linear classifier f(x) = [w.x + b > 0] in 16 dimensions at points with the given signed distances to the
    boundary: pA = Phi(|d| / sigma), true radius |d| (SCIENCE.md section 4)."""
    w = np.linspace(1.0, 2.0, 16)
    w_norm = np.linalg.norm(w)
    b = 0.3
    x = np.outer(margins, w / w_norm) - b * w / w_norm**2  # w.x + b = margin * ||w||
    distance = (x @ w + b) / w_norm
    np.testing.assert_allclose(distance, margins, atol=1e-12)
    return norm.cdf(np.abs(distance) / sigma), np.abs(distance)


def test_sequential_radius_is_valid_on_the_linear_classifier():
    """Many independent runs per point (one simulated image per run), Bernoulli(pA) votes drawn through the draw
    callback; the certified radius may exceed the true radius in at most an alpha fraction of runs, per point."""
    rng = np.random.default_rng(2024)
    sigma, alpha, n0, n_max, runs = 0.5, 0.1, 100, 20_000, 1500
    margins = np.array([0.05, 0.3, 0.6, 1.0, 1.5])
    p_a, true_radius = _linear_case(margins, sigma)
    point = np.repeat(np.arange(margins.size), runs)
    p_true = p_a[point]
    # selection on an independent sample: the true class when it gets the majority of n0 votes
    correct = rng.binomial(n0, p_true) > n0 / 2
    p_selected = np.where(correct, p_true, 1 - p_true)  # two classes: the other class has 1 - pA
    calls = []

    def draw(idx, num, start):
        calls.append((idx.size, num, start))
        return rng.binomial(num, p_selected[idx])

    res = stopping.run_sequential(draw, np.where(correct, 1, 0), n_max, sigma, alpha, RADII, prior=(0.5, 0.5))
    assert len(res) == point.size
    assert calls[0] == (point.size, 64, 0)  # first checkpoint 64, sample_start 0
    assert all(c[2] == sum(d[1] for d in calls[:i]) for i, c in enumerate(calls))  # contiguous sample ranges
    wrong = (res.prediction == 1) & (res.radius > true_radius[point])
    wrong |= (res.prediction == 0) & (res.radius > 0)  # certifying the wrong class at any radius is an error
    bound = alpha + 3 * _se(alpha, runs)
    for k in range(margins.size):
        assert wrong[point == k].mean() <= bound, (k, wrong[point == k].mean())
    # the certificates are informative and cheap: certified where pA is clearly above 1/2, with far fewer samples
    assert (res.prediction[point == 4] == 1).mean() > 0.99
    assert res.samples.mean() < 0.5 * n_max
    for pred, radius, used in list(res)[:5]:
        assert pred in (-1, 0, 1) and radius >= 0 and 0 < used <= n_max
    # the certified radius lands in the same target bucket as the fixed-n Clopper-Pearson radius on the same
    # samples (the run's prefix extended to n_max) in almost every run whose selection found the true class: the
    # alpha-spending default spends 0.9 alpha at the final look, nearly the fixed-n certificate
    s_fixed = res.successes + rng.binomial(n_max - res.samples, p_selected)
    lo_fixed = beta.ppf(alpha, s_fixed, n_max - s_fixed + 1)
    bucket_fixed = np.searchsorted(RADII, np.where(lo_fixed >= 0.5, sigma * norm.ppf(lo_fixed), -1.0), "right")
    bucket_mine = np.searchsorted(RADII, np.where(res.prediction == 1, res.radius, -1.0), "right")
    for k in range(margins.size):
        sel = (point == k) & correct
        assert (bucket_mine[sel] == bucket_fixed[sel]).mean() > 0.97, k
        assert (bucket_mine[sel] >= bucket_fixed[sel] - 1).all(), k


def test_sequential_full_budget_equals_fixed_n_samples():
    """With the real Philox noise and msrs.ops: a run that never stops early draws exactly samples 0..n_max-1,
    so its vote count equals the fixed-n count, and each image's count is the count over its own prefix."""
    from msrs.ops import add_noise, count_votes_

    BACKEND = "torch"  # the reference ops: no C++ build needed for this plumbing test
    torch.manual_seed(0)
    images = torch.rand(4, 1, 4, 4)
    images[0] = 0.0  # a point on one side of the boundary, for variety
    ids = torch.tensor([3, 8, 11, 12])
    w = torch.linspace(-1.0, 1.0, 16, dtype=torch.float64)
    sigma, seed, stream, n_max = 0.5, 99, 1, 600

    def votes(idx, num, start):
        x = images[idx]
        noisy = add_noise(x, sigma, num, seed=seed, image_ids=ids[idx], sample_start=start, stream=stream,
                          backend=BACKEND)
        logits = noisy.reshape(noisy.shape[0], -1).to(torch.float64) @ w
        logits = torch.stack((-logits, logits), dim=1)
        counts = torch.zeros(len(idx), 2, dtype=torch.int64)
        count_votes_(counts, logits, torch.arange(len(idx)).repeat_interleave(num), backend=BACKEND)
        return counts

    cls = votes(np.arange(4), 50, 0).argmax(1).numpy()  # stand-in selection (another sample range)

    def draw(idx, num, start):
        return votes(torch.as_tensor(idx), num, start).numpy()[np.arange(len(idx)), cls[idx]]

    res = stopping.run_sequential(draw, cls, n_max, sigma, 0.001, None)
    full = votes(np.arange(4), n_max, 0).numpy()[np.arange(4), cls]
    stopped = res.samples < n_max
    np.testing.assert_array_equal(res.successes[~stopped], full[~stopped])
    for i in np.flatnonzero(stopped):  # stopped early (abstain): the count over the prefix it drew
        assert res.successes[i] == votes(np.array([i]), int(res.samples[i]), 0).numpy()[0, cls[i]]


# ------------------------------------------------------------------------------------------------ futility
def test_reachable_successes_is_the_predictive_quantile():
    """The futility prediction against the exact beta-binomial posterior predictive (scipy): the chance that the
    remaining samples bring more successes than reachable_successes is about gamma (normal approximation), and
    gamma ramps up linearly over the first futility_ramp of the budget; without futility: every sample left."""
    from scipy.stats import betabinom

    n_max, gamma = 20_000, 0.05
    s = np.array([900, 950, 990, 1999, 2000, 15_000])
    t = np.array([1000, 1000, 1000, 2000, 2000, 16_000])
    left = n_max - t
    np.testing.assert_array_equal(stopping.reachable_successes(s, t, n_max, None), left)
    reach = stopping.reachable_successes(s, t, n_max, gamma, futility_ramp=0.0)
    assert np.all(reach <= left) and np.all(reach >= left * s / t)
    exceed = betabinom.sf(reach, left, s + 0.5, t - s + 0.5)  # P(remaining successes > reach)
    # near p = 1 the predictive is skewed (capped at `left`) and the normal quantile lands at the cap: then
    # nothing is given up on; elsewhere the chance of doing better than predicted is about gamma
    capped = reach == left
    assert capped.tolist() == [False, False, False, True, True, False]
    assert np.all((exceed[~capped] > 0.3 * gamma) & (exceed[~capped] < 2.0 * gamma)), exceed
    # ramp: gamma_t = gamma * t / (ramp * n_max) until t = ramp * n_max (here 2000)
    ramped = stopping.reachable_successes(s, t, n_max, gamma, futility_ramp=0.1)
    np.testing.assert_array_equal(ramped[t >= 2000], reach[t >= 2000])
    half = stopping.reachable_successes(s[:3], t[:3], n_max, gamma / 2, futility_ramp=0.0)
    np.testing.assert_array_equal(ramped[:3], half)  # t = 1000: half the ramp
    assert stopping.reachable_successes(0, 0, n_max, gamma) == n_max  # nothing drawn: anything is reachable


def test_futility_gives_up_on_out_of_reach_thresholds_and_keeps_the_fixed_n_bucket():
    """Bernoulli streams at pA just below / above the pA that radius 0.25 needs at n = 20,000 (sigma 0.25,
    threshold Phi(1) plus the Clopper-Pearson margin): with futility the images below stop far earlier than with
    curtailment alone, and the bucket equals the fixed-n Clopper-Pearson bucket on the full stream (computed
    here from the stream) in nearly every run, never above it."""
    sigma, alpha, n_max, runs = 0.25, 0.001, 20_000, 400
    rng = np.random.default_rng(8)
    p = np.repeat([0.80, 0.836, 0.86, 0.90], runs)
    x = rng.random((p.size, n_max)) < p[:, None]
    cum = np.cumsum(x, axis=1)

    def draw(idx, num, start):
        return cum[idx, start + num - 1] - (cum[idx, start - 1] if start > 0 else 0)

    radii = [0.25, 0.5]
    ths = stopping.thresholds(radii, sigma)
    fixed = np.searchsorted(ths, beta.ppf(alpha, cum[:, -1], n_max - cum[:, -1] + 1), side="right")
    results = {f: stopping.run_sequential(draw, np.ones(p.size, int), n_max, sigma, alpha, radii, futility=f)
               for f in (None, 0.05)}
    for f, res in results.items():
        mine = np.searchsorted(ths, np.where(res.prediction >= 0, res.lower, 0.0), side="right")
        assert np.all(mine <= fixed)  # the lower bounds are at most the fixed-n one (nearly: final share 0.9)
        assert np.mean(mine == fixed) > 0.95, (f, np.mean(mine == fixed))
    below = p < 0.84
    assert results[0.05].samples[below].mean() < 0.3 * results[None].samples[below].mean()
    assert results[0.05].samples.sum() < 0.5 * results[None].samples.sum()


def test_futility_options_are_checked_before_drawing():
    def draw(idx, num, start):
        raise AssertionError("drew samples")

    for bad, message in (({"futility": 0.0}, "futility"), ({"futility": 1.0}, "futility"),
                         ({"futility": "0.1"}, "futility"), ({"futility_ramp": 1.5}, "futility_ramp"),
                         ({"futility_ramp": -0.1}, "futility_ramp")):
        with pytest.raises(ValueError, match=message):
            stopping.run_sequential(draw, [0], 1000, 0.25, 0.01, [0.25], **bad)
        with pytest.raises(ValueError, match=message):
            stopping.run_cascade_sequential(draw, 2, [0.5, 0.25], 10, 1000, 0.01, [0.25], **bad)
    from msrs.config import SequentialSettings

    with pytest.raises(ValueError, match="futility"):
        SequentialSettings([0.25], futility=2.0).validate(1000, 0.25, 0.5)
    assert SequentialSettings([0.25], futility=None).options()["futility"] is None


def test_cascade_futility_abstains_early_on_undecided_stages():
    """Stage 0 falls through (its class has p = 0.34); the last stage's class sits at p0 (undecided): with
    curtailment alone it runs to n_max, with futility it is given up on (abstain) long before."""
    probs = [np.array([0.34, 0.33, 0.33]), np.array([0.505, 0.495, 0.0])]
    plain, _ = _simulate_cascade(probs, 60, "spending", 0.01, [0.1], futility=None)
    given_up, _ = _simulate_cascade(probs, 60, "spending", 0.01, [0.1])
    for res in (plain, given_up):
        assert np.all(res.last == 1) and np.mean(res.prediction == -1) > 0.9  # fell through, then undecided
    assert np.all(plain.samples[plain.prediction == -1, 1] == 4096)
    assert given_up.samples[given_up.prediction == -1, 1].mean() < 0.75 * 4096  # measured 0.67 (futility 0.02)


def test_run_sequential_abstains_without_sampling_and_checks_draw():
    res = stopping.run_sequential(lambda idx, n, s: np.zeros(len(idx), dtype=int), [-1, -1], 100, 0.25, 0.01)
    assert res.prediction.tolist() == [-1, -1] and res.samples.tolist() == [0, 0]
    with pytest.raises(ValueError, match="draw"):
        stopping.run_sequential(lambda idx, n, s: np.full(len(idx), n + 1), [0], 100, 0.25, 0.01)


# ------------------------------------------------------------------------------- sequential cascade, simulated
CASCADE_SIM_SIGMAS = [1.0, 0.25]


def _cascade_setup():
    """tests/test_validity.py's two-stage cascade (sigmas 1.0, 0.25) in closed form: stage 0 splits its votes
    0.309 / 0.309 / 0.382 over classes 0, 1, 2 (falls through), stage 1 votes class 1 with Phi(4). The true radius
    of the cascaded classifier is 0.3, set by the stage-0 class-2 probability: a certificate beyond it needs a
    wrong off-class bound on stage 0."""
    sys_path = str(Path(__file__).resolve().parent)
    if sys_path not in sys.path:
        sys.path.insert(0, sys_path)
    from test_validity import SIGMAS, stage0_probs, true_cascade_radius

    assert list(SIGMAS) == CASCADE_SIM_SIGMAS
    probs = [stage0_probs(np.zeros(1), np.zeros(1))[0], np.array([norm.sf(4.0), norm.cdf(4.0), 0.0])]
    return probs, true_cascade_radius()


def _simulate_cascade(probs, runs, bound, alpha, target_radii, seed=0, **options):
    """run_cascade_sequential with multinomial votes of known per-stage probabilities; returns (result, calls)."""
    rng = np.random.default_rng(seed)
    calls = []

    def draw(idx, stream, num, start):
        calls.append((stream, idx.size, num, start))
        return rng.multinomial(num, probs[stream // 2], size=idx.size)

    res = stopping.run_cascade_sequential(draw, runs, CASCADE_SIM_SIGMAS, 32, 4096, alpha, target_radii, bound=bound,
                                   **options)
    return res, calls


def test_sequential_cascade_off_class_bound_is_valid_and_naive_cp_is_not():
    """The target radius just above the truth (0.3): once stage 1 certifies class 1, stage 0 (fallen through) is
    resumed until its cap reaches the target, which happens exactly when its off-class bound is wrong: the
    adversarial stopping time for the statement O_0 (level off[0] = alpha / 4 with two stages). Spending and CS
    stay within that statement's level (futility=None: the adversary), and so does the default rule (futility
    on: the resumed stage is given up on once its cap cannot be expected to reach the target); the naive rule
    (Clopper-Pearson at the full level at every look) does not, on the same simulation."""
    probs, truth = _cascade_setup()
    alpha, runs = 0.2, 3000
    level = decisions.schedule_levels(alpha, 2)[1][0, 1]
    allowed = level + 3 * _se(level, runs)
    rates = {}
    adversary = {"growth": 1.5, "futility": None}
    for name, bound, options in (("spending", "spending", adversary), ("cs", "cs", adversary),
                                 ("default", "spending", {}), ("betting-final", "betting-final", adversary),
                                 ("voracek", "voracek", adversary), ("naive", NaiveClopperPearson(), adversary)):
        res, _ = _simulate_cascade(probs, runs, bound, alpha, [truth * (1 + 1e-9)], **options)
        assert np.mean((res.prediction == 1) & (res.stage == 1)) > 0.95  # the path under test
        wrong = ((res.prediction >= 0) & (res.prediction != 1)) | (res.radius > truth)
        rates[name] = wrong.mean()
        resumed = res.samples[(res.stage == 1) & ~wrong, 0]
        if name == "spending":
            assert np.mean(resumed == 4096) > 0.95  # stage 0 resumed to n_max: its cap never reached the target
            assert np.mean(res.samples[res.stage == 1, 1]) < 200  # stage 1 settled at its first looks
        if name == "default":  # given up on: the resumed stage 0 stops long before n_max
            assert np.mean(resumed) < 0.5 * 4096
    print(f"cascade O_0: violation rates {rates} (allowed {allowed:.4f} at level {level})")
    assert rates["spending"] <= allowed and rates["cs"] <= allowed and rates["default"] <= allowed
    assert rates["betting-final"] <= allowed and rates["voracek"] <= allowed
    # ("betting" alone errs in none of the runs here, as "cs": Ville's inequality is loose at this level; the
    # certifying-stage test below and test_betting_is_valid_under_... check it with power)
    assert rates["naive"] > allowed + 0.02


def test_sequential_cascade_certifying_stage_bound_is_valid_and_naive_cp_is_not():
    """Stage 0 certifies class 1 with p = 0.85 (true R_0 = PhiInv(0.85)); the target radius just above R_0 stops an
    image exactly when its stage-0 lower bound is wrong: the adversarial stopping time for C_0 (level cert[0])."""
    alpha, runs = 0.2, 3000
    probs = [np.array([0.15, 0.85, 0.0]), np.array([0.0, 1.0, 0.0])]
    r0 = norm.ppf(0.85)
    level = decisions.schedule_levels(alpha, 2)[0][0]
    allowed = level + 3 * _se(level, runs)
    rates = {}
    predicted = PredictedFinal(stopping.checkpoints(4096, growth=1.5))
    for name, bound, options in (("spending", "spending", {"futility": None}), ("cs", "cs", {"futility": None}),
                                 ("default", "spending", {}), ("naive", NaiveClopperPearson(), {"futility": None}),
                                 ("predicted", predicted, {"futility": None}),
                                 ("betting", "betting", {"futility": None}),
                                 ("betting-final", "betting-final", {"futility": None}),
                                 ("voracek", "voracek", {"futility": None})):
        res, _ = _simulate_cascade(probs, runs, bound, alpha, [r0 * (1 + 1e-9)], **{"growth": 1.5, **options})
        assert np.mean(res.stage == 0) > 0.95
        rates[name] = ((res.stage == 0) & (res.radius > r0)).mean()
    print(f"cascade C_0: violation rates {rates} (allowed {allowed:.4f} at level {level})")
    assert rates["spending"] <= allowed and rates["cs"] <= allowed and rates["default"] <= allowed
    assert all(rates[name] <= allowed for name in ("betting", "betting-final", "voracek"))
    assert rates["predicted"] > allowed + 0.02
    assert rates["naive"] > allowed + 0.02
    # (the betting CS errs in 0.05 of the level here: too few errors for its hindsight variant to exceed the
    # level; test_betting_is_valid_under_adversarial_stopping_... has the power for that)


def test_sequential_cascade_decisions_and_samples():
    probs, _ = _cascade_setup()
    res, calls = _simulate_cascade(probs, 200, "spending", 0.01, [0.05, 0.1])
    looks = stopping.checkpoints(4096)
    # every estimation call starts at a look and ends at the next one; selection calls draw samples 0 .. n0-1
    for stream, size, num, start in calls:
        if stream % 2 == 0:
            assert (num, start) == (32, 0)
        else:
            assert start in [0] + looks[:-1] and start + num == looks[looks.index(start + num)]
    assert calls[0] == (0, 200, 32, 0)
    certified = res.prediction == 1
    assert certified.mean() > 0.95 and np.all(res.stage[certified] == 1) and np.all(res.last[certified] == 1)
    assert np.all(res.radius[certified] >= 0.1)  # top bucket: stops as soon as the stage-0 cap reaches 0.1
    assert np.all(res.samples[certified, 0] < 4096) and np.all(res.samples[certified, 1] == 64)  # both early
    np.testing.assert_array_equal(res.counts.sum(axis=2), res.samples)
    np.testing.assert_array_equal(res.counts0.sum(axis=2), 32 * (res.samples > 0))
    np.testing.assert_array_equal(res.total_samples, res.samples.sum(1) + 32 * (res.samples > 0).sum(1))
    assert np.all(np.isin(res.samples, [0] + looks))
    # without target radii every component samples to n_max (the largest radius the budget allows)
    full, _ = _simulate_cascade(probs, 50, "spending", 0.01, None)
    assert np.all(full.samples[full.prediction == 1] == 4096)
    # a stage that certifies the wrong class with p < p0 everywhere: every image abstains at the last stage
    undecided, _ = _simulate_cascade([np.array([0.5, 0.5, 0.0]), np.array([0.4, 0.3, 0.3])], 20, "cs", 0.01, None)
    assert np.all(undecided.prediction == -1) and np.all(undecided.stage == -1)


def test_sequential_cascade_refuses_bad_input_before_drawing():
    def draw(idx, stream, num, start):
        raise AssertionError("drew samples")

    args = (draw, 3, [1.0, 0.5], 10, 100, 0.01)
    with pytest.raises(ValueError, match="alpha_schedule"):
        stopping.run_cascade_sequential(*args, alpha_schedule="paper")
    with pytest.raises(ValueError, match="sigmas"):
        stopping.run_cascade_sequential(draw, 3, [0.5, 1.0], 10, 100, 0.01)
    with pytest.raises(ValueError, match="target_radii"):
        stopping.run_cascade_sequential(*args, [0.1, float("inf")])
    with pytest.raises(ValueError, match="bound"):
        stopping.run_cascade_sequential(*args, bound="nope")
    with pytest.raises(ValueError, match="alpha"):
        stopping.run_cascade_sequential(draw, 3, [1.0, 0.5], 10, 100, 1.5)
    with pytest.raises(ValueError, match="draw"):
        stopping.run_cascade_sequential(lambda idx, stream, num, start: np.zeros((len(idx), 3), dtype=np.int64),
                                 *args[1:])


# ----------------------------------------------------------------------------------- the engine's certify_sequential
def _linear_setup(p_a: float, sigma: float):
    """A linear binary classifier (tests/test_validity.py's) and an image whose smoothed pA is p_a."""
    import torch
    from scipy.stats import norm as _norm

    sys_path = str(Path(__file__).resolve().parent)
    if sys_path not in sys.path:
        sys.path.insert(0, sys_path)
    from test_validity import D, SHAPE, Linear, orthonormal

    w = 2.0 * orthonormal(1, seed=0)[0] * torch.linspace(0.5, 1.5, D, dtype=torch.float64)
    x = torch.full((1, *SHAPE), 0.5)
    b = sigma * float(w.norm()) * _norm.ppf(p_a) - float(w @ x.reshape(-1).double())
    return Linear(w, b), x, SHAPE


def test_engine_certify_sequential_is_valid_and_matches_the_fixed_n_samples():
    import torch
    from scipy.stats import norm as _norm

    from msrs.smoothing import SmoothedClassifier

    sigma, p_a, alpha, copies, n_max = 0.5, 0.9, 0.1, 1000, 1000
    classifier, x, shape = _linear_setup(p_a, sigma)
    true_radius = sigma * _norm.ppf(p_a)
    smoothed = SmoothedClassifier(classifier, 2, backend="torch")
    images = x.expand(copies, *shape)
    certs = smoothed.certify_sequential(images, sigma, 10, n_max, alpha, seed=4, batch_size=8192,
                                        image_ids=torch.arange(copies), target_radii=[0.3])
    radius = np.array([c.radius for c in certs])
    prediction = np.array([c.prediction for c in certs])
    violations = (prediction == 0) | (radius > true_radius)
    fraction = violations.mean()
    assert fraction <= alpha + 3 * np.sqrt(alpha * (1 - alpha) / copies), fraction
    assert np.mean(prediction == 1) > 0.9  # mostly certified
    samples = np.array([c.samples for c in certs])
    assert samples.max() <= 10 + n_max and samples.mean() < 0.5 * (10 + n_max)  # settled at 0.3 early
    for c in certs[:20]:  # the counts are those of the samples drawn, p_lower the CS bound at the stopping time
        assert int(c.counts.sum()) == c.samples - 10 and int(c.counts0.sum()) == 10
        if c.prediction >= 0:
            assert c.radius == pytest.approx(sigma * _norm.ppf(c.p_lower))
    # a prefix of the fixed-n estimation samples (stream 1, samples 0 .. t-1)
    first = certs[0]
    fixed = smoothed.sample_counts(images[:1], torch.tensor([0]), sigma, first.samples - 10, stream=1, seed=4,
                                   batch_size=512)
    np.testing.assert_array_equal(fixed.numpy(), first.counts)


def test_engine_certify_sequential_stops_early_on_easy_images():
    import torch

    from msrs.smoothing import SmoothedClassifier

    classifier, x, shape = _linear_setup(0.9999, 0.25)
    smoothed = SmoothedClassifier(classifier, 2, backend="torch")
    certs = smoothed.certify_sequential(x.expand(4, *shape), 0.25, 50, 20_000, 0.001, seed=0, batch_size=4096,
                                        image_ids=torch.arange(4), target_radii=[0.25, 0.5])
    assert all(c.prediction == 1 and c.radius >= 0.5 for c in certs)
    assert all(c.samples < 2_000 for c in certs), [c.samples for c in certs]
    with pytest.raises(ValueError, match="n0"):
        smoothed.certify_sequential(x, 0.25, 100, 50, 0.001, seed=0, batch_size=64)


# ----------------------------------------------------------------------- the engine's certify_cascade_sequential
def _tiny_cascade():
    """tests/test_smoothing.py's tiny classifier on 8 images at sigmas 0.5, 0.25, 0.12: certificates at stages 0
    and 1, stage-0 abstentions, early stops, and fall-through stages resumed after a later stage certified."""
    from msrs.smoothing import SmoothedClassifier

    sys_path = str(Path(__file__).resolve().parent)
    if sys_path not in sys.path:
        sys.path.insert(0, sys_path)
    from test_smoothing import BACKEND, Counting, images, same_certificates, tiny_classifier

    def make(backend=BACKEND):  # the fastest CPU backend: the counts do not depend on it
        return SmoothedClassifier(counting, 4, backend=backend)

    counting = Counting(tiny_classifier(0))
    return make, counting, images(8, seed=0), torch.arange(100, 108), same_certificates


CASCADE_SIGMAS, CASCADE_KW = [0.5, 0.25, 0.12], {"seed": 9, "target_radii": [0.05, 0.1]}


def test_engine_cascade_sequential_draws_a_prefix_of_the_fixed_n_samples():
    make, _, x, ids, _ = _tiny_cascade()
    smoothed = make()
    certs = smoothed.certify_cascade_sequential(x, CASCADE_SIGMAS, 20, 600, 0.05, batch_size=4096, image_ids=ids,
                                                **CASCADE_KW)
    drawn = np.stack([c.counts.sum(1) for c in certs])
    stage = np.array([c.stage for c in certs])
    assert {0, 1} <= set(stage.tolist()) and -1 in stage  # the paths under test
    assert np.any((stage == 1) & (drawn[:, 0] < 600))  # a fall-through stage not drawn to n_max
    assert np.any((stage == 0) & (drawn[:, 0] < 600))  # an early stop at the certifying stage
    looks = stopping.checkpoints(600)
    for b, cert in enumerate(certs):
        reached = cert.counts0.sum(1) > 0
        assert reached.tolist() == sorted(reached.tolist(), reverse=True) and reached[0]  # a prefix of the stages
        assert cert.samples == 20 * reached.sum() + drawn[b].sum()
        assert cert.sigma == CASCADE_SIGMAS[cert.stage if cert.stage >= 0 else reached.sum() - 1]
        for s in map(int, np.flatnonzero(reached)):  # selection 0..n0-1 of stream 2s, estimation 0..t-1 of 2s+1
            assert drawn[b, s] in looks
            for stream, num, got in ((2 * s, 20, cert.counts0[s]), (2 * s + 1, int(drawn[b, s]), cert.counts[s])):
                fixed = smoothed.sample_counts(x[b:b + 1], ids[b:b + 1], CASCADE_SIGMAS[s], num, stream=stream,
                                               seed=9, batch_size=333)
                np.testing.assert_array_equal(fixed[0].numpy(), got)
        if cert.prediction >= 0:  # the radius is min(R_s, caps): at most the certifying stage's own radius
            assert 0 < cert.radius <= CASCADE_SIGMAS[cert.stage] * norm.ppf(cert.p_lower) + 1e-12
    # the fixed-n cascade draws the same stage-0 samples: where the sequential run went to n_max, same counts
    fixed = smoothed.certify_cascade(x, CASCADE_SIGMAS, 20, 600, 0.05, seed=9, batch_size=4096, image_ids=ids)
    for seq, full in zip(certs, fixed):
        np.testing.assert_array_equal(seq.counts0[0], full.counts0[0])
        if seq.counts[0].sum() == 600:
            np.testing.assert_array_equal(seq.counts[0], full.counts[0])


def test_engine_cascade_sequential_is_reproducible_across_batches_groupings_and_backends():
    make, _, x, ids, same_certificates = _tiny_cascade()
    smoothed = make()
    ref = smoothed.certify_cascade_sequential(x, CASCADE_SIGMAS, 20, 600, 0.05, batch_size=4096, image_ids=ids,
                                              **CASCADE_KW)
    same_certificates(smoothed.certify_cascade_sequential(x, CASCADE_SIGMAS[::-1], 20, 600, 0.05, batch_size=37,
                                                          image_ids=ids, **CASCADE_KW), ref)
    pair = smoothed.certify_cascade_sequential(x[[4, 0]], CASCADE_SIGMAS, 20, 600, 0.05, batch_size=500,
                                               image_ids=ids[[4, 0]], **CASCADE_KW)  # another grouping and order
    same_certificates(pair, [ref[4], ref[0]])
    if smoothed.backend != "torch":  # the reference ops give the same certificates
        same_certificates(make("torch").certify_cascade_sequential(x, CASCADE_SIGMAS, 20, 600, 0.05, batch_size=100,
                                                                   image_ids=ids, **CASCADE_KW), ref)
    # the confidence sequence is the other bound: valid too, never tighter at the final look
    cs = smoothed.certify_cascade_sequential(x, CASCADE_SIGMAS, 20, 600, 0.05, batch_size=4096, image_ids=ids,
                                             bound="cs", **CASCADE_KW)
    assert len(cs) == 8 and all(c.prediction in (-1, r.prediction) or r.prediction == -1 for c, r in zip(cs, ref))
    assert smoothed.certify_cascade_sequential(x[:0], CASCADE_SIGMAS, 20, 600, 0.05, batch_size=8, seed=0) == []


@pytest.mark.parametrize("change, message", [
    ({"alpha_schedule": "paper"}, "alpha_schedule"), ({"n0": 700}, "n0"), ({"sigmas": [0.5, 0.5]}, "sigmas"),
    ({"target_radii": [0.1, float("nan")]}, "target_radii"), ({"alpha": 0.0}, "alpha"), ({"bound": "x"}, "bound"),
    ({"final_share": 0.01}, "final_share"), ({"p0": 0.4}, "p0"),
])
def test_engine_cascade_sequential_refuses_bad_input_before_sampling(change, message):
    make, classifier, x, _, _ = _tiny_cascade()
    smoothed = make()
    kw = {"sigmas": CASCADE_SIGMAS, "n0": 20, "n_max": 600, "alpha": 0.05, "seed": 9, "batch_size": 64, **change}
    sigmas, n0, n_max, alpha = (kw.pop(k) for k in ("sigmas", "n0", "n_max", "alpha"))
    with pytest.raises(ValueError, match=message):
        smoothed.certify_cascade_sequential(x, sigmas, n0, n_max, alpha, **kw)
    assert classifier.rows == 0


def test_cli_sequential_single_sigma_and_cascade(tmp_path):
    from msrs import logs
    from msrs.cli import main

    out = tmp_path / "seq.tsv"
    base = ["certify", "--dataset", "digits", "--classifier", "demo", "--n0", "20", "--n", "1000", "--alpha",
            "0.01", "--batch-size", "1000", "--max", "3", "--backend", "torch", "--device", "cpu", "--quiet",
            "--out", str(out)]
    assert main(base + ["--sigma", "0.25", "--sequential", "--target-radii", "0.25"]) == 0
    log = logs.read_log(out)
    assert log["columns"] == logs.COLUMNS + ("samples",) and len(log["rows"]) == 3
    assert all(20 + 64 <= row["samples"] <= 1020 for row in log["rows"])
    run = logs.read_sidecar(out)["run"]
    assert run["method"] == "sequential"
    assert run["sequential"] == {"target_radii": [0.25], "bound": "spending", "looks": stopping.checkpoints(1000),
                                 "final_share": 0.9, "futility": 0.02, "futility_ramp": 0.1}
    # another target or bound is another configuration: not resumed silently
    assert main(base + ["--sigma", "0.25", "--sequential", "--target-radii", "0.5"]) == 2
    assert main(base + ["--sigma", "0.25", "--sequential", "--target-radii", "0.25", "--sequential-bound", "cs"]) == 2
    assert main(base + ["--sigma", "0.25", "--target-radii", "0.5", "--overwrite"]) == 2
    assert main(base + ["--sigma", "0.25", "--sequential-bound", "cs", "--overwrite"]) == 2
    assert main(base + ["--sigma", "0.5", "0.25", "--sequential", "--alpha-schedule", "paper", "--overwrite"]) == 2
    # several sigmas: the sequential cascade, with the cascade's columns and the samples
    assert main(base + ["--sigma", "0.5", "0.25", "--sequential", "--sequential-bound", "cs", "--overwrite"]) == 0
    log = logs.read_log(out)
    assert log["columns"] == logs.CASCADE_COLUMNS + ("samples",) and len(log["rows"]) == 3
    run = logs.read_sidecar(out)["run"]
    assert run["method"] == "sequential_cascade" and run["alpha_schedule"] == "union"
    assert run["sequential"] == {"target_radii": [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0], "bound": "cs",
                                 "futility": 0.02, "futility_ramp": 0.1}


# ------------------------------------------------------------ found by mutation testing: msrs/bounds.py (sequential)
def _log_mixture(s: int, t: int, p, a: float = 0.5, b: float = 0.5):
    """log M_t(p) of the Beta(a, b)-binomial mixture in 40-digit arithmetic (mpmath; not scipy's betaln)."""
    import mpmath
    with mpmath.workdps(40):
        f, a, b, p = t - s, mpmath.mpf(a), mpmath.mpf(b), mpmath.mpf(p)
        log_beta = lambda x, y: mpmath.loggamma(x) + mpmath.loggamma(y) - mpmath.loggamma(x + y)  # noqa: E731
        return log_beta(a + s, b + f) - log_beta(a, b) - s * mpmath.log(p) - f * mpmath.log1p(-p)


def _cs_end(s: int, t: int, alpha: float, side: str) -> float:
    """The CS end where log M_t crosses log(1/alpha), by plain bisection between the estimate and 0 or 1."""
    inside, outside = s / t, (0.0 if side == "lower" else 1.0)
    for _ in range(120):
        mid = 0.5 * (inside + outside)
        if mid in (inside, outside):
            break
        if _log_mixture(s, t, mid) >= -math.log(alpha):
            outside = mid
        else:
            inside = mid
    return outside


@pytest.mark.parametrize("s, t, alpha", [(7, 10, 0.05), (900, 1000, 0.001), (99_000, 100_000, 0.01),
                                         (1, 10**7, 0.001)])
def test_cs_ends_are_the_crossings_of_one_over_alpha(s, t, alpha):
    """Both methods put the ends where the mixture martingale crosses 1/alpha (not at 2/alpha: wider, still
    "outside"), to within rounding, down to a lower end near 1e-10 (brentq's tolerances are relative)."""
    for method in ("bisect", "brentq"):
        lo, hi = bounds.cs_bounds(s, t, alpha, method=method)
        assert lo == pytest.approx(_cs_end(s, t, alpha, "lower"), rel=1e-9, abs=0)
        assert hi == pytest.approx(_cs_end(s, t, alpha, "upper"), rel=1e-9, abs=0)


def test_betting_bounds_contain_the_estimate_are_outside_the_set_and_tighter_than_the_beta_mixture():
    rng = np.random.default_rng(3)
    t = np.round(np.exp(rng.uniform(0, math.log(2e5), 1500))).astype(np.int64)
    s = rng.binomial(t, 1 - np.exp(rng.uniform(math.log(1e-5), 0, t.size)))
    s[:20], s[20:40] = 0, t[20:40]
    alpha = 0.001
    lo, hi = bounds.betting_bounds(s, t, alpha)
    phat = s / t
    assert np.all((0 <= lo) & (lo <= phat) & (phat <= hi) & (hi <= 1))
    assert np.all(lo[:20] == 0) and np.all(hi[20:40] == 1) and np.all(lo[s > 0] > 0) and np.all(hi[s < t] < 1)
    # each end is outside its side's set (capital >= 1/alpha there, to the rounding of log K), and the set ends
    # there: a relative 1e-7 further inside (log K moves by at least 1e-7), the capital is below 1/alpha
    need = math.log(1 / alpha)
    inner = (s > 0) & (s < t)
    assert np.all(bounds.betting_log_capital(s[inner], t[inner], lo[inner]) >= need - 1e-9)
    assert np.all(bounds.betting_log_capital(s[inner], t[inner], hi[inner], side="upper") >= need - 1e-9)
    assert np.all(bounds.betting_log_capital(s[inner], t[inner], lo[inner] * (1 + 1e-7)) < need)
    # (the upper side's capital at m is the lower side's on the failures at 1 - m: exact in 1 - m near 1)
    assert np.all(bounds.betting_log_capital(t[inner] - s[inner], t[inner], (1 - hi[inner]) * (1 + 1e-7) + 4e-16)
                  < need)  # (+ 4e-16: a few doubles below 1, where hi is represented)
    # near pA = 1, where certificates live, the lower end is tighter than the Beta-mixture CS's, and wider than
    # fixed-n Clopper-Pearson at the same level (the price of anytime validity)
    high = (phat > 0.9) & (t >= 64) & (s > 0)
    cs_lo = bounds.cs_bounds(s, t, alpha)[0]
    assert np.mean(lo[high] > cs_lo[high]) > 0.9 and np.mean(np.log((1 - cs_lo[high]) / (1 - lo[high]))) > 0.05
    assert np.all(lo <= bounds.clopper_pearson_lower(s, np.maximum(t, 1), alpha) + 1e-12)
    # scalars, edges, arguments
    assert bounds.betting_bounds(0, 0, 0.05) == (0.0, 1.0)
    assert isinstance(bounds.betting_bounds(3, 10, 0.05)[0], float)
    assert bounds.betting_bounds(1, 10**7, 0.001)[0] > 0
    with pytest.raises(ValueError, match="successes"):
        bounds.betting_bounds(11, 10, 0.05)
    with pytest.raises(ValueError, match="ratios"):
        bounds.betting_bounds(1, 10, 0.05, ratios=[0.5, 1.0])
    with pytest.raises(ValueError, match="side"):
        bounds.betting_log_capital(1, 10, 0.5, side="both")


def test_betting_bounds_of_one_bet_are_its_closed_form():
    """With one bet r the lower end solves ((1 - r (1 - m)) / m)^S r^F = 1/alpha: m = (1 - r) / (E - r),
    E = (r^-F / alpha)^(1 / S), down to ends below 1e-100 (and 0 below the smallest double)."""
    s, t = np.array([1, 5, 64, 990, 99_990, 3, 50]), np.array([1, 10, 64, 1000, 100_000, 1000, 100])
    for r in (0.5, 1e-3, 0.999):
        with np.errstate(over="ignore"):
            closed = (1 - r) / (np.exp((math.log(1000) - (t - s) * math.log(r)) / s) - r)
        lower = bounds.betting_bounds(s, t, 0.001, ratios=[r])[0]
        np.testing.assert_allclose(lower, np.minimum(closed, s / t), rtol=1e-11, atol=0)


def test_betting_bounds_monotone_and_bound_objects():
    t = 2000
    lo, hi = bounds.betting_bounds(np.arange(t + 1), t, 0.01)
    assert np.all(np.diff(lo) > 0) and np.all(np.diff(hi) > 0)
    a, b = bounds.betting_bounds(900, 1000, 0.01), bounds.betting_bounds(900, 1000, 0.001)
    assert b[0] < a[0] and b[1] > a[1]
    looks = stopping.checkpoints(1000, growth=2.0)
    betting = stopping.make_bound("betting", looks)
    assert isinstance(betting, bounds.BettingConfidenceSequence) and betting.name == "betting"
    np.testing.assert_array_equal(betting([5, 990], [7, 1000], 0.01)[0],
                                  bounds.betting_bounds([5, 990], [7, 1000], 0.01)[0])
    betting(5, 77, 0.01)  # any trials count: anytime valid
    final = stopping.make_bound("betting-final", looks, final_share=0.8)
    lo, hi = final([990, 990, 60], [1000, 1000, 64], 0.01)
    cp = bounds.clopper_pearson_lower(990, 1000, 0.008)
    assert lo[0] == max(cp, bounds.betting_bounds(990, 1000, 0.002)[0])
    assert lo[2] == bounds.betting_bounds(60, 64, 0.002)[0]  # not the final look: the betting CS alone
    assert hi[0] == min(bounds.clopper_pearson_upper(990, 1000, 0.008), bounds.betting_bounds(990, 1000, 0.002)[1])
    with pytest.raises(ValueError, match="final_share"):
        stopping.make_bound("betting-final", looks, final_share=1.0)
    with pytest.raises(ValueError, match="final_share"):
        stopping.make_bound("betting", looks, final_share=0.5)
    assert bounds.other_classes_upper(np.array([900, 60, 40]), 0, 0.02, bound=betting) == pytest.approx(
        bounds.betting_bounds(60, 1000, 0.01)[1])
    assert stopping.route_stage(600, 1000, 1000, 0.01, bound=betting) == "certify"


def test_voracek_weights():
    """Voracek's shares 5 / ((j + 4)(j + 5)) at the looks before the last, the series' tail 5 / (K + 4) at the last
    (sum 1); with final_share, the rest split in the same proportions."""
    w = bounds.voracek_weights(6)
    np.testing.assert_allclose(w, [5 / 30, 5 / 42, 5 / 56, 5 / 72, 5 / 90, 5 / 10], rtol=1e-14)
    assert w.sum() == pytest.approx(1.0, abs=1e-15)
    w = bounds.voracek_weights(6, final_share=0.9)
    assert w[-1] == pytest.approx(0.9) and w[:-1].sum() == pytest.approx(0.1)
    np.testing.assert_allclose(w[1:-1] / w[0], [30 / 42, 30 / 56, 30 / 72, 30 / 90])
    assert bounds.voracek_weights(1).tolist() == [1.0]
    looks = stopping.checkpoints(100_000)
    bound = stopping.make_bound("voracek", looks)
    assert bound.weights[0] == pytest.approx(1 / 6) and bound.weights[-1] == pytest.approx(5 / (len(looks) + 4))
    np.testing.assert_array_equal(bound(50, 64, 0.01)[0], bounds.clopper_pearson_lower(50, 64, 0.01 / 6))
    with pytest.raises(ValueError, match="final look"):
        bounds.AlphaSpending(list(range(1000, 1030)), schedule="voracek")  # the final look gives no tighter bound
    with pytest.raises(ValueError, match="schedule"):
        bounds.AlphaSpending(looks, schedule="pocock")
    with pytest.raises(ValueError, match="weights"):
        stopping.make_bound("voracek", [10, 100], weights=[0.5, 0.5])


def test_spending_weights_refuse_a_zero_share():
    with pytest.raises(ValueError, match="weights"):
        bounds.spending_weights(2, weights=[0.0, 1.0])


def test_spending_weights_final_share_down_to_one_over_k():
    """The final share may be as small as 1/K (equal shares); below it is refused (test_spending_bad_shares...)."""
    np.testing.assert_allclose(bounds.spending_weights(5, final_share=0.2), [0.2] * 5, rtol=1e-15)
    np.testing.assert_allclose(bounds.spending_weights(4, final_share=0.3), [0.7 / 3] * 3 + [0.3], rtol=1e-15)


def test_alpha_spending_looks_are_integers_and_the_error_names_the_bad_count():
    np.testing.assert_array_equal(bounds.AlphaSpending(np.array([10, 20])).looks, [10, 20])  # an array of looks
    with pytest.raises(TypeError):
        bounds.AlphaSpending([10.5, 20])  # not a sample count
    with pytest.raises(ValueError, match=r"looks \[10, 20\] .*got \[5\]"):
        bounds.AlphaSpending([10, 20])(3, [5, 10], 0.01)


def test_other_classes_upper_takes_array_groups_and_refuses_one_class():
    """Groups given as numpy arrays (e.g. from np.split) act like lists; counts need K >= 2 classes."""
    many = np.array([800, 100, 50, 20, 10, 10, 5, 3, 1, 1])
    as_lists = bounds.other_classes_upper(many, 0, 0.002, groups=[[1], [2], [3, 4, 5, 6, 7, 8, 9]])
    as_arrays = bounds.other_classes_upper(many, 0, 0.002, groups=np.split(np.arange(1, 10), [1, 2]))
    assert as_arrays == as_lists == pytest.approx(bounds.cs_bounds(100, 1000, 0.002 / 3)[1], rel=1e-12)
    with pytest.raises(ValueError, match="counts"):
        bounds.other_classes_upper(np.array([7]), 0, 0.01)


# ------------------------------------------------------------ found by mutation testing: msrs/stopping.py
def test_thresholds_take_any_real_number_type():
    """sigma and p0 from a config may be Fractions or numpy scalars: the thresholds are float64 all the same."""
    ths = stopping.thresholds([0.5], Fraction(1, 2), Fraction(3, 5))
    assert ths.dtype == np.float64
    np.testing.assert_allclose(ths, [0.6, norm.cdf(1 + norm.ppf(0.6))], rtol=1e-15)


def test_decide_many_radius_is_zero_unless_certified():
    """radius > 0 only where certified: 0 where the rule continues or abstains, the CS radius where it certifies."""
    status, radius, lo, _ = stopping.decide_many([300, 520, 9000], [1000, 1000, 10_000], 100_000, 0.25, 0.001, RADII)
    assert status.tolist() == [stopping.ABSTAIN, stopping.CONTINUE, stopping.CERTIFY]
    assert radius[0] == 0.0 and radius[1] == 0.0
    assert radius[2] == pytest.approx(0.25 * norm.ppf(bounds.cs_bounds(9000, 10_000, 0.001)[0]), rel=1e-8)


def test_decide_uses_the_running_bounds_it_is_given():
    """decide(lower=, upper=): the running intersection replaces the bounds of the current counts."""
    sigma, alpha = 0.25, 0.001
    pred, radius = stopping.decide(600, 1000, 1000, sigma, alpha, None, prediction=4, lower=0.7, upper=0.8)
    assert pred == 4 and radius == pytest.approx(sigma * norm.ppf(0.7), rel=1e-8)
    assert stopping.decide(600, 1000, 1000, sigma, alpha, None, prediction=4, lower=0.45, upper=0.49) == (-1, 0.0)


def test_checkpoints_refuse_growth_of_one():
    with pytest.raises(ValueError, match="growth"):
        stopping.checkpoints(1000, growth=1.0)


def test_fixed_checkpoints_default_chunk_and_chunk_of_one():
    """"fixed": chunk = max(64, n_max // 32) by default (32 looks for a large budget); a chunk of 1 is valid."""
    assert stopping.checkpoints(3200, "fixed") == list(range(100, 3201, 100))
    assert stopping.checkpoints(1000, "fixed") == list(range(64, 1000, 64)) + [1000]
    assert stopping.checkpoints(5, "fixed", chunk=1) == [1, 2, 3, 4, 5]


def test_run_sequential_checks_sigma_and_p0_before_drawing():
    def draw(idx, num, start):
        raise AssertionError("drew samples")

    for bad, message in (({"sigma": 0.0}, "sigma"), ({"p0": 1.0}, "p0"), ({"target_radii": [math.inf]}, "target")):
        args = {"sigma": 0.25, "alpha": 0.01, "target_radii": [0.25], **bad}
        with pytest.raises(ValueError, match=message):
            stopping.run_sequential(draw, [0], 1000, **args)


def test_run_sequential_certifies_with_the_running_lower_bound():
    """intersect=True: the radius is from the largest lower end over the looks, here the first look's (100 of 100
    votes: Clopper-Pearson lower (alpha w_1)^(1/100), w_1 = 0.1), not the final look's (550 of 1000)."""
    def draw(idx, num, start):
        return np.full(len(idx), num if start == 0 else num // 2)

    result = stopping.run_sequential(draw, [3], 1000, 0.25, 0.01, None, points=[100, 1000], bound="spending")
    assert result.samples.tolist() == [1000] and result.successes.tolist() == [550]
    lower = (0.01 * 0.1) ** (1 / 100)
    assert result.lower[0] == pytest.approx(lower, rel=1e-12)
    assert result.prediction.tolist() == [3] and result.radius[0] == pytest.approx(0.25 * norm.ppf(lower), rel=1e-8)


def test_stage_routing_and_cascade_check_their_counts():
    with pytest.raises(TypeError):
        stopping.route_stage(900, 1000, 1000.0, 0.001)  # n_max: a sample count, not a float

    def draw(idx, stream, num, start):
        raise AssertionError("drew samples")

    with pytest.raises(ValueError, match="n0"):
        stopping.run_cascade_sequential(draw, 3, [1.0, 0.5], 0, 100, 0.01)

    def unanimous(idx, stream, num, start):  # every sample votes for class 1
        votes = np.zeros((len(idx), 2), dtype=np.int64)
        votes[:, 1] = num
        return votes

    result = stopping.run_cascade_sequential(unanimous, 2, [1.0, 0.5], 1, 1000, 0.01)  # n0 = 1 is enough
    assert result.prediction.tolist() == [1, 1] and result.stage.tolist() == [0, 0]
    assert result.counts0[:, 0].sum(axis=-1).tolist() == [1, 1]
    single = stopping.run_cascade_sequential(unanimous, 1, [0.5], 10, 1000, 0.01, [0.25])  # one stage: Cohen's
    assert single.prediction.tolist() == [1] and single.radius[0] >= 0.25


def test_cascade_checks_every_images_votes_and_abstains_early_without_targets():
    """draw must give one vote per sample for *every* image; without target radii, a certified image whose best
    reachable radius is <= 0 (an earlier stage's other class holds the votes) abstains without drawing that stage
    to n_max."""
    from msrs import streams

    def short_for_image_1(idx, stream, num, start):
        votes = np.zeros((len(idx), 2), dtype=np.int64)
        votes[:, 1] = num
        votes[idx == 1, 1] -= 1
        return votes

    with pytest.raises(ValueError, match="draw"):
        stopping.run_cascade_sequential(short_for_image_1, 3, [1.0, 0.5], 10, 1000, 0.01)

    def draw(idx, stream, num, start):  # stage 0 selects class 0 but votes for 1; stage 1 selects and votes 0
        s = streams.stage_of(stream)
        votes = np.zeros((len(idx), 2), dtype=np.int64)
        votes[:, 0 if stream == streams.selection(s) or s == 1 else 1] = num
        return votes

    result = stopping.run_cascade_sequential(draw, 1, [1.0, 0.5], 10, 10_000, 0.01)
    assert result.prediction.tolist() == [-1] and result.last.tolist() == [1]
    assert result.samples[0, 0] < 10_000


def test_sequential_abstains_when_the_lower_bound_only_reaches_p0():
    """lower = p0 exactly gives radius 0, which certifies nothing: the single-sigma rule abstains there, as Cohen's
    CERTIFY (msrs.decisions) and the cascades do. 2 of 2 votes, one look, bound at level 0.25: Clopper-Pearson's
    lower end is 0.25^(1/2) = 1/2 exactly (found by mutation testing of Cohen's rule)."""
    bound = bounds.AlphaSpending([2])
    assert bound(2, 2, 0.25)[0][0] == 0.5
    assert stopping.decide(2, 2, 2, 0.5, 0.25, None, prediction=1, bound=bound) == (-1, 0.0)
    assert decisions.cohen_certify_from_counts([0, 1], [0, 2], 0.25, 0.5).prediction == -1
    assert stopping.decide(3, 3, 3, 0.5, 0.25, None, prediction=1, bound=bounds.AlphaSpending([3]))[0] == 1

    def draw(idx, num, start):
        return np.full(len(idx), num)

    result = stopping.run_sequential(draw, [1], 2, 0.5, 0.25, None, points=[2])
    assert result.prediction.tolist() == [-1] and result.radius.tolist() == [0.0] and result.lower.tolist() == [0.5]


def test_cascade_resumes_a_fallen_stage_when_no_image_routes_there():
    """One image: stage 0 falls through, stage 1 certifies class 1, then stage 0 alone is resumed (its cap holds
    the radius below the 0.1 target) while no image routes at stage 0. Such a look updates no routing bounds: the
    run once called the bound on no images there and crashed (`alpha: must lie in (0, 1), got []`, the demo's
    first attempt, docs/DEMO.md). The bound used here refuses empty input, as the bounds did then."""
    probs, _ = _cascade_setup()
    spending = bounds.AlphaSpending(stopping.checkpoints(4096))

    def refuses_empty(successes, trials, level):
        assert np.size(successes) > 0 and np.size(trials) > 0, "bound called on no images"
        return spending(successes, trials, level)

    res, calls = _simulate_cascade(probs, 1, refuses_empty, 0.01, [0.05, 0.1])
    fell_at = max(start + num for stream, _, num, start in calls[:calls.index((2, 1, 32, 0))] if stream == 1)  # stage 0's
    assert res.prediction[0] == 1 and res.stage[0] == 1
    assert res.samples[0, 0] > fell_at  # stage 0 was resumed after the certification
    assert res.radius[0] >= 0.1
