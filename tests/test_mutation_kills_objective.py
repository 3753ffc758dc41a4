"""msrs/finetune/objective.py: tests written for the survivors of scripts/mutation.py (docs/MUTATION.md) on the
tiny models of tests/test_finetune.py; the mutant each one kills is named in its docstring."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from msrs import finetune as ft
from msrs.ops.philox import MASK32

from test_finetune import SIGMAS, tiny_classifier, tiny_data, tiny_denoiser


def test_objective_takes_the_last_step_of_the_noise_counter():
    """The noise counter holds sample indices 0 .. 2^32 - 1: with M = 2 samples per image, step 2^31 - 1 uses
    indices 2^32 - 2 and 2^32 - 1 (the last ones, allowed) and step 2^31 would wrap (refused). Kills `step * m +
    m + 1 > MASK32`, which refused the last step."""
    den, clf = tiny_denoiser(), tiny_classifier()
    images, labels = tiny_data(2)
    kw = dict(sigmas=SIGMAS[:1], samples_per_image=2, backend="torch")
    last = (MASK32 + 1) // 2 - 1
    total, _ = ft.calibration_loss(den, clf, images, labels, torch.arange(2), step=last, **kw)
    assert torch.isfinite(total)
    with pytest.raises(ValueError, match="step"):
        ft.calibration_loss(den, clf, images, labels, torch.arange(2), step=last + 1, **kw)


def test_objective_is_float32_for_a_classifier_with_float64_logits():
    """The logits are brought to float32 before the loss (kills deleting logits.to(torch.float32)): a classifier
    that answers in float64 still gives a float32 objective."""
    inner = tiny_classifier()

    class Float64Logits(torch.nn.Module):
        def forward(self, x):
            return inner(x).to(torch.float64)

    images, labels = tiny_data(2)
    total, terms = ft.calibration_loss(tiny_denoiser(), Float64Logits(), images, labels, torch.arange(2),
                                       sigmas=SIGMAS[:1], samples_per_image=2, backend="torch")
    assert total.dtype == torch.float32 and isinstance(terms["brier"], float)


def test_objective_timesteps_are_int64_whatever_type_the_denoiser_gives_t_in():
    """The timesteps passed to predict_eps are int64 (kills dropping dtype=torch.int64): a denoiser whose
    timestep_for returns t as a numpy int32 (as one computed with numpy would) still gets int64 timesteps."""
    den = tiny_denoiser()
    seen = []
    timestep_for, predict_eps = den.timestep_for, den.predict_eps

    def numpy_timestep_for(sigma):
        t, a = timestep_for(sigma)
        return np.int32(t), a

    def recording_predict_eps(x_t, timesteps, **kw):
        seen.append(timesteps.dtype)
        return predict_eps(x_t, timesteps.to(torch.int64), **kw)

    den.timestep_for, den.predict_eps = numpy_timestep_for, recording_predict_eps
    images, labels = tiny_data(2)
    ft.calibration_loss(den, tiny_classifier(), images, labels, torch.arange(2), sigmas=SIGMAS[:1],
                        samples_per_image=2, backend="torch")
    assert seen == [torch.int64]


def test_objective_refuses_a_step_past_the_counter_with_one_sample_per_image():
    """M = 1: step 2^32 - 1 uses the last index, step 2^32 would wrap (kills `step * m + m - 2`)."""
    den, clf = tiny_denoiser(), tiny_classifier()
    images, labels = tiny_data(2)
    kw = dict(sigmas=SIGMAS[:1], samples_per_image=1, backend="torch")
    ft.calibration_loss(den, clf, images, labels, torch.arange(2), step=MASK32, **kw)
    with pytest.raises(ValueError, match="step"):
        ft.calibration_loss(den, clf, images, labels, torch.arange(2), step=MASK32 + 1, **kw)


def test_objective_default_step_is_zero_and_autocast_reaches_a_denoiser_that_takes_it():
    """The default step is 0 (kills step = 1): the noisy inputs are those of sample indices 0 .. M - 1, the same
    as step=0's, computed here by msrs.ops.add_noise directly; and a denoiser whose predict_eps takes
    autocast_dtype receives the run's setting, None included (kills the misspelt parameter test)."""
    from msrs import ops, streams

    den = tiny_denoiser()
    images, labels = tiny_data(2)
    seen = []
    predict_eps = den.predict_eps

    def recording(x_t, timesteps, *, autocast_dtype="default"):  # the module default, if not passed
        seen.append((x_t.detach().clone(), autocast_dtype))
        return predict_eps(x_t, timesteps, autocast_dtype=autocast_dtype)

    den.predict_eps = recording
    ft.calibration_loss(den, tiny_classifier(), images, labels, torch.arange(2), sigmas=SIGMAS[:1],
                        samples_per_image=2, backend="torch", seed=4)
    (x_t, autocast), = seen
    assert autocast is None
    scale = den.timestep_for(SIGMAS[0])[1]
    expected = ops.add_noise(images, [SIGMAS[0]], 2, seed=4, image_ids=torch.arange(2), sample_start=0,
                             stream=streams.finetune(0), diffusion_scale=[scale], out_dtype=torch.float32,
                             backend="torch")
    assert torch.equal(x_t, expected)


def _loss(images, labels, **kw):
    kw = {"sigmas": SIGMAS[:2], "samples_per_image": 2, "backend": "torch", "seed": 4, **kw}
    return ft.calibration_loss(kw.pop("denoiser", None) or tiny_denoiser(), kw.pop("classifier", None) or
                               tiny_classifier(), images, labels, torch.arange(len(labels)), **kw)


