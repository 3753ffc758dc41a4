"""The fused ops: every accelerated backend against msrs.ops.reference, the Philox noise scheme, noise statistics
and invariances, vote counting, torch.compile / opcheck, and the errors of the public API."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import is_interpreted, required_backends, skip_or_fail, tolerance

from msrs import ops
from msrs.ops import reference
from msrs.ops.philox import gaussian_noise, philox4x32

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
KNOWN_ANSWER = [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]  # Random123 philox4x32-10, counter = key = 0


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(shape, dtype=torch.float32, device="cpu", layout="contiguous", seed=0):
    """Images in [0, 1], possibly non-contiguous (channels_last or a strided slice)."""
    if layout == "sliced":  # every other column of a wider tensor, sliced on the device (a copy would be contiguous)
        b, c, h, w = shape
        x = torch.rand(b, c, h, 2 * w, generator=_gen(seed)).to(dtype).to(device)[..., ::2]
    else:
        x = torch.rand(shape, generator=_gen(seed)).to(dtype).to(device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    assert (layout == "contiguous") == x.is_contiguous() or shape[1] == 1
    return x


def _rows_coeffs(batch: int, samples: int, device="cpu", seed=0):
    g = _gen(seed)
    image_ids = torch.randint(0, 2**32, (batch,), generator=g)
    rows = ops.make_rows(image_ids, torch.randint(0, 2**31, (batch,), generator=g), samples, stream=7)
    rows[:, 3] = torch.randint(0, 2**32, (rows.shape[0],), generator=g)  # a different stream per row
    count = rows.shape[0]
    sigma = torch.rand(count, generator=g)
    a = torch.rand(count, generator=g) * 0.9 + 0.1
    coeffs = torch.stack((sigma, 2 * a, -a), dim=1)
    coeffs[::3, 1:] = torch.tensor([1.0, 0.0])  # plain smoothing rows too
    return rows.to(device), coeffs.to(device)


def _skip_big_when_interpreted(backend, device, numel):
    if is_interpreted(backend, device) and numel > 4096:
        pytest.skip("Triton interpreter: tiny shapes only")


# ---------------------------------------------------------------------------------------------------------------
# op 1: sample_noisy / add_noise against the reference

SHAPES = [(1, 1, 1, 1), (1, 3, 7, 5), (3, 1, 8, 8), (2, 3, 5, 3), (4, 3, 32, 32)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("samples", [1, 5])
def test_sample_noisy_matches_reference_fp32(backend_device, shape, samples):
    backend, device = backend_device
    _skip_big_when_interpreted(backend, device, shape[0] * samples * math.prod(shape[1:]))
    x = _images(shape, device=device)
    rows, coeffs = _rows_coeffs(shape[0], samples, device)
    out = ops.sample_noisy(x, rows, coeffs, seed=2**40 + 123, backend=backend)
    expected = reference.sample_noisy(x, rows, coeffs, 2**40 + 123, torch.float32)
    assert out.shape == (shape[0] * samples, *shape[1:]) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected, **tolerance(torch.float32))


@pytest.mark.parametrize("x_dtype", FLOATS, ids=str)
@pytest.mark.parametrize("out_dtype", FLOATS, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_sample_noisy_dtypes_and_layouts(backend_device, x_dtype, out_dtype, layout):
    backend, device = backend_device
    shape = (2, 3, 7, 5)
    x = _images(shape, x_dtype, device, layout)
    rows, coeffs = _rows_coeffs(shape[0], 3, device, seed=1)
    out = ops.sample_noisy(x, rows, coeffs, seed=5, out_dtype=out_dtype, backend=backend)
    expected = reference.sample_noisy(x.contiguous(), rows, coeffs, 5, out_dtype)
    assert out.dtype == out_dtype and out.is_contiguous()
    torch.testing.assert_close(out, expected, **tolerance(out_dtype))


@pytest.mark.parametrize("out_dtype", FLOATS, ids=str)
def test_sigma_zero_gives_alpha_x_plus_beta_exactly(backend_device, out_dtype):
    backend, device = backend_device
    x = _images((2, 3, 5, 7), device=device)
    rows, coeffs = _rows_coeffs(2, 4, device, seed=2)
    coeffs[:, 0] = 0.0
    out = ops.sample_noisy(x, rows, coeffs, seed=1, out_dtype=out_dtype, backend=backend)
    alpha, beta = coeffs[:, 1, None, None, None], coeffs[:, 2, None, None, None]
    expected = (alpha * x[rows[:, 0]] + beta).to(out_dtype)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_add_noise_several_sigmas_with_diffusion_scaling(backend_device):
    backend, device = backend_device
    x = _images((3, 3, 6, 5), device=device)
    ids = torch.tensor([10, 0, 2**32 - 1], device=device)
    kwargs = {"seed": 9, "image_ids": ids, "sample_start": [0, 100, 7], "stream": 4}
    for scale in (None, [0.9, 0.7, 0.4]):
        out = ops.add_noise(x, [0.25, 0.5, 1.0], 4, diffusion_scale=scale, backend=backend, **kwargs)
        expected = ops.add_noise(x, [0.25, 0.5, 1.0], 4, diffusion_scale=scale, backend="torch", **kwargs)
        assert out.shape == (3 * 3 * 4, 3, 6, 5)
        torch.testing.assert_close(out, expected, **tolerance(torch.float32))
    # the diffusion scaling is a * (2 (x + sigma eps) - 1) of the plain samples
    plain = ops.add_noise(x, 0.5, 4, backend=backend, **kwargs)
    scaled = ops.add_noise(x, 0.5, 4, diffusion_scale=0.6, backend=backend, **kwargs)
    torch.testing.assert_close(scaled, 0.6 * (2 * plain - 1), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Philox: known answer, words of the cpp backend, normals of the reference


def test_philox_known_answer_reference():
    words = philox4x32(*(torch.zeros(1, dtype=torch.int64) for _ in range(4)), seed=0)
    assert [int(w) for w in words] == KNOWN_ANSWER


def _cpp():
    from msrs.ops import cpp_backend

    if cpp_backend.load_error():
        skip_or_fail("cpp", f"cpp backend unavailable: {cpp_backend.load_error()}")
    return cpp_backend


def test_philox_words_cpp_match_reference_bit_for_bit():
    cpp = _cpp()
    assert cpp.philox_words(torch.zeros(1, 4, dtype=torch.int64), 0).tolist() == [KNOWN_ANSWER]
    g = _gen(3)
    counters = torch.randint(0, 2**32, (4096, 4), generator=g)
    counters[:4] = torch.tensor([[0, 0, 0, 0], [2**32 - 1] * 4, [1, 0, 0, 0], [0, 0, 0, 1]])
    for seed in (0, 1, 2**32 - 1, 2**32, 0x243F6A8885A308D3):
        words = cpp.philox_words(counters, seed)
        expected = torch.stack(philox4x32(*counters.unbind(1), seed), dim=1)
        assert torch.equal(words, expected), seed


def test_cpp_simd_kernels_agree_bit_for_bit():
    ext = _cpp().extension()
    x = _images((2, 3, 9, 11))
    rows, coeffs = _rows_coeffs(2, 40, seed=4)
    outs = {}
    try:
        for kernel in ("portable", "avx2"):
            try:
                ext.simd_kernel(kernel)
            except RuntimeError:
                continue
            outs[kernel] = ops.sample_noisy(x, rows, coeffs, seed=11, backend="cpp")
    finally:
        ext.simd_kernel("best")
    if len(outs) < 2:
        pytest.skip("only the portable kernel runs on this CPU")
    assert torch.equal(outs["portable"], outs["avx2"])


def test_reference_normals_layout():
    """Element e of a sample is z_(e mod 4) of Philox group e // 4 (Box-Muller pairs (w0, w1) and (w2, w3))."""
    image, sample, stream = (torch.tensor([v]) for v in (5, 6, 7))
    z = gaussian_noise(10, image, sample, stream, seed=3)[0]
    for g in range(3):
        w = [int(t) for t in philox4x32(torch.tensor([g]), sample, image, stream, 3)]
        u = [((word >> 8) + 0.5) * 2.0**-24 for word in w]
        for pair in range(2):
            radius = math.sqrt(-2 * math.log(u[2 * pair]))
            angle = u[2 * pair + 1] * 6.2831854820251465
            for lane, value in enumerate((radius * math.cos(angle), radius * math.sin(angle))):
                e = 4 * g + 2 * pair + lane
                if e < 10:
                    assert abs(float(z[e]) - value) < 1e-5


