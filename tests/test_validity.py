"""Statistical validity of the certificates, on inputs whose smoothed classifier is known exactly.

Each test runs >= 1,000 independent certifications through the real engine (SmoothedClassifier: Philox noise, the
fused ops, the vote counting), the copies of one image told apart by their image ids (the noise key), and checks
that the fraction of certificates whose radius exceeds the true radius (or whose class is wrong) is at most
alpha + 3 standard errors. Each test also recomputes the certificates from the same counts with a deliberately
broken bound and asserts that the same check rejects it, so the check has the power to see a wrong bound.
The sequential (early-stopping) modes are checked under the stopping rule that maximises their error, against the
naive rule (fixed-n Clopper-Pearson re-evaluated at every look) on the same noise.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as sps

from msrs import bounds, decisions, stopping
from msrs.smoothing import SmoothedClassifier

PHI, PPF = sps.norm.cdf, sps.norm.ppf

from conftest import fastest_cpu_backend  # noqa: E402

BACKEND = fastest_cpu_backend()
SHAPE = (1, 4, 4)
D = int(np.prod(SHAPE))


def violation_check(violations: np.ndarray, alpha: float) -> tuple[bool, float, float]:
    """(fraction <= alpha + 3 standard errors, fraction, threshold)."""
    fraction = float(np.mean(violations))
    threshold = alpha + 3 * math.sqrt(alpha * (1 - alpha) / violations.size)
    return fraction <= threshold, fraction, threshold


def orthonormal(k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D, k, generator=g, dtype=torch.float64))
    return q.T.contiguous()  # [k, D], orthonormal rows


class NaiveClopperPearson:
    """The invalid sequential rule, as a bound object for msrs.sequential (bound(successes, trials, level) ->
    (lower, upper)): fixed-n Clopper-Pearson at the full level, re-evaluated at every look."""

    def __call__(self, successes, trials, level):
        s, t = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (successes, trials))
        s, t, level = np.broadcast_arrays(s, t, np.asarray(level, dtype=np.float64))
        n = np.maximum(t, 1.0)
        return (np.where(t > 0, bounds.clopper_pearson_lower(s, n, level), 0.0),
                np.where(t > 0, bounds.clopper_pearson_upper(s, n, level), 1.0))


class HindsightBetting:
    """A deliberately broken betting confidence sequence, as a bound object: the bet is chosen after seeing the
    samples it is applied to (not predictable). For each bet of msrs.bounds' grid alone, the one-bet capital is a
    test martingale; the valid CS averages them, this one takes the best bet in hindsight (the largest capital,
    i.e. the tightest of the one-bet CSs, each at the full level): Ville's inequality no longer applies. One bet's
    lower end has a closed form: ((1 - r (1 - m)) / m)^S r^F = 1/level at m = (1 - r) / (E - r),
    E = (r^-F / level)^(1 / S); the upper end is the same on the failures."""

    def __init__(self, ratios=bounds.DEFAULT_BETTING_RATIOS):
        self.r = np.asarray(ratios)

    def _lower(self, wins, total, level):
        w, t = wins[:, None], total[:, None]
        log_e = (np.log(1 / level)[:, None] - (t - w) * np.log(self.r)) / np.maximum(w, 1)
        with np.errstate(over="ignore"):
            ends = (1 - self.r) / (np.exp(log_e) - self.r)  # (exp overflows where the end is 0)
        return np.where(wins > 0, np.minimum(ends.max(axis=1), wins / np.maximum(total, 1)), 0.0)

    def __call__(self, successes, trials, level):
        s, t = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (successes, trials))
        s, t, level = np.broadcast_arrays(s, t, np.asarray(level, dtype=np.float64))
        return self._lower(s, t, level), 1 - self._lower(t - s, t, level)


class PredictedFinal:
    """A deliberately broken use of the futility rule's prediction, as a bound object: the certificate is the
    final-look alpha-spending bound at the successes predicted for n_max (the median of the posterior predictive,
    msrs.stopping.reachable_successes at gamma = 1/2), i.e. the fixed-n certificate the run expects, instead of the
    bound on the samples drawn. The prediction may decide when to stop, never what is certified."""

    def __init__(self, looks):
        self.spending = bounds.AlphaSpending(looks)
        self.n_max = int(self.spending.looks[-1])

    def __call__(self, successes, trials, level):
        s, t = (np.atleast_1d(np.asarray(v, dtype=np.int64)) for v in (successes, trials))
        expected = stopping.reachable_successes(s, t, self.n_max, 0.5, futility_ramp=0.0).astype(np.int64)
        lower = self.spending(s + expected, np.full_like(t, self.n_max), level)[0]
        upper = self.spending(s, t, level)[1]
        return np.where(t > 0, lower, 0.0), upper


# ------------------------------------------------------------------ Cohen CERTIFY on a linear classifier
class Linear:
    """f(z) = [w.z + b > 0] as logits [0, w.z + b]. Smoothed: pA = Phi(|w.x + b| / (sigma ||w||)), and the smoothed
    classifier's decision boundary is the hyperplane itself, so the true radius is |w.x + b| / ||w||."""

    def __init__(self, w: torch.Tensor, b: float):
        self.w, self.b = w.to(torch.float32), b

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        margin = z.reshape(z.shape[0], -1) @ self.w + self.b
        return torch.stack((torch.zeros_like(margin), margin), dim=1)


