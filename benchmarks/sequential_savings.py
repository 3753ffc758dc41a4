"""Samples saved by sequential certification (msrs.sequential) at the table of certified accuracy of fixed n.

    python benchmarks/sequential_savings.py                                  # demo set, n = 10,000, table + JSON
    python benchmarks/sequential_savings.py --images 30 --n 1000 --configs denoised-0.25 --json out.json

For each configuration, the same images are certified twice with the same engine, seed and models: Cohen's CERTIFY
(or the cascade) with a fixed n, and the sequential mode with n as its budget (n_max) and the table's radii as
target radii. Reported: Monte Carlo samples drawn (selection + estimation, all stages), wall seconds, and the
certified accuracy of each run at the table's radii (msrs.report.DEFAULT_RADII), and whether the two tables are
equal. The sequential certificates are different numbers (a bound valid under early stopping, stopped once the
bucket is settled), so "equal table" means: the same certified accuracy at every radius of the table.

Configurations (demo models, msrs.zoo; test digits): smooth-0.25 (the classifier alone, no denoiser: cheap enough
for the papers' n = 100,000), denoised-0.25 and denoised-0.5 (the demo DDPM, one sigma), cascade-finetuned (the
fine-tuned DDPM, sigmas 1.0, 0.5, 0.25, the demo's cascade). Default: all but smooth-0.25.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from msrs import zoo  # noqa: E402
from msrs.report import DEFAULT_RADII  # noqa: E402
from msrs.smoothing import SmoothedClassifier  # noqa: E402

CONFIGS = {
    # name: (denoiser, sigmas)
    "smooth-0.25": ("none", (0.25,)),
    "denoised-0.25": ("plain", (0.25,)),
    "denoised-0.5": ("plain", (0.5,)),
    "cascade-finetuned": ("finetuned", (1.0, 0.5, 0.25)),
}
TARGET_RADII = tuple(r for r in DEFAULT_RADII if r > 0)


def certified_accuracy(certs, labels: np.ndarray) -> list[float]:
    """Fraction of images predicted correctly with radius >= r, for r in DEFAULT_RADII (Cohen et al.'s table)."""
    pred = np.array([c.prediction for c in certs])
    radius = np.array([c.radius for c in certs])
    correct = pred == labels
    return [round(float(np.mean(correct & (radius >= r))), 4) for r in DEFAULT_RADII]


def run_config(name: str, args, x: torch.Tensor, labels: np.ndarray) -> dict:
    kind, sigmas = CONFIGS[name]
    classifier, mean, std, num_classes = zoo.load_demo_classifier()
    denoiser = None if kind == "none" else zoo.load_demo_denoiser(finetuned=kind == "finetuned")
    engine = SmoothedClassifier(classifier, num_classes, denoiser=denoiser, mean=mean, std=std,
                                dtype=getattr(torch, args.dtype), compile=args.compile)
    common = dict(seed=args.seed, batch_size=args.batch_size)
    if args.compile:  # compile outside the timed runs
        engine.sample_counts(x[:1], None, sigmas[-1], args.batch_size, stream=0, **common)
    runs = {}
    for mode in ("fixed", "sequential"):
        t0 = time.perf_counter()
        if len(sigmas) == 1 and mode == "fixed":
            certs = engine.certify(x, sigmas[0], args.n0, args.n, args.alpha, **common)
        elif len(sigmas) == 1:
            certs = engine.certify_sequential(x, sigmas[0], args.n0, args.n, args.alpha, target_radii=TARGET_RADII,
                                              bound=args.bound, **common)
        elif mode == "fixed":
            certs = engine.certify_cascade(x, sigmas, args.n0, args.n, args.alpha, **common)
        else:
            certs = engine.certify_cascade_sequential(x, sigmas, args.n0, args.n, args.alpha,
                                                      target_radii=TARGET_RADII, bound=args.bound, **common)
        seconds = time.perf_counter() - t0
        runs[mode] = dict(seconds=round(seconds, 2), samples=int(sum(c.samples for c in certs)),
                          table=certified_accuracy(certs, labels),
                          radii=[round(float(c.radius), 4) for c in certs],
                          predictions=[int(c.prediction) for c in certs])
        print(f"# {name} {mode}: {seconds:.1f} s, {runs[mode]['samples']:,} samples, table {runs[mode]['table']}",
              file=sys.stderr, flush=True)
    fixed, seq = runs["fixed"], runs["sequential"]
    return dict(config=name, sigmas=list(sigmas), images=int(x.shape[0]), n0=args.n0, n=args.n, alpha=args.alpha,
                bound=args.bound, dtype=args.dtype, compile=args.compile, seed=args.seed,
                radii_of_table=list(DEFAULT_RADII), target_radii=list(TARGET_RADII),
                samples_fixed=fixed["samples"], samples_sequential=seq["samples"],
                samples_ratio=round(fixed["samples"] / max(seq["samples"], 1), 3),
                seconds_fixed=fixed["seconds"], seconds_sequential=seq["seconds"],
                time_ratio=round(fixed["seconds"] / max(seq["seconds"], 1e-9), 3),
                table_fixed=fixed["table"], table_sequential=seq["table"],
                table_equal=fixed["table"] == seq["table"],
                images_with_other_bucket=int(sum(
                    _bucket(a, pa, y) != _bucket(b, pb, y)
                    for a, pa, b, pb, y in zip(fixed["radii"], fixed["predictions"], seq["radii"], seq["predictions"],
                                               labels.tolist()))),
                runs=runs)


def _bucket(radius: float, prediction: int, label: int) -> int:
    """Index of the largest table radius this certificate reaches (correct predictions only; -1: none)."""
    if prediction != label:
        return -1
    return int(np.searchsorted(DEFAULT_RADII, radius, side="right")) - 1


def print_table(records: list[dict]) -> None:
    cols = ("config", "n", "samples_fixed", "samples_sequential", "samples_ratio", "time_ratio", "table_equal",
            "images_with_other_bucket")
    rows = [[str(r[c]) for c in cols] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for row in rows:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    for r in records:
        print(f"{r['config']}: radii {r['radii_of_table']}\n  fixed      {r['table_fixed']}\n"
              f"  sequential {r['table_sequential']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="denoised-0.25,denoised-0.5,cascade-finetuned",
                   help="comma-separated: " + ", ".join(CONFIGS))
    p.add_argument("--images", type=int, default=100, help="first test digits (default 100, the demo's)")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=10_000, help="fixed n, and the sequential budget n_max")
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--bound", default="spending", choices=("spending", "cs"))
    p.add_argument("--batch-size", type=int, default=2000)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--compile", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        p.error(f"--configs: unknown {unknown}; expected {', '.join(CONFIGS)}")
    x, y = zoo.digits_split("test")
    x, labels = x[: args.images], np.asarray(y[: args.images])
    records = [run_config(name, args, x, labels) for name in names]
    print_table(records)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
