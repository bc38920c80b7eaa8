"""ggml_ext kernels (pi_matvec, pi_matvec_masked, pi_axpy_sparse, pi_matvec_cols_sparse).

Every kernel runs on every instruction set this CPU has (scalar, AVX2, AVX-512) and is checked
against a float64 numpy reference built from the library's own (de)quantizers, against its
scalar twin, and across thread counts (1, 2, 3 must agree bit for bit). The reference for the
quantized types reproduces ggml's arithmetic: x is quantized per block into the weight type's
activation type (Q8_0, or Q8_1 for Q4_1/Q5_1, with ggml-cpu's x86 activation quantizer: see
kernel_util.quantize_act) and the dot uses the quantized x, with the Q4_1/Q5_1 min term taken
from Q8_1's fp16 s, so the tolerances only cover float32 accumulation, not quantization error.
"""
import ctypes
import mmap

import numpy as np
import pytest

from pi_backend import _lib
from pi_backend import kernels as K
from pi_backend._lib import PiError, call, fptr, iptr, vptr

from kernel_util import (ISA_NAMES, ISAS, SCALE_OFFSETS, on_every_pool,  # noqa: F401 (fixtures)
                         pools, quantize_act, random_blocks, restore_isa, run_axpy, run_cols,
                         run_masked, run_matvec)

F32, F16, Q4_0, Q4_1, Q8_0, Q8_1 = (_lib.PI_TYPE_F32, _lib.PI_TYPE_F16, _lib.PI_TYPE_Q4_0,
                                    _lib.PI_TYPE_Q4_1, _lib.PI_TYPE_Q8_0, _lib.PI_TYPE_Q8_1)
# every weight type of the library's type table with 32-element blocks or single elements, by
# ggml id (the blocks of 256 of the K-quants and IQ4_XS have tests/test_llama_types.py, which
# takes IQ4_NL and BF16 too)
TYPES = [K.type_id(name) for name in K.weight_types() if K.describe(name).block_elems in (1, 32)]
TYPE_NAMES = {t: name for name, t in K.types().items()}
SHAPES = [(1, 32), (5, 64), (37, 576), (13, 1536), (64, 256)]


# ---- helpers -----------------------------------------------------------------------------------
def row_bytes(t, n):
    out = ctypes.c_int64()
    call("pi_row_bytes", t, n, ctypes.byref(out))
    return out.value


def quantize(t, W):
    """[rows, n] f32 -> [rows, row_bytes] uint8 (rows of ggml blocks)."""
    W = np.ascontiguousarray(W, dtype=np.float32)
    q = np.empty((W.shape[0], row_bytes(t, W.shape[1])), np.uint8)
    call("pi_quantize_row", t, fptr(W), vptr(q), W.size)
    return q


def dequantize(t, q, n):
    out = np.empty((q.shape[0], n), np.float32)
    call("pi_dequantize_row", t, vptr(np.ascontiguousarray(q)), fptr(out), out.size)
    return out


def random_weights(rng, t, n_rows, n_cols):
    if t in SCALE_OFFSETS:  # no quantizer (IQ4_NL): random blocks
        q = random_blocks(rng, t, n_rows, n_cols, scale=rng.uniform(0.1, 3.0) / 64)
        return q, dequantize(t, q, n_cols).astype(np.float64)
    W = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
    if t != F32:
        W *= rng.uniform(0.1, 3.0, size=(n_rows, 1)).astype(np.float32)  # vary the scales
    q = quantize(t, W) if t != F32 else W.view(np.uint8).reshape(n_rows, -1).copy()
    return q, dequantize(t, q, n_cols).astype(np.float64)


