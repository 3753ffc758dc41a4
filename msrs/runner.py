"""The resumable data-set certification loop.

``certify_dataset(smoothed, dataset, out_path, sigmas=..., n0=..., n=..., alpha=..., seed=...)`` certifies the
selected images of ``dataset`` with a :class:`msrs.smoothing.SmoothedClassifier` and writes one row per image to a
Cohen-style TSV (see msrs.logs): one sigma runs Cohen's CERTIFY, several run the multi-scale cascade (largest
sigma first).  Images are keyed by their data-set index (the noise key of the engine), so an interrupted run
resumed with the same command, or a run with another batch or group size, reproduces the same certificates.

Every argument is checked before the log is created, so bad input never leaves a half-written file.

Image selection: ``indices`` (default: the whole data set), then every ``skip``-th of them, then at most
``max_images`` of those.  (locuslab/smoothing's ``--skip`` is the same stride; its ``--max`` is an index bound,
here it is a number of images.)
"""
from __future__ import annotations

import builtins
import contextlib
import hashlib
import math
import os
import sys
import time
from numbers import Integral, Real
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch

from . import distributed, logs
from .data import ImageDataset

__all__ = ["certify_dataset", "select_indices", "validate_arguments", "ALPHA_SCHEDULES"]

PathLike = Union[str, os.PathLike]
ALPHA_SCHEDULES = ("union", "paper")
MAX_SEED = 2 ** 63  # the engine's seeds are non-negative int64


def _int(name: str, value, minimum: Optional[int] = None, maximum: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        if isinstance(value, Real) and float(value).is_integer():
            value = int(value)
        else:
            raise TypeError(f"{name}: expected an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: must be <= {maximum}, got {value}")
    return value


def _float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value}")
    return value


def validate_arguments(
    *,
    sigmas,
    n0,
    n,
    alpha,
    seed,
    batch_size,
    group_size=None,
    skip=1,
    max_images=None,
    p0=0.5,
    alpha_schedule="union",
) -> dict:
    """Checks the numeric arguments of a run; returns them normalised (sigmas sorted largest first).
    Raises ValueError / TypeError naming the argument."""
    if isinstance(sigmas, torch.Tensor):
        sigmas = sigmas.reshape(-1).tolist()
    elif isinstance(sigmas, np.ndarray):
        sigmas = sigmas.reshape(-1).tolist()
    elif isinstance(sigmas, Real) and not isinstance(sigmas, bool):
        sigmas = [sigmas]
    if isinstance(sigmas, (str, bytes)) or not hasattr(sigmas, "__iter__"):
        raise TypeError(f"sigma: expected a number or a list of numbers, got {sigmas!r}")
    sigma_list = [_float("sigma", float(s) if isinstance(s, np.floating) else s) for s in sigmas]
    if not sigma_list:
        raise ValueError("sigma: give at least one noise level")
    if any(s <= 0 for s in sigma_list):
        raise ValueError(f"sigma: noise levels must be > 0, got {sigma_list}")
    if len(set(sigma_list)) != len(sigma_list):
        raise ValueError(f"sigma: noise levels must be distinct, got {sigma_list}")
    out = {
        "sigmas": sorted(sigma_list, reverse=True),
        "n0": _int("n0", n0, 1),
        "n": _int("n", n, 1),
        "seed": _int("seed", seed, 0, MAX_SEED - 1),
        "batch_size": _int("batch_size", batch_size, 1),
        "group_size": None if group_size is None else _int("group_size", group_size, 1),
        "skip": _int("skip", skip, 1),
        "max_images": None if max_images is None else _int("max_images", max_images, 1),
    }
    if out["n0"] > out["n"]:
        raise ValueError(f"n0: must be <= n (selection samples at most the estimation samples), got n0={out['n0']} "
                         f"> n={out['n']}")
    alpha = _float("alpha", alpha)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: must lie in (0, 1), got {alpha}")
    out["alpha"] = alpha
    p0 = _float("p0", p0)
    if not 0.5 <= p0 < 1.0:
        raise ValueError(f"p0: must lie in [0.5, 1), got {p0}")
    out["p0"] = p0
    if alpha_schedule not in ALPHA_SCHEDULES:
        raise ValueError(f"alpha_schedule: expected one of {ALPHA_SCHEDULES}, got {alpha_schedule!r}")
    out["alpha_schedule"] = alpha_schedule
    return out


