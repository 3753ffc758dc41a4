"""pytest plugin of the device check: run tests that build msrs.smoothing.SmoothedClassifier with the engine on
another device, without editing them (benchmarks/device_engine.py runs tests/test_validity.py through it).

    MSRS_ENGINE_DEVICE=cuda MSRS_ENGINE_REPORT=engines.json PYTHONPATH=benchmarks \\
        python -m pytest -p device_pytest_plugin tests/test_validity.py

Every SmoothedClassifier built without an explicit device gets device=MSRS_ENGINE_DEVICE: its images, Philox
noise, fused ops (the automatic backend there: triton on CUDA; a CPU-only backend the test asked for is dropped)
and vote counts live on that device. The tests' own models are small stand-ins whose tensors stay on the CPU:
a model that is an nn.Module is moved to the device; any other callable classifier, and a denoiser's predict_eps,
are called on CPU copies of their inputs, their outputs moved back. At the end MSRS_ENGINE_REPORT gets
{"device", "engines_on_device"}, so a caller can tell that the engine really ran there. Without
MSRS_ENGINE_DEVICE the plugin does nothing.
"""
from __future__ import annotations

import functools
import json
import os

import torch

DEVICE = os.environ.get("MSRS_ENGINE_DEVICE")
_built: list[str] = []


class HostCallable:
    """A classifier callable evaluated on CPU copies of its inputs, its output moved to the input's device."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x.cpu()).to(x.device)


class HostDenoiser:
    """A denoiser whose predict_eps runs on CPU copies of its inputs; every other attribute is the denoiser's."""

    def __init__(self, denoiser):
        self._denoiser = denoiser

    def __getattr__(self, name):
        return getattr(self._denoiser, name)

    def predict_eps(self, x_t: torch.Tensor, timesteps, **kwargs) -> torch.Tensor:
        t = timesteps.cpu() if isinstance(timesteps, torch.Tensor) else timesteps
        return self._denoiser.predict_eps(x_t.cpu(), t, **kwargs).to(x_t.device)


def _on_device(model, wrapper):
    if model is None:
        return None
    if isinstance(model, torch.nn.Module):
        return model.to(DEVICE)
    return wrapper(model)


def pytest_configure(config) -> None:
    if not DEVICE:
        return
    from msrs import smoothing
    from msrs.ops import dispatch

    original = smoothing.SmoothedClassifier.__init__
    device = torch.device(DEVICE)

    @functools.wraps(original)
    def __init__(self, classifier, num_classes, *args, denoiser=None, **kwargs):
        if kwargs.get("device") is None:
            kwargs["device"] = device
            backend = kwargs.get("backend")
            if backend is not None and dispatch.unavailable_reason(backend, device) is not None:
                kwargs["backend"] = None  # e.g. the tests' "cpp" (CPU only): the device's automatic backend
            if device.type != "cpu":
                classifier = _on_device(classifier, HostCallable)
                denoiser = _on_device(denoiser, HostDenoiser)
        original(self, classifier, num_classes, *args, denoiser=denoiser, **kwargs)
        _built.append(str(self.device))

    smoothing.SmoothedClassifier.__init__ = __init__


def pytest_unconfigure(config) -> None:
    path = os.environ.get("MSRS_ENGINE_REPORT")
    if DEVICE and path:
        on_device = sum(torch.device(d).type == torch.device(DEVICE).type for d in _built)
        with open(path, "w") as f:
            json.dump({"device": DEVICE, "engines_on_device": on_device, "engines": len(_built)}, f)