# n = 100, alpha = 0.1: at pA = 0.897 the one-sided Clopper-Pearson bound exceeds pA with probability 0.0997 (exact,
# binomial sum), the largest over pA in [0.6, 0.97]: the test sits where a wrong bound shows. Broken at 2 alpha: 0.18.
N0, N, ALPHA, P_A, COPIES = 10, 100, 0.1, 0.897, 2000


@pytest.mark.parametrize("p0", [0.5, 0.6])
def test_cohen_certificates_are_valid(p0):
    sigma = 0.5
    w = 2.0 * orthonormal(1, seed=0)[0] * torch.linspace(0.5, 1.5, D, dtype=torch.float64)
    x = torch.full((1, *SHAPE), 0.5)
    margin = sigma * float(w.norm()) * PPF(P_A)  # w.x + b, so that pA = P_A
    b = margin - float(w @ x.reshape(-1).double())
    true_radius = sigma * (PPF(P_A) - PPF(p0))  # = |w.x + b| / ||w|| at p0 = 0.5
    smoothed = SmoothedClassifier(Linear(w, b), 2, backend=BACKEND)
    certs = smoothed.certify(x.expand(COPIES, *SHAPE), sigma, N0, N, ALPHA, seed=11, batch_size=4096,
                             image_ids=torch.arange(COPIES), p0=p0)
    radius = np.array([c.radius for c in certs])
    prediction = np.array([c.prediction for c in certs])
    violations = (prediction == 0) | (radius > true_radius)
    ok, fraction, threshold = violation_check(violations, ALPHA)
    assert ok, f"{fraction:.4f} of the certificates exceed the true radius (allowed {threshold:.4f})"
    print(f"cohen p0={p0}: violation fraction {fraction:.4f} (allowed {threshold:.4f})")
    assert fraction > 0.5 * ALPHA  # the setting is tight: violations are expected at a rate near alpha
    assert np.mean(prediction == 1) > 0.5  # and most certificates are not abstentions

    # the same counts with broken bounds: alpha doubled, and the two-sided interval's upper side
    n_a = np.array([c.counts[0, 1] for c in certs])
    for broken in (bounds.clopper_pearson_lower(n_a, N, 2 * ALPHA), bounds.clopper_pearson_upper(n_a, N, ALPHA)):
        broken_radius = np.where(broken >= p0, sigma * (PPF(np.minimum(broken, 1 - 1e-16)) - PPF(p0)), 0.0)
        assert not violation_check(broken_radius > true_radius, ALPHA)[0]


