"""`msrs demo`: the whole method on the shipped demo models, on a fixed set of test digits, in minutes on a CPU.

It certifies, with the same images, seed and sample budget:
  denoised-sigma    diffusion denoised smoothing (Carlini et al.) at each sigma, off-the-shelf DDPM
  cascade           the multi-scale cascade over all sigmas (Jeong & Shin), off-the-shelf DDPM
  cascade-finetuned the cascade with the diffusion-calibrated DDPM (msrs finetune)
  smooth-sigma      with --plain only: the classifier smoothed directly (Cohen et al.) at each sigma
then prints one table of certified accuracy at the table's radii with exact 95% intervals over the test images,
checks the paper's claim on it (the fine-tuned cascade keeps the smallest sigma's accuracy at r = 0 and reaches
the largest sigma's certified accuracy at the largest radius), and writes a TSV per run, a PNG plot and
summary.json. By default every run is sequential (msrs.sequential: each image stops once its bucket at the table's
radii is settled, with n as the per-stage budget); --fixed-n runs Cohen's fixed-n CERTIFY instead.

At its start it says how long it expects to take on the machine it runs on: it times a few batches of the models
here and scales the recorded run (msrs/assets/demo_expected.json, made by scripts/record_demo.py) by the speed
ratio; for settings without a record it gives the worst case (every image using its whole budget).

The defaults (sigmas, budget, radii) were chosen on the digits validation split, never on the test digits the demo
reports: docs/DEMO.md. Each run is an ordinary resumable `certify_dataset` log: an interrupted demo picks up where
it stopped, and a finished log made with the same settings is reused instead of recomputed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from . import logs, report, runner, zoo
from .data import digits
from .smoothing import SmoothedClassifier

SIGMAS = (0.5, 0.25)
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
DEFAULTS = {"images": 40, "n0": 100, "n": 4_000, "alpha": 0.001, "batch_size": 2000, "group_size": 25, "seed": 0,
            "undecided": "fall-through"}  # chosen on the validation split: docs/DEMO.md section 7
EXPECTED_NAME = "demo_expected.json"
CI_LEVEL = 0.95
CLAIM_TOLERANCE = 0.03  # r = 0: the fine-tuned cascade within 3 points of the smallest sigma's denoised accuracy
CALIBRATION_BATCHES = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="msrs-demo", help="folder for the TSV logs and the plot (default: %(default)s)")
    p.add_argument("--images", type=int, default=DEFAULTS["images"],
                   help="test digits to certify, the first ones of the test split (default: %(default)s of 360)")
    p.add_argument("--n0", type=int, default=DEFAULTS["n0"], help="selection samples (default: %(default)s)")
    p.add_argument("--n", type=int, default=DEFAULTS["n"],
                   help="estimation samples per image and sigma: the sequential budget, or the fixed n with "
                        "--fixed-n (default: %(default)s; the papers use 100000)")
    p.add_argument("--alpha", type=float, default=DEFAULTS["alpha"], help="failure probability (default: %(default)s)")
    p.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS), help="noise levels (default: %(default)s)")
    p.add_argument("--radii", type=float, nargs="+", default=list(RADII),
                   help="radii of the table, also the sequential runs' target radii (default: %(default)s)")
    p.add_argument("--plain", action="store_true",
                   help="also certify the classifier smoothed without a denoiser (smooth-SIGMA runs)")
    p.add_argument("--fixed-n", action="store_true",
                   help="Cohen's fixed-n CERTIFY (n samples for every image and stage) instead of sequential runs")
    p.add_argument("--alpha-schedule", choices=("union", "paper"), default="union",
                   help="the cascade's error budget: union (provably valid, default) or paper (the public code's; "
                        "--fixed-n only)")
    p.add_argument("--undecided", choices=("abstain", "fall-through"), default=DEFAULTS["undecided"],
                   help="the cascades, at a stage whose bounds straddle p0: abstain (the paper's rule) or go on to "
                        "the next sigma, that stage capping the radius (msrs certify --undecided; default: "
                        "%(default)s)")
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="samples per batch")
    p.add_argument("--group-size", type=int, default=DEFAULTS["group_size"],
                   help="images sampled together (fuller batches; never changes the certificates; default: "
                        "%(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="noise seed (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--backend", default=None, choices=("torch", "cpp", "triton"), help="force an ops backend")
    p.add_argument("--overwrite", action="store_true", help="recompute finished logs instead of reusing them")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


# ------------------------------------------------------------------------------------------------ what is certified
def runs(sigmas, plain: bool = False) -> list[tuple[str, tuple, str]]:
    """(name, sigmas, denoiser: "none" | "ddpm" | "finetuned") of every configuration the demo certifies."""
    ordered = tuple(sorted(sigmas, reverse=True))
    plain = [(f"smooth-{s:g}", (s,), "none") for s in sorted(sigmas)] if plain else []
    denoised = [(f"denoised-{s:g}", (s,), "ddpm") for s in sorted(sigmas)]
    return plain + denoised + [("cascade", ordered, "ddpm"), ("cascade-finetuned", ordered, "finetuned")]


def check_arguments(args: argparse.Namespace) -> None:
    """Every argument error, before any model or data is loaded."""
    if args.images < 1:
        raise ValueError(f"images: expected at least 1, got {args.images}")
    if args.images > 360:
        raise ValueError(f"images: the digits test split has 360 images, got {args.images}")
    if not args.sigmas or any(not (0 < s < float("inf")) for s in args.sigmas):
        raise ValueError(f"sigmas: expected positive noise levels, got {args.sigmas}")
    if len(set(args.sigmas)) != len(args.sigmas):
        raise ValueError(f"sigmas: expected distinct noise levels, got {args.sigmas}")
    if not args.radii or any(not (0 <= r < float("inf")) for r in args.radii):
        raise ValueError(f"radii: expected finite radii >= 0, got {args.radii}")
    if args.group_size < 1:
        raise ValueError(f"group_size: expected at least 1, got {args.group_size}")
    if not args.fixed_n and args.alpha_schedule != "union":
        raise ValueError("alpha_schedule: the sequential runs need 'union' (a valid union bound); pass --fixed-n "
                         "to use 'paper'")
    certify_config(args)  # the runner's own checks (msrs.config), before anything is loaded


def certify_config(args: argparse.Namespace, sigmas=None):
    """The msrs.config.CertifyConfig of a run of the demo (all its sigmas by default): sequential with the table's
    positive radii as target radii unless --fixed-n."""
    from .config import from_options

    targets = [r for r in args.radii if r > 0] or None
    sigmas = list(args.sigmas if sigmas is None else sigmas)
    return from_options(sigmas=sigmas, n0=args.n0, n=args.n, alpha=args.alpha, seed=args.seed,
                        batch_size=args.batch_size, alpha_schedule=args.alpha_schedule, sequential=not args.fixed_n,
                        target_radii=None if args.fixed_n else targets,
                        undecided=args.undecided.replace("-", "_") if len(sigmas) > 1 else "abstain")


def settings(args: argparse.Namespace) -> dict:
    """What the certificates (and the sample counts) depend on: the key of a recorded run."""
    return {"sigmas": sorted(float(s) for s in args.sigmas), "radii": sorted(float(r) for r in args.radii),
            "n0": args.n0, "n": args.n, "alpha": args.alpha, "seed": args.seed,
            "mode": "fixed-n" if args.fixed_n else "sequential", "alpha_schedule": args.alpha_schedule,
            "undecided": args.undecided, "models": models_digest()}


def models_digest() -> str:
    """sha256 (16 hex digits) of the shipped weights: a recorded run is only a prediction for the same models."""
    h = hashlib.sha256()
    for path in sorted(zoo.assets_dir().rglob("*.safetensors")):
        h.update(path.relative_to(zoo.assets_dir()).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------- engines, speed
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


def calibrate(engines: dict, image: torch.Tensor, batch_size: int, sigma: float) -> dict:
    """Samples per second of each engine kind ("none", "ddpm") on this machine now: one warm-up batch (it also
    compiles the C++ ops the first time), then CALIBRATION_BATCHES timed batches of `batch_size` samples."""
    rates = {}
    for kind, smoothed in engines.items():
        smoothed.certify(image, sigma, 1, min(batch_size, 64), 0.01, seed=1, batch_size=batch_size)  # warm-up
        started = time.perf_counter()
        for _ in range(CALIBRATION_BATCHES):
            smoothed.certify(image, sigma, 1, max(1, batch_size - 1), 0.01, seed=1, batch_size=batch_size)
        rates[kind] = CALIBRATION_BATCHES * batch_size / max(time.perf_counter() - started, 1e-9)
    return rates


def load_expected() -> dict | None:
    path = zoo.asset_path(EXPECTED_NAME)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _done_fraction(path: Path, images: int, overwrite: bool) -> float:
    """The share of a run already in its log (resumed or reused), 0 when it will be computed afresh."""
    if overwrite or not path.is_file():
        return 0.0
    try:
        rows = logs.read_log(path, required=("idx",))["rows"]
    except (OSError, ValueError):
        return 0.0
    return min(1.0, len({r["idx"] for r in rows if r["idx"] < 360}) / images)


def estimate(plan: list, args: argparse.Namespace, rates: dict, expected: dict | None, out: Path) -> dict:
    """Seconds expected for the runs still to do. With a recorded run of the same settings: its per-run seconds
    scaled by the speed ratio (recorded calibration / this machine's) and by the number of images; otherwise (and
    always as the worst case) every image drawing its whole budget n0 + n per stage at the calibrated speed."""
    key = settings(args)
    record = expected if expected is not None and expected.get("settings") == key else None
    total, worst = 0.0, 0.0
    for name, sigmas, kind in plan:
        remaining = 1.0 - _done_fraction(out / f"{name}.tsv", args.images, args.overwrite)
        rate = rates["none" if kind == "none" else "ddpm"]
        worst += remaining * args.images * len(sigmas) * (args.n0 + args.n) / rate
        if record is not None and name in record["runs"]:
            run = record["runs"][name]
            old_rate = record["calibration"]["none" if kind == "none" else "ddpm"]
            total += remaining * run["seconds"] * old_rate / rate * args.images / record["images"]
        else:
            record = None
    return {"seconds": total if record is not None else None, "worst_seconds": worst}


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


# ------------------------------------------------------------------------------------------------ table and claim
def confidence_interval(certified: int, images: int, level: float = CI_LEVEL) -> tuple:
    """Exact two-sided binomial (Clopper-Pearson) interval for a certified fraction of `images` test images
    (msrs.report.accuracy_interval, as `msrs report --ci` prints it)."""
    lo, hi = report.accuracy_interval(certified, images, level)
    return float(lo), float(hi)


def certified_counts(path: Path, radii) -> np.ndarray:
    """Per radius, the number of images certified correct at >= that radius."""
    log = report.load(path)
    ok = (log["correct"] == 1) & (log["predict"] != -1)
    radius = np.where(ok, log["radius"], -np.inf)
    return np.array([int((radius >= r).sum()) for r in radii])


def claim(counts: dict, images: int, sigmas, radii) -> dict:
    """The paper's claim on this table: at r = 0 the fine-tuned cascade certifies at least the smallest sigma's
    denoised accuracy minus CLAIM_TOLERANCE, and at the table's largest radius at least the largest sigma's."""
    radii = list(radii)
    small, large = f"denoised-{min(sigmas):g}", f"denoised-{max(sigmas):g}"
    cascade = counts["cascade-finetuned"]
    r0 = radii.index(0.0) if 0.0 in radii else int(np.argmin(radii))
    top = int(np.argmax(radii))
    keep = (cascade[r0] - counts[small][r0]) / images
    reach = (cascade[top] - counts[large][top]) / images
    return {
        "r0": {"radius": radii[r0], "cascade": int(cascade[r0]), "reference": small,
               "reference_count": int(counts[small][r0]), "difference": keep, "holds": keep >= -CLAIM_TOLERANCE},
        "top": {"radius": radii[top], "cascade": int(cascade[top]), "reference": large,
                "reference_count": int(counts[large][top]), "difference": reach, "holds": reach >= 0},
    }


def format_claim(result: dict, images: int) -> str:
    lines = []
    for key, wanted in (("r0", f"within {CLAIM_TOLERANCE * 100:g} points of"), ("top", "at least")):
        c = result[key]
        lo, hi = confidence_interval(c["cascade"], images)
        rlo, rhi = confidence_interval(c["reference_count"], images)
        lines.append(f"  r = {c['radius']:g}: cascade-finetuned {c['cascade'] / images:.3f} [{lo:.2f}, {hi:.2f}] vs "
                     f"{c['reference']} {c['reference_count'] / images:.3f} [{rlo:.2f}, {rhi:.2f}] "
                     f"({wanted}: {'yes' if c['holds'] else 'NO'}, difference {c['difference'] * 100:+.0f} points)")
    return "\n".join(lines)


def sample_statistics(path: Path) -> dict | None:
    log = report.load(path)
    if "samples" not in log or log["samples"].size == 0:
        return None
    s = log["samples"]
    return {"total": int(s.sum()), "median": float(np.median(s)), "p90": float(np.percentile(s, 90)),
            "max": int(s.max())}


def machine() -> dict:
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for word in f.read().split():
                if word == "avx2" or word.startswith(("avx512", "amx")):
                    flags.add(word)
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": platform.processor() or platform.machine(), "cpu_flags": sorted(flags),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average": [round(x, 2) for x in load] if load else None, "torch": torch.__version__}


# ------------------------------------------------------------------------------------------------------------ run
def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    device = torch.device(args.device)
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    dataset = digits("test")
    plan = runs(args.sigmas, args.plain)
    cache: dict = {}
    started = time.perf_counter()
    kinds = ("none", "ddpm") if args.plain else ("ddpm",)
    engines = {kind: _engine(kind, device, args.backend, cache) for kind in kinds}
    rates = calibrate(engines, dataset.images[:1], args.batch_size, max(args.sigmas))
    guess = estimate(plan, args, rates, load_expected(), out)
    plain_speed = f" / {rates['none']:,.0f} plain" if "none" in rates else ""
    speed = f"{rates['ddpm']:,.0f} denoised{plain_speed} samples/s measured now"
    if guess["seconds"] is not None:
        print(f"msrs demo: expected time on this machine: about {_minutes(guess['seconds'])} ({speed}; the recorded "
              f"run scaled to this speed; at most {_minutes(guess['worst_seconds'])} if every image used its whole "
              f"budget)", flush=True)
    else:
        print(f"msrs demo: expected time on this machine: at most {_minutes(guess['worst_seconds'])} ({speed}; every "
              f"image using its whole budget; no recorded run with these settings to predict better)", flush=True)

    paths, record = [], {}
    for name, sigmas, kind in plan:
        path = out / f"{name}.tsv"
        smoothed = _engine(kind, device, args.backend, cache)
        print(f"msrs demo: {name}: sigma {', '.join(f'{s:g}' for s in sigmas)}, "
              f"{'no denoiser' if kind == 'none' else kind + ' denoiser'} -> {path}", flush=True)
        t0 = time.perf_counter()
        reused = False
        try:
            runner.certify_dataset(smoothed, dataset, path, certify_config(args, sigmas),
                                   group_size=args.group_size, max_images=args.images,
                                   progress=not args.no_progress, overwrite=args.overwrite)
            print(f"msrs demo: {name} done in {time.perf_counter() - t0:.1f} s", flush=True)
        except logs.FinishedLog:
            reused = True
            print(f"msrs demo: {name}: reusing the finished log (pass --overwrite to recompute)", flush=True)
        record[name] = {"seconds": round(time.perf_counter() - t0, 1), "reused": reused,
                        "samples": sample_statistics(path)}
        paths.append(path)

    radii = sorted(args.radii)
    names = [name for name, _, _ in plan]
    counts = {name: certified_counts(path, radii) for name, path in zip(names, paths)}
    claimed = claim(counts, args.images, args.sigmas, radii)
    summaries = report.summarize(paths, radii=radii)
    mode = "fixed n" if args.fixed_n else "sequential, budget n per stage"
    plot = report.plot(paths, out / "certified_accuracy.png",
                       title=f"Digits, {args.images} test images, n = {args.n} ({mode}), alpha = {args.alpha:g}")
    elapsed = time.perf_counter() - started
    print()
    print(f"Certified accuracy on {args.images} test digits (n0 = {args.n0}, n = {args.n} ({mode}), "
          f"alpha = {args.alpha:g}, seed = {args.seed}, cascade schedule = {args.alpha_schedule}, "
          f"undecided stages: {args.undecided}):")
    print(f"(under each row: its {CI_LEVEL:.0%} confidence intervals over the {args.images} test images, exact "
          f"binomial (Clopper-Pearson), as `msrs report --ci` prints them: the test set is a sample too)")
    print(report.format_table(summaries, ci=True))
    print("\nAbstentions (no certificate: a stage undecided at the budget, or a cascade with no stage that "
          "certifies): " + ", ".join(f"{s.name} {s.abstentions}" for s in summaries))
    if any(r["samples"] for r in record.values()):
        print("Monte Carlo samples per image (sequential runs): " + "; ".join(
            f"{name} total {r['samples']['total']:,}, median {r['samples']['median']:,.0f}, max "
            f"{r['samples']['max']:,}" for name, r in record.items() if r["samples"]))
    print("\nThe paper's claim on this table (the fine-tuned cascade keeps the smallest sigma's accuracy and "
          "certifies the largest sigma's radii):")
    print(format_claim(claimed, args.images))
    summary = {"settings": settings(args), "images": args.images, "calibration": rates, "machine": machine(),
               "runs": record, "seconds": round(elapsed, 1),
               "expected_seconds": guess["seconds"], "worst_seconds": guess["worst_seconds"],
               "table": {s.name: {"certified": [int(k) for k in counts[s.name]], "accuracy": list(s.accuracies),
                                  "acr": s.acr} for s in summaries},
               "claim": claimed}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=_jsonable) + "\n")
    print(f"\nTSV logs: {out}/*.tsv   plot: {plot}   summary: {out}/summary.json   ({elapsed:.0f} s)")
    return 0


def _jsonable(value):
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
