"""What the kernel tests (tests/test_kernels.py, tests/test_kquants.py) share: the instruction
sets this CPU has, a fixture that puts the library's back after each test, thread pools, and
runners of the kernels into fresh NaN-filled outputs. A test module imports the fixtures it uses
(restore_isa is autouse: importing it is enough)."""
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
