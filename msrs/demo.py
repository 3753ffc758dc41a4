"""`msrs demo`: the whole method on the shipped demo models, on a fixed set of test digits, in minutes on a CPU.

It certifies, with the same images, seed and sample counts:
  smooth-sigma      the classifier smoothed directly (Cohen et al.) at each sigma
  denoised-sigma    diffusion denoised smoothing (Carlini et al.) at each sigma, off-the-shelf DDPM
  cascade           the multi-scale cascade over all sigmas (Jeong & Shin), off-the-shelf DDPM
  cascade-finetuned the cascade with the diffusion-calibrated DDPM (msrs finetune)
then prints one table of certified accuracy at the report radii, writes a TSV per run, a PNG plot, and says where.
Each run is an ordinary resumable `certify_dataset` log: an interrupted demo picks up where it stopped, and a
finished log made with the same settings is reused instead of recomputed.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from . import logs, report, runner, zoo
from .data import digits
from .smoothing import SmoothedClassifier

SIGMAS = (0.25, 0.5, 1.0)
DEFAULTS = {"images": 100, "n0": 100, "n": 1000, "alpha": 0.001, "batch_size": 2000, "seed": 0}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="msrs-demo", help="folder for the TSV logs and the plot (default: %(default)s)")
    p.add_argument("--images", type=int, default=DEFAULTS["images"],
                   help="test digits to certify, the first ones of the test split (default: %(default)s of 360)")
    p.add_argument("--n0", type=int, default=DEFAULTS["n0"], help="selection samples (default: %(default)s)")
    p.add_argument("--n", type=int, default=DEFAULTS["n"],
                   help="estimation samples per image and sigma (default: %(default)s; the papers use 100000)")
    p.add_argument("--alpha", type=float, default=DEFAULTS["alpha"], help="failure probability (default: %(default)s)")
    p.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS), help="noise levels (default: %(default)s)")
    p.add_argument("--alpha-schedule", choices=("union", "paper"), default="union",
                   help="the cascade's error budget: union (provably valid, default) or paper (the public code's)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="samples per batch")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="noise seed (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--backend", default=None, choices=("torch", "cpp", "triton"), help="force an ops backend")
    p.add_argument("--overwrite", action="store_true", help="recompute finished logs instead of reusing them")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def runs(sigmas) -> list[tuple[str, tuple, str]]:
    """(name, sigmas, denoiser: "none" | "ddpm" | "finetuned") of every configuration the demo certifies."""
    ordered = tuple(sorted(sigmas, reverse=True))
    plain = [(f"smooth-{s:g}", (s,), "none") for s in sorted(sigmas)]
    denoised = [(f"denoised-{s:g}", (s,), "ddpm") for s in sorted(sigmas)]
    return plain + denoised + [("cascade", ordered, "ddpm"), ("cascade-finetuned", ordered, "finetuned")]


def _engine(kind: str, device, backend, cache: dict) -> SmoothedClassifier:
    if "classifier" not in cache:
        cache["classifier"] = zoo.load_demo_classifier(device)
    model, mean, std, num_classes = cache["classifier"]
    denoiser = None
    if kind != "none":
        if kind not in cache:
            cache[kind] = zoo.load_demo_denoiser(finetuned=kind == "finetuned", device=device)
        denoiser = cache[kind]
    return SmoothedClassifier(model, num_classes, denoiser=denoiser, mean=mean, std=std, device=device,
                              backend=backend)


def run(args: argparse.Namespace) -> int:
    if args.images < 1:
        raise ValueError(f"images: expected at least 1, got {args.images}")
    device = torch.device(args.device)
    dataset = digits("test")
    if args.images > len(dataset):
        raise ValueError(f"images: the digits test split has {len(dataset)} images, got {args.images}")
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    cache: dict = {}
    paths, started = [], time.perf_counter()
    for name, sigmas, kind in runs(args.sigmas):
        path = out / f"{name}.tsv"
        smoothed = _engine(kind, device, args.backend, cache)
        print(f"msrs demo: {name}: sigma {', '.join(f'{s:g}' for s in sigmas)}, "
              f"{'no denoiser' if kind == 'none' else kind + ' denoiser'} -> {path}", flush=True)
        t0 = time.perf_counter()
        try:
            runner.certify_dataset(smoothed, dataset, path, sigmas=list(sigmas), n0=args.n0, n=args.n,
                                   alpha=args.alpha, seed=args.seed, batch_size=args.batch_size,
                                   max_images=args.images, alpha_schedule=args.alpha_schedule,
                                   progress=not args.no_progress, overwrite=args.overwrite)
            print(f"msrs demo: {name} done in {time.perf_counter() - t0:.1f} s", flush=True)
        except logs.FinishedLog:
            print(f"msrs demo: {name}: reusing the finished log (pass --overwrite to recompute)", flush=True)
        paths.append(path)
    summaries = report.summarize(paths)
    plot = report.plot(paths, out / "certified_accuracy.png",
                       title=f"Digits, {args.images} test images, n = {args.n}, alpha = {args.alpha:g}")
    print()
    print(f"Certified accuracy on {args.images} test digits (n0 = {args.n0}, n = {args.n}, alpha = {args.alpha:g}, "
          f"seed = {args.seed}, cascade schedule = {args.alpha_schedule}):")
    print(report.format_table(summaries))
    print(f"\nTSV logs: {out}/*.tsv   plot: {plot}   ({time.perf_counter() - started:.0f} s)")
    return 0
