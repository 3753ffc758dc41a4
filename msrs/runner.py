"""The resumable data-set certification loop: read images, call one procedure, write rows, resume.

``certify_dataset(smoothed, dataset, out_path, config)`` certifies the selected images of ``dataset`` with a
:class:`msrs.smoothing.SmoothedClassifier` (``smoothed.run(images, ids, config)``: the procedure the config names)
and writes one row per image to a Cohen-style TSV (msrs.logs).  Images are keyed by their data-set index (the
noise key of the engine), so an interrupted run resumed with the same command, or a run with another batch or
group size, reproduces the same certificates.

Everything is checked before the log is created, so bad input never leaves a half-written file.

Image selection: ``indices`` (default: the whole data set), then every ``skip``-th of them, then at most
``max_images`` of those.  (locuslab/smoothing's ``--skip`` is the same stride; its ``--max`` is an index bound,
here it is a number of images.)
"""
from __future__ import annotations

import builtins
import contextlib
import os
import sys
import time
from numbers import Integral
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch

from . import checks, distributed, logs
from .config import CertifyConfig, from_options
from .data import ImageDataset
from .fingerprint import module_digest, tensor_digest

__all__ = ["certify_dataset", "select_indices"]

PathLike = Union[str, os.PathLike]


def select_indices(num_images: int, *, indices: Optional[Sequence[int]] = None, skip: int = 1,
                   max_images: Optional[int] = None) -> list:
    """Data-set indices to certify: ``indices`` (default all), every ``skip``-th, at most ``max_images``."""
    if indices is None:
        base = list(range(num_images))
    else:
        if isinstance(indices, torch.Tensor):
            indices = indices.reshape(-1).tolist()
        base = [checks.integer("indices", i) for i in indices]
        if not base:
            raise checks.ArgumentValueError("indices: the list is empty")
        bad = [i for i in base if not 0 <= i < num_images]
        if bad:
            raise checks.ArgumentValueError(f"indices: {bad[:10]} out of range for a data set of {num_images} images")
        if len(set(base)) != len(base):
            raise checks.ArgumentValueError("indices: duplicate image indices")
    chosen = base[::skip]
    if max_images is not None:
        chosen = chosen[:max_images]
    if not chosen:
        raise checks.ArgumentValueError("the image selection is empty (check indices / skip / max)")
    return chosen


