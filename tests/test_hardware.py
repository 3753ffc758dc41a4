"""msrs.hardware: native bf16 detection from cpuinfo text and torch's report, dtype resolution, the slow-dtype warning,
the compile advice, and the benchmark's default rows that follow them."""
from __future__ import annotations

import io
import platform
from pathlib import Path

import pytest
import torch

from msrs import hardware
from conftest import load_script


# /proc/cpuinfo excerpts: this project's AVX2-only AMD EPYC (KVM), a Sapphire Rapids Xeon, a Graviton3 (Arm)
EPYC_AVX2 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep sse sse2 ht syscall nx lm pni ssse3 fma cx16 sse4_1 sse4_2 \
movbe popcnt aes xsave avx f16c rdrand hypervisor abm avx2 smep bmi2 erms invpcid rdseed adx smap sha_ni vaes
"""
SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse sse2 avx avx2 fma avx512f avx512dq avx512bw avx512vl avx512_vnni avx512_bf16 amx_bf16 \
avx512_fp16 amx_tile amx_int8
"""
GRAVITON3 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm sve bf16 i8mm
CPU implementer\t: 0x41
"""
TORCH_AVX2 = {"capability": "AVX2", "architecture": "x86_64", "avx512_bf16": False, "amx_bf16": False,
              "avx512_fp16": False, "amx_fp16": False, "amx_tile": False}
TORCH_SPR = {"capability": "AVX512", "architecture": "x86_64", "avx512_bf16": True, "amx_bf16": True,
             "avx512_fp16": True, "amx_fp16": False, "amx_tile": True}
TORCH_ARM = {"capability": "SVE256", "architecture": "aarch64"}


@pytest.fixture(autouse=True)
def unpinned(monkeypatch):
    """The suite pins "auto" to float32 (conftest.py); these tests are about what "auto" means unpinned."""
    monkeypatch.delenv(hardware.AUTO_DTYPE_ENV, raising=False)


def test_the_environment_pins_what_auto_means(monkeypatch, cpu_like):
    cpu_like(SAPPHIRE_RAPIDS, TORCH_SPR)
    assert hardware.resolve_dtype("auto", "cpu")[0] == torch.bfloat16
    monkeypatch.setenv(hardware.AUTO_DTYPE_ENV, "float32")
    dtype, reason = hardware.resolve_dtype("auto", "cpu")
    assert dtype == torch.float32 and hardware.AUTO_DTYPE_ENV in reason
    assert hardware.resolve_dtype("bfloat16", "cpu")[0] == torch.bfloat16  # only "auto" is pinned
    monkeypatch.setenv(hardware.AUTO_DTYPE_ENV, "fp8")
    with pytest.raises(ValueError, match=hardware.AUTO_DTYPE_ENV):
        hardware.resolve_dtype("auto", "cpu")


def test_cpu_flags_from_cpuinfo_text():
    assert {"avx2", "fma", "f16c"} <= hardware.cpu_flags(EPYC_AVX2)
    assert "avx512_bf16" not in hardware.cpu_flags(EPYC_AVX2)
    assert {"avx512_bf16", "amx_bf16"} <= hardware.cpu_flags(SAPPHIRE_RAPIDS)
    assert {"bf16", "sve", "asimd"} <= hardware.cpu_flags(GRAVITON3)
    assert hardware.cpu_flags("processor : 0\nmodel name : x\n") is None  # no flags line: unknown, not "none"
    assert hardware.cpu_flags("") is None


@pytest.mark.parametrize("text", [EPYC_AVX2, SAPPHIRE_RAPIDS, GRAVITON3, ""])
def test_machine_records_the_flags_the_readme_grep_prints(monkeypatch, text):
    """hardware.machine(), what benchmark records carry beside a speed figure, gives the CPU flags that the README's
    `grep -o 'avx512[a-z_0-9]*\\|amx[a-z_0-9]*\\|avx2' /proc/cpuinfo | sort -u` prints (the same regex run here on the
    whole text), and the threads and torch the figure was measured with."""
    import re

    monkeypatch.setattr(hardware, "read_cpuinfo", lambda path="/proc/cpuinfo": text)
    record = hardware.machine()
    assert record["cpu_flags"] == sorted(set(re.findall(r"avx512[a-z_0-9]*|amx[a-z_0-9]*|avx2", text)))
    assert record["threads"] == torch.get_num_threads() and record["torch"] == torch.__version__
    assert "gpu" not in record and len(record["loadavg"]) == 3


@pytest.mark.parametrize("text, report, native", [
    (EPYC_AVX2, TORCH_AVX2, False),
    (SAPPHIRE_RAPIDS, TORCH_SPR, True),
    (GRAVITON3, TORCH_ARM, True),
    (GRAVITON3.replace(" bf16", ""), TORCH_ARM, False),
    (None, TORCH_SPR, True),  # no /proc/cpuinfo (macOS, Windows): torch decides
    (None, TORCH_AVX2, False),
    (SAPPHIRE_RAPIDS, {"capability": "AVX512", "architecture": "x86_64"}, True),  # an older torch: flags decide
])
def test_cpu_bf16_native(text, report, native):
    flags = None if text is None else hardware.cpu_flags(text)
    got, reason = hardware.cpu_native(torch.bfloat16, flags=flags, report=report)
    assert got is native
    assert ("native" if native else "emulated") in reason and "bfloat16" in reason


def test_cpu_sources_must_agree():
    # a hypervisor listing avx512_bf16 that torch's detection does not confirm: not native, and the reason says so
    got, reason = hardware.cpu_native(torch.bfloat16, flags=hardware.cpu_flags(SAPPHIRE_RAPIDS), report=TORCH_AVX2)
    assert got is False and "not treated as native" in reason and "avx512_bf16" in reason
    got, _ = hardware.cpu_native(torch.bfloat16, flags=hardware.cpu_flags(EPYC_AVX2), report=TORCH_SPR)
    assert got is False
    got, reason = hardware.cpu_native(torch.bfloat16, flags=None, report={"capability": None, "architecture": "x86_64"})
    assert got is False and "unknown" in reason


def test_cpu_float16():
    assert hardware.cpu_native(torch.float16, flags=hardware.cpu_flags(SAPPHIRE_RAPIDS), report=TORCH_SPR)[0]
    assert not hardware.cpu_native(torch.float16, flags=hardware.cpu_flags(EPYC_AVX2), report=TORCH_AVX2)[0]
    assert hardware.cpu_native(torch.float32, flags=None, report={})[0]


@pytest.fixture()
def cpu_like(monkeypatch):
    """Makes msrs.hardware see the given cpuinfo text and torch report."""
    def use(text, report):
        monkeypatch.setattr(hardware, "read_cpuinfo", lambda path="/proc/cpuinfo": text)
        monkeypatch.setattr(hardware, "torch_cpu_report", lambda: dict(report))
    return use


def test_resolve_dtype_on_cpus(cpu_like):
    cpu_like(EPYC_AVX2, TORCH_AVX2)
    dtype, reason = hardware.resolve_dtype("auto", "cpu")
    assert dtype == torch.float32 and reason.startswith("auto: float32") and "emulated" in reason
    dtype, reason = hardware.resolve_dtype("bfloat16", torch.device("cpu"))
    assert dtype == torch.bfloat16 and "emulated" in reason
    assert hardware.resolve_dtype(torch.float16, "cpu")[0] == torch.float16
    assert hardware.resolve_dtype("float32", "cpu") == (torch.float32, "float32 requested")
    cpu_like(SAPPHIRE_RAPIDS, TORCH_SPR)
    dtype, reason = hardware.resolve_dtype("auto", "cpu")
    assert dtype == torch.bfloat16 and "avx512_bf16" in reason
    for bad in ("fp32", "half", None, torch.int8):
        with pytest.raises(ValueError, match="dtype: expected one of auto, float32, bfloat16, float16"):
            hardware.resolve_dtype(bad, "cpu")
    with pytest.raises(ValueError, match="device"):
        hardware.resolve_dtype("auto", "not-a-device")


def test_this_machine():
    """The real detection against a plain text search of /proc/cpuinfo (x86 and Arm Linux)."""
    text = Path("/proc/cpuinfo").read_text()
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        expected = " avx512_bf16" in text or " amx_bf16" in text
    else:
        expected = " bf16" in text
    dtype, reason = hardware.resolve_dtype("auto", "cpu")
    assert (dtype == torch.bfloat16) is expected, reason


class _FakeCuda:
    def __init__(self, capability, emulation=True):
        self.capability, self.emulation = capability, emulation

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: self.capability)
        monkeypatch.setattr(torch.version, "hip", None)

        def is_bf16_supported(including_emulation=True):
            return self.capability >= (8, 0) or (including_emulation and self.emulation)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)


@pytest.mark.parametrize("capability, native", [((7, 5), False), ((8, 0), True), ((9, 0), True), ((6, 1), False)])
def test_resolve_dtype_on_gpus(monkeypatch, capability, native):
    _FakeCuda(capability).install(monkeypatch)
    dtype, reason = hardware.resolve_dtype("auto", "cuda")
    assert dtype == (torch.bfloat16 if native else torch.float32)
    assert f"compute capability {capability[0]}.{capability[1]}" in reason
    warning = hardware.slow_dtype_warning(torch.bfloat16, "cuda:0")
    assert (warning is None) is native


def test_gpu_bf16_that_torch_emulates_is_not_native(monkeypatch):
    # torch.cuda.is_bf16_supported() says True on a T4 (7.5) by default: bf16 works there, emulated
    fake = _FakeCuda((7, 5), emulation=True)
    fake.install(monkeypatch)
    assert torch.cuda.is_bf16_supported() is True
    assert hardware.resolve_dtype("auto", "cuda")[0] == torch.float32


def test_cuda_requested_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device: 'cuda' requested but CUDA is not available"):
        hardware.resolve_dtype("auto", "cuda")


def test_warning_is_one_line_with_the_measured_reason(cpu_like):
    cpu_like(EPYC_AVX2, TORCH_AVX2)
    out = io.StringIO()
    message = hardware.warn_if_slow(torch.bfloat16, "cpu", file=out)
    assert out.getvalue() == message + "\n" and "\n" not in message
    assert message.startswith("msrs: warning: --dtype bfloat16 is slow here")
    assert "measured" in message and "s in float32" in message and "--dtype auto or float32" in message
    assert "measured" in hardware.warn_if_slow(torch.float16, "cpu", file=io.StringIO())
    for dtype in (torch.float32,):
        assert hardware.warn_if_slow(dtype, "cpu", file=out) is None
    cpu_like(SAPPHIRE_RAPIDS, TORCH_SPR)
    quiet = io.StringIO()
    assert hardware.warn_if_slow(torch.bfloat16, "cpu", file=quiet) is None and quiet.getvalue() == ""
    assert hardware.warn_if_slow(torch.bfloat16, "meta", file=quiet) is None  # unknown devices: no nagging


def test_compile_advice():
    threshold = hardware.COMPILE_WORTH_SAMPLES_CPU
    # the threshold is the measured break-even (run C of the module docstring: 423 s of compiling against 2.19 ms
    # saved per sample) times the margin
    assert hardware.COMPILE_BREAK_EVEN_SAMPLES_CPU == pytest.approx(423 / 2.19e-3, rel=0.01)
    assert threshold == pytest.approx(hardware.COMPILE_MARGIN * hardware.COMPILE_BREAK_EVEN_SAMPLES_CPU, rel=0.01)
    worth, reason = hardware.compile_advice(threshold - 1, "cpu")
    assert worth is False and "not worth it" in reason
    worth, reason = hardware.compile_advice(threshold, "cpu")
    assert worth is True and f"{threshold:,}" in reason and "worth it for" in reason
    demo_run = 100 * (100 + 1_000) * 3  # the demo's cascade: 100 images, n0 + n, up to 3 stages
    assert hardware.compile_advice(demo_run, "cpu")[0] is (demo_run >= threshold)
    worth, reason = hardware.compile_advice(10 ** 9, "cuda")
    assert worth is None and "not measured" in reason
    for bad in (-1, 1.5, True, "100"):
        with pytest.raises(ValueError, match="samples"):
            hardware.compile_advice(bad, "cpu")


def _bench():
    return load_script("benchmarks/certify.py")


def test_benchmark_defaults_follow_the_hardware(cpu_like, monkeypatch):
    bench = _bench()
    cpu_like(EPYC_AVX2, TORCH_AVX2)
    rows = [bench.parse_impl(i, bench.default_dtype("cpu")) for i in bench.default_impls("cpu").split(",")]
    assert rows and all(dtype == "float32" for _, dtype in rows)  # no emulated bf16 row on an AVX2-only CPU
    assert ("reference", "float32") in rows and ("msrs", "float32") in rows
    cpu_like(SAPPHIRE_RAPIDS, TORCH_SPR)
    rows = [bench.parse_impl(i, bench.default_dtype("cpu")) for i in bench.default_impls("cpu").split(",")]
    assert ("msrs", "bfloat16") in rows and bench.default_dtype("cpu") == "bfloat16"
    _FakeCuda((7, 0)).install(monkeypatch)
    assert "bfloat16" not in bench.default_impls("cuda")
    _FakeCuda((9, 0)).install(monkeypatch)
    assert "msrs+compile:bfloat16" in bench.default_impls("cuda")
