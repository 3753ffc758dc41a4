"""Confidence bounds for randomized smoothing: every bound msrs certifies with, in one place (numpy / scipy).

Fixed n (Cohen et al.'s CERTIFY and the multi-scale cascade; Clopper & Pearson, Biometrika 1934; Goodman,
Technometrics 1965):

  clopper_pearson_lower(n_a, n, alpha)     one-sided (1 - alpha) lower bound, exact
  clopper_pearson_upper(n_a, n, alpha)     one-sided (1 - alpha) upper bound, exact
  clopper_pearson_interval(n_a, n, alpha)  two-sided (1 - alpha) interval: alpha / 2 on each side
  binomial_pvalue(n_a, n, p)               two-sided exact binomial test (Cohen's PREDICT)
  goodman_bounds(counts, alpha)            Goodman's simultaneous (1 - alpha) intervals, k categories
  radius(sigma, p_lower, p0)               sigma * (PhiInv(p_lower) - PhiInv(p0))

Valid under early stopping (msrs.stopping's sequential certification): bound objects called as
bound(successes, trials, level) -> (lower, upper) arrays:

  AlphaSpending(looks)      exact Clopper-Pearson at pre-set looks, the error level spent over them (shares:
                            spending_weights, or Voracek's voracek_weights with schedule="voracek")
  ConfidenceSequence(prior) the Beta-binomial confidence sequence, valid at every sample count
  BettingConfidenceSequence the betting confidence sequence (a grid of constant bets), valid at every sample count
  BettingFinal(looks)       the betting CS at (1 - final_share) of the level, Clopper-Pearson at final_share at n_max
  other_classes_upper(...)  the cascade's bound on the largest probability of the classes other than cA, built
                            on either (one bound per group of classes, Bonferroni over the groups)

The functions take numbers or numpy arrays (broadcast) and return floats for scalar input.

Why the two sequential bounds stay valid whatever the stopping rule:

Alpha spending ("spending", the default; the Bonferroni form of alpha spending over interim looks, Lan & DeMets,
Biometrika 1983). Look k uses the exact one-sided Clopper-Pearson bounds (Clopper & Pearson, Biometrika 1934;
above) on the t_k samples drawn so far, each side at level alpha * w_k, with w_1 + ... + w_K = 1
(spending_weights: by default w_K = 0.9 at the final look and 0.1 / (K - 1) at each earlier one; AlphaSpending).
Why the stopped certificate is valid, whatever the stopping rule:
  * t_k is fixed before sampling and w_k does not depend on the data, so the bound at look k is an ordinary fixed-n
    Clopper-Pearson bound: P(E_k) <= alpha w_k for E_k = {the look-k bound is wrong} (lower end: p < lower_k).
  * An image stopped at look tau (any random look: a function of its data, of other images' or stages' data, of
    anything) has a wrong certificate only on E_tau, a subset of E_1 u ... u E_K, so P(wrong) <= sum_k alpha w_k
    = alpha (union bound; conservative: it ignores the correlation between looks that Lan-DeMets boundaries use).
  * The running intersection (max of the lower ends, min of the upper ends over the looks so far) is wrong only
    on the same union: also valid, and used.
  * The look index k of an evaluation is well defined: an image is evaluated only when its sample count is one of
    the looks (AlphaSpending refuses any other count), and every image draws look by look.
With the default shares, the final-look certificate is Clopper-Pearson at 0.9 alpha, within about 1% of the
fixed-n radius at n = n_max; the early looks, at about alpha / (10 K), stop the images that are clearly settled.

Confidence sequence ("cs"). For the Bernoulli probability p = pA of the selected class cA, with S_t successes in t
trials, the Beta(a, b)-binomial mixture (Robbins 1970; Howard, Ramdas, McAuliffe & Sekhon, Ann. Statist. 2021)

    M_t(p) = integral of prod_i q^X_i (1-q)^(1-X_i) / (p^X_i (1-p)^(1-X_i)) dBeta(q; a, b)
           = B(a + S_t, b + t - S_t) / B(a, b) / (p^S_t (1 - p)^(t - S_t))

is, for the true p, a non-negative martingale with M_0 = 1 (a mixture of likelihood ratios, each a martingale under
p). Ville's inequality gives P(exists t: M_t(p) >= 1/alpha) <= alpha, so

    CS_t = {p : M_t(p) < 1/alpha} = (lower_t, upper_t)

covers p at every t simultaneously with probability >= 1 - alpha. log M_t(p) is convex in p with minimum <= 0 at
p = S_t/t (the mixture never beats the maximum likelihood), so CS_t is an interval containing S_t/t; cs_bounds
finds its ends by bisection on log M_t (betaln, xlogy: no overflow at n = 10^6 or more), returning the bracket end
*outside* the CS, i.e. rounded conservatively (up to the rounding of log M_t itself, a relative 1e-14 on the bound
at t = 10^6). On the event {p in CS_t for all t} (probability >= 1 - alpha), p >= lower_tau whatever the stopping
time tau is, so the stopped certificate and the running intersections over time are valid (ConfidenceSequence).

Betting confidence sequence ("betting"; Waudby-Smith & Ramdas, "Estimating means of bounded random variables by
betting", JRSS-B 2024: the capital of bets against the mean m is a test martingale when m is the true mean, and
the CS is {m : capital < 1/alpha} by Ville's inequality). One side at a time, each at the full level (the rules
read each side alone: the certificate the lower end, the off-class bound the upper end). Lower side: for each
failure ratio r of a fixed grid (DEFAULT_BETTING_RATIOS: r = 1 / (1 + 2^k), k = -20 .. 20), bet the fraction
(1 - r) of the capital that the mean exceeds m, lambda = (1 - r) / m, at every sample:
    K_t(m; r) = prod_i (1 + (1 - r)(X_i - m) / m) = ((1 - r (1 - m)) / m)^S_t r^(t - S_t),
and K+_t(m) = the mean of K_t(m; r) over the D bets of the grid (a mixture of test martingales: one, with
K+_0 = 1). The bets are constant, so K+_t is a function of the counts alone: no state, no order of the samples,
valid at every t (the stopping rules' looks, the cascade's resumed stages, the best-case reads at n_max all take
counts). K_t(m; r) is the likelihood ratio of q = 1 - r (1 - m) against m, so (1 - r) is the Kelly bet of a
true pA = q, and r ~ (1 - pA) / (1 - m) spans the ratios of the failure rates that matter near the certification
thresholds; each factor decreases in m, so {m : K+_t(m) >= 1/alpha} = [0, lower_t] and lower_t is found by a
safeguarded regula falsi on log K+ in log m (betting_bounds), returned at a point that was tested outside the set
(as cs_bounds: conservative up to the rounding of log K itself). The upper side is the mirror image (X -> 1 - X).
Ville: P(exists t: K+_t(p) >= 1/alpha) <= alpha, and p < lower_tau implies K+_tau(p) >= 1/alpha, for any stopping
time tau. Why it is tighter than "cs": the Beta mixture spreads its prior over q in (0, 1), and only its (tiny)
mass between m and 1 bets in the useful direction near m ~ 1; the grid scales every bet to [m, 1] for each m,
at a fixed cost of log D (3.7 nats) instead of about 0.5 log t. Measured at alpha = 0.001 on counts typical of
certification (pA from 0.5 to 1 - 1e-5, t from 64 to 10^5): 1 - lower is on average 17 % above fixed-n
Clopper-Pearson at 0.9 alpha, against 32 % for "cs" and 44 % for the early looks of "spending" (0.1 alpha / 76).
At n_max it is still 17 % above what "spending" gives there, hence "betting-final": the betting CS at
(1 - final_share) alpha at every look, and at n_max also Clopper-Pearson at final_share alpha, the tighter of the
two (a union bound: P(wrong) <= (1 - final_share) alpha + final_share alpha).
The predictable plug-in bets of Waudby-Smith & Ramdas (lambda_t chosen from the samples before t) would make the
capital depend on the order of the samples, i.e. on the counts at every earlier look; the bound interface takes
the counts at one look (and the cascade's off-class groups are formed after the fact), so a mixture of constant bets
over a fixed grid (the method of mixtures applied to their betting martingales) is what fits here.

Voracek's confidence sequence ("voracek"; Voracek, "Treatment of statistical estimation problems in randomized
smoothing for adversarial robustness", NeurIPS 2024, arXiv 2406.17830, its union-bound CS): exact Clopper-Pearson
at looks about 1.1x apart, look j at level 5 alpha / ((j + 4)(j + 5)), a series summing to alpha over unboundedly
many looks, which gives the optimal sample complexity for deciding pA >= threshold. It is alpha spending with other
shares (voracek_weights): 1/6 of alpha at the first look, decaying like 5 / j^2, and the tail of the series (5 / (K +
4), 0.062 with the default 77 looks) at the final one; the default instead spends 0.9 at the final look and
0.1 / 76 = 0.0013 at each earlier look. With final_share, the final look gets that share and the earlier looks the
rest in Voracek's proportions. (Its other CS, the "adaptive" one, is a Beta(1/2, 1/2) mixture tested against one
threshold: "cs".)

Which to pick. "spending": the looks must be fixed before sampling and n_max is a hard cap, but the final look is
nearly Clopper-Pearson at n_max, so a sequential run with n_max = n gives (nearly) the fixed-n table of certified
accuracy: the default. "cs": valid at every sample count at once, so the looks may be anything (more of them,
chosen on the fly, a run extended past its n_max later), at the price of a wider interval at the same n (radius
about 1-3% smaller than Clopper-Pearson at n = 10^5, 3-7% at n = 10^3, with the Jeffreys prior (0.5, 0.5) and
alpha = 0.001), which drops images from the table at equal n. "betting" is the tightest anytime-valid bound here
(above) but drops images in the same way; "voracek" spends little at the final look and drops images too;
msrs.stopping's "Which bound" has the measurements.

"""
from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np
from scipy import stats
from scipy.special import betaln, logsumexp, xlog1py, xlogy

