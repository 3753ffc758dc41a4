"""The exponential moving average of the trained weights: what fine-tuning saves as its model.

After optimizer step k (1-based) the average moves with decay_k = min(ema_decay, (1 + k) / (10 + k)), the warm-up of
diffusers' EMAModel, so that a short fine-tune is not dominated by the initial weights.
"""
from __future__ import annotations

import copy

import torch

__all__ = ["average", "averaged_copy", "decay", "update"]


def average(model: torch.nn.Module) -> dict:
    """A new average, starting at the model's weights: {parameter name: tensor}."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def decay(step: int, ema_decay: float) -> float:
    """The decay applied after 0-based step `step` (k = step + 1 optimizer steps done)."""
    return min(ema_decay, (2.0 + step) / (11.0 + step))  # (1 + k) / (10 + k)


@torch.no_grad()
def update(ema: dict, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * the model's current weights."""
    for name, p in model.named_parameters():
        ema[name].mul_(decay).add_(p.detach(), alpha=1.0 - decay)


@torch.no_grad()
def averaged_copy(model: torch.nn.Module, ema: dict) -> torch.nn.Module:
    """A copy of `model` holding the averaged weights (the model is left as it is)."""
    out = copy.deepcopy(model)
    for name, param in out.named_parameters():
        param.copy_(ema[name])
    return out
