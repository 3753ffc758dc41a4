"""What a fine-tuning run writes to out_dir, how it is read back on resume, and its CSV log.

  out_dir/unet/, out_dir/scheduler/   the EMA model, loadable with DiffusionDenoiser.from_pretrained(out_dir)
  out_dir/finetune.json               the settings, step, wall time, versions
  out_dir/state/                      raw.safetensors (trained weights), ema.safetensors, optimizer.pt (AdamW state,
                                      torch.load(weights_only=True)), scaler.pt (fp16 only), trainer.json (version,
                                      step, elapsed seconds, settings); written aside and swapped in whole
  out_dir/log.csv                     one row per step (rows after the last checkpoint are dropped on resume)

A run resumes only with the settings it was started with (those in settings.RESUMABLE aside), against the same data
and models (compared by msrs.fingerprint digests), and only from a training state of this STATE_VERSION.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..checks import ArgumentValueError
from . import ema as ema_
from .settings import RESUMABLE

__all__ = ["STATE_VERSION", "check_resumable", "clear_state", "load_state", "log_columns", "log_row",
           "prepare_log", "save_checkpoint", "state_dir"]

# 2: data and model digests are msrs.fingerprint.tensor_digest (64 hex digits); version 1 had 16-digit digests of
# another byte layout, so a version-1 state can never match and is refused with its own message.
STATE_VERSION = 2


# ------------------------------------------------------------------------------------------------------------ log.csv
def log_columns(sigmas: Sequence[float]) -> list:
    """The columns of out_dir/log.csv for these sigmas."""
    return (["step", "total", "brier", "anti_consistency", "mse", "recoverable"]
            + [f"recoverable_sigma_{float(s):g}" for s in sorted(float(s) for s in sigmas)]
            + ["sample_accuracy", "grad_norm", "lr", "ema_decay", "wall_time"])


def log_row(step: int, terms: dict, grad_norm: float, lr: float, decay: float, elapsed: float,
            sigmas: Sequence[float]) -> dict:
    """One row of log.csv: the step's loss terms (6 significant digits), its schedule and the wall time."""
    row = {"step": step, "total": terms["total"], "brier": terms["brier"],
           "anti_consistency": terms["anti_consistency"], "mse": terms["mse"], "recoverable": terms["recoverable"],
           "sample_accuracy": terms["sample_accuracy"], "grad_norm": grad_norm, "lr": lr, "ema_decay": decay,
           "wall_time": round(elapsed, 3)}
    for s, fraction in zip(sigmas, terms["recoverable_sigma"]):
        row[f"recoverable_sigma_{s:g}"] = fraction
    return {k: (f"{v:.6g}" if isinstance(v, float) and k != "wall_time" else v) for k, v in row.items()}


def prepare_log(path: Path, columns: list, keep_through: int) -> None:
    """Create log.csv with its header, or keep the rows of steps <= keep_through of an existing one."""
    rows = []
    if keep_through > 0 and path.is_file():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != columns:
                raise ArgumentValueError(f"resume: {path} has columns {reader.fieldnames}, expected {columns}")
            rows = [r for r in reader if int(r["step"]) <= keep_through]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


# ------------------------------------------------------------------------------------------------------------ writing
def save_checkpoint(out_dir: Path, model, ema: dict, optimizer, scaler, step: int, elapsed: float, record: dict,
                    info: dict) -> None:
    """The EMA model and finetune.json first, then the training state (whose trainer.json marks it complete)."""
    _save_model(out_dir, ema_.averaged_copy(model, ema))
    summary = {"step": step, "wall_time_seconds": round(elapsed, 3), "settings": record, **info}
    (out_dir / "finetune.json").write_text(json.dumps(summary, indent=2) + "\n")
    _save_state(out_dir, model, ema, optimizer, scaler, step, elapsed, record)


def _save_model(out_dir: Path, ema_model) -> None:
    """The model in DiffusionDenoiser.save_pretrained's layout, each folder swapped in whole."""
    tmp = out_dir / ".model.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    ema_model.save_pretrained(tmp)
    for child in sorted(tmp.iterdir()):
        if child.is_dir():
            _replace_dir(child, out_dir / child.name)
        else:
            os.replace(child, out_dir / child.name)
    shutil.rmtree(tmp, ignore_errors=True)


