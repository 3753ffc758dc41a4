"""The UNet of OpenAI's improved-diffusion and guided-diffusion, as a native module whose state-dict keys and shapes
are exactly those of the published checkpoints, with the settings and noise schedules those codebases train with.

  OpenAIUNetConfig            the model and diffusion settings (the codebases' flag names), JSON-serialisable
  BUILTIN_CONFIGS[name]       the settings of the checkpoints the field certifies with, by file stem:
                                cifar10_uncond_50M_500K   (improved-diffusion, CIFAR-10, Carlini et al. / Jeong & Shin)
                                256x256_diffusion_uncond  (guided-diffusion, ImageNet 256x256)
  OpenAIUNet(config)          the network: forward(x, timesteps, y=None) -> [N, out_channels, H, W]
  alphas_cumprod(config)      float64 cumulative schedule of the config ("linear" or "cosine", diffusion_steps)

The facts used here (layer layout, key names, schedules, timestep conventions) are those of the public definitions
in openai/improved-diffusion and openai/guided-diffusion (`unet.py`, `nn.py`, `script_util.py`,
`gaussian_diffusion.py`); the code is written for msrs. The test data in tests/data/openai_unet_keys/ holds the key
lists of the two published architectures as dumped from those repositories (see the files' headers).

Layout (all convolutions 2-D, GroupNorm with 32 groups computed in fp32, SiLU):
  time_embed.{0,2}                Linear(C, 4C), Linear(4C, 4C) over a sinusoidal embedding of the timestep
  label_emb                       Embedding(num_classes, 4C), only for class-conditional models
  input_blocks.0.0                Conv(in, ch0, 3)
  input_blocks.i                  per level: num_res_blocks x [ResBlock (+ AttentionBlock)], then (not on the last
                                  level) a down-sampler: ResBlock(down) with resblock_updown, else Downsample (.op)
  middle_block                    ResBlock, AttentionBlock, ResBlock
  output_blocks.i                 per level, deepest first: num_res_blocks + 1 x [ResBlock over the concatenated skip
                                  (+ AttentionBlock)], the last one of a level (not the top) with an up-sampler:
                                  ResBlock(up) or Upsample (.conv)
  out.{0,2}                       GroupNorm, Conv(ch0, out, 3)
  ResBlock: in_layers.{0: norm, 2: conv}, emb_layers.1 (Linear to 2 * out with scale-shift norm, else out),
            out_layers.{0: norm, 3: conv}, skip_connection (1x1 conv when the width changes)
  AttentionBlock: norm, qkv (Conv1d C -> 3C), proj_out (Conv1d C -> C)
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BUILTIN_CONFIGS",
    "OpenAIUNet",
    "OpenAIUNetConfig",
    "alphas_cumprod",
    "beta_schedule",
    "builtin_config",
    "count_parameters",
    "timestep_embedding",
]

# channel_mult when the flag is "" (script_util.create_model of each codebase; guided-diffusion adds 128 and 512)
_DEFAULT_CHANNEL_MULT = {
    32: (1, 2, 2, 2),
    64: (1, 2, 3, 4),
    128: (1, 1, 2, 3, 4),
    256: (1, 1, 2, 2, 4, 4),
    512: (0.5, 1, 1, 2, 2, 4, 4),
}
_SCHEDULES = ("linear", "cosine")
_GROUPS = 32  # nn.normalization: GroupNorm32(32, channels)


def _tuple_of(name: str, value, kind) -> tuple:
    """A tuple from a list/tuple or from the codebases' comma-separated flag string ("32,16,8")."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name}: expected a list or a comma-separated string, got {type(value).__name__}")
    try:
        out = tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected numbers, got {value!r}") from None
    if kind is int and any(isinstance(v, float) and not v.is_integer() for v in value):
        raise ValueError(f"{name}: expected integers, got {value!r}")
    return out


