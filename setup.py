"""Builds ggml_ext (plain C11, loaded through ctypes, no Python C-API) as part of the package.

The library is compiled as a setuptools Extension only to get it built and installed next to
pi_backend/_lib.py by `pip install .` / `pip install -e .`; it exports no PyInit symbol.
SIMD kernels use per-function target attributes and run-time CPU detection, so one build runs on
any x86-64 CPU (and the scalar twins run anywhere).
"""
import glob
import os

from setuptools import Extension, setup

cflags = ["-std=c11", "-O3", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-unused-parameter",
          "-D_GNU_SOURCE", "-fno-strict-aliasing"]
cflags += os.environ.get("PI_EXTRA_CFLAGS", "").split()
ldflags = os.environ.get("PI_EXTRA_LDFLAGS", "").split()

setup(
    ext_modules=[
        Extension(
            "pi_backend._pi",
            sources=sorted(glob.glob("ggml_ext/*.c")),
            depends=sorted(glob.glob("ggml_ext/*.h")),
            include_dirs=["ggml_ext"],
            extra_compile_args=cflags,
            extra_link_args=ldflags + ["-lpthread", "-lm"],
        )
    ]
)
