"""What a certification run is: one validated, immutable configuration shared by the CLI, the runner, the engine's
procedures, the benchmarks and fine-tuning.

  CertifyConfig(sigmas, n0, n, alpha, p0, seed, batch_size, alpha_schedule, sequential)
  SequentialSettings(target_radii, bound, ...)      early stopping (msrs.stopping); None = fixed n

A config is checked when it is made (msrs.checks: the error names the argument), so a run that starts has valid
settings, and `record()` gives what a log's sidecar stores to recognise the run on resume.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from . import checks, decisions, stopping
from .bounds import BOUNDS, DEFAULT_FINAL_SHARE, DEFAULT_PRIOR, make_bound
from .ops.philox import MASK32

__all__ = ["CertifyConfig", "METHODS", "SequentialSettings", "from_options"]

MAX_SAMPLES = MASK32 + 1  # sample indices are one 32-bit Philox counter word
MAX_SEED = 2**63 - 1  # seeds are non-negative int64
METHODS = ("certify", "cascade", "sequential", "sequential_cascade")


@dataclass(frozen=True)
class SequentialSettings:
    """Early stopping (msrs.stopping): n becomes the budget per stage and an image stops once its radius bucket at
    target_radii is settled (None: no targets, every image samples to the budget unless it must abstain).
    bound: "spending" (Clopper-Pearson with alpha spent over the looks), "voracek" (the same with Voracek's
    shares), "cs" (Beta-mixture confidence sequence), "betting" (betting confidence sequence), "betting-final"
    (betting CS, Clopper-Pearson at n) or a bound object (tests). The remaining fields are
    msrs.stopping.run_sequential's options, with its defaults."""

    target_radii: Optional[tuple] = None
    bound: object = "spending"
    final_share: Optional[float] = None
    weights: Optional[tuple] = None
    prior: tuple = DEFAULT_PRIOR
    schedule: str = "geometric"
    first: Optional[int] = None
    growth: float = stopping.DEFAULT_GROWTH
    chunk: Optional[int] = None
    points: Optional[tuple] = None
    intersect: bool = True
    futility: Optional[float] = stopping.DEFAULT_FUTILITY
    futility_ramp: float = stopping.DEFAULT_FUTILITY_RAMP

    def __post_init__(self):
        """Each option on its own, by type and range; validate() checks how they fit together."""
        if self.target_radii is not None:
            _set(self, "target_radii", checks.finite_list("target_radii", self.target_radii, minimum=0.0))
        if isinstance(self.bound, str):
            checks.choice("bound", self.bound, BOUNDS)
        elif not callable(self.bound):
            raise checks.ArgumentTypeError(f"bound: expected one of {BOUNDS} or a bound object, got {self.bound!r}")
        if self.final_share is not None:
            _set(self, "final_share", checks.number("final_share", self.final_share, 0.0, 1.0, low_open=True))
        if self.weights is not None:
            _set(self, "weights", tuple(checks.number("weights", w, 0.0, 1.0, low_open=True)
                                        for w in _sequence("weights", self.weights)))
        prior = _sequence("prior", self.prior)
        if len(prior) != 2:
            raise checks.ArgumentValueError(f"prior: expected two positive numbers (a, b), got {self.prior!r}")
        _set(self, "prior", tuple(checks.number("prior", v, 0.0, low_open=True) for v in prior))
        checks.choice("schedule", self.schedule, ("geometric", "fixed"))
        for name in ("first", "chunk"):
            if getattr(self, name) is not None:
                _set(self, name, checks.integer(name, getattr(self, name), 1))
        _set(self, "growth", checks.number("growth", self.growth, 1.0, low_open=True))
        if self.points is not None:
            _set(self, "points", tuple(checks.integer("points", p, 1) for p in _sequence("points", self.points)))
        if not isinstance(self.intersect, bool):
            raise checks.ArgumentTypeError(f"intersect: expected True or False, got {self.intersect!r}")

    def options(self) -> dict:
        """Keyword arguments of msrs.stopping.run_sequential / run_cascade_sequential (target_radii aside)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "target_radii"}

    def validate(self, n: int, sigma: float, p0: float) -> None:
        """Checks everything msrs.stopping would refuse, before any sampling: looks, bound, shares, radii."""
        options = self.options()
        bound = options.pop("bound")
        looks = stopping.looks(n, options.pop("points"), options.pop("schedule"), options.pop("first"),
                               options.pop("growth"), options.pop("chunk"))
        make_bound(bound, looks, final_share=self.final_share, weights=self.weights, prior=self.prior)
        stopping.check_futility(self.futility, self.futility_ramp)
        stopping.thresholds(self.target_radii, sigma, p0)

    def record(self, n: int) -> dict:
        """What the sidecar stores: the radii, the bound, for alpha spending its looks and final share, and the
        futility rule (which buckets an image may end in)."""
        out = {"target_radii": None if self.target_radii is None else list(self.target_radii),
               "bound": self.bound if isinstance(self.bound, str) else type(self.bound).__name__}
        if self.bound in ("spending", "voracek", "betting-final"):  # the bounds that read the looks
            out["looks"] = stopping.looks(n, self.points, self.schedule, self.first, self.growth, self.chunk)
            out["final_share"] = DEFAULT_FINAL_SHARE if self.final_share is None else self.final_share
        out["futility"] = self.futility
        out["futility_ramp"] = self.futility_ramp
        return out


@dataclass(frozen=True)
class CertifyConfig:
    """One certification procedure's settings. sigmas: one noise level (Cohen's CERTIFY) or several (the
    multi-scale cascade), stored largest first; n0 selection and n estimation samples per image (and stage);
    alpha the failure probability; p0 the threshold ("skip_p", 0.5 is Cohen's case); seed the noise key;
    batch_size the Monte Carlo samples per forward pass (it never changes the counts); alpha_schedule the
    cascade's error budget ("union", valid; "paper", the public code's); sequential early stopping or None;
    undecided what the cascade does at a stage whose bounds straddle p0 ("abstain", the paper's rule, or
    "fall_through": msrs.decisions)."""

    sigmas: tuple
    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001
    p0: float = 0.5
    seed: int = 0
    batch_size: int = 1000
    alpha_schedule: str = "union"
    sequential: Optional[SequentialSettings] = field(default=None)
    undecided: str = "abstain"

    def __post_init__(self):
        _set(self, "sigmas", checks.sigmas("sigma", self.sigmas))
        _set(self, "n0", checks.integer("n0", self.n0, 1, MAX_SAMPLES))
        _set(self, "n", checks.integer("n", self.n, 1, MAX_SAMPLES))
        if self.n0 > self.n:
            raise checks.ArgumentValueError(f"n0: must be <= n (selection samples at most the estimation samples), "
                                            f"got n0={self.n0} > n={self.n}")
        _set(self, "alpha", checks.level("alpha", self.alpha, array_ok=False))
        _set(self, "p0", checks.probability_threshold("p0", self.p0))
        _set(self, "seed", checks.integer("seed", self.seed, 0, MAX_SEED))
        _set(self, "batch_size", checks.integer("batch_size", self.batch_size, 1))
        checks.choice("alpha_schedule", self.alpha_schedule, decisions.SCHEDULES)
        checks.choice("undecided", self.undecided, decisions.UNDECIDED_RULES)
        if self.undecided != "abstain" and not self.cascade:
            raise checks.ArgumentValueError(f"undecided: only for the cascade (several sigmas); one sigma has no "
                                            f"next stage, got undecided={self.undecided!r} with sigmas "
                                            f"{list(self.sigmas)}")
        if self.sequential is not None:
            if not isinstance(self.sequential, SequentialSettings):
                raise checks.ArgumentTypeError(f"sequential: expected SequentialSettings or None, got "
                                               f"{type(self.sequential).__name__}")
            if self.cascade and self.alpha_schedule != "union":
                raise checks.ArgumentValueError(f"alpha_schedule: the sequential cascade needs 'union' (a valid "
                                                f"union bound), got {self.alpha_schedule!r}")
            self.sequential.validate(self.n, self.sigmas[-1], self.p0)

    @property
    def cascade(self) -> bool:
        return len(self.sigmas) > 1

    @property
    def method(self) -> str:
        """Which procedure runs this config (msrs.procedures.PROCEDURES): one of METHODS."""
        if self.sequential is not None:
            return "sequential_cascade" if self.cascade else "sequential"
        return "cascade" if self.cascade else "certify"

    def replace(self, **changes) -> "CertifyConfig":
        return dataclasses.replace(self, **changes)

    def record(self) -> dict:
        """The settings a log's sidecar stores and compares on resume (msrs.logs)."""
        out = {"method": self.method, "sigmas": list(self.sigmas), "n0": self.n0, "n": self.n, "alpha": self.alpha,
               "seed": self.seed, "p0": self.p0, "alpha_schedule": self.alpha_schedule if self.cascade else None}
        if self.sequential is not None:  # only then, so that logs of fixed-n runs keep their recorded settings
            out["sequential"] = self.sequential.record(self.n)
        if self.undecided != "abstain":  # likewise: logs written before the option existed still resume
            out["undecided"] = self.undecided
        return out


