"""The training loop of diffusion calibration: a copy of the denoiser trained against the frozen classifier.

  finetune(denoiser, classifier, dataset, *, out_dir, settings=FinetuneSettings(...) or its fields as keywords,
           resume, mean, std, device, backend, progress) -> FinetuneResult

In order: the arguments (cheap checks first: settings, out_dir, models, device and dtype, then the data), the
model (an fp32 copy in eval mode, AdamW, EMA, loss scaling for fp16), the resume (msrs.finetune.checkpoints), the
steps with the classifier frozen, and the result (the EMA model and the trained weights, both frozen).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from .. import checks, fingerprint
from . import checkpoints, ema as ema_
from .randomness import batch_indices, step_seed
from .settings import AUTOCAST, FinetuneSettings, resolve_dtype

__all__ = ["FinetuneResult", "finetune"]

BACKENDS = ("torch", "cpp", "triton")
_DENOISER_METHODS = ("timestep_for", "predict_eps", "save_pretrained")


@dataclass
class FinetuneResult:
    """denoiser: the EMA model (eval mode; what out_dir holds); raw_denoiser: the trained (non-averaged) weights;
    step: optimizer steps done; last: the last step's loss terms (empty when nothing ran)."""

    denoiser: torch.nn.Module
    raw_denoiser: torch.nn.Module
    step: int
    out_dir: Path
    log_path: Path
    last: dict = field(default_factory=dict)


@dataclass
class _Run:
    """What the steps of one run work on."""

    settings: FinetuneSettings
    out_dir: Path
    device: torch.device
    autocast: Optional[torch.dtype]
    backend: Optional[str]
    images: torch.Tensor
    labels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    record: dict  # the settings as checkpoints store and compare them
    model: Optional[torch.nn.Module] = None
    ema: Optional[dict] = None
    optimizer: Optional[torch.optim.Optimizer] = None
    scaler: Optional[torch.amp.GradScaler] = None

    @property
    def log_path(self) -> Path:
        return self.out_dir / "log.csv"


def finetune(denoiser, classifier, dataset, *, out_dir, settings: Optional[FinetuneSettings] = None,
             resume: bool = True, mean=None, std=None, device=None, backend: Optional[str] = None,
             progress: bool = True, **setting_values) -> FinetuneResult:
    """Diffusion calibration of `denoiser` (a DiffusionDenoiser, left unchanged: a copy is trained) against the
    frozen `classifier` on `dataset` (an ImageDataset or (images [N, C, H, W] in [0, 1], labels [N])).

    settings: a FinetuneSettings, and/or its fields as keywords (sigmas=..., steps=..., which replace those of
    `settings`; see FinetuneSettings for each one's meaning and default). mean / std: the classifier's
    normalisation (one value or one per channel); device: default the denoiser's; backend: msrs.ops backend of the
    noise (None: automatic). Writes out_dir (msrs.finetune.checkpoints) and, when resume=True and out_dir holds a
    checkpoint of the same run, continues from it."""
    run = _arguments(denoiser, classifier, dataset, out_dir, _settings(settings, setting_values), mean, std, device,
                     backend)
    _prepare_model(run, denoiser)
    start, elapsed_before = _resume(run, resume)
    with _frozen(classifier):
        last = _train(run, classifier, start, elapsed_before, progress)
    return _finish(run, last)


