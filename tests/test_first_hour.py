"""What a new user meets in the first hour (issue 13): `--dtype auto` and its record, the warning for an emulated
dtype, the --compile advice, an unusable --out found before anything loads, the resume message, folder labels and
their record, and the --num-classes hint."""
from __future__ import annotations

import json

import pytest
import torch

import msrs.data
import msrs.models
from msrs import hardware, logs
from msrs.cli import main

BASE = ["certify", "--dataset", "digits", "--classifier", "demo", "--sigma", "0.25", "--n0", "10", "--n", "20",
        "--max", "2", "--device", "cpu"]


def sidecar(out):
    return json.loads(logs.sidecar_path(out).read_text())


def test_auto_dtype_is_recorded_as_the_dtype_used(tmp_path, capsys):
    """The suite pins "auto" to float32 (conftest.py): the log records float32, never "auto", and the reason."""
    out = tmp_path / "auto.tsv"
    assert main(BASE + ["--out", str(out)]) == 0
    record = sidecar(out)
    assert record["run"]["run"]["dtype"] == "float32"
    assert record["info"]["dtype"] == "auto" and "MSRS_AUTO_DTYPE" in record["info"]["dtype_reason"]
    assert "msrs: dtype float32" in capsys.readouterr().err


def test_a_forced_emulated_dtype_warns_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(hardware, "native_support", lambda dtype, device: (False, "bfloat16 emulated on this CPU"))
    out = tmp_path / "bf16.tsv"
    assert main(BASE + ["--dtype", "bfloat16", "--out", str(out)]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "--dtype bfloat16 is slow here" in warnings[0] and "16x slower" in warnings[0]
    assert sidecar(out)["run"]["run"]["dtype"] == "bfloat16"


def test_compile_says_whether_the_run_is_long_enough(tmp_path, capsys, monkeypatch):
    """Only the message is checked (compiling here would take minutes): the run's sample count goes in."""
    seen = {}

    def advice(samples, device):
        seen["samples"] = samples
        return False, "not worth it for this test"

    monkeypatch.setattr(hardware, "compile_advice", advice)
    monkeypatch.setattr("msrs.compiled.compile_model", lambda module, device: module)  # no real compile
    assert main(BASE + ["--compile", "--out", str(tmp_path / "c.tsv")]) == 0
    assert seen["samples"] == 2 * (10 + 20)
    assert "--compile: the first batch compiles" in capsys.readouterr().err


@pytest.fixture()
def no_loading(monkeypatch):
    """Any data or model loading fails the test: what is checked must be checked before."""
    def fail(*args, **kwargs):
        raise AssertionError("loaded data or a model before checking --out")

    monkeypatch.setattr(msrs.data, "load_dataset", fail)
    monkeypatch.setattr(msrs.models, "load_classifier", fail)


def test_a_finished_log_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    out = tmp_path / "done.tsv"
    assert main(BASE + ["--out", str(out), "--quiet"]) == 0
    before = out.read_bytes()
    capsys.readouterr()

    def fail(*args, **kwargs):
        raise AssertionError("loaded data or a model before checking --out")

    monkeypatch.setattr(msrs.data, "load_dataset", fail)
    assert main(BASE + ["--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("msrs: error: out:") and str(out) in err and "already complete" in err
    assert out.read_bytes() == before


def test_an_out_under_a_file_is_refused_before_loading(tmp_path, capsys, no_loading):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(BASE + ["--out", str(blocker / "run.tsv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("msrs: error:") and str(blocker) in err


def test_a_resumed_run_says_so(tmp_path, capsys):
    from test_runner import KW, FakeSmoothed, Interrupt, make_dataset

    from msrs.runner import certify_dataset

    out = tmp_path / "k.tsv"
    with pytest.raises(Interrupt):
        certify_dataset(FakeSmoothed(fail_after_calls=1), make_dataset(12), out, **KW)
    done = len(logs.read_log(out)["rows"])
    assert 0 < done < 12
    certify_dataset(FakeSmoothed(), make_dataset(12), out, **{**KW, "progress": True})
    assert f"resuming {out}: {done} of 12 images done" in capsys.readouterr().err


def test_folder_labels_follow_class_names_and_are_recorded(tmp_path):
    from PIL import Image

    root = tmp_path / "images"
    for name, value in (("b", 40), ("a", 200)):
        (root / name).mkdir(parents=True)
        Image.fromarray(torch.full((8, 8), value, dtype=torch.uint8).numpy(), mode="L").save(root / name / "x.png")
    out = tmp_path / "folder.tsv"
    argv = ["certify", "--dataset", f"folder:{root}", "--grayscale", "--class-names", "b", "a", "--classifier",
            "demo", "--num-classes", "10", "--sigma", "0.25", "--n0", "10", "--n", "20", "--device", "cpu",
            "--quiet", "--out", str(out)]
    assert main(argv) == 0
    assert sidecar(out)["info"]["class_index"] == {"b": 0, "a": 1}
    assert [row["label"] for row in logs.read_log(out)["rows"]] == [0, 1]  # b's image first, with label 0


def test_a_wrong_output_width_suggests_num_classes(tmp_path, capsys):
    """The demo classifier has 10 outputs: telling msrs 12 classes fails on the first batch with the hint."""
    assert main(BASE + ["--num-classes", "12", "--out", str(tmp_path / "w.tsv"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "expected float logits of shape" in err and "pass --num-classes 10" in err
