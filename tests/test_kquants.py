"""The K-quants: Q8_K activations, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K weights (ggml_ext/quants.c,
kernels.c, kernels_x86.c). Whole llama.cpp files of these types: test_quant_files.py.

gguf-py dequantizes the K-quant weights but quantizes none of them, so the weights are random
bytes with sane fp16 scales (as gguf-py's own tests do). The dots follow ggml's x86 order by
construction (exact integer lane sums, the same float steps), so every ISA gives the scalar twin's
bits; so do the AXPYs (one fused multiply-add per row and element, rows in order).
"""
import numpy as np
import pytest
from gguf import quants as gq
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as QT

from pi_backend import _lib
from pi_backend._lib import call, fptr, vptr

from kernel_util import (ISA_NAMES, ISAS, pools, restore_isa,  # noqa: F401 (fixtures)
                         run_axpy, run_masked, run_matvec)

Q8_K = _lib.PI_TYPE_Q8_K
WEIGHTS = {getattr(_lib, f"PI_TYPE_{name}"): QT[name] for name in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")}
BLOCK_BYTES = {t: GGML_QUANT_SIZES[qt][1] for t, qt in WEIGHTS.items()} | {Q8_K: 292}
# ggml-common.h's blocks: the bytes of the fp16 fields (d, then dmin where the type has mins) and
# of the quants (what multiplies d: zeroed, a block dequantizes to its min terms)
FP16_AT = {QT.Q2_K: (80, 82), QT.Q3_K: (108,), QT.Q4_K: (0, 2), QT.Q5_K: (0, 2), QT.Q6_K: (208,)}
QUANTS_AT = {QT.Q2_K: slice(16, 80), QT.Q4_K: slice(16, 144), QT.Q5_K: slice(16, 176)}
ids = {t: qt.name.lower().replace("_k", "_K") for t, qt in WEIGHTS.items()}.get


def random_rows(rng, t, n_rows, n_cols, scale=0.05):
    """[n_rows][row bytes] random blocks; the fp16 fields (d, and dmin) set to sane values."""
    n_blocks = n_rows * n_cols // 256
    q = rng.integers(0, 256, (n_blocks, BLOCK_BYTES[t]), dtype=np.uint8)
    halves = (rng.uniform(0.2, 1.0, (n_blocks, 2)) * scale).astype(np.float16).view(np.uint8)
    for i, at in enumerate(FP16_AT[WEIGHTS[t]]):
        q[:, at:at + 2] = halves[:, 2 * i:2 * i + 2]
    return q.reshape(n_rows, -1)


def dequantize(t, q, n):
    out = np.empty(n, np.float32)
    call("pi_dequantize_row", t, vptr(np.ascontiguousarray(q)), fptr(out), n)
    return out


def quantize_q8_K(x):
    y = np.empty(x.size // 256 * BLOCK_BYTES[Q8_K], np.uint8)
    call("pi_quantize_row", Q8_K, fptr(x), vptr(y), x.size)
    return y


def ref_quantize_q8_K(x):
    """ggml's quantize_row_q8_K_ref in numpy (np.rint: nearest_int's round half to even)."""
    f32 = np.float32
    out = []
    for b in x.astype(f32).reshape(-1, 256):
        amax_at = int(np.argmax(np.abs(b)))  # the first of the largest magnitudes
        if b[amax_at] == 0:
            out.append(np.zeros(BLOCK_BYTES[Q8_K], np.uint8))
            continue
        iscale = f32(-127) / b[amax_at]
        qs = np.minimum(np.rint((iscale * b).astype(f32)), 127).astype(np.int8)
        bsums = qs.astype(np.int16).reshape(16, 16).sum(axis=1).astype(np.int16)
        d = np.array([f32(1) / iscale], f32)
        out.append(np.concatenate([d.view(np.uint8), qs.view(np.uint8), bsums.view(np.uint8)]))
    return np.concatenate(out)


def q8_K_fields(y):
    b = y.reshape(-1, BLOCK_BYTES[Q8_K])
    return (b[:, 0:4].copy().view(np.float32)[:, 0], b[:, 4:260].view(np.int8),
            b[:, 260:].copy().view(np.int16))


def min_terms(t, q, n_rows, n_cols):
    """dmin * m per element (the row dequantized with every quant 0, negated); 0 for the types
    without mins."""
    at = QUANTS_AT.get(WEIGHTS[t])
    if at is None:
        return np.zeros((n_rows, n_cols))
    z = q.reshape(-1, BLOCK_BYTES[t]).copy()
    z[:, at] = 0
    return -dequantize(t, z, n_rows * n_cols).reshape(n_rows, n_cols).astype(np.float64)


# ---- dequantization and the Q8_K quantizer -----------------------------------------------------
@pytest.mark.parametrize("t", list(WEIGHTS), ids=ids)
def test_dequantize_matches_gguf(t):
    rng = np.random.default_rng(t)
    for scale in (0.05, 300.0):
        q = random_rows(rng, t, 1, 64 * 256, scale)
        ref = np.asarray(gq.dequantize(q.ravel(), WEIGHTS[t]), np.float32).ravel()
        np.testing.assert_array_equal(dequantize(t, q, 64 * 256).view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("t", list(WEIGHTS), ids=ids)
def test_weights_have_no_quantizer(t):
    x = np.zeros(256, np.float32)
    q = np.zeros(BLOCK_BYTES[t], np.uint8)
    with pytest.raises(_lib.PiError, match="no quantizer") as e:
        call("pi_quantize_row", t, fptr(x), vptr(q), 256)
    assert e.value.status == _lib.PI_ERR_TYPE


def test_q8_K_quantizer_is_ggmls():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(256 * 6).astype(np.float32) * np.float32(3)
    x[256:512] = 0.0  # an all-zero block: d = 0, qs = 0, bsums = 0
    x[512 + 7], x[512 + 9] = -50.0, 50.0  # equal magnitudes: the first one sets the sign of d
    x[768:1024] = np.linspace(-4, 4, 256, dtype=np.float32)  # exact .5 steps: ties to even
    x[1024 + 3] = 1e6  # one outlier
    y = quantize_q8_K(x)
    np.testing.assert_array_equal(y, ref_quantize_q8_K(x))
    d, qs, bsums = q8_K_fields(y)
    assert d[2] > 0 and d[0] != 0 and d[1] == 0  # d = 1 / (-127 / max): max -50 gives d > 0
    np.testing.assert_array_equal(bsums, qs.astype(np.int32).reshape(-1, 16, 16).sum(axis=2))
    assert qs.min() >= -127 and qs.max() <= 127
    # the round trip: within half a step of each block's scale
    err = np.abs(dequantize(Q8_K, y, x.size) - x).reshape(-1, 256)
    assert np.all(err.max(axis=1) <= np.abs(d) * 0.5 * (1 + 1e-6))


# ---- dots against Q8_K -------------------------------------------------------------------------
@pytest.mark.parametrize("t", list(WEIGHTS), ids=ids)
def test_dot_matches_reference_and_every_isa_is_the_scalar_twin(t):
    rng = np.random.default_rng(11 + t)
    n_rows, n_cols = 7, 1024  # a group of 4 rows and 3 single rows
    q = random_rows(rng, t, n_rows, n_cols)
    Wd = dequantize(t, q, n_rows * n_cols).reshape(n_rows, n_cols).astype(np.float64)
    x = rng.standard_normal(n_cols).astype(np.float32)
    xq = dequantize(Q8_K, quantize_q8_K(x), n_cols).astype(np.float64)
    ref = Wd @ xq
    # float error only: every term d * sc * q * x (and dmin * m * x) rounded a few times
    scale = (np.abs(Wd) + 2 * min_terms(t, q, n_rows, n_cols)) @ np.abs(xq)
    results = {}
    for isa in ISAS:
        call("pi_isa_set", isa)
        results[isa] = run_matvec(None, t, q, n_rows, n_cols, x)
        assert np.all(np.abs(results[isa] - ref) <= 1e-5 * scale), ISA_NAMES[isa]
    for isa in ISAS[1:]:
        np.testing.assert_array_equal(results[isa], results[ISAS[0]], err_msg=ISA_NAMES[isa])


@pytest.mark.parametrize("t", list(WEIGHTS), ids=ids)
def test_matvec_close_to_float_product(t):
    """Against the unquantized x: off by at most Q8_K's rounding, half a step |d_x| / 2 per
    element, times |w| (plus float error)."""
    rng = np.random.default_rng(3)
    q = random_rows(rng, t, 16, 1536)
    Wd = dequantize(t, q, 16 * 1536).reshape(16, 1536).astype(np.float64)
    x = rng.standard_normal(1536).astype(np.float32)
    ref = Wd @ x.astype(np.float64)
    half_step = np.repeat(np.abs(q8_K_fields(quantize_q8_K(x))[0]).astype(np.float64) / 2, 256)
    bound = np.abs(Wd) @ half_step + 1e-5 * (np.abs(Wd) + 2 * min_terms(t, q, 16, 1536)) @ np.abs(x)
    for isa in ISAS:
        call("pi_isa_set", isa)
        y = run_matvec(None, t, q, 16, 1536, x)
        assert np.all(np.abs(y - ref) <= bound)
        assert np.mean(np.abs(y - ref) / bound) < 0.2  # random rounding errors: far from the worst case


@pytest.mark.parametrize("t", list(WEIGHTS), ids=ids)
def test_masked_rows_and_thread_counts(t, pools):
    rng = np.random.default_rng(17)
    n_rows, n_cols = 37, 512
    q = random_rows(rng, t, n_rows, n_cols)
    x = rng.standard_normal(n_cols).astype(np.float32)
    dense = [run_matvec(pools[n], t, q, n_rows, n_cols, x) for n in (1, 2, 3)]
    for y in dense[1:]:
        np.testing.assert_array_equal(y, dense[0])
    idx = np.sort(rng.choice(n_rows, 11, replace=False)).astype(np.int32)
    y = run_masked(pools[3], t, q, n_rows, n_cols, x, idx)
    np.testing.assert_array_equal(y[idx], dense[0][idx])
    assert np.all(np.delete(y, idx) == 0)


# ---- AXPY --------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", list(WEIGHTS), ids=ids)
def test_axpy_matches_numpy_and_the_scalar_twin(t):
    rng = np.random.default_rng(23 + t)
    n_rows, n_cols = 19, 768
    q = random_rows(rng, t, n_rows, n_cols)
    Wd = dequantize(t, q, n_rows * n_cols).reshape(n_rows, n_cols).astype(np.float64)
    a = rng.standard_normal(n_rows).astype(np.float32)
    for idx in (np.arange(n_rows, dtype=np.int32), np.array([3, 0, 18, 3], np.int32),
                np.array([], np.int32)):
        ref = a[idx].astype(np.float64) @ Wd[idx] if idx.size else np.zeros(n_cols)
        bound = 1e-6 * (np.abs(a[idx]).astype(np.float64) @ np.abs(Wd[idx])) if idx.size else 0
        results = []
        for isa in ISAS:
            call("pi_isa_set", isa)
            results.append(run_axpy(None, t, q, n_rows, n_cols, a, idx))
            assert np.all(np.abs(results[-1] - ref) <= bound), (ISA_NAMES[isa], idx)
        for y in results[1:]:
            np.testing.assert_array_equal(y, results[0])
