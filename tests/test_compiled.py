"""msrs.compiled: static-batch padding, and the engine with compile=True giving the eager engine's votes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from msrs.compiled import GraphOutputs, StaticBatch, compile_model
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


class GraphLike:
    """CPU stand-in for a CUDA-graph replay: every call writes its result into the same buffer and returns (a view
    of) that buffer, as a replayed graph returns its static outputs; marked the way compile_model marks its CUDA
    callable."""

    returns_graph_memory = True

    def __init__(self):
        self.buffer = None
        self.calls = 0

    def __call__(self, x):
        out = rowwise(x)
        if self.buffer is None or self.buffer.shape != out.shape:
            self.buffer = torch.empty_like(out)
        self.buffer.copy_(out)
        self.calls += 1
        return self.buffer


def test_static_batch_copies_graph_owned_outputs():
    """A result kept by the caller survives the next calls (which overwrite the graph's buffer), full or padded."""
    graph = GraphLike()
    wrapped = StaticBatch(graph)
    assert wrapped.copies_outputs
    x1, x2 = torch.randn(6, 2, 2), torch.randn(6, 2, 2) + 5.0
    first = wrapped(x1)
    second = wrapped(x2)
    short = wrapped(x1[:2])  # padded to 6 rows, cut back to 2
    wrapped(x2)
    assert graph.calls == 4 and torch.equal(graph.buffer, rowwise(x2))
    torch.testing.assert_close(first, rowwise(x1), rtol=0, atol=0)
    torch.testing.assert_close(second, rowwise(x2), rtol=0, atol=0)
    torch.testing.assert_close(short, rowwise(x1)[:2], rtol=0, atol=0)  # batch column 6: it ran padded
    assert first.data_ptr() != graph.buffer.data_ptr()
    # a function that returns fresh tensors is not copied (CPU freezing, eager)
    assert not StaticBatch(rowwise).copies_outputs


def test_compile_model_marks_cuda_graph_outputs():
    """compile_model's CUDA mode (reduce-overhead: CUDA graphs) is marked as returning graph memory, so the engine's
    StaticBatch copies its outputs; the CPU mode is not. torch.compile is lazy: nothing compiles or runs here."""
    net = nn.Linear(2, 2)
    cuda = compile_model(net, "cuda")
    assert isinstance(cuda, GraphOutputs) and StaticBatch(cuda).copies_outputs
    assert not StaticBatch(compile_model(net, "cpu")).copies_outputs


def test_static_batch_reserve_pads_a_smaller_first_batch():
    calls = []

    def fn(x):
        calls.append(x.shape[0])
        return rowwise(x)

    wrapped = StaticBatch(fn)
    wrapped.reserve(8)
    out = wrapped(torch.ones(1, 3))  # a one-sample probe runs at the reserved size: one shape, one graph
    assert calls == [8] and out.shape == (1, 2) and float(out[0, 1]) == 8.0
    wrapped.reserve(4)  # never lowers it
    assert wrapped.size == 8
    with pytest.raises(ValueError, match="^size:"):
        wrapped.reserve(0)
    with pytest.raises(ValueError, match="^size:"):
        StaticBatch(fn, size=-1)


cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


@cuda_only
def test_cuda_graph_outputs_survive_the_next_replay():
    """On a GPU: outputs of compile_model's CUDA-graph mode, held while the graph is replayed on other inputs, keep
    their values (without the copy they would be overwritten, or torch would refuse to read them)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.SiLU(), nn.Flatten(),
                        nn.Linear(8 * 16, 10)).cuda().eval()
    wrapped = StaticBatch(compile_model(net, "cuda"))
    x1 = torch.randn(16, 3, 4, 4, device="cuda")
    x2 = torch.randn(16, 3, 4, 4, device="cuda") * 3 + 1
    with torch.inference_mode():
        e1, e2 = net(x1), net(x2)
        held = [wrapped(x1), wrapped(x2), wrapped(x1[:5]), wrapped(x2), wrapped(x1), wrapped(x2)]
        torch.cuda.synchronize()
    for got, expected in zip(held, (e1, e2, e1[:5], e2, e1, e2)):
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
    assert wrapped.size == 16


@cuda_only
def test_engine_compiled_equals_eager_on_cuda():
    """fp32 on a GPU: the CUDA-graph compiled classifier + UNet give the eager engine's votes, tails padded."""
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def engine(compile_):
        den = DiffusionDenoiser(tiny_unet(), linear_scheduler()).cuda().eval()
        return SmoothedClassifier(TinyClassifier().cuda().eval(), 10, denoiser=den, mean=0.5, std=0.25,
                                  device="cuda", compile=compile_)

    eager, compiled = engine(False), engine(True)
    expected = eager.sample_counts(x, None, 0.5, 200, stream=1, seed=7, batch_size=256)
    for batch_size in (256, 100):  # 600 rows: 256, 256, 88 (padded); then batches of 100, padded to 256
        got = compiled.sample_counts(x, None, 0.5, 200, stream=1, seed=7, batch_size=batch_size)
        assert got.device.type == "cuda"
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


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
