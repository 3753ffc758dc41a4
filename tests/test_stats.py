"""msrs.stats and msrs.cascade on fixed counts, against bounds computed independently here: Clopper-Pearson by
bisection on exact binomial tail sums (50-digit decimal arithmetic, no scipy), the binomial test's p-value as an
exact sum, Goodman's intervals with statsmodels; and against a transcription of the public multi-scale code
(jh-jeong/smoothing-multiscale) for the "paper" schedule."""
from __future__ import annotations

import math
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.proportion import multinomial_proportions_confint, proportion_confint

from msrs import bounds, decisions

PPF = sps.norm.ppf
CASES = [(0, 10), (1, 10), (5, 10), (9, 10), (10, 10), (0, 1), (1, 1), (73, 100), (99_990, 100_000), (1, 100_000)]


# ------------------------------------------------------------------ exact binomial arithmetic (independent of scipy)
DIGITS = 50


def binomial_tail(k: int, n: int, p: Decimal, upper: bool) -> Decimal:
    """P[X >= k] (upper) or P[X <= k] for X ~ Bin(n, p), summed exactly from the shorter end in DIGITS-digit decimal
    arithmetic: consecutive terms C(n, j) p^j q^(n-j) follow from one another by the ratio (n - j) / (j + 1) p / q."""
    q = 1 - p
    if upper and k <= 0 or not upper and k >= n:
        return Decimal(1)
    if upper and k > n or not upper and k < 0:
        return Decimal(0)
    if p == 0 or q == 0:  # a point mass at 0 or n
        at = 0 if p == 0 else n
        return Decimal(1) if (at >= k if upper else at <= k) else Decimal(0)
    low_side = not upper  # sum j = 0..k, or j = k..n
    terms = k + 1 if low_side else n - k + 1
    if terms > n // 2 + 1:  # the other end is shorter: 1 - the complement
        return 1 - binomial_tail(k - 1 if upper else k + 1, n, p, not upper)
    total = Decimal(0)
    if low_side:  # j = 0, 1, ..., k
        term = q ** n
        for j in range(k + 1):
            total += term
            term = term * (n - j) / (j + 1) * p / q
    else:  # j = n, n - 1, ..., k
        term = p ** n
        for j in range(n, k - 1, -1):
            total += term
            term = term * j / (n - j + 1) * q / p
    return total


def bisect_probability(increasing_in_p, target: Decimal) -> float:
    """The p in [0, 1] where an increasing function of p crosses target, to a relative 1e-18 (far below a double's
    rounding, so the comparisons below measure msrs's error alone)."""
    lo, hi = Decimal(0), Decimal(1)
    while hi - lo > hi * Decimal("1e-18"):
        mid = (lo + hi) / 2
        if increasing_in_p(mid) < target:
            lo = mid
        else:
            hi = mid
    return float((lo + hi) / 2)


def shrunk(radius: float, rel: float = 1e-12):
    """The radius msrs reports for an exact radius: rounded toward zero by bounds.RADIUS_MARGIN (docs/CERTIFICATES.md),
    to within rel of that."""
    return pytest.approx(radius * (1 - bounds.RADIUS_MARGIN), rel=rel, abs=1e-15)


