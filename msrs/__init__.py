"""msrs: multi-scale randomized smoothing with fused C++ and Triton ops."""
__version__ = "0.1.0"
