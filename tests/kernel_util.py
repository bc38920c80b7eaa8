"""What the kernel tests (tests/test_kernels.py, tests/test_kquants.py, tests/test_iquants.py)
share: the instruction sets this CPU has, a fixture that puts the library's back after each test,
thread pools, runners of the kernels into fresh NaN-filled outputs, and random rows of the types
nobody quantizes here. A test module imports the fixtures it uses (restore_isa is autouse:
importing it is enough)."""
import ctypes

import numpy as np
import pytest

from pi_backend import _lib
from pi_backend._lib import call, fptr, iptr, vptr

ISA_NAMES = {isa: name for name, isa in _lib.ISA_NAMES.items()}  # {isa: "scalar" | "avx2" | "avx512"}
ISAS = [isa for isa in ISA_NAMES if isa <= _lib.lib().pi_isa_best()]  # ascending: scalar first


@pytest.fixture(autouse=True)
def restore_isa():
    yield
    call("pi_isa_set", _lib.default_isa())


@pytest.fixture(scope="module")
def pools():
    """{n_threads: pool}; 1 is the NULL pool (the calling thread alone)."""
    out = {1: None}
    for n in (2, 3):
        p = _lib.pi_pool_p()
        call("pi_pool_create", n, ctypes.byref(p))
        out[n] = p
    yield out
    for n in (2, 3):
        _lib.lib().pi_pool_free(out[n])


def run_matvec(pool, t, q, n_rows, n_cols, x):
    y = np.full(n_rows, np.nan, np.float32)
    call("pi_matvec", pool, t, vptr(q), n_rows, n_cols, fptr(x), fptr(y))
    return y


def run_masked(pool, t, q, n_rows, n_cols, x, idx):
    y = np.full(n_rows, np.nan, np.float32)
    call("pi_matvec_masked", pool, t, vptr(q), n_rows, n_cols, fptr(x), iptr(idx), idx.size,
         fptr(y))
    return y


def run_axpy(pool, t, q, n_rows, n_cols, a, idx):
    y = np.full(n_cols, np.nan, np.float32)
    call("pi_axpy_sparse", pool, t, vptr(q), n_rows, n_cols, fptr(a), iptr(idx), idx.size,
         fptr(y))
    return y


def run_cols(pool, t, q, n_rows, n_cols, a, idx):
    y = np.full(n_rows, np.nan, np.float32)
    call("pi_matvec_cols_sparse", pool, t, vptr(q), n_rows, n_cols, fptr(a), iptr(idx),
         idx.size, fptr(y))
    return y


# The weight types without a quantizer (their rows come from llama.cpp's files), by the byte
# offsets of their fp16 scales in a block: random_blocks sets those to sane values.
SCALE_OFFSETS = {_lib.PI_TYPE_IQ4_NL: (0,), _lib.PI_TYPE_IQ4_XS: (0,)}


def random_blocks(rng, t, n_rows, n_cols, scale=0.05):
    """[n_rows][row bytes] uint8 of type t (one of SCALE_OFFSETS): random bytes, the fp16 scales
    uniform in [0.2, 1) * scale (gguf-py's own tests do the same for the types it cannot
    quantize)."""
    d = _lib.pi_type_desc()
    call("pi_type_describe", t, ctypes.byref(d))
    n_blocks = n_rows * n_cols // d.block_elems
    q = rng.integers(0, 256, (n_blocks, d.block_bytes), dtype=np.uint8)
    for at in SCALE_OFFSETS[t]:
        q[:, at:at + 2] = (rng.uniform(0.2, 1.0, (n_blocks, 1)) * scale).astype(np.float16).view(np.uint8)
    return q.reshape(n_rows, -1)
