"""`msrs certify`: options -> CertifyConfig (checked before anything is loaded) -> data, classifier, denoiser ->
SmoothedClassifier -> msrs.runner.certify_dataset, one log per run.

  msrs certify --dataset SPEC --classifier SPEC [--weights PATH] [--denoiser SPEC] --sigma 0.25 [0.5 1.0] --out PATH
  msrs certify --preset jeong23-cifar10 --dataset cifar10:DIR --classifier ... --denoiser openai:... --out PATH

A preset (msrs.presets) fills the options the user leaves out; explicit options win. A preset that certifies its
sigmas one at a time (Carlini et al.) writes one log per sigma, `<out stem>-sigma<s>.tsv`.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import checks
from .bounds import BOUNDS
from .data import FOLDER_LABELS
from .presets import PRESETS, describe

__all__ = ["add_arguments", "run"]

# the defaults of the options a preset may set (None in argparse, so that an explicit value can be told apart)
DEFAULTS = {"n0": 100, "n": 100_000, "alpha": 0.001, "p0": 0.5, "batch_size": 1000, "skip": 1}
FILTERS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


def _int_at_least(minimum: int):
    """An argparse type: an integer >= minimum."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


_positive_int, _nonnegative_int = _int_at_least(1), _int_at_least(0)


def _batch_size(text: str) -> int:
    """A positive integer, or "auto": start at msrs.autobatch.AUTO_START and let the engine halve the batch on
    out-of-memory errors until it fits (the batch is the unit of retry, so counts never change)."""
    if text == "auto":
        from .autobatch import AUTO_START

        return AUTO_START
    return _positive_int(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "presets (--preset NAME; explicit options override what a preset sets):\n" + describe()
    data = p.add_argument_group("data")
    data.add_argument("--dataset", required=True, metavar="SPEC",
                      help="digits | digits:train | cifar10:DIR | cifar10:train:DIR | folder:DIR | imagenet:DIR "
                           "(a class-per-folder split such as ImageNet's val/, read lazily: Resize(256) and "
                           "CenterCrop(224) as Cohen et al.)")
    data.add_argument("--split", choices=("train", "test"), default=None,
                      help="split of digits / cifar10 when the spec names none (default: test)")
    data.add_argument("--image-size", type=_positive_int, nargs="+", default=None, metavar="N",
                      help="folder: resize images to N (square) or H W")
    data.add_argument("--grayscale", action="store_true", help="folder: load images as 1-channel grayscale")
    data.add_argument("--class-names", nargs="+", default=None, metavar="NAME", help=FOLDER_LABELS)
    data.add_argument("--skip", type=_positive_int, default=None, metavar="K",
                      help="certify every K-th image (default 1)")
    data.add_argument("--max", type=_positive_int, default=None, metavar="N", dest="max_images",
                      help="certify at most N images")
    data.add_argument("--indices", type=_nonnegative_int, nargs="+", default=None, metavar="I",
                      help="certify these data-set indices (then --skip / --max apply to them)")

    model = p.add_argument_group("model")
    model.add_argument("--classifier", required=True, metavar="SPEC",
                       help="module:factory (with --weights), timm:NAME (with --weights), hf:DIR, a torch.export "
                            ".pt2 file (with --trust-code), a TorchScript file, or demo (the shipped digits "
                            "classifier)")
    model.add_argument("--weights", default=None, metavar="PATH",
                       help="weights of a module:factory or timm:NAME classifier (.safetensors, .pt, .pth)")
    model.add_argument("--trust-code", action="store_true",
                       help="allow classifier formats whose loading runs code from the file (a torch.export .pt2, "
                            "an hf:DIR folder with its own modelling code): only for files you trust")
    model.add_argument("--input-size", type=_positive_int, nargs="+", default=None, metavar="N",
                       help="the classifier's input size, N or H W: the (denoised) image is resized to it before "
                            "the classifier (default: what a timm / hf configuration declares, else no resize)")
    model.add_argument("--interpolation", default=None, choices=FILTERS,
                       help="the filter of that resize (default: the configuration's, else bilinear)")
    model.add_argument("--mean", type=float, nargs="+", default=None, help="classifier input normalisation mean")
    model.add_argument("--std", type=float, nargs="+", default=None, help="classifier input normalisation std")
    model.add_argument("--num-classes", type=_int_at_least(2), default=None,
                       help="number of classifier outputs (default: the data set's)")
    model.add_argument("--denoiser", default=None, metavar="SPEC",
                       help="diffusion denoiser: openai:CHECKPOINT.pt (improved- / guided-diffusion), a diffusers "
                            "folder or hub id, or demo / demo-finetuned (the shipped digits DDPM): diffusion denoised "
                            "smoothing")
    model.add_argument("--denoiser-config", default=None, metavar="NAME|FILE.json",
                       help="settings of an openai:CHECKPOINT denoiser: cifar10_uncond_50M_500K, "
                            "256x256_diffusion_uncond, or a JSON file of msrs.openai_unet.OpenAIUNetConfig settings "
                            "(default: CHECKPOINT.json or STEM.json beside it, else the built-in config named like "
                            "the file)")
    model.add_argument("--frame-padding", choices=("reflect", "zeros", "none"), default=None,
                       help="images smaller than the denoiser's frame (a 224 crop, a 256 model): reflect-pad them "
                            "into it and crop back (the default for openai: denoisers, as the multi-scale code), "
                            "zeros, or none (feed them as they are, as Carlini et al.)")

    smoothing = p.add_argument_group("smoothing")
    smoothing.add_argument("--preset", choices=sorted(PRESETS), default=None,
                           help="a paper's settings (see the list below)")
    smoothing.add_argument("--sigma", type=float, nargs="+", default=None,
                           help="noise level(s) in [0,1] pixel units; several run the multi-scale cascade "
                                "(required without --preset)")
    smoothing.add_argument("--n0", type=int, default=None, help="selection samples per image (default 100)")
    smoothing.add_argument("--n", type=int, default=None, help="estimation samples per image (default 100000)")
    smoothing.add_argument("--alpha", type=float, default=None, help="failure probability (default 0.001)")
    smoothing.add_argument("--p0", type=float, default=None, help="certification threshold p0 >= 0.5 (default 0.5)")
    smoothing.add_argument("--alpha-schedule", choices=("union", "paper"), default="union",
                           help="cascade error budget: union (alpha/L per stage, valid; default) or paper "
                                "(alpha/(s+1), as the authors' code)")
    smoothing.add_argument("--undecided", choices=("abstain", "fall-through"), default="abstain",
                           help="cascade: at a stage whose bounds straddle p0, abstain (the paper's rule; default) "
                                "or go on to the next sigma, that stage's off-class bound capping the radius "
                                "(equally valid)")
    smoothing.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    smoothing.add_argument("--sequential", action="store_true",
                           help="early stopping with an error budget valid under it: --n is the largest number of "
                                "estimation samples (per stage), an image stops once its outcome at "
                                "--target-radii is settled; several --sigma run the sequential cascade (union "
                                "schedule); the log gets a samples column")
    smoothing.add_argument("--target-radii", type=float, nargs="+", default=None, metavar="R",
                           help="--sequential: the radii whose outcome must be settled (default: the report radii "
                                "0 0.25 0.5 0.75 1 1.5 2)")
    smoothing.add_argument("--sequential-bound", choices=BOUNDS, default=None,
                           help="--sequential: spending (Clopper-Pearson, alpha spent over pre-set looks, 0.9 of it "
                                "at n; default), voracek (the same, Voracek's shares), cs (anytime-valid Beta-mixture "
                                "confidence sequence), betting (anytime-valid betting confidence sequence) or "
                                "betting-final (betting CS at 0.1 alpha, Clopper-Pearson at 0.9 alpha at n)")

    run_ = p.add_argument_group("run")
    run_.add_argument("--out", required=True, metavar="PATH", help="TSV log to write (resumed when interrupted)")
    run_.add_argument("--overwrite", action="store_true", help="replace a finished or differently configured log")
    run_.add_argument("--batch-size", type=_batch_size, default=None,
                      help="Monte Carlo samples per batch, or auto: the largest that fits, found by halving from "
                           "65536 on out-of-memory errors (default 1000)")
    run_.add_argument("--group-size", type=int, default=None,
                      help="images whose samples share batches (default: batch-size // n, at least 1)")
    run_.add_argument("--backend", choices=("auto", "torch", "cpp", "triton"), default="auto",
                      help="fused-op backend (default: the fastest available)")
    run_.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    run_.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                      help="classifier / denoiser compute dtype (default auto: bfloat16 where the hardware has it "
                           "natively, GPUs from compute capability 8.0 and CPUs with AVX512-BF16 or AMX, float32 "
                           "elsewhere; forcing an emulated dtype prints a warning); the dtype used is recorded")
    run_.add_argument("--compile", action="store_true",
                      help="torch.compile the classifier and the denoiser at one static batch shape "
                           "(msrs.compiled): worth it for long runs only (compiling takes one to several minutes "
                           "on a CPU; msrs says whether the run is long enough), recorded in the log's "
                           "configuration")
    run_.add_argument("--quiet", action="store_true", help="no progress bar")


