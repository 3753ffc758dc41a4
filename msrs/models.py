"""Loading the base classifier to be smoothed.

``load_classifier(spec, weights=None, *, device, mean, std, trust_code=False)`` accepts
  * ``module:factory`` (``package.module:function`` or ``path/to/file.py:function``): msrs imports that Python code
    and calls the factory (with no arguments, or ``factory_kwargs``), which must return a ``torch.nn.Module``;
    ``weights`` (``.safetensors``, or a ``.pt`` / ``.pth`` / ``.bin`` / ``.ckpt`` state dict read with
    ``torch.load(weights_only=True)``) are then loaded strictly. The factory is code and runs: name only code
    you trust;
  * a TorchScript archive (``torch.jit.save``; any suffix but .pt2), loaded with ``torch.jit.load``. A TorchScript
    archive is a program: its code is compiled and run (``__setstate__`` while loading, ``forward`` later). Load
    only archives whose source you trust;
  * a torch.export archive (``.pt2``, ``torch.export.save``), only with ``trust_code=True`` (``--trust-code``):
    torch's loader runs code from the file (see ``_refuse_untrusted_export``). Export it with a dynamic batch
    dimension (``dynamic_shapes=({0: torch.export.Dim("batch")},)``): the engine feeds batches of varying size. A
    program exported in training mode has its BatchNorm / Dropout switched to inference (an exported module cannot
    be put in eval mode otherwise);
  * ``timm:NAME`` with ``weights`` and ``hf:DIR`` (a local transformers image-classification folder): the optional
    ``models`` extra (msrs.model_libraries), with the normalisation, input size and resize filter their
    configurations declare;
  * ``demo``: the digits classifier shipped in msrs/assets (msrs.zoo), with its normalisation.

No data file runs code: weights are safetensors or ``torch.load(weights_only=True)`` (never the unrestricted
unpickler; refused on torch < 2.10, whose weights_only unpickler had code-execution bugs, unless trust_code=True),
JSON configs are read as JSON. What needs trust (a ``.pt2``, a transformers folder with its own modelling code) is
refused before anything is read from it unless ``trust_code=True``.

The model is put in eval mode on ``device``.  The classifier's input normalisation (``(x - mean) / std``, applied
by the engine after the noise, or after the denoiser) is returned beside it: given explicitly (the command
line's ``--mean`` / ``--std``), or else read from the safetensors metadata keys ``mean`` / ``std``
(comma-separated floats), or from a JSON file beside the weights with the same stem holding "mean" and "std"
(how msrs/assets ships its classifier), or from a timm / transformers model's configuration.  So is the input size
the classifier declares (``input_size``, (H, W), and ``interpolation``): the engine resizes the (denoised) image
to it before the normalisation.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from . import checks
from .weights import STATE_DICT_SUFFIXES, declared_normalization, existing_file, load_state, read_state_dict

__all__ = ["CLASSIFIER_SPECS", "LoadedClassifier", "RESIZE_MODES", "load_classifier"]

PathLike = Union[str, os.PathLike]

CLASSIFIER_SPECS = ("a TorchScript file, a torch.export .pt2 file (with --trust-code), module:factory "
                    "(package.module:function or file.py:function) together with --weights (.safetensors / .pt / "
                    ".pth state dict), timm:NAME with --weights, hf:DIR (a local transformers folder), or demo")

# The torch.nn.functional.interpolate mode (and antialias flag) for each resize filter a classifier may declare
# (LoadedClassifier.interpolation, PIL's filter names, as timm and transformers give them). PIL's bilinear / bicubic
# filters are antialiased when they shrink; torch has no Lanczos or Hamming filter (the nearest in kind is used)
# and "box" is an area average.
RESIZE_MODES = {
    "nearest": ("nearest", False),
    "bilinear": ("bilinear", True),
    "bicubic": ("bicubic", True),
    "lanczos": ("bicubic", True),
    "hamming": ("bilinear", True),
    "box": ("area", False),
}


@dataclass
class LoadedClassifier:
    """A classifier ready for the engine: ``model`` (eval mode, on ``device``), its normalisation (``mean``,
    ``std``: tuples of floats or None), how it was loaded (``kind``: "torchscript" | "export" | "factory" |
    "timm" | "hf" | "module"), the files it came from (``files``, for a run's fingerprint) and where the
    normalisation came from.

    ``input_size``: the (height, width) the classifier expects, or None (it takes the data's size as it is). The
    engine resizes each (denoised) image in [0, 1] to it, before the normalisation, with ``interpolation``: a key
    of RESIZE_MODES (PIL's filter names; None: "bilinear"), whose value is the torch interpolate mode and antialias
    flag (``resize_mode``)."""

    model: torch.nn.Module
    mean: Optional[tuple] = None
    std: Optional[tuple] = None
    kind: str = ""
    spec: str = ""
    files: list = field(default_factory=list)
    normalization_source: Optional[str] = None  # "arguments", "safetensors metadata", a config's description / path
    input_size: Optional[tuple] = None  # (H, W) ints
    interpolation: Optional[str] = None  # a key of RESIZE_MODES
    input_size_source: Optional[str] = None  # "arguments" or the configuration it was read from

    @property
    def resize_mode(self) -> tuple:
        """(mode, antialias) for torch.nn.functional.interpolate(x, size=input_size, mode=mode, antialias=...)
        (align_corners=False for the linear and cubic modes)."""
        return RESIZE_MODES[self.interpolation or "bilinear"]

    def __iter__(self):  # model, mean, std = load_classifier(...)
        return iter((self.model, self.mean, self.std))


def _looks_like_factory(spec: str) -> bool:
    if ":" not in spec:
        return False
    module, _, attr = spec.rpartition(":")
    if not module or not attr or not all(part.isidentifier() for part in attr.split(".")):
        return False
    if module.endswith(".py"):
        return True
    return all(part.isidentifier() for part in module.split("."))


def _import_factory(spec: str):
    module_name, _, attr = spec.rpartition(":")
    if module_name.endswith(".py"):
        path = existing_file("classifier", module_name)
        name = f"_msrs_factory_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"classifier: cannot import {str(path)!r} as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception:
            sys.modules.pop(name, None)
            raise
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            raise ValueError(f"classifier: cannot import module {module_name!r} of {spec!r} ({e}); "
                             f"expected {CLASSIFIER_SPECS}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"classifier: factory {attr!r} not found in module {module_name!r} (spec {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"classifier: {spec!r} is not callable")
    return obj


_TRAIN_ARG = {  # op name -> position of its `train` / `training` flag
    "aten.batch_norm.default": 5,
    "aten.dropout.default": 2,
    "aten.feature_dropout.default": 2,
    "aten.alpha_dropout.default": 2,
    "aten.feature_alpha_dropout.default": 2,
    "aten.instance_norm.default": 5,
}
_TRAINING_ONLY = ("aten._native_batch_norm_legit_functional", "aten.native_dropout",
                  "aten._native_batch_norm_legit.default", "aten.cudnn_batch_norm", "aten.bernoulli")


def _exported_to_eval(graph_module, path: Path) -> None:
    """Switches training-mode BatchNorm / Dropout calls of an exported graph to inference."""
    changed = False
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = str(node.target)
        position = _TRAIN_ARG.get(name)
        if position is not None and len(node.args) > position and node.args[position] is True:
            args = list(node.args)
            args[position] = False
            node.args = tuple(args)
            changed = True
        elif name.startswith(_TRAINING_ONLY):
            raise ValueError(f"classifier: {str(path)!r} was exported in training mode ({name}); export it after "
                             "model.eval()")
    if changed:
        graph_module.recompile()


def _allow_eval(module) -> None:
    """An exported module refuses .eval() / .train() (its mode is fixed when exported). Once its graph is in
    inference mode, let .eval() (which callers such as the engine use) succeed; .train() still refuses."""
    import types

    def _train(self, mode: bool = True):
        if mode:
            raise NotImplementedError("an exported (.pt2) classifier cannot be put in training mode")
        for sub in self.modules():
            sub.training = False
        return self

    def _eval(self):
        return _train(self, False)

    module.train = types.MethodType(_train, module)
    module.eval = types.MethodType(_eval, module)


def _check_dynamic_batch(program, path: Path) -> None:
    try:
        names = set(program.graph_signature.user_inputs)
        for node in program.graph.nodes:
            if node.op == "placeholder" and node.name in names:
                value = node.meta.get("val")
                shape = getattr(value, "shape", None)
                if shape is not None and len(shape) >= 1 and isinstance(shape[0], int):
                    raise ValueError(
                        f"classifier: {str(path)!r} was exported with a fixed batch size of {shape[0]}; the engine "
                        "feeds batches of varying size: export with dynamic_shapes=({0: torch.export.Dim('batch')},)")
                return
    except ValueError:
        raise
    except Exception:  # noqa: BLE001 - metadata layout differs between torch versions: skip the check
        return


def _refuse_untrusted_export(path: Path) -> None:
    """A .pt2 cannot be loaded without trusting it: torch.export.load (torch 2.13, torch/export/__init__.py and
    torch/export/pt2_archive/_package.py) runs code from the archive in at least five ways, so no safe subset of it
    can be selected by msrs:
      * the sample inputs (and a legacy archive's weights and constants) go through
        torch._export.serde.serialize.deserialize_torch_artifact, which retries torch.load with weights_only=False
        when the safe load fails: the payload runs, and only then does the load fail;
      * weights and constants marked "use_pickle" in the archive's JSON are read with torch.load(weights_only=False),
        opaque constants with pickle.loads;
      * every symbolic shape expression ("expr_str") is parsed with sympy.sympify, which evaluates Python;
      * ExportedProgram.module() compiles the archive's "guards_code" strings into Python that runs on every call;
      * node targets resolve to any attribute under torch / operator / math (torch.os.system included), and an
        AOTInductor archive makes torch load the shared library it carries.
    So msrs refuses a .pt2 before reading it, unless the caller trusts it."""
    raise ValueError(
        f"classifier: {str(path)!r} is a torch.export archive, and torch.export.load runs code from the file while "
        "loading it (it unpickles parts of the archive without restriction and evaluates expressions stored in "
        "it), so a crafted .pt2 runs arbitrary code. Load it only if you trust its source: trust_code=True "
        "(msrs certify --trust-code). Without trusting a file: save the weights as .safetensors and give the "
        "architecture as module:factory with --weights")


def _load_export(path: Path, device: torch.device) -> torch.nn.Module:
    try:
        program = torch.export.load(str(path))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"classifier: cannot load {str(path)!r} with torch.export.load "
                         f"({type(e).__name__}: {e})") from None
    _check_dynamic_batch(program, path)
    model = program.module()
    _exported_to_eval(model, path)
    _allow_eval(model)
    return model.to(device)


def _load_torchscript(path: Path, device: torch.device) -> torch.nn.Module:
    """torch.jit.load: compiles and runs the archive's TorchScript code (a program, trusted like module:factory)."""
    try:
        with warnings.catch_warnings():  # torch >= 2.10 deprecates TorchScript; loading it still works
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(str(path), map_location=device)
    except Exception as e:  # noqa: BLE001
        hint = ""
        if path.suffix.lower() in STATE_DICT_SUFFIXES:
            hint = " (if it is a state dict, give the architecture as module:factory and this file as --weights)"
        raise ValueError(f"classifier: {str(path)!r} is not a TorchScript archive{hint}: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return model.eval()


def _load_saved_model(path: Path, weights, device: torch.device, trust_code: bool) -> tuple:
    """(model, kind) for a complete saved model file: TorchScript or (trusted) torch.export."""
    if weights is not None:
        raise ValueError(f"weights: {str(path)!r} is a complete saved model; --weights only applies to a "
                         "module:factory or timm:NAME classifier spec")
    if path.suffix.lower() == ".safetensors":
        raise ValueError(f"classifier: {str(path)!r} holds weights only; give the architecture as "
                         f"module:factory and this file as --weights")
    if path.suffix.lower() == ".pt2":
        if not trust_code:
            _refuse_untrusted_export(path)
        return _load_export(path, device), "export"
    return _load_torchscript(path, device), "torchscript"


def _load_factory(spec: str, weights, factory_kwargs: Optional[dict], trust_code: bool,
                  want_normalization: bool) -> tuple:
    """(model, files, mean, std, normalisation source) of a module:factory spec; with want_normalization, the
    normalisation the weights file declares (safetensors metadata, or a JSON beside it), else None."""
    factory = _import_factory(spec)
    try:
        model = factory(**(factory_kwargs or {}))
    except TypeError as e:
        raise ValueError(f"classifier: calling factory {spec!r} failed: {e}") from None
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"classifier: factory {spec!r} returned {type(model).__name__}, expected a torch.nn.Module")
    files: list = []
    mean = std = source = None
    if weights is not None:
        weights_path = existing_file("weights", weights)
        state, metadata = read_state_dict(weights_path, trust_code=trust_code)
        load_state(model, state, weights_path)
        if want_normalization:
            mean, std, source, config_path = declared_normalization(metadata, weights_path)
            if config_path is not None:
                files.append(config_path)
        files.append(weights_path)
    module_file = spec.rpartition(":")[0]
    if module_file.endswith(".py"):
        files.insert(0, Path(module_file).expanduser())
    return model, files, mean, std, source


def _check_input_size(input_size, interpolation) -> tuple:
    if input_size is not None:
        if isinstance(input_size, int) and not isinstance(input_size, bool):
            input_size = (input_size, input_size)
        try:
            values = tuple(input_size)
            ok = len(values) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"input_size: expected a positive int or (height, width) of positive ints, got "
                             f"{input_size!r}")
        input_size = values
    if interpolation is not None and interpolation not in RESIZE_MODES:
        raise ValueError(f"interpolation: expected one of {sorted(RESIZE_MODES)}, got {interpolation!r}")
    return input_size, interpolation


def _load_library_model(spec: str, weights, factory_kwargs: Optional[dict], trust_code: bool):
    from . import model_libraries

    prefix, _, rest = spec.partition(":")
    if prefix == "timm":
        return model_libraries.load_timm(rest, weights, factory_kwargs=factory_kwargs, trust_code=trust_code,
                                         spec=spec)
    if weights is not None:
        raise ValueError(f"weights: {spec!r} is a transformers folder that holds its weights; --weights only "
                         "applies to a module:factory or timm:NAME classifier spec")
    if factory_kwargs:
        raise ValueError("factory_kwargs: not used by an hf:DIR classifier")
    return model_libraries.load_hf(rest, trust_code=trust_code, spec=spec)


def load_classifier(
    spec: Union[str, torch.nn.Module],
    weights: Optional[PathLike] = None,
    device: Union[str, torch.device, None] = "cpu",
    *,
    mean: Optional[Sequence[float]] = None,
    std: Optional[Sequence[float]] = None,
    factory_kwargs: Optional[dict] = None,
    trust_code: bool = False,
    input_size=None,
    interpolation: Optional[str] = None,
) -> LoadedClassifier:
    """Loads a classifier (see the module docstring for the accepted specs) in eval mode on ``device``.

    ``trust_code=True`` (``--trust-code``) allows formats whose loading runs code from the file (a torch.export
    .pt2, a transformers folder with its own modelling code, a pickle state dict on torch < 2.10): only for files
    whose source you trust. ``input_size`` ((H, W) or an int) and ``interpolation`` (a key of RESIZE_MODES)
    override what a timm / transformers configuration declares, or declare it for any other classifier."""
    device = torch.device(device if device is not None else "cpu")
    mean, std = checks.normalization(mean, std)
    input_size, interpolation = _check_input_size(input_size, interpolation)
    source = None if mean is None else "arguments"
    size_source = None if input_size is None else "arguments"
    if isinstance(spec, torch.nn.Module):
        if weights is not None:
            raise ValueError("weights: only for a module:factory classifier spec")
        return LoadedClassifier(spec.to(device).eval(), mean, std, "module", type(spec).__name__, [], source,
                                input_size, interpolation, size_source)
    if not isinstance(spec, (str, os.PathLike)) or not str(spec).strip():
        raise ValueError(f"classifier: expected {CLASSIFIER_SPECS}; got {spec!r}")
    spec = str(spec)
    if spec == "demo" and not Path(spec).exists():  # the digits classifier shipped in msrs/assets
        from . import assets

        if weights is not None:
            raise ValueError("weights: the demo classifier comes with its own weights")
        spec, weights = f"msrs.zoo:{assets.CLASSIFIER_NAME}", assets.path(assets.CLASSIFIER_NAME + ".safetensors")

    if spec.startswith(("timm:", "hf:")) and not Path(spec).exists():
        library = _load_library_model(spec, weights, factory_kwargs, trust_code)
        if mean is None and library.mean is not None:
            mean, std = checks.normalization(library.mean, library.std)
            source = library.normalization_source
        if input_size is None and library.input_size is not None:
            input_size, size_source = library.input_size, f"{spec.partition(':')[0]} configuration"
        interpolation = interpolation or library.interpolation
        model = library.model.to(device).eval()
        return LoadedClassifier(model, mean, std, spec.partition(":")[0], spec, library.files, source,
                                input_size, interpolation, size_source)

    path = Path(spec).expanduser()
    if path.exists() or not _looks_like_factory(spec):
        path = existing_file("classifier", path)
        model, kind = _load_saved_model(path, weights, device, trust_code)
        return LoadedClassifier(model, mean, std, kind, spec, [path], source, input_size, interpolation,
                                size_source)

    model, files, declared_mean, declared_std, declared_source = _load_factory(spec, weights, factory_kwargs,
                                                                               trust_code, mean is None)
    if declared_mean is not None:
        mean, std, source = declared_mean, declared_std, declared_source
    model = model.to(device).eval()
    return LoadedClassifier(model, mean, std, "factory", spec, files, source, input_size, interpolation, size_source)
