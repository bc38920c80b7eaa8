"""IQ4_NL, IQ4_XS and BF16: the weight types of llama.cpp's IQ4_XS files (whose rows that are not
a multiple of 256 long are IQ4_NL) and BF16 files (ggml_ext/quants.c, kernels.c, kernels_x86.c).

gguf-py dequantizes IQ4_NL and IQ4_XS but quantizes neither, so their weights are random bytes
with sane fp16 scales (kernel_util.random_blocks); BF16 rows are quantized by the library (its
quantizer is checked against gguf-py's in test_quants.py). The dots follow ggml's x86 order by
construction (IQ4_NL against Q8_0, IQ4_XS against Q8_K; exact integer lane sums, then the same
float steps), and BF16 takes x as it is (f32) in 8 fused multiply-add lanes, so every ISA gives
the scalar twin's bits; so do the AXPYs (one fused multiply-add per row and element, rows in
order). IQ4_NL's products against the float64 reference and its rows8 layout are also in
test_kernels.py, with the other 32-element types.
"""
import numpy as np
import pytest
from gguf import quants as gq
from gguf.constants import GGMLQuantizationType as QT

from pi_backend import _lib
from pi_backend import kernels as K
from pi_backend._lib import call, fptr, vptr

from kernel_util import (ISA_NAMES, ISAS, pools, random_blocks,  # noqa: F401 (fixtures)
                         restore_isa, run_axpy, run_cols, run_masked, run_matvec)

IQ4_NL, IQ4_XS, BF16 = _lib.PI_TYPE_IQ4_NL, _lib.PI_TYPE_IQ4_XS, _lib.PI_TYPE_BF16
Q8_0, Q8_K, F32 = _lib.PI_TYPE_Q8_0, _lib.PI_TYPE_Q8_K, _lib.PI_TYPE_F32
TYPES = [IQ4_NL, IQ4_XS, BF16]
GGUF = {IQ4_NL: QT.IQ4_NL, IQ4_XS: QT.IQ4_XS, BF16: QT.BF16}
ids = {IQ4_NL: "iq4_nl", IQ4_XS: "iq4_xs", BF16: "bf16"}.get


def dequantize(t, q, n):
    out = np.empty(n, np.float32)
    call("pi_dequantize_row", t, vptr(np.ascontiguousarray(q)), fptr(out), n)
    return out


def quantize(t, x):
    x = np.ascontiguousarray(x, np.float32)
    y = np.empty(K.row_bytes(t, x.size), np.uint8)
    call("pi_quantize_row", t, fptr(x), vptr(y), x.size)
    return y


def weights(rng, t, n_rows, n_cols):
    """(rows [n_rows][row bytes] uint8, their values [n_rows][n_cols] f64)."""
    if t == BF16:
        W = rng.standard_normal((n_rows, n_cols)) * rng.uniform(0.1, 3.0, (n_rows, 1))
        q = quantize(BF16, W).reshape(n_rows, -1)
    else:
        q = random_blocks(rng, t, n_rows, n_cols)
    return q, dequantize(t, q, n_rows * n_cols).reshape(n_rows, n_cols).astype(np.float64)


def reference(t, Wd, x):
    """(W x on the activation the kernel takes [rows] f64, an error scale [rows]): Q8_K through
    the library's quantizer (ggml's quantize_row_q8_K_ref, which ggml-cpu runs on x86 too); x
    itself for BF16. (IQ4_NL's Q8_0 activation: test_kernels.py.)"""
    xa = x.astype(np.float64)
    if t == IQ4_XS:
        xa = dequantize(Q8_K, quantize(Q8_K, x), x.size).astype(np.float64)
    return Wd @ xa, np.abs(Wd) @ np.abs(xa)


# ---- the table and the formats -----------------------------------------------------------------
def test_the_type_table():
    """ggml's ids and names; weights with ggml's x86 activation types (BF16: x as it is); the
    rows8 layout for IQ4_NL, which has Q4_0's geometry."""
    for t in TYPES:
        d = K.describe(t)
        assert (d.name.decode(), d.weight) == (GGUF[t].name, 1)
        assert t == GGUF[t].value
    assert [K.describe(t).act_type for t in TYPES] == [Q8_0, Q8_K, F32]
    assert [K.describe(t).rows8 for t in TYPES] == [1, 0, 0]
    assert {"iq4_nl", "iq4_xs", "bf16"} <= set(K.weight_types())


