"""The certification engine: Monte Carlo vote counts of a (denoised) base classifier, and the certificates.

Sampling. For a group of images, every (image, sample) pair still needed is a row (source image, global image id,
sample index, noise stream); rows are cut into batches of batch_size that mix images, and each batch runs
  plain:     x + sigma eps  ->  (x - mean) / std  ->  classifier  ->  votes
  denoiser:  a (2 (x + sigma eps) - 1)  ->  predict_eps  ->  finalize_denoised (clamp, [0, 1], mean/std)
             ->  classifier  ->  votes
with the votes accumulated into int64 counts on the device; the host reads the counts once per group and stage.
The noise of a row depends only on (seed, image id, sample index, stream) (msrs.ops.philox), so counts are the
same whatever the batch size, the grouping of images, the backend or the device.

Streams (docs/DESIGN.md): selection 2 * stage, estimation 2 * stage + 1 (stage 0 = largest sigma; a single-sigma
certify is stage 0), PREDICT 2 * 64. The decisions on the counts are msrs.cascade's.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from . import cascade
from . import distributed
from . import ops
from .autobatch import AutoBatcher, is_out_of_memory
from .ops import validation as v
from .ops.philox import MASK32

PREDICT_STREAM = 2 * 64
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass
class Certificate:
    prediction: int  # class, or -1 for ABSTAIN
    radius: float  # 0.0 when abstaining
    sigma: float  # sigma of the deciding stage (cascade abstain: last stage tried)
    stage: int  # cascade stage that decided (0 = largest sigma); -1 when abstaining
    counts: np.ndarray  # int64 [L, K] estimation counts per stage (zeros for stages not reached)
    counts0: np.ndarray  # int64 [L, K] selection counts
    p_lower: float  # Clopper-Pearson lower bound of the deciding stage (nan if none)
    samples: int  # Monte Carlo samples drawn for this image, all stages


def _number(name: str, value, low: float, high: float, *, low_open=True, high_open=True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    value = float(value)
    ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok or math.isnan(value):
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name}: expected a value in {interval}, got {value}")
    return value


def _sigma(name: str, value) -> float:
    return _number(name, value, 0.0, math.inf)


def _channel_stats(name: str, value, positive: bool = False) -> torch.Tensor | None:
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
    if t.numel() == 0 or not bool(torch.isfinite(t).all()) or (positive and not bool((t > 0).all())):
        expected = "finite values > 0" if positive else "finite values"
        raise ValueError(f"{name}: expected one value per channel (or one for all), {expected}, got {value}")
    return t


def _module_device(module) -> torch.device:
    if isinstance(module, torch.nn.Module):
        for tensor in list(module.parameters()) + list(module.buffers()):
            return tensor.device
    return torch.device("cpu")


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


class SmoothedClassifier:
    """Randomized smoothing of `classifier` (an nn.Module or any callable from [N, C, H, W] to logits
    [N, num_classes]), optionally behind a one-step diffusion `denoiser` (docs/DESIGN.md interface).

    mean/std: the classifier's input normalisation (one value per channel or one for all), applied to the noisy
    (plain) or denoised (denoiser) image in [0, 1]. dtype: torch.float32, or torch.bfloat16 / torch.float16 to run
    the denoiser and classifier under torch.autocast. backend: the msrs.ops backend (None: automatic). device: where
    images, noise and counts live (default: the classifier module's device, else CPU).
    Modules are put in eval mode during sampling and restored afterwards.
    compile: run the classifier and the denoiser's UNet through torch.compile at one static batch shape
    (msrs.compiled; calls denoiser.compile_for_inference()); the first batch compiles (tens of seconds on a CPU).
    """

    def __init__(self, classifier, num_classes, *, denoiser=None, mean=None, std=None, device=None, backend=None,
                 dtype=torch.float32, compile=False):
        if not callable(classifier):
            raise TypeError(f"classifier: expected an nn.Module or a callable [N, C, H, W] -> logits [N, K], "
                            f"got {type(classifier).__name__}")
        methods = ("timestep_for", "predict_eps")
        if denoiser is not None and not all(callable(getattr(denoiser, m, None)) for m in methods):
            raise TypeError(f"denoiser: expected an object with timestep_for(sigma) and predict_eps(x_t, t), "
                            f"got {type(denoiser).__name__}")
        if dtype not in _DTYPES:
            raise TypeError(f"dtype: expected torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
        self.classifier, self.denoiser, self.dtype = classifier, denoiser, dtype
        self.num_classes = v.expect_int("num_classes", num_classes, 2)
        self.device = torch.device(device) if device is not None else _module_device(classifier)
        self.mean, self.std = (None if t is None else t.to(self.device)
                               for t in (_channel_stats("mean", mean), _channel_stats("std", std, positive=True)))
        if backend is not None:
            ops.resolve_backend(backend, self.device)
        self.backend = backend
        self._batch_cap = None  # set when a batch ran out of memory: the largest batch size that fitted
        self._run_classifier = self._compile(classifier, denoiser) if compile else classifier

    # ---------------------------------------------------------------- public API (docs/DESIGN.md)
    def sample_counts(self, images, image_ids, sigma, num_samples, *, stream, seed, batch_size, sample_start=0):
        """Votes [B, K] int64 on the device of num_samples noisy copies of each image in `stream`, samples
        sample_start .. sample_start + num_samples - 1 (an int, or one start per image)."""
        x, ids = self._group(images, image_ids)
        sigma = _sigma("sigma", sigma)
        v.expect_int("num_samples", num_samples, 0, MASK32 + 1)
        v.expect_int("stream", stream, 0, MASK32)
        self._check_run(seed, batch_size)
        start = torch.as_tensor(sample_start, device=self.device)
        if start.dtype.is_floating_point or start.dtype == torch.bool or start.shape not in ((), (x.shape[0],)):
            raise ValueError(f"sample_start: expected an int or {x.shape[0]} ints (one per image), "
                             f"got {sample_start!r}")
        start = start.to(torch.int64).expand(x.shape[0])
        if start.numel() and (int(start.min()) < 0 or int(start.max()) + num_samples > MASK32 + 1):
            raise ValueError(f"sample_start: expected starts >= 0 with start + num_samples <= 2^32, got {sample_start}")
        return self._counts(x, ids, None, sigma, [(stream, num_samples)], seed, batch_size, start)[0]

    def predict(self, images, sigma, n, alpha, *, seed, batch_size, image_ids=None) -> np.ndarray:
        """Cohen et al.'s PREDICT for each image: the class, or -1 (ABSTAIN)."""
        x, ids = self._group(images, image_ids)
        sigma = _sigma("sigma", sigma)
        v.expect_int("n", n, 1, MASK32 + 1)
        alpha = _number("alpha", alpha, 0.0, 1.0)
        self._check_run(seed, batch_size)
        counts = self._counts(x, ids, None, sigma, [(PREDICT_STREAM, n)], seed, batch_size)[0].cpu().numpy()
        return np.array([cascade.cohen_predict_from_counts(c, alpha) for c in counts], dtype=np.int64)

    def certify(self, images, sigma, n0, n, alpha, *, seed, batch_size, image_ids=None, p0=0.5) -> list[Certificate]:
        """Cohen et al.'s CERTIFY (with threshold p0) for each image of the group."""
        x, ids = self._group(images, image_ids)
        sigma = _sigma("sigma", sigma)
        alpha, p0 = self._check_certify(n0, n, alpha, p0, seed, batch_size)
        counts0, counts = self._stage(x, ids, None, sigma, 0, n0, n, seed, batch_size)
        out = []
        for c0, c in zip(counts0, counts):
            d = cascade.cohen_certify_from_counts(c0, c, alpha, sigma, p0)
            out.append(Certificate(d.prediction, d.radius, sigma, d.stage, c[None].copy(), c0[None].copy(), d.p_lower,
                                   n0 + n))
        return out

    def certify_cascade(self, images, sigmas, n0, n, alpha, *, seed, batch_size, image_ids=None, p0=0.5,
                        alpha_schedule="union") -> list[Certificate]:
        """The multi-scale cascade (msrs.cascade): sigmas are sorted from largest (stage 0) to smallest; an image
        is sampled at stage s only if every earlier stage fell through for it."""
        x, ids = self._group(images, image_ids)
        sigmas = self._check_sigmas(sigmas)
        alpha, p0 = self._check_certify(n0, n, alpha, p0, seed, batch_size)
        cert, _ = cascade.schedule_levels(alpha, len(sigmas), alpha_schedule)
        shape = (x.shape[0], len(sigmas), self.num_classes)
        counts0, counts = np.zeros(shape, dtype=np.int64), np.zeros(shape, dtype=np.int64)
        active = np.arange(x.shape[0])
        for s, sigma in enumerate(sigmas):
            if not active.size:
                break
            counts0[active, s], counts[active, s] = self._stage(x, ids, active, sigma, s, n0, n, seed, batch_size)
            outcomes = [cascade.stage_outcome(counts0[b, s], counts[b, s], cert[s], p0)[0] for b in active]
            active = active[np.array([o == "fall" for o in outcomes], dtype=bool)]
        out = []
        for c0, c in zip(counts0, counts):
            d = cascade.cascade_certify_from_counts(c0, c, sigmas, alpha, p0, alpha_schedule)
            out.append(Certificate(d.prediction, d.radius, sigmas[d.last], d.stage, c.copy(), c0.copy(), d.p_lower,
                                   (d.last + 1) * (n0 + n)))
        return out

    def certify_sequential(self, images, sigma, n0, n_max, alpha, *, seed, batch_size, image_ids=None, p0=0.5,
                           target_radii=None, **options) -> list[Certificate]:
        """Sequential (early-stopping) CERTIFY (msrs.sequential): the class is selected on n0 samples of stream 0,
        then estimation samples of stream 1 are drawn look by look and each image stops as soon as its outcome at
        `target_radii` is settled (or at n_max). The radius comes from the lower bound at the stopping look
        (p_lower), valid under early stopping: alpha spent over the looks (bound="spending", the default) or the
        confidence sequence (bound="cs"); the samples drawn are a prefix of a fixed-n certify's samples.
        options: run_sequential's bound / final_share / weights / prior / schedule / first / growth / chunk /
        points / intersect. Certificate.counts: the estimation counts drawn; samples: n0 + those drawn."""
        from . import sequential

        x, ids = self._group(images, image_ids)
        sigma = _sigma("sigma", sigma)
        alpha, p0 = self._check_certify(n0, n_max, alpha, p0, seed, batch_size)
        sequential.thresholds(target_radii, sigma, p0)  # checks the radii before any sampling
        counts0 = self._counts(x, ids, None, sigma, [(0, n0)], seed, batch_size)[0].cpu().numpy()
        selected = counts0.argmax(axis=1) if len(counts0) else np.zeros(0, dtype=np.int64)
        counts = np.zeros_like(counts0)

        def draw(idx, num, start):
            drawn = self._stream_counts(x, ids, idx, sigma, 1, num, start, seed, batch_size)
            counts[idx] += drawn
            return drawn[np.arange(len(idx)), selected[idx]]

        result = sequential.run_sequential(draw, selected, n_max, sigma, alpha, target_radii, p0, **options)
        out = []
        for b in range(x.shape[0]):
            prediction = int(result.prediction[b])
            out.append(Certificate(prediction, float(result.radius[b]) if prediction >= 0 else 0.0, sigma,
                                   0 if prediction >= 0 else -1, counts[b][None].copy(), counts0[b][None].copy(),
                                   float(result.lower[b]), n0 + int(result.samples[b])))
        return out

    def certify_cascade_sequential(self, images, sigmas, n0, n_max, alpha, *, seed, batch_size, image_ids=None,
                                   p0=0.5, target_radii=None, **options) -> list[Certificate]:
        """The multi-scale cascade with early stopping (msrs.sequential.run_cascade_sequential): stage s (largest
        sigma first) selects on n0 samples of stream 2s and draws estimation samples of stream 2s + 1 look by look
        until it routes (certify / fall through / undecided); a certified image then samples its certifying stage
        or a fall-through stage until its bucket at `target_radii` is settled. Error budget: the "union" schedule
        (options alpha_schedule="paper" is refused), each statement valid at its stopping look.
        options: run_cascade_sequential's bound / final_share / weights / prior / alpha_schedule / schedule /
        first / growth / chunk / points / intersect. Certificate as certify_cascade's: counts [L, K] the
        estimation counts drawn per stage (a prefix of each stage's stream), counts0 the selection counts, p_lower
        the running lower bound of the deciding stage, samples all Monte Carlo samples drawn for the image."""
        from . import sequential

        x, ids = self._group(images, image_ids)
        sigmas = self._check_sigmas(sigmas)
        alpha, p0 = self._check_certify(n0, n_max, alpha, p0, seed, batch_size)
        sequential.thresholds(target_radii, sigmas[-1], p0)  # checks the radii before any sampling

        def draw(idx, stream, num, start):
            return self._stream_counts(x, ids, idx, sigmas[stream // 2], stream, num, start, seed, batch_size)

        result = sequential.run_cascade_sequential(draw, x.shape[0], sigmas, n0, n_max, alpha, target_radii, p0,
                                                   **options)
        total = result.total_samples
        return [Certificate(int(result.prediction[b]), float(result.radius[b]), sigmas[int(result.last[b])],
                            int(result.stage[b]), result.counts[b].copy(), result.counts0[b].copy(),
                            float(result.p_lower[b]), int(total[b])) for b in range(x.shape[0])]

    # ---------------------------------------------------------------- checks (all before any sampling)
    def _group(self, images, image_ids) -> tuple[torch.Tensor, torch.Tensor]:
        v.expect_tensor("images", images)
        v.expect_rank("images", images, 4, "[B, C, H, W]")
        v.expect_float("images", images)
        x = images.detach().to(self.device, torch.float32).contiguous()
        v.expect_in_unit_interval("images", x)
        channels = x.shape[1]
        expected = getattr(self.denoiser, "in_channels", None)
        if expected is not None and channels != expected:
            raise ValueError(f"images: expected {expected} channels (the denoiser's in_channels), got {channels}")
        for name, t in (("mean", self.mean), ("std", self.std)):
            if t is not None and t.numel() not in (1, channels):
                raise ValueError(f"{name}: expected 1 or {channels} values (one per channel), got {t.numel()}")
        if image_ids is None:
            return x, torch.arange(x.shape[0], device=self.device)
        ids = torch.as_tensor(image_ids, device=self.device)
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.shape != (x.shape[0],):
            raise ValueError(f"image_ids: expected {x.shape[0]} integer ids (one per image), got {image_ids!r}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > MASK32):
            raise ValueError("image_ids: expected ids in [0, 2^32)")
        return x, ids.to(torch.int64)

    @staticmethod
    def _check_run(seed, batch_size) -> None:
        v.expect_int("seed", seed, 0, 2**63 - 1)
        v.expect_int("batch_size", batch_size, 1)

    def _check_certify(self, n0, n, alpha, p0, seed, batch_size) -> tuple[float, float]:
        v.expect_int("n0", n0, 1, MASK32 + 1)
        v.expect_int("n", n, 1, MASK32 + 1)
        if n0 > n:
            raise ValueError(f"n0: expected n0 <= n (at most as many selection as estimation samples), "
                             f"got n0={n0} > n={n}")
        alpha = _number("alpha", alpha, 0.0, 1.0)
        p0 = _number("p0", p0, 0.5, 1.0, low_open=False)
        self._check_run(seed, batch_size)
        return alpha, p0

    @staticmethod
    def _check_sigmas(sigmas) -> list[float]:
        if isinstance(sigmas, (int, float)) or not hasattr(sigmas, "__len__") or len(sigmas) == 0:
            raise TypeError(f"sigmas: expected a non-empty sequence of noise levels, got {sigmas!r}")
        values = sorted((_sigma("sigmas", s) for s in sigmas), reverse=True)
        if len(set(values)) != len(values):
            raise ValueError(f"sigmas: expected distinct noise levels, got {list(sigmas)}")
        return values

    # ---------------------------------------------------------------- sampling
    def _compile(self, classifier, denoiser):
        from .compiled import StaticBatch, compile_model

        if denoiser is not None:
            if not callable(getattr(denoiser, "compile_for_inference", None)):
                raise TypeError(f"compile: the denoiser ({type(denoiser).__name__}) has no compile_for_inference(); "
                                "use msrs.denoiser.DiffusionDenoiser or compile=False")
            denoiser.compile_for_inference()
        return StaticBatch(compile_model(classifier, self.device))

    def _stage(self, x, ids, sources, sigma, stage, n0, n, seed, batch_size) -> tuple[np.ndarray, np.ndarray]:
        """Selection and estimation counts (numpy [B', K] each) of one stage, sampled in one pass."""
        segments = [(2 * stage, n0), (2 * stage + 1, n)]
        counts = self._counts(x, ids, sources, sigma, segments, seed, batch_size).cpu().numpy()
        return counts[0], counts[1]

    def _stream_counts(self, x, ids, sources, sigma, stream, num, start: int, seed, batch_size) -> np.ndarray:
        """Votes (numpy [len(sources), K]) of samples start .. start + num - 1 of one stream: a sequential round."""
        first = torch.full((len(sources),), int(start), dtype=torch.int64, device=self.device)
        return self._counts(x, ids, sources, sigma, [(stream, num)], seed, batch_size, first)[0].cpu().numpy()

    def _counts(self, x, ids, sources, sigma, segments, seed, batch_size, start=None) -> torch.Tensor:
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

    def _sample(self, x, plan, sigma, seed, batch_size, counts, first, stop) -> None:
        """Adds the votes of plan rows [first, stop) to counts, batch by batch, halving a batch that runs out of
        memory (the batch is the unit of retry: rows and logits are computed with no side effects, then counted)."""
        cap = self._batch_cap
        batcher = AutoBatcher(min(batch_size, cap) if cap else batch_size, device=self.device)
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
        return self._classify(inp) if probe else self._run_classifier(inp)

    def _classify(self, inp: torch.Tensor) -> torch.Tensor:
        """The first batch of a run: classifier errors and output shapes get a message naming the classifier."""
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
            raise ValueError(f"classifier: expected float logits of shape [{inp.shape[0]}, {self.num_classes}] "
                             f"(num_classes = {self.num_classes}) for an input of shape {tuple(inp.shape)}, got {got}")
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


__all__ = ["Certificate", "PREDICT_STREAM", "SmoothedClassifier"]
