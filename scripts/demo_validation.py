"""Measurements on the digits VALIDATION split (msrs.zoo.digits_split("validation"), 288 images never used to train
the shipped classifier or DDPMs) that the demo's settings are chosen by; shared by scripts/sigma_sweep.py and
scripts/finetune_demo.py. Nothing here looks at the test digits the demo reports.

  votes(...)           per image, the classifier's votes on `draws` one-shot denoised noisy copies at one sigma
  vote_statistics(...) per sigma: one-shot accuracy and the smoothed classifier's behaviour estimated from votes
  cascade_proxy(...)   the cascade's outcome per image from the votes (no confidence bounds: the n -> infinity limit)
  certify_split(...)   certified accuracy, abstentions and samples of a sequential run (msrs.runner) on a split
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

VOTE_STREAM = 8192  # Philox stream of sigma level 0 for these votes (certification uses < 1024, msrs.finetune 1024+)


@torch.no_grad()
def votes(denoiser, classifier, mean, std, images, sigma: float, *, draws: int, seed: int, stream: int,
          batch: int = 4096) -> np.ndarray:
    """Vote counts [N, K] of the classifier on `draws` one-shot denoised copies of each image at `sigma`, through
    the certification engine's ops (add_noise -> predict_eps -> finalize_denoised); denoiser None: plain noise."""
    from msrs import ops

    ids = torch.arange(images.shape[0])
    per = max(1, batch // draws)
    out = []
    t_a = denoiser.timestep_for(sigma) if denoiser is not None else None
    for lo in range(0, images.shape[0], per):
        hi = min(images.shape[0], lo + per)
        if denoiser is None:
            noisy = ops.add_noise(images[lo:hi], sigma, draws, seed=seed, image_ids=ids[lo:hi], stream=stream)
            m = torch.as_tensor(mean).reshape(1, -1, 1, 1)
            s = torch.as_tensor(std).reshape(1, -1, 1, 1)
            inp = (noisy - m) / s
        else:
            t, a = t_a
            x_t = ops.add_noise(images[lo:hi], sigma, draws, seed=seed, image_ids=ids[lo:hi], stream=stream,
                                diffusion_scale=a)
            eps = denoiser.predict_eps(x_t, t)
            inp = ops.finalize_denoised(x_t, eps, a, mean=mean, std=std)
        pred = classifier(inp).argmax(1).reshape(hi - lo, draws)
        out.append(torch.nn.functional.one_hot(pred, 10).sum(1))
    return torch.cat(out).numpy()


def vote_statistics(counts: np.ndarray, labels: np.ndarray, sigma: float) -> dict:
    """What the votes say about the smoothed classifier at `sigma` (point estimates, no confidence bounds):
    one_shot_accuracy   mean share of correct votes
    smoothed_correct    share of images whose label gets more than half the votes (certifiable at r = 0 as n grows)
    smoothed_wrong      share of images where a wrong class gets more than half (a cascade stage certifies it wrong)
    near_half           share of images whose top class gets 35-65% of the votes (costly to decide sequentially)
    ideal_acr           mean of sigma * PhiInv(p_label) over images with p_label > 1/2 (p capped at (d - 1/2) / d):
                        the average certified radius as n -> infinity, at this sigma alone"""
    from scipy.stats import norm

    draws = counts.sum(1)[0]
    share = counts / draws
    p_label = share[np.arange(len(labels)), labels]
    wrong = share.copy()
    wrong[np.arange(len(labels)), labels] = 0
    top = share.max(1)
    capped = np.minimum(p_label, (draws - 0.5) / draws)
    radius = np.where(p_label > 0.5, sigma * norm.ppf(np.maximum(capped, 0.5)), 0.0)
    return {
        "one_shot_accuracy": float(p_label.mean()),
        "smoothed_correct": float((p_label > 0.5).mean()),
        "smoothed_wrong": float((wrong.max(1) > 0.5).mean()),
        "near_half": float(((top >= 0.35) & (top <= 0.65)).mean()),
        "ideal_acr": float(radius.mean()),
    }


def cascade_proxy(counts_by_sigma: dict, labels: np.ndarray, sigmas) -> dict:
    """The cascade (largest sigma first) decided on vote shares alone: an image is decided at the first stage whose
    top class has more than half of the votes (correct or wrong), abstains if none does; the radius is that
    stage's sigma * PhiInv(top share) (capped as in vote_statistics). The limit of many samples, without the
    off-class caps of the earlier stages: an optimistic proxy, for ranking settings only."""
    from scipy.stats import norm

    order = sorted(sigmas, reverse=True)
    n = len(labels)
    decided = np.full(n, -1)
    prediction = np.full(n, -1)
    radius = np.zeros(n)
    for level, sigma in enumerate(order):
        counts = counts_by_sigma[sigma]
        draws = counts.sum(1)[0]
        share = counts / draws
        top = share.argmax(1)
        p_top = share.max(1)
        new = (decided < 0) & (p_top > 0.5)
        decided[new] = level
        prediction[new] = top[new]
        radius[new] = sigma * norm.ppf(np.minimum(p_top[new], (draws - 0.5) / draws))
    correct = prediction == labels
    return {
        "sigmas": order,
        "accuracy_r0": float(correct.mean()),
        "wrong": float(((prediction >= 0) & ~correct).mean()),
        "abstain": float((prediction < 0).mean()),
        "acr": float(np.where(correct, radius, 0).mean()),
        "decided_at": {f"{s:g}": int((decided == i).sum()) for i, s in enumerate(order)},
    }


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple:
    """Exact two-sided binomial (Clopper-Pearson) interval for k successes in n, each side at (1 - level) / 2."""
    from msrs.report import accuracy_interval

    lo, hi = accuracy_interval(k, n, level)
    return float(lo), float(hi)


def certify_split(smoothed, dataset, sigmas, *, n0: int, n: int, alpha: float, seed: int, radii, batch_size: int,
                  group_size: int, max_images=None, log_path=None, undecided: str = "abstain") -> dict:
    """A sequential run (msrs.runner.certify_dataset, target radii = `radii`) on `dataset`: certified accuracy at
    `radii` with exact 95% intervals, abstentions, wrong predictions, deciding stages and samples drawn."""
    from msrs import report, runner

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(log_path) if log_path is not None else Path(tmp) / "run.tsv"
        started = time.perf_counter()
        runner.certify_dataset(smoothed, dataset, path, sigmas=list(sigmas), n0=n0, n=n, alpha=alpha, seed=seed,
                               batch_size=batch_size, group_size=group_size, max_images=max_images, progress=False,
                               overwrite=True, sequential=True, target_radii=[r for r in radii if r > 0],
                               undecided=undecided if len(sigmas) > 1 else "abstain")
        seconds = time.perf_counter() - started
        log = report.load(path)
    acc = report.certified_accuracy(log, radii)
    count = len(log["predict"])
    certified = [int(round(a * count)) for a in acc]
    samples = log["samples"]
    out = {
        "images": count,
        "certified_accuracy": {f"{r:g}": float(a) for r, a in zip(radii, acc)},
        "ci95": {f"{r:g}": clopper_pearson(k, count) for r, k in zip(radii, certified)},
        "acr": report.acr(log),
        "abstain": int((log["predict"] < 0).sum()),
        "wrong": int(((log["predict"] >= 0) & (log["correct"] == 0)).sum()),
        "samples": {"total": int(samples.sum()), "median": float(np.median(samples)),
                    "p90": float(np.percentile(samples, 90)), "max": int(samples.max())},
        "seconds": round(seconds, 1),
    }
    if "stage" in log:
        order = sorted(sigmas, reverse=True)
        decided = log["predict"] >= 0
        out["deciding_sigma"] = {f"{s:g}": int(((log["stage"] == i) & decided).sum()) for i, s in enumerate(order)}
    return out

