"""Certification decisions on vote counts (no sampling, no early stopping: msrs.stopping has those): Cohen's CERTIFY and PREDICT, and the multi-scale cascade.

Cascaded smoothed classifier (Jeong & Shin 2023). Stages s = 0 .. L-1 use sigma_0 > sigma_1 > ... ; with
p^s_c(z) = P[f(z + sigma_s delta) = c], stage s is *confident* at z in class c when p^s_c(z) > p0 (p0 >= 1/2,
so at most one class), and G(z) = the class of the first confident stage (ABSTAIN if none).

Certificate. If stage s certifies cA with lower bound pA_lower >= p0 and, for every earlier stage j that fell
through, pB_upper_j bounds max_{c != cA} p^j_c(x), then for ||e|| < R = min(R_s, min_j -r_j):
  * p^s_cA(x + e) > p0, as PhiInv(p^s_c(z)) is 1/sigma_s-Lipschitz in z (Cohen et al. 2019) and
    R_s = sigma_s (PhiInv(pA_lower) - PhiInv(p0));
  * no c != cA has p^j_c(x + e) >= p0 at an earlier stage j, as -r_j = sigma_j (PhiInv(p0) - PhiInv(pB_upper_j));
so the first confident stage at x + e is at most s and its class is cA: G(x + e) = cA. Falling through (pA_upper
< p0) or abstaining on "undecided" is only a decision rule: a wrong fall-through never makes a certificate wrong.

Undecided stages (lower < p0 <= upper: the samples cannot tell whether stage s is confident). The paper, and
msrs by default (undecided="abstain"), abstain there. undecided="fall_through" goes on to the next stage instead,
and the undecided stage joins the earlier stages whose off-class bound caps the radius (-r_j above). The argument
above never uses that an earlier stage j was *not* confident at x, only that pB_upper_j bounds the classes other
than cA there, so the certificate and its error budget are unchanged. What it buys: an image whose large-sigma
stage sits near p0 in its true class is certified at a smaller sigma (radius capped by the undecided stage,
-r_j > 0 when the other classes there stay below p0) instead of abstaining; when the undecided stage is near p0 in
another class than the later stage's, its cap pB_upper_j >= p0 makes the cascade abstain, as it must (that class
may be G(x)). tests/test_validity.py checks both, with a variant that drops the undecided stage's cap failing.

Error budget (the statements a certificate relies on):
  C_s  "p^s_cA_s(x) >= pA_lower_s"   one-sided Clopper-Pearson on stage s's estimation counts for its selected
                                     class (selection counts are independent of them), level cert[s];
  O_j  "p^j_c(x) <= pB_upper_j for every c != cA" about an earlier stage j, level off[j]. cA is then the class the
       later stages certify, a function of the later stages' samples only (they decide on their own counts), and
       the pooling of the "union" schedule is a function of stage j's selection counts and cA: both independent of
       stage j's estimation counts, so the bound holds with probability >= 1 - off[j] whatever they turn out to be.
A wrong certificate needs a wrong C_s (at the certifying stage) or a wrong O_j (at a stage that fell through), so
P(wrong) <= sum_s cert[s] + sum_{j < L-1} off[j] (stage L-1 is never an earlier stage).

Schedules:
  "union" (default, provably valid): each stage has budget alpha / L; a stage that may later be an earlier stage
       (s < L-1) splits it, cert[s] = off[s] = alpha / (2L); the last stage has cert[L-1] = alpha / L. The sum is
       exactly alpha. (A two-sided interval at level 2 cert[s] has cert[s] on its lower side; its upper side only
       drives the fall-through decision and costs nothing.) With L = 1 this is Cohen's CERTIFY at level alpha.
       Off-class bound: pB_upper_j = max(paper bound below, exact bound) at level off[j]. The exact bound pools the
       classes other than cA by the public code's rule (pool_groups) applied to stage j's *selection* counts, so
       the groups do not depend on the counts the bound is computed from, and takes the largest one-sided exact
       Clopper-Pearson upper bound over the groups at off[j] / (number of groups) (Bonferroni). The paper's
       Goodman intervals are asymptotic and pool on the same counts they bound, so alone they could under-cover;
       taking the max keeps the exact guarantee and never certifies more than the paper's rule at that level.
  "paper" (reproduces the public code, jh-jeong/smoothing-multiscale, and the paper's numbers; NOT covered by a
       union bound: the total can exceed alpha): cert[s] = alpha / (s + 1); the off-class bounds of the earlier
       stages use the certifying stage's level alpha / (s + 1); groups are pooled on stage j's estimation counts;
       pB_upper_j = max over the groups other than cA of Goodman at 2 alpha / (s + 1), or 1 - CP_lower(n_cA) when at
       most one group other than cA remains. (The public code takes that last bound for stage j's own selected
       class rather than cA; msrs uses cA, the bound that is actually about the classes other than cA.)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import bounds, checks

SCHEDULES = ("union", "paper")
UNDECIDED_RULES = ("abstain", "fall_through")  # what the cascade does at an undecided stage (module docstring)
POOL_MIN = 5  # the public code's pooling threshold (votes)


@dataclass(frozen=True)
class Decision:
    prediction: int  # class, or -1 for ABSTAIN
    radius: float  # 0.0 when abstaining
    stage: int  # stage that certified; -1 when abstaining
    last: int  # the stage that decided, or the last stage tried
    p_lower: float  # Clopper-Pearson lower bound at stage `last` (nan if none)


def _abstain(last: int, p_lower: float = math.nan) -> Decision:
    return Decision(-1, 0.0, -1, last, float(p_lower))


def _vector(name: str, counts) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 1 or counts.size < 2 or not np.issubdtype(counts.dtype, np.integer) or counts.min() < 0:
        raise checks.ArgumentValueError(f"{name}: expected non-negative integer counts [K], K >= 2, got {counts!r}")
    return counts.astype(np.int64)


def cohen_certify_from_counts(counts0, counts, alpha: float, sigma: float, p0: float = 0.5) -> Decision:
    """Cohen et al.'s CERTIFY on selection counts0 [K] and estimation counts [K] (p0 = 0.5 is their case).

    Certifies only when pA_lower > p0 (their "if pA > 1/2"): at pA_lower = p0 the radius is 0 and the bound does not
    even exclude a tie at x itself, so it abstains, as the cascade does at R <= 0."""
    counts0, counts = _vector("counts0", counts0), _vector("counts", counts)
    c_a = int(np.argmax(counts0))
    p_lower = bounds.clopper_pearson_lower(int(counts[c_a]), int(counts.sum()), alpha)
    if p_lower <= p0:
        return _abstain(0, p_lower)
    return Decision(c_a, float(bounds.radius(sigma, p_lower, p0)), 0, 0, p_lower)


def cohen_predict_from_counts(counts, alpha: float) -> int:
    """Cohen et al.'s PREDICT: the top class unless the binomial test of the top two counts has p-value > alpha."""
    counts = _vector("counts", counts)
    order = np.argsort(-counts, kind="stable")
    n_a, n_b = int(counts[order[0]]), int(counts[order[1]])
    if n_a == 0 or bounds.binomial_pvalue(n_a, n_a + n_b, 0.5) > alpha:
        return -1
    return int(order[0])