# ----------------------------------------------------------------------------------------------------- the command
def run(args: argparse.Namespace) -> int:
    """Everything cheap is checked first: the configurations, the log paths, the device; then the models load once
    and every run (one, or one per sigma) certifies into its log."""
    _apply_preset(args)
    runs = _runs(args)
    _check_cheap(args)
    device = checks.device("device", args.device)
    from . import distributed

    device = distributed.init_from_env(device)  # torchrun: this rank's device (cuda:LOCAL_RANK), gloo / nccl
    try:
        distributed.decided_on_main(lambda: _check_outs(args, runs))  # every rank stops on a refused log
        return _certify(args, runs, device)
    finally:
        distributed.shutdown()


def _check_outs(args, runs) -> None:
    """Every log can be written, and none would be refused (finished, or started with other settings), before any
    data or model loads (msrs.logs.check_out)."""
    from . import logs

    for config, out in runs:
        columns = logs.CASCADE_COLUMNS if config.cascade else logs.COLUMNS
        if config.sequential is not None:
            columns = columns + ("samples",)
        settings = {k: v for k, v in config.record().items() if k != "sequential"}
        settings["selection"] = {"indices": args.indices, "skip": args.skip, "max_images": args.max_images}
        logs.check_out(out, overwrite=args.overwrite, columns=columns, config=settings)


