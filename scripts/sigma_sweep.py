#!/usr/bin/env python3
"""Which noise levels suit 8x8 digits: per sigma, on the digits VALIDATION split (288 images that no shipped model
was trained on), the demo classifier's votes on one-shot denoised noisy copies (and on plain noisy copies), and the
multi-scale cascade's outcome for candidate sigma sets estimated from the same votes (scripts/demo_validation.py).

  python3 scripts/sigma_sweep.py [--denoiser msrs/assets/digits_ddpm] [--draws 64] [--json runs/sigma_sweep.json]

The numbers are point estimates from `--draws` votes per image (no confidence bounds): they rank sigmas and
sigma sets; the demo's certified numbers come from msrs demo itself.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402

SIGMAS = (0.125, 0.18, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.75, 1.0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--denoiser", type=Path, default=ROOT / "msrs" / "assets" / "digits_ddpm")
    p.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS))
    p.add_argument("--draws", type=int, default=64, help="noisy copies per image and sigma")
    p.add_argument("--split", default="validation", choices=("validation", "fit"))
    p.add_argument("--plain", action="store_true", help="also the classifier on plain noisy copies (no denoiser)")
    p.add_argument("--max-sigmas", type=int, default=3, help="largest cascade size in the sigma-set table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--save-counts", type=Path, default=None, help="per-image vote counts per sigma (.npz)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from demo_validation import VOTE_STREAM, cascade_proxy, vote_statistics, votes
    from msrs.denoiser import DiffusionDenoiser
    from msrs.zoo import digits_split, load_demo_classifier

    classifier, mean, std, _ = load_demo_classifier("cpu")
    denoiser = DiffusionDenoiser.from_pretrained(args.denoiser).eval()
    images, labels = digits_split(args.split)
    labels_np = labels.numpy()
    sigmas = sorted(args.sigmas)
    result = {"split": args.split, "images": int(images.shape[0]), "draws": args.draws, "seed": args.seed,
              "denoiser": str(args.denoiser), "per_sigma": {}, "cascades": []}
    counts = {}
    start = time.perf_counter()
    print(f"{args.split}: {images.shape[0]} images, {args.draws} draws per image and sigma", flush=True)
    print("sigma     t  one-shot  smoothed-correct  smoothed-wrong  near-half  ideal-ACR   (plain: one-shot)")
    for level, sigma in enumerate(sigmas):
        counts[sigma] = votes(denoiser, classifier, mean, std, images, sigma, draws=args.draws, seed=args.seed,
                              stream=VOTE_STREAM + level)
        row = vote_statistics(counts[sigma], labels_np, sigma)
        row["t"] = denoiser.timestep_for(sigma)[0]
        if args.plain:
            plain = votes(None, classifier, mean, std, images, sigma, draws=args.draws, seed=args.seed,
                          stream=VOTE_STREAM + level)
            row["plain"] = vote_statistics(plain, labels_np, sigma)
        result["per_sigma"][f"{sigma:g}"] = row
        extra = f"   {row['plain']['one_shot_accuracy']:.3f}" if args.plain else ""
        print(f"{sigma:<6g} {row['t']:4d}  {row['one_shot_accuracy']:.3f}     {row['smoothed_correct']:.3f}"
              f"             {row['smoothed_wrong']:.3f}           {row['near_half']:.3f}      "
              f"{row['ideal_acr']:.3f}{extra}", flush=True)
    print("\ncascade (votes only)          r=0 acc  wrong  abstain  ideal-ACR  decided at (largest sigma first)")
    for size in range(2, args.max_sigmas + 1):
        for subset in itertools.combinations(sigmas, size):
            proxy = cascade_proxy(counts, labels_np, subset)
            result["cascades"].append(proxy)
            name = "/".join(f"{s:g}" for s in proxy["sigmas"])
            print(f"{name:28s}  {proxy['accuracy_r0']:.3f}   {proxy['wrong']:.3f}  {proxy['abstain']:.3f}    "
                  f"{proxy['acr']:.3f}      {proxy['decided_at']}")
    result["seconds"] = round(time.perf_counter() - start, 1)
    if args.save_counts:
        import numpy as np

        np.savez(args.save_counts, labels=labels_np, **{f"sigma_{s:g}": c for s, c in counts.items()})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"({result['seconds']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
