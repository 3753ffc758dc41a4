"""Classifiers built by the model libraries of the ecosystem: timm and Hugging Face transformers (the optional
``models`` extra, ``pip install "msrs[models]"``).

  load_timm(name, weights, ...)   ``timm:NAME``: ``timm.create_model(NAME, pretrained=False)`` (msrs never downloads
                                  weights), the weights file read safely (safetensors, or a state dict through
                                  ``torch.load(weights_only=True)``) and loaded strictly; the head's size is read from
                                  the file. Normalisation, input size and resize filter from timm's pretrained config
                                  of NAME (``NAME.tag`` selects a tag's config).
  load_hf(folder, ...)            ``hf:DIR``: a local transformers image-classification folder
                                  (``AutoModelForImageClassification``; no hub, no network), loaded strictly, wrapped so
                                  that it returns the logits tensor. Normalisation, input size and resize filter from
                                  DIR/preprocessor_config.json, read as JSON (no image-processor class runs).

Both return a :class:`LibraryClassifier`; ``msrs.models.load_classifier`` turns it into a ``LoadedClassifier``.
Neither runs code from the files it reads: custom modelling code of a transformers folder (``auto_map`` in its
config.json) is refused unless the caller passes ``trust_code=True``.
"""
from __future__ import annotations

import importlib
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from . import torchvision_compat

__all__ = ["LibraryClassifier", "MissingExtraError", "load_timm", "load_hf", "import_library", "INSTALL_HINT",
           "PIL_RESAMPLE_NAMES"]

INSTALL_HINT = 'pip install "msrs[models]"'

# PIL.Image.Resampling numbers, as transformers' preprocessor configs store them ("resample"); timm names them.
PIL_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


class MissingExtraError(ImportError):
    """A classifier spec needs a package of the ``models`` extra that is not installed."""


@dataclass
class LibraryClassifier:
    """A model built by timm or transformers, with what its configuration declares about its input."""

    model: nn.Module
    mean: Optional[tuple] = None
    std: Optional[tuple] = None
    normalization_source: Optional[str] = None
    input_size: Optional[tuple] = None  # (H, W)
    interpolation: Optional[str] = None  # a name of PIL_RESAMPLE_NAMES
    files: list = field(default_factory=list)


# ------------------------------------------------------------------------------------------------- optional imports
def import_library(package: str, spec: str):
    """Imports timm or transformers for the classifier ``spec``, or says what to install. (Where torchvision cannot
    load its compiled ops, msrs.torchvision_compat, installed with msrs, lets it import.)"""
    torchvision_compat.install()
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as e:
        if e.name is not None and e.name.split(".")[0] in (package, "torchvision"):
            raise MissingExtraError(f"classifier: {spec!r} needs the {e.name.split('.')[0]!r} package, which is not "
                                    f"installed: {INSTALL_HINT} (or pip install {package})") from None
        raise


# ------------------------------------------------------------------------------------------------------------ timm
def _size_pair(what: str, value) -> tuple:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    try:
        h, w = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected a size (an int or (height, width)), got {value!r}") from None
    if h <= 0 or w <= 0 or (h, w) != tuple(value):
        raise ValueError(f"{what}: expected positive integers, got {value!r}")
    return h, w


def _head_size(state: dict, classifier) -> Optional[int]:
    """Number of classes of a timm state dict: rows of its classifier head's weight (pretrained_cfg "classifier":
    a module name, or a tuple of names for models with several heads)."""
    names = classifier if isinstance(classifier, (tuple, list)) else (classifier,)
    for name in names:
        weight = state.get(f"{name}.weight") if name else None
        if isinstance(weight, torch.Tensor) and weight.ndim >= 1:
            return int(weight.shape[0])
    return None


