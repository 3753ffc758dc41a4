"""The msrs.finetune package: settings written once (dataclass, finetune() keywords, generated CLI options), the
noise streams, the refusal of an output folder that is or contains an input (issue 10), the refusal of training
states of an earlier version, and the classifier left untouched when a resume is refused."""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os

import pytest
import torch

from msrs import checks, ops
from msrs import finetune as ft
from msrs.finetune import objective, settings as st
from test_finetune import FAST, tiny_classifier, tiny_data, tiny_denoiser

# the defaults of msrs.finetune.finetune() before it became a package (branch arch, msrs/finetune.py), written out
# here on purpose: an independent record that the refactoring kept every default
DEFAULTS_BEFORE = dict(sigmas=(0.25, 0.5, 1.0), steps=1000, batch_size=32, samples_per_image=4, lr=1e-3,
                       weight_decay=0.0, brier_weight=2.0, anti_consistency_weight=1.0, mse_weight=1.0,
                       anti_consistency="all", p0=0.5, ema_decay=0.99, warmup_steps=20, max_grad_norm=1.0,
                       dtype="auto", gradient_checkpointing=False, seed=0, checkpoint_every=100)


def _parser():
    p = argparse.ArgumentParser()
    ft.add_arguments(p)
    return p


# ------------------------------------------------------------------------------------------------------ settings
def test_defaults_are_the_same_in_the_dataclass_the_function_and_the_command(tmp_path):
    assert dataclasses.asdict(ft.FinetuneSettings()) == DEFAULTS_BEFORE
    keywords = {name: p.default for name, p in inspect.signature(ft.finetune).parameters.items()
                if name in DEFAULTS_BEFORE}
    assert keywords == DEFAULTS_BEFORE
    args = _parser().parse_args(["--out", str(tmp_path)])
    assert st.from_options(args) == ft.FinetuneSettings()
    # every setting has its option, and the command's options give the settings they name
    argv = ["--out", str(tmp_path), "--sigmas", "0.3,0.6", "--steps", "7", "--batch-size", "5",
            "--samples-per-image", "3", "--lr", "0.01", "--weight-decay", "0.1", "--brier-weight", "0.5",
            "--anti-consistency-weight", "0.25", "--mse-weight", "0", "--anti-consistency", "wrong", "--p0", "0.7",
            "--ema-decay", "0.9", "--warmup-steps", "0", "--max-grad-norm", "0", "--dtype", "float32",
            "--gradient-checkpointing", "--seed", "9", "--checkpoint-every", "2"]
    expected = dict(sigmas=(0.3, 0.6), steps=7, batch_size=5, samples_per_image=3, lr=0.01, weight_decay=0.1,
                    brier_weight=0.5, anti_consistency_weight=0.25, mse_weight=0.0, anti_consistency="wrong",
                    p0=0.7, ema_decay=0.9, warmup_steps=0, max_grad_norm=None, dtype="float32",
                    gradient_checkpointing=True, seed=9, checkpoint_every=2)
    assert expected.keys() == DEFAULTS_BEFORE.keys()
    assert dataclasses.asdict(st.from_options(_parser().parse_args(argv))) == expected


def test_settings_are_normalised_and_bad_values_name_the_field_or_the_option(tmp_path):
    s = ft.FinetuneSettings(sigmas=[1.0, 0.25], dtype="BF16", max_grad_norm=2)
    assert s.sigmas == (0.25, 1.0) and s.dtype == "bfloat16" and s.max_grad_norm == 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.lr = 1.0
    with pytest.raises(checks.ArgumentTypeError, match="^steps: expected an integer"):
        ft.FinetuneSettings(steps=2.0)
    with pytest.raises(checks.ArgumentValueError, match=r"^steps: steps \* samples_per_image"):
        ft.FinetuneSettings(steps=2**31, samples_per_image=3)
    args = _parser().parse_args(["--out", str(tmp_path), "--batch-size", "0"])
    with pytest.raises(checks.ArgumentValueError, match="^--batch-size: must be >= 1, got 0"):
        ft.run(args)
    args = _parser().parse_args(["--out", str(tmp_path), "--brier-weight", "0", "--anti-consistency-weight", "0",
                                 "--mse-weight", "0"])
    with pytest.raises(ValueError, match="^--brier-weight, --anti-consistency-weight, --mse-weight: at least one"):
        ft.run(args)


