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
(not run on a GPU yet: none was available when this was written). Compile after moving the model to its device,
and only for inference: freezing assumes the weights do not change after the first call.

Output ownership. A CUDA graph writes its outputs into memory it owns and its next replay writes there again (in
inference, every call of a compiled function starts a new "generation" whose replay may reuse the previous one's
output memory; torch raises "accessing tensor output of CUDAGraphs that has been overwritten" at best). So the
CUDA-mode callable that compile_model returns is marked `returns_graph_memory`, and StaticBatch copies what leaves
each call of such a function (only the rows asked for) into memory the caller owns: results held across calls
(eps while the classifier runs, logits while votes are counted, anything a caller keeps) are never overwritten.
The copy is one read and write of the output, small next to the model that made it.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .autobatch import is_out_of_memory

__all__ = ["GraphOutputs", "StaticBatch", "compile_model"]


def compile_model(module: Callable, device) -> Callable:
    """torch.compile(module) with static shapes and the device's inference settings (module docstring)."""
    if isinstance(module, torch.jit.ScriptModule):
        raise ValueError("compile: a TorchScript model cannot be compiled by torch.compile; load it as "
                         "module:factory with weights, or as a torch.export .pt2 program")
    device = torch.device(device)
    if device.type == "cuda":
        return GraphOutputs(torch.compile(module, dynamic=False, mode="reduce-overhead"))
    return torch.compile(module, dynamic=False, options={"freezing": True})


class GraphOutputs:
    """`fn` (a CUDA-graph compiled callable) marked as returning memory that its next call overwrites; StaticBatch
    copies such outputs before they leave it (module docstring)."""

    returns_graph_memory = True

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, *inputs):
        return self.fn(*inputs)


class StaticBatch:
    """Calls `fn(*inputs)` (tensors with the same leading batch dimension, output a tensor [N, ...]) always with
    `size` rows: shorter batches are padded by repeating their first row and the output is cut back.

    size: fixed up front (or by reserve() before the first call), else the first batch's size; raised when a
    larger batch comes (one recompile). If a padded call runs out of memory the size drops to the batch actually
    given and the call is retried unpadded, so msrs.autobatch's halving still finds a batch that fits.
    When fn.returns_graph_memory is true (compile_model on CUDA) the returned rows are a copy the caller owns."""

    def __init__(self, fn: Callable, size: int | None = None):
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"size: expected a positive int or None, got {size!r}")
        self.fn = fn
        self.size = size
        self.copies_outputs = bool(getattr(fn, "returns_graph_memory", False))

    def reserve(self, size: int) -> None:
        """Run at least `size` rows per call from now on: set before the first call (e.g. to the engine's batch
        size), a smaller first batch (a one-sample probe) is padded to it rather than compiled at its own shape."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size: expected a positive int, got {size!r}")
        self.size = size if self.size is None else max(self.size, size)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        rows = inputs[0].shape[0]
        if self.size is None or rows > self.size:
            self.size = rows
        if rows == self.size or rows == 0:
            return self._owned(self.fn(*inputs))
        try:
            return self._owned(self.fn(*(_pad(t, self.size) for t in inputs))[:rows])
        except Exception as err:
            if not is_out_of_memory(err):
                raise
        self.size = rows
        return self._owned(self.fn(*inputs))

    def _owned(self, out: torch.Tensor) -> torch.Tensor:
        return out.clone() if self.copies_outputs else out


def _pad(t: torch.Tensor, size: int) -> torch.Tensor:
    extra = t[:1].expand(size - t.shape[0], *t.shape[1:])
    return torch.cat([t, extra]).contiguous(memory_format=_memory_format(t))


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