def load_timm(name: str, weights, *, factory_kwargs: Optional[dict] = None, trust_code: bool = False,
              spec: Optional[str] = None) -> LibraryClassifier:
    """``timm:NAME`` with its weights file: see the module docstring. ``factory_kwargs`` go to
    ``timm.create_model`` (e.g. ``img_size=32`` for a ViT trained at 32x32: the declared input size follows)."""
    from .weights import declared_normalization, existing_file, load_state, read_state_dict

    spec = spec or f"timm:{name}"
    if not name or not name.strip():
        raise ValueError(f"classifier: {spec!r}: expected timm:NAME with a timm model name (e.g. timm:resnet50)")
    timm = import_library("timm", spec)
    if not timm.is_model(name):
        raise ValueError(f"classifier: timm has no model {name!r} (timm {timm.__version__}; timm.list_models() "
                         "lists them)")
    if weights is None:
        raise ValueError(f"weights: {spec!r} needs its weights file (msrs never downloads pretrained weights): "
                         "--weights FILE (.safetensors, or a .pt / .pth / .bin state dict)")
    weights_path = existing_file("weights", weights)
    kwargs = dict(factory_kwargs or {})
    if "pretrained" in kwargs:
        raise ValueError("factory_kwargs: 'pretrained' is not accepted (msrs loads the weights file itself)")
    config = timm.models.get_pretrained_cfg(name)
    state, metadata = read_state_dict(weights_path, trust_code=trust_code)
    if "num_classes" not in kwargs and config is not None:
        classes = _head_size(state, config.classifier)
        if classes is not None:
            kwargs["num_classes"] = classes
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as e:
        raise ValueError(f"classifier: timm.create_model({name!r}, **{kwargs}) failed: {e}") from None
    load_state(model, state, weights_path)

    cfg = getattr(model, "pretrained_cfg", None) or (config.to_dict() if config is not None else {})
    mean, std, source, config_path = declared_normalization(metadata, weights_path)  # the file's own first
    if mean is None and cfg.get("mean") is not None:
        mean, std, source = tuple(cfg["mean"]), tuple(cfg["std"]), f"timm pretrained config of {name!r}"
    input_size, interpolation = _timm_input(name, cfg, kwargs)
    files = [config_path, weights_path] if config_path is not None else [weights_path]
    return LibraryClassifier(model, mean, std, source, input_size, interpolation, files)


def _timm_input(name: str, cfg: dict, kwargs: dict) -> tuple:
    """(input size, interpolation) of a timm model: its constructor's img_size when given (the model is then built
    for it), else its pretrained config's input_size; the config's interpolation."""
    if "img_size" in kwargs:
        input_size = _size_pair("factory_kwargs img_size", kwargs["img_size"])
    elif cfg.get("input_size"):
        input_size = _size_pair(f"timm pretrained config of {name!r}: input_size", tuple(cfg["input_size"])[-2:])
    else:
        input_size = None
    interpolation = cfg.get("interpolation") or None
    if interpolation is not None and interpolation not in PIL_RESAMPLE_NAMES.values():
        raise ValueError(f"classifier: timm pretrained config of {name!r} has interpolation {interpolation!r}, "
                         f"expected one of {sorted(PIL_RESAMPLE_NAMES.values())}")
    return input_size, interpolation


