"""What bf16 / fp16 and torch.compile cost or save on this machine: the figures behind msrs.hardware.

    python benchmarks/dtype_compile.py                  # table on stdout
    python benchmarks/dtype_compile.py --json out.json  # also the records
    python benchmarks/dtype_compile.py --parts matmul,models   # dtypes only (no torch.compile: much shorter)

Measures, in one run (so the figures share the machine's load):
  matmul        a 1024 x 1024 @ 1024 x 1024 matmul in float32, bfloat16, float16: GFLOP/s (median of --repeat)
  unet          the shipped demo UNet (msrs.zoo.load_demo_denoiser) at batch --batch (default 400, 8x8 digits):
                seconds per predict_eps call in float32 and under autocast bfloat16 / float16
  classifier    the shipped demo classifier at the same batch, likewise
  compile       (float32) the demo classifier and UNet through msrs.compiled (the engine's --compile path): the first
                call's time (compile included), the per-call time afterwards, eager's per-call time, and the
                break-even number of samples = compile seconds / (eager - compiled seconds per sample)
and the CPU flags that decide bf16 (msrs.hardware.cpu_flags) and the load average (os.getloadavg), which the records
carry: on a shared machine the figures move with the load.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from msrs import hardware, zoo  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _median_seconds(fn, repeat: int) -> float:
    fn()  # warm-up (allocations, oneDNN primitive creation)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_matmul(repeat: int) -> list:
    records = []
    for name, dtype in DTYPES.items():
        a = torch.randn(1024, 1024).to(dtype)
        b = torch.randn(1024, 1024).to(dtype)
        seconds = _median_seconds(lambda: torch.mm(a, b), repeat)
        records.append({"what": "matmul 1024^2", "dtype": name, "seconds": seconds,
                        "gflops": 2 * 1024 ** 3 / seconds / 1e9})
    return records


def _unet_call(denoiser, x, autocast):
    return lambda: denoiser.predict_eps(x, 259, autocast_dtype=autocast)


def _classifier_call(classifier, x, autocast):
    def call():
        if autocast is None:
            return classifier(x)
        with torch.autocast("cpu", dtype=autocast):
            return classifier(x)
    return call


def bench_models(batch: int, repeat: int) -> list:
    denoiser = zoo.load_demo_denoiser()
    classifier = zoo.load_demo_classifier()[0]
    x = torch.rand(batch, 1, 8, 8)
    records = []
    with torch.inference_mode():
        for name, dtype in DTYPES.items():
            autocast = None if dtype == torch.float32 else dtype
            for what, call in (("demo UNet", _unet_call(denoiser, x, autocast)),
                               ("demo classifier", _classifier_call(classifier, x, autocast))):
                records.append({"what": f"{what} batch {batch}", "dtype": name,
                                "seconds": _median_seconds(call, repeat)})
    return records


def bench_compile(batch: int, repeat: int) -> list:
    """float32 eager vs msrs.compiled (the engine's --compile path) on both demo models."""
    from msrs.compiled import StaticBatch, compile_model

    torch._dynamo.reset()
    x = torch.rand(batch, 1, 8, 8)
    records = []
    denoiser = zoo.load_demo_denoiser()
    classifier = zoo.load_demo_classifier()[0]
    with torch.inference_mode():
        eager_unet = _median_seconds(_unet_call(denoiser, x, None), repeat)
        eager_classifier = _median_seconds(_classifier_call(classifier, x, None), repeat)
        t0 = time.perf_counter()
        denoiser.compile_for_inference()
        denoiser.predict_eps(x, 259, autocast_dtype=None)
        first_unet = time.perf_counter() - t0
        compiled_unet = _median_seconds(_unet_call(denoiser, x, None), repeat)
        compiled = StaticBatch(compile_model(classifier, "cpu"))
        t0 = time.perf_counter()
        compiled(x)
        first_classifier = time.perf_counter() - t0
        compiled_classifier = _median_seconds(lambda: compiled(x), repeat)
    for what, first, eager, comp in (("demo UNet", first_unet, eager_unet, compiled_unet),
                                     ("demo classifier", first_classifier, eager_classifier, compiled_classifier)):
        saving = (eager - comp) / batch  # seconds per sample
        records.append({"what": f"compile {what} batch {batch}", "dtype": "float32",
                        "first_call_seconds": first, "eager_seconds": eager, "compiled_seconds": comp,
                        "compile_seconds": first - comp,
                        "break_even_samples": (first - comp) / saving if saving > 0 else None})
    return records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=400)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--parts", default="matmul,models,compile",
                   help="comma-separated: matmul, models (the dtypes), compile (torch.compile, minutes)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    flags = sorted(f for f in hardware.cpu_flags() if f in hardware.REPORTED_FLAGS)
    context = {"cpu_flags": flags, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "threads": torch.get_num_threads(), "loadavg_before": os.getloadavg()}
    parts = {part.strip() for part in args.parts.split(",") if part.strip()}
    unknown = parts - {"matmul", "models", "compile"}
    if unknown:
        p.error(f"--parts: unknown {sorted(unknown)}; expected matmul, models, compile")
    records = []
    if "matmul" in parts:
        records += bench_matmul(args.repeat)
    if "models" in parts:
        records += bench_models(args.batch, args.repeat)
    if "compile" in parts:
        records += bench_compile(args.batch, args.repeat)
    context["loadavg_after"] = os.getloadavg()
    print(json.dumps(context))
    for r in records:
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()))
    if args.json:
        args.json.write_text(json.dumps({"context": context, "records": records}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
