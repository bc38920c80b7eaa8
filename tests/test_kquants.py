"""What is the K-quants' alone: the Q8_K activation (ggml_ext/quants.c), which the K-quant and
IQ4_XS dots take, and the block minimums of Q2_K, Q4_K and Q5_K, which the error bounds of
tests/test_llama_types.py count. The kernels of the K-quant weights (Q2_K, Q3_K, Q4_K, Q5_K,
Q6_K), with IQ4_NL, IQ4_XS and BF16: test_llama_types.py; whole llama.cpp files of these types:
test_quant_files.py.
"""
import numpy as np
import pytest
from gguf import quants as gq
from gguf.constants import GGMLQuantizationType as QT

from pi_backend import _lib
from pi_backend import kernels as K

from kernel_util import MIN_QUANTS, min_terms, random_blocks

Q8_K = _lib.PI_TYPE_Q8_K
Q8_K_BYTES = 292  # ggml's block_q8_K: f32 d, 256 int8 qs, 16 int16 bsums


def ref_quantize_q8_K(x):
    """ggml's quantize_row_q8_K_ref in numpy (np.rint: nearest_int's round half to even)."""
    f32 = np.float32
    out = []
    for b in x.astype(f32).reshape(-1, 256):
        amax_at = int(np.argmax(np.abs(b)))  # the first of the largest magnitudes
        if b[amax_at] == 0:
            out.append(np.zeros(Q8_K_BYTES, np.uint8))
            continue
        iscale = f32(-127) / b[amax_at]
        qs = np.minimum(np.rint((iscale * b).astype(f32)), 127).astype(np.int8)
        bsums = qs.astype(np.int16).reshape(16, 16).sum(axis=1).astype(np.int16)
        d = np.array([f32(1) / iscale], f32)
        out.append(np.concatenate([d.view(np.uint8), qs.view(np.uint8), bsums.view(np.uint8)]))
    return np.concatenate(out)


def q8_K_fields(y):
    b = y.reshape(-1, Q8_K_BYTES)
    return (b[:, 0:4].copy().view(np.float32)[:, 0], b[:, 4:260].view(np.int8),
            b[:, 260:].copy().view(np.int16))


# ---- the Q8_K activation -----------------------------------------------------------------------
def test_q8_K_quantizer_is_ggmls():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(256 * 6).astype(np.float32) * np.float32(3)
    x[256:512] = 0.0  # an all-zero block: d = 0, qs = 0, bsums = 0
    x[512 + 7], x[512 + 9] = -50.0, 50.0  # equal magnitudes: the first one sets the sign of d
    x[768:1024] = np.linspace(-4, 4, 256, dtype=np.float32)  # exact .5 steps: ties to even
    x[1024 + 3] = 1e6  # one outlier
    y = K.quantize(Q8_K, x)
    np.testing.assert_array_equal(y, ref_quantize_q8_K(x))
    d, qs, bsums = q8_K_fields(y)
    assert d[2] > 0 and d[0] != 0 and d[1] == 0  # d = 1 / (-127 / max): max -50 gives d > 0
    np.testing.assert_array_equal(bsums, qs.astype(np.int32).reshape(-1, 16, 16).sum(axis=2))
    assert qs.min() >= -127 and qs.max() <= 127
    # the round trip: within half a step of each block's scale
    err = np.abs(K.dequantize(Q8_K, y, x.size) - x).reshape(-1, 256)
    assert np.all(err.max(axis=1) <= np.abs(d) * 0.5 * (1 + 1e-6))


# ---- the block minimums ------------------------------------------------------------------------
def block_mins(t, blocks):
    """The 6-bit (Q4_K, Q5_K: ggml's get_scale_min_k4 over the 12 scale bytes at 4) or 4-bit
    (Q2_K: the high nibbles of the 16 scale bytes at 0) minimums m of each sub-block, and the
    sub-block length."""
    if t == _lib.PI_TYPE_Q2_K:
        return blocks[:, 0:16] >> 4, 16
    sc = blocks[:, 4:16].astype(np.int32)
    m = np.concatenate([sc[:, 4:8] & 63, (sc[:, 8:12] >> 4) | ((sc[:, 4:8] >> 6) << 4)], axis=1)
    return m, 32


@pytest.mark.parametrize("t", list(MIN_QUANTS), ids=lambda t: K.describe(t).name.decode().lower())
def test_min_terms_are_dmin_times_the_sub_block_mins(t):
    """kernel_util.min_terms (the bounds' dmin * m) is the f32 product of the block's fp16 dmin
    and each sub-block's m, as gguf-py's dequantization of the zeroed quants has it too."""
    rng = np.random.default_rng(29 + t)
    n_rows, n_cols = 3, 512
    q = random_blocks(rng, t, n_rows, n_cols)
    blocks = q.reshape(-1, K.describe(t).block_bytes)
    dmin_at = 82 if t == _lib.PI_TYPE_Q2_K else 2
    dmin = blocks[:, dmin_at:dmin_at + 2].copy().view(np.float16)[:, 0].astype(np.float32)
    m, sub = block_mins(t, blocks)
    expect = np.repeat(dmin[:, None] * m.astype(np.float32), sub, axis=1).reshape(n_rows, n_cols)
    mins = min_terms(t, q, n_cols)
    np.testing.assert_array_equal(mins, expect.astype(np.float64))
    assert np.all(mins >= 0) and np.any(mins > 0)
    z = blocks.copy()
    z[:, MIN_QUANTS[t]] = 0
    ref = np.asarray(gq.dequantize(z.ravel(), QT(t)), np.float32).reshape(n_rows, n_cols)
    np.testing.assert_array_equal(-mins, ref.astype(np.float64))
