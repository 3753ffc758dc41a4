#!/usr/bin/env python3
"""Choose the shipped fine-tuning recipe on the digits VALIDATION split, never on the test digits the demo reports.

Each candidate recipe (CANDIDATES, or --only NAME ...) is trained by scripts/finetune_demo.py on the fit split into
--root/<name> (resumable) and evaluated on the validation split in two rounds, with a rule fixed before any result:

  round 1, every candidate: the classifier's votes on --draws one-shot denoised copies of all 288 validation images
           per sigma. Score = the cascade's r = 0 accuracy estimated from the votes minus the share of images whose
           top class gets 35-65% of the votes at the largest sigma (those are the ones a finite budget leaves
           undecided, so the cascade abstains on them, or that cost the most samples); ties: the larger share the
           largest sigma gets right (smoothed correct).
  round 2, the --finalists best of round 1: the demo's sequential certification (msrs.runner, the demo's n0, n
           budget, alpha, radii; scripts/demo_validation.py) on the first --cert-images validation images, with
           denoised smoothing at the smallest and the largest sigma (off-the-shelf DDPM) as the references.
           Score = the smaller of the two claim margins: (cascade - smallest sigma) at r = 0 + 0.03 and
           (cascade - largest sigma) at the largest radius; ties: the larger ACR, then fewer samples.
The winner is exported to --out (msrs/assets/digits_ddpm_finetuned) with every candidate's numbers and the rule in
its finetune_info.json ("selection"); --json writes the same record.

  python3 scripts/finetune_sweep.py [--only base ac3 ...] [--finalists 2] [--cert-images 100]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

CLAIM_TOLERANCE = 0.03

# name -> finetune_demo.py options (the rest at its defaults or the sweep's common options, e.g. --steps 400 for the shipped
# model (docs/DEMO.md section 4); defaults: 1000 steps, batch 32, M = 4, lr 1e-3, Brier 2,
# anti-consistency 1 ("all"), MSE 1, EMA 0.99, 20 warm-up steps, fp32, seed 0)
CANDIDATES = {
    "base": [],
    "ac3": ["--anti-consistency-weight", "3"],
    "brier4": ["--brier-weight", "4"],
    "lr3e-4": ["--lr", "3e-4"],
    "mse0.3": ["--mse-weight", "0.3"],
    "steps2000": ["--steps", "2000"],
    # the library default's 1,000 steps for the recipes of the first sweep (docs/DEMO.md section 4, attempt 5):
    # a candidate's own --steps overrides the sweep's common --steps (it comes after them)
    "ac3-1000": ["--anti-consistency-weight", "3", "--steps", "1000"],
    "lr3e-4-1000": ["--lr", "3e-4", "--steps", "1000"],
}


def round1_score(after: dict, sigmas) -> tuple:
    votes = after["votes"]
    largest = votes["per_sigma"][f"{max(sigmas):g}"]
    return (votes["cascade_proxy"]["accuracy_r0"] - largest["near_half"], largest["smoothed_correct"])


def claim_margins(cert_before: dict, cert_after: dict, sigmas) -> dict:
    small, large = f"denoised-{min(sigmas):g}", f"denoised-{max(sigmas):g}"
    radii = sorted(float(r) for r in cert_after["cascade-finetuned"]["certified_accuracy"])
    r0, top = f"{radii[0]:g}", f"{radii[-1]:g}"
    cascade = cert_after["cascade-finetuned"]["certified_accuracy"]
    keep = cascade[r0] - cert_before[small]["certified_accuracy"][r0]
    reach = cascade[top] - cert_before[large]["certified_accuracy"][top]
    return {"r0_difference": keep, "top_difference": reach, "margin": min(keep + CLAIM_TOLERANCE, reach)}


def main(argv=None) -> int:
    import finetune_demo
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, default=ROOT / "runs" / "sweep")
    p.add_argument("--out", type=Path, default=ROOT / "msrs" / "assets" / "digits_ddpm_finetuned")
    p.add_argument("--only", nargs="+", default=None, help="candidates to run (default: all)")
    p.add_argument("--draws", type=int, default=32)
    p.add_argument("--finalists", type=int, default=2,
                   help="candidates certified in round 2 (0: no round 2, the best of round 1 is shipped)")
    p.add_argument("--cert-images", type=int, default=100)
    p.add_argument("--round1-only", action="store_true", help="train and score round 1, export nothing")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--threads", type=int, default=1)
    args, common = p.parse_known_args(argv)
    names = args.only or list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise SystemExit(f"--only: unknown candidates {unknown}; known: {list(CANDIDATES)}")

    def run(name: str, cert_images: int) -> dict:
        work = args.root / name
        finetune_demo.main(["--work-dir", str(work), "--no-export", "--draws", str(args.draws), "--threads",
                            str(args.threads), "--cert-images", str(cert_images),
                            "--before-cache", str(args.root / f"eval_before_cert{cert_images}.json"),
                            *common, *CANDIDATES[name]])
        return json.loads((work / "finetune_info.json").read_text())

    record = {"command": "python3 scripts/finetune_sweep.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "rule": __doc__.split("\n\n")[1].strip(), "finalists": args.finalists, "common_options": common,
              "candidates": {}}
    for name in names:
        print(f"=== round 1: {name} {CANDIDATES[name]}", flush=True)
        info = run(name, 0)
        sigmas = record["sigmas"] = info["finetune"]["settings"]["sigmas"]
        record["candidates"][name] = {"options": CANDIDATES[name], "round1": info["evaluation"]["after"]["votes"],
                                      "round1_score": list(round1_score(info["evaluation"]["after"], sigmas)),
                                      "train_seconds": info["finetune"]["wall_time_seconds"]}
        record["round1_before"] = info["evaluation"]["before"]["votes"]
    ranked = sorted(names, key=lambda n: record["candidates"][n]["round1_score"], reverse=True)
    print("round 1 ranking:", [(n, record["candidates"][n]["round1_score"]) for n in ranked], flush=True)
    record["round1_ranking"] = ranked
    if args.round1_only:
        _write(args.json, record)
        return 0
    if args.finalists == 0:  # round 1 decides: its best candidate is shipped
        return _ship(args, ranked[0], record, finetune_demo)
    finalists = ranked[: args.finalists]
    for name in finalists:
        print(f"=== round 2: {name}", flush=True)
        info = run(name, args.cert_images)
        before = info["evaluation"]["before"]["certification"]
        after = info["evaluation"]["after"]["certification"]
        record["round2_before"] = before
        record["candidates"][name]["round2"] = after
        record["candidates"][name]["claim"] = claim_margins(before, after, sigmas)
    winner = max(finalists, key=lambda n: (record["candidates"][n]["claim"]["margin"],
                                           record["candidates"][n]["round2"]["cascade-finetuned"]["acr"],
                                           -record["candidates"][n]["round2"]["cascade-finetuned"]["samples"]["total"]))
    return _ship(args, winner, record, finetune_demo)


def _ship(args, winner: str, record: dict, finetune_demo) -> int:
    record["winner"] = winner
    print(f"winner: {winner} {CANDIDATES[winner]} {record['candidates'][winner].get('claim', '')}", flush=True)
    info = json.loads((args.root / winner / "finetune_info.json").read_text())
    info["selection"] = record
    finetune_demo.export(args.root / winner, args.out, info)
    _write(args.json, record)
    return 0


def _write(path, record) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
