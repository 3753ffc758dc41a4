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


@pytest.mark.slow
def test_cpu_smoke_sequential_denoised(tmp_path):
    """The step of the second GPU call (--steps setup,sequential_denoised) at tiny sizes: 2 digits, N = 2,000, both
    denoised configurations on the CPU; the summary carries samples, ratios and certified fractions equal to the
    JSON records next to it, and the votes come back as one file per configuration, within the device tool's
    limits on what comes back (8 files with setup.log, at most 2 folders down)."""
    pytest.importorskip("diffusers")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MSRS_BACKEND")}
    env["PYTHON"] = sys.executable
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_check.sh"), str(out), "--cpu-smoke",
                             "--steps", "sequential_denoised"], check=False, cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=1500)
    summary = json.loads((out / "summary.json").read_text())
    step = summary["steps"]["sequential_denoised"]
    assert result.returncode == 0, (step, result.stdout[-3000:], result.stderr[-3000:])
    assert list(summary["steps"]) == ["sequential_denoised"] and step["status"] == "ok" and summary["ok"] is True
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["sequential_denoised-0.25_n2000.json", "sequential_denoised-0.5_n2000.json",
                     "sequential_denoised.log", "summary.json", "votes/denoised-0.25/chunk_00000_00002.npz",
                     "votes/denoised-0.5/chunk_00000_00002.npz"]
    assert len(files) + 1 <= 8  # setup.log comes back too on the GPU
    votes = load_script("benchmarks/votes.py")
    assert list(step["configs"]) == ["denoised-0.25", "denoised-0.5"]
    for name, c in step["configs"].items():
        (record,) = json.loads((out / c["json"]).read_text())
        assert record["config"] == name and record["device"] == "cpu" and record["n"] == 2000
        assert c["status"] == "ok" and c["images"] == c["images_requested"] == 2
        assert c["samples_fixed"] == record["fixed"]["samples"] == 2 * 2100
        assert c["samples_sequential"] == record["sequential"]["samples"] <= c["samples_fixed"]
        assert c["samples_oracle"] == record["oracle"]["samples"] <= c["samples_fixed"]
        assert c["fixed_over_sequential"] == round(c["samples_fixed"] / c["samples_sequential"], 3)
        assert c["sequential_over_oracle"] == round(c["samples_sequential"] / c["samples_oracle"], 3)
        assert c["samples_per_s_fixed"] > 0 and c["samples_per_s_sequential"] > 0
        assert c["table_radii"] == [0, 0.25, 0.5, 0.75, 1, 1.5, 2]
        assert c["certified_equal"] == (c["certified_fixed"] == c["certified_sequential"])
        assert c["certified_fixed"] == record["fixed"]["certified"] and c["replay_matches"] is True
        kept = votes.load(out / "votes" / name, images=2)
        assert kept.votes.shape == (2, 2000) and kept.meta["n"] == 2000
        assert kept.fixed_prediction.tolist() == record["fixed"]["predictions"]
    done = step["configs"].values()
    assert step["samples_total"] == sum(c["samples_fixed"] + c["samples_sequential"] for c in done)
    assert step["samples_per_s"] > 0


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


def _savings_record(images: int, requested: int, n: int = 1000) -> dict:
    """The fields of a benchmarks/sequential_savings.py record the step reads."""
    run = {"per_image": {"median": 1.0, "p90": 1.0, "max": 1}, "table_radii": [0.0, 0.5],
           "certified": [0.9, 0.5], "certified_accuracy": [0.9, 0.5]}
    fixed = dict(run, samples=images * (100 + n), seconds=10.0, samples_per_s=images * (100 + n) / 10.0)
    seq = dict(run, samples=images * 300, seconds=2.0, samples_per_s=images * 150.0, replay_matches=True)
    return {"config": "x", "images": images, "images_requested": requested, "n0": 100, "n": n, "device": "cuda",
            "machine": {"gpu": "H200"}, "fixed": fixed, "sequential": seq,
            "oracle": {"samples": images * 150, "samples_at_looks": images * 160, "per_image": run["per_image"],
                       "final_bucket_matches_fixed": True},
            "samples_ratio": round((100 + n) / 300, 3), "oracle_ratio": 2.0, "oracle_ratio_at_looks": 1.875,
            "time_ratio": 5.0, "max_certified_difference": 0, "images_with_other_bucket": 0,
            "images_in_lower_bucket": 0}