def test_finetune_takes_a_settings_object_and_keywords_replace_its_fields(tmp_path):
    settings = ft.FinetuneSettings(**{**{k: v for k, v in FAST.items() if k in DEFAULTS_BEFORE}, "steps": 1})
    rest = {k: v for k, v in FAST.items() if k not in DEFAULTS_BEFORE}
    ft.finetune(tiny_denoiser(), tiny_classifier(), tiny_data(), out_dir=tmp_path / "a", settings=settings,
                lr=5e-4, **rest)
    ft.finetune(tiny_denoiser(), tiny_classifier(), tiny_data(), out_dir=tmp_path / "b", steps=1,
                **{**FAST, "lr": 5e-4})
    a = json.loads((tmp_path / "a" / "finetune.json").read_text())["settings"]
    b = json.loads((tmp_path / "b" / "finetune.json").read_text())["settings"]
    assert a == b and a["lr"] == 5e-4 and a["batch_size"] == FAST["batch_size"]
    with pytest.raises(TypeError, match="learning_rate"):
        ft.finetune(tiny_denoiser(), tiny_classifier(), tiny_data(), out_dir=tmp_path / "c", learning_rate=1e-3)
    with pytest.raises(TypeError, match="settings"):
        ft.finetune(tiny_denoiser(), tiny_classifier(), tiny_data(), out_dir=tmp_path / "c", settings={"lr": 1.0})


# --------------------------------------------------------------------------------------------------------- noise
def test_sigma_level_l_draws_its_noise_from_stream_1024_plus_l():
    """The objective's noisy inputs are ops.add_noise's at stream 1024 + l for the l-th smallest sigma (never a
    certification stream: those are below 1024), sample indices step*M .. step*M + M - 1."""
    den, (images, _) = tiny_denoiser(), tiny_data(3)
    ids, m, step, sigmas = torch.tensor([5, 0, 7]), 2, 4, (0.25, 0.5, 1.0)
    x_t = objective._noisy_inputs(den, images, ids, list(sigmas), m, seed=3, step=step, backend="torch")[0]
    for level, sigma in enumerate(sigmas):
        _, a = den.timestep_for(sigma)
        alone = ops.add_noise(images, sigma, m, seed=3, image_ids=ids, sample_start=step * m, stream=1024 + level,
                              diffusion_scale=a, out_dtype=torch.float32, backend="torch")
        assert torch.equal(x_t[level * 6:(level + 1) * 6], alone)
    assert ft.FINETUNE_STREAM == 1024


