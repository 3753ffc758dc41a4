"""msrs/stopping.py: tests written for the survivors of scripts/mutation.py (docs/MUTATION.md), each against an
independent value (a closed form for unanimous votes, a hand-derived outcome, the documented formula restated with
Python's statistics module); the mutant each one kills is named in its docstring."""
from __future__ import annotations

import math
from fractions import Fraction
from statistics import NormalDist

import numpy as np
import pytest
from test_sequential import _cs_end  # CS ends by bisection, 40-digit arithmetic

from msrs import bounds, checks, stopping, streams

SIGMA, ALPHA = 0.5, 0.01
PHI_INV = NormalDist().inv_cdf


def _constant_bound(lower: float, upper: float):
    """A bound object that gives the same (lower, upper) at every count."""
    def bound(successes, trials, level):
        shape = np.shape(np.atleast_1d(successes))
        return np.full(shape, lower), np.full(shape, upper)
    return bound


# a running lower bound that reaches p0 = 1/2 but can never exceed it (upper end 0.9)
_at_p0 = _constant_bound(0.5, 0.9)


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
def test_no_target_rule_keeps_sampling_an_image_that_can_still_certify():
    """Without target radii an uncertified image stops early only when p0 is out of reach (decide_many's
    `~certified & (best <= ths[0])`; kills `|`): 520 of 1000 (CS lower < 1/2 < upper) with 99,000 samples left can
    still certify."""
    lo, hi = bounds.cs_bounds(520, 1000, 0.001)
    assert lo < 0.5 < hi
    assert stopping.decide(520, 1000, 100_000, 0.25, 0.001, None) == "continue"


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


def test_reachable_successes_without_futility_is_float64_for_integer_counts():
    """reachable_successes converts its counts to float64 first (kills dropping dtype=np.float64: integer counts
    would give an int64 `left` back)."""
    out = stopping.reachable_successes(np.array([3, 7]), np.array([10, 20]), 100)
    assert out.dtype == np.float64 and out.tolist() == [90.0, 80.0]


def test_futility_ramp_of_zero_is_accepted_and_applies_gamma_from_the_first_look():
    """futility_ramp = 0 is allowed (check_futility's `0.0 <= ramp`; kills `<`): gamma from the first look, the
    documented normal quantile restated here with Python's statistics module."""
    stopping.check_futility(0.02, 0.0)
    s, t, n_max, gamma = 30, 100, 1000, 0.02
    left, rate = n_max - t, (s + 0.5) / (t + 1)
    sd = math.sqrt(left * rate * (1 - rate) * (t + 1 + left) / (t + 2))
    expected = min(left, math.ceil(left * rate + NormalDist().inv_cdf(1 - gamma) * sd))
    assert stopping.reachable_successes(s, t, n_max, gamma, futility_ramp=0.0) == expected
    result = stopping.run_sequential(_unanimous, [1], 1000, SIGMA, ALPHA, None, points=[100, 1000],
                                     futility_ramp=0.0)
    assert result.prediction.tolist() == [1]


def test_run_sequential_accepts_integral_float_vote_counts():
    """A draw may return integral float counts (np.bincount with weights, a float tensor's sum): run_sequential
    converts them to int64 (kills dropping dtype=np.int64: float votes cannot be added into the int64 counts).
    Unanimous votes, looks 100 and 1000, no target radii: the lower bound is the final look's Clopper-Pearson
    bound for 1000 of 1000 at 0.9 alpha, (0.9 alpha)^(1/1000), larger than the first look's (0.1 alpha)^(1/100)."""
    def draw(idx, num, start):
        return np.full(len(idx), float(num))

    result = stopping.run_sequential(draw, [1], 1000, SIGMA, ALPHA, None, points=[100, 1000])
    lower = (0.9 * ALPHA) ** (1 / 1000)
    assert result.successes.tolist() == [1000] and result.successes.dtype == np.int64
    assert result.lower[0] == pytest.approx(lower, rel=1e-12)
    assert result.radius[0] == pytest.approx(_radius(lower), rel=1e-9)


# ----------------------------------------------------------------------------------------- cascade routing
def test_route_stage_passes_the_running_bounds_through():
    """route_stage(lower=, upper=) routes on the given running bounds, not on the counts' own (kills dropping
    either keyword in route_stage's call of route_stage_many): 510 of 1000 alone would continue."""
    assert stopping.route_stage(510, 1000, 10_000, 0.001) == "continue"
    assert stopping.route_stage(510, 1000, 10_000, 0.001, lower=0.7, upper=0.8) == "certify"
    assert stopping.route_stage(510, 1000, 10_000, 0.001, lower=0.3, upper=0.4) == "fall_through"


def test_route_stage_passes_its_bound_object_through():
    """route_stage(bound=) routes with the given bound object, not the default confidence sequence (kills dropping
    bound= in route_stage's call): 510 of 1000 continues under the CS, and certifies under a bound whose lower end
    is 0.6."""
    def above_p0(successes, trials, level):
        shape = np.shape(np.atleast_1d(successes))
        return np.full(shape, 0.6), np.full(shape, 0.9)

    assert stopping.route_stage(510, 1000, 10_000, 0.001, bound=above_p0) == "certify"


def test_route_stage_passes_its_prior_through():
    """route_stage(prior=) sets the confidence sequence's prior (kills dropping prior= in route_stage's call):
    580 of 1000 at level 0.001 certifies with the Jeffreys prior and continues with Beta(50, 1), because p0 = 1/2
    is outside the CS under the first prior and inside it under the second (40-digit log M_t(1/2) against
    log(1/level))."""
    from test_sequential import _log_mixture

    level = math.log(1 / 0.001)
    assert _log_mixture(580, 1000, 0.5) >= level > _log_mixture(580, 1000, 0.5, a=50.0, b=1.0)
    assert stopping.route_stage(580, 1000, 10_000, 0.001) == "certify"
    assert stopping.route_stage(580, 1000, 10_000, 0.001, prior=(50.0, 1.0)) == "continue"


def test_route_stage_at_lower_equal_to_p0_routes_to_certify_and_the_cascade_abstains_at_once():
    """Routing at lower = p0 exactly goes to "certify" (the fixed-n cascade's stage rule, lower >= p0); the
    certificate then needs R > 0, so nothing is certified at radius 0: here the best reachable lower is p0 too,
    and the image abstains after its first look instead of drawing to n_max (docs/MUTATION.md explains why routing
    keeps >=; kills `lo > p0`, which would continue to n_max and abstain there as "undecided")."""
    assert stopping.route_stage(600, 1000, 10_000, 0.001, lower=0.5, upper=0.9) == "certify"
    assert stopping.route_stage_many([600], [1000], 10_000, 0.001, bound=_at_p0).tolist() == [stopping.ROUTE_CERTIFY]
    result = stopping.run_cascade_sequential(_unanimous_votes(), 1, [SIGMA], 10, 1000, ALPHA, None, bound=_at_p0,
                                             points=[100, 1000])
    assert result.prediction.tolist() == [-1] and result.radius.tolist() == [0.0]
    assert result.samples.tolist() == [[100]]


# ----------------------------------------------------------------------------------------- sequential cascade
def test_cascade_uses_the_running_lower_bound_by_default():
    """intersect defaults to True (kills True -> False): one stage, looks 100 and 1000, every vote for class 1 in
    the first look and every other one after: the lower bound stays the first look's (0.1 alpha)^(1/100) (100 of
    100), far above the final look's bound for 550 of 1000."""
    def draw(idx, stream, num, start):
        votes = np.zeros((len(idx), 2), dtype=np.int64)
        votes[:, 1] = num if start == 0 else num // 2
        votes[:, 0] = num - votes[:, 1]
        return votes

    result = stopping.run_cascade_sequential(draw, 1, [SIGMA], 10, 1000, ALPHA, None, points=[100, 1000])
    lower = (0.1 * ALPHA) ** (1 / 100)
    assert result.samples.tolist() == [[1000]] and result.counts[0, 0].tolist() == [450, 550]
    assert result.p_lower[0] == pytest.approx(lower, rel=1e-12)
    assert result.prediction.tolist() == [1] and result.radius[0] == pytest.approx(_radius(lower), rel=1e-9)