from . import checks

__all__ = [
    "BOUNDS",
    "DEFAULT_FINAL_SHARE",
    "DEFAULT_PRIOR",
    "AlphaSpending",
    "BettingConfidenceSequence",
    "BettingFinal",
    "DEFAULT_BETTING_RATIOS",
    "ConfidenceSequence",
    "RADIUS_MARGIN",
    "betting_bounds",
    "betting_log_capital",
    "binomial_pvalue",
    "clopper_pearson_interval",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "cs_bounds",
    "goodman_bounds",
    "log_martingale",
    "make_bound",
    "other_classes_upper",
    "phi_inv",
    "radius",
    "signed_radius",
    "spending_weights",
    "toward_zero",
    "voracek_weights",
]

DEFAULT_PRIOR = (0.5, 0.5)  # Jeffreys: tight at the extremes, where certification lives (pA near 1)
DEFAULT_FINAL_SHARE = 0.9  # alpha spent at the final look: its certificate is Clopper-Pearson at 0.9 alpha
BOUNDS = ("spending", "cs", "betting", "betting-final", "voracek")
# the betting confidence sequence's grid of bets, as failure ratios r (module docstring): r = 1 / (1 + 2^k),
# k = -20 .. 20, the bet's odds doubling from step to step, from 1e-6 of the capital to all but 1e-6 of it (a grid
# twice as fine gives the same bounds to 0.03 %: the finer grid's cost, log of the number of bets, eats its gain)
DEFAULT_BETTING_RATIOS = tuple(1.0 / (1.0 + 2.0 ** k) for k in range(-20, 21))
_BISECT_STEPS = 80  # enough to reach adjacent doubles on [0, 1]
_BETTING_STEPS = 30  # regula falsi steps of the betting bounds (most rows converge in 6 to 12)
_BETTING_WIDTH = 1e-15  # a betting end is done when its bracket in log u is this wide (relative): log K rounds as much
_LOG_TINY = math.log(np.finfo(np.float64).tiny)  # log of the smallest normal double


# ------------------------------------------------------------------------------------------------------- fixed n
def _counts(n_a, n) -> tuple[np.ndarray, np.ndarray]:
    """Successes n_a and draws n (numbers or arrays) as float64 arrays; n >= 1."""
    return _successes_trials(n_a, n, names=("n_a", "n"), min_trials=1)


