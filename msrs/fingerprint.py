"""Fingerprints of what a run depends on: tensors (data, weights), modules and files, by sha256 of their bytes.

A resumable run records them (msrs.runner's log sidecar, msrs.finetune's checkpoints) and refuses to continue
against other data or other models.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Optional, Union

import torch

__all__ = ["file_fingerprint", "module_digest", "tensor_digest"]


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


def file_fingerprint(path: Union[str, os.PathLike], *, hash_limit: int = 1 << 30) -> dict:
    """{"path", "size", "sha256"} of a file (files larger than hash_limit bytes: "mtime" instead of "sha256"), or,
    for a folder, of every file in it (sorted relative paths)."""
    path = Path(path)
    if path.is_dir():
        entries = {}
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            entries[p.relative_to(path).as_posix()] = {k: v for k, v in file_fingerprint(p, hash_limit=hash_limit)
                                                       .items() if k != "path"}
        return {"path": str(path.resolve()), "files": entries}
    stat = path.stat()
    out = {"path": str(path.resolve()), "size": stat.st_size}
    if stat.st_size <= hash_limit:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        out["sha256"] = digest.hexdigest()
    else:
        out["mtime_ns"] = stat.st_mtime_ns
    return out
