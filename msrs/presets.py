"""The papers' settings, by name: `msrs certify --preset NAME` sets the sampling and the model geometry as the public
code of each paper does, so that a user with the published checkpoints reproduces its pipeline in one command.

  carlini23-cifar10    Carlini, Tramer, Dvijotham, Rice, Sun, Kolter, "(Certified!!) Adversarial Robustness for
                       Free!", ICLR 2023; ethz-spylab/diffusion_denoised_smoothing, cifar10/certify.py + DRM.py
  carlini23-imagenet   the same, imagenet/certify.py + DRM.py
  jeong23-cifar10      Jeong & Shin, "Multi-scale Diffusion Denoised Smoothing", NeurIPS 2023;
                       jh-jeong/smoothing-multiscale, certify.py + predict_utils.py
  jeong23-imagenet     the same on ImageNet

What a preset sets (and where the public code sets it):
  sigmas, separate     Carlini et al. certify each sigma on its own (one log per sigma, Cohen's CERTIFY); Jeong & Shin
                       run the cascade over 1.0 / 0.5 / 0.25 (largest first)
  n0, n, alpha, p0     --N0 / --N / --alpha / --skip_p of their certify scripts and READMEs
  batch_size, skip     --batch_size / --skip of their README commands (Carlini et al.); the multi-scale README's
                       batch of 5,000 samples
  denoiser_config      the OpenAI checkpoint both papers load (msrs.openai_unet.BUILTIN_CONFIGS)
  frame_padding        ImageNet: Jeong & Shin reflect-pad the 224 crop into the 256 frame of the diffusion model and
                       crop back (CropWrapper); Carlini et al. feed the 224 crop to the 256 model as it is (None)
  input_size,          the classifier's input: Carlini et al. upsample the denoised image bicubically (antialiased) to
  interpolation        224 (ViT-B/16, CIFAR-10) and 512 (BEiT-large, ImageNet); Jeong & Shin resize bicubically to 224
                       (their CLIP ViT-B/16)
Explicit options always win over a preset's. What a preset does not set: the classifier and its weights (the
papers' fine-tuned classifiers are separate downloads), the data, --alpha-schedule (msrs keeps its valid "union"
budget; `--alpha-schedule paper` gives the public multi-scale code's alpha / (s + 1)), the dtype.
Two differences remain from the public code, both documented in the README: msrs adds exactly sigma of Gaussian
noise in pixel units and scales it by the timestep's sqrt(abar_t) (the multi-scale code's rule), where Carlini et
al. inject the diffusion's own q_sample noise at that timestep (slightly more than sigma); and the timestep is the
first t with sqrt(abar_t) <= 1 / sqrt(1 + 4 sigma^2) for both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["PRESETS", "Preset", "describe"]


@dataclass(frozen=True)
class Preset:
    name: str
    paper: str
    sigmas: tuple
    separate: bool  # one Cohen certification (and log) per sigma, instead of the cascade
    n0: int
    n: int
    alpha: float
    p0: float
    batch_size: int
    skip: int
    denoiser_config: str
    frame_padding: Optional[str]  # "reflect", or None: no frame
    input_size: int
    interpolation: str
    classifier: str  # what the paper certified, for the help text

    def options(self) -> dict:
        """The `msrs certify` options this preset sets (argparse destinations -> values)."""
        names = ("n0", "n", "alpha", "p0", "batch_size", "skip", "denoiser_config", "input_size", "interpolation")
        out = {name: getattr(self, name) for name in names}
        out["sigma"] = list(self.sigmas)
        out["frame_padding"] = "none" if self.frame_padding is None else self.frame_padding
        return out


PRESETS = {p.name: p for p in (
    Preset("carlini23-cifar10", "Carlini et al., ICLR 2023", (0.25, 0.5, 1.0), True, 100, 100_000, 0.001, 0.5,
           200, 1, "cifar10_uncond_50M_500K", None, 224, "bicubic",
           "ViT-B/16 fine-tuned on CIFAR-10 (hf:DIR, e.g. aaraki/vit-base-patch16-224-in21k-finetuned-cifar10)"),
    Preset("carlini23-imagenet", "Carlini et al., ICLR 2023", (0.25, 0.5, 1.0), True, 100, 10_000, 0.001, 0.5,
           200, 50, "256x256_diffusion_uncond", None, 512, "bicubic",
           "BEiT-large 512 (timm:beit_large_patch16_512 with its weights)"),
    Preset("jeong23-cifar10", "Jeong & Shin, NeurIPS 2023", (1.0, 0.5, 0.25), False, 100, 10_000, 0.001, 0.5,
           5_000, 1, "cifar10_uncond_50M_500K", None, 224, "bicubic",
           "their fine-tuned CLIP ViT-B/16 (module:factory + weights, inputs in [-1, 1]: --mean 0.5 --std 0.5)"),
    Preset("jeong23-imagenet", "Jeong & Shin, NeurIPS 2023", (1.0, 0.5, 0.25), False, 100, 10_000, 0.001, 0.5,
           5_000, 1, "256x256_diffusion_uncond", "reflect", 224, "bicubic",
           "their fine-tuned CLIP ViT-B/16 (module:factory + weights, --mean 0.5 --std 0.5)"),
)}


def describe() -> str:
    """One paragraph per preset, for `msrs certify --help`."""
    lines = []
    for p in PRESETS.values():
        mode = "one log per sigma" if p.separate else "the cascade"
        frame = "" if p.frame_padding is None else f", {p.frame_padding}-padded into the denoiser's frame"
        lines.append(f"{p.name} ({p.paper}): sigma {' / '.join(f'{s:g}' for s in p.sigmas)} ({mode}), n0 {p.n0}, "
                     f"n {p.n:,}, alpha {p.alpha:g}, p0 {p.p0:g}, batch {p.batch_size:,}, skip {p.skip}, denoiser "
                     f"config {p.denoiser_config}{frame}, classifier input {p.input_size} ({p.interpolation}); "
                     f"classifier: {p.classifier}")
    return "\n".join(lines)


