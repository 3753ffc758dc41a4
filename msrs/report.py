"""Certified accuracy tables and plots from certification logs (msrs.logs format, or locuslab/smoothing's).

Certified accuracy at radius r: the fraction of logged images with correct == 1, a prediction (predict != -1)
and radius >= r; abstentions count as not certified at every radius.  ACR (average certified radius): the mean
over logged images of correct * radius (abstentions contribute 0).

The test images are a sample too: a certified accuracy of k / N on N images estimates the certified accuracy on
the distribution they were drawn from with binomial error.  ``accuracy_interval`` gives the exact (Clopper-Pearson)
two-sided interval over the images, 95 % by default, so that two methods 2 points apart on 100 images are not read
as different (their intervals overlap widely).  It treats the images as independent draws and each image's
certificate as given; it says nothing about the Monte Carlo alpha of each certificate.

  log_paths(items)                   -> the logs named by files and folders (every *.tsv of a folder, sorted)
  summarize(paths, radii, confidence) -> list of Summary (name, radii, accuracies, intervals, acr, num_images)
  format_table(summaries, ci=False)  -> the printed table: one row per file, a column per radius, ACR and N;
                                        ci=True adds a line per file with each accuracy's interval [lo, hi]
  figure(paths, ..., ci=False)       -> matplotlib Figure: certified accuracy against radius, one curve per file,
                                        the legend outside the axes, the y axis from -0.03 to 1.05 (curves at
                                        1.0 and 0.0 show),
                                        ci=True draws each curve's interval as a band
  plot(paths, out_png, ...)          -> writes figure(...) as a PNG
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from . import bounds, logs

__all__ = ["DEFAULT_CONFIDENCE", "DEFAULT_RADII", "Summary", "accuracy_interval", "acr", "certified_accuracy",
           "figure", "format_table", "load", "log_paths", "plot", "radii_with", "summarize"]

PathLike = Union[str, os.PathLike]
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
REQUIRED = ("idx", "label", "predict", "radius", "correct")
DEFAULT_CONFIDENCE = 0.95
# y limits beyond [0, 1], so that a curve at accuracy 1.0 (or 0.0) is drawn inside the axes, not on their frame
Y_TOP, Y_BOTTOM = 1.05, -0.03


@dataclass
class Summary:
    name: str
    path: str
    radii: tuple
    accuracies: tuple
    acr: float
    num_images: int
    abstentions: int
    intervals: tuple = ()  # (lower, upper) per radius: accuracy_interval at `confidence`
    confidence: float = DEFAULT_CONFIDENCE


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


def _check_confidence(confidence: float) -> float:
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence: expected a level in (0, 1), e.g. 0.95, got {confidence}")
    return confidence


def accuracy_interval(certified: np.ndarray, num_images: int, confidence: float = DEFAULT_CONFIDENCE) -> tuple:
    """The exact two-sided Clopper-Pearson interval (lower, upper arrays) for certified accuracies whose counts of
    certified images are ``certified`` (an int or array) out of ``num_images``: (1 - confidence) / 2 on each side.
    nan for an empty log."""
    confidence = _check_confidence(confidence)
    certified = np.asarray(certified)
    if num_images <= 0:
        nan = np.full(certified.shape, np.nan)
        return nan, nan
    lower, upper = bounds.clopper_pearson_interval(certified.astype(np.int64), int(num_images), 1.0 - confidence)
    return np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)


def _certified_counts(log: dict, radii) -> np.ndarray:
    certified = _certified(log)
    return (certified[None, :] >= np.asarray(radii, dtype=np.float64)[:, None]).sum(axis=1)


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


def log_paths(items: Sequence[PathLike]) -> list:
    """The logs to report: each item is a log file, or a folder whose ``*.tsv`` files (sorted by name) are taken.
    FileNotFoundError for a missing path, ValueError for a folder without logs (both naming the path)."""
    if isinstance(items, (str, os.PathLike)):
        items = [items]
    paths = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.glob("*.tsv") if p.is_file())
            if not found:
                raise ValueError(f"files: the folder {str(path)!r} holds no *.tsv logs")
            paths += found
        elif path.is_file():
            paths.append(path)
        elif path.exists():
            raise ValueError(f"files: {str(path)!r} is neither a log file nor a folder")
        else:
            raise FileNotFoundError(f"files: {str(path)!r} does not exist")
    if not paths:
        raise ValueError("files: give at least one log or folder of logs")
    return paths


def _names(paths: Sequence[PathLike]) -> list:
    """File stems, with parent folders added where stems collide."""
    paths = [Path(p) for p in paths]
    names = [p.stem for p in paths]
    depth = 1
    while len(set(names)) < len(names) and depth < 8:
        names = [str(Path(*p.with_suffix("").parts[-(depth + 1):])) for p in paths]
        depth += 1
    return names


def summarize(paths: Sequence[PathLike], radii: Optional[Sequence[float]] = None,
              confidence: float = DEFAULT_CONFIDENCE) -> list:
    """One Summary per log (files, or folders of *.tsv logs: log_paths) at ``radii`` (default DEFAULT_RADII), with
    each certified accuracy's exact interval over the images at ``confidence``."""
    confidence = _check_confidence(confidence)
    paths = log_paths(paths)
    radii = tuple(DEFAULT_RADII if radii is None else radii)
    out = []
    for name, path in zip(_names(paths), paths):
        log = load(path)
        num_images = int(log["predict"].size)
        lower, upper = accuracy_interval(_certified_counts(log, radii), num_images, confidence)
        out.append(Summary(name=name, path=str(path), radii=radii,
                           accuracies=tuple(float(a) for a in certified_accuracy(log, radii)),
                           acr=acr(log), num_images=num_images,
                           abstentions=int((log["predict"] == -1).sum()),
                           intervals=tuple((float(lo), float(hi)) for lo, hi in zip(lower, upper)),
                           confidence=confidence))
    return out


