"""Sequential (early-stopping) certification: the stopping rules, with an error budget valid under early stopping.

Cohen's CERTIFY draws a fixed n (e.g. 100,000) estimation samples for every image. Most images do not need them:
an image whose smoothed probability pA is far from every decision threshold is settled after a few hundred samples.
This module draws samples in chunks up to the looks t_1 < ... < t_K = n_max (checkpoints(), fixed before any
sampling) and stops an image as soon as its outcome *at the radii the evaluation reports* can no longer change,
while keeping the certificate's error probability at most alpha. Several bounds do that (the `bound` argument;
msrs.bounds explains why each stays valid whatever the stopping rule): AlphaSpending, "spending", the default,
the same with Voracek's shares, "voracek", and the anytime-valid ConfidenceSequence, "cs",
BettingConfidenceSequence, "betting", and BettingFinal, "betting-final" (section "Which bound" below).

Common to both:
  * The radius comes from the bound at the stopping look, never from Clopper-Pearson at the full alpha on the
    stopped sample: that is valid only for one n fixed in advance, and re-evaluating it after every chunk and
    stopping when it looks good inflates the error far above alpha (tests/test_sequential.py shows this on the
    same simulations where both bounds here stay below alpha).
  * The selection sample (n0, noise stream streams.selection(stage)) is independent of the estimation samples
    (streams.estimation(stage)): cA is fixed before the estimation starts, so the X_i = [f(x + delta_i) = cA] are i.i.d.
    Bernoulli(pA) given cA, which is all either bound needs.
  * Decisions to stop or to abstain make no claim, so they need no error budget: only the final bounds do.
  * Samples are keyed by their global index (msrs.ops.philox), so the first t samples of a sequential run are the
    first t samples of a fixed-n run with the same seed, and chunks can be split over ranks (msrs.distributed).

The single-sigma stopping rule (decide / run_sequential) for target radii r_1 < ... < r_K at noise level sigma:
threshold th(r) = Phi(r / sigma + PhiInv(p0)) (the pA needed for radius r; th(0) = p0). With the current bounds
(lower, upper), the image is in bucket k = #{thresholds <= lower} (thresholds [p0, th(r_1), ...]; bucket 0 = not
certified yet). Stop when
  * upper < p0: ABSTAIN (the smoothed classifier cannot be certified at this sigma);
  * bucket k is the highest: certify;
  * upper < next threshold (p is below it, so more samples will not reach it), or the next threshold is out of
    reach (below; p0 too when the best reachable lower is only p0): certify (k > 0) or ABSTAIN (k = 0);
  * t = n_max: certify if lower > p0, else ABSTAIN (lower = p0: radius 0 certifies nothing, as in Cohen's rule).
The reported radius is sigma * (PhiInv(lower) - PhiInv(p0)) at the stopping look (it is >= r_k). Without target
radii, only the abstain rules stop early (the radius is then the largest the n_max budget allows).

Out of reach (reachable_successes). A threshold is out of reach when the final look's lower bound (the tightest any
later look gives: spending_weights makes the final share the largest) stays below it even if the remaining
samples bring the most successes still "reachable": with futility=None every one of them (curtailment: out of
reach for certain), with futility = gamma (the default, DEFAULT_FUTILITY) the upper (1 - gamma_t) quantile of the
remaining successes under the posterior predictive of the counts so far (Jeffreys prior), gamma_t ramping up
linearly from 0 to gamma over the first futility_ramp (DEFAULT_FUTILITY_RAMP) of the budget. Giving up on a
threshold that the fixed-n run would have reached costs a bucket at that image (a certified fraction below fixed
n's), never validity: the stopping rule needs no error budget, as long as the certificate is the bound at the
stopping look. The prediction never enters a bound (tests/test_validity.py's PredictedFinal shows what happens
when it does). Why it pays: the images whose fixed-n radius lies just below a target radius cannot show
upper < threshold before n_max (their pA is above the threshold, only the final bound's margin keeps them below),
so with curtailment alone they draw the whole budget; the hindsight oracle (benchmarks/sequential_savings.py)
spends almost nothing on them. Measured on recorded votes (benchmarks/results/sequential_*.json): 1.8x fewer
samples than curtailment alone at N = 100,000 on the test digits (685,918 against 1,217,850), every image in its
fixed-n bucket; in simulations about one image per 100 in a lower bucket or fewer
(benchmarks/sequential_simulations.py, results in benchmarks/results/).

Which bound (issue 14; benchmarks/results/sequential_smooth-0.25_n100000.json and _grid.json,
sequential_simulations_*_betting.json). Replayed on the recorded votes (smooth-0.25, the shipped classifier,
N = 100,000, the first 100 test digits, target radii 0 .. 2; fixed n 10,010,000 samples, hindsight oracle
115,941), total samples (every image in its fixed-n bucket with each bound):
    spending (default) 685,918 (14.6x fewer than fixed n, 5.9x the oracle);  cs 596,721 (16.8x);
    betting 618,172 (16.2x, 5.3x the oracle);  voracek 652,625 (15.3x);
    betting-final 729,597 (13.7x);  betting-final with final_share 0.5 679,210 (14.7x).
On the first 100 validation digits: spending 429,904 (23.3x), betting 349,275 (28.7x, one image a bucket lower).
On simulated streams (benchmarks/sequential_simulations.py, 16 seeds; fixed-n samples / the rule's, images per 100
in another bucket than fixed n's): smooth-0.25 population (the radii of the classifier before its retraining):
spending 16.0x, 0.13; betting 20.2x, 1.06; voracek 17.7x, 0.81; cs 20.7x, 1.38; denoised-0.25: spending 5.6x, 0.31;
betting 7.5x, 4.9; voracek 6.2x, 2.8; cs 7.6x, 6.1; denoised-0.5: spending 11.9x, 0.19; betting 14.9x, 1.75; voracek
13.2x, 0.88; cs 15.1x, 1.94.
The betting CS is the tightest anytime bound (1 - lower 17 % above fixed-n Clopper-Pearson at 0.9 alpha on
average, "cs" 32 %, the spending's early looks 44 %), so it stops the settled images soonest; but at n_max it is
looser than Clopper-Pearson at 0.9 alpha, so the images near a threshold end a bucket lower, 8 to 16 times as
often as with the default; Voracek's shares (0.062 alpha at n_max) likewise, 4 to 9 times (with final_share 0.9
instead, "voracek" spends less early than the default: 753,614 samples in the replay). Spending 0.1 alpha on the
betting CS instead of on the early looks ("betting-final") saves nothing: at 0.1 alpha the betting CS is no
tighter than Clopper-Pearson at 0.1 alpha / 76 once an image has a few failures. So "spending" stays the default
(no bound both saves samples and keeps the buckets), and "betting" is the choice when 10-20 % fewer samples
matter more than 1 to 5 images per 100 in a lower bucket.

Looks. The default schedule is geometric from DEFAULT_FIRST = 64 samples with growth DEFAULT_GROWTH = 1.1 (77
looks up to n_max = 100,000): an image stops at most 10% after the sample count its bound needed. More looks
spread the early share of alpha thinner (0.1 alpha / 76 per look by default), but Clopper-Pearson's sample count
grows only with log(1 / level): measured on the digits, looks 10% apart need about 10% fewer samples than
doubling looks (and 4% fewer than 25% apart).

The sequential cascade (run_cascade_sequential; the multi-scale cascade of msrs.decisions, Jeong & Shin 2023).
Stages s = 0 .. L-1, largest sigma first, all with the same looks; cert, off = msrs.decisions.schedule_levels(alpha,
L, "union"). Entering stage s, an image draws its n0 selection samples (streams.selection(s), samples 0 .. n0-1) -> class c_s,
then the estimation samples of streams.estimation(s) look by look, with the bounds of c_s at level cert[s]:
  * lower >= p0                                  -> "certify" at this stage (final: the running lower only grows);
  * upper < p0                                   -> "fall_through": enter stage s + 1 (after the last: ABSTAIN);
  * t = n_max, or neither can happen any more     -> "undecided": ABSTAIN, as the fixed-n cascade
    (best-case lower at n_max < p0 and worst-case upper at n_max >= p0, both read at the final look; best and
    worst case: the most and the fewest successes still reachable, reachable_successes); with
    undecided="fall_through" (msrs.decisions) the stage instead falls through as soon as its best-case lower is
    below p0 (it can no longer certify), whatever its upper bound;
  * otherwise                                    -> "continue" (route_stage).
Certified at stage s with class cA, the radius is msrs.decisions's R = min(R_s, min_{j<s} -r_j) with components
    R_s  = sigma_s (PhiInv(lower_s) - PhiInv(p0))       (running lower bound of c_s = cA, level cert[s]),
    -r_j = sigma_j (PhiInv(p0) - PhiInv(pB_upper_j))    for every earlier stage j (each fell through),
pB_upper_j the largest upper end over groups of the classes other than cA, pooled on stage j's *selection* counts
(msrs.decisions.pool_groups), one bound per group at off[j, s] / (number of groups) on stage j's estimation counts at
its latest look (other_classes_upper's rule). R <= 0: ABSTAIN (as the fixed-n cascade).
Stopping a certified image. Each component has a best reachable value: R_s if the remaining stage-s samples brought
the most votes for cA still reachable (read at the final look), but not above the running upper bound; -r_j if
they brought the fewest votes outside cA still reachable, group by group (final look), but with pB_upper_j not
below the largest group's current lower end ("reachable": reachable_successes, as in the single-sigma rule; with
futility=None every remaining sample for cA, and none outside it). With target
radii, the image stops when the bucket of min(best reachable) equals the bucket of min(current): its bucket can
no longer change, the earlier stages' caps included. Otherwise it draws the next look of every component in the
minimum's bucket (the minimum rises only if all of them rise): its certifying stage, or an earlier stage.
Fall-through stages. A stage that falls through early has few samples, so a loose off-class bound and a small cap;
but which classes that bound is about (all but cA) is known only once a later stage certifies. So the stage is
left where it fell through and *resumed* after the certification, look by look, for as long as its cap holds the
certificate's bucket down and can still lift it (up to n_max; the samples stay the prefix of stream 2j + 1).
Without target radii every component samples to n_max (the largest radius the budget allows) and only "abstain"
(best reachable R <= 0) stops early.
Validity: msrs.decisions's statements, each now at a data-dependent look.
  C_s  "p^s_{c_s}(x) >= lower_s at the look where stage s stopped", level cert[s]: c_s comes from the independent
       selection sample; spending: wrong only on the union of the looks' events (sum_k cert[s] w_k = cert[s]),
       CS: covered at every t. The look may depend on anything, e.g. on the earlier stages' caps.
  O_j  "max_{c != cA} p^j_c(x) <= pB_upper_j at the look where stage j stopped", level off[j] (= off[j, s] for
       every s under "union"). What it is about is independent of stage j's estimation samples: cA is the class
       of the first stage after j whose routing certifies, and routing at a stage uses that stage's samples only
       (the caps decide when a certified image stops and whether its radius is > 0, never which stage certifies
       or its class); the groups come from stage j's selection counts. Given them, every group's bound is spent over the looks (or anytime
       valid) at off[j] / groups, so O_j holds with probability >= 1 - off[j] at *any* look, including one chosen
       with the later stages' data, as resuming a fall-through stage does.
A wrong certificate needs a wrong C_s at its certifying stage or a wrong O_j at an earlier stage, so P(wrong) <=
sum_s cert[s] + sum_{j<L-1} off[j] = alpha, whatever the stopping looks. The "paper" schedule is no union bound:
refused in this mode. Unlike the fixed-n "union" schedule, the off-class bound is the exact grouped bound alone
(the fixed-n cascade also takes the max with the paper's Goodman bound, which is never needed for validity).
"""
from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

