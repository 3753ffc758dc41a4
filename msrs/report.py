"""Certified accuracy tables and plots from certification logs (msrs.logs format, or locuslab/smoothing's).

Certified accuracy at radius r: the fraction of logged images with correct == 1, a prediction (predict != -1)
and radius >= r; abstentions count as not certified at every radius.  ACR (average certified radius): the mean
over logged images of correct * radius (abstentions contribute 0).

  summarize(paths, radii)    -> list of Summary (name, radii, accuracies, acr, num_images)
  format_table(summaries)    -> the printed table: one row per file, a column per radius, ACR and N
  plot(paths, out_png)       -> certified accuracy against radius, one curve per file (matplotlib, Agg canvas)
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from . import logs

__all__ = ["DEFAULT_RADII", "Summary", "acr", "certified_accuracy", "format_table", "load", "plot", "radii_with",
           "summarize"]

PathLike = Union[str, os.PathLike]
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
REQUIRED = ("idx", "label", "predict", "radius", "correct")


@dataclass
class Summary:
    name: str
    path: str
    radii: tuple
    accuracies: tuple
    acr: float
    num_images: int
    abstentions: int


def load(path: PathLike) -> dict:
    """{"predict", "radius", "correct", ...}: numpy arrays of a log (a trailing partial line is ignored)."""
    table = logs.read_log(path, required=REQUIRED)
    rows = table["rows"]
    out = {}
    for column in table["columns"]:
        values = [row[column] for row in rows]
        if column in ("radius", "sigma"):
            out[column] = np.asarray(values, dtype=np.float64)
        elif column in ("idx", "label", "predict", "correct", "stage", "samples"):
            out[column] = np.asarray(values, dtype=np.int64)
        else:
            out[column] = np.asarray(values, dtype=object)
    return out


def _certified(log: dict) -> np.ndarray:
    """Per image: the certified radius when the prediction is correct, -inf otherwise (never certified)."""
    ok = (log["correct"] == 1) & (log["predict"] != -1)
    return np.where(ok, log["radius"], -np.inf)


def certified_accuracy(log: dict, radii: Sequence[float]) -> np.ndarray:
    """Fraction of images with a correct prediction certified at radius >= r, for each r (nan for an empty log)."""
    certified = _certified(log)
    radii = np.asarray(radii, dtype=np.float64)
    if certified.size == 0:
        return np.full(radii.shape, np.nan)
    return (certified[None, :] >= radii[:, None]).mean(axis=1)


def acr(log: dict) -> float:
    """Average certified radius: mean of correct * radius over all images (abstentions and errors count 0)."""
    certified = _certified(log)
    if certified.size == 0:
        return float("nan")
    return float(np.where(np.isfinite(certified), certified, 0.0).mean())


def radii_with(extra: Optional[Sequence[float]] = None) -> tuple:
    """The default radii plus ``extra``, sorted, without duplicates."""
    values = set(DEFAULT_RADII)
    for r in extra or ():
        r = float(r)
        if not np.isfinite(r) or r < 0:
            raise ValueError(f"radii: must be finite and >= 0, got {r}")
        values.add(r)
    return tuple(sorted(values))


def _names(paths: Sequence[PathLike]) -> list:
    """File stems, with parent folders added where stems collide."""
    paths = [Path(p) for p in paths]
    names = [p.stem for p in paths]
    depth = 1
    while len(set(names)) < len(names) and depth < 8:
        names = [str(Path(*p.with_suffix("").parts[-(depth + 1):])) for p in paths]
        depth += 1
    return names


def summarize(paths: Sequence[PathLike], radii: Optional[Sequence[float]] = None) -> list:
    """One Summary per log at ``radii`` (default DEFAULT_RADII)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("files: give at least one log")
    radii = tuple(DEFAULT_RADII if radii is None else radii)
    out = []
    for name, path in zip(_names(paths), paths):
        log = load(path)
        out.append(Summary(name=name, path=str(path), radii=radii,
                           accuracies=tuple(float(a) for a in certified_accuracy(log, radii)),
                           acr=acr(log), num_images=int(log["predict"].size),
                           abstentions=int((log["predict"] == -1).sum())))
    return out


def format_table(summaries: Sequence[Summary]) -> str:
    """A fixed-width table: file, certified accuracy at each radius, ACR, number of images."""
    if not summaries:
        return ""
    radii = summaries[0].radii
    header = ["file"] + [f"r={r:g}" for r in radii] + ["ACR", "N"]
    rows = [[s.name] + [("nan" if np.isnan(a) else f"{a:.3f}") for a in s.accuracies]
            + [("nan" if np.isnan(s.acr) else f"{s.acr:.3f}"), str(s.num_images)] for s in summaries]
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(line, widths)))
             for line in [header] + rows]
    return "\n".join(lines)


def plot(paths: Sequence[PathLike], out_png: PathLike, *, max_radius: Optional[float] = None,
         title: str = "Certified accuracy") -> Path:
    """Writes a PNG of certified accuracy against L2 radius, one curve per log (label: file stem)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("files: give at least one log")
    out_png = Path(out_png).expanduser()
    if out_png.is_dir():
        raise IsADirectoryError(f"plot: {str(out_png)!r} is a folder; give a .png file name")
    loaded = [(name, load(path)) for name, path in zip(_names(paths), paths)]
    largest = max([float(np.max(_certified(log)[np.isfinite(_certified(log))], initial=0.0))
                   for _, log in loaded] + [0.0])
    top = max_radius if max_radius is not None else max(largest * 1.05, 0.25)
    grid = np.linspace(0.0, top, 1001)

    figure = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for name, log in loaded:
        axes.plot(grid, certified_accuracy(log, grid), label=f"{name} (ACR {acr(log):.3f})", linewidth=1.8)
    axes.set_xlabel("radius (L2)")
    axes.set_ylabel("certified accuracy")
    axes.set_title(title)
    axes.set_xlim(0.0, top)
    axes.set_ylim(0.0, 1.0)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(str(out_png), format="png")
    return out_png