def schedule_levels(alpha: float, num_stages: int, schedule: str = "union") -> tuple[np.ndarray, np.ndarray]:
    """(cert [L], off [L, L]): cert[s] the one-sided level of stage s's Clopper-Pearson bound, off[j, s] the level
    of stage j's off-class bound when stage s certifies (see the module docstring)."""
    levels = np.arange(num_stages)
    if schedule == "union":
        cert = np.where(levels < num_stages - 1, alpha / (2 * num_stages), alpha / num_stages)
        return cert, np.full((num_stages, num_stages), alpha / (2 * num_stages))
    if schedule == "paper":
        cert = alpha / (levels + 1.0)
        return cert, np.tile(cert, (num_stages, 1))
    raise checks.ArgumentValueError(f"alpha_schedule: expected one of {', '.join(SCHEDULES)}, got {schedule!r}")


def pool_groups(basis, exclude: int, min_count: int = POOL_MIN) -> list[list[int]]:
    """Partition of the classes other than `exclude` into groups, the public code's rule on the counts `basis`:
    classes in decreasing order of count; one with >= min_count votes is its own group; smaller ones accumulate
    into a pool closed as a group once it holds >= min_count votes; a last unfinished pool joins the last group
    (or is the only group). Every class other than `exclude` is in exactly one group, zero-count classes included.
    """
    groups: list[list[int]] = []
    pool: list[int] = []
    pooled = 0
    for c in np.argsort(-np.asarray(basis), kind="stable"):
        c = int(c)
        if c == exclude:
            continue
        if basis[c] >= min_count:
            groups.append([c])
            continue
        pool.append(c)
        pooled += int(basis[c])
        if pooled >= min_count:
            groups.append(pool)
            pool, pooled = [], 0
    if pool and groups:
        groups[-1].extend(pool)
    elif pool:
        groups.append(pool)
    return groups


def stage_outcome(counts0, counts, level: float, p0: float = 0.5) -> tuple[str, int, float]:
    """One cascade stage: ("certify" | "undecided" | "fall", selected class, p_lower) from the two-sided
    Clopper-Pearson interval at 2 * level (each side `level`) of the selected class's estimation count."""
    c_a = int(np.argmax(counts0))
    p_lower, p_upper = bounds.clopper_pearson_interval(int(counts[c_a]), int(counts.sum()), 2 * level)
    if p_lower >= p0:
        return "certify", c_a, p_lower
    return ("undecided" if p_upper >= p0 else "fall"), c_a, p_lower