from . import checks, decisions, streams
from .bounds import (DEFAULT_PRIOR, ConfidenceSequence, _group_bounds, _successes_trials, make_bound,
                     signed_radius)

__all__ = [
    "ABSTAIN",
    "CERTIFY",
    "CONTINUE",
    "CascadeResult",
    "SequentialResult",
    "checkpoints",
    "looks",
    "decide",
    "decide_many",
    "radius_from_lower",
    "route_stage",
    "route_stage_many",
    "run_cascade_sequential",
    "run_sequential",
    "thresholds",
]

CONTINUE, CERTIFY, ABSTAIN = 0, 1, 2
DEFAULT_FIRST = 64  # the first look (samples): enough for an all-success image to pass the first thresholds
DEFAULT_GROWTH = 1.1  # looks 10% apart: the overshoot of the ideal stopping time is at most 10%
DEFAULT_FUTILITY = 0.02  # give up on a threshold when the predictive chance of reaching it is below 2%
DEFAULT_FUTILITY_RAMP = 0.1  # ... growing to that level over the first 10% of the budget
ROUTE_CONTINUE, ROUTE_CERTIFY, ROUTE_FALL_THROUGH, ROUTE_UNDECIDED = 0, 1, 2, 3
ROUTE_NAMES = {ROUTE_CONTINUE: "continue", ROUTE_CERTIFY: "certify", ROUTE_FALL_THROUGH: "fall_through",
               ROUTE_UNDECIDED: "undecided"}