# ------------------------------------------------------------------ the cascade
class StageDenoiser:
    """A fake one-step denoiser (docs/DESIGN.md interface) that makes the base classifier a different, known
    function of the noisy input z at each sigma, so every stage's smoothed probabilities are in closed form.

    It recovers z = (x_t / sqrt(abar) + 1) / 2 from x_t = sqrt(abar) (2 z - 1), picks the class with the stage's
    rule and returns the eps for which finalize_denoised outputs an image whose pixel 0 encodes the class
    (0, 0.25, 0.5 for classes 0, 1, 2); ReadClass reads it back. With t1, t2, t3 = u1.z, u2.z, u3.z (u orthonormal):
      stage 0 (sigma 1.0):  class 2 if t2 >= b2, else class 0 if t3 >= c3, else class 1
      stage 1 (sigma 0.25): class 1 if t1 >= a1, else class 0
    (The cascade's guarantee holds for any per-stage base classifiers f_s = classifier(denoise_s(.)).)
    """

    in_channels = 1
    sample_size = 4
    steps = {1.0: 300, 0.25: 100}

    def __init__(self, u: torch.Tensor, a1: float, b2: float, c3: float):
        self.u, self.a1, self.b2, self.c3 = u.to(torch.float32), a1, b2, c3
        self.calls = 0

    def timestep_for(self, sigma: float) -> tuple[int, float]:
        return self.steps[sigma], 1.0 / math.sqrt(1.0 + 4.0 * sigma * sigma)

    def predict_eps(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        a0, a1 = (self.timestep_for(s)[1] for s in (1.0, 0.25))
        a = torch.where(timesteps == self.steps[1.0], a0, a1).to(x_t.dtype)[:, None, None, None]
        z = (x_t / a + 1.0) / 2.0
        t1, t2, t3 = (z.reshape(z.shape[0], -1) @ self.u.T).unbind(1)
        stage0 = torch.where(t2 >= self.b2, 2, torch.where(t3 >= self.c3, 0, 1))
        stage1 = torch.where(t1 >= self.a1, 1, 0)
        cls = torch.where(timesteps == self.steps[1.0], stage0, stage1)
        x0 = -torch.ones_like(x_t)
        x0[:, 0, 0, 0] = -1.0 + 0.5 * cls.to(x_t.dtype)
        return (x_t - a * x0) / torch.sqrt(1.0 - a * a)


def read_class(inp: torch.Tensor) -> torch.Tensor:
    cls = torch.round(inp[:, 0, 0, 0] * 4.0).long()
    return torch.nn.functional.one_hot(cls, 3).to(torch.float32)


# Point x: t1 = a1 + D1, t2 = b2 - D2, t3 = c3 (so stage 0 splits the mass 0.309 / 0.309 / 0.382 and falls
# through; stage 1 has p1 = Phi(D1 / 0.25) ~ 1 and certifies class 1 with R_1 ~ 0.6 > D2).
D1, D2, SIGMAS = 1.0, 0.3, (1.0, 0.25)


def stage0_probs(d2: np.ndarray, d3: np.ndarray) -> np.ndarray:
    """Stage-0 smoothed probabilities [..., 3] at t2 = b2 - D2 + d2, t3 = c3 + d3."""
    p2 = PHI((d2 - D2) / SIGMAS[0])
    above = PHI(d3 / SIGMAS[0])
    return np.stack(((1 - p2) * above, (1 - p2) * (1 - above), p2), axis=-1)


def true_cascade_radius() -> float:
    """The distance from x to the nearest z where the cascaded classifier G (stage s confident in c when
    p^s_c(z) > p0 = 1/2; G = the first confident stage's class) stops answering class 1. G depends on z only
    through (t1, t2, t3); its class changes only where
      - stage 0 becomes confident in class 2: t2 > b2, at distance D2;
      - stage 0 becomes confident in class 0: (1 - Phi(t2 - b2)) Phi(t3 - c3) > 1/2, a region of the (t2, t3)
        plane whose distance d0 is found below by minimising over the t2 offset (the t3 offset needed is closed
        form); stage 0 is never confident in class 1 elsewhere than where G = 1 anyway;
      - stage 1 stops being confident in class 1: t1 <= a1, at distance D1.
    """
    d2 = np.linspace(-3.0, D2, 200_001)
    need = 0.5 / (1 - PHI((d2 - D2) / SIGMAS[0]))
    d3 = np.where(need < 1, SIGMAS[0] * PPF(np.minimum(need, 1 - 1e-16)), np.inf)
    d0 = float(np.min(np.hypot(d2, d3)))
    assert d0 > D2 + 0.1 and D1 > D2 + 0.1  # so the truth is the stage-0 class-2 half-space, exactly D2
    return min(D2, d0, D1)


def test_cascade_certificates_are_valid():
    """The cascade's paths with several off-class groups (Goodman and the Bonferroni-split exact bound). Its
    violation rate sits far below the level (the split and the max with Goodman make the bound conservative here),
    so it cannot see a too-large off-class level: test_cascade_off_class_bound_is_valid_and_tight does."""
    alpha, n0, n, copies = 0.1, 32, 300, 1000
    u = orthonormal(3, seed=1)
    x = torch.full((1, *SHAPE), 0.5)
    t = (u @ x.reshape(-1).double()).tolist()
    denoiser = StageDenoiser(u, a1=t[0] - D1, b2=t[1] + D2, c3=t[2])
    smoothed = SmoothedClassifier(read_class, 3, denoiser=denoiser, backend=BACKEND)
    certs = smoothed.certify_cascade(x.expand(copies, *SHAPE), list(SIGMAS), n0, n, alpha, seed=5,
                                     batch_size=8192, image_ids=torch.arange(10_000, 10_000 + copies))
    truth = true_cascade_radius()
    prediction = np.array([c.prediction for c in certs])
    radius = np.array([c.radius for c in certs])
    violations = ((prediction >= 0) & (prediction != 1)) | (radius > truth)
    assert np.mean((prediction == 1) & np.array([c.stage == 1 for c in certs])) > 0.9  # the path under test
    ok, fraction, threshold = violation_check(violations, alpha)
    assert ok, f"{fraction:.4f} of the cascade certificates exceed the true radius (allowed {threshold:.4f})"
    print(f"cascade: violation fraction {fraction:.4f} (allowed {threshold:.4f}), mean radius {radius.mean():.3f}, "
          f"true radius {truth:.3f}")
    # Here only a wrong off-class bound on stage 0 can cause a violation (R_1 <= 0.25 PhiInv(0.05 ** (1/300)) < D1),
    # so the stricter check at that statement's own level (alpha / 4 with the union schedule, L = 2) holds too.
    assert violation_check(violations, alpha / 4)[0]

    # Broken: no off-class constraint (R = R_1), or the off-class bound's wrong side (a lower bound).
    counts0 = np.stack([c.counts0 for c in certs])
    counts = np.stack([c.counts for c in certs])
    certified = prediction == 1
    r1 = np.array([bounds.radius(SIGMAS[1], c.p_lower) for c in certs])
    assert not violation_check(certified & (r1 > truth), alpha)[0]
    wrong_side = np.array([np.max(bounds.clopper_pearson_lower(np.delete(c[0], 1), c[0].sum(), alpha / 4))
                           for c in counts])
    broken = np.minimum(r1, -SIGMAS[0] * PPF(wrong_side))
    assert not violation_check(certified & (broken > truth), alpha)[0]
    # the stage-0 counts are what the closed form says (a sanity check of the fake pipeline itself)
    expected = stage0_probs(np.zeros(1), np.zeros(1))[0]
    np.testing.assert_allclose(counts[:, 0].sum(0) / (copies * n), expected, atol=0.01)
    np.testing.assert_allclose(counts0[:, 0].sum(0) / (copies * n0), expected, atol=0.02)
    # the paper's schedule on the same counts (not union-bound valid in general), where both stages were sampled
    both = counts[:, 1].sum(1) > 0
    paper = [decisions.cascade_certify_from_counts(c0, c, list(SIGMAS), alpha, 0.5, "paper")
             for c0, c in zip(counts0[both], counts[both])]
    assert violation_check(np.array([d.radius > truth for d in paper]), alpha)[0]


# ------------------------------------------------------------------ the cascade's off-class bound, with power
def exact_bound_violation_rate(n: int, p: float, level: float) -> float:
    """P(one-sided exact upper bound at `level` < p) for k ~ Bin(n, p): CP_upper(k) < p exactly when the binomial
    CDF F(k; n, p) < level, so the probability is the largest F(k) below level (scipy's binomial, not msrs)."""
    cdf = sps.binom.cdf(np.arange(n + 1), n, p)
    below = cdf[cdf < level]
    return float(below.max()) if below.size else 0.0


def test_cascade_off_class_bound_is_valid_and_tight():
    """The cascade where only the off-class bound can make a certificate wrong, and where that bound is nearly
    exact, so that the violation rate must sit just below its level: a bound at 2x the level fails the ceiling,
    one at half the level (valid but looser) fails the floor.

    Setting: L = 2 stages, sigmas (1.0, 0.25), alpha = 0.4, p0 = 0.65, the "union" schedule: the off-class bound of
    stage 0 has level l = off[0] = alpha / (2L) = 0.1 (as has stage 0's routing, cert[0]; cert[1] = 0.2).
    Stage 0 answers class 2 with probability p2 = 0.556 (t2 >= b2), else class 1, never class 0: no class is
    near p0, so it falls through (undecided in 0.1 % of the copies, certifying with probability 7e-9). Stage 1
    answers class 1 with probability Phi(4): it certifies class 1 with
    R_1 ~ 0.25 (PhiInv(0.2 ** (1 / 500)) - PhiInv(0.65)) = 0.585.

    True radius: the cascaded classifier G (first stage with p > p0) answers 1 at x and first changes where
    stage 0 becomes confident in class 2, at distance sigma_0 (PhiInv(p0) - PhiInv(p2)) = 0.2445 along u2 (stage 1
    stays confident up to D1 - sigma_1 PhiInv(p0) = 0.90; being confident in class 1 at stage 0 keeps G = 1).
    The certificate is min(R_1, sigma_0 (PhiInv(p0) - PhiInv(pB))), pB the off-class bound on stage 0's counts. The
    classes other than cA = 1 form ONE group (class 0's zero votes are pooled into {2}) on both the selection and
    estimation counts, so pB is the one-sided Clopper-Pearson upper bound on n2 at level l, exactly (the exact
    bound and the paper's 1 - CP_lower(n1) coincide: no Bonferroni split, no Goodman). Since R_1 > truth, a
    certificate exceeds the truth exactly when pB < p2.

    Violation rate: P(CP_upper(n2) < p2) for n2 ~ Bin(500, p2) = max{F(k) : F(k) < l}, F the binomial CDF at p2
    (CP_upper(k) < p iff F(k) < l): 0.0961 at l = 0.1 (p2 sits just right of a jump of this step function, where
    the exact bound is nearly exact; no rounding of the fp32 pipeline can move it over the jump at 0.5555).
    A violation needs n2 / n below ~0.527, where stage 0 always falls through, and stage 1 certifies whenever it
    is reached, so the rate per copy is that value. Over 1200 independent copies the count X of violations is
    binomial: a valid level-l bound gives X <= Bin(1200, 0.1) in distribution, whose 0.999 quantile, 153, is the
    ceiling (a valid bound exceeds it with probability <= 0.001); the floor is the 0.001 quantile of
    Bin(1200, 0.0961), 85. Broken variants, on the same counts (and as mutations of msrs/cascade.py): the level
    doubled gives a rate of 0.196 (mean 235 violations; P(X <= 153) = 2e-10), 4x 0.376, 8x 0.778; halved (a valid
    but looser bound) 0.048 (mean 58; P(X >= 85) = 4e-4). The seed is fixed, so the outcome is deterministic; these
    probabilities are those of an unlucky seed.
    """
    alpha, p0, n0, n, copies, p2 = 0.4, 0.65, 32, 500, 1200, 0.556
    level = alpha / 4
    u = orthonormal(3, seed=2)
    x = torch.full((1, *SHAPE), 0.5)
    t = (u @ x.reshape(-1).double()).tolist()
    denoiser = StageDenoiser(u, a1=t[0] - D1, b2=t[1] - SIGMAS[0] * PPF(p2), c3=math.inf)
    smoothed = SmoothedClassifier(read_class, 3, denoiser=denoiser, backend=BACKEND)
    certs = smoothed.certify_cascade(x.expand(copies, *SHAPE), list(SIGMAS), n0, n, alpha, seed=7, batch_size=8192,
                                     image_ids=torch.arange(20_000, 20_000 + copies), p0=p0)
    truth = SIGMAS[0] * (PPF(p0) - PPF(p2))
    assert D1 - SIGMAS[1] * PPF(p0) > truth + 0.5  # the stage-0 boundary is the nearest change of G
    prediction = np.array([c.prediction for c in certs])
    radius = np.array([c.radius for c in certs])
    assert np.mean((prediction == 1) & np.array([c.stage == 1 for c in certs])) > 0.98  # the path under test
    counts0, counts = np.stack([c.counts0 for c in certs]), np.stack([c.counts for c in certs])
    assert counts0[:, 0, 0].sum() == counts[:, 0, 0].sum() == 0  # stage 0 never votes class 0: one group
    np.testing.assert_allclose(counts[:, 0, 2].sum() / (copies * n), p2, atol=0.005)  # the fake pipeline's p2

    expected = exact_bound_violation_rate(n, p2, level)
    ceiling = sps.binom.ppf(1 - 1e-3, copies, level)
    floor = sps.binom.ppf(1e-3, copies, expected)
    violations = int(np.sum(((prediction >= 0) & (prediction != 1)) | (radius > truth)))
    print(f"cascade off-class bound: {violations} violations of {copies} (expected {expected * copies:.1f}, "
          f"allowed {floor:.0f} .. {ceiling:.0f}), true radius {truth:.4f}")
    assert violations <= ceiling, f"{violations} certificates exceed the true radius (allowed {ceiling:.0f})"
    assert violations >= floor, f"only {violations} violations: the off-class bound is looser than its level"

    # the same certificates recomputed here in closed form (one group: pB = CP upper bound on n2, from scipy's
    # beta quantile), first at the right level (they must equal the engine's), then at 2x and 1/2 the level
    certified = prediction == 1
    n2 = counts[:, 0, 2]
    r1 = SIGMAS[1] * (PPF(np.array([c.p_lower for c in certs])) - PPF(p0))

    def recomputed(off_level):
        p_b = np.where(n2 < n, sps.beta.isf(off_level, n2 + 1, np.maximum(n - n2, 1)), 1.0)
        return np.where(certified, np.minimum(r1, SIGMAS[0] * (PPF(p0) - PPF(p_b))), 0.0)

    np.testing.assert_allclose(recomputed(level), radius, rtol=1e-9, atol=1e-12)
    for factor in (2.0, 0.5):
        broken = int(np.sum(recomputed(factor * level) > truth))
        assert (broken > ceiling) if factor > 1 else (broken < floor), (factor, broken)


# ------------------------------------------------------------------ sequential (early-stopping) certificates
# The adversarial stopping rule: a target radius just above the true one stops an image (and certifies it) exactly
# when its bound has become wrong, and otherwise runs it to n_max (futility=None: no image is given up on early,
# which could only lower the error). Many looks (growth 1.25 from 16 samples) give the naive rule many chances
# to be wrong. The default rule (futility on, the default looks) is checked on the same noise.
LOOKS = {"first": 16, "growth": 1.25}
ADVERSARY = {**LOOKS, "futility": None}


def test_sequential_certificates_are_valid():
    sigma, n_max = 0.5, 4096
    w = 2.0 * orthonormal(1, seed=0)[0] * torch.linspace(0.5, 1.5, D, dtype=torch.float64)
    x = torch.full((1, *SHAPE), 0.5)
    b = sigma * float(w.norm()) * PPF(P_A) - float(w @ x.reshape(-1).double())
    true_radius = sigma * PPF(P_A)
    smoothed = SmoothedClassifier(Linear(w, b), 2, backend=BACKEND)
    fractions = {}
    runs = (("spending", "spending", ADVERSARY, True), ("default", "spending", {}, True),
            ("betting", "betting", ADVERSARY, True), ("voracek", "voracek", ADVERSARY, True),
            ("naive", NaiveClopperPearson(), ADVERSARY, False), ("hindsight", HindsightBetting(), ADVERSARY, False),
            ("predicted", PredictedFinal(stopping.checkpoints(n_max, **LOOKS)), ADVERSARY, False))
    for name, bound, options, valid in runs:
        certs = smoothed.certify_sequential(x.expand(COPIES, *SHAPE), sigma, N0, n_max, ALPHA, seed=11,
                                            batch_size=8192, image_ids=torch.arange(COPIES),
                                            target_radii=[true_radius * (1 + 1e-9)], bound=bound, **options)
        prediction = np.array([c.prediction for c in certs])
        violations = (prediction == 0) | (np.array([c.radius for c in certs]) > true_radius)
        ok, fractions[name], threshold = violation_check(violations, ALPHA)
        assert ok == valid, f"{name}: violation fraction {fractions[name]:.4f} (allowed {threshold:.4f})"
    print(f"sequential: violation fractions {fractions} (allowed {threshold:.4f})")
    assert fractions["spending"] > 0.5 * ALPHA  # tight: the final look spends 0.9 alpha
    # Ville's inequality (betting) and Voracek's shares (large at the first looks, where few errors occur) are
    # looser, but the adversary finds their errors: 0.36 and 0.24 alpha here (the hindsight bet: 1.7 alpha)
    assert fractions["betting"] > 0.2 * ALPHA and fractions["voracek"] > 0.15 * ALPHA


def test_sequential_cascade_certificates_are_valid():
    """The cascade of test_cascade_certificates_are_valid in sequential mode, target radius just above the truth:
    stage 1 certifies at once and stage 0 (fallen through) is resumed until its cap reaches the target, which
    happens only if its off-class bound is wrong. The check at that statement's level (alpha / 4) holds for alpha
    spending and rejects the naive rule on the same noise."""
    alpha, n_max, copies = 0.2, 4096, 1500
    u = orthonormal(3, seed=1)
    x = torch.full((1, *SHAPE), 0.5)
    t = (u @ x.reshape(-1).double()).tolist()
    denoiser = StageDenoiser(u, a1=t[0] - D1, b2=t[1] + D2, c3=t[2])
    smoothed = SmoothedClassifier(read_class, 3, denoiser=denoiser, backend=BACKEND)
    truth = true_cascade_radius()
    fractions = {}
    for name, bound in (("spending", "spending"), ("naive", NaiveClopperPearson())):
        certs = smoothed.certify_cascade_sequential(
            x.expand(copies, *SHAPE), list(SIGMAS), 32, n_max, alpha, seed=5, batch_size=8192,
            image_ids=torch.arange(10_000, 10_000 + copies), target_radii=[truth * (1 + 1e-9)], bound=bound,
            **ADVERSARY)
        prediction = np.array([c.prediction for c in certs])
        assert np.mean((prediction == 1) & np.array([c.stage == 1 for c in certs])) > 0.95  # the path under test
        violations = ((prediction >= 0) & (prediction != 1)) | (np.array([c.radius for c in certs]) > truth)
        ok, fractions[name], threshold = violation_check(violations, alpha / 4)
        assert ok == (name == "spending"), f"{name}: violation fraction {fractions[name]:.4f} (allowed {threshold:.4f})"
    print(f"sequential cascade: violation fractions {fractions} (allowed {threshold:.4f} at alpha / 4)")


# ------------------------------------------------------------------ undecided stages that fall through
def undecided_setting(p2: float):
    """Stage 0 (sigma 1.0) answers class 2 with probability p2 near p0 = 1/2, else class 1 (never class 0); stage 1
    (sigma 0.25) answers class 1 with probability Phi(4). With p2 = 0.51 the cascaded classifier G answers 2 at x
    (stage 0 is confident, barely): every certificate of class 1 is wrong, and a class-2 certificate is wrong
    beyond sigma_0 PhiInv(p2) = 0.0251 (the stage-0 boundary along u2). At n = 500 stage 0 is undecided for most
    copies (its two-sided interval straddles 1/2), so under undecided="fall_through" stage 1 certifies class 1
    whenever stage 0's off-class bound (on {class 2}, pooled with class 0's zero votes: one group) misses p2,
    which a valid bound at level off[0] does with probability <= off[0]."""
    u = orthonormal(3, seed=3)
    x = torch.full((1, *SHAPE), 0.5)
    t = (u @ x.reshape(-1).double()).tolist()
    denoiser = StageDenoiser(u, a1=t[0] - D1, b2=t[1] - SIGMAS[0] * PPF(p2), c3=math.inf)
    return x, SmoothedClassifier(read_class, 3, denoiser=denoiser, backend=BACKEND)


def undecided_violations(prediction, radius, p2: float) -> np.ndarray:
    return (prediction == 0) | (prediction == 1) | ((prediction == 2) & (radius > SIGMAS[0] * PPF(p2)))


def test_cascade_undecided_fall_through_is_valid():
    """Fixed-n cascade, undecided="fall_through": the violation rate stays below the off-class level off[0] =
    alpha / 4 (a certificate of class 1 needs stage 0's exact upper bound on class 2 below p2; the union schedule
    also takes the max with Goodman's bound, which only lowers the rate). Broken variant on the same counts: the
    undecided stage contributes no cap (as if it had never been entered): stage 1's certificate alone, which
    certifies class 1 for nearly every copy."""
    alpha, n0, n, copies, p2 = 0.2, 32, 500, 1500, 0.51
    x, smoothed = undecided_setting(p2)
    certs = smoothed.certify_cascade(x.expand(copies, *SHAPE), list(SIGMAS), n0, n, alpha, seed=13,
                                     batch_size=8192, image_ids=torch.arange(30_000, 30_000 + copies),
                                     undecided="fall_through")
    prediction = np.array([c.prediction for c in certs])
    radius = np.array([c.radius for c in certs])
    counts0, counts = np.stack([c.counts0 for c in certs]), np.stack([c.counts for c in certs])
    cert, _ = decisions.schedule_levels(alpha, 2, "union")
    outcome = [decisions.stage_outcome(c0[0], c[0], cert[0])[0] for c0, c in zip(counts0, counts)]
    assert outcome.count("undecided") > 0.8 * copies  # the path under test: stage 0 undecided, stage 1 entered
    went_on = np.array([o != "certify" for o in outcome])
    assert np.all(counts[went_on, 1].sum(axis=1) == n) and np.all(counts[~went_on, 1] == 0)  # stage 1 sampled
    ok, fraction, threshold = violation_check(undecided_violations(prediction, radius, p2), alpha / 4)
    assert ok, f"undecided fall-through: violation fraction {fraction:.4f} (allowed {threshold:.4f})"
    # the paper's rule on the same counts abstains wherever stage 0 is undecided
    abstain = [decisions.cascade_certify_from_counts(c0, c, list(SIGMAS), alpha) for c0, c in zip(counts0, counts)]
    assert all(d.prediction == -1 for d, o in zip(abstain, outcome) if o == "undecided")
    # broken: the undecided stage's cap dropped -> stage 1's own certificate
    broken = [decisions.cohen_certify_from_counts(c0[1], c[1], cert[1], SIGMAS[1]) if o != "certify" else d
              for c0, c, o, d in zip(counts0, counts, outcome, abstain)]
    broken_ok, broken_fraction, _ = violation_check(undecided_violations(
        np.array([b.prediction for b in broken]), np.array([b.radius for b in broken]), p2), alpha / 4)
    assert not broken_ok, f"the check cannot see a dropped cap ({broken_fraction:.4f})"
    print(f"undecided fall-through: violation fraction {fraction:.4f} (allowed {threshold:.4f}); without the cap "
          f"{broken_fraction:.4f}")


def test_sequential_cascade_undecided_fall_through_is_valid():
    """The same setting in sequential mode under the adversarial stopping rule (futility off, target radius just
    above 0, so a class-1 certificate stops exactly when stage 0's resumed off-class bound first drops below
    1/2): the violation rate stays below off[0] = alpha / 4 for alpha spending, and the naive rule (fixed-n
    Clopper-Pearson re-evaluated at every look) fails the same check on the same noise."""
    alpha, n_max, copies, p2 = 0.2, 4096, 1500, 0.51
    x, smoothed = undecided_setting(p2)
    fractions = {}
    for name, bound in (("spending", "spending"), ("naive", NaiveClopperPearson())):
        certs = smoothed.certify_cascade_sequential(
            x.expand(copies, *SHAPE), list(SIGMAS), 32, n_max, alpha, seed=17, batch_size=8192,
            image_ids=torch.arange(40_000, 40_000 + copies), target_radii=[1e-9], bound=bound,
            undecided="fall_through", **ADVERSARY)
        prediction = np.array([c.prediction for c in certs])
        radius = np.array([c.radius for c in certs])
        entered = np.mean([c.counts0[1].sum() > 0 for c in certs])
        assert entered > 0.5, entered  # stage 1 entered (stage 0 could not certify) for most copies
        ok, fractions[name], threshold = violation_check(undecided_violations(prediction, radius, p2), alpha / 4)
        assert ok == (name == "spending"), f"{name}: violation fraction {fractions[name]:.4f} (allowed {threshold:.4f})"
    print(f"sequential undecided fall-through: violation fractions {fractions} (allowed {threshold:.4f})")