# ---------------------------------------------------------------------------------------------------- transformers
class LogitsOf(nn.Module):
    """A transformers image classifier that returns its logits tensor (its forward returns an output object)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def _read_json(what: str, path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{what}: {str(path)!r} is not readable JSON ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{what}: {str(path)!r} does not hold a JSON object")
    return value


def _preprocessor_input(config: dict, path: Path) -> tuple:
    """(input size (H, W) or None, interpolation name or None, mean or None, std or None) from a transformers image
    processor config. The input size is the image the model receives: the centre crop when the processor crops,
    else the resize target ({"height", "width"}, or {"shortest_edge": S} read as S x S). msrs images are floats in
    [0, 1], so the normalisation is re-expressed for them: the processor rescales pixels x in [0, 255] by
    rescale_factor r (1/255 normally) before (x r - mean) / std, which equals (y - mean / (255 r)) / (std / (255 r))
    for y = x / 255."""
    what = f"classifier: preprocessor config {str(path)!r}"

    def size_of(value, key):
        if value is None:
            return None
        if isinstance(value, dict):
            if "height" in value and "width" in value:
                return _size_pair(f"{what}: {key}", (value["height"], value["width"]))
            if "shortest_edge" in value:
                return _size_pair(f"{what}: {key}", value["shortest_edge"])
            raise ValueError(f"{what}: {key} = {value!r}: expected height and width, or shortest_edge")
        return _size_pair(f"{what}: {key}", value)

    input_size = None
    if config.get("do_center_crop") and config.get("crop_size") is not None:
        input_size = size_of(config["crop_size"], "crop_size")
    elif config.get("do_resize", True):
        input_size = size_of(config.get("size"), "size")
    resample = config.get("resample")
    if resample is not None and resample not in PIL_RESAMPLE_NAMES:
        raise ValueError(f"{what}: resample = {resample!r}, expected one of {sorted(PIL_RESAMPLE_NAMES)}")
    interpolation = PIL_RESAMPLE_NAMES.get(resample)

    scale = 255.0 * float(config.get("rescale_factor", 1 / 255)) if config.get("do_rescale", True) else 255.0
    mean = std = None
    if config.get("do_normalize", True) and config.get("image_mean") is not None:
        mean, std = config["image_mean"], config.get("image_std")
        if std is None:
            raise ValueError(f"{what}: image_mean without image_std")
        mean = [mean] if isinstance(mean, (int, float)) else mean
        std = [std] if isinstance(std, (int, float)) else std
        mean, std = [float(m) / scale for m in mean], [float(s) / scale for s in std]
    elif scale != 1.0:  # no normalisation, but the model sees pixels scaled by 255 r
        mean, std = [0.0], [1.0 / scale]
    return input_size, interpolation, mean, std


def load_hf(folder, *, trust_code: bool = False, spec: Optional[str] = None) -> LibraryClassifier:
    """``hf:DIR``: see the module docstring."""
    from .checks import normalization as check_normalization
    from .weights import SAFE_TORCH_LOAD

    spec = spec or f"hf:{folder}"
    path = Path(str(folder)).expanduser()
    if not str(folder).strip():
        raise ValueError(f"classifier: {spec!r}: expected hf:DIR with a local transformers model folder")
    if not path.is_dir():
        raise FileNotFoundError(f"classifier: {spec!r}: {str(path)!r} is not a folder (hf:DIR takes a local "
                                "transformers model folder; msrs does not download from the hub)")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ValueError(f"classifier: {str(path)!r} has no config.json (expected a folder written by "
                         "save_pretrained of a transformers image-classification model)")
    config = _read_json("classifier", config_path)
    if config.get("auto_map") and not trust_code:
        raise ValueError(f"classifier: {str(path)!r} names its own modelling code (auto_map in config.json), which "
                         "transformers would import and run: msrs loads it only with trust_code=True "
                         "(msrs certify --trust-code), for a folder whose source you trust")
    preprocessor_path = path / "preprocessor_config.json"
    input_size = interpolation = mean = std = None
    if preprocessor_path.is_file():
        input_size, interpolation, mean, std = _preprocessor_input(
            _read_json("classifier", preprocessor_path), preprocessor_path)
        mean, std = check_normalization(mean, std)
    if input_size is None and config.get("image_size") is not None:
        input_size = _size_pair(f"classifier: {str(config_path)!r}: image_size", config["image_size"])

    transformers = import_library("transformers", spec)
    options = dict(local_files_only=True, trust_remote_code=bool(trust_code), output_loading_info=True,
                   weights_only=True)
    if not SAFE_TORCH_LOAD and not trust_code:
        options["use_safetensors"] = True  # torch.load(weights_only=True) is not safe on this torch (models.py)
    try:
        model, info = transformers.AutoModelForImageClassification.from_pretrained(str(path), **options)
    except pickle.UnpicklingError as e:
        raise ValueError(f"classifier: transformers cannot load {str(path)!r}: its pickled weights hold objects "
                         "other than tensors and plain containers, which msrs never unpickles (they could run code) "
                         f"({str(e).splitlines()[0] if str(e) else ''}); save the folder with safetensors "
                         "(save_pretrained's default) where it can be trusted") from None
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ValueError(f"classifier: transformers cannot load {str(path)!r} as an image classifier "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    problems = {key: sorted(info.get(key) or []) for key in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    problems = {key: [str(k) for k in value] for key, value in problems.items() if value}
    if problems:
        shown = "; ".join(f"{key.replace('_', ' ')}: {', '.join(value[:10])}" for key, value in problems.items())
        raise ValueError(f"classifier: the weights in {str(path)!r} do not match its config ({shown})")
    source = str(preprocessor_path) if mean is not None else None
    return LibraryClassifier(LogitsOf(model.eval()), tuple(mean) if mean is not None else None,
                             tuple(std) if std is not None else None, source, input_size, interpolation, [path])