# ------------------------------------------------------------------------------------------- single-sigma stopping
def thresholds(target_radii, sigma: float, p0: float = 0.5) -> np.ndarray:
    """The pA needed for each radius: Phi(r / sigma + PhiInv(p0)), ascending, starting with p0 (radius 0).
    Radii <= 0 fold into the leading p0."""
    sigma, p0 = float(sigma), float(p0)
    if not sigma > 0:
        raise checks.ArgumentValueError(f"sigma: expected > 0, got {sigma}")
    if not 0.5 <= p0 < 1.0:
        raise checks.ArgumentValueError(f"p0: expected a value in [0.5, 1), got {p0}")
    return np.concatenate(([p0], norm.cdf(_positive_radii(target_radii) / sigma + norm.ppf(p0))))


def _positive_radii(target_radii) -> np.ndarray:
    radii = np.unique(np.asarray([] if target_radii is None else target_radii, dtype=np.float64))
    if radii.size and not np.all(np.isfinite(radii)):
        raise checks.ArgumentValueError("target_radii: expected finite values")
    return radii[radii > 0]


def radius_from_lower(lower, sigma: float, p0: float = 0.5) -> np.ndarray:
    """sigma * (PhiInv(lower) - PhiInv(p0)) where lower >= p0, else 0 (abstain)."""
    lower = np.asarray(lower, dtype=np.float64)
    return np.where(lower >= p0, signed_radius(float(sigma), lower, float(p0)), 0.0)


def _trial_counts(successes, trials, n_max: int) -> tuple[np.ndarray, np.ndarray]:
    s, t = _successes_trials(successes, trials)
    if np.any(t > n_max):
        raise checks.ArgumentValueError(f"trials: expected <= n_max = {n_max}")
    return np.atleast_1d(s), np.atleast_1d(t)


def _current(bound, s, t, level, lower, upper) -> tuple[np.ndarray, np.ndarray]:
    """The bounds at (s, t), or the given ones (e.g. running intersections) in their place."""
    if lower is None or upper is None:
        lo, hi = (np.atleast_1d(v) for v in bound(s, t, level))
    if lower is not None:
        lo = np.broadcast_to(np.asarray(lower, dtype=np.float64), s.shape)
    if upper is not None:
        hi = np.broadcast_to(np.asarray(upper, dtype=np.float64), s.shape)
    return lo, hi


def decide_many(successes, trials, n_max: int, sigma: float, alpha: float, target_radii=None, p0: float = 0.5, *,
                prior=DEFAULT_PRIOR, lower=None, upper=None, bound=None, futility=None,
                futility_ramp: float = DEFAULT_FUTILITY_RAMP):
    """Vectorised stopping rule. Returns (status, radius, lower, upper) arrays: status CONTINUE / CERTIFY / ABSTAIN,
    radius > 0 only where certified. bound: a bound object (default ConfidenceSequence(prior)); lower / upper:
    bounds to use instead of bound(successes, trials) (e.g. the running intersection), valid at level alpha.
    futility / futility_ramp: the reachability prediction (reachable_successes); None: curtailment only."""
    n_max = checks.integer("n_max", n_max, minimum=1)
    bound = ConfidenceSequence(prior) if bound is None else bound
    ths = thresholds(target_radii, sigma, p0)
    s, t = _trial_counts(successes, trials, n_max)
    lo, hi = _current(bound, s, t, alpha, lower, upper)
    reach = reachable_successes(s, t, n_max, futility, futility_ramp)
    best = bound(s + reach, np.full_like(t, n_max), alpha)[0]  # read at the final look
    best = np.maximum(np.atleast_1d(best), lo)
    bucket = np.searchsorted(ths, lo, side="right")  # number of thresholds <= lower
    certified = (bucket > 0) & (lo > p0)  # lower = p0 exactly: radius 0, no certificate (as Cohen's CERTIFY)
    if target_radii is None or ths.size == 1:
        nxt = np.full_like(lo, ths[0])
        top = np.zeros(lo.shape, dtype=bool)
        blocked = ~certified & (best <= ths[0])  # p0 out of reach (lower must exceed it): abstain early
    else:
        top = bucket >= ths.size
        nxt = ths[np.minimum(bucket, ths.size - 1)]
        blocked = ~top & ((hi < nxt) | (best < nxt) | (best <= p0))  # best <= p0: can never certify
    done = (t >= n_max) | (hi < p0) | top | blocked
    status = np.where(done, np.where(certified & ~(hi < p0), CERTIFY, ABSTAIN), CONTINUE)
    radius = np.where(status == CERTIFY, radius_from_lower(lo, sigma, p0), 0.0)
    return status, radius, lo, hi


