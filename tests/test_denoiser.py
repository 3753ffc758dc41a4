"""msrs.denoiser.DiffusionDenoiser: timestep rule, one-shot denoising against plain diffusers calls, persistence,
channels, autocast, errors. Nothing downloads: every model here is built locally (random weights) or is the shipped
demo DDPM in msrs/assets."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from msrs.denoiser import DiffusionDenoiser
from msrs.zoo import DDPM_NAME, asset_path

SIGMAS = (0.25, 0.5, 1.0)


def tiny_unet(channels: int = 1, size: int = 8, out_channels: int | None = None, seed: int = 0) -> UNet2DModel:
    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=out_channels or channels,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
    )
    return unet.eval()


def linear_scheduler(**kw) -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear", **kw)


def cosine_alphas_cumprod(steps: int = 4000, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """improved-diffusion's cosine schedule (Nichol & Dhariwal 2021): betas from alpha_bar(t) clipped at 0.999."""
    def alpha_bar(t):
        return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2

    betas = np.array([min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), max_beta) for i in range(steps)])
    return np.cumprod(1.0 - betas)


def reference_rule(alphas_cumprod, sigma: float) -> int:
    target = 1.0 / math.sqrt(1.0 + (2 * sigma) ** 2)
    return int(np.nonzero(np.sqrt(np.asarray(alphas_cumprod, dtype=np.float64)) <= target)[0][0])


@pytest.fixture(scope="module")
def den1() -> DiffusionDenoiser:
    return DiffusionDenoiser(tiny_unet(1), linear_scheduler())


# -- timestep rule ----------------------------------------------------------------------------------------------------
def test_timesteps_linear_1000(den1):
    got = [den1.timestep_for(s) for s in SIGMAS]
    assert [t for t, _ in got] == [145, 259, 396]
    abar = DDPMScheduler(num_train_timesteps=1000).alphas_cumprod.double()
    for (t, a), sigma in zip(got, SIGMAS):
        assert a == pytest.approx(float(abar[t].sqrt()), rel=1e-12)
        assert a <= 1 / math.sqrt(1 + 4 * sigma**2) < float(abar[t - 1].sqrt())
    # effective [-1, 1] noise levels of ENGINEERING.md: 0.5032, 1.0048, 2.0005
    assert [round(math.sqrt(1 - a * a) / a, 4) for _, a in got] == [0.5032, 1.0048, 2.0005]


def test_timesteps_cosine_4000():
    abar = cosine_alphas_cumprod()
    den = DiffusionDenoiser(tiny_unet(3, 32), torch.as_tensor(abar))
    assert [den.timestep_for(s)[0] for s in SIGMAS] == [1158, 1984, 2809]
    assert [reference_rule(abar, s) for s in SIGMAS] == [1158, 1984, 2809]


def test_timestep_accepts_tensor_and_int(den1):
    assert den1.timestep_for(torch.tensor(0.5))[0] == 259
    assert den1.timestep_for(1)[0] == 396


@pytest.mark.parametrize("sigma", [0.0, -0.25, float("nan"), float("inf"), 1e3])
def test_bad_sigma(den1, sigma):
    with pytest.raises(ValueError, match="sigma"):
        den1.timestep_for(sigma)


def test_max_sigma_is_the_edge(den1):
    top = den1.max_sigma()
    assert den1.timestep_for(top * 0.999)[0] == 999
    with pytest.raises(ValueError, match="sigma"):
        den1.timestep_for(top * 1.001)


# -- prediction type / construction errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
def test_refuses_non_epsilon(prediction):
    with pytest.raises(ValueError, match="epsilon"):
        DiffusionDenoiser(tiny_unet(1), linear_scheduler(prediction_type=prediction))


def test_refuses_non_epsilon_from_folder(tmp_path):
    tiny_unet(1).save_pretrained(str(tmp_path / "unet"))
    linear_scheduler(prediction_type="v_prediction").save_pretrained(str(tmp_path / "scheduler"))
    with pytest.raises(ValueError, match="prediction_type"):
        DiffusionDenoiser.from_pretrained(tmp_path)


def test_bad_inputs(den1):
    with pytest.raises(ValueError, match="channels"):
        den1.predict_eps(torch.zeros(2, 3, 8, 8), 10)
    with pytest.raises(ValueError, match="timesteps"):
        den1.predict_eps(torch.zeros(2, 1, 8, 8), 1000)
    with pytest.raises(ValueError, match="timesteps"):
        den1.predict_eps(torch.zeros(2, 1, 8, 8), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="autocast_dtype"):
        den1.predict_eps(torch.zeros(2, 1, 8, 8), 10, autocast_dtype=torch.float64)
    with pytest.raises(ValueError, match="out_channels"):
        DiffusionDenoiser(tiny_unet(1, out_channels=3), linear_scheduler())
    with pytest.raises(FileNotFoundError):
        DiffusionDenoiser.from_pretrained(asset_path("definitely_missing_model"))


