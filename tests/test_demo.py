"""msrs demo: argument errors before loading, the intervals and the claim check against independent computations,
the time estimate, and one tiny end-to-end run on the shipped models."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from scipy.stats import beta

from msrs import demo, zoo


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    demo.add_arguments(p)
    return p.parse_args(list(argv))


@pytest.mark.parametrize("k, n", [(0, 100), (3, 100), (97, 100), (100, 100), (1, 7), (50, 288)])
def test_confidence_interval_is_clopper_pearson(k, n):
    # the textbook definition through beta quantiles, each side at 2.5%
    lo = 0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1)
    hi = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
    got = demo.confidence_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-12)
    assert got[0] <= k / n <= got[1]


def test_claim_check_boundaries():
    radii = [0.0, 0.5, 1.0]
    counts = {"denoised-0.25": np.array([98, 80, 0]), "denoised-0.5": np.array([90, 70, 20]),
              "cascade-finetuned": np.array([95, 75, 20])}
    result = demo.claim(counts, 100, [0.5, 0.25], radii)
    assert result["r0"]["reference"] == "denoised-0.25" and result["top"]["reference"] == "denoised-0.5"
    assert result["r0"]["holds"] and result["r0"]["difference"] == pytest.approx(-0.03)  # exactly 3 points: holds
    assert result["top"]["holds"] and result["top"]["radius"] == 1.0
    counts["cascade-finetuned"] = np.array([94, 75, 19])
    result = demo.claim(counts, 100, [0.5, 0.25], radii)
    assert not result["r0"]["holds"] and not result["top"]["holds"]
    assert "NO" in demo.format_claim(result, 100)


def test_arguments_are_checked_before_any_loading(monkeypatch, tmp_path):
    def boom(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(zoo, "load_demo_classifier", boom)
    monkeypatch.setattr(zoo, "load_demo_denoiser", boom)
    cases = [(["--images", "0"], "images"), (["--images", "361"], "images"), (["--sigmas", "0.5", "-1"], "sigmas"),
             (["--sigmas", "0.5", "0.5"], "sigmas"), (["--radii", "-0.5"], "radii"), (["--group-size", "0"], "group"),
             (["--alpha-schedule", "paper"], "alpha_schedule"), (["--n0", "200", "--n", "100"], "n0"),
             (["--alpha", "1.5"], "alpha")]
    for argv, word in cases:
        with pytest.raises(ValueError, match=word):
            demo.run(parse("--out", str(tmp_path / "o"), *argv))
    assert not (tmp_path / "o").exists()


def test_estimate_scales_the_recorded_run(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "models_digest", lambda: "m")
    args = parse("--images", "50", "--n0", "10", "--n", "90", "--sigmas", "0.5", "0.25", "--out", str(tmp_path))
    plan = demo.runs(args.sigmas)
    rates = {"none": 4000.0, "ddpm": 500.0}
    worst = sum(50 * len(s) * 100 / rates["none" if k == "none" else "ddpm"] for _, s, k in plan)
    record = {"settings": demo.settings(args), "images": 100, "calibration": {"none": 8000.0, "ddpm": 1000.0},
              "runs": {name: {"seconds": 10.0} for name, _, _ in plan}}
    got = demo.estimate(plan, args, rates, record, tmp_path)
    # each run: 10 s recorded on a machine twice as fast, for twice the images -> 10 s here
    assert got["seconds"] == pytest.approx(10.0 * len(plan)) and got["worst_seconds"] == pytest.approx(worst)
    record["settings"] = dict(record["settings"], n=1000)
    assert demo.estimate(plan, args, rates, record, tmp_path)["seconds"] is None
    assert demo.estimate(plan, args, rates, None, tmp_path)["seconds"] is None


def test_tiny_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ("--out", str(out), "--images", "2", "--n0", "10", "--n", "60", "--batch-size", "200", "--group-size",
            "2", "--no-progress", "--radii", "0", "0.25")
    assert demo.run(parse(*argv)) == 0
    text = capsys.readouterr().out
    assert "expected time on this machine" in text.splitlines()[0]
    assert "95% confidence intervals" in text and "The paper's claim" in text
    summary = json.loads((out / "summary.json").read_text())
    names = [name for name, _, _ in demo.runs(demo.SIGMAS)]
    assert list(summary["runs"]) == names
    from msrs import report

    for name in names:  # the summary's counts are the logs' certified counts
        log = report.load(out / f"{name}.tsv")
        ok = (log["correct"] == 1) & (log["predict"] >= 0)
        assert summary["table"][name]["certified"] == [int(ok.sum()), int((ok & (log["radius"] >= 0.25)).sum())]
        assert summary["runs"][name]["samples"]["total"] == int(log["samples"].sum())
        assert summary["runs"][name]["samples"]["max"] <= len(demo.runs(demo.SIGMAS)[names.index(name)][1]) * 70
    assert demo.run(parse(*argv)) == 0  # a second run reuses every finished log
    assert capsys.readouterr().out.count("reusing the finished log") == len(names)
