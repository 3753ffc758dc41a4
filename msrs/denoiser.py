"""One-shot diffusion denoiser (Carlini et al., ICLR 2023) around an off-the-shelf diffusers UNet2DModel.

The certification engine uses two methods (docs/DESIGN.md, "Denoiser interface"):

  t, a = denoiser.timestep_for(sigma)     # first t with sqrt(abar_t) <= 1 / sqrt(1 + (2 sigma)^2); a = sqrt(abar_t)
  eps = denoiser.predict_eps(x_t, t)      # the UNet's epsilon prediction, fp32, shape of x_t

and does the noise injection / timestep scaling (msrs.ops.sample_noisy) and the one-step reconstruction
(msrs.ops.finalize_denoised) itself, fused with the classifier's normalisation. `denoise_noisy` is the same
pipeline for images that are already noisy (x + sigma * eps, in [0, 1] pixel units); it returns denoised images in
[0, 1] and is differentiable when gradients are on (used by diffusion calibration and by tests).

Two kinds of network:
  - a diffusers UNet2DModel trained for epsilon prediction (1 or 3 channels, any resolution it accepts), with its
    scheduler's alphas_cumprod; it is fed the integer timestep;
  - the UNet of OpenAI's improved-diffusion / guided-diffusion (msrs.openai_unet.OpenAIUNet: the published
    checkpoints' exact state-dict layout), with the schedule of its config; it is fed the timestep in the convention
    of the code that trained it: improved-diffusion rescales t to t * 1000 / T (a float), guided-diffusion feeds t.
A network with 2 * C output channels (learned variance) is accepted and its first C channels are the eps
prediction. The model works on [-1, 1] images, so pixel noise sigma is 2 * sigma there.

  DiffusionDenoiser.from_pretrained(folder_or_hub_id)      diffusers pipeline / UNet folders (and msrs' own saves)
  DiffusionDenoiser.from_openai(checkpoint, config=...)    improved-/guided-diffusion .pt (or .safetensors) files
  load_denoiser(spec, device=..., config=...)              the one place resolving a denoiser spec: demo,
                                                           demo-finetuned, openai:PATH, a folder, a hub id
"""
from __future__ import annotations

import json
import math
import os
import pickle
from numbers import Real
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .openai_unet import BUILTIN_CONFIGS, OpenAIUNet, OpenAIUNetConfig, alphas_cumprod, builtin_config

__all__ = ["DiffusionDenoiser", "load_denoiser", "resolve_openai_config", "source_paths"]

_AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)
_FRAME_PADDINGS = ("reflect", "zeros")
_OPENAI_FOLDER_CONFIG = "openai_unet.json"  # save_pretrained of an OpenAI-format denoiser: this + the weights below
_OPENAI_FOLDER_WEIGHTS = "openai_unet.safetensors"
_LIST_FIRST = 8  # key-mismatch errors list this many keys of each kind


def _check_sigma(sigma) -> float:
    if isinstance(sigma, torch.Tensor):
        if sigma.numel() != 1:
            raise ValueError(f"sigma: expected one number, got a tensor of shape {tuple(sigma.shape)}")
        sigma = sigma.item()
    if isinstance(sigma, bool) or not isinstance(sigma, Real):
        raise TypeError(f"sigma: expected a number, got {type(sigma).__name__}")
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma: expected a finite noise level > 0, got {sigma}")
    return sigma


def _check_autocast(dtype) -> torch.dtype | None:
    if dtype is None:
        return None
    if dtype not in _AUTOCAST_DTYPES:
        raise ValueError(f"autocast_dtype: expected None, torch.bfloat16 or torch.float16, got {dtype}")
    return dtype


def _check_frame_padding(mode) -> str | None:
    if mode is not None and mode not in _FRAME_PADDINGS:
        raise ValueError(f"frame_padding: expected None, 'reflect' or 'zeros', got {mode!r}")
    return mode


def _scheduler_class(name):
    """The diffusers scheduler class called `name` (a scheduler_config.json's _class_name). Only subclasses of
    diffusers' SchedulerMixin are accepted: the name comes from a data file and must not pick arbitrary code."""
    import diffusers

    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"_class_name: expected the name of a diffusers scheduler class, got {name!r}")
    cls = getattr(diffusers, name, None)
    is_scheduler = isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)
    if not is_scheduler or cls is diffusers.SchedulerMixin:
        raise ValueError(f"_class_name: {name!r} is not a diffusers scheduler class (expected e.g. DDPMScheduler or "
                         f"DDIMScheduler: a subclass of diffusers.SchedulerMixin)")
    return cls


def _make_scheduler(config: dict, what: str):
    """A diffusers scheduler from a scheduler config dict; its class must be a diffusers scheduler with
    alphas_cumprod (what names the file in errors)."""
    cls_name = config.get("_class_name", "DDPMScheduler")
    try:
        cls = _scheduler_class(cls_name)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    scheduler = cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    if not hasattr(scheduler, "alphas_cumprod"):
        raise ValueError(f"{what}: the scheduler {cls_name} has no alphas_cumprod (a discrete-time DDPM schedule is "
                         f"needed for one-shot denoising)")
    return scheduler


