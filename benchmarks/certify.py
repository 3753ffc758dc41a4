"""End-to-end throughput of diffusion denoised smoothing: the field's per-image loop against msrs's engine.

    python benchmarks/certify.py                               # table on stdout
    python benchmarks/certify.py --json out.json               # also a list of records
    python benchmarks/certify.py --workloads demo --n 2000 --images 16 --impls reference,msrs:bfloat16

Records: {"workload", "device", "impl", "dtype", "samples_per_s", "images_per_s", "speedup_vs_reference",
"speedup_vs_reference_same_dtype", "unet_time_fraction", "unet_fraction_of_matmul_peak", "peak_memory_bytes",
"batch_size", ...} (plus the run's settings). samples_per_s = images * (n0 + n) / seconds of
one CERTIFY of the whole group (selection + estimation samples, Clopper-Pearson, radius).

Workloads
  demo          the shipped demo models (msrs.zoo: load_demo_classifier, load_demo_denoiser), 8x8 digits, test
                images. Where a shipped model is missing, a random-weights stand-in of the same architecture (the
                classifier: msrs.zoo.digits_classifier; the DDPM: scripts/train_ddpm.py's UNet2DModel, width 32,
                2 layers per block, 1000-step linear schedule); the record's "models" field says which.
  cifar10-ddpm  a diffusers UNet2DModel with the public 36M-parameter CIFAR-10 DDPM config (random weights; the
                throughput does not depend on them) and a ResNet-18 (CIFAR variant, 11M parameters, written below)
                at 32x32. About 23 UNet images/s on 2 CPU cores: keep n small on a CPU.

Implementations, IMPL[:DTYPE] (same models, same images, same n0 / n / sigma / alpha, timed round-robin in one run)
  reference     the field's loop (Cohen et al.'s core.Smooth as used by Carlini et al.'s and the multi-scale code):
                per image, batches of batch_size: x.repeat, torch.randn_like * sigma, add, scale to the timestep
                a (2 x - 1), UNet, the one-step denoise formula as separate ops, clamp, (x + 1) / 2, normalise,
                classifier, argmax, .cpu(), numpy bincount; under torch.no_grad. float32 unless :DTYPE (autocast).
                speedup_vs_reference is against reference:float32, the public code as it runs;
                speedup_vs_reference_same_dtype against the reference in the impl's own dtype, when in the run.
  msrs          msrs.smoothing.SmoothedClassifier(...).certify with msrs.denoiser.DiffusionDenoiser: rows of all
                images share batches (counter-based Philox noise), fused ops (msrs.ops), counts accumulated on the
                device, inference_mode, autocast in DTYPE; --channels-last runs the UNet in channels_last.
  msrs+compile  msrs with compile=True: classifier and UNet through torch.compile at one static batch shape
                (msrs.compiled: CPU freezing, CUDA graphs on a GPU); compile time reported apart (compile_s).
  msrs+channels_last  msrs with the UNet in channels_last (as --channels-last, for this impl only, so that one
                run can hold it beside msrs+compile, which refuses channels_last).
  msrs+sequential, msrs+compile+sequential  (not in the default list) with sequential early stopping
                (certify_sequential) for target radii 0.25, 0.5, 0.75, 1.0 and n as the budget: different
                certificates (bounds valid under early stopping), so samples_per_s is an *equivalent* rate,
                images * (n0 + n) / seconds; samples_drawn says what it drew.
unet_time_fraction: the UNet calls alone (as the impl makes them: eager or compiled, autocast), timed in a separate
pass over batches of the recorded shapes, divided by the impl's time. unet_fraction_of_matmul_peak: the UNet's
FLOP/s in that pass (torch.utils.flop_counter) over a large matmul's FLOP/s in the same dtype, measured in the same
run: how much faster the UNet could still get. peak_memory_bytes: torch.cuda.max_memory_allocated on a GPU, the
process's peak RSS on a CPU (msrs.autobatch.peak_memory_bytes, reset before each impl where Linux allows).

On a CPU shared with other jobs, use --threads 1: with 2 OpenMP threads every parallel op waits for a time slice
of the second thread (measured here: about 8 ms per op, 10x slower end to end than 1 thread under load).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from msrs import hardware  # noqa: E402
from msrs.autobatch import _reset_peak, peak_memory_bytes  # noqa: E402

IMPLS = ("reference", "msrs", "msrs+compile", "msrs+channels_last", "msrs+sequential", "msrs+compile+sequential")
DTYPES = ("float32", "bfloat16", "float16")
# The default rows follow the hardware (msrs.hardware): bf16 rows only where bf16 is native. Where it is emulated
# (CPUs without AVX512-BF16 / AMX, GPUs before compute capability 8.0) a bf16 row is 10-60x slower than fp32 and
# the default run would not finish its warm-up in 10 minutes on a 2-core AVX2 CPU.
DEFAULT_IMPLS = {
    "cpu": "reference,reference:bfloat16,msrs:float32,msrs:bfloat16,msrs+compile:bfloat16",
    "cuda": "reference,reference:bfloat16,msrs:bfloat16,msrs+compile:bfloat16",
    # No compiled row by default where bf16 is emulated: on an AVX2-only 2-core CPU compiling the UNet took 6-9
    # minutes and did not pay within this benchmark's runs (cifar10-ddpm 0.97x); add msrs+compile:float32 to --impls.
    "emulated-bf16": "reference,msrs:float32",
}


def default_impls(device: str) -> str:
    """The default --impls for ``device``: DEFAULT_IMPLS["cpu"] / ["cuda"] where bf16 is native there,
    DEFAULT_IMPLS["emulated-bf16"] (float32 rows only) where it is not."""
    native, _ = hardware.native_support(torch.bfloat16, device)
    if not native:
        return DEFAULT_IMPLS["emulated-bf16"]
    return DEFAULT_IMPLS["cuda" if torch.device(device).type == "cuda" else "cpu"]


def default_dtype(device: str) -> str:
    """The dtype of msrs impls given without :DTYPE: msrs.hardware.resolve_dtype("auto", device)."""
    return str(hardware.resolve_dtype("auto", device)[0]).replace("torch.", "")
TARGET_RADII = (0.25, 0.5, 0.75, 1.0)
DEFAULTS = {
    # workload: images, n0, n, batch size, sigma
    "demo": dict(images=8, n0=100, n=1000, batch_size=400, sigma=0.5, msrs_batch_sizes=(400,)),
    "cifar10-ddpm": dict(images=1, n0=16, n=80, batch_size=32, sigma=0.5, msrs_batch_sizes=(32,)),
}
ALPHA = 0.001
SEED = 0


# ------------------------------------------------------------------------------------------------- models
class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18, CIFAR variant (3x3 stem, no max-pool), 11.2M parameters, for 32x32 inputs."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


def cifar10_ddpm_unet():
    """The public CIFAR-10 DDPM (google/ddpm-cifar10-32) architecture, 35.7M parameters, random weights."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        dropout=0.1, attention_head_dim=None, norm_eps=1e-6, resnet_time_scale_shift="default",
        flip_sin_to_cos=False, freq_shift=1, downsample_padding=0,
    )