def reachable_successes(successes, trials, n_max: int, futility=None,
                        futility_ramp: float = DEFAULT_FUTILITY_RAMP) -> np.ndarray:
    """The most successes the remaining n_max - trials samples are taken to reach when asking whether a threshold
    is still within reach (a stopping decision only: it never enters a bound).

    futility None: all of them (curtailment: a threshold not reached even then is out of reach for certain).
    futility = gamma: the upper (1 - gamma_t) quantile of the remaining successes under the posterior predictive
    of p given the counts so far (Jeffreys prior Beta(1/2, 1/2): beta-binomial with mean m (s + 1/2) / (t + 1)
    and variance m q (1 - q) (t + 1 + m) / (t + 2), m = n_max - t, q that mean rate; normal approximation),
    capped at m. gamma_t = gamma min(1, t / (futility_ramp n_max)) grows linearly over the first futility_ramp
    of the budget (0: gamma from the first look), so that a threshold is given up on early only when it is
    clearly out of reach: early counts are few, and giving up costs most when it is wrong and saves least."""
    s, t = (np.asarray(v, dtype=np.float64) for v in (successes, trials))
    left = n_max - t
    if futility is None:
        return left
    ramp = float(futility_ramp) * n_max
    gamma = float(futility) * (np.minimum(1.0, t / ramp) if ramp > 0 else np.ones_like(t))
    rate = (s + 0.5) / (t + 1.0)
    sd = np.sqrt(left * rate * (1.0 - rate) * (t + 1.0 + left) / (t + 2.0))
    with np.errstate(divide="ignore"):
        z = norm.isf(gamma)  # gamma = 0 (t = 0): +inf, all of them
    return np.where(np.isfinite(z), np.minimum(left, np.ceil(left * rate + np.where(np.isfinite(z), z, 0.0) * sd)),
                    left)


def check_futility(futility, futility_ramp) -> None:
    """futility: None or a level in (0, 1); futility_ramp: a fraction of the budget in [0, 1]."""
    if futility is not None and not (isinstance(futility, (int, float)) and 0.0 < float(futility) < 1.0):
        raise checks.ArgumentValueError(f"futility: expected None or a level in (0, 1), got {futility!r}")
    if not (isinstance(futility_ramp, (int, float)) and 0.0 <= float(futility_ramp) <= 1.0):
        raise checks.ArgumentValueError(f"futility_ramp: expected a fraction of the budget in [0, 1], got "
                                        f"{futility_ramp!r}")


def decide(successes: int, trials: int, n_max: int, sigma: float, alpha: float, target_radii=None,
           p0: float = 0.5, *, prediction: int = 0, prior=DEFAULT_PRIOR, lower=None, upper=None, bound=None,
           futility=None, futility_ramp: float = DEFAULT_FUTILITY_RAMP):
    """'continue', or the final (prediction, radius) with prediction -1 and radius 0.0 for ABSTAIN.

    `prediction` is the class selected on the independent n0 sample (returned when certified)."""
    status, radius, _, _ = decide_many(successes, trials, n_max, sigma, alpha, target_radii, p0,
                                       prior=prior, lower=lower, upper=upper, bound=bound, futility=futility,
                                       futility_ramp=futility_ramp)
    status, radius = int(status[0]), float(radius[0])
    if status == CONTINUE:
        return "continue"
    return (int(prediction), radius) if status == CERTIFY else (-1, 0.0)


