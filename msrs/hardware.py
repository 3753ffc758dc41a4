"""Which compute dtype is fast on the machine a run is on, and when torch.compile pays: decided at run time.

bf16 is native on a CPU only where it has bf16 dot-product instructions, i.e. AVX512-BF16 or AMX-BF16 on x86 (the
``avx512_bf16`` / ``amx_bf16`` flags of /proc/cpuinfo) or the BF16 extension on Arm (``bf16`` in "Features").
Elsewhere torch still runs bf16 (autocast works), but by converting to fp32 and back around every op, which is far
slower than fp32 itself. On CUDA bf16 is native from compute capability 8.0 (Ampere) on; torch.cuda's
``is_bf16_supported()`` says True on older GPUs too unless ``including_emulation=False``.

  cpu_flags(cpuinfo=None)             the CPU's feature flags (/proc/cpuinfo "flags" / "Features"), or None
  torch_cpu_report()                  what torch itself detects (torch.cpu.get_capabilities(), where it exists)
  native_support(dtype, device)       -> (bool, reason): is ``dtype`` native on ``device``
  resolve_dtype(request, device)      -> (torch.dtype, reason); request "auto" | "float32" | "bfloat16" | "float16"
  slow_dtype_warning(dtype, device)   the one-line warning for a forced emulated dtype (None when there is none)
  warn_if_slow(dtype, device)         prints that line to stderr; returns it
  compile_advice(samples, device)     -> (worth: bool or None, reason): whether torch.compile pays for a run
  machine(device)                     what a speed figure depends on besides the code (benchmark records)

On a CPU both sources are consulted: the kernel's flags and torch's own detection (its cpuinfo library). bf16 counts
as native only where both say so (a hypervisor may list a flag whose instructions it does not enable, and torch's
kernels follow torch's detection); where one source is missing (no /proc/cpuinfo on macOS or Windows, an older
torch) the other decides.

Measured here (benchmarks/dtype_compile.py, torch 2.13.0+cpu): an AMD EPYC under KVM, 2 cores, flags avx2 fma f16c
(no avx512*, no amx*), torch.backends.cpu.get_cpu_capability() = "AVX2".  The machine was shared with other jobs:
load average 15-17 on its 2 cores during runs B and C (6 rising to 17 during run A), so absolute times are several
times the idle ones; the ratios within a run are what the decisions use.

                                    run A (2 threads)         run B (1 thread)
  1024^2 matmul, GFLOP/s            fp32 19.3  bf16 0.25      fp32 5.9   bf16 0.091
                                    fp16 0.14                 fp16 0.092
  demo UNet, batch 400, s/call      fp32 10.4  bf16 44.2      fp32 3.98  bf16 65.0
                                    fp16 48.8                 fp16 57.4
  demo classifier, batch 400        fp32 0.89  bf16 3.14      fp32 0.33  bf16 3.92
                                    fp16 4.08                 fp16 4.57

So on this CPU bf16 and fp16 are 4-16x slower than fp32 for the demo models and 60-80x for a plain matmul (the
issue that asked for this module measured the demo UNet idle: 9.6 s in bf16 against 0.9 s in fp32).  An earlier
machine of the same kind with AVX512-BF16 ran the demo end to end 1.5-1.6x faster in bf16 than in fp32.

torch.compile through msrs.compiled (the engine's --compile: static batch shape, CPU freezing), fp32, batch 400:
  run A (2 threads): UNet compile 541 s, then 11.5 s/call against 14.8 s eager (22 % less); classifier compile
                     72 s, then slower than eager (1.24 against 1.05 s): break-even 65,000 samples (UNet)
  run C (1 thread):  UNet compile 366 s, then 2.22 s/call against 2.99 s eager (26 % less); classifier compile
                     57 s, 0.128 against 0.229 s (44 % less); both models: 423 s of compiling against 2.19 ms saved
                     per sample, a break-even of 193,000 samples
Compile time and time per sample grow alike with the load, so the break-even in samples moves less than either:
the README's idle figures (compile 7-20 s per model, fp32 --compile 1.23x the eager 3,209 samples/s) give about
350,000 samples for 20 s of compiling.  compile_advice therefore says "worth it" from 3x the measured 193,000.
"""
from __future__ import annotations

import os

import platform
import sys
from typing import Mapping, Optional, Union

import torch

__all__ = [
    "BF16_CPU_FLAGS",
    "DTYPE_REQUESTS",
    "FP16_CPU_FLAGS",
    "REPORTED_FLAGS",
    "compile_advice",
    "cpu_flags",
    "machine",
    "native_support",
    "read_cpuinfo",
    "resolve_dtype",
    "slow_dtype_warning",
    "torch_cpu_report",
    "warn_if_slow",
]

