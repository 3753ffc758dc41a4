"""Packaging for msrs.

Layout on disk -> installed package:
  msrs/     -> msrs           the Python API
  kernels/  -> msrs.kernels   Triton kernels
  csrc/     -> msrs.csrc      C++ sources (shipped so they can be compiled on first use)

The C++ ops are compiled on first use by default (msrs/ops/cpp_backend.py), so a plain `pip install .` needs no
torch at build time. Set MSRS_BUILD_EXT=1 and pass --no-build-isolation to compile them ahead of time as msrs._C
against the torch already installed.
"""
import os

from setuptools import setup

packages = ["msrs", "msrs.finetune", "msrs.ops", "msrs.kernels", "msrs.csrc", "msrs.assets"]
package_dir = {"msrs": "msrs", "msrs.kernels": "kernels", "msrs.csrc": "csrc"}
package_data = {"msrs.csrc": ["*.cpp", "*.h"], "msrs.assets": ["**/*"]}

ext_modules, cmdclass = [], {}
if os.environ.get("MSRS_BUILD_EXT") == "1":
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    import runpy

    # The same flags as the JIT build; loaded by path because importing msrs would import torch-dependent code.
    cpp_extension_flags = runpy.run_path("csrc/build_flags.py")["cpp_extension_flags"]

    cflags, ldflags = cpp_extension_flags()
    ext_modules = [
        CppExtension("msrs._C", sources=["csrc/ops.cpp"], extra_compile_args=cflags, extra_link_args=ldflags)
    ]
    cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=True)}

setup(
    packages=packages,
    package_dir=package_dir,
    package_data=package_data,
    include_package_data=True,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
