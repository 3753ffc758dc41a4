"""The settings of a fine-tuning run: one frozen, validated dataclass whose fields carry their defaults and help
texts, from which `msrs finetune`'s options (and scripts/finetune_demo.py's) are generated, so every default is
written once.

  FinetuneSettings(sigmas, steps, batch_size, ...)    checked when made (msrs.checks: the error names the field)
  add_options(parser, defaults=..., exclude=...)       one --option per field, help and default from the field
  from_options(args, defaults=..., exclude=...)        the settings of parsed options (errors name the --option)
  resolve_dtype(dtype, device)                         "auto" -> the dtype this device trains in
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .. import checks
from ..ops.philox import MASK32

__all__ = ["AUTOCAST", "DTYPES", "FinetuneSettings", "RESUMABLE", "add_options", "from_options", "resolve_dtype"]

MAX_SEED = 2**63 - 1  # seeds are non-negative int64
DTYPES = ("auto", "float32", "bfloat16", "float16")
AUTOCAST = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}  # None: plain fp32, no autocast
_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", None: "float32",
                  torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
WEIGHTS = ("brier_weight", "anti_consistency_weight", "mse_weight")


def _setting(default, help: str, group: str, *, resumable: bool = False, parse=None, **option):
    """A field of FinetuneSettings: its default, its help text, its group of `msrs finetune` options, whether a
    resumed run may change it (only settings that do not change the trajectory), `parse` to turn the option's
    value into the field's, and extra argparse keywords (metavar, choices, nargs)."""
    return field(default=default, metadata={"help": help, "group": group, "resumable": resumable, "parse": parse,
                                            "option": option})


def _parse_numbers(values) -> list:
    """Numbers from command-line words, each word one or more numbers separated by commas ("0.25,0.5 1.0")."""
    out = []
    for value in values:
        for part in str(value).replace(",", " ").split():
            try:
                out.append(float(part))
            except ValueError:
                raise checks.ArgumentTypeError(f"sigmas: expected numbers, got {part!r}") from None
    return out


def _clipping_off_at_zero(value):
    return value or None  # the command line spells "no clipping" as 0


@dataclass(frozen=True)
class FinetuneSettings:
    """Every setting of diffusion calibration (msrs.finetune's docstring explains the objective and why these
    defaults: they are msrs's, tuned on the digits demo, not the paper's). Fields are normalised when checked:
    sigmas become a sorted tuple (smallest first: level l of the noise streams and the log's columns is the l-th
    smallest), dtype one of DTYPES."""

    sigmas: tuple = _setting((0.25, 0.5, 1.0), "the cascade's noise levels, pixel units (commas or spaces)",
                             "objective", parse=_parse_numbers, type=str, nargs="+", metavar="SIGMA")
    steps: int = _setting(1000, "optimizer steps in all; a resumed run continues up to it", "optimisation",
                          resumable=True)
    batch_size: int = _setting(32, "images per step", "optimisation")
    samples_per_image: int = _setting(4, "noisy copies M per image and sigma", "objective", metavar="M")
    lr: float = _setting(1e-3, "AdamW learning rate (constant after the warm-up)", "optimisation")
    weight_decay: float = _setting(0.0, "AdamW weight decay", "optimisation")
    brier_weight: float = _setting(2.0, "Brier loss weight (recoverable inputs)", "objective")
    anti_consistency_weight: float = _setting(1.0, "anti-consistency loss weight (the other inputs)", "objective")
    mse_weight: float = _setting(1.0, "epsilon-MSE regulariser weight", "objective")
    anti_consistency: str = _setting("all", "anti-consistency on the mean softmax of all classes, or of the wrong "
                                            "ones only", "objective", choices=("all", "wrong"))
    p0: float = _setting(0.5, "recoverability threshold, the cascade's p0", "objective")
    ema_decay: float = _setting(0.99, "EMA decay of the saved weights (with warm-up)", "optimisation")
    warmup_steps: int = _setting(20, "linear learning-rate warm-up steps", "optimisation")
    max_grad_norm: Optional[float] = _setting(1.0, "gradient clipping norm; 0 (None in Python): off",
                                              "optimisation", parse=_clipping_off_at_zero)
    dtype: str = _setting("auto", "autocast dtype; auto: bfloat16 where the hardware computes it natively, else "
                                  "float32; float16 (CUDA only) uses loss scaling", "run", choices=DTYPES)
    gradient_checkpointing: bool = _setting(False, "trade compute for UNet memory", "run")
    seed: int = _setting(0, "data order and noise seed", "optimisation")
    checkpoint_every: int = _setting(100, "steps between checkpoints", "run", resumable=True)

    def __post_init__(self):
        # ascending, as the trainer has always ordered them: the noise stream of level l and the log's columns
        _set(self, "sigmas", tuple(sorted(checks.sigmas("sigmas", self.sigmas))))
        for name in ("steps", "batch_size", "samples_per_image", "checkpoint_every"):
            _set(self, name, checks.integer(name, getattr(self, name), 1))
        _set(self, "warmup_steps", checks.integer("warmup_steps", self.warmup_steps, 0))
        _set(self, "seed", checks.integer("seed", self.seed, 0, MAX_SEED))
        _set(self, "lr", checks.number("lr", self.lr, 0.0, low_open=True))
        for name in ("weight_decay",) + WEIGHTS:
            _set(self, name, checks.number(name, getattr(self, name), 0.0))
        if all(getattr(self, name) == 0 for name in WEIGHTS):
            raise checks.ArgumentValueError(f"{', '.join(WEIGHTS)}: at least one weight must be > 0")
        checks.choice("anti_consistency", self.anti_consistency, ("all", "wrong"))
        _set(self, "p0", checks.probability_threshold("p0", self.p0))
        _set(self, "ema_decay", checks.number("ema_decay", self.ema_decay, 0.0, 1.0, high_open=True))
        if self.max_grad_norm is not None:
            _set(self, "max_grad_norm", checks.number("max_grad_norm", self.max_grad_norm, 0.0, low_open=True))
        _set(self, "dtype", _dtype_name(self.dtype))
        _set(self, "gradient_checkpointing", bool(self.gradient_checkpointing))
        if self.steps * self.samples_per_image - 1 > MASK32:  # sample indices are one 32-bit Philox counter word
            raise checks.ArgumentValueError(f"steps: steps * samples_per_image must stay below 2^32 (noise counters), "
                                            f"got {self.steps} * {self.samples_per_image}")

    def replace(self, **changes) -> "FinetuneSettings":
        return dataclasses.replace(self, **changes)

    def record(self, dtype: str) -> dict:
        """The settings as finetune.json and the training state store them (and a resume compares), with the dtype
        resolved for the run's device (resolve_dtype)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.update(sigmas=list(self.sigmas), dtype=dtype)
        return out


RESUMABLE = tuple(f.name for f in dataclasses.fields(FinetuneSettings) if f.metadata["resumable"])


def _set(obj, name: str, value) -> None:
    """Normalise a field of a frozen dataclass during __post_init__."""
    object.__setattr__(obj, name, value)


def _dtype_name(dtype) -> str:
    name = dtype.lower() if isinstance(dtype, str) else dtype
    try:
        name = _DTYPE_ALIASES.get(name, name)
    except TypeError:  # unhashable
        pass
    if name not in DTYPES:
        raise checks.ArgumentValueError(f"dtype: expected 'auto', 'float32', 'bfloat16' or 'float16', got {dtype!r}")
    return name


# ------------------------------------------------------------------------------------------------------------- dtype
def resolve_dtype(dtype: str, device: torch.device) -> str:
    """The dtype a run trains in on `device` ('float32', 'bfloat16' or 'float16'; AUTOCAST maps it to the autocast
    dtype): 'auto' is bfloat16 where the hardware computes it natively, else float32; refuses what the device
    cannot do."""
    resolved = _dtype_name(dtype)
    if resolved == "auto":
        resolved = "bfloat16" if _bf16_fast(device) else "float32"
    if resolved == "float16" and device.type != "cuda":
        raise checks.ArgumentValueError("dtype: float16 autocast is for CUDA devices (it needs loss scaling); use "
                                        "bfloat16 on CPU")
    if resolved == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise checks.ArgumentValueError("dtype: this GPU has no bfloat16 support; use float16 or float32")
    return resolved


def _bf16_fast(device: torch.device) -> bool:
    """bf16 autocast for dtype='auto': on CUDA when supported; on CPU only with native bf16 instructions
    (AVX512-BF16 or AMX; measured: about 2x faster than fp32 for a small UNet's forward and backward, while on an
    AVX2-only CPU bf16 is emulated and about 10x slower).
    TODO(issue 11): msrs.hardware (helper "usability") implements this rule; call it here, the one place."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu" or platform.system() != "Linux":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


