"""Everything random in fine-tuning is a function of (seed, step), never of state carried across steps, so a resumed
run repeats an uninterrupted one bit for bit.

  batch_indices(seed, step, batch_size, num_images)  the data order: a fresh permutation per epoch
  step_seed(seed, step)                              seeds the global RNG inside one step (in a forked RNG state)
The noise itself is msrs.ops's counter-based Philox, keyed by the image's index and the step (msrs.finetune.objective).
"""
from __future__ import annotations

import torch

__all__ = ["batch_indices", "mix", "step_seed"]

_MASK64 = (1 << 64) - 1
_DATA_ORDER, _STEP = 0xDA7A, 0x57E9  # domain words: the two uses never share a generator seed


def mix(*words: int) -> int:
    """A 63-bit hash of integers (splitmix64 finaliser chained), for seeding generators from (seed, step, ...)."""
    h = 0x9E3779B97F4A7C15
    for w in words:
        h = (h ^ (int(w) & _MASK64)) & _MASK64
        h = (h + 0x9E3779B97F4A7C15) & _MASK64
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
        h ^= h >> 31
    return h & ((1 << 63) - 1)


def batch_indices(seed: int, step: int, batch_size: int, num_images: int) -> torch.Tensor:
    """Data-set indices of the batch of optimizer step `step` (0-based): positions step*B .. step*B + B - 1 of the
    endless sequence of per-epoch permutations, permutation e = randperm(num_images) seeded by hash(seed, e)."""
    positions = torch.arange(step * batch_size, (step + 1) * batch_size, dtype=torch.int64)
    epochs, offsets = positions // num_images, positions % num_images
    out = torch.empty(batch_size, dtype=torch.int64)
    for epoch in torch.unique(epochs).tolist():
        generator = torch.Generator().manual_seed(mix(seed, epoch, _DATA_ORDER))
        perm = torch.randperm(num_images, generator=generator)
        chosen = epochs == epoch
        out[chosen] = perm[offsets[chosen]]
    return out


def step_seed(seed: int, step: int) -> int:
    """The global-RNG seed of optimizer step `step` (anything random inside a model's forward, e.g. dropout)."""
    return mix(seed, step, _STEP)
