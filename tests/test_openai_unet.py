"""OpenAI-format (improved-/guided-diffusion) denoisers: the published architectures' key lists, the network's
outputs against the public code, the timestep conventions, learned variance and the x0 formula, loading through
load_denoiser, key-mismatch and unsafe-pickle refusals, the 224-in-256 frame, and (issue 10) the scheduler class
allow-list of diffusers folders.

Test data (tests/data/, made from the public repositories, see the headers / metadata; no msrs code involved):
  openai_unet_keys/*.txt              state_dict keys and shapes of the two published architectures
  openai_unet_reference.safetensors   outputs of the public UNetModel / GaussianDiffusion for tiny configs A-D whose
                                      weights follow the rule in `rule_weights` below
Nothing downloads; the full-size networks are only built on the meta device."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from msrs.denoiser import DiffusionDenoiser, load_denoiser, resolve_openai_config
from msrs.openai_unet import BUILTIN_CONFIGS, OpenAIUNet, OpenAIUNetConfig, alphas_cumprod

DATA = Path(__file__).parent / "data"
KEYS = DATA / "openai_unet_keys"
REFERENCE = DATA / "openai_unet_reference.safetensors"
SIGMAS = (0.25, 0.5, 1.0)

# the tiny configurations of the reference file (their public-code constructor arguments are in its metadata)
TINY = {
    "A": dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult=(1, 2), attention_resolutions=(4,),
              num_heads=2, dropout=0.3, learn_sigma=True, diffusion_steps=4000, noise_schedule="cosine",
              rescale_timesteps=True),
    "B": dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult=(1, 2), attention_resolutions=(8, 4),
              num_head_channels=16, resblock_updown=True, learn_sigma=True, diffusion_steps=1000,
              noise_schedule="linear", rescale_timesteps=False),
    "C": dict(image_size=8, num_channels=32, num_res_blocks=2, channel_mult=(1, 2, 2), attention_resolutions=(4,),
              num_heads=4, num_heads_upsample=2, use_new_attention_order=True, use_scale_shift_norm=False,
              diffusion_steps=2000, noise_schedule="linear", rescale_timesteps=True),
    "D": dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult=(1, 2), attention_resolutions=(4,),
              num_heads=1, class_cond=True, num_classes=10, use_scale_shift_norm=False, rescale_timesteps=False),
}


def rule_weights(shapes: dict) -> dict:
    """Deterministic weights from key names and shapes only (the rule the reference file was made with)."""
    out = {}
    for i, key in enumerate(sorted(shapes)):
        g = torch.Generator().manual_seed(1000 + i)
        shape = tuple(shapes[key])
        w = torch.randn(shape, generator=g, dtype=torch.float64)
        if len(shape) == 1:
            w = 0.1 * w + (1.0 if key.endswith("weight") else 0.0)
        else:
            w = w / math.sqrt(math.prod(shape[1:]))
        out[key] = w.float()
    return out


def tiny_model(name: str = "A", **overrides) -> OpenAIUNet:
    model = OpenAIUNet(OpenAIUNetConfig(**{**TINY[name], **overrides})).eval()
    model.load_state_dict(rule_weights(model.expected_shapes()))
    return model


@pytest.fixture(scope="module")
def reference() -> dict:
    return load_file(str(REFERENCE))


def read_key_list(path: Path) -> list[tuple[str, tuple]]:
    rows = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split()
        rows.append((key, tuple(int(d) for d in shape.split(","))))
    return rows


# -- the published architectures ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(BUILTIN_CONFIGS))
def test_full_size_keys_and_shapes_equal_the_public_layout(name):
    published = read_key_list(KEYS / f"{name}.txt")
    with torch.device("meta"):
        model = OpenAIUNet(BUILTIN_CONFIGS[name])
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert ours == published  # same keys, same shapes, same order
    count = sum(p.numel() for p in model.parameters())
    listed = sum(math.prod(shape) for _, shape in published)
    print(f"\n{name}: {count:,} parameters ({len(ours)} tensors); key list: {listed:,}")
    assert count == listed
    header = [line for line in (KEYS / f"{name}.txt").read_text().splitlines() if line.startswith("#")]
    assert any(f"{listed} parameters" in line for line in header)
    assert any("commit" in line for line in header)


def test_builtin_settings():
    cifar, imagenet = BUILTIN_CONFIGS["cifar10_uncond_50M_500K"], BUILTIN_CONFIGS["256x256_diffusion_uncond"]
    assert (cifar.out_channels, cifar.attention_rates, cifar.rescale_timesteps) == (6, (2, 4), True)
    assert (cifar.diffusion_steps, cifar.noise_schedule, cifar.dropout) == (4000, "cosine", 0.3)
    assert (imagenet.out_channels, imagenet.attention_rates, imagenet.rescale_timesteps) == (6, (8, 16, 32), False)
    assert (imagenet.diffusion_steps, imagenet.noise_schedule, imagenet.use_fp16) == (1000, "linear", True)
    for config in (cifar, imagenet):  # JSON round trip
        assert OpenAIUNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# -- the network against the public code -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TINY))
def test_output_equals_public_code(name, reference):
    model = tiny_model(name)
    config = model.config
    t = reference[f"{name}.timesteps"]
    fed = t.float() * (1000.0 / config.diffusion_steps) if config.rescale_timesteps else t
    with torch.no_grad():
        out = model(reference[f"{name}.x_t"], fed, reference.get(f"{name}.y"))
    expected = reference[f"{name}.output"]
    assert float(expected.std()) > 0.3  # a meaningful comparison: the reference output is not ~0
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["A", "B", "C"])
def test_denoiser_x0_equals_public_pred_xstart(name, reference):
    """The whole one-shot step: schedule, timestep convention, eps = first C channels, x0 (clipped) against the
    public GaussianDiffusion.p_mean_variance(...)["pred_xstart"]."""
    den = DiffusionDenoiser(tiny_model(name)).eval()
    np.testing.assert_allclose(den._abar64.numpy(), reference[f"{name}.alphas_cumprod"].numpy(), rtol=1e-12, atol=0)
    x_t, t = reference[f"{name}.x_t"], reference[f"{name}.timesteps"]
    a = den._sqrt_abar64[t].to(torch.float32)[:, None, None, None]
    with torch.no_grad():
        eps = den.predict_eps(x_t, t)
    x0 = ((x_t - (1 - a * a).sqrt() * eps) / a).clamp(-1, 1)
    torch.testing.assert_close(x0, reference[f"{name}.pred_xstart"], atol=1e-4, rtol=1e-4)


def test_schedules_match_formula():
    """improved-diffusion's named schedules, written out independently: linear betas 1e-4..0.02 scaled by
    1000 / T; cosine betas from abar(s) = cos^2((s + 0.008) / 1.008 * pi / 2), capped at 0.999."""
    for steps in (1000, 4000):
        config = OpenAIUNetConfig(diffusion_steps=steps, noise_schedule="linear", rescale_timesteps=False)
        betas = np.array([(1e-4 + (0.02 - 1e-4) * i / (steps - 1)) * 1000 / steps for i in range(steps)])
        np.testing.assert_allclose(alphas_cumprod(config), np.cumprod(1 - betas), rtol=1e-12)
    f = [math.cos((i / 4000 + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(4001)]
    betas = np.minimum([1 - f[i + 1] / f[i] for i in range(4000)], 0.999)
    config = BUILTIN_CONFIGS["cifar10_uncond_50M_500K"]
    np.testing.assert_allclose(alphas_cumprod(config), np.cumprod(1 - betas), rtol=1e-12)
    assert betas.max() == 0.999  # the cap is reached at the end of the cosine schedule


# -- timesteps ---------------------------------------------------------------------------------------------------------
def meta_denoiser(name: str) -> DiffusionDenoiser:
    with torch.device("meta"):
        unet = OpenAIUNet(BUILTIN_CONFIGS[name])
    return DiffusionDenoiser(unet)


def test_timestep_rule_and_convention_cifar10():
    den = meta_denoiser("cifar10_uncond_50M_500K")
    assert [den.timestep_for(s)[0] for s in SIGMAS] == [1158, 1984, 2809]
    fed = den.network_timesteps(torch.tensor([1158, 1984, 2809]))
    assert fed.dtype == torch.float32 and fed.tolist() == [289.5, 496.0, 702.25]  # t * 1000 / 4000


def test_timestep_rule_and_convention_imagenet():
    den = meta_denoiser("256x256_diffusion_uncond")
    assert [den.timestep_for(s)[0] for s in SIGMAS] == [145, 259, 396]
    t = torch.tensor([145, 259, 396])
    assert den.network_timesteps(t) is t  # guided-diffusion: the integer step as it is
    assert den.sample_size == 256 and den.frame_padding == "reflect"


@pytest.mark.parametrize("name,expected", [("A", [289.5, 702.25]), ("B", [145.0, 396.0])])
def test_network_receives_converted_timesteps(name, expected, reference):
    den = DiffusionDenoiser(tiny_model(name))
    seen = []
    den.unet.register_forward_pre_hook(lambda module, args: seen.append(args[1].clone()))
    with torch.no_grad():
        den.predict_eps(reference[f"{name}.x_t"], reference[f"{name}.timesteps"])
    assert seen[0].tolist() == expected


# -- learned variance and the x0 formula -------------------------------------------------------------------------------
def independent_one_shot(model: OpenAIUNet, x_noisy: torch.Tensor, sigma: float) -> torch.Tensor:
    """The one-shot denoiser in plain tensor arithmetic: cosine 4000-step schedule from its formula, the first t
    with sqrt(abar_t) <= 1 / sqrt(1 + 4 sigma^2), the network at t * 1000 / 4000, eps = channels 0..2 of 6,
    x0 = clamp((x_t - sqrt(1 - abar) eps) / sqrt(abar), -1, 1), back to [0, 1]."""
    f = [math.cos((i / 4000 + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(4001)]
    abar = np.cumprod([1 - min(1 - f[i + 1] / f[i], 0.999) for i in range(4000)])
    t = int(np.argmax(np.sqrt(abar) <= 1 / math.sqrt(1 + 4 * sigma**2)))
    a = math.sqrt(abar[t])
    x_t = a * (2 * x_noisy - 1)
    with torch.no_grad():
        out = model(x_t, torch.full((x_t.shape[0],), t * 0.25))
    assert out.shape[1] == 6
    eps = out[:, :3]
    x0 = ((x_t - math.sqrt(1 - a * a) * eps) / a).clamp(-1, 1)
    return (x0 + 1) / 2


@pytest.mark.parametrize("sigma", SIGMAS)
def test_denoise_noisy_equals_independent_formula(sigma):
    model = tiny_model("A")
    den = DiffusionDenoiser(model).eval()
    g = torch.Generator().manual_seed(3)
    x_noisy = torch.rand(4, 3, 8, 8, generator=g) + sigma * torch.randn(4, 3, 8, 8, generator=g)
    with torch.no_grad():
        ours = den.denoise_noisy(x_noisy, sigma, backend="torch")
    torch.testing.assert_close(ours, independent_one_shot(model, x_noisy, sigma), atol=2e-5, rtol=0)


def test_variance_channels_do_not_reach_eps():
    den = DiffusionDenoiser(tiny_model("A")).eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        before = den.predict_eps(x, 1984)
        den.unet.out[2].bias[3:] += 5.0  # the learned-variance channels
        after_variance = den.predict_eps(x, 1984)
        den.unet.out[2].bias[:3] += 5.0  # the eps channels
        after_eps = den.predict_eps(x, 1984)
    assert before.shape == (2, 3, 8, 8)
    torch.testing.assert_close(after_variance, before, atol=0, rtol=0)
    torch.testing.assert_close(after_eps, before + 5.0, atol=1e-5, rtol=0)


# -- loading -----------------------------------------------------------------------------------------------------------
def test_round_trip_through_load_denoiser(tmp_path):
    model = tiny_model("A")
    ckpt = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    (tmp_path / "tiny.pt.json").write_text(json.dumps(model.config.to_dict()))
    loaded = load_denoiser(f"openai:{ckpt}")
    assert loaded.source == str(ckpt) and loaded.openai_config_source == str(tmp_path / "tiny.pt.json")
    assert not loaded.training and loaded.unet.out[2].weight.dtype == torch.float32
    den = DiffusionDenoiser(model).eval()
    g = torch.Generator().manual_seed(5)
    x_noisy = torch.rand(3, 3, 8, 8, generator=g) + 0.5 * torch.randn(3, 3, 8, 8, generator=g)
    with torch.no_grad():
        for sigma in SIGMAS:
            torch.testing.assert_close(loaded.denoise_noisy(x_noisy, sigma, backend="torch"),
                                       den.denoise_noisy(x_noisy, sigma, backend="torch"), atol=0, rtol=0)
    # save_pretrained / from_pretrained / load_denoiser(folder) of an OpenAI-format denoiser
    loaded.save_pretrained(tmp_path / "saved")
    again = load_denoiser(str(tmp_path / "saved"))
    assert again.openai_config == model.config
    with torch.no_grad():
        torch.testing.assert_close(again.denoise_noisy(x_noisy, 0.5, backend="torch"),
                                   den.denoise_noisy(x_noisy, 0.5, backend="torch"), atol=0, rtol=0)


def test_config_sources(tmp_path):
    ckpt = tmp_path / "model.pt"
    tiny = OpenAIUNetConfig(**TINY["A"])
    with pytest.raises(ValueError, match="config: no settings for model.pt"):
        resolve_openai_config(ckpt)
    (tmp_path / "model.json").write_text(json.dumps({**tiny.to_dict(), "dropout": 0.1}))
    config, source = resolve_openai_config(ckpt)
    assert source == str(tmp_path / "model.json") and config.dropout == 0.1
    (tmp_path / "model.pt.json").write_text(json.dumps(tiny.to_dict()))  # PATH.json comes before STEM.json
    assert resolve_openai_config(ckpt) == (tiny, str(tmp_path / "model.pt.json"))
    named = resolve_openai_config(tmp_path / "256x256_diffusion_uncond.pt")
    assert named[0] == BUILTIN_CONFIGS["256x256_diffusion_uncond"] and "file name" in named[1]
    assert resolve_openai_config(ckpt, "cifar10_uncond_50M_500K")[0] == BUILTIN_CONFIGS["cifar10_uncond_50M_500K"]
    based = resolve_openai_config(ckpt, {"base": "cifar10_uncond_50M_500K", "dropout": 0.0})[0]
    assert based.dropout == 0.0 and based.num_res_blocks == 3
    with pytest.raises(ValueError, match="unknown settings.*num_chanels"):
        resolve_openai_config(ckpt, {"num_chanels": 64, "rescale_timesteps": True})
    with pytest.raises(ValueError, match="rescale_timesteps: required"):
        resolve_openai_config(ckpt, {"image_size": 32})
    with pytest.raises(ValueError, match="neither a built-in"):
        resolve_openai_config(ckpt, "cifar10")
    with pytest.raises(FileNotFoundError, match="config"):
        resolve_openai_config(ckpt, str(tmp_path / "missing.json"))
    attention = OpenAIUNetConfig.from_dict({"attention_resolutions": "32,16,8", "rescale_timesteps": False})
    assert attention.attention_resolutions == (32, 16, 8)


def test_fp16_checkpoint_loads_and_computes_in_fp32(tmp_path):
    model = tiny_model("B")
    half = {k: v.half() for k, v in model.state_dict().items()}
    torch.save(half, tmp_path / "half.pt")
    loaded = load_denoiser(f"openai:{tmp_path / 'half.pt'}", config=model.config.to_dict())
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    rounded = OpenAIUNet(model.config).eval()
    rounded.load_state_dict({k: v.float() for k, v in half.items()})
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict_eps(x, 259), DiffusionDenoiser(rounded).predict_eps(x, 259),
                                   atol=0, rtol=0)


def test_safetensors_and_dataparallel_prefix(tmp_path):
    from safetensors.torch import save_file

    model = tiny_model("B")
    save_file({"module." + k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    loaded = DiffusionDenoiser.from_openai(tmp_path / "m.safetensors", config=model.config)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.unet.state_dict()[k], v)


def test_key_mismatch_error_names_keys(tmp_path):
    model = tiny_model("A")
    state = model.state_dict()
    del state["middle_block.1.qkv.weight"]
    state["extra.weight"] = torch.zeros(3)
    state["out.2.weight"] = torch.zeros(3, 32, 3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as info:
        load_denoiser(f"openai:{tmp_path / 'bad.pt'}", config=model.config.to_dict())
    message = str(info.value)
    assert message.startswith("denoiser: cannot load")
    assert "1 missing, 1 unexpected, 1 shape mismatches" in message
    assert "missing: middle_block.1.qkv.weight" in message and "unexpected: extra.weight" in message
    assert "out.2.weight: checkpoint (3, 32, 3, 3), architecture (6, 32, 3, 3)" in message
    # a checkpoint of the right kind with the wrong settings: learned sigma forgotten
    torch.save(model.state_dict(), tmp_path / "good.pt")
    with pytest.raises(ValueError, match=r"out\.2\.weight: checkpoint \(6, 32, 3, 3\), architecture \(3, 32, 3, 3\)"):
        load_denoiser(f"openai:{tmp_path / 'good.pt'}", config={**model.config.to_dict(), "learn_sigma": False})
    # many differences: the first few are listed, the rest counted
    with pytest.raises(ValueError, match=r"more\)"):
        load_denoiser(f"openai:{tmp_path / 'good.pt'}", config={**model.config.to_dict(), "num_res_blocks": 2})
    torch.save({"state": {}, "param_groups": []}, tmp_path / "opt.pt")
    with pytest.raises(ValueError, match="optimizer state"):
        load_denoiser(f"openai:{tmp_path / 'opt.pt'}", config=model.config.to_dict())


class _Payload:
    """Unpickling this calls exec(code): what an unsafe torch.load would run."""

    def __init__(self, marker: Path):
        self.code = f"open({str(marker)!r}, 'w').write('ran')"

    def __reduce__(self):
        return (exec, (self.code,))


def test_pickle_payload_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "payload_ran"
    ckpt = tmp_path / "evil.pt"
    torch.save({"time_embed.0.weight": torch.zeros(1), "x": _Payload(marker)}, ckpt)
    with pytest.raises(ValueError, match="weights_only"):
        load_denoiser(f"openai:{ckpt}", config=TINY["A"])
    assert not marker.exists()
    with pytest.raises(ValueError, match="weights_only"):
        DiffusionDenoiser.from_openai(ckpt, config=TINY["A"])
    assert not marker.exists()
    # guard: the payload is live (an unsafe load runs it), so the refusal above is what kept it from running
    torch.load(ckpt, weights_only=False)
    assert marker.read_text() == "ran"


def test_legacy_torch_save_format(tmp_path):
    """Files in torch's pre-zip format cannot be memory-mapped: read again with weights_only=True, payloads still
    refused."""
    model = tiny_model("B")
    torch.save(model.state_dict(), tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    loaded = DiffusionDenoiser.from_openai(tmp_path / "old.pt", config=model.config)
    assert all(torch.equal(loaded.unet.state_dict()[k], v) for k, v in model.state_dict().items())
    marker = tmp_path / "payload_ran"
    torch.save({"x": _Payload(marker)}, tmp_path / "old_evil.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="weights_only"):
        DiffusionDenoiser.from_openai(tmp_path / "old_evil.pt", config=model.config)
    assert not marker.exists()


def test_class_conditional_refused():
    with pytest.raises(ValueError, match="class-conditional"):
        DiffusionDenoiser(tiny_model("D"))


# -- the frame (ImageNet: 224 crops in the 256 model) ------------------------------------------------------------------
def frame_denoiser(**kw) -> DiffusionDenoiser:
    return DiffusionDenoiser(tiny_model("B", image_size=16, attention_resolutions=(16, 8)), **kw).eval()


def test_frame_reflect_pads_runs_and_crops_back():
    den = frame_denoiser()
    assert den.frame_padding == "reflect"
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        eps = den.predict_eps(x, 259)
        # the public code's way: ReflectionPad2d((16 - 12) // 2), the model, CenterCrop(12) (offset round(4 / 2))
        full = den.unet(torch.nn.ReflectionPad2d(2)(x), torch.full((2,), 259))[:, :3]
    assert eps.shape == x.shape
    torch.testing.assert_close(eps, full[:, :, 2:14, 2:14], atol=1e-6, rtol=0)
    with torch.no_grad():
        unframed = den.predict_eps(x, 259, frame_padding=None)  # 12 is a multiple of 2: runs at 12x12
    assert float((unframed - eps).abs().max()) > 1e-3


def test_frame_zeros_pads_with_mid_gray():
    den = frame_denoiser(frame_padding="zeros")
    x = torch.randn(2, 3, 10, 12, generator=torch.Generator().manual_seed(9))
    framed = torch.zeros(2, 3, 16, 16)
    framed[:, :, 3:13, 2:14] = x
    with torch.no_grad():
        eps = den.predict_eps(x, 145)
        full = den.unet(framed, torch.full((2,), 145))[:, :3]
    torch.testing.assert_close(eps, full[:, :, 3:13, 2:14], atol=1e-6, rtol=0)


def test_frame_not_applied_at_or_above_the_frame_size_and_size_checks():
    den = frame_denoiser()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(den.predict_eps(x, 10), den.predict_eps(x, 10, frame_padding=None), atol=0,
                                   rtol=0)
        assert den.predict_eps(torch.randn(1, 3, 20, 20), 10).shape == (1, 3, 20, 20)
    with pytest.raises(ValueError, match="multiples of 2"):
        den.predict_eps(torch.randn(1, 3, 17, 17), 10)
    with pytest.raises(ValueError, match="frame_padding"):
        den.predict_eps(torch.randn(1, 3, 4, 4), 10)  # reflect needs pad < size
    with pytest.raises(ValueError, match="frame_padding"):
        den.predict_eps(x, 10, frame_padding="edge")


def test_diffusers_unet_has_no_frame_by_default():
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    den = DiffusionDenoiser(unet, DDPMScheduler(num_train_timesteps=1000))
    assert den.frame_padding is None and den.timestep_scale is None
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(den.predict_eps(x, 100), unet(x, torch.full((2,), 100)).sample, atol=0, rtol=0)
        assert den.predict_eps(x, 100, frame_padding="reflect").shape == x.shape


# -- load_denoiser: the spec -------------------------------------------------------------------------------------------
def test_load_denoiser_specs_and_errors(tmp_path):
    demo = load_denoiser("demo")
    assert demo.in_channels == 1 and demo.source.endswith("digits_ddpm") and not demo.training
    with pytest.raises(ValueError, match="denoiser"):
        load_denoiser(3)
    with pytest.raises(ValueError, match="denoiser"):
        load_denoiser("")
    with pytest.raises(FileNotFoundError, match="denoiser: cannot load 'openai:"):
        load_denoiser(f"openai:{tmp_path / 'missing.pt'}")
    with pytest.raises(FileNotFoundError, match="denoiser"):
        load_denoiser(str(tmp_path / "no_such_folder"))
    torch.save({}, tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="openai:"):
        load_denoiser(str(tmp_path / "weights.pt"))
    with pytest.raises(ValueError, match="config: only for openai"):
        load_denoiser("demo", config="cifar10_uncond_50M_500K")
    with pytest.raises(ValueError, match="device"):
        load_denoiser("demo", device="gpu0")
    with pytest.raises(ValueError, match="denoiser: cannot load.*config: no settings"):
        load_denoiser(f"openai:{tmp_path / 'weights.pt'}")


# -- issue 10: the scheduler class of a diffusers folder is read from JSON ---------------------------------------------
def diffusers_folder(tmp_path: Path, class_name: str, **extra) -> Path:
    from diffusers import DDPMScheduler, UNet2DModel

    folder = tmp_path / "model"
    UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                norm_num_groups=8, down_block_types=("DownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "UpBlock2D")).save_pretrained(str(folder / "unet"))
    DDPMScheduler(num_train_timesteps=100).save_pretrained(str(folder / "scheduler"))
    path = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config.update(_class_name=class_name, **extra)
    path.write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("class_name", ["os.system", "DiffusionPipeline", "UNet2DModel", "SchedulerMixin",
                                        "__class__", "ScoreSdeVeScheduler", "NoSuchScheduler", ["DDPMScheduler"]])
def test_scheduler_class_must_be_a_diffusers_scheduler(tmp_path, class_name):
    marker = tmp_path / "payload_ran"
    folder = diffusers_folder(tmp_path, class_name, command=f"touch {marker}")
    with pytest.raises(ValueError, match="_class_name|alphas_cumprod"):
        DiffusionDenoiser.from_pretrained(folder)
    with pytest.raises(ValueError, match="denoiser: cannot load"):
        load_denoiser(str(folder))
    assert not marker.exists()


def test_scheduler_class_accepts_diffusers_schedulers(tmp_path):
    den = DiffusionDenoiser.from_pretrained(diffusers_folder(tmp_path, "DDIMScheduler"))
    assert den.scheduler_config["_class_name"] == "DDIMScheduler" and den.num_train_timesteps == 100
