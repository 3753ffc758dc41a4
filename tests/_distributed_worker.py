"""Worker of tests/test_distributed.py, started by torchrun (python -m torch.distributed.run).

Counts votes of a fixed tiny classifier on the Philox noise of a few images, each rank over its split_range share
of every image's samples, all-reduces the counts and writes them (and its rank facts) to OUT_DIR/rank<r>.pt.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from msrs import distributed as D
from msrs.ops import add_noise, count_votes_

NUM_IMAGES, NUM_CLASSES, NUM_SAMPLES, SIGMA, SEED, STREAM = 3, 4, 301, 0.5, 1234, 1


def example():
    """Fixed images and classifier weights (float64, so no rounding-level argmax flip between batch shapes)."""
    gen = torch.Generator().manual_seed(7)
    images = torch.rand(NUM_IMAGES, 1, 4, 4, generator=gen)
    weight = torch.randn(NUM_CLASSES, 16, generator=gen, dtype=torch.float64)
    bias = torch.randn(NUM_CLASSES, generator=gen, dtype=torch.float64)
    image_ids = torch.tensor([5, 17, 40])
    return images, image_ids, weight, bias


def count_range(lo: int, hi: int) -> torch.Tensor:
    """Votes of samples lo .. hi-1 of every image, in chunks of at most 64 samples per image."""
    images, image_ids, weight, bias = example()
    counts = torch.zeros(NUM_IMAGES, NUM_CLASSES, dtype=torch.int64)
    start = lo
    while start < hi:
        num = min(64, hi - start)
        noisy = add_noise(images, SIGMA, num, seed=SEED, image_ids=image_ids, sample_start=start, stream=STREAM)
        logits = noisy.reshape(noisy.shape[0], -1).to(torch.float64) @ weight.T + bias
        index = torch.arange(NUM_IMAGES).repeat_interleave(num)
        count_votes_(counts, logits, index)
        start += num
    return counts


def main(out_dir: str) -> None:
    device = D.init_from_env("cpu")
    try:
        r, w = D.rank(), D.world_size()
        lo, hi = D.split_range(0, NUM_SAMPLES, r, w)
        local = count_range(lo, hi)
        counts = local.clone()
        D.all_reduce_counts_(counts)
        shared = D.broadcast_object({"todo": [3, 5, 8], "from": r} if r == 0 else None)
        D.barrier()
        torch.save(
            {"rank": r, "world": w, "is_main": D.is_main(), "device": str(device), "range": (lo, hi),
             "local": local, "counts": counts, "shared": shared},
            Path(out_dir) / f"rank{r}.pt",
        )
    finally:
        D.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