def _out(value):
    return float(value) if np.ndim(value) == 0 else value


def clopper_pearson_lower(n_a, n, alpha):
    """One-sided (1 - alpha) Clopper-Pearson lower bound on p from n_a successes in n draws.

    Beta.ppf(alpha, n_a, n - n_a + 1); 0 when n_a = 0; alpha ** (1 / n) when n_a = n, so it stays < 1 for every
    finite n (a radius computed from it is finite).
    """
    checks.level("alpha", alpha)
    n_a, n = _counts(n_a, n)
    lower = stats.beta.ppf(alpha, np.maximum(n_a, 1), n - n_a + 1)
    return _out(np.where(n_a > 0, lower, 0.0))


def clopper_pearson_upper(n_a, n, alpha):
    """One-sided (1 - alpha) Clopper-Pearson upper bound: Beta.isf(alpha, n_a + 1, n - n_a); 1 when n_a = n."""
    checks.level("alpha", alpha)
    n_a, n = _counts(n_a, n)
    upper = stats.beta.isf(alpha, n_a + 1, np.maximum(n - n_a, 1))
    return _out(np.where(n_a < n, upper, 1.0))


def clopper_pearson_interval(n_a, n, alpha):
    """Two-sided (1 - alpha) Clopper-Pearson interval (lower, upper): each side at level alpha / 2.

    Equals statsmodels' proportion_confint(n_a, n, alpha, method="beta").
    """
    checks.level("alpha", alpha)
    return clopper_pearson_lower(n_a, n, np.asarray(alpha) / 2), clopper_pearson_upper(n_a, n, np.asarray(alpha) / 2)


def binomial_pvalue(n_a: int, n: int, p: float = 0.5) -> float:
    """Two-sided exact binomial test p-value of n_a successes in n draws under success probability p."""
    _counts(n_a, n)  # before int(), which would truncate a fractional count and take True for 1
    n_a, n = int(n_a), int(n)
    return float(stats.binomtest(n_a, n, p).pvalue)


def goodman_bounds(counts, alpha) -> np.ndarray:
    """Goodman (1965) simultaneous (1 - alpha) intervals for the k category probabilities, as an array [k, 2].

    A = chi2.ppf(1 - alpha / k, 1); bounds = (A + 2 n_i -+ sqrt(A (A + 4 n_i (N - n_i) / N))) / (2 (N + A)).
    Each interval is a Wilson score interval with a Bonferroni-corrected quantile, so each side of each category
    has level about alpha / (2k); the intervals are asymptotic (not exact for small counts).
    Equals statsmodels' multinomial_proportions_confint(counts, alpha, method="goodman").
    """
    checks.level("alpha", alpha)
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size < 2 or np.any(counts < 0) or counts.sum() <= 0:
        raise checks.ArgumentValueError(f"counts: expected k >= 2 non-negative counts with a positive total, got {counts}")
    k, total = counts.size, counts.sum()
    a = stats.chi2.ppf(1 - alpha / k, 1)
    half = np.sqrt(a * (a + 4 * counts * (total - counts) / total))
    bounds = np.stack(((a + 2 * counts - half), (a + 2 * counts + half)), axis=1) / (2 * (total + a))
    return np.clip(bounds, 0.0, 1.0)


def radius(sigma, p_lower, p0=0.5):
    """Certified L2 radius sigma * (PhiInv(p_lower) - PhiInv(p0)); negative when p_lower < p0.

    p_lower must be < 1 (a lower bound of 1 would certify an infinite radius; Clopper-Pearson never reaches it).
    """
    p_lower = np.asarray(p_lower, dtype=np.float64)
    if np.any(~np.isfinite(p_lower)) or np.any(p_lower < 0) or np.any(p_lower >= 1):
        raise checks.ArgumentValueError(f"p_lower: expected a probability bound in [0, 1), got {p_lower}")
    if not np.all((np.asarray(p0) >= 0.5) & (np.asarray(p0) < 1)):
        raise checks.ArgumentValueError(f"p0: expected a threshold in [0.5, 1), got {p0}")
    return signed_radius(sigma, p_lower, p0)


# The certified radius is rounded toward zero by this relative margin (and one more ulp), so that the floating-point
# error of the Clopper-Pearson quantile, of PhiInv and of the products cannot enlarge a certificate. An engineering
# margin, not a proof: an error of e in p moves PhiInv(p) by e / phi(z), which near p = 1 is about
# (e / (1 - p)) / z^2 relative; with p within a few ulps that stays far below 1e-9 for budgets up to ~10^8 samples,
# and tests/test_stats.py checks the whole chain against 40-digit arithmetic. docs/CERTIFICATES.md says what else
# the certificate assumes about floating point.
RADIUS_MARGIN = 1e-9


def toward_zero(value):
    """value shrunk toward zero by RADIUS_MARGIN and one ulp; 0 and infinities unchanged (a radius that may only
    get smaller when floating point errs)."""
    value = np.asarray(value, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        shrunk = np.nextafter(value - value * RADIUS_MARGIN, 0.0)
    return _out(np.where(np.isfinite(value), shrunk, value))


def signed_radius(sigma, p, p0=0.5):
    """sigma * (PhiInv(p) - PhiInv(p0)) rounded toward zero (toward_zero): the one place a radius is computed
    from a probability bound. -inf at p = 0 and +inf at p = 1 (no checks: the callers check their bounds)."""
    with np.errstate(divide="ignore"):
        exact = np.asarray(sigma, dtype=np.float64) * (stats.norm.ppf(np.asarray(p, dtype=np.float64))
                                                      - stats.norm.ppf(p0))
    return toward_zero(exact)


def phi_inv(p):
    """PhiInv, the standard normal quantile (-inf at 0, +inf at 1)."""
    return _out(stats.norm.ppf(np.asarray(p, dtype=np.float64)))



# ------------------------------------------------------------------------------------------- the confidence sequence
def _check_prior(prior) -> tuple[float, float]:
    a, b = (float(v) for v in prior)
    if not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)):
        raise checks.ArgumentValueError(f"prior: expected two positive numbers (a, b), got {prior}")
    return a, b


