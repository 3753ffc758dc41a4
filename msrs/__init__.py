"""msrs: multi-scale randomized smoothing with fused C++ and Triton ops."""
from . import torchvision_compat as _torchvision_compat

__version__ = "0.1.0"

_torchvision_compat.install()  # torchvision (imported by transformers, diffusers, timm) even without its compiled ops
