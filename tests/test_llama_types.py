"""The weight types that come only from llama.cpp's files: the K-quants (Q2_K, Q3_K, Q4_K, Q5_K,
Q6_K), IQ4_NL and IQ4_XS, which nothing here quantizes, and BF16 (ggml_ext/quants.c, kernels.c,
kernels_x86.c). Each property is one test over every type it applies to; whole llama.cpp files of
these types: test_quant_files.py. The Q8_K activation and the K-quants' block minimums:
test_kquants.py; BF16's quantizer and rounding: test_quants.py.

gguf-py dequantizes the K-quants, IQ4_NL and IQ4_XS but quantizes none of them, so their weights
are random bytes with sane fp16 scales (kernel_util.random_blocks); BF16 rows are quantized by
the library. The dots follow ggml's x86 order by construction (the K-quants and IQ4_XS against
Q8_K, IQ4_NL against Q8_0; exact integer lane sums, then the same float steps), and BF16 takes x
as it is (f32) in 8 fused multiply-add lanes, so every ISA gives the scalar twin's bits; so do the
AXPYs (one fused multiply-add per row and element, rows in order). IQ4_NL's products and rows8
layout are also in test_kernels.py, with the other 32-element types.
"""
import numpy as np
import pytest
from gguf import quants as gq
from gguf.constants import GGMLQuantizationType as QT

from pi_backend import _lib
from pi_backend import kernels as K
from pi_backend._lib import call, fptr, vptr

from kernel_util import (ISA_NAMES, ISAS, min_terms, on_every_pool, pools,  # noqa: F401 (fixtures)
                         quantize_act, random_blocks, restore_isa, run_axpy, run_cols, run_masked,
                         run_matvec)

IQ4_NL, IQ4_XS, BF16 = _lib.PI_TYPE_IQ4_NL, _lib.PI_TYPE_IQ4_XS, _lib.PI_TYPE_BF16
Q8_0, Q8_K, F32 = _lib.PI_TYPE_Q8_0, _lib.PI_TYPE_Q8_K, _lib.PI_TYPE_F32
K_QUANTS = [getattr(_lib, f"PI_TYPE_{name}") for name in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")]
NO_QUANTIZER = K_QUANTS + [IQ4_NL, IQ4_XS]  # gguf-py dequantizes them; nothing here quantizes them
TYPES = NO_QUANTIZER + [BF16]
# ggml's activation type of each on x86 (BF16: x as it is)
ACT_TYPE = {t: Q8_K for t in K_QUANTS} | {IQ4_NL: Q8_0, IQ4_XS: Q8_K, BF16: F32}


def ids(t):
    """q2_K .. q6_K, iq4_nl, iq4_xs, bf16"""
    return K.describe(t).name.decode().lower().replace("_k", "_K")


def weights(rng, t, n_rows, n_cols):
    """(rows [n_rows][row bytes] uint8, their values [n_rows][n_cols] f64)."""
    if t == BF16:
        W = rng.standard_normal((n_rows, n_cols)) * rng.uniform(0.1, 3.0, (n_rows, 1))
        q = K.quantize(BF16, W)
    else:
        q = random_blocks(rng, t, n_rows, n_cols)
    return q, K.dequantize(t, q, n_cols).astype(np.float64)


def activation(t, x):
    """x [n] f32 as the kernels of type t multiply it [n] f64: Q8_K through the library's
    quantizer (ggml's quantize_row_q8_K_ref, which ggml-cpu runs on x86 too), Q8_0 through
    ggml-cpu's x86 one (kernel_util.quantize_act), x itself for BF16."""
    act = ACT_TYPE[t]
    if act == F32:
        return x.astype(np.float64)
    xq = K.quantize(Q8_K, x) if act == Q8_K else quantize_act(Q8_0, x)
    return K.dequantize(act, xq, x.size).ravel().astype(np.float64)


def float_error_scale(t, q, Wd, xa):
    """What the float rounding of a dot is relative to [rows] f64: every term d * sc * q * x (and
    dmin * m * x, the types with block minimums) rounded a few times."""
    return (np.abs(Wd) + 2 * min_terms(t, q, Wd.shape[1])) @ np.abs(xa)


# ---- the table and the formats -----------------------------------------------------------------
@pytest.mark.parametrize("t", TYPES, ids=ids)
def test_the_type_table(t):
    """ggml's ids and names; weights with ggml's x86 activation types (BF16: x as it is); the
    rows8 layout for IQ4_NL alone, which has Q4_0's geometry."""
    d = K.describe(t)
    assert (d.name.decode(), d.weight) == (QT(t).name, 1)
    assert (d.act_type, d.rows8) == (ACT_TYPE[t], int(t == IQ4_NL))
    assert d.name.decode().lower() in K.weight_types()


@pytest.mark.parametrize("t", NO_QUANTIZER, ids=ids)
def test_dequantize_matches_gguf(t):
    """Bit for bit: random blocks with small and large scales, then any bytes (subnormal, inf and
    NaN scales too)."""
    rng = np.random.default_rng(t)
    n = 64 * 256
    for scale in (0.05, 300.0):
        q = random_blocks(rng, t, 1, n, scale)
        ref = np.asarray(gq.dequantize(q.ravel(), QT(t)), np.float32).ravel()
        ours = K.dequantize(t, q, n).ravel()
        np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))
    q = rng.integers(0, 256, K.row_bytes(t, n), dtype=np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):
        ref = np.asarray(gq.dequantize(q, QT(t)), np.float32).ravel()
    ours = K.dequantize(t, q, n)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    finite = ~np.isnan(ref)
    np.testing.assert_array_equal(ours[finite].view(np.uint32), ref[finite].view(np.uint32))