def test_cascade_passes_final_share_to_its_bound():
    """final_share reaches the alpha-spending bound (kills dropping it from make_bound's call): unanimous votes,
    one stage (cert = alpha), looks 100 and 1000, final share 0.6: lower = (0.6 alpha)^(1/1000), not the default
    0.9's; a final share above 1 is refused."""
    result = stopping.run_cascade_sequential(_unanimous_votes(), 1, [SIGMA], 10, 1000, ALPHA, None,
                                             points=[100, 1000], final_share=0.6)
    assert result.p_lower[0] == pytest.approx((0.6 * ALPHA) ** (1 / 1000), rel=1e-12)
    with pytest.raises(ValueError, match="final_share"):
        stopping.run_cascade_sequential(_unanimous_votes(), 1, [SIGMA], 10, 1000, ALPHA, None, points=[100, 1000],
                                        final_share=1.5)


def test_cascade_refuses_equal_or_missing_sigmas():
    """sigmas must be non-empty and strictly decreasing: equal sigmas alone are refused (kills `a < b` and the
    `and` of the three conditions), and so is an empty list, before any draw."""
    def draw(idx, stream, num, start):
        raise AssertionError("drew samples")

    for sigmas in ([0.5, 0.5], [1.0, 0.5, 0.5], []):
        with pytest.raises(ValueError, match="sigmas"):
            stopping.run_cascade_sequential(draw, 2, sigmas, 10, 1000, ALPHA)


# ---------------------------------------------------------------------- seed-2 sample (`--sample 40 --seed 2`)
def test_run_sequential_accepts_a_first_look_at_one_sample():
    """A look at 1 sample is valid (looks' `points[0] < 1`; kills `<= 1`): unanimous votes, looks 1 and 10, no
    target radii, one look of weight 0.1 alpha and the final one 0.9 alpha: after one success the lower bound is
    0.1 alpha, after ten (0.9 alpha)^(1/10)."""
    result = stopping.run_sequential(_unanimous, [1], 10, SIGMA, ALPHA, None, points=[1, 10])
    assert result.samples.tolist() == [10] and result.prediction.tolist() == [1]
    assert result.lower[0] == pytest.approx((0.9 * ALPHA) ** (1 / 10), rel=1e-12)


def test_run_sequential_predictions_are_int64_whatever_the_input_integer_type():
    """predictions come back as int64 (SequentialResult's field), also from int32 selections (kills dropping
    dtype=np.int64 in run_sequential)."""
    result = stopping.run_sequential(_unanimous, np.array([3, -1], dtype=np.int32), 100, SIGMA, ALPHA, None,
                                     points=[100])
    assert result.prediction.dtype == np.int64 and result.prediction.tolist() == [3, -1]


def test_run_sequential_passes_weights_to_its_bound():
    """weights reach the alpha-spending bound (kills dropping weights= from run_sequential's make_bound call):
    unanimous votes, looks 100 and 1000, weights (0.5, 0.5): lower = (0.5 alpha)^(1/1000), not 0.9 alpha's."""
    result = stopping.run_sequential(_unanimous, [1], 1000, SIGMA, ALPHA, None, points=[100, 1000], weights=[0.5, 0.5])
    assert result.lower[0] == pytest.approx((0.5 * ALPHA) ** (1 / 1000), rel=1e-12)


def test_route_stage_passes_futility_through():
    """route_stage(futility=) reaches the routing (kills dropping it): 4500 of 9000 with 1000 samples left can
    reach p0 on either side only if (nearly) all of them go one way; curtailment keeps it running, the 2%
    predictive gives up on both sides ("undecided")."""
    assert stopping.route_stage(4500, 9000, 10_000, 0.001) == "continue"
    assert stopping.route_stage(4500, 9000, 10_000, 0.001, futility=0.02) == "undecided"


