"""The ``msrs`` command (also ``python -m msrs``).

  msrs certify --dataset digits --classifier SPEC [--weights PATH] --sigma 0.25 [0.5 1.0] --out PATH ...
  msrs report FILES... [--radii ...] [--plot out.png]
  msrs demo / msrs finetune   (in msrs.demo / msrs.finetune)

Adding a subcommand: one entry in COMMANDS, name -> Command(help, module, add_arguments, run).  ``module`` is
imported only when that subcommand runs (or its --help is asked for), so a slow or optional dependency costs the
other commands nothing; ``add_arguments(parser)`` registers its options on an argparse parser and ``run(args)``
executes it, returning an exit status (None means 0).  A command whose module is not installed is left out of
``msrs --help`` and reports that it is unavailable.

Errors in the input (ValueError, TypeError, missing files...) print one line ``msrs: error: ...`` and exit with
status 2, without a traceback (set MSRS_DEBUG=1 to see it).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Optional, Sequence

__all__ = ["COMMANDS", "Command", "build_parser", "main"]

PROG = "msrs"


@dataclass(frozen=True)
class Command:
    help: str
    module: str
    add_arguments: str = "add_arguments"
    run: str = "run"

    def available(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False

    def load(self):
        module = importlib.import_module(self.module)
        try:
            return getattr(module, self.add_arguments), getattr(module, self.run)
        except AttributeError as e:
            raise RuntimeError(f"{self.module} does not define {self.add_arguments}() and {self.run}(): {e}") from None


COMMANDS = {
    "certify": Command("certify a data set with (denoised, multi-scale) randomized smoothing; writes a TSV log",
                       __name__, "add_certify_arguments", "run_certify"),
    "report": Command("certified accuracy table and plot from certification logs",
                      __name__, "add_report_arguments", "run_report"),
    "demo": Command("certify the shipped demo models on test digits (before and after diffusion fine-tuning)",
                    "msrs.demo"),
    "finetune": Command("diffusion calibration: fine-tune the denoiser for the multi-scale cascade",
                        "msrs.finetune"),
}


# ------------------------------------------------------------------------------------------------------------- certify
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


def add_certify_arguments(p: argparse.ArgumentParser) -> None:
    from_ = p.add_argument_group("data")
    from_.add_argument("--dataset", required=True, metavar="SPEC",
                       help="digits | digits:train | cifar10:DIR | cifar10:train:DIR | folder:DIR")
    from_.add_argument("--split", choices=("train", "test"), default=None,
                       help="split of digits / cifar10 when the spec names none (default: test)")
    from_.add_argument("--image-size", type=_positive_int, nargs="+", default=None, metavar="N",
                       help="folder: resize images to N (square) or H W")
    from_.add_argument("--grayscale", action="store_true", help="folder: load images as 1-channel grayscale")
    from_.add_argument("--skip", type=_positive_int, default=1, metavar="K", help="certify every K-th image")
    from_.add_argument("--max", type=_positive_int, default=None, metavar="N", dest="max_images",
                       help="certify at most N images")
    from_.add_argument("--indices", type=_nonnegative_int, nargs="+", default=None, metavar="I",
                       help="certify these data-set indices (then --skip / --max apply to them)")

    model = p.add_argument_group("model")
    model.add_argument("--classifier", required=True, metavar="SPEC",
                       help="TorchScript file, torch.export .pt2 file, module:factory (with --weights), or demo "
                            "(the shipped digits classifier)")
    model.add_argument("--weights", default=None, metavar="PATH",
                       help="weights of a module:factory classifier (.safetensors, .pt, .pth)")
    model.add_argument("--trust-code", action="store_true",
                       help="allow classifier formats whose loading runs code from the file (a torch.export .pt2, "
                            "an hf:DIR folder with its own modelling code): only for files you trust")
    model.add_argument("--input-size", type=_positive_int, nargs="+", default=None, metavar="N",
                       help="the classifier's input size, N or H W: the (denoised) image is resized to it before "
                            "the classifier (default: what a timm / hf configuration declares, else no resize)")
    model.add_argument("--interpolation", default=None, choices=("nearest", "bilinear", "bicubic", "lanczos", "box",
                                                                 "hamming"),
                       help="the filter of that resize (default: the configuration's, else bilinear)")
    model.add_argument("--mean", type=float, nargs="+", default=None, help="classifier input normalisation mean")
    model.add_argument("--std", type=float, nargs="+", default=None, help="classifier input normalisation std")
    model.add_argument("--num-classes", type=_int_at_least(2), default=None,
                       help="number of classifier outputs (default: the data set's)")
    model.add_argument("--denoiser", default=None, metavar="PATH_OR_HUB_ID",
                       help="diffusion denoiser: openai:CHECKPOINT.pt (improved- / guided-diffusion), a diffusers "
                            "folder or hub id, or demo / demo-finetuned (the shipped digits DDPM): diffusion denoised "
                            "smoothing")
    model.add_argument("--denoiser-config", default=None, metavar="NAME|FILE.json",
                       help="settings of an openai:CHECKPOINT denoiser: cifar10_uncond_50M_500K, "
                            "256x256_diffusion_uncond, or a JSON file of msrs.openai_unet.OpenAIUNetConfig settings "
                            "(default: CHECKPOINT.json or STEM.json beside it, else the built-in config named like "
                            "the file)")

    smoothing = p.add_argument_group("smoothing")
    smoothing.add_argument("--sigma", type=float, nargs="+", required=True,
                           help="noise level(s) in [0,1] pixel units; several run the multi-scale cascade")
    smoothing.add_argument("--n0", type=int, default=100, help="selection samples per image (default 100)")
    smoothing.add_argument("--n", type=int, default=100_000, help="estimation samples per image (default 100000)")
    smoothing.add_argument("--alpha", type=float, default=0.001, help="failure probability (default 0.001)")
    smoothing.add_argument("--p0", type=float, default=0.5, help="certification threshold p0 >= 0.5 (default 0.5)")
    smoothing.add_argument("--alpha-schedule", choices=("union", "paper"), default="union",
                           help="cascade error budget: union (alpha/L per stage, valid; default) or paper "
                                "(alpha/(s+1), as the authors' code)")
    smoothing.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    smoothing.add_argument("--sequential", action="store_true",
                           help="early stopping with an error budget valid under it: --n is the largest number of "
                                "estimation samples (per stage), an image stops once its outcome at "
                                "--target-radii is settled; several --sigma run the sequential cascade (union "
                                "schedule); the log gets a samples column")
    smoothing.add_argument("--target-radii", type=float, nargs="+", default=None, metavar="R",
                           help="--sequential: the radii whose outcome must be settled (default: the report radii "
                                "0 0.25 0.5 0.75 1 1.5 2)")
    smoothing.add_argument("--sequential-bound", choices=("spending", "cs"), default=None,
                           help="--sequential: spending (Clopper-Pearson, alpha spent over pre-set looks, 0.9 of it "
                                "at n; default) or cs (anytime-valid confidence sequence, wider)")

    run = p.add_argument_group("run")
    run.add_argument("--out", required=True, metavar="PATH", help="TSV log to write (resumed when interrupted)")
    run.add_argument("--overwrite", action="store_true", help="replace a finished or differently configured log")
    run.add_argument("--batch-size", type=_batch_size, default=1000,
                     help="Monte Carlo samples per batch, or auto: the largest that fits, found by halving from "
                          "65536 on out-of-memory errors (default 1000)")
    run.add_argument("--group-size", type=int, default=None,
                     help="images whose samples share batches (default: batch-size // n, at least 1)")
    run.add_argument("--backend", choices=("auto", "torch", "cpp", "triton"), default="auto",
                     help="fused-op backend (default: the fastest available)")
    run.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    run.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                     help="classifier / denoiser compute dtype (default float32; bfloat16 is about 2x faster on "
                          "CPUs with AVX512-BF16 or AMX and on GPUs)")
    run.add_argument("--compile", action="store_true",
                     help="torch.compile the classifier and the denoiser at one static batch shape (msrs.compiled); "
                          "compiling takes tens of seconds on a CPU, recorded in the log's configuration")
    run.add_argument("--quiet", action="store_true", help="no progress bar")


def _describe_denoiser(denoiser) -> dict:
    """What identifies a loaded denoiser in a run's record: the fingerprint of its files (or its hub id), and for an
    OpenAI-format checkpoint its network settings and frame padding."""
    from .fingerprint import file_fingerprint

    path = os.path.expanduser(denoiser.source)
    described = {"id": denoiser.source}
    if os.path.exists(path):
        described = file_fingerprint(path)
        described.pop("path", None)
    if getattr(denoiser, "openai_config", None) is not None:  # absent for diffusers models: older logs still match
        described["openai_config"] = denoiser.openai_config.to_dict()
        described["frame_padding"] = denoiser.frame_padding
    return described


def run_certify(args: argparse.Namespace) -> int:
    from . import checks
    from .config import from_options

    # cheap checks first, before any model is loaded: the whole configuration, the log path, the device
    config = from_options(sigmas=args.sigma, n0=args.n0, n=args.n, alpha=args.alpha, p0=args.p0, seed=args.seed,
                          batch_size=args.batch_size, alpha_schedule=args.alpha_schedule, sequential=args.sequential,
                          target_radii=args.target_radii, sequential_bound=args.sequential_bound)
    if args.group_size is not None:
        checks.integer("group_size", args.group_size, 1)
    if args.denoiser_config is not None and not (args.denoiser or "").startswith("openai:"):
        raise ValueError("denoiser-config: only for an --denoiser openai:CHECKPOINT")
    if os.path.isdir(os.path.expanduser(args.out)):
        raise IsADirectoryError(f"out: {args.out!r} is a folder; give a file name for the log")
    for name in ("image_size", "input_size"):
        if getattr(args, name) is not None and len(getattr(args, name)) > 2:
            raise ValueError(f"{name.replace('_', '-')}: give N or H W, got {getattr(args, name)}")
    device = checks.device("device", args.device)
    from . import distributed

    device = distributed.init_from_env(device)  # torchrun: this rank's device (cuda:LOCAL_RANK), gloo / nccl
    try:
        return _certify_on(args, config, device)
    finally:
        distributed.shutdown()


def _certify_on(args: argparse.Namespace, config, device) -> int:
    import torch

    from . import distributed, runner
    from .data import load_dataset
    from .checks import normalization as check_normalization
    from .fingerprint import file_fingerprint
    from .models import load_classifier

    main = distributed.is_main()
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    size = None if args.image_size is None else (args.image_size * 2)[:2]
    mean, std = check_normalization(args.mean, args.std)

    dataset = load_dataset(args.dataset, split=args.split, size=size, mode="L" if args.grayscale else None)
    mean, std = check_normalization(mean, std, dataset.images.shape[1])
    input_size = None if args.input_size is None else (args.input_size * 2)[:2]
    loaded = load_classifier(args.classifier, args.weights, device, mean=mean, std=std, trust_code=args.trust_code,
                             input_size=input_size, interpolation=args.interpolation)
    mean, std = check_normalization(loaded.mean, loaded.std, dataset.images.shape[1])
    if not args.quiet and main:
        how = "none" if mean is None else f"mean={list(mean)} std={list(std)} (from {loaded.normalization_source})"
        print(f"msrs: {dataset!r}; classifier {loaded.kind} {args.classifier!r}, normalisation {how}",
              file=sys.stderr)
    num_classes = args.num_classes or dataset.num_classes

    denoiser = None
    if args.denoiser:
        from .denoiser import load_denoiser

        denoiser = load_denoiser(args.denoiser, device=device, config=args.denoiser_config)

    from .smoothing import SmoothedClassifier

    smoothed = SmoothedClassifier(loaded.model, num_classes, denoiser=denoiser, mean=mean, std=std, device=device,
                                  backend=None if args.backend == "auto" else args.backend, dtype=dtype,
                                  compile=args.compile, input_size=loaded.input_size, resize_mode=loaded.resize_mode)

    classifier_files = []
    for path in loaded.files:
        fingerprint = file_fingerprint(path)
        fingerprint.pop("path", None)
        classifier_files.append(fingerprint)
    run_info = {
        "classifier": {"kind": loaded.kind,
                       "factory": loaded.spec if loaded.kind == "factory" else None,
                       "files": classifier_files,
                       "mean": list(mean) if mean else None, "std": list(std) if std else None,
                       "num_classes": num_classes},
        "denoiser": None if denoiser is None else _describe_denoiser(denoiser),
        "dtype": args.dtype,
    }
    if args.compile:  # compiled kernels may round differently: a resume must compile too (absent: older logs match)
        run_info["compile"] = True
    if loaded.input_size is not None:  # absent without a resize, so that older logs still match
        run_info["classifier"]["input_size"] = list(loaded.input_size)
        run_info["classifier"]["interpolation"] = loaded.interpolation or "bilinear"
    extra_info = {"dataset": args.dataset, "classifier": args.classifier, "weights": args.weights,
                  "denoiser": args.denoiser, "device": str(device), "backend": args.backend,
                  "world_size": distributed.world_size()}
    out = runner.certify_dataset(
        smoothed, dataset, args.out, config, group_size=args.group_size, skip=args.skip, max_images=args.max_images,
        indices=args.indices, progress=not args.quiet and main, overwrite=args.overwrite, run_info=run_info,
        extra_info=extra_info)

    if main:
        from . import report

        print(report.format_table(report.summarize([out])))
        print(f"wrote {out}")
    return 0


# -------------------------------------------------------------------------------------------------------------- report
def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="certification logs (TSV)")
    p.add_argument("--radii", type=float, nargs="+", default=None,
                   help="radii to add to the default 0 0.25 0.5 0.75 1 1.5 2")
    p.add_argument("--plot", default=None, metavar="OUT.png", help="write certified accuracy against radius")
    p.add_argument("--max-radius", type=float, default=None, help="x-axis limit of the plot")
    p.add_argument("--title", default="Certified accuracy", help="plot title")


def run_report(args: argparse.Namespace) -> int:
    from . import report

    for path in args.files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"files: {path!r} does not exist" if not os.path.exists(path)
                                    else f"files: {path!r} is not a file")
    radii = report.radii_with(args.radii)
    print(report.format_table(report.summarize(args.files, radii)))
    if args.plot:
        if args.max_radius is not None and not args.max_radius > 0:
            raise ValueError(f"max-radius: must be > 0, got {args.max_radius}")
        out = report.plot(args.files, args.plot, max_radius=args.max_radius, title=args.title)
        print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------------------------------------------------- main
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``msrs: error: ...`` and exit status 2."""

    def error(self, message):
        self.exit(2, f"{PROG}: error: {message} (see {self.prog} --help)\n")