def test_objective_takes_sigmas_from_any_iterable():
    """sigmas may be a generator (read once): the same objective as the tuple (kills deleting `sigmas = [float(s)
    for s in sigmas]`, after which the timestep schedule consumes the generator and the noise gets none)."""
    images, labels = tiny_data(2)
    _, want = _loss(images, labels)
    _, got = _loss(images, labels, sigmas=(s for s in SIGMAS[:2]))
    assert got == want


def test_objective_sends_no_gradient_to_the_images():
    """The noisy inputs and the eps target are data: the objective's gradient reaches the UNet, never the images,
    even when the caller's images require grad (kills dropping @torch.no_grad() from _noisy_inputs, after which
    the target eps* = (x_t - a (2 x - 1)) / sqrt(1 - a^2) carries a gradient back to x)."""
    images, labels = tiny_data(2)
    images.requires_grad_(True)
    den = tiny_denoiser()
    total, _ = _loss(images, labels, denoiser=den)
    total.backward()
    assert images.grad is None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in den.parameters())


def test_objective_of_float64_images_is_that_of_their_float32_values():
    """Images given in float64 (values exact in float32) give the float32 objective: the noisy inputs are made in
    float32 (kills dropping out_dtype=torch.float32 from add_noise, after which x_t follows the images' float64
    and the float32 UNet refuses it, or the terms change)."""
    images, labels = tiny_data(2)
    _, want = _loss(images, labels)
    total, got = _loss(images.to(torch.float64), labels)
    assert got == want and total.dtype == torch.float32


def test_objective_does_not_depend_on_torchs_default_dtype():
    """Under torch.set_default_dtype(torch.float64) (common in scientific code) the objective is the float32 one,
    bit for bit (kills dropping dtype=torch.float32 from the diffusion scales' tensor, which then follows the
    default dtype into the coefficients and the eps target)."""
    images, labels = tiny_data(2)
    den, clf = tiny_denoiser(), tiny_classifier()
    total_32, want = _loss(images, labels, denoiser=den, classifier=clf)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        total_64, got = _loss(images, labels, denoiser=den, classifier=clf)
    finally:
        torch.set_default_dtype(previous)
    assert got == want and total_64.dtype == total_32.dtype == torch.float32


def test_objective_mse_on_rgb_images_is_against_the_noise_of_each_channel(monkeypatch):
    """The eps-MSE term on 3-channel images, written out from the recorded noisy inputs as in test_finetune.py's
    1-channel test (kills repeating the clean image along the channel axis: with one channel the doubled copy
    only repeats the same values, with three it no longer matches x_t)."""
    from diffusers import DDPMScheduler, UNet2DModel

    from msrs.denoiser import DiffusionDenoiser
    from msrs.finetune import objective

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    den = DiffusionDenoiser(unet, DDPMScheduler(num_train_timesteps=1000)).eval()
    clf = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(4 * 64, 10)).eval()
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    labels, m, seen = torch.tensor([3, 7]), 2, []
    original = objective._predict_eps

    def record(denoiser, x_t, timesteps, autocast):
        seen.append((x_t.detach().clone(), timesteps.clone()))
        return original(denoiser, x_t, timesteps, autocast)

    monkeypatch.setattr(objective, "_predict_eps", record)
    _, terms = _loss(images, labels, denoiser=den, classifier=clf, samples_per_image=m)
    (x_t, timesteps), = seen
    a = torch.tensor([den.timestep_for(s)[1] for s in SIGMAS[:2]], dtype=torch.float64).repeat_interleave(2 * m)
    a = a[:, None, None, None]
    clean = torch.cat([(2 * images.double() - 1).repeat_interleave(m, dim=0)] * 2)
    target = (x_t.double() - a * clean) / torch.sqrt(1 - a * a)
    with torch.no_grad():
        eps = den.predict_eps(x_t, timesteps).double()
    assert terms["mse"] == pytest.approx((eps - target).square().mean().item(), rel=1e-4)


def test_objective_runs_a_denoiser_whose_predict_eps_has_no_readable_signature():
    """A predict_eps whose signature inspect cannot read (a callable object with a broken __signature__, as some
    C extensions and wrappers have) is called without the autocast_dtype argument (kills assuming it takes one
    when the signature cannot be read)."""
    den = tiny_denoiser()
    inner, calls = den.predict_eps, []

    class Opaque:
        __signature__ = "not a signature"  # inspect.signature raises TypeError

        def __call__(self, x_t, timesteps):
            calls.append(x_t.shape[0])
            return inner(x_t, timesteps)

    den.predict_eps = Opaque()
    images, labels = tiny_data(2)
    total, _ = _loss(images, labels, denoiser=den)
    assert torch.isfinite(total) and calls == [2 * 2 * 2]


def test_objective_makes_its_own_tensors_on_the_images_device():
    """Under another default device (torch.device("meta") as a context: a tensor made without device= lands there,
    as it would on the GPU under torch.set_default_device("cuda")) the objective of CPU images is unchanged: every
    tensor it makes is put on the images' device (kills dropping device= from the default mean and std, the
    timesteps and the diffusion scales; these were listed as GPU-only equivalents before)."""
    images, labels = tiny_data(2)
    den, clf = tiny_denoiser(), tiny_classifier()
    ids = torch.arange(2)
    kw = {"sigmas": SIGMAS[:2], "samples_per_image": 2, "backend": "torch", "seed": 4}
    _, want = ft.calibration_loss(den, clf, images, labels, ids, **kw)
    with torch.device("meta"):
        _, got = ft.calibration_loss(den, clf, images, labels, ids, **kw)
    assert got == want