def test_cascade_passes_futility_ramp_to_its_routing():
    """The cascade routes with its own futility_ramp (kills dropping futility_ramp= from _CascadeRun.route's
    call): one stage, votes split evenly, looks 1000, 2000, 3000 and 10,000, CS bound. With the default ramp
    (0.1: the full 2% from 1000 samples on) route_stage gives up at 2000; with ramp 1.0 (0.4% at 2000) only at
    3000. The cascade stops where route_stage does for the same options."""
    def even(idx, stream, num, start):
        return np.tile([num // 2, num - num // 2], (len(idx), 1)).astype(np.int64)

    for ramp, stop in ((0.1, 2000), (1.0, 3000)):
        first = next(t for t in (1000, 2000, 3000, 10_000)
                     if stopping.route_stage(t // 2, t, 10_000, ALPHA, futility=0.02, futility_ramp=ramp) != "continue")
        assert first == stop
        result = stopping.run_cascade_sequential(even, 1, [SIGMA], 10, 10_000, ALPHA, None, bound="cs",
                                                 points=[1000, 2000, 3000], futility=0.02, futility_ramp=ramp)
        assert result.prediction.tolist() == [-1] and result.samples.tolist() == [[stop]]


# ---------------------------------------------------------------------- seed-3 sample (`--sample 40 --seed 3`)
def test_target_radii_of_zero_only_act_as_no_target_radii():
    """Radii <= 0 fold into p0 (thresholds), so target_radii = [0.0] is the no-target rule: a certified image keeps
    sampling for the largest radius the budget allows (kills `and` for `or` in decide_many's branch choice)."""
    assert stopping.decide(9990, 10_000, 100_000, 0.25, 0.001, None) == "continue"
    assert stopping.decide(9990, 10_000, 100_000, 0.25, 0.001, [0.0]) == "continue"


def test_cascade_counts_are_int64():
    """CascadeResult's counts0 and counts are int64 (kills dropping dtype=np.int64 from their allocation)."""
    result = stopping.run_cascade_sequential(_unanimous_votes(), 1, [SIGMA], 10, 100, ALPHA, None, points=[100])
    assert result.counts0.dtype == np.int64 and result.counts.dtype == np.int64
    assert result.counts0[0, 0].tolist() == [0, 10] and result.counts[0, 0].tolist() == [0, 100]


def test_draw_with_one_negative_count_is_refused():
    """run_sequential checks every image's votes: one negative count among valid ones is an error (seed-4
    survivor: np.any(votes < 0) -> np.all)."""
    def draw(idx, num, start):
        out = np.full(idx.size, num, dtype=np.int64)
        out[0] = -1
        return out

    with pytest.raises(ValueError, match="^draw: "):
        stopping.run_sequential(draw, np.array([1, 1]), 1000, 0.25, 0.001, [0.25])


def test_cascade_passes_the_spending_weights_on():
    """run_cascade_sequential's weights reach the bound: a list of the wrong length is refused (seed-4 survivor:
    make_bound called without weights=, which ignored them)."""
    def draw(idx, stream, num, start):
        return np.tile(np.array([0, num, 0]), (idx.size, 1))

    with pytest.raises(ValueError, match="^weights: "):
        stopping.run_cascade_sequential(draw, 1, [0.5, 0.25], 10, 1000, 0.001, [0.25], weights=[1.0])


def test_thresholds_of_float32_radii_are_computed_in_float64():
    """Target radii read from a float32 array give the thresholds of their (exact) float64 values, Phi(r / sigma +
    PhiInv(p0)) restated with Python's statistics module (kills dropping dtype=np.float64 in _positive_radii:
    numpy 2 then keeps float32 through r / sigma, 1e-8 off)."""
    radii = np.array([0.1, 0.3, 0.7], dtype=np.float32)
    got = stopping.thresholds(radii, 0.3, p0=0.6)  # (not a power of 2: r / sigma is rounded)
    want = [0.6] + [NormalDist().cdf(float(r) / 0.3 + PHI_INV(0.6)) for r in radii]
    assert got.dtype == np.float64
    assert got == pytest.approx(want, rel=1e-13, abs=0)


def test_radius_from_a_float32_lower_bound_at_p0_is_zero():
    """A float32 lower bound is compared with p0 in float64: np.float32(0.7) = 0.69999998808 is below p0 = 0.7, so
    it certifies nothing (radius 0), while 0.9 gets sigma (PhiInv(0.9) - PhiInv(0.7)) of its float64 value, less
    the relative margin bounds.RADIUS_MARGIN = 1e-9 that every radius gives up to rounding (kills
    dropping dtype=np.float64 in radius_from_lower: in float32 p0 rounds down to the same 0.69999998808, the bound
    passes the check and the radius comes out negative)."""
    got = stopping.radius_from_lower(np.array([0.7, 0.9], dtype=np.float32), SIGMA, p0=0.7)
    want = SIGMA * (PHI_INV(float(np.float32(0.9))) - PHI_INV(0.7))
    assert got[0] == 0.0 and not np.signbit(got[0])
    assert want * (1 - 2e-9) <= got[1] < want


def _upper_at_p0(successes, trials, level):
    """A bound object whose upper end is exactly p0 = 1/2 at every count and whose lower end is s / t - 0.2: at
    60 of 100 the image cannot certify yet, but the best case at n_max (all 900 remaining samples successes) could."""
    s, t = np.atleast_1d(successes).astype(float), np.atleast_1d(trials).astype(float)
    return np.clip(s / t - 0.2, 0.0, 1.0), np.full(s.shape, 0.5)


def test_decide_many_abstains_on_an_upper_bound_below_p0_not_at_it():
    """The rule abstains when upper < p0 (strictly, as documented: p = p0 is not excluded); at upper = p0 with the
    best case still above p0 the image goes on (kills `hi < p0` -> `hi <= p0` in decide_many's stopping test)."""
    status, _, _, hi = stopping.decide_many([60], [100], 1000, SIGMA, ALPHA, bound=_upper_at_p0)
    assert hi[0] == 0.5 and status[0] == stopping.CONTINUE
    status, _, _, _ = stopping.decide_many([60], [100], 1000, SIGMA, ALPHA, bound=_upper_at_p0,
                                           upper=[np.nextafter(0.5, 0.0)])
    assert status[0] == stopping.ABSTAIN


def test_decide_many_refuses_a_fractional_budget():
    """n_max is a sample count: a float, even 1000.0, is refused with a TypeError rather than used as a float budget
    (kills deleting `n_max = operator.index(n_max)`)."""
    with pytest.raises(TypeError):
        stopping.decide_many([60], [100], 1000.0, SIGMA, ALPHA)
    status, _, _, _ = stopping.decide_many([60], [100], np.int64(1000), SIGMA, ALPHA)  # numpy integers are counts
    assert status[0] == stopping.CONTINUE


def test_futility_ramp_of_zero_and_below_one_sample_at_the_first_look():
    """reachable_successes at t = 0 from its documented formula: with futility_ramp = 0 gamma is the full futility
    from the first look, so the prediction at m = 1000, rate 1/2 is ceil(m/2 + z sqrt(m/4 (1 + m) / 2)), z =
    PhiInv(1 - gamma); with a ramp shorter than one sample (0.0005 of 1000 = half a sample) gamma_0 = 0 * gamma = 0,
    so all m remaining samples count (kills `ramp > 0` -> `ramp >= 0`, where t / 0 = nan at t = 0, and `ramp > 0` ->
    `ramp > 1`, which skips a ramp of half a sample)."""
    m, gamma = 1000, 0.3
    z = NormalDist().inv_cdf(1 - gamma)
    want = math.ceil(m / 2 + z * math.sqrt(m / 4 * (1 + m) / 2))
    assert want < m
    assert stopping.reachable_successes(0, 0, m, futility=gamma, futility_ramp=0.0) == want
    assert stopping.reachable_successes(0, 0, m, futility=gamma, futility_ramp=0.0005) == m


def test_decide_passes_upper_and_futility_ramp_on_to_decide_many():
    """decide is decide_many for one image: the same outcome for a given running upper bound and for a futility
    ramp other than the default, at counts where each of them changes the outcome (kills dropping upper= and
    futility_ramp= from decide's call)."""
    assert stopping.decide(60, 100, 1000, SIGMA, ALPHA, bound=_upper_at_p0) == "continue"
    assert stopping.decide(60, 100, 1000, SIGMA, ALPHA, bound=_upper_at_p0, upper=np.nextafter(0.5, 0.0)) == (-1, 0.0)
    radii, n_max, differ = [0.25, 0.5], 10_000, 0
    for s in range(40, 101, 3):
        kw = {"futility": 0.3, "futility_ramp": 0.0}
        status, radius, _, _ = stopping.decide_many([s], [100], n_max, SIGMA, ALPHA, radii, **kw)
        want = "continue" if status[0] == stopping.CONTINUE else \
            ((7, float(radius[0])) if status[0] == stopping.CERTIFY else (-1, 0.0))
        assert stopping.decide(s, 100, n_max, SIGMA, ALPHA, radii, prediction=7, **kw) == want
        differ += stopping.decide(s, 100, n_max, SIGMA, ALPHA, radii, prediction=7, futility=0.3) != want
    assert differ > 0  # the ramp matters at some of these counts: the check has power


def test_geometric_looks_from_a_first_look_of_one_sample():
    """first = 1 (and first = 0, clamped to one sample) with growth 2 up to n_max = 10, worked by hand from the
    documented rule: 1, 2, 4, 8 (each look at least one sample after the last, ceil(t * growth)), and no last chunk
    under half the one before: 10 - 8 = 2 is not below 8 / 2... then 8 + 8 > 10 ends at n_max (kills max(1, first)
    -> max(2, first))."""
    assert stopping.checkpoints(10, first=1, growth=2.0) == [1, 2, 4, 8, 10]
    assert stopping.checkpoints(10, first=0, growth=2.0) == [1, 2, 4, 8, 10]


def test_run_sequential_refuses_a_float_budget_before_drawing_a_sample():
    """n_max is a sample count: 1000.0 is refused (TypeError) before the first sample is drawn, also when the looks
    are given (kills deleting `n_max = operator.index(n_max)` in run_sequential: the float then passes the given
    looks, a chunk of samples is drawn, and only the stopping rule refuses it)."""
    calls = []

    def draw(idx, num, start):
        calls.append(num)
        return _unanimous(idx, num, start)

    with pytest.raises(TypeError):
        stopping.run_sequential(draw, [1], 1000.0, SIGMA, ALPHA, None, points=[100, 1000])
    assert calls == []
    result = stopping.run_sequential(draw, [1], np.int64(1000), SIGMA, ALPHA, None, points=[100, 1000])
    assert len(result) == 1 and calls


# a stage that can never certify (lower 0.3, also at the best case) and whose upper end is exactly p0
_stuck_at_p0 = _constant_bound(0.3, 0.5)


def test_route_stage_many_is_undecided_when_the_upper_end_stays_at_p0():
    """A stage that can no longer certify and whose worst-case upper end is exactly p0 (not below it: p = p0 is not
    excluded) is undecided: it can neither certify nor fall through under the paper's rule (kills `>= p0` -> `> p0`
    in the stuck test, which keeps such a stage running to n_max); under fall-through it falls through."""
    assert stopping.route_stage_many([60], [100], 1000, 0.001, bound=_stuck_at_p0).tolist() == \
        [stopping.ROUTE_UNDECIDED]
    assert stopping.route_stage_many([60], [100], 1000, 0.001, bound=_stuck_at_p0,
                                     undecided="fall_through").tolist() == [stopping.ROUTE_FALL_THROUGH]


def test_route_stage_many_refuses_an_unknown_undecided_rule():
    """undecided is checked by name: the CLI's spelling "fall-through" is not the API's "fall_through", and a typo
    must not silently mean the paper's "abstain" (kills deleting the checks.choice call)."""
    for bad in ("fall-through", "Abstain", ""):
        with pytest.raises(ValueError, match="undecided"):
            stopping.route_stage_many([60], [100], 1000, 0.001, undecided=bad)


def test_cascade_checks_p0_and_the_radii_before_drawing_a_sample():
    """A bad p0 or a non-finite target radius is refused before the first selection sample is drawn (kills deleting
    the up-front `thresholds(target_radii, sigmas[-1], p0)` call, after which the cascade draws, then fails)."""
    calls = []
    inner = _unanimous_votes()

    def draw(*args):
        calls.append(args)
        return inner(*args)

    with pytest.raises(ValueError, match="p0"):
        stopping.run_cascade_sequential(draw, 1, [SIGMA], 10, 1000, ALPHA, None, p0=0.4)
    with pytest.raises(ValueError, match="target_radii"):
        stopping.run_cascade_sequential(draw, 1, [SIGMA], 10, 1000, ALPHA, [0.25, float("nan")])
    assert calls == []


def _synthetic_cascade_draw(seed, n, k=4, stages=3):
    """run_cascade_sequential's draw for n synthetic images: at each stage an image's votes are multinomial with
    its own class probabilities (top class 0 at 0.3-0.7 at the largest sigma, cleaner at the smaller ones), the
    samples of (image, stream, start) from their own seeded generator (the same votes whatever the batch)."""
    rng = np.random.default_rng(seed)
    tops = np.stack([rng.uniform(0.3, 0.7, n), rng.uniform(0.4, 0.95, n), rng.uniform(0.5, 0.999, n)], axis=1)
    probs = np.empty((n, stages, k))
    for i in range(n):
        for s in range(stages):
            probs[i, s] = np.concatenate(([tops[i, s]], rng.dirichlet(np.ones(k - 1)) * (1 - tops[i, s])))
    stage_of = {streams_fn(s): s for s in range(stages) for streams_fn in (streams.selection, streams.estimation)}

    def draw(idx, stream, num, start):
        out = np.zeros((len(idx), k), dtype=np.int64)
        for row, i in enumerate(idx):
            out[row] = np.random.default_rng([seed, int(i), int(stream), int(start)]).multinomial(
                num, probs[i, stage_of[stream]])
        return out
    return draw


@pytest.mark.parametrize("undecided,intersect", [("abstain", False), ("fall_through", False), ("abstain", True)])
def test_sequential_cascade_certificates_recomputed_from_the_returned_counts(undecided, intersect):
    """Every outcome of the sequential cascade (target radii, so fall-through stages are resumed after a later stage
    certifies) recomputed from the counts it returns, by the rule of msrs.decisions written out with the public
    pieces: a certified image's radius is min(R_s, -r_j) with R_s from its stage's spending bound at the samples
    drawn there and -r_j from the off-class bound of each earlier stage (groups pooled on that stage's selection
    counts without cA); an abstained image whose last stage's bound certifies its class must have R <= 0. No stage
    after an image's last one has samples. With intersect=True the certifying stage's running lower bound can only
    be higher than the one recomputed at the last look, so the radius is at least the recomputed one. (Kills `&
    want[:, s]` -> `| want[:, s]` in _CascadeRun.route: certified images resuming an earlier stage were routed there
    again, re-entered the next stage and lost their certificate: last = 1 with stage 2 drawn.)"""
    from msrs import decisions

    sigmas, n_max, alpha, p0 = [1.0, 0.5, 0.25], 3000, 0.01, 0.5
    bound = bounds.make_bound("spending", stopping.checkpoints(n_max))
    cert, off = decisions.schedule_levels(alpha, len(sigmas), "union")
    checked = 0
    for seed in range(2):
        r = stopping.run_cascade_sequential(_synthetic_cascade_draw(seed, 40), 40, sigmas, 50, n_max, alpha,
                                            [0.25, 0.5, 0.75, 1.0], intersect=intersect, undecided=undecided)
        for b in range(len(r)):
            last = int(r.last[b])  # stages are entered in order: none after the last one has samples
            assert not r.counts0[b, last + 1:].any() and not r.samples[b, last + 1:].any(), (seed, b)
            c = int(r.prediction[b]) if r.prediction[b] >= 0 else int(np.argmax(r.counts0[b, last]))
            s = int(r.stage[b]) if r.prediction[b] >= 0 else last
            lower = float(np.ravel(bound(r.counts[b, s, c], r.samples[b, s], cert[s])[0])[0])
            radius = float(bounds.signed_radius(sigmas[s], lower, p0))
            for j in range(s):
                groups = decisions.pool_groups(r.counts0[b, j], c)
                upper = float(np.ravel(bounds.other_classes_upper(r.counts[b, j], c, off[j, s], groups=groups,
                                                                  bound=bound))[0])
                radius = min(radius, -float(bounds.signed_radius(sigmas[j], upper, p0)))
            if r.prediction[b] >= 0:
                assert (r.radius[b] >= radius if intersect else r.radius[b] == radius and lower >= p0), (seed, b)
                checked += 1
            elif lower >= p0 and r.samples[b, s] > 0:
                assert radius <= 0, (seed, b, radius)
    assert checked >= 20  # most images certify here: the check has something to check


def test_sequential_cascade_of_no_images_has_no_classes():
    """With no images nothing is drawn, so the number of classes is unknown: the count arrays are [0, L, 0] (kills
    `k = 0` -> `k = 1` for a run that never drew)."""
    r = stopping.run_cascade_sequential(_unanimous_votes(), 0, [1.0, SIGMA], 10, 1000, ALPHA, None)
    assert len(r) == 0 and r.counts.shape == r.counts0.shape == (0, 2, 0) and r.samples.shape == (0, 2)


def test_checkpoints_refuse_a_float_budget_and_run_sequential_one_bad_vote_count():
    """checkpoints(1000.0) is refused (TypeError) instead of ending its looks with the float 1000.0 (kills deleting
    `n_max = operator.index(n_max)` there); run_sequential refuses a draw in which one image of several has more
    votes than samples (kills np.any(votes > num) -> np.all)."""
    with pytest.raises(TypeError):
        stopping.checkpoints(1000.0)

    def draw(idx, num, start):
        votes = np.full(len(idx), num)
        votes[0] = num + 1
        return votes

    with pytest.raises(ValueError, match="draw"):
        stopping.run_sequential(draw, [1, 1], 1000, SIGMA, ALPHA, None, points=[100, 1000])


def _half_then_unanimous(k=10):
    """run_cascade_sequential's draw for one image: at stage 0 sample i votes class 0 when i is even, else class
    1 + (i // 2) % (k - 1) (p = 1/2 exactly for the selected class 0, the rest spread thin); at stage 1 every
    sample votes class 0."""
    def draw(idx, stream, num, start):
        out = np.zeros((len(idx), k), dtype=np.int64)
        if stream in (streams.selection(0), streams.estimation(0)):
            i = np.arange(start, start + num)
            out[:] = np.bincount(np.where(i % 2 == 0, 0, 1 + (i // 2) % (k - 1)), minlength=k)
        else:
            out[:, 0] = num
        return out
    return draw


def test_sequential_cascade_routes_an_undecided_stage_by_the_chosen_rule():
    """Stage 0 sits at p = 1/2 (it can neither certify nor fall through): under "abstain" (the paper's rule) the
    image abstains there; under "fall_through" stage 0 falls through once it can no longer certify, stage 1
    certifies class 0, and stage 0's off-class cap (nine classes at 1/18 each) leaves the radius positive (kills
    dropping undecided= from the cascade's routing call, which then always abstains)."""
    kw = {"num_images": 1, "sigmas": [1.0, 0.5], "n0": 100, "n_max": 3000, "alpha": 0.01, "target_radii": None}
    fell = stopping.run_cascade_sequential(_half_then_unanimous(), undecided="fall_through", **kw)
    assert fell.prediction.tolist() == [0] and fell.stage.tolist() == [1] and fell.radius[0] > 0
    stuck = stopping.run_cascade_sequential(_half_then_unanimous(), undecided="abstain", **kw)
    assert stuck.prediction.tolist() == [-1] and stuck.samples[0, 1] == 0


# ----------------------------------------------------------------------------------- full run (all mutants, 2026-12)
def test_decide_many_refuses_one_image_past_its_budget_among_several():
    """trials <= n_max is checked for every image (_trial_counts' `np.any(t > n_max)`; kills np.all): one image
    of two with 200 trials against n_max = 100 is refused by name."""
    with pytest.raises(ValueError, match="trials"):
        stopping.decide_many([5, 200], [10, 200], 100, SIGMA, ALPHA)


def test_decide_many_with_a_given_lower_bound_only_takes_the_upper_from_the_bound_object():
    """lower given, upper not: the upper end comes from the bound object and the lower end is the given one
    (_current's `lower is None or upper is None`; kills `upper is not None`, which leaves the upper end unset):
    at the final look a lower end 0.7 > p0 certifies sigma PhiInv(0.7) (statistics.NormalDist; less the margin)."""
    status, radius, lo, hi = stopping.decide_many([80], [100], 100, SIGMA, ALPHA, lower=[0.7],
                                                  bound=_constant_bound(0.2, 0.9))
    assert lo.tolist() == [0.7] and hi.tolist() == [0.9]
    assert status.tolist() == [stopping.CERTIFY]
    assert radius[0] == pytest.approx(_radius(0.7), rel=1e-12)


def test_decide_many_reads_float32_bounds_at_their_float64_values():
    """Given bounds are read as float64 (_current's np.asarray(lower / upper, dtype=np.float64)): float32(0.6) =
    10066330 / 2^24 is above p0 = 0.6, so at the final look it certifies (a radius > 0), and float32(0.7) =
    11744051 / 2^24 is below p0 = 0.7, so an upper end there abstains at once. Kept as float32, each is compared
    with p0 in float32 (numpy 2 reads the Python float p0 as float32 next to a float32 array), where the two are
    equal: no certificate, and no abstention (kills dropping either dtype=np.float64)."""
    assert Fraction(float(np.float32(0.6))) == Fraction(10066330, 2**24) > Fraction(0.6)
    assert Fraction(float(np.float32(0.7))) == Fraction(11744051, 2**24) < Fraction(0.7)
    status, radius, lo, hi = stopping.decide_many([100], [100], 100, SIGMA, ALPHA, p0=0.6,
                                                  lower=np.float32(0.6), upper=0.95, bound=_constant_bound(0.2, 0.9))
    assert lo.dtype == hi.dtype == np.float64 and lo[0] == 10066330 / 2**24
    assert status.tolist() == [stopping.CERTIFY] and radius[0] > 0
    status, radius, lo, hi = stopping.decide_many([10], [10], 1000, SIGMA, ALPHA, p0=0.7, lower=0.3,
                                                  upper=np.float32(0.7), bound=_constant_bound(0.8, 0.95))
    assert lo.dtype == hi.dtype == np.float64 and hi[0] == 11744051 / 2**24
    assert status.tolist() == [stopping.ABSTAIN] and radius.tolist() == [0.0]


def test_decide_many_certifies_a_lower_bound_exactly_at_the_top_threshold():
    """A threshold equal to the lower end counts as reached (decide_many's `np.searchsorted(ths, lo, side="right")`,
    thresholds <= lower; kills dropping side="right", which counts only those below): with the one target radius
    0.25 at sigma = 0.5 the threshold is Phi(0.5) (statistics.NormalDist), and a running lower end exactly there
    certifies at once, well before n_max, with the radius sigma PhiInv(Phi(0.5)) = 0.25 (less the margin)."""
    top = stopping.thresholds([0.25], SIGMA)[1]
    assert top == pytest.approx(NormalDist().cdf(0.25 / SIGMA), rel=1e-14)
    status, radius, _, _ = stopping.decide_many([1000], [1000], 100_000, SIGMA, ALPHA, [0.25], lower=top, upper=1.0)
    assert status.tolist() == [stopping.CERTIFY]
    assert radius[0] == pytest.approx(0.25, rel=1e-8) and radius[0] <= 0.25


def test_decide_many_keeps_sampling_while_the_upper_end_sits_exactly_at_the_next_threshold():
    """A threshold is reached when the lower end is >= it (thresholds <= lower), so an upper end exactly at the
    next threshold still leaves it reachable (decide_many's `hi < nxt`; kills `hi <= nxt`, which stops and
    certifies the lower target): lower 0.6 (radius 0 reached: 0.6 > 1/2), upper exactly Phi(0.25 / sigma), all
    1000 draws so far successes and 99,000 left, so the image goes on sampling; one ulp lower, it stops there."""
    nxt = stopping.thresholds([0.25], SIGMA)[1]
    assert nxt == pytest.approx(NormalDist().cdf(0.25 / SIGMA), rel=1e-14) and 0.6 < nxt
    status, radius, _, _ = stopping.decide_many([1000], [1000], 100_000, SIGMA, ALPHA, [0.25], lower=0.6, upper=nxt)
    assert status.tolist() == [stopping.CONTINUE] and radius.tolist() == [0.0]
    status, _, _, _ = stopping.decide_many([1000], [1000], 100_000, SIGMA, ALPHA, [0.25], lower=0.6,
                                           upper=math.nextafter(nxt, 0))
    assert status.tolist() == [stopping.CERTIFY]


def test_decide_many_keeps_sampling_while_the_best_reachable_lower_end_is_exactly_the_next_threshold():
    """The best lower end still reachable (the bound at n_max after every remaining sample succeeds) exactly at
    the next threshold leaves that threshold reachable (thresholds <= lower count; decide_many's `best < nxt`;
    kills `best <= nxt`, which stops and certifies the lower target): a bound that reads Phi(0.25 / sigma) at
    every count, lower 0.6 given, 99,000 samples left: the image goes on sampling; one ulp lower, it stops."""
    nxt = stopping.thresholds([0.25], SIGMA)[1]
    assert nxt == pytest.approx(NormalDist().cdf(0.25 / SIGMA), rel=1e-14) and 0.6 < nxt
    for best, expected in ((nxt, stopping.CONTINUE), (math.nextafter(nxt, 0), stopping.CERTIFY)):
        status, _, _, _ = stopping.decide_many([1000], [1000], 100_000, SIGMA, ALPHA, [0.25], lower=0.6,
                                               upper=0.95, bound=_constant_bound(best, 0.95))
        assert status.tolist() == [expected]


def test_decide_many_upper_end_exactly_at_p0_neither_stops_nor_vetoes_a_certificate():
    """Only an upper end below p0 counts against p0, both for stopping early (decide_many's `done = ... | (hi < p0)`)
    and for vetoing a certificate (`certified & ~(hi < p0)`); kills `hi <= p0` in either. Lower 0.3, upper
    exactly 1/2, best reachable lower end 0.9 > 1/2 (single-sigma rule, no targets): the image goes on sampling,
    and one ulp below 1/2 it abstains. Crossed running bounds (an intersection of two looks' intervals can be
    empty) at the final look, lower 0.6 > upper = 1/2: certified with sigma PhiInv(0.6) (statistics.NormalDist,
    less the margin), and abstained one ulp below 1/2."""
    for hi, expected in ((0.5, stopping.CONTINUE), (math.nextafter(0.5, 0), stopping.ABSTAIN)):
        status, radius, _, _ = stopping.decide_many([10], [100], 10_000, SIGMA, ALPHA, lower=0.3, upper=hi,
                                                    bound=_constant_bound(0.9, 0.95))
        assert status.tolist() == [expected] and radius.tolist() == [0.0]
    status, radius, _, _ = stopping.decide_many([60], [100], 100, SIGMA, ALPHA, lower=0.6, upper=0.5,
                                                bound=_constant_bound(0.9, 0.95))
    assert status.tolist() == [stopping.CERTIFY] and radius[0] == pytest.approx(_radius(0.6), rel=1e-12)
    status, radius, _, _ = stopping.decide_many([60], [100], 100, SIGMA, ALPHA, lower=0.6,
                                                upper=math.nextafter(0.5, 0), bound=_constant_bound(0.9, 0.95))
    assert status.tolist() == [stopping.ABSTAIN] and radius.tolist() == [0.0]


def test_reachable_successes_predictive_variance_at_small_budgets():
    """The predictive variance m q (1 - q) (t + 1 + m) / (t + 2) of the docstring, restated with Python's
    statistics module, at budgets small enough that its (t + 1 + m) factor moves the ceiling: 1 of 2 with 27 left
    at gamma = 0.05 predicts 26 (25.20 before the ceiling; kills `t + 1.0` -> `t - 1.0` there: 24.81 -> 25), and
    0 of 1 with 31 left predicts 21 (20.90; kills its `1.0` -> `2.0`: 21.10 -> 22)."""
    z = NormalDist().inv_cdf(1 - 0.05)
    for s, t, n_max, want in ((1, 2, 29, 26), (0, 1, 32, 21)):
        m, q = n_max - t, (s + 0.5) / (t + 1)
        raw = m * q + z * math.sqrt(m * q * (1 - q) * (t + 1 + m) / (t + 2))
        assert math.ceil(raw) == want and want - raw > 0.09
        assert stopping.reachable_successes(s, t, n_max, 0.05, futility_ramp=0.0) == want


def test_decide_passes_its_keywords_on_and_returns_plain_numbers():
    """decide hands prior=, lower=, upper=, bound=, futility= and futility_ramp= to decide_many (kills dropping any
    one of them from its call), certifies the default prediction 0 (kills `prediction: int = 0` -> `= 1`), and
    returns a Python int and float (kills deleting `status, radius = int(status[0]), float(radius[0])`, which
    returned a one-element radius array). Expected values: prior (1, 1) after 20 of 20: M = 1 / (21 p^20), so the
    CS lower end is (alpha / 21)^(1/20); given bounds 0.7 / 0.9 certify sigma PhiInv(0.7); futility by the
    documented predictive quantile (statistics) and the 40-digit CS lower end at n_max."""
    prediction, radius = stopping.decide(20, 20, 20, SIGMA, ALPHA, prior=(1, 1))
    assert type(prediction) is int and type(radius) is float and prediction == 0
    assert radius == pytest.approx(SIGMA * PHI_INV((ALPHA / 21) ** (1 / 20)), rel=1e-8)
    given = stopping.decide(60, 100, 100, SIGMA, ALPHA, prediction=3, lower=0.7, upper=0.9,
                            bound=_constant_bound(0.2, 0.3))
    from_bound = stopping.decide(0, 100, 100, SIGMA, ALPHA, prediction=3, bound=_constant_bound(0.7, 0.9))
    for got in (given, from_bound):
        assert got[0] == 3 and got[1] == pytest.approx(_radius(0.7), rel=1e-12)
    # 40 of 100 with 9,900 left at futility 0.3: gamma = 0.3 from the first look (ramp 0) predicts too few
    # successes to lift the lower end at n_max above 1/2; ramped over the whole budget (gamma = 0.3 * 100 / 10^4)
    # it predicts enough; curtailment alone (no futility) keeps sampling too
    s, t, n_max = 40, 100, 10_000
    for ramp, gamma, want in ((0.0, 0.3, (-1, 0.0)), (1.0, 0.003, "continue")):
        left, q = n_max - t, (s + 0.5) / (t + 1)
        sd = math.sqrt(left * q * (1 - q) * (t + 1 + left) / (t + 2))
        reach = min(left, math.ceil(left * q + NormalDist().inv_cdf(1 - gamma) * sd))
        assert (_cs_end(s + reach, n_max, ALPHA, "lower") > 0.5) == (want == "continue")
        assert stopping.decide(s, t, n_max, SIGMA, ALPHA, futility=0.3, futility_ramp=ramp) == want
    assert _cs_end(40, 100, ALPHA, "upper") > 0.5  # the upper end does not end it early either


def test_checkpoints_of_a_one_sample_budget():
    """n_max = 1 is a budget (checkpoints' `n_max < 1`; kills `n_max <= 1` and `1` -> `2`): its only look is the
    single sample, under either schedule; n_max = 0 is refused by name."""
    assert stopping.checkpoints(1) == [1]
    assert stopping.checkpoints(1, "fixed") == [1]
    assert stopping.checkpoints(1, first=5) == [1]
    with pytest.raises(checks.ArgumentValueError, match="n_max"):
        stopping.checkpoints(0)


def test_run_sequential_looks_at_the_chunks_of_a_fixed_schedule():
    """schedule="fixed" with chunk=250 looks every 250 samples (looks' `checkpoints(..., chunk=chunk)`; kills
    dropping chunk=, which falls back to max(64, n_max // 32) = 64): an image whose every sample votes for its
    class certifies but, with no target radii, samples on to n_max, drawing 250 at a time."""
    calls = []

    def draw(idx, num, start):
        calls.append((start, num))
        return np.full(len(idx), num)

    result = stopping.run_sequential(draw, [4], 1000, SIGMA, ALPHA, None, schedule="fixed", chunk=250, futility=None)
    assert calls == [(0, 250), (250, 250), (500, 250), (750, 250)]
    assert result.samples.tolist() == [1000] and result.prediction.tolist() == [4]
    assert stopping.looks(1000, None, "fixed", None, 1.1, 250) == [250, 500, 750, 1000]


def test_given_looks_must_lie_in_one_to_n_max():
    """Given checkpoints must lie in [1, n_max] (looks' `points[0] < 1 or points[-1] > n_max`; kills `or` ->
    `and`): a look at 0 alone and one past n_max alone are each refused by name; a first look at 1 is fine, and
    n_max is added (kills `points[0] < 1` -> `<= 1` and 1 -> 2)."""
    for points in ([0, 50], [50, 200]):
        with pytest.raises(checks.ArgumentValueError, match="points"):
            stopping.looks(100, points, "geometric", None, 1.1, None)
        with pytest.raises(checks.ArgumentValueError, match="points"):
            stopping.run_sequential(_unanimous, [1], 100, SIGMA, ALPHA, None, points=points)
    assert stopping.looks(100, [50, 1, 50], "geometric", None, 1.1, None) == [1, 50, 100]


def test_run_sequential_checks_alpha_before_drawing():
    """run_sequential refuses a bad level by name before it draws a sample (its `alpha = checks.level("alpha",
    alpha)`; kills deleting it, after which nothing checks alpha when every image abstains without sampling, and
    the first draw happens before the bound refuses it)."""
    calls = []

    def draw(idx, num, start):
        calls.append(num)
        return np.full(len(idx), num)

    for alpha, predictions in ((1.5, [-1]), (0.0, [-1, -1]), (1.5, [2])):
        with pytest.raises(checks.ArgumentValueError, match="alpha"):
            stopping.run_sequential(draw, predictions, 100, SIGMA, alpha, None)
    assert calls == []


def test_run_sequential_hands_its_prior_to_the_confidence_sequence():
    """bound="cs" with prior=(1, 1) uses that prior (run_sequential's `make_bound(..., prior=prior)`; kills
    dropping it, which falls back to Jeffreys'): 20 of 20 at the one look n_max = 20 certifies with the CS lower
    end of a uniform prior, M = 1 / (21 p^20) < 1 / alpha, i.e. p > (alpha / 21)^(1/20) (Jeffreys' is 0.716)."""
    result = stopping.run_sequential(_unanimous, [5], 20, SIGMA, ALPHA, None, bound="cs", prior=(1, 1),
                                     points=[20], futility=None)
    assert result.prediction.tolist() == [5]
    assert result.radius[0] == pytest.approx(SIGMA * PHI_INV((ALPHA / 21) ** (1 / 20)), rel=1e-8)


def _bound_by_look(table):
    """A bound object that gives table[trials] = (lower, upper) (the stopping rule also reads it at n_max)."""
    def bound(successes, trials, level):
        t = np.atleast_1d(trials)
        return (np.array([table[int(v)][0] for v in t], dtype=np.float64),
                np.array([table[int(v)][1] for v in t], dtype=np.float64))
    return bound


def _votes(k):
    """run_sequential's draw: k successes per 100 samples."""
    return lambda idx, num, start: np.full(len(idx), num * k // 100)


def test_run_sequential_decides_on_the_running_intersection_with_its_own_settings():
    """run_sequential's decide_many call gets the running bounds, the bound object and the futility settings
    (kills dropping lower=, upper=, bound=, futility= or futility_ramp= there), and the running upper end is the
    minimum over the looks (kills np.minimum(hi, upper) -> np.maximum). Bounds by look, hand-checked outcomes:
    lower 0.7 then 0.45 certifies sigma PhiInv(0.7) at n_max; with targets 0.25 and 0.5 (thresholds Phi(0.5) and
    Phi(1)) lower 0.55 -> 0.72 under upper 0.75 -> 0.95 stops at the second look (running upper 0.75 < Phi(1))
    with sigma PhiInv(0.72); a bound read 0.6 at n_max keeps an image with no successes going at futility 0.3
    (the default bound would give it up); 40 of 100 at futility 0.3 stops at once with the ramp 0 (as decide)."""
    kw = {"futility": None}
    lower = _bound_by_look({100: (0.7, 0.9), 1000: (0.45, 0.9)})
    res = stopping.run_sequential(_votes(50), [3], 1000, SIGMA, ALPHA, None, bound=lower, points=[100, 1000], **kw)
    assert res.prediction.tolist() == [3] and res.radius[0] == pytest.approx(_radius(0.7), rel=1e-12)
    assert res.lower.tolist() == [0.7] and res.upper.tolist() == [0.9]
    assert [stopping.thresholds([0.25, 0.5], SIGMA)[i] for i in (1, 2)] == pytest.approx(
        [NormalDist().cdf(0.5), NormalDist().cdf(1.0)], rel=1e-14)
    upper = _bound_by_look({100: (0.55, 0.75), 200: (0.72, 0.95), 300: (0.9, 0.95)})
    res = stopping.run_sequential(_votes(50), [3], 300, SIGMA, ALPHA, [0.25, 0.5], bound=upper,
                                  points=[100, 200, 300], **kw)
    assert res.samples.tolist() == [200] and res.upper.tolist() == [0.75]
    assert res.prediction.tolist() == [3] and res.radius[0] == pytest.approx(_radius(0.72), rel=1e-12)
    best = _bound_by_look({100: (0.3, 0.9), 1000: (0.6, 0.9)})
    res = stopping.run_sequential(_votes(0), [3], 1000, SIGMA, ALPHA, None, bound=best, points=[100, 1000],
                                  futility=0.3, futility_ramp=0.0)
    assert res.samples.tolist() == [1000] and res.radius[0] == pytest.approx(_radius(0.6), rel=1e-12)
    for ramp, samples in ((0.0, 100), (1.0, 10_000)):
        res = stopping.run_sequential(_votes(40), [3], 10_000, SIGMA, ALPHA, None, bound="cs",
                                      points=[100, 10_000], futility=0.3, futility_ramp=ramp)
        assert res.samples.tolist() == [samples] and res.prediction.tolist() == [-1]


def test_route_stage_at_the_edges_of_certifying_and_of_the_budget():
    """Routing rules at their edges, with given bounds 0.3 / 0.9 and a bound object read at n_max: a best
    reachable lower end exactly p0 = 1/2 can still certify (certify needs lower >= p0), so the stage goes on under
    both rules, and one ulp below it cannot (route_stage_many's `np.maximum(best_lower, lo) < p0`; kills `<= p0`);
    at t = n_max an uncertified stage that could still have certified is undecided under "abstain" and falls
    through under "fall_through" (`t >= n_max` in both places; kills `t > n_max`, which keeps it sampling past its
    budget, or leaves it undecided under "fall_through")."""
    kw = {"lower": 0.3, "upper": 0.9}
    below = math.nextafter(0.5, 0)
    for rule, stuck in (("abstain", "undecided"), ("fall_through", "fall_through")):
        assert stopping.route_stage(10, 100, 1000, ALPHA, bound=_constant_bound(0.5, 0.9), undecided=rule,
                                    **kw) == "continue"
        assert stopping.route_stage(10, 100, 1000, ALPHA, bound=_constant_bound(below, 0.9), undecided=rule,
                                    **kw) == stuck
        assert stopping.route_stage(500, 1000, 1000, ALPHA, bound=_constant_bound(0.6, 0.9), undecided=rule,
                                    **kw) == stuck


def test_cascade_checks_its_arguments_before_drawing():
    """run_cascade_sequential checks its arguments up front, by name, before any draw: sigmas as a numpy array
    (kills deleting `sigmas = [float(s) for s in sigmas]`, after which `not sigmas` is ambiguous), one sigma <= 0
    among positive ones (kills any(s <= 0) -> all and `<= 0` -> `< 0`: the later per-stage check names "sigma",
    not "sigmas"), an unknown `undecided` rule (kills deleting its checks.choice: the routing refuses it only after
    the selection draws), and float counts n0 / num_images (kills deleting their operator.index)."""
    def draw(idx, stream, num, start):
        raise AssertionError("drew samples")

    for sigmas in (np.array([0.5, 0.5]), [1.0, -0.5], [1.0, 0.0]):
        with pytest.raises(checks.ArgumentValueError, match="^sigmas"):
            stopping.run_cascade_sequential(draw, 2, sigmas, 10, 1000, ALPHA)
    with pytest.raises(checks.ArgumentValueError, match="^undecided"):
        stopping.run_cascade_sequential(draw, 2, [1.0, 0.5], 10, 1000, ALPHA, undecided="maybe")
    for n0, num_images in ((10.0, 2), (10, 2.0)):
        with pytest.raises(TypeError):
            stopping.run_cascade_sequential(draw, num_images, [1.0, 0.5], n0, 1000, ALPHA)


def test_cascade_hands_its_prior_to_the_confidence_sequence():
    """run_cascade_sequential with bound="cs" and prior=(1, 1) uses that prior (its `make_bound(..., prior=prior)`;
    kills dropping it, which falls back to Jeffreys'): one stage (its level is alpha), every vote for class 1,
    one look at n_max = 20: the running lower end is the uniform prior's CS end (alpha / 21)^(1/20), from
    M = 1 / (21 p^20) < 1 / alpha, and the radius is sigma PhiInv of it."""
    result = stopping.run_cascade_sequential(_unanimous_votes(), 1, [SIGMA], 10, 20, ALPHA, None, bound="cs",
                                             prior=(1, 1), points=[20], futility=None)
    lower = (ALPHA / 21) ** (1 / 20)
    assert result.p_lower[0] == pytest.approx(lower, rel=1e-9)
    assert result.prediction.tolist() == [1] and result.radius[0] == pytest.approx(SIGMA * PHI_INV(lower), rel=1e-8)


def test_cascade_samples_are_int64_counts():
    """CascadeResult.samples is int64 [B, L] (_CascadeRun's `self.drawn = np.zeros(shape, dtype=np.int64)`; kills
    dropping the dtype, which returned float64 sample counts): one stage, every vote for class 1, looks 100 and
    1000, no targets: 1000 samples drawn, and none at a stage never entered."""
    result = stopping.run_cascade_sequential(_unanimous_votes(), 1, [1.0, SIGMA], 10, 1000, ALPHA, None,
                                             points=[100, 1000])
    assert result.samples.dtype == np.int64
    assert result.samples.tolist() == [[1000, 0]] and result.prediction.tolist() == [1]


def test_cascade_refuses_a_negative_vote_count_in_one_image():
    """run_cascade_sequential checks every vote count of every image: a row [n + 1, -1] sums to the n samples
    drawn, so only the sign check catches it, and one such row among good ones is refused by name (kills
    np.any(votes < 0) -> np.all in _CascadeRun._draw)."""
    def draw(idx, stream, num, start):
        votes = np.zeros((len(idx), 2), dtype=np.int64)
        votes[:, 1] = num
        votes[0] = [num + 1, -1]
        return votes

    with pytest.raises(checks.ArgumentValueError, match="^draw"):
        stopping.run_cascade_sequential(draw, 2, [SIGMA], 10, 1000, ALPHA, None, points=[100, 1000])


def test_cascade_routes_with_its_own_bound_object():
    """The cascade's routing reads the best reachable lower end from the run's bound object (_CascadeRun.route's
    `route_stage_many(..., bound=self.bound)`; kills dropping it, which reads the default confidence sequence): a
    bound that reads (0.3, 0.9) before n_max and (0.6, 0.9) at n_max keeps a one-stage image routing under
    undecided="fall_through" although only 10 % of its estimation votes go to its class (by the confidence
    sequence it could no longer certify, so it would fall through, out of stages: abstain, at the first look), and
    at n_max the lower end 0.6 certifies sigma PhiInv(0.6), less the margin."""
    def draw(idx, stream, num, start):
        votes = np.zeros((len(idx), 2), dtype=np.int64)
        votes[:, 1] = num if stream == streams.selection(0) else num // 10
        votes[:, 0] = num - votes[:, 1]
        return votes

    bound = _bound_by_look({100: (0.3, 0.9), 1000: (0.6, 0.9)})
    result = stopping.run_cascade_sequential(draw, 1, [SIGMA], 10, 1000, ALPHA, None, bound=bound,
                                             points=[100, 1000], undecided="fall_through")
    assert result.samples.tolist() == [[1000]] and result.prediction.tolist() == [1]
    assert result.radius[0] == pytest.approx(_radius(0.6), rel=1e-12)


def test_cascade_of_no_images_has_int64_counts():
    """With no images nothing is drawn, and the [0, L, 0] count arrays are still int64 like every other run's
    (_CascadeRun.result's `np.zeros(..., dtype=np.int64)` stand-in; kills dropping the dtype)."""
    r = stopping.run_cascade_sequential(_unanimous_votes(), 0, [1.0, SIGMA], 10, 1000, ALPHA, None)
    assert r.counts0.dtype == r.counts.dtype == r.samples.dtype == np.int64
    assert r.counts.shape == (0, 2, 0)


def test_cascade_settles_an_image_at_n_max_while_another_abstains():
    """Without target radii a certified image settles once all its components are at n_max, whatever the other
    images do (_plan's `end.all(axis=1)`; kills `end.all()`, which waits for every image: here the other one
    abstains in the same round and the run ends with the first never settled). A bound read on the vote share:
    all votes -> (0.7, 0.95), half -> (0.5, 0.5), else (0.2, 0.4). Image 0 certifies class 0 at stage 0 (sigma 1)
    and samples it to n_max: radius PhiInv(0.7), less the margin. Image 1 falls through stage 0 (30 % for class 0,
    upper 0.4 < 1/2), certifies class 1 at stage 1 at lower 1/2 exactly, radius 0: it abstains."""
    def bound(successes, trials, level):
        share = np.atleast_1d(successes) / np.maximum(np.atleast_1d(trials), 1)
        return np.where(share >= 1, 0.7, np.where(share == 0.5, 0.5, 0.2)), np.where(
            share >= 1, 0.95, np.where(share == 0.5, 0.5, 0.4))

    def draw(idx, stream, num, start):
        votes = np.zeros((len(idx), 3), dtype=np.int64)
        for row, i in enumerate(idx):
            if stream == streams.selection(0):
                votes[row, 0] = num
            elif stream == streams.estimation(0):
                votes[row, 0] = num if i == 0 else 3 * num // 10
                votes[row, 1] = num - votes[row, 0]
            elif stream == streams.selection(1):
                votes[row, 1] = num
            else:
                votes[row, 1] = num // 2
                votes[row, 0] = num - votes[row, 1]
        return votes

    r = stopping.run_cascade_sequential(draw, 2, [1.0, SIGMA], 10, 1000, ALPHA, None, bound=bound,
                                        points=[100, 1000], futility=None)
    assert r.prediction.tolist() == [0, -1] and r.stage.tolist() == [0, -1]
    assert r.samples.tolist() == [[1000, 0], [100, 100]]
    assert r.radius[0] == pytest.approx(1.0 * PHI_INV(0.7) * (1 - bounds.RADIUS_MARGIN), rel=1e-12)


@pytest.mark.parametrize("budget", [1e5, 1000.0, True])
def test_every_entry_point_names_a_non_integer_sample_count(budget):
    """A budget written 1e5, or True, is refused by name in all five entry points that take n_max, before anything
    is drawn (operator.index's TypeError said "'float' object cannot be interpreted as an integer" and took True for
    1); the cascade names n0 and num_images the same way. The error is msrs's ArgumentTypeError, a TypeError."""
    calls = []

    def draw(*args):
        calls.append(args)
        raise AssertionError("drew samples")

    entry_points = {
        "decide_many": lambda n: stopping.decide_many([60], [100], n, SIGMA, ALPHA),
        "checkpoints": lambda n: stopping.checkpoints(n),
        "run_sequential": lambda n: stopping.run_sequential(draw, [1], n, SIGMA, ALPHA),
        "route_stage_many": lambda n: stopping.route_stage_many([60], [100], n, 0.001),
        "run_cascade_sequential": lambda n: stopping.run_cascade_sequential(draw, 1, [SIGMA], 10, n, ALPHA),
    }
    for name, call in entry_points.items():
        with pytest.raises(checks.ArgumentTypeError, match="^n_max: expected an integer"):
            call(budget)
    for n0, num_images, name in ((budget, 1, "n0"), (10, budget, "num_images")):
        with pytest.raises(checks.ArgumentTypeError, match=f"^{name}: expected an integer"):
            stopping.run_cascade_sequential(draw, num_images, [SIGMA], n0, 1000, ALPHA)
    assert calls == []


def test_cascade_refuses_a_budget_of_zero_by_name():
    """n_max, n0 and num_images have their lower limits, each named (n0 >= 1: the selection needs a sample;
    num_images >= 0; n_max >= 1)."""
    for kw, name in (({"n0": 0}, "n0"), ({"num_images": -1}, "num_images"), ({"n_max": 0}, "n_max")):
        args = {"num_images": 1, "n0": 10, "n_max": 1000} | kw
        with pytest.raises(checks.ArgumentValueError, match=f"^{name}: must be >= "):
            stopping.run_cascade_sequential(_unanimous_votes(), args["num_images"], [SIGMA], args["n0"],
                                            args["n_max"], ALPHA)


def test_every_entry_point_refuses_a_budget_of_zero_and_takes_one_sample():
    """n_max >= 1 in all five entry points, by name (a budget of 0 samples cannot certify anything: decide_many
    and route_stage_many would divide their look by it), and a budget of one sample is a valid, if useless, run:
    the only look is the final one, where a unanimous single vote is still below any usual level's bound."""

    def draw(idx, num, start):
        return _unanimous(idx, num, start)

    entry_points = {
        "decide_many": lambda n: stopping.decide_many([0], [0], n, SIGMA, ALPHA),
        "checkpoints": lambda n: stopping.checkpoints(n),
        "run_sequential": lambda n: stopping.run_sequential(draw, [1], n, SIGMA, ALPHA),
        "route_stage_many": lambda n: stopping.route_stage_many([0], [0], n, 0.001),
        "run_cascade_sequential": lambda n: stopping.run_cascade_sequential(_unanimous_votes(), 1, [SIGMA], 10, n,
                                                                            ALPHA),
    }
    # with the looks given, the two runners check n_max themselves (else the looks' check would name `points`)
    entry_points["run_sequential, looks given"] = lambda n: stopping.run_sequential(draw, [1], n, SIGMA, ALPHA,
                                                                                    points=[1])
    entry_points["run_cascade_sequential, looks given"] = lambda n: stopping.run_cascade_sequential(
        _unanimous_votes(), 1, [SIGMA], 10, n, ALPHA, points=[1])
    for name, call in entry_points.items():
        with pytest.raises(checks.ArgumentValueError, match="^n_max: must be >= 1"):
            call(0)
    assert stopping.checkpoints(1) == [1]
    status, radius, _, _ = stopping.decide_many([1], [1], 1, SIGMA, ALPHA)
    assert status.tolist() == [stopping.ABSTAIN] and radius.tolist() == [0.0]
    assert stopping.route_stage_many([1], [1], 1, 0.001).tolist() == [stopping.ROUTE_UNDECIDED]
    result = stopping.run_sequential(draw, [1], 1, SIGMA, ALPHA)
    assert len(result) == 1
