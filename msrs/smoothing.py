"""SmoothedClassifier: the public Python API, an engine (msrs.engine) with the procedures (msrs.procedures) as
methods taking the familiar positional arguments (images, sigma(s), n0, n, alpha).

  smoothed = SmoothedClassifier(classifier, num_classes, denoiser=..., mean=..., std=..., device=..., dtype=...)
  smoothed.certify(images, sigma, n0, n, alpha, seed=0, batch_size=1000, image_ids=ids)
  smoothed.certify_cascade(images, sigmas, ...), .certify_sequential(...), .certify_cascade_sequential(...),
  smoothed.predict(images, sigma, n, alpha, ...), smoothed.sample_counts(...), smoothed.run(images, ids, config)

Every method builds a validated msrs.config.CertifyConfig first, so bad arguments fail before any sampling.
"""
from __future__ import annotations

import numpy as np

from . import checks, procedures, streams
from .config import MAX_SAMPLES, CertifyConfig, SequentialSettings
from .engine import Engine
from .procedures import Certificate

__all__ = ["Certificate", "PREDICT_STREAM", "SmoothedClassifier"]

PREDICT_STREAM = streams.PREDICT


class SmoothedClassifier(Engine):
    """Randomized smoothing of `classifier`, optionally behind a one-step diffusion `denoiser`: the engine's
    arguments (msrs.engine.Engine), and the certification procedures as methods."""

    def predict(self, images, sigma, n, alpha, *, seed, batch_size, image_ids=None) -> np.ndarray:
        """Cohen et al.'s PREDICT for each image: the class, or -1 (ABSTAIN)."""
        return procedures.predict(self, images, image_ids, sigma=sigma, n=n, alpha=alpha, seed=seed,
                                  batch_size=batch_size)

    def certify(self, images, sigma, n0, n, alpha, *, seed, batch_size, image_ids=None, p0=0.5) -> list[Certificate]:
        """Cohen et al.'s CERTIFY (with threshold p0) for each image of the group."""
        config = CertifyConfig((checks.sigma("sigma", sigma),), n0, n, alpha, p0, seed, batch_size)
        return procedures.certify(self, images, image_ids, config)

    def certify_cascade(self, images, sigmas, n0, n, alpha, *, seed, batch_size, image_ids=None, p0=0.5,
                        alpha_schedule="union", undecided="abstain") -> list[Certificate]:
        """The multi-scale cascade (msrs.decisions): sigmas are sorted from largest (stage 0) to smallest; an image
        is sampled at stage s only if every earlier stage fell through for it (or was undecided, with
        undecided="fall_through")."""
        config = CertifyConfig(checks.sigmas("sigmas", sigmas, scalar_ok=False), n0, n, alpha, p0, seed, batch_size,
                               alpha_schedule, undecided=undecided)
        return procedures.certify_cascade(self, images, image_ids, config)

    def certify_sequential(self, images, sigma, n0, n_max, alpha, *, seed, batch_size, image_ids=None, p0=0.5,
                           target_radii=None, **options) -> list[Certificate]:
        """Sequential (early-stopping) CERTIFY (msrs.procedures.certify_sequential) with budget n_max.
        options: msrs.config.SequentialSettings' bound / final_share / weights / prior / schedule / first /
        growth / chunk / points / intersect."""
        config = CertifyConfig((checks.sigma("sigma", sigma),), n0, _budget(n_max), alpha, p0, seed, batch_size,
                               sequential=SequentialSettings(target_radii, **options))
        return procedures.certify_sequential(self, images, image_ids, config)

    def certify_cascade_sequential(self, images, sigmas, n0, n_max, alpha, *, seed, batch_size, image_ids=None,
                                   p0=0.5, target_radii=None, alpha_schedule="union", undecided="abstain",
                                   **options) -> list[Certificate]:
        """The multi-scale cascade with early stopping (msrs.procedures.certify_cascade_sequential), budget n_max
        per stage; only the "union" alpha schedule is valid. undecided: as certify_cascade's. options: as
        certify_sequential's."""
        config = CertifyConfig(checks.sigmas("sigmas", sigmas, scalar_ok=False), n0, _budget(n_max), alpha, p0, seed,
                               batch_size, alpha_schedule, SequentialSettings(target_radii, **options), undecided)
        return procedures.certify_cascade_sequential(self, images, image_ids, config)

    def run(self, images, image_ids, config: CertifyConfig) -> list[Certificate]:
        """The procedure `config` names (msrs.procedures.run): what msrs.runner calls for each group of images."""
        return procedures.run(self, images, image_ids, config)


def _budget(n_max) -> int:
    """The sequential budget, checked under its own name (the config calls it n)."""
    return checks.integer("n_max", n_max, 1, MAX_SAMPLES)
