"""Smoke test of benchmarks/certify.py: every implementation runs on a tiny demo workload and the JSON records have
the documented fields (the throughput numbers themselves are not checked)."""
from __future__ import annotations

import json

import pytest
from conftest import load_script


def _load():
    return load_script("benchmarks/certify.py")


def test_demo_smoke(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    monkeypatch.setenv("MSRS_BACKEND", "torch")  # no C++ build needed here
    bench = _load()
    out = tmp_path / "bench.json"
    assert bench.main(["--workloads", "demo", "--impls", "reference,msrs,msrs+sequential,msrs:bfloat16", "--images", "2",
                       "--n0", "4", "--n", "16", "--batch-size", "8", "--repeat", "1", "--threads", "1",
                       "--device", "cpu", "--matmul-size", "256", "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [(r["impl"], r["dtype"]) for r in records] == [("reference", "float32"), ("msrs", "float32"),
                                                          ("msrs+sequential", "float32"), ("msrs", "bfloat16")]
    for r in records:
        for key in ("workload", "device", "impl", "dtype", "samples_per_s", "images_per_s", "speedup_vs_reference",
                    "speedup_vs_reference_same_dtype", "unet_time_fraction", "unet_fraction_of_matmul_peak",
                    "peak_memory_bytes", "batch_size"):
            assert key in r
        assert r["workload"] == "demo" and r["samples_per_s"] > 0 and r["peak_memory_bytes"] > 0
        assert 0 < r["unet_time_fraction"]
        assert r["batch_size"] == 8
    assert records[0]["speedup_vs_reference"] == 1.0
    assert records[3]["speedup_vs_reference_same_dtype"] is None  # no bf16 reference in this run
    assert 0 < records[1]["unet_fraction_of_matmul_peak"] < 2
    assert records[2]["samples_drawn"] <= 2 * (4 + 16)


def test_impl_specs():
    bench = _load()
    assert bench.parse_impl("reference", "bfloat16") == ("reference", "float32")  # the field's code runs fp32
    assert bench.parse_impl("msrs", "bfloat16") == ("msrs", "bfloat16")
    assert bench.parse_impl("msrs+compile:float16", "float32") == ("msrs+compile", "float16")
    with pytest.raises(ValueError, match="unknown 'fast'"):
        bench.parse_impl("fast", "float32")
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        bench.parse_impl("msrs:int8", "float32")


def test_sequential_savings_smoke(tmp_path):
    """benchmarks/sequential_savings.py on 3 digits: both runs certify the same images, the sequential one draws
    at most the fixed run's samples (n is its budget) and the record says whether the tables are equal."""
    module = load_script("benchmarks/sequential_savings.py")
    out = tmp_path / "savings.json"
    assert module.main(["--configs", "smooth-0.25", "--images", "3", "--n0", "10", "--n", "300", "--batch-size", "64",
                        "--json", str(out)]) == 0
    (record,) = json.loads(out.read_text())
    assert record["config"] == "smooth-0.25" and record["samples_fixed"] == 3 * 310
    assert len(record["models"]["classifier"]) == 64 and record["models"]["denoiser"] is None  # sha256 hex
    assert 3 * (10 + 64) <= record["samples_sequential"] <= record["samples_fixed"]
    assert record["table_equal"] == (record["table_fixed"] == record["table_sequential"])
    assert len(record["table_fixed"]) == len(module.DEFAULT_RADII)


def test_sequential_savings_time_budget_and_kept_votes(tmp_path):
    """--record-seconds stops the fixed-n recording after the first chunk (both runs then certify that image only,
    and the record says how many were asked for); --votes-out keeps the votes as one chunk, which a --replay-only
    run reads back without sampling (the same fixed-n record, its recorded seconds included)."""
    module = load_script("benchmarks/sequential_savings.py")
    common = ["--configs", "smooth-0.25", "--n0", "10", "--n", "300", "--batch-size", "64", "--chunk", "1"]
    first = tmp_path / "first.json"
    assert module.main([*common, "--images", "3", "--record-seconds", "0", "--votes-dir", str(tmp_path / "votes"),
                        "--votes-out", str(tmp_path / "kept"), "--json", str(first)]) == 0
    (record,) = json.loads(first.read_text())
    assert record["images"] == 1 and record["images_requested"] == 3 and record["device"] == "cpu"
    assert record["fixed"]["samples"] == 310 and len(record["sequential"]["predictions"]) == 1
    assert record["sequential"]["replay_matches"] is True and record["fixed"]["samples_per_s"] > 0
    assert sorted(p.name for p in (tmp_path / "kept" / "smooth-0.25").iterdir()) == ["chunk_00000_00001.npz"]
    again = tmp_path / "again.json"
    assert module.main([*common, "--images", "1", "--votes-dir", str(tmp_path / "kept"), "--replay-only",
                        "--json", str(again)]) == 0
    (replayed,) = json.loads(again.read_text())
    assert replayed["fixed"] == record["fixed"] and replayed["oracle"] == record["oracle"]
    for key in ("predictions", "radii", "samples_per_image"):
        assert replayed["sequential"][key] == record["sequential"][key]


def test_recorded_votes_of_other_weights_or_images_are_recorded_again(tmp_path, monkeypatch):
    """The votes of a chunk belong to the models that cast them and the images they were cast on: after the demo
    classifier's weights change, or under the same image ids other images or labels, the chunk is recorded again
    (its votes are the ones a fresh folder gives), never replayed as this run's; with the same weights and images
    the chunk is reused, not re-run."""
    import types

    import numpy as np
    import torch

    votes = load_script("benchmarks/votes.py")
    x, y = votes.zoo.digits_split("test")
    x, y = x[:2], np.asarray(y[:2])
    args = types.SimpleNamespace(n0=10, n=200, alpha=0.001, seed=0, dtype="float32", device="cpu", batch_size=64)
    first = votes.record("smooth-0.25", "none", 0.25, x, y, args, tmp_path / "votes", chunk=2)
    chunk = tmp_path / "votes" / "chunk_00000_00002.npz"
    stamp = chunk.stat().st_mtime_ns
    again = votes.record("smooth-0.25", "none", 0.25, x, y, args, tmp_path / "votes", chunk=2)
    assert chunk.stat().st_mtime_ns == stamp and np.array_equal(again.votes, first.votes)

    load_classifier = votes.zoo.load_demo_classifier

    def retrained(device="cpu"):  # the same architecture with other weights: the last layer favours class 3
        model, mean, std, num_classes = load_classifier(device)
        with torch.no_grad():
            model[-1].bias[3] += 4.0
        return model, mean, std, num_classes

    monkeypatch.setattr(votes.zoo, "load_demo_classifier", retrained)
    stale = votes.record("smooth-0.25", "none", 0.25, x, y, args, tmp_path / "votes", chunk=2)
    fresh = votes.record("smooth-0.25", "none", 0.25, x, y, args, tmp_path / "fresh", chunk=2)
    assert not np.array_equal(fresh.votes, first.votes)  # the retrained model votes otherwise
    assert np.array_equal(stale.votes, fresh.votes) and stale.meta == fresh.meta
    assert stale.meta["models"]["classifier"] != first.meta["models"]["classifier"]
    assert first.meta["models"]["denoiser"] is None

    # Other images under the same ids (the validation digits; one pixel changed; one label changed) are another run:
    # their chunk is recorded again, with the fresh folder's votes, never the stored chunk reused.
    monkeypatch.setattr(votes.zoo, "load_demo_classifier", load_classifier)
    votes.record("smooth-0.25", "none", 0.25, x, y, args, tmp_path / "votes", chunk=2)
    xv, yv = votes.zoo.digits_split("validation")
    nudged = x.clone()
    nudged[1, 0, 4, 4] += 0.5
    relabelled = y.copy()
    relabelled[0] = (relabelled[0] + 1) % 10
    for i, (images, labels) in enumerate([(xv[:2], np.asarray(yv[:2])), (nudged, y), (x, relabelled)]):
        stamp = chunk.stat().st_mtime_ns
        other = votes.record("smooth-0.25", "none", 0.25, images, labels, args, tmp_path / "votes", chunk=2)
        alone = votes.record("smooth-0.25", "none", 0.25, images, labels, args, tmp_path / f"alone{i}", chunk=2)
        assert chunk.stat().st_mtime_ns != stamp and np.array_equal(other.labels, labels)
        assert np.array_equal(other.votes, alone.votes) and np.array_equal(other.counts0, alone.counts0)
        assert not np.array_equal(other.image_digests, first.image_digests)
    assert not np.array_equal(other.image_digests, votes.image_digests(x, y))  # the label alone changes the digest

    # The device is part of the run: the same chunk stamped as recorded on a GPU (where kernels round otherwise)
    # is recorded again on the CPU, not replayed as this run's votes.
    mine = votes.record("smooth-0.25", "none", 0.25, x, y, args, tmp_path / "votes", chunk=2)
    assert mine.meta["device"] == "cpu"
    on_gpu = dict(np.load(chunk))
    on_gpu["meta"] = json.dumps({**json.loads(str(on_gpu["meta"])), "device": "cuda:0"})
    np.savez(chunk, **on_gpu)
    stamp = chunk.stat().st_mtime_ns
    again = votes.record("smooth-0.25", "none", 0.25, x, y, args, tmp_path / "votes", chunk=2)
    assert chunk.stat().st_mtime_ns != stamp and again.meta["device"] == "cpu"
    assert np.array_equal(again.votes, mine.votes)

    # a chunk written before image digests were kept is not read as this run's
    legacy = dict(np.load(chunk))
    del legacy["image_digests"]
    np.savez(chunk, **legacy)
    with pytest.raises(ValueError, match="without image digests"):
        votes.load(tmp_path / "votes", images=2)


def test_sequential_savings_grid_replays_the_default_among_its_rules(tmp_path):
    """--grid replays sequential_simulations.GRID's 12 rules on the recorded votes; the one with the default's
    options (spending, futility 0.02, ramp 0.1) draws exactly the samples of the engine's sequential run, and
    every rule certifies the same images."""
    module = load_script("benchmarks/sequential_savings.py")
    out = tmp_path / "grid.json"
    assert module.main(["--configs", "smooth-0.25", "--images", "4", "--n0", "10", "--n", "2000", "--batch-size",
                        "512", "--chunk", "4", "--grid", "--variants", "betting", "--json", str(out)]) == 0
    (record,) = json.loads(out.read_text())
    rules = record["variants"]
    assert len(rules) == 13 and rules["betting"]["options"] == {"bound": "betting"}
    default = rules["spending fut 0.02 ramp 0.1"]
    assert default["options"] == {"bound": "spending", "futility": 0.02, "futility_ramp": 0.1}
    assert default["samples"] == record["sequential"]["samples"] and record["sequential"]["replay_matches"]
    assert rules["betting fut 0.02 ramp 0.1"]["samples"] == rules["betting"]["samples"]
    assert {name for name, rule in rules.items() if rule["samples"] != default["samples"]}  # the rules differ


def test_quoted_sequential_results_are_the_shipped_models_and_the_readme_quotes_them():
    """The README's two sequential-savings tables quote benchmarks/results/sequential_smooth-0.25_n100000.json and
    sequential_denoised-0.25_n100000.json; those records, and the other smooth and denoised ones beside them, must
    come from the shipped demo models' votes (the weights' digests recorded with them), and the README's numbers
    must be the records'. The earlier records came from the
    classifier before its retraining and were quoted as this one's; their *_pre-retraining.json copies are exempt."""
    from pathlib import Path

    from msrs import zoo

    votes = load_script("benchmarks/votes.py")
    savings = load_script("benchmarks/sequential_savings.py")
    root = Path(__file__).resolve().parents[1]
    classifier = zoo.load_demo_classifier()[0]
    shipped = {"none": votes.models_digest(classifier, None),
               "plain": votes.models_digest(classifier, zoo.load_demo_denoiser())}
    files = sorted(p for pattern in ("sequential_smooth-0.25_n100000*.json", "sequential_denoised-*.json")
                   for p in (root / "benchmarks" / "results").glob(pattern) if "pre-retraining" not in p.name)
    assert len(files) >= 4
    for path in files:
        for record in json.loads(path.read_text()):
            kind = savings.CONFIGS[record["config"]][0]
            assert record.get("models") == shipped[kind], f"{path.name}: recorded with other weights than the shipped"
    readme = " ".join((root / "README.md").read_text().split())  # line breaks do not matter
    for name in ("smooth-0.25", "denoised-0.25"):  # the classifier alone and behind the denoiser: two tables
        (record,) = json.loads((root / f"benchmarks/results/sequential_{name}_n100000.json").read_text())
        assert record["images"] == 100 and record["n"] == 100000
        sequential = record["sequential"]
        row = f"| sequential (default) | {sequential['samples']:,} | **{record['samples_ratio']:.1f}x fewer** |"
        assert row in readme, name
        assert f"| fixed n | {record['fixed']['samples']:,} | 1x |" in readme
        assert f"| hindsight oracle | {record['oracle']['samples']:,} |" in readme, name
        assert f"{record['oracle_ratio']:.1f}x the oracle's samples" in readme, name
        per_image = sequential["per_image"]
        assert f"| {per_image['median']:,.0f} / {per_image['p90']:,.0f} / {per_image['max']:,} |" in readme, name