def test_sequential_step_shares_its_limit_and_replays_a_stopped_configuration(tmp_path, monkeypatch):
    """sequential_denoised on stand-in processes: the first configuration is stopped at its limit after two chunks
    of images, and is replayed on them; the second gets the time left, fails with the automatic backend and is run
    again with the reference ops; the step says partial, not ok."""
    check = _load("device_check")
    calls = []

    def fake_run(cmd, log, timeout, env):
        calls.append((cmd, timeout, env.get("MSRS_BACKEND")))
        def arg(key):
            return cmd[cmd.index(key) + 1]

        name, images = arg("--configs"), int(arg("--images"))
        folder = Path(arg("--votes-dir")) / name
        folder.mkdir(parents=True, exist_ok=True)
        if name == "denoised-0.25" and "--replay-only" not in cmd:
            for lo in (0, 10):  # two whole chunks, and a third being written when the limit came
                (folder / f"chunk_{lo:05d}_{lo + 10:05d}.npz").write_bytes(b"x")
            (folder / ".partial_chunk_00020_00030.npz").write_bytes(b"x")
            return None, timeout
        if name == "denoised-0.5" and "MSRS_BACKEND" not in env:
            return 1, 3.0  # a kernel that fails on this GPU
        Path(arg("--json")).write_text(json.dumps([_savings_record(images, images)]))
        kept = Path(arg("--votes-out")) / name
        kept.mkdir(parents=True, exist_ok=True)
        (kept / f"chunk_00000_{images:05d}.npz").write_bytes(b"v" * 100)
        return 0, 1.0

    monkeypatch.setattr(check, "run_command", fake_run)
    ctx = {"smoke": False, "logs": tmp_path, "work": tmp_path / "work", "timeouts": check.TIMEOUTS["gpu"],
           "env": {}}
    result = check.sequential_denoised_step(ctx)
    (first, first_s, _), (replay, replay_s, _), (second, second_s, backend), (retry, _, retry_backend) = calls
    assert first_s == pytest.approx((420 - 40) / 2, abs=1) and first[first.index("--record-seconds") + 1] == "104"
    assert "--replay-only" in replay and replay[replay.index("--images") + 1] == "20" and replay_s <= 40
    assert second_s == pytest.approx(420 - 40, abs=2) and "--replay-only" not in second
    assert first[first.index("--device") + 1] == "cuda" and first[first.index("--n") + 1] == "100000"
    assert backend is None and retry_backend == "torch" and retry == second
    c = result["configs"]["denoised-0.25"]
    assert c["status"].startswith("timeout after 190 s; 20 images replayed") and c["replayed_images"] == 20
    assert c["images"] == 20 and c["images_requested"] == 100
    assert c["votes_file"] == "votes/denoised-0.25/chunk_00000_00020.npz"
    second = result["configs"]["denoised-0.5"]
    assert second["status"] == "ok; backend torch (the automatic backend's run failed: exit code 1)"
    assert second["seconds"] == 4.0
    assert result["status"].startswith("partial: denoised-0.25: timeout after 190 s")
    # both records' samples count; the sequential run of the replayed one has a wall time in the stand-in record
    assert result["samples_total"] == 20 * 1100 + 20 * 300 + 100 * 1100 + 100 * 300
    assert check.recorded_images(tmp_path / "work" / "votes" / "denoised-0.25") == 20


def test_sequential_step_parts(tmp_path, monkeypatch):
    check = _load("device_check")
    folder = tmp_path / "votes" / "a"
    folder.mkdir(parents=True)
    assert check.recorded_images(folder) == 0 and check.keep_votes(folder) == {"votes_file": None}
    for lo, hi in ((0, 10), (10, 20), (30, 40)):  # a gap: images 20 .. 29 were not recorded
        (folder / f"chunk_{lo:05d}_{hi:05d}.npz").write_bytes(b"x" * 10)
    assert check.recorded_images(folder) == 20
    monkeypatch.setattr(check, "VOTES_MAX_BYTES", 5)
    assert check.keep_votes(folder)["votes_file"].startswith("left out: ")
    assert not (folder / "chunk_00030_00040.npz").exists()
    summary = check.summarize_sequential(_savings_record(60, 100))
    assert summary["images"] == 60 and summary["images_requested"] == 100 and summary["gpu"] == "H200"
    assert summary["fixed_over_sequential"] == round(1100 / 300, 3) and summary["certified_equal"] is True
    totals = check.sequential_totals({"a": summary, "b": {"status": "skipped: 10 s left"}})
    assert totals == {"samples_total": 60 * 1400, "engine_seconds": 12.0, "samples_per_s": round(60 * 1400 / 12, 1)}
    with pytest.raises(SystemExit):
        check.main([str(tmp_path / "x"), "--cpu-smoke", "--steps", "setup,nonsense"])


def test_sequential_step_runs_only_when_named_and_takes_a_shorter_limit(tmp_path, monkeypatch):
    check = _load("device_check")
    timeouts = []

    def fake_run(cmd, log, timeout, env):
        timeouts.append(round(timeout))
        out = Path(cmd[cmd.index("--json") + 1])
        out.write_text(json.dumps([_savings_record(100, 100)]))
        return 0, 1.0

    monkeypatch.setattr(check, "run_command", fake_run)
    for step in STEPS:
        monkeypatch.setattr(check, f"{step}_step", lambda ctx: {"status": "ok"})
    assert check.main([str(tmp_path / "default")]) == 0
    assert timeouts == []  # not in the default steps
    assert check.main([str(tmp_path / "short"), "--steps", "sequential_denoised", "--sequential-seconds", "200"]) == 0
    summary = json.loads((tmp_path / "short" / "summary.json").read_text())
    assert summary["timeouts_s"]["sequential_denoised"] == 200 and timeouts == [80, 160]
    assert summary["steps"]["sequential_denoised"]["status"] == "ok"