@dataclass(frozen=True)
class OpenAIUNetConfig:
    """Model and diffusion settings of an improved-/guided-diffusion checkpoint, under the codebases' flag names
    (transcribe MODEL_FLAGS and DIFFUSION_FLAGS of their READMEs).

    attention_resolutions are image resolutions ("16,8" -> attention where the feature map is 16 or 8 pixels wide,
    i.e. at down-sampling rates image_size // r); channel_mult empty -> the codebases' default for image_size.
    num_head_channels > 0 fixes the width per attention head (guided-diffusion) and overrides num_heads.
    rescale_timesteps is required: improved-diffusion's default is True (the network sees t * 1000 / diffusion_steps
    as a float), guided-diffusion's is False (the integer step). use_fp16 records that the public code runs the
    network's body in fp16; msrs computes in fp32 unless an autocast dtype is asked for.
    """

    image_size: int = 64
    in_channels: int = 3
    num_channels: int = 128
    num_res_blocks: int = 2
    channel_mult: tuple = ()
    attention_resolutions: tuple = (16, 8)
    num_heads: int = 4
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    dropout: float = 0.0
    learn_sigma: bool = False
    class_cond: bool = False
    num_classes: int = 1000
    use_scale_shift_norm: bool = True
    resblock_updown: bool = False
    use_new_attention_order: bool = False
    conv_resample: bool = True
    use_fp16: bool = False
    diffusion_steps: int = 1000
    noise_schedule: str = "linear"
    rescale_timesteps: Optional[bool] = None

    def __post_init__(self):
        set_ = object.__setattr__  # frozen: normalise the sequence fields once, here
        set_(self, "channel_mult", _tuple_of("channel_mult", self.channel_mult, float))
        set_(self, "attention_resolutions", _tuple_of("attention_resolutions", self.attention_resolutions, int))
        for name in ("image_size", "in_channels", "num_channels", "num_res_blocks", "diffusion_steps", "num_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        for name in ("num_heads", "num_head_channels", "num_heads_upsample"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or (value < 1 and value != -1):
                raise ValueError(f"{name}: expected a positive integer or -1, got {value!r}")
        for name in ("learn_sigma", "class_cond", "use_scale_shift_norm", "resblock_updown",
                     "use_new_attention_order", "conv_resample", "use_fp16"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        if self.rescale_timesteps is None:
            raise ValueError("rescale_timesteps: required (true for improved-diffusion checkpoints trained with its "
                             "defaults: the network sees t * 1000 / diffusion_steps; false for guided-diffusion)")
        if not isinstance(self.rescale_timesteps, bool):
            raise ValueError(f"rescale_timesteps: expected true or false, got {self.rescale_timesteps!r}")
        if self.noise_schedule not in _SCHEDULES:
            raise ValueError(f"noise_schedule: expected one of {_SCHEDULES}, got {self.noise_schedule!r}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= float(self.dropout) < 1.0):
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        if not self.channel_mult and self.image_size not in _DEFAULT_CHANNEL_MULT:
            raise ValueError(f"channel_mult: required for image_size {self.image_size} (defaults exist for "
                             f"{sorted(_DEFAULT_CHANNEL_MULT)})")
        if any(m <= 0 for m in self.mult) or any(r < 1 for r in self.attention_resolutions):
            raise ValueError("channel_mult, attention_resolutions: expected positive values")
        for width in self._widths():
            if width % _GROUPS:
                raise ValueError(f"num_channels, channel_mult: every width must be a multiple of {_GROUPS} "
                                 f"(GroupNorm with 32 groups), got {width}")
            if self.num_head_channels > 0 and width % self.num_head_channels:
                raise ValueError(f"num_head_channels: {self.num_head_channels} does not divide width {width}")

    # -- derived layout -------------------------------------------------------------------------------------------
    @property
    def mult(self) -> tuple:
        return self.channel_mult or _DEFAULT_CHANNEL_MULT[self.image_size]

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def attention_rates(self) -> tuple:
        """Down-sampling rates with attention (script_util: image_size // resolution)."""
        return tuple(self.image_size // r for r in self.attention_resolutions)

    def width(self, level: int) -> int:
        return int(self.mult[level] * self.num_channels)

    def _widths(self):
        return [self.width(level) for level in range(len(self.mult))]

    # -- JSON -----------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["channel_mult"] = [int(m) if float(m).is_integer() else m for m in self.channel_mult]
        out["attention_resolutions"] = list(self.attention_resolutions)
        return out

    @classmethod
    def from_dict(cls, values: dict, *, what: str = "config") -> "OpenAIUNetConfig":
        """Settings from a dict; {"base": NAME, ...} starts from a built-in config and overrides the keys given."""
        if not isinstance(values, dict):
            raise TypeError(f"{what}: expected a JSON object of settings, got {type(values).__name__}")
        values = dict(values)
        base = values.pop("base", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{what}: unknown settings {unknown}; known: {sorted(known)} (and 'base')")
        if base is not None:
            return dataclasses.replace(builtin_config(base), **values)
        return cls(**values)

    @classmethod
    def from_json(cls, path) -> "OpenAIUNetConfig":
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"config: {path} is not valid JSON ({e})") from None
        return cls.from_dict(values, what=f"config ({path})")


BUILTIN_CONFIGS = {
    # improved-diffusion README, "Unconditional CIFAR-10 with our L_hybrid objective and cosine noise schedule":
    # --image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.3
    # --diffusion_steps 4000 --noise_schedule cosine; other settings at improved-diffusion's defaults
    # (num_heads 4, attention 16,8, scale-shift norm, rescale_timesteps True).
    "cifar10_uncond_50M_500K": OpenAIUNetConfig(
        image_size=32, num_channels=128, num_res_blocks=3, channel_mult=(1, 2, 2, 2), attention_resolutions=(16, 8),
        num_heads=4, dropout=0.3, learn_sigma=True, use_scale_shift_norm=True, diffusion_steps=4000,
        noise_schedule="cosine", rescale_timesteps=True),
    # guided-diffusion README, 256x256 unconditional: --attention_resolutions 32,16,8 --class_cond False
    # --diffusion_steps 1000 --image_size 256 --learn_sigma True --noise_schedule linear --num_channels 256
    # --num_head_channels 64 --num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True
    # (rescale_timesteps False: guided-diffusion's default).
    "256x256_diffusion_uncond": OpenAIUNetConfig(
        image_size=256, num_channels=256, num_res_blocks=2, channel_mult=(1, 1, 2, 2, 4, 4),
        attention_resolutions=(32, 16, 8), num_head_channels=64, learn_sigma=True, use_scale_shift_norm=True,
        resblock_updown=True, use_fp16=True, diffusion_steps=1000, noise_schedule="linear", rescale_timesteps=False),
}


def builtin_config(name: str) -> OpenAIUNetConfig:
    if name not in BUILTIN_CONFIGS:
        raise ValueError(f"config: unknown built-in config {name!r}; built in: {sorted(BUILTIN_CONFIGS)}")
    return BUILTIN_CONFIGS[name]


# -- noise schedules ---------------------------------------------------------------------------------------------------
def beta_schedule(name: str, steps: int) -> np.ndarray:
    """improved-diffusion's named schedules (float64): "linear" is Ho et al.'s 1e-4 .. 0.02 scaled by 1000 / steps
    (so that any step count spans the same process); "cosine" (Nichol & Dhariwal 2021) discretises
    abar(s) = cos^2((s + 0.008) / 1.008 * pi / 2) with beta_i = min(1 - abar((i + 1) / T) / abar(i / T), 0.999)."""
    if name == "linear":
        scale = 1000.0 / steps
        return np.linspace(scale * 1e-4, scale * 0.02, steps, dtype=np.float64)
    if name == "cosine":
        def abar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array([min(1.0 - abar((i + 1) / steps) / abar(i / steps), 0.999) for i in range(steps)],
                        dtype=np.float64)
    raise ValueError(f"noise_schedule: expected one of {_SCHEDULES}, got {name!r}")


def alphas_cumprod(config: OpenAIUNetConfig) -> np.ndarray:
    """abar_t = prod_{s <= t} (1 - beta_s), float64, as GaussianDiffusion computes it."""
    return np.cumprod(1.0 - beta_schedule(config.noise_schedule, config.diffusion_steps))


# -- the network -------------------------------------------------------------------------------------------------------
def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[N, dim] sinusoidal embedding: cos(t f_k) then sin(t f_k), f_k = max_period^(-k / (dim // 2)), t as fp32
    (fractional t allowed: the rescaled convention); an odd dim gets a trailing zero column."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class _GroupNorm32(nn.GroupNorm):
    """GroupNorm(32, C) evaluated in fp32 and cast back (the codebases' GroupNorm32: stable under fp16)."""

    def __init__(self, channels: int):
        super().__init__(_GROUPS, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


class _UsesEmbedding(nn.Module):
    """Marks blocks that take the timestep embedding as a second input."""


class _Stage(nn.Sequential):
    """One entry of input_blocks / output_blocks / middle_block: children indexed 0, 1, ... as in the checkpoints;
    residual blocks get the embedding, the others only the features."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, _UsesEmbedding) else layer(x)
        return x


class _Resample(nn.Module):
    """Nearest 2x up-sampling (then `conv`) or 2x down-sampling (`op`: a stride-2 conv, or average pooling)."""

    def __init__(self, channels: int, up: bool, with_conv: bool):
        super().__init__()
        self.up = up
        if up and with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        elif not up:
            self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if with_conv else nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            return self.conv(x) if hasattr(self, "conv") else x
        return self.op(x)


class _ResBlock(_UsesEmbedding):
    """GroupNorm-SiLU-conv, timestep conditioning (added, or FiLM scale-shift after the second norm), GroupNorm-SiLU-
    dropout-conv, plus the skip path; up/down variants resample both paths between the first norm and conv."""

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: int, scale_shift: bool,
                 resample: Optional[str] = None):
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(_GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.resample = resample
        if resample is not None:  # parameter-free (no conv), one for the features and one for the skip path
            self.h_upd = _Resample(channels, up=resample == "up", with_conv=False)
            self.x_upd = _Resample(channels, up=resample == "up", with_conv=False)
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, (2 if scale_shift else 1) * out_channels))
        self.out_layers = nn.Sequential(_GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.resample is not None:
            h = self.in_layers[2](self.h_upd(self.in_layers[1](self.in_layers[0](x))))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        cond = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        norm, rest = self.out_layers[0], self.out_layers[1:]
        if self.scale_shift:
            scale, shift = cond.chunk(2, dim=1)
            h = rest(norm(h) * (1 + scale) + shift)
        else:
            h = rest(norm(h + cond))
        return self.skip_connection(x) + h


class _AttentionBlock(nn.Module):
    """Self-attention over all positions. qkv is one 1x1 Conv1d (C -> 3C); its output channels are grouped per head
    as [q_h, k_h, v_h] for h = 1..H ("legacy" order, both codebases' default) or as [q_1..q_H, k_1..k_H, v_1..v_H]
    (use_new_attention_order). Logits are q.k / sqrt(head width)."""

    def __init__(self, channels: int, num_heads: int, new_order: bool):
        super().__init__()
        self.num_heads = num_heads
        self.new_order = new_order
        self.norm = _GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        length, heads = flat.shape[-1], self.num_heads
        qkv = self.qkv(self.norm(flat))
        if self.new_order:
            qkv = qkv.reshape(b, 3, heads, c // heads, length).transpose(0, 1)
        else:
            qkv = qkv.reshape(b, heads, 3, c // heads, length).permute(2, 0, 1, 3, 4)
        q, k, v = (t.transpose(-1, -2) for t in qkv)  # each [B, H, T, ch]
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(-1, -2).reshape(b, c, length)
        return (flat + self.proj_out(h)).reshape(b, c, *spatial)


class OpenAIUNet(nn.Module):
    """The improved-/guided-diffusion UNetModel for `config` (an OpenAIUNetConfig or a dict of its settings).

    forward(x [N, in, H, W], timesteps [N] (int or float: the caller applies the timestep convention), y [N] class
    labels for class-conditional models) -> [N, out_channels, H, W]: eps in the first in_channels channels, the
    learned-variance interpolation values in the rest (learn_sigma). H and W must be divisible by
    2^(levels - 1). Output convolutions are zero-initialised as in the codebases (a fresh model predicts 0)."""

    def __init__(self, config):
        super().__init__()
        if isinstance(config, dict):
            config = OpenAIUNetConfig.from_dict(config)
        if not isinstance(config, OpenAIUNetConfig):
            raise TypeError(f"config: expected an OpenAIUNetConfig or a dict, got {type(config).__name__}")
        self.config = config
        cfg = config
        emb_dim = 4 * cfg.num_channels
        self.time_embed = nn.Sequential(nn.Linear(cfg.num_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.class_cond:
            self.label_emb = nn.Embedding(cfg.num_classes, emb_dim)

        def res(cin, cout, resample=None):
            return _ResBlock(cin, emb_dim, float(cfg.dropout), cout, cfg.use_scale_shift_norm, resample)

        def attn(ch, upsampling=False):
            heads = cfg.num_heads_upsample if upsampling and cfg.num_heads_upsample != -1 else cfg.num_heads
            if cfg.num_head_channels != -1:
                heads = ch // cfg.num_head_channels
            return _AttentionBlock(ch, heads, cfg.use_new_attention_order)

        levels = len(cfg.mult)
        ch = cfg.width(0)
        self.input_blocks = nn.ModuleList([_Stage(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        skips, rate = [ch], 1
        for level in range(levels):
            for _ in range(cfg.num_res_blocks):
                layers = [res(ch, cfg.width(level))]
                ch = cfg.width(level)
                if rate in cfg.attention_rates:
                    layers.append(attn(ch))
                self.input_blocks.append(_Stage(*layers))
                skips.append(ch)
            if level != levels - 1:
                down = res(ch, ch, "down") if cfg.resblock_updown else _Resample(ch, up=False,
                                                                                  with_conv=cfg.conv_resample)
                self.input_blocks.append(_Stage(down))
                skips.append(ch)
                rate *= 2
        self.middle_block = _Stage(res(ch, ch), attn(ch), res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(levels)):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skips.pop(), cfg.width(level))]
                ch = cfg.width(level)
                if rate in cfg.attention_rates:
                    layers.append(attn(ch, upsampling=True))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, "up") if cfg.resblock_updown
                                  else _Resample(ch, up=True, with_conv=cfg.conv_resample))
                    rate //= 2
                self.output_blocks.append(_Stage(*layers))
        self.out = nn.Sequential(_GroupNorm32(ch), nn.SiLU(), nn.Conv2d(cfg.width(0), cfg.out_channels, 3, padding=1))
        self._zero_output_convs()

    def _zero_output_convs(self):
        """The codebases zero the last conv of each residual branch, the attention projections and the final conv
        (zero_module): a fresh network is the identity on its residual paths and predicts 0."""
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, _ResBlock):
                    zero = [module.out_layers[3]]
                elif isinstance(module, _AttentionBlock):
                    zero = [module.proj_out]
                else:
                    continue
                for layer in zero:
                    for p in layer.parameters():
                        p.zero_()
            for p in self.out[2].parameters():
                p.zero_()

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def out_channels(self) -> int:
        return self.config.out_channels

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        if (y is None) == self.config.class_cond:
            raise ValueError("y: class labels are required by a class-conditional model and refused otherwise")
        dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.config.num_channels).to(dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        h, skips = x, []
        for stage in self.input_blocks:
            h = stage(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for stage in self.output_blocks:
            h = stage(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)

    def expected_shapes(self) -> dict:
        """{key: shape} of this configuration's state dict (no memory needed when the model is on 'meta')."""
        return {k: tuple(v.shape) for k, v in self.state_dict().items()}


def count_parameters(shapes: Sequence[Sequence[int]]) -> int:
    return int(sum(math.prod(s) for s in shapes))