# ---------------------------------------------------------------------------------------------------------------
# noise statistics (fixed seed, so deterministic; bounds at about 5 standard errors)


def _noise(backend, device, images=8, samples=128, shape=(3, 16, 16), seed=2024, stream=0, sample_start=0, ids=None):
    x = torch.zeros(images, *shape, device=device)
    ids = torch.arange(images, device=device) if ids is None else ids
    out = ops.add_noise(x, 1.0, samples, seed=seed, image_ids=ids, stream=stream, sample_start=sample_start,
                        backend=backend)
    return out.reshape(images, samples, -1).double().cpu()


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.reshape(-1) - a.mean(), b.reshape(-1) - b.mean()
    return float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()))


def test_noise_statistics(backend_device):
    backend, device = backend_device
    if is_interpreted(backend, device):
        pytest.skip("Triton interpreter: statistics need large draws")
    from scipy import stats

    z = _noise(backend, device)  # [8 images, 128 samples, 768 elements]
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1) < 5 * math.sqrt(2 / n)
    flat = z.reshape(-1)
    assert abs(float((flat**3).mean())) < 5 * math.sqrt(15 / n)  # skewness 0
    assert abs(float((flat**4).mean()) - 3) < 5 * math.sqrt(96 / n)  # kurtosis 3
    assert abs(float((flat.abs() > 3).double().mean()) - 0.0026998) < 5 * math.sqrt(0.0027 / n)
    # each of the four lanes of a Philox group (cos / sin of both Box-Muller pairs) is standard normal
    lanes = z.reshape(8, 128, -1, 4)
    for lane in range(4):
        v = lanes[..., lane]
        assert abs(float(v.mean())) < 5 / math.sqrt(v.numel())
        assert abs(float(v.var()) - 1) < 5 * math.sqrt(2 / v.numel())
    assert stats.kstest(flat[:200_000].numpy(), "norm").pvalue > 1e-3
    assert stats.normaltest(flat[:200_000].numpy()).pvalue > 1e-3
    # no correlation across samples, images, adjacent elements (inside a group and across groups)
    def bound(pairs: int) -> float:
        return 5 / math.sqrt(pairs)

    assert abs(_corr(z[:, :-1], z[:, 1:])) < bound(z[:, 1:].numel())
    assert abs(_corr(z[:-1], z[1:])) < bound(z[1:].numel())
    for shift in (1, 2, 3, 4, 5):
        assert abs(_corr(z[..., :-shift], z[..., shift:])) < bound(z[..., shift:].numel()), shift
    for a, b in ((0, 1), (0, 2), (1, 3), (2, 3), (0, 3), (1, 2)):
        assert abs(_corr(lanes[..., a], lanes[..., b])) < bound(lanes[..., a].numel()), (a, b)
    # squared values too: Box-Muller pairs share a radius, which must not make |z| correlated within a pair
    for a, b in ((0, 1), (2, 3), (0, 2)):
        assert abs(_corr(lanes[..., a] ** 2, lanes[..., b] ** 2)) < bound(lanes[..., a].numel()), (a, b)