def checkpoints(n_max: int, schedule: str = "geometric", *, first: int | None = None,
                growth: float = DEFAULT_GROWTH, chunk: int | None = None) -> list[int]:
    """Cumulative sample counts at which the bounds are evaluated (the looks), ending at n_max.

    "geometric": first, first * growth, ... (rounded up), default first = DEFAULT_FIRST (log(n_max / first) /
    log(growth) + 1 looks, overshoot of the ideal stopping time below a factor `growth`);
    "fixed": chunk, 2 chunk, ... (default chunk = max(64, n_max // 32))."""
    n_max = checks.integer("n_max", n_max, minimum=1)
    points = []
    if schedule == "geometric":
        if not growth > 1:
            raise checks.ArgumentValueError(f"growth: expected > 1, got {growth}")
        t = min(n_max, max(1, operator.index(first)) if first is not None else DEFAULT_FIRST)
        while t < n_max:
            points.append(t)
            step = max(t + 1, math.ceil(t * growth)) - t
            if n_max - t - step < step / 2:  # no last chunk much smaller than the one before: go to n_max
                break
            t += step
    elif schedule == "fixed":
        step = operator.index(chunk) if chunk is not None else max(64, n_max // 32)
        if step < 1:
            raise checks.ArgumentValueError(f"chunk: expected >= 1, got {step}")
        points = list(range(step, n_max, step))
    else:
        raise checks.ArgumentValueError(f"schedule: expected 'geometric' or 'fixed', got {schedule!r}")
    return points + [n_max]


def looks(n_max: int, points, schedule, first, growth, chunk) -> list[int]:
    """The given checkpoints (n_max added), or checkpoints(n_max, ...)."""
    if points is None:
        return checkpoints(n_max, schedule, first=first, growth=growth, chunk=chunk)
    points = sorted({operator.index(p) for p in points} | {n_max})
    if points[0] < 1 or points[-1] > n_max:
        raise checks.ArgumentValueError(f"points: expected checkpoints in [1, {n_max}]")
    return points


@dataclass
class SequentialResult:
    prediction: np.ndarray  # int64 [B]: cA where certified, -1 where abstained
    radius: np.ndarray  # float64 [B]: certified radius (0 when abstaining)
    samples: np.ndarray  # int64 [B]: estimation samples drawn per image
    successes: np.ndarray  # int64 [B]: votes for cA among them
    lower: np.ndarray  # float64 [B]: lower bound at the stopping time (running max)
    upper: np.ndarray  # float64 [B]: upper bound at the stopping time (running min)

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
    bound="spending",
    final_share: float | None = None,
    weights=None,
    prior=DEFAULT_PRIOR,
    schedule: str = "geometric",
    first: int | None = None,
    growth: float = DEFAULT_GROWTH,
    chunk: int | None = None,
    points: Sequence[int] | None = None,
    intersect: bool = True,
    futility: float | None = DEFAULT_FUTILITY,
    futility_ramp: float = DEFAULT_FUTILITY_RAMP,
) -> SequentialResult:
    """Sequential CERTIFY of a group of images, given their selected classes.

    draw(image_indices, num_samples, sample_start) -> votes for each image's selected class among its estimation
    samples sample_start .. sample_start + num_samples - 1 (image_indices: int64 positions into `predictions`;
    every image still running has drawn the same number of samples, so sample_start is one int).
    msrs.procedures.certify_sequential builds it from the engine's counts of streams.estimation(0).
    predictions: cA per image from the selection sample (-1: abstain without sampling).
    Stops each image by the rule in the module docstring at the looks `points` (default: checkpoints(n_max,
    schedule, first=, growth=, chunk=)). bound: "spending" (Clopper-Pearson with alpha spent over the looks:
    final_share or weights, see spending_weights), "cs" (the confidence sequence with `prior`) or a bound object.
    intersect: use the running intersection of the bounds over the looks (valid, tighter).
    futility / futility_ramp: when a target radius counts as out of reach (reachable_successes; None:
    curtailment only). A stopping decision: it changes which bucket an image may end in, never a bound.
    Returns a SequentialResult; iterating over it gives (prediction, radius, samples_used) per image.
    """
    cls = np.asarray(predictions, dtype=np.int64).reshape(-1)
    n_max = checks.integer("n_max", n_max, minimum=1)
    alpha = checks.level("alpha", alpha)
    check_futility(futility, futility_ramp)
    thresholds(target_radii, sigma, p0)  # validates sigma, p0, radii up front
    points = looks(n_max, points, schedule, first, growth, chunk)
    bound = make_bound(bound, points, final_share=final_share, weights=weights, prior=prior)
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
            raise checks.ArgumentValueError(f"draw: expected {active.size} vote counts in [0, {num}], got shape {votes.shape}")
        successes[active] += votes
        samples[active] = point
        done_at = point
        lo, hi = bound(successes[active], samples[active], alpha)
        if intersect:
            lo, hi = np.maximum(lo, lower[active]), np.minimum(hi, upper[active])
        lower[active], upper[active] = lo, hi
        st, rad, _, _ = decide_many(successes[active], samples[active], n_max, sigma, alpha, target_radii, p0,
                                    lower=lo, upper=hi, bound=bound, futility=futility, futility_ramp=futility_ramp)
        status[active], radius[active] = st, rad
    prediction = np.where(status == CERTIFY, cls, -1)
    return SequentialResult(prediction, np.where(status == CERTIFY, radius, 0.0), samples, successes, lower, upper)


# ----------------------------------------------------------------------------------------------- cascade routing
def route_stage_many(successes, trials, n_max: int, alpha_s: float, p0: float = 0.5, *, prior=DEFAULT_PRIOR,
                     lower=None, upper=None, bound=None, futility=None,
                     futility_ramp: float = DEFAULT_FUTILITY_RAMP, undecided: str = "abstain") -> np.ndarray:
    """Vectorised three-way routing of one cascade stage (codes ROUTE_CONTINUE / ROUTE_CERTIFY /
    ROUTE_FALL_THROUGH / ROUTE_UNDECIDED), from the bounds of the selected class at the stage's level alpha_s
    (bound: a bound object, default ConfidenceSequence(prior); lower / upper: running bounds to use instead).
    futility / futility_ramp: what counts as reachable (reachable_successes; None: curtailment only).
    undecided="fall_through" (msrs.decisions): the stage falls through as soon as it can no longer certify by
    n_max (nothing needs showing that it is not confident), so ROUTE_UNDECIDED never comes back."""
    checks.choice("undecided", undecided, decisions.UNDECIDED_RULES)
    n_max = checks.integer("n_max", n_max, minimum=1)
    bound = ConfidenceSequence(prior) if bound is None else bound
    s, t = _trial_counts(successes, trials, n_max)
    lo, hi = _current(bound, s, t, alpha_s, lower, upper)
    n = np.full_like(t, n_max)
    most = reachable_successes(s, t, n_max, futility, futility_ramp)  # most successes still reachable
    fewest = (n_max - t) - reachable_successes(t - s, t, n_max, futility, futility_ramp)  # fewest
    best_lower = np.atleast_1d(bound(s + most, n, alpha_s)[0])
    worst_upper = np.atleast_1d(bound(s + fewest, n, alpha_s)[1])
    route = np.full(lo.shape, ROUTE_CONTINUE)
    cannot_certify = np.maximum(best_lower, lo) < p0
    stuck = (t >= n_max) | (cannot_certify & (np.minimum(worst_upper, hi) >= p0))
    route = np.where(stuck, ROUTE_UNDECIDED, route)
    if undecided == "fall_through":
        route = np.where((t >= n_max) | cannot_certify, ROUTE_FALL_THROUGH, route)
    route = np.where(hi < p0, ROUTE_FALL_THROUGH, route)
    route = np.where(lo >= p0, ROUTE_CERTIFY, route)
    return route


