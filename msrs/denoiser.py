"""One-shot diffusion denoiser (Carlini et al., ICLR 2023) around an off-the-shelf diffusers UNet2DModel.

The certification engine uses two methods (docs/DESIGN.md, "Denoiser interface"):

  t, a = denoiser.timestep_for(sigma)     # first t with sqrt(abar_t) <= 1 / sqrt(1 + (2 sigma)^2); a = sqrt(abar_t)
  eps = denoiser.predict_eps(x_t, t)      # the UNet's epsilon prediction, fp32, shape of x_t

and does the noise injection / timestep scaling (msrs.ops.sample_noisy) and the one-step reconstruction
(msrs.ops.finalize_denoised) itself, fused with the classifier's normalisation. `denoise_noisy` is the same
pipeline for images that are already noisy (x + sigma * eps, in [0, 1] pixel units); it returns denoised images in
[0, 1] and is differentiable when gradients are on (used by diffusion calibration and by tests).

Any diffusers UNet2DModel trained for epsilon prediction works: 1 or 3 channels, any resolution it accepts; a UNet
with 2 * C output channels (learned variance, as in guided / improved diffusion) is accepted and its first C
channels are the eps prediction. The model works on [-1, 1] images, so pixel noise sigma is 2 * sigma there.
"""
from __future__ import annotations

import json
import math
from numbers import Real
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["DiffusionDenoiser"]

_AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


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