@pytest.mark.parametrize("t", NO_QUANTIZER, ids=ids)
def test_has_no_quantizer(t):
    x = np.zeros(256, np.float32)
    q = np.zeros(K.row_bytes(t, 256), np.uint8)
    with pytest.raises(_lib.PiError, match="no quantizer") as e:
        call("pi_quantize_row", t, fptr(x), vptr(q), 256)
    assert e.value.status == _lib.PI_ERR_TYPE


# ---- dots --------------------------------------------------------------------------------------
# the K-quants: 4 blocks; IQ4_NL: an even and an odd number of blocks (ggml keeps the blocks of
# whole pairs in two accumulators and adds an odd last one after); BF16: a tail past the last 8
# elements
DOT_CASES = [pytest.param(t, n_cols, id=f"{ids(t)}-n{n_cols}") for t, n_cols in
             [(t, 1024) for t in K_QUANTS] + [(IQ4_NL, 32), (IQ4_NL, 32 * 8), (IQ4_NL, 32 * 33),
                                              (IQ4_XS, 256), (IQ4_XS, 1024), (BF16, 256),
                                              (BF16, 1029)]]


@pytest.mark.parametrize("t, n_cols", DOT_CASES)
def test_dot_matches_reference_and_every_isa_is_the_scalar_twin(t, n_cols):
    """7 rows: a group of 4 and 3 single rows; against the float64 product on the activation the
    kernel takes, within float error only."""
    rng = np.random.default_rng(11 + t + n_cols)
    q, Wd = weights(rng, t, 7, n_cols)
    x = rng.standard_normal(n_cols).astype(np.float32)
    xa = activation(t, x)
    ref, scale = Wd @ xa, float_error_scale(t, q, Wd, xa)
    results = {}
    for isa in ISAS:
        call("pi_isa_set", isa)
        results[isa] = run_matvec(None, t, q, 7, n_cols, x)
        assert np.all(np.abs(results[isa] - ref) <= 1e-5 * scale), ISA_NAMES[isa]
    for isa in ISAS[1:]:
        np.testing.assert_array_equal(results[isa], results[ISAS[0]], err_msg=ISA_NAMES[isa])


@pytest.mark.parametrize("t", TYPES, ids=ids)
def test_matvec_close_to_float_product(t):
    """Against the unquantized x: off by at most the activation's rounding, |x_q - x| per element
    (within half a step of its block's scale for Q8_K and Q8_0; 0 for BF16), times |w|, plus
    float error."""
    rng = np.random.default_rng(3)
    n_rows, n_cols = 16, 1536
    q, Wd = weights(rng, t, n_rows, n_cols)
    x = rng.standard_normal(n_cols).astype(np.float32)
    ref = Wd @ x.astype(np.float64)
    xa = activation(t, x)
    bound = np.abs(Wd) @ np.abs(xa - x) + 1e-5 * float_error_scale(t, q, Wd, x.astype(np.float64))
    for isa in ISAS:
        call("pi_isa_set", isa)
        y = run_matvec(None, t, q, n_rows, n_cols, x)
        assert np.all(np.abs(y - ref) <= bound), ISA_NAMES[isa]
        # random rounding errors: far from the worst case
        assert np.mean(np.abs(y - ref) / bound) < 0.2, ISA_NAMES[isa]


@pytest.mark.parametrize("t", TYPES, ids=ids)
def test_masked_rows_and_thread_counts(t, pools):
    rng = np.random.default_rng(17)
    n_rows, n_cols = 37, 512
    q, _ = weights(rng, t, n_rows, n_cols)
    x = rng.standard_normal(n_cols).astype(np.float32)
    idx = np.sort(rng.choice(n_rows, 11, replace=False)).astype(np.int32)
    for isa in ISAS:
        call("pi_isa_set", isa)
        dense = on_every_pool(run_matvec, pools, t, q, n_rows, n_cols, x, what=ISA_NAMES[isa])
        y = run_masked(pools[3], t, q, n_rows, n_cols, x, idx)
        np.testing.assert_array_equal(y[idx], dense[idx])
        assert np.all(np.delete(y, idx) == 0)


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
            y = on_every_pool(run_axpy, pools, t, q, n_rows, n_cols, a, idx, what=ISA_NAMES[isa])
            results.append(y)
            assert np.all(np.abs(y - ref) <= bound), (ISA_NAMES[isa], idx)
        for y in results[1:]:
            np.testing.assert_array_equal(y, results[0])


@pytest.mark.parametrize("t", TYPES, ids=ids)
def test_cols_sparse_matches_reference(t, pools):
    """The strided ablation reads single elements (the types' element readers)."""
    rng = np.random.default_rng(31 + t)
    d, n_ff = 24, 512
    q, Wd = weights(rng, t, d, n_ff)
    a = rng.standard_normal(n_ff).astype(np.float32)
    idx = rng.permutation(n_ff)[:200].astype(np.int32)
    ref = Wd[:, idx] @ a[idx].astype(np.float64)
    scale = np.abs(Wd[:, idx]) @ np.abs(a[idx]).astype(np.float64)
    bound = 200 * np.finfo(np.float32).eps * scale
    y = on_every_pool(run_cols, pools, t, q, d, n_ff, a, idx)
    assert np.all(np.abs(y - ref) <= bound)


# ---- IQ4_NL's rows8 ----------------------------------------------------------------------------
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
        np.testing.assert_array_equal(results[isa], matmat("pi_matmat", None, q),
                                      err_msg=ISA_NAMES[isa])
    for isa in ISAS[1:]:
        np.testing.assert_array_equal(results[isa], results[ISAS[0]])