# -- one-shot denoising equals plain diffusers ---------------------------------------------------------------------------
def diffusers_one_shot(unet, scheduler, x_noisy, sigma):
    """The same one-shot denoiser written with plain diffusers calls: DDPMScheduler.step's pred_original_sample
    (clip_sample=True, range 1) at the rule's timestep, mapped back to [0, 1]."""
    t = reference_rule(scheduler.alphas_cumprod.numpy(), sigma)
    a = float(scheduler.alphas_cumprod.double()[t].sqrt())
    x_t = a * (2 * x_noisy - 1)
    with torch.no_grad():
        eps = unet(x_t, torch.full((x_t.shape[0],), t)).sample[:, : x_t.shape[1]]
    out = scheduler.step(eps, t, x_t, generator=torch.Generator().manual_seed(0)).pred_original_sample
    return (out + 1) / 2


def noisy_batch(n, c, size, sigma, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, size, size, generator=g)
    return x, x + sigma * torch.randn(x.shape, generator=g)


@pytest.mark.parametrize("channels,size,out_factor", [(1, 8, 1), (3, 16, 1), (3, 8, 2)])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_one_shot_matches_diffusers(channels, size, out_factor, sigma):
    unet = tiny_unet(channels, size, out_channels=channels * out_factor)
    scheduler = linear_scheduler(clip_sample=True, clip_sample_range=1.0)
    den = DiffusionDenoiser(unet, scheduler).eval()
    _, x_noisy = noisy_batch(6, channels, size, sigma)
    with torch.no_grad():
        ours = den.denoise_noisy(x_noisy, sigma, backend="torch")
    ref = diffusers_one_shot(unet, scheduler, x_noisy, sigma)
    assert ours.shape == x_noisy.shape and ours.dtype == torch.float32
    assert float(ours.min()) >= 0 and float(ours.max()) <= 1
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=0)
    # the eps the engine sees: first C channels of the UNet output, fp32
    t, _ = den.timestep_for(sigma)
    eps = den.predict_eps(x_noisy, t)
    assert eps.shape == x_noisy.shape and eps.dtype == torch.float32


def test_default_backend_matches_torch(den1):
    _, x_noisy = noisy_batch(5, 1, 8, 0.5)
    with torch.no_grad():
        torch.testing.assert_close(den1.denoise_noisy(x_noisy, 0.5), den1.denoise_noisy(x_noisy, 0.5, backend="torch"),
                                   atol=1e-5, rtol=0)


def test_random_weights_give_nontrivial_eps(den1):
    # guard: the comparisons above are meaningless if the tiny UNet output were identically zero
    with torch.no_grad():
        eps = den1.predict_eps(torch.randn(4, 1, 8, 8), 200)
    assert float(eps.std()) > 1e-3


def test_shipped_ddpm_matches_diffusers():
    path = asset_path(DDPM_NAME)
    assert (path / "unet" / "config.json").is_file(), "the demo DDPM must ship in msrs/assets (scripts/train_ddpm.py)"
    den = DiffusionDenoiser.from_pretrained(path)
    unet = UNet2DModel.from_pretrained(str(path / "unet")).eval()
    scheduler = DDPMScheduler.from_pretrained(str(path / "scheduler"))
    assert scheduler.config.clip_sample and scheduler.config.clip_sample_range == 1.0
    for sigma, want in zip(SIGMAS, (145, 259, 396)):
        assert den.timestep_for(sigma)[0] == want
        _, x_noisy = noisy_batch(16, 1, 8, sigma, seed=1)
        with torch.no_grad():
            ours = den.denoise_noisy(x_noisy, sigma, backend="torch")
        torch.testing.assert_close(ours, diffusers_one_shot(unet, scheduler, x_noisy, sigma), atol=2e-5, rtol=0)


def test_engine_pipeline_equals_denoise_noisy(den1):
    """The DESIGN.md engine pipeline (sample_noisy with coeffs (sigma, 2a, -a), predict_eps, finalize_denoised)
    equals denoise_noisy on the same noise."""
    from msrs import ops
    from msrs.ops.philox import gaussian_noise

    sigma, seed, n = 0.5, 7, 4
    x, _ = noisy_batch(2, 1, 8, 0.0)
    t, a = den1.timestep_for(sigma)
    x_t = ops.add_noise(x, sigma, n, seed=seed, diffusion_scale=a, backend="torch")
    eps = den1.predict_eps(x_t, t)
    engine = ops.finalize_denoised(x_t, eps, a, backend="torch")
    ids = torch.arange(2).repeat_interleave(n)
    samples = torch.arange(n).repeat(2)
    noise = gaussian_noise(64, ids, samples, torch.zeros_like(ids), seed).reshape(-1, 1, 8, 8)
    x_noisy = x.repeat_interleave(n, 0) + sigma * noise
    with torch.no_grad():
        torch.testing.assert_close(engine, den1.denoise_noisy(x_noisy, sigma, backend="torch"), atol=2e-5, rtol=0)


