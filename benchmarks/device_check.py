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
Each step's status: "ok", "failed: ...", "timeout after N s", or "skipped: ..."; CUDA-only checks in --cpu-smoke
mode are "skipped: no CUDA". The summary's "goals" compare the measured numbers with issue 15's goals.
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
# = 30 + 200 + 45 + 70 + 120 = 465 s, within 8 minutes even if every step runs to its limit.
TIMEOUTS = {
    "gpu": {"setup": 30, "op_tests": 200, "engine": 200, "ops_bench": 45, "certify_bench": (70, 120)},
    # generous: the smoke checks code paths, and CPU machines shared by many jobs can be 10x slower than idle ones
    "cpu-smoke": {"setup": 300, "op_tests": 600, "engine": 600, "ops_bench": 300, "certify_bench": (600,)},
}
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
    parser.add_argument("--steps", default=None, help="comma-separated subset of the steps (default: all)")
    args = parser.parse_args(argv)
    smoke = args.cpu_smoke
    mode = "cpu-smoke" if smoke else "gpu"
    args.outdir.mkdir(parents=True, exist_ok=True)
    wanted = set(args.steps.split(",")) if args.steps else None
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="msrs-device-check-") as tmp:
        ctx = {"smoke": smoke, "logs": args.outdir, "work": Path(tmp), "timeouts": TIMEOUTS[mode],
               "env": step_env(smoke)}
        summary = {"mode": mode, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(),
                   "timeouts_s": TIMEOUTS[mode], "steps": {}}
        summary_path = args.outdir / "summary.json"
        lock = threading.Lock()

        def record(name: str, fn) -> None:
            if wanted is not None and name not in wanted:
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
        summary["goals"] = goals(summary["steps"], smoke)
        summary["wall_s"] = round(time.monotonic() - started, 1)
        write_summary(summary_path, summary)
    print(f"device check: {'ok' if summary['ok'] else 'NOT ok'} in {summary['wall_s']} s; {summary_path}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
