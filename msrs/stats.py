"""Confidence bounds and radii for randomized smoothing (scipy only).

Every bound here is about a binomial or multinomial proportion estimated from Monte Carlo vote counts:

  clopper_pearson_lower(n_a, n, alpha)     one-sided (1 - alpha) lower bound, exact (Clopper & Pearson 1934)
  clopper_pearson_upper(n_a, n, alpha)     one-sided (1 - alpha) upper bound, exact
  clopper_pearson_interval(n_a, n, alpha)  two-sided (1 - alpha) interval: alpha / 2 on each side
  binomial_pvalue(n_a, n, p)               two-sided exact binomial test (Cohen's PREDICT)
  goodman_bounds(counts, alpha)            Goodman (1965) simultaneous (1 - alpha) intervals, k categories
  radius(sigma, p_lower, p0)               sigma * (PhiInv(p_lower) - PhiInv(p0))

The functions take numbers or numpy arrays (broadcast) and return floats for scalar input.
"""
from __future__ import annotations

import numpy as np
from scipy import stats


def _check_alpha(alpha) -> None:
    if not np.all((np.asarray(alpha) > 0) & (np.asarray(alpha) < 1)):
        raise ValueError(f"alpha: expected a level in (0, 1), got {alpha}")


def _counts(n_a, n) -> tuple[np.ndarray, np.ndarray]:
    n_a, n = np.asarray(n_a), np.asarray(n)
    if not (np.issubdtype(n_a.dtype, np.integer) and np.issubdtype(n.dtype, np.integer)):
        if np.any(n_a != np.round(n_a)) or np.any(n != np.round(n)):
            raise TypeError(f"n_a, n: expected integer counts, got {n_a} and {n}")
    if np.any(n < 1) or np.any(n_a < 0) or np.any(n_a > n):
        raise ValueError(f"n_a, n: expected 0 <= n_a <= n and n >= 1, got n_a={n_a}, n={n}")
    return n_a.astype(np.float64), n.astype(np.float64)


def _out(value):
    return float(value) if np.ndim(value) == 0 else value


def clopper_pearson_lower(n_a, n, alpha):
    """One-sided (1 - alpha) Clopper-Pearson lower bound on p from n_a successes in n draws.

    Beta.ppf(alpha, n_a, n - n_a + 1); 0 when n_a = 0; alpha ** (1 / n) when n_a = n, so it stays < 1 for every
    finite n (a radius computed from it is finite).
    """
    _check_alpha(alpha)
    n_a, n = _counts(n_a, n)
    lower = stats.beta.ppf(alpha, np.maximum(n_a, 1), n - n_a + 1)
    return _out(np.where(n_a > 0, lower, 0.0))


def clopper_pearson_upper(n_a, n, alpha):
    """One-sided (1 - alpha) Clopper-Pearson upper bound: Beta.isf(alpha, n_a + 1, n - n_a); 1 when n_a = n."""
    _check_alpha(alpha)
    n_a, n = _counts(n_a, n)
    upper = stats.beta.isf(alpha, n_a + 1, np.maximum(n - n_a, 1))
    return _out(np.where(n_a < n, upper, 1.0))


def clopper_pearson_interval(n_a, n, alpha):
    """Two-sided (1 - alpha) Clopper-Pearson interval (lower, upper): each side at level alpha / 2.

    Equals statsmodels' proportion_confint(n_a, n, alpha, method="beta").
    """
    _check_alpha(alpha)
    return clopper_pearson_lower(n_a, n, np.asarray(alpha) / 2), clopper_pearson_upper(n_a, n, np.asarray(alpha) / 2)


def binomial_pvalue(n_a: int, n: int, p: float = 0.5) -> float:
    """Two-sided exact binomial test p-value of n_a successes in n draws under success probability p."""
    n_a, n = int(n_a), int(n)
    _counts(n_a, n)
    return float(stats.binomtest(n_a, n, p).pvalue)


def goodman_bounds(counts, alpha) -> np.ndarray:
    """Goodman (1965) simultaneous (1 - alpha) intervals for the k category probabilities, as an array [k, 2].

    A = chi2.ppf(1 - alpha / k, 1); bounds = (A + 2 n_i -+ sqrt(A (A + 4 n_i (N - n_i) / N))) / (2 (N + A)).
    Each interval is a Wilson score interval with a Bonferroni-corrected quantile, so each side of each category
    has level about alpha / (2k); the intervals are asymptotic (not exact for small counts).
    Equals statsmodels' multinomial_proportions_confint(counts, alpha, method="goodman").
    """
    _check_alpha(alpha)
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size < 2 or np.any(counts < 0) or counts.sum() <= 0:
        raise ValueError(f"counts: expected k >= 2 non-negative counts with a positive total, got {counts}")
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
        raise ValueError(f"p_lower: expected a probability bound in [0, 1), got {p_lower}")
    if not np.all((np.asarray(p0) >= 0.5) & (np.asarray(p0) < 1)):
        raise ValueError(f"p0: expected a threshold in [0.5, 1), got {p0}")
    return _out(np.asarray(sigma, dtype=np.float64) * (stats.norm.ppf(p_lower) - stats.norm.ppf(p0)))


def phi_inv(p):
    """PhiInv, the standard normal quantile (-inf at 0, +inf at 1)."""
    return _out(stats.norm.ppf(np.asarray(p, dtype=np.float64)))


__all__ = [
    "binomial_pvalue",
    "clopper_pearson_interval",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "goodman_bounds",
    "phi_inv",
    "radius",
]

