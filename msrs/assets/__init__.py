"""The shipped demo models' files (this folder, wherever msrs is installed): their names and paths.

The one place that knows where the demo models live; msrs.zoo builds and loads them, msrs.denoiser.load_denoiser
and msrs.models.load_classifier resolve the specs "demo" / "demo-finetuned" through it.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["CLASSIFIER_NAME", "DDPM_FINETUNED_NAME", "DDPM_NAME", "directory", "path"]

CLASSIFIER_NAME = "digits_classifier"
DDPM_NAME = "digits_ddpm"
DDPM_FINETUNED_NAME = "digits_ddpm_finetuned"


def directory() -> Path:
    """The folder holding the shipped weights (this package's folder)."""
    return Path(__file__).resolve().parent


def path(name: str) -> Path:
    return directory() / name
