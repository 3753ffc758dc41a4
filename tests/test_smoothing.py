"""SmoothedClassifier: reproducibility, argument errors, the denoiser pipeline, autocast."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from msrs import ops
from msrs.smoothing import PREDICT_STREAM, Certificate, SmoothedClassifier


from conftest import fastest_cpu_backend, skip_or_fail  # noqa: E402

BACKEND = fastest_cpu_backend()
SIGMAS = [0.25, 0.5, 1.0]


def tiny_classifier(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))


def images(count: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


class Counting:
    """Wraps a classifier and counts the rows it classified."""

    def __init__(self, inner):
        self.inner, self.rows, self.inputs = inner, 0, []

    def __call__(self, x):
        self.rows += x.shape[0]
        self.inputs.append(x.detach().clone())
        return self.inner(x)


def same_certificates(a: list[Certificate], b: list[Certificate]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x.prediction, x.stage, x.sigma, x.samples) == (y.prediction, y.stage, y.sigma, y.samples)
        assert x.radius == y.radius and (x.p_lower == y.p_lower or (math.isnan(x.p_lower) and math.isnan(y.p_lower)))
        np.testing.assert_array_equal(x.counts, y.counts)
        np.testing.assert_array_equal(x.counts0, y.counts0)


# ------------------------------------------------------------------ reproducibility
def test_counts_do_not_depend_on_batch_size_or_split():
    sc = SmoothedClassifier(tiny_classifier(), 4, backend=BACKEND)
    x, ids = images(), torch.tensor([3, 10, 11, 500, 2**32 - 1])
    ref = sc.sample_counts(x, ids, 0.5, 200, stream=1, seed=7, batch_size=1000)
    assert ref.dtype == torch.int64 and ref.shape == (5, 4) and (ref.sum(1) == 200).all()
    for batch_size in (7, 64, 199):
        assert torch.equal(sc.sample_counts(x, ids, 0.5, 200, stream=1, seed=7, batch_size=batch_size), ref)
    one_row = sc.sample_counts(x[:2], ids[:2], 0.5, 20, stream=1, seed=7, batch_size=1)
    assert torch.equal(one_row, sc.sample_counts(x[:2], ids[:2], 0.5, 20, stream=1, seed=7, batch_size=40))
    parts = [sc.sample_counts(x, ids, 0.5, 200 - k, stream=1, seed=7, batch_size=33, sample_start=k) for k in (0, 77)]
    head = sc.sample_counts(x, ids, 0.5, 77, stream=1, seed=7, batch_size=33)
    assert torch.equal(head + parts[1], ref)
    one = sc.sample_counts(x[2:3], ids[2:3], 0.5, 200, stream=1, seed=7, batch_size=64)
    assert torch.equal(one[0], ref[2])
    assert not torch.equal(sc.sample_counts(x, ids, 0.5, 200, stream=0, seed=7, batch_size=64), ref)
    assert not torch.equal(sc.sample_counts(x, ids, 0.5, 200, stream=1, seed=8, batch_size=64), ref)


def test_certify_is_reproducible_across_batch_size_and_grouping():
    sc = SmoothedClassifier(tiny_classifier(), 4, backend=BACKEND)
    x, ids = images(), torch.arange(20, 25)
    ref = sc.certify(x, 0.5, 50, 300, 0.01, seed=3, batch_size=1024, image_ids=ids)
    same_certificates(sc.certify(x, 0.5, 50, 300, 0.01, seed=3, batch_size=13, image_ids=ids), ref)
    singles = [sc.certify(x[i:i + 1], 0.5, 50, 300, 0.01, seed=3, batch_size=64, image_ids=ids[i:i + 1])[0]
               for i in range(5)]
    same_certificates(singles, ref)
    assert all(c.counts.shape == (1, 4) and c.counts.sum() == 300 and c.counts0.sum() == 50 for c in ref)
    assert all(c.samples == 350 and c.sigma == 0.5 for c in ref)


def test_cascade_is_reproducible_across_batch_size_and_grouping():
    sc = SmoothedClassifier(tiny_classifier(1), 4, backend=BACKEND)
    x, ids = images(6, seed=1), torch.arange(100, 106)
    ref = sc.certify_cascade(x, SIGMAS, 20, 200, 0.05, seed=9, batch_size=4096, image_ids=ids)
    same_certificates(sc.certify_cascade(x, SIGMAS[::-1], 20, 200, 0.05, seed=9, batch_size=17, image_ids=ids), ref)
    singles = [sc.certify_cascade(x[i:i + 1], SIGMAS, 20, 200, 0.05, seed=9, batch_size=50, image_ids=ids[i:i + 1])[0]
               for i in range(6)]
    same_certificates(singles, ref)
    for c in ref:
        reached = c.counts.sum(1) > 0
        assert c.counts.shape == (3, 4) and c.samples == 220 * reached.sum()
        assert reached.tolist() == sorted(reached.tolist(), reverse=True)  # a prefix of the stages
        assert c.sigma == [1.0, 0.5, 0.25][reached.sum() - 1]
        assert (c.stage == -1) == (c.prediction == -1)


def test_cascade_streams_follow_the_design():
    """Stage s draws selection samples from stream 2s and estimation samples from stream 2s + 1."""
    sc = SmoothedClassifier(tiny_classifier(1), 4, backend=BACKEND)
    x, ids = images(6, seed=1), torch.arange(100, 106)
    certs = sc.certify_cascade(x, SIGMAS, 20, 200, 0.05, seed=9, batch_size=512, image_ids=ids)
    for stage, sigma in enumerate([1.0, 0.5, 0.25]):
        c0 = sc.sample_counts(x, ids, sigma, 20, stream=2 * stage, seed=9, batch_size=512).numpy()
        c = sc.sample_counts(x, ids, sigma, 200, stream=2 * stage + 1, seed=9, batch_size=512).numpy()
        for i, cert in enumerate(certs):
            if cert.counts[stage].sum():
                np.testing.assert_array_equal(cert.counts0[stage], c0[i])
                np.testing.assert_array_equal(cert.counts[stage], c[i])
    one = sc.certify(x, 1.0, 20, 200, 0.05, seed=9, batch_size=512, image_ids=ids)
    np.testing.assert_array_equal(np.stack([c.counts[0] for c in one]), np.stack([c.counts[0] for c in certs]))


def test_backends_agree():
    try:
        backends = ops.available_backends("cpu")
    except ImportError:  # a backend module not there yet
        backends = ["torch"]
    if "cpp" not in backends:
        skip_or_fail("cpp", "the cpp backend is not available here")
    x, ids = images(), torch.arange(5)
    results = [SmoothedClassifier(tiny_classifier(), 4, backend=b).certify_cascade(
        x, SIGMAS, 20, 200, 0.05, seed=4, batch_size=100, image_ids=ids) for b in ("torch", "cpp")]
    same_certificates(*results)


# ------------------------------------------------------------------ predict
def test_predict_abstains_when_undecided():
    x = torch.full((4, 1, 2, 2), 0.5)

    def coin(z):  # class 0 or 1 by the sign of pixel 0's noise: a fair coin, the top two classes tie in law
        s = (z[:, 0, 0, 0] - 0.5).reshape(-1, 1)
        return torch.cat((s, -s, torch.full_like(s, -10.0)), dim=1)

    sc = SmoothedClassifier(coin, 3, backend=BACKEND)
    assert (sc.predict(x, 0.5, 200, 0.001, seed=1, batch_size=128) == -1).all()
    sure = SmoothedClassifier(lambda z: torch.tensor([[0.0, 0.0, 1.0]]).expand(z.shape[0], 3), 3, backend=BACKEND)
    assert (sure.predict(x, 0.5, 50, 0.001, seed=1, batch_size=128) == 2).all()
    counts = sc.sample_counts(x, None, 0.5, 200, stream=PREDICT_STREAM, seed=1, batch_size=64)
    assert (counts[:, 2] == 0).all() and (counts.sum(1) == 200).all()


# ------------------------------------------------------------------ argument errors: nothing sampled
BAD_CALLS = [
    (dict(images=torch.rand(3, 4, 4)), ValueError, "images"),
    (dict(images=torch.rand(2, 3, 4, 4) + 1.0), ValueError, "images"),
    (dict(images=torch.full((2, 3, 4, 4), math.nan)), ValueError, "images"),
    (dict(images=np.zeros((2, 3, 4, 4))), TypeError, "images"),
    (dict(images=torch.zeros(2, 3, 4, 4, dtype=torch.int64)), TypeError, "images"),
    (dict(n=0, n0=0), ValueError, "n0"),
    (dict(n=0), ValueError, "n"),
    (dict(n0=0), ValueError, "n0"),
    (dict(n0=11, n=10), ValueError, "n0"),
    (dict(n=10.0), TypeError, "n"),
    (dict(alpha=0.0), ValueError, "alpha"),
    (dict(alpha=1.0), ValueError, "alpha"),
    (dict(alpha="0.1"), TypeError, "alpha"),
    (dict(sigma=0.0), ValueError, "sigma"),
    (dict(sigma=-0.5), ValueError, "sigma"),
    (dict(sigma=math.inf), ValueError, "sigma"),
    (dict(p0=0.4), ValueError, "p0"),
    (dict(p0=1.0), ValueError, "p0"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(image_ids=torch.tensor([0])), ValueError, "image_ids"),
    (dict(image_ids=torch.tensor([0.0, 1.0])), ValueError, "image_ids"),
    (dict(image_ids=torch.tensor([-1, 0])), ValueError, "image_ids"),
]


@pytest.mark.parametrize("overrides, error, name", BAD_CALLS)
@pytest.mark.parametrize("method", ["certify", "certify_cascade"])
def test_bad_arguments_are_rejected_before_sampling(overrides, error, name, method):
    classifier = Counting(tiny_classifier())
    sc = SmoothedClassifier(classifier, 4, backend=BACKEND)
    kwargs = dict(images=images(2), sigma=0.5, n0=5, n=10, alpha=0.01, seed=0, batch_size=8, p0=0.5, image_ids=None)
    kwargs.update(overrides)
    if method == "certify_cascade":
        kwargs["sigmas"] = [kwargs.pop("sigma"), 0.1]
    args = [kwargs.pop(k) for k in ("images", "sigmas" if method == "certify_cascade" else "sigma", "n0", "n", "alpha")]
    with pytest.raises(error, match=name):
        getattr(sc, method)(*args, **kwargs)
    assert classifier.rows == 0


@pytest.mark.parametrize("sigmas, error", [([], TypeError), (0.5, TypeError), ([0.5, 0.5], ValueError),
                                           ([0.5, 0.0], ValueError), ([0.5, -1.0], ValueError)])
def test_bad_sigmas(sigmas, error):
    classifier = Counting(tiny_classifier())
    sc = SmoothedClassifier(classifier, 4, backend=BACKEND)
    with pytest.raises(error, match="sigmas"):
        sc.certify_cascade(images(2), sigmas, 5, 10, 0.01, seed=0, batch_size=8)
    with pytest.raises(ValueError, match="alpha_schedule"):
        sc.certify_cascade(images(2), [0.5, 0.25], 5, 10, 0.01, seed=0, batch_size=8, alpha_schedule="bonferroni")
    assert classifier.rows == 0


def test_bad_predict_and_sample_counts_arguments():
    classifier = Counting(tiny_classifier())
    sc = SmoothedClassifier(classifier, 4, backend=BACKEND)
    with pytest.raises(ValueError, match="n"):
        sc.predict(images(2), 0.5, 0, 0.01, seed=0, batch_size=8)
    with pytest.raises(ValueError, match="alpha"):
        sc.predict(images(2), 0.5, 10, 2.0, seed=0, batch_size=8)
    with pytest.raises(ValueError, match="sample_start"):
        sc.sample_counts(images(2), None, 0.5, 10, stream=0, seed=0, batch_size=8, sample_start=[0, 1, 2])
    with pytest.raises(ValueError, match="sample_start"):
        sc.sample_counts(images(2), None, 0.5, 10, stream=0, seed=0, batch_size=8, sample_start=2**32 - 5)
    with pytest.raises(ValueError, match="stream"):
        sc.sample_counts(images(2), None, 0.5, 10, stream=-1, seed=0, batch_size=8)
    assert classifier.rows == 0


def test_bad_constructor_arguments():
    with pytest.raises(TypeError, match="classifier"):
        SmoothedClassifier("resnet", 4)
    with pytest.raises(ValueError, match="num_classes"):
        SmoothedClassifier(tiny_classifier(), 1)
    with pytest.raises(TypeError, match="denoiser"):
        SmoothedClassifier(tiny_classifier(), 4, denoiser=object())
    with pytest.raises(TypeError, match="dtype"):
        SmoothedClassifier(tiny_classifier(), 4, dtype=torch.int8)
    with pytest.raises(ValueError, match="std"):
        SmoothedClassifier(tiny_classifier(), 4, std=[0.5, 0.0, 0.5])
    with pytest.raises(ValueError, match="backend"):
        SmoothedClassifier(tiny_classifier(), 4, backend="cuda-magic")
    sc = SmoothedClassifier(tiny_classifier(), 4, mean=[0.5, 0.5], backend=BACKEND)
    with pytest.raises(ValueError, match="mean"):
        sc.certify(images(2), 0.5, 5, 10, 0.01, seed=0, batch_size=8)


def test_classifier_shape_errors_name_the_classifier():
    wrong_k = SmoothedClassifier(tiny_classifier(), 5, backend=BACKEND)  # the module outputs 4 logits
    with pytest.raises(ValueError, match=r"classifier: expected float logits of shape \[8, 5\]"):
        wrong_k.certify(images(2), 0.5, 5, 10, 0.01, seed=0, batch_size=8)
    flat = torch.nn.Linear(48, 4)  # raises on [N, 3, 4, 4]
    with pytest.raises(ValueError, match=r"classifier: failed on an input batch of shape \(8, 3, 4, 4\)"):
        SmoothedClassifier(flat, 4, backend=BACKEND).certify(images(2), 0.5, 5, 10, 0.01, seed=0, batch_size=8)
    ids_only = SmoothedClassifier(lambda z: torch.zeros(z.shape[0], dtype=torch.int64), 4, backend=BACKEND)
    with pytest.raises(ValueError, match="classifier"):
        ids_only.predict(images(2), 0.5, 10, 0.01, seed=0, batch_size=8)


# ------------------------------------------------------------------ the denoiser pipeline
class ZeroEpsDenoiser:
    """DESIGN.md interface; eps = 0, so the one-step estimate is clamp(x_t / sqrt(abar), -1, 1)."""

    in_channels, sample_size = 3, 4

    def __init__(self):
        self.seen = []

    def timestep_for(self, sigma):
        a = 1.0 / math.sqrt(1.0 + 4.0 * sigma * sigma)
        return 123, a

    def predict_eps(self, x_t, timesteps):
        self.seen.append((x_t.clone(), timesteps.clone()))
        return torch.zeros_like(x_t)


def test_denoiser_pipeline_composes_as_specified():
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    denoiser, classifier = ZeroEpsDenoiser(), Counting(tiny_classifier())
    sc = SmoothedClassifier(classifier, 4, denoiser=denoiser, mean=mean, std=std, backend=BACKEND)
    x, ids, sigma, n = images(2), torch.tensor([5, 9]), 0.5, 6
    counts = sc.sample_counts(x, ids, sigma, n, stream=3, seed=21, batch_size=100)
    a = denoiser.timestep_for(sigma)[1]
    noisy = ops.add_noise(x, sigma, n, seed=21, image_ids=ids, stream=3, backend=BACKEND)  # x + sigma eps, image-major
    (x_t, t), = denoiser.seen
    assert (t == 123).all() and t.dtype == torch.int64
    torch.testing.assert_close(x_t, a * (2 * noisy - 1), rtol=1e-5, atol=1e-5)
    expected = (noisy.clamp(0, 1) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    torch.testing.assert_close(classifier.inputs[0], expected, rtol=1e-5, atol=1e-5)
    votes = classifier.inner(expected).argmax(1).reshape(2, n)
    assert torch.equal(counts, torch.nn.functional.one_hot(votes, 4).sum(1))


@pytest.mark.parametrize("mean, std", [([0.5], [0.25]), ([0.5, 0.4, 0.3], [0.25, 0.2, 0.3])],
                         ids=["one-value (fused into the noise op)", "per-channel (torch)"])
def test_plain_pipeline_normalises(mean, std):
    classifier = Counting(tiny_classifier())
    sc = SmoothedClassifier(classifier, 4, mean=mean, std=std, backend=BACKEND)
    x, ids = images(2), torch.tensor([1, 2])
    sc.sample_counts(x, ids, 0.25, 5, stream=1, seed=2, batch_size=64)
    noisy = ops.add_noise(x, 0.25, 5, seed=2, image_ids=ids, stream=1, backend=BACKEND)
    m, sd = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    torch.testing.assert_close(classifier.inputs[0], (noisy - m) / sd)


def test_denoiser_channel_mismatch():
    sc = SmoothedClassifier(tiny_classifier(), 4, denoiser=ZeroEpsDenoiser(), backend=BACKEND)
    with pytest.raises(ValueError, match="images: expected 3 channels"):
        sc.certify(torch.rand(2, 1, 4, 4), 0.5, 5, 10, 0.01, seed=0, batch_size=8)


# ------------------------------------------------------------------ dtype, modes, callables
def test_bfloat16_autocast_runs():
    model = tiny_classifier()
    fp32 = SmoothedClassifier(model, 4, backend=BACKEND)
    bf16 = SmoothedClassifier(model, 4, dtype=torch.bfloat16, backend=BACKEND)
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = images(3)
    a = fp32.certify(x, 0.25, 20, 100, 0.01, seed=1, batch_size=64)
    b = bf16.certify(x, 0.25, 20, 100, 0.01, seed=1, batch_size=64)
    assert torch.bfloat16 in seen and torch.float32 in seen
    assert all(c.counts.sum() == 100 for c in b)
    # bf16 rounding moves a vote only where this model's top two logits nearly tie: about 0.1-0.2 % of its votes
    # (measured on an AVX2 CPU, emulated bf16: 2 of these 300 votes; 9-18 of 10,000 in each of 4 runs below).
    # Half the L1 distance of two count vectors is a lower bound on the votes that moved.
    moved = sum(np.abs(p.counts - q.counts).sum() for p, q in zip(a, b)) / 2
    assert moved <= 6  # 2 % of the votes: 3x the measured count
    many = images(20, seed=3)
    c32 = fp32.sample_counts(many, None, 0.25, 500, stream=1, seed=2, batch_size=4096)
    c16 = bf16.sample_counts(many, None, 0.25, 500, stream=1, seed=2, batch_size=4096)
    assert 0 < (c32 - c16).abs().sum() / 2 <= 50  # <= 0.5 % of 10,000 votes (measured 15); bf16 did change some
    c = SmoothedClassifier(model, 4, denoiser=ZeroEpsDenoiser(), dtype=torch.bfloat16, backend=BACKEND)
    assert len(c.certify_cascade(x, SIGMAS, 10, 30, 0.01, seed=1, batch_size=64)) == 3


def test_module_modes_are_restored_and_callables_work():
    model = torch.nn.Sequential(tiny_classifier(), torch.nn.Dropout(0.5))
    model.train()
    sc = SmoothedClassifier(model, 4, backend=BACKEND)
    x = images(2)
    a = sc.sample_counts(x, None, 0.5, 50, stream=0, seed=0, batch_size=16)
    b = sc.sample_counts(x, None, 0.5, 50, stream=0, seed=0, batch_size=50)
    assert torch.equal(a, b)  # dropout off while sampling
    assert model.training and model[1].training
    fn = SmoothedClassifier(lambda z: model.eval()(z), 4, backend=BACKEND)
    assert torch.equal(fn.sample_counts(x, None, 0.5, 50, stream=0, seed=0, batch_size=7), a)


def test_empty_group():
    sc = SmoothedClassifier(tiny_classifier(), 4, backend=BACKEND)
    assert sc.certify(torch.zeros(0, 3, 4, 4), 0.5, 5, 10, 0.01, seed=0, batch_size=8) == []
    assert sc.certify_cascade(torch.zeros(0, 3, 4, 4), SIGMAS, 5, 10, 0.01, seed=0, batch_size=8) == []
    assert sc.predict(torch.zeros(0, 3, 4, 4), 0.5, 10, 0.01, seed=0, batch_size=8).shape == (0,)


# ------------------------------------------------------------------ out of memory: halve the batch, same counts
class OutOfMemoryAbove:
    """Wraps a classifier and raises an allocator-style out-of-memory RuntimeError for batches above `limit` rows
    (after doing nothing else: no side effect leaks from a failed batch)."""

    def __init__(self, inner, limit: int, message: str):
        self.inner, self.limit, self.message, self.sizes = inner, limit, message, []

    def __call__(self, x):
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise RuntimeError(self.message)
        return self.inner(x)


@pytest.mark.parametrize("message", [
    "CUDA out of memory. Tried to allocate 2.00 GiB",
    "[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 bytes",
])
def test_out_of_memory_batches_are_halved_and_counts_unchanged(message):
    x = images(4)
    reference = SmoothedClassifier(tiny_classifier(), 4, backend=BACKEND)
    want = reference.certify(x, 0.5, 30, 200, 0.01, seed=3, batch_size=256)
    wrapped = OutOfMemoryAbove(tiny_classifier(), 70, message)
    sc = SmoothedClassifier(wrapped, 4, backend=BACKEND)
    got = sc.certify(x, 0.5, 30, 200, 0.01, seed=3, batch_size=256)  # the first batch (the probe) runs out too
    same_certificates(want, got)
    assert wrapped.sizes[:3] == [256, 128, 64] and max(wrapped.sizes[3:]) <= 64
    assert sc._batch_cap == 64
    wrapped.sizes.clear()
    counts = sc.sample_counts(x, None, 0.5, 100, stream=1, seed=3, batch_size=256)
    assert max(wrapped.sizes) == 64  # later calls start from the size that fitted
    assert torch.equal(counts, reference.sample_counts(x, None, 0.5, 100, stream=1, seed=3, batch_size=256))


def test_out_of_memory_at_batch_size_one_propagates_and_other_errors_are_wrapped():
    x = images(1)
    sc = SmoothedClassifier(OutOfMemoryAbove(tiny_classifier(), 0, "CUDA out of memory."), 4, backend=BACKEND)
    with pytest.raises(RuntimeError, match="out of memory"):
        sc.sample_counts(x, None, 0.5, 10, stream=0, seed=0, batch_size=8)
    sc = SmoothedClassifier(OutOfMemoryAbove(tiny_classifier(), 0, "some other failure"), 4, backend=BACKEND)
    with pytest.raises(ValueError, match="classifier: failed"):
        sc.sample_counts(x, None, 0.5, 10, stream=0, seed=0, batch_size=8)
