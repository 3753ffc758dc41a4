"""Input checks for the fused ops: every failure names the argument and says what was expected.

Checks that need the tensor's values (NaN, range) cost a device sync on a GPU; the ops take check=False to skip
them where the caller has already validated its inputs once (the certification engine checks each image once).
"""
from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def expect_tensor(name: str, value) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")


def expect_rank(name: str, tensor: torch.Tensor, rank: int, layout: str) -> None:
    if tensor.dim() != rank:
        raise ValueError(f"{name}: expected a {rank}-d tensor {layout}, got shape {tuple(tensor.shape)}")


def expect_float(name: str, tensor: torch.Tensor) -> None:
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a floating-point tensor (float32, float16, bfloat16), got {tensor.dtype}")


def expect_int64(name: str, tensor: torch.Tensor) -> None:
    if tensor.dtype != torch.int64:
        raise TypeError(f"{name}: expected an int64 tensor, got {tensor.dtype}")


def expect_out_dtype(name: str, dtype) -> None:
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{name}: expected torch.float32, torch.float16 or torch.bfloat16, got {dtype}")


def expect_same_device(**tensors: torch.Tensor) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    first = next(iter(devices.values()))
    if all(d == first for d in devices.values()):  # the common case, without building a set (per-batch hot path)
        return
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"expected all tensors on one device, got {listed}")


def expect_finite(name: str, tensor: torch.Tensor) -> None:
    if tensor.numel() and not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name}: expected finite values, found NaN or infinity")


def expect_in_unit_interval(name: str, tensor: torch.Tensor) -> None:
    expect_finite(name, tensor)
    if tensor.numel() and (float(tensor.min()) < 0.0 or float(tensor.max()) > 1.0):
        raise ValueError(
            f"{name}: expected values in [0, 1], got range [{float(tensor.min()):.4g}, {float(tensor.max()):.4g}]"
        )


def expect_nonnegative_number(name: str, value: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {value!r}") from None
    if math.isnan(value) or value < 0 or math.isinf(value):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value}")
    return value


def expect_positive_number(name: str, value: float) -> float:
    value = expect_nonnegative_number(name, value)
    if value == 0:
        raise ValueError(f"{name}: expected a number > 0, got 0")
    return value


def expect_int(name: str, value, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(f"{name}: expected an int >= {minimum}{upper}, got {value}")
    return value