def route_stage(successes: int, trials: int, n_max: int, alpha_s: float, p0: float = 0.5, *,
                prior=DEFAULT_PRIOR, lower=None, upper=None, bound=None, futility=None,
                futility_ramp: float = DEFAULT_FUTILITY_RAMP, undecided: str = "abstain") -> str:
    """'certify' | 'fall_through' | 'undecided' | 'continue' for one cascade stage (rule in the module docstring)."""
    return ROUTE_NAMES[int(route_stage_many(successes, trials, n_max, alpha_s, p0, prior=prior, lower=lower,
                                            upper=upper, bound=bound, futility=futility,
                                            futility_ramp=futility_ramp, undecided=undecided)[0])]


# ---------------------------------------------------------------------------------------------- sequential cascade
@dataclass
class CascadeResult:
    prediction: np.ndarray  # int64 [B]: the certified class, -1 where abstained
    radius: np.ndarray  # float64 [B]: certified radius (0 when abstaining)
    stage: np.ndarray  # int64 [B]: the certifying stage, -1 when abstaining
    last: np.ndarray  # int64 [B]: the stage that decided, or the last stage tried
    p_lower: np.ndarray  # float64 [B]: running lower bound of stage `last`'s selected class
    counts0: np.ndarray  # int64 [B, L, K]: selection counts (zeros for stages not reached)
    counts: np.ndarray  # int64 [B, L, K]: estimation counts drawn (samples 0 .. samples[b, s] - 1 of each stage)
    samples: np.ndarray  # int64 [B, L]: estimation samples drawn per stage

    def __len__(self) -> int:
        return len(self.prediction)

    @property
    def total_samples(self) -> np.ndarray:
        """Monte Carlo samples per image, selection (n0 per stage entered) and estimation."""
        return self.samples.sum(axis=1) + self.counts0.sum(axis=(1, 2))


def run_cascade_sequential(
    draw: Callable[[np.ndarray, int, int, int], np.ndarray],
    num_images: int,
    sigmas: Sequence[float],
    n0: int,
    n_max: int,
    alpha: float,
    target_radii=None,
    p0: float = 0.5,
    *,
    bound="spending",
    final_share: float | None = None,
    weights=None,
    prior=DEFAULT_PRIOR,
    alpha_schedule: str = "union",
    schedule: str = "geometric",
    first: int | None = None,
    growth: float = DEFAULT_GROWTH,
    chunk: int | None = None,
    points: Sequence[int] | None = None,
    intersect: bool = True,
    futility: float | None = DEFAULT_FUTILITY,
    futility_ramp: float = DEFAULT_FUTILITY_RAMP,
    undecided: str = "abstain",
) -> CascadeResult:
    """Sequential multi-scale cascade of `num_images` images (rules and validity in the module docstring).

    draw(image_indices, stream, num_samples, sample_start) -> int vote counts [len(image_indices), K] of samples
    sample_start .. sample_start + num_samples - 1 of noise stream `stream` at sigma =
    sigmas[streams.stage_of(stream)]: streams.selection(s) is stage s's selection (always samples 0 .. n0-1),
    streams.estimation(s) its estimation samples (msrs.procedures.certify_cascade_sequential builds it from the
    engine). sigmas: strictly decreasing (stage 0 = largest). The error budget is
    msrs.decisions.schedule_levels(alpha, L, "union") (the "paper" schedule is no union bound: refused).
    bound / final_share / weights / prior / schedule / first / growth / chunk / points / intersect / futility /
    futility_ramp: as in run_sequential (the looks are the same for every stage). undecided: "abstain" (the
    paper's rule) or "fall_through" (msrs.decisions; route_stage_many).
    """
    sigmas = [float(s) for s in sigmas]
    if not sigmas or any(s <= 0 for s in sigmas) or any(a <= b for a, b in zip(sigmas, sigmas[1:])):
        raise checks.ArgumentValueError(f"sigmas: expected strictly decreasing noise levels > 0 (stage 0 = largest), got {sigmas}")
    if alpha_schedule != "union":
        raise checks.ArgumentValueError(f"alpha_schedule: the sequential cascade needs 'union' (a union bound over "
                                        f"its statements); {alpha_schedule!r} is not valid in sequential mode")
    alpha = checks.level("alpha", alpha)
    check_futility(futility, futility_ramp)
    checks.choice("undecided", undecided, decisions.UNDECIDED_RULES)
    n0, n_max = checks.integer("n0", n0, minimum=1), checks.integer("n_max", n_max, minimum=1)
    num_images = checks.integer("num_images", num_images, minimum=0)
    thresholds(target_radii, sigmas[-1], p0)  # validates p0 and the radii up front
    points = looks(n_max, points, schedule, first, growth, chunk)
    bound = make_bound(bound, points, final_share=final_share, weights=weights, prior=prior)
    run = _CascadeRun(draw, num_images, sigmas, n0, points, bound, alpha, p0, target_radii, intersect,
                      (futility, futility_ramp), undecided)
    run.select(np.arange(num_images), 0)
    while True:
        want = run.requests()
        if not want.any():
            break
        run.sample(want)
        run.route(want)
        run.settle()
    return run.result()


_ROUTING, _CERTIFIED, _DONE = 0, 1, 2


