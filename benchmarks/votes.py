"""Per-sample votes of a fixed-n CERTIFY run, recorded once and replayed by the sequential rules.

The noise of a Monte Carlo sample is keyed by (seed, image id, sample index, stream) (msrs.ops.philox), so the
estimation votes a sequential run sees after t samples are the first t votes of the fixed-n run with the same seed:
a fixed-n run that records every vote in order holds every sequential run's data. record() runs the real fixed-n
CERTIFY (msrs.procedures.certify) with a classifier wrapper that keeps the argmax of each batch of logits; the
engine enumerates its rows in a fixed order (selection samples, image-major, then estimation samples, image-major;
batches in row order on one process), so the kept classes are the votes in sample order. Each chunk of images is
checked against the certificate's own vote counts and saved (a long run can be resumed chunk by chunk), with a
digest of each image it certified: a chunk is reused only for the same settings, the same weights and the same images
(another split, another data set or other labels under the same ids is another run). The models run on args.device
(default cpu); a time budget stops the recording before a chunk that would not fit, and the Votes then hold the
images recorded so far (the first ones: a shorter run, not a different one).

  record(config_name, images, labels, args, out_dir)   -> Votes (and out_dir/chunk_*.npz)
  load(out_dir, images=B)                              -> Votes of the chunks covering images 0 .. B-1
  save(votes, out_dir)                                 -> out_dir/chunk_00000_<B>.npz, all images in one chunk
  Votes.prefix_successes(looks)                        -> [B, len(looks)] votes for the selected class
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from msrs import zoo
from msrs.fingerprint import module_digest, tensor_digest
from msrs.smoothing import SmoothedClassifier


class VoteRecorder(torch.nn.Module):
    """The classifier, keeping the class each row voted for (first maximum, as msrs.ops.count_votes_)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.kept: list[torch.Tensor] = []

    def forward(self, x):
        logits = self.inner(x)
        self.kept.append(logits.argmax(dim=1).to(torch.uint8).cpu())
        return logits

    def take(self) -> np.ndarray:
        votes = torch.cat(self.kept).numpy() if self.kept else np.zeros(0, dtype=np.uint8)
        self.kept = []
        return votes


@dataclass
class Votes:
    """One configuration's recorded fixed-n run: B images, selection counts, estimation votes in sample order."""

    meta: dict  # config, sigma, n0, n, alpha, seed, dtype, device, models (weights digests), images
    labels: np.ndarray  # int64 [B]
    image_digests: np.ndarray  # str [B]: image_digests(images, labels) of the images the votes are of
    counts0: np.ndarray  # int64 [B, K] selection counts (samples 0 .. n0 - 1 of the selection stream)
    votes: np.ndarray  # uint8 [B, n]: the class of estimation sample i of image b
    seconds: float  # wall seconds of the fixed-n CERTIFY calls (the recorder included)
    fixed_radius: np.ndarray  # float64 [B]: the fixed-n certificates' radii
    fixed_prediction: np.ndarray  # int64 [B]

    @property
    def selected(self) -> np.ndarray:
        return self.counts0.argmax(axis=1)  # ties: the smallest class, as msrs.procedures

    def hits(self) -> np.ndarray:
        """bool [B, n]: estimation sample i voted for the image's selected class."""
        return self.votes == self.selected[:, None].astype(np.uint8)

    def prefix_successes(self, looks) -> np.ndarray:
        """int64 [B, len(looks)]: votes for the selected class among the first t samples, t in looks."""
        cum = np.cumsum(self.hits(), axis=1, dtype=np.int64)
        return cum[:, np.asarray(looks, dtype=np.int64) - 1]


def models_digest(classifier, denoiser) -> dict:
    """sha256 of the classifier's and the denoiser's weights (msrs.fingerprint.module_digest; None: no denoiser)."""
    return {"classifier": module_digest(classifier), "denoiser": module_digest(denoiser)}


