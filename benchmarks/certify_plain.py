"""Certification throughput with no denoiser: msrs against the field's public loop (Cohen et al.'s code).

    python benchmarks/certify_plain.py [--images 20] [--n0 100] [--n 10000] [--batch-size 1000] [--json PATH]

Both certify the same test digits with the shipped demo classifier (a small CNN), the same sigma, n0, n and alpha,
in the same run. "reference" is the loop the field writes: per image and per batch, x.repeat(batch), randn_like *
sigma, normalise, classifier, argmax, .cpu(), numpy bincount. "msrs" is SmoothedClassifier.certify on the whole
group of images (fused noise, counts kept on the device, batches that mix images). Prints a table; --json writes
records {"workload", "impl", "samples_per_s", "speedup_vs_reference", "agree"}.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from scipy.stats import beta, norm

from msrs import zoo
from msrs.data import digits
from msrs.smoothing import SmoothedClassifier


def reference_certify(model, mean, std, x, sigma, n0, n, alpha, batch_size, num_classes):
    """Cohen et al.'s CERTIFY as their public code writes it, one image at a time."""

    def counts(num):
        c = np.zeros(num_classes, dtype=np.int64)
        remaining = num
        while remaining > 0:
            b = min(batch_size, remaining)
            remaining -= b
            batch = x.repeat((b, 1, 1, 1))
            noisy = batch + torch.randn_like(batch) * sigma
            predictions = model((noisy - mean) / std).argmax(1)
            c += np.bincount(predictions.cpu().numpy(), minlength=num_classes)
        return c

    c_a = int(counts(n0).argmax())
    n_a = int(counts(n)[c_a])
    p_lower = beta.ppf(alpha, n_a, n - n_a + 1) if n_a > 0 else 0.0
    return (c_a, sigma * norm.ppf(p_lower)) if p_lower >= 0.5 else (-1, 0.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    model, mean, std, num_classes = zoo.load_demo_classifier()
    data = digits("test")
    x = data.images[: args.images]
    mean_t, std_t = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    total = args.images * (args.n0 + args.n)
    results = {}
    with torch.inference_mode():
        t0 = time.perf_counter()
        ref = [reference_certify(model, mean_t, std_t, x[i:i + 1], args.sigma, args.n0, args.n, args.alpha,
                                 args.batch_size, num_classes) for i in range(args.images)]
        results["reference"] = (time.perf_counter() - t0, [r[0] for r in ref])
    smoothed = SmoothedClassifier(model, num_classes, mean=mean, std=std)
    smoothed.certify(x[:1], args.sigma, 1, 1, args.alpha, seed=0, batch_size=8)  # build/load the C++ ops first
    t0 = time.perf_counter()
    certs = smoothed.certify(x, args.sigma, args.n0, args.n, args.alpha, seed=0, batch_size=args.batch_size)
    results["msrs"] = (time.perf_counter() - t0, [c.prediction for c in certs])

    base = total / results["reference"][0]
    records = []
    print(f"# {args.images} digits, n0={args.n0}, n={args.n}, sigma={args.sigma}, batch {args.batch_size}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'impl':<10} {'seconds':>9} {'samples/s':>11} {'speedup':>8}  predictions agree")
    for impl, (seconds, predictions) in results.items():
        rate = total / seconds
        agree = float(np.mean(np.array(predictions) == np.array(results["reference"][1])))
        records.append({"workload": "digits-plain", "impl": impl, "samples_per_s": rate,
                        "speedup_vs_reference": rate / base, "agree": agree})
        print(f"{impl:<10} {seconds:9.2f} {rate:11,.0f} {rate / base:7.2f}x  {agree:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
