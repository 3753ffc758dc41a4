"""Argument checks: the one place where a user's values are validated, and the exceptions a mistake raises.

Every check names the argument and says what was expected, and returns the value normalised (an int, a float, a
sorted tuple), so callers validate once and then use the result.  Two kinds of mistake, one exception type each:

  ArgumentTypeError   the value has the wrong type (a string where a number belongs, a float where an integer does)
  ArgumentValueError  the type is right but the value is not allowed (out of range, empty, inconsistent)

Both derive from ArgumentError, a ValueError, so `except ValueError` catches every bad argument; the type error is
also a TypeError, as Python's own conventions ask.  The command line (msrs.cli) turns them into one-line
`msrs: error: ...` messages.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

__all__ = [
    "ArgumentError",
    "ArgumentTypeError",
    "ArgumentValueError",
    "channel_stats",
    "choice",
    "device",
    "finite_list",
    "integer",
    "level",
    "normalization",
    "number",
    "probability_threshold",
    "sigma",
    "sigmas",
]


class ArgumentError(ValueError):
    """A bad argument; the message starts with the argument's name."""


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument of the wrong type."""


class ArgumentValueError(ArgumentError):
    """An argument of the right type with a value that is not allowed."""


def integer(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """An int in [minimum, maximum] (bounds optional). numpy integers are accepted; bool and floats (even whole
    ones: a float count is usually a mistake upstream) are refused."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ArgumentTypeError(f"{name}: expected an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ArgumentValueError(f"{name}: must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ArgumentValueError(f"{name}: must be <= {maximum}, got {value}")
    return value


def number(name: str, value, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
           high_open: bool = False) -> float:
    """A finite float in the interval from low to high (each end open when asked). bool and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ArgumentTypeError(f"{name}: expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ArgumentValueError(f"{name}: must be finite, got {value}")
    if not ((value > low if low_open else value >= low) and (value < high if high_open else value <= high)):
        raise ArgumentValueError(f"{name}: must {_interval(low, high, low_open, high_open)}, got {value}")
    return value


def level(name: str, value, *, array_ok: bool = True):
    """An error level in (0, 1): a float, or (array_ok: vectorised bounds) a float64 array of them (empty when no
    rows are left)."""
    if isinstance(value, (np.ndarray, list, tuple)) and np.ndim(value) > 0:
        if not array_ok:
            raise ArgumentTypeError(f"{name}: expected one number in (0, 1), got {type(value).__name__} {value!r}")
        array = np.asarray(value, dtype=np.float64)
        if not np.all((array > 0.0) & (array < 1.0)):
            raise ArgumentValueError(f"{name}: must lie in (0, 1), got {value}")
        return array
    if isinstance(value, (np.ndarray, np.generic)):
        value = value.item()
    return number(name, value, 0.0, 1.0, low_open=True, high_open=True)


def probability_threshold(name: str, value) -> float:
    """The certification threshold p0 ("skip_p"): in [0.5, 1)."""
    return number(name, value, 0.5, 1.0, high_open=True)


def sigma(name: str, value) -> float:
    """A noise level: a finite number > 0 (pixel units, images in [0, 1])."""
    return number(name, value, 0.0, low_open=True)


def sigmas(name: str, values, *, scalar_ok: bool = True) -> tuple:
    """Several distinct noise levels (or one number when scalar_ok), sorted from the largest (cascade stage 0)."""
    if isinstance(values, Real) and not isinstance(values, bool) and scalar_ok:
        values = [values]
    elif hasattr(values, "reshape") and hasattr(values, "tolist"):  # numpy arrays, torch tensors
        values = values.reshape(-1).tolist()
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        expected = "a number or a list of numbers" if scalar_ok else "a non-empty sequence of noise levels"
        raise ArgumentTypeError(f"{name}: expected {expected}, got {values!r}")
    values = list(values)
    if not values:  # an empty sequence is no set of noise levels at all
        raise ArgumentTypeError(f"{name}: give at least one noise level, got {values!r}")
    levels = []
    for s in values:
        value = number(name, float(s) if isinstance(s, np.floating) else s)
        if value <= 0:
            raise ArgumentValueError(f"{name}: noise levels must be > 0, got {values}")
        levels.append(value)
    if len(set(levels)) != len(levels):
        raise ArgumentValueError(f"{name}: noise levels must be distinct, got {levels}")
    return tuple(sorted(levels, reverse=True))


def finite_list(name: str, values, *, minimum: float | None = None) -> tuple:
    """A non-empty list of finite numbers (each >= minimum if given), sorted and without repeats (e.g. radii)."""
    if isinstance(values, Real) and not isinstance(values, bool):
        values = [values]
    elif hasattr(values, "reshape") and hasattr(values, "tolist"):
        values = values.reshape(-1).tolist()
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ArgumentTypeError(f"{name}: expected a list of numbers, got {values!r}")
    values = list(values)
    low = -math.inf if minimum is None else minimum
    items = sorted({number(name, float(v) if isinstance(v, np.floating) else v, low) for v in values})
    if not items:
        raise ArgumentValueError(f"{name}: expected one or more values, got {values}")
    return tuple(items)


def channel_stats(name: str, value, *, positive: bool = False) -> tuple | None:
    """A per-channel statistic (a classifier's input mean or std): one finite value per channel, or one for all;
    > 0 when positive. None stays None."""
    if value is None:
        return None
    if isinstance(value, Real) and not isinstance(value, bool):
        value = [value]
    elif hasattr(value, "reshape") and hasattr(value, "tolist"):
        value = value.reshape(-1).tolist()
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ArgumentTypeError(f"{name}: expected a list of numbers, got {value!r}") from None
    if not values:
        raise ArgumentValueError(f"{name}: expected at least one value")
    if not all(math.isfinite(v) for v in values):
        raise ArgumentValueError(f"{name}: values must be finite, got {values}")
    if positive and any(v <= 0 for v in values):
        raise ArgumentValueError(f"{name}: values must be > 0, got {values}")
    return values


def normalization(mean, std, channels: int | None = None) -> tuple:
    """A classifier's input normalisation (x - mean) / std: both None, or both given with the same number of
    values, 1 or `channels`. Returns (mean, std) as tuples of floats, or (None, None)."""
    if mean is None and std is None:
        return None, None
    if mean is None or std is None:
        raise ArgumentValueError("mean, std: give both the classifier's mean and std (--mean and --std), or neither")
    mean, std = channel_stats("mean", mean), channel_stats("std", std, positive=True)
    if len(mean) != len(std):
        raise ArgumentValueError(f"mean, std: different lengths ({len(mean)} and {len(std)})")
    if channels is not None and len(mean) not in (1, channels):
        raise ArgumentValueError(f"mean, std: {len(mean)} values for images with {channels} channels (give 1 or "
                                 f"{channels})")
    return mean, std


def device(name: str, value):
    """A torch.device from 'cpu' | 'cuda' | 'cuda:N' | ... (None or "": cuda when available, else cpu); a CUDA
    device is refused where CUDA is not available."""
    import torch

    try:
        dev = torch.device(value) if value else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    except (RuntimeError, TypeError) as e:
        raise ArgumentValueError(f"{name}: {value!r} is not a device ({e})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentValueError(f"{name}: {value!r} requested but CUDA is not available here")
    return dev


def choice(name: str, value, options) -> str:
    """One of `options` (strings)."""
    if value not in tuple(options):
        raise ArgumentValueError(f"{name}: expected one of {tuple(options)}, got {value!r}")
    return value


def _interval(low, high, low_open, high_open) -> str:
    if math.isfinite(low) and math.isfinite(high):
        return f"lie in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if math.isfinite(low):
        return f"be {'>' if low_open else '>='} {low:g}"
    return f"be {'<' if high_open else '<='} {high:g}" if math.isfinite(high) else "be finite"