def _save_state(out_dir: Path, model, ema: dict, optimizer, scaler, step: int, elapsed: float,
                record: dict) -> None:
    from safetensors.torch import save_file

    new = out_dir / "state.tmp"
    if new.exists():
        shutil.rmtree(new)
    new.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(new / "raw.safetensors"))
    save_file({k: v.detach().contiguous().cpu() for k, v in ema.items()}, str(new / "ema.safetensors"))
    torch.save(optimizer.state_dict(), new / "optimizer.pt")
    if scaler is not None:
        torch.save(scaler.state_dict(), new / "scaler.pt")
    trainer = {"version": STATE_VERSION, "step": step, "elapsed": elapsed, "settings": record}
    (new / "trainer.json").write_text(json.dumps(trainer, indent=2) + "\n")  # last: marks a complete state
    _replace_dir(new, out_dir / "state")


def _replace_dir(new: Path, target: Path) -> None:
    """Move folder `new` to `target`, replacing it (the old one is renamed aside first, then removed)."""
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    if old.exists():
        shutil.rmtree(old)


# ------------------------------------------------------------------------------------------------------------ reading
def state_dir(out_dir: Path) -> Optional[Path]:
    """The last complete training state (state/, or state.old/ if a crash hit between the two renames)."""
    for name in ("state", "state.old"):
        candidate = out_dir / name
        if (candidate / "trainer.json").is_file():
            return candidate
    return None


def clear_state(out_dir: Path) -> None:
    """Forget a run's training state (resume=False: start over)."""
    for name in ("state", "state.old", "state.tmp"):
        shutil.rmtree(out_dir / name, ignore_errors=True)


def check_resumable(state: Path, out_dir: Path, record: dict, steps: int) -> None:
    """Refuses a training state this run cannot continue: another state version, other settings (but those in
    RESUMABLE), other data or models, or more steps done than asked for."""
    saved = json.loads((state / "trainer.json").read_text())
    version = saved.get("version")
    if version != STATE_VERSION:
        why = ("an earlier msrs (version 1: its data and model digests are computed differently and can never "
               "match)" if version == 1 else f"another msrs (training-state version {version!r})")
        raise ArgumentValueError(f"resume: {state} was written by {why}; this msrs resumes version {STATE_VERSION} "
                                 f"only. Pass resume=False (--no-resume) to start over in {out_dir}, or use another "
                                 f"out_dir")
    differences = _differences(saved.get("settings", {}), record)
    if differences:
        raise ArgumentValueError(f"resume: {out_dir} holds a fine-tuning run with other settings "
                                 f"({'; '.join(differences)}); use the same settings, another out_dir, or "
                                 "resume=False (--no-resume) to start over")
    if int(saved["step"]) > steps:
        raise ArgumentValueError(f"steps: {out_dir} already holds {saved['step']} steps, more than steps={steps}")


def _differences(saved: dict, current: dict) -> list:
    keys = sorted(set(saved) | set(current))
    return [f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in keys
            if k not in RESUMABLE and saved.get(k) != current.get(k)]


def load_state(state: Path, model, ema: dict, optimizer, scaler, device) -> tuple:
    """Loads a training state into the run's model, EMA, optimizer and scaler; (step, elapsed seconds)."""
    from safetensors.torch import load_file

    trainer = json.loads((state / "trainer.json").read_text())
    model.load_state_dict(load_file(str(state / "raw.safetensors"), device=str(device)), strict=True)
    for name, value in load_file(str(state / "ema.safetensors"), device=str(device)).items():
        if name not in ema or ema[name].shape != value.shape:
            raise ArgumentValueError(f"resume: {state} holds EMA weights for another model ({name!r})")
        ema[name].copy_(value)
    optimizer.load_state_dict(torch.load(state / "optimizer.pt", map_location=device, weights_only=True))
    if scaler is not None and (state / "scaler.pt").is_file():
        scaler.load_state_dict(torch.load(state / "scaler.pt", weights_only=True))
    return int(trainer["step"]), float(trainer.get("elapsed", 0.0))