def certify_dataset(
    smoothed,
    dataset: ImageDataset,
    out_path: PathLike,
    config: Optional[CertifyConfig] = None,
    *,
    group_size: Optional[int] = None,
    skip: int = 1,
    max_images: Optional[int] = None,
    indices: Optional[Sequence[int]] = None,
    progress: bool = True,
    overwrite: bool = False,
    run_info: Optional[Mapping] = None,
    extra_info: Optional[Mapping] = None,
    **options,
) -> Path:
    """Certifies the selected images of ``dataset`` and writes their rows to ``out_path`` (resuming it when it was
    interrupted).  Returns the log's path.

    smoothed:   a msrs.smoothing.SmoothedClassifier (its run(images, image_ids, config) is called per group).
    config:     a msrs.config.CertifyConfig, or None and its settings as keywords (msrs.config.from_options:
                sigmas, n0, n, alpha, seed, batch_size, p0, alpha_schedule, sequential, target_radii,
                sequential_bound): one sigma runs Cohen's CERTIFY, several the cascade; sequential early stopping
                adds a ``samples`` column (Monte Carlo samples drawn per image) to the log.
    group_size: images whose Monte Carlo samples share batches (default: batch_size // n, at least 1); it changes
                speed, never the certificates.  The ``time`` column is the group's wall time / its size.
    run_info:   what identifies the run beyond the config (data set spec, model files and hashes, dtype...),
                recorded in ``<out>.json`` and compared on resume.  Without it, hashes of the classifier's and
                denoiser's state dicts are recorded instead.  The selected images' content hash is always recorded.
    extra_info: recorded but not compared (device, backend, command line...).

    Under torchrun (msrs.distributed initialised) every rank calls this with the same arguments: the engine
    splits each group's samples over the ranks, rank 0 alone writes the log and shows progress, and the list of
    images still to do (or rank 0's refusal to resume) is sent from rank 0 to all ranks.
    """
    if config is None:
        config = from_options(**options)
    elif options:
        raise checks.ArgumentValueError(f"config: give a CertifyConfig or its settings, not both ({sorted(options)})")
    group_size = None if group_size is None else checks.integer("group_size", group_size, 1)
    skip = checks.integer("skip", skip, 1)
    max_images = None if max_images is None else checks.integer("max_images", max_images, 1)
    _check_engine(smoothed, dataset)
    out_path = _check_out(out_path)
    ids = select_indices(len(dataset), indices=indices, skip=skip, max_images=max_images)
    id_tensor = torch.tensor(ids, dtype=torch.int64)
    selected = dataset.images[id_tensor]
    if selected.numel() and (float(selected.min()) < 0.0 or float(selected.max()) > 1.0):
        raise checks.ArgumentValueError(f"dataset: {dataset.name}: images must lie in [0, 1] (the noise is in pixel "
                                        f"units), got values in [{float(selected.min()):g}, {float(selected.max()):g}]")
    smoothed.check_pipeline(selected[:1], id_tensor[:1], config.sigmas, seed=config.seed,
                            batch_size=config.batch_size)
    record = _record(config, smoothed, dataset, ids, indices, skip, max_images, run_info)
    group = group_size or max(1, config.batch_size // config.n)
    info = _info(config, group, extra_info)
    columns = logs.CASCADE_COLUMNS if config.cascade else logs.COLUMNS
    if config.sequential is not None:  # Cohen's columns first, so tools reading those still read the log
        columns = columns + ("samples",)
    writer, todo, resuming = _open_log(out_path, columns, record, ids, overwrite, info)
    if resuming and progress:
        print(resuming, file=sys.stderr)
    with writer if writer is not None else contextlib.nullcontext():
        _certify_groups(smoothed, dataset, config, todo, group, writer, _progress_bar(progress, out_path, ids, todo))
    distributed.barrier()
    return out_path


def _check_engine(smoothed, dataset) -> None:
    if not isinstance(dataset, ImageDataset):
        raise checks.ArgumentTypeError(f"dataset: expected an msrs.data.ImageDataset, got {type(dataset).__name__}")
    if not callable(getattr(smoothed, "run", None)):
        raise checks.ArgumentTypeError(f"smoothed: {type(smoothed).__name__} has no run() method to certify with "
                                       "(expected a msrs.smoothing.SmoothedClassifier)")
    engine_classes = getattr(smoothed, "num_classes", None)
    if isinstance(engine_classes, Integral) and int(engine_classes) < dataset.num_classes:
        raise checks.ArgumentValueError(f"dataset: {dataset.name} has {dataset.num_classes} classes but the smoothed "
                                        f"classifier has {int(engine_classes)}")


def _check_out(out_path) -> Path:
    if out_path is None or str(out_path) == "":
        raise checks.ArgumentValueError("out: give a path for the log")
    out_path = Path(out_path).expanduser()
    if out_path.is_dir():
        raise IsADirectoryError(f"out: {str(out_path)!r} is a folder; give a file name for the log")
    return out_path


def _record(config, smoothed, dataset, ids, indices, skip, max_images, run_info) -> dict:
    """What the sidecar stores and a resume compares: the config, the image selection and its content, the models."""
    id_tensor = torch.tensor(ids, dtype=torch.int64)
    record = config.record()
    record["selection"] = {"indices": None if indices is None else [int(i) for i in indices], "skip": skip,
                           "max_images": max_images, "count": len(ids), "first": ids[0], "last": ids[-1]}
    record["data"] = {"name": dataset.name, "num_images": len(dataset), "num_classes": dataset.num_classes,
                      "image_shape": list(dataset.image_shape),
                      "selected_sha256": tensor_digest([dataset.images[id_tensor], dataset.labels[id_tensor]])}
    if run_info is not None:
        record["run"] = dict(run_info)
    else:
        record["model"] = {
            "engine": type(smoothed).__name__,
            "classifier_sha256": module_digest(getattr(smoothed, "classifier", None)),
            "denoiser_sha256": module_digest(getattr(smoothed, "denoiser", None)),
            "dtype": _describe(getattr(smoothed, "dtype", None)),
        }
    return record


def _describe(value):
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").reshape(-1).tolist()
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value)
    return value