class _CascadeRun:
    """State of run_cascade_sequential, arrays over images b and stages s. An image is _ROUTING at its current
    stage, _CERTIFIED at its certifying stage (sampling whichever stage limits its radius bucket), or _DONE."""

    def __init__(self, draw, count, sigmas, n0, looks, bound, alpha, p0, target_radii, intersect, futility,
                 undecided):
        self.draw, self.sigmas, self.n0, self.bound, self.p0, self.intersect = draw, sigmas, n0, bound, p0, intersect
        self.futility = futility  # (level or None, ramp): reachable_successes' arguments
        self.undecided = undecided  # "abstain" | "fall_through": route_stage_many's rule
        self.looks = np.asarray(looks, dtype=np.int64)
        self.n_max = int(self.looks[-1])
        self.cert, self.off = decisions.schedule_levels(alpha, len(sigmas), "union")
        radii = _positive_radii(target_radii)
        # radius buckets: 0 = not certified (r <= 0), then one per target radius; None: no targets
        self.edges = None if target_radii is None else np.concatenate(([np.nextafter(0.0, 1.0)], radii))
        shape = (count, len(sigmas))
        self.phase = np.full(count, _ROUTING)
        self.stage = np.zeros(count, dtype=np.int64)  # current (routing) or certifying stage
        self.selected = np.full(shape, -1, dtype=np.int64)
        self.drawn = np.zeros(shape, dtype=np.int64)
        self.lower, self.upper = np.zeros(shape), np.ones(shape)  # running bounds of each stage's selected class
        self.more = np.zeros(shape, dtype=bool)  # certified images: the stages to sample next
        self.gid = None  # [B, L, K] off-class groups of the earlier stages (set at certification), -1: no group
        self.ngroups = np.ones(shape, dtype=np.int64)
        self.counts0 = self.counts = None  # [B, L, K], allocated at the first draw (K comes from it)
        self.prediction = np.full(count, -1, dtype=np.int64)
        self.radius = np.zeros(count)

    # ------------------------------------------------------------------ sampling
    def _draw(self, idx, stream, num, start) -> np.ndarray:
        votes = np.asarray(self.draw(idx, stream, num, start))
        k = (votes.shape[-1] if votes.ndim else 0) if self.counts is None else self.counts.shape[2]  # first draw: K
        if votes.shape != (idx.size, k) or k < 2 or votes.dtype.kind not in "iu" or np.any(votes < 0) \
                or np.any(votes.sum(axis=1) != num):  # one vote per sample
            raise checks.ArgumentValueError(f"draw: expected integer vote counts [{idx.size}, K] summing to {num} per image, got "
                             f"{votes.dtype} shape {votes.shape}")
        if self.counts is None:
            shape = self.drawn.shape + (votes.shape[1],)
            self.counts0, self.counts = np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.int64)
            self.gid = np.full(shape, -1, dtype=np.int64)
        return votes.astype(np.int64)

    def select(self, idx, s) -> None:
        """Enter stage s: its n0 selection samples (streams.selection(s)) fix the stage's class, before any estimation."""
        if idx.size:
            votes = self._draw(idx, streams.selection(s), self.n0, 0)
            self.counts0[idx, s] = votes
            self.selected[idx, s] = votes.argmax(axis=1)  # ties: the smallest class, as msrs.decisions
            self.stage[idx] = s

    def requests(self) -> np.ndarray:
        """[B, L]: which stage of which image draws its next look this round."""
        want = self.more.copy()
        routing = np.flatnonzero(self.phase == _ROUTING)
        want[routing, self.stage[routing]] = True
        return want

    def sample(self, want) -> None:
        """Every wanted (image, stage) draws up to its next look; images at the same stage and sample count share
        one draw call, so an evaluation always happens at a pre-set look (the spending look index is defined)."""
        for s in range(len(self.sigmas)):
            for done in np.unique(self.drawn[want[:, s], s]):
                idx = np.flatnonzero(want[:, s] & (self.drawn[:, s] == done))
                nxt = int(self.looks[np.searchsorted(self.looks, done, side="right")])
                self.counts[idx, s] += self._draw(idx, streams.estimation(s), nxt - int(done), int(done))
                self.drawn[idx, s] = nxt
                self._update_bounds(idx[self.stage[idx] == s], s)

    def _update_bounds(self, idx, s) -> None:
        """Running bounds of stage s's selected class, at the stage's level cert[s] (route and radius)."""
        if idx.size == 0:  # every image that drew at this look is at another stage (the bounds refuse no trials)
            return
        c = self.selected[idx, s]
        lo, hi = self.bound(self.counts[idx, s, c], self.drawn[idx, s], self.cert[s])
        if self.intersect:
            lo, hi = np.maximum(lo, self.lower[idx, s]), np.minimum(hi, self.upper[idx, s])
        self.lower[idx, s], self.upper[idx, s] = lo, hi

    # ------------------------------------------------------------------ decisions
    def route(self, want) -> None:
        """The routing images that drew this round: certify, fall through (enter the next stage), or abstain."""
        for s in range(len(self.sigmas)):
            idx = np.flatnonzero((self.phase == _ROUTING) & (self.stage == s) & want[:, s])
            if not idx.size:
                continue
            c = self.selected[idx, s]
            code = route_stage_many(self.counts[idx, s, c], self.drawn[idx, s], self.n_max, self.cert[s], self.p0,
                                    lower=self.lower[idx, s], upper=self.upper[idx, s], bound=self.bound,
                                    futility=self.futility[0], futility_ramp=self.futility[1],
                                    undecided=self.undecided)
            self._certify(idx[code == ROUTE_CERTIFY], s)
            self.phase[idx[code == ROUTE_UNDECIDED]] = _DONE  # abstain, as the fixed-n cascade
            fell = idx[code == ROUTE_FALL_THROUGH]
            if s + 1 < len(self.sigmas):
                self.select(fell, s + 1)
            else:
                self.phase[fell] = _DONE  # no stage left: abstain

    def _certify(self, idx, s) -> None:
        """Stage s certifies its class cA: the earlier stages' off-class groups are pooled on their own selection
        counts without cA (msrs.decisions.pool_groups), fixed from now on."""
        self.phase[idx] = _CERTIFIED
        for b in idx:
            for j in range(s):
                groups = decisions.pool_groups(self.counts0[b, j], int(self.selected[b, s]))
                for g, classes in enumerate(groups):
                    self.gid[b, j, classes] = g
                self.ngroups[b, j] = len(groups)

    def settle(self) -> None:
        """Certified images: stop once the bucket of min(radius components) cannot change, else mark the stages
        whose component holds the minimum's bucket (module docstring: "Stopping a certified image")."""
        idx = np.flatnonzero(self.phase == _CERTIFIED)
        if not idx.size:
            return
        r, reach, end = self._components(idx)
        settled, more = _plan(r, reach, end, self.edges)
        self.more[idx] = more
        done, radius = idx[settled], r[settled].min(axis=1)
        ok = radius > 0  # the fixed-n cascade abstains at r <= 0 too
        self.prediction[done[ok]] = self.selected[done[ok], self.stage[done[ok]]]
        self.radius[done[ok]] = radius[ok]
        self.phase[done] = _DONE

    def _components(self, idx):
        """(radius, best reachable radius, at n_max) [n, L] of each certified image's components: its certifying
        stage s and every earlier stage j (fell through); +inf / True for stages that are not components."""
        shape = (idx.size, len(self.sigmas))
        r, reach, end = np.full(shape, np.inf), np.full(shape, np.inf), np.ones(shape, dtype=bool)
        for s in np.unique(self.stage[idx]):
            rows = np.flatnonzero(self.stage[idx] == s)
            b = idx[rows]
            r[rows, s], reach[rows, s], end[rows, s] = self._own_radius(b, s)
            for j in range(s):
                r[rows, j], reach[rows, j], end[rows, j] = self._off_radius(b, j, s)
        return r, np.maximum(reach, r), end

    def _own_radius(self, b, s):
        """sigma_s (PhiInv(lower) - PhiInv(p0)), and its best case: the remaining samples reach the most votes for
        cA still reachable (reachable_successes; read at the final look), but no more than the running upper
        bound allows."""
        c, t = self.selected[b, s], self.drawn[b, s]
        hits = self.counts[b, s, c]
        more = reachable_successes(hits, t, self.n_max, *self.futility)
        best = self.bound(hits + more, np.full_like(t, self.n_max), self.cert[s])[0]
        reach = np.maximum(np.minimum(best, self.upper[b, s]), self.lower[b, s])
        end = t >= self.n_max
        r = _radius(self.sigmas[s], self.lower[b, s], self.p0)
        return r, np.where(end, r, _radius(self.sigmas[s], reach, self.p0)), end

    def _off_radius(self, b, j, s):
        """-r_j = sigma_j (PhiInv(p0) - PhiInv(pB_upper_j)) at level off[j, s] on stage j's counts so far, and its
        best case: up to n_max (final look) each group gains only the fewest votes still reachable (the remaining
        samples minus the most votes for the group's complement that reachable_successes allows; none at all
        without futility), but pB_upper no lower than the largest group's current lower end."""
        counts, gid, ng, level = self.counts[b, j], self.gid[b, j], self.ngroups[b, j], self.off[j, s]
        floor, upper = _group_bounds(counts, gid, ng, level, self.bound)
        t = self.drawn[b, j]
        best = _group_bounds(counts, gid, ng, level, self.bound, trials=self.n_max,
                             fewest=lambda votes, rows: (self.n_max - t[rows]) - reachable_successes(
                                 t[rows] - votes, t[rows], self.n_max, *self.futility))[1]
        end = self.drawn[b, j] >= self.n_max
        r = -_radius(self.sigmas[j], upper, self.p0)
        return r, np.where(end, r, -_radius(self.sigmas[j], np.maximum(best, floor), self.p0)), end

    def result(self) -> CascadeResult:
        count = self.phase.size
        k = 0 if self.counts is None else self.counts.shape[2]
        empty = np.zeros(self.drawn.shape + (k,), dtype=np.int64)
        counts0 = empty if self.counts0 is None else self.counts0
        counts = empty if self.counts is None else self.counts
        stage = np.where(self.prediction >= 0, self.stage, -1)
        p_lower = self.lower[np.arange(count), self.stage]
        return CascadeResult(self.prediction, np.where(self.prediction >= 0, self.radius, 0.0), stage,
                             self.stage.copy(), p_lower, counts0, counts, self.drawn)