def _apply_preset(args) -> None:
    """Fill the options left out from the preset, then from DEFAULTS."""
    preset = PRESETS[args.preset].options() if args.preset else {}
    if not (args.denoiser or "").startswith("openai:"):
        preset.pop("denoiser_config", None)  # the network settings of the papers' OpenAI checkpoints
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, [value] if name == "input_size" else value)
    for name, value in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.sigma is None:
        raise checks.ArgumentValueError("sigma: give one or more noise levels (--sigma), or a --preset")


def _runs(args) -> list:
    """[(config, out path)]: one run, or one per sigma for a preset that certifies them one at a time."""
    from .config import from_options

    separate = args.preset is not None and PRESETS[args.preset].separate and len(args.sigma) > 1
    groups = [[s] for s in args.sigma] if separate else [args.sigma]
    runs = []
    for sigmas in groups:
        config = from_options(sigmas=sigmas, n0=args.n0, n=args.n, alpha=args.alpha, p0=args.p0, seed=args.seed,
                              batch_size=args.batch_size, alpha_schedule=args.alpha_schedule,
                              sequential=args.sequential, target_radii=args.target_radii,
                              sequential_bound=args.sequential_bound,
                              undecided=args.undecided.replace("-", "_"))
        out = Path(args.out).expanduser()
        if separate:
            out = out.with_name(f"{out.stem}-sigma{sigmas[0]:g}{out.suffix or '.tsv'}")
        runs.append((config, out))
    return runs


def _check_cheap(args) -> None:
    if args.group_size is not None:
        checks.integer("group_size", args.group_size, 1)
    if args.denoiser_config is not None and not (args.denoiser or "").startswith("openai:"):
        raise checks.ArgumentValueError("denoiser-config: only for an --denoiser openai:CHECKPOINT")
    if os.path.isdir(os.path.expanduser(args.out)):
        raise IsADirectoryError(f"out: {args.out!r} is a folder; give a file name for the log")
    for name in ("image_size", "input_size"):
        if getattr(args, name) is not None and len(getattr(args, name)) > 2:
            raise checks.ArgumentValueError(f"{name.replace('_', '-')}: give N or H W, got {getattr(args, name)}")
    checks.normalization(args.mean, args.std)


def _certify(args, runs, device) -> int:
    from . import distributed, runner
    from .data import load_dataset

    main = distributed.is_main()
    size = None if args.image_size is None else (args.image_size * 2)[:2]
    dataset = load_dataset(args.dataset, split=args.split, size=size, mode="L" if args.grayscale else None,
                           class_names=args.class_names)
    loaded, mean, std = _load_classifier(args, dataset, device)
    denoiser = _load_denoiser(args, device)
    if not args.quiet and main:
        how = "none" if mean is None else f"mean={list(mean)} std={list(std)} (from {loaded.normalization_source})"
        print(f"msrs: {dataset!r}; classifier {loaded.kind} {args.classifier!r}, normalisation {how}",
              file=sys.stderr)
    smoothed = _engine(args, loaded, mean, std, denoiser, dataset, device)
    if main and not args.quiet:
        _say_speed_settings(args, smoothed, runs, dataset, device)
    run_info = _run_record(args, loaded, mean, std, smoothed, denoiser)
    extra_info = {"dataset": args.dataset, "classifier": args.classifier, "weights": args.weights,
                  "denoiser": args.denoiser, "device": str(device), "backend": args.backend,
                  "world_size": distributed.world_size(), "preset": args.preset, "dtype": args.dtype,
                  "dtype_reason": smoothed.dtype_reason, "class_index": dataset.class_index()}
    outs = [runner.certify_dataset(smoothed, dataset, out, config, group_size=args.group_size, skip=args.skip,
                                   max_images=args.max_images, indices=args.indices,
                                   progress=not args.quiet and main, overwrite=args.overwrite, run_info=run_info,
                                   extra_info=extra_info)
            for config, out in runs]
    if main:
        from . import report

        print(report.format_table(report.summarize(outs)))
        for out in outs:
            print(f"wrote {out}")
    return 0