def goes_on(outcome: str, undecided: str = "abstain") -> bool:
    """Whether the cascade enters the next stage after a stage's outcome ("certify" | "undecided" | "fall"):
    after "fall", and after "undecided" under undecided="fall_through" (module docstring)."""
    checks.choice("undecided", undecided, UNDECIDED_RULES)
    return outcome == "fall" or (outcome == "undecided" and undecided == "fall_through")


def paper_off_class_upper(counts, c_a: int, level: float) -> float:
    """The public code's bound on max_{c != c_a} p_c: groups pooled on the estimation counts themselves, Goodman
    at 2 * level over them and c_a's count (k = groups + 1), or 1 - CP_lower(n_{c_a}) at level when at most one
    group remains."""
    groups = pool_groups(counts, c_a)
    if len(groups) <= 1:
        return 1.0 - bounds.clopper_pearson_lower(int(counts[c_a]), int(counts.sum()), level)
    totals = [int(counts[c_a])] + [int(counts[g].sum()) for g in groups]
    return float(bounds.goodman_bounds(totals, 2 * level)[1:, 1].max())


def exact_off_class_upper(counts0, counts, c_a: int, level: float) -> float:
    """A bound on max_{c != c_a} p_c that holds with probability >= 1 - level: groups pooled on the selection
    counts0 (independent of counts), one-sided Clopper-Pearson upper bounds at level / (number of groups)."""
    groups = pool_groups(counts0, c_a)
    totals = np.array([int(counts[g].sum()) for g in groups], dtype=np.int64)
    return float(np.max(bounds.clopper_pearson_upper(totals, int(counts.sum()), level / len(groups))))


def off_class_upper(counts0, counts, c_a: int, level: float, schedule: str = "union") -> float:
    """pB_upper of an earlier stage: the paper's bound, and for "union" never below the exact bound."""
    paper = paper_off_class_upper(counts, c_a, level)
    return paper if schedule == "paper" else max(paper, exact_off_class_upper(counts0, counts, c_a, level))


def cascade_certify_from_counts(
    counts0, counts, sigmas, alpha: float, p0: float = 0.5, schedule: str = "union", undecided: str = "abstain"
) -> Decision:
    """The multi-scale cascade on counts0, counts [L, K] (stage 0 = largest sigma; rows of stages that were not
    reached are ignored). Returns the Decision; `stage` is the certifying stage, `last` the last stage tried.
    undecided: "abstain" (the paper's rule) or "fall_through" (goes_on; module docstring)."""
    counts0, counts = np.asarray(counts0), np.asarray(counts)
    num_stages = len(sigmas)
    if num_stages < 1 or counts.ndim != 2 or counts0.shape != counts.shape or counts.shape[0] != num_stages:
        raise checks.ArgumentValueError(f"counts0, counts: expected two [L, K] arrays with L = len(sigmas) = {num_stages}, "
                         f"got shapes {counts0.shape} and {counts.shape}")
    if any(a <= b for a, b in zip(sigmas, sigmas[1:])):
        raise checks.ArgumentValueError(f"sigmas: expected strictly decreasing noise levels (stage 0 = largest), got {sigmas}")
    cert, off = schedule_levels(alpha, num_stages, schedule)
    fell: list[int] = []
    for s in range(num_stages):
        outcome, c_a, p_lower = stage_outcome(counts0[s], counts[s], cert[s], p0)
        if outcome == "certify":
            break
        if not goes_on(outcome, undecided):
            return _abstain(s, p_lower)
        fell.append(s)  # fell through, or undecided under "fall_through": its off-class bound caps the radius
    else:
        return _abstain(num_stages - 1, p_lower)
    r = bounds.radius(sigmas[s], p_lower, p0)
    for j in fell:
        p_b = off_class_upper(counts0[j], counts[j], c_a, off[j, s], schedule)
        r = min(r, -bounds.signed_radius(sigmas[j], p_b, p0))  # -r_j; +inf when p_b = 0, -inf at 1
    if not r > 0:
        return _abstain(s, p_lower)
    return Decision(c_a, float(r), s, s, float(p_lower))


__all__ = [
    "Decision",
    "POOL_MIN",
    "SCHEDULES",
    "UNDECIDED_RULES",
    "cascade_certify_from_counts",
    "cohen_certify_from_counts",
    "cohen_predict_from_counts",
    "exact_off_class_upper",
    "goes_on",
    "off_class_upper",
    "paper_off_class_upper",
    "pool_groups",
    "schedule_levels",
    "stage_outcome",
]