# ----------------------------------------------------------------------------------------------------------- options
def option_name(name: str) -> str:
    """The command-line spelling of a field: batch_size -> --batch-size."""
    return "--" + name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser, *, groups: Optional[dict] = None,
                defaults: Optional[FinetuneSettings] = None, exclude=()) -> None:
    """One option per field of FinetuneSettings (but `exclude`), with the field's help text and its default (from
    `defaults`, default FinetuneSettings()), into groups[field's group] (missing groups are made on `parser`).
    Values are checked by from_options, not by argparse, so a bad value gives the same error as in Python."""
    defaults = FinetuneSettings() if defaults is None else defaults
    groups = {} if groups is None else groups
    for f in dataclasses.fields(FinetuneSettings):
        if f.name in exclude:
            continue
        meta, default = f.metadata, getattr(defaults, f.name)
        if meta["group"] not in groups:
            groups[meta["group"]] = parser.add_argument_group(meta["group"])
        kwargs = dict(meta["option"], dest=f.name, default=default)
        if isinstance(f.default, bool):
            kwargs.update(action="store_true", help=meta["help"])
        else:
            kwargs.setdefault("type", type(f.default))
            kwargs["help"] = f"{meta['help']} (default {_shown(default)})"
        groups[meta["group"]].add_argument(option_name(f.name), **kwargs)


def from_options(args: argparse.Namespace, *, defaults: Optional[FinetuneSettings] = None,
                 exclude=()) -> FinetuneSettings:
    """The settings of options made by add_options (excluded fields from `defaults`); a bad value raises the
    msrs.checks error with the option's name (--batch-size: ...)."""
    fields = dataclasses.fields(FinetuneSettings)
    try:
        values = {f.name: _from_option(f, getattr(args, f.name)) for f in fields if f.name not in exclude}
        return (FinetuneSettings() if defaults is None else defaults).replace(**values)
    except checks.ArgumentError as e:
        names, sep, rest = str(e).partition(": ")
        known = {f.name for f in fields}
        names = ", ".join(option_name(n) if n in known else n for n in names.split(", "))
        raise type(e)(names + sep + rest) from None


def _from_option(f: dataclasses.Field, value):
    return f.metadata["parse"](value) if f.metadata["parse"] else value


def _shown(value) -> str:
    if isinstance(value, (tuple, list)):
        return " ".join(_shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)
