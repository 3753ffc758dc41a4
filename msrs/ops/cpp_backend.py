"""The C++ CPU backend: csrc/ops.cpp loaded as a torch extension.

Loading, in order:
1. `msrs._C`, the ahead-of-time build (setup.py with MSRS_BUILD_EXT=1), if it imports and was built from the
   sources shipped next to it (its SOURCE_HASH matches csrc/build_flags.py's source_hash());
2. otherwise a JIT build on first use with torch.utils.cpp_extension.load, into
   $MSRS_EXTENSIONS_DIR (default ~/.cache/msrs/torch_extensions) / py<ver>_torch<ver>_<hash of sources and flags>,
   so an upgraded torch or an edited source never loads a stale .so. Concurrent first builds in several processes
   are serialised by an fcntl lock of our own; while holding it, a stale `lock` baton that an interrupted torch
   build left behind is removed (it would hang the build).

load_error() says why the backend cannot run (None when it can); the dispatcher then falls back to torch, or
raises BackendUnavailable with that reason when the cpp backend was forced.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import runpy
import sys
import threading
from pathlib import Path
from types import ModuleType

import torch

EXTENSION_NAME = "msrs_ops"
ENV_DIR = "MSRS_EXTENSIONS_DIR"
_ERROR_LINES = 25

_lock = threading.Lock()
_module: ModuleType | None = None
_error: str | None = None
_tried = False


def sources_dir() -> Path:
    """The folder holding ops.cpp, philox.h and build_flags.py, next to this module first: msrs/csrc in an
    installed package, else csrc/ of the source tree this module lives in, else wherever the msrs.csrc package is
    (e.g. an editable install's mapping)."""
    here = Path(__file__).resolve()
    installed, tree = here.parents[1] / "csrc", here.parents[2] / "csrc"
    if (installed / "ops.cpp").is_file():
        return installed
    if (tree / "ops.cpp").is_file() and (here.parents[2] / "setup.py").is_file():
        return tree
    try:
        from importlib.resources import files

        path = Path(str(files("msrs.csrc")))
        if (path / "ops.cpp").is_file():
            return path
    except (ModuleNotFoundError, TypeError, ValueError):
        pass
    return tree


def _build_flags(directory: Path) -> dict:
    return runpy.run_path(str(directory / "build_flags.py"))


def build_directory(directory: Path | None = None) -> Path:
    """Where the JIT build of the current sources, flags and torch goes."""
    directory = sources_dir() if directory is None else directory
    flags = _build_flags(directory)
    cflags, ldflags = flags["cpp_extension_flags"]()
    digest = hashlib.sha256()
    for part in (flags["source_hash"](directory), torch.__version__, sys.version, *cflags, "|", *ldflags):
        digest.update(part.encode() + b"\0")
    root = os.environ.get(ENV_DIR) or os.path.join(os.path.expanduser("~"), ".cache", "msrs", "torch_extensions")
    torch_version = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in torch.__version__)
    name = f"py{sys.version_info[0]}{sys.version_info[1]}_torch{torch_version}_{digest.hexdigest()[:16]}"
    return Path(root) / name


def _import_aot(directory: Path) -> ModuleType | None:
    try:
        from msrs import _C  # type: ignore[attr-defined]
    except (ImportError, OSError):
        return None
    try:
        expected = "h" + _build_flags(directory)["source_hash"](directory)[:32]
    except OSError:  # sources not shipped: trust the build
        return _C
    return _C if getattr(_C, "SOURCE_HASH", None) == expected else None


def _import_built(build_dir: Path) -> ModuleType | None:
    """The already-built .so in build_dir (content-addressed, so never stale), or None."""
    candidates = sorted(build_dir.glob(f"{EXTENSION_NAME}*.so"))
    if not candidates:
        return None
    spec = importlib.util.spec_from_file_location(EXTENSION_NAME, candidates[0])
    if spec is None or spec.loader is None:
        return None
    try:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError):  # e.g. a truncated .so from a killed build: rebuild
        return None
    return module


def _jit_build(directory: Path) -> ModuleType:
    import fcntl

    from torch.utils import cpp_extension

    build_dir = build_directory(directory)
    module = _import_built(build_dir)
    if module is not None:
        return module
    if not cpp_extension.is_ninja_available():
        raise RuntimeError("ninja is not installed (pip install ninja); torch needs it to compile C++ extensions")
    build_dir.mkdir(parents=True, exist_ok=True)
    with open(build_dir.parent / f"{build_dir.name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # another process may be building the same folder: wait for it
        try:
            module = _import_built(build_dir)
            if module is not None:
                return module
            baton = build_dir / "lock"
            if baton.exists():  # left by an interrupted torch build; we hold our own lock, so nobody else owns it
                baton.unlink()
            for stale in build_dir.glob(f"{EXTENSION_NAME}*.so"):
                stale.unlink()
            print("msrs: compiling the C++ ops (first use, ~30 s)...", file=sys.stderr, flush=True)
            flags = _build_flags(directory)
            cflags, ldflags = flags["cpp_extension_flags"]()
            sources = [str(directory / name) for name in flags["SOURCES"]]
            return cpp_extension.load(
                name=EXTENSION_NAME,
                sources=sources,
                extra_cflags=cflags,
                extra_ldflags=ldflags,
                extra_include_paths=[str(directory)],
                build_directory=str(build_dir),
                verbose=False,
            )
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _summarise(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    tail = lines[-_ERROR_LINES:] if lines else [type(exc).__name__]
    return f"could not build or load the C++ ops ({type(exc).__name__}): " + "\n".join(tail)


def _load() -> None:
    global _module, _error, _tried
    if _tried:  # checked before taking the lock too: cheap, and torch.compile can trace it
        return
    with _lock:
        if _tried:
            return
        try:
            directory = sources_dir()
            _module = _import_aot(directory)
            if _module is None:
                if not (directory / "ops.cpp").is_file():
                    raise RuntimeError(f"the C++ sources are missing (looked in {directory}) and msrs._C is not built")
                _module = _jit_build(directory)
        except Exception as exc:  # noqa: BLE001 - any failure means "backend unavailable, here is why"
            _module, _error = None, _summarise(exc)
        _tried = True


def load_error() -> str | None:
    """None when the C++ ops can run, else why not (cached: the build is tried once per process)."""
    _load()
    return _error


def extension() -> ModuleType:
    """The loaded extension module; raises BackendUnavailable with the reason when it cannot be loaded."""
    _load()
    if _module is None:
        from .dispatch import BackendUnavailable

        raise BackendUnavailable(f"backend 'cpp' is not available: {_error}")
    return _module


def sample_noisy(x: torch.Tensor, rows: torch.Tensor, coeffs: torch.Tensor, seed: int, out_dtype: torch.dtype):
    return extension().sample_noisy(x, rows, coeffs, int(seed), out_dtype)


def finalize_denoised(x_t, eps, coeffs, mean, std, out_dtype: torch.dtype):
    return extension().finalize_denoised(x_t, eps, coeffs, mean, std, out_dtype)


def count_votes_(counts: torch.Tensor, scores: torch.Tensor, index: torch.Tensor) -> None:
    extension().count_votes_(counts, scores, index)


def philox_words(counters: torch.Tensor, seed: int) -> torch.Tensor:
    """Raw Philox4x32-10 words (int64 [N, 4]) of int64 counters [N, 4] under `seed`, computed in C++ (for tests)."""
    return extension().philox_words(counters, int(seed))