# ---------------------------------------------------------------------------------------------------------------
# invariances: the noise depends on (seed, image id, sample, stream, element) only


def test_noise_invariant_to_batching_order_and_splits(backend_device):
    backend, device = backend_device
    shape = (2, 3, 5, 5) if is_interpreted(backend, device) else (4, 3, 9, 7)
    samples = 6 if is_interpreted(backend, device) else 100
    half = samples // 2
    x = _images(shape, device=device)
    ids = torch.tensor([3, 17, 2**31, 5][: shape[0]], device=device)
    kw = {"seed": 77, "stream": 3, "backend": backend}
    whole = ops.add_noise(x, 0.5, samples, image_ids=ids, **kw).reshape(shape[0], samples, *shape[1:])
    first = ops.add_noise(x, 0.5, half, image_ids=ids, **kw).reshape(shape[0], half, *shape[1:])
    second = ops.add_noise(x, 0.5, samples - half, image_ids=ids, sample_start=half, **kw)
    split = torch.cat((first, second.reshape(shape[0], samples - half, *shape[1:])), dim=1)
    assert torch.equal(whole, split)
    # one image at a time (batch size 1) and the images in reverse order
    for b in range(shape[0]):
        alone = ops.add_noise(x[b : b + 1], 0.5, samples, image_ids=ids[b : b + 1], **kw)
        assert torch.equal(alone.reshape(samples, *shape[1:]), whole[b])
    flipped = ops.add_noise(x.flip(0), 0.5, samples, image_ids=ids.flip(0), **kw)
    assert torch.equal(flipped.reshape(shape[0], samples, *shape[1:]), whole.flip(0))
    # shuffled rows give the same rows, shuffled
    rows = ops.make_rows(ids, 0, samples, stream=3)
    coeffs = torch.tensor([[0.5, 1.0, 0.0]], device=device).expand(rows.shape[0], 3).contiguous()
    perm = torch.randperm(rows.shape[0], generator=_gen(0)).to(device)
    ordered = ops.sample_noisy(x, rows, coeffs, seed=77, backend=backend)
    shuffled = ops.sample_noisy(x, rows[perm], coeffs[perm], seed=77, backend=backend)
    assert torch.equal(shuffled, ordered[perm])
    assert torch.equal(ordered.reshape(whole.shape), whole)


