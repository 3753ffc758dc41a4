"""The diffusion-calibration objective of one batch (msrs.finetune's docstring states its terms and the choices
behind them): Brier loss where the smoothed classifier at a sigma recovers the label, anti-consistency where it does
not, and an epsilon-MSE regulariser, all through the certification-time one-shot denoising.

  calibration_loss(denoiser, classifier, images, labels, image_ids, *, sigmas, ...) -> (total, terms)
"""
from __future__ import annotations

import inspect
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .. import ops, streams
from ..ops import reference
from ..ops.philox import MASK32
from .settings import FinetuneSettings

__all__ = ["calibration_loss"]

_DEFAULTS = FinetuneSettings()


def calibration_loss(
    denoiser,
    classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    image_ids: torch.Tensor,
    *,
    sigmas: Sequence[float] = _DEFAULTS.sigmas,
    samples_per_image: int = _DEFAULTS.samples_per_image,
    seed: int = _DEFAULTS.seed,
    step: int = 0,
    p0: float = _DEFAULTS.p0,
    brier_weight: float = _DEFAULTS.brier_weight,
    anti_consistency_weight: float = _DEFAULTS.anti_consistency_weight,
    mse_weight: float = _DEFAULTS.mse_weight,
    anti_consistency: str = _DEFAULTS.anti_consistency,
    mean: Optional[torch.Tensor] = None,
    std: Optional[torch.Tensor] = None,
    autocast_dtype: Optional[torch.dtype] = None,
    backend: Optional[str] = None,
) -> tuple:
    """The diffusion-calibration objective of one batch (see msrs.finetune's docstring for the exact terms).

    images [B, C, H, W] in [0, 1], labels [B], image_ids [B] (their indices in the data set: the noise key);
    `step` selects the noise (sample indices step*M .. step*M + M - 1), so the same (seed, step, image_ids) give the
    same noisy inputs. mean / std: the classifier's normalisation, [C] tensors (default 0 / 1).
    Returns (total, terms): total a differentiable scalar; terms a dict of floats: brier, anti_consistency, mse
    (unweighted means over the B x L (image, sigma) pairs, the first two masked by recoverability), total,
    recoverable (fraction of pairs), recoverable_sigma (list, per sigma in the order given), sample_accuracy
    (fraction of denoised samples classified correctly)."""
    sigmas = [float(s) for s in sigmas]
    m = int(samples_per_image)
    if step * m + m - 1 > MASK32:
        raise ValueError(f"step: {step} * samples_per_image exceeds the 2^32 noise counter range")
    channels, device = images.shape[1], images.device
    mean = torch.zeros(channels, device=device) if mean is None else mean.to(device=device, dtype=torch.float32)
    std = torch.ones(channels, device=device) if std is None else std.to(device=device, dtype=torch.float32)
    x_t, timesteps, coeffs, eps_target = _noisy_inputs(denoiser, images, image_ids, sigmas, m, seed, step, backend)
    eps = _predict_eps(denoiser, x_t, timesteps, autocast_dtype)
    inputs = reference.finalize_denoised(x_t, eps, coeffs, mean, std, torch.float32)
    with torch.autocast(device_type=device.type, dtype=autocast_dtype or torch.float32,
                        enabled=autocast_dtype is not None):
        logits = classifier(inputs)
    logits = logits.to(torch.float32)
    if int(labels.max()) >= logits.shape[1]:
        raise ValueError(f"dataset: label {int(labels.max())} is out of range for a {logits.shape[1]}-class "
                         f"classifier")
    brier, anti, correct, keep = _classifier_terms(logits, labels.to(device), len(sigmas), m, p0, anti_consistency)
    mse = (eps - eps_target).square().mean()
    total = brier_weight * brier + anti_consistency_weight * anti + mse_weight * mse
    terms = {
        "brier": float(brier.detach()),
        "anti_consistency": float(anti.detach()),
        "mse": float(mse.detach()),
        "total": float(total.detach()),
        "recoverable": float(keep.mean()),
        "recoverable_sigma": [float(v) for v in keep.mean(dim=1)],
        "sample_accuracy": float(correct.to(torch.float32).mean()),
    }
    return total, terms