def select_indices(num_images: int, *, indices: Optional[Sequence[int]] = None, skip: int = 1,
                   max_images: Optional[int] = None) -> list:
    """Data-set indices to certify: ``indices`` (default all), every ``skip``-th, at most ``max_images``."""
    if indices is None:
        base = list(range(num_images))
    else:
        if isinstance(indices, torch.Tensor):
            indices = indices.reshape(-1).tolist()
        base = [_int("indices", i) for i in indices]
        if not base:
            raise ValueError("indices: the list is empty")
        bad = [i for i in base if not 0 <= i < num_images]
        if bad:
            raise ValueError(f"indices: {bad[:10]} out of range for a data set of {num_images} images")
        if len(set(base)) != len(base):
            raise ValueError("indices: duplicate image indices")
    chosen = base[::skip]
    if max_images is not None:
        chosen = chosen[:max_images]
    if not chosen:
        raise ValueError("the image selection is empty (check indices / skip / max)")
    return chosen


def _tensor_digest(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        digest.update(f"{t.dtype}{list(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _module_digest(module) -> Optional[str]:
    if not isinstance(module, torch.nn.Module):
        return None
    digest = hashlib.sha256(type(module).__name__.encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(_tensor_digest(tensor).encode())
    return digest.hexdigest()


def _describe(value):
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").reshape(-1).tolist()
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    return value


def _probe(smoothed, image: torch.Tensor, image_id: torch.Tensor, args: dict) -> None:
    """One Monte Carlo sample of the first image at every sigma, through the whole pipeline (noise, denoiser,
    classifier), so that a classifier / denoiser that does not fit the data fails before the log is created.
    Its counts are discarded: they change no certificate."""
    sample_counts = getattr(smoothed, "sample_counts", None)
    if not callable(sample_counts):
        return
    for sigma in args["sigmas"]:
        sample_counts(image, image_id, sigma, 1, stream=0, seed=args["seed"], batch_size=1)


def certify_dataset(
    smoothed,
    dataset: ImageDataset,
    out_path: PathLike,
    *,
    sigmas,
    n0: int = 100,
    n: int = 100_000,
    alpha: float = 0.001,
    seed: int = 0,
    batch_size: int = 1000,
    group_size: Optional[int] = None,
    skip: int = 1,
    max_images: Optional[int] = None,
    indices: Optional[Sequence[int]] = None,
    p0: float = 0.5,
    alpha_schedule: str = "union",
    progress: bool = True,
    overwrite: bool = False,
    sequential: bool = False,
    target_radii: Optional[Sequence[float]] = None,
    sequential_bound: Optional[str] = None,
    run_info: Optional[Mapping] = None,
    extra_info: Optional[Mapping] = None,
) -> Path:
    """Certifies the selected images of ``dataset`` and writes their rows to ``out_path`` (resuming it when it was
    interrupted).  Returns the log's path.

    smoothed:   a msrs.smoothing.SmoothedClassifier (uses .certify for one sigma, .certify_cascade for several).
    sigmas:     one noise level (Cohen's CERTIFY) or several (the cascade; run largest first).
    group_size: images whose Monte Carlo samples share batches (default: batch_size // n, at least 1); it changes
                speed, never the certificates.  The ``time`` column is the group's wall time / its size.
    run_info:   what identifies the run beyond these arguments (data set spec, model files and hashes, dtype...),
                recorded in ``<out>.json`` and compared on resume.  Without it, hashes of the classifier's and
                denoiser's state dicts are recorded instead.  The selected images' content hash is always recorded.
    extra_info: recorded but not compared (device, backend, command line...).
    sequential: early stopping (msrs.sequential) with n as the largest number of estimation samples per stage;
                each image stops once its outcome at ``target_radii`` (default: the report's radii,
                msrs.report.DEFAULT_RADII) is settled: smoothed.certify_sequential for one sigma,
                smoothed.certify_cascade_sequential for several (the "union" alpha schedule only). The log gets a
                ``samples`` column (Monte Carlo samples drawn per image).
    sequential_bound: "spending" (default: Clopper-Pearson with alpha spent over pre-set looks) or "cs" (the
                confidence sequence); sequential mode only.

    Under torchrun (msrs.distributed initialised) every rank calls this with the same arguments: the engine
    splits each group's samples over the ranks, rank 0 alone writes the log and shows progress, and the list of
    images still to do (or rank 0's refusal to resume) is sent from rank 0 to all ranks.
    """
    args = validate_arguments(sigmas=sigmas, n0=n0, n=n, alpha=alpha, seed=seed, batch_size=batch_size,
                              group_size=group_size, skip=skip, max_images=max_images, p0=p0,
                              alpha_schedule=alpha_schedule)
    if not isinstance(dataset, ImageDataset):
        raise TypeError(f"dataset: expected an msrs.data.ImageDataset, got {type(dataset).__name__}")
    cascade = len(args["sigmas"]) > 1
    method = "certify_cascade" if cascade else "certify"
    if sequential:
        method = "certify_cascade_sequential" if cascade else "certify_sequential"
        target_radii = _target_radii(target_radii)
        sequential_bound = _sequential_bound(sequential_bound)
        if cascade and args["alpha_schedule"] != "union":
            raise ValueError(f"alpha_schedule: the sequential cascade needs 'union' (a valid union bound), got "
                             f"{args['alpha_schedule']!r}")
    elif target_radii is not None:
        raise ValueError("target_radii: only used in sequential mode (pass sequential=True / --sequential)")
    elif sequential_bound is not None:
        raise ValueError("sequential_bound: only used in sequential mode (pass sequential=True / --sequential)")
    if not callable(getattr(smoothed, method, None)):
        raise TypeError(f"smoothed: {type(smoothed).__name__} has no {method}() method (expected a "
                        "msrs.smoothing.SmoothedClassifier)")
    engine_classes = getattr(smoothed, "num_classes", None)
    if isinstance(engine_classes, Integral) and int(engine_classes) < dataset.num_classes:
        raise ValueError(f"dataset: {dataset.name} has {dataset.num_classes} classes but the smoothed classifier "
                         f"has {int(engine_classes)}")
    if out_path is None or str(out_path) == "":
        raise ValueError("out: give a path for the log")
    out_path = Path(out_path).expanduser()
    if out_path.is_dir():
        raise IsADirectoryError(f"out: {str(out_path)!r} is a folder; give a file name for the log")
    ids = select_indices(len(dataset), indices=indices, skip=args["skip"], max_images=args["max_images"])
    group = args["group_size"] or max(1, args["batch_size"] // args["n"])
    id_tensor = torch.tensor(ids, dtype=torch.int64)
    selected = dataset.images[id_tensor]
    if selected.numel() and (float(selected.min()) < 0.0 or float(selected.max()) > 1.0):
        raise ValueError(f"dataset: {dataset.name}: images must lie in [0, 1] (the noise is in pixel units), got "
                         f"values in [{float(selected.min()):g}, {float(selected.max()):g}]")
    _probe(smoothed, selected[:1], id_tensor[:1], args)
    config = {
        "method": ("sequential_cascade" if sequential else "cascade") if cascade else
                  ("sequential" if sequential else "certify"),
        "sigmas": args["sigmas"],
        "n0": args["n0"],
        "n": args["n"],
        "alpha": args["alpha"],
        "seed": args["seed"],
        "p0": args["p0"],
        "alpha_schedule": args["alpha_schedule"] if cascade else None,
        "selection": {"indices": None if indices is None else [int(i) for i in indices], "skip": args["skip"],
                      "max_images": args["max_images"], "count": len(ids), "first": ids[0], "last": ids[-1]},
        "data": {"name": dataset.name, "num_images": len(dataset), "num_classes": dataset.num_classes,
                 "image_shape": list(dataset.image_shape),
                 "selected_sha256": _tensor_digest(dataset.images[id_tensor], dataset.labels[id_tensor])},
    }
    if sequential:  # only then, so that logs of fixed-n runs keep their recorded configuration
        config["sequential"] = _sequential_config(target_radii, sequential_bound, args["n"])
    if run_info is not None:
        config["run"] = dict(run_info)
    else:
        config["model"] = {
            "engine": type(smoothed).__name__,
            "classifier_sha256": _module_digest(getattr(smoothed, "classifier", None)),
            "denoiser_sha256": _module_digest(getattr(smoothed, "denoiser", None)),
            "dtype": _describe(getattr(smoothed, "dtype", None)),
        }
    info = {"batch_size": args["batch_size"], "group_size": group, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "argv": list(sys.argv), "world_size": distributed.world_size()}
    try:
        from . import __version__
        info["msrs_version"] = __version__
    except ImportError:  # pragma: no cover
        pass
    info.update(dict(extra_info or {}))
    columns = logs.CASCADE_COLUMNS if cascade else logs.COLUMNS
    if sequential:  # Cohen's columns first, so tools reading those still read the log
        columns = columns + ("samples",)

    # rank 0 alone opens (or resumes) the log and decides what is left to do; the other ranks get its decision,
    # or its error, so that a refusal stops every rank instead of leaving them waiting
    main = distributed.is_main()
    writer, todo = None, None
    if main:
        try:
            writer, done = logs.open_run(out_path, columns, config, ids, overwrite=overwrite, info=info)
        except Exception as err:
            distributed.broadcast_object(("error", _error_kind(err), str(err)))
            raise
        todo = [i for i in ids if i not in done]
        distributed.broadcast_object(("todo", todo))
    else:
        outcome = distributed.broadcast_object(None)
        if outcome[0] == "error":
            raise getattr(builtins, outcome[1])(outcome[2])
        todo = outcome[1]
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ids), initial=len(ids) - len(todo), unit="img", desc=out_path.name, dynamic_ncols=True,
                   file=sys.stderr, mininterval=0.1 if sys.stderr.isatty() else 5.0)
    samples, started = 0, time.perf_counter()
    try:
        with writer if writer is not None else contextlib.nullcontext():
            for start in range(0, len(todo), group):
                chunk = todo[start:start + group]
                chunk_ids = torch.tensor(chunk, dtype=torch.int64)
                images = dataset.images[chunk_ids]
                t0 = time.perf_counter()
                if sequential and cascade:
                    certs = smoothed.certify_cascade_sequential(
                        images, args["sigmas"], args["n0"], args["n"], args["alpha"], seed=args["seed"],
                        batch_size=args["batch_size"], image_ids=chunk_ids, p0=args["p0"], target_radii=target_radii,
                        bound=sequential_bound)
                elif cascade:
                    certs = smoothed.certify_cascade(
                        images, args["sigmas"], args["n0"], args["n"], args["alpha"], seed=args["seed"],
                        batch_size=args["batch_size"], image_ids=chunk_ids, p0=args["p0"],
                        alpha_schedule=args["alpha_schedule"])
                elif sequential:
                    certs = smoothed.certify_sequential(
                        images, args["sigmas"][0], args["n0"], args["n"], args["alpha"], seed=args["seed"],
                        batch_size=args["batch_size"], image_ids=chunk_ids, p0=args["p0"], target_radii=target_radii,
                        bound=sequential_bound)
                else:
                    certs = smoothed.certify(
                        images, args["sigmas"][0], args["n0"], args["n"], args["alpha"], seed=args["seed"],
                        batch_size=args["batch_size"], image_ids=chunk_ids, p0=args["p0"])
                elapsed = time.perf_counter() - t0
                certs = list(certs)
                if len(certs) != len(chunk):
                    raise RuntimeError(f"the engine returned {len(certs)} certificates for {len(chunk)} images")
                per_image = elapsed / len(chunk)
                for idx, cert in zip(chunk, certs):
                    label = int(dataset.labels[idx])
                    prediction = int(cert.prediction)
                    radius = float(cert.radius) if prediction >= 0 else 0.0
                    row = {"idx": idx, "label": label, "predict": prediction, "radius": radius,
                           "correct": int(prediction == label), "time": logs.format_time(per_image)}
                    if cascade:
                        row["stage"] = int(cert.stage)
                        row["sigma"] = float(cert.sigma)
                    if sequential:
                        row["samples"] = int(cert.samples)
                    if writer is not None:
                        writer.write_row(row)
                    samples += int(getattr(cert, "samples", 0) or 0)
                if bar is not None:
                    bar.update(len(chunk))
                    rate = samples / max(time.perf_counter() - started, 1e-9)
                    bar.set_postfix_str(f"{rate:,.0f} samples/s", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    distributed.barrier()
    return out_path


def _target_radii(values) -> list:
    if values is None:
        from .report import DEFAULT_RADII

        return [float(r) for r in DEFAULT_RADII]
    if isinstance(values, (torch.Tensor, np.ndarray)):
        values = values.reshape(-1).tolist()
    elif isinstance(values, Real):
        values = [values]
    radii = sorted({_float("target_radii", r) for r in values})
    if not radii or radii[0] < 0:
        raise ValueError(f"target_radii: expected one or more radii >= 0, got {list(values)}")
    return radii


def _sequential_bound(value) -> str:
    from .sequential import BOUNDS

    value = "spending" if value is None else value
    if value not in BOUNDS:
        raise ValueError(f"sequential_bound: expected one of {BOUNDS}, got {value!r}")
    return value


def _sequential_config(target_radii, bound: str, n: int) -> dict:
    """What a sequential run's certificates depend on beyond the fixed-n configuration: the radii, the bound, and
    for alpha spending its looks and final share (the engine's defaults, recorded so a resume never mixes them)."""
    from . import sequential

    config = {"target_radii": target_radii, "bound": bound}
    if bound == "spending":
        config["looks"] = sequential.checkpoints(n)
        config["final_share"] = sequential.DEFAULT_FINAL_SHARE
    return config


def _error_kind(err: BaseException) -> str:
    """The name of the builtin exception class the other ranks raise for rank 0's error."""
    for kind in (FileExistsError, IsADirectoryError, NotADirectoryError, FileNotFoundError, PermissionError,
                 ValueError, TypeError):
        if isinstance(err, kind):
            return kind.__name__
    return "RuntimeError"