def _info(config, group, extra_info) -> dict:
    """What the sidecar records but a resume does not compare."""
    info = {"batch_size": config.batch_size, "group_size": group, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "argv": list(sys.argv), "world_size": distributed.world_size()}
    from . import __version__

    info["msrs_version"] = __version__
    info.update(dict(extra_info or {}))
    return info


def _open_log(out_path, columns, record, ids, overwrite, info):
    """(writer, ids still to do, "resuming ..." message or None). Rank 0 alone opens (or resumes) the log and decides what is left to do; the other
    ranks get its decision, or its error, so that a refusal stops every rank instead of leaving them waiting."""
    if distributed.is_main():
        try:
            writer, done = logs.open_run(out_path, columns, record, ids, overwrite=overwrite, info=info)
        except Exception as err:
            distributed.broadcast_object(("error", _error_kind(err), str(err)))
            raise
        todo = [i for i in ids if i not in done]
        distributed.broadcast_object(("todo", todo))
        return writer, todo, logs.resume_message(out_path, len(ids) - len(todo), len(ids))
    outcome = distributed.broadcast_object(None)
    if outcome[0] == "error":
        raise getattr(builtins, outcome[1])(outcome[2])
    return None, outcome[1], None


def _progress_bar(progress, out_path, ids, todo):
    if not (progress and distributed.is_main()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=len(ids), initial=len(ids) - len(todo), unit="img", desc=out_path.name, dynamic_ncols=True,
                file=sys.stderr, mininterval=0.1 if sys.stderr.isatty() else 5.0)


def _certify_groups(smoothed, dataset, config, todo, group, writer, bar) -> None:
    """Certifies the images still to do, `group` at a time, and writes a row per image (rank 0)."""
    samples, started = 0, time.perf_counter()
    try:
        for start in range(0, len(todo), group):
            chunk = todo[start:start + group]
            chunk_ids = torch.tensor(chunk, dtype=torch.int64)
            t0 = time.perf_counter()
            certs = list(smoothed.run(dataset.images[chunk_ids], chunk_ids, config))
            per_image = (time.perf_counter() - t0) / len(chunk)
            if len(certs) != len(chunk):
                raise RuntimeError(f"the engine returned {len(certs)} certificates for {len(chunk)} images")
            for idx, cert in zip(chunk, certs):
                if writer is not None:
                    writer.write_row(_row(config, idx, int(dataset.labels[idx]), cert, per_image))
                samples += int(getattr(cert, "samples", 0) or 0)
            if bar is not None:
                bar.update(len(chunk))
                bar.set_postfix_str(f"{samples / max(time.perf_counter() - started, 1e-9):,.0f} samples/s",
                                    refresh=False)
    finally:
        if bar is not None:
            bar.close()


def _row(config, idx: int, label: int, cert, seconds: float) -> dict:
    prediction = int(cert.prediction)
    row = {"idx": idx, "label": label, "predict": prediction,
           "radius": float(cert.radius) if prediction >= 0 else 0.0, "correct": int(prediction == label),
           "time": logs.format_time(seconds)}
    if config.cascade:
        row["stage"] = int(cert.stage)
        row["sigma"] = float(cert.sigma)
    if config.sequential is not None:
        row["samples"] = int(cert.samples)
    return row


def _error_kind(err: BaseException) -> str:
    """The name of the builtin exception class the other ranks raise for rank 0's error."""
    for kind in (FileExistsError, IsADirectoryError, NotADirectoryError, FileNotFoundError, PermissionError,
                 ValueError, TypeError):
        if isinstance(err, kind):
            return kind.__name__
    return "RuntimeError"
