"""The certification procedures, as functions over an engine (msrs.engine) driven by one CertifyConfig.

  predict(engine, images, image_ids, sigma=, n=, alpha=, seed=, batch_size=)   Cohen et al.'s PREDICT
  certify(engine, images, image_ids, config)                  Cohen et al.'s CERTIFY (one sigma)
  certify_cascade(engine, images, image_ids, config)          the multi-scale cascade (several sigmas)
  certify_sequential(engine, images, image_ids, config)       CERTIFY with early stopping
  certify_cascade_sequential(engine, images, image_ids, config)   the cascade with early stopping
  run(engine, images, image_ids, config)                      the one that config.method names

Each draws its counts from the engine on the noise streams msrs.streams assigns, and leaves every decision on them
to msrs.decisions (fixed n) or msrs.stopping (early stopping), which never call the engine themselves: the
sequential rules get a `draw` function that the procedure builds here. Data flows one way:
procedures -> engine -> ops, and procedures -> decisions / stopping -> bounds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import checks, decisions, stopping, streams
from .config import MAX_SAMPLES, MAX_SEED, CertifyConfig

__all__ = ["Certificate", "PROCEDURES", "certify", "certify_cascade", "certify_cascade_sequential",
           "certify_sequential", "predict", "run"]


@dataclass
class Certificate:
    prediction: int  # class, or -1 for ABSTAIN
    radius: float  # 0.0 when abstaining
    sigma: float  # sigma of the deciding stage (cascade abstain: last stage tried)
    stage: int  # cascade stage that decided (0 = largest sigma); -1 when abstaining
    counts: np.ndarray  # int64 [L, K] estimation counts per stage (zeros for stages not reached)
    counts0: np.ndarray  # int64 [L, K] selection counts
    p_lower: float  # Clopper-Pearson lower bound of the deciding stage (nan if none)
    samples: int  # Monte Carlo samples drawn for this image, all stages


def predict(engine, images, image_ids, *, sigma, n, alpha, seed, batch_size) -> np.ndarray:
    """Cohen et al.'s PREDICT for each image: the class, or -1 (ABSTAIN)."""
    x, ids = engine.group(images, image_ids)
    sigma = checks.sigma("sigma", sigma)
    n = checks.integer("n", n, 1, MAX_SAMPLES)
    alpha = checks.level("alpha", alpha, array_ok=False)  # one level for the whole call: [] would pass as "no rows"
    seed = checks.integer("seed", seed, 0, MAX_SEED)
    batch_size = checks.integer("batch_size", batch_size, 1)
    counts = engine.counts(x, ids, sigma, [(streams.PREDICT, n)], seed=seed, batch_size=batch_size)[0]
    return np.array([decisions.cohen_predict_from_counts(c, alpha) for c in counts.cpu().numpy()], dtype=np.int64)


def certify(engine, images, image_ids, config: CertifyConfig) -> list[Certificate]:
    """Cohen et al.'s CERTIFY (with threshold p0) for each image of the group, at config.sigmas[0]."""
    x, ids = engine.group(images, image_ids)
    sigma = config.sigmas[0]
    counts0, counts = _stage(engine, x, ids, None, sigma, 0, config)
    out = []
    for c0, c in zip(counts0, counts):
        d = decisions.cohen_certify_from_counts(c0, c, config.alpha, sigma, config.p0)
        out.append(Certificate(d.prediction, d.radius, sigma, d.stage, c[None].copy(), c0[None].copy(), d.p_lower,
                               config.n0 + config.n))
    return out


def certify_cascade(engine, images, image_ids, config: CertifyConfig) -> list[Certificate]:
    """The multi-scale cascade (msrs.decisions): stage s = config.sigmas[s], largest first; an image is sampled
    at stage s only if every earlier stage fell through for it (or was undecided, under config.undecided =
    "fall_through")."""
    x, ids = engine.group(images, image_ids)
    sigmas = list(config.sigmas)
    cert, _ = decisions.schedule_levels(config.alpha, len(sigmas), config.alpha_schedule)
    shape = (x.shape[0], len(sigmas), engine.num_classes)
    counts0, counts = np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.int64)
    active = np.arange(x.shape[0])
    for s, sigma in enumerate(sigmas):
        if not active.size:
            break
        counts0[active, s], counts[active, s] = _stage(engine, x, ids, active, sigma, s, config)
        outcomes = [decisions.stage_outcome(counts0[b, s], counts[b, s], cert[s], config.p0)[0] for b in active]
        active = active[np.array([decisions.goes_on(o, config.undecided) for o in outcomes], dtype=bool)]
    out = []
    for c0, c in zip(counts0, counts):
        d = decisions.cascade_certify_from_counts(c0, c, sigmas, config.alpha, config.p0, config.alpha_schedule,
                                                  config.undecided)
        out.append(Certificate(d.prediction, d.radius, sigmas[d.last], d.stage, c.copy(), c0.copy(), d.p_lower,
                               (d.last + 1) * (config.n0 + config.n)))
    return out


