"""Benchmark of the three fused ops against the unfused torch/numpy code users write today.

    python benchmarks/ops.py                  # table on stdout
    python benchmarks/ops.py --json out.json  # also a list of records
                                              # {"op", "backend", "workload", "seconds", "gbps", "speedup_vs_unfused",
                                              #  "fraction_of_copy_bandwidth", ...}
    python benchmarks/ops.py --devices cuda --workloads cifar-large imagenet-large   # GPU bandwidth
    python benchmarks/ops.py --triton-interpret --workloads tiny                     # Triton on the CPU interpreter

Workloads (images x samples of C x H x W, classes): "cifar" 10 x 100 of 3x32x32 (10), "imagenet" 1 x 100 of
3x224x224 (1000), "cifar-large" 64 x 1024 of 3x32x32 (10) and "imagenet-large" 4 x 1024 of 3x224x224 (1000) (GPU
sizes: 0.8 and 2.5 GB per output), "tiny" 2 x 16 of 1x8x8 (10) (the Triton interpreter). Devices: the CPU (backends
torch = msrs.ops.reference, cpp; triton too under --triton-interpret) and, when there is one, the GPU (torch,
triton). The fused ops run through the public API (msrs.ops.*) with check=False, as in the certification loop;
"<backend>-direct" calls the backend module itself on prepared arguments (no argument handling, no torch.library
dispatch), to show what the public API's fixed cost is. "unfused" is, measured in the same run and on the same
inputs:
  op 1 sample_noisy:      x.repeat + torch.randn_like + mul/add, then a * (2 noisy - 1)
  op 2 finalize_denoised: separate torch ops (mul, sub, div, clamp, add, div, sub, div)
  op 3 count_votes_:      logits.argmax(1).cpu().numpy(), then np.bincount per image into numpy counts
The logits are those of a classifier under noise: each image has a class most of its samples vote for.
All variants of one op are timed round-robin (one call each per round, after warm-up), the median is reported, so a
change of load on a shared machine hits them alike. gbps = the bytes that must move (inputs read once + outputs
written once) / seconds; fraction_of_copy_bandwidth = gbps / the bandwidth of a plain device-to-device copy
(tensor.copy_, bytes read + written) measured in the same run on the same device (op "copy").

Vote-counting atomics (triton): the kernel adds each program's votes per (row, class) before its atomics.
"triton-direct-per-sample" times the kernel with one atomic per sample (the kernel before aggregation); the triton
records of count_votes_ carry atomics_per_launch (counted by the kernel itself), atomics_per_launch_per_sample
(the same count for one atomic per sample) and atomics_from_grid (msrs.kernels.votes.atomic_count: distinct
(program, row, class) from the launch grid).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from msrs import hardware, ops  # noqa: E402
from msrs.ops.dispatch import backend_module  # noqa: E402

WORKLOADS = {
    # name: (images, samples per image, channels, size, classes)
    "cifar": (10, 100, 3, 32, 10),
    "imagenet": (1, 100, 3, 224, 1000),
    "cifar-large": (64, 1024, 3, 32, 10),
    "imagenet-large": (4, 1024, 3, 224, 1000),
    "tiny": (2, 16, 1, 8, 10),
}
DEFAULT_WORKLOADS = ["cifar", "imagenet"]
COPY_BYTES = {"cpu": 2**28, "cuda": 2**30}  # per buffer of the copy-bandwidth measurement
VOTE_MARGIN = 5.0  # logit bonus of each image's class: ~95 % of samples vote for it with 1,000 classes, all with 10
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


def fused_backends(device: torch.device, interpret: bool = False) -> list[str]:
    wanted = (("torch", "cpp", "triton") if interpret else ("torch", "cpp")) if device.type == "cpu" \
        else ("torch", "triton")
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
    return fns, moved, {}


def bench_finalize(device, workload, backends):
    images, samples, channels, size, _ = WORKLOADS[workload]
    rows = images * samples
    x_t = torch.randn(rows, channels, size, size, device=device)
    eps = torch.randn_like(x_t)
    a = torch.full((rows, 1, 1, 1), SQRT_ABAR, device=device)
    s = torch.sqrt(1 - a * a)
    mean_values, std_values = MEAN[:channels], STD[:channels]
    mean = torch.tensor(mean_values, device=device).reshape(1, -1, 1, 1)
    std = torch.tensor(std_values, device=device).reshape(1, -1, 1, 1)

    def unfused():
        x0 = ((x_t - s * eps) / a).clamp(-1, 1)
        return ((x0 + 1) / 2 - mean) / std

    fns = {"unfused": unfused}
    for name in backends:
        fns[name] = lambda name=name: ops.finalize_denoised(
            x_t, eps, SQRT_ABAR, mean=mean_values, std=std_values, backend=name, check=False
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
    return fns, moved, {}


def engine_like_logits(images: int, samples: int, classes: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [images * samples, classes], index): image-major rows, each image with a class most samples vote for."""
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, classes, (images,), generator=g)
    logits = torch.randn(images * samples, classes, generator=g)
    index = torch.arange(images).repeat_interleave(samples)
    logits[torch.arange(images * samples), label[index]] += VOTE_MARGIN
    return logits.to(device), index.to(device)