def build_parser(selected: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; only the ``selected`` subcommand's module is imported to register its options."""
    parser = _Parser(prog=PROG, description="Certified robustness by (diffusion denoised, multi-scale) randomized "
                                            "smoothing.")
    try:
        from . import __version__
    except ImportError:  # pragma: no cover
        __version__ = "?"
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, command in COMMANDS.items():
        if name != selected and command.module != __name__ and not command.available():
            continue
        p = sub.add_parser(name, help=command.help, description=command.help)
        if name == selected:
            add_arguments, run = command.load()
            add_arguments(p)
            p.set_defaults(_run=run)
    return parser


def _user_errors() -> tuple:
    errors = [ValueError, TypeError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
              PermissionError]
    dispatch = sys.modules.get("msrs.ops.dispatch")
    if dispatch is not None and hasattr(dispatch, "BackendUnavailable"):
        errors.append(dispatch.BackendUnavailable)
    return tuple(errors)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    if selected is not None and selected not in COMMANDS:
        selected = None  # argparse reports the invalid choice
    debug = bool(os.environ.get("MSRS_DEBUG"))
    try:
        if selected is not None and COMMANDS[selected].module != __name__ and not COMMANDS[selected].available():
            raise ValueError(f"the {selected!r} command is not available in this installation "
                             f"({COMMANDS[selected].module} is missing)")
        parser = build_parser(selected)
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help, --version, or a usage error already printed
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        if getattr(args, "_run", None) is None:
            parser.print_help(sys.stderr)
            return 2
        status = args._run(args)
        return 0 if status is None else int(status)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted (rerun the same command to resume a certification)", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - only input errors are reported tersely
        if debug or not isinstance(e, _user_errors()):
            raise
        message = " ".join(line.strip() for line in str(e).strip().splitlines()) or type(e).__name__
        if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)) and \
                e.filename and str(e.filename) not in message:
            message = f"{message}: {e.filename}"
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