def digits_unet_stand_in():
    """scripts/train_ddpm.py's demo UNet (width 32, 2 layers per block, no attention), random weights."""
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 64), layers_per_block=2,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=32)


def linear_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def build_workload(name: str, device: torch.device, images: int) -> dict:
    """unet, scheduler (alphas_cumprod), classifier, mean, std, num_classes, images [B, C, H, W], models note."""
    torch.manual_seed(0)
    if name == "demo":
        from msrs import zoo

        notes = []
        try:
            classifier, mean, std, num_classes = zoo.load_demo_classifier(device)
            notes.append("classifier: shipped")
        except FileNotFoundError:
            classifier, mean, std, num_classes = zoo.digits_classifier(), (0.5,), (0.5,), 10
            notes.append("classifier: random stand-in")
        try:
            den = zoo.load_demo_denoiser(False, device)
            unet = den.unet
            scheduler = den._scheduler()
            notes.append("denoiser: shipped digits_ddpm")
        except (FileNotFoundError, ImportError, AttributeError):
            unet, scheduler = digits_unet_stand_in(), linear_scheduler()
            notes.append("denoiser: random stand-in (train_ddpm.py architecture)")
        x, _ = zoo.digits_split("test")
        x = x[:images]
    elif name == "cifar10-ddpm":
        unet, scheduler = cifar10_ddpm_unet(), linear_scheduler()
        classifier, num_classes = ResNet18(10), 10
        mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
        x = torch.rand(images, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        notes = ["random weights (public DDPM config, ResNet-18)"]
    else:
        raise ValueError(f"workload: expected one of {', '.join(DEFAULTS)}, got {name!r}")
    return dict(unet=unet.to(device).eval(), scheduler=scheduler, classifier=classifier.to(device).eval(), mean=mean,
                std=std, num_classes=num_classes, images=x.to(device), models="; ".join(notes))


class Recorder(nn.Module):
    """Passes calls to the UNet and records the input shapes (for the separate UNet-only timing pass)."""

    def __init__(self, unet):
        super().__init__()
        self.inner = unet
        self.config = unet.config
        self.shapes: list[tuple] = []

    def forward(self, x, t, **kwargs):
        self.shapes.append((tuple(x.shape), x.dtype, x.is_contiguous(memory_format=torch.channels_last)))
        return self.inner(x, t, **kwargs)


# ------------------------------------------------------------------------------------------- implementations
def timestep_reference(abar: torch.Tensor, sigma: float) -> tuple[int, float]:
    """The field's rule: the first t with sqrt(abar_t) <= 1 / sqrt(1 + (2 sigma)^2)."""
    target = 1.0 / math.sqrt(1.0 + 4.0 * sigma * sigma)
    t = int(torch.nonzero(abar.double().sqrt() <= target)[0, 0])
    return t, float(abar[t].double().sqrt())


class ReferenceSmooth:
    """The field's Smooth (Cohen et al.'s core.py) around the denoise-then-classify model (Carlini et al.)."""

    def __init__(self, w: dict, unet, sigma: float, dtype: torch.dtype):
        self.unet, self.classifier, self.num_classes, self.sigma = unet, w["classifier"], w["num_classes"], sigma
        device = w["images"].device
        self.mean = torch.tensor(w["mean"], device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(w["std"], device=device).view(1, -1, 1, 1)
        self.t, self.a = timestep_reference(torch.as_tensor(w["scheduler"].alphas_cumprod), sigma)
        self.dtype = dtype

    def base_classify(self, noisy):
        x_t = self.a * (2 * noisy - 1)
        eps = self.unet(x_t, torch.full((noisy.shape[0],), self.t, device=noisy.device)).sample
        x0 = (x_t - math.sqrt(1 - self.a ** 2) * eps) / self.a
        x0 = torch.clamp(x0, -1, 1)
        img = (x0 + 1) / 2
        img = (img - self.mean) / self.std
        return self.classifier(img)

    def sample_noise(self, x, num, batch_size):
        with torch.no_grad():
            counts = np.zeros(self.num_classes, dtype=int)
            for _ in range(math.ceil(num / batch_size)):
                this = min(batch_size, num)
                num -= this
                batch = x.repeat((this, 1, 1, 1))
                noise = torch.randn_like(batch) * self.sigma
                if self.dtype != torch.float32:
                    with torch.autocast(batch.device.type, dtype=self.dtype):
                        predictions = self.base_classify(batch + noise).argmax(1)
                else:
                    predictions = self.base_classify(batch + noise).argmax(1)
                counts += np.bincount(predictions.cpu().numpy(), minlength=self.num_classes)
            return counts

    def certify(self, x, n0, n, alpha, batch_size):
        from scipy.stats import beta, norm

        counts0 = self.sample_noise(x, n0, batch_size)
        c_a = int(counts0.argmax())
        counts = self.sample_noise(x, n, batch_size)
        n_a = int(counts[c_a])
        p_lower = beta.ppf(alpha, n_a, n - n_a + 1) if n_a > 0 else 0.0
        return (-1, 0.0) if p_lower < 0.5 else (c_a, self.sigma * norm.ppf(p_lower))


def parse_impl(spec: str, default_dtype: str) -> tuple[str, str]:
    """'msrs+compile:bfloat16' -> ('msrs+compile', 'bfloat16'); no suffix: the reference runs in float32 (the
    field's code), the msrs impls in --dtype."""
    name, _, dtype = spec.strip().partition(":")
    if name not in IMPLS:
        raise ValueError(f"--impls: unknown {name!r}; expected one of {', '.join(IMPLS)} (optionally :dtype)")
    dtype = dtype or ("float32" if name == "reference" else default_dtype)
    if dtype not in DTYPES:
        raise ValueError(f"--impls: unknown dtype {dtype!r} in {spec!r}; expected one of {', '.join(DTYPES)}")
    return name, dtype


def make_runner(impl: str, dtype: torch.dtype, w: dict, args, batch_size: int) -> tuple:
    """(run() -> predictions, unet_call(x, t), shapes list filled by run(), extra record fields)."""
    images, sigma = w["images"], args.sigma
    unet = copy.deepcopy(w["unet"])  # each variant its own copy (memory format, compilation)
    if impl == "reference":
        torch.manual_seed(SEED)
        rec = Recorder(unet)
        smooth = ReferenceSmooth(w, rec, sigma, dtype)

        def run():
            return [smooth.certify(images[i: i + 1], args.n0, args.n, ALPHA, batch_size)[0]
                    for i in range(images.shape[0])]

        return run, lambda x, t: unet(x, t).sample, rec.shapes, {}
    from msrs.denoiser import DiffusionDenoiser
    from msrs.smoothing import SmoothedClassifier

    channels_last = args.channels_last or impl == "msrs+channels_last"
    den = DiffusionDenoiser(unet, w["scheduler"], channels_last=channels_last).to(images.device).eval()
    compiled = impl.startswith("msrs+compile")
    classifier = copy.deepcopy(w["classifier"]) if compiled else w["classifier"]
    sm = SmoothedClassifier(classifier, w["num_classes"], denoiser=den, mean=w["mean"], std=w["std"],
                            device=images.device, dtype=dtype, compile=compiled)
    shapes = []
    predict_eps = den.predict_eps

    def recording_predict_eps(x_t, timesteps, **kwargs):  # outside compiled code: always runs
        shapes.append((tuple(x_t.shape), x_t.dtype, False))
        return predict_eps(x_t, timesteps, **kwargs)

    den.predict_eps = recording_predict_eps
    extra = {"channels_last": channels_last, "compiled": compiled}

    def run():
        certs = sm.certify(images, sigma, args.n0, args.n, ALPHA, seed=SEED, batch_size=batch_size)
        return [c.prediction for c in certs]

    if impl.endswith("+sequential"):
        def run():
            certs = sm.certify_sequential(images, sigma, args.n0, args.n, ALPHA, seed=SEED, batch_size=batch_size,
                                          target_radii=TARGET_RADII)
            extra["samples_drawn"] = int(sum(c.samples for c in certs))
            return [c.prediction for c in certs]

        extra["target_radii"] = list(TARGET_RADII)
        extra["note"] = ("sequential early stopping (msrs.sequential): samples_per_s counts the fixed-n work it "
                         "replaces, images * (n0 + n); samples_drawn is what it drew")
    if compiled:
        t0 = time.perf_counter()
        run()  # compiles (one static batch shape: msrs.compiled)
        extra["compile_s"] = round(time.perf_counter() - t0, 2)
    return run, predict_eps, shapes, extra


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def unet_only_pass(unet_call, shapes, t: int, device, dtype) -> float:
    """Seconds of the UNet alone (as the impl calls it: eager, compiled, autocast) on fresh inputs of the
    recorded shapes."""
    inputs = []
    with torch.inference_mode():  # inference tensors, as the engine's (else compiled code re-specialises)
        for shape, xdtype, cl in shapes:
            x = torch.randn(shape, device=device, dtype=xdtype)
            inputs.append(x.contiguous(memory_format=torch.channels_last) if cl else x)
    _sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        for x in inputs:
            steps = torch.full((x.shape[0],), t, dtype=torch.int64, device=device)
            if dtype != torch.float32:
                with torch.autocast(device.type, dtype=dtype):
                    unet_call(x, steps)
            else:
                unet_call(x, steps)
    _sync(device)
    return time.perf_counter() - start


def unet_flops_per_sample(unet, w: dict, device) -> float:
    """Floating-point operations of one UNet call per sample (torch.utils.flop_counter: convs, matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros((4, *w["images"].shape[1:]), device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        unet(x, torch.zeros(4, dtype=torch.int64, device=device))
    return counter.get_total_flops() / 4


def matmul_peak_flops(device, dtype: torch.dtype, size: int | None = None) -> float:
    """Measured FLOP/s of a large square matmul in `dtype` on this device: the roofline the UNet's convs face."""
    size = size or (2048 if device.type == "cpu" else 8192)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    best = math.inf
    for _ in range(3):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * size ** 3 / best


def bench_workload(name: str, args) -> list[dict]:
    device = torch.device(args.device)
    w = build_workload(name, device, args.images)
    variants = []  # (impl, dtype name, batch size)
    for impl, dtype in args.impls:
        sizes = [args.batch_size] if impl == "reference" else args.msrs_batch_sizes
        variants += [(impl, dtype, bs) for bs in sizes]
    runners = {}
    samples = w["images"].shape[0] * (args.n0 + args.n)
    for key in variants:
        try:
            runners[key] = make_runner(key[0], getattr(torch, key[1]), w, args, key[2])
        except Exception as exc:  # noqa: BLE001 - a variant that cannot run here is reported, not fatal
            print(f"# {name}/{key}: skipped ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})", file=sys.stderr)
    # round-robin: one warm-up run each, then `repeat` rounds, every other one in reverse order, so that a machine
    # speeding up or slowing down through the run (shared CPUs drift by 30 % in minutes) does not favour the variant
    # that runs first; the UNet-only pass follows each timed run
    times = {key: [] for key in runners}
    unet_times = {key: [] for key in runners}
    unet_samples = {}
    peaks = {key: 0 for key in runners}
    batches, preds = {}, {}
    t_step = timestep_reference(torch.as_tensor(w["scheduler"].alphas_cumprod), args.sigma)[0]
    mem_device = device if device.type == "cuda" else None
    machine = hardware.machine(device)  # the CPU flags and the load at the start, beside the figures
    for run, _, _, _ in runners.values():
        run()
    for round_index in range(args.repeat):
        order = list(runners.items())
        for key, (run, unet_call, shapes, _) in (order[::-1] if round_index % 2 else order):
            shapes.clear()
            _sync(device)
            _reset_peak(mem_device)
            t0 = time.perf_counter()
            preds[key] = run()
            _sync(device)
            times[key].append(time.perf_counter() - t0)
            peaks[key] = max(peaks[key], peak_memory_bytes(mem_device))
            recorded = list(shapes)
            unet_times[key].append(unet_only_pass(unet_call, recorded, t_step, device, getattr(torch, key[1])))
            batches[key] = len(recorded)
            unet_samples[key] = sum(s[0][0] for s in recorded)
        print(f"# {name} round {round_index + 1}/{args.repeat}: "
              + ", ".join(f"{k[0]}:{k[1]}@{k[2]} {v[-1]:.2f}s" for k, v in times.items()), file=sys.stderr, flush=True)
    flops = unet_flops_per_sample(w["unet"], w, device)
    peak_flops = {dt: matmul_peak_flops(device, getattr(torch, dt), args.matmul_size) for dt in {k[1] for k in runners}}
    ref_key = next((k for k in times if k[0] == "reference" and k[1] == "float32"), None) or \
        next((k for k in times if k[0] == "reference"), None)
    ref = statistics.median(times[ref_key]) if ref_key else None
    records = []
    for key in runners:
        seconds = statistics.median(times[key])
        unet_s = statistics.median(unet_times[key])
        same = [k for k in times if k[0] == "reference" and k[1] == key[1]]
        rec = dict(
            workload=name, device=_device_name(device), impl=key[0], dtype=key[1],
            samples_per_s=round(samples / seconds, 1),
            images_per_s=round(w["images"].shape[0] / seconds, 3),
            speedup_vs_reference=round(ref / seconds, 3) if ref else None,
            reference=f"{ref_key[0]}:{ref_key[1]}" if ref_key else None,
            speedup_vs_reference_same_dtype=(round(statistics.median(times[same[0]]) / seconds, 3) if same else None),
            unet_time_fraction=round(statistics.median(u / t for u, t in zip(unet_times[key], times[key])), 3),
            unet_gflop_per_s=round(flops * unet_samples[key] / unet_s / 1e9, 1),
            unet_fraction_of_matmul_peak=round(flops * unet_samples[key] / unet_s / peak_flops[key[1]], 3),
            matmul_peak_gflop_per_s=round(peak_flops[key[1]] / 1e9, 1),
            unet_gflop_per_sample=round(flops / 1e9, 4),
            peak_memory_bytes=int(peaks[key]), batch_size=key[2],
            seconds=round(seconds, 3), seconds_all=[round(x, 3) for x in times[key]],
            images=int(w["images"].shape[0]), n0=args.n0, n=args.n, sigma=args.sigma,
            threads=torch.get_num_threads(), unet_batches=batches.get(key), models=w["models"],
            abstain_fraction=round(float(np.mean(np.asarray(preds[key]) == -1)), 3),
            prediction_agreement_with_reference=(round(float(np.mean(np.asarray(preds[key]) ==
                                                                      np.asarray(preds[ref_key]))), 3)
                                                 if ref_key else None),
            machine=machine,
        )
        rec.update(runners[key][3])
        records.append(rec)
    return records


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def print_table(records: list[dict]) -> None:
    cols = ("workload", "impl", "dtype", "device", "batch_size", "samples_per_s", "images_per_s",
            "speedup_vs_reference", "speedup_vs_reference_same_dtype", "unet_time_fraction",
            "unet_fraction_of_matmul_peak", "peak_memory_bytes", "seconds")
    rows = [[str(r.get(c)) if c != "peak_memory_bytes" else f"{r[c] / 2**20:.0f} MiB" for c in cols] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(wd) for c, wd in zip(cols, widths)))
    for row in rows:
        print("  ".join(v.ljust(wd) for v, wd in zip(row, widths)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default="demo,cifar10-ddpm", help="comma-separated: " + ", ".join(DEFAULTS))
    p.add_argument("--impls", default=None,
                   help="comma-separated IMPL[:DTYPE], IMPL one of " + ", ".join(IMPLS) + "; default on a CPU: "
                        + DEFAULT_IMPLS["cpu"] + "; on a GPU: " + DEFAULT_IMPLS["cuda"] + "; where bf16 is "
                        "emulated (msrs.hardware; AVX2-only CPUs, GPUs before sm_80): "
                        + DEFAULT_IMPLS["emulated-bf16"])
    p.add_argument("--n", type=int, default=None, help="estimation samples per image (default: per workload)")
    p.add_argument("--n0", type=int, default=None, help="selection samples per image (default: per workload)")
    p.add_argument("--images", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="the reference's per-image batch (and msrs's)")
    p.add_argument("--msrs-batch-size", default=None,
                   help="msrs's batch sizes, comma-separated (rows of several images share a batch; default: per "
                        "workload, the reference's batch and a larger one)")
    p.add_argument("--sigma", type=float, default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=DTYPES,
                   help="autocast dtype of the msrs impls given without :DTYPE (default: bfloat16 where it is native, "
                        "float32 elsewhere: msrs.hardware.resolve_dtype('auto')); the reference without :DTYPE runs "
                        "in float32, as the field's code does")
    p.add_argument("--channels-last", action="store_true", help="msrs impls: UNet in channels_last")
    p.add_argument("--repeat", type=int, default=3, help="timed rounds (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--matmul-size", type=int, default=None,
                   help="side of the square matmul that measures the peak FLOP/s (default 2048 on a CPU, 8192 on a "
                        "GPU; smaller for smoke runs: bf16 is emulated, and slow, on CPUs without AVX512-BF16)")
    p.add_argument("--json", type=Path, default=None, help="write the records to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.dtype = args.dtype or default_dtype(args.device)
    spec = args.impls or default_impls(args.device)
    try:
        impls = [parse_impl(i, args.dtype) for i in spec.split(",") if i.strip()]
    except ValueError as err:
        p.error(str(err))
    records = []
    for name in [w.strip() for w in args.workloads.split(",") if w.strip()]:
        if name not in DEFAULTS:
            p.error(f"--workloads: unknown {name!r}; expected {', '.join(DEFAULTS)}")
        wargs = argparse.Namespace(**vars(args))
        for key, value in DEFAULTS[name].items():
            if key != "msrs_batch_sizes" and getattr(wargs, key) is None:
                setattr(wargs, key, value)
        if args.msrs_batch_size:
            wargs.msrs_batch_sizes = [int(b) for b in str(args.msrs_batch_size).split(",") if b.strip()]
        elif args.batch_size is not None:
            wargs.msrs_batch_sizes = [args.batch_size]
        else:
            wargs.msrs_batch_sizes = list(DEFAULTS[name]["msrs_batch_sizes"])
        wargs.impls = impls
        records += bench_workload(name, wargs)
    print_table(records)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