def exact_cp_lower(k: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson lower bound: the p with P_p[X >= k] = alpha (0 when k = 0)."""
    if k == 0:
        return 0.0
    with localcontext() as ctx:
        ctx.prec = DIGITS
        return bisect_probability(lambda p: binomial_tail(k, n, p, upper=True), Decimal(alpha))


def exact_cp_upper(k: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson upper bound: the p with P_p[X <= k] = alpha (1 when k = n)."""
    if k == n:
        return 1.0
    with localcontext() as ctx:
        ctx.prec = DIGITS
        return bisect_probability(lambda p: -binomial_tail(k, n, p, upper=False), -Decimal(alpha))


def exact_binomial_pvalue(k: int, n: int, p: Fraction) -> float:
    """Two-sided exact binomial test: the probability, under p, of every outcome no more likely than k.
    For p = 1/2 the outcomes are those at least as far from n / 2 as k (the pmf is symmetric and unimodal), summed
    from the short end; otherwise every pmf is compared exactly in rationals (small n only)."""
    if p == Fraction(1, 2):
        far = max(k, n - k)
        if 2 * far == n:
            return 1.0
        with localcontext() as ctx:
            ctx.prec = DIGITS
            return float(min(Decimal(1), 2 * binomial_tail(far, n, Decimal(1) / 2, upper=True)))
    pmf = [math.comb(n, j) * p ** j * (1 - p) ** (n - j) for j in range(n + 1)]
    return float(min(Fraction(1), sum(m for m in pmf if m <= pmf[k])))


# (n_a, n): the edges k = 0 and k = n, tiny and large n (10^5), both ends of the large-n range
EXACT_CASES = [(0, 10), (1, 10), (5, 10), (9, 10), (10, 10), (0, 1), (1, 1), (73, 100), (0, 100_000), (1, 100_000),
               (431, 100_000), (99_990, 100_000), (100_000, 100_000)]


def test_exact_helpers_against_closed_forms():
    """The bisection helpers themselves, where the answer is closed-form: k = n gives alpha^(1/n), k = 0 gives
    1 - alpha^(1/n); a one-draw bound is alpha or 1 - alpha; the tails of Bin(4, 1/2) are sixteenths."""
    for n in (1, 7, 1000):
        assert exact_cp_lower(n, n, 0.05) == pytest.approx(0.05 ** (1 / n), rel=1e-14)
        assert exact_cp_upper(0, n, 0.05) == pytest.approx(1 - 0.05 ** (1 / n), rel=1e-14)
    assert exact_cp_lower(1, 1, 0.2) == pytest.approx(0.2, rel=1e-15)
    assert exact_cp_upper(0, 1, 0.2) == pytest.approx(0.8, rel=1e-15)
    with localcontext() as ctx:
        ctx.prec = DIGITS
        assert [binomial_tail(k, 4, Decimal("0.5"), upper=True) * 16 for k in range(6)] == [16, 15, 11, 5, 1, 0]
        assert [binomial_tail(k, 4, Decimal("0.5"), upper=False) * 16 for k in range(-1, 5)] == [0, 1, 5, 11, 15, 16]
    assert exact_binomial_pvalue(0, 4, Fraction(1, 2)) == 2 / 16 and exact_binomial_pvalue(1, 4, Fraction(1, 2)) == 10 / 16


# ------------------------------------------------------------------ bounds
@pytest.mark.parametrize("alpha", [1e-10, 0.001, 0.05, 0.3])
def test_clopper_pearson_matches_exact_binomial_bisection(alpha):
    for n_a, n in EXACT_CASES:
        lower, upper = exact_cp_lower(n_a, n, alpha), exact_cp_upper(n_a, n, alpha)
        assert bounds.clopper_pearson_lower(n_a, n, alpha) == pytest.approx(lower, rel=1e-11, abs=0), (n_a, n)
        assert bounds.clopper_pearson_upper(n_a, n, alpha) == pytest.approx(upper, rel=1e-11, abs=0), (n_a, n)
        two_sided = (exact_cp_lower(n_a, n, alpha / 2), exact_cp_upper(n_a, n, alpha / 2))
        assert bounds.clopper_pearson_interval(n_a, n, alpha) == (pytest.approx(two_sided[0], rel=1e-11, abs=0),
                                                                 pytest.approx(two_sided[1], rel=1e-11, abs=0))


def test_clopper_pearson_known_answers():
    for n in (1, 7, 100, 100_000):
        for alpha in (0.001, 0.1):
            lower = bounds.clopper_pearson_lower(n, n, alpha)
            assert lower == pytest.approx(alpha ** (1 / n), rel=1e-12)
            assert lower < 1.0  # never 1 for a finite n: the radius stays finite
            assert bounds.clopper_pearson_upper(0, n, alpha) == pytest.approx(1 - alpha ** (1 / n), rel=1e-9, abs=0)
            assert bounds.clopper_pearson_lower(0, n, alpha) == 0.0
            assert bounds.clopper_pearson_upper(n, n, alpha) == 1.0
    # vectorised
    n_a = np.array([0, 3, 10])
    np.testing.assert_allclose(bounds.clopper_pearson_lower(n_a, 10, 0.05), [exact_cp_lower(k, 10, 0.05) for k in n_a],
                               rtol=1e-12)


def test_bound_argument_errors():
    with pytest.raises(ValueError, match="n_a, n"):
        bounds.clopper_pearson_lower(11, 10, 0.05)
    with pytest.raises(ValueError, match="n_a, n"):
        bounds.clopper_pearson_lower(0, 0, 0.05)
    with pytest.raises(ValueError, match="alpha"):
        bounds.clopper_pearson_lower(1, 10, 0.0)
    with pytest.raises(ValueError, match="alpha"):
        bounds.goodman_bounds([1, 2], 1.0)
    with pytest.raises(ValueError, match="counts"):
        bounds.goodman_bounds([5], 0.1)


@pytest.mark.parametrize("counts", [[5, 3, 2], [100, 0, 0, 7], [9000, 500, 300, 200], [1, 1], [0, 40, 60]])
@pytest.mark.parametrize("alpha", [0.002, 0.1])
def test_goodman_matches_statsmodels(counts, alpha):
    expected = multinomial_proportions_confint(counts, alpha=alpha, method="goodman")
    np.testing.assert_allclose(bounds.goodman_bounds(counts, alpha), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("n_a, n", [(5, 10), (9, 10), (50, 60), (0, 3), (3, 3), (0, 1), (7, 14), (0, 100_000),
                                    (100_000, 100_000), (49_500, 100_000), (50_400, 100_000), (99_990, 100_000)])
def test_binomial_pvalue_matches_the_exact_sum(n_a, n):
    expected = exact_binomial_pvalue(n_a, n, Fraction(1, 2))
    assert bounds.binomial_pvalue(n_a, n) == pytest.approx(expected, rel=1e-11, abs=1e-300)
    assert bounds.binomial_pvalue(n_a, n, 0.5) == bounds.binomial_pvalue(n_a, n)


@pytest.mark.parametrize("n_a", [0, 1, 3, 6, 11, 20])
def test_binomial_pvalue_other_p(n_a):
    """p = 0.3, n = 20: the pmf is not symmetric, so "no more likely than n_a" is not a distance from the mean."""
    assert bounds.binomial_pvalue(n_a, 20, 0.3) == pytest.approx(exact_binomial_pvalue(n_a, 20, Fraction(3, 10)),
                                                                rel=1e-11, abs=0)


def test_radius():
    assert bounds.radius(0.5, 0.5) == 0.0
    assert bounds.radius(0.5, 0.9) == shrunk(0.5 * PPF(0.9))
    assert bounds.radius(0.25, 0.95, p0=0.7) == shrunk(0.25 * (PPF(0.95) - PPF(0.7)))
    assert bounds.radius(1.0, 0.6, p0=0.7) < 0
    np.testing.assert_allclose(bounds.radius(np.array([0.25, 0.5]), np.array([0.8, 0.99])),
                               [0.25 * PPF(0.8), 0.5 * PPF(0.99)])
    for bad in (1.0, 1.2, -0.1, math.nan):
        with pytest.raises(ValueError, match="p_lower"):
            bounds.radius(0.5, bad)
    with pytest.raises(ValueError, match="p0"):
        bounds.radius(0.5, 0.9, p0=0.4)


# ------------------------------------------------------------------ Cohen CERTIFY / PREDICT
def cohen_reference(counts0, counts, alpha, sigma, p0=0.5):
    """Cohen et al. CERTIFY, independently: the exact one-sided lower bound found by bisection."""
    c_a = int(np.argmax(counts0))
    p_lower = exact_cp_lower(int(counts[c_a]), int(sum(counts)), alpha)
    return (-1, 0.0) if p_lower <= p0 else (c_a, sigma * (PPF(p_lower) - PPF(p0)))


@pytest.mark.parametrize("p0", [0.5, 0.6, 0.9])
def test_cohen_certify_from_counts(p0):
    cases = [([0, 10, 0], [3, 90, 7]), ([10, 0], [0, 100]), ([10, 0], [100, 0]), ([4, 6, 0], [40, 45, 15]),
             ([0, 0, 100], [0, 12, 99_988]), ([1, 0, 0], [0, 5, 5])]
    for counts0, counts in cases:
        for alpha, sigma in [(0.001, 0.25), (0.1, 1.0)]:
            d = decisions.cohen_certify_from_counts(np.array(counts0), np.array(counts), alpha, sigma, p0)
            prediction, radius = cohen_reference(counts0, counts, alpha, sigma, p0)
            assert d.prediction == prediction
            assert d.radius == shrunk(radius)
            assert d.stage == (0 if prediction >= 0 else -1)


def test_cohen_certify_edge_cases():
    # nA = n: the radius is sigma * PhiInv(alpha ** (1 / n)) exactly; nA = 0 abstains.
    d = decisions.cohen_certify_from_counts(np.array([0, 5]), np.array([0, 1000]), 0.001, 0.5)
    assert (d.prediction, d.radius) == (1, shrunk(0.5 * PPF(0.001 ** (1 / 1000))))
    d = decisions.cohen_certify_from_counts(np.array([0, 5]), np.array([1000, 0]), 0.001, 0.5)
    assert (d.prediction, d.radius) == (-1, 0.0)
    assert d.p_lower == 0.0
    # p0 > 0.5: a bound between 0.5 and p0 abstains
    d = decisions.cohen_certify_from_counts(np.array([0, 5]), np.array([30, 70]), 0.05, 0.5, p0=0.8)
    assert d.prediction == -1 and 0.5 < d.p_lower < 0.8


def test_cohen_predict_from_counts():
    assert decisions.cohen_predict_from_counts(np.array([5, 5, 0]), 0.01) == -1  # a tie always abstains
    assert decisions.cohen_predict_from_counts(np.array([0, 50, 50]), 0.5) == -1
    assert decisions.cohen_predict_from_counts(np.array([0, 3, 60]), 0.001) == 2
    assert decisions.cohen_predict_from_counts(np.array([40, 60]), 0.01) == -1  # p-value 0.057
    assert decisions.cohen_predict_from_counts(np.array([40, 60]), 0.1) == 1


# ------------------------------------------------------------------ the cascade
def public_reduce_counts(counts, c):
    """jh-jeong/smoothing-multiscale third_party/core_mdds.py SmoothedConfidence._reduce_counts, transcribed."""
    counts = np.array(counts).copy()
    nc = counts[c]
    counts[c] = 0
    r_counts, reg = [nc], 0
    for ci in np.argsort(counts)[::-1]:
        ni = counts[ci]
        if ni >= 5:
            r_counts.append(ni)
        else:
            reg += ni
            if reg >= 5:
                r_counts.append(reg)
                reg = 0
    if reg > 0:
        r_counts[-1] += reg
    return np.array(r_counts, dtype=int)


def public_off_class_bound(counts, c, alpha):
    """SmoothedConfidence.off_class_upper_radius's pB_high, with the two-group rule taken for class c (the public
    code takes it for its own cAHat; msrs documents that it uses the certified class)."""
    rcounts = public_reduce_counts(counts, c)
    if len(rcounts) <= 2:
        return 1.0 - proportion_confint(counts[c], sum(counts), alpha=2 * alpha, method="beta")[0]
    return multinomial_proportions_confint(rcounts, alpha=2 * alpha)[1:, 1].max()


def public_cascade(counts0, counts, sigmas, alpha, p0):
    """certify.py's stage loop (alpha / (stage + 1)), R <= 0 -> abstain as in SCIENCE.md."""
    earlier = []
    for stage, sigma in enumerate(sigmas):
        a = alpha / (stage + 1)
        c_a = int(np.argmax(counts0[stage]))
        lo, hi = proportion_confint(counts[stage][c_a], sum(counts[stage]), alpha=2 * a, method="beta")
        if lo >= p0:
            radius = sigma * (PPF(lo) - PPF(p0))
            neg = max([-100.0] + [sigmas[j] * (PPF(public_off_class_bound(counts[j], c_a, a)) - PPF(p0))
                                  for j in earlier])
            radius = min(radius, -neg)
            return (c_a, radius, stage) if radius > 0 else (-1, 0.0, -1)
        if hi >= p0:
            return -1, 0.0, -1
        earlier.append(stage)
    return -1, 0.0, -1


def random_cascade_counts(rng, num_stages, num_classes, n0, n):
    probs = rng.dirichlet(np.full(num_classes, 0.3), size=num_stages)
    # the last stage often certifies
    probs[-1] = 0.5 * probs[-1] + 0.5 * np.eye(num_classes)[rng.integers(num_classes)]
    counts0 = np.stack([rng.multinomial(n0, p) for p in probs])
    counts = np.stack([rng.multinomial(n, p) for p in probs])
    return counts0, counts


def test_pool_groups_matches_public_reduce_counts():
    rng = np.random.default_rng(0)
    for _ in range(300):
        k = int(rng.integers(2, 12))
        counts = rng.multinomial(int(rng.integers(1, 60)), rng.dirichlet(np.full(k, 0.3)))
        c = int(rng.integers(k))
        groups = decisions.pool_groups(counts, c)
        assert sorted(sum(groups, [])) == [i for i in range(k) if i != c]  # a partition of the other classes
        totals = sorted(int(counts[g].sum()) for g in groups)
        expected = public_reduce_counts(counts, c)
        if len(expected) > 1:  # the public code folds a leftover pool into cA's count when no group is formed
            assert totals == sorted(expected[1:].tolist())
        else:
            assert len(groups) == 1


@pytest.mark.parametrize("p0", [0.5, 0.6])
def test_paper_schedule_matches_public_code(p0):
    rng = np.random.default_rng(1)
    sigmas = [1.0, 0.5, 0.25]
    decided = 0
    for _ in range(300):
        counts0, counts = random_cascade_counts(rng, 3, int(rng.integers(2, 11)), 100, 2000)
        d = decisions.cascade_certify_from_counts(counts0, counts, sigmas, 0.001, p0, schedule="paper")
        prediction, radius, stage = public_cascade(counts0, counts, sigmas, 0.001, p0)
        assert (d.prediction, d.stage) == (prediction, stage)
        assert d.radius == shrunk(radius, rel=1e-10)
        decided += prediction >= 0 and stage > 0
    assert decided > 30  # the off-class bounds were exercised


def test_union_schedule_levels_sum_to_alpha():
    for num_stages in (1, 2, 3, 5):
        cert, off = decisions.schedule_levels(0.01, num_stages, "union")
        # the statements a certificate may rest on: a lower bound per stage, an off-class bound per stage but the last
        assert cert.sum() + off[: num_stages - 1, 0].sum() == pytest.approx(0.01, rel=1e-12)
    cert, off = decisions.schedule_levels(0.01, 3, "paper")
    np.testing.assert_allclose(cert, [0.01, 0.005, 0.01 / 3])
    assert off[0, 2] == off[1, 2] == pytest.approx(0.01 / 3)
    with pytest.raises(ValueError, match="alpha_schedule"):
        decisions.schedule_levels(0.01, 3, "bonferroni")


def test_union_single_stage_is_cohen():
    """One stage: the cascade is Cohen's CERTIFY (itself checked against the exact bound above)."""
    rng = np.random.default_rng(2)
    for _ in range(100):
        counts0, counts = random_cascade_counts(rng, 1, 4, 50, 500)
        d = decisions.cascade_certify_from_counts(counts0, counts, [0.5], 0.01)
        cohen = decisions.cohen_certify_from_counts(counts0[0], counts[0], 0.01, 0.5)
        assert (d.prediction, d.radius, d.p_lower) == (cohen.prediction, cohen.radius, cohen.p_lower)
    prediction, radius = cohen_reference(counts0[0], counts[0], 0.01, 0.5)  # the last one, independently
    assert (d.prediction, d.radius) == (prediction, shrunk(radius))


def test_union_cascade_known_groups():
    """Stage 0 falls through, stage 1 certifies class 1; the off-class bound of stage 0, computed here by hand:
    selection counts pool classes 3..6 (fewer than 5 selection votes each, 5 together) into one group and class 7
    (0 votes) into the last group -> groups {0}, {2}, {3, 4, 5, 6, 7}."""
    alpha, sigmas, p0 = 0.01, [1.0, 0.25], 0.5
    counts0 = np.array([[30, 25, 40, 2, 1, 1, 1, 0], [0, 100, 0, 0, 0, 0, 0, 0]])
    counts = np.array([[1500, 1300, 1900, 150, 50, 40, 60, 0], [3, 4980, 10, 3, 2, 1, 1, 0]])
    d = decisions.cascade_certify_from_counts(counts0, counts, sigmas, alpha, p0)
    level = alpha / 4  # union, L = 2: the cert and off-class levels of stage 0 (alpha / (2L)); stage 1 gets alpha / 2
    n = counts[0].sum()
    exact = max(exact_cp_upper(t, int(n), level / 3) for t in (1500, 1900, 300))
    p_b = max(exact, public_off_class_bound(counts[0], 1, level))
    p_lower = exact_cp_lower(4980, 5000, alpha / 2)
    expected = min(0.25 * PPF(p_lower), -1.0 * PPF(p_b))
    assert (d.prediction, d.stage) == (1, 1)
    assert d.radius == shrunk(expected)
    assert d.radius < 0.25 * PPF(p_lower)  # the off-class bound binds here


def test_union_two_groups_uses_one_minus_lower_bound():
    counts0 = np.array([[60, 40, 0], [0, 100, 0]])
    counts = np.array([[580, 420, 0], [0, 1000, 0]])
    d = decisions.cascade_certify_from_counts(counts0, counts, [1.0, 0.5], 0.1, 0.7)
    # stage 0: CP interval of class 0 (580 / 1000) at 2 * 0.025 lies below 0.7 -> falls through; the groups other
    # than class 1 are {0, 2} (class 2 has no selection vote), a single group: pB = 1 - CP_lower(420) at 0.025,
    # and the paper's pooling on the estimation counts gives the same single group.
    p_b = 1 - exact_cp_lower(420, 1000, 0.025)
    p_lower = exact_cp_lower(1000, 1000, 0.05)
    expected = min(0.5 * (PPF(p_lower) - PPF(0.7)), -1.0 * (PPF(p_b) - PPF(0.7)))
    assert (d.prediction, d.stage) == (1, 1)
    assert d.radius == shrunk(expected)


def test_cascade_outcomes():
    sigmas = [1.0, 0.5]
    # stage 0 certifies: the later stage's counts are never looked at
    d = decisions.cascade_certify_from_counts(np.array([[0, 100], [0, 0]]), np.array([[5, 995], [0, 0]]), sigmas, 0.01)
    assert (d.prediction, d.stage, d.last) == (1, 0, 0)
    # undecided at stage 0 (the interval contains 0.5): abstain without looking further
    d = decisions.cascade_certify_from_counts(np.array([[50, 50], [0, 0]]), np.array([[500, 500], [0, 0]]), sigmas, 0.01)
    assert (d.prediction, d.stage, d.last) == (-1, -1, 0)
    # every stage falls through: abstain at the last stage
    c0 = np.array([[40, 30, 30], [40, 30, 30]])
    c = np.array([[400, 300, 300], [400, 300, 300]])
    d = decisions.cascade_certify_from_counts(c0, c, sigmas, 0.01)
    assert (d.prediction, d.stage, d.last) == (-1, -1, 1)
    # stage 1 certifies class 1 but stage 0 is nearly confident in class 0: R <= 0 -> abstain
    c0 = np.array([[48, 2, 50], [0, 100, 0]])
    c = np.array([[4700, 200, 4100], [0, 1000, 0]])
    d = decisions.cascade_certify_from_counts(c0, c, sigmas, 0.01)
    assert (d.prediction, d.radius, d.stage, d.last) == (-1, 0.0, -1, 1)
    with pytest.raises(ValueError, match="sigmas"):
        decisions.cascade_certify_from_counts(c0, c, [0.5, 1.0], 0.01)
    with pytest.raises(ValueError, match="counts0, counts"):
        decisions.cascade_certify_from_counts(c0, c[:1], sigmas, 0.01)


# ------------------------------------------------------------------ found by mutation testing (scripts/mutation.py)
def test_decision_vectors_checked_and_lists_accepted():
    """Every bad count vector is refused by name (one violated condition at a time), lists work like arrays, and a
    Decision cannot be altered after the fact."""
    bad = [np.array([[3, 4]]), np.array([7]), np.array([3.0, 4.0]), np.array([5, -1])]
    for counts in bad:
        with pytest.raises(ValueError, match="counts"):
            decisions.cohen_certify_from_counts(np.array([1, 2]), counts, 0.01, 0.5)
        with pytest.raises(ValueError, match="counts"):
            decisions.cohen_predict_from_counts(counts, 0.01)
    d = decisions.cohen_certify_from_counts([0, 5], [2, 98], 0.01, 0.5)  # plain lists
    prediction, radius = cohen_reference([0, 5], [2, 98], 0.01, 0.5)
    assert (d.prediction, d.stage, d.last) == (prediction, 0, 0) and d.radius == shrunk(radius)
    assert decisions.cohen_certify_from_counts([5, 0], [2, 98], 0.01, 0.5).last == 0  # abstained at stage 0
    with pytest.raises(AttributeError):  # frozen: a certificate is not edited after it is made
        d.radius = 2 * d.radius


def test_cohen_predict_boundaries():
    """No votes abstains; p-value == alpha predicts (Cohen's PREDICT returns cA when p-value <= alpha): 2 of 2 votes
    has p-value 2 / 2^2 = 1/2 exactly."""
    assert decisions.cohen_predict_from_counts(np.array([0, 0, 0]), 0.01) == -1
    assert exact_binomial_pvalue(2, 2, Fraction(1, 2)) == 0.5
    assert decisions.cohen_predict_from_counts(np.array([0, 2, 0]), 0.5) == 1
    assert decisions.cohen_predict_from_counts(np.array([0, 2, 0]), 0.4999) == -1


def test_schedule_levels_shapes():
    for schedule in decisions.SCHEDULES:
        for num_stages in (1, 3):
            cert, off = decisions.schedule_levels(0.01, num_stages, schedule)
            assert cert.shape == (num_stages,) and off.shape == (num_stages, num_stages)


def documented_pool_groups(basis, exclude, min_count=decisions.POOL_MIN):
    """pool_groups' documented rule in plain Python: classes by decreasing count, ties by class index."""
    groups, pool, pooled = [], [], 0
    for c in sorted(range(len(basis)), key=lambda c: (-basis[c], c)):
        if c == exclude:
            continue
        if basis[c] >= min_count:
            groups.append([c])
            continue
        pool, pooled = pool + [c], pooled + basis[c]
        if pooled >= min_count:
            groups, pool, pooled = groups + [pool], [], 0
    if pool:
        groups = groups[:-1] + [groups[-1] + pool] if groups else [pool]
    return groups


def test_pool_groups_ties_follow_class_order():
    """Many tied counts (K = 40) and counts of exactly min_count (a group of their own): the grouping is the
    documented one, ties by class index (not a sort's whim)."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        basis = rng.integers(0, 7, size=40)  # ties, and counts of exactly POOL_MIN
        exclude = int(rng.integers(40))
        assert decisions.pool_groups(basis, exclude) == documented_pool_groups(basis.tolist(), exclude)


def test_stage_outcome_at_the_threshold():
    """The rule at its edges, where the bounds are exactly 1/2: 2 of 2 votes, two-sided at 2 * 0.25, has lower end
    0.25^(1/2) = 0.5 (certify: p_lower >= p0); 0 of 2 has upper end 1 - 0.25^(1/2) = 0.5 (undecided: falling
    through needs p_upper < p0). p0 defaults to 1/2."""
    assert exact_cp_lower(2, 2, 0.25) == pytest.approx(0.5, abs=1e-15)
    assert decisions.stage_outcome(np.array([0, 1]), np.array([0, 2]), 0.25) == ("certify", 1, 0.5)
    assert decisions.stage_outcome(np.array([0, 1]), np.array([2, 0]), 0.25) == ("undecided", 1, 0.0)
    outcome, c_a, p_lower = decisions.stage_outcome(np.array([0, 1]), np.array([0, 3]), 0.25)
    assert (outcome, c_a) == ("certify", 1) and p_lower == pytest.approx(exact_cp_lower(3, 3, 0.25), rel=1e-12)


def test_exact_off_class_upper_is_the_largest_group_bound():
    """Groups pooled on the selection counts {0}, {2}, {3, 4} (exclude 1): the largest exact upper bound over them
    at level / 3, computed here by bisection; the smallest group bound would be far lower."""
    counts0 = np.array([30, 50, 20, 3, 2])
    counts = np.array([300, 500, 150, 30, 20])
    assert decisions.pool_groups(counts0, 1) == [[0], [2], [3, 4]]
    per_group = [exact_cp_upper(t, 1000, 0.01 / 3) for t in (300, 150, 50)]
    got = decisions.exact_off_class_upper(counts0, counts, 1, 0.01)
    assert got == pytest.approx(max(per_group), rel=1e-11) and got > min(per_group) + 0.1


def test_cascade_takes_lists_and_refuses_equal_sigmas():
    counts0, counts = [[0, 100], [0, 0]], [[5, 995], [0, 0]]
    d = decisions.cascade_certify_from_counts(counts0, counts, [1.0, 0.5], 0.01)
    p_lower = exact_cp_lower(995, 1000, 0.01 / 4)  # union, L = 2: stage 0's level alpha / (2L)
    assert (d.prediction, d.stage) == (1, 0) and d.radius == shrunk(1.0 * PPF(p_lower))
    with pytest.raises(ValueError, match="sigmas"):
        decisions.cascade_certify_from_counts(counts0, counts, [0.5, 0.5], 0.01)


def test_cascade_abstains_at_radius_zero():
    """R <= 0 abstains: one stage at alpha = 0.25 with 2 of 2 votes has p_lower = 0.25^(1/2) = 0.5 = p0, so R = 0."""
    d = decisions.cascade_certify_from_counts([[0, 1]], [[0, 2]], [0.5], 0.25)
    assert (d.prediction, d.radius, d.stage, d.last) == (-1, 0.0, -1, 0) and d.p_lower == 0.5
# ---------------------------------------------------------------- floating point: the radius is rounded toward zero
def exact_radius(k: int, n: int, alpha: float, sigma: float):
    """sigma * PhiInv(Clopper-Pearson lower) in 40-digit arithmetic (mpmath), independent of scipy: the lower end
    is alpha^(1/n) when k = n, else the root of the regularised incomplete beta I_p(k, n - k + 1) = alpha found by
    bisection; PhiInv through erfinv."""
    import mpmath
    with mpmath.workdps(40):
        if k == n:
            lo = mpmath.mpf(alpha) ** (mpmath.mpf(1) / n)
        else:
            lo, hi = mpmath.mpf(0), mpmath.mpf(1)
            for _ in range(140):  # to ~1e-42: P[X >= k] = I_p(k, n - k + 1) increases in p
                mid = (lo + hi) / 2
                below = mpmath.betainc(k, n - k + 1, 0, mid, regularized=True) < alpha
                lo, hi = (mid, hi) if below else (lo, mid)
        return mpmath.mpf(sigma) * mpmath.sqrt(2) * mpmath.erfinv(2 * lo - 1)


FP_CASES = [(k, n, alpha, sigma) for n, ks in ((100, (60, 87, 99, 100)), (1000, (512, 900, 999, 1000)),
                                               (100_000, (100_000,)), (10**7, (10**7,)))
            for k in ks for alpha in (0.001, 0.05) for sigma in (0.12, 0.25, 0.5, 1.0)]


def test_radius_never_exceeds_the_exact_radius():
    """Voracek & Hein (2023): floating point can enlarge a certificate. Every radius msrs reports, from Cohen's rule
    and the cascade's first stage, is at most the 40-digit radius of the same counts, and at most RADIUS_MARGIN
    (relative) below it; without the rounding toward zero, about half of these cases come out an ulp too large."""
    for k, n, alpha, sigma in FP_CASES:
        exact = exact_radius(k, n, alpha, sigma)
        bound = float(exact)
        cohen = decisions.cohen_certify_from_counts(np.array([0, 10]), np.array([n - k, k]), alpha, sigma).radius
        cascade = decisions.cascade_certify_from_counts([[0, 10]], [[n - k, k]], [sigma], alpha).radius
        for got in (cohen, cascade):
            if bound <= 0:  # abstains
                assert got == 0.0
                continue
            assert got <= exact, f"radius {got!r} > exact {bound!r} for {k}/{n} at alpha {alpha}, sigma {sigma}"
            assert got >= exact * (1 - 2 * bounds.RADIUS_MARGIN), (k, n, alpha, sigma, got, bound)


def test_cascade_off_class_term_rounds_toward_zero():
    """The cascade's min with an off-class radius -r_j = -sigma_j * (PhiInv(pB_upper) - PhiInv(p0)) is rounded toward
    zero too: never above its exact value."""
    import mpmath
    for p_b in (0.001, 0.01, 0.2, 0.4999):
        for sigma in (0.25, 0.5, 1.0):
            with mpmath.workdps(40):
                exact = -mpmath.mpf(sigma) * mpmath.sqrt(2) * mpmath.erfinv(2 * mpmath.mpf(p_b) - 1)
            assert -bounds.signed_radius(sigma, p_b) <= exact


# ------------------------------------------------------------ found by mutation testing: msrs/bounds.py (fixed n)
def test_every_fixed_n_bound_checks_its_level():
    """Each of the three Clopper-Pearson functions refuses a level outside (0, 1) itself (not only through another)."""
    for bad in (0.0, 1.0, 1.5, -0.1):
        for f in (bounds.clopper_pearson_lower, bounds.clopper_pearson_upper, bounds.clopper_pearson_interval):
            with pytest.raises(ValueError, match="alpha"):
                f(3, 10, bad)


def test_goodman_edge_counts_and_counts_beyond_int64_products():
    """Zero counts and a total of 1 are valid input; counts above 2^31 (sum ~ 10^10) do not overflow the product
    4 n_i (N - n_i) (int64 holds 9.2e18): checked against statsmodels, which works in floats."""
    for counts in ([0, 1], [1, 0, 0], [3_000_000_000, 5_000_000_000, 7]):
        expected = multinomial_proportions_confint(np.asarray(counts, dtype=np.float64), alpha=0.01, method="goodman")
        np.testing.assert_allclose(bounds.goodman_bounds(np.asarray(counts), 0.01), expected, rtol=1e-12, atol=1e-15)


def test_radius_takes_lists_and_refuses_p0_of_one_or_more():
    """p_lower given as a plain list; p0 must lie in [1/2, 1): 1 and above are refused (PhiInv(1) = inf)."""
    got = bounds.radius(0.5, [0.6, 0.9])
    assert got[0] == shrunk(0.5 * PPF(0.6)) and got[1] == shrunk(0.5 * PPF(0.9))
    for p0 in (1.0, 1.5):
        with pytest.raises(ValueError, match="p0"):
            bounds.radius(0.5, 0.9, p0=p0)


def test_cohen_abstains_when_the_lower_bound_only_reaches_p0():
    """Cohen et al. certify only when pA_lower > 1/2: 2 of 2 votes at alpha = 0.25 has pA_lower = 0.25^(1/2) = 1/2
    exactly, a radius of 0 that certifies nothing, so CERTIFY abstains, like the one-stage cascade on the same counts
    (found by mutation testing: Cohen's rule used to certify with radius 0 here)."""
    assert exact_cp_lower(2, 2, 0.25) == pytest.approx(0.5, abs=1e-15)
    d = decisions.cohen_certify_from_counts([0, 1], [0, 2], 0.25, 0.5)
    assert (d.prediction, d.radius, d.stage, d.last) == (-1, 0.0, -1, 0) and d.p_lower == 0.5
    cascade = decisions.cascade_certify_from_counts([[0, 1]], [[0, 2]], [0.5], 0.25)
    assert (cascade.prediction, cascade.radius) == (d.prediction, d.radius)
    three = decisions.cohen_certify_from_counts([0, 1], [0, 3], 0.25, 0.5)  # 3 of 3: above 1/2, certified
    assert three.prediction == 1 and three.radius == shrunk(0.5 * PPF(exact_cp_lower(3, 3, 0.25)))