@pytest.mark.parametrize("t", [IQ4_NL, IQ4_XS], ids=ids)
def test_dequantize_matches_gguf(t):
    rng = np.random.default_rng(t)
    n = 64 * 256
    for scale in (0.05, 300.0):
        q = random_blocks(rng, t, 1, n, scale)
        ref = np.asarray(gq.dequantize(q.ravel(), GGUF[t]), np.float32).ravel()
        np.testing.assert_array_equal(dequantize(t, q, n).view(np.uint32), ref.view(np.uint32))
    # any bytes: subnormal, inf and NaN scales too
    q = rng.integers(0, 256, K.row_bytes(t, n), dtype=np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):
        ref = np.asarray(gq.dequantize(q, GGUF[t]), np.float32).ravel()
    ours = dequantize(t, q, n)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    finite = ~np.isnan(ref)
    np.testing.assert_array_equal(ours[finite].view(np.uint32), ref[finite].view(np.uint32))


@pytest.mark.parametrize("t", [IQ4_NL, IQ4_XS], ids=ids)
def test_iq4_has_no_quantizer(t):
    x = np.zeros(256, np.float32)
    q = np.zeros(K.row_bytes(t, 256), np.uint8)
    with pytest.raises(_lib.PiError, match="no quantizer") as e:
        call("pi_quantize_row", t, fptr(x), vptr(q), 256)
    assert e.value.status == _lib.PI_ERR_TYPE


# ---- dots --------------------------------------------------------------------------------------
# IQ4_NL: an even and an odd number of blocks (ggml keeps the blocks of whole pairs in two
# accumulators and adds an odd last one after); BF16: a tail past the last 8 elements
DOT_CASES = [(IQ4_NL, 32), (IQ4_NL, 32 * 8), (IQ4_NL, 32 * 33), (IQ4_XS, 256), (IQ4_XS, 1024),
             (BF16, 256), (BF16, 1029)]


@pytest.mark.parametrize("t, n_cols", DOT_CASES, ids=lambda v: ids(v) or f"n{v}")
def test_dot_every_isa_is_the_scalar_twin(t, n_cols):
    """7 rows: a group of 4 and 3 single rows; IQ4_XS and BF16 against the float64 reference."""
    rng = np.random.default_rng(11 + t + n_cols)
    q, Wd = weights(rng, t, 7, n_cols)
    x = rng.standard_normal(n_cols).astype(np.float32)
    results = {}
    for isa in ISAS:
        call("pi_isa_set", isa)
        results[isa] = run_matvec(None, t, q, 7, n_cols, x)
    for isa in ISAS[1:]:
        np.testing.assert_array_equal(results[isa], results[ISAS[0]], err_msg=ISA_NAMES[isa])
    if t != IQ4_NL:  # float error only: each term rounded a few times
        ref, scale = reference(t, Wd, x)
        assert np.all(np.abs(results[ISAS[0]] - ref) <= 1e-5 * scale)


@pytest.mark.parametrize("t", [IQ4_XS, BF16], ids=ids)
def test_matvec_close_to_float_product(t):
    """Against the unquantized x: IQ4_XS off by at most Q8_K's rounding (half a step |d_x| / 2
    per element, times |w|), BF16 by f32 accumulation only (n u sum|w x|)."""
    rng = np.random.default_rng(3)
    n_rows, n_cols = 16, 1536
    q, Wd = weights(rng, t, n_rows, n_cols)
    x = rng.standard_normal(n_cols).astype(np.float32)
    ref = Wd @ x.astype(np.float64)
    if t == IQ4_XS:
        d = quantize(Q8_K, x).reshape(-1, 292)[:, :4].copy().view(np.float32)[:, 0]
        bound = np.abs(Wd) @ np.repeat(np.abs(d).astype(np.float64) / 2, 256)
        bound += 1e-5 * np.abs(Wd) @ np.abs(x.astype(np.float64))
    else:
        bound = n_cols * np.finfo(np.float32).eps / 2 * (np.abs(Wd) @ np.abs(x.astype(np.float64)))
    for isa in ISAS:
        call("pi_isa_set", isa)
        y = run_matvec(None, t, q, n_rows, n_cols, x)
        assert np.all(np.abs(y - ref) <= bound), ISA_NAMES[isa]


