"""The shipped demo models (msrs/assets) and msrs.zoo's loaders; the training scripts are deterministic."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from msrs import zoo

ROOT = Path(__file__).resolve().parents[1]
MAX_ASSET_BYTES = 20 * 1024 * 1024


def _ddpm_ready() -> bool:
    return (zoo.asset_path(zoo.DDPM_NAME) / "unet" / "config.json").is_file()


needs_ddpm = pytest.mark.skipif(not _ddpm_ready(), reason="demo DDPM not trained yet (scripts/train_ddpm.py)")


def test_assets_dir_is_the_package_folder():
    import msrs

    assert zoo.assets_dir().resolve() == (Path(msrs.__file__).parent / "assets").resolve()
    assert (zoo.assets_dir() / ".keep").exists()


def test_classifier_config_fields():
    config = zoo.load_demo_classifier_config()
    for key in ("architecture", "mean", "std", "num_classes", "test_accuracy", "command", "seed"):
        assert key in config, key
    assert config["architecture"] == "digits_classifier" and config["num_classes"] == 10
    assert len(config["mean"]) == len(config["std"]) == 1 and config["std"][0] > 0


def test_classifier_loads_and_matches_recorded_accuracy():
    model, mean, std, num_classes = zoo.load_demo_classifier("cpu")
    assert not model.training and num_classes == 10
    assert isinstance(mean, tuple) and isinstance(std, tuple)
    assert 50_000 <= sum(p.numel() for p in model.parameters()) <= 200_000
    x, y = zoo.digits_split("test")
    assert x.shape == (360, 1, 8, 8) and y.shape == (360,)
    m = torch.tensor(mean).reshape(1, -1, 1, 1)
    s = torch.tensor(std).reshape(1, -1, 1, 1)
    with torch.no_grad():
        logits = model((x - m) / s)
    assert logits.shape == (360, 10)
    accuracy = float((logits.argmax(1) == y).sum()) / y.numel()
    assert accuracy == pytest.approx(zoo.load_demo_classifier_config()["test_accuracy"], abs=1e-9)
    assert accuracy >= 0.97


def test_digits_split_follows_design():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x_train, y_train = zoo.digits_split("train")
    x_test, y_test = zoo.digits_split("test")
    assert x_train.shape == (1437, 1, 8, 8) and x_test.shape == (360, 1, 8, 8)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    torch.testing.assert_close(x_test[7, 0], torch.as_tensor(bunch.images[35] / 16.0, dtype=torch.float32))
    assert int(y_test[7]) == int(bunch.target[35]) and int(y_train[0]) == int(bunch.target[1])
    with pytest.raises(ValueError, match="split"):
        zoo.digits_split("val")


@needs_ddpm
def test_denoiser_loads_and_denoises():
    den = zoo.load_demo_denoiser(device="cpu")
    assert not den.training and den.in_channels == 1 and den.sample_size == 8
    assert [den.timestep_for(s)[0] for s in (0.25, 0.5, 1.0)] == [145, 259, 396]
    assert sum(p.numel() for p in den.parameters()) <= 3_000_000
    x, _ = zoo.digits_split("test")
    g = torch.Generator().manual_seed(0)
    sigma = 0.5
    noisy = x + sigma * torch.randn(x.shape, generator=g)
    with torch.no_grad():
        denoised = den.denoise_noisy(noisy, sigma)
    noisy_mse = float((noisy - x).pow(2).mean())
    denoised_mse = float((denoised - x).pow(2).mean())
    assert denoised_mse < noisy_mse
    # and also better than the best trivial estimate from the noisy input alone: clipping it to [0, 1]
    assert denoised_mse < float((noisy.clamp(0, 1) - x).pow(2).mean())


@needs_ddpm
def test_denoised_smoothing_helps_the_classifier():
    """Denoised smoothing on this data: the clean-trained classifier is more accurate on denoised noisy digits than
    on the noisy digits themselves, at every sigma of the cascade."""
    model, mean, std, _ = zoo.load_demo_classifier()
    den = zoo.load_demo_denoiser()
    x, y = zoo.digits_split("test")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for sigma in (0.25, 0.5, 1.0):
            noisy = x + sigma * torch.randn(x.shape, generator=g)
            acc_noisy = float((model((noisy - mean[0]) / std[0]).argmax(1) == y).double().mean())
            acc_den = float((model((den.denoise_noisy(noisy, sigma) - mean[0]) / std[0]).argmax(1) == y).double().mean())
            assert acc_den > acc_noisy, (sigma, acc_den, acc_noisy)


def test_finetuned_denoiser_missing_is_a_clear_error():
    if zoo.asset_path(zoo.DDPM_FINETUNED_NAME).is_dir():
        den = zoo.load_demo_denoiser(finetuned=True)
        assert den.timestep_for(0.5)[0] == 259
        return
    with pytest.raises(FileNotFoundError, match="fine-tuned"):
        zoo.load_demo_denoiser(finetuned=True)


def test_assets_under_20_mb():
    total = sum(p.stat().st_size for p in zoo.assets_dir().rglob("*") if p.is_file())
    assert total < MAX_ASSET_BYTES, f"msrs/assets holds {total / 2**20:.1f} MiB"
    if _ddpm_ready():
        # room for the fine-tuned copy of the DDPM (same size) within the same budget
        ddpm = sum(p.stat().st_size for p in zoo.asset_path(zoo.DDPM_NAME).rglob("*") if p.is_file())
        if not zoo.asset_path(zoo.DDPM_FINETUNED_NAME).is_dir():
            total += ddpm
        assert total < MAX_ASSET_BYTES, f"with a fine-tuned copy: {total / 2**20:.1f} MiB"


def _run(script: str, *args: str) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args, "--threads", "1"], check=True,
                   capture_output=True, cwd=ROOT, timeout=600)


def test_train_classifier_is_deterministic(tmp_path):
    for name in ("a", "b"):
        _run("train_classifier.py", "--epochs", "1", "--out", str(tmp_path / name))
    a = (tmp_path / "a" / "digits_classifier.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "digits_classifier.safetensors").read_bytes()


def test_train_ddpm_is_deterministic(tmp_path):
    for name in ("a", "b"):
        _run("train_ddpm.py", "--steps", "3", "--log-every", "1", "--width", "16", "--no-eval", "--out", str(tmp_path / name))
    weights = Path("unet") / "diffusion_pytorch_model.safetensors"
    assert (tmp_path / "a" / weights).read_bytes() == (tmp_path / "b" / weights).read_bytes()
