"""torch.compile for the sampling loop: one static batch shape, compiled once.

The engine feeds the models full batches of `batch_size` rows and, at the end of every sampling call, one shorter
tail batch whose size varies from call to call (group sizes, sequential rounds). Compiling every shape would
recompile for each new tail (about 20 s for the demo UNet on a CPU), and torch.compile's automatic dynamic shapes
fall back to a graph that is slower than eager here (measured on the demo UNet, bf16, 2 cores: static 0.14 s,
dynamic 0.22 s, eager 0.17 s per 1000 samples). So StaticBatch pads a short batch up to the size it compiled for,
by repeating its first row (a valid input, whatever the model's domain), and returns the rows it was given. Every
row goes through the same kernels whatever the batch holds (the models here act on each sample separately: convs,
GroupNorm, eval-mode BatchNorm), so results do not depend on the batch size or on how a run is resumed.

compile_model(module, device) picks the settings: on a CPU inductor's `freezing` (weights become constants, so
conv weights are pre-packed for oneDNN and conv + bias + activation fuse: 0.17 -> 0.14 s per 1000 demo-UNet
samples in bf16); on CUDA mode="reduce-overhead", i.e. CUDA graphs, replayable because the shape never changes
(not run here: no GPU was available when this was written). Compile after moving the model to its device, and
only for inference: freezing assumes the weights do not change after the first call.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .autobatch import is_out_of_memory

__all__ = ["StaticBatch", "compile_model"]


def compile_model(module: Callable, device) -> Callable:
    """torch.compile(module) with static shapes and the device's inference settings (module docstring)."""
    if isinstance(module, torch.jit.ScriptModule):
        raise ValueError("compile: a TorchScript model cannot be compiled by torch.compile; load it as "
                         "module:factory with weights, or as a torch.export .pt2 program")
    device = torch.device(device)
    if device.type == "cuda":
        return torch.compile(module, dynamic=False, mode="reduce-overhead")
    return torch.compile(module, dynamic=False, options={"freezing": True})


class StaticBatch:
    """Calls `fn(*inputs)` (tensors with the same leading batch dimension, output a tensor [N, ...]) always with
    `size` rows: shorter batches are padded by repeating their first row and the output is cut back.

    size: the first batch's size, raised when a larger batch comes (one recompile). If a padded call runs out of
    memory the size drops to the batch actually given and the call is retried unpadded, so msrs.autobatch's
    halving still finds a batch that fits."""

    def __init__(self, fn: Callable, size: int | None = None):
        self.fn = fn
        self.size = size

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        rows = inputs[0].shape[0]
        if self.size is None or rows > self.size:
            self.size = rows
        if rows == self.size or rows == 0:
            return self.fn(*inputs)
        try:
            return self.fn(*(_pad(t, self.size) for t in inputs))[:rows]
        except Exception as err:
            if not is_out_of_memory(err):
                raise
        self.size = rows
        return self.fn(*inputs)


def _pad(t: torch.Tensor, size: int) -> torch.Tensor:
    extra = t[:1].expand(size - t.shape[0], *t.shape[1:])
    return torch.cat([t, extra]).contiguous(memory_format=_memory_format(t))


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
