"""The Triton kernels (kernels/, installed as msrs.kernels) against the plain-torch reference (msrs.ops.reference).

Where torch sees a GPU, the kernels are compiled and run on CUDA tensors. Elsewhere they run in Triton's
interpreter on CPU tensors: this module sets TRITON_INTERPRET=1 while it imports msrs.kernels (Triton decides at
decoration time whether a kernel is interpreted, so it only matters that nothing imported msrs.kernels before;
importing torch or triton first is fine), and again around each test through a fixture, so that other test
modules do not see the interpreter as an available backend for CPU tensors.

The interpreter costs ~5 ms per program instance, so the shapes are tiny and the tiles large (one or a few
programs per launch). It runs programs one after another: GPU races of the vote atomics cannot show in it, and
are only exercised by the CUDA run of these tests.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import skip_or_fail

pytestmark = pytest.mark.triton

if importlib.util.find_spec("triton") is None:
    skip_or_fail("triton", "triton is not installed", allow_module_level=True)

_HAS_CUDA = torch.cuda.is_available()
_kernels_imported_before = "msrs.kernels" in sys.modules
_previous = os.environ.get("TRITON_INTERPRET")
if not _HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
try:
    kernels = importlib.import_module("msrs.kernels")
finally:
    if _previous is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _previous

import msrs.ops as ops  # noqa: E402
from msrs.ops import philox, reference, triton_backend  # noqa: E402
from msrs.kernels.philox import philox_words  # noqa: E402

if kernels.INTERPRET:
    DEVICE = "cpu"
elif _HAS_CUDA:
    DEVICE = "cuda"
    _why = triton_backend.unavailable_reason("cuda")
    if _why:
        skip_or_fail("triton", f"torch sees a GPU but Triton cannot use it: {_why}", allow_module_level=True)
else:
    pytest.skip(
        "msrs.kernels was imported (by an earlier module, before TRITON_INTERPRET=1 was set) with kernels compiled "
        "for a GPU, and this machine has none"
        if _kernels_imported_before
        else "Triton kernels are not interpreted although TRITON_INTERPRET=1 was set",
        allow_module_level=True,
    )

MASK32 = 0xFFFFFFFF
SEEDS = (0, 2**63 - 1, 0x1234_5678_9ABC_DEF0)
SHAPES = ((3, 7, 5), (1, 8, 8), (3, 4, 4))  # numel 105, 64, 48: not all multiples of 4


@pytest.fixture(autouse=True)
def _interpreter_env(monkeypatch):
    """Public-API calls check TRITON_INTERPRET when they are asked about CPU tensors."""
    if kernels.INTERPRET:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _to(t: torch.Tensor, dtype=None) -> torch.Tensor:
    return t.to(device=DEVICE, dtype=dtype) if dtype is not None else t.to(DEVICE)


def _rows_and_coeffs(batch: int, g: torch.Generator):
    """Rows from different sources, images, samples and streams (ids up to 2^32 - 1), one sigma-0 row, plain
    and diffusion coefficients."""
    rows = torch.tensor(
        [
            [0, 0, 0, 0],
            [batch - 1, 7, 3, 1],
            [0, 5, 1, 0],
            [batch - 1, 5, 1, 2],
            [0, MASK32, MASK32, MASK32],
            [batch - 1, 123456, 2**31 + 9, 129],
        ],
        dtype=torch.int64,
    )
    a = 0.6
    coeffs = torch.tensor(
        [
            [0.5, 1.0, 0.0],
            [0.25, 2 * a, -a],
            [0.0, 1.0, 0.0],  # sigma 0: the clean image
            [1.0, 2 * a, -a],
            [0.12, 1.0, 0.0],
            [0.0, 2 * a, -a],  # sigma 0 with diffusion scaling
        ],
        dtype=torch.float32,
    )
    return rows, coeffs


def _dtype_tolerance(dtype: torch.dtype) -> dict:
    # fp32: the backends' log/sin/cos differ by a few ulps; fp16/bf16: the fp32 value may round to a neighbour.
    if dtype == torch.float32:
        return {"rtol": 1e-5, "atol": 1e-5}
    return {"rtol": 1e-2 if dtype == torch.bfloat16 else 1e-3, "atol": 1e-5}


# ------------------------------------------------------------------------------------------------------------
# Philox


def test_philox_known_answer():
    words, _ = philox_words(_to(torch.zeros(1, 4, dtype=torch.int64)), 0)
    assert [hex(int(w)) for w in words[0].cpu()] == ["0x6627e8d5", "0xe169c58d", "0xbc57ac4c", "0x9b00dbd8"]


@pytest.mark.parametrize("seed", (0, 1, 2**31 + 5, MASK32, 2**32, 2**63 - 1, 0x1234_5678_9ABC_DEF0))
def test_philox_words_bit_exact(seed):
    g = _generator(1)
    counters = torch.randint(0, 2**32, (61, 4), generator=g, dtype=torch.int64)
    counters[0] = 0
    counters[1] = MASK32
    counters[2] = torch.tensor([0, MASK32, 1, 2**31])
    words, normals = philox_words(_to(counters), seed, block=64)
    expected = torch.stack(philox.philox4x32(*counters.unbind(1), seed=seed), dim=1)
    assert torch.equal(words.cpu(), expected)
    # the normals: the reference's uniform + Box-Muller mapping of the same words
    z0, z1 = philox._box_muller(philox._uniform(expected[:, 0]), philox._uniform(expected[:, 1]))
    z2, z3 = philox._box_muller(philox._uniform(expected[:, 2]), philox._uniform(expected[:, 3]))
    torch.testing.assert_close(normals.cpu(), torch.stack((z0, z1, z2, z3), dim=1), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# sample_noisy

DTYPE_PAIRS = (
    (torch.float32, torch.float32),
    (torch.float16, torch.float16),
    (torch.float32, torch.float16),
    (torch.float16, torch.float32),
    (torch.bfloat16, torch.float32),
    (torch.float32, torch.bfloat16),
    (torch.bfloat16, torch.bfloat16),
)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("x_dtype,out_dtype", DTYPE_PAIRS, ids=lambda d: str(d).replace("torch.", ""))
def test_sample_noisy_matches_reference(shape, x_dtype, out_dtype):
    g = _generator(2)
    x = torch.rand(2, *shape, generator=g).to(x_dtype)
    rows, coeffs = _rows_and_coeffs(2, g)
    for seed in (SEEDS[0], SEEDS[2]):
        expected = reference.sample_noisy(x, rows, coeffs, seed, out_dtype)
        out = triton_backend.sample_noisy(_to(x), _to(rows), _to(coeffs), seed, out_dtype)
        assert out.dtype == out_dtype and out.shape == (rows.shape[0], *shape) and out.device.type == DEVICE
        torch.testing.assert_close(out.cpu(), expected, **_dtype_tolerance(out_dtype))


@pytest.mark.parametrize("out_dtype", (torch.float32, torch.float16, torch.bfloat16), ids=str)
def test_sample_noisy_sigma_zero_is_exact(out_dtype):
    """With sigma = 0 no noise enters: alpha * x + beta, rounded once, identical to the reference."""
    g = _generator(3)
    x = torch.rand(3, 3, 7, 5, generator=g)
    rows = torch.tensor([[2, 9, 4, 1], [0, 0, 0, 0], [1, 3, MASK32, 5]], dtype=torch.int64)
    coeffs = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.2, -0.6], [0.0, 0.3, -0.15]])
    expected = reference.sample_noisy(x, rows, coeffs, 7, out_dtype)
    out = triton_backend.sample_noisy(_to(x), _to(rows), _to(coeffs), 7, out_dtype)
    torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=0)


def test_sample_noisy_normals_match_reference_noise():
    """alpha = 1, beta = 0, x = 0, sigma = 1: the output is the noise itself, eps of msrs.ops.philox."""
    rows = torch.tensor([[0, 4, 2, 1], [0, MASK32, 0, 3], [0, 0, MASK32, 0]], dtype=torch.int64)
    coeffs = torch.tensor([[1.0, 1.0, 0.0]]).repeat(3, 1)
    x = torch.zeros(1, 3, 7, 5)
    for seed in SEEDS:
        out = triton_backend.sample_noisy(_to(x), _to(rows), _to(coeffs), seed, torch.float32).cpu()
        eps = philox.gaussian_noise(105, rows[:, 1], rows[:, 2], rows[:, 3], seed)
        torch.testing.assert_close(out.reshape(3, -1), eps, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tile", ((1, 4), (2, 8), (4, 1), (8, 32)), ids=lambda t: f"rows{t[0]}_groups{t[1]}")
def test_noise_invariant_to_tile_shape(tile):
    g = _generator(4)
    x = _to(torch.rand(2, 3, 7, 5, generator=g))
    rows, coeffs = (_to(t) for t in _rows_and_coeffs(2, g))
    default = kernels.sample_noisy(x, rows, coeffs, SEEDS[2], torch.float32)
    tiled = kernels.sample_noisy(
        x, rows, coeffs, SEEDS[2], torch.float32, block_rows=tile[0], block_groups=tile[1]
    )
    assert torch.equal(default, tiled)


def test_noise_invariant_to_row_order_and_batching():
    g = _generator(5)
    x = _to(torch.rand(2, 1, 8, 8, generator=g))
    rows, coeffs = (_to(t) for t in _rows_and_coeffs(2, g))
    full = triton_backend.sample_noisy(x, rows, coeffs, SEEDS[1], torch.float32)
    perm = _to(torch.tensor([4, 0, 5, 2, 1, 3]))
    permuted = triton_backend.sample_noisy(x, rows[perm], coeffs[perm], SEEDS[1], torch.float32)
    assert torch.equal(permuted, full[perm])
    halves = [triton_backend.sample_noisy(x, rows[i:i + 3], coeffs[i:i + 3], SEEDS[1], torch.float32) for i in (0, 3)]
    assert torch.equal(torch.cat(halves), full)
    # a different source image with the same (image id, sample, stream) gets the same noise
    swapped = rows.clone()
    swapped[:, 0] = 1 - swapped[:, 0]
    noise = full - x[rows[:, 0]]
    noise_swapped = triton_backend.sample_noisy(x, swapped, coeffs, SEEDS[1], torch.float32) - x[swapped[:, 0]]
    plain = coeffs[:, 1] == 1
    torch.testing.assert_close(noise_swapped[plain], noise[plain], rtol=0, atol=1e-6)


def test_sample_noisy_empty():
    x = _to(torch.rand(2, 3, 4, 4))
    out = triton_backend.sample_noisy(
        x, _to(torch.zeros(0, 4, dtype=torch.int64)), _to(torch.zeros(0, 3)), 0, torch.float16
    )
    assert out.shape == (0, 3, 4, 4) and out.dtype == torch.float16


# ------------------------------------------------------------------------------------------------------------
# finalize_denoised


def _finalize_inputs(shape, g, dtype=torch.float32):
    n = 3
    x_t = (torch.randn(n, *shape, generator=g) * 1.5).to(dtype)
    eps = torch.randn(n, *shape, generator=g).to(dtype)
    a = torch.tensor([0.9, 0.5, 0.05])
    coeffs = torch.stack((a, torch.sqrt(1 - a * a)), dim=1)
    channels = shape[0]
    mean = torch.linspace(0.4, 0.6, channels)
    std = torch.linspace(0.2, 0.3, channels)
    return x_t, eps, coeffs, mean, std


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("in_dtype,out_dtype", DTYPE_PAIRS, ids=lambda d: str(d).replace("torch.", ""))
def test_finalize_denoised_matches_reference(shape, in_dtype, out_dtype):
    x_t, eps, coeffs, mean, std = _finalize_inputs(shape, _generator(6), in_dtype)
    expected = reference.finalize_denoised(x_t, eps, coeffs, mean, std, out_dtype)
    out = triton_backend.finalize_denoised(_to(x_t), _to(eps), _to(coeffs), _to(mean), _to(std), out_dtype)
    assert out.dtype == out_dtype and out.shape == x_t.shape
    tolerance = {"rtol": 1e-6, "atol": 1e-6} if out_dtype == torch.float32 else _dtype_tolerance(out_dtype)
    torch.testing.assert_close(out.cpu(), expected, **tolerance)
    # the clamp is active on some elements of these inputs
    x0 = (x_t.float() - coeffs[:, 1, None, None, None] * eps.float()) / coeffs[:, 0, None, None, None]
    assert bool((x0.abs() > 1).any()) and bool((x0.abs() < 1).any())


def test_finalize_denoised_mixed_dtypes_nan_and_tiles():
    x_t, eps, coeffs, mean, std = _finalize_inputs((3, 4, 4), _generator(7))
    eps = eps.to(torch.float16)
    eps[1, 2, 3, 0] = float("nan")
    expected = reference.finalize_denoised(x_t, eps, coeffs, mean, std, torch.float32)
    args = (_to(x_t), _to(eps), _to(coeffs), _to(mean), _to(std), torch.float32)
    out = triton_backend.finalize_denoised(*args)
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-6, atol=1e-6, equal_nan=True)
    assert bool(out[1, 2, 3, 0].isnan())
    for block_planes, block_elements in ((1, 4), (4, 8), (2, 16)):
        tiled = kernels.finalize_denoised(*args, block_planes=block_planes, block_elements=block_elements)
        torch.testing.assert_close(tiled, out, rtol=0, atol=0, equal_nan=True)


# ------------------------------------------------------------------------------------------------------------
# count_votes_


def _bincount(counts: torch.Tensor, classes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    m, k = counts.shape
    return counts + torch.bincount(index * k + classes, minlength=m * k).reshape(m, k)


def _tricky_logits(samples: int, classes: int, g: torch.Generator) -> torch.Tensor:
    scores = torch.randn(samples, classes, generator=g)
    scores[0] = 1.0  # all tied: class 0
    scores[1, [2, 7]] = 5.0  # tie between 2 and 7: 2
    scores[2, 3] = float("nan")  # NaN is the maximum
    scores[3, [1, 6]] = float("nan")  # first NaN wins
    scores[4, 8] = float("inf")
    scores[4, 9] = float("nan")  # NaN beats +inf
    scores[5] = float("-inf")  # all -inf: class 0
    scores[6] = float("-inf")
    scores[6, classes - 1] = -6e4  # the last class, in the last chunk (finite in fp16)
    scores[7, [0, classes - 1]] = 9.0  # tie across chunks: the first
    scores[8, 1] = 9.0
    scores[8, classes - 2] = float("nan")  # a NaN in a later chunk beats an earlier maximum
    return scores


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16, torch.bfloat16, torch.float64), ids=str)
@pytest.mark.parametrize("block_classes", (None, 4), ids=("one_chunk", "chunks_of_4"))
def test_count_votes_logits(dtype, block_classes):
    g = _generator(8)
    samples, classes = 64, 10  # the interpreter reduces element by element (~1 ms each): keep S * K small
    scores = _tricky_logits(samples, classes, g).to(dtype)
    index = torch.randint(0, 3, (samples,), generator=g)
    counts = torch.full((3, classes), 2**40, dtype=torch.int64)  # pre-filled large counts stay exact
    counts[1, 4] = 2**62
    expected = _bincount(counts, scores.argmax(dim=1), index)
    reference_counts = counts.clone()
    reference.count_votes_(reference_counts, scores, index)
    assert torch.equal(reference_counts, expected)
    out = _to(counts.clone())
    kernels.count_votes_(out, _to(scores), _to(index), block_classes=block_classes)
    assert torch.equal(out.cpu(), expected)
    assert [int(c) for c in scores[:9].argmax(dim=1)] == [0, 2, 3, 1, 9, 0, classes - 1, 0, classes - 2]


def test_count_votes_class_ids_and_many_programs():
    """Class ids; many samples voting into the same few counts from many programs (the case where GPU atomics
    would race if they were wrong; the interpreter cannot show races, the CUDA run of this test can)."""
    g = _generator(9)
    samples, classes = (8192, 7) if DEVICE == "cuda" else (512, 7)
    ids = torch.randint(0, classes, (samples,), generator=g)
    ids[: samples // 2] = 3  # one heavily contended count
    index = torch.randint(0, 2, (samples,), generator=g)
    counts = torch.full((2, classes), 5, dtype=torch.int64)
    expected = _bincount(counts, ids, index)
    out = _to(counts.clone())
    block = 64 if DEVICE == "cuda" else 128  # 128 programs on a GPU, 4 in the interpreter
    kernels.count_votes_(out, _to(ids), _to(index), block_samples=block)
    assert torch.equal(out.cpu(), expected)
    scores = torch.nn.functional.one_hot(ids, classes).float() + 0.01 * torch.rand(samples, classes, generator=g)
    out = _to(counts.clone())
    kernels.count_votes_(out, _to(scores), _to(index), block_samples=block)
    assert torch.equal(out.cpu(), expected)


def _engine_like_votes(samples: int, rows: int, classes: int, pattern: str, g: torch.Generator):
    """(logits, index): each row has a class most of its samples vote for (as an image under noise does), a few
    votes elsewhere; index image-major (the engine's batches), shuffled, descending, or all in one row."""
    index = torch.randint(0, rows, (samples,), generator=g)
    if pattern == "sorted":
        index = index.sort().values
    elif pattern == "descending":
        index = index.sort(descending=True).values
    elif pattern == "one_row":
        index = torch.full((samples,), rows - 1, dtype=torch.int64)
    label = torch.randint(0, classes, (rows,), generator=g)
    scores = torch.randn(samples, classes, generator=g)
    scores[torch.arange(samples), label[index]] += 2.5
    return scores, index


@pytest.mark.parametrize("pattern", ("sorted", "shuffled", "descending", "one_row"))
@pytest.mark.parametrize("kind", ("logits", "class_ids"))
def test_count_votes_aggregated_exact_with_one_atomic_per_row_and_class(pattern, kind):
    """Per-program aggregation: counts identical to one atomic per sample (and to the reference), and the kernel
    issues exactly one atomic per distinct (program, row, class), counted by the kernel itself, against the count
    taken from the launch grid in plain torch."""
    g = _generator(11)
    samples, rows, classes = (4096, 9, 10) if DEVICE == "cuda" else (600, 5, 10)
    block = 128 if DEVICE == "cuda" else 64
    scores, index = _engine_like_votes(samples, rows, classes, pattern, g)
    votes = scores.argmax(dim=1)
    counts = torch.randint(0, 2**40, (rows, classes), generator=g)
    expected = _bincount(counts, votes, index)
    inputs = _to(scores) if kind == "logits" else _to(votes)
    issued = {}
    for aggregate in (True, False):
        out, atomics = _to(counts.clone()), _to(torch.zeros(1, dtype=torch.int64))
        kernels.votes.count_votes_(out, inputs, _to(index), block_samples=block, aggregate=aggregate,
                                   atomics=atomics)
        assert torch.equal(out.cpu(), expected), aggregate
        issued[aggregate] = int(atomics)
        assert issued[aggregate] == kernels.votes.atomic_count(votes, index, block, aggregate)
    programs = -(-samples // block)
    assert issued[False] == samples
    # the engine's case: each program holds one or two rows, so a few atomics per program instead of `block`
    if pattern != "shuffled":
        assert programs <= issued[True] < samples // 4
    if pattern == "one_row":
        one_class = _to(torch.full((samples,), 3, dtype=torch.int64))
        out, atomics = _to(counts.clone()), _to(torch.zeros(1, dtype=torch.int64))
        kernels.votes.count_votes_(out, one_class, _to(index), block_samples=block, atomics=atomics)
        assert int(atomics) == programs and int(out[rows - 1, 3] - counts[rows - 1, 3]) == samples


def test_count_votes_default_tiles_aggregate():
    """The launch the engine gets (no forced tile): wide rows (1,000 classes) and CIFAR-like rows (10)."""
    g = _generator(12)
    for samples, classes in ((2000, 10), (64, 1000)) if DEVICE == "cpu" else ((100_000, 10), (20_000, 1000)):
        scores, index = _engine_like_votes(samples, 4, classes, "sorted", g)
        counts = torch.zeros(4, classes, dtype=torch.int64)
        out, atomics = _to(counts.clone()), _to(torch.zeros(1, dtype=torch.int64))
        kernels.votes.count_votes_(out, _to(scores), _to(index), atomics=atomics)
        assert torch.equal(out.cpu(), _bincount(counts, scores.argmax(dim=1), index))
        block = kernels.votes.launch_shape(samples, classes, False)[0]
        assert int(atomics) == kernels.votes.atomic_count(scores.argmax(dim=1), index, block) < samples


def test_count_votes_atomics_argument_is_checked():
    counts = _to(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="^atomics:"):
        kernels.votes.count_votes_(counts, _to(torch.zeros(4, 3)), _to(torch.zeros(4, dtype=torch.int64)),
                                   atomics=_to(torch.zeros(1, dtype=torch.int32)))


def test_count_votes_empty():
    counts = _to(torch.arange(6, dtype=torch.int64).reshape(2, 3))
    triton_backend.count_votes_(counts, _to(torch.zeros(0, 3)), _to(torch.zeros(0, dtype=torch.int64)))
    assert torch.equal(counts.cpu(), torch.arange(6).reshape(2, 3))


# ------------------------------------------------------------------------------------------------------------
# autotuning and CUDA graphs


def test_autotuning_never_runs_inside_a_cuda_graph_capture(monkeypatch):
    """With MSRS_TRITON_AUTOTUNE=1, run_tuned times the configs once per key; inside a CUDA graph capture it must
    not (do_bench synchronises and launches every config many times): it runs the cached config, or the default
    one without caching it. The capture is a stand-in (torch.cuda.is_current_stream_capturing patched)."""
    import triton.testing

    capturing = [True]
    monkeypatch.setattr(kernels, "INTERPRET", False)
    monkeypatch.setenv(kernels.AUTOTUNE_ENV, "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: capturing[0])
    monkeypatch.setattr(kernels.launch_config, "_best", {})
    speed = {(1, 4): 3.0, (2, 4): 2.0, (3, 8): 1.0}  # ms per config: the last one is the fastest
    timed = []

    def fake_do_bench(fn, warmup, rep):
        fn()
        timed.append(launches[-1])
        return speed[launches[-1]]

    monkeypatch.setattr(triton.testing, "do_bench", fake_do_bench)
    launches = []
    configs = list(speed)

    def run():
        kernels.launch_config.run_tuned(("op", 1), configs, lambda *config: launches.append(config))

    run()  # first call inside a capture: the default config, nothing timed, nothing cached
    assert launches == [(1, 4)] and timed == [] and kernels.launch_config._best == {}
    capturing[0] = False
    run()  # outside a capture: every config timed once, then the fastest runs
    assert timed == configs and launches[-1] == (3, 8) and kernels.launch_config._best == {("op", 1): (3, 8)}
    capturing[0] = True
    del launches[:], timed[:]
    run()  # inside a capture again: the cached config, no timing
    assert launches == [(3, 8)] and timed == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not kernels.stream_capturing()  # no CUDA: never capturing (and the query is not made)


# ------------------------------------------------------------------------------------------------------------
# through the public API


def test_public_api_backend_triton():
    assert "triton" in ops.available_backends(DEVICE)
    g = _generator(10)
    x = _to(torch.rand(2, 1, 8, 8, generator=g))
    ids = _to(torch.tensor([11, 40]))
    kwargs = dict(seed=SEEDS[2], image_ids=ids, sample_start=5, stream=2, diffusion_scale=[0.7, 0.4])
    noisy = ops.add_noise(x, [0.25, 0.5], 3, backend="triton", **kwargs)
    expected = ops.add_noise(x, [0.25, 0.5], 3, backend="torch", **kwargs)
    assert noisy.shape == (12, 1, 8, 8)
    torch.testing.assert_close(noisy, expected, rtol=1e-5, atol=1e-5)

    rows = ops.make_rows(ids, 0, 2, stream=1)
    coeffs = _to(torch.tensor([[0.5, 1.0, 0.0]]).repeat(4, 1))
    torch.testing.assert_close(
        ops.sample_noisy(x, rows, coeffs, seed=3, out_dtype=torch.float16, backend="triton"),
        ops.sample_noisy(x, rows, coeffs, seed=3, out_dtype=torch.float16, backend="torch"),
    )

    x_t, eps = noisy[:4], _to(torch.randn(4, 1, 8, 8, generator=g))
    fin = dict(mean=(0.5,), std=(0.25,), out_dtype=torch.float32)
    torch.testing.assert_close(
        ops.finalize_denoised(x_t, eps, [0.7, 0.7, 0.4, 0.4], backend="triton", **fin),
        ops.finalize_denoised(x_t, eps, [0.7, 0.7, 0.4, 0.4], backend="torch", **fin),
        rtol=1e-6, atol=1e-6,
    )

    logits = _to(torch.randn(50, 10, generator=g))
    index = _to(torch.randint(0, 2, (50,), generator=g))
    counts = _to(torch.zeros(2, 10, dtype=torch.int64))
    assert ops.count_votes_(counts, logits, index, backend="triton", check=False) is counts
    expected_counts = _to(torch.zeros(2, 10, dtype=torch.int64))
    ops.count_votes_(expected_counts, logits, index, backend="torch")
    assert torch.equal(counts, expected_counts)


def test_public_api_strided_inputs_made_on_the_device():
    """Non-contiguous inputs created on the device itself (a CPU tensor sliced and then moved to CUDA arrives
    contiguous): every other column, channels_last, and logits that are a strided view."""
    g = _generator(13)
    wide = _to(torch.rand(2, 3, 5, 8, generator=g))
    x = wide[..., ::2]  # [2, 3, 5, 4], strides of the wide tensor
    assert not x.is_contiguous()
    kwargs = dict(seed=SEEDS[2], image_ids=_to(torch.tensor([4, 9])), diffusion_scale=0.7)
    torch.testing.assert_close(ops.add_noise(x, 0.5, 3, backend="triton", **kwargs),
                               ops.add_noise(x.contiguous(), 0.5, 3, backend="torch", **kwargs), rtol=1e-5, atol=1e-5)
    x_t = _to(torch.randn(4, 3, 5, 4, generator=g)).contiguous(memory_format=torch.channels_last)
    eps = _to(torch.randn(4, 3, 5, 8, generator=g))[..., 1::2]
    assert not x_t.is_contiguous() and not eps.is_contiguous()
    fin = dict(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), out_dtype=torch.float32)
    torch.testing.assert_close(ops.finalize_denoised(x_t, eps, 0.6, backend="triton", **fin),
                               ops.finalize_denoised(x_t.contiguous(), eps.contiguous(), 0.6, backend="torch", **fin),
                               rtol=1e-6, atol=1e-6)
    scores = _to(torch.randn(40, 20, generator=g))[:, ::2]  # rows of 10 logits, class stride 2
    index = _to(torch.randint(0, 3, (40,), generator=g))
    counts, expected = (_to(torch.zeros(3, 10, dtype=torch.int64)) for _ in range(2))
    ops.count_votes_(counts, scores, index, backend="triton")
    ops.count_votes_(expected, scores.contiguous(), index, backend="torch")
    assert torch.equal(counts, expected)


def test_unavailable_reasons(monkeypatch):
    assert triton_backend.unavailable_reason(DEVICE) is None
    reason = triton_backend.unavailable_reason("meta")
    assert reason and "CUDA" in reason
    with pytest.raises(ops.BackendUnavailable, match="triton"):
        ops.resolve_backend("triton", torch.device("meta"))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    reason = triton_backend.unavailable_reason("cpu")
    assert reason and "TRITON_INTERPRET" in reason
    if DEVICE == "cpu":
        with pytest.raises(ops.BackendUnavailable, match="TRITON_INTERPRET"):
            ops.resolve_backend("triton", torch.device("cpu"))


@pytest.mark.skipif(DEVICE != "cpu", reason="the import-order pitfall is the interpreter's")
def test_interpreter_works_when_triton_was_imported_first():
    """diffusers imports triton, so in a test session triton is often imported before TRITON_INTERPRET=1 is set.
    Triton's own @jit helpers (tl.max, tl.zeros, ...) then refuse to run in the interpreter; the kernels must not
    depend on them."""
    code = textwrap.dedent(
        """
        import os
        import torch, triton, triton.language  # imported before the variable is set
        os.environ["TRITON_INTERPRET"] = "1"
        import msrs.kernels as k
        from msrs.ops import reference
        assert k.INTERPRET
        x = torch.rand(2, 3, 4, 4)
        rows = torch.tensor([[0, 3, 1, 0], [1, 4, 2, 1]])
        coeffs = torch.tensor([[0.5, 1.0, 0.0], [0.25, 1.2, -0.6]])
        torch.testing.assert_close(k.sample_noisy(x, rows, coeffs, 5, torch.bfloat16),
                                   reference.sample_noisy(x, rows, coeffs, 5, torch.bfloat16))
        x_t, eps = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
        c, m, s = torch.tensor([[0.8, 0.6], [0.6, 0.8]]), torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.3, 0.4])
        torch.testing.assert_close(k.finalize_denoised(x_t, eps, c, m, s, torch.float32),
                                   reference.finalize_denoised(x_t, eps, c, m, s, torch.float32))
        scores, index = torch.randn(40, 5), torch.randint(0, 2, (40,))
        scores[0, 3] = float("nan")
        counts, expected = torch.zeros(2, 5, dtype=torch.int64), torch.zeros(2, 5, dtype=torch.int64)
        k.count_votes_(counts, scores, index)
        reference.count_votes_(expected, scores, index)
        assert torch.equal(counts, expected)
        print("ok")
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-4000:]


@pytest.mark.skipif(DEVICE != "cpu", reason="on a GPU the tests above run the compiled kernels themselves")
def test_kernels_compile_for_a_gpu():
    """Without a GPU, at least compile every kernel for sm_90 (Triton's own ptxas, no driver needed), with the
    specialisations the launchers use: the interpreter does not type-check or lower the compiled path."""
    code = textwrap.dedent(
        """
        import re
        import triton, triton.language as tl
        try:
            from triton.backends.compiler import GPUTarget
            from triton.compiler import ASTSource
        except ImportError as error:
            print("SKIP", error); raise SystemExit(0)
        import msrs.kernels as k
        from msrs.kernels import denoise, noise, philox, votes
        assert not k.INTERPRET
        target = GPUTarget("cuda", 90, 32)
        aligned = {(i,): [["tt.divisibility", 16]] for i in range(4)}

        def build(fn, signature, constants, attrs=None):
            signature = dict(signature, **{name: "constexpr" for name in constants})
            source = ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs)
            try:
                return triton.compile(source, target=target, options={"enable_fp_fusion": False}).asm["ptx"]
            except FileNotFoundError as error:  # this Triton ships no ptxas
                print("SKIP", error); raise SystemExit(0)

        rows = {"rows_ptr": "*i64", "coeffs_ptr": "*fp32", "num_rows": "i32", "numel": "i32", "k0": "u32",
                "k1": "i32"}
        for x, out in (("fp32", "fp32"), ("fp16", "bf16"), ("bf16", "fp16")):
            ptx = build(noise._sample_noisy_kernel, dict(x_ptr="*" + x, out_ptr="*" + out, **rows),
                        {"BLOCK_R": 4, "BLOCK_G": 128}, aligned)
            assert re.search(r"mul\\.(wide|hi)\\.u32", ptx), "Philox: no 32-bit widening multiply"
        build(noise._sample_noisy_kernel, dict(x_ptr="*fp32", out_ptr="*fp32", **rows), {"BLOCK_R": 1, "BLOCK_G": 512})
        plane = {"coeffs_ptr": "*fp32", "mean_ptr": "*fp32", "std_ptr": "*fp32", "num_planes": "i32",
                 "channels": "i32", "plane_size": "i32"}
        for x, out in (("fp32", "fp32"), ("fp16", "bf16")):
            signature = dict(xt_ptr="*" + x, eps_ptr="*" + x, out_ptr="*" + out, **plane)
            ptx = build(denoise._finalize_denoised_kernel, signature, {"BLOCK_P": 4, "BLOCK_E": 1024})
            assert "div.rn.f32" in ptx
        counts = {"counts_ptr": "*i64", "index_ptr": "*i64", "stats_ptr": "*i64", "num_samples": "i32",
                  "num_classes": "i32", "score_stride": "i32"}
        cases = (("*fp16", False, tl.float32, True), ("*fp64", False, tl.float64, True), ("*i64", True, tl.int64, True),
                 ("*fp32", False, tl.float32, False))
        for scores, ids, dtype, aggregate in cases:
            ptx = build(votes._count_votes_kernel, dict(scores_ptr=scores, **counts),
                        {"CLASS_IDS": ids, "COMPUTE_DTYPE": dtype, "BLOCK_S": 128, "BLOCK_K": 16,
                         "AGGREGATE": aggregate, "MAX_GROUPS": votes.MAX_GROUPS, "COUNT_ATOMICS": False})
            assert re.search(r"(red|atom)\\.global[.a-z]*\\.add\\.u64", ptx), "no 64-bit atomic add"
        words = {"counters_ptr": "*i64", "words_ptr": "*i64", "normals_ptr": "*fp32", "n": "i32", "k0": "u32",
                 "k1": "u32"}
        build(philox._philox_words_kernel, words, {"BLOCK": 128})
        print("ok")
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    if result.returncode == 0 and result.stdout.startswith("SKIP"):
        pytest.skip(f"cannot compile Triton kernels for a GPU here: {result.stdout.strip()}")
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-4000:]


_SANITIZER_PROBE = """
import triton
import triton.language as tl
try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError as error:
    print("SKIP", error); raise SystemExit(0)
from msrs.kernels.philox import philox4x32_10


@triton.jit
def philox_only(counters_ptr, words_ptr, k0, k1):
    i = tl.arange(0, 16)  # no index arithmetic: any overflow check in the IR comes from Philox
    c = tl.load(counters_ptr + i)
    w0, w1, w2, w3 = philox4x32_10(c, c ^ 1, c ^ 2, c ^ 3, k0, k1)
    tl.store(words_ptr + i, w0 ^ w1 ^ w2 ^ w3)


signature = {"counters_ptr": "*u32", "words_ptr": "*u32", "k0": "u32", "k1": "u32"}
source = ASTSource(fn=philox_only, signature=signature, constexprs={})
try:
    ttir = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"debug": True}).asm["ttir"]
except FileNotFoundError as error:  # this Triton ships no ptxas
    print("SKIP", error); raise SystemExit(0)
assert "overflow" not in ttir, "Philox's arithmetic modulo 2^32 gets overflow assertions in a debug build"
print("ok")
"""


def test_philox_arithmetic_never_trips_the_overflow_sanitizer(tmp_path):
    """Triton's debug builds (debug=True, TRITON_DEBUG=1) assert on any 8-32-bit integer + or * that wraps; Philox
    wraps by design, so its arithmetic must not be sanitised (it is done in 64 bits and truncated). Compiled
    without a GPU; the interpreter does not sanitise, so only the compiled IR can show it."""
    probe = tmp_path / "sanitizer_probe.py"
    probe.write_text(_SANITIZER_PROBE)
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=600, env=env,
                            cwd=Path(__file__).resolve().parents[1])
    if result.returncode == 0 and result.stdout.startswith("SKIP"):
        pytest.skip(f"cannot compile Triton kernels here: {result.stdout.strip()}")
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-4000:]