def test_cpp_noise_invariant_to_thread_count():
    _cpp()
    x = _images((3, 3, 16, 16))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ops.add_noise(x, 0.5, 50, seed=1, backend="cpp")
        torch.set_num_threads(max(2, threads))
        many = ops.add_noise(x, 0.5, 50, seed=1, backend="cpp")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_different_keys_give_different_noise(backend_device):
    backend, device = backend_device
    small = is_interpreted(backend, device)
    kw = {"images": 2, "samples": 4, "shape": (1, 8, 8)} if small else {"images": 4, "samples": 16, "shape": (3, 8, 8)}
    base = _noise(backend, device, **kw)
    images, samples = kw["images"], kw["samples"]
    others = {
        "seed": _noise(backend, device, seed=2025, **kw),
        "seed high word": _noise(backend, device, seed=2024 + 2**32, **kw),
        "stream": _noise(backend, device, stream=1, **kw),
        "image id": _noise(backend, device, ids=torch.arange(images, device=device) + images, **kw),
        "sample": _noise(backend, device, sample_start=samples, **kw),
    }
    for what, other in others.items():
        assert not torch.equal(base, other), what
        assert abs(_corr(base, other)) < 5 / math.sqrt(base.numel()), what
    # and within one call every (image, sample) row differs
    rows = base.reshape(images * samples, -1)
    assert torch.unique(rows, dim=0).shape[0] == rows.shape[0]


# ---------------------------------------------------------------------------------------------------------------
# op 2: finalize_denoised


@pytest.mark.parametrize("in_dtype", FLOATS + ("mixed",), ids=str)
@pytest.mark.parametrize("out_dtype", FLOATS, ids=str)
def test_finalize_denoised_matches_reference(backend_device, in_dtype, out_dtype):
    backend, device = backend_device
    g = _gen(8)
    shape = (5, 3, 7, 6)
    x_t = torch.randn(shape, generator=g) * 1.5
    eps = torch.randn(shape, generator=g)
    if in_dtype == "mixed":  # fp16 x_t, fp32 eps
        x_t = x_t.to(torch.float16)
    else:
        x_t, eps = x_t.to(in_dtype), eps.to(in_dtype)
    eps = eps.contiguous(memory_format=torch.channels_last)  # non-contiguous too
    a = torch.rand(shape[0], generator=g) * 0.9 + 0.1
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    x_t, eps, a = x_t.to(device), eps.to(device), a.to(device)
    out = ops.finalize_denoised(x_t, eps, a, mean=mean, std=std, out_dtype=out_dtype, backend=backend)
    coeffs = torch.stack((a, torch.sqrt(torch.clamp(1 - a * a, min=0))), dim=1)
    expected = reference.finalize_denoised(
        x_t, eps, coeffs, torch.tensor(mean, device=device), torch.tensor(std, device=device), out_dtype
    )
    assert out.dtype == out_dtype
    if backend == "cpp":  # same fp32 operations in the same order: bit for bit
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    else:
        torch.testing.assert_close(out, expected, **tolerance(out_dtype))