def atomic_counts(logits: torch.Tensor, index: torch.Tensor, classes: int) -> dict:
    """The triton kernel's atomics per launch: counted by the kernel (with and without aggregation), and from the
    launch grid."""
    from msrs.kernels import votes

    counts = torch.zeros(int(index.max()) + 1, classes, dtype=torch.int64, device=logits.device)
    issued = {}
    for aggregate in (True, False):
        atomics = torch.zeros(1, dtype=torch.int64, device=logits.device)
        votes.count_votes_(counts, logits, index, aggregate=aggregate, atomics=atomics)
        issued[aggregate] = int(atomics)
    block = votes.launch_shape(logits.shape[0], classes, False)[0]
    return {"atomics_per_launch": issued[True], "atomics_per_launch_per_sample": issued[False],
            "atomics_from_grid": votes.atomic_count(logits.argmax(1).cpu(), index.cpu(), block),
            "samples_per_program": block}


def bench_count_votes(device, workload, backends):
    images, samples, _, _, classes = WORKLOADS[workload]
    rows = images * samples
    logits, index = engine_like_logits(images, samples, classes, device)
    counts_np = np.zeros((images, classes), dtype=np.int64)

    def unfused():
        predictions = logits.argmax(1).cpu().numpy()
        for b in range(images):
            counts_np[b] += np.bincount(predictions[b * samples : (b + 1) * samples], minlength=classes)
        return counts_np

    fns, extra = {"unfused": unfused}, {}
    for name in backends:
        counts = torch.zeros(images, classes, dtype=torch.int64, device=device)
        fns[name] = lambda name=name, counts=counts: ops.count_votes_(
            counts, logits, index, backend=name, check=False
        )
        if name != "torch":
            module = backend_module(name)
            fns[f"{name}-direct"] = lambda m=module, counts=counts: m.count_votes_(counts, logits, index)
        if name == "triton":
            from msrs.kernels import votes

            fns["triton-direct-per-sample"] = lambda counts=counts: votes.count_votes_(
                counts, logits, index, aggregate=False)
            stats = atomic_counts(logits, index, classes)
            for variant in ("triton", "triton-direct", "triton-direct-per-sample"):
                extra[variant] = stats
    moved = logits.numel() * 4 + rows * 8 + 2 * images * classes * 8  # logits, index, counts read + written
    return fns, moved, extra