def activation_reference(t, x):
    """(x as the kernel multiplies it [n] f64, per-block correction [n_blocks] f64 or None).

    For Q4_1/Q5_1, ggml uses the fp16 s = d * sum(qs) of the Q8_1 block for the weight minimum's term,
    not the exact sum of the dequantized x: the correction holds s_b - d_b * sum(qs_b)."""
    n = x.size
    act_t = K.describe(t).act_type
    if act_t == F32:
        return x.astype(np.float64), None
    qa = quantize_act(act_t, x)
    xq = dequantize(act_t, qa, n)[0].astype(np.float64)
    if act_t == Q8_0:
        return xq, None
    blocks = qa.reshape(-1, 36)
    s = blocks[:, 2:4].copy().view(np.float16)[:, 0].astype(np.float64)
    return xq, s - xq.reshape(-1, 32).sum(axis=1)


def weight_min(t, q):
    """Q4_1/Q5_1 block minimums m (the fp16 after the scale): [rows, n_blocks] f64."""
    blocks = q.reshape(q.shape[0], -1, K.describe(t).block_bytes)
    return blocks[:, :, 2:4].copy().view(np.float16)[:, :, 0].astype(np.float64)


def magnitude(t, q, Wd):
    """An elementwise bound on the weight terms the kernels add up, for error scales: |W| for
    F32/F16/BF16; for block types, twice the block's largest |W| (a kernel may add q * d and the
    offset separately), plus |m| for Q4_1/Q5_1."""
    if K.describe(t).block_elems == 1:
        return np.abs(Wd)
    rows, n = Wd.shape
    blockmax = np.abs(Wd).reshape(rows, -1, 32).max(axis=2, keepdims=True)
    mag = np.broadcast_to(2 * blockmax, (rows, n // 32, 32))
    if K.describe(t).act_type == Q8_1:
        mag = mag + np.abs(weight_min(t, q))[:, :, None]
    return np.ascontiguousarray(mag).reshape(rows, n)


def matvec_reference(t, q, Wd, x):
    """(y [rows] f64, error scale [rows]): ggml's dot on the quantized x."""
    xq, corr = activation_reference(t, x)
    y = Wd @ xq
    if corr is not None:
        y += weight_min(t, q) @ corr
    return y, magnitude(t, q, Wd) @ np.abs(xq) + 1e-30


def assert_close(y, ref, scale, rtol=2e-6, what=""):
    err = np.abs(y.astype(np.float64) - ref)
    tol = rtol * scale + 1e-30
    assert np.all(np.isfinite(y)), what
    assert np.all(err <= tol), f"{what}: max err {err.max():.3g}, worst ratio {(err / tol).max():.3g}"


def ids(t):
    return TYPE_NAMES[t]


# ---- ISA selection -----------------------------------------------------------------------------
def test_isa_selection():
    L = _lib.lib()
    best = L.pi_isa_best()
    assert best in ISA_NAMES
    assert L.pi_isa_get() == _lib.default_isa()  # the best, unless $PI_ISA forces another
    for isa in ISAS:
        call("pi_isa_set", isa)
        assert L.pi_isa_get() == isa
    for bad in (best + 1, -1, 99):
        if bad in ISA_NAMES and bad <= best:
            continue
        with pytest.raises(PiError) as e:
            call("pi_isa_set", bad)
        assert e.value.status == _lib.PI_ERR_ISA
        assert L.pi_isa_get() == ISAS[-1]  # unchanged


# ---- dense matvec ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("t", TYPES, ids=ids)
def test_matvec_matches_reference_on_every_isa(t, shape):
    n_rows, n_cols = shape
    rng = np.random.default_rng(n_rows * 1000 + n_cols + t)
    q, Wd = random_weights(rng, t, n_rows, n_cols)
    x = rng.standard_normal(n_cols).astype(np.float32)
    ref, scale = matvec_reference(t, q, Wd, x)
    results = {}
    for isa in ISAS:
        call("pi_isa_set", isa)
        results[isa] = run_matvec(None, t, q, n_rows, n_cols, x)
        assert_close(results[isa], ref, scale, what=f"{ISA_NAMES[isa]} vs reference")
    for isa in ISAS[1:]:  # the SIMD twin against the scalar one: same ints, float order only
        assert_close(results[isa], results[0].astype(np.float64), scale, rtol=1e-6,
                     what=f"{ISA_NAMES[isa]} vs scalar")


@pytest.mark.parametrize("t", TYPES, ids=ids)
def test_matvec_close_to_float_product(t):
    """Against the unquantized x: the error is the activation quantization's (about 1%)."""
    rng = np.random.default_rng(7)
    q, Wd = random_weights(rng, t, 16, 1536)
    x = rng.standard_normal(1536).astype(np.float32)
    ref = Wd @ x.astype(np.float64)
    y = run_matvec(None, t, q, 16, 1536, x)
    if K.describe(t).act_type == F32:
        # f32 accumulation in any order: within the classic dot-product bound n u sum|w x|
        # (a sequential scalar sum comes closest to it, a SIMD tree of partial sums far less)
        bound = 1536 * np.finfo(np.float32).eps / 2 * (np.abs(Wd) @ np.abs(x.astype(np.float64)))
        assert np.all(np.abs(y - ref) <= bound)
    else:
        rel = np.linalg.norm(y - ref) / np.linalg.norm(ref)
        assert rel < 2e-2


@pytest.mark.parametrize("isa", ISAS, ids=lambda i: ISA_NAMES[i])
def test_activation_quantization_is_ggml_cpu(isa):
    """Each kernel quantizes x itself (with its ISA's quantizer); probe the quantized values one
    by one through weight rows that pick a single element, and compare them with ggml-cpu's x86
    activation quantizer (quantize_act: 127 / amax, round half to even) on every ISA."""
    call("pi_isa_set", isa)
    n = 256
    rng = np.random.default_rng(3)
    x = rng.standard_normal(n).astype(np.float32)
    x[:32] = np.arange(32) - 15.5      # amax 15.5: many exact .5 ties after scaling
    x[32:64] = 0.0                     # d = 0
    x[64] = 127.0                      # amax 127 -> d = 1: x * id = x exactly
    x[65:96] = np.arange(31) * 0.5 - 7.5 + 0.0  # ties at k + 0.5
    x[96:128] = -x[96:128] * 1e-3
    one = np.array([1.0], np.float16).view(np.uint8)
    # Q8_0 weights: row i is zero but for quant 1 at element i, with d = 1 -> y[i] = d_x * qx[i]
    w8 = np.zeros((n, n // 32, 34), np.uint8)
    for i in range(n):
        w8[i, i // 32, 0:2] = one
        w8[i, i // 32, 2 + i % 32] = 1
    y = run_matvec(None, Q8_0, w8.reshape(n, -1), n, n, x)
    np.testing.assert_array_equal(y, dequantize(Q8_0, quantize_act(Q8_0, x), n)[0])
    # Q4_1 weights (Q8_1 activation): d = 1, m = 0, nibble 1 at element i -> y[i] = d_x * qx[i]
    w41 = np.zeros((n, n // 32, 20), np.uint8)
    for i in range(n):
        j = i % 32
        w41[i, i // 32, 0:2] = one
        w41[i, i // 32, 4 + j % 16] = 1 if j < 16 else 0x10
    y = run_matvec(None, Q4_1, w41.reshape(n, -1), n, n, x)
    qa = quantize_act(Q8_1, x)
    np.testing.assert_array_equal(y, dequantize(Q8_1, qa, n)[0])
    # and s: row b is d = 0, m = 1 in block b only -> y[b] = s of x's block b
    w41 = np.zeros((n // 32, n // 32, 20), np.uint8)
    for b in range(n // 32):
        w41[b, b, 2:4] = one
    y = run_matvec(None, Q4_1, w41.reshape(n // 32, -1), n // 32, n, x)
    s = qa.reshape(-1, 36)[:, 2:4].copy().view(np.float16)[:, 0]
    np.testing.assert_array_equal(y, s.astype(np.float32))


@pytest.mark.parametrize("isa", ISAS, ids=lambda i: ISA_NAMES[i])
def test_q8_0_weights_of_any_int8_value(isa):
    """Q8_0 weight quants may be anything from a file, -128 included: the integer dot stays exact."""
    n_rows, n_cols = 9, 256
    rng = np.random.default_rng(9)
    blocks = np.zeros((n_rows, n_cols // 32, 34), np.uint8)
    blocks[:, :, 0:2] = rng.uniform(0.5, 2, (n_rows, n_cols // 32, 1)).astype(np.float16).view(np.uint8)
    qs = rng.integers(-128, 128, (n_rows, n_cols // 32, 32), dtype=np.int8)
    qs[:, :, :8] = -128
    blocks[:, :, 2:] = qs.view(np.uint8)
    q = blocks.reshape(n_rows, -1)
    x = rng.standard_normal(n_cols).astype(np.float32)
    x[::7] = -3.0  # activation quants of -127 meet weight quants of -128
    Wd = dequantize(Q8_0, q, n_cols).astype(np.float64)
    ref, scale = matvec_reference(Q8_0, q, Wd, x)
    call("pi_isa_set", isa)
    assert_close(run_matvec(None, Q8_0, q, n_rows, n_cols, x), ref, scale, what=ISA_NAMES[isa])


# ---- masked matvec -----------------------------------------------------------------------------
def index_sets(rng, n_rows):
    return {
        "random": np.sort(rng.choice(n_rows, max(1, n_rows // 3), replace=False)).astype(np.int32),
        "unsorted": rng.permutation(n_rows)[: max(1, n_rows // 2)].astype(np.int32),
        "empty": np.zeros(0, np.int32),
        "full": np.arange(n_rows, dtype=np.int32),
        "duplicates": np.array([0, n_rows - 1, 0, n_rows // 2, n_rows - 1], np.int32),
    }


@pytest.mark.parametrize("shape", [(37, 576), (64, 256), (9, 32)], ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("t", TYPES, ids=ids)
def test_masked_matches_dense_rows(t, shape, pools):
    n_rows, n_cols = shape
    rng = np.random.default_rng(11 + t)
    q, Wd = random_weights(rng, t, n_rows, n_cols)
    x = rng.standard_normal(n_cols).astype(np.float32)
    ref, scale = matvec_reference(t, q, Wd, x)
    for isa in ISAS:
        call("pi_isa_set", isa)
        dense = run_matvec(None, t, q, n_rows, n_cols, x)
        for name, idx in index_sets(rng, n_rows).items():
            mask = np.zeros(n_rows, bool)
            mask[idx] = True
            y = on_every_pool(run_masked, pools, t, q, n_rows, n_cols, x, idx, what=name)
            assert np.all(y[~mask] == 0.0), name
            assert_close(y[mask], ref[mask], scale[mask], what=f"{ISA_NAMES[isa]} {name}")
            # same grouping of rows is not guaranteed, so compare to dense within float order
            assert_close(y[mask], dense[mask].astype(np.float64), scale[mask], rtol=1e-6,
                         what=f"{ISA_NAMES[isa]} {name} vs dense")


@pytest.mark.parametrize("t", [F32, F16], ids=ids)
def test_masked_never_reads_inactive_rows(t):
    """Inactive rows live on PROT_NONE pages: touching one would crash the test process
    (software prefetch never faults)."""
    page = mmap.PAGESIZE
    n_cols = page // (4 if t == F32 else 2)
    n_rows = 24
    buf = mmap.mmap(-1, n_rows * page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    W = np.frombuffer(buf, np.uint8).reshape(n_rows, page)
    rng = np.random.default_rng(5)
    Wf = rng.standard_normal((n_rows, n_cols)).astype(np.float32)
    W[:] = (Wf if t == F32 else Wf.astype(np.float16)).view(np.uint8).reshape(n_rows, page)
    x = rng.standard_normal(n_cols).astype(np.float32)
    dense = {isa: None for isa in ISAS}
    for isa in ISAS:
        call("pi_isa_set", isa)
        dense[isa] = run_matvec(None, t, W, n_rows, n_cols, x)
    idx = np.array([3, 4, 10, 17, 18, 19, 23], np.int32)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    base = W.ctypes.data
    inactive = sorted(set(range(n_rows)) - set(idx.tolist()))
    try:
        for r in inactive:
            assert libc.mprotect(base + r * page, page, 0) == 0
        for isa in ISAS:
            call("pi_isa_set", isa)
            y = run_masked(None, t, W, n_rows, n_cols, x, idx)
            np.testing.assert_array_equal(y[idx], dense[isa][idx])
            # the axpy reads the same rows only
            a = rng.standard_normal(n_rows).astype(np.float32)
            run_axpy(None, t, W, n_rows, n_cols, a, idx)
    finally:
        for r in inactive:
            libc.mprotect(base + r * page, page, mmap.PROT_READ | mmap.PROT_WRITE)
    del W
    buf.close()


# ---- sparse AXPY -------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(37, 576), (50, 1536), (8, 32), (19, 64)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("t", TYPES, ids=ids)
def test_axpy_matches_reference(t, shape, pools):
    n_rows, n_cols = shape
    rng = np.random.default_rng(21 + t + n_cols)
    q, Wd = random_weights(rng, t, n_rows, n_cols)
    mag = magnitude(t, q, Wd)
    a = rng.standard_normal(n_rows).astype(np.float32)
    a[::5] = 0.0  # zero activations are still computed (they add nothing)
    for name, idx in index_sets(rng, n_rows).items():
        ref = a[idx].astype(np.float64) @ Wd[idx] if idx.size else np.zeros(n_cols)
        scale = np.abs(a[idx]).astype(np.float64) @ mag[idx] if idx.size else np.zeros(n_cols)
        results = {}
        for isa in ISAS:
            call("pi_isa_set", isa)
            results[isa] = y = on_every_pool(run_axpy, pools, t, q, n_rows, n_cols, a, idx,
                                             what=name)
            if idx.size == 0:
                assert np.all(y == 0.0)
            assert_close(y, ref, scale, rtol=4e-6, what=f"{ISA_NAMES[isa]} {name}")
        for isa in ISAS[1:]:
            assert_close(results[isa], results[0].astype(np.float64), scale, rtol=4e-6,
                         what=f"{ISA_NAMES[isa]} vs scalar {name}")


# ---- the column-gather ablation ----------------------------------------------------------------
@pytest.mark.parametrize("t", TYPES, ids=ids)
def test_cols_sparse_matches_reference_and_axpy(t, pools):
    d, n_ff = 40, 256
    rng = np.random.default_rng(31 + t)
    q, Wd = random_weights(rng, t, d, n_ff)  # W_down: [d][n_ff]
    a = rng.standard_normal(n_ff).astype(np.float32)
    for name, idx in index_sets(rng, n_ff).items():
        ref = Wd[:, idx] @ a[idx].astype(np.float64)
        scale = np.abs(Wd[:, idx]) @ np.abs(a[idx]).astype(np.float64)
        y = on_every_pool(run_cols, pools, t, q, d, n_ff, a, idx, what=name)
        assert_close(y, ref, scale, rtol=4e-6, what=name)
        # the same product through the AXPY on the transposed (exactly representable) matrix
        WtT = np.ascontiguousarray(Wd.T.astype(np.float32))
        y_axpy = run_axpy(None, F32, WtT, n_ff, d, a, idx)
        assert_close(y, y_axpy.astype(np.float64), scale, rtol=4e-6, what=f"{name} vs axpy")


# ---- thread counts -----------------------------------------------------------------------------
@pytest.mark.parametrize("t", TYPES, ids=ids)
def test_matvec_thread_counts_agree(t, pools):
    rng = np.random.default_rng(41)
    n_rows, n_cols = 103, 576
    q, _ = random_weights(rng, t, n_rows, n_cols)
    x = rng.standard_normal(n_cols).astype(np.float32)
    for isa in ISAS:
        call("pi_isa_set", isa)
        on_every_pool(run_matvec, pools, t, q, n_rows, n_cols, x, what=ISA_NAMES[isa])


# ---- rows8: the repacked layout of the dense kernels ----------------------------------------------
# the types with the rows8 layout, as the library's type table lists them
ROWS8_TYPES = [K.type_id(name) for name in K.rows8_types()]
# bytes of scales (and mins, and Q5's fifth bits) before the quants of a block, by the formats
HEAD = {Q4_0: 2, Q4_1: 4, _lib.PI_TYPE_Q5_0: 6, _lib.PI_TYPE_Q5_1: 8, Q8_0: 2,
        _lib.PI_TYPE_IQ4_NL: 2}


def test_rows8_types():
    """Every type the table gives the rows8 layout is one the reference below knows, and the
    4-, 5- and 8-bit types of llama.cpp's files all have it."""
    assert set(ROWS8_TYPES) == set(HEAD)


def repack(t, q, n_rows, n_cols):
    p = np.zeros_like(q)
    call("pi_repack_rows8", t, vptr(q), n_rows, n_cols, vptr(p))
    return p


def repack_reference(t, q):
    """The rows8 layout by numpy: per 8-row group and block, the 8 heads field by field, then
    the quants in 4-byte chunks, chunk c of row r at 32 c + 4 r; tail rows unchanged."""
    rows = q.shape[0]
    bb = K.describe(t).block_bytes
    blocks = q.reshape(rows, -1, bb)
    out = q.copy()
    whole = rows // 8 * 8
    if whole == 0:
        return out
    g = blocks[:whole].reshape(rows // 8, 8, -1, bb).transpose(0, 2, 1, 3)  # [group, block, row, byte]
    h = HEAD[t]
    heads = g[..., :h].reshape(*g.shape[:3], h // 2, 2).transpose(0, 1, 3, 2, 4)  # field-major
    quants = g[..., h:].reshape(*g.shape[:3], -1, 4).transpose(0, 1, 3, 2, 4)  # [.., chunk, row, 4]
    packed = np.concatenate([heads.reshape(*g.shape[:2], -1), quants.reshape(*g.shape[:2], -1)], axis=2)
    out[:whole] = packed.reshape(whole, -1)
    return out


def run_matmat_rows8(pool, t, p, n_rows, n_cols, X):
    Y = np.full((X.shape[0], n_rows), np.nan, np.float32)
    call("pi_matmat_rows8", pool, t, vptr(p), n_rows, n_cols, fptr(X), X.shape[0], fptr(Y), n_rows)
    return Y


def run_matmat(pool, t, q, n_rows, n_cols, X):
    Y = np.full((X.shape[0], n_rows), np.nan, np.float32)
    call("pi_matmat", pool, t, vptr(q), n_rows, n_cols, fptr(X), X.shape[0], fptr(Y), n_rows)
    return Y


@pytest.mark.parametrize("shape", [(8, 32), (37, 576), (13, 1536), (3, 64), (64, 256)],
                         ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("t", ROWS8_TYPES, ids=ids)
def test_rows8_layout_and_products(t, shape, pools):
    n_rows, n_cols = shape
    rng = np.random.default_rng(n_rows * 7 + n_cols + t)
    q, Wd = random_weights(rng, t, n_rows, n_cols)
    p = repack(t, q, n_rows, n_cols)
    np.testing.assert_array_equal(p, repack_reference(t, q))
    X = rng.standard_normal((9, n_cols)).astype(np.float32)  # 9: the batched kernels' 4 + 4 + 1
    whole = n_rows // 8 * 8
    results = {}
    for isa in ISAS:
        call("pi_isa_set", isa)
        Y = run_matmat_rows8(None, t, p, n_rows, n_cols, X)
        for tok in (0, 5, 8):  # a token in a batch gets the bits of the token alone
            np.testing.assert_array_equal(run_matmat_rows8(None, t, p, n_rows, n_cols, X[tok:tok + 1])[0], Y[tok])
        for tok in range(X.shape[0]):
            ref, scale = matvec_reference(t, q, Wd, X[tok])
            assert_close(Y[tok], ref, scale, what=f"{ISA_NAMES[isa]} token {tok} vs reference")
        for n in (2, 3):  # the thread count changes nothing
            np.testing.assert_array_equal(run_matmat_rows8(pools[n], t, p, n_rows, n_cols, X), Y)
        results[isa] = Y
        if isa == _lib.PI_ISA_AVX2:  # the AVX2 plain kernels' bits (llama.cpp's order)
            np.testing.assert_array_equal(Y, run_matmat(None, t, q, n_rows, n_cols, X))
    for isa in ISAS[1:]:  # whole groups: the scalar twin's bits
        np.testing.assert_array_equal(results[isa][:, :whole], results[ISAS[0]][:, :whole])


def test_rows8_errors(small):
    s = small
    q, x, y = vptr(s["q"]), fptr(s["x"]), fptr(s["y"])
    out = np.zeros_like(s["q"])
    E = _lib
    assert _status("pi_repack_rows8", F16, q, 8, 64, vptr(out)) == E.PI_ERR_TYPE
    assert "F16" in _last_error()
    assert _status("pi_repack_rows8", Q4_0, None, 8, 64, vptr(out)) == E.PI_ERR_NULL
    assert _status("pi_repack_rows8", Q4_0, q, 8, 40, vptr(out)) == E.PI_ERR_SHAPE
    assert _status("pi_repack_rows8", Q4_0, q, 8, 64, q) == E.PI_ERR_RANGE
    assert _status("pi_repack_rows8", Q4_0, q, 8, 64, vptr(out)) == E.PI_OK
    p = vptr(out)
    assert _status("pi_matmat_rows8", None, F32, p, 8, 64, x, 1, y, 8) == E.PI_ERR_TYPE
    assert _status("pi_matmat_rows8", None, Q4_0, p, 8, 64, x, 0, y, 8) == E.PI_ERR_SHAPE
    assert _status("pi_matmat_rows8", None, Q4_0, p, 8, 64, x, 1, y, 4) == E.PI_ERR_SHAPE
    assert "ldy" in _last_error()
    assert _status("pi_matmat_rows8", None, Q4_0, p, 8, 64, x, 1, y, 8) == E.PI_OK


# ---- argument validation -----------------------------------------------------------------------
def _status(fn, *args):
    return getattr(_lib.lib(), fn)(*args)


def _last_error():
    return _lib.lib().pi_last_error().decode()


@pytest.fixture
def small():
    rng = np.random.default_rng(0)
    n_rows, n_cols = 8, 64
    q = quantize(Q4_0, rng.standard_normal((n_rows, n_cols)).astype(np.float32))
    return dict(q=q, n_rows=n_rows, n_cols=n_cols, x=np.ones(n_cols, np.float32),
                a=np.ones(n_rows, np.float32), idx=np.array([1, 2], np.int32),
                y=np.zeros(max(n_rows, n_cols), np.float32))


def test_matvec_errors(small):
    s = small
    q, x, y = vptr(s["q"]), fptr(s["x"]), fptr(s["y"])
    E = _lib
    assert _status("pi_matvec", None, Q4_0, None, 8, 64, x, y) == E.PI_ERR_NULL
    assert "W" in _last_error()
    assert _status("pi_matvec", None, Q4_0, q, 8, 64, None, y) == E.PI_ERR_NULL
    assert _status("pi_matvec", None, Q4_0, q, 8, 64, x, None) == E.PI_ERR_NULL
    for bad_type in (Q8_1, 4, -1, 100):
        assert _status("pi_matvec", None, bad_type, q, 8, 64, x, y) == E.PI_ERR_TYPE
    assert _status("pi_matvec", None, Q4_0, q, 0, 64, x, y) == E.PI_ERR_SHAPE
    assert _status("pi_matvec", None, Q4_0, q, -1, 64, x, y) == E.PI_ERR_SHAPE
    assert _status("pi_matvec", None, Q4_0, q, 8, 0, x, y) == E.PI_ERR_SHAPE
    assert _status("pi_matvec", None, Q4_0, q, 8, 48, x, y) == E.PI_ERR_SHAPE
    assert "48" in _last_error() and "32" in _last_error()
    assert _status("pi_matvec", None, Q4_0, q, 8, 64, x, y) == E.PI_OK


@pytest.mark.parametrize("fn", ["pi_matvec_masked", "pi_axpy_sparse", "pi_matvec_cols_sparse"])
def test_indexed_kernel_errors(small, fn):
    s = small
    q, x, a, y = vptr(s["q"]), fptr(s["x"]), fptr(s["a"]), fptr(s["y"])
    vec = x if fn == "pi_matvec_masked" else a
    # cols_sparse indexes columns: W is [8][64] and a is [64]
    if fn == "pi_matvec_cols_sparse":
        vec = x
    limit = 64 if fn == "pi_matvec_cols_sparse" else 8
    E = _lib

    def st(t=Q4_0, W=q, n_rows=8, n_cols=64, v=vec, idx=None, n_idx=2, out=y):
        i = iptr(s["idx"]) if idx is None else idx
        return _status(fn, None, t, W, n_rows, n_cols, v, i, n_idx, out)

    assert st() == E.PI_OK
    assert st(W=None) == E.PI_ERR_NULL
    assert st(v=None) == E.PI_ERR_NULL
    assert st(idx=ctypes.POINTER(ctypes.c_int32)()) == E.PI_ERR_NULL
    assert st(out=None) == E.PI_ERR_NULL
    assert st(t=Q8_1) == E.PI_ERR_TYPE
    assert st(t=5) == E.PI_ERR_TYPE
    assert st(n_rows=0) == E.PI_ERR_SHAPE
    assert st(n_cols=-32) == E.PI_ERR_SHAPE
    assert st(n_cols=40) == E.PI_ERR_SHAPE
    assert st(n_idx=-1) == E.PI_ERR_RANGE
    assert st(n_idx=limit + 1) == E.PI_ERR_RANGE
    # an out-of-range index is caught before anything is read or written
    for bad in (-1, limit, 5000, -(2 ** 31)):
        idx = np.array([0, 1, 2, bad, 3], np.int32)
        sentinel = np.full_like(s["y"], 7.0)
        status = _status(fn, None, Q4_0, q, 8, 64, vec, iptr(idx), idx.size, fptr(sentinel))
        assert status == E.PI_ERR_RANGE
        msg = _last_error()
        assert fn in msg and f"idx[3] = {bad}" in msg and f"[0, {limit})" in msg, msg
        assert np.all(sentinel == 7.0)
    # an empty index list is fine
    assert st(n_idx=0) == E.PI_OK


def test_pi_isa_environment_forces_the_instruction_set():
    """$PI_ISA picks the library's instruction set at load (the suite runs under each); a name
    that is not one, or one this CPU lacks, is a one-line error."""
    import subprocess
    import sys
    code = "from pi_backend import _lib; print(_lib.lib().pi_isa_get())"

    def run(value):
        env = {**__import__("os").environ, "PI_ISA": value}
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    for isa in ISAS:
        out = run(ISA_NAMES[isa])
        assert out.returncode == 0 and int(out.stdout) == isa, out.stderr
    bad = run("sse9")
    assert bad.returncode != 0
    assert bad.stderr.strip().splitlines()[-1].startswith("ValueError: PI_ISA='sse9' is not an instruction set")