@pytest.mark.parametrize("t", TYPES, ids=ids)
def test_masked_rows_and_thread_counts(t, pools):
    rng = np.random.default_rng(17)
    n_rows, n_cols = 37, 512
    q, _ = weights(rng, t, n_rows, n_cols)
    x = rng.standard_normal(n_cols).astype(np.float32)
    idx = np.sort(rng.choice(n_rows, 11, replace=False)).astype(np.int32)
    for isa in ISAS:
        call("pi_isa_set", isa)
        dense = [run_matvec(pools[n], t, q, n_rows, n_cols, x) for n in (1, 2, 3)]
        for y in dense[1:]:
            np.testing.assert_array_equal(y, dense[0])
        y = run_masked(pools[3], t, q, n_rows, n_cols, x, idx)
        np.testing.assert_array_equal(y[idx], dense[0][idx])
        assert np.all(np.delete(y, idx) == 0)


def test_iq4_nl_rows8_odd_block_counts(pools):
    """The rows8 kernel of IQ4_NL keeps ggml's two accumulators and odd last block: an odd number
    of blocks above one gives the AVX2 plain kernel's bits and the scalar twin's on every ISA."""
    rng = np.random.default_rng(8)
    n_rows, n_cols, n_tok = 21, 32 * 7, 3
    q, _ = weights(rng, IQ4_NL, n_rows, n_cols)
    p = np.zeros_like(q)
    call("pi_repack_rows8", IQ4_NL, vptr(q), n_rows, n_cols, vptr(p))
    X = rng.standard_normal((n_tok, n_cols)).astype(np.float32)

    def matmat(fn, pool, w):
        Y = np.full((n_tok, n_rows), np.nan, np.float32)
        call(fn, pool, IQ4_NL, vptr(w), n_rows, n_cols, fptr(X), n_tok, fptr(Y), n_rows)
        return Y
    results = {}
    for isa in ISAS:
        call("pi_isa_set", isa)
        results[isa] = matmat("pi_matmat_rows8", None, p)
        np.testing.assert_array_equal(matmat("pi_matmat_rows8", pools[3], p), results[isa])
        np.testing.assert_array_equal(results[isa], matmat("pi_matmat", None, q), err_msg=ISA_NAMES[isa])
    for isa in ISAS[1:]:
        np.testing.assert_array_equal(results[isa], results[ISAS[0]])


# ---- AXPY and the column gather ----------------------------------------------------------------
@pytest.mark.parametrize("t", TYPES, ids=ids)
def test_axpy_matches_numpy_and_the_scalar_twin(t, pools):
    rng = np.random.default_rng(23 + t)
    n_rows, n_cols = 19, 768 + (3 if t == BF16 else 0)
    q, Wd = weights(rng, t, n_rows, n_cols)
    a = rng.standard_normal(n_rows).astype(np.float32)
    for idx in (np.arange(n_rows, dtype=np.int32), np.array([3, 0, 18, 3], np.int32),
                np.array([], np.int32)):
        ref = a[idx].astype(np.float64) @ Wd[idx] if idx.size else np.zeros(n_cols)
        bound = 1e-6 * (np.abs(a[idx]).astype(np.float64) @ np.abs(Wd[idx])) if idx.size else 0
        results = []
        for isa in ISAS:
            call("pi_isa_set", isa)
            ys = [run_axpy(pools[n], t, q, n_rows, n_cols, a, idx) for n in (1, 2, 3)]
            for y in ys[1:]:
                np.testing.assert_array_equal(y, ys[0])
            results.append(ys[0])
            assert np.all(np.abs(ys[0] - ref) <= bound), (ISA_NAMES[isa], idx)
        for y in results[1:]:
            np.testing.assert_array_equal(y, results[0])


@pytest.mark.parametrize("t", TYPES, ids=ids)
def test_cols_sparse_matches_reference(t):
    """The strided ablation reads single elements (the types' element readers)."""
    rng = np.random.default_rng(31 + t)
    d, n_ff = 24, 512
    q, Wd = weights(rng, t, d, n_ff)
    a = rng.standard_normal(n_ff).astype(np.float32)
    idx = rng.permutation(n_ff)[:200].astype(np.int32)
    ref = Wd[:, idx] @ a[idx].astype(np.float64)
    bound = 200 * np.finfo(np.float32).eps * (np.abs(Wd[:, idx]) @ np.abs(a[idx]).astype(np.float64))
    assert np.all(np.abs(run_cols(None, t, q, d, n_ff, a, idx) - ref) <= bound)