def copy_bandwidth(device: torch.device, budget_s: float) -> float:
    """GB/s of dst.copy_(src) (bytes read + written), the reference for every op's gbps on this device."""
    src = torch.rand(COPY_BYTES[device.type] // 4, device=device)
    dst = torch.empty_like(src)
    seconds = time_round_robin({"copy": lambda: dst.copy_(src)}, device, min_rounds=10, budget_s=budget_s)["copy"]
    return 2 * src.numel() * 4 / seconds / 1e9


OPS = {
    "sample_noisy": bench_sample_noisy,
    "finalize_denoised": bench_finalize,
    "count_votes_": bench_count_votes,
}


def run(devices, workloads, budget_s: float, interpret: bool = False, only=None) -> list[dict]:
    records = []
    for device in devices:
        backends = [b for b in fused_backends(device, interpret) if only is None or b in only]
        copy_gbps = copy_bandwidth(device, budget_s)
        records.append({"op": "copy", "backend": "torch" if device.type == "cpu" else f"torch-{device.type}",
                        "workload": f"{COPY_BYTES[device.type] >> 20} MiB", "device": str(device),
                        "seconds": 2 * COPY_BYTES[device.type] / copy_gbps / 1e9, "gbps": copy_gbps,
                        "speedup_vs_unfused": 1.0, "fraction_of_copy_bandwidth": 1.0})
        for op, bench in OPS.items():
            for workload in workloads:
                fns, moved, extra = bench(device, workload, backends)
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
                            "fraction_of_copy_bandwidth": moved / t / 1e9 / copy_gbps,
                            **extra.get(name, {}),
                        }
                    )
                del fns
                if device.type == "cuda":
                    torch.cuda.empty_cache()  # the large workloads take GBs each
    return records


def table(records: list[dict]) -> str:
    header = (f"{'op':<18} {'workload':<15} {'backend':<30} {'ms':>9} {'GB/s':>8} {'of copy':>7} {'vs unfused':>10}"
              f" {'atomics':>16}")
    lines = [header, "-" * len(header)]
    for r in records:
        atomics = (f"{r['atomics_per_launch']}/{r['atomics_per_launch_per_sample']}"
                   if "atomics_per_launch" in r else "")
        lines.append(
            f"{r['op']:<18} {r['workload']:<15} {r['backend']:<30} {r['seconds'] * 1e3:>9.3f} {r['gbps']:>8.2f} "
            f"{r['fraction_of_copy_bandwidth']:>7.2f} {r['speedup_vs_unfused']:>9.2f}x {atomics:>16}"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the records to this file")
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=DEFAULT_WORKLOADS)
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timing per (op, workload)")
    parser.add_argument("--cpu-only", action="store_true", help="skip the GPU even when there is one")
    parser.add_argument("--devices", nargs="+", choices=("cpu", "cuda"), default=None,
                        help="devices to run on (default: cpu, and cuda when there is one)")
    parser.add_argument("--backends", nargs="+", choices=("torch", "cpp", "triton"), default=None,
                        help="fused backends to time beside the unfused code (default: all available)")
    parser.add_argument("--triton-interpret", action="store_true",
                        help="also run the triton backend on CPU tensors in Triton's interpreter (slow: --workloads "
                             "tiny); sets TRITON_INTERPRET=1, so it must come before anything imports msrs.kernels")
    args = parser.parse_args(argv)
    if args.triton_interpret:
        if "msrs.kernels" in sys.modules and not sys.modules["msrs.kernels"].INTERPRET:
            parser.error("--triton-interpret: msrs.kernels was already imported with compiled kernels")
        os.environ["TRITON_INTERPRET"] = "1"
    if args.devices is None:
        args.devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.cpu_only else [])
    if "cuda" in args.devices and not torch.cuda.is_available():
        parser.error("--devices: cuda asked for, but torch sees no GPU")
    devices = [torch.device(d) for d in args.devices if not (args.cpu_only and d == "cuda")]
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} CPU threads; fused ops via msrs.ops with check=False"
          + (f"; {torch.cuda.get_device_name()}" if any(d.type == "cuda" for d in devices) else ""))
    machine = hardware.machine("cuda" if any(d.type == "cuda" for d in devices) else "cpu")
    records = run(devices, args.workloads, args.budget, args.triton_interpret, args.backends)
    print(table(records))
    print(f"# CPU flags {' '.join(machine['cpu_flags']) or 'unknown'}; load average at the start {machine['loadavg']}")
    if args.json:
        args.json.write_text(json.dumps([{**r, "machine": machine} for r in records], indent=2) + "\n")


if __name__ == "__main__":
    main()