def _successes_trials(successes, trials, *, names=("successes", "trials"), min_trials: int = 0):
    """Integer counts (any int or integral float dtype) with 0 <= successes <= trials and trials >= min_trials,
    broadcast together, as float64 arrays."""
    s, t = (_integers(name, v) for name, v in zip(names, (successes, trials)))
    s, t = np.broadcast_arrays(s.astype(np.float64), t.astype(np.float64))
    if np.any(t < min_trials) or np.any(s < 0) or np.any(s > t):
        raise checks.ArgumentValueError(f"{', '.join(names)}: expected 0 <= {names[0]} <= {names[1]} and "
                                        f"{names[1]} >= {min_trials}, got {names[0]}={successes}, {names[1]}={trials}")
    return s, t


def _integers(name: str, values) -> np.ndarray:
    """`values` (counts, classes) as an array, checked to hold integers (any int dtype, or finite integral
    floats): bool, infinite and fractional values are refused rather than truncated."""
    v = np.asarray(values)
    integral = v.dtype.kind in "iu" or (v.dtype.kind == "f" and np.all(np.isfinite(v) & (v == np.floor(v))))
    if not integral:
        raise checks.ArgumentTypeError(f"{name}: expected integers, got {v.dtype} values {v}")
    return v


def log_martingale(successes, trials, p, prior=DEFAULT_PRIOR) -> np.ndarray:
    """log M_t(p) of the Beta(a, b)-binomial mixture (see the module docstring); broadcasts its arguments."""
    a, b = _check_prior(prior)
    s, t = _successes_trials(successes, trials)
    p = np.asarray(p, dtype=np.float64)
    f = t - s
    return betaln(a + s, b + f) - betaln(a, b) - xlogy(s, p) - xlog1py(f, -p)


def cs_bounds(successes, trials, alpha, prior=DEFAULT_PRIOR, *, method: str = "bisect"):
    """(lower, upper) of the (1 - alpha) confidence sequence {p : M_t(p) < 1/alpha} after `successes` in `trials`.

    Vectorised over broadcastable arrays, alpha included (returns float64 arrays, or floats for scalar input).
    lower = 0 when successes = 0, upper = 1 when successes = trials, (0, 1) when trials = 0. Both ends are rounded
    outwards (conservative). method="brentq" solves each entry with scipy.optimize.brentq instead (a loop; for
    checks).
    """
    alpha = checks.level("alpha", alpha)
    a, b = _check_prior(prior)
    s, t = _successes_trials(successes, trials)
    s, t, alpha = np.broadcast_arrays(s, t, np.asarray(alpha, dtype=np.float64))
    scalar = s.ndim == 0
    s, t, alpha = (np.atleast_1d(v) for v in (s, t, alpha))
    f = t - s
    const = betaln(a + s, b + f) - betaln(a, b) - np.log(1.0 / alpha)  # outside where const - xlogy - xlog1py >= 0
    with np.errstate(divide="ignore", invalid="ignore"):
        phat = np.where(t > 0, s / np.where(t > 0, t, 1.0), 0.5)

    def outside(p, sel=slice(None)):
        return const[sel] - xlogy(s[sel], p) - xlog1py(f[sel], -p) >= 0

    if method == "brentq":
        lower, upper = _bounds_brentq(s, f, const, phat)
    elif method == "bisect":
        # lower end: bracket with 0 (outside) and phat (inside); upper end: phat (inside) and 1 (outside)
        lower = _bisect_boundary(outside, outside_end=np.zeros_like(phat), inside_end=phat.copy())
        upper = _bisect_boundary(outside, outside_end=np.ones_like(phat), inside_end=phat.copy())
    else:
        raise checks.ArgumentValueError(f"method: expected 'bisect' or 'brentq', got {method!r}")
    lower, upper = _sure_ends(lower, upper, s, f)
    if scalar:
        return float(lower[0]), float(upper[0])
    return lower, upper


def _sure_ends(lower, upper, s, f) -> tuple[np.ndarray, np.ndarray]:
    """The ends a confidence sequence knows without searching: lower 0 without successes, upper 1 without
    failures, so (0, 1) without trials (cs_bounds and betting_bounds)."""
    return np.where(s == 0, 0.0, lower), np.where(f == 0, 1.0, upper)


def _bisect_boundary(outside, outside_end: np.ndarray, inside_end: np.ndarray) -> np.ndarray:
    """The CS boundary between a bracket end outside the set and one inside it, elementwise, after _BISECT_STEPS
    halvings; returns the end that stayed outside, so the bound is conservative (never inside the set)."""
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (outside_end + inside_end)
        out = outside(mid)
        outside_end = np.where(out, mid, outside_end)
        inside_end = np.where(out, inside_end, mid)
    return outside_end


def _bounds_brentq(s, f, const, phat):
    from scipy.optimize import brentq

    lower, upper = np.zeros_like(phat), np.ones_like(phat)
    for i in range(phat.size):
        si, fi, ci = s.flat[i], f.flat[i], const.flat[i]

        def g(p, ci=ci, si=si, fi=fi):
            return ci - xlogy(si, p) - xlog1py(fi, -p)

        if si > 0:
            lower.flat[i] = brentq(g, 1e-300, phat.flat[i], xtol=1e-300, rtol=8.9e-16, maxiter=500)
        if fi > 0:
            top = np.nextafter(1.0, 0.0)
            upper.flat[i] = brentq(g, phat.flat[i], top, xtol=1e-300, rtol=8.9e-16, maxiter=500) if g(top) > 0 else 1.0
    return lower, upper


# ----------------------------------------------------------------------------------------- bounds under early stopping
class ConfidenceSequence:
    """Bound object for the stopping rules: bound(successes, trials, level) -> (lower, upper) float64 arrays, the
    Beta-binomial confidence sequence at error level `level` (cs_bounds). Valid at every trials at once."""

    name = "cs"

    def __init__(self, prior=DEFAULT_PRIOR):
        self.prior = _check_prior(prior)

    def __call__(self, successes, trials, level):
        lower, upper = cs_bounds(successes, trials, level, self.prior)
        return np.atleast_1d(lower), np.atleast_1d(upper)

    def __repr__(self) -> str:
        return f"ConfidenceSequence(prior={self.prior})"


