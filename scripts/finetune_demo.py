#!/usr/bin/env python3
"""Make the shipped fine-tuned demo DDPM: diffusion calibration (msrs.finetune) of msrs/assets/digits_ddpm against
the frozen demo classifier on the digits train split, saved to msrs/assets/digits_ddpm_finetuned.

What it does, deterministically for a seed (CPU, same torch version, same --threads):
  1. evaluates the off-the-shelf DDPM on the digits TEST split (docs/DESIGN.md: i % 5 == 0, 360 images):
     (a) per sigma, the classifier's accuracy on single one-shot-denoised noisy samples (all 360 images x --draws
         noise draws), (b) the multi-scale cascade's certified accuracy at radii 0 / 0.25 / 0.5 / 1.0 and its
         average certified radius (ACR) with SmoothedClassifier.certify_cascade on the first --cert-images test
         images (n0 = --n0, n = --n, alpha = --alpha, the provably valid "union" error schedule);
  2. fine-tunes with msrs.finetune.finetune into --work-dir (checkpoints, optimizer state and log.csv live there,
     so an interrupted run resumes bit-for-bit where it stopped when started again with the same arguments);
  3. evaluates the fine-tuned EMA model on the same images with the same noise (counter-based: the same seed gives
     the same noisy samples to both models);
  4. copies the model (unet/ + scheduler/, DiffusionDenoiser.from_pretrained layout), log.csv and
     finetune_info.json (settings, command, wall times, the numbers before and after) to --out.

The command that made the shipped weights is recorded in <out>/finetune_info.json ("command"); with the defaults:

  python3 scripts/finetune_demo.py
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SIGMAS = (0.25, 0.5, 1.0)
RADII = (0.0, 0.25, 0.5, 1.0)
EVAL_STREAM = 4096  # noise stream of the single-sample accuracy evaluation (level l: EVAL_STREAM + l)


def weights_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.safetensors")):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def single_sample_accuracy(denoiser, classifier, mean, std, images, labels, *, draws, seed, batch=2048) -> dict:
    """Per sigma: accuracy of the classifier on one-shot denoised noisy samples (draws per image), through the same
    ops as the certification engine (msrs.ops.add_noise -> predict_eps -> finalize_denoised)."""
    from msrs import ops

    ids = torch.arange(images.shape[0])
    out = {}
    for level, sigma in enumerate(SIGMAS):
        t, a = denoiser.timestep_for(sigma)
        correct = 0
        for lo in range(0, images.shape[0], max(1, batch // draws)):
            hi = min(images.shape[0], lo + max(1, batch // draws))
            x_t = ops.add_noise(images[lo:hi], sigma, draws, seed=seed, image_ids=ids[lo:hi],
                                stream=EVAL_STREAM + level, diffusion_scale=a)
            eps = denoiser.predict_eps(x_t, t)
            inp = ops.finalize_denoised(x_t, eps, a, mean=mean, std=std)
            pred = classifier(inp).argmax(1).reshape(hi - lo, draws)
            correct += int((pred == labels[lo:hi, None]).sum())
        out[str(sigma)] = correct / (images.shape[0] * draws)
    return out


def cascade_certification(denoiser, classifier, mean, std, images, labels, *, n0, n, alpha, seed) -> dict:
    from msrs.smoothing import SmoothedClassifier

    smoothed = SmoothedClassifier(classifier, 10, denoiser=denoiser, mean=mean, std=std, device="cpu")
    start = time.perf_counter()
    certs = smoothed.certify_cascade(images, SIGMAS, n0, n, alpha, seed=seed, batch_size=1024,
                                     image_ids=torch.arange(images.shape[0]))
    seconds = time.perf_counter() - start
    pred = np.array([c.prediction for c in certs])
    radius = np.array([c.radius for c in certs])
    stage = np.array([c.stage for c in certs])
    correct = pred == labels.numpy()
    sorted_sigmas = sorted(SIGMAS, reverse=True)
    return {
        "certified_accuracy": {f"{r:g}": float(np.mean(correct & (radius >= r) & (pred >= 0))) for r in RADII},
        "acr": float(np.mean(np.where(correct, radius, 0.0))),
        "abstain": float(np.mean(pred < 0)),
        "wrong": float(np.mean((pred >= 0) & ~correct)),
        "deciding_sigma": {f"{s:g}": int(np.sum(stage == i)) for i, s in enumerate(sorted_sigmas)},
        "seconds": round(seconds, 1),
    }


def evaluate(denoiser, classifier, mean, std, test_images, test_labels, args) -> dict:
    denoiser = denoiser.eval()
    start = time.perf_counter()
    result = {"single_sample_accuracy": single_sample_accuracy(denoiser, classifier, mean, std, test_images,
                                                                test_labels, draws=args.draws, seed=args.eval_seed)}
    if args.cert_images > 0:
        k = args.cert_images
        result["cascade"] = cascade_certification(denoiser, classifier, mean, std, test_images[:k], test_labels[:k],
                                                  n0=args.n0, n=args.n, alpha=args.alpha, seed=args.eval_seed)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def print_eval(name: str, ev: dict) -> None:
    acc = ev["single_sample_accuracy"]
    line = "  ".join(f"sigma {s}: {v:.4f}" for s, v in acc.items())
    print(f"[{name}] single denoised sample accuracy: {line}", flush=True)
    if "cascade" in ev:
        c = ev["cascade"]
        ca = "  ".join(f"r={r}: {v:.3f}" for r, v in c["certified_accuracy"].items())
        print(f"[{name}] cascade certified accuracy: {ca}  ACR {c['acr']:.4f}  abstain {c['abstain']:.3f}  wrong "
              f"{c['wrong']:.3f}  deciding sigma {c['deciding_sigma']}  ({c['seconds']}s)", flush=True)


def main(argv=None) -> int:
    from msrs.finetune.settings import FinetuneSettings, add_options, from_options

    # the library's defaults (msrs.finetune.FinetuneSettings) but bfloat16 and a checkpoint every 50 steps: the
    # settings the shipped weights were made with (msrs/assets/digits_ddpm_finetuned/finetune_info.json)
    demo_settings = FinetuneSettings(sigmas=SIGMAS, dtype="bfloat16", checkpoint_every=50)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--denoiser", type=Path, default=ROOT / "msrs" / "assets" / "digits_ddpm")
    p.add_argument("--out", type=Path, default=ROOT / "msrs" / "assets" / "digits_ddpm_finetuned")
    p.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "finetune_demo",
                   help="checkpoints, optimizer state and the log during training (not shipped)")
    add_options(p, defaults=demo_settings, exclude=("sigmas",))  # msrs finetune's options, the demo's defaults
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--draws", type=int, default=8, help="noise draws per test image, single-sample accuracy")
    p.add_argument("--cert-images", type=int, default=100, help="test images certified by the cascade (0: skip)")
    p.add_argument("--n0", type=int, default=32)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--eval-seed", type=int, default=0)
    p.add_argument("--skip-eval", action="store_true", help="train and export only")
    p.add_argument("--no-resume", action="store_true", help="start the fine-tuning over")
    args = p.parse_args(argv)
    settings = from_options(args, defaults=demo_settings, exclude=("sigmas",))

    torch.set_num_threads(args.threads)
    from msrs.data import digits
    from msrs.denoiser import DiffusionDenoiser
    from msrs.finetune import finetune
    from msrs.zoo import load_demo_classifier

    if not (args.denoiser / "unet").is_dir():
        raise SystemExit(f"{args.denoiser} holds no DDPM (unet/ + scheduler/): run scripts/train_ddpm.py first")
    classifier, mean, std, _ = load_demo_classifier("cpu")
    base = DiffusionDenoiser.from_pretrained(args.denoiser).eval()
    train, test = digits("train"), digits("test")
    command = "python3 " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT)]
                                      + list(sys.argv[1:] if argv is None else argv))
    eval_settings = {k: getattr(args, k) for k in ("draws", "cert_images", "n0", "n", "alpha", "eval_seed")}
    eval_settings["base_digest"] = weights_digest(args.denoiser)
    args.work_dir.mkdir(parents=True, exist_ok=True)

    before = None
    if not args.skip_eval:
        cache = args.work_dir / "eval_before.json"
        if cache.is_file() and json.loads(cache.read_text()).get("settings") == eval_settings:
            before = json.loads(cache.read_text())["result"]
            print("[before] (cached)", flush=True)
        else:
            before = evaluate(base, classifier, mean, std, test.images, test.labels, args)
            cache.write_text(json.dumps({"settings": eval_settings, "result": before}, indent=1) + "\n")
        print_eval("before", before)

    start = time.perf_counter()
    result = finetune(base, classifier, train, out_dir=args.work_dir / "model", settings=settings,
                      resume=not args.no_resume, mean=mean, std=std, progress=True)
    session_seconds = time.perf_counter() - start
    record = json.loads((args.work_dir / "model" / "finetune.json").read_text())
    print(f"fine-tuning: {record['step']} steps, {record['wall_time_seconds']:.0f}s of training "
          f"({session_seconds:.0f}s this session)", flush=True)

    after = None
    if not args.skip_eval:
        tuned = DiffusionDenoiser.from_pretrained(args.work_dir / "model").eval()
        after = evaluate(tuned, classifier, mean, std, test.images, test.labels, args)
        print_eval("after", after)

    # export: the model in the digits_ddpm layout, the log and the record (no optimizer state: not shipped)
    tmp = args.out.with_name(args.out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name in ("unet", "scheduler"):
        shutil.copytree(args.work_dir / "model" / name, tmp / name)
    shutil.copy2(args.work_dir / "model" / "log.csv", tmp / "log.csv")
    info = {
        "what": "the demo DDPM (msrs/assets/digits_ddpm) after diffusion calibration by msrs.finetune; EMA weights",
        "base_denoiser": os.path.relpath(args.denoiser, ROOT),
        "base_digest": eval_settings["base_digest"],
        "classifier": "msrs/assets/digits_classifier (frozen)",
        "data": "digits train split (1437 images, i % 5 != 0)",
        "command": command,
        "finetune": record,
        "threads": args.threads,
        "evaluation": {
            "test_split": "digits test split (i % 5 == 0, 360 images)",
            "single_sample_accuracy": f"all 360 test images x {args.draws} noise draws per sigma",
            "cascade": (f"first {args.cert_images} test images, sigmas {list(SIGMAS)}, n0={args.n0}, n={args.n}, "
                        f"alpha={args.alpha}, alpha_schedule=union, p0=0.5, seed={args.eval_seed}"),
            "before": before,
            "after": after,
        },
    }
    (tmp / "finetune_info.json").write_text(json.dumps(info, indent=1) + "\n")
    if args.out.exists():
        shutil.rmtree(args.out)
    os.replace(tmp, args.out)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"saved {args.out} ({size / 1e6:.2f} MB)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
