"""The shipped demo models: architectures (factories) and loaders for the weights in msrs/assets.

  digits_classifier()                       the small CNN classifier of 8x8 digits (architecture only)
  load_demo_classifier(device)              -> (classifier in eval mode, mean, std, num_classes)
  load_demo_denoiser(finetuned, device)     -> DiffusionDenoiser (the off-the-shelf digits DDPM, or its
                                               diffusion-calibrated copy)

The classifier takes images already normalised by (x - mean) / std (per channel, values in its JSON config); the
certification engine fuses that normalisation into msrs.ops.finalize_denoised. The weights were made by
scripts/train_classifier.py and scripts/train_ddpm.py (their JSON/log files record the command and seed).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "CLASSIFIER_NAME",
    "DDPM_NAME",
    "DDPM_FINETUNED_NAME",
    "asset_path",
    "assets_dir",
    "digits_classifier",
    "digits_dataset",
    "digits_split",
    "load_demo_classifier",
    "load_demo_classifier_config",
    "load_demo_denoiser",
    "train_positions",
]

from .assets import CLASSIFIER_NAME, DDPM_FINETUNED_NAME, DDPM_NAME  # re-exported: the demo models' names
from .assets import directory as assets_dir
from .assets import path as asset_path

ARCHITECTURES = {}


def _register(fn):
    ARCHITECTURES[fn.__name__] = fn
    return fn


@_register
def digits_classifier(num_classes: int = 10, in_channels: int = 1, width: int = 32) -> nn.Sequential:
    """A small CNN for 8x8 images (about 99k parameters at width 32): two 3x3 conv pairs with 2x2 max pooling
    (8 -> 4 -> 2), then a two-layer MLP head. No batch norm, so eval mode only switches dropout off."""
    w = width
    return nn.Sequential(
        nn.Conv2d(in_channels, w, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(w, w, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(2 * w, 2 * w, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * w * 2 * 2, 4 * w),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(4 * w, num_classes),
    )


def _missing(path: Path, what: str, how: str) -> FileNotFoundError:
    return FileNotFoundError(f"{what} not found at {path}; {how}")


def load_demo_classifier_config() -> dict:
    """The classifier's JSON config: architecture, mean, std, num_classes, test accuracy, training command, seed."""
    path = asset_path(CLASSIFIER_NAME + ".json")
    if not path.is_file():
        raise _missing(path, "the demo classifier config", "run scripts/train_classifier.py to make it")
    return json.loads(path.read_text())


def load_demo_classifier(device: torch.device | str = "cpu"):
    """(classifier in eval mode on `device`, mean, std, num_classes). mean and std are tuples, one value per
    channel, to apply to images in [0, 1] before the classifier: (x - mean) / std."""
    from safetensors.torch import load_file

    config = load_demo_classifier_config()
    weights = asset_path(CLASSIFIER_NAME + ".safetensors")
    if not weights.is_file():
        raise _missing(weights, "the demo classifier weights", "run scripts/train_classifier.py to make them")
    arch = config["architecture"]
    if arch not in ARCHITECTURES:
        raise ValueError(f"architecture: unknown {arch!r} in {CLASSIFIER_NAME}.json; known: {sorted(ARCHITECTURES)}")
    model = ARCHITECTURES[arch](**config.get("architecture_kwargs", {}))
    model.load_state_dict(load_file(str(weights)))
    model.to(device).eval()
    return model, tuple(config["mean"]), tuple(config["std"]), int(config["num_classes"])


def load_demo_denoiser(finetuned: bool = False, device: torch.device | str = "cpu"):
    """The digits DiffusionDenoiser (eval mode, on `device`): the off-the-shelf DDPM (msrs/assets/digits_ddpm), or
    with finetuned=True its diffusion-calibrated copy (msrs/assets/digits_ddpm_finetuned); msrs.denoiser.load_denoiser
    resolves them."""
    from .denoiser import load_denoiser

    return load_denoiser("demo-finetuned" if finetuned else "demo", device=device)


# The validation split: held out of the training digits for every choice made on the demo models (the fine-tuning
# recipe, the sigmas, the demo's defaults), so that the test digits the demo reports are never used to choose.
VALIDATION_EVERY = 5
SPLITS = ("train", "fit", "validation", "test")


def train_positions(part: str) -> torch.Tensor:
    """Positions j (0-based) inside the digits train split of its "fit" part (j % 5 != 0, 1149 images) or its
    "validation" part (j % 5 == 0, 288 images): a fixed 20% of the train split by index, no randomness."""
    if part not in ("fit", "validation"):
        raise ValueError(f"part: expected 'fit' or 'validation', got {part!r}")
    positions = torch.arange(1437)
    keep = positions % VALIDATION_EVERY == 0
    return positions[keep if part == "validation" else ~keep]


def _full_split(split: str):
    try:
        from .data import digits  # noqa: WPS433

        ds = digits(split)
        return torch.as_tensor(ds.images, dtype=torch.float32), torch.as_tensor(ds.labels, dtype=torch.int64)
    except (ImportError, AttributeError):
        pass
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    test = torch.arange(images.shape[0]) % 5 == 0
    keep = test if split == "test" else ~test
    return images[keep].contiguous(), labels[keep].contiguous()


def digits_split(split: str):
    """(images float32 [N, 1, 8, 8] in [0, 1], labels int64 [N]) of scikit-learn's digits, split as in DESIGN.md
    (test = indices i with i % 5 == 0, train = the rest), the train split further cut by position j inside it into
    "fit" (j % 5 != 0, 1149 images: what the shipped classifier and DDPMs are trained on) and "validation"
    (j % 5 == 0, 288 images: what choices are made on). Uses msrs.data.digits when it exists, else scikit-learn."""
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
    images, labels = _full_split("test" if split == "test" else "train")
    if split in ("fit", "validation"):
        keep = train_positions(split)
        if images.shape[0] != 1437:
            raise RuntimeError(f"the digits train split has {images.shape[0]} images, expected 1437")
        images, labels = images[keep].contiguous(), labels[keep].contiguous()
    return images, labels


def digits_dataset(split: str):
    """digits_split(split) as an msrs.data.ImageDataset (for msrs.finetune.finetune and msrs.runner)."""
    from .data import ImageDataset

    images, labels = digits_split(split)
    return ImageDataset(images=images, labels=labels, num_classes=10, name=f"digits:{split}",
                        class_names=[str(c) for c in range(10)])
