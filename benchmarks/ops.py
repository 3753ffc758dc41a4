"""Benchmark of the three fused ops against the unfused torch/numpy code users write today.

    python benchmarks/ops.py                  # table on stdout
    python benchmarks/ops.py --json out.json  # also a list of records
                                              # {"op", "backend", "workload", "seconds", "gbps", "speedup_vs_unfused"}

Workloads: "cifar" = 10 images x 100 samples of 3x32x32 (10 classes), "imagenet" = 1 image x 100 samples of
3x224x224 (1000 classes). Devices: the CPU (backends torch = msrs.ops.reference, cpp) and, when there is one, the
GPU (torch, triton). The fused ops run through the public API (msrs.ops.*) with check=False, as in the
certification loop; "<backend>-direct" calls the backend module itself on prepared arguments (no argument
handling, no torch.library dispatch), to show what the public API's fixed cost is. "unfused" is, measured in the same run and on the same inputs:
  op 1 sample_noisy:      x.repeat + torch.randn_like + mul/add, then a * (2 noisy - 1)
  op 2 finalize_denoised: separate torch ops (mul, sub, div, clamp, add, div, sub, div)
  op 3 count_votes_:      logits.argmax(1).cpu().numpy(), then np.bincount per image into numpy counts
All variants of one op are timed round-robin (one call each per round, after warm-up), the median is reported, so a
change of load on a shared machine hits them alike. gbps = the bytes that must move (inputs read once + outputs
written once) / seconds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from msrs import ops
from msrs.ops.dispatch import backend_module

WORKLOADS = {
    # name: (images, samples per image, channels, size, classes)
    "cifar": (10, 100, 3, 32, 10),
    "imagenet": (1, 100, 3, 224, 1000),
}
SIGMA, SQRT_ABAR = 0.5, 0.7
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(fns: dict, device: torch.device, min_rounds: int = 7, budget_s: float = 3.0) -> dict:
    """Median seconds per call of each function, timed one call each per round after two warm-up rounds."""
    for _ in range(2):
        for fn in fns.values():
            fn()
    _sync(device)
    times = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() - start < budget_s and rounds < 50):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return {name: statistics.median(values) for name, values in times.items()}


def fused_backends(device: torch.device) -> list[str]:
    wanted = ("torch", "cpp") if device.type == "cpu" else ("torch", "triton")
    names = []
    for name in wanted:
        try:
            ops.resolve_backend(name, device)
        except (ops.BackendUnavailable, ImportError) as exc:
            print(f"# {name} on {device}: unavailable ({str(exc).splitlines()[0]})", file=sys.stderr)
            continue
        names.append(name)
    return names


def bench_sample_noisy(device, workload, backends):
    images, samples, channels, size, _ = WORKLOADS[workload]
    x = torch.rand(images, channels, size, size, device=device)
    rows = images * samples
    numel = channels * size * size

    def unfused():
        batch = x[:, None].repeat(1, samples, 1, 1, 1).reshape(rows, channels, size, size)
        noisy = batch + torch.randn_like(batch) * SIGMA
        return SQRT_ABAR * (2 * noisy - 1)

    fns = {"unfused": unfused}
    for name in backends:
        fns[name] = lambda name=name: ops.add_noise(
            x, SIGMA, samples, seed=1, diffusion_scale=SQRT_ABAR, backend=name, check=False
        )
    row_table = ops.make_rows(torch.arange(images, device=device), 0, samples)
    coeffs = torch.tensor([[SIGMA, 2 * SQRT_ABAR, -SQRT_ABAR]], device=device).expand(rows, 3).contiguous()
    for name in backends:
        if name != "torch":
            module = backend_module(name)
            fns[f"{name}-direct"] = lambda m=module: m.sample_noisy(x, row_table, coeffs, 1, torch.float32)
    moved = x.numel() * 4 + rows * (4 * 8 + 3 * 4) + rows * numel * 4  # x, rows + coeffs, out
    return fns, moved


def bench_finalize(device, workload, backends):
    images, samples, channels, size, _ = WORKLOADS[workload]
    rows = images * samples
    x_t = torch.randn(rows, channels, size, size, device=device)
    eps = torch.randn_like(x_t)
    a = torch.full((rows, 1, 1, 1), SQRT_ABAR, device=device)
    s = torch.sqrt(1 - a * a)
    mean = torch.tensor(MEAN, device=device).reshape(1, -1, 1, 1)
    std = torch.tensor(STD, device=device).reshape(1, -1, 1, 1)

    def unfused():
        x0 = ((x_t - s * eps) / a).clamp(-1, 1)
        return ((x0 + 1) / 2 - mean) / std

    fns = {"unfused": unfused}
    for name in backends:
        fns[name] = lambda name=name: ops.finalize_denoised(
            x_t, eps, SQRT_ABAR, mean=MEAN, std=STD, backend=name, check=False
        )
    coeffs = torch.cat((a, s), dim=1).reshape(rows, 2).contiguous()
    mean_t, std_t = mean.reshape(-1).contiguous(), std.reshape(-1).contiguous()
    for name in backends:
        if name != "torch":
            module = backend_module(name)
            fns[f"{name}-direct"] = lambda m=module: m.finalize_denoised(
                x_t, eps, coeffs, mean_t, std_t, torch.float32
            )
    moved = 3 * x_t.numel() * 4  # x_t, eps, out
    return fns, moved


def bench_count_votes(device, workload, backends):
    images, samples, _, _, classes = WORKLOADS[workload]
    rows = images * samples
    logits = torch.randn(rows, classes, device=device)
    index = torch.arange(images, device=device).repeat_interleave(samples)
    counts_np = np.zeros((images, classes), dtype=np.int64)

    def unfused():
        predictions = logits.argmax(1).cpu().numpy()
        for b in range(images):
            counts_np[b] += np.bincount(predictions[b * samples : (b + 1) * samples], minlength=classes)
        return counts_np

    fns = {"unfused": unfused}
    for name in backends:
        counts = torch.zeros(images, classes, dtype=torch.int64, device=device)
        fns[name] = lambda name=name, counts=counts: ops.count_votes_(
            counts, logits, index, backend=name, check=False
        )
        if name != "torch":
            module = backend_module(name)
            fns[f"{name}-direct"] = lambda m=module, counts=counts: m.count_votes_(counts, logits, index)
    moved = logits.numel() * 4 + rows * 8 + 2 * images * classes * 8  # logits, index, counts read + written
    return fns, moved


OPS = {
    "sample_noisy": bench_sample_noisy,
    "finalize_denoised": bench_finalize,
    "count_votes_": bench_count_votes,
}


def run(devices, workloads, budget_s: float) -> list[dict]:
    records = []
    for device in devices:
        backends = fused_backends(device)
        for op, bench in OPS.items():
            for workload in workloads:
                fns, moved = bench(device, workload, backends)
                seconds = time_round_robin(fns, device, budget_s=budget_s)
                for name, t in seconds.items():
                    records.append(
                        {
                            "op": op,
                            "backend": name if device.type == "cpu" else f"{name}-{device.type}",
                            "workload": workload,
                            "device": str(device),
                            "seconds": t,
                            "gbps": moved / t / 1e9,
                            "speedup_vs_unfused": seconds["unfused"] / t,
                        }
                    )
    return records


def table(records: list[dict]) -> str:
    header = f"{'op':<18} {'workload':<9} {'backend':<14} {'ms':>9} {'GB/s':>7} {'vs unfused':>10}"
    lines = [header, "-" * len(header)]
    for r in records:
        lines.append(
            f"{r['op']:<18} {r['workload']:<9} {r['backend']:<14} {r['seconds'] * 1e3:>9.3f} {r['gbps']:>7.2f} "
            f"{r['speedup_vs_unfused']:>9.2f}x"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the records to this file")
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timing per (op, workload)")
    parser.add_argument("--cpu-only", action="store_true", help="skip the GPU even when there is one")
    args = parser.parse_args(argv)
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} CPU threads; fused ops via msrs.ops with check=False")
    records = run(devices, args.workloads, args.budget)
    print(table(records))
    if args.json:
        args.json.write_text(json.dumps(records, indent=2) + "\n")


if __name__ == "__main__":
    main()