def _openai_network_facts(unet: OpenAIUNet, scheduler):
    """(in_channels, out_channels, sample_size, schedule) of an OpenAIUNet; the schedule is its config's unless a
    tensor of alphas_cumprod is given."""
    config = unet.config
    if config.class_cond:
        raise ValueError("unet: a class-conditional model needs the class label of each image, which a smoothed "
                         "classifier cannot give it (it would leak the label); use an unconditional checkpoint")
    if scheduler is None:
        scheduler = alphas_cumprod(config)
    elif not isinstance(scheduler, (torch.Tensor, np.ndarray, list, tuple)):
        raise TypeError(f"scheduler: for an OpenAIUNet, expected None (its config's schedule) or a tensor of "
                        f"alphas_cumprod, got {type(scheduler).__name__}")
    return unet.in_channels, unet.out_channels, config.image_size, scheduler


def _diffusers_network_facts(unet: nn.Module, scheduler):
    """(in_channels, out_channels, sample_size) of a diffusers UNet2DModel."""
    config = getattr(unet, "config", None)
    if config is None or not hasattr(config, "in_channels"):
        raise TypeError(f"unet: expected a diffusers UNet2DModel or an msrs OpenAIUNet, got {type(unet).__name__}")
    if scheduler is None:
        raise TypeError("scheduler: required for a diffusers UNet (a diffusers scheduler or alphas_cumprod)")
    in_channels = int(config.in_channels)
    out_channels = int(getattr(config, "out_channels", in_channels) or in_channels)
    return in_channels, out_channels, getattr(config, "sample_size", None)


def _schedule_of(scheduler):
    """(alphas_cumprod float64 [T], the scheduler's config to save or None) from a scheduler or a tensor of them."""
    if isinstance(scheduler, (torch.Tensor, np.ndarray, list, tuple)):
        abar, config = torch.as_tensor(np.asarray(scheduler, dtype=np.float64)), None
    else:
        if not hasattr(scheduler, "alphas_cumprod"):
            raise TypeError(f"scheduler: expected a diffusers scheduler with alphas_cumprod or a tensor of them, "
                            f"got {type(scheduler).__name__}")
        abar = torch.as_tensor(scheduler.alphas_cumprod).detach().to(torch.float64).cpu()
        config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
        config["_class_name"] = type(scheduler).__name__
        prediction = config.get("prediction_type", "epsilon")
        if prediction != "epsilon":
            raise ValueError(
                f"prediction_type: DiffusionDenoiser needs an epsilon-prediction model, but the scheduler config "
                f"says {prediction!r}; one-shot denoising here uses x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)")
    if abar.dim() != 1 or abar.numel() < 1:
        raise ValueError(f"alphas_cumprod: expected a non-empty 1-D schedule, got shape {tuple(abar.shape)}")
    if not bool(torch.isfinite(abar).all()) or float(abar.min()) <= 0 or float(abar.max()) > 1:
        raise ValueError("alphas_cumprod: expected finite values in (0, 1]")
    if bool((abar[1:] > abar[:-1]).any()):
        raise ValueError("alphas_cumprod: expected a non-increasing schedule")
    return abar, config