def certify_sequential(engine, images, image_ids, config: CertifyConfig) -> list[Certificate]:
    """Sequential (early-stopping) CERTIFY (msrs.stopping.run_sequential): the class is selected on n0 samples of
    the selection stream, then estimation samples are drawn look by look and each image stops as soon as its
    outcome at the target radii is settled (or at n, the budget). The radius comes from the lower bound at the
    stopping look (p_lower), valid under early stopping; the samples drawn are a prefix of a fixed-n certify's.
    Certificate.counts: the estimation counts drawn; samples: n0 + those drawn."""
    x, ids = engine.group(images, image_ids)
    sigma, settings = config.sigmas[0], config.sequential
    counts0 = engine.counts(x, ids, sigma, [(streams.selection(0), config.n0)], seed=config.seed,
                            batch_size=config.batch_size)[0].cpu().numpy()
    selected = counts0.argmax(axis=1) if len(counts0) else np.zeros(0, dtype=np.int64)
    counts = np.zeros_like(counts0)

    def draw(idx, num, start):
        drawn = engine.stream_counts(x, ids, idx, sigma, streams.estimation(0), num, start, seed=config.seed,
                                     batch_size=config.batch_size)
        counts[idx] += drawn
        return drawn[np.arange(len(idx)), selected[idx]]

    result = stopping.run_sequential(draw, selected, config.n, sigma, config.alpha, settings.target_radii, config.p0,
                                     **settings.options())
    out = []
    for b in range(x.shape[0]):
        prediction = int(result.prediction[b])
        out.append(Certificate(prediction, float(result.radius[b]) if prediction >= 0 else 0.0, sigma,
                               0 if prediction >= 0 else -1, counts[b][None].copy(), counts0[b][None].copy(),
                               float(result.lower[b]), config.n0 + int(result.samples[b])))
    return out


def certify_cascade_sequential(engine, images, image_ids, config: CertifyConfig) -> list[Certificate]:
    """The multi-scale cascade with early stopping (msrs.stopping.run_cascade_sequential): stage s selects on n0
    samples of its selection stream and draws estimation samples look by look until it routes (certify / fall
    through / undecided); a certified image then samples its certifying stage or a fall-through stage until its
    bucket at the target radii is settled. Error budget: the "union" schedule, each statement valid at its
    stopping look. Certificate as certify_cascade's: counts [L, K] the estimation counts drawn per stage (a prefix
    of each stage's stream), counts0 the selection counts, p_lower the running lower bound of the deciding stage,
    samples all Monte Carlo samples drawn for the image."""
    x, ids = engine.group(images, image_ids)
    sigmas, settings = list(config.sigmas), config.sequential

    def draw(idx, stream, num, start):
        return engine.stream_counts(x, ids, idx, sigmas[streams.stage_of(stream)], stream, num, start,
                                    seed=config.seed, batch_size=config.batch_size)

    result = stopping.run_cascade_sequential(draw, x.shape[0], sigmas, config.n0, config.n, config.alpha,
                                             settings.target_radii, config.p0,
                                             alpha_schedule=config.alpha_schedule, undecided=config.undecided,
                                             **settings.options())
    total = result.total_samples
    return [Certificate(int(result.prediction[b]), float(result.radius[b]), sigmas[int(result.last[b])],
                        int(result.stage[b]), result.counts[b].copy(), result.counts0[b].copy(),
                        float(result.p_lower[b]), int(total[b])) for b in range(x.shape[0])]


PROCEDURES = {"certify": certify, "cascade": certify_cascade, "sequential": certify_sequential,
              "sequential_cascade": certify_cascade_sequential}


def run(engine, images, image_ids, config: CertifyConfig) -> list[Certificate]:
    """The procedure config.method names: the one place that chooses among them."""
    return PROCEDURES[config.method](engine, images, image_ids, config)


def _stage(engine, x, ids, sources, sigma, stage, config) -> tuple[np.ndarray, np.ndarray]:
    """Selection and estimation counts of one stage (numpy [B', K] each)."""
    return engine.stage_counts(x, ids, sources, sigma, (streams.selection(stage), streams.estimation(stage)),
                               config.n0, config.n, seed=config.seed, batch_size=config.batch_size)
