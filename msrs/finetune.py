"""Diffusion calibration: fine-tune the denoiser for the multi-scale cascade (Jeong & Shin, NeurIPS 2023,
"Multi-scale Diffusion Denoised Smoothing", Sec. 3.3; loss names "Brier loss" and "anti-consistency loss" are
theirs).

  finetune(denoiser, classifier, dataset, *, out_dir, ...) -> FinetuneResult
  calibration_loss(denoiser, classifier, images, labels, image_ids, *, ...) -> (total, terms)
  add_arguments(parser) / run(args)   the ``msrs finetune`` command

What is fine-tuned. Only the diffusion UNet (all its parameters, AdamW, fp32 master weights, optional autocast),
through exactly the one-shot denoising used at certification time (docs/DESIGN.md): for each cascade sigma,
(t, a) = denoiser.timestep_for(sigma), x_t = a (2 (x + sigma delta) - 1) drawn with msrs.ops.add_noise,
eps = denoiser.predict_eps(x_t, t), and the denoised, classifier-normalised input
((clamp((x_t - sqrt(1 - a^2) eps) / a, -1, 1) + 1) / 2 - mean) / std. The fused ops have no autograd formula, so
that last step is computed with msrs.ops.reference.finalize_denoised (plain torch, differentiable, the contract
every backend is tested against); the noise needs no gradient and comes from the fused op. The classifier is
frozen (eval mode, requires_grad False for the duration of the run) and only passes gradients through.

The objective, per training image x (label y), per cascade sigma s, with M = samples_per_image noisy copies
delta_1..delta_M and q_m = softmax(f(D_s(x + sigma_s delta_m))) (f the classifier, D_s the one-shot denoiser):

  votes      v = #{m : argmax q_m = y} / M                       (hard votes, first maximum wins, as in CERTIFY)
  recoverable(x, s)  :=  v > p0                                    (computed without gradient)
  Brier(x, s)        :=  (1/M) sum_m || q_m - e_y ||^2             in [0, 2]
  AC(x, s)           :=  || qbar * (1 - e_y) ||^2,  qbar = (1/M) sum_m q_m     in [0, 1)   (anti_consistency="wrong")
                     or  || qbar ||^2                                         in [1/K, 1] (anti_consistency="all")
  MSE(x, s)          :=  mean over the M copies and pixels of (eps_theta(x_t, t) - eps*)^2,
                         eps* = (x_t - a (2x - 1)) / sqrt(1 - a^2)  (the noise that makes the one-shot denoising exact)

  total = brier_weight * mean_{x,s}[ 1{recoverable} Brier ] + anti_consistency_weight * mean_{x,s}[ 1{not
          recoverable} AC ] + mse_weight * mean_{x,s} MSE

(means over all B images x L sigmas of a batch, not over the recoverable ones only, so the weights keep their
meaning whatever the recoverable fraction is). The CSV log and the progress bar show the three unweighted means
and the weighted total.

Confirmed by the paper's abstract / review thread (docs: ../shared/SCIENCE.md, section 3): only the diffusion model
is fine-tuned, through the certification-time single-step denoising, with the classifier frozen; a Brier term on
recoverable inputs (consistent, correct denoising) and an anti-consistency term otherwise (do not be confidently
wrong: rather diverse outputs, so that the smoothed classifier at that sigma abstains and the cascade falls back to
a smaller sigma). NOT confirmed here, and msrs's choices (each one a documented, changeable decision):

1. Recoverability rule. Per (image, sigma), from the M samples' hard votes at that sigma: recoverable iff the
   fraction voting for the label exceeds p0, i.e. the M-sample estimate of the smoothed classifier at that sigma
   is correct and confident (the cascade's stage-s test "pA >= p0" with the label as cA). Ties (v = p0) count as
   not recoverable, matching the over-smoothing definition "the true class's probability stays at or below p0".
   Per sigma rather than "the cascade's deciding stage": the cascade certifies at the largest sigma whose
   smoothed classifier is confident, and needs every larger sigma to abstain; applying the rule stage by stage
   trains exactly that (Brier where the stage should certify, anti-consistency where it should abstain and fall
   back), and it does not depend on the Monte Carlo confidence bounds, which are meaningless at M ~ 8. With small
   M the rule is a noisy estimate; it is recomputed on fresh noise at every step.
2. Brier loss: the per-sample squared error averaged over the M samples (an expectation over the smoothing noise),
   not the squared error of the mean prediction; it rewards every sample being correct (consistency), which is
   what raises pA and the radius. Hard votes decide recoverability, soft probabilities carry the gradient.
3. Anti-consistency loss: the squared L2 norm of the mean softmax over the M samples, ||qbar||^2 (the collision
   probability of the mean prediction; anti_consistency="all", the default). It is large exactly when the M
   denoised samples are consistently given one class, and minimised only by diverse outputs (qbar uniform), the
   literal reading of "generate rather diverse outputs otherwise" in the paper's abstract; on a non-recoverable
   input it also lowers a true-class probability that sits at or just below p0, so the stage abstains clearly
   and the cascade falls back to a smaller sigma instead of staying undecided (the cascade abstains outright
   when a stage's confidence interval straddles p0). Squared norm rather than the max wrong-class probability:
   it is smooth and dominated by the largest class (sum_c qbar_c^2 <= max_c qbar_c). The alternative
   anti_consistency="wrong", ||qbar * (1 - e_y)||^2 (wrong classes only, in [0, 1)), never pushes away from the
   true class: it can also be satisfied by moving the wrong mass to the label. On the digits demo
   (scripts/finetune_demo.py, 300 steps, lr 1e-3) "all" raised the cascade's certified accuracy at radius 0 on
   100 test images from 0.32 to 0.53 (ACR 0.042 -> 0.071) while "wrong" lowered it to 0.23 (ACR 0.036): the
   undecided largest-sigma stage is what limits the cascade there, and only "all" resolves it.
4. Epsilon-MSE regulariser: the usual DDPM loss at the cascade's timesteps, evaluated on the same noisy inputs
   (no extra UNet pass). Because t is the first timestep with sqrt(abar_t) <= 1/sqrt(1 + 4 sigma^2), the
   injected noise 2 a sigma delta is not exactly sqrt(1 - a^2) delta; the target eps* is the noise that makes the
   one-shot reconstruction exact ((x_t - sqrt(1 - a^2) eps*) / a = 2x - 1), 0.994 to 1.000 times delta for the
   linear schedule at sigma = 0.25 .. 1. It keeps the denoiser a denoiser (anchors it to the data) while the two
   classifier terms move it.
5. Full fine-tuning of all UNet parameters (no adapters), AdamW, constant learning rate after an optional linear
   warm-up, gradient-norm clipping at max_grad_norm, the UNet in eval mode (dropout off: the objective is the
   function used at certification time), EMA of the weights with the warm-up
   decay_k = min(ema_decay, (1 + k) / (10 + k)) after optimizer step k (as diffusers' EMAModel), so a short
   fine-tune is not dominated by the initial weights. The EMA weights are the saved model.
6. Defaults (1000 steps, batch 32, M = 4, AdamW lr 1e-3 with 20 warm-up steps, weight decay 0, clipping at 1,
   weights Brier 2 / anti-consistency 1 / MSE 1, anti_consistency "all", ema_decay 0.99, p0 0.5) are msrs's, not
   the paper's: they are the settings of the shipped digits demo (scripts/finetune_demo.py), chosen by a small
   sweep on that demo only (lr 1e-4 barely moved the 0.9M-parameter UNet in 300 steps; Brier weight 2 gave the
   best average certified radius of 1 and 2; the paper itself treats the Brier weight as a knob that raises
   robustness and may cost clean accuracy). A large pretrained DDPM likely wants a smaller learning rate.

Reproducibility and resume. Everything random is a function of (seed, step), never of state carried across steps:
the data order is a fresh permutation per epoch, torch.randperm with a generator seeded by hash(seed, epoch);
the noise of training image i (its index in the data set) at step k, copy m, sigma level l is msrs.ops's Philox
noise keyed by (seed, image id i, sample index k * M + m, stream 1024 + l) (streams below 1024 are the
certification engine's); any other global-RNG use inside a step is seeded by hash(seed, k) in a forked RNG
state, so the caller's RNG is left untouched. A checkpoint (every checkpoint_every steps and at the end) writes
  out_dir/unet/, out_dir/scheduler/   the EMA model, loadable with DiffusionDenoiser.from_pretrained(out_dir)
  out_dir/finetune.json               the fine-tuning settings, step, wall time, versions
  out_dir/state/                      raw.safetensors (trained weights), ema.safetensors, optimizer.pt (AdamW
                                      state, torch.load(weights_only=True)), scaler.pt (fp16 only), trainer.json
                                      (step, elapsed seconds, settings)
  out_dir/log.csv                     one row per step (rows after the last checkpoint are dropped on resume)
and a run started again with the same settings continues from the last checkpoint with bit-for-bit the same
weights as an uninterrupted run (checked on CPU; on CUDA it additionally needs deterministic kernels, e.g.
torch.use_deterministic_algorithms(True)). Settings that change the trajectory must match the checkpoint's (a
ValueError names those that differ; the data, the classifier and the initial denoiser are compared by a digest
of their tensors); steps may be raised to continue training.
"""
from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import inspect
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "FINETUNE_STREAM",
    "FinetuneResult",
    "add_arguments",
    "batch_indices",
    "calibration_loss",
    "finetune",
    "log_columns",
    "run",
]

