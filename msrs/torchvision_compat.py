"""Lets ``import torchvision`` succeed when torchvision's compiled ops cannot load.

A torchvision wheel built for another build of the same torch release (PyPI's x86_64 wheels link the CUDA torch
libraries; beside a CPU-only torch such as 2.13.0+cpu, as on this project's machines) cannot load its _C library.
torchvision then still registers fake kernels for ``torchvision::nms`` and ``torchvision::qnms``, ops its _C would
have defined, and its import fails with "operator torchvision::nms does not exist". transformers imports torchvision
whenever it is installed, diffusers imports transformers, and timm imports torchvision: one such wheel in the
environment breaks all three, although none of them needs torchvision's compiled ops to build a model.

``install()`` (called when msrs is imported) puts a finder on ``sys.meta_path`` that acts just before
``torchvision._meta_registrations`` is imported: if torchvision's own ops did not load, it declares those two ops
(schemas only, no kernels: calling them still fails) so that the import goes through, and logs a warning once. It
does nothing when torchvision's ops load, and costs nothing until torchvision is imported.
"""
from __future__ import annotations

import importlib.abc
import logging
import sys

__all__ = ["install", "declared_stand_ins"]

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # the torch.library.Library declaring the stand-ins (its definitions live as long as it does)


def declared_stand_ins() -> bool:
    """True once msrs declared torchvision's two ops because torchvision could not."""
    return _library is not None


def _declare_missing_ops() -> None:
    global _library
    extension = sys.modules.get("torchvision.extension")
    if _library is not None or extension is None or extension._has_ops():
        return
    import torch

    if hasattr(torch.ops.torchvision, "nms"):
        return
    library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        library.define(schema)
    _library = library
    logging.getLogger("msrs").warning(
        "msrs: torchvision cannot load its compiled ops beside torch %s (a wheel built for another torch build); "
        "declared torchvision::nms / qnms without kernels so that torchvision, timm and transformers import. "
        "Install the torchvision built for this torch to use torchvision's own ops.", torch.__version__)


class _BeforeTorchvisionMetaRegistrations(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision._meta_registrations":
            _declare_missing_ops()
        return None  # the usual finders import the module


def install() -> None:
    if not any(isinstance(finder, _BeforeTorchvisionMetaRegistrations) for finder in sys.meta_path):
        sys.meta_path.insert(0, _BeforeTorchvisionMetaRegistrations())
