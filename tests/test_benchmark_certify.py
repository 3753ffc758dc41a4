"""Smoke test of benchmarks/certify.py: every implementation runs on a tiny demo workload and the JSON records have
the documented fields (the throughput numbers themselves are not checked)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("bench_certify", ROOT / "benchmarks" / "certify.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_smoke(tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    monkeypatch.setenv("MSRS_BACKEND", "torch")  # no C++ build needed here
    bench = _load()
    out = tmp_path / "bench.json"
    assert bench.main(["--workloads", "demo", "--impls", "reference,msrs,msrs+sequential", "--images", "2",
                       "--n0", "4", "--n", "16", "--batch-size", "8", "--repeat", "1", "--threads", "1",
                       "--device", "cpu", "--json", str(out)]) == 0
    records = json.loads(out.read_text())
    assert [r["impl"] for r in records] == ["reference", "msrs", "msrs+sequential"]
    for r in records:
        for key in ("workload", "device", "impl", "samples_per_s", "speedup_vs_reference", "unet_time_fraction",
                    "peak_memory_bytes", "batch_size"):
            assert key in r
        assert r["workload"] == "demo" and r["samples_per_s"] > 0 and r["peak_memory_bytes"] > 0
        assert 0 < r["unet_time_fraction"]
        assert r["batch_size"] == 8
    assert records[0]["speedup_vs_reference"] == 1.0
    assert records[2]["samples_drawn"] <= 2 * (4 + 16)