# ------------------------------------------------------------------------------- output folder over an input
def _saved_denoiser(path):
    tiny_denoiser().save_pretrained(path)
    return {p: p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _refused(argv, monkeypatch):
    """run(argv) must refuse --out before loading anything (loading data or models fails the test)."""
    import msrs.data
    import msrs.denoiser

    def no_loading(*args, **kwargs):
        raise AssertionError("loaded something before refusing --out")

    monkeypatch.setattr(msrs.data, "load_dataset", no_loading)
    monkeypatch.setattr(msrs.denoiser.DiffusionDenoiser, "from_pretrained", no_loading)
    args = _parser().parse_args(argv + ["--quiet", "--device", "cpu", "--dtype", "float32", "--steps", "1"])
    with pytest.raises(checks.ArgumentValueError) as info:
        ft.run(args)
    return str(info.value)


def test_an_output_folder_that_is_the_denoiser_is_refused(tmp_path, monkeypatch):
    den = tmp_path / "den"
    before = _saved_denoiser(den)
    message = _refused(["--denoiser", str(den), "--out", str(den)], monkeypatch)
    assert message.startswith(f"out: {str(den)!r} is the denoiser")
    link = tmp_path / "link"  # the same folder through a symbolic link
    os.symlink(den, link)
    assert _refused(["--denoiser", str(den), "--out", str(link)], monkeypatch).startswith(
        f"out: {str(link)!r} is the denoiser")
    assert _refused(["--denoiser", str(link), "--out", str(den) + "/"], monkeypatch).startswith("out: ")
    assert {p: p.read_bytes() for p in sorted(den.rglob("*")) if p.is_file()} == before


def test_an_output_folder_that_contains_an_input_is_refused(tmp_path, monkeypatch):
    den = tmp_path / "models" / "den"
    _saved_denoiser(den)
    message = _refused(["--denoiser", str(den), "--out", str(tmp_path / "models")], monkeypatch)
    assert message.startswith(f"out: {str(tmp_path / 'models')!r} contains the denoiser")
    link = tmp_path / "link"
    os.symlink(tmp_path / "models", link)
    assert "contains the denoiser" in _refused(["--denoiser", str(den), "--out", str(link)], monkeypatch)
    # the classifier's files: a module:factory file, its weights
    other = tmp_path / "other"
    _saved_denoiser(other)
    for folder in ("code", "weights"):
        (tmp_path / folder).mkdir()
    (tmp_path / "code" / "net.py").write_text("def make():\n    raise AssertionError\n")
    (tmp_path / "weights" / "w.safetensors").write_bytes(b"")
    argv = ["--denoiser", str(other), "--classifier", f"{tmp_path / 'code' / 'net.py'}:make", "--weights",
            str(tmp_path / "weights" / "w.safetensors")]
    assert "contains the classifier" in _refused(argv + ["--out", str(tmp_path / "code")], monkeypatch)
    assert "contains the weights" in _refused(argv + ["--out", str(tmp_path / "weights")], monkeypatch)
    # ... and the shipped demo models when they are the inputs
    from msrs import zoo

    assert "contains the classifier" in _refused(["--denoiser", str(other), "--out", str(zoo.assets_dir())],
                                                 monkeypatch)
    assert "is the denoiser" in _refused(["--out", str(zoo.asset_path(zoo.DDPM_NAME))], monkeypatch)


def test_the_msrs_command_reports_the_refusal_in_one_line(tmp_path, capsys):
    from msrs.cli import main

    den = tmp_path / "den"
    _saved_denoiser(den)
    assert main(["finetune", "--denoiser", str(den), "--out", str(den), "--quiet"]) == 2
    assert f"msrs: error: out: {str(den)!r} is the denoiser" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------- resume
def test_a_training_state_of_version_1_is_refused_clearly(tmp_path):
    """Version 1 (msrs/finetune.py before the package) recorded 16-digit digests of another byte layout."""
    out = tmp_path / "r"
    ft.finetune(tiny_denoiser(), tiny_classifier(), tiny_data(), out_dir=out, steps=1, **FAST)
    trainer = json.loads((out / "state" / "trainer.json").read_text())
    assert trainer["version"] == 2 and len(trainer["settings"]["data_digest"]) == 64
    trainer["version"] = 1
    (out / "state" / "trainer.json").write_text(json.dumps(trainer))
    with pytest.raises(ValueError, match=r"resume: .* was written by an earlier msrs \(version 1.*--no-resume"):
        ft.finetune(tiny_denoiser(), tiny_classifier(), tiny_data(), out_dir=out, steps=2, **FAST)
    again = ft.finetune(tiny_denoiser(), tiny_classifier(), tiny_data(), out_dir=out, steps=2, resume=False, **FAST)
    assert again.step == 2 and json.loads((out / "state" / "trainer.json").read_text())["version"] == 2


def test_a_refused_resume_leaves_the_classifier_as_it_was(tmp_path):
    out = tmp_path / "r"
    ft.finetune(tiny_denoiser(), tiny_classifier(), tiny_data(), out_dir=out, steps=1, **FAST)
    clf = tiny_classifier().train()
    for p in clf.parameters():
        p.requires_grad_(True)
    with pytest.raises(ValueError, match="resume.*lr"):
        ft.finetune(tiny_denoiser(), clf, tiny_data(), out_dir=out, steps=2, **{**FAST, "lr": 5e-4})
    assert clf.training and all(p.requires_grad for p in clf.parameters())