def test_finalize_denoised_clamps_and_normalises(backend_device):
    backend, device = backend_device
    # x0 = (x_t - s eps) / a with a = 0.5, s = sqrt(0.75): pick x_t so x0 = -3, -1, -0.5, 0, 0.5, 1, 3 and a NaN
    a = 0.5
    s = math.sqrt(1 - a * a)
    x0 = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0, float("nan")])
    eps = torch.full((2, 2, 1, 8), 0.25)
    x_t = (x0 * a + s * 0.25).expand(2, 2, 1, 8).contiguous()
    mean, std = [0.5, 0.25], [0.5, 2.0]
    out = ops.finalize_denoised(x_t.to(device), eps.to(device), [a, a], mean=mean, std=std, backend=backend,
                                check=True).cpu()
    image = (x0.clamp(-1, 1) + 1) / 2
    for c in range(2):
        torch.testing.assert_close(out[:, c, 0], ((image - mean[c]) / std[c]).expand(2, 8), rtol=1e-5, atol=1e-5,
                                   equal_nan=True)
    # per-row sqrt(abar): row n uses its own coefficients
    x_t = torch.full((3, 1, 2, 2), 0.3)
    eps = torch.full((3, 1, 2, 2), 0.1)
    rows_a = torch.tensor([0.9, 0.6, 0.3])
    out = ops.finalize_denoised(x_t.to(device), eps.to(device), rows_a.to(device), backend=backend).cpu()
    for n, a in enumerate(rows_a.tolist()):
        x0 = min(max((0.3 - math.sqrt(1 - a * a) * 0.1) / a, -1), 1)
        torch.testing.assert_close(out[n], torch.full((1, 2, 2), (x0 + 1) / 2), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# op 3: count_votes_


def _bincount_reference(counts, classes, index):
    expected = counts.clone()
    expected += torch.bincount(index * counts.shape[1] + classes, minlength=counts.numel()).reshape(counts.shape)
    return expected


@pytest.mark.parametrize("dtype", FLOATS, ids=str)
@pytest.mark.parametrize("num_classes", [1, 3, 10, 100, 1000])
def test_count_votes_logits(backend_device, dtype, num_classes):
    backend, device = backend_device
    samples = 64 if is_interpreted(backend, device) else 3000
    g = _gen(num_classes)
    logits = torch.randn(samples, num_classes, generator=g)
    logits[::5] = torch.round(logits[::5])  # many ties: the first maximum must win
    if num_classes > 1:
        logits[1::7, num_classes // 2] = float("nan")  # NaN counts as the maximum
        logits[2::11, -1] = float("nan")
        logits[3::13, :] = float("nan")  # all NaN: the first one wins
        logits[4::17, 0] = float("inf")
        logits[4::17, -1] = float("inf")
    logits = logits.to(dtype)
    index = torch.randint(0, 4, (samples,), generator=g)
    counts = torch.randint(0, 100, (4, num_classes), generator=g)
    expected = _bincount_reference(counts, logits.argmax(dim=1), index)
    out = ops.count_votes_(counts.to(device), logits.to(device), index.to(device), backend=backend)
    assert torch.equal(out.cpu(), expected)


def test_count_votes_ties_and_nan_follow_torch_argmax(backend_device):
    backend, device = backend_device
    inf, nan = float("inf"), float("nan")
    logits = torch.tensor(
        [
            [1.0, 3.0, 3.0, 2.0],  # tie: first maximum
            [nan, 5.0, nan, 1.0],  # first NaN
            [1.0, 2.0, nan, 9.0],  # NaN beats a larger number
            [-inf, -inf, -inf, -inf],
            [inf, 1.0, inf, nan],
            [0.0, -0.0, 0.0, -1.0],  # -0 == 0: first
            [-1.0, -1.0, -2.0, -1.0],
        ]
    )
    counts = torch.zeros(len(logits), 4, dtype=torch.int64)
    index = torch.arange(len(logits))
    ops.count_votes_(counts_d := counts.to(device), logits.to(device), index.to(device), backend=backend)
    assert counts_d.cpu().argmax(dim=1).tolist() == logits.argmax(dim=1).tolist() == [1, 0, 2, 0, 3, 0, 0]
    # wide rows take a vectorised path in the cpp backend
    wide = torch.randn(40, 300, generator=_gen(1))
    wide[::2, 250] = 50.0
    wide[::2, 260] = 50.0
    wide[1::4, 100] = nan
    wide[1::4, 290] = nan
    wide[3::4, 299] = 1e9
    counts = torch.zeros(40, 300, dtype=torch.int64, device=device)
    ops.count_votes_(counts, wide.to(device), torch.arange(40, device=device), backend=backend)
    assert counts.cpu().argmax(dim=1).tolist() == wide.argmax(dim=1).tolist()


def test_count_votes_class_ids_and_large_counts(backend_device):
    backend, device = backend_device
    samples = 1000 if is_interpreted(backend, device) else 3_000_000
    g = _gen(5)
    classes = torch.randint(0, 3, (samples,), generator=g)
    index = torch.randint(0, 2, (samples,), generator=g)
    counts = torch.full((2, 3), 2**40 - 5, dtype=torch.int64)
    counts[1, 2] = 2**62  # far beyond int32, still exact in int64
    expected = _bincount_reference(counts, classes, index)
    out = ops.count_votes_(counts.clone().to(device), classes.to(device), index.to(device), backend=backend).cpu()
    assert torch.equal(out, expected)
    assert int(out.sum() - counts.sum()) == samples
    # the same votes as logits (one-hot) give the same counts
    if not is_interpreted(backend, device):
        logits = torch.nn.functional.one_hot(classes[:300_000], 3).to(torch.float32)
        out = ops.count_votes_(counts.clone().to(device), logits.to(device), index[:300_000].to(device),
                               backend=backend)
        assert torch.equal(out.cpu(), _bincount_reference(counts, classes[:300_000], index[:300_000]))


def test_count_votes_default_index_and_many_rows(backend_device):
    backend, device = backend_device
    g = _gen(6)
    counts = torch.zeros(1, 10, dtype=torch.int64, device=device)
    classes = torch.randint(0, 10, (500,), generator=g)
    ops.count_votes_(counts, classes.to(device), backend=backend)
    assert torch.equal(counts.cpu()[0], torch.bincount(classes, minlength=10))
    # more rows x classes than the cpp backend's partial tables hold
    counts = torch.zeros(3000, 100, dtype=torch.int64)
    classes = torch.randint(0, 100, (200_000,), generator=g)
    index = torch.randint(0, 3000, (200_000,), generator=g)
    expected = _bincount_reference(counts, classes, index)
    out = ops.count_votes_(counts.to(device), classes.to(device), index.to(device), backend=backend)
    assert torch.equal(out.cpu(), expected)


def test_count_votes_empty(backend_device):
    backend, device = backend_device
    counts = torch.ones(2, 5, dtype=torch.int64, device=device)
    ops.count_votes_(counts, torch.empty(0, 5, device=device), torch.empty(0, dtype=torch.int64, device=device),
                     backend=backend)
    assert torch.equal(counts.cpu(), torch.ones(2, 5, dtype=torch.int64))


# ---------------------------------------------------------------------------------------------------------------
# torch.compile and opcheck


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own, raised while Inductor compiles
def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def pipeline(x, counts):
        noisy = ops.add_noise(x, 0.5, 4, seed=3, diffusion_scale=0.8, check=False)
        image = ops.finalize_denoised(noisy, torch.zeros_like(noisy), 0.8, mean=0.5, std=0.25, check=False)
        scores = image.flatten(1)[:, :5]
        ops.count_votes_(counts, scores, torch.arange(2).repeat_interleave(4), check=False)
        return image

    x = _images((2, 1, 4, 4))
    counts_eager, counts_compiled = torch.zeros(2, 5, dtype=torch.int64), torch.zeros(2, 5, dtype=torch.int64)
    eager = pipeline(x, counts_eager)
    compiled = torch.compile(pipeline, fullgraph=True)(x, counts_compiled)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
    assert torch.equal(counts_compiled, counts_eager) and int(counts_eager.sum()) == 8


def _opcheck_backends():
    names = ["torch"]
    from msrs.ops import cpp_backend

    if cpp_backend.load_error() is None:
        names.append("cpp")
    return names


@pytest.mark.parametrize("op", ["sample_noisy", "finalize_denoised", "count_votes_"])
def test_opcheck(op):
    g = _gen(0)
    for backend in _opcheck_backends():
        if op == "sample_noisy":
            x = torch.rand(2, 3, 5, 3, generator=g)
            rows = ops.make_rows(torch.tensor([4, 9]), 0, 3)
            coeffs = torch.tensor([[0.5, 1.0, 0.0]]).expand(6, 3).contiguous()
            args = (x, rows, coeffs, 12, torch.float16, backend)
        elif op == "finalize_denoised":
            x_t, eps = torch.randn(4, 3, 5, 3, generator=g), torch.randn(4, 3, 5, 3, generator=g)
            coeffs = torch.tensor([[0.8, 0.6]]).expand(4, 2).contiguous()
            args = (x_t, eps, coeffs, torch.rand(3, generator=g), torch.rand(3, generator=g) + 0.5, torch.float32,
                    backend)
        else:
            counts = torch.zeros(3, 4, dtype=torch.int64)
            args = (counts, torch.randn(10, 4, generator=g), torch.randint(0, 3, (10,), generator=g), backend)
        torch.library.opcheck(getattr(torch.ops.msrs, op).default, args)


# ---------------------------------------------------------------------------------------------------------------
# the cpp loader


def test_cpp_build_folder_is_keyed_by_torch_and_sources(monkeypatch, tmp_path):
    from msrs.ops import cpp_backend

    monkeypatch.setenv("MSRS_EXTENSIONS_DIR", str(tmp_path))
    folder = cpp_backend.build_directory()
    assert folder.parent == tmp_path
    version = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in torch.__version__)
    assert f"torch{version}_" in folder.name
    # an edited source gives another folder
    src = tmp_path / "src"
    src.mkdir()
    for name in ("ops.cpp", "philox.h", "build_flags.py"):
        (src / name).write_bytes((cpp_backend.sources_dir() / name).read_bytes())
    assert cpp_backend.build_directory(src) == folder
    (src / "ops.cpp").write_text((src / "ops.cpp").read_text() + "\n// edited\n")
    assert cpp_backend.build_directory(src) != folder


def test_cpp_jit_build_takes_the_lock_and_removes_a_stale_baton(monkeypatch, tmp_path, capsys):
    from torch.utils import cpp_extension

    cpp = _cpp()
    monkeypatch.setenv("MSRS_EXTENSIONS_DIR", str(tmp_path))
    folder = cpp.build_directory()
    folder.mkdir(parents=True)
    (folder / "lock").write_text("")  # left behind by a killed torch build: would hang cpp_extension.load
    calls = []

    def fake_load(**kwargs):
        calls.append(kwargs)
        assert not (folder / "lock").exists()
        return cpp.extension()

    monkeypatch.setattr(cpp_extension, "load", fake_load)
    module = cpp._jit_build(cpp.sources_dir())
    assert module is cpp.extension() and len(calls) == 1
    assert calls[0]["build_directory"] == str(folder)
    assert "msrs: compiling the C++ ops" in capsys.readouterr().err
    assert (tmp_path / f"{folder.name}.lock").exists()


# ---------------------------------------------------------------------------------------------------------------
# errors through the public API name the argument


def _raises(exc, match, fn, *args, **kwargs):
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)