def from_options(*, sigmas, n0=100, n=100_000, alpha=0.001, p0=0.5, seed=0, batch_size=1000, alpha_schedule="union",
                 sequential=False, target_radii=None, sequential_bound=None, undecided="abstain") -> CertifyConfig:
    """The config of `msrs certify`'s options (and msrs.runner.certify_dataset's keywords): sequential=True turns
    on early stopping with target_radii (default: the report's radii, msrs.report.DEFAULT_RADII) and
    sequential_bound (default "spending"); both are refused without it."""
    settings = None
    if sequential:
        from .report import DEFAULT_RADII

        if sequential_bound is not None:
            checks.choice("sequential_bound", sequential_bound, BOUNDS)
        settings = SequentialSettings(DEFAULT_RADII if target_radii is None else target_radii,
                                      "spending" if sequential_bound is None else sequential_bound)
    config = CertifyConfig(sigmas, n0, n, alpha, p0, seed, batch_size, alpha_schedule, settings, undecided)
    for name, value in (("target_radii", target_radii), ("sequential_bound", sequential_bound)):
        if value is not None and not sequential:
            raise checks.ArgumentValueError(f"{name}: only used in sequential mode (pass sequential=True / "
                                            f"--sequential)")
    return config


def _sequence(name: str, value) -> list:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise checks.ArgumentTypeError(f"{name}: expected a sequence of numbers, got {value!r}")
    return list(value)


def _set(obj, name: str, value) -> None:
    """Normalise a field of a frozen dataclass during __post_init__."""
    object.__setattr__(obj, name, value)