def _load_classifier(args, dataset, device) -> tuple:
    """(LoadedClassifier, mean, std): the normalisation given, else the classifier's own, checked against the data's
    channels."""
    from .models import load_classifier

    channels = dataset.images.shape[1]
    mean, std = checks.normalization(args.mean, args.std, channels)
    input_size = None if args.input_size is None else (args.input_size * 2)[:2]
    loaded = load_classifier(args.classifier, args.weights, device, mean=mean, std=std, trust_code=args.trust_code,
                             input_size=input_size, interpolation=args.interpolation)
    mean, std = checks.normalization(loaded.mean, loaded.std, channels)
    return loaded, mean, std


def _load_denoiser(args, device):
    if not args.denoiser:
        return None
    from .denoiser import load_denoiser

    padding = {None: "auto", "none": None}.get(args.frame_padding, args.frame_padding)
    return load_denoiser(args.denoiser, device=device, config=args.denoiser_config, frame_padding=padding)


def _engine(args, loaded, mean, std, denoiser, dataset, device):
    from .smoothing import SmoothedClassifier

    return SmoothedClassifier(loaded.model, args.num_classes or dataset.num_classes, denoiser=denoiser, mean=mean,
                              std=std, device=device, backend=None if args.backend == "auto" else args.backend,
                              dtype=args.dtype, compile=args.compile, input_size=loaded.input_size,
                              resize_mode=loaded.resize_mode)


def _say_speed_settings(args, smoothed, runs, dataset, device) -> None:
    """One line on the dtype (a warning where a forced one is emulated), and with --compile whether the run is long
    enough for compiling to pay and that the first batch compiles."""
    from . import hardware

    if args.dtype == "auto":
        print(f"msrs: dtype {str(smoothed.dtype).replace('torch.', '')} ({smoothed.dtype_reason})", file=sys.stderr)
    else:
        hardware.warn_if_slow(smoothed.dtype, device)
    if args.compile:
        images = len(dataset) if args.indices is None else len(args.indices)
        images = -(-images // args.skip) if args.max_images is None else min(args.max_images, -(-images // args.skip))
        samples = sum(images * (config.n0 + config.n) * len(config.sigmas) for config, _ in runs)
        worth, why = hardware.compile_advice(samples, device)
        print(f"msrs: --compile: the first batch compiles the classifier and the denoiser (one to several minutes "
              f"on a CPU); {why}", file=sys.stderr)


def _run_record(args, loaded, mean, std, smoothed, denoiser) -> dict:
    """What identifies the models of a run in its log's sidecar (compared on resume)."""
    from .fingerprint import file_fingerprint

    files = []
    for path in loaded.files:
        fingerprint = file_fingerprint(path)
        fingerprint.pop("path", None)
        files.append(fingerprint)
    record = {
        "classifier": {"kind": loaded.kind, "factory": loaded.spec if loaded.kind == "factory" else None,
                       "files": files, "mean": list(mean) if mean else None, "std": list(std) if std else None,
                       "num_classes": smoothed.num_classes},
        "denoiser": None if denoiser is None else _describe_denoiser(denoiser),
        "dtype": str(smoothed.dtype).replace("torch.", ""),  # the dtype used, never "auto": votes differ by dtype
    }
    if args.compile:  # compiled kernels may round differently: a resume must compile too (absent: older logs match)
        record["compile"] = True
    if loaded.input_size is not None:  # absent without a resize, so that older logs still match
        record["classifier"]["input_size"] = list(loaded.input_size)
        record["classifier"]["interpolation"] = loaded.interpolation or "bilinear"
    return record


def _describe_denoiser(denoiser) -> dict:
    """A loaded denoiser in a run's record: the fingerprint of its files (or its hub id), and where they matter its
    OpenAI network settings and frame padding."""
    from .fingerprint import file_fingerprint

    path = os.path.expanduser(denoiser.source)
    described = {"id": denoiser.source}
    if os.path.exists(path):
        described = file_fingerprint(path)
        described.pop("path", None)
    if getattr(denoiser, "openai_config", None) is not None:  # absent for diffusers models: older logs still match
        described["openai_config"] = denoiser.openai_config.to_dict()
    if getattr(denoiser, "openai_config", None) is not None or denoiser.frame_padding is not None:
        described["frame_padding"] = denoiser.frame_padding
    return described