def _radius(sigma: float, p, p0: float) -> np.ndarray:
    """sigma * (PhiInv(p) - PhiInv(p0)), signed (-inf at p = 0, +inf at p = 1), rounded toward zero."""
    return np.asarray(signed_radius(float(sigma), p, p0))


def _plan(r, reach, end, edges) -> tuple[np.ndarray, np.ndarray]:
    """Stopping rule of certified images on their radius components r [n, C] (the certificate is min over them),
    best reachable values reach >= r, and end (component at n_max). Returns (settled [n], sample [n, C]).

    With target radii (bucket edges): settled when the bucket of min(reach) is no higher than that of min(r);
    else sample every component whose bucket is the minimum's (all of them must rise for the minimum to rise).
    Without (edges None): sample every component to n_max; stop early only when min(reach) <= 0 (abstain)."""
    low, high = r.min(axis=1), reach.min(axis=1)
    if edges is None:
        settled = (high <= 0) | end.all(axis=1)
        sample = ~end
    else:
        def bucket(v):
            return np.searchsorted(edges, np.ravel(v), side="right").reshape(np.shape(v))

        current = bucket(low)
        settled = bucket(high) <= current
        sample = (bucket(r) <= current[:, None]) & ~end
    return settled, sample & ~settled[:, None]
