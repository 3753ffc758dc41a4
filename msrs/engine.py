"""The Monte Carlo engine: vote counts of a (denoised) base classifier on noisy copies of images. It only samples.

In: a group of images with their global ids, a noise level sigma, and segments [(stream, number of samples)]
(optionally a first sample index per image). Out: int64 vote counts [segments, images, classes] on the device.
Inside, and nowhere else: batching, backends, autocast, torch.compile, splitting over torchrun ranks and halving a
batch that runs out of memory. What the counts mean (certificates, stopping) is msrs.procedures'.

Every (image, sample) pair is a row (source image, global image id, sample index, noise stream); rows are cut into
batches of batch_size that mix images, and each batch runs
  plain:     x + sigma eps  ->  (x - mean) / std  ->  classifier  ->  votes
  denoiser:  a (2 (x + sigma eps) - 1)  ->  predict_eps  ->  finalize_denoised (clamp, [0, 1], mean/std)
             ->  classifier  ->  votes
with the votes accumulated into int64 counts on the device; the host reads the counts once per call. The noise of a
row depends only on (seed, image id, sample index, stream) (msrs.ops.philox; stream numbers: msrs.streams), so the
counts are the same whatever the batch size, the grouping of images, the backend, the device or the ranks.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from . import checks, distributed, hardware, ops
from .autobatch import AutoBatcher, is_out_of_memory
from .ops import validation as v
from .ops.philox import MASK32

__all__ = ["DTYPES", "Engine"]

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class _Plan:
    """The rows of `segments` [(stream, num_samples)] x `sources` (image-major inside a segment), generated batch
    by batch; a row's vote goes to counts row segment * len(sources) + its image's position."""

    def __init__(self, sources, ids, segments, start, device):
        self.sources, self.ids, self.start = sources, ids, start
        sizes = [num * len(sources) for _, num in segments]
        self.total = sum(sizes)
        self.ends = torch.tensor(np.cumsum(sizes), dtype=torch.int64, device=device)
        self.begins = self.ends - torch.tensor(sizes, dtype=torch.int64, device=device)
        self.streams = torch.tensor([stream for stream, _ in segments], dtype=torch.int64, device=device)
        self.nums = torch.tensor([max(num, 1) for _, num in segments], dtype=torch.int64, device=device)

    def rows(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = torch.arange(lo, hi, dtype=torch.int64, device=self.ends.device)
        seg = torch.searchsorted(self.ends, r, right=True)
        local = r - self.begins[seg]
        pos, offset = local // self.nums[seg], local % self.nums[seg]
        src = self.sources[pos]
        rows = torch.stack((src, self.ids[src], self.start[pos] + offset, self.streams[seg]), dim=1)
        return rows, seg * len(self.sources) + pos


class Engine:
    """Samples vote counts of `classifier` (an nn.Module or any callable from [N, C, H, W] to logits
    [N, num_classes]), optionally behind a one-step diffusion `denoiser` (docs/DESIGN.md interface).

    mean/std: the classifier's input normalisation (one value per channel or one for all), applied to the noisy
    (plain) or denoised (denoiser) image in [0, 1]. dtype: "auto" (bfloat16 where the device has it natively, float32
    elsewhere: msrs.hardware.resolve_dtype; the reason is in .dtype_reason), torch.float32, or torch.bfloat16 /
    torch.float16 to run the denoiser and classifier under torch.autocast. backend: the msrs.ops backend (None:
    automatic). device: where
    images, noise and counts live (default: the classifier module's device, else CPU).
    Modules are put in eval mode during sampling and restored afterwards.
    compile: run the classifier and the denoiser's UNet through torch.compile at one static batch shape, the
    batch size of the first sampling call (msrs.compiled): one graph per model for a whole run.
    input_size: the classifier's declared input (H, W) (msrs.models.LoadedClassifier.input_size): the (denoised)
    image is resized to it right before the classifier, with resize_mode = (torch interpolate mode, antialias), as
    the public code upsamples 32x32 CIFAR-10 to a 224x224 ViT (Carlini et al.). The resize is linear with weights
    summing to one, so it commutes with the per-channel normalisation that the fused ops apply first; the denoised
    image is clamped to [0, 1] before it, as in the public code.
    """

    def __init__(self, classifier, num_classes, *, denoiser=None, mean=None, std=None, device=None, backend=None,
                 dtype="auto", compile=False, input_size=None, resize_mode=("bilinear", True)):
        if not callable(classifier):
            raise checks.ArgumentTypeError(f"classifier: expected an nn.Module or a callable [N, C, H, W] -> logits "
                                           f"[N, K], got {type(classifier).__name__}")
        methods = ("timestep_for", "predict_eps")
        if denoiser is not None and not all(callable(getattr(denoiser, m, None)) for m in methods):
            raise checks.ArgumentTypeError(f"denoiser: expected an object with timestep_for(sigma) and "
                                           f"predict_eps(x_t, t), got {type(denoiser).__name__}")
        if not isinstance(dtype, str) and dtype not in DTYPES:
            raise checks.ArgumentTypeError(f"dtype: expected 'auto', torch.float32, torch.bfloat16 or torch.float16, "
                                           f"got {dtype}")
        self.num_classes = checks.integer("num_classes", num_classes, 2)
        self.device = torch.device(device) if device is not None else _module_device(classifier)
        self.dtype, self.dtype_reason = hardware.resolve_dtype(dtype, self.device)
        self.classifier, self.denoiser = classifier, denoiser
        self.mean, self.std = (None if t is None else torch.tensor(t, dtype=torch.float32, device=self.device)
                               for t in (checks.channel_stats("mean", mean),
                                         checks.channel_stats("std", std, positive=True)))
        if backend is not None:
            ops.resolve_backend(backend, self.device)
        self.backend = backend
        self.input_size = _input_size(input_size)
        self.resize_mode = (str(resize_mode[0]), bool(resize_mode[1]))
        self._batch_cap = None  # set when a batch ran out of memory: the largest batch size that fitted
        self._static = []  # the compiled models' StaticBatch wrappers, sized by the first sampling call
        self._run_classifier = self._compile(classifier, denoiser) if compile else classifier

    # ---------------------------------------------------------------- checks (all before any sampling)
    def group(self, images, image_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """The images [B, C, H, W] in [0, 1] as float32 on the device, and their ids (default 0 .. B-1)."""
        v.expect_tensor("images", images)
        v.expect_rank("images", images, 4, "[B, C, H, W]")
        v.expect_float("images", images)
        x = images.detach().to(self.device, torch.float32).contiguous()
        v.expect_in_unit_interval("images", x)
        channels = x.shape[1]
        expected = getattr(self.denoiser, "in_channels", None)
        if expected is not None and channels != expected:
            raise checks.ArgumentValueError(f"images: expected {expected} channels (the denoiser's in_channels), got "
                                            f"{channels}")
        for name, t in (("mean", self.mean), ("std", self.std)):
            if t is not None and t.numel() not in (1, channels):
                raise checks.ArgumentValueError(f"{name}: expected 1 or {channels} values (one per channel), got "
                                                f"{t.numel()}")
        if image_ids is None:
            return x, torch.arange(x.shape[0], device=self.device)
        ids = _as_tensor("image_ids", image_ids, self.device)
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.shape != (x.shape[0],):
            raise checks.ArgumentValueError(f"image_ids: expected {x.shape[0]} integer ids (one per image), got "
                                            f"{image_ids!r}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > MASK32):
            raise checks.ArgumentValueError("image_ids: expected ids in [0, 2^32)")
        return x, ids.to(torch.int64)

    # ---------------------------------------------------------------- sampling
    def sample_counts(self, images, image_ids, sigma, num_samples, *, stream, seed, batch_size, sample_start=0):
        """Votes [B, K] int64 on the device of num_samples noisy copies of each image in `stream`, samples
        sample_start .. sample_start + num_samples - 1 (an int, or one start per image)."""
        x, ids = self.group(images, image_ids)
        sigma = checks.sigma("sigma", sigma)
        checks.integer("num_samples", num_samples, 0, MASK32 + 1)
        checks.integer("stream", stream, 0, MASK32)
        checks.integer("seed", seed, 0, 2**63 - 1)
        checks.integer("batch_size", batch_size, 1)
        start = _as_tensor("sample_start", sample_start, self.device)
        if start.dtype.is_floating_point or start.dtype == torch.bool or start.shape not in ((), (x.shape[0],)):
            raise checks.ArgumentValueError(f"sample_start: expected an int or {x.shape[0]} ints (one per image), "
                                            f"got {sample_start!r}")
        start = start.to(torch.int64).expand(x.shape[0])
        if start.numel() and (int(start.min()) < 0 or int(start.max()) + num_samples > MASK32 + 1):
            raise checks.ArgumentValueError(f"sample_start: expected starts >= 0 with start + num_samples <= 2^32, "
                                            f"got {sample_start}")
        return self.counts(x, ids, sigma, [(stream, num_samples)], seed=seed, batch_size=batch_size, start=start)[0]

    def stage_counts(self, x, ids, sources, sigma, streams, n0, n, *, seed, batch_size) -> tuple:
        """Selection and estimation counts (numpy [B', K] each) of one stage, sampled in one pass.
        streams: the (selection, estimation) stream numbers (msrs.streams)."""
        counts = self.counts(x, ids, sigma, [(streams[0], n0), (streams[1], n)], seed=seed, batch_size=batch_size,
                             sources=sources).cpu().numpy()
        return counts[0], counts[1]

    def stream_counts(self, x, ids, sources, sigma, stream, num, start: int, *, seed, batch_size) -> np.ndarray:
        """Votes (numpy [len(sources), K]) of samples start .. start + num - 1 of one stream."""
        first = torch.full((len(sources),), int(start), dtype=torch.int64, device=self.device)
        return self.counts(x, ids, sigma, [(stream, num)], seed=seed, batch_size=batch_size, sources=sources,
                           start=first)[0].cpu().numpy()

    def counts(self, x, ids, sigma, segments, *, seed, batch_size, sources=None, start=None) -> torch.Tensor:
        """Votes [len(segments), len(sources), K] on the device (sources: indices into x, default all).

        The plan's rows 0 .. total-1 are enumerated in a fixed order; in a torchrun world each rank samples its
        contiguous share distributed.split_range(0, total, rank, world) and the counts are summed over the ranks
        (one all_reduce per call, made by every rank, even one with no rows), so every rank ends with the
        single-process counts. A batch that runs out of memory is thrown away and re-run from scratch at half
        the size (msrs.autobatch); the counts do not depend on the batch size."""
        sources = torch.arange(x.shape[0], device=self.device) if sources is None else \
            torch.as_tensor(sources, dtype=torch.int64, device=self.device)
        start = torch.zeros(len(sources), dtype=torch.int64, device=self.device) if start is None else start
        plan = _Plan(sources, ids, segments, start, self.device)
        size = len(segments) * len(sources)
        world = distributed.world_size()
        # one extra row: its first entry flags a rank that failed, so the all_reduce tells every rank at once
        counts = torch.zeros(size + (1 if world > 1 else 0), self.num_classes, dtype=torch.int64, device=self.device)
        first, stop = distributed.split_range(0, plan.total, distributed.rank(), world) if world > 1 \
            else (0, plan.total)
        failure = None
        try:
            self._sample(x, plan, sigma, seed, batch_size, counts[:size], first, stop)
        except Exception as err:  # noqa: BLE001 - re-raised below, after the other ranks have been told
            if world == 1:
                raise
            failure = err
            counts[size, 0] = 1
        if world > 1:
            distributed.all_reduce_counts_(counts)
            if failure is not None:
                raise failure
            if int(counts[size, 0]) > 0:
                raise RuntimeError(f"sampling failed on {int(counts[size, 0])} other rank(s) of {world} "
                                   "(see their error messages)")
        return counts[:size].view(len(segments), len(sources), self.num_classes)

    def check_pipeline(self, images, image_ids, sigmas, *, seed, batch_size) -> None:
        """One Monte Carlo sample of each image at every sigma through the whole pipeline (noise, denoiser,
        classifier), so that a classifier or denoiser that does not fit the data fails before a run writes
        anything. Its counts are discarded (they change no certificate); with compile, it is the first call, so
        the graphs are built here at the run's batch size."""
        x, ids = self.group(images, image_ids)
        for sigma in sigmas:
            self.counts(x, ids, sigma, [(0, 1)], seed=seed, batch_size=batch_size)

    def _sample(self, x, plan, sigma, seed, batch_size, counts, first, stop) -> None:
        """Adds the votes of plan rows [first, stop) to counts, batch by batch, halving a batch that runs out of
        memory (the batch is the unit of retry: rows and logits are computed with no side effects, then counted)."""
        cap = self._batch_cap
        batcher = AutoBatcher(min(batch_size, cap) if cap else batch_size, device=self.device)
        for static in self._static:  # one static shape for the whole run: the first call's batch size
            if static.size is None:
                static.reserve(batcher.batch_size)
        with self._modes(), torch.inference_mode(), self._autocast():
            step = self._prepare(sigma)
            lo = first
            while lo < stop:
                def run_batch(b, lo=lo):
                    rows, index = plan.rows(lo, min(lo + b, stop))
                    return self._logits(x, rows, step, seed, probe=lo == first), index

                logits, index = batcher(run_batch)
                batcher.history.clear()
                ops.count_votes_(counts, logits, index, backend=self.backend, check=False)
                lo += index.shape[0]
                del logits
        if batcher.batch_size < batch_size:
            self._batch_cap = batcher.batch_size  # later calls start from the size that fitted

    def _prepare(self, sigma: float) -> tuple:
        """(coeffs [1, 3] (sigma, alpha, beta) of sample_noisy, timestep t, sqrt(abar_t) a) for this sigma."""
        if self.denoiser is None:
            if self._scalar_stats():  # (x + sigma eps - m) / s folded into the fused op: alpha = 1/s, beta = -m/s
                m, s = float(self._stat(self.mean, 0.0)), float(self._stat(self.std, 1.0))
                return torch.tensor([[sigma, 1.0 / s, -m / s]], device=self.device), None, None
            return torch.tensor([[sigma, 1.0, 0.0]], device=self.device), None, None
        t, a = self.denoiser.timestep_for(sigma)
        a = float(a)
        if not 0 < a <= 1 or int(t) < 0:
            raise ValueError(f"denoiser: timestep_for({sigma}) returned (t={t}, sqrt(abar_t)={a}); expected t >= 0 "
                             f"and sqrt(abar_t) in (0, 1]")
        return torch.tensor([[sigma, 2.0 * a, -a]], device=self.device), int(t), a

    def _logits(self, x, rows, step, seed, probe: bool) -> torch.Tensor:
        coeffs, t, a = step
        noisy = ops.sample_noisy(x, rows, coeffs.expand(rows.shape[0], 3), seed=seed, backend=self.backend,
                                 check=False)
        if self.denoiser is None:
            inp = noisy if self._scalar_stats() else self._normalise(noisy)
        else:
            eps = self.denoiser.predict_eps(noisy, torch.full((rows.shape[0],), t, dtype=torch.int64,
                                                              device=self.device))
            inp = ops.finalize_denoised(noisy, eps, a, mean=self._stat(self.mean, 0.0), std=self._stat(self.std, 1.0),
                                        out_dtype=self.dtype, backend=self.backend, check=False)
        inp = self._resize(inp)
        return self._classify(inp) if probe else self._run_classifier(inp)

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        """To the classifier's declared input size (nothing to do without one, or when it already has it)."""
        if self.input_size is None or tuple(x.shape[-2:]) == self.input_size:
            return x
        mode, antialias = self.resize_mode
        corners = False if mode in ("bilinear", "bicubic") else None
        return torch.nn.functional.interpolate(x, size=self.input_size, mode=mode, antialias=antialias,
                                               align_corners=corners)

    def _classify(self, inp: torch.Tensor) -> torch.Tensor:
        """The first batch of a call: classifier errors and output shapes get a message naming the classifier."""
        try:
            logits = self._run_classifier(inp)
        except Exception as err:
            if is_out_of_memory(err):
                raise
            raise ValueError(f"classifier: failed on an input batch of shape {tuple(inp.shape)} "
                             f"({type(err).__name__}: {err})") from err
        if not isinstance(logits, torch.Tensor) or logits.shape != (inp.shape[0], self.num_classes) \
                or not logits.dtype.is_floating_point:
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            hint = ""
            if isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[0] == inp.shape[0]:
                hint = f"; if the classifier has {logits.shape[1]} outputs, pass --num-classes {logits.shape[1]}"
            raise ValueError(f"classifier: expected float logits of shape [{inp.shape[0]}, {self.num_classes}] "
                             f"(num_classes = {self.num_classes}) for an input of shape {tuple(inp.shape)}, got {got}"
                             f"{hint}")
        return logits

    def _scalar_stats(self) -> bool:
        """No normalisation, or one mean and one std for all channels (then the fused noise op applies it)."""
        return all(t is None or t.numel() == 1 for t in (self.mean, self.std))

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._stat(self.mean, 0.0), self._stat(self.std, 1.0)
        return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)

    def _stat(self, t, default: float) -> torch.Tensor:
        return torch.tensor([default], device=self.device) if t is None else t

    def _autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @contextlib.contextmanager
    def _modes(self):
        """Eval mode for the classifier and denoiser modules while sampling, their own modes restored after."""
        modules = [m for m in (self.classifier, self.denoiser) if isinstance(m, torch.nn.Module)]
        saved = [[(sub, sub.training) for sub in m.modules()] for m in modules]
        for m in modules:
            m.eval()
        try:
            yield
        finally:
            for entries in saved:
                for sub, training in entries:
                    sub.training = training

    def _compile(self, classifier, denoiser):
        """The classifier (and the denoiser's UNet) through torch.compile at one static batch shape."""
        from .compiled import StaticBatch, compile_model

        if denoiser is not None:
            if not callable(getattr(denoiser, "compile_for_inference", None)):
                raise checks.ArgumentTypeError(f"compile: the denoiser ({type(denoiser).__name__}) has no "
                                               "compile_for_inference(); use msrs.denoiser.DiffusionDenoiser or "
                                               "compile=False")
            denoiser.compile_for_inference()
            self._static.append(denoiser._static_eps)
        static = StaticBatch(compile_model(classifier, self.device))
        self._static.append(static)
        return static


def _as_tensor(name: str, value, device) -> torch.Tensor:
    """torch.as_tensor, with a failure (strings, integers beyond int64) reported under the argument's name."""
    try:
        return torch.as_tensor(value, device=device)
    except (TypeError, ValueError, RuntimeError, OverflowError) as e:
        raise checks.ArgumentValueError(f"{name}: expected integers, got {value!r} ({e})") from None


def _input_size(value):
    """None, or (H, W) from an int or a pair of positive ints."""
    if value is None:
        return None
    size = (value, value) if isinstance(value, int) else tuple(value)
    if len(size) != 2:
        raise checks.ArgumentValueError(f"input_size: expected an int or (H, W), got {value!r}")
    return tuple(checks.integer("input_size", v, 1) for v in size)


def _module_device(module) -> torch.device:
    if isinstance(module, torch.nn.Module):
        for tensor in list(module.parameters()) + list(module.buffers()):
            return tensor.device
    return torch.device("cpu")
