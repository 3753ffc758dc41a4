"""The ``msrs`` command (also ``python -m msrs``).

  msrs certify ...    (msrs.certify_command)
  msrs report FILES... [--radii ...] [--plot out.png]
  msrs demo / msrs finetune   (msrs.demo / msrs.finetune)

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
                       "msrs.certify_command"),
    "report": Command("certified accuracy table and plot from certification logs",
                      __name__, "add_report_arguments", "run_report"),
    "demo": Command("certify the shipped demo models on test digits (before and after diffusion fine-tuning)",
                    "msrs.demo"),
    "finetune": Command("diffusion calibration: fine-tune the denoiser for the multi-scale cascade",
                        "msrs.finetune"),
}


# -------------------------------------------------------------------------------------------------------------- report
def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE_OR_DIR",
                   help="certification logs (TSV), or folders of them (every *.tsv, sorted)")
    p.add_argument("--radii", type=float, nargs="+", default=None,
                   help="radii to add to the default 0 0.25 0.5 0.75 1 1.5 2")
    p.add_argument("--ci", action="store_true",
                   help="the test images are a sample too: add an exact (Clopper-Pearson) confidence interval for "
                        "each certified accuracy over the images, in the table and as bands in the plot")
    p.add_argument("--confidence", type=float, default=0.95, help="level of those intervals (default 0.95)")
    p.add_argument("--plot", default=None, metavar="OUT.png", help="write certified accuracy against radius")
    p.add_argument("--max-radius", type=float, default=None, help="x-axis limit of the plot")
    p.add_argument("--title", default="Certified accuracy", help="plot title")


def run_report(args: argparse.Namespace) -> int:
    from . import checks, report

    confidence = checks.number("confidence", args.confidence, 0.0, 1.0, low_open=True, high_open=True)
    if args.max_radius is not None:
        checks.number("max-radius", args.max_radius, 0.0, low_open=True)
    files = report.log_paths(args.files)
    radii = report.radii_with(args.radii)
    print(report.format_table(report.summarize(files, radii, confidence=confidence), ci=args.ci))
    if args.plot:
        out = report.plot(files, args.plot, max_radius=args.max_radius, title=args.title, ci=args.ci,
                          confidence=confidence)
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
