"""Does fusing the classifier's resize into the denoise finalisation pay? (issue 12)

The engine's tail for a classifier with a declared input size (msrs.engine): finalize_denoised (one pass over the
denoised image at the data's resolution: clamp, [0, 1], (x - mean) / std) then torch's interpolate to the classifier's
input (CIFAR-10: 32x32 -> 224x224 bicubic, antialiased, as Carlini et al.; ImageNet: 224 -> 512 for BEiT). A fused
kernel would save one write and one read of the small image; the resize itself must write the large one. This script
measures, in the same run and on the same inputs:

  finalize      msrs.ops.finalize_denoised at the data's resolution
  resize        torch.nn.functional.interpolate of its output to the classifier's size
  unfused       the two one after the other (what the engine does)
  bound         the most any fusion could save: the finalize pass alone, as a fraction of `unfused`

    python benchmarks/resize.py [--json out.json] [--device cpu|cuda] [--rows 256]

Timings are medians of round-robin rounds (msrs' benchmarks/ops.py helper), so load changes hit all variants alike.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ops import time_round_robin  # noqa: E402  (benchmarks/ops.py)

from msrs import hardware, ops  # noqa: E402

WORKLOADS = {  # name: (channels, data size, classifier size)
    "cifar10-vit": (3, 32, 224),
    "imagenet-beit": (3, 224, 512),
}


def measure(name: str, rows: int, device: torch.device) -> dict:
    channels, size, target = WORKLOADS[name]
    g = torch.Generator(device="cpu").manual_seed(0)
    x_t = (torch.rand(rows, channels, size, size, generator=g) * 2 - 1).to(device)
    eps = torch.randn(rows, channels, size, size, generator=g).to(device)
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    def finalize():
        return ops.finalize_denoised(x_t, eps, 0.7, mean=mean, std=std, out_dtype=torch.float32, check=False)

    small = finalize()

    def resize():
        return F.interpolate(small, size=(target, target), mode="bicubic", antialias=True, align_corners=False)

    def unfused():
        return F.interpolate(finalize(), size=(target, target), mode="bicubic", antialias=True, align_corners=False)

    seconds = time_round_robin({"finalize": finalize, "resize": resize, "unfused": unfused}, device)
    return {"workload": name, "rows": rows, "device": str(device), **{f"{k}_s": v for k, v in seconds.items()},
            "finalize_share_of_unfused": seconds["finalize"] / seconds["unfused"],
            "samples_per_s_unfused": rows / seconds["unfused"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--rows", type=int, default=64, help="denoised samples per call (default 64)")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    records = [measure(name, args.rows, device) for name in args.workloads.split(",")]
    flags = (" ".join(hardware.machine()["cpu_flags"]) or platform.processor()) if device.type == "cpu" \
        else torch.cuda.get_device_name(device)
    print(f"device {device} ({flags}), {torch.get_num_threads()} threads, {args.rows} rows per call")
    print(f"{'workload':<16}{'finalize':>12}{'resize':>12}{'unfused':>12}{'fusion could save at most':>28}")
    for r in records:
        print(f"{r['workload']:<16}{r['finalize_s'] * 1e3:>10.2f}ms{r['resize_s'] * 1e3:>10.2f}ms"
              f"{r['unfused_s'] * 1e3:>10.2f}ms{r['finalize_share_of_unfused']:>27.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": str(device), "flags": flags, "threads":
                                               torch.get_num_threads(), "records": records}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