class DiffusionDenoiser(nn.Module):
    """A diffusers UNet2DModel (epsilon prediction) plus its scheduler's cumulative schedule alphas_cumprod.

    unet: a diffusers UNet2DModel. scheduler: a diffusers scheduler with `alphas_cumprod` and a config (DDPMScheduler,
    DDIMScheduler, ...), or a 1-D tensor / array of alphas_cumprod (then saved as a DDPMScheduler with those betas).
    autocast_dtype (None, torch.bfloat16, torch.float16) and channels_last are the defaults of predict_eps.
    """

    def __init__(self, unet: nn.Module, scheduler, *, autocast_dtype: torch.dtype | None = None,
                 channels_last: bool = False):
        super().__init__()
        config = getattr(unet, "config", None)
        if config is None or not hasattr(config, "in_channels"):
            raise TypeError(f"unet: expected a diffusers UNet2DModel, got {type(unet).__name__}")
        if isinstance(scheduler, (torch.Tensor, np.ndarray, list, tuple)):
            abar = torch.as_tensor(np.asarray(scheduler, dtype=np.float64))
            self.scheduler_config = None
        else:
            if not hasattr(scheduler, "alphas_cumprod"):
                raise TypeError(f"scheduler: expected a diffusers scheduler with alphas_cumprod or a tensor of them, "
                                f"got {type(scheduler).__name__}")
            abar = torch.as_tensor(scheduler.alphas_cumprod).detach().to(torch.float64).cpu()
            self.scheduler_config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
            self.scheduler_config["_class_name"] = type(scheduler).__name__
            prediction = self.scheduler_config.get("prediction_type", "epsilon")
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
        self.in_channels = int(config.in_channels)
        out_channels = int(getattr(config, "out_channels", self.in_channels) or self.in_channels)
        if out_channels not in (self.in_channels, 2 * self.in_channels):
            raise ValueError(f"unet: expected out_channels = in_channels ({self.in_channels}) or twice that "
                             f"(learned variance), got {out_channels}")
        self.out_channels = out_channels
        size = getattr(config, "sample_size", None)
        self.sample_size = size if not isinstance(size, (list, tuple)) else tuple(size)
        self.unet = unet
        # float64 lookup copy for timestep_for (independent of later .to(dtype) casts of the module) ...
        self._abar64 = abar.clone()
        self._sqrt_abar64 = abar.sqrt()
        # ... and the schedule as a buffer, so it follows the module to its device.
        self.register_buffer("alphas_cumprod", abar.to(torch.float32), persistent=False)
        self.autocast_dtype = _check_autocast(autocast_dtype)
        self.channels_last = bool(channels_last)
        self._unet_channels_last = False
        self._static_eps = None  # compile_for_inference(): the compiled UNet at a static batch shape

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
        self._static_eps = StaticBatch(compile_model(_EpsNetwork(self.unet), device))
        return self

    def predict_eps(self, x_t: torch.Tensor, timesteps, *, autocast_dtype="default",
                    channels_last: bool | None = None) -> torch.Tensor:
        """The UNet's eps prediction for x_t [N, C, H, W] at timesteps (one int or [N]), as fp32 [N, C, H, W].

        autocast_dtype / channels_last default to the module's settings; autocast runs the UNet under
        torch.autocast(device, dtype) (bf16 or fp16), channels_last runs it in that memory format."""
        if not isinstance(x_t, torch.Tensor) or x_t.dim() != 4:
            raise ValueError(f"x_t: expected a tensor [N, C, H, W], got "
                             f"{tuple(x_t.shape) if isinstance(x_t, torch.Tensor) else type(x_t).__name__}")
        if x_t.shape[1] != self.in_channels:
            raise ValueError(f"x_t: expected {self.in_channels} channels, got {x_t.shape[1]}")
        dtype = self.autocast_dtype if autocast_dtype == "default" else _check_autocast(autocast_dtype)
        use_cl = self.channels_last if channels_last is None else bool(channels_last)
        t = self._timesteps(timesteps, x_t.shape[0], x_t.device)
        if use_cl != self._unet_channels_last:
            fmt = torch.channels_last if use_cl else torch.contiguous_format
            self.unet.to(memory_format=fmt)
            self._unet_channels_last = use_cl
        param = next(self.unet.parameters())
        x = x_t.to(param.dtype)
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
        return out.to(torch.float32).contiguous()

    def _eps_eager(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
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
            cls = getattr(diffusers, self.scheduler_config.get("_class_name", "DDPMScheduler"), diffusers.DDPMScheduler)
            config = {k: v for k, v in self.scheduler_config.items() if not k.startswith("_")}
            return cls.from_config(config)
        abar = self._abar64.numpy()
        betas = 1.0 - abar / np.concatenate(([1.0], abar[:-1]))
        return diffusers.DDPMScheduler(num_train_timesteps=int(abar.size), trained_betas=betas.tolist())

    def save_pretrained(self, path) -> Path:
        """Save as a diffusers DDPMPipeline-style folder: path/unet (config.json + safetensors weights) and
        path/scheduler/scheduler_config.json. Load it back with DiffusionDenoiser.from_pretrained(path)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self._unet_channels_last:  # save contiguous weights; predict_eps switches back when it runs
            self.unet.to(memory_format=torch.contiguous_format)
            self._unet_channels_last = False
        self.unet.save_pretrained(str(path / "unet"), safe_serialization=True)
        self._scheduler().save_pretrained(str(path / "scheduler"))
        return path

    @classmethod
    def from_pretrained(cls, path_or_hub_id, *, autocast_dtype: torch.dtype | None = None,
                        channels_last: bool = False, **kwargs) -> "DiffusionDenoiser":
        """Load a denoiser from a DDPMPipeline-style folder (unet/ + scheduler/), from a folder holding the UNet
        itself (config.json + weights) with a scheduler_config.json next to it, or from a diffusers hub id with
        the pipeline layout (kwargs go to diffusers' from_pretrained, e.g. local_files_only=True, cache_dir)."""
        import diffusers
        from diffusers import UNet2DModel

        try:  # without accelerate, diffusers falls back to this anyway, after a warning on every load
            import accelerate  # noqa: F401
        except ImportError:
            kwargs.setdefault("low_cpu_mem_usage", False)
        local = Path(str(path_or_hub_id)).expanduser()
        text = str(path_or_hub_id)
        looks_local = (isinstance(path_or_hub_id, Path) or local.is_absolute() or text.startswith((".", "~"))
                       or text.count("/") > 1 or local.exists())
        if looks_local and not local.is_dir():
            raise FileNotFoundError(f"{path_or_hub_id}: no such model folder")
        if local.is_dir():
            if (local / "unet" / "config.json").is_file():
                unet_dir, sched_file = local / "unet", local / "scheduler" / "scheduler_config.json"
            elif (local / "config.json").is_file():
                unet_dir, sched_file = local, local / "scheduler_config.json"
            else:
                raise FileNotFoundError(
                    f"{local}: expected a diffusers pipeline folder (unet/config.json + scheduler/) or a UNet folder "
                    f"(config.json + scheduler_config.json)")
            if not sched_file.is_file():
                raise FileNotFoundError(f"{local}: no scheduler config found (looked for {sched_file})")
            unet = UNet2DModel.from_pretrained(str(unet_dir), **kwargs)
            sched_config = json.loads(sched_file.read_text())
        else:
            unet = UNet2DModel.from_pretrained(str(path_or_hub_id), subfolder="unet", **kwargs)
            hub_keys = ("cache_dir", "local_files_only", "revision", "token", "force_download", "proxies")
            sched_config = dict(diffusers.DDPMScheduler.load_config(
                str(path_or_hub_id), subfolder="scheduler", **{k: v for k, v in kwargs.items() if k in hub_keys}))
        cls_name = sched_config.get("_class_name", "DDPMScheduler")
        sched_cls = getattr(diffusers, cls_name, None)
        if sched_cls is None or not hasattr(sched_cls, "from_config"):
            sched_cls = diffusers.DDPMScheduler
        scheduler = sched_cls.from_config(sched_config)
        model = cls(unet, scheduler, autocast_dtype=autocast_dtype, channels_last=channels_last)
        return model.eval()

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, sample_size={self.sample_size}, "
                f"num_train_timesteps={self.num_train_timesteps}, autocast_dtype={self.autocast_dtype}, "
                f"channels_last={self.channels_last}")


class _EpsNetwork(nn.Module):
    """The UNet as a function x_t, t -> eps tensor (diffusers returns an output object; compiled code and
    msrs.compiled.StaticBatch want a tensor)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample
