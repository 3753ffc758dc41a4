"""`msrs certify --preset`: a paper's settings fill the options left out, explicit options win, and a preset that
certifies its sigmas one at a time writes one log per sigma (msrs.presets, msrs.certify_command)."""
from __future__ import annotations

import json

import pytest

from msrs import logs
from msrs.cli import main
from msrs.presets import PRESETS


def sidecar(path):
    return json.loads(logs.sidecar_path(path).read_text())


def test_help_lists_every_preset_with_what_it_sets(capsys):
    assert main(["certify", "--help"]) == 0
    text = capsys.readouterr().out
    for name, preset in PRESETS.items():
        assert name in text
    assert "n 100,000" in text and "n 10,000" in text and "reflect-padded" in text


def test_a_preset_fills_what_is_left_out_and_explicit_options_win(tmp_path):
    """carlini23-cifar10 certifies 0.25, 0.5 and 1.0 one at a time: three logs, each a plain Cohen run with the
    preset's alpha, p0 and batch size, and the n0 / n / input size given on the command line."""
    out = tmp_path / "carlini.tsv"
    argv = ["certify", "--preset", "carlini23-cifar10", "--dataset", "digits", "--classifier", "demo", "--denoiser",
            "demo", "--n0", "10", "--n", "30", "--input-size", "8", "--max", "2", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    assert not out.exists()
    for sigma in (0.25, 0.5, 1.0):
        path = tmp_path / f"carlini-sigma{sigma:g}.tsv"
        record = sidecar(path)
        run = record["run"]
        assert (run["method"], run["sigmas"], run["n0"], run["n"], run["alpha"], run["p0"]) == \
            ("certify", [sigma], 10, 30, 0.001, 0.5)
        assert run["selection"]["skip"] == 1 and record["info"]["batch_size"] == 200
        assert run["run"]["classifier"]["input_size"] == [8, 8]
        assert run["run"]["classifier"]["interpolation"] == "bicubic"  # the preset's filter
        assert len(logs.read_log(path)["rows"]) == 2


def test_a_cascade_preset_runs_the_cascade(tmp_path):
    out = tmp_path / "jeong.tsv"
    argv = ["certify", "--preset", "jeong23-cifar10", "--dataset", "digits", "--classifier", "demo", "--denoiser",
            "demo", "--n0", "10", "--n", "30", "--input-size", "8", "--max", "1", "--batch-size", "64", "--quiet",
            "--out", str(out)]
    assert main(argv) == 0
    record = sidecar(out)
    assert record["run"]["method"] == "cascade" and record["run"]["sigmas"] == [1.0, 0.5, 0.25]
    assert record["info"]["batch_size"] == 64  # explicit, not the preset's 5,000


def test_without_sigma_or_preset_the_error_names_sigma(tmp_path, capsys):
    assert main(["certify", "--dataset", "digits", "--classifier", "demo", "--out", str(tmp_path / "x.tsv")]) == 2
    assert capsys.readouterr().err.startswith("msrs: error: sigma")
    assert not (tmp_path / "x.tsv").exists()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_configuration(name):
    from msrs.config import CertifyConfig
    from msrs.openai_unet import BUILTIN_CONFIGS

    preset = PRESETS[name]
    groups = [[s] for s in preset.sigmas] if preset.separate else [list(preset.sigmas)]
    for sigmas in groups:
        CertifyConfig(sigmas, preset.n0, preset.n, preset.alpha, preset.p0, 0, preset.batch_size)
    assert preset.denoiser_config in BUILTIN_CONFIGS