DTYPE_REQUESTS = ("auto", "float32", "bfloat16", "float16")
AUTO_DTYPE_ENV = "MSRS_AUTO_DTYPE"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BF16_CPU_FLAGS = {"x86": ("avx512_bf16", "amx_bf16"), "arm": ("bf16",)}
FP16_CPU_FLAGS = {"x86": ("avx512_fp16", "amx_fp16"), "arm": ()}
# the flags worth printing next to a speed figure
REPORTED_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16",
                  "amx_fp16", "asimd", "sve", "bf16")
# torch.cpu.get_capabilities() keys for the same features (torch spells AVX512-F "avx512_f")
_TORCH_KEYS = {"bfloat16": ("avx512_bf16", "amx_bf16"), "float16": ("avx512_fp16", "amx_fp16")}

# Measured on this project's AVX2-only machine (module docstring): what an emulated dtype costs.
EMULATED_BF16_MEASURED = "demo UNet, batch 400: 65 s in bfloat16 against 4.0 s in float32 (16x slower)"
EMULATED_FP16_MEASURED = "demo UNet, batch 400: 57 s in float16 against 4.0 s in float32 (14x slower)"

DeviceLike = Union[str, torch.device]


# --------------------------------------------------------------------------------------------------------- CPU facts
def read_cpuinfo(path: str = "/proc/cpuinfo") -> Optional[str]:
    """The text of /proc/cpuinfo, or None where there is none (macOS, Windows, some sandboxes)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def cpu_flags(cpuinfo: Optional[str] = None) -> Optional[frozenset]:
    """The feature flags of the first CPU in ``cpuinfo`` (default: read /proc/cpuinfo): its "flags" line on x86,
    "Features" on Arm.  None when there is no such text or line."""
    text = read_cpuinfo() if cpuinfo is None else cpuinfo
    if not text:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return None


def machine(device: DeviceLike = "cpu") -> dict:
    """What a speed figure depends on besides the code, for benchmark records: the CPU flags that decide which
    kernels run (those the README's `grep -o 'avx512[a-z_0-9]*\\|amx[a-z_0-9]*\\|avx2' /proc/cpuinfo` prints;
    [] where the flags are unknown), torch's threads, the load average at the call, torch and Python; on CUDA also
    the GPU, torch's CUDA and whether cuDNN may use TF32."""
    flags = cpu_flags() or frozenset()
    out = {"cpu_flags": sorted(f for f in flags if f == "avx2" or f.startswith(("avx512", "amx"))),
           "threads": torch.get_num_threads(),
           "loadavg": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
           "torch": torch.__version__, "python": platform.python_version()}
    device = _device(device)
    if device.type == "cuda":
        out.update(gpu=torch.cuda.get_device_name(device), torch_cuda=torch.version.cuda,
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    return out


def torch_cpu_report() -> dict:
    """What torch detects on this CPU: {"capability": ATen's kernel level ("AVX2", "AVX512", "DEFAULT", ...),
    "architecture": "x86_64" / "aarch64" / ..., feature: bool for the features msrs looks at}.  Features torch
    cannot report (an older torch) are absent."""
    report = {"capability": None, "architecture": platform.machine()}
    try:
        report["capability"] = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        pass
    capabilities = None
    try:
        capabilities = torch.cpu.get_capabilities()  # public from torch 2.8 on (cpuinfo library)
    except (AttributeError, RuntimeError):
        pass
    if isinstance(capabilities, Mapping):
        report["architecture"] = capabilities.get("architecture") or report["architecture"]
        for key in ("avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16", "amx_tile"):
            if key in capabilities:
                report[key] = bool(capabilities[key])
        return report
    for key, helper in (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx_tile", "_is_amx_tile_supported"),
                        ("amx_fp16", "_is_amx_fp16_supported")):
        fn = getattr(torch.cpu, helper, None)
        if callable(fn):
            try:
                report[key] = bool(fn())
            except RuntimeError:
                pass
    if "amx_tile" in report:  # every AMX CPU so far has AMX-BF16 with its tiles
        report["amx_bf16"] = report["amx_tile"]
    return report


def _family(architecture: str) -> str:
    arch = (architecture or "").lower()
    if arch in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "x86"
    if arch.startswith(("aarch64", "arm")):
        return "arm"
    return "other"


def _flags_say(wanted: tuple, flags: Optional[frozenset], name: str) -> tuple:
    """(native by the cpuinfo flags or None when unknown, how to say it)."""
    if flags is None:
        return None, "no cpuinfo flags"
    present = [f for f in wanted if f in flags]
    if present:
        return True, "cpuinfo lists " + ", ".join(present)
    return False, "cpuinfo has no " + ("/".join(wanted) if wanted else f"known {name} flag")


def _torch_says(keys: list, report: Mapping) -> tuple:
    """(native by torch's detection or None when torch reports none of ``keys``, how to say it)."""
    capability = report.get("capability") or "unknown"
    if not keys:
        return None, f"torch reports no such feature (kernels: {capability})"
    present = [k for k in keys if report[k]]
    if present:
        return True, f"torch detects {'/'.join(present)} (kernels: {capability})"
    return False, f"torch detects no {'/'.join(keys)} (kernels: {capability})"


def cpu_native(dtype: torch.dtype, *, flags: Optional[frozenset], report: Mapping) -> tuple:
    """(native, reason) for ``dtype`` on a CPU with these cpuinfo ``flags`` (None: unknown) and torch ``report``
    (torch_cpu_report()).  float32 is always native; bf16 / fp16 need both sources to agree where both speak."""
    if dtype == torch.float32:
        return True, "float32 is native everywhere"
    name = _dtype_name(dtype)
    family = _family(report.get("architecture") or "")
    wanted = (BF16_CPU_FLAGS if dtype == torch.bfloat16 else FP16_CPU_FLAGS).get(family, ())
    by_flags, flag_text = _flags_say(wanted, flags, name)
    # torch's feature report is x86-only (its Arm answers are always False): ask it on x86 alone
    by_torch, torch_text = _torch_says([k for k in _TORCH_KEYS[name] if k in report] if family == "x86" else [],
                                       report)
    if by_flags is None and by_torch is None:
        return False, f"{name} support unknown on this {family} CPU ({flag_text}; {torch_text})"
    if by_flags is not None and by_torch is not None and by_flags != by_torch:
        return False, f"{name} not treated as native: {flag_text} but {torch_text}"
    native = by_flags if by_flags is not None else by_torch
    return bool(native), f"{name} {'native' if native else 'emulated'} on this CPU: {flag_text}; {torch_text}"


# --------------------------------------------------------------------------------------------------------- GPU facts
def gpu_native(dtype: torch.dtype, device: torch.device) -> tuple:
    """(native, reason) for ``dtype`` on a CUDA (or ROCm) device."""
    if dtype == torch.float32:
        return True, "float32 is native everywhere"
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    name = _dtype_name(dtype)
    if torch.version.hip:  # ROCm: torch reports bf16 and fp16 as supported on every GPU; msrs takes its word
        return True, f"{name} taken as native on ROCm device {index} (gfx {major}.{minor}; not checked by msrs)"
    if dtype == torch.bfloat16:
        try:
            supported = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # an older torch: no emulation fallback to exclude
            supported = torch.cuda.is_bf16_supported()
        native = bool(supported) and (major, minor) >= (8, 0)
        return native, (f"bfloat16 {'native' if native else 'emulated'} on cuda:{index} (compute capability "
                        f"{major}.{minor}; native from 8.0, torch.cuda.is_bf16_supported: {bool(supported)})")
    native = (major, minor) >= (7, 0)  # tensor cores
    return native, (f"float16 {'native' if native else 'slow'} on cuda:{index} (compute capability {major}.{minor}; "
                    "tensor cores from 7.0)")


# ------------------------------------------------------------------------------------------------------ decisions
def _device(device: DeviceLike) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: {device!r} is not a device ({e})") from None


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def native_support(dtype: torch.dtype, device: DeviceLike) -> tuple:
    """(native, reason): whether ``dtype`` runs natively (not emulated) on ``device``."""
    device = _device(device)
    if device.type == "cpu":
        return cpu_native(dtype, flags=cpu_flags(), report=torch_cpu_report())
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {str(device)!r} requested but CUDA is not available here")
        return gpu_native(dtype, device)
    if dtype == torch.float32:
        return True, "float32 is native everywhere"
    return False, f"{_dtype_name(dtype)} support on {device.type} is not detected by msrs"


def resolve_dtype(request: Union[str, torch.dtype], device: DeviceLike) -> tuple:
    """(torch.dtype, reason) for a requested compute dtype on ``device``.

    "auto": bfloat16 where it is native (CUDA compute capability >= 8.0, CPUs with AVX512-BF16 / AMX-BF16 / Arm BF16),
    float32 otherwise (float16 is never chosen automatically: its range can overflow in models trained in float32).
    The environment variable MSRS_AUTO_DTYPE (float32 / bfloat16 / float16) pins what "auto" means, e.g. to compare
    runs across machines (the test suite pins float32, so that its exact comparisons do not depend on the CPU).
    "float32" / "bfloat16" / "float16" (or the torch dtypes): that dtype, with whether it is native in the reason."""
    if isinstance(request, torch.dtype):
        if request not in _DTYPES.values():
            raise ValueError(f"dtype: expected one of {', '.join(DTYPE_REQUESTS)}, got {request}")
        request = _dtype_name(request)
    if not isinstance(request, str) or request not in DTYPE_REQUESTS:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPE_REQUESTS)}, got {request!r}")
    pinned = os.environ.get(AUTO_DTYPE_ENV)
    if request == "auto" and pinned:
        if pinned not in _DTYPES:
            raise ValueError(f"{AUTO_DTYPE_ENV}: expected one of {', '.join(_DTYPES)}, got {pinned!r}")
        return _DTYPES[pinned], f"auto: {pinned}, pinned by {AUTO_DTYPE_ENV}"
    if request != "auto":
        dtype = _DTYPES[request]
        if dtype == torch.float32:
            return dtype, "float32 requested"
        native, reason = native_support(dtype, device)
        return dtype, f"{request} requested ({reason})"
    native, reason = native_support(torch.bfloat16, device)
    if native:
        return torch.bfloat16, f"auto: {reason}"
    return torch.float32, f"auto: float32, since {reason}"