# ---------------------------------------------------------------------------------- the betting confidence sequence
def _check_ratios(ratios) -> np.ndarray:
    r = np.asarray(ratios, dtype=np.float64).reshape(-1)
    if r.size == 0 or not np.all(np.isfinite(r)) or np.any(r <= 0) or np.any(r >= 1):
        raise checks.ArgumentValueError(f"ratios: expected one or more failure ratios in (0, 1), got {ratios}")
    return r


def betting_log_capital(successes, trials, m, ratios=DEFAULT_BETTING_RATIOS, side: str = "lower") -> np.ndarray:
    """log K_t(m) of the betting confidence sequence (module docstring), broadcast over successes, trials, m:
    side "lower" the capital of the bets on a mean above m, "upper" of the bets on a mean below it."""
    r = _check_ratios(ratios)
    if side not in ("lower", "upper"):
        raise checks.ArgumentValueError(f"side: expected 'lower' or 'upper', got {side!r}")
    s, t = _successes_trials(successes, trials)
    s, f, m = np.broadcast_arrays(s, t - s, np.asarray(m, dtype=np.float64))
    return _log_capital(s[..., None], f[..., None], m[..., None], r, side)


def _log_capital(s, f, m, r, side: str):
    """log of the mean over the grid of the capitals (module docstring), the ratios r on the last axis. Lower side,
    bets (1 - r) / m on a mean above m: a success multiplies the capital by (1 - r (1 - m)) / m, a failure by r.
    Upper side, the mirror image: a failure multiplies it by (1 - r m) / (1 - m), a success by r."""
    with np.errstate(divide="ignore"):
        if side == "lower":
            terms = xlogy(s, 1.0 - r * (1.0 - m)) - xlogy(s, m) + xlogy(f, r)
        else:
            terms = xlogy(f, 1.0 - r * m) - xlogy(f, 1.0 - m) + xlogy(s, r)
    return logsumexp(terms, axis=-1) - math.log(r.shape[-1])


def _betting_end(wins, losses, need, r) -> np.ndarray:
    """The largest u with K(u) >= e^need for each row, K(u) = mean over the grid of prod (1 + (1 - r)(Y_i - u) / u)
    for `wins` Y = 1 and `losses` Y = 0 (the lower side's capital at m = u; the upper side's at m = 1 - u, with
    successes and failures swapped), returned as a point where the computed log K(u) >= need: the conservative
    end. 0 where wins = 0 (nothing excluded).

    In v = log u, h(v) = log mean((1 - r + r e^v)^wins r^losses) - wins v - need decreases with slope in
    [-wins, 0] (nearly a line), is <= -need at the estimate u = wins / (wins + losses) (each bet is the likelihood
    ratio of some q against u, largest at the estimate: the inside start) and >= 0 where one term of the mean
    alone reaches D e^need (the outside start: the largest such u over the D ratios, in closed form, stepped
    further out while rounding makes it test inside). Regula falsi (Illinois) on that bracket, each row until its
    bracket is _BETTING_WIDTH wide, each step's point tested at the double u = exp(v) that would be returned."""
    n = wins.shape[0]
    tiny = np.finfo(np.float64).tiny
    fixed = xlogy(losses[:, None], r) - math.log(r.size)  # the losses' part of each term, the same for every u
    safe = np.maximum(wins, 1.0)
    # log(1 - r (1 - u)), accurate to a few ulps for every bet: as log1p for r < 1/2, and as log((1 - r) + r u) for
    # r >= 1/2, where 1 - r is exact (Sterbenz) and the log1p form would lose 1 - r's digits (1e-10 noise in h at
    # r = 1 - 1e-6, more than the regula falsi's tolerance); each bet's log computed in its own form only
    small = r < 0.5
    r_small, r_large = r[small], r[~small]

    def h(rows, u, parts):
        m = u[:, None]
        terms = np.empty((rows.size, r.size))
        terms[:, small] = np.log1p(-r_small * (1.0 - m))
        terms[:, ~small] = np.log((1.0 - r_large) + r_large * m)
        terms *= wins[rows, None]
        terms += parts
        top = terms.max(axis=-1)
        terms -= top[:, None]
        np.exp(terms, out=terms)
        return np.log(terms.sum(axis=-1)) + top - wins[rows] * np.log(u) - need[rows]

    total = wins + losses
    every = np.arange(n)

    def one_bet_end(level):  # log of the largest u at which one bet's capital alone reaches e^level, per row
        log_e = (level[:, None] - xlogy(losses[:, None], r)) / safe[:, None]  # > 0
        return np.max(np.log1p(-r) - log_e - np.log1p(-r * np.exp(-log_e)), axis=-1)

    # the bracket: the estimate wins / total is inside (each bet is a likelihood ratio, at most 1 there), and one
    # bet at e^(need + log D) outside (its term alone makes the mean reach e^need)
    v_in = np.log(np.where(total > 0, safe / np.maximum(total, 1.0), 1.0))
    v_out = np.minimum(one_bet_end(need + math.log(r.size)), v_in)
    h_in = h(every, np.exp(v_in), fixed)
    h_out = h(every, np.maximum(np.exp(v_out), tiny), fixed)
    # log K rounds by about wins * eps * |log u| (1e-8 at 10^8 draws): step outward, 4x further each time, until
    # the outside start tests outside (if exp(v_out) underflows, 0 (returned below) is outside too)
    gap = 1e-9 * np.maximum(1.0, np.abs(v_out))
    for _ in range(_BETTING_STEPS):
        rows = every[(wins > 0) & (h_out < 0) & (v_out > _LOG_TINY)]
        if not rows.size:
            break
        v_out[rows] -= gap[rows]
        gap[rows] *= 4.0
        h_out[rows] = h(rows, np.maximum(np.exp(v_out[rows]), tiny), fixed[rows])
    kept = np.zeros(n, dtype=np.int8)  # which end the last step kept: 1 outside, -1 inside
    rows = every[wins > 0]
    for step in range(_BETTING_STEPS):
        vo, vi, ho, hi_, k = v_out[rows], v_in[rows], h_out[rows], h_in[rows], kept[rows]
        with np.errstate(invalid="ignore", divide="ignore"):
            secant = vi - hi_ * (vi - vo) / (hi_ - ho)
        # the secant point, kept a quarter of the final width inside the bracket: one on an end (where h is 0, or
        # far nearer 0 than at the other end) would test nothing new, and bisection from there cannot close a wide
        # bracket in _BETTING_STEPS; bisection only where the secant is undefined (0 / 0: h equal at both ends)
        pad = 0.25 * _BETTING_WIDTH * np.maximum(1.0, np.abs(vo))
        v = np.where(np.isnan(secant), 0.5 * (vo + vi), np.clip(secant, vo + pad, vi - pad))
        hv = h(rows, np.maximum(np.exp(v), tiny), fixed[rows])
        out = hv >= 0
        # Illinois: an end kept twice in a row has its value halved, so the secant moves past it
        h_out[rows] = np.where(out, hv, np.where(k == 1, 0.5 * ho, ho))
        h_in[rows] = np.where(out, np.where(k == -1, 0.5 * hi_, hi_), hv)
        v_out[rows], v_in[rows] = np.where(out, v, vo), np.where(out, vi, v)
        kept[rows] = np.where(out, -1, 1)
        rows = rows[v_in[rows] - v_out[rows] > _BETTING_WIDTH * np.maximum(1.0, np.abs(v_out[rows]))]
        if not rows.size:
            break
    u = np.exp(v_out)
    ok = (u >= tiny) & (h_out >= 0)
    return np.where((wins > 0) & ok, u, 0.0)