def test_bad_inputs_raise_errors_naming_the_argument():
    x = torch.rand(2, 3, 4, 4)
    rows = ops.make_rows(torch.arange(2), 0, 3)
    coeffs = torch.tensor([[0.5, 1.0, 0.0]]).expand(6, 3).contiguous()
    _raises(ValueError, r"^x:.*4-d", ops.add_noise, x[0], 0.5, 3, seed=0)
    _raises(ValueError, r"^x:.*4-d", ops.sample_noisy, x[0], rows, coeffs, seed=0)
    _raises(ValueError, r"^sigma:", ops.add_noise, x, -0.1, 3, seed=0)
    _raises(ValueError, r"^sigma:", ops.add_noise, x, [0.5, float("nan")], 3, seed=0)
    _raises(ValueError, r"^coeffs:.*sigma", ops.sample_noisy, x, rows, coeffs * torch.tensor([-1.0, 1, 1]), seed=0)
    _raises(ValueError, r"^x:.*finite", ops.add_noise, torch.where(x > 0.5, float("nan"), x), 0.5, 3, seed=0)
    _raises(ValueError, r"^x:.*\[0, 1\]", ops.add_noise, x * 2, 0.5, 3, seed=0)
    _raises(ValueError, r"^x:.*\[0, 1\]", ops.add_noise, x - 1, 0.5, 3, seed=0)
    _raises(TypeError, r"^x:.*floating", ops.add_noise, (x * 255).to(torch.uint8), 0.5, 3, seed=0)
    _raises(TypeError, r"^x:.*floating", ops.sample_noisy, (x * 255).to(torch.int64), rows, coeffs, seed=0)
    _raises(TypeError, r"^rows:.*int64", ops.sample_noisy, x, rows.to(torch.float32), coeffs, seed=0)
    _raises(ValueError, r"^rows:.*source", ops.sample_noisy, x, rows + torch.tensor([2, 0, 0, 0]), coeffs, seed=0)
    _raises(ValueError, r"^rows:", ops.sample_noisy, x, rows - torch.tensor([0, 0, 5, 0]), coeffs, seed=0)
    _raises(ValueError, r"^seed:", ops.add_noise, x, 0.5, 3, seed=-1)
    _raises(TypeError, r"^seed:", ops.add_noise, x, 0.5, 3, seed=1.5)
    _raises(TypeError, r"^out_dtype:", ops.add_noise, x, 0.5, 3, seed=0, out_dtype=torch.int32)
    _raises(ValueError, r"^diffusion_scale:", ops.add_noise, x, 0.5, 3, seed=0, diffusion_scale=1.5)
    _raises(ValueError, r"^image_ids:", ops.add_noise, x, 0.5, 3, seed=0, image_ids=torch.arange(3))
    # finalize_denoised
    x_t = torch.randn(4, 3, 4, 4)
    _raises(ValueError, r"^x_t:.*4-d", ops.finalize_denoised, x_t[0], x_t[0], 0.5)
    _raises(ValueError, r"^eps:.*shape", ops.finalize_denoised, x_t, x_t[:2], 0.5)
    _raises(TypeError, r"^eps:.*floating", ops.finalize_denoised, x_t, x_t.to(torch.int32), 0.5)
    _raises(ValueError, r"^sqrt_abar:", ops.finalize_denoised, x_t, x_t, [0.5, 0.5])
    _raises(ValueError, r"^sqrt_abar:", ops.finalize_denoised, x_t, x_t, 0.0)
    _raises(ValueError, r"^std:", ops.finalize_denoised, x_t, x_t, 0.5, std=[1.0, 0.0, 1.0])
    _raises(ValueError, r"^mean:", ops.finalize_denoised, x_t, x_t, 0.5, mean=[0.5, 0.5])
    # count_votes_
    counts = torch.zeros(2, 5, dtype=torch.int64)
    logits = torch.randn(6, 5)
    index = torch.tensor([0, 1, 0, 1, 0, 1])
    _raises(ValueError, r"^scores:.*class ids", ops.count_votes_, counts, torch.tensor([0, 1, 2, 3, 4, 5]), index)
    _raises(ValueError, r"^scores:.*class ids", ops.count_votes_, counts, torch.tensor([0, -1, 2, 3, 4, 0]), index)
    _raises(ValueError, r"^index:", ops.count_votes_, counts, logits, index * 2)
    _raises(ValueError, r"^index:", ops.count_votes_, counts, logits, index - 1)
    _raises(ValueError, r"^index:.*shape", ops.count_votes_, counts, logits, index[:3])
    _raises(TypeError, r"^index:.*int64", ops.count_votes_, counts, logits, index.to(torch.float32))
    _raises(TypeError, r"^counts:.*int64", ops.count_votes_, counts.to(torch.float32), logits, index)
    _raises(TypeError, r"^counts:.*int64", ops.count_votes_, counts.to(torch.int32), logits, index)
    _raises(TypeError, r"^scores:.*int64", ops.count_votes_, counts, torch.tensor([0, 1, 2, 3, 4, 0], dtype=torch.int32), index)
    _raises(ValueError, r"^scores:.*classes", ops.count_votes_, counts, torch.randn(6, 4), index)
    _raises(ValueError, r"^counts:.*2-d", ops.count_votes_, counts[0], logits, index)
    _raises(ValueError, r"^counts:.*contiguous", ops.count_votes_, counts.t().contiguous().t(), logits, index)
    _raises(TypeError, r"^counts:.*Tensor", ops.count_votes_, counts.numpy(), logits, index)
    assert int(counts.sum()) == 0  # nothing was counted by the failed calls


