"""Fingerprints of what a run depends on: tensors (data, weights) and modules, by sha256 of their bytes.

A resumable run records them (msrs.runner's log sidecar, msrs.finetune's checkpoints) and refuses to continue
against other data or other models.
"""
from __future__ import annotations

import hashlib
from typing import Iterable, Optional

import torch

__all__ = ["module_digest", "tensor_digest"]


def tensor_digest(tensors: Iterable[torch.Tensor]) -> str:
    """sha256 (hex) of the tensors' dtypes, shapes and bytes, in order."""
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        digest.update(f"{t.dtype}{list(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def module_digest(module) -> Optional[str]:
    """sha256 of a module's class name and state dict (names and tensors); None for a callable that is not an
    nn.Module (nothing to fingerprint)."""
    if not isinstance(module, torch.nn.Module):
        return None
    digest = hashlib.sha256(type(module).__name__.encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor_digest([tensor]).encode())
    return digest.hexdigest()
