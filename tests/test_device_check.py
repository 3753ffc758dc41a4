"""benchmarks/device_check.sh, the prepared GPU check (docs/GPU.md): its --cpu-smoke mode end to end, and the
harness's own logic (time limits, a failing step not stopping the others, parsing, goals) on stand-ins."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("setup", "op_tests", "engine", "ops_bench", "certify_bench")


def _load(name: str):
    return load_script(f"benchmarks/{name}.py")


@pytest.mark.slow
def test_cpu_smoke_runs_every_step(tmp_path):
    """Every step runs at tiny sizes on the CPU and says ok; the CUDA-only checks say "skipped: no CUDA"; the
    summary carries the numbers the GPU run is read for (atomics, bandwidth fractions, certify throughput)."""
    pytest.importorskip("diffusers")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MSRS_BACKEND")}
    env["PYTHON"] = sys.executable  # the interpreter this checkout is installed in
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), str(out), "--cpu-smoke"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000)
    summary = json.loads((out / "summary.json").read_text())
    statuses = {name: step["status"] for name, step in summary["steps"].items()}
    assert result.returncode == 0, (statuses, result.stdout[-3000:], result.stderr[-3000:])
    assert summary["mode"] == "cpu-smoke" and summary["ok"] is True
    assert tuple(summary["steps"]) == STEPS and all(s == "ok" for s in statuses.values()), statuses
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{s}.log" for s in STEPS] + ["summary.json"])

    assert summary["steps"]["setup"]["diffusers"] and summary["steps"]["setup"]["msrs_files"]
    ops_tests = summary["steps"]["op_tests"]
    assert ops_tests["passed"] >= 5 and not ops_tests["failed"] and ops_tests["compiled_on_gpu"] == "skipped: no CUDA"

    parts = summary["steps"]["engine"]["parts"]
    assert [parts[p]["status"] for p in ("counts", "cli", "validity")] == ["ok"] * 3
    assert parts["compile"]["status"] == "skipped: no CUDA"
    assert all(c["votes_moved"] == 0 and c["every_image_got_n_votes"] for c in parts["counts"]["configs"])
    assert [r["run"] for r in parts["cli"]["runs"]] == ["certify", "cascade", "sequential"]
    assert all(r["rows"] == r["rows_in_both"] == 2 and r["rows_differing"] == 0 for r in parts["cli"]["runs"])
    assert parts["validity"]["passed"] == 1 and parts["validity"]["engines_on_device"] >= 1

    ops = summary["steps"]["ops_bench"]
    (atomics,) = ops["atomics"]  # the tiny workload: 2 images x 16 samples, 10 classes, one program
    assert atomics["atomics_per_launch_per_sample"] == 32
    assert 2 <= atomics["atomics_per_launch"] == atomics["atomics_from_grid"] < 32 and atomics["dropped"]
    assert ops["copy_gbps"]["cpu"] > 0
    assert {b["op"] for b in ops["triton_on_large_workloads"]} == {"sample_noisy", "finalize_denoised", "count_votes_"}

    certify = summary["steps"]["certify_bench"]
    assert [r["impl"] for r in certify["impls"]] == ["reference:float32", "reference:float16", "msrs:bfloat16",
                                                     "msrs+channels_last:bfloat16"]
    assert certify["missing"] == [] and certify["msrs+compile:bfloat16"] == "skipped: no CUDA"
    for r in certify["impls"]:
        assert r["samples_per_s"] > 0 and r["unet_fraction_of_bf16_matmul_peak"] > 0 and r["peak_memory_gib"] > 0
    assert certify["impls"][1]["speedup_vs_reference_fp16"] == 1.0
    assert summary["goals"] == {"status": "skipped: no CUDA"}


# ---------------------------------------------------------------------------------------------- the harness logic
def test_time_limit_kills_the_whole_process_group(tmp_path):
    check = _load("device_check")
    log = tmp_path / "step.log"
    marker = tmp_path / "child-survived"
    # a parent that starts a child which would write the marker after the limit: both must die
    code = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
            f"\"import time; time.sleep(3); open({str(marker)!r}, 'w').write('x')\"]); time.sleep(30)")
    start = time.monotonic()
    exit_code, seconds = check.run_command([sys.executable, "-c", code], log, timeout=1.5, env=dict(os.environ))
    assert exit_code is None and seconds < 10 and time.monotonic() - start < 10
    time.sleep(3)
    assert not marker.exists()
    assert "stopped at its time limit" in log.read_text()
    assert check.status_of(None, seconds, 1.5, []) == "timeout after 2 s"
    assert check.status_of(0, 1.0, 5, []) == "ok"
    assert check.status_of(0, 1.0, 5, ["x"]) == "failed: x"
    assert check.status_of(3, 1.0, 5, []) == "failed: exit code 3"


def test_a_failing_step_does_not_stop_the_others(tmp_path, monkeypatch):
    check = _load("device_check")
    ran = []

    def fake(name, status):
        def step(ctx):
            ran.append(name)
            if status == "raise":
                raise RuntimeError("boom")
            return {"status": status}
        return step

    monkeypatch.setattr(check, "setup_step", fake("setup", "ok"))
    monkeypatch.setattr(check, "op_tests_step", fake("op_tests", "raise"))
    monkeypatch.setattr(check, "engine_step", fake("engine", "timeout after 190 s"))
    monkeypatch.setattr(check, "ops_bench_step", fake("ops_bench", "ok"))
    monkeypatch.setattr(check, "certify_bench_step", fake("certify_bench", "skipped: no CUDA"))
    assert check.main([str(tmp_path), "--cpu-smoke"]) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert sorted(ran) == sorted(STEPS) and set(summary["steps"]) == set(STEPS)
    assert summary["steps"]["op_tests"]["status"] == "failed: harness error RuntimeError: boom"
    assert summary["ok"] is False
    # only the steps asked for
    ran.clear()
    assert check.main([str(tmp_path / "two"), "--cpu-smoke", "--steps", "setup,ops_bench"]) == 0
    assert ran == ["setup", "ops_bench"]


def test_junit_parsing(tmp_path):
    check = _load("device_check")
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<testsuites><testsuite tests="4">'
        '<testcase classname="tests.test_ops" name="test_a[triton-cuda-x]"/>'
        '<testcase classname="tests.test_ops" name="test_b[cpp-cpu]"><skipped message="no"/></testcase>'
        '<testcase classname="tests.test_ops_triton" name="test_c"/>'
        '<testcase classname="tests.test_ops_triton" name="test_d"><failure message="bad"/></testcase>'
        "</testsuite></testsuites>")
    result = check.junit(xml)
    assert result["tests"] == 4 and result["passed"] == 2 and result["triton_cuda_passed"] == 1
    assert result["compiled_triton_module_passed"] == 1 and result["failed"] == ["tests.test_ops_triton::test_d"]
    assert result["skipped"] == ["tests.test_ops::test_b[cpp-cpu]: no"]
    assert check.junit(tmp_path / "missing.xml") == {}


def test_goals_from_step_numbers():
    check = _load("device_check")
    steps = {
        "ops_bench": {"triton_on_large_workloads": [
            {"op": "sample_noisy", "workload": "cifar-large", "backend": "triton-direct-cuda",
             "fraction_of_copy_bandwidth": 0.8},
            {"op": "finalize_denoised", "workload": "cifar-large", "backend": "triton-direct-cuda",
             "fraction_of_copy_bandwidth": 0.65},
            {"op": "count_votes_", "workload": "cifar-large", "backend": "triton-direct-per-sample-cuda",
             "fraction_of_copy_bandwidth": 0.01}]},
        "certify_bench": {"impls": [
            {"impl": "reference:float16", "samples_per_s": 5000.0, "speedup_vs_reference_fp16": 1.0},
            {"impl": "msrs:bfloat16", "samples_per_s": 12000.0, "speedup_vs_reference_fp16": 2.4},
            {"impl": "msrs+compile:bfloat16", "samples_per_s": 16000.0, "speedup_vs_reference_fp16": 3.2}]},
    }
    goals = check.goals(steps, smoke=False)
    assert goals["ops_fraction_of_copy_bandwidth"] == {"sample_noisy/cifar-large": 0.8,
                                                       "finalize_denoised/cifar-large": 0.65}
    assert goals["ops_goal_met"] is False  # finalize_denoised below 0.7
    assert goals["certify_best_msrs"] == "msrs+compile:bfloat16" and goals["certify_goal_met"] is True
    steps["certify_bench"]["impls"][2]["samples_per_s"] = 9000.0
    assert check.goals(steps, smoke=False)["certify_goal_met"] is False  # best is now msrs:bf16 at 2.4x
    assert check.goals(steps, smoke=True) == {"status": "skipped: no CUDA"}


def test_summaries_of_the_benchmark_records():
    check = _load("device_check")
    records = [
        {"op": "copy", "backend": "torch-cuda", "workload": "1024 MiB", "device": "cuda", "gbps": 3000.0},
        {"op": "count_votes_", "backend": "triton-direct-cuda", "workload": "cifar-large", "device": "cuda",
         "gbps": 10.0, "fraction_of_copy_bandwidth": 0.003, "speedup_vs_unfused": 50.0, "seconds": 1e-4,
         "atomics_per_launch": 600, "atomics_per_launch_per_sample": 65536, "atomics_from_grid": 600},
        {"op": "count_votes_", "backend": "triton-direct-per-sample-cuda", "workload": "cifar-large",
         "device": "cuda", "gbps": 5.0, "fraction_of_copy_bandwidth": 0.002, "speedup_vs_unfused": 20.0,
         "seconds": 2e-4, "atomics_per_launch": 600, "atomics_per_launch_per_sample": 65536,
         "atomics_from_grid": 600},
        {"op": "sample_noisy", "backend": "unfused-cuda", "workload": "cifar-large", "device": "cuda", "gbps": 900.0,
         "fraction_of_copy_bandwidth": 0.3, "speedup_vs_unfused": 1.0, "seconds": 1e-3},
    ]
    ops = check.summarize_ops(records, smoke=False)
    assert ops["copy_gbps"] == {"cuda": 3000.0}
    assert [a["dropped"] for a in ops["atomics"]] == [True]  # the per-sample timing variant is not counted twice
    assert [b["backend"] for b in ops["triton_on_large_workloads"]] == ["triton-direct-cuda",
                                                                       "triton-direct-per-sample-cuda"]
    certify = check.summarize_certify([
        dict(impl="reference", dtype="float16", seconds=4.0, batch_size=1000, samples_per_s=2000.0, images_per_s=1.0,
             speedup_vs_reference=2.0, unet_time_fraction=0.9, unet_gflop_per_s=100.0, peak_memory_bytes=2**30,
             matmul_peak_gflop_per_s=400.0, device="cuda (H100)"),
        dict(impl="msrs", dtype="bfloat16", seconds=1.0, batch_size=4096, samples_per_s=8000.0, images_per_s=4.0,
             speedup_vs_reference=8.0, unet_time_fraction=0.8, unet_gflop_per_s=300.0, peak_memory_bytes=2**31,
             matmul_peak_gflop_per_s=600.0, device="cuda (H100)"),
    ], "reference,reference:float16,msrs:bfloat16")
    assert certify["missing"] == ["reference:float32"] and certify["bf16_matmul_peak_gflop_per_s"] == 600.0
    msrs = certify["impls"][1]
    assert msrs["speedup_vs_reference_fp16"] == 4.0 and msrs["unet_fraction_of_bf16_matmul_peak"] == 0.5
    assert msrs["peak_memory_gib"] == 2.0


def test_validity_plugin_wrappers():
    plugin = _load("device_pytest_plugin")
    calls = []

    def classifier(z):
        calls.append(z.device.type)
        return z.flatten(1)[:, :2]

    wrapped = plugin.HostCallable(classifier)
    x = torch.rand(3, 1, 2, 2)
    assert torch.equal(wrapped(x), x.flatten(1)[:, :2]) and calls == ["cpu"]

    class Denoiser:
        in_channels = 1

        def timestep_for(self, sigma):
            return 5, 0.5

        def predict_eps(self, x_t, timesteps):
            return x_t * 2 + timesteps.reshape(-1, 1, 1, 1)

    host = plugin.HostDenoiser(Denoiser())
    assert host.in_channels == 1 and host.timestep_for(0.5) == (5, 0.5)
    torch.testing.assert_close(host.predict_eps(x, torch.arange(3)), x * 2 + torch.arange(3).reshape(-1, 1, 1, 1))