def slow_dtype_warning(dtype: torch.dtype, device: DeviceLike) -> Optional[str]:
    """The one-line warning for running ``dtype`` where it is emulated (None where it is native or float32)."""
    if dtype == torch.float32:
        return None
    device = _device(device)
    native, reason = native_support(dtype, device)
    if native or device.type not in ("cpu", "cuda"):
        return None  # other devices: msrs cannot tell, so it does not nag
    name = _dtype_name(dtype)
    measured = ""
    if device.type == "cpu":
        measured = "; measured on an AVX2-only CPU: " + (EMULATED_BF16_MEASURED if dtype == torch.bfloat16
                                                         else EMULATED_FP16_MEASURED)
    return f"msrs: warning: --dtype {name} is slow here ({reason}{measured}); use --dtype auto or float32"


def warn_if_slow(dtype: torch.dtype, device: DeviceLike, *, file=None) -> Optional[str]:
    """Prints slow_dtype_warning(dtype, device) to ``file`` (default stderr) when there is one; returns it."""
    message = slow_dtype_warning(dtype, device)
    if message:
        print(message, file=sys.stderr if file is None else file, flush=True)
    return message


# ---------------------------------------------------------------------------------------------------- torch.compile
# Measured on the demo models here (module docstring, run C): compiling both models took as long as 193,000 samples
# take less time once compiled.  Advised from COMPILE_MARGIN times that, because compile time varies a lot with the
# load, the cache (~/.cache / /tmp/torchinductor_*) and the model (10-550 s seen here).
COMPILE_BREAK_EVEN_SAMPLES_CPU = 193_000
COMPILE_MARGIN = 3.0
COMPILE_WORTH_SAMPLES_CPU = 580_000  # COMPILE_MARGIN x the break-even, rounded


def compile_advice(samples: int, device: DeviceLike) -> tuple:
    """(worth, reason): whether torch.compile (--compile) is expected to pay for a run that pushes ``samples``
    Monte Carlo samples through the models (images x (n0 + n) x stages for a fixed-n run, the budget for a
    sequential one).  worth is None where msrs has no measurement (GPUs: not measured yet)."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise ValueError(f"samples: expected an int >= 0, got {samples!r}")
    device = _device(device)
    if device.type != "cpu":
        return None, (f"--compile on {device.type}: not measured by msrs yet (on a CPU it pays beyond about "
                      f"{COMPILE_WORTH_SAMPLES_CPU:,} samples)")
    worth = samples >= COMPILE_WORTH_SAMPLES_CPU
    verdict = "worth it" if worth else "not worth it"
    return worth, (f"--compile is {verdict} for {samples:,} samples on a CPU: compiling costs about as much time as "
                   f"{COMPILE_BREAK_EVEN_SAMPLES_CPU:,} samples save (measured on the demo models, float32), and "
                   f"msrs advises it from {COMPILE_WORTH_SAMPLES_CPU:,} samples")