def betting_bounds(successes, trials, alpha, ratios=DEFAULT_BETTING_RATIOS):
    """(lower, upper) of the one-sided betting confidence sequences at level alpha each (module docstring):
    lower = inf {m : K+_t(m) < 1/alpha}, upper = sup {m : K-_t(m) < 1/alpha}, found by regula falsi and rounded
    outwards (a point tested outside the set is returned, as cs_bounds; _betting_end). Vectorised over broadcastable
    arrays, alpha included; floats for scalar input. lower = 0 when successes = 0, upper = 1 when successes =
    trials, (0, 1) when trials = 0."""
    alpha = checks.level("alpha", alpha)
    r = _check_ratios(ratios)
    s, t = _successes_trials(successes, trials)
    s, t, alpha = np.broadcast_arrays(s, t, np.asarray(alpha, dtype=np.float64))
    scalar, shape = s.ndim == 0, s.shape
    s, t, alpha = (np.atleast_1d(v).reshape(-1) for v in (s, t, alpha))
    f = t - s
    need = -np.log(alpha)  # not log(1 / alpha): 1 / alpha overflows for alpha below 1 / max double (5e-324)
    lower = _betting_end(s, f, need, r)
    # upper: the same on the failures, at u = 1 - m; 1 - u rounded up, so that it stays outside
    upper = np.minimum(np.nextafter(1.0 - _betting_end(f, s, need, r), 2.0), 1.0)
    lower, upper = _sure_ends(lower, upper, s, f)
    if scalar:
        return float(lower[0]), float(upper[0])
    return lower.reshape(shape), upper.reshape(shape)


class BettingConfidenceSequence:
    """Bound object for the stopping rules: bound(successes, trials, level) -> (lower, upper) float64 arrays, the
    one-sided betting confidence sequences at error level `level` on each side (betting_bounds). Valid at every
    trials at once, and a function of the counts alone (the bets are constant: no state, no order)."""

    name = "betting"

    def __init__(self, ratios=DEFAULT_BETTING_RATIOS):
        self.ratios = tuple(_check_ratios(ratios).tolist())

    def __call__(self, successes, trials, level):
        lower, upper = betting_bounds(successes, trials, level, self.ratios)
        return np.atleast_1d(lower), np.atleast_1d(upper)

    def __repr__(self) -> str:
        return (f"BettingConfidenceSequence(ratios={len(self.ratios)} from {self.ratios[0]:.3g} to "
                f"{self.ratios[-1]:.3g})")


class BettingFinal:
    """Bound object: the betting confidence sequence at (1 - final_share) level at every trials count, and at the
    final look n_max = looks[-1] also exact Clopper-Pearson at final_share level, the tighter of the two (a union
    bound of two statements: wrong with probability <= (1 - final_share) level + final_share level)."""

    name = "betting-final"

    def __init__(self, looks: Sequence[int], final_share: float | None = None, ratios=DEFAULT_BETTING_RATIOS):
        looks = [operator.index(p) for p in looks]
        if not looks or looks[0] < 1 or any(b <= a for a, b in zip(looks, looks[1:])):
            raise checks.ArgumentValueError(f"looks: expected increasing sample counts >= 1, got {looks}")
        self.n_max = looks[-1]
        self.final_share = DEFAULT_FINAL_SHARE if final_share is None else float(final_share)
        if not 0.0 < self.final_share < 1.0:
            raise checks.ArgumentValueError(f"final_share: expected a value in (0, 1), got {final_share}")
        self.betting = BettingConfidenceSequence(ratios)

    def __call__(self, successes, trials, level):
        level = checks.level("level", level)
        s, t = _successes_trials(successes, trials)
        s, t = np.atleast_1d(s), np.atleast_1d(t)
        lower, upper = self.betting(s, t, np.asarray(level) * (1.0 - self.final_share))
        final = t == self.n_max
        if np.any(final):
            spent = np.broadcast_to(np.asarray(level, dtype=np.float64) * self.final_share, t.shape)[final]
            lower[final] = np.maximum(lower[final], clopper_pearson_lower(s[final], t[final], spent))
            upper[final] = np.minimum(upper[final], clopper_pearson_upper(s[final], t[final], spent))
        return lower, upper

    def __repr__(self) -> str:
        return f"BettingFinal(n_max={self.n_max}, final_share={self.final_share})"


