"""The `msrs finetune` command.

  add_arguments(parser)   its options: the models, the data, every FinetuneSettings field (generated from the
                          settings, so the defaults are written once) and the run's own options
  run(args)               checks every argument, and that --out is not and does not contain an input, before
                          anything is loaded; then loads the models and the data, fine-tunes, prints a summary
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional

from .. import checks
from .settings import add_options, from_options, resolve_dtype
from .trainer import BACKENDS, finetune

__all__ = ["add_arguments", "run"]



def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `msrs finetune`."""
    groups = {name: p.add_argument_group(name) for name in ("models", "data", "objective", "optimisation", "run")}
    models = groups["models"]
    models.add_argument("--denoiser", default=None, metavar="SPEC",
                        help="denoiser to fine-tune, as `msrs certify` takes it: openai:CHECKPOINT.pt, a diffusers "
                             "folder (or a DiffusionDenoiser.save_pretrained one), a hub id, or demo / demo-finetuned; "
                             "default: demo (the shipped digits DDPM)")
    models.add_argument("--denoiser-config", default=None, metavar="NAME|FILE.json",
                        help="settings of an openai:CHECKPOINT denoiser (as `msrs certify --denoiser-config`)")
    models.add_argument("--classifier", default=None, metavar="SPEC",
                        help="frozen classifier, as `msrs certify` takes it: module:factory or timm:NAME (with "
                             "--weights), hf:DIR, a torch.export .pt2 file (with --trust-code), a TorchScript file; "
                             "default: demo (the shipped digits classifier)")
    models.add_argument("--weights", default=None, metavar="PATH", help="weights for a module:factory classifier")
    models.add_argument("--trust-code", action="store_true",
                        help="allow classifier formats whose loading runs code from the file (a torch.export .pt2, "
                             "an hf:DIR folder with its own modelling code): only for files you trust")
    models.add_argument("--mean", type=float, nargs="+", default=None, help="classifier input normalisation mean")
    models.add_argument("--std", type=float, nargs="+", default=None, help="classifier input normalisation std")
    groups["data"].add_argument("--dataset", default="digits", metavar="SPEC",
                                help="training data (msrs.data spec; its train split unless the spec names one); "
                                     "default: digits")
    groups["run"].add_argument("--out", required=True, metavar="DIR",
                               help="output folder: the EMA model (DiffusionDenoiser.from_pretrained), state/, "
                                    "log.csv; must not be or contain an input")
    add_options(p, groups=groups)
    run_ = groups["run"]
    run_.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    run_.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    run_.add_argument("--backend", choices=("auto",) + BACKENDS, default="auto",
                      help="msrs.ops backend of the noise (default auto)")
    run_.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """`msrs finetune`: check, load the models and data, fine-tune, print a summary."""
    settings = from_options(args)
    demo_classifier = _classifier_is_demo(args.classifier)
    denoiser_spec = "demo" if args.denoiser is None else args.denoiser
    _check_sources(args, demo_classifier)
    device = checks.device("device", args.device)
    resolve_dtype(settings.dtype, device)
    _refuse_out_over_inputs(args.out, _inputs(args, demo_classifier, denoiser_spec))

    from ..data import load_dataset

    spec, split = _train_spec(args.dataset)
    dataset = load_dataset(spec, split=split)
    classifier, mean, std, classifier_name = _load_classifier(args, demo_classifier, dataset.images.shape[1], device)
    from ..denoiser import load_denoiser

    denoiser = load_denoiser(denoiser_spec, device=device, config=args.denoiser_config)
    denoiser_name = denoiser_spec
    print(f"finetune: {denoiser_name} against {classifier_name} on {dataset.name} ({len(dataset.labels)} images), "
          f"sigmas {list(settings.sigmas)}, {settings.steps} steps -> {args.out}", file=sys.stderr)
    result = finetune(denoiser, classifier, dataset, out_dir=args.out, settings=settings, resume=not args.no_resume,
                      mean=mean, std=std, device=device, backend=None if args.backend == "auto" else args.backend,
                      progress=not args.quiet)
    last = result.last
    if last:
        print(f"step {last['step']}: total {last['total']:.4f} (brier {last['brier']:.4f}, anti-consistency "
              f"{last['anti_consistency']:.4f}, mse {last['mse']:.4f}), recoverable {last['recoverable']:.2f}")
    print(f"wrote {result.out_dir} (EMA model; load with DiffusionDenoiser.from_pretrained), log {result.log_path}")
    return 0