def _number(value: float) -> str:
    return "nan" if np.isnan(value) else f"{value:.3f}"


def format_table(summaries: Sequence[Summary], *, ci: bool = False) -> str:
    """A fixed-width table: file, certified accuracy at each radius, ACR, number of images.  ci=True adds, under
    each file's row, a row of the accuracies' intervals over the images ("[lo,hi]")."""
    if not summaries:
        return ""
    radii = summaries[0].radii
    header = ["file"] + [f"r={r:g}" for r in radii] + ["ACR", "N"]
    rows = []
    for s in summaries:
        rows.append([s.name] + [_number(a) for a in s.accuracies] + [_number(s.acr), str(s.num_images)])
        if ci:
            rows.append([f"  {s.confidence:.0%} CI"] + [f"[{_number(lo)},{_number(hi)}]" for lo, hi in s.intervals]
                        + ["", ""])
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(line, widths))).rstrip()
             for line in [header] + rows]
    return "\n".join(lines)


def figure(paths: Sequence[PathLike], *, max_radius: Optional[float] = None, title: str = "Certified accuracy",
           ci: bool = False, confidence: float = DEFAULT_CONFIDENCE):
    """Certified accuracy against L2 radius, one curve per log (label: file stem and ACR), as a matplotlib Figure
    on an Agg canvas.  The legend sits outside the axes, right of them, so it never covers a curve; the y axis
    runs from Y_BOTTOM to Y_TOP so that curves at 0.0 and 1.0 are visible; ci=True shades each curve's interval over the images."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    confidence = _check_confidence(confidence)
    paths = log_paths(paths)
    loaded = [(name, load(path)) for name, path in zip(_names(paths), paths)]
    largest = max([float(np.max(_certified(log)[np.isfinite(_certified(log))], initial=0.0))
                   for _, log in loaded] + [0.0])
    top = max_radius if max_radius is not None else max(largest * 1.05, 0.25)
    grid = np.linspace(0.0, top, 1001)

    fig = Figure(figsize=(8.6, 4.4), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.add_subplot(1, 1, 1)
    for name, log in loaded:
        (line,) = axes.plot(grid, certified_accuracy(log, grid), label=f"{name} (ACR {acr(log):.3f})",
                            linewidth=1.8)
        if ci and log["predict"].size:
            lower, upper = accuracy_interval(_certified_counts(log, grid), int(log["predict"].size), confidence)
            axes.fill_between(grid, lower, upper, color=line.get_color(), alpha=0.15, linewidth=0)
    axes.set_xlabel("radius (L2)")
    axes.set_ylabel("certified accuracy")
    axes.set_title(title if not ci else f"{title} ({confidence:.0%} intervals over the images)")
    axes.set_xlim(0.0, top)
    axes.set_ylim(Y_BOTTOM, Y_TOP)
    axes.set_yticks(np.linspace(0.0, 1.0, 6))
    axes.grid(True, alpha=0.3)
    # outside the axes (upper left corner at the axes' right edge): no curve can lie under it
    fig.legend(*axes.get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    return fig


def plot(paths: Sequence[PathLike], out_png: PathLike, *, max_radius: Optional[float] = None,
         title: str = "Certified accuracy", ci: bool = False, confidence: float = DEFAULT_CONFIDENCE) -> Path:
    """Writes figure(paths, ...) as a PNG; returns its path."""
    out_png = Path(out_png).expanduser()
    if out_png.is_dir():
        raise IsADirectoryError(f"plot: {str(out_png)!r} is a folder; give a .png file name")
    fig = figure(paths, max_radius=max_radius, title=title, ci=ci, confidence=confidence)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(str(out_png), format="png")
    return out_png