def spending_weights(num_looks: int, final_share: float | None = None, weights=None) -> np.ndarray:
    """The shares w_1 .. w_K (sum 1) of the error level spent at each look: `weights` as given, or `final_share`
    (default DEFAULT_FINAL_SHARE) at the final look and the rest split equally over the earlier ones (all of it
    at the only look when K = 1). The final share must be the largest, so that the final look's bound is the
    tightest any later look can give (the reachability checks of the stopping rules read it)."""
    num_looks = operator.index(num_looks)
    if weights is not None:
        if final_share is not None:
            raise checks.ArgumentValueError("final_share: give final_share or weights, not both")
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.size != num_looks:
            raise checks.ArgumentValueError(f"weights: expected {num_looks} shares (one per look), got {w.size}")
        if not np.all(np.isfinite(w)) or np.any(w <= 0) or abs(w.sum() - 1.0) > 1e-9:
            raise checks.ArgumentValueError(f"weights: expected positive shares summing to 1, got {w.tolist()}")
        if w[-1] < w.max():
            raise checks.ArgumentValueError(f"weights: expected the final look's share to be the largest, got {w.tolist()}")
        return w / w.sum()
    share = DEFAULT_FINAL_SHARE if final_share is None else float(final_share)
    if num_looks == 1:
        if not 0.0 < share <= 1.0:
            raise checks.ArgumentValueError(f"final_share: expected a value in (0, 1], got {final_share}")
        return np.ones(1)
    if not 1.0 / num_looks <= share < 1.0:
        raise checks.ArgumentValueError(f"final_share: expected a value in [1/{num_looks}, 1) with {num_looks} looks (the final "
                         f"look's share the largest, something left for the earlier ones), got {final_share}")
    return np.append(np.full(num_looks - 1, (1.0 - share) / (num_looks - 1)), share)


def voracek_weights(num_looks: int, final_share: float | None = None) -> np.ndarray:
    """Voracek's spending shares (arXiv 2406.17830, the union-bound confidence sequence of its code's
    get_thresholds_union_bound: Clopper-Pearson at looks ~1.1x apart, look j at level 5 alpha / ((j + 4)(j + 5)),
    summing to alpha over an unbounded sequence of looks) on K looks: w_j = 5 / ((j + 4)(j + 5)) for j < K and the
    tail of the series, 5 / (K + 4), at the final look (which here ends the sequence). With final_share: the final
    look gets final_share and the earlier ones the rest in the same proportions 1 / ((j + 4)(j + 5))."""
    num_looks = operator.index(num_looks)
    if num_looks < 1:
        raise checks.ArgumentValueError(f"num_looks: expected >= 1, got {num_looks}")
    if num_looks == 1:  # all of it at the only look: spending_weights' rule, and its check of the share
        return spending_weights(1, final_share)
    j = np.arange(1, num_looks, dtype=np.float64)
    early = 5.0 / ((j + 4.0) * (j + 5.0))
    if final_share is None:
        w = np.append(early, 5.0 / (num_looks + 4.0))
    else:
        share = float(final_share)
        if not 0.0 < share < 1.0:
            raise checks.ArgumentValueError(f"final_share: expected a value in (0, 1), got {final_share}")
        w = np.append(early * (1.0 - share) / early.sum(), share)
    return w / w.sum()


class AlphaSpending:
    """Bound object for the stopping rules: at look k (trials = looks[k], fixed before sampling) the exact
    one-sided Clopper-Pearson bounds at level * w_k on each side (above); weights w from spending_weights.
    Evaluating it at a trials count that is not a look is an error: the spent levels are defined per look."""

    name = "spending"

    def __init__(self, looks: Sequence[int], final_share: float | None = None, weights=None,
                 schedule: str = "equal"):
        looks = [operator.index(p) for p in looks]
        if not looks or looks[0] < 1 or any(b <= a for a, b in zip(looks, looks[1:])):
            raise checks.ArgumentValueError(f"looks: expected increasing sample counts >= 1, got {looks}")
        self.looks = np.asarray(looks, dtype=np.int64)
        if schedule == "equal":
            self.weights = spending_weights(len(looks), final_share, weights)
        elif schedule == "voracek":
            if weights is not None:
                raise checks.ArgumentValueError("weights: give weights or schedule='voracek', not both")
            self.weights = voracek_weights(len(looks), final_share)
            # its final share is not the largest; the final look must still give the tightest bound of an
            # all-success run (the stopping rules' reachability reads the final look): (level w_k)^(1 / t_k) <=
            # (level w_K)^(1 / t_K) for every level <= 1 holds when log(w_k) / t_k <= log(w_K) / t_K
            if np.any(np.log(self.weights) / self.looks > np.log(self.weights[-1]) / self.looks[-1]):
                raise checks.ArgumentValueError(f"looks: with schedule='voracek' the final look {looks[-1]} must be "
                                                f"far enough after the others to give the tightest bound")
        else:
            raise checks.ArgumentValueError(f"schedule: expected 'equal' or 'voracek', got {schedule!r}")

    def shares(self, trials) -> np.ndarray:
        """w_k of the look each trials count is (any share for trials = 0, where the bounds are (0, 1))."""
        t = np.asarray(trials)
        k = np.minimum(np.searchsorted(self.looks, t), self.looks.size - 1)
        ok = (self.looks[k] == t) | (t == 0)
        if not np.all(ok):
            bad = np.unique(np.asarray(t)[~ok]).astype(np.int64)[:5].tolist()
            raise checks.ArgumentValueError(f"trials: the alpha-spending bound is defined only at its looks "
                             f"{self.looks.tolist()} (fixed before sampling), got {bad}")
        return self.weights[k]

    def __call__(self, successes, trials, level):
        s, t = _successes_trials(successes, trials)
        s, t = np.atleast_1d(s), np.atleast_1d(t)
        spent = checks.level("level", level) * self.shares(t)
        n = np.maximum(t, 1.0)  # trials = 0: any n, the result is replaced by (0, 1)
        lower = np.where(t > 0, clopper_pearson_lower(s, n, spent), 0.0)
        upper = np.where(t > 0, clopper_pearson_upper(s, n, spent), 1.0)
        return np.atleast_1d(lower), np.atleast_1d(upper)

    def __repr__(self) -> str:
        return f"AlphaSpending(looks={self.looks.tolist()}, weights={np.round(self.weights, 6).tolist()})"