# -------------------------------------------------------------------------------------------------------- checks
def _check_sources(args, demo_classifier: bool) -> None:
    out = os.path.expanduser(args.out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise checks.ArgumentValueError(f"out: {args.out!r} exists and is not a folder")
    if args.weights is not None and demo_classifier:
        raise checks.ArgumentValueError("weights: only with --classifier module:factory (the demo classifier has "
                                        "its own)")
    if args.denoiser_config is not None and not (args.denoiser or "").startswith("openai:"):
        raise checks.ArgumentValueError("denoiser-config: only for an --denoiser openai:CHECKPOINT")
    checks.normalization(args.mean, args.std)


def _inputs(args, demo_classifier: bool, denoiser_spec: str) -> list:
    """(what, path) of every file or folder the run reads that a path names before loading: the denoiser's files
    (msrs.denoiser.source_paths), the classifier's files (a dotted module:factory's module is only found by
    importing it, so it is not listed), the weights (a sibling config is in the same folder) and a data folder."""
    from .. import assets
    from ..denoiser import source_paths

    try:
        inputs = [("denoiser", path) for path in source_paths(denoiser_spec, args.denoiser_config)]
    except FileNotFoundError as e:  # a denoiser path that is not there: an argument error, found before loading
        raise checks.ArgumentValueError(str(e)) from None
    if demo_classifier:
        inputs += [("classifier", assets.path(assets.CLASSIFIER_NAME + suffix)) for suffix in (".safetensors",
                                                                                               ".json")]
    else:
        spec = Path(args.classifier).expanduser()
        module = args.classifier.rpartition(":")[0]
        if spec.exists():
            inputs.append(("classifier", spec))
        elif module.endswith(".py"):
            inputs.append(("classifier", Path(module).expanduser()))
    if args.weights is not None:
        inputs.append(("weights", Path(args.weights).expanduser()))
    data = _dataset_folder(args.dataset)
    if data is not None:
        inputs.append(("dataset", data))
    return inputs


def _refuse_out_over_inputs(out: str, inputs: list) -> None:
    """Every checkpoint replaces out/unet, out/scheduler, out/state and out/log.csv: an output folder that is, or
    contains, an input (through symbolic links too) would overwrite it (issue 10)."""
    out_real = Path(os.path.realpath(os.path.expanduser(out)))
    for what, path in inputs:
        real = Path(os.path.realpath(path))
        if real == out_real or out_real in real.parents:
            relation = "is" if real == out_real else "contains"
            raise checks.ArgumentValueError(
                f"out: {out!r} {relation} the {what} ({str(path)!r}); fine-tuning writes its model and checkpoints "
                f"there and would overwrite it: choose another output folder")


def _dataset_folder(spec: str) -> Optional[Path]:
    """The folder of a cifar10: or folder: data set spec (None for digits or an unknown spec)."""
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "cifar10":
        head, sep, tail = rest.partition(":")
        rest = tail if (sep and head in ("train", "test") and tail) else rest
    elif kind != "folder":
        return None
    return Path(rest).expanduser() if rest else None


def _train_spec(spec: str) -> tuple:
    """(spec, split) for msrs.data.load_dataset: the train split unless the spec names a split itself."""
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "digits":
        return spec, (None if rest else "train")
    if kind == "cifar10":
        head, sep, tail = rest.partition(":")
        return spec, (None if (sep and head in ("train", "test") and tail) else "train")
    return spec, None


# ------------------------------------------------------------------------------------------------------- models
def _classifier_is_demo(spec: Optional[str]) -> bool:
    return spec is None or (spec == "demo" and not os.path.exists("demo"))


def _load_classifier(args, demo: bool, channels: int, device) -> tuple:
    """(classifier, mean, std, name) of --classifier / --weights, normalised by --mean / --std when given, else
    by the classifier's own."""
    mean, std = checks.normalization(args.mean, args.std, channels)
    from ..models import load_classifier

    spec = "demo" if demo else args.classifier
    loaded = load_classifier(spec, args.weights, device, mean=mean, std=std, trust_code=args.trust_code)
    return loaded.model, loaded.mean, loaded.std, spec