def _settings(settings: Optional[FinetuneSettings], values: dict) -> FinetuneSettings:
    known = {f.name for f in dataclasses.fields(FinetuneSettings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TypeError(f"finetune() got unexpected keyword arguments {unknown}; the settings are {sorted(known)}")
    if settings is None:
        return FinetuneSettings(**values)
    if not isinstance(settings, FinetuneSettings):
        raise checks.ArgumentTypeError(f"settings: expected a FinetuneSettings, got {type(settings).__name__}")
    return settings.replace(**values)


# ------------------------------------------------------------------------------------------------------- arguments
def _arguments(denoiser, classifier, dataset, out_dir, settings: FinetuneSettings, mean, std, device,
               backend) -> _Run:
    """Checks everything before any work, the cheap checks first; the run's inputs on its device."""
    out_dir = _out_dir(out_dir)
    if backend is not None:
        checks.choice("backend", backend, BACKENDS)
    _check_models(denoiser, classifier)
    device = _device(device, denoiser)
    dtype = resolve_dtype(settings.dtype, device)
    images, labels = _training_data(dataset)
    _check_fit(settings, denoiser, images)
    mean, std = _normalisation(mean, std, images.shape[1], device)
    record = dict(settings.record(dtype), mean=mean.tolist(), std=std.tolist(), num_images=int(images.shape[0]),
                  data_digest=fingerprint.tensor_digest((images, labels)),
                  classifier_digest=fingerprint.tensor_digest(classifier.state_dict().values()),
                  denoiser_digest=fingerprint.tensor_digest(denoiser.state_dict().values()))
    return _Run(settings, out_dir, device, AUTOCAST[dtype], backend, images.to(device), labels.to(device), mean, std,
                record)


def _out_dir(out_dir) -> Path:
    if out_dir is None or (isinstance(out_dir, str) and not out_dir.strip()):
        raise checks.ArgumentValueError("out_dir: expected a folder to write the fine-tuned model to")
    out_dir = Path(os.path.expanduser(str(out_dir)))
    if out_dir.exists() and not out_dir.is_dir():
        raise checks.ArgumentValueError(f"out_dir: {str(out_dir)!r} exists and is not a folder")
    return out_dir


def _check_models(denoiser, classifier) -> None:
    for name, obj, methods in (("denoiser", denoiser, _DENOISER_METHODS), ("classifier", classifier, ())):
        if not isinstance(obj, torch.nn.Module) or any(not hasattr(obj, method) for method in methods):
            need = f" with {', '.join(methods)}" if methods else ""
            raise checks.ArgumentTypeError(f"{name}: expected a torch.nn.Module{need}, got {type(obj).__name__}")


def _device(device, denoiser) -> torch.device:
    """The given device, or the denoiser's."""
    if device is not None:
        return checks.device("device", device)
    first = next(denoiser.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _training_data(dataset) -> tuple:
    """(images float32 [N, C, H, W] in [0, 1], labels int64 [N]) of an ImageDataset or an (images, labels) pair."""
    if hasattr(dataset, "images") and hasattr(dataset, "labels"):
        images, labels = dataset.images, dataset.labels
    elif isinstance(dataset, (tuple, list)) and len(dataset) == 2:
        images, labels = dataset
    else:
        raise checks.ArgumentTypeError("dataset: expected an ImageDataset (with .images and .labels) or a pair "
                                       "(images, labels)")
    images, labels = torch.as_tensor(images), torch.as_tensor(labels)
    if images.dim() != 4 or not images.is_floating_point():
        raise checks.ArgumentValueError(f"dataset: expected float images [N, C, H, W], got {images.dtype} "
                                        f"{tuple(images.shape)}")
    if labels.shape != (images.shape[0],) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise checks.ArgumentValueError(f"dataset: expected integer labels [N] for {images.shape[0]} images, got "
                                        f"{labels.dtype} {tuple(labels.shape)}")
    if images.shape[0] == 0:
        raise checks.ArgumentValueError("dataset: is empty")
    if not bool(torch.isfinite(images).all()) or float(images.min()) < 0 or float(images.max()) > 1:
        raise checks.ArgumentValueError("dataset: expected images with values in [0, 1]")
    if int(labels.min()) < 0:
        raise checks.ArgumentValueError("dataset: expected labels >= 0")
    return images.to(torch.float32).contiguous(), labels.to(torch.int64).contiguous()


def _check_fit(settings: FinetuneSettings, denoiser, images: torch.Tensor) -> None:
    """The settings and the denoiser against the data: batch size, channels, a timestep for every sigma."""
    if settings.batch_size > images.shape[0]:
        raise checks.ArgumentValueError(f"batch_size: {settings.batch_size} is larger than the data set "
                                        f"({images.shape[0]} images)")
    channels = images.shape[1]
    in_channels = getattr(denoiser, "in_channels", channels)
    if in_channels != channels:
        raise checks.ArgumentValueError(f"dataset: images have {channels} channels, the denoiser takes {in_channels}")
    for s in settings.sigmas:
        try:
            denoiser.timestep_for(s)
        except ValueError as e:
            raise checks.ArgumentValueError(f"sigmas: {e}") from None


def _normalisation(mean, std, channels: int, device) -> tuple:
    """The classifier's input normalisation as [C] float32 tensors (default mean 0, std 1)."""
    mean, std = checks.normalization(mean, std, channels)
    if mean is None:
        mean, std = (0.0,), (1.0,)
    return tuple(torch.tensor(list(v) * (channels if len(v) == 1 else 1), dtype=torch.float32, device=device)
                 for v in (mean, std))


# ----------------------------------------------------------------------------------------------------------- model
def _prepare_model(run: _Run, denoiser) -> None:
    """The trained copy (fp32, eval mode: dropout off, the certification-time function), its EMA, AdamW and, for
    fp16, loss scaling."""
    model = run.model = _trainable_copy(denoiser, run.device)
    if run.settings.gradient_checkpointing:
        unets = [m for m in model.modules() if hasattr(m, "enable_gradient_checkpointing")]
        if not unets:
            raise checks.ArgumentValueError("gradient_checkpointing: the denoiser has no module supporting it "
                                            "(expected a diffusers UNet2DModel inside)")
        unets[0].enable_gradient_checkpointing()
    run.ema = ema_.average(model)
    run.optimizer = torch.optim.AdamW(list(model.parameters()), lr=run.settings.lr,
                                      weight_decay=run.settings.weight_decay)
    run.scaler = torch.amp.GradScaler("cuda") if run.autocast == torch.float16 else None


def _trainable_copy(denoiser, device) -> torch.nn.Module:
    model = copy.deepcopy(denoiser).to(device=device, dtype=torch.float32)
    model.eval()  # dropout off: train the certification-time function (msrs.finetune's docstring, point 5)
    params = list(model.parameters())
    if not params:
        raise checks.ArgumentValueError("denoiser: has no parameters to fine-tune")
    for p in params:
        p.requires_grad_(True)
    return model


def _resume(run: _Run, resume: bool) -> tuple:
    """(first step, seconds trained before) after loading out_dir's checkpoint when resuming one; prepares log.csv."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    start, elapsed_before = 0, 0.0
    state = checkpoints.state_dir(run.out_dir)
    if resume and state is not None:
        checkpoints.check_resumable(state, run.out_dir, run.record, run.settings.steps)
        start, elapsed_before = checkpoints.load_state(state, run.model, run.ema, run.optimizer, run.scaler,
                                                       run.device)
    elif state is not None:  # resume=False: start over
        checkpoints.clear_state(run.out_dir)
    checkpoints.prepare_log(run.log_path, checkpoints.log_columns(run.settings.sigmas), start)
    return start, elapsed_before


@contextlib.contextmanager
def _frozen(classifier):
    """The classifier in eval mode without parameter gradients (it only passes gradients through to the
    denoiser); afterwards each parameter's requires_grad and the classifier's mode as they were."""
    flags = [p.requires_grad for p in classifier.parameters()]
    was_training = classifier.training
    classifier.eval()
    for p in classifier.parameters():
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(classifier.parameters(), flags):
            p.requires_grad_(flag)
        classifier.train(was_training)


# ----------------------------------------------------------------------------------------------------------- steps
def _train(run: _Run, classifier, start: int, elapsed_before: float, progress: bool) -> dict:
    """Steps start .. settings.steps - 1: one optimizer step, the EMA update, a log row, a checkpoint every
    checkpoint_every steps and at the end. Returns the last step's terms."""
    import csv

    from tqdm.auto import tqdm

    steps, last, t0 = run.settings.steps, {}, time.perf_counter()
    info = _versions()
    with tqdm(total=steps, initial=start, desc="finetune", unit="step", disable=not progress,
              dynamic_ncols=True) as bar, open(run.log_path, "a", newline="") as log_file:
        writer = csv.DictWriter(log_file, fieldnames=checkpoints.log_columns(run.settings.sigmas))
        for step in range(start, steps):
            terms, norm, lr = _step(run, classifier, step)
            decay = ema_.decay(step, run.settings.ema_decay)
            ema_.update(run.ema, run.model, decay)
            elapsed = elapsed_before + time.perf_counter() - t0
            writer.writerow(checkpoints.log_row(step + 1, terms, norm, lr, decay, elapsed, run.settings.sigmas))
            log_file.flush()
            last = dict(terms, step=step + 1, grad_norm=norm, lr=lr)
            _show(bar, terms)
            if (step + 1) % run.settings.checkpoint_every == 0 or step + 1 == steps:
                _checkpoint(run, step + 1, elapsed, info)
    if start == steps and not (run.out_dir / "finetune.json").is_file():
        _checkpoint(run, start, elapsed_before, info)
    return last


def _step(run: _Run, classifier, step: int) -> tuple:
    """One optimizer step on step `step`'s batch and noise: (terms, gradient norm before clipping, learning rate)."""
    from . import calibration_loss  # the public name, looked up at each step: replacing it changes what trains

    s = run.settings
    index = batch_indices(s.seed, step, s.batch_size, run.images.shape[0]).to(run.device)
    lr = s.lr * min(1.0, (step + 1) / s.warmup_steps) if s.warmup_steps else s.lr
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda_devices):  # the caller's RNG is left as it was
        torch.manual_seed(step_seed(s.seed, step))
        total, terms = calibration_loss(
            run.model, classifier, run.images[index], run.labels[index], index, sigmas=s.sigmas,
            samples_per_image=s.samples_per_image, seed=s.seed, step=step, p0=s.p0, brier_weight=s.brier_weight,
            anti_consistency_weight=s.anti_consistency_weight, mse_weight=s.mse_weight,
            anti_consistency=s.anti_consistency, mean=run.mean, std=run.std, autocast_dtype=run.autocast,
            backend=run.backend)
        norm = _optimizer_step(run, total, terms["total"], step)
    return terms, norm, lr


def _optimizer_step(run: _Run, total: torch.Tensor, value: float, step: int) -> float:
    """Backward (scaled for fp16), gradient clipping at max_grad_norm, the AdamW step; the norm before clipping."""
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is not None:
        run.scaler.scale(total).backward()
        run.scaler.unscale_(run.optimizer)
    else:
        total.backward()
    if not math.isfinite(value):
        raise FloatingPointError(f"finetune: the objective is {value} at step {step + 1}")
    max_norm = run.settings.max_grad_norm
    norm = torch.nn.utils.clip_grad_norm_(list(run.model.parameters()), max_norm if max_norm else math.inf)
    if run.scaler is not None:
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        run.optimizer.step()
    return float(norm)


def _show(bar, terms: dict) -> None:
    bar.set_postfix(total=f"{terms['total']:.4f}", brier=f"{terms['brier']:.4f}",
                    ac=f"{terms['anti_consistency']:.4f}", mse=f"{terms['mse']:.4f}",
                    rec=f"{terms['recoverable']:.2f}", refresh=False)
    bar.update(1)


def _checkpoint(run: _Run, step: int, elapsed: float, info: dict) -> None:
    checkpoints.save_checkpoint(run.out_dir, run.model, run.ema, run.optimizer, run.scaler, step, elapsed,
                                run.record, info)


def _versions() -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(),
            "objective": "msrs.finetune (Brier on recoverable, anti-consistency otherwise, eps-MSE)"}
    from .. import __version__

    info["msrs"] = __version__
    return info


# ---------------------------------------------------------------------------------------------------------- finish
def _finish(run: _Run, last: dict) -> FinetuneResult:
    """The EMA model and the trained weights, both in eval mode without gradients (gradient checkpointing off)."""
    model = run.model
    if run.settings.gradient_checkpointing:
        for m in model.modules():
            if hasattr(m, "disable_gradient_checkpointing"):
                m.disable_gradient_checkpointing()
                break
    ema_model = ema_.averaged_copy(model, run.ema)
    for m in (ema_model, model):
        m.eval()
        for p in m.parameters():
            p.requires_grad_(False)
    return FinetuneResult(ema_model, model, run.settings.steps, run.out_dir, run.log_path, last)


def _signature_with_settings(fn):
    """finetune's signature as help() and editors show it: the settings' fields as keywords with their defaults."""
    signature = inspect.signature(fn)
    params = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default)
               for f in dataclasses.fields(FinetuneSettings)]
    fn.__signature__ = signature.replace(parameters=params)
    return fn


_signature_with_settings(finetune)