def test_tensors_on_different_devices_are_refused():
    x = torch.rand(2, 3, 4, 4)
    rows = ops.make_rows(torch.arange(2), 0, 3)
    coeffs = torch.tensor([[0.5, 1.0, 0.0]]).expand(6, 3).contiguous()
    _raises(ValueError, r"rows on meta", ops.sample_noisy, x, rows.to("meta"), coeffs, seed=0)
    _raises(ValueError, r"eps on meta", ops.finalize_denoised, x, x.to("meta"), 0.5)
    counts = torch.zeros(2, 5, dtype=torch.int64)
    _raises(ValueError, r"scores on meta", ops.count_votes_, counts, torch.randn(6, 5, device="meta"),
            torch.zeros(6, dtype=torch.int64))
    _raises(ValueError, r"index on meta", ops.count_votes_, counts, torch.randn(6, 5),
            torch.zeros(6, dtype=torch.int64, device="meta"))


def test_backend_names(monkeypatch):
    x = torch.rand(1, 1, 2, 2)
    _raises(ValueError, r"^backend:.*'cuda'", ops.add_noise, x, 0.5, 2, seed=0, backend="cuda")
    monkeypatch.setenv("MSRS_BACKEND", "fast")
    _raises(ValueError, r"^MSRS_BACKEND:.*'fast'", ops.add_noise, x, 0.5, 2, seed=0)
    monkeypatch.delenv("MSRS_BACKEND")
    # the cpp backend runs on CPU tensors only: forcing it on another device says so
    meta = torch.empty(1, 1, 2, 2, device="meta")
    _raises(ops.BackendUnavailable, r"'cpp'.*CPU", ops.add_noise, meta, 0.5, 2, seed=0, backend="cpp", check=False)
    assert ops.resolve_backend("torch", torch.device("cpu")) == "torch"


def test_forcing_triton_on_a_cpu_tensor_without_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    try:
        from msrs.ops import triton_backend  # noqa: F401
    except ImportError as exc:
        skip_or_fail("triton", f"msrs.ops.triton_backend cannot be imported: {exc}")
    x = torch.rand(1, 1, 2, 2)
    _raises(ops.BackendUnavailable, r"'triton'", ops.add_noise, x, 0.5, 2, seed=0, backend="triton")
    assert "triton" not in ops.available_backends("cpu") and "torch" in ops.available_backends("cpu")


def test_auto_backend_on_cpu_is_cpp_when_it_builds(monkeypatch):
    from msrs.ops import cpp_backend

    monkeypatch.delenv("MSRS_BACKEND", raising=False)
    expected = "cpp" if cpp_backend.load_error() is None or "cpp" in required_backends() else "torch"
    assert ops.resolve_backend(None, torch.device("cpu")) == expected