# -- persistence -------------------------------------------------------------------------------------------------------
def test_save_load_roundtrip(tmp_path, den1):
    den1.save_pretrained(tmp_path / "model")
    assert (tmp_path / "model" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    config = json.loads((tmp_path / "model" / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "DDPMScheduler" and config["prediction_type"] == "epsilon"
    back = DiffusionDenoiser.from_pretrained(tmp_path / "model")
    assert not back.training
    assert (back.in_channels, back.sample_size, back.num_train_timesteps) == (1, 8, 1000)
    torch.testing.assert_close(back.alphas_cumprod, den1.alphas_cumprod, atol=0, rtol=0)
    _, x_noisy = noisy_batch(4, 1, 8, 0.25)
    with torch.no_grad():
        for sigma in SIGMAS:
            torch.testing.assert_close(back.denoise_noisy(x_noisy, sigma, backend="torch"),
                                       den1.denoise_noisy(x_noisy, sigma, backend="torch"), atol=0, rtol=0)


def test_load_unet_folder_with_scheduler_config_next_to_it(tmp_path):
    unet = tiny_unet(3)
    scheduler = linear_scheduler()
    unet.save_pretrained(str(tmp_path))
    scheduler.save_pretrained(str(tmp_path))
    assert (tmp_path / "config.json").is_file() and (tmp_path / "scheduler_config.json").is_file()
    den = DiffusionDenoiser.from_pretrained(tmp_path)
    ref = DiffusionDenoiser(unet, scheduler)
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(den.predict_eps(x, 300), ref.predict_eps(x, 300), atol=0, rtol=0)


def test_roundtrip_custom_schedule(tmp_path):
    abar = cosine_alphas_cumprod()
    den = DiffusionDenoiser(tiny_unet(1), torch.as_tensor(abar))
    den.save_pretrained(tmp_path)
    back = DiffusionDenoiser.from_pretrained(tmp_path)
    assert [back.timestep_for(s)[0] for s in SIGMAS] == [1158, 1984, 2809]
    # diffusers rebuilds the schedule from the saved betas in float32: equal to float32 rounding accumulated
    np.testing.assert_allclose(back.alphas_cumprod.double().numpy(), abar, rtol=1e-4)


# -- autocast / memory format / gradients --------------------------------------------------------------------------------
def test_bf16_autocast_close_to_fp32(den1):
    _, x_noisy = noisy_batch(8, 1, 8, 0.5)
    t, a = den1.timestep_for(0.5)
    x_t = a * (2 * x_noisy - 1)
    with torch.no_grad():
        e32 = den1.predict_eps(x_t, t)
        e16 = den1.predict_eps(x_t, t, autocast_dtype=torch.bfloat16)
        assert e16.dtype == torch.float32
        # measured: 1.1-1.2 % of max |eps| and 0.0065-0.0092 in the denoised image (3 seeds, AVX2 CPU, emulated
        # bf16): a few bf16 roundings (2^-8 each) through the UNet; the bounds are 2x that
        assert float((e16 - e32).abs().max()) <= 0.025 * float(e32.abs().max())
        bf = DiffusionDenoiser(den1.unet, linear_scheduler(), autocast_dtype=torch.bfloat16)
        d16, d32 = bf.denoise_noisy(x_noisy, 0.5, backend="torch"), den1.denoise_noisy(x_noisy, 0.5, backend="torch")
        assert 0 < float((d16 - d32).abs().max()) < 0.02


def test_channels_last_same_result():
    den = DiffusionDenoiser(tiny_unet(3, 16), linear_scheduler())
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        plain = den.predict_eps(x, 145)
        cl = den.predict_eps(x, 145, channels_last=True)
        again = den.predict_eps(x, 145, channels_last=False)
    torch.testing.assert_close(cl, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(again, plain, atol=1e-6, rtol=0)


def test_per_row_timesteps(den1):
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        rows = den1.predict_eps(x, torch.tensor([145, 259, 396]))
        for i, t in enumerate((145, 259, 396)):
            torch.testing.assert_close(rows[i : i + 1], den1.predict_eps(x[i : i + 1], t), atol=1e-5, rtol=0)


def test_denoise_noisy_is_differentiable():
    den = DiffusionDenoiser(tiny_unet(1), linear_scheduler()).train()
    _, x_noisy = noisy_batch(4, 1, 8, 0.5)
    out = den.denoise_noisy(x_noisy, 0.5)
    assert out.requires_grad
    out.square().mean().backward()
    grads = [p.grad for p in den.unet.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
