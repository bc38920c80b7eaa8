"""What the kernel tests (tests/test_kernels.py, tests/test_llama_types.py, tests/test_kquants.py)
share: the instruction sets this CPU has, a fixture that puts the library's back after each test,
thread pools, runners of the kernels into fresh NaN-filled outputs (and of one on every thread
count), ggml-cpu's x86 activation quantizer, and random rows of the types nobody quantizes here
(with the min terms of those that have block minimums). A test module imports the fixtures it
uses (restore_isa is autouse: importing it is enough)."""
import ctypes

import numpy as np
import pytest

from pi_backend import _lib
from pi_backend import kernels as K
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


def on_every_pool(run, pools, *args, what=""):
    """run(pool, *args) on 1, 2 and 3 threads, which must give the same bits: that result."""
    ys = {n: run(pools[n], *args) for n in (1, 2, 3)}
    for n in (2, 3):
        np.testing.assert_array_equal(ys[n], ys[1], err_msg=f"{what}: {n} threads vs 1")
    return ys[1]


def quantize_act(act_t, x):
    """x [n] f32 -> the Q8_0 / Q8_1 blocks the kernels quantize their activation into: ggml-cpu's
    x86 quantize_row_q8_0/q8_1, i.e. q = round-half-even(x * (127 / amax)) in f32, d = amax / 127
    (the format's reference quantizer, pi_quantize_row, uses 1 / d and rounds half away)."""
    f32 = np.float32
    xb = x.astype(f32).reshape(-1, 32)
    amax = np.abs(xb).max(axis=1)
    with np.errstate(divide="ignore"):
        iden = np.where(amax != 0, f32(127) / amax, f32(0)).astype(f32)
    q = np.rint((xb * iden[:, None]).astype(f32)).astype(np.int8)
    d = (amax / f32(127)).astype(f32)
    head = [d.astype(np.float16).view(np.uint8).reshape(-1, 2)]
    if act_t == _lib.PI_TYPE_Q8_1:
        s = (q.astype(np.int32).sum(axis=1).astype(f32) * d).astype(f32)
        head.append(s.astype(np.float16).view(np.uint8).reshape(-1, 2))
    return np.concatenate(head + [q.view(np.uint8)], axis=1).reshape(1, -1)


# The weight types without a quantizer (their rows come from llama.cpp's files), by the byte
# offsets of their fp16 fields in a block (ggml-common.h: d, then dmin where the type has block
# minimums): random_blocks sets those to sane values.
SCALE_OFFSETS = {_lib.PI_TYPE_Q2_K: (80, 82), _lib.PI_TYPE_Q3_K: (108,), _lib.PI_TYPE_Q4_K: (0, 2),
                 _lib.PI_TYPE_Q5_K: (0, 2), _lib.PI_TYPE_Q6_K: (208,),
                 _lib.PI_TYPE_IQ4_NL: (0,), _lib.PI_TYPE_IQ4_XS: (0,)}
# of those with block minimums (W = d * sc * q - dmin * m), the bytes of the quants (what
# multiplies d): zeroed, a block dequantizes to its min terms
MIN_QUANTS = {_lib.PI_TYPE_Q2_K: slice(16, 80), _lib.PI_TYPE_Q4_K: slice(16, 144),
              _lib.PI_TYPE_Q5_K: slice(16, 176)}


def random_blocks(rng, t, n_rows, n_cols, scale=0.05):
    """[n_rows][row bytes] uint8 of type t (one of SCALE_OFFSETS): random bytes, the fp16 fields
    (d, and dmin) uniform in [0.2, 1) * scale (gguf-py's own tests do the same for the types it
    cannot quantize)."""
    d = K.describe(t)
    n_blocks = n_rows * n_cols // d.block_elems
    q = rng.integers(0, 256, (n_blocks, d.block_bytes), dtype=np.uint8)
    for at in SCALE_OFFSETS[t]:
        q[:, at:at + 2] = (rng.uniform(0.2, 1.0, (n_blocks, 1)) * scale).astype(np.float16).view(np.uint8)
    return q.reshape(n_rows, -1)


def min_terms(t, q, n_cols):
    """dmin * m per element of the rows q [n_rows][row bytes] (the rows dequantized with every
    quant 0, negated) [n_rows][n_cols] f64; 0 for the types without block minimums."""
    q = np.asarray(q).reshape(-1, K.row_bytes(t, n_cols))
    if t not in MIN_QUANTS:
        return np.zeros((q.shape[0], n_cols))
    z = q.reshape(-1, K.describe(t).block_bytes).copy()
    z[:, MIN_QUANTS[t]] = 0
    return -K.dequantize(t, z.reshape(q.shape), n_cols).astype(np.float64)
