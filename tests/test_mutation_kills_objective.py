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
