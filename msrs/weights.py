"""Reading weights without running code: safetensors, or a pickled state dict through torch.load(weights_only=True)
(tensors and plain containers only, never the unrestricted unpickler), strict matching against a model, and the
input normalisation a weights file declares beside it.

Used by every loader of model weights (msrs.models, msrs.model_libraries).
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Union

import torch

from . import checks

__all__ = ["SAFE_TORCH_LOAD", "STATE_DICT_SUFFIXES", "declared_normalization", "existing_file", "load_state",
           "read_state_dict", "release"]

PathLike = Union[str, os.PathLike]

STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")

# torch.load(weights_only=True) could run code from a crafted file before torch 2.10: CVE-2025-32434 (< 2.6,
# GHSA-53q9-r3pm-6pq6) and CVE-2026-24747 (< 2.10, GHSA-63cw-57p8-fm3p, memory corruption in the weights_only
# unpickler). On such a torch msrs reads only safetensors unless the caller trusts the file.
def release(version: str) -> tuple:
    """(major, minor) of a version string such as "2.13.0+cpu" (compared as numbers: "2.9" < "2.10")."""
    return tuple(int(part) for part in version.split("+")[0].split(".")[:2])


SAFE_TORCH_LOAD = release(torch.__version__) >= (2, 10)

def existing_file(what: str, path: PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what}: {str(p)!r} does not exist")
    if p.is_dir():
        raise IsADirectoryError(f"{what}: {str(p)!r} is a folder, expected a file")
    if not os.access(p, os.R_OK):
        raise PermissionError(f"{what}: {str(p)!r} is not readable")
    return p


def read_state_dict(path: Path, *, trust_code: bool = False) -> tuple:
    """(state dict, metadata dict) from a .safetensors file or a torch.save'd state dict, read with
    torch.load(weights_only=True): tensors and plain containers only, never the unrestricted unpickler (whatever
    trust_code says). On a torch whose weights_only unpickler is not safe (SAFE_TORCH_LOAD) only safetensors are
    read, unless trust_code."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"weights: {str(path)!r} is not a readable safetensors file ({e})") from None
        return state, metadata
    if not SAFE_TORCH_LOAD and not trust_code:
        raise ValueError(f"weights: {str(path)!r} is a pickle file, and torch {torch.__version__}'s "
                         "torch.load(weights_only=True) can run code from a crafted file (CVE-2025-32434, "
                         "CVE-2026-24747; fixed in torch 2.10): convert it to .safetensors, upgrade torch to >= 2.10, "
                         "or pass trust_code=True (--trust-code) for a file whose source you trust")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors of every kind
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        if isinstance(e, pickle.UnpicklingError):
            raise ValueError(
                f"weights: cannot read {str(path)!r} with torch.load(weights_only=True): it holds objects other than "
                f"tensors and plain containers, which msrs never unpickles (they could run code) ({reason}). Save "
                "the state dict alone, e.g. safetensors.torch.save_file(model.state_dict(), 'weights.safetensors'), "
                "where the file can be trusted") from None
        raise ValueError(f"weights: cannot read {str(path)!r} as a state dict with torch.load(weights_only=True) "
                         f"({reason})") from None
    if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("state_dict", "model_state_dict", "model", "ema"):
            inner = state.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                state = inner
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights: {str(path)!r} does not hold a state dict (a dict of tensor names to tensors)")
    return state, {}


def load_state(model: torch.nn.Module, state: dict, path: Path) -> None:
    expected = set(model.state_dict().keys())
    if expected and all(k.startswith("module.") for k in state) and not any(k.startswith("module.") for k in expected):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from DataParallel / DDP
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)

    def show(keys):
        return ", ".join(keys[:10]) + (f", ... ({len(keys)} in all)" if len(keys) > 10 else "")

    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        raise ValueError(f"weights: {str(path)!r} does not match the classifier's parameters ({'; '.join(parts)})")
    own = model.state_dict()
    wrong = [f"{k}: file {list(v.shape)} vs model {list(own[k].shape)}" for k, v in state.items()
             if tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise ValueError(f"weights: {str(path)!r} has tensors of the wrong shape ({show(wrong)})")
    model.load_state_dict(state, strict=True)


def _parse_metadata_floats(metadata: dict, key: str):
    value = metadata.get(key)
    if value is None:
        return None
    try:
        return tuple(float(v) for v in str(value).replace("[", "").replace("]", "").split(","))
    except ValueError:
        raise ValueError(f"weights: metadata {key!r} = {value!r} is not a comma-separated list of numbers") from None


def _sibling_config_normalization(weights_path: Path) -> tuple:
    """(mean, std, path) from a JSON file beside the weights with the same stem (as msrs/assets ships them), when
    it has both "mean" and "std"; (None, None, None) otherwise."""
    path = weights_path.with_suffix(".json")
    if not path.is_file():
        return None, None, None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None, None
    if not isinstance(config, dict) or "mean" not in config or "std" not in config:
        return None, None, None
    try:
        mean, std = checks.normalization(config["mean"], config["std"])
    except ValueError as e:
        raise ValueError(f"weights: the normalisation in {str(path)!r} is invalid ({e})") from None
    return mean, std, path


def declared_normalization(metadata: dict, weights_path: Path) -> tuple:
    """(mean, std, source, JSON path or None) declared beside a weights file: its safetensors metadata, else a JSON
    file with the same stem; (None, None, None, None) when neither declares one."""
    mean, std = _parse_metadata_floats(metadata, "mean"), _parse_metadata_floats(metadata, "std")
    if mean is not None or std is not None:
        mean, std = checks.normalization(mean, std)
        return mean, std, "safetensors metadata", None
    mean, std, config_path = _sibling_config_normalization(weights_path)
    if config_path is not None:
        return mean, std, str(config_path), config_path
    return None, None, None, None
