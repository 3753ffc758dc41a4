"""Samples saved by sequential certification (msrs.stopping) against fixed n, and against a hindsight oracle.

    python benchmarks/sequential_savings.py --target-radii 0 0.25 0.5 0.75 1 1.5 2 --configs smooth-0.25 \\
        --n 100000 --json benchmarks/results/sequential_smooth-0.25_n100000.json --votes-dir .votes/smooth

For each configuration the same images (the first --images digits of --split, test by default; global ids 0 .. B-1)
are certified twice with the same engine, seed and models: Cohen's CERTIFY with a fixed n, and the sequential mode
with n as its budget (n_max) and --target-radii as the radii whose bucket must be settled. Reported per run: Monte
Carlo samples (selection + estimation), wall seconds, per-image samples (median, 90th percentile, maximum), and at
each target radius the certified fraction (prediction made, radius >= r) and the certified accuracy (also correct);
then the images whose radius bucket differs and the largest difference in certified images at any one radius.

The hindsight oracle. The noise of a sample is keyed by its index (msrs.ops.philox), so the counts of a
sequential run after t samples are those of the first t samples of the fixed-n run. The fixed-n run records every
vote (benchmarks/votes.py), and the oracle's samples for an image are n0 plus the smallest t at which fixed-n
Clopper-Pearson at the full alpha on the first t estimation samples already gives the image's final bucket (the
bucket of the fixed-n certificate: abstain, or the number of target radii its radius reaches); an image whose
final bucket is "abstain" needs t = 1. No valid procedure can do that: it looks at the answer first. Reported at
every sample count (samples_oracle) and rounded up to the sequential run's looks (samples_oracle_at_looks).

The recorded votes also replay any sequential rule exactly, without the engine: the benchmark replays the
sequential run itself (and says whether the replay matches the engine's certificates), and with --variants
replays other rules (named in VARIANTS) on the same samples, to measure what each part of the rule buys; --grid
adds the 12 rules benchmarks/sequential_simulations.py --grid crosses (bound x futility x ramp).

The recorded votes carry the models' weight digests (benchmarks/votes.py): votes of other weights are recorded
again, not replayed.

Configurations (demo models, msrs.zoo): smooth-0.25 (the classifier alone), denoised-0.25 and denoised-0.5 (the
demo DDPM, one sigma), cascade-finetuned (the fine-tuned DDPM, sigmas 1.0, 0.5, 0.25; no oracle or replay).

--device cuda runs the models, the noise and the vote counting on the GPU (both runs; the default batch size is
then 65,536 rows instead of 4,000); certificates, the oracle and the replays are computed on the host as on a CPU.
For a run with a time limit (benchmarks/device_check.py's sequential_denoised step), --record-seconds stops the
fixed-n recording of each configuration before a chunk of images that would not fit; the record then covers the
images recorded (`images`, with `images_requested`), and both runs certify those images only. --votes-out DIR
keeps each configuration's recorded votes as one file (DIR/<config>/chunk_00000_<B>.npz, a few MB at N = 100,000),
which `--votes-dir DIR --images B --chunk B --replay-only` replays later without sampling.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import binom

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

import votes as recorded  # noqa: E402
from msrs import hardware, stopping, zoo  # noqa: E402
from msrs.report import DEFAULT_RADII  # noqa: E402
from msrs.smoothing import SmoothedClassifier  # noqa: E402

CONFIGS = {
    # name: (denoiser, sigmas)
    "smooth-0.25": ("none", (0.25,)),
    "denoised-0.25": ("plain", (0.25,)),
    "denoised-0.5": ("plain", (0.5,)),
    "cascade-finetuned": ("finetuned", (1.0, 0.5, 0.25)),
}
TARGET_RADII = tuple(DEFAULT_RADII)
BATCH_SIZE = {"cpu": 4000, "cuda": 65536}  # rows per batch (--batch-size's default on each device)

# Replayed rules (--variants): name -> msrs.stopping.run_sequential options, over the defaults. "previous" is the
# rule of the landed main before issue 14 (looks doubling from max(64, n / 256), curtailment only).
VARIANTS = {
    "default": {},
    "previous": {"growth": 2.0, "first": "n/256", "futility": None},
    "previous+futility": {"growth": 2.0, "first": "n/256"},
    "previous+looks": {"futility": None},
    "futility-0.05": {"futility": 0.05},
    "futility-0.1": {"futility": 0.1},
    "futility-no-ramp": {"futility_ramp": 0.0},
    "final-share-0.7": {"final_share": 0.7},
    "growth-1.25": {"growth": 1.25},
    "cs": {"bound": "cs"},
    "betting": {"bound": "betting"},
    "betting-final": {"bound": "betting-final"},
    "betting-final-0.5": {"bound": "betting-final", "final_share": 0.5},
    "voracek": {"bound": "voracek"},
    "voracek-final-0.9": {"bound": "voracek", "final_share": 0.9},
}


# ------------------------------------------------------------------------------------------------- the oracle
def buckets(prediction: np.ndarray, radius: np.ndarray, target_radii) -> np.ndarray:
    """0 for an abstention, else 1 + the number of positive target radii the radius reaches."""
    positive = np.unique([r for r in target_radii if r > 0])
    return np.where(prediction >= 0, 1 + np.searchsorted(positive, radius, side="right"), 0)


def oracle_samples(votes: recorded.Votes, target_radii) -> tuple[np.ndarray, np.ndarray]:
    """(final bucket [B], smallest t [B]): fixed-n Clopper-Pearson at the full alpha on the first t estimation
    samples gives the final bucket (lower >= threshold <=> P(Bin(t, threshold) >= successes) <= alpha)."""
    meta = votes.meta
    n, alpha = meta["n"], meta["alpha"]
    ths = stopping.thresholds(target_radii, meta["sigma"])
    t = np.arange(1, n + 1)
    # the fewest successes in t samples whose lower bound reaches each threshold
    need = np.stack([binom.ppf(1 - alpha, t, th).astype(np.int64) + 1 for th in ths])
    cum = np.cumsum(votes.hits(), axis=1, dtype=np.int64)
    bucket = np.zeros(cum.shape, dtype=np.int8)
    for row in need:
        bucket += cum >= row[None, :]
    final = bucket[:, -1].astype(np.int64)
    first = np.argmax(bucket == final[:, None], axis=1) + 1
    return final, first


# ------------------------------------------------------------------------------------------------- replay
def replay(votes: recorded.Votes, target_radii, options: dict):
    """msrs.stopping.run_sequential on the recorded votes: the engine's draw replaced by prefix counts."""
    meta = votes.meta
    cum = np.cumsum(votes.hits(), axis=1, dtype=np.int64)

    def draw(idx, num, start):
        return cum[idx, start + num - 1] - (cum[idx, start - 1] if start > 0 else 0)

    options = dict(options)
    if options.get("first") == "n/256":
        options["first"] = max(64, meta["n"] // 256)
    return stopping.run_sequential(draw, votes.selected, meta["n"], meta["sigma"], meta["alpha"], target_radii,
                                   **options)


# ------------------------------------------------------------------------------------------------- summaries
def table(prediction, radius, labels, radii, correct_only: bool) -> list[float]:
    ok = (prediction >= 0) & ((prediction == labels) if correct_only else True)
    return [round(float(np.mean(ok & (radius >= r))), 4) for r in radii]


def per_image(samples: np.ndarray) -> dict:
    return {"median": float(np.median(samples)), "p90": float(np.percentile(samples, 90)),
            "max": int(samples.max())}


def summary(prediction, radius, samples, labels, target_radii) -> dict:
    prediction, radius, samples = (np.asarray(v) for v in (prediction, radius, samples))
    radii = sorted(set(TARGET_RADII) | set(target_radii))
    return {"samples": int(samples.sum()), "per_image": per_image(samples),
            "table_radii": radii,
            "certified": table(prediction, radius, labels, radii, correct_only=False),
            "certified_accuracy": table(prediction, radius, labels, radii, correct_only=True),
            "predictions": prediction.astype(int).tolist(), "radii": np.round(radius, 5).tolist(),
            "samples_per_image": samples.astype(int).tolist()}


def compare(fixed: dict, other: dict, target_radii, labels) -> dict:
    """Images in another bucket, and the largest difference of certified images (any class / correct only) at
    one radius of the table."""
    bf = buckets(np.asarray(fixed["predictions"]), np.asarray(fixed["radii"]), target_radii)
    bo = buckets(np.asarray(other["predictions"]), np.asarray(other["radii"]), target_radii)
    images = len(labels)
    diff = max(abs(round((a - b) * images)) for a, b in zip(fixed["certified"], other["certified"]))
    diff_acc = max(abs(round((a - b) * images)) for a, b in zip(fixed["certified_accuracy"],
                                                                other["certified_accuracy"]))
    return {"images_with_other_bucket": int(np.sum(bf != bo)), "images_in_lower_bucket": int(np.sum(bo < bf)),
            "images_in_higher_bucket": int(np.sum(bo > bf)), "max_certified_difference": int(diff),
            "max_certified_accuracy_difference": int(diff_acc)}


# ------------------------------------------------------------------------------------------------- runs
def sequential_options(args) -> dict:
    options = {}
    for item in args.option or []:
        key, _, value = item.partition("=")
        options[key] = json.loads(value) if value not in ("", None) else None
    return options


def run_single(name: str, args, x, labels, target_radii, votes_dir: Path) -> dict:
    kind, sigmas = CONFIGS[name]
    sigma = sigmas[0]
    n0 = args.n0
    votes = recorded.record(name, kind, sigma, x, labels, args, votes_dir / name, chunk=args.chunk,
                            budget_s=args.record_seconds)
    requested = int(x.shape[0])
    x, labels = x[: votes.votes.shape[0]], labels[: votes.votes.shape[0]]  # fewer when the time budget stopped it
    if args.votes_out is not None:
        path = recorded.save(votes, args.votes_out / name)
        print(f"# {name}: votes of {x.shape[0]} images in {path} ({path.stat().st_size / 2**20:.1f} MiB)",
              file=sys.stderr, flush=True)
    fixed = summary(votes.fixed_prediction, votes.fixed_radius, np.full(len(labels), n0 + args.n), labels,
                    target_radii)
    fixed["seconds"] = round(votes.seconds, 2)
    fixed["samples_per_s"] = _rate(fixed)
    options = sequential_options(args)
    record = dict(config=name, split=args.split, sigmas=[sigma], images=int(x.shape[0]), images_requested=requested,
                  n0=n0, n=args.n, alpha=args.alpha, target_radii=list(target_radii), dtype=args.dtype,
                  compile=args.compile, seed=args.seed, device=args.device, batch_size=args.batch_size,
                  options=options, models=votes.meta["models"], fixed=fixed)
    # the sequential run through the engine (timed), and its replay on the recorded votes
    result = replay(votes, target_radii, options)
    replayed = summary(result.prediction, result.radius, n0 + result.samples, labels, target_radii)
    if args.replay_only:
        seq = dict(replayed, seconds=None, replay_matches=None)
    else:
        engine = _engine(kind, args)
        t0 = time.perf_counter()
        certs = engine.certify_sequential(x, sigma, n0, args.n, args.alpha, seed=args.seed,
                                          batch_size=args.batch_size, target_radii=target_radii, **options)
        seconds = time.perf_counter() - t0
        seq = summary([c.prediction for c in certs], [c.radius for c in certs], [c.samples for c in certs],
                      labels, target_radii)
        seq["seconds"] = round(seconds, 2)
        seq["samples_per_s"] = _rate(seq)
        seq["replay_matches"] = all(seq[k] == replayed[k] for k in ("predictions", "radii", "samples_per_image"))
        print(f"# {name} sequential: {seconds:.1f} s, {seq['samples']:,} samples", file=sys.stderr, flush=True)
    record["sequential"] = seq
    final, first = oracle_samples(votes, target_radii)
    fixed_bucket = buckets(votes.fixed_prediction, votes.fixed_radius, target_radii)
    looks = np.asarray(stopping.looks(args.n, options.get("points"), options.get("schedule", "geometric"),
                                      options.get("first"), options.get("growth", stopping.DEFAULT_GROWTH),
                                      options.get("chunk")))
    at_looks = looks[np.searchsorted(looks, first)]
    record["oracle"] = {"samples": int(np.sum(n0 + first)), "per_image": per_image(n0 + first),
                        "samples_at_looks": int(np.sum(n0 + at_looks)),
                        "final_bucket_matches_fixed": bool(np.array_equal(final, fixed_bucket)),
                        "samples_per_image": (n0 + first).tolist()}
    record.update(_ratios(fixed, seq, record["oracle"]))
    record.update(compare(fixed, seq, target_radii, labels))
    record["variants"] = {}
    for variant, variant_options in replayed_rules(args).items():
        res = replay(votes, target_radii, {**options, **variant_options})
        v = summary(res.prediction, res.radius, n0 + res.samples, labels, target_radii)
        entry = {"options": variant_options, "samples": v["samples"], "per_image": v["per_image"],
                 "certified": v["certified"], "certified_accuracy": v["certified_accuracy"]}
        entry.update(_ratios(fixed, v, record["oracle"]))
        entry.update(compare(fixed, v, target_radii, labels))
        record["variants"][variant] = entry
    return record


def replayed_rules(args) -> dict:
    """name -> run_sequential options of the rules replayed besides the sequential run: --variants, then with
    --grid the rules of sequential_simulations.GRID (the grid the default was chosen on, on validation data)."""
    rules = {name: VARIANTS[name] for name in args.variants or []}
    if args.grid:
        from sequential_simulations import GRID

        rules.update(GRID)
    return rules


def _rate(run: dict) -> float | None:
    """Monte Carlo samples per wall second of a run (None without a time)."""
    return round(run["samples"] / run["seconds"], 1) if run.get("seconds") else None


def _ratios(fixed: dict, seq: dict, oracle: dict) -> dict:
    out = {"samples_ratio": round(fixed["samples"] / max(seq["samples"], 1), 3),
           "oracle_ratio": round(seq["samples"] / max(oracle["samples"], 1), 3),
           "oracle_ratio_at_looks": round(seq["samples"] / max(oracle["samples_at_looks"], 1), 3)}
    if fixed.get("seconds") and seq.get("seconds"):
        out["time_ratio"] = round(fixed["seconds"] / seq["seconds"], 3)
    return out


def run_cascade(name: str, args, x, labels, target_radii) -> dict:
    """The cascade configuration: fixed-n cascade against the sequential cascade (no oracle, no replay)."""
    _, sigmas = CONFIGS[name]
    engine = _engine(CONFIGS[name][0], args)
    common = dict(seed=args.seed, batch_size=args.batch_size)
    runs = {}
    for mode in ("fixed", "sequential"):
        t0 = time.perf_counter()
        if mode == "fixed":
            certs = engine.certify_cascade(x, sigmas, args.n0, args.n, args.alpha, **common)
        else:
            certs = engine.certify_cascade_sequential(x, sigmas, args.n0, args.n, args.alpha,
                                                      target_radii=target_radii, **sequential_options(args),
                                                      **common)
        runs[mode] = summary([c.prediction for c in certs], [c.radius for c in certs], [c.samples for c in certs],
                             labels, target_radii)
        runs[mode]["seconds"] = round(time.perf_counter() - t0, 2)
        runs[mode]["samples_per_s"] = _rate(runs[mode])
    record = dict(config=name, split=args.split, sigmas=list(sigmas), images=int(x.shape[0]),
                  images_requested=int(x.shape[0]),
                  n0=args.n0, n=args.n, alpha=args.alpha, target_radii=list(target_radii), dtype=args.dtype,
                  compile=args.compile, seed=args.seed, device=args.device, batch_size=args.batch_size,
                  options=sequential_options(args),
                  models=recorded.models_digest(engine.classifier, engine.denoiser),
                  fixed=runs["fixed"], sequential=runs["sequential"])
    record["samples_ratio"] = round(runs["fixed"]["samples"] / max(runs["sequential"]["samples"], 1), 3)
    record["time_ratio"] = round(runs["fixed"]["seconds"] / max(runs["sequential"]["seconds"], 1e-9), 3)
    record.update(compare(runs["fixed"], runs["sequential"], target_radii, labels))
    return record


def _engine(kind: str, args) -> SmoothedClassifier:
    classifier, mean, std, num_classes = zoo.load_demo_classifier(args.device)
    denoiser = None if kind == "none" else zoo.load_demo_denoiser(finetuned=kind == "finetuned", device=args.device)
    return SmoothedClassifier(classifier, num_classes, denoiser=denoiser, mean=mean, std=std, device=args.device,
                              dtype=getattr(torch, args.dtype), compile=args.compile)


def _legacy_fields(record: dict) -> dict:
    """The field names of the earlier version of this benchmark (tests and README tables read them)."""
    fixed, seq = record["fixed"], record["sequential"]
    radii = fixed["table_radii"]
    pick = [radii.index(r) for r in DEFAULT_RADII]
    return {"samples_fixed": fixed["samples"], "samples_sequential": seq["samples"],
            "seconds_fixed": fixed["seconds"], "seconds_sequential": seq["seconds"],
            "table_fixed": [fixed["certified_accuracy"][i] for i in pick],
            "table_sequential": [seq["certified_accuracy"][i] for i in pick],
            "table_equal": all(fixed["certified_accuracy"][i] == seq["certified_accuracy"][i] for i in pick)}


def print_table(records: list[dict]) -> None:
    for r in records:
        fixed, seq = r["fixed"], r["sequential"]
        print(f"{r['config']} n={r['n']}: samples fixed {fixed['samples']:,} / sequential {seq['samples']:,} = "
              f"{r['samples_ratio']}x" + (f", oracle {r['oracle']['samples']:,} (sequential / oracle "
                                          f"{r['oracle_ratio']})" if "oracle" in r else "")
              + f"; seconds {fixed['seconds']} / {seq['seconds']} (samples/s {fixed.get('samples_per_s')} / "
              f"{seq.get('samples_per_s')}); images {r['images']}; per image (median, p90, max) "
              f"{seq['per_image']}; other bucket {r['images_with_other_bucket']}, largest difference at one "
              f"radius {r['max_certified_difference']}")
        print(f"  radii      {fixed['table_radii']}\n  certified  fixed {fixed['certified']}\n"
              f"             seq   {seq['certified']}")
        for name, v in r.get("variants", {}).items():
            print(f"  variant {name:18s} {v['samples']:>10,} samples, {v['samples_ratio']:6.2f}x fixed, "
                  f"{v['oracle_ratio']:5.2f}x oracle, other bucket {v['images_with_other_bucket']}, largest "
                  f"difference {v['max_certified_difference']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target-radii", type=float, nargs="+", default=list(TARGET_RADII),
                   help="radii whose bucket the sequential run settles (default: the report's radii)")
    p.add_argument("--configs", default="smooth-0.25", help="comma-separated: " + ", ".join(CONFIGS))
    p.add_argument("--images", type=int, default=100, help="first digits of --split (default 100)")
    p.add_argument("--split", default="test", choices=("test", "validation"),
                   help="the digits certified: test (reported), or validation (held out of the demo models' "
                        "training, for choosing a rule; msrs.zoo.digits_split)")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=100_000, help="fixed n, and the sequential budget n_max")
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--option", action="append", metavar="KEY=JSON",
                   help="a run_sequential option for the sequential run, e.g. futility=0.1 or growth=2.0")
    p.add_argument("--variants", nargs="*", choices=sorted(VARIANTS), default=None,
                   help="other rules replayed on the recorded votes")
    p.add_argument("--grid", action="store_true",
                   help="also replay the rules of benchmarks/sequential_simulations.py --grid (bound x futility x "
                        "ramp) on the recorded votes")
    p.add_argument("--votes-dir", type=Path, default=None,
                   help="where the fixed-n votes are recorded (chunks are reused if present; default: a "
                        "temporary folder)")
    p.add_argument("--chunk", type=int, default=10, help="images per recorded fixed-n chunk")
    p.add_argument("--replay-only", action="store_true",
                   help="no engine sequential run: replay it on the recorded votes (no wall time)")
    p.add_argument("--device", default="cpu", choices=sorted(BATCH_SIZE),
                   help="where the models, the noise and the vote counting run (default cpu)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="rows per batch (default: " + ", ".join(f"{v} on {k}" for k, v in BATCH_SIZE.items()) + ")")
    p.add_argument("--record-seconds", type=float, default=None,
                   help="time budget of each configuration's fixed-n recording: no chunk of images is started that "
                        "would end after it (the first always runs); both runs then certify the images recorded")
    p.add_argument("--votes-out", type=Path, default=None,
                   help="keep each configuration's recorded votes as one file, DIR/<config>/chunk_00000_<B>.npz")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--compile", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.batch_size is None:
        args.batch_size = BATCH_SIZE[args.device]
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown:
        p.error(f"--configs: unknown {unknown}; expected {', '.join(CONFIGS)}")
    target_radii = sorted(set(args.target_radii))
    x, y = zoo.digits_split(args.split)
    x, labels = x[: args.images], np.asarray(y[: args.images])
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        votes_dir = args.votes_dir or Path(tmp)
        for name in names:
            if len(CONFIGS[name][1]) > 1:
                record = run_cascade(name, args, x, labels, target_radii)
            else:
                record = run_single(name, args, x, labels, target_radii, votes_dir)
            record.update(_legacy_fields(record))
            record["machine"] = hardware.machine(args.device)
            record["command"] = "python benchmarks/sequential_savings.py " + " ".join(
                sys.argv[1:] if argv is None else argv)
            records.append(record)
            if args.json:  # after each configuration: a run stopped later keeps the ones finished
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(records, indent=1) + "\n")
    print_table(records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