class DiffusionDenoiser(nn.Module):
    """An epsilon-prediction network plus its cumulative schedule alphas_cumprod.

    unet: a diffusers UNet2DModel, or an msrs.openai_unet.OpenAIUNet (improved-/guided-diffusion layout).
    scheduler: for a diffusers UNet, a diffusers scheduler with `alphas_cumprod` and a config (DDPMScheduler,
    DDIMScheduler, ...) or a 1-D tensor / array of alphas_cumprod (then saved as a DDPMScheduler with those betas);
    for an OpenAIUNet, None (the schedule of its config) or a tensor / array of alphas_cumprod.
    autocast_dtype (None, torch.bfloat16, torch.float16) and channels_last are the defaults of predict_eps.
    frame_padding: how predict_eps fits inputs smaller than the network's sample_size into that frame ("reflect",
    "zeros" or None: no frame, the network runs at the input's size); "auto" is "reflect" for an OpenAIUNet (its
    checkpoints are trained at one size: ImageNet 224 crops go into the 256 frame) and None for diffusers UNets.
    """

    def __init__(self, unet: nn.Module, scheduler=None, *, autocast_dtype: torch.dtype | None = None,
                 channels_last: bool = False, frame_padding: str | None = "auto"):
        super().__init__()
        self.openai_config = unet.config if isinstance(unet, OpenAIUNet) else None
        if self.openai_config is not None:
            in_channels, out_channels, size, scheduler = _openai_network_facts(unet, scheduler)
        else:
            in_channels, out_channels, size = _diffusers_network_facts(unet, scheduler)
        abar, self.scheduler_config = _schedule_of(scheduler)
        if out_channels not in (in_channels, 2 * in_channels):
            raise ValueError(f"unet: expected out_channels = in_channels ({in_channels}) or twice that "
                             f"(learned variance), got {out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.sample_size = size if not isinstance(size, (list, tuple)) else tuple(size)
        self.unet = unet
        # float64 lookup copy for timestep_for (independent of later .to(dtype) casts of the module) ...
        self._abar64 = abar.clone()
        self._sqrt_abar64 = abar.sqrt()
        # ... and the schedule as a buffer, so it follows the module to its device.
        self.register_buffer("alphas_cumprod", abar.to(torch.float32), persistent=False)
        # improved-diffusion (rescale_timesteps) trains on t * 1000 / T as a float; everything else on the integer t
        rescale = self.openai_config is not None and self.openai_config.rescale_timesteps
        self.timestep_scale = 1000.0 / abar.numel() if rescale else None
        self.autocast_dtype = _check_autocast(autocast_dtype)
        self.channels_last = bool(channels_last)
        if frame_padding == "auto":
            frame_padding = "reflect" if self.openai_config is not None else None
        self.frame_padding = _check_frame_padding(frame_padding)
        self._unet_channels_last = False
        self._static_eps = None  # compile_for_inference(): the compiled UNet at a static batch shape
        self.openai_config_source = None  # from_openai: where the settings came from
        self.source = None  # load_denoiser: the resolved path or hub id

    # -- schedule -------------------------------------------------------------------------------------------------
    @property
    def num_train_timesteps(self) -> int:
        return int(self._abar64.numel())

    def max_sigma(self) -> float:
        """The largest pixel-space sigma the schedule can serve: sigma with 1 + 4 sigma^2 = 1 / abar_{T-1}."""
        return 0.5 * math.sqrt(1.0 / float(self._abar64[-1]) - 1.0)

    def timestep_for(self, sigma: float) -> tuple[int, float]:
        """(t, sqrt(abar_t)) for pixel-space noise sigma: the first t with sqrt(abar_t) <= 1 / sqrt(1 + (2 sigma)^2)
        (the rule of the public multi-scale code; the x_t it feeds is scaled by this t's own sqrt(abar_t))."""
        sigma = _check_sigma(sigma)
        target = 1.0 / math.sqrt(1.0 + 4.0 * sigma * sigma)
        hits = torch.nonzero(self._sqrt_abar64 <= target)
        if hits.numel() == 0:
            raise ValueError(
                f"sigma: {sigma} is beyond the range of this model's {self.num_train_timesteps}-step schedule "
                f"(largest servable sigma {self.max_sigma():.4g})")
        t = int(hits[0, 0])
        return t, float(self._sqrt_abar64[t])

    def network_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The timesteps as the network was trained to see them: t * 1000 / T in fp32 for improved-diffusion's
        rescaled convention (as its GaussianDiffusion._scale_timesteps computes it), else t unchanged."""
        if self.timestep_scale is None:
            return timesteps
        return timesteps.to(torch.float32) * self.timestep_scale

    # -- the network ----------------------------------------------------------------------------------------------
    def _timesteps(self, timesteps, n: int, device) -> torch.Tensor:
        if isinstance(timesteps, int) and not isinstance(timesteps, bool):  # the engine's case: no device sync
            if not 0 <= timesteps < self.num_train_timesteps:
                raise ValueError(f"timesteps: expected values in [0, {self.num_train_timesteps}), got {timesteps}")
            return torch.full((n,), timesteps, dtype=torch.int64, device=device)
        t = torch.as_tensor(timesteps, device=device)
        if t.is_floating_point() or t.dtype == torch.bool:
            raise ValueError(f"timesteps: expected integers, got dtype {t.dtype}")
        if t.dim() == 0:
            t = t.expand(n)
        if t.shape != (n,):
            raise ValueError(f"timesteps: expected one integer or {n} (one per image), got shape {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps):
            raise ValueError(f"timesteps: expected values in [0, {self.num_train_timesteps}), got "
                             f"[{int(t.min())}, {int(t.max())}]")
        return t.to(torch.int64)

    def compile_for_inference(self) -> DiffusionDenoiser:
        """Compile the UNet (msrs.compiled: static batch shape, CPU freezing / CUDA graphs) for the no-gradient
        calls of predict_eps; calls with gradients (fine-tuning) keep the eager UNet. Call it after moving the
        module to its device and not before changing its weights. Not with channels_last. Returns self."""
        from .compiled import StaticBatch, compile_model

        if self.channels_last:
            raise ValueError("channels_last: not supported together with compile_for_inference()")
        device = next(self.unet.parameters()).device
        network = _EpsNetwork(self.unet, self.timestep_scale, openai=self.openai_config is not None)
        self._static_eps = StaticBatch(compile_model(network, device))
        return self

    def _frame(self, x: torch.Tensor, mode: str | None):
        """x padded centrally into the sample_size frame where it is smaller (see predict_eps), and the crop
        (top, left, height, width) that takes the network's output back to x's size; (x, None) without a frame."""
        size = self.sample_size
        if mode is None or size is None:
            return x, None
        frame_h, frame_w = (size, size) if isinstance(size, int) else size
        height, width = x.shape[-2:]
        out_h, out_w = max(height, frame_h), max(width, frame_w)
        if (out_h, out_w) == (height, width):
            return x, None
        top, left = (out_h - height) // 2, (out_w - width) // 2
        pad = (left, out_w - width - left, top, out_h - height - top)
        if mode == "reflect":
            if max(pad[0], pad[1]) >= width or max(pad[2], pad[3]) >= height:
                raise ValueError(f"frame_padding: 'reflect' needs an input larger than half the {frame_h}x{frame_w} "
                                 f"frame, got {height}x{width}; use 'zeros'")
            framed = F.pad(x, pad, mode="reflect")
        else:
            framed = F.pad(x, pad, value=0.0)
        return framed, (top, left, height, width)

    def _check_openai_size(self, x: torch.Tensor) -> None:
        factor = 2 ** (len(self.openai_config.mult) - 1)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(f"x_t: this network halves the resolution {len(self.openai_config.mult) - 1} times, so "
                             f"height and width must be multiples of {factor}; got {tuple(x.shape[-2:])} (after the "
                             f"frame, if any)")

    def predict_eps(self, x_t: torch.Tensor, timesteps, *, autocast_dtype="default",
                    channels_last: bool | None = None, frame_padding="default") -> torch.Tensor:
        """The network's eps prediction for x_t [N, C, H, W] at timesteps (one int or [N]), as fp32 [N, C, H, W].

        autocast_dtype / channels_last / frame_padding default to the module's settings; autocast runs the network
        under torch.autocast(device, dtype) (bf16 or fp16), channels_last runs it in that memory format.

        The frame (frame_padding "reflect" or "zeros"): where x_t is smaller than the network's sample_size (an
        ImageNet 224 crop for the 256x256 model), x_t is padded centrally into that frame, the network runs there
        and eps is cropped back to x_t's pixels. The public multi-scale code (jh-jeong/smoothing-multiscale,
        predict_utils.py CropWrapper) does "reflect": torch.nn.ReflectionPad2d((256 - 224) // 2) on the scaled
        noisy input, then CenterCrop(224) of the model output; that is the default here. Reflection keeps the
        padded border a noisy image with the noise level the network expects at t. "zeros" pads x_t with 0, which
        in the model's [-1, 1] * sqrt(abar) space is mid-gray image content but with no noise at all: off the
        distribution the network was trained on at t > 0, so the border's eps is meaningless; it is kept for
        comparison. Either way the pad is a deterministic function of x_t, so the smoothing guarantee is unchanged.
        """
        if not isinstance(x_t, torch.Tensor) or x_t.dim() != 4:
            raise ValueError(f"x_t: expected a tensor [N, C, H, W], got "
                             f"{tuple(x_t.shape) if isinstance(x_t, torch.Tensor) else type(x_t).__name__}")
        if x_t.shape[1] != self.in_channels:
            raise ValueError(f"x_t: expected {self.in_channels} channels, got {x_t.shape[1]}")
        dtype = self.autocast_dtype if autocast_dtype == "default" else _check_autocast(autocast_dtype)
        use_cl = self.channels_last if channels_last is None else bool(channels_last)
        mode = self.frame_padding if frame_padding == "default" else _check_frame_padding(frame_padding)
        t = self._timesteps(timesteps, x_t.shape[0], x_t.device)
        if use_cl != self._unet_channels_last:
            fmt = torch.channels_last if use_cl else torch.contiguous_format
            self.unet.to(memory_format=fmt)
            self._unet_channels_last = use_cl
        param = next(self.unet.parameters())
        x, crop = self._frame(x_t.to(param.dtype), mode)
        if self.openai_config is not None:
            self._check_openai_size(x)
        if use_cl:
            x = x.contiguous(memory_format=torch.channels_last)
        network = self._eps_eager
        if self._static_eps is not None and not use_cl and not torch.is_grad_enabled():
            network = self._static_eps
        if dtype is not None:
            with torch.autocast(device_type=x.device.type, dtype=dtype):
                out = network(x, t)
        else:
            out = network(x, t)
        if out.shape[1] == 2 * self.in_channels:
            out = out[:, : self.in_channels]
        if crop is not None:
            top, left, height, width = crop
            out = out[:, :, top : top + height, left : left + width]
        return out.to(torch.float32).contiguous()

    def _eps_eager(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.openai_config is not None:
            return self.unet(x, self.network_timesteps(t))
        return self.unet(x, t).sample

    def forward(self, x_t: torch.Tensor, timesteps) -> torch.Tensor:
        return self.predict_eps(x_t, timesteps)

    def denoise_noisy(self, x_noisy: torch.Tensor, sigma: float, *, backend: str | None = None) -> torch.Tensor:
        """One-shot denoising of images already noised in [0, 1] pixel units (x_noisy = x + sigma * eps, not
        clipped): x_t = a (2 x_noisy - 1) with (t, a) = timestep_for(sigma), then
        (clamp((x_t - sqrt(1 - a^2) eps_theta(x_t, t)) / a, -1, 1) + 1) / 2, in [0, 1], fp32.

        Without gradients this runs msrs.ops.finalize_denoised (backend as there); when gradients are on (e.g.
        fine-tuning the UNet) it runs the same formula in plain torch so that it is differentiable."""
        if not isinstance(x_noisy, torch.Tensor) or x_noisy.dim() != 4:
            raise ValueError("x_noisy: expected a tensor [N, C, H, W]")
        t, a = self.timestep_for(sigma)
        x_t = (2.0 * x_noisy.to(torch.float32) - 1.0) * a
        eps = self.predict_eps(x_t, t)
        coeffs = torch.tensor([[a, math.sqrt(max(1.0 - a * a, 0.0))]], dtype=torch.float32, device=x_t.device)
        if torch.is_grad_enabled() and (eps.requires_grad or x_t.requires_grad):
            from .ops import reference

            ones = torch.ones(self.in_channels, device=x_t.device)
            return reference.finalize_denoised(x_t, eps, coeffs.expand(x_t.shape[0], 2), ones * 0.0, ones,
                                               torch.float32)
        from . import ops

        return ops.finalize_denoised(x_t, eps, a, mean=(0.0,), std=(1.0,), out_dtype=torch.float32, backend=backend)

    # -- persistence ----------------------------------------------------------------------------------------------
    def _scheduler(self):
        import diffusers

        if self.scheduler_config is not None:
            try:
                cls = _scheduler_class(self.scheduler_config.get("_class_name", "DDPMScheduler"))
            except ValueError:  # a duck-typed scheduler object: keep its schedule as trained betas below
                cls = None
            if cls is not None:
                return cls.from_config({k: v for k, v in self.scheduler_config.items() if not k.startswith("_")})
        abar = self._abar64.numpy()
        betas = 1.0 - abar / np.concatenate(([1.0], abar[:-1]))
        return diffusers.DDPMScheduler(num_train_timesteps=int(abar.size), trained_betas=betas.tolist())

    def save_pretrained(self, path) -> Path:
        """Save as a diffusers DDPMPipeline-style folder: path/unet (config.json + safetensors weights) and
        path/scheduler/scheduler_config.json; an OpenAI-format network as path/openai_unet.safetensors (its
        state dict, the checkpoint's keys) + path/openai_unet.json (its config). Load either back with
        DiffusionDenoiser.from_pretrained(path)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self._unet_channels_last:  # save contiguous weights; predict_eps switches back when it runs
            self.unet.to(memory_format=torch.contiguous_format)
            self._unet_channels_last = False
        if self.openai_config is not None:
            from safetensors.torch import save_file

            save_file({k: v.detach().contiguous().cpu() for k, v in self.unet.state_dict().items()},
                      str(path / _OPENAI_FOLDER_WEIGHTS))
            own = np.array_equal(self._abar64.numpy(), alphas_cumprod(self.openai_config))
            record = {"format": "msrs OpenAIUNet", "config": self.openai_config.to_dict(),
                      # a schedule other than the config's (given to the constructor) is kept exactly (float64 repr)
                      "alphas_cumprod": None if own else self._abar64.tolist()}
            (path / _OPENAI_FOLDER_CONFIG).write_text(json.dumps(record, indent=2) + "\n")
            return path
        self.unet.save_pretrained(str(path / "unet"), safe_serialization=True)
        self._scheduler().save_pretrained(str(path / "scheduler"))
        return path

    @classmethod
    def from_pretrained(cls, path_or_hub_id, *, autocast_dtype: torch.dtype | None = None,
                        channels_last: bool = False, **kwargs) -> "DiffusionDenoiser":
        """Load a denoiser from a DDPMPipeline-style folder (unet/ + scheduler/), from a folder holding the UNet
        itself (config.json + weights) with a scheduler_config.json next to it, from a diffusers hub id with
        the pipeline layout (kwargs go to diffusers' from_pretrained, e.g. local_files_only=True, cache_dir), or
        from an OpenAI-format save_pretrained folder (openai_unet.json + openai_unet.safetensors). The scheduler
        class named in scheduler_config.json must be a diffusers scheduler (anything else is refused)."""
        local = Path(str(path_or_hub_id)).expanduser()
        text = str(path_or_hub_id)
        looks_local = (isinstance(path_or_hub_id, Path) or local.is_absolute() or text.startswith((".", "~"))
                       or text.count("/") > 1 or local.exists())
        if looks_local and not local.is_dir():
            raise FileNotFoundError(f"{path_or_hub_id}: no such model folder")
        if local.is_dir() and (local / _OPENAI_FOLDER_CONFIG).is_file():
            return cls._from_openai_folder(local, autocast_dtype=autocast_dtype, channels_last=channels_last)
        import diffusers
        from diffusers import UNet2DModel

        try:  # without accelerate, diffusers falls back to this anyway, after a warning on every load
            import accelerate  # noqa: F401
        except ImportError:
            kwargs.setdefault("low_cpu_mem_usage", False)
        if local.is_dir():
            if (local / "unet" / "config.json").is_file():
                unet_dir, sched_file = local / "unet", local / "scheduler" / "scheduler_config.json"
            elif (local / "config.json").is_file():
                unet_dir, sched_file = local, local / "scheduler_config.json"
            else:
                raise FileNotFoundError(
                    f"{local}: expected a diffusers pipeline folder (unet/config.json + scheduler/), a UNet folder "
                    f"(config.json + scheduler_config.json) or an OpenAI-format folder ({_OPENAI_FOLDER_CONFIG})")
            if not sched_file.is_file():
                raise FileNotFoundError(f"{local}: no scheduler config found (looked for {sched_file})")
            sched_config = json.loads(sched_file.read_text())
            what = str(sched_file)
        else:
            hub_keys = ("cache_dir", "local_files_only", "revision", "token", "force_download", "proxies")
            sched_config = dict(diffusers.DDPMScheduler.load_config(
                str(path_or_hub_id), subfolder="scheduler", **{k: v for k, v in kwargs.items() if k in hub_keys}))
            what = f"{path_or_hub_id} scheduler config"
        if not isinstance(sched_config, dict):
            raise ValueError(f"{what}: expected a JSON object")
        scheduler = _make_scheduler(sched_config, what)  # before the (large) UNet weights are read
        if local.is_dir():
            unet = UNet2DModel.from_pretrained(str(unet_dir), **kwargs)
        else:
            unet = UNet2DModel.from_pretrained(str(path_or_hub_id), subfolder="unet", **kwargs)
        model = cls(unet, scheduler, autocast_dtype=autocast_dtype, channels_last=channels_last)
        return model.eval()

    @classmethod
    def _from_openai_folder(cls, folder: Path, **kwargs) -> "DiffusionDenoiser":
        record = json.loads((folder / _OPENAI_FOLDER_CONFIG).read_text())
        if not isinstance(record, dict) or "config" not in record:
            raise ValueError(f"{folder / _OPENAI_FOLDER_CONFIG}: expected an object with 'config' (as save_pretrained "
                             f"writes it)")
        config = OpenAIUNetConfig.from_dict(record["config"], what=str(folder / _OPENAI_FOLDER_CONFIG))
        weights = folder / _OPENAI_FOLDER_WEIGHTS
        if not weights.is_file():
            raise FileNotFoundError(f"{folder}: {_OPENAI_FOLDER_WEIGHTS} is missing")
        schedule = record.get("alphas_cumprod")
        model = cls.from_openai(weights, config=config, **kwargs)
        if schedule is not None:
            model = cls(model.unet, torch.tensor(schedule, dtype=torch.float64), autocast_dtype=model.autocast_dtype,
                        channels_last=model.channels_last, frame_padding=model.frame_padding)
        return model.eval()

    @classmethod
    def from_openai(cls, path, config=None, *, autocast_dtype: torch.dtype | None = None,
                    channels_last: bool = False, frame_padding: str | None = "auto") -> "DiffusionDenoiser":
        """Load an improved-/guided-diffusion checkpoint (a state dict saved with torch.save, read with
        torch.load(weights_only=True), or a .safetensors file) as a denoiser in eval mode, fp32 weights (fp16
        checkpoints are converted; compute in fp16/bf16 only with autocast_dtype).

        config: a built-in name (msrs.openai_unet.BUILTIN_CONFIGS), a JSON file, a dict of OpenAIUNetConfig
        settings ({"base": NAME, ...} overrides a built-in), an OpenAIUNetConfig, or None: then PATH.json (e.g.
        model.pt.json) beside the checkpoint, else <stem>.json (model.json), else the built-in config whose name is
        the file's stem (cifar10_uncond_50M_500K.pt, 256x256_diffusion_uncond.pt); see resolve_openai_config.
        A checkpoint whose keys or shapes differ from the config's architecture is refused, naming the first
        missing, unexpected and mismatched keys."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"path: no such checkpoint file {path}")
        settings, config_source = resolve_openai_config(path, config)
        _check_autocast(autocast_dtype)
        _check_frame_padding(None if frame_padding == "auto" else frame_padding)
        with torch.device("meta"):  # the architecture without memory: its keys and shapes
            unet = OpenAIUNet(settings)
        if settings.class_cond:
            raise ValueError(f"config: {config_source} describes a class-conditional model; a smoothed classifier "
                             f"cannot give it labels (use an unconditional checkpoint)")
        state = _read_state_dict(path)
        _check_keys(state, unet.expected_shapes(), path, config_source)
        # fp32 copies in ordinary memory: fp16 checkpoints are widened, and no parameter stays memory-mapped to the
        # file (which a later run may overwrite)
        unet.load_state_dict({k: v.to(torch.float32, copy=True) for k, v in state.items()}, assign=True)
        del state
        model = cls(unet, None, autocast_dtype=autocast_dtype, channels_last=channels_last,
                    frame_padding=frame_padding)
        model.openai_config_source = config_source
        return model.eval()

    def extra_repr(self) -> str:
        kind = "openai" if self.openai_config is not None else "diffusers"
        return (f"network={kind}, in_channels={self.in_channels}, sample_size={self.sample_size}, "
                f"num_train_timesteps={self.num_train_timesteps}, timestep_scale={self.timestep_scale}, "
                f"frame_padding={self.frame_padding}, autocast_dtype={self.autocast_dtype}, "
                f"channels_last={self.channels_last}")


class _EpsNetwork(nn.Module):
    """The network as a function x_t, t -> eps tensor (diffusers returns an output object; an OpenAI network
    wants its timestep convention; compiled code and msrs.compiled.StaticBatch want a tensor)."""

    def __init__(self, unet: nn.Module, timestep_scale: float | None = None, openai: bool = False):
        super().__init__()
        self.unet = unet
        self.timestep_scale = timestep_scale
        self.openai = openai

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self.openai:
            return self.unet(x, t).sample
        if self.timestep_scale is not None:
            t = t.to(torch.float32) * self.timestep_scale
        return self.unet(x, t)


# -- OpenAI-format checkpoints ---------------------------------------------------------------------------------------
def resolve_openai_config(path, config=None) -> tuple[OpenAIUNetConfig, str]:
    """(settings, where they came from) for the checkpoint at `path`; config as in DiffusionDenoiser.from_openai.
    Without config the first that exists wins: PATH.json (the full file name plus .json), <stem>.json beside it,
    the built-in config named like the file's stem."""
    if isinstance(config, OpenAIUNetConfig):
        return config, "the given OpenAIUNetConfig"
    if isinstance(config, dict):
        return OpenAIUNetConfig.from_dict(config), "the given settings"
    if isinstance(config, (str, Path)):
        text = str(config)
        if isinstance(config, str) and text in BUILTIN_CONFIGS:
            return builtin_config(text), f"built-in config {text!r}"
        file = Path(text).expanduser()
        if file.is_file():
            return OpenAIUNetConfig.from_json(file), str(file)
        if text.endswith(".json"):
            raise FileNotFoundError(f"config: no such file {file}")
        raise ValueError(f"config: {text!r} is neither a built-in config {sorted(BUILTIN_CONFIGS)} nor a JSON file")
    if config is not None:
        raise TypeError(f"config: expected a built-in name, a JSON file, a dict or None, got {type(config).__name__}")
    path = Path(path)
    for candidate in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if candidate != path and candidate.is_file():
            return OpenAIUNetConfig.from_json(candidate), str(candidate)
    if path.stem in BUILTIN_CONFIGS:
        return builtin_config(path.stem), f"built-in config {path.stem!r} (matched by file name)"
    raise ValueError(f"config: no settings for {path.name}: give a built-in name {sorted(BUILTIN_CONFIGS)} or a "
                     f"JSON file, or put {path.name}.json or {path.stem}.json beside the checkpoint")


def _read_state_dict(path: Path) -> dict:
    """The tensors of a checkpoint file, never running code from it: safetensors, or torch.load(weights_only=True)
    (memory-mapped where the file format allows it)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise ValueError(f"path: cannot read {path} as a torch checkpoint ({e})") from None
            state = _torch_load_weights_only(path)  # the legacy (pre-zip) format cannot be memory-mapped
        except pickle.UnpicklingError as e:
            raise ValueError(f"path: {path} holds Python objects other than tensors, and msrs loads checkpoints "
                             f"with torch.load(weights_only=True) only (no code runs from a data file). Re-save "
                             f"its state dict: torch.save(model.state_dict(), ...). Loader said: "
                             f"{str(e).splitlines()[0]}") from None
    if not isinstance(state, dict) or not state:
        raise ValueError(f"path: {path} does not hold a state dict (got {type(state).__name__})")
    if {"state", "param_groups"} <= set(state):
        raise ValueError(f"path: {path} is an optimizer state (keys 'state', 'param_groups'), not model weights; "
                         f"use the model*.pt or ema_*.pt file of the same run")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"path: {path} is not a plain state dict: entries {not_tensors[:_LIST_FIRST]} are not "
                         f"tensors")
    if all(k.startswith("module.") for k in state):  # saved from torch.nn.DataParallel / DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _torch_load_weights_only(path: Path):
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"path: {path} holds Python objects other than tensors, and msrs loads checkpoints with "
                         f"torch.load(weights_only=True) only. Loader said: {str(e).splitlines()[0]}") from None


def _check_keys(state: dict, expected: dict, path: Path, config_source: str) -> None:
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)}, architecture {expected[k]}"
                  for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if not (missing or unexpected or mismatched):
        return

    def first(items):
        more = f", ... ({len(items) - _LIST_FIRST} more)" if len(items) > _LIST_FIRST else ""
        return ", ".join(items[:_LIST_FIRST]) + more

    lines = [f"path: {path.name} does not match the architecture of {config_source} "
             f"({len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} shape mismatches)"]
    if missing:
        lines.append(f"  missing: {first(missing)}")
    if unexpected:
        lines.append(f"  unexpected: {first(unexpected)}")
    if mismatched:
        lines.append(f"  shape mismatches: {first(mismatched)}")
    lines.append("  check the settings (num_channels, num_res_blocks, channel_mult, attention_resolutions, "
                 "learn_sigma, class_cond, resblock_updown, use_scale_shift_norm) against the flags the checkpoint "
                 "was trained with")
    raise ValueError("\n".join(lines))


# -- the one place resolving a denoiser spec ---------------------------------------------------------------------------
def load_denoiser(spec, *, device="cpu", config=None, frame_padding="auto") -> DiffusionDenoiser:
    """The denoiser a user names, in eval mode on `device`:

      demo / demo-finetuned     the shipped digits DDPM (msrs/assets; a local path of that name wins)
      openai:PATH               an improved-/guided-diffusion checkpoint (DiffusionDenoiser.from_openai; config:
                                a built-in name, a JSON file or a dict; default: JSON beside it or the file name)
      a local folder            DiffusionDenoiser.from_pretrained (diffusers folders, msrs saves)
      a hub id                  DiffusionDenoiser.from_pretrained (diffusers; needs the network or the cache)

    frame_padding: "auto" (the model's default: "reflect" for OpenAI networks, none for diffusers ones), "reflect",
    "zeros" or None (DiffusionDenoiser). The loaded model's `source` attribute holds the resolved path or id. Errors
    name the `denoiser` argument
    (ValueError, or FileNotFoundError for a path that is not there); they come before any weights are read."""
    if isinstance(spec, Path):
        spec = str(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"denoiser: expected demo, demo-finetuned, openai:PATH, a folder or a hub id, got {spec!r}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: {device!r} is not a device ({e})") from None
    if spec.startswith("openai:"):
        path = Path(spec[len("openai:"):]).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"denoiser: cannot load {spec!r}: no such checkpoint file {path}")
        try:
            model = DiffusionDenoiser.from_openai(path, config=config)
        except (ValueError, TypeError) as e:
            raise ValueError(f"denoiser: cannot load {spec!r}: {e}") from None
        except FileNotFoundError as e:  # a config file named but missing
            raise FileNotFoundError(f"denoiser: {spec!r}: {e}") from None
        source = str(path)
    else:
        if config is not None:
            raise ValueError(f"config: only for openai:PATH denoisers, not for {spec!r}")
        source = _local_or_hub_source(spec)
        try:
            model = DiffusionDenoiser.from_pretrained(source)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"denoiser: cannot load {spec!r} ({e})") from None
        except (OSError, ValueError, TypeError) as e:  # diffusers: missing files, no network, bad configs
            raise ValueError(f"denoiser: cannot load {spec!r} ({type(e).__name__}: {e})") from None
    if frame_padding != "auto":
        model.frame_padding = _check_frame_padding(frame_padding)
    model.source = source
    return model.to(device).eval()


def source_paths(spec, config=None) -> list:
    """The local files and folders a denoiser spec reads (none for a hub id), found without loading anything: for
    callers that must not write over a model they are about to read (msrs finetune --out). A local path that is
    not there is a FileNotFoundError naming `denoiser`, as load_denoiser's."""
    spec = str(spec)
    if spec.startswith("openai:"):
        path = Path(spec[len("openai:"):]).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"denoiser: cannot load {spec!r}: no such checkpoint file {path}")
        candidates = [path, Path(str(path) + ".json"), path.with_suffix(".json")]
        if isinstance(config, (str, os.PathLike)) and str(config).endswith(".json"):
            candidates.append(Path(config).expanduser())
        return [p for p in candidates if p.exists()]
    source = Path(_local_or_hub_source(spec))
    return [source] if source.exists() else []


def _local_or_hub_source(spec: str) -> str:
    """The folder or hub id behind a non-openai spec (demo names resolve to the shipped assets)."""
    if spec in ("demo", "demo-finetuned") and not os.path.exists(spec):
        from . import assets

        folder = assets.path(assets.DDPM_FINETUNED_NAME if spec == "demo-finetuned" else assets.DDPM_NAME)
        if not folder.is_dir():
            what = "fine-tuned demo denoiser" if spec == "demo-finetuned" else "demo denoiser"
            raise FileNotFoundError(f"denoiser: the {what} ({spec}) is not shipped in this installation "
                                    f"({folder} is missing)")
        return str(folder)
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix in (".pt", ".pth", ".ckpt", ".bin", ".safetensors"):
            raise ValueError(f"denoiser: {spec!r} is a checkpoint file; for an improved-/guided-diffusion checkpoint "
                             f"write openai:{spec}")
        raise ValueError(f"denoiser: {spec!r} is a file; expected a model folder, a hub id, openai:PATH or demo")
    looks_local = path.is_absolute() or spec.startswith((".", "~")) or spec.count("/") > 1  # hub ids: org/name
    if looks_local and not path.exists():
        raise FileNotFoundError(f"denoiser: cannot load {spec!r}: no such folder")
    return str(path) if path.exists() else spec
