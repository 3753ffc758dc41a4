"""msrs.compiled: static-batch padding, and the engine with compile=True giving the eager engine's votes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from msrs.compiled import StaticBatch, compile_model
from msrs.denoiser import DiffusionDenoiser
from msrs.smoothing import SmoothedClassifier

pytest.importorskip("diffusers")
from diffusers import UNet2DModel  # noqa: E402
from test_denoiser import linear_scheduler  # noqa: E402


def tiny_unet() -> UNet2DModel:
    """Small and without attention: compiling it takes seconds, not a minute."""
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()


def rowwise(x, t=None):
    """A per-row function whose output reveals the batch it ran in (rows) and each row's value."""
    out = x.flatten(1).sum(1, keepdim=True) * 2.0
    return torch.cat([out, torch.full_like(out, float(x.shape[0]))], 1)


def test_static_batch_pads_and_cuts_back():
    calls = []

    def fn(x, t):
        calls.append(x.shape[0])
        return rowwise(x) + t[:, None]

    wrapped = StaticBatch(fn)
    x, t = torch.randn(8, 3, 2, 2), torch.arange(8.0)
    full = wrapped(x, t)
    part = wrapped(x[:3], t[:3])
    assert calls == [8, 8] and wrapped.size == 8  # the short batch ran at the compiled size
    assert part.shape == (3, 2)
    torch.testing.assert_close(part, full[:3], rtol=0, atol=0)  # same rows, same values, batch column = 8
    wrapped(torch.randn(10, 3, 2, 2), torch.arange(10.0))
    assert wrapped.size == 10  # a larger batch raises the size (one recompile)
    assert wrapped(x[:0], t[:0]).shape[0] == 0


def test_static_batch_drops_to_the_given_size_on_out_of_memory():
    def fn(x):
        if x.shape[0] > 4:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return rowwise(x)

    wrapped = StaticBatch(fn, size=8)
    out = wrapped(torch.ones(3, 1, 2, 2))
    assert wrapped.size == 3 and out.shape == (3, 2)
    with pytest.raises(RuntimeError, match="out of memory"):  # an unpadded batch that does not fit propagates
        wrapped(torch.ones(6, 1, 2, 2))


def test_static_batch_passes_other_errors():
    def fn(x):
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        StaticBatch(fn, size=8)(torch.ones(3, 1))


def test_compile_model_rejects_torchscript():
    scripted = torch.jit.script(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="compile: a TorchScript model"):
        compile_model(scripted, "cpu")


class TinyClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                 nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


def test_engine_compiled_equals_eager():
    """fp32: the compiled classifier + UNet give exactly the eager engine's votes, whatever the batch size (the
    tails are padded to the compiled shape), and gradients still flow through the eager UNet."""
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def engine(compile_):
        den = DiffusionDenoiser(tiny_unet(), linear_scheduler()).eval()
        return den, SmoothedClassifier(TinyClassifier().eval(), 10, denoiser=den, mean=0.5, std=0.25,
                                       compile=compile_)

    _, eager = engine(False)
    den, compiled = engine(True)
    expected = eager.sample_counts(x, None, 0.5, 50, stream=1, seed=7, batch_size=64)
    for batch_size in (64, 25):  # 150 rows: 64, 64, 22 (padded to 64); then batches of 25, all padded to 64
        got = compiled.sample_counts(x, None, 0.5, 50, stream=1, seed=7, batch_size=batch_size)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert den._static_eps is not None and den._static_eps.size == 64
    x_t = torch.randn(2, 1, 8, 8, requires_grad=True)
    den.predict_eps(x_t, 10).sum().backward()  # with gradients: the eager UNet (fine-tuning keeps working)
    assert x_t.grad is not None and den._static_eps.size == 64


def test_compile_needs_a_compilable_denoiser():
    class Bare:
        in_channels = 1

        def timestep_for(self, sigma):
            return 10, 0.9

        def predict_eps(self, x_t, t):
            return torch.zeros_like(x_t)

    with pytest.raises(TypeError, match="compile: the denoiser"):
        SmoothedClassifier(TinyClassifier(), 10, denoiser=Bare(), compile=True)


def test_denoiser_compile_refuses_channels_last():
    den = DiffusionDenoiser(tiny_unet(), linear_scheduler(), channels_last=True)
    with pytest.raises(ValueError, match="channels_last"):
        den.compile_for_inference()