def image_digests(images: torch.Tensor, labels) -> np.ndarray:
    """str [B]: sha256 of each image's tensor and its label (msrs.fingerprint.tensor_digest)."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    return np.array([tensor_digest([image, label]) for image, label in zip(images, labels)])


def record(name: str, kind: str, sigma: float, images: torch.Tensor, labels: np.ndarray, args, out_dir: Path,
           chunk: int = 10, budget_s: float | None = None) -> Votes:
    """The fixed-n CERTIFY of `images` (global ids 0 .. B-1) in chunks of `chunk` images, each chunk's votes saved
    to out_dir (an existing chunk with the same settings is loaded, not re-run). budget_s: wall seconds for the
    recording; a chunk is not started when the seconds used plus the last chunk's would exceed them (the first
    chunk always runs), and the Votes then hold the chunks before it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    device = getattr(args, "device", "cpu")
    classifier, mean, std, num_classes = zoo.load_demo_classifier(device)
    denoiser = None if kind == "none" else zoo.load_demo_denoiser(finetuned=kind == "finetuned", device=device)
    # The models' digests belong to the settings: votes recorded with other weights (the demo models retrained)
    # are another run, and a chunk of them is recorded again, never replayed as this one.
    meta = {"config": name, "sigma": sigma, "n0": args.n0, "n": args.n, "alpha": args.alpha, "seed": args.seed,
            "dtype": args.dtype, "device": str(device), "models": models_digest(classifier, denoiser)}
    digests = image_digests(images, labels)
    recorder = VoteRecorder(classifier)
    engine = SmoothedClassifier(recorder, num_classes, denoiser=denoiser, mean=mean, std=std, device=device,
                                dtype=getattr(torch, args.dtype))
    start, last, done = time.perf_counter(), 0.0, images.shape[0]
    for lo in range(0, images.shape[0], chunk):
        hi = min(lo + chunk, images.shape[0])
        path = out_dir / f"chunk_{lo:05d}_{hi:05d}.npz"
        if _holds(path, meta, digests[lo:hi]):
            continue
        if budget_s is not None and last > 0 and time.perf_counter() - start + last > budget_s:
            done = lo
            print(f"# {name} fixed-n: stopped before images {lo}..{hi - 1} (time budget {budget_s:.0f} s)",
                  flush=True)
            break
        recorder.take()
        t0 = time.perf_counter()
        certs = engine.certify(images[lo:hi], sigma, args.n0, args.n, args.alpha, seed=args.seed,
                               batch_size=args.batch_size, image_ids=torch.arange(lo, hi))
        seconds = time.perf_counter() - t0
        votes = recorder.take()
        b = hi - lo
        if votes.size != b * (args.n0 + args.n):
            raise RuntimeError(f"recorded {votes.size} votes, expected {b * (args.n0 + args.n)}")
        sel = votes[: b * args.n0].reshape(b, args.n0)
        est = votes[b * args.n0:].reshape(b, args.n)
        counts0 = np.stack([np.bincount(v, minlength=num_classes) for v in sel])
        counts = np.stack([np.bincount(v, minlength=num_classes) for v in est])
        if not (np.array_equal(counts0, np.stack([c.counts0[0] for c in certs]))
                and np.array_equal(counts, np.stack([c.counts[0] for c in certs]))):
            raise RuntimeError("the recorded votes do not add up to the certificates' counts (row order changed?)")
        _save_chunk(path, meta, counts0, est, seconds, np.array([c.radius for c in certs]),
                    np.array([c.prediction for c in certs]), labels[lo:hi], digests[lo:hi])
        last = time.perf_counter() - t0
        print(f"# {name} fixed-n: images {lo}..{hi - 1} in {seconds:.1f} s", flush=True)
    return load(out_dir, meta, images=done)


def _holds(path: Path, meta: dict, digests: np.ndarray) -> bool:
    """The chunk at `path` exists and holds the votes of this run (meta) on these images (digests)."""
    if not path.is_file():
        return False
    chunk = np.load(path)
    return (json.loads(str(chunk["meta"])) == meta and "image_digests" in chunk.files
            and np.array_equal(chunk["image_digests"], digests))


def _save_chunk(path: Path, meta: dict, counts0, votes, seconds, radius, prediction, labels, digests) -> None:
    """One chunk file, written under a name that load() does not read and then renamed: a run stopped while
    writing leaves no broken chunk behind."""
    partial = path.with_name(".partial_" + path.name)
    np.savez_compressed(partial, meta=json.dumps(meta), counts0=counts0, votes=votes, seconds=seconds,
                        radius=radius, prediction=prediction, labels=labels, image_digests=digests)
    os.replace(partial, path)


def save(votes: Votes, out_dir: Path) -> Path:
    """All of `votes` as one chunk (out_dir/chunk_00000_<B>.npz), in the format record() writes and reuses:
    `sequential_savings.py --votes-dir DIR --images B --chunk B` reads it back without sampling."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {k: v for k, v in votes.meta.items() if k != "images"}
    path = out_dir / f"chunk_00000_{votes.votes.shape[0]:05d}.npz"
    _save_chunk(path, meta, votes.counts0, votes.votes, votes.seconds, votes.fixed_radius, votes.fixed_prediction,
                votes.labels, votes.image_digests)
    return path


def load(out_dir: Path, meta: dict | None = None, images: int | None = None) -> Votes:
    """The chunks of out_dir (in image order), all with the same settings (`meta` if given); with `images`, only
    the chunks inside images 0 .. images-1, which must cover them all."""
    paths = sorted(Path(out_dir).glob("chunk_*.npz"))
    if images is not None:
        ranges = {p: tuple(map(int, re.fullmatch(r"chunk_(\d+)_(\d+)\.npz", p.name).groups())) for p in paths}
        paths = [p for p in paths if ranges[p][1] <= images]
        ends = [0] + [ranges[p][1] for p in paths]
        if paths and ([ranges[p][0] for p in paths] != ends[:-1] or ends[-1] != images):
            raise ValueError(f"{out_dir}: the chunks {[p.name for p in paths]} do not cover images 0 .. {images - 1}")
    if not paths:
        raise FileNotFoundError(f"no recorded votes (chunk_*.npz) in {out_dir}")
    parts = [np.load(p) for p in paths]
    if any("image_digests" not in p.files for p in parts):
        raise ValueError(f"{out_dir}: chunks without image digests (recorded by an older votes.py): record them again")
    metas = {str(p["meta"]) for p in parts}
    if len(metas) != 1 or (meta is not None and json.loads(metas.pop()) != meta):
        raise ValueError(f"{out_dir}: chunks recorded with other settings")
    meta = json.loads(str(parts[0]["meta"]))
    meta["images"] = int(sum(p["votes"].shape[0] for p in parts))

    def cat(key):
        return np.concatenate([p[key] for p in parts])

    return Votes(meta, cat("labels").astype(np.int64), cat("image_digests").astype(str),
                 cat("counts0").astype(np.int64), cat("votes"),
                 float(sum(float(p["seconds"]) for p in parts)), cat("radius").astype(np.float64),
                 cat("prediction").astype(np.int64))
