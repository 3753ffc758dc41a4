"""The single prepared GPU check of issue 15 (docs/GPU.md). Run it through benchmarks/device_check.sh:

    bash benchmarks/device_check.sh OUTDIR               # on a GPU (H100 class): at most ~8 minutes
    bash benchmarks/device_check.sh OUTDIR --cpu-smoke   # tiny sizes on a CPU, about a minute on an idle machine

Writes OUTDIR/summary.json and one log per step (OUTDIR/<step>.log; 6 files in all). Steps, each a process of its
own with its own time limit, a failing or stopped step never stopping the others:
  setup          versions, GPU and driver; installs diffusers from the carried wheel folder when it is missing (no
                 network), and msrs itself (editable, for msrs.kernels) when it is not importable
  op_tests       tests/test_ops_triton.py, the triton-cuda half of tests/test_ops.py's backend matrix and the CUDA
                 tests of tests/test_compiled.py, with the kernels compiled for the GPU (TRITON_INTERPRET unset)
  engine         benchmarks/device_engine.py: counts CUDA vs CPU, `msrs certify` (certify, cascade, sequential) on
                 CUDA vs CPU, --compile (CUDA graphs) vs eager, tests/test_validity.py with the engine on CUDA
  ops_bench      benchmarks/ops.py on the GPU: bandwidth as a fraction of a copy measured in the same run, atomics
  certify_bench  benchmarks/certify.py --device cuda on the CIFAR-10 DDPM workload: the field's loop (fp32, fp16
                 autocast) against msrs (bf16, compile, large mixed batches, channels_last)
op_tests and engine run side by side (neither is timed); ops_bench and certify_bench run alone after them.
One more step runs only when --steps names it (a second call of its own, docs/GPU.md):
  sequential_denoised  benchmarks/sequential_savings.py on the GPU for denoised-0.25 and denoised-0.5: fixed n
                 against sequential certification with the same budget and the hindsight oracle, N = 100,000, the
                 first 100 test digits; one process per configuration, each writing its JSON record and votes
                    bash benchmarks/device_check.sh OUTDIR --steps setup,sequential_denoised
Each step's status: "ok", "failed: ...", "timeout after N s", or "skipped: ..." (sequential_denoised also
"partial: ...": fewer images than asked, or a configuration replayed after its time limit); CUDA-only checks in
--cpu-smoke mode are "skipped: no CUDA". The summary's "goals" compare the measured numbers with issue 15's goals.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELHOUSE_ENV = "MSRS_WHEELHOUSE"
NO_CUDA = "skipped: no CUDA"

# Seconds per step (certify_bench: its two runs). GPU: setup + max(op_tests, engine) + ops_bench + certify_bench
# = 30 + 200 + 45 + 70 + 120 = 465 s, within 8 minutes even if every step runs to its limit. sequential_denoised
# runs in a call of its own: setup + sequential_denoised = 30 + 420 = 450 s.
TIMEOUTS = {
    "gpu": {"setup": 30, "op_tests": 200, "engine": 200, "ops_bench": 45, "certify_bench": (70, 120),
            "sequential_denoised": 420},
    # generous: the smoke checks code paths, and CPU machines shared by many jobs can be 10x slower than idle ones
    "cpu-smoke": {"setup": 300, "op_tests": 600, "engine": 600, "ops_bench": 300, "certify_bench": (600,),
                  "sequential_denoised": 600},
}
DEFAULT_STEPS = ("setup", "op_tests", "engine", "ops_bench", "certify_bench")
EXTRA_STEPS = ("sequential_denoised",)  # run only when --steps names them
OPS_LARGE = ("cifar-large", "imagenet-large")
CERTIFY_IMPLS = {  # one benchmarks/certify.py run per entry
    "gpu": ("reference,reference:float16,msrs:bfloat16,msrs+channels_last:bfloat16", "msrs+compile:bfloat16"),
    "cpu-smoke": ("reference,reference:float16,msrs:bfloat16,msrs+channels_last:bfloat16",),
}
CERTIFY_ARGS = {
    # GPU: 4 images x (100 + 1900) samples; msrs batches of 4096 rows of mixed images (8000 rows: 4096 + 3904,
    # padded to 4096 under --compile: one static shape); the field's loop in per-image batches of 1000
    "gpu": ["--device", "cuda", "--workloads", "cifar10-ddpm", "--images", "4", "--n0", "100", "--n", "1900",
            "--batch-size", "1000", "--msrs-batch-size", "4096", "--repeat", "2"],
    "cpu-smoke": ["--device", "cpu", "--workloads", "demo", "--images", "1", "--n0", "4", "--n", "12",
                  "--batch-size", "8", "--msrs-batch-size", "16", "--repeat", "1", "--threads", "1",
                  "--matmul-size", "128"],
}
GOALS = {"fraction_of_copy_bandwidth": 0.7, "speedup_vs_fp16_reference": 3.0, "samples_per_s": 10_000}
# sequential_denoised: one benchmarks/sequential_savings.py process per configuration, in this order. GPU: 100
# images x (100 + 100,000) samples = 10.01 M fixed-n samples per configuration, plus the sequential run's; chunks of
# 10 images (1 M samples each) are the unit a time budget stops at.
SEQUENTIAL_CONFIGS = ("denoised-0.25", "denoised-0.5")
SEQUENTIAL_RADII = ("0", "0.25", "0.5", "0.75", "1", "1.5", "2")
SEQUENTIAL_ARGS = {
    "gpu": {"device": "cuda", "images": 100, "n": 100_000, "batch_size": 65536, "chunk": 10},
    "cpu-smoke": {"device": "cpu", "images": 2, "n": 2000, "batch_size": 500, "chunk": 1},
}
# Of a configuration's time limit, the share its fixed-n recording may use (sequential_savings.py --record-seconds):
# the rest is for start-up (CUDA, Triton compiles), the sequential run (a few times fewer samples, in smaller
# batches) and the oracle. Seconds kept back for replaying the recorded votes of a configuration stopped at its
# limit (--replay-only: the record without the sequential run's wall time).
SEQUENTIAL_RECORD_SHARE = 0.55
SEQUENTIAL_REPLAY_S = {"gpu": 40, "cpu-smoke": 300}
SEQUENTIAL_MIN_S = 30  # a configuration with less time left than this is skipped
VOTES_MAX_BYTES = 15 * 2**20  # the device tool returns files of at most 16 MiB

# ------------------------------------------------------------------------------------------------ running steps
def python() -> str:
    return os.environ.get("PYTHON") or sys.executable


def step_env(smoke: bool, extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "MSRS_BACKEND")}
    env.update(PYTHONUNBUFFERED="1", **(extra or {}))
    if smoke:  # one thread: on a CPU shared with other jobs every multi-threaded op waits for a time slice
        env["OMP_NUM_THREADS"] = "1"
    return env


def run_command(cmd: list[str], log: Path, timeout: float, env: dict) -> tuple[int | None, float]:
    """(exit code or None when stopped at `timeout`, seconds). Output to `log`; the whole process group is killed
    at the time limit (pytest workers, the validity tests' process)."""
    start = time.monotonic()
    with open(log, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
            out.write(f"\n# stopped at its time limit ({timeout:.0f} s)\n")
    return code, round(time.monotonic() - start, 1)


def status_of(code: int | None, seconds: float, timeout: float, problems: list[str]) -> str:
    if code is None:
        return f"timeout after {timeout:.0f} s" + (f" ({'; '.join(problems)})" if problems else "")
    if code != 0:
        return f"failed: exit code {code}" + (f"; {'; '.join(problems)}" if problems else "")
    return f"failed: {'; '.join(problems)}" if problems else "ok"


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------ setup
def probe(code: str, env: dict) -> tuple[bool, str]:
    result = subprocess.run([python(), "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return result.returncode == 0, (result.stdout + result.stderr).strip()


def wheelhouse() -> Path:
    return Path(os.environ.get(WHEELHOUSE_ENV) or ROOT / "wheelhouse")


ENVIRONMENT_PROBE = """
import json, os, platform
info = {"python": platform.python_version(), "cpu_count": os.cpu_count()}
try:
    import torch
    cuda = torch.cuda.is_available()
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=cuda,
                gpu=torch.cuda.get_device_name() if cuda else None,
                gpu_capability=list(torch.cuda.get_device_capability()) if cuda else None,
                gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None)
except Exception as error:
    info["torch_error"] = repr(error)
for name in ("triton", "diffusers"):
    try:
        info[name] = __import__(name).__version__
    except Exception as error:
        info[name] = None
        info[name + "_error"] = repr(error)[:300]
try:
    import msrs, msrs.kernels
    info["msrs_files"] = [msrs.__file__, msrs.kernels.__file__]
except Exception as error:
    info["msrs_error"] = repr(error)[:300]
print(json.dumps(info))
"""


def environment(env: dict, out) -> dict:
    result = subprocess.run([python(), "-c", ENVIRONMENT_PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    out.write(result.stdout + result.stderr)
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"probe_error": (result.stdout + result.stderr)[-500:]}


def install(cmd: list[str], env: dict, out) -> None:
    out.write(f"$ {' '.join(cmd)}\n")
    out.flush()
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    out.write(result.stdout + result.stderr)


def setup_step(ctx: dict) -> dict:
    """Environment facts, and the installs the later steps need (only from local files: no network)."""
    log, env, smoke = ctx["logs"] / "setup.log", ctx["env"], ctx["smoke"]
    problems = []
    start = time.monotonic()
    with open(log, "w") as out:
        details = environment(env, out)
        if details.get("diffusers") is None:
            folder = wheelhouse()
            wheels = sorted(p.name for p in folder.glob("*.whl")) if folder.is_dir() else []
            out.write(f"diffusers is missing; installing it from {folder} ({len(wheels)} wheels: {wheels})\n")
            if wheels:
                install([python(), "-m", "pip", "install", "--no-index", "--find-links", str(folder), "diffusers"], env,
                        out)
                details["installed_from_wheelhouse"] = wheels
        if "No module named 'msrs.kernels'" in details.get("msrs_error", "") and not smoke:
            out.write("msrs.kernels is not importable (msrs is not installed): pip install -e . (no network)\n")
            install([python(), "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation", "-e", "."],
                    env, out)
        if "installed_from_wheelhouse" in details or "msrs_error" in details:
            details.update(environment(env, out))
        if details.get("diffusers") is None:
            problems.append(f"diffusers is missing and could not be installed from {wheelhouse()} "
                            "(make it with bash benchmarks/fetch_wheels.sh and carry it)")
        files = [Path(f).resolve() for f in details.get("msrs_files", [])]
        if not files:
            problems.append(f"msrs.kernels cannot be imported ({details.get('msrs_error')})")
        elif not all(ROOT in f.parents for f in files):
            problems.append(f"msrs is imported from another checkout ({', '.join(map(str, files))}); run with a "
                            "Python where this checkout is installed (pip install -e .), or set PYTHON")
        if not smoke and not details.get("cuda_available"):
            problems.append("torch sees no CUDA device (run with --cpu-smoke on a CPU)")
        if shutil.which("nvidia-smi"):
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=60)
            details["nvidia_smi"] = smi.stdout.strip()
            out.write(smi.stdout + smi.stderr)
    seconds = round(time.monotonic() - start, 1)
    return dict(status=status_of(0, seconds, 0, problems), seconds=seconds, log=log.name, **details)


# ------------------------------------------------------------------------------------------------ op tests
def junit(path: Path) -> dict:
    """Counts and the names of failed / skipped tests, from a pytest --junitxml file."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    cases = list(root.iter("testcase"))
    result = {"tests": len(cases), "passed": 0, "failed": [], "skipped": [], "triton_cuda_passed": 0,
              "compiled_triton_module_passed": 0}
    for case in cases:
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        if outcome == "passed":
            result["passed"] += 1
            result["triton_cuda_passed"] += "triton-cuda" in name
            result["compiled_triton_module_passed"] += "test_ops_triton" in name
        elif outcome == "skipped":
            reason = next(child.get("message", "") for child in case if child.tag == "skipped")
            result["skipped"].append(f"{name}: {reason[:160]}")
        else:
            result["failed"].append(name)
    return result


def op_tests_step(ctx: dict) -> dict:
    smoke, work, timeout = ctx["smoke"], ctx["work"], ctx["timeouts"]["op_tests"]
    log = ctx["logs"] / "op_tests.log"
    log.write_text("")
    xml = work / "op_tests.xml"
    cmd = [python(), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", f"--junitxml={xml}"]
    if smoke:  # the interpreter (the test module sets TRITON_INTERPRET=1 without a GPU): a few tests, tiny sizes
        cmd += ["tests/test_ops_triton.py", "tests/test_compiled.py",
                "-k", "known_answer or (aggregated and logits and sorted) or autotun or graph_owned or marks"]
    else:
        ok, _ = probe("import xdist", ctx["env"])
        if ok:
            cmd += ["-n", str(min(12, max(2, (os.cpu_count() or 4) - 4)))]
        cmd += ["tests/test_ops_triton.py", "tests/test_ops.py", "tests/test_compiled.py", "-k", "triton or cuda"]
    code, seconds = run_command(cmd, log, timeout, ctx["env"])
    details = junit(xml)
    problems = []
    if details.get("failed"):
        problems.append(f"{len(details['failed'])} tests failed")
    if smoke:
        details["compiled_on_gpu"] = NO_CUDA  # the tests ran in Triton's interpreter
    else:
        ok, text = probe("import msrs.kernels as k; print(k.INTERPRET)", ctx["env"])
        details["kernels_interpreted"] = text.splitlines()[-1] if ok else text[-200:]
        details["compiled_on_gpu"] = "ok" if details["kernels_interpreted"] == "False" and \
            details.get("triton_cuda_passed", 0) > 0 and details.get("compiled_triton_module_passed", 0) > 0 \
            else "failed: the backend matrix did not run against compiled Triton on CUDA"
        if details["compiled_on_gpu"] != "ok":
            problems.append(details["compiled_on_gpu"][len("failed: "):])
    details["skipped"] = details.get("skipped", [])[:30]
    return dict(status=status_of(code, seconds, timeout, problems), seconds=seconds, timeout_s=timeout,
                log=log.name, **details)


# ------------------------------------------------------------------------------------------------ engine
def engine_step(ctx: dict) -> dict:
    smoke, work, timeout = ctx["smoke"], ctx["work"], ctx["timeouts"]["engine"]
    log = ctx["logs"] / "engine.log"
    log.write_text("")
    out = work / "engine.json"
    cmd = [python(), "benchmarks/device_engine.py", "--json", str(out), "--work", str(work / "engine")]
    code, seconds = run_command(cmd + (["--cpu-smoke"] if smoke else []), log, timeout, ctx["env"])
    report = read_json(out) or {}
    parts = report.get("parts", {})
    problems = [f"{name}: {part['status']}" for name, part in parts.items() if part["status"].startswith("failed")]
    expected = ("counts", "cli", "validity", "compile")
    missing = [name for name in expected if name not in parts]
    if missing:
        problems.append(f"parts not reached: {', '.join(missing)}")
    return dict(status=status_of(code, seconds, timeout, problems), seconds=seconds, timeout_s=timeout,
                log=log.name, parts=parts)


# ------------------------------------------------------------------------------------------------ ops benchmark
def ops_bench_step(ctx: dict) -> dict:
    smoke, work, timeout = ctx["smoke"], ctx["work"], ctx["timeouts"]["ops_bench"]
    log = ctx["logs"] / "ops_bench.log"
    log.write_text("")
    out = work / "ops.json"
    if smoke:
        args = ["--devices", "cpu", "--triton-interpret", "--workloads", "tiny", "--budget", "0.05"]
    else:
        args = ["--devices", "cuda", "--backends", "triton", "--workloads", "cifar", "imagenet", *OPS_LARGE,
                "--budget", "1.0"]
    code, seconds = run_command([python(), "benchmarks/ops.py", *args, "--json", str(out)], log, timeout, ctx["env"])
    records = read_json(out) or []
    details = summarize_ops(records, smoke)
    problems = [] if records or code is None else ["no records written"]
    if details.get("atomics") and not all(a["dropped"] for a in details["atomics"]):
        problems.append("count_votes_ issued as many atomics as samples")
    return dict(status=status_of(code, seconds, timeout, problems), seconds=seconds, timeout_s=timeout,
                log=log.name, **details)


def summarize_ops(records: list[dict], smoke: bool) -> dict:
    copies = {r["device"]: r["gbps"] for r in records if r["op"] == "copy"}
    atomics = [{"workload": r["workload"], "atomics_per_launch": r["atomics_per_launch"],
                "atomics_per_launch_per_sample": r["atomics_per_launch_per_sample"],
                "atomics_from_grid": r["atomics_from_grid"],
                "dropped": r["atomics_per_launch"] < r["atomics_per_launch_per_sample"]}
               for r in records if r["op"] == "count_votes_" and r["backend"].startswith("triton-direct")
               and not r["backend"].startswith("triton-direct-per-sample")]
    large = OPS_LARGE if not smoke else ("tiny",)
    bandwidth = [{"op": r["op"], "workload": r["workload"], "backend": r["backend"], "gbps": round(r["gbps"], 1),
                  "fraction_of_copy_bandwidth": round(r["fraction_of_copy_bandwidth"], 3),
                  "speedup_vs_unfused": round(r["speedup_vs_unfused"], 2), "ms": round(r["seconds"] * 1e3, 3)}
                 for r in records if r["workload"] in large and r["backend"].split("-")[0] == "triton"]
    return {"copy_gbps": {k: round(v, 1) for k, v in copies.items()}, "triton_on_large_workloads": bandwidth,
            "atomics": atomics, "records": len(records)}


# ------------------------------------------------------------------------------------------------ certify benchmark
def certify_bench_step(ctx: dict) -> dict:
    """Two runs of benchmarks/certify.py on the same workload: the eager impls, then msrs+compile alone, so that the
    compile's time (one static shape: every batch has the size of the first) cannot cost the eager numbers."""
    smoke, work = ctx["smoke"], ctx["work"]
    log = ctx["logs"] / "certify_bench.log"
    log.write_text("")
    mode = "cpu-smoke" if smoke else "gpu"
    records, runs, problems = [], [], []
    for index, impls in enumerate(CERTIFY_IMPLS[mode]):
        timeout = ctx["timeouts"]["certify_bench"][index]
        out = work / f"certify-{index}.json"
        cmd = [python(), "benchmarks/certify.py", *CERTIFY_ARGS[mode], "--impls", impls, "--json", str(out)]
        code, seconds = run_command(cmd, log, timeout, ctx["env"])
        got = read_json(out) or []
        records += got
        runs.append({"impls": impls, "status": status_of(code, seconds, timeout, []), "seconds": seconds,
                     "timeout_s": timeout})
        if runs[-1]["status"] != "ok":
            problems.append(f"{impls}: {runs[-1]['status']}")
    details = summarize_certify(records, ",".join(CERTIFY_IMPLS[mode]))
    if smoke:
        details["msrs+compile:bfloat16"] = NO_CUDA
    if details["missing"]:
        problems.append(f"impls missing from the records: {', '.join(details['missing'])}")
    seconds = round(sum(r["seconds"] for r in runs), 1)
    return dict(status=status_of(0, seconds, 0, problems), seconds=seconds, log=log.name, runs=runs, **details)


def summarize_certify(records: list[dict], impls: str) -> dict:
    wanted = [spec if ":" in spec else f"{spec}:float32" for spec in impls.split(",")]
    by_impl = {f"{r['impl']}:{r['dtype']}": r for r in records}
    fp32, fp16 = by_impl.get("reference:float32"), by_impl.get("reference:float16")
    bf16_peak = next((r["matmul_peak_gflop_per_s"] for r in records if r["dtype"] == "bfloat16"), None)
    rows = []
    for key, r in by_impl.items():
        rows.append({
            "impl": key, "batch_size": r["batch_size"], "samples_per_s": r["samples_per_s"],
            "images_per_s": r["images_per_s"],
            "speedup_vs_reference_fp32": round(fp32["seconds"] / r["seconds"], 3) if fp32 else None,
            "speedup_vs_reference_fp16": round(fp16["seconds"] / r["seconds"], 3) if fp16 else None,
            "unet_time_fraction": r["unet_time_fraction"], "unet_gflop_per_s": r["unet_gflop_per_s"],
            "unet_fraction_of_bf16_matmul_peak": round(r["unet_gflop_per_s"] / bf16_peak, 3) if bf16_peak else None,
            "peak_memory_gib": round(r["peak_memory_bytes"] / 2**30, 2), "compile_s": r.get("compile_s"),
            "channels_last": r.get("channels_last"), "seconds": r["seconds"],
        })
    return {"impls": rows, "bf16_matmul_peak_gflop_per_s": bf16_peak,
            "missing": [k for k in wanted if k not in by_impl], "device": records[0]["device"] if records else None}


# ------------------------------------------------------------------------------------------------ sequential savings
def sequential_denoised_step(ctx: dict) -> dict:
    """benchmarks/sequential_savings.py for each of SEQUENTIAL_CONFIGS, one after another, each with its share of
    the step's time limit: its JSON record (OUTDIR/sequential_<config>_n<N>.json) and its votes
    (OUTDIR/votes/<config>/chunk_00000_<B>.npz) are written when it ends, so a later configuration stopped at its
    limit cannot cost an earlier one. A configuration stopped at its limit is replayed on the chunks of images it
    recorded (the record then has no sequential wall time); one whose run fails is run once more with
    MSRS_BACKEND=torch (the reference ops) if time is left."""
    smoke = ctx["smoke"]
    mode = "cpu-smoke" if smoke else "gpu"
    size, limit, reserve = SEQUENTIAL_ARGS[mode], ctx["timeouts"]["sequential_denoised"], SEQUENTIAL_REPLAY_S[mode]
    log = ctx["logs"] / "sequential_denoised.log"
    log.write_text("")
    votes_dir, votes_out = ctx["work"] / "votes", ctx["logs"] / "votes"
    start = time.monotonic()
    deadline = start + limit
    configs, problems, partial = {}, [], []
    for index, name in enumerate(SEQUENTIAL_CONFIGS):
        timeout = (deadline - time.monotonic() - reserve) / (len(SEQUENTIAL_CONFIGS) - index)
        if timeout < SEQUENTIAL_MIN_S:
            configs[name] = {"status": f"skipped: {timeout:.0f} s left"}
            partial.append(f"{name} skipped")
            continue
        out = ctx["logs"] / f"sequential_{name}_n{size['n']}.json"
        cmd = sequential_command(name, size, votes_dir, votes_out, out, smoke)
        env, entry = ctx["env"], {"backend": "automatic", "seconds": 0.0}
        while True:
            record_s = str(round(SEQUENTIAL_RECORD_SHARE * timeout))
            code, seconds = run_command(cmd + ["--record-seconds", record_s], log, timeout, env)
            entry.update(seconds=round(entry["seconds"] + seconds, 1), timeout_s=round(timeout))
            if code in (0, None) or "MSRS_BACKEND" in env:
                break
            # failed, not stopped: once more with the reference ops (msrs.ops.reference, the same votes), so that a
            # kernel that fails on this GPU cannot cost the measurement; the chunks already recorded are kept
            timeout = (deadline - time.monotonic() - reserve) / (len(SEQUENTIAL_CONFIGS) - index)
            if timeout < SEQUENTIAL_MIN_S:
                break
            entry["backend"] = f"torch (the automatic backend's run failed: exit code {code})"
            env = dict(ctx["env"], MSRS_BACKEND="torch")
        if code is None:
            done = recorded_images(votes_dir / name)
            entry["status"] = f"timeout after {timeout:.0f} s"
            if done:
                left = max(1.0, min(reserve, deadline - time.monotonic()))
                replay = sequential_command(name, dict(size, images=done), votes_dir, votes_out, out, smoke)
                code, replay_s = run_command(replay + ["--replay-only"], log, left, env)
                entry.update(replayed_images=done, replay_seconds=replay_s)
                entry["status"] += f"; {done} images replayed from their recorded votes (no sequential wall time)"
                if code != 0:
                    entry["status"] += f"; the replay {'timed out' if code is None else f'failed (exit {code})'}"
        elif code != 0:
            entry["status"] = f"failed: exit code {code}"
        records = read_json(out) if code == 0 else None
        if records:
            entry.update(summarize_sequential(records[0]), images_requested=size["images"])
            entry["json"] = out.name
            entry.update(keep_votes(votes_out / name))
            if "status" not in entry:
                entry["status"] = "ok" if entry["images"] == entry["images_requested"] else \
                    f"partial: {entry['images']} of {entry['images_requested']} images (time budget)"
                if entry["backend"] != "automatic":
                    entry["status"] += f"; backend {entry['backend']}"
        else:
            entry.setdefault("status", "failed: no record written")
        if entry["status"].startswith("failed") or not records:
            problems.append(f"{name}: {entry['status']}")
        elif not entry["status"].startswith("ok"):
            partial.append(f"{name}: {entry['status']}")
        configs[name] = entry
    seconds = round(time.monotonic() - start, 1)
    if problems:
        status = "failed: " + "; ".join(problems + partial)
    else:
        status = "partial: " + "; ".join(partial) if partial else "ok"
    return dict(status=status, seconds=seconds, timeout_s=limit, log=log.name, **sequential_totals(configs),
                configs=configs)


def sequential_command(name: str, size: dict, votes_dir: Path, votes_out: Path, out: Path, smoke: bool) -> list:
    cmd = [python(), "benchmarks/sequential_savings.py", "--configs", name, "--device", size["device"],
           "--images", str(size["images"]), "--n", str(size["n"]), "--batch-size", str(size["batch_size"]),
           "--chunk", str(size["chunk"]), "--target-radii", *SEQUENTIAL_RADII, "--votes-dir", str(votes_dir),
           "--votes-out", str(votes_out), "--json", str(out)]
    return cmd + (["--threads", "1"] if smoke else [])


def recorded_images(folder: Path) -> int:
    """Images 0 .. B-1 covered by the complete chunk files of a recording (benchmarks/votes.py names them
    chunk_<lo>_<hi>.npz, written whole or not at all)."""
    ends = {}
    for path in folder.glob("chunk_*_*.npz"):
        lo, hi = path.stem.split("_")[1:3]
        ends[int(lo)] = int(hi)
    done = 0
    while done in ends:
        done = ends[done]
    return done


def summarize_sequential(record: dict) -> dict:
    """The numbers of one sequential_savings.py record the GPU run is read for."""
    fixed, seq, oracle = record["fixed"], record["sequential"], record["oracle"]
    return {
        "images": record["images"], "images_requested": record.get("images_requested", record["images"]),
        "n0": record["n0"], "n": record["n"], "device": record.get("device"), "gpu": record["machine"].get("gpu"),
        "samples_fixed": fixed["samples"], "samples_sequential": seq["samples"], "samples_oracle": oracle["samples"],
        "samples_oracle_at_looks": oracle["samples_at_looks"],
        "fixed_over_sequential": record["samples_ratio"], "sequential_over_oracle": record["oracle_ratio"],
        "sequential_over_oracle_at_looks": record["oracle_ratio_at_looks"],
        "seconds_fixed": fixed["seconds"], "seconds_sequential": seq["seconds"],
        "time_ratio": record.get("time_ratio"),
        "samples_per_s_fixed": fixed.get("samples_per_s"), "samples_per_s_sequential": seq.get("samples_per_s"),
        "per_image_sequential": seq["per_image"], "per_image_oracle": oracle["per_image"],
        "table_radii": fixed["table_radii"], "certified_fixed": fixed["certified"],
        "certified_sequential": seq["certified"], "certified_equal": fixed["certified"] == seq["certified"],
        "certified_accuracy_fixed": fixed["certified_accuracy"],
        "certified_accuracy_sequential": seq["certified_accuracy"],
        "certified_accuracy_equal": fixed["certified_accuracy"] == seq["certified_accuracy"],
        "max_certified_difference": record["max_certified_difference"],
        "images_with_other_bucket": record["images_with_other_bucket"],
        "images_in_lower_bucket": record["images_in_lower_bucket"],
        "replay_matches": seq.get("replay_matches"),
        "oracle_final_bucket_matches_fixed": oracle["final_bucket_matches_fixed"],
    }


def keep_votes(folder: Path) -> dict:
    """The recorded votes come back with the summary unless the file is too large for the device tool."""
    files = sorted(folder.glob("chunk_*.npz"))
    if not files:
        return {"votes_file": None}
    path = files[-1]
    size = path.stat().st_size
    if size > VOTES_MAX_BYTES:
        path.unlink()
        return {"votes_file": f"left out: {size / 2**20:.1f} MiB (over {VOTES_MAX_BYTES / 2**20:.0f} MiB)"}
    return {"votes_file": str(path.relative_to(folder.parents[1])), "votes_mib": round(size / 2**20, 2)}


def sequential_totals(configs: dict) -> dict:
    """Samples and engine seconds over the configurations with a record (sequential wall time where measured)."""
    done = [c for c in configs.values() if "samples_fixed" in c]
    samples = sum(c["samples_fixed"] + (c["samples_sequential"] if c["seconds_sequential"] else 0) for c in done)
    seconds = sum(c["seconds_fixed"] + (c["seconds_sequential"] or 0) for c in done)
    return {"samples_total": samples, "engine_seconds": round(seconds, 1),
            "samples_per_s": round(samples / seconds, 1) if seconds else None}


# ------------------------------------------------------------------------------------------------ goals, summary
def goals(steps: dict, smoke: bool) -> dict:
    if smoke:
        return {"status": NO_CUDA}
    out = {}
    bandwidth = [b for b in steps.get("ops_bench", {}).get("triton_on_large_workloads", [])
                 if b["backend"].startswith("triton-direct") and "per-sample" not in b["backend"]]
    if bandwidth:
        out["ops_fraction_of_copy_bandwidth"] = {f"{b['op']}/{b['workload']}": b["fraction_of_copy_bandwidth"]
                                                 for b in bandwidth}
        out["ops_goal_met"] = all(b["fraction_of_copy_bandwidth"] >= GOALS["fraction_of_copy_bandwidth"]
                                  for b in bandwidth if b["op"] != "count_votes_")
    impls = [r for r in steps.get("certify_bench", {}).get("impls", []) if r["impl"].startswith("msrs")]
    if impls:
        best = max(impls, key=lambda r: r["samples_per_s"])
        out["certify_best_msrs"] = best["impl"]
        out["certify_samples_per_s"] = best["samples_per_s"]
        out["certify_speedup_vs_fp16_reference"] = best["speedup_vs_reference_fp16"]
        out["certify_goal_met"] = best["samples_per_s"] >= GOALS["samples_per_s"] and \
            (best["speedup_vs_reference_fp16"] or 0) >= GOALS["speedup_vs_fp16_reference"]
    out["goals"] = GOALS
    return out


def write_summary(path: Path, summary: dict) -> None:
    summary["ok"] = all(s.get("status", "").startswith(("ok", "skipped")) for s in summary["steps"].values())
    path.write_text(json.dumps(summary, indent=2) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path, help="where summary.json and the step logs go")
    parser.add_argument("--cpu-smoke", action="store_true", help="every step at tiny sizes on the CPU")
    parser.add_argument("--steps", default=None,
                        help=f"comma-separated steps (default: {', '.join(DEFAULT_STEPS)}; also: "
                             f"{', '.join(EXTRA_STEPS)})")
    parser.add_argument("--sequential-seconds", type=float, default=None,
                        help="time limit of the sequential_denoised step (default: "
                             f"{TIMEOUTS['gpu']['sequential_denoised']} s on a GPU); a shorter one certifies fewer "
                             "images")
    args = parser.parse_args(argv)
    smoke = args.cpu_smoke
    mode = "cpu-smoke" if smoke else "gpu"
    args.outdir.mkdir(parents=True, exist_ok=True)
    wanted = set(args.steps.split(",")) if args.steps else set(DEFAULT_STEPS)
    unknown = wanted - set(DEFAULT_STEPS) - set(EXTRA_STEPS)
    if unknown:
        parser.error(f"--steps: unknown {', '.join(sorted(unknown))}; the steps are "
                     f"{', '.join(DEFAULT_STEPS + EXTRA_STEPS)}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="msrs-device-check-") as tmp:
        timeouts = dict(TIMEOUTS[mode])
        if args.sequential_seconds is not None:
            timeouts["sequential_denoised"] = args.sequential_seconds
        ctx = {"smoke": smoke, "logs": args.outdir, "work": Path(tmp), "timeouts": timeouts, "env": step_env(smoke)}
        summary = {"mode": mode, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(),
                   "timeouts_s": timeouts, "steps": {}}
        summary_path = args.outdir / "summary.json"
        lock = threading.Lock()

        def record(name: str, fn) -> None:
            if name not in wanted:
                return
            try:
                result = fn(ctx)
            except Exception as err:  # noqa: BLE001 - the harness reports its own failure per step
                result = {"status": f"failed: harness error {type(err).__name__}: {err}"}
            with lock:  # op_tests and engine finish from two threads
                summary["steps"][name] = result
                write_summary(summary_path, summary)
            print(f"device check: {name}: {result['status']}", flush=True)

        record("setup", setup_step)
        side_by_side = [threading.Thread(target=record, args=(name, fn))
                        for name, fn in (("op_tests", op_tests_step), ("engine", engine_step))]
        for thread in side_by_side:
            thread.start()
        for thread in side_by_side:
            thread.join()
        record("ops_bench", ops_bench_step)
        record("certify_bench", certify_bench_step)
        record("sequential_denoised", sequential_denoised_step)
        summary["goals"] = goals(summary["steps"], smoke)
        summary["wall_s"] = round(time.monotonic() - started, 1)
        write_summary(summary_path, summary)
    print(f"device check: {'ok' if summary['ok'] else 'NOT ok'} in {summary['wall_s']} s; {summary_path}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
