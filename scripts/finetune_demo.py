#!/usr/bin/env python3
"""Make a fine-tuned demo DDPM: diffusion calibration (msrs.finetune) of msrs/assets/digits_ddpm against the frozen
demo classifier on the digits FIT split, evaluated on the digits VALIDATION split (msrs.zoo.digits_split: the
train split cut by position, 1149 / 288 images; the shipped classifier and DDPM were trained on "fit" only). The
test digits that `msrs demo` reports are never looked at here.

What it does, deterministically for a seed (CPU, same torch version, same --threads):
  1. evaluates the off-the-shelf DDPM on the validation split (cached in --work-dir/eval_before.json):
     (a) per sigma, the classifier's votes on --draws one-shot denoised noisy copies of every validation image
         (one-shot accuracy, smoothed correct / wrong, near-half: scripts/demo_validation.py) and the cascade's
         outcome estimated from those votes; (b) with --cert-images > 0, sequential certification (msrs.runner,
         the demo's settings: n0, n budget, alpha, target radii = --radii) of the first --cert-images validation
         images by denoised smoothing at the smallest and at the largest sigma and by the cascade;
  2. fine-tunes with msrs.finetune.finetune into --work-dir/model (an interrupted run resumes bit-for-bit);
  3. evaluates the fine-tuned EMA model the same way, with the same noise (the cascade only for (b));
  4. copies the model (unet/ + scheduler/, DiffusionDenoiser.from_pretrained layout), log.csv and
     finetune_info.json (settings, command, wall times, the validation numbers before and after) to --out.

scripts/finetune_sweep.py runs it for each candidate recipe and ships the one its rule picks (docs/DEMO.md).
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
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402

from msrs.demo import DEFAULTS as DEMO_DEFAULTS  # noqa: E402
from msrs.demo import RADII, SIGMAS  # noqa: E402


def weights_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.safetensors")):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def vote_evaluation(denoiser, classifier, mean, std, images, labels, sigmas, *, draws: int, seed: int) -> dict:
    from demo_validation import VOTE_STREAM, cascade_proxy, vote_statistics, votes

    counts, per_sigma = {}, {}
    for level, sigma in enumerate(sorted(sigmas)):
        counts[sigma] = votes(denoiser, classifier, mean, std, images, sigma, draws=draws, seed=seed,
                              stream=VOTE_STREAM + level)
        per_sigma[f"{sigma:g}"] = vote_statistics(counts[sigma], labels.numpy(), sigma)
    return {"per_sigma": per_sigma, "cascade_proxy": cascade_proxy(counts, labels.numpy(), sigmas)}


def certification(denoiser, classifier, mean, std, dataset, sigmas, args, *, runs) -> dict:
    from demo_validation import certify_split
    from msrs.smoothing import SmoothedClassifier

    smoothed = SmoothedClassifier(classifier, 10, denoiser=denoiser, mean=mean, std=std, device="cpu")
    out = {}
    for name, run_sigmas in runs:
        out[name] = certify_split(smoothed, dataset, run_sigmas, n0=args.n0, n=args.n, alpha=args.alpha,
                                  seed=args.eval_seed, radii=args.radii, batch_size=args.eval_batch_size,
                                  group_size=args.group_size, max_images=args.cert_images)
    return out


def print_votes(name: str, ev: dict) -> None:
    for sigma, row in ev["per_sigma"].items():
        print(f"[{name}] sigma {sigma}: one-shot {row['one_shot_accuracy']:.4f}  smoothed correct "
              f"{row['smoothed_correct']:.3f} wrong {row['smoothed_wrong']:.3f}  near-half {row['near_half']:.3f}",
              flush=True)
    c = ev["cascade_proxy"]
    print(f"[{name}] cascade from votes: r=0 {c['accuracy_r0']:.3f} wrong {c['wrong']:.3f} abstain {c['abstain']:.3f} "
          f"ideal ACR {c['acr']:.3f} decided at {c['decided_at']}", flush=True)


def print_cert(name: str, cert: dict) -> None:
    for run, c in cert.items():
        acc = "  ".join(f"r={r}: {v:.3f}" for r, v in c["certified_accuracy"].items())
        print(f"[{name}] {run}: {acc}  ACR {c['acr']:.3f}  abstain {c['abstain']}  wrong {c['wrong']}  samples "
              f"{c['samples']['total']:,} (median {c['samples']['median']:.0f})  {c['seconds']}s", flush=True)


def main(argv=None) -> int:
    from msrs.finetune.settings import FinetuneSettings, add_options, from_options

    # the library's defaults (msrs.finetune.FinetuneSettings) but float32 pinned (dtype "auto" would pick bfloat16
    # on a CPU with native bf16, and the result must not depend on the machine): the settings the shipped weights
    # were made with (msrs/assets/digits_ddpm_finetuned/finetune_info.json); the recipe options are overridden by
    # scripts/finetune_sweep.py
    demo_settings = FinetuneSettings(sigmas=SIGMAS, dtype="float32")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--denoiser", type=Path, default=ROOT / "msrs" / "assets" / "digits_ddpm")
    p.add_argument("--out", type=Path, default=ROOT / "msrs" / "assets" / "digits_ddpm_finetuned")
    p.add_argument("--work-dir", type=Path, default=ROOT / "runs" / "finetune_demo",
                   help="checkpoints, optimizer state and the log during training (not shipped)")
    p.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS), help="the cascade's sigmas")
    add_options(p, defaults=demo_settings, exclude=("sigmas",))  # msrs finetune's options, the demo's defaults
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--draws", type=int, default=32, help="noise draws per validation image and sigma (votes)")
    p.add_argument("--cert-images", type=int, default=0,
                   help="validation images certified sequentially (0: votes only; at most 288)")
    p.add_argument("--n0", type=int, default=DEMO_DEFAULTS["n0"])
    p.add_argument("--n", type=int, default=DEMO_DEFAULTS["n"], help="sequential budget per stage")
    p.add_argument("--alpha", type=float, default=DEMO_DEFAULTS["alpha"])
    p.add_argument("--radii", type=float, nargs="+", default=list(RADII))
    p.add_argument("--eval-batch-size", type=int, default=DEMO_DEFAULTS["batch_size"])
    p.add_argument("--group-size", type=int, default=DEMO_DEFAULTS["group_size"])
    p.add_argument("--eval-seed", type=int, default=0)
    p.add_argument("--before-cache", type=Path, default=None,
                   help="where the base model's evaluation is cached (default: <work-dir>/eval_before.json; a sweep "
                        "shares one)")
    p.add_argument("--skip-eval", action="store_true", help="train and export only")
    p.add_argument("--no-export", action="store_true", help="leave the model in --work-dir (a sweep candidate)")
    p.add_argument("--no-resume", action="store_true", help="start the fine-tuning over")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    from msrs.denoiser import DiffusionDenoiser
    from msrs.finetune import finetune
    from msrs.zoo import digits_dataset, load_demo_classifier

    if not (args.denoiser / "unet").is_dir():
        raise SystemExit(f"{args.denoiser} holds no DDPM (unet/ + scheduler/): run scripts/train_ddpm.py first")
    if not 0 <= args.cert_images <= 288:
        raise SystemExit(f"--cert-images: expected 0 .. 288 (the validation split), got {args.cert_images}")
    sigmas = sorted(args.sigmas, reverse=True)
    classifier, mean, std, _ = load_demo_classifier("cpu")
    base = DiffusionDenoiser.from_pretrained(args.denoiser).eval()
    fit, validation = digits_dataset("fit"), digits_dataset("validation")
    command = "python3 " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT)]
                                      + list(sys.argv[1:] if argv is None else argv)).replace(f"{ROOT}{os.sep}", "")
    eval_settings = {k: getattr(args, k) for k in ("draws", "cert_images", "n0", "n", "alpha", "eval_seed")}
    eval_settings.update(sigmas=sigmas, radii=sorted(args.radii), base_digest=weights_digest(args.denoiser),
                         classifier=hashlib.sha256((ROOT / "msrs" / "assets" / "digits_classifier.safetensors")
                                                    .read_bytes()).hexdigest()[:16])
    args.work_dir.mkdir(parents=True, exist_ok=True)
    small, large = min(sigmas), max(sigmas)
    base_runs = [(f"denoised-{small:g}", (small,)), (f"denoised-{large:g}", (large,)), ("cascade", tuple(sigmas))]

    def evaluate(denoiser, runs):
        start = time.perf_counter()
        result = {"votes": vote_evaluation(denoiser, classifier, mean, std, validation.images, validation.labels,
                                           sigmas, draws=args.draws, seed=args.eval_seed)}
        if args.cert_images > 0:
            result["certification"] = certification(denoiser, classifier, mean, std, validation, sigmas, args,
                                                    runs=runs)
        result["seconds"] = round(time.perf_counter() - start, 1)
        return result

    before = None
    if not args.skip_eval:
        cache = args.before_cache or args.work_dir / "eval_before.json"
        cache.parent.mkdir(parents=True, exist_ok=True)
        if cache.is_file() and json.loads(cache.read_text()).get("settings") == eval_settings:
            before = json.loads(cache.read_text())["result"]
            print("[before] (cached)", flush=True)
        else:
            before = evaluate(base.eval(), base_runs)
            cache.write_text(json.dumps({"settings": eval_settings, "result": before}, indent=1) + "\n")
        print_votes("before", before["votes"])
        if "certification" in before:
            print_cert("before", before["certification"])

    start = time.perf_counter()
    settings = from_options(args, defaults=demo_settings, exclude=("sigmas",)).replace(sigmas=tuple(sigmas))
    finetune(base, classifier, fit, out_dir=args.work_dir / "model", settings=settings,
             resume=not args.no_resume, mean=mean, std=std, progress=False)
    session_seconds = time.perf_counter() - start
    record = json.loads((args.work_dir / "model" / "finetune.json").read_text())
    print(f"fine-tuning: {record['step']} steps, {record['wall_time_seconds']:.0f}s of training "
          f"({session_seconds:.0f}s this session)", flush=True)

    after = None
    if not args.skip_eval:
        tuned = DiffusionDenoiser.from_pretrained(args.work_dir / "model").eval()
        after = evaluate(tuned, [("cascade-finetuned", tuple(sigmas))])
        print_votes("after", after["votes"])
        if "certification" in after:
            print_cert("after", after["certification"])

    info = {
        "what": "the demo DDPM (msrs/assets/digits_ddpm) after diffusion calibration by msrs.finetune; EMA weights",
        "base_denoiser": os.path.relpath(args.denoiser, ROOT),
        "base_digest": eval_settings["base_digest"],
        "classifier": "msrs/assets/digits_classifier (frozen)",
        "data": "digits fit split (msrs.zoo.digits_split('fit'): the train split without its validation part, "
                "1149 images)",
        "command": command,
        "finetune": record,
        "threads": args.threads,
        "evaluation": {
            "split": "digits validation split (msrs.zoo.digits_split('validation'): positions j % 5 == 0 of the "
                     "train split, 288 images; no shipped model was trained on it; the test digits are not used)",
            "votes": f"all 288 validation images x {args.draws} noise draws per sigma (scripts/demo_validation.py)",
            "certification": (f"first {args.cert_images} validation images, sequential, sigmas {sigmas}, "
                              f"n0={args.n0}, n={args.n} budget, alpha={args.alpha}, target radii "
                              f"{sorted(args.radii)}, seed={args.eval_seed}") if args.cert_images else None,
            "before": before,
            "after": after,
        },
    }
    (args.work_dir / "finetune_info.json").write_text(json.dumps(info, indent=1) + "\n")
    if args.no_export:
        return 0
    export(args.work_dir, args.out, info)
    return 0


def export(work_dir: Path, out: Path, info: dict) -> None:
    """The model in the digits_ddpm layout, its log and `info` (no optimizer state: not shipped), atomically."""
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for name in ("unet", "scheduler"):
        shutil.copytree(work_dir / "model" / name, tmp / name)
    shutil.copy2(work_dir / "model" / "log.csv", tmp / "log.csv")
    (tmp / "finetune_info.json").write_text(json.dumps(info, indent=1) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"saved {out} ({size / 1e6:.2f} MB)", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
