"""Sequential (early-stopping) certification with an anytime-valid confidence sequence.

Cohen's CERTIFY draws a fixed n (e.g. 100,000) estimation samples for every image. Most images do not need them:
an image whose smoothed probability pA is far from every decision threshold is settled after a few hundred samples.
This module draws samples in chunks and stops an image as soon as its outcome *at the radii the evaluation reports*
can no longer change, while keeping the certificate's error probability at most alpha.

Confidence sequence (CS). For the Bernoulli probability p = pA of the selected class cA, with S_t successes in t
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
at t = 10^6). Intersections over time (the running max of lower_t and min of
upper_t) are covered by the same event and are used by run_sequential.

Why the stopped certificate is valid.
  * Optional stopping: the stopping time tau is any function of the data seen so far (including the bounds
    themselves). On the event {p in CS_t for all t}, which has probability >= 1 - alpha, p >= lower_tau whatever
    tau is; so P(pA < lower_tau) <= alpha and the radius sigma * (PhiInv(lower_tau) - PhiInv(p0)) is a valid
    (1 - alpha) certificate exactly as in Cohen et al.
  * The radius is always computed from the CS lower bound at the stopping time, never from a Clopper-Pearson bound
    on the stopped sample: Clopper-Pearson is valid only for an n fixed in advance, and re-evaluating it after
    every chunk and stopping when it looks good inflates the error far above alpha (tests/test_sequential.py shows
    this on the same simulation where the CS stays below alpha).
  * The selection sample (n0, noise stream 2 * stage) is independent of the estimation samples (stream
    2 * stage + 1): cA is fixed before the sequence starts, so the X_i = [f(x + delta_i) = cA] are i.i.d.
    Bernoulli(pA) given cA, which is all the martingale needs.
  * Decisions to stop or to abstain make no claim, so they need no error budget: only the final lower bound does.
  * Samples are keyed by their global index (msrs.ops.philox), so the first t samples of a sequential run are the
    first t samples of a fixed-n run with the same seed, and chunks can be split over ranks (msrs.distributed).

The stopping rule (decide / run_sequential) for target radii r_1 < ... < r_K at noise level sigma:
threshold th(r) = Phi(r / sigma + PhiInv(p0)) (the pA needed for radius r; th(0) = p0). With the current CS (lower,
upper), the image is in bucket k = #{thresholds <= lower} (thresholds [p0, th(r_1), ...]; bucket 0 = not
certified yet). Stop when
  * upper < p0: ABSTAIN (the smoothed classifier cannot be certified at this sigma);
  * bucket k is the highest: certify;
  * upper < next threshold (p is below it, so more samples will not reach it), or the next threshold is out of
    reach even if every remaining sample up to n_max were a success: certify (k > 0) or ABSTAIN (k = 0);
  * t = n_max: certify if lower >= p0, else ABSTAIN.
The reported radius is sigma * (PhiInv(lower) - PhiInv(p0)) from the CS at the stopping time (it is >= r_k).
Without target radii, only the abstain rules stop early (the radius is then the largest the n_max budget allows).

The cost of anytime validity: the CS is slightly wider than Clopper-Pearson at the same n (radius about 1-3% smaller
at n = 10^5, 3-7% at n = 10^3 with the default Jeffreys prior (0.5, 0.5), alpha = 0.001); the savings come from
stopping settled images after a few hundred or thousand samples.

Cascade (multi-scale) routing with CS bounds, at stage s with the stage's level alpha_s = cert[s] (route_stage):
  * lower >= p0                                  -> "certify" at this stage (final: the running lower only grows);
  * upper < p0                                   -> "fall_through" to the next, smaller sigma (final);
  * t = n_max, or neither can happen any more     -> "undecided": the cascade stops and ABSTAINS
    (best-case lower at n_max < p0 and worst-case upper at n_max >= p0);
  * otherwise                                    -> "continue".
After a stage certifies class c, each earlier (fall-through) stage j needs an upper bound on the largest probability
of a class other than c at sigma_j. Goodman's and Clopper-Pearson's intervals assume a fixed n and are NOT valid on
a stopped sample; use other_classes_upper: one CS per class (or per group of classes pooled on the independent
selection counts, msrs.cascade.pool_groups) at level / (number of groups), read at stage j's stopping time.
Budget: exactly msrs.cascade's, since each fixed-n statement is replaced by an anytime-valid one at the same level:
with cert, off = msrs.cascade.schedule_levels(alpha, L, "union"), the route and the radius of stage s use the CS
at cert[s], and stage j's other-class bound uses level off[j, s] when stage s certifies; a wrong certificate needs
a wrong certifying-stage lower bound or a wrong earlier-stage bound, so P(wrong) <= sum_s cert[s] + sum_{j<L-1}
off[j] = alpha, whatever the stopping times (the "paper" schedule is not a valid union bound: not for this mode).
A stage that falls through early has few samples, hence a loose other-class bound and a smaller final radius: the
engine may keep sampling a fall-through stage (e.g. to a minimum count) before moving on; that is still valid.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import betaln, xlog1py, xlogy
from scipy.stats import norm

__all__ = [
    "ABSTAIN",
    "CERTIFY",
    "CONTINUE",
    "DEFAULT_PRIOR",
    "SequentialResult",
    "checkpoints",
    "cs_bounds",
    "decide",
    "decide_many",
    "log_martingale",
    "other_classes_upper",
    "radius_from_lower",
    "route_stage",
    "route_stage_many",
    "run_sequential",
    "thresholds",
]

DEFAULT_PRIOR = (0.5, 0.5)  # Jeffreys: tight at the extremes, where certification lives (pA near 1)
CONTINUE, CERTIFY, ABSTAIN = 0, 1, 2
ROUTE_CONTINUE, ROUTE_CERTIFY, ROUTE_FALL_THROUGH, ROUTE_UNDECIDED = 0, 1, 2, 3
ROUTE_NAMES = {ROUTE_CONTINUE: "continue", ROUTE_CERTIFY: "certify", ROUTE_FALL_THROUGH: "fall_through",
               ROUTE_UNDECIDED: "undecided"}
_BISECT_STEPS = 80  # enough to reach adjacent doubles on [0, 1]


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: expected a value in (0, 1), got {alpha}")
    return alpha


def _check_prior(prior) -> tuple[float, float]:
    a, b = (float(v) for v in prior)
    if not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"prior: expected two positive numbers (a, b), got {prior}")
    return a, b


def _counts(successes, trials) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(successes)
    t = np.asarray(trials)
    for name, v in (("successes", s), ("trials", t)):
        if v.dtype.kind not in "iuf" or (v.dtype.kind == "f" and not np.all(v == np.floor(v))):
            raise ValueError(f"{name}: expected integer counts, got {v.dtype} values")
    s, t = np.broadcast_arrays(s.astype(np.float64), t.astype(np.float64))
    if np.any(t < 0) or np.any(s < 0) or np.any(s > t):
        raise ValueError("successes, trials: expected 0 <= successes <= trials")
    return s, t


def log_martingale(successes, trials, p, prior=DEFAULT_PRIOR) -> np.ndarray:
    """log M_t(p) of the Beta(a, b)-binomial mixture (see the module docstring); broadcasts its arguments."""
    a, b = _check_prior(prior)
    s, t = _counts(successes, trials)
    p = np.asarray(p, dtype=np.float64)
    f = t - s
    return betaln(a + s, b + f) - betaln(a, b) - xlogy(s, p) - xlog1py(f, -p)


def cs_bounds(successes, trials, alpha: float, prior=DEFAULT_PRIOR, *, method: str = "bisect"):
    """(lower, upper) of the (1 - alpha) confidence sequence {p : M_t(p) < 1/alpha} after `successes` in `trials`.

    Vectorised over broadcastable arrays (returns float64 arrays, or floats for scalar input). lower = 0 when
    successes = 0, upper = 1 when successes = trials, (0, 1) when trials = 0. Both ends are rounded outwards
    (conservative). method="brentq" solves each entry with scipy.optimize.brentq instead (a loop; for checks).
    """
    alpha = _check_alpha(alpha)
    a, b = _check_prior(prior)
    s, t = _counts(successes, trials)
    scalar = s.ndim == 0
    s, t = np.atleast_1d(s), np.atleast_1d(t)
    f = t - s
    level = math.log(1.0 / alpha)
    const = betaln(a + s, b + f) - betaln(a, b) - level  # outside the CS where const - xlogy - xlog1py >= 0
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
        raise ValueError(f"method: expected 'bisect' or 'brentq', got {method!r}")
    lower = np.where(s == 0, 0.0, lower)
    upper = np.where(f == 0, 1.0, upper)
    empty = t == 0
    lower, upper = np.where(empty, 0.0, lower), np.where(empty, 1.0, upper)
    if scalar:
        return float(lower[0]), float(upper[0])
    return lower, upper


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


def thresholds(target_radii, sigma: float, p0: float = 0.5) -> np.ndarray:
    """The pA needed for each radius: Phi(r / sigma + PhiInv(p0)), ascending, starting with p0 (radius 0).
    Radii <= 0 fold into the leading p0."""
    sigma, p0 = float(sigma), float(p0)
    if not sigma > 0:
        raise ValueError(f"sigma: expected > 0, got {sigma}")
    if not 0.5 <= p0 < 1.0:
        raise ValueError(f"p0: expected a value in [0.5, 1), got {p0}")
    radii = np.unique(np.asarray([] if target_radii is None else target_radii, dtype=np.float64))
    if radii.size and not np.all(np.isfinite(radii)):
        raise ValueError("target_radii: expected finite values")
    radii = radii[radii > 0]
    return np.concatenate(([p0], norm.cdf(radii / sigma + norm.ppf(p0))))


def radius_from_lower(lower, sigma: float, p0: float = 0.5) -> np.ndarray:
    """sigma * (PhiInv(lower) - PhiInv(p0)) where lower >= p0, else 0 (abstain)."""
    lower = np.asarray(lower, dtype=np.float64)
    with np.errstate(divide="ignore"):
        r = float(sigma) * (norm.ppf(lower) - norm.ppf(float(p0)))
    return np.where(lower >= p0, r, 0.0)


def decide_many(successes, trials, n_max: int, sigma: float, alpha: float, target_radii=None, p0: float = 0.5, *,
                prior=DEFAULT_PRIOR, lower=None, upper=None):
    """Vectorised stopping rule. Returns (status, radius, lower, upper) arrays: status CONTINUE / CERTIFY / ABSTAIN,
    radius > 0 only where certified. lower / upper: bounds to use instead of cs_bounds(successes, trials) (e.g. the
    running intersection); they must be anytime-valid at level alpha."""
    n_max = operator.index(n_max)
    ths = thresholds(target_radii, sigma, p0)
    s, t = _counts(successes, trials)
    if np.any(t > n_max):
        raise ValueError(f"trials: expected <= n_max = {n_max}")
    s, t = np.atleast_1d(s), np.atleast_1d(t)
    if lower is None or upper is None:
        lo, hi = (np.atleast_1d(b) for b in cs_bounds(s, t, alpha, prior))
    if lower is not None:
        lo = np.broadcast_to(np.asarray(lower, dtype=np.float64), s.shape)
    if upper is not None:
        hi = np.broadcast_to(np.asarray(upper, dtype=np.float64), s.shape)
    best, _ = cs_bounds(s + (n_max - t), np.full_like(t, n_max), alpha, prior)  # every remaining sample a success
    best = np.maximum(np.atleast_1d(best), lo)
    bucket = np.searchsorted(ths, lo, side="right")  # number of thresholds <= lower
    certified = bucket > 0
    if target_radii is None or ths.size == 1:
        nxt = np.full_like(lo, ths[0])
        top = np.zeros(lo.shape, dtype=bool)
        blocked = ~certified & (best < ths[0])  # p0 out of reach: abstain early
    else:
        top = bucket >= ths.size
        nxt = ths[np.minimum(bucket, ths.size - 1)]
        blocked = ~top & ((hi < nxt) | (best < nxt))
    done = (t >= n_max) | (hi < p0) | top | blocked
    status = np.where(done, np.where(certified & ~(hi < p0), CERTIFY, ABSTAIN), CONTINUE)
    radius = np.where(status == CERTIFY, radius_from_lower(lo, sigma, p0), 0.0)
    return status, radius, lo, hi


def decide(successes: int, trials: int, n_max: int, sigma: float, alpha: float, target_radii=None,
           p0: float = 0.5, *, prediction: int = 0, prior=DEFAULT_PRIOR, lower=None, upper=None):
    """'continue', or the final (prediction, radius) with prediction -1 and radius 0.0 for ABSTAIN.

    `prediction` is the class selected on the independent n0 sample (returned when certified)."""
    status, radius, _, _ = decide_many(successes, trials, n_max, sigma, alpha, target_radii, p0,
                                       prior=prior, lower=lower, upper=upper)
    status, radius = int(status[0]), float(radius[0])
    if status == CONTINUE:
        return "continue"
    return (int(prediction), radius) if status == CERTIFY else (-1, 0.0)


def checkpoints(n_max: int, schedule: str = "geometric", *, first: int | None = None, growth: float = 2.0,
                chunk: int | None = None) -> list[int]:
    """Cumulative sample counts at which the bounds are evaluated, ending at n_max.

    "geometric": first, first * growth, ... (rounded up), default first = max(64, n_max // 256) (at most log2
    of n_max / first + 1 rounds, overshoot of the ideal stopping time below a factor `growth`);
    "fixed": chunk, 2 chunk, ... (default chunk = max(64, n_max // 32))."""
    n_max = operator.index(n_max)
    if n_max < 1:
        raise ValueError(f"n_max: expected >= 1, got {n_max}")
    points = []
    if schedule == "geometric":
        if not growth > 1:
            raise ValueError(f"growth: expected > 1, got {growth}")
        t = min(n_max, max(1, operator.index(first)) if first is not None else max(64, n_max // 256))
        while t < n_max:
            points.append(t)
            step = max(t + 1, math.ceil(t * growth)) - t
            if n_max - t - step < step / 2:  # no last chunk much smaller than the one before: go to n_max
                break
            t += step
    elif schedule == "fixed":
        step = operator.index(chunk) if chunk is not None else max(64, n_max // 32)
        if step < 1:
            raise ValueError(f"chunk: expected >= 1, got {step}")
        points = list(range(step, n_max, step))
    else:
        raise ValueError(f"schedule: expected 'geometric' or 'fixed', got {schedule!r}")
    return points + [n_max]


@dataclass
class SequentialResult:
    prediction: np.ndarray  # int64 [B]: cA where certified, -1 where abstained
    radius: np.ndarray  # float64 [B]: certified radius (0 when abstaining)
    samples: np.ndarray  # int64 [B]: estimation samples drawn per image
    successes: np.ndarray  # int64 [B]: votes for cA among them
    lower: np.ndarray  # float64 [B]: CS lower bound at the stopping time (running max)
    upper: np.ndarray  # float64 [B]: CS upper bound at the stopping time (running min)

    def __len__(self) -> int:
        return len(self.prediction)

    def __iter__(self):
        """(prediction, radius, samples_used) per image."""
        return iter(zip(self.prediction.tolist(), self.radius.tolist(), self.samples.tolist()))


def run_sequential(
    draw: Callable[[np.ndarray, int, int], Sequence[int]],
    predictions,
    n_max: int,
    sigma: float,
    alpha: float,
    target_radii=None,
    p0: float = 0.5,
    *,
    prior=DEFAULT_PRIOR,
    schedule: str = "geometric",
    first: int | None = None,
    growth: float = 2.0,
    chunk: int | None = None,
    points: Sequence[int] | None = None,
    intersect: bool = True,
) -> SequentialResult:
    """Sequential CERTIFY of a group of images, given their selected classes.

    draw(image_indices, num_samples, sample_start) -> votes for each image's selected class among its estimation
    samples sample_start .. sample_start + num_samples - 1 (image_indices: int64 positions into `predictions`;
    every image still running has drawn the same number of samples, so sample_start is one int). In the engine:
    ``sample_counts(images[idx], ids[idx], sigma, num_samples, stream=2*stage+1, seed=seed, batch_size=bs,
    sample_start=sample_start)[arange, cA[idx]]``.
    predictions: cA per image from the selection sample (-1: abstain without sampling).
    Stops each image by the rule in the module docstring at the checkpoints `points` (default: checkpoints(n_max,
    schedule, first=, growth=, chunk=)). intersect: use the running intersection of the CS (valid, tighter).
    Returns a SequentialResult; iterating over it gives (prediction, radius, samples_used) per image.
    """
    cls = np.asarray(predictions, dtype=np.int64).reshape(-1)
    n_max = operator.index(n_max)
    alpha = _check_alpha(alpha)
    thresholds(target_radii, sigma, p0)  # validates sigma, p0, radii up front
    if points is None:
        points = checkpoints(n_max, schedule, first=first, growth=growth, chunk=chunk)
    else:
        points = sorted({operator.index(p) for p in points} | {n_max})
        if points[0] < 1 or points[-1] > n_max:
            raise ValueError(f"points: expected checkpoints in [1, {n_max}]")
    count = cls.shape[0]
    successes = np.zeros(count, dtype=np.int64)
    samples = np.zeros(count, dtype=np.int64)
    lower = np.zeros(count)
    upper = np.ones(count)
    status = np.where(cls < 0, ABSTAIN, CONTINUE)
    radius = np.zeros(count)
    done_at = 0
    for point in points:
        active = np.flatnonzero(status == CONTINUE)
        if active.size == 0:
            break
        num = point - done_at
        votes = np.asarray(draw(active, num, done_at), dtype=np.int64).reshape(-1)
        if votes.shape != active.shape or np.any(votes < 0) or np.any(votes > num):
            raise ValueError(f"draw: expected {active.size} vote counts in [0, {num}], got shape {votes.shape}")
        successes[active] += votes
        samples[active] = point
        done_at = point
        lo, hi = cs_bounds(successes[active], samples[active], alpha, prior)
        if intersect:
            lo, hi = np.maximum(lo, lower[active]), np.minimum(hi, upper[active])
        lower[active], upper[active] = lo, hi
        st, rad, _, _ = decide_many(successes[active], samples[active], n_max, sigma, alpha, target_radii, p0,
                                    prior=prior, lower=lo, upper=hi)
        status[active], radius[active] = st, rad
    prediction = np.where(status == CERTIFY, cls, -1)
    return SequentialResult(prediction, np.where(status == CERTIFY, radius, 0.0), samples, successes, lower, upper)


# ----------------------------------------------------------------------------------------------- cascade routing
def route_stage_many(successes, trials, n_max: int, alpha_s: float, p0: float = 0.5, *, prior=DEFAULT_PRIOR,
                     lower=None, upper=None) -> np.ndarray:
    """Vectorised three-way routing of one cascade stage (codes ROUTE_CONTINUE / ROUTE_CERTIFY /
    ROUTE_FALL_THROUGH / ROUTE_UNDECIDED), from the CS of the selected class at the stage's alpha_s."""
    n_max = operator.index(n_max)
    s, t = _counts(successes, trials)
    s, t = np.atleast_1d(s), np.atleast_1d(t)
    if np.any(t > n_max):
        raise ValueError(f"trials: expected <= n_max = {n_max}")
    lo, hi = (np.atleast_1d(v) for v in cs_bounds(s, t, alpha_s, prior))
    if lower is not None:
        lo = np.broadcast_to(np.asarray(lower, dtype=np.float64), lo.shape)
    if upper is not None:
        hi = np.broadcast_to(np.asarray(upper, dtype=np.float64), hi.shape)
    n = np.full_like(t, n_max)
    best_lower = np.atleast_1d(cs_bounds(s + (n_max - t), n, alpha_s, prior)[0])
    worst_upper = np.atleast_1d(cs_bounds(s, n, alpha_s, prior)[1])
    route = np.full(lo.shape, ROUTE_CONTINUE)
    stuck = (t >= n_max) | ((np.maximum(best_lower, lo) < p0) & (np.minimum(worst_upper, hi) >= p0))
    route = np.where(stuck, ROUTE_UNDECIDED, route)
    route = np.where(hi < p0, ROUTE_FALL_THROUGH, route)
    route = np.where(lo >= p0, ROUTE_CERTIFY, route)
    return route


def route_stage(successes: int, trials: int, n_max: int, alpha_s: float, p0: float = 0.5, *,
                prior=DEFAULT_PRIOR, lower=None, upper=None) -> str:
    """'certify' | 'fall_through' | 'undecided' | 'continue' for one cascade stage (rule in the module docstring)."""
    return ROUTE_NAMES[int(route_stage_many(successes, trials, n_max, alpha_s, p0, prior=prior,
                                            lower=lower, upper=upper)[0])]


def other_classes_upper(counts, exclude, level: float, prior=DEFAULT_PRIOR, *, groups=None) -> np.ndarray:
    """Anytime-valid upper bound on max_{c != exclude} p_c from one stage's full vote counts [..., K] (trials =
    their sum), holding with probability >= 1 - level at any stopping time.

    groups: a partition of the classes other than `exclude` (e.g. msrs.cascade.pool_groups(counts0, exclude), pooled
    on the independent selection counts); default: every class its own group. One CS per group at
    level / len(groups) (Bonferroni) on the group's summed votes; the bound is the largest upper end. `exclude`
    (the class a later stage certifies) depends only on the later stages' samples, so a union over the groups
    of the *other* classes suffices (msrs.cascade's argument, unchanged by stopping: each CS is anytime-valid).
    This replaces Goodman's / Clopper-Pearson's fixed-n bounds, which are not valid on a stopped sample."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim < 1 or counts.shape[-1] < 2:
        raise ValueError("counts: expected [..., K] with K >= 2")
    level = _check_alpha(level)
    k = counts.shape[-1]
    lead = counts.shape[:-1]
    exclude = np.broadcast_to(np.asarray(exclude, dtype=np.int64), lead)
    if np.any((exclude < 0) | (exclude >= k)):
        raise ValueError(f"exclude: expected classes in [0, {k})")
    trials = counts.sum(axis=-1)
    if groups is None:
        _, upper = cs_bounds(counts, np.broadcast_to(trials[..., None], counts.shape), level / (k - 1), prior)
        upper = np.array(upper, dtype=np.float64).reshape(counts.shape)
        np.put_along_axis(upper, exclude[..., None], -np.inf, axis=-1)
        return upper.max(axis=-1)
    groups = [list(map(int, g)) for g in groups]
    if not groups or any(not g for g in groups):
        raise ValueError("groups: expected a non-empty list of non-empty class lists")
    members = sorted(c for g in groups for c in g)
    if len(set(members)) != len(members) or any(not 0 <= c < k for c in members) or np.any(np.isin(exclude, members)):
        raise ValueError("groups: expected disjoint groups of classes in [0, K) without the excluded class")
    totals = np.stack([counts[..., g].sum(axis=-1) for g in groups], axis=-1)
    _, upper = cs_bounds(totals, np.broadcast_to(trials[..., None], totals.shape), level / len(groups), prior)
    return np.asarray(upper, dtype=np.float64).reshape(totals.shape).max(axis=-1)