def make_bound(bound, looks: Sequence[int], *, final_share: float | None = None, weights=None,
               prior=DEFAULT_PRIOR):
    """The bound object for `bound`: "spending" (AlphaSpending over `looks`), "voracek" (AlphaSpending with
    voracek_weights), "cs" (ConfidenceSequence(prior)), "betting" (BettingConfidenceSequence), "betting-final"
    (BettingFinal over `looks`), or an object bound(successes, trials, level) -> (lower, upper) used as it is."""
    if not isinstance(bound, str):
        if not callable(bound):
            raise checks.ArgumentTypeError(f"bound: expected one of {BOUNDS} or a callable bound object, got {bound!r}")
        return bound
    if bound == "spending":
        return AlphaSpending(looks, final_share, weights)
    if bound == "voracek":
        return AlphaSpending(looks, final_share, weights, schedule="voracek")
    if bound == "betting-final":
        if weights is not None:
            raise checks.ArgumentValueError("weights: only for bound='spending' or 'voracek'")
        return BettingFinal(looks, final_share)
    if final_share is not None or weights is not None:
        raise checks.ArgumentValueError("final_share, weights: only for bound='spending', 'voracek' (final_share) or "
                                        "'betting-final' (final_share)")
    if bound == "cs":
        return ConfidenceSequence(prior)
    if bound == "betting":
        return BettingConfidenceSequence()
    raise checks.ArgumentValueError(f"bound: expected one of {BOUNDS}, got {bound!r}")


# --------------------------------------------------------------------------- the cascade's off-class bound, any look
def _group_ids(k: int, exclude: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray]:
    """(group id per class [..., K], -1 for classes in no group; number of groups [...]) for other_classes_upper."""
    if groups is None:  # every class but `exclude` its own group
        classes = np.arange(k)
        gid = classes - (classes > exclude[..., None])
        return np.where(classes == exclude[..., None], -1, gid), np.full(exclude.shape, k - 1)
    groups = [list(map(int, g)) for g in groups]
    if not groups or any(not g for g in groups):
        raise checks.ArgumentValueError("groups: expected a non-empty list of non-empty class lists")
    members = sorted(c for g in groups for c in g)
    if len(set(members)) != len(members) or any(not 0 <= c < k for c in members) or np.any(np.isin(exclude, members)):
        raise checks.ArgumentValueError("groups: expected disjoint groups of classes in [0, K) without the excluded class")
    gid = np.full(k, -1)
    for g, classes in enumerate(groups):
        gid[classes] = g
    return np.broadcast_to(gid, exclude.shape + (k,)), np.full(exclude.shape, len(groups))


def _group_bounds(counts, gid, ngroups, level, bound, trials=None, fewest=None) -> tuple[np.ndarray, np.ndarray]:
    """(largest lower end, largest upper end) over the groups of each row of counts [..., K]: one bound per group
    on its summed votes at level / ngroups (Bonferroni over the groups). gid [..., K]: a class's group (-1: none);
    trials: default the row's total. fewest(votes, rows): votes to add to each group's total (the stopping rules'
    best case of a later look, msrs.stopping), given the totals and their rows (flat indices into counts[..., 0])."""
    counts = np.asarray(counts, dtype=np.int64)
    lead, k = counts.shape[:-1], counts.shape[-1]
    flat = counts.reshape(-1, k)
    gid = np.broadcast_to(gid, counts.shape).reshape(-1, k)
    rows = flat.shape[0]
    slot = np.arange(rows)[:, None] * k + np.maximum(gid, 0)  # bincount, not a [rows, K, K] one-hot: K may be 1000
    totals = np.bincount(slot.ravel(), np.where(gid >= 0, flat, 0).ravel(), minlength=rows * k)
    totals = np.rint(totals).astype(np.int64).reshape(rows, k)
    ngroups = np.broadcast_to(np.asarray(ngroups), lead).reshape(-1)
    n = flat.sum(axis=1) if trials is None else np.broadcast_to(np.asarray(trials), lead).reshape(-1)
    used = np.arange(k) < ngroups[:, None]
    r, g = np.nonzero(used)
    levels = np.broadcast_to(np.asarray(level, dtype=np.float64), lead).reshape(-1) / ngroups
    lo, hi = (np.full((rows, k), -np.inf) for _ in range(2))
    votes = totals[r, g]
    if fewest is not None:
        votes = votes + np.asarray(fewest(votes, r), dtype=np.int64)
    lo[r, g], hi[r, g] = bound(votes, n[r], levels[r])
    return lo.max(axis=1).reshape(lead), hi.max(axis=1).reshape(lead)


def other_classes_upper(counts, exclude, level: float, prior=DEFAULT_PRIOR, *, groups=None,
                        bound=None) -> np.ndarray:
    """Upper bound on max_{c != exclude} p_c from one stage's full vote counts [..., K] (trials = their sum),
    holding with probability >= 1 - level at any stopping time of the bound's kind (ConfidenceSequence(prior) by
    default: any time; AlphaSpending: any of its looks).

    groups: a partition of the classes other than `exclude` (e.g. msrs.decisions.pool_groups(counts0, exclude), pooled
    on the independent selection counts); default: every class its own group. One bound per group at
    level / len(groups) (Bonferroni) on the group's summed votes; the result is the largest upper end. `exclude`
    (the class a later stage certifies) depends only on the later stages' samples, so a union over the groups
    of the *other* classes suffices (msrs.decisions' argument, unchanged by stopping: each bound is valid at the
    stopping look). This replaces Goodman's / fixed-n Clopper-Pearson's bounds, not valid on a stopped sample."""
    counts = _integers("counts", counts).astype(np.int64)
    if counts.ndim < 1 or counts.shape[-1] < 2:
        raise checks.ArgumentValueError("counts: expected [..., K] with K >= 2")
    level = checks.level("level", level)
    k = counts.shape[-1]
    exclude = np.broadcast_to(_integers("exclude", exclude).astype(np.int64), counts.shape[:-1])
    if np.any((exclude < 0) | (exclude >= k)):
        raise checks.ArgumentValueError(f"exclude: expected classes in [0, {k})")
    gid, ngroups = _group_ids(k, exclude, groups)
    return _group_bounds(counts, gid, ngroups, level, ConfidenceSequence(prior) if bound is None else bound)[1]
