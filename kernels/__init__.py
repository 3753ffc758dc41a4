"""Triton kernels of msrs's three fused ops (installed as msrs.kernels; msrs.ops.triton_backend wraps them).

On a machine with a GPU
-----------------------
    python -m pytest -q tests/test_ops_triton.py     # kernels compiled for the GPU, on CUDA tensors, vs the reference
    python benchmarks/ops.py                         # op throughput per backend; includes "triton" on CUDA
    bash benchmarks/device_check.sh OUT              # everything above and more, in one run (docs/GPU.md)
Leave TRITON_INTERPRET unset there: the test module sets TRITON_INTERPRET=1 only when torch sees no GPU, and then
runs the same tests in the interpreter on CPU tensors (about 5 ms per program instance, so the tests use few
programs), plus a compile-only check of every kernel for sm_90. tests/test_ops.py also runs the triton backend on
CUDA tensors when there is a GPU (on CPU tensors: TRITON_INTERPRET=1 python -m pytest -q tests/test_ops.py).
What only a GPU can check: the atomics of count_votes_ under real concurrency (the interpreter runs
programs one after another, so races cannot show there), compiled fp32 math (log, sin, cos through libdevice;
the tests allow a few ulps), and speed. MSRS_TRITON_AUTOTUNE=1 times a few tile shapes of sample_noisy and
finalize_denoised on the first call per shape (never under the interpreter, never inside a CUDA graph capture);
by default one heuristic tile shape is used, so the first call costs only the compilation.

Modules
-------
  philox.py   Philox4x32-10 + Box-Muller device functions (the scheme of msrs.ops.philox), test hook philox_words
  noise.py    sample_noisy       clean images -> noisy samples, optionally scaled to a diffusion timestep
  denoise.py  finalize_denoised  x_t and the UNet's eps -> clamped, classifier-normalised denoised images
  votes.py    count_votes_       logits or class ids -> int64 vote counts, summed per program before one atomic
                                 per (row, class), no host sync

Triton versions: tested with 3.6 and 3.9 (pyproject's test extra). Public Triton API only in compiled code; in the
interpreter Triton's private reduction combines are used when present, for speed (msrs.kernels.votes).

Each launcher takes the reference's arguments (msrs/ops/reference.py is the contract) on contiguous tensors of one
device; argument checks are done once by msrs.ops.
"""
import os

import torch
import triton
import triton.language as tl


@triton.jit
def _decoration_probe():
    pass


INTERPRET: bool = not isinstance(_decoration_probe, triton.JITFunction)
"""True when the kernels below were decorated under TRITON_INTERPRET=1 (they then run on CPU tensors, and on CUDA
tensors through host copies). Read off what triton.jit returned (a JITFunction when kernels are compiled, an
interpreted function otherwise), so it states what Triton decided, through public names only (triton.knobs exists
only from Triton 3.4). Decided once, when msrs.kernels is imported."""

AUTOTUNE_ENV = "MSRS_TRITON_AUTOTUNE"


class launch_config:  # noqa: N801 - a namespace of the launch heuristics shared by the kernels
    """Tile shapes. The interpreter costs ~5 ms per program whatever its size, so it gets one large tile."""

    _best: dict = {}

    @staticmethod
    def tile_groups() -> int:
        """Philox groups (4 elements each) per sample_noisy program."""
        return 4096 if INTERPRET else 512

    @staticmethod
    def noise_configs() -> list[tuple[int, int]]:
        """(groups per program, num_warps) candidates for sample_noisy; the first is the default."""
        if INTERPRET:
            return [(4096, 4)]
        return [(512, 4), (256, 4), (1024, 8), (512, 8)]

    @staticmethod
    def elementwise_configs() -> list[tuple[int, int]]:
        """(elements per program, num_warps) candidates for finalize_denoised; the first is the default."""
        if INTERPRET:
            return [(16384, 4)]
        return [(4096, 4), (2048, 4), (8192, 8), (4096, 8)]

    @staticmethod
    def votes_tile() -> int:
        """Logits per count_votes_ program and class chunk (never autotuned: the op adds in place)."""
        return 16384 if INTERPRET else 4096

    @classmethod
    def run_tuned(cls, key, configs, launch) -> None:
        """launch(*config) with the default config, or, with MSRS_TRITON_AUTOTUNE=1 on a GPU, the fastest of
        `configs` for `key` (timed once, then cached). Only for ops whose output does not depend on how often
        they run (the timing runs them several times). Never times inside a CUDA graph capture: do_bench
        synchronises and launches each config many times, which a capture refuses or records into the graph;
        there the cached config runs, or the default one (and the timing waits for a call outside a capture)."""
        configs = list(dict.fromkeys(configs))
        if INTERPRET or len(configs) == 1 or os.environ.get(AUTOTUNE_ENV) != "1":
            launch(*configs[0])
            return
        best = cls._best.get(key)
        if best is None:
            if stream_capturing():
                launch(*configs[0])
                return
            from triton.testing import do_bench

            timings = [(do_bench(lambda c=c: launch(*c), warmup=5, rep=20), i) for i, c in enumerate(configs)]
            best = cls._best[key] = configs[min(timings)[1]]
        launch(*best)


def stream_capturing() -> bool:
    """True while the current CUDA stream is capturing a CUDA graph (False without CUDA)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


@triton.jit
def cast_rne(value, dtype: tl.constexpr):
    """fp32 `value` rounded to `dtype` to nearest even, as torch's .to() does. For bfloat16 the rounding is written
    out in integer ops (torch's round-to-nearest-even): the interpreter's own fp32 -> bf16 cast truncates, while
    the compiled one rounds, and the two must agree with the reference."""
    if dtype == tl.bfloat16:
        bits = value.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(value != value, 0x7FC0, rounded)  # NaN stays a (quiet) NaN
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return value.to(dtype)


from .denoise import finalize_denoised  # noqa: E402
from .noise import sample_noisy  # noqa: E402
from .votes import count_votes_  # noqa: E402

__all__ = ["INTERPRET", "cast_rne", "count_votes_", "finalize_denoised", "sample_noisy", "triton"]