@torch.no_grad()
def _noisy_inputs(denoiser, images, image_ids, sigmas: list, m: int, seed: int, step: int, backend) -> tuple:
    """(x_t, timesteps, coeffs, eps_target), [L * B * M] rows ordered (sigma level, image, copy): the diffusion
    inputs of the M noisy copies at each sigma, their timesteps, the one-shot denoising's (a, sqrt(1 - a^2)) per row,
    and the noise eps* that makes the one-shot reconstruction exact (docstring, point 4)."""
    schedule = [denoiser.timestep_for(s) for s in sigmas]
    scales = [a for _, a in schedule]
    # level l draws from stream streams.finetune(l) = streams.finetune(0) + l (add_noise gives level l stream + l),
    # never a certification stream
    x_t = ops.add_noise(images, sigmas, m, seed=seed, image_ids=image_ids, sample_start=step * m,
                        stream=streams.finetune(0), diffusion_scale=scales, out_dtype=torch.float32, backend=backend)
    rows_per_level = images.shape[0] * m
    timesteps = torch.tensor([t for t, _ in schedule], dtype=torch.int64, device=images.device)
    timesteps = timesteps.repeat_interleave(rows_per_level)
    a = torch.tensor(scales, dtype=torch.float32, device=images.device)
    # the same fp32 arithmetic as msrs.ops.finalize_denoised builds its coefficients with
    coeffs = torch.stack((a, torch.sqrt(torch.clamp(1.0 - a * a, min=0.0))), dim=1)
    coeffs = coeffs.repeat_interleave(rows_per_level, dim=0).contiguous()
    clean = (2.0 * images.to(torch.float32) - 1.0).repeat_interleave(m, dim=0).repeat(len(sigmas), 1, 1, 1)
    eps_target = (x_t - coeffs[:, 0, None, None, None] * clean) / coeffs[:, 1, None, None, None]
    return x_t, timesteps, coeffs, eps_target


def _classifier_terms(logits, labels, levels: int, m: int, p0: float, anti_consistency: str) -> tuple:
    """(brier, anti_consistency, correct [L, B, M], recoverable [L, B] as 0/1): the two classifier terms, masked by
    the recoverability rule (hard votes for the label > p0, without gradient; docstring, point 1)."""
    batch, num_classes = labels.shape[0], logits.shape[1]
    probs = torch.softmax(logits, dim=1).reshape(levels, batch, m, num_classes)
    onehot = F.one_hot(labels, num_classes).to(torch.float32)  # [B, K]
    with torch.no_grad():
        correct = logits.argmax(dim=1).reshape(levels, batch, m) == labels[None, :, None]
        keep = (correct.to(torch.float32).mean(dim=2) > p0).to(torch.float32)  # [L, B]
    brier_pairs = (probs - onehot[None, :, None, :]).square().sum(dim=3).mean(dim=2)  # [L, B]
    mean_probs = probs.mean(dim=2)  # [L, B, K]
    if anti_consistency == "wrong":
        mean_probs = mean_probs * (1.0 - onehot)[None]
    elif anti_consistency != "all":
        raise ValueError(f"anti_consistency: expected 'wrong' or 'all', got {anti_consistency!r}")
    ac_pairs = mean_probs.square().sum(dim=2)  # [L, B]
    return (keep * brier_pairs).mean(), ((1.0 - keep) * ac_pairs).mean(), correct, keep


def _predict_eps(denoiser, x_t: torch.Tensor, timesteps: torch.Tensor, autocast: Optional[torch.dtype]):
    """denoiser.predict_eps under the run's autocast setting (overriding the denoiser's own default)."""
    try:
        takes_autocast = "autocast_dtype" in inspect.signature(denoiser.predict_eps).parameters
    except (TypeError, ValueError):
        takes_autocast = False
    if takes_autocast:
        return denoiser.predict_eps(x_t, timesteps, autocast_dtype=autocast).to(torch.float32)
    with torch.autocast(device_type=x_t.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        return denoiser.predict_eps(x_t, timesteps).to(torch.float32)
