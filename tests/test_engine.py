"""msrs.engine and the procedures over it: --compile builds one graph per model for a whole run (probe, groups of
every size, tails, cascade stages), whatever the calls' row counts."""
from __future__ import annotations

import collections

import pytest
import torch
from torch import nn

import msrs.compiled
from msrs.data import ImageDataset
from msrs.denoiser import DiffusionDenoiser
from msrs.runner import certify_dataset
from msrs.smoothing import SmoothedClassifier

pytest.importorskip("diffusers")
from diffusers import UNet2DModel  # noqa: E402
from test_denoiser import linear_scheduler  # noqa: E402


class TinyClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                 nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


def tiny_unet() -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()


def test_compile_builds_one_graph_per_model(tmp_path, monkeypatch):
    """A whole resumable cascade run with compile=True: the pipeline check (1 row), groups of 2 images and a last
    group of 1, three stages whose calls have different row counts, all padded to one static batch. A counting
    torch.compile backend (eager kernels, so the test is fast) records every graph dynamo hands over; each model
    must be traced once. Before the engine fixed the static size up front, the probe's batch of 1 built a second
    graph per model (and every larger call raised the size: one more)."""
    graphs = collections.Counter()

    def counting_compile(module, device):
        name = type(module).__name__

        def backend(gm, example_inputs):
            graphs[name] += 1
            return gm.forward

        return torch.compile(module, dynamic=False, backend=backend)

    monkeypatch.setattr(msrs.compiled, "compile_model", counting_compile)
    torch._dynamo.reset()
    denoiser = DiffusionDenoiser(tiny_unet(), linear_scheduler()).eval()
    smoothed = SmoothedClassifier(TinyClassifier().eval(), 3, denoiser=denoiser, compile=True)
    images = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    data = ImageDataset(images, torch.tensor([0, 1, 2, 0, 1]), 3, "tiny")
    certify_dataset(smoothed, data, tmp_path / "run.tsv", sigmas=[0.5, 0.25, 0.12], n0=8, n=40, alpha=0.1,
                    batch_size=64, group_size=2, progress=False)
    assert dict(graphs) == {"_EpsNetwork": 1, "TinyClassifier": 1}, dict(graphs)


class MeanThreshold(nn.Module):
    """Votes class 1 when the mean of its input's upper-left quarter exceeds 0.5, and records the input shapes: a
    classifier whose votes depend on where the resize puts the pixels."""

    def __init__(self):
        super().__init__()
        self.shapes = set()

    def forward(self, x):
        self.shapes.add(tuple(x.shape[1:]))
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        score = x[..., :h, :w].mean(dim=(1, 2, 3)) - 0.5
        return torch.stack((-score, score), dim=1)


@pytest.mark.parametrize("mode", [("bicubic", True), ("bilinear", False), ("nearest", False)])
def test_declared_input_size_resizes_before_the_classifier(mode):
    """input_size: the noisy image is resized to (12, 20) before the classifier, with the declared filter; the
    votes equal an independent pipeline built from the noise op and torch's interpolate (noise -> resize ->
    classify), and the normalisation (folded into the noise op) commutes with the resize."""
    x = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    classifier = MeanThreshold()
    smoothed = SmoothedClassifier(classifier, 2, mean=0.25, std=0.5, input_size=(12, 20), resize_mode=mode,
                                  backend="torch")
    counts = smoothed.sample_counts(x, None, 0.3, 64, stream=1, seed=5, batch_size=50)
    assert classifier.shapes == {(1, 12, 20)}
    from msrs import ops

    noisy = ops.add_noise(x, 0.3, 64, seed=5, stream=1, backend="torch")
    corners = False if mode[0] in ("bilinear", "bicubic") else None
    resized = torch.nn.functional.interpolate(noisy, size=(12, 20), mode=mode[0], antialias=mode[1],
                                              align_corners=corners)
    votes = MeanThreshold()((resized - 0.25) / 0.5).argmax(1).view(2, 64)
    expected = torch.stack([torch.bincount(v, minlength=2) for v in votes])
    torch.testing.assert_close(counts, expected, rtol=0, atol=0)
    assert 0 < int(counts[:, 1].sum()) < 128  # both classes get votes: the comparison can tell pipelines apart