FINETUNE_STREAM = 1024  # Philox stream of sigma level 0; level l uses FINETUNE_STREAM + l
MAX_COUNTER = 2**32 - 1
STATE_VERSION = 1
_MASK64 = (1 << 64) - 1
# Settings that may differ between a checkpoint and the run resuming it (they do not change the trajectory).
_RESUMABLE_CHANGES = ("steps", "checkpoint_every", "progress")


# ---------------------------------------------------------------------------------------------------- small helpers
def _mix(*words: int) -> int:
    """A 63-bit hash of integers (splitmix64 finaliser chained), for seeding generators from (seed, step, ...)."""
    h = 0x9E3779B97F4A7C15
    for w in words:
        h = (h ^ (int(w) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)


def _int_arg(name: str, value, minimum: int, maximum: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" + ("" if maximum is None else f" and <= {maximum}")
        raise ValueError(f"{name}: expected an integer {bound}, got {value}")
    return value


def _float_arg(name: str, value, *, low: float = -math.inf, high: float = math.inf, low_open: bool = False,
               high_open: bool = False) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {value!r}") from None
    bad = (not math.isfinite(value) or value < low or value > high or (low_open and value == low)
           or (high_open and value == high))
    if bad:
        lo = f"{'>' if low_open else '>='} {low:g}" if math.isfinite(low) else ""
        hi = f"{'<' if high_open else '<='} {high:g}" if math.isfinite(high) else ""
        what = " and ".join(x for x in (lo, hi) if x) or "finite"
        raise ValueError(f"{name}: expected a finite number {what}, got {value}")
    return value


def _sigmas_arg(sigmas) -> tuple:
    if isinstance(sigmas, (int, float)) and not isinstance(sigmas, bool):
        sigmas = (sigmas,)
    try:
        values = [_float_arg("sigmas", s, low=0.0, low_open=True) for s in sigmas]
    except TypeError:
        raise ValueError(f"sigmas: expected a sequence of noise levels > 0, got {sigmas!r}") from None
    if not values:
        raise ValueError("sigmas: expected at least one noise level")
    if len(set(values)) != len(values):
        raise ValueError(f"sigmas: expected distinct noise levels, got {values}")
    return tuple(sorted(values))


def _dtype_arg(dtype, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype (None = plain fp32) for 'auto' | 'float32' | 'bfloat16' | 'float16' or a torch dtype."""
    names = {"float32": None, "fp32": None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype is None or dtype == torch.float32:
        return None
    if dtype in (torch.bfloat16, torch.float16):
        resolved = dtype
    elif isinstance(dtype, str) and dtype.lower() == "auto":
        resolved = torch.bfloat16 if _bf16_fast(device) else None
    elif isinstance(dtype, str) and dtype.lower() in names:
        resolved = names[dtype.lower()]
    else:
        raise ValueError(f"dtype: expected 'auto', 'float32', 'bfloat16' or 'float16', got {dtype!r}")
    if resolved == torch.float16 and device.type != "cuda":
        raise ValueError("dtype: float16 autocast is for CUDA devices (it needs loss scaling); use bfloat16 on CPU")
    if resolved == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("dtype: this GPU has no bfloat16 support; use float16 or float32")
    return resolved


def _bf16_fast(device: torch.device) -> bool:
    """bf16 autocast for dtype='auto': on CUDA when supported; on CPU only with native bf16 instructions
    (AVX512-BF16 or AMX; measured here: about 2x faster than fp32 for a small UNet's forward and backward)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu" or platform.system() != "Linux":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def _dtype_name(dtype: Optional[torch.dtype]) -> str:
    return {None: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[dtype]


def _normalisation(mean, std, channels: int, device) -> tuple:
    if mean is None and std is None:
        mean, std = (0.0,), (1.0,)
    elif mean is None or std is None:
        raise ValueError("mean, std: give both the classifier's normalisation mean and std, or neither")
    out = []
    for name, value in (("mean", mean), ("std", std)):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = (value,)
        if isinstance(value, torch.Tensor):
            value = value.reshape(-1).tolist()
        try:
            values = [_float_arg(name, v, low=0.0, low_open=True) if name == "std" else _float_arg(name, v)
                      for v in value]
        except TypeError:
            raise ValueError(f"{name}: expected a number or one number per channel, got {value!r}") from None
        if len(values) not in (1, channels):
            raise ValueError(f"{name}: expected 1 or {channels} values (one per channel), got {len(values)}")
        out.append(torch.tensor(values * (channels if len(values) == 1 else 1), dtype=torch.float32, device=device))
    return out[0], out[1]


def _dataset_tensors(dataset) -> tuple:
    if hasattr(dataset, "images") and hasattr(dataset, "labels"):
        images, labels = dataset.images, dataset.labels
    elif isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        images, labels = dataset
    else:
        raise ValueError("dataset: expected an ImageDataset (with .images and .labels) or a pair (images, labels)")
    images, labels = torch.as_tensor(images), torch.as_tensor(labels)
    if images.dim() != 4 or not images.is_floating_point():
        raise ValueError(f"dataset: expected float images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
    if labels.shape != (images.shape[0],) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"dataset: expected integer labels [N] for {images.shape[0]} images, got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    if images.shape[0] == 0:
        raise ValueError("dataset: is empty")
    if not bool(torch.isfinite(images).all()) or float(images.min()) < 0 or float(images.max()) > 1:
        raise ValueError("dataset: expected images with values in [0, 1]")
    if int(labels.min()) < 0:
        raise ValueError("dataset: expected labels >= 0")
    return images.to(torch.float32).contiguous(), labels.to(torch.int64).contiguous()


def _digest(tensors) -> str:
    """A short sha256 of tensors' values (for refusing to resume against other data or models)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def batch_indices(seed: int, step: int, batch_size: int, num_images: int) -> torch.Tensor:
    """Data-set indices of the batch of optimizer step `step` (0-based): positions step*B .. step*B + B - 1 of the
    endless sequence of per-epoch permutations, permutation e = randperm(num_images) seeded by hash(seed, e)."""
    positions = torch.arange(step * batch_size, (step + 1) * batch_size, dtype=torch.int64)
    epochs, offsets = positions // num_images, positions % num_images
    out = torch.empty(batch_size, dtype=torch.int64)
    for epoch in torch.unique(epochs).tolist():
        generator = torch.Generator().manual_seed(_mix(seed, epoch, 0xDA7A))
        perm = torch.randperm(num_images, generator=generator)
        chosen = epochs == epoch
        out[chosen] = perm[offsets[chosen]]
    return out


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


# ------------------------------------------------------------------------------------------------------- objective
def calibration_loss(
    denoiser,
    classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    image_ids: torch.Tensor,
    *,
    sigmas: Sequence[float] = (0.25, 0.5, 1.0),
    samples_per_image: int = 4,
    seed: int = 0,
    step: int = 0,
    p0: float = 0.5,
    brier_weight: float = 2.0,
    anti_consistency_weight: float = 1.0,
    mse_weight: float = 1.0,
    anti_consistency: str = "all",
    mean: Optional[torch.Tensor] = None,
    std: Optional[torch.Tensor] = None,
    autocast_dtype: Optional[torch.dtype] = None,
    backend: Optional[str] = None,
) -> tuple:
    """The diffusion-calibration objective of one batch (see the module docstring for the exact terms).

    images [B, C, H, W] in [0, 1], labels [B], image_ids [B] (their indices in the data set: the noise key);
    `step` selects the noise (sample indices step*M .. step*M + M - 1), so the same (seed, step, image_ids) give the
    same noisy inputs. mean / std: the classifier's normalisation, [C] tensors (default 0 / 1).
    Returns (total, terms): total a differentiable scalar; terms a dict of floats: brier, anti_consistency, mse
    (unweighted means over the B x L (image, sigma) pairs, the first two masked by recoverability), total,
    recoverable (fraction of pairs), recoverable_sigma (list, per sigma in the order given), sample_accuracy
    (fraction of denoised samples classified correctly)."""
    from . import ops
    from .ops import reference

    sigmas = [float(s) for s in sigmas]
    levels, batch, m = len(sigmas), images.shape[0], int(samples_per_image)
    device = images.device
    channels = images.shape[1]
    mean = torch.zeros(channels, device=device) if mean is None else mean.to(device=device, dtype=torch.float32)
    std = torch.ones(channels, device=device) if std is None else std.to(device=device, dtype=torch.float32)
    schedule = [denoiser.timestep_for(s) for s in sigmas]
    scales = [a for _, a in schedule]
    if step * m + m - 1 > MAX_COUNTER:
        raise ValueError(f"step: {step} * samples_per_image exceeds the 2^32 noise counter range")
    with torch.no_grad():
        x_t = ops.add_noise(images, sigmas, m, seed=seed, image_ids=image_ids, sample_start=step * m,
                            stream=FINETUNE_STREAM, diffusion_scale=scales, out_dtype=torch.float32, backend=backend)
        per_level = batch * m
        timesteps = torch.tensor([t for t, _ in schedule], dtype=torch.int64, device=device)
        timesteps = timesteps.repeat_interleave(per_level)
        a = torch.tensor(scales, dtype=torch.float32, device=device)
        # the same fp32 arithmetic as msrs.ops.finalize_denoised builds its coefficients with
        coeffs = torch.stack((a, torch.sqrt(torch.clamp(1.0 - a * a, min=0.0))), dim=1)
        coeffs = coeffs.repeat_interleave(per_level, dim=0).contiguous()
        clean = (2.0 * images.to(torch.float32) - 1.0).repeat_interleave(m, dim=0).repeat(levels, 1, 1, 1)
        eps_target = (x_t - coeffs[:, 0, None, None, None] * clean) / coeffs[:, 1, None, None, None]

    eps = _predict_eps(denoiser, x_t, timesteps, autocast_dtype)
    inputs = reference.finalize_denoised(x_t, eps, coeffs, mean, std, torch.float32)
    with torch.autocast(device_type=device.type, dtype=autocast_dtype or torch.float32,
                        enabled=autocast_dtype is not None):
        logits = classifier(inputs)
    logits = logits.to(torch.float32)
    num_classes = logits.shape[1]
    if int(labels.max()) >= num_classes:
        raise ValueError(f"dataset: label {int(labels.max())} is out of range for a {num_classes}-class classifier")
    probs = torch.softmax(logits, dim=1).reshape(levels, batch, m, num_classes)
    onehot = F.one_hot(labels.to(device), num_classes).to(torch.float32)  # [B, K]

    with torch.no_grad():
        correct = (logits.argmax(dim=1).reshape(levels, batch, m) == labels.to(device)[None, :, None])
        vote_fraction = correct.to(torch.float32).mean(dim=2)  # [L, B]
        recoverable = vote_fraction > p0
        keep = recoverable.to(torch.float32)

    brier_pairs = (probs - onehot[None, :, None, :]).square().sum(dim=3).mean(dim=2)  # [L, B]
    mean_probs = probs.mean(dim=2)  # [L, B, K]
    if anti_consistency == "wrong":
        mean_probs = mean_probs * (1.0 - onehot)[None]
    elif anti_consistency != "all":
        raise ValueError(f"anti_consistency: expected 'wrong' or 'all', got {anti_consistency!r}")
    ac_pairs = mean_probs.square().sum(dim=2)  # [L, B]
    brier = (keep * brier_pairs).mean()
    anti = ((1.0 - keep) * ac_pairs).mean()
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


# ------------------------------------------------------------------------------------------------------ persistence
def log_columns(sigmas: Sequence[float]) -> list:
    """The columns of out_dir/log.csv for these sigmas."""
    return (["step", "total", "brier", "anti_consistency", "mse", "recoverable"]
            + [f"recoverable_sigma_{float(s):g}" for s in sorted(float(s) for s in sigmas)]
            + ["sample_accuracy", "grad_norm", "lr", "ema_decay", "wall_time"])


def _replace_dir(new: Path, target: Path) -> None:
    """Move folder `new` to `target`, replacing it (the old one is renamed aside first, then removed)."""
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    if old.exists():
        shutil.rmtree(old)


def _state_dir(out_dir: Path) -> Optional[Path]:
    """The last complete training state (state/, or state.old/ if a crash hit between the two renames)."""
    for name in ("state", "state.old"):
        candidate = out_dir / name
        if (candidate / "trainer.json").is_file():
            return candidate
    return None


def _save_checkpoint(out_dir: Path, model, ema: dict, optimizer, scaler, step: int, elapsed: float,
                     settings: dict, info: dict) -> None:
    from safetensors.torch import save_file

    # 1. the EMA model, in DiffusionDenoiser.save_pretrained's layout
    ema_model = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in ema_model.named_parameters():
            param.copy_(ema[name])
    tmp = out_dir / ".model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    ema_model.save_pretrained(tmp)
    for child in sorted(tmp.iterdir()):
        if child.is_dir():
            _replace_dir(child, out_dir / child.name)
        else:
            os.replace(child, out_dir / child.name)
    shutil.rmtree(tmp, ignore_errors=True)
    record = {"step": step, "wall_time_seconds": round(elapsed, 3), "settings": settings, **info}
    (out_dir / "finetune.json").write_text(json.dumps(record, indent=2) + "\n")

    # 2. the training state, written aside and swapped in (trainer.json last: its presence marks a complete state)
    new = out_dir / "state.tmp"
    if new.exists():
        shutil.rmtree(new)
    new.mkdir(parents=True)
    raw = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(raw, str(new / "raw.safetensors"))
    save_file({k: v.detach().contiguous().cpu() for k, v in ema.items()}, str(new / "ema.safetensors"))
    torch.save(optimizer.state_dict(), new / "optimizer.pt")
    if scaler is not None:
        torch.save(scaler.state_dict(), new / "scaler.pt")
    trainer = {"version": STATE_VERSION, "step": step, "elapsed": elapsed, "settings": settings}
    (new / "trainer.json").write_text(json.dumps(trainer, indent=2) + "\n")
    _replace_dir(new, out_dir / "state")


def _load_state(state_dir: Path, model, ema: dict, optimizer, scaler, device) -> dict:
    from safetensors.torch import load_file

    trainer = json.loads((state_dir / "trainer.json").read_text())
    model.load_state_dict(load_file(str(state_dir / "raw.safetensors"), device=str(device)), strict=True)
    for name, value in load_file(str(state_dir / "ema.safetensors"), device=str(device)).items():
        if name not in ema or ema[name].shape != value.shape:
            raise ValueError(f"resume: {state_dir} holds EMA weights for another model ({name!r})")
        ema[name].copy_(value)
    optimizer.load_state_dict(torch.load(state_dir / "optimizer.pt", map_location=device, weights_only=True))
    if scaler is not None and (state_dir / "scaler.pt").is_file():
        scaler.load_state_dict(torch.load(state_dir / "scaler.pt", weights_only=True))
    return trainer


def _settings_differences(saved: dict, current: dict) -> list:
    keys = sorted(set(saved) | set(current))
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in keys
            if k not in _RESUMABLE_CHANGES and saved.get(k) != current.get(k)]


def _prepare_log(path: Path, columns: list, keep_through: int) -> None:
    """Create log.csv with its header, or keep the rows of steps <= keep_through of an existing one."""
    rows = []
    if keep_through > 0 and path.is_file():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != columns:
                raise ValueError(f"resume: {path} has columns {reader.fieldnames}, expected {columns}")
            rows = [r for r in reader if int(r["step"]) <= keep_through]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


# -------------------------------------------------------------------------------------------------------- training
@dataclass
class FinetuneResult:
    """denoiser: the EMA model (eval mode; what out_dir holds); raw_denoiser: the trained (non-averaged) weights;
    step: optimizer steps done; last: the last step's loss terms (empty when nothing ran)."""

    denoiser: torch.nn.Module
    raw_denoiser: torch.nn.Module
    step: int
    out_dir: Path
    log_path: Path
    last: dict = field(default_factory=dict)


def finetune(
    denoiser,
    classifier,
    dataset,
    *,
    out_dir,
    sigmas: Sequence[float] = (0.25, 0.5, 1.0),
    steps: int = 1000,
    batch_size: int = 32,
    samples_per_image: int = 4,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    brier_weight: float = 2.0,
    anti_consistency_weight: float = 1.0,
    mse_weight: float = 1.0,
    anti_consistency: str = "all",
    p0: float = 0.5,
    ema_decay: float = 0.99,
    warmup_steps: int = 20,
    max_grad_norm: Optional[float] = 1.0,
    dtype="auto",
    gradient_checkpointing: bool = False,
    seed: int = 0,
    checkpoint_every: int = 100,
    resume: bool = True,
    mean=None,
    std=None,
    device=None,
    backend: Optional[str] = None,
    progress: bool = True,
) -> FinetuneResult:
    """Diffusion calibration of `denoiser` (a DiffusionDenoiser, left unchanged: a copy is trained) against the
    frozen `classifier` on `dataset` (an ImageDataset or (images [N, C, H, W] in [0, 1], labels [N])).

    sigmas: the cascade's noise levels; steps: total optimizer steps (a resumed run continues up to it);
    samples_per_image: M noisy copies per image per sigma; brier_weight / anti_consistency_weight / mse_weight:
    the objective's weights (module docstring); anti_consistency: 'wrong' (the mean softmax of the wrong classes)
    or 'all' (of all classes; module docstring, point 3); p0: the recoverability threshold (the cascade's p0);
    warmup_steps: linear learning-rate warm-up; max_grad_norm: gradient clipping (None: off); ema_decay:
    the EMA's decay (with warm-up); dtype: autocast 'auto' (bf16 on a GPU that has it or a CPU with native bf16,
    else fp32), 'float32', 'bfloat16' or 'float16' (CUDA only); mean / std: the classifier's normalisation (one
    value or one per channel); device: default the denoiser's; backend: msrs.ops backend for the noise.
    Writes out_dir (module docstring) and resumes from its last checkpoint when resume=True and one exists."""
    # ---- arguments (cheap checks first)
    if out_dir is None or (isinstance(out_dir, str) and not out_dir.strip()):
        raise ValueError("out_dir: expected a folder to write the fine-tuned model to")
    out_dir = Path(os.path.expanduser(str(out_dir)))
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir: {str(out_dir)!r} exists and is not a folder")
    sigmas = _sigmas_arg(sigmas)
    steps = _int_arg("steps", steps, 1)
    batch_size = _int_arg("batch_size", batch_size, 1)
    samples_per_image = _int_arg("samples_per_image", samples_per_image, 1)
    lr = _float_arg("lr", lr, low=0.0, low_open=True)
    weight_decay = _float_arg("weight_decay", weight_decay, low=0.0)
    brier_weight = _float_arg("brier_weight", brier_weight, low=0.0)
    anti_consistency_weight = _float_arg("anti_consistency_weight", anti_consistency_weight, low=0.0)
    mse_weight = _float_arg("mse_weight", mse_weight, low=0.0)
    if brier_weight == anti_consistency_weight == mse_weight == 0:
        raise ValueError("brier_weight, anti_consistency_weight, mse_weight: at least one weight must be > 0")
    if anti_consistency not in ("wrong", "all"):
        raise ValueError(f"anti_consistency: expected 'wrong' or 'all', got {anti_consistency!r}")
    p0 = _float_arg("p0", p0, low=0.5, high=1.0, high_open=True)
    ema_decay = _float_arg("ema_decay", ema_decay, low=0.0, high=1.0, high_open=True)
    warmup_steps = _int_arg("warmup_steps", warmup_steps, 0)
    if max_grad_norm is not None:
        max_grad_norm = _float_arg("max_grad_norm", max_grad_norm, low=0.0, low_open=True)
    seed = _int_arg("seed", seed, 0, 2**63 - 1)
    checkpoint_every = _int_arg("checkpoint_every", checkpoint_every, 1)
    if steps * samples_per_image - 1 > MAX_COUNTER:
        raise ValueError(f"steps: steps * samples_per_image must stay below 2^32 (noise counters), got "
                         f"{steps} * {samples_per_image}")
    if backend is not None and backend not in ("torch", "cpp", "triton"):
        raise ValueError(f"backend: expected None, 'torch', 'cpp' or 'triton', got {backend!r}")
    for name, obj, methods in (("denoiser", denoiser, ("timestep_for", "predict_eps", "save_pretrained")),
                               ("classifier", classifier, ())):
        if not isinstance(obj, torch.nn.Module) or any(not hasattr(obj, mth) for mth in methods):
            need = f" with {', '.join(methods)}" if methods else ""
            raise ValueError(f"{name}: expected a torch.nn.Module{need}, got {type(obj).__name__}")
    if device is None:
        first = next(denoiser.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: not a torch device: {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {str(device)!r} requested but CUDA is not available here")
    autocast = _dtype_arg(dtype, device)
    images, labels = _dataset_tensors(dataset)
    if batch_size > images.shape[0]:
        raise ValueError(f"batch_size: {batch_size} is larger than the data set ({images.shape[0]} images)")
    channels = images.shape[1]
    in_channels = getattr(denoiser, "in_channels", channels)
    if in_channels != channels:
        raise ValueError(f"dataset: images have {channels} channels, the denoiser takes {in_channels}")
    mean_t, std_t = _normalisation(mean, std, channels, device)
    for s in sigmas:
        try:
            denoiser.timestep_for(s)
        except ValueError as e:
            raise ValueError(f"sigmas: {e}") from None

    settings = {
        "sigmas": list(sigmas), "steps": steps, "batch_size": batch_size, "samples_per_image": samples_per_image,
        "lr": lr, "weight_decay": weight_decay, "brier_weight": brier_weight,
        "anti_consistency_weight": anti_consistency_weight, "mse_weight": mse_weight,
        "anti_consistency": anti_consistency, "p0": p0,
        "ema_decay": ema_decay, "warmup_steps": warmup_steps, "max_grad_norm": max_grad_norm,
        "dtype": _dtype_name(autocast), "gradient_checkpointing": bool(gradient_checkpointing), "seed": seed,
        "checkpoint_every": checkpoint_every, "mean": mean_t.tolist(), "std": std_t.tolist(),
        "num_images": int(images.shape[0]),
        "data_digest": _digest((images, labels)),
        "classifier_digest": _digest(classifier.state_dict().values()),
        "denoiser_digest": _digest(denoiser.state_dict().values()),
    }
    info = {"torch": torch.__version__, "python": platform.python_version(),
            "objective": "msrs.finetune (Brier on recoverable, anti-consistency otherwise, eps-MSE)"}
    try:
        from . import __version__ as msrs_version

        info["msrs"] = msrs_version
    except ImportError:  # pragma: no cover
        pass

    # ---- models
    model = copy.deepcopy(denoiser).to(device=device, dtype=torch.float32)
    model.eval()  # dropout off: train the certification-time function (module docstring, point 5)
    params = list(model.parameters())
    if not params:
        raise ValueError("denoiser: has no parameters to fine-tune")
    for p in params:
        p.requires_grad_(True)
    if gradient_checkpointing:
        unets = [m for m in model.modules() if hasattr(m, "enable_gradient_checkpointing")]
        if not unets:
            raise ValueError("gradient_checkpointing: the denoiser has no module supporting it "
                             "(expected a diffusers UNet2DModel inside)")
        unets[0].enable_gradient_checkpointing()
    names = [n for n, _ in model.named_parameters()]
    ema = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler("cuda") if autocast == torch.float16 else None

    classifier_flags = [p.requires_grad for p in classifier.parameters()]
    classifier_was_training = classifier.training
    classifier.eval()
    for p in classifier.parameters():
        p.requires_grad_(False)
    images, labels = images.to(device), labels.to(device)

    # ---- resume
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "log.csv"
    columns = log_columns(sigmas)
    start, elapsed_before = 0, 0.0
    state_dir = _state_dir(out_dir)
    if resume and state_dir is not None:
        saved = json.loads((state_dir / "trainer.json").read_text())
        if saved.get("version") != STATE_VERSION:
            raise ValueError(f"resume: {state_dir} has state version {saved.get('version')}, expected "
                             f"{STATE_VERSION}; pass resume=False (--no-resume) to start over")
        diffs = _settings_differences(saved.get("settings", {}), settings)
        if diffs:
            raise ValueError(f"resume: {out_dir} holds a fine-tuning run with other settings ({'; '.join(diffs)}); "
                             "use the same settings, another out_dir, or resume=False (--no-resume) to start over")
        if int(saved["step"]) > steps:
            raise ValueError(f"steps: {out_dir} already holds {saved['step']} steps, more than steps={steps}")
        trainer = _load_state(state_dir, model, ema, optimizer, scaler, device)
        start, elapsed_before = int(trainer["step"]), float(trainer.get("elapsed", 0.0))
    elif state_dir is not None:  # resume=False: start over
        for name in ("state", "state.old", "state.tmp"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
    _prepare_log(log_path, columns, start)

    # ---- loop
    from tqdm.auto import tqdm

    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    num_images = images.shape[0]
    last: dict = {}
    t0 = time.perf_counter()
    bar = tqdm(total=steps, initial=start, desc="finetune", unit="step", disable=not progress, dynamic_ncols=True)
    try:
        with open(log_path, "a", newline="") as log_file:
            writer = csv.DictWriter(log_file, fieldnames=columns)
            for step in range(start, steps):
                index = batch_indices(seed, step, batch_size, num_images).to(device)
                lr_now = lr * min(1.0, (step + 1) / warmup_steps) if warmup_steps else lr
                for group in optimizer.param_groups:
                    group["lr"] = lr_now
                with torch.random.fork_rng(devices=cuda_devices):
                    torch.manual_seed(_mix(seed, step, 0x57E9))
                    total, terms = calibration_loss(
                        model, classifier, images[index], labels[index], index, sigmas=sigmas,
                        samples_per_image=samples_per_image, seed=seed, step=step, p0=p0,
                        brier_weight=brier_weight, anti_consistency_weight=anti_consistency_weight,
                        mse_weight=mse_weight, anti_consistency=anti_consistency, mean=mean_t, std=std_t,
                        autocast_dtype=autocast, backend=backend)
                    optimizer.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(total).backward()
                        scaler.unscale_(optimizer)
                    else:
                        total.backward()
                    if not math.isfinite(terms["total"]):
                        raise FloatingPointError(f"finetune: the objective is {terms['total']} at step {step + 1}")
                    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm else math.inf)
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                decay = min(ema_decay, (2.0 + step) / (11.0 + step))  # (1 + k) / (10 + k), k = step + 1
                with torch.no_grad():
                    for name, p in zip(names, params):
                        ema[name].mul_(decay).add_(p.detach(), alpha=1.0 - decay)
                done = step + 1
                elapsed = elapsed_before + time.perf_counter() - t0
                row = {"step": done, "total": terms["total"], "brier": terms["brier"],
                       "anti_consistency": terms["anti_consistency"], "mse": terms["mse"],
                       "recoverable": terms["recoverable"], "sample_accuracy": terms["sample_accuracy"],
                       "grad_norm": float(norm), "lr": lr_now, "ema_decay": decay, "wall_time": round(elapsed, 3)}
                for s, frac in zip(sigmas, terms["recoverable_sigma"]):
                    row[f"recoverable_sigma_{s:g}"] = frac
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) and k != "wall_time" else v)
                                 for k, v in row.items()})
                log_file.flush()
                last = dict(terms, step=done, grad_norm=float(norm), lr=lr_now)
                bar.set_postfix(total=f"{terms['total']:.4f}", brier=f"{terms['brier']:.4f}",
                                ac=f"{terms['anti_consistency']:.4f}", mse=f"{terms['mse']:.4f}",
                                rec=f"{terms['recoverable']:.2f}", refresh=False)
                bar.update(1)
                if done % checkpoint_every == 0 or done == steps:
                    _save_checkpoint(out_dir, model, ema, optimizer, scaler, done, elapsed, settings, info)
        if start == steps and not (out_dir / "finetune.json").is_file():
            _save_checkpoint(out_dir, model, ema, optimizer, scaler, start, elapsed_before, settings, info)
    finally:
        bar.close()
        for p, flag in zip(classifier.parameters(), classifier_flags):
            p.requires_grad_(flag)
        classifier.train(classifier_was_training)

    if gradient_checkpointing:
        for m in model.modules():
            if hasattr(m, "disable_gradient_checkpointing"):
                m.disable_gradient_checkpointing()
                break
    ema_model = copy.deepcopy(model)
    with torch.no_grad():
        for name, param in ema_model.named_parameters():
            param.copy_(ema[name])
    for m in (ema_model, model):
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    return FinetuneResult(ema_model, model, steps, out_dir, log_path, last)


# ------------------------------------------------------------------------------------------------------------- CLI
def _parse_sigmas(values) -> list:
    out = []
    for value in values:
        for part in str(value).replace(",", " ").split():
            try:
                out.append(float(part))
            except ValueError:
                raise ValueError(f"sigmas: expected numbers, got {part!r}") from None
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``msrs finetune``."""
    model = p.add_argument_group("models")
    model.add_argument("--denoiser", default=None, metavar="PATH",
                       help="DiffusionDenoiser folder to fine-tune (from_pretrained), or demo / demo-finetuned; "
                            "default: demo (the shipped digits DDPM)")
    model.add_argument("--classifier", default=None, metavar="SPEC",
                       help="frozen classifier: default demo (the shipped digits classifier); else a TorchScript / "
                            ".pt2 file or module:factory (with --weights), as `msrs certify` takes")
    model.add_argument("--weights", default=None, metavar="PATH", help="weights for a module:factory classifier")
    model.add_argument("--mean", type=float, nargs="+", default=None, help="classifier input normalisation mean")
    model.add_argument("--std", type=float, nargs="+", default=None, help="classifier input normalisation std")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default="digits", metavar="SPEC",
                      help="training data (msrs.data spec; its train split unless the spec names one); "
                           "default: digits")
    obj = p.add_argument_group("objective")
    obj.add_argument("--sigmas", nargs="+", default=["0.25", "0.5", "1.0"], metavar="SIGMA",
                     help="the cascade's noise levels (default 0.25 0.5 1.0)")
    obj.add_argument("--samples-per-image", type=int, default=4, metavar="M",
                     help="noisy copies per image and sigma (default 4)")
    obj.add_argument("--p0", type=float, default=0.5, help="recoverability threshold = the cascade's p0 (default 0.5)")
    obj.add_argument("--brier-weight", type=float, default=2.0, help="Brier loss weight (default 2)")
    obj.add_argument("--anti-consistency-weight", type=float, default=1.0,
                     help="anti-consistency loss weight (default 1)")
    obj.add_argument("--mse-weight", type=float, default=1.0, help="epsilon-MSE regulariser weight (default 1)")
    obj.add_argument("--anti-consistency", choices=("all", "wrong"), default="all",
                     help="anti-consistency on the mean softmax of all classes (default) or of the wrong ones only")
    opt = p.add_argument_group("optimisation")
    opt.add_argument("--steps", type=int, default=1000, help="optimizer steps in all (default 1000)")
    opt.add_argument("--batch-size", type=int, default=32, help="images per step (default 32)")
    opt.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    opt.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (default 0)")
    opt.add_argument("--warmup-steps", type=int, default=20, help="linear learning-rate warm-up steps (default 20)")
    opt.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping norm; 0 = off (default 1)")
    opt.add_argument("--ema-decay", type=float, default=0.99, help="EMA decay of the saved weights (default 0.99)")
    opt.add_argument("--seed", type=int, default=0, help="data order and noise seed (default 0)")
    run_ = p.add_argument_group("run")
    run_.add_argument("--out", required=True, metavar="DIR",
                      help="output folder: the EMA model (DiffusionDenoiser.from_pretrained), state/, log.csv")
    run_.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default 100)")
    run_.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    run_.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                      help="autocast dtype (default auto: bfloat16 where the hardware has it, else float32)")
    run_.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for UNet memory")
    run_.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    run_.add_argument("--backend", choices=("auto", "torch", "cpp", "triton"), default="auto",
                      help="msrs.ops backend of the noise (default auto)")
    run_.add_argument("--quiet", action="store_true", help="no progress bar")


def _train_spec(spec: str):
    """(spec, split) for msrs.data.load_dataset: the train split unless the spec names a split itself."""
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "digits":
        return spec, (None if rest else "train")
    if kind == "cifar10":
        head, sep, tail = rest.partition(":")
        return spec, (None if (sep and head in ("train", "test") and tail) else "train")
    return spec, None


def run(args: argparse.Namespace) -> int:
    """``msrs finetune``: load the models and data, fine-tune, print a summary."""
    # cheap checks first, before anything is loaded
    sigmas = _sigmas_arg(_parse_sigmas(args.sigmas))
    for name in ("steps", "batch_size", "samples_per_image", "checkpoint_every"):
        _int_arg(name.replace("_", "-"), getattr(args, name), 1)
    _int_arg("warmup-steps", args.warmup_steps, 0)
    _int_arg("seed", args.seed, 0, 2**63 - 1)
    for name in ("lr",):
        _float_arg(name, getattr(args, name), low=0.0, low_open=True)
    for name in ("weight_decay", "brier_weight", "anti_consistency_weight", "mse_weight", "max_grad_norm"):
        _float_arg(name.replace("_", "-"), getattr(args, name), low=0.0)
    _float_arg("p0", args.p0, low=0.5, high=1.0, high_open=True)
    _float_arg("ema-decay", args.ema_decay, low=0.0, high=1.0, high_open=True)
    if args.brier_weight == args.anti_consistency_weight == args.mse_weight == 0:
        raise ValueError("brier-weight, anti-consistency-weight, mse-weight: at least one weight must be > 0")
    if os.path.exists(os.path.expanduser(args.out)) and not os.path.isdir(os.path.expanduser(args.out)):
        raise ValueError(f"out: {args.out!r} exists and is not a folder")
    demo_classifier = args.classifier is None or (args.classifier == "demo" and not os.path.exists("demo"))
    demo_denoiser = args.denoiser is None or (args.denoiser in ("demo", "demo-finetuned")
                                              and not os.path.exists(args.denoiser))
    if args.weights is not None and demo_classifier:
        raise ValueError("weights: only with --classifier module:factory (the demo classifier has its own)")
    if not demo_denoiser and not os.path.isdir(os.path.expanduser(args.denoiser)):
        raise ValueError(f"denoiser: {args.denoiser!r} is not a folder (expected a DiffusionDenoiser.save_pretrained "
                         "folder)")

    try:
        device = torch.device(args.device) if args.device else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
    except RuntimeError as e:
        raise ValueError(f"device: {args.device!r} is not a device ({e})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {args.device!r} requested but CUDA is not available here")
    _dtype_arg(args.dtype, device)

    from . import zoo
    from .data import load_dataset
    from .models import check_normalization

    spec, split = _train_spec(args.dataset)
    dataset = load_dataset(spec, split=split)
    channels = dataset.images.shape[1]
    mean, std = check_normalization(args.mean, args.std, channels)
    if demo_classifier:
        classifier, zoo_mean, zoo_std, _ = zoo.load_demo_classifier(device)
        if mean is None:
            mean, std = zoo_mean, zoo_std
        classifier_name = "demo:" + zoo.CLASSIFIER_NAME
    else:
        from .models import load_classifier

        loaded = load_classifier(args.classifier, args.weights, device, mean=mean, std=std)
        classifier, mean, std = loaded.model, loaded.mean, loaded.std
        classifier_name = args.classifier
    if demo_denoiser:
        finetuned = args.denoiser == "demo-finetuned"
        denoiser = zoo.load_demo_denoiser(finetuned=finetuned, device=device)
        denoiser_name = "demo:" + (zoo.DDPM_FINETUNED_NAME if finetuned else zoo.DDPM_NAME)
    else:
        from .denoiser import DiffusionDenoiser

        denoiser = DiffusionDenoiser.from_pretrained(os.path.expanduser(args.denoiser)).to(device)
        denoiser_name = args.denoiser
    print(f"finetune: {denoiser_name} against {classifier_name} on {dataset.name} ({len(dataset.labels)} images), "
          f"sigmas {list(sigmas)}, {args.steps} steps -> {args.out}", file=sys.stderr)
    result = finetune(
        denoiser, classifier, dataset, out_dir=args.out, sigmas=sigmas, steps=args.steps,
        batch_size=args.batch_size, samples_per_image=args.samples_per_image, lr=args.lr,
        weight_decay=args.weight_decay, brier_weight=args.brier_weight,
        anti_consistency_weight=args.anti_consistency_weight, mse_weight=args.mse_weight,
        anti_consistency=args.anti_consistency, p0=args.p0,
        ema_decay=args.ema_decay, warmup_steps=args.warmup_steps, max_grad_norm=args.max_grad_norm or None,
        dtype=args.dtype, gradient_checkpointing=args.gradient_checkpointing, seed=args.seed,
        checkpoint_every=args.checkpoint_every, resume=not args.no_resume, mean=mean, std=std, device=device,
        backend=None if args.backend == "auto" else args.backend, progress=not args.quiet)
    last = result.last
    if last:
        print(f"step {last['step']}: total {last['total']:.4f} (brier {last['brier']:.4f}, anti-consistency "
              f"{last['anti_consistency']:.4f}, mse {last['mse']:.4f}), recoverable {last['recoverable']:.2f}")
    print(f"wrote {result.out_dir} (EMA model; load with DiffusionDenoiser.from_pretrained), log {result.log_path}")
    return 0
