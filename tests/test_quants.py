"""ggml_ext/quants.c against gguf-py (gguf.quants), byte for byte.

gguf.quants reproduces ggml's reference quantizers bit-exactly for F16, BF16, Q4_0, Q4_1, Q5_0,
Q5_1 and Q8_0; it has no Q8_1, so Q8_1 is checked against the small numpy reference below (itself
checked against gguf's Q8_0, which shares its d and quants).
"""
import ctypes

import numpy as np
import pytest
from gguf import quants as gq
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as QT

from pi_backend import _lib
from pi_backend import kernels as K

# every type of the library's type table, by ggml id, as gguf names it
TYPES = {t: QT[name.upper()] for name, t in K.types().items()}
# gguf-py still lists Q8_1 as (32, 4 + 4 + 32), the old layout with f32 d and s. ggml's block_q8_1
# has been two fp16 (d, s) + 32 int8 = 36 bytes for long (Q8_1 never occurs in GGUF files).
BLOCK_SIZES = {t: GGML_QUANT_SIZES[qt] for t, qt in TYPES.items()} | {_lib.PI_TYPE_Q8_1: (32, 36)}
# the K-quants (blocks of 256, quantized by gguf-py for none, Q8_K unknown to it) have their own
# tests (test_llama_types.py, test_kquants.py); the tests over the float cases below take the others
K_TYPES = {t for t in TYPES if K.describe(t).block_elems == 256} - {_lib.PI_TYPE_IQ4_XS}
# so have IQ4_NL and IQ4_XS, which gguf-py dequantizes but does not quantize (test_llama_types.py)
IQ_TYPES = {_lib.PI_TYPE_IQ4_NL, _lib.PI_TYPE_IQ4_XS}
BLOCK32_TYPES = [t for t in TYPES if t not in K_TYPES | IQ_TYPES]
QUANT_TYPES = [_lib.PI_TYPE_Q4_0, _lib.PI_TYPE_Q4_1, _lib.PI_TYPE_Q5_0, _lib.PI_TYPE_Q5_1,
               _lib.PI_TYPE_Q8_0, _lib.PI_TYPE_Q8_1]


# ---- helpers -------------------------------------------------------------------------------
def row_bytes(t: int, n: int) -> int:
    out = ctypes.c_int64()
    _lib.call("pi_row_bytes", t, n, ctypes.byref(out))
    return out.value


def pi_quantize(t: int, x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.empty(row_bytes(t, x.size), dtype=np.uint8)
    _lib.call("pi_quantize_row", t, _lib.fptr(x), _lib.vptr(y), x.size)
    return y


def pi_dequantize(t: int, q: np.ndarray, n: int) -> np.ndarray:
    y = np.empty(n, dtype=np.float32)
    _lib.call("pi_dequantize_row", t, _lib.vptr(q), _lib.fptr(y), n)
    return y


def ref_quantize_q8_1(x: np.ndarray) -> np.ndarray:
    """ggml's quantize_row_q8_1_ref in numpy: Q8_0's d and quants, plus s = f16(d * sum(qs))."""
    b = x.reshape(-1, 32).astype(np.float32)
    d = np.abs(b).max(axis=1, keepdims=True) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    qs = gq.np_roundf(b * inv).astype(np.int8)
    s = qs.astype(np.int32).sum(axis=1, keepdims=True).astype(np.float32) * d
    assert d.dtype == s.dtype == np.float32
    d16, s16 = (a.astype(np.float16).view(np.uint8) for a in (d, s))
    return np.concatenate([d16, s16, qs.view(np.uint8)], axis=1).ravel()


def ref_dequantize_q8_1(q: np.ndarray) -> np.ndarray:
    b = q.reshape(-1, 36)
    d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
    return (b[:, 4:].view(np.int8).astype(np.float32) * d).ravel()


def ref_quantize(t: int, x: np.ndarray) -> np.ndarray:
    if t == _lib.PI_TYPE_Q8_1:
        return ref_quantize_q8_1(x)
    return np.ascontiguousarray(gq.quantize(x.astype(np.float32), TYPES[t])).view(np.uint8).ravel()


def ref_dequantize(t: int, q: np.ndarray) -> np.ndarray:
    if t == _lib.PI_TYPE_Q8_1:
        return ref_dequantize_q8_1(q)
    return np.asarray(gq.dequantize(q, TYPES[t]), dtype=np.float32).ravel()


def assert_same_floats(a: np.ndarray, b: np.ndarray) -> None:
    """Equal bit patterns (so -0.0 != +0.0), any NaN matching any NaN."""
    assert a.shape == b.shape
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    np.testing.assert_array_equal(nan_a, nan_b)
    np.testing.assert_array_equal(a.view(np.uint32)[~nan_a], b.view(np.uint32)[~nan_b])


# ---- inputs --------------------------------------------------------------------------------
def _cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1234)
    normal = lambda n, s=1.0: (rng.standard_normal(n) * s).astype(np.float32)  # noqa: E731
    outlier = normal(32 * 8)
    outlier[5] = 1000.0  # block 0: positive outlier, first half
    outlier[32 + 29] = -750.0  # block 1: negative outlier, second half
    outlier[64 + 16] = 1e-3 * outlier[64 + 16] + 60000.0  # block 2: outlier at the nibble seam
    ties = np.zeros(32 * 4, np.float32)
    ties[[0, 7]] = [5.0, -5.0]  # equal magnitudes: ggml keeps the first one
    ties[[32 + 3, 32 + 30]] = [-5.0, 5.0]
    ties[64:96] = np.tile([2.0, -2.0], 16)
    ties[96:] = np.linspace(-3.5, 3.5, 32)  # exact .5 steps: round-half-away ties in Q8
    halves = (np.arange(32 * 4, dtype=np.float32) - 64) * np.float32(0.5)
    return {
        "normal_32": normal(32),
        "normal_64": normal(64),
        "normal_4096": normal(4096),
        "normal_32000_scaled": normal(32000, 0.02),
        "normal_large_scale": normal(1024, 300.0),
        "zeros": np.zeros(96, np.float32),
        "zeros_then_data": np.concatenate([np.zeros(32, np.float32), normal(32)]),
        "constant": np.concatenate([np.full(32, 3.0), np.full(32, -2.5), np.full(32, 1e-4)])
        .astype(np.float32),
        "positive_only": np.abs(normal(256)) + 1.0,
        "negative_only": -np.abs(normal(256)) - 1.0,
        "alternating_signs": (np.abs(normal(256)) * np.tile([1, -1], 128)).astype(np.float32),
        "f16_max_range": rng.uniform(-65504, 65504, 512).astype(np.float32),
        "f16_max_extremes": np.tile(np.float32([65504, -65504, 0, 1]), 32),
        "beyond_f16": rng.uniform(-1e6, 1e6, 256).astype(np.float32),
        "f16_subnormal_range": (rng.uniform(-6e-5, 6e-5, 256)).astype(np.float32),
        "f16_underflow": normal(256, 1e-9),
        "tiny_f32": normal(128, 1e-30),
        "single_outlier": outlier,
        "ties": ties,
        "half_steps": halves,
    }


CASES = _cases()


# ---- type geometry -------------------------------------------------------------------------
def test_the_type_table_is_ggmls():
    """The library knows its types by ggml's ids and names (gguf's enum), and the Python mirror
    (kernels.types, kernels.describe) reads its table; the types of this suite are there as
    weights (rows8 for the quantized ones) with ggml's activation types."""
    for t, qt in TYPES.items():
        assert t == qt.value
    act = {name: K.describe(name).act_type for name in K.types()}
    assert act | {"f32": _lib.PI_TYPE_F32, "f16": _lib.PI_TYPE_F32, "q4_0": _lib.PI_TYPE_Q8_0,
                  "q4_1": _lib.PI_TYPE_Q8_1, "q5_0": _lib.PI_TYPE_Q8_0, "q5_1": _lib.PI_TYPE_Q8_1,
                  "q8_0": _lib.PI_TYPE_Q8_0, "q8_1": -1} == act
    assert {"f32", "f16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0"} <= set(K.weight_types())
    assert "q8_1" not in K.weight_types()
    assert {"q4_0", "q4_1", "q5_0", "q5_1", "q8_0"} <= set(K.rows8_types()) <= set(K.weight_types())
    for t in range(_lib.PI_N_TYPE_IDS):
        if t not in TYPES:
            with pytest.raises(_lib.PiError, match=f"pi_type_describe: unsupported type {t} "):
                K.describe(t)


@pytest.mark.parametrize("t", list(TYPES))
def test_type_info_matches_gguf(t):
    be, bb = ctypes.c_int64(), ctypes.c_int64()
    _lib.call("pi_type_info", t, ctypes.byref(be), ctypes.byref(bb))
    assert (be.value, bb.value) == BLOCK_SIZES[t]
    d = K.describe(t)
    assert (d.name.decode(), d.block_elems, d.block_bytes) == (TYPES[t].name, be.value, bb.value)
    for n_blocks in (1, 2, 7, 128, 11008 // 32):
        n = n_blocks * be.value
        assert row_bytes(t, n) == n_blocks * bb.value
    assert _lib.lib().pi_last_error() == b""


# ---- quantize: bit-exact -------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("t", BLOCK32_TYPES)
def test_quantize_bit_exact(t, name):
    x = CASES[name]
    with np.errstate(over="ignore"):  # beyond_f16 overflows to inf in F16 / Q4_1's m
        ref = ref_quantize(t, x)
    ours = pi_quantize(t, x)
    assert ours.size == ref.size
    if not np.array_equal(ours, ref):
        bb = BLOCK_SIZES[t][1]
        bad = np.flatnonzero(ours != ref)[0] // bb
        pytest.fail(f"{name}: block {bad} differs:\n ours {ours[bad*bb:(bad+1)*bb]}\n  ref "
                    f"{ref[bad*bb:(bad+1)*bb]}")


def test_f16_rounding_edges():
    """Round-to-nearest-even at half-ulp ties, subnormals, overflow to inf, signed zero."""
    h = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)
    mid = ((h[:-1].astype(np.float64) + h[1:]) / 2).astype(np.float32)  # exact ties
    x = np.concatenate([h, -h, mid, -mid, np.float32([65504, 65519, 65520, 1e9, -0.0, 0.0,
                                                      np.inf, -np.inf, 2.0**-25, 2.0**-26])])
    x = np.concatenate([x, np.zeros((-x.size) % 32, np.float32)])
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(pi_quantize(_lib.PI_TYPE_F16, x),
                                      x.astype(np.float16).view(np.uint8))


def test_bf16_rounding_edges():
    """gguf's BF16 (ggml_compute_fp32_to_bf16): round to nearest even at exact ties, overflow to
    inf, subnormals, signed zero; NaNs stay NaNs, quiet (bit 6 of the top half set)."""
    rng = np.random.default_rng(30)
    top = rng.integers(0, 1 << 16, 4096, dtype=np.uint32) << 16
    bits = np.concatenate([top | 0x8000, top | 0x7FFF, top | 0x8001, top,  # ties, below, above
                           np.uint32([0x7F7FFFFF, 0xFF7FFFFF, 0x7F7F8000, 0x00000001, 0x80008000,
                                      0x7F800001, 0xFF800001, 0x7FC00000, 0x7FBFFFFF, 0x7F800000,
                                      0xFF800000, 0x80000000, 0x00000000])])
    x = bits.view(np.float32)
    ours = pi_quantize(_lib.PI_TYPE_BF16, x)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(ours, ref_quantize(_lib.PI_TYPE_BF16, x))
    h = ours.view(np.uint16)
    nan = np.isnan(x)
    assert nan.any() and np.all(h[nan] & 0x40) and np.all((h[nan] & 0x7F80) == 0x7F80)


def test_q8_1_reference_agrees_with_gguf():
    """The numpy Q8_1 reference's d and quants are gguf's Q8_0 (sanity check of the reference)."""
    x = CASES["normal_4096"]
    q81 = ref_quantize_q8_1(x).reshape(-1, 36)
    q80 = ref_quantize(_lib.PI_TYPE_Q8_0, x).reshape(-1, 34)
    np.testing.assert_array_equal(q81[:, [0, 1]], q80[:, [0, 1]])
    np.testing.assert_array_equal(q81[:, 4:], q80[:, 2:])


def test_negative_zero_block_follows_ggml():
    """ggml starts Q4_0's signed max at +0.0f, so an all-zero block gets d = +0/-8 = -0.0 (0x8000)
    whatever the zeros' signs. gguf-py takes the max from the data, so it writes 0x0000 for a
    block of -0.0: there we follow ggml, not gguf."""
    for x in (np.zeros(32, np.float32), np.full(32, -0.0, np.float32)):
        q = pi_quantize(_lib.PI_TYPE_Q4_0, x)
        assert q[:2].view(np.uint16)[0] == 0x8000
        assert np.all(q[2:] == 0x88)  # every quant is 8, i.e. 0
    q = pi_quantize(_lib.PI_TYPE_Q8_0, np.full(32, -0.0, np.float32))
    assert q[:2].view(np.uint16)[0] == 0 and not q[2:].any()


@pytest.mark.parametrize("t", BLOCK32_TYPES)
def test_quantize_writes_only_its_row(t):
    x = CASES["normal_64"]
    nb = row_bytes(t, x.size)
    buf = np.full(nb + 64, 0xA5, dtype=np.uint8)
    _lib.call("pi_quantize_row", t, _lib.fptr(x), _lib.vptr(buf), x.size)
    assert np.all(buf[nb:] == 0xA5)
    out = np.full(x.size + 16, 7.0, dtype=np.float32)
    _lib.call("pi_dequantize_row", t, _lib.vptr(buf), _lib.fptr(out), x.size)
    assert np.all(out[x.size:] == 7.0)


# ---- dequantize: equal floats --------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("t", BLOCK32_TYPES)
def test_dequantize_matches(t, name):
    x = CASES[name]
    with np.errstate(over="ignore"):
        q = ref_quantize(t, x)
    with np.errstate(invalid="ignore"):  # beyond_f16: inf * 0 in the references
        ref = ref_dequantize(t, q)
    assert_same_floats(pi_dequantize(t, q, x.size), ref)


@pytest.mark.parametrize("t", BLOCK32_TYPES)
def test_dequantize_random_bytes(t):
    """Arbitrary blocks, including fp16 scales that are subnormal, inf or NaN."""
    be, bb = BLOCK_SIZES[t]
    n = 64 * be
    q = np.random.default_rng(t).integers(0, 256, n // be * bb, dtype=np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):
        ref = ref_dequantize(t, q)
    assert_same_floats(pi_dequantize(t, q, n), ref)


@pytest.mark.parametrize("t", QUANT_TYPES)
def test_roundtrip_error_is_bounded(t):
    x = CASES["normal_4096"]
    err = np.abs(pi_dequantize(t, pi_quantize(t, x), x.size) - x).reshape(-1, 32)
    amax = np.abs(x).reshape(-1, 32).max(axis=1)
    half_steps = {_lib.PI_TYPE_Q4_0: 7.5, _lib.PI_TYPE_Q4_1: 7.5, _lib.PI_TYPE_Q5_0: 15.5,
                  _lib.PI_TYPE_Q5_1: 15.5}
    step = amax / half_steps.get(t, 127)
    assert np.all(err.max(axis=1) <= step * 1.01)


# ---- errors --------------------------------------------------------------------------------
def _error(fn: str, *args) -> _lib.PiError:
    with pytest.raises(_lib.PiError) as e:
        _lib.call(fn, *args)
    return e.value


@pytest.mark.parametrize("fn", ["pi_quantize_row", "pi_dequantize_row"])
@pytest.mark.parametrize("t", QUANT_TYPES)
def test_n_not_multiple_of_block(fn, t):
    x = np.zeros(64, np.float32)
    q = np.zeros(row_bytes(t, 64), np.uint8)
    args = (_lib.fptr(x), _lib.vptr(q)) if fn == "pi_quantize_row" else (_lib.vptr(q), _lib.fptr(x))
    for n in (33, 31, 1, 48):
        e = _error(fn, t, *args, n)
        assert e.status == _lib.PI_ERR_SHAPE
        msg = str(e)
        assert fn in msg and f"n = {n}" in msg and "multiple" in msg and TYPES[t].name in msg
    for n in (0, -32):
        e = _error(fn, t, *args, n)
        assert e.status == _lib.PI_ERR_SHAPE and "positive" in str(e)


def test_f32_f16_bf16_accept_any_positive_n():
    x = np.arange(3, dtype=np.float32)
    for t in (_lib.PI_TYPE_F32, _lib.PI_TYPE_F16, _lib.PI_TYPE_BF16):
        assert row_bytes(t, 3) == 3 * BLOCK_SIZES[t][1]
        np.testing.assert_array_equal(pi_dequantize(t, pi_quantize(t, x), 3), x)


@pytest.mark.parametrize("t", [-1, _lib.PI_N_TYPE_IDS, 1000]
                         + [t for t in range(_lib.PI_N_TYPE_IDS) if t not in TYPES])
def test_unknown_type(t):
    x = np.zeros(32, np.float32)
    q = np.zeros(64, np.uint8)
    i64 = ctypes.c_int64()
    for fn, args in [
        ("pi_quantize_row", (t, _lib.fptr(x), _lib.vptr(q), 32)),
        ("pi_dequantize_row", (t, _lib.vptr(q), _lib.fptr(x), 32)),
        ("pi_row_bytes", (t, 32, ctypes.byref(i64))),
        ("pi_type_info", (t, ctypes.byref(i64), ctypes.byref(ctypes.c_int64()))),
        ("pi_type_describe", (t, ctypes.byref(_lib.pi_type_desc()))),
    ]:
        e = _error(fn, *args)
        assert e.status == _lib.PI_ERR_TYPE
        assert fn in str(e) and f"unsupported type {t}" in str(e)


def test_null_pointers():
    x = np.zeros(32, np.float32)
    q = np.zeros(64, np.uint8)
    i64 = ctypes.c_int64()
    t = _lib.PI_TYPE_Q8_0
    for fn, args, arg in [
        ("pi_quantize_row", (t, None, _lib.vptr(q), 32), "'x'"),
        ("pi_quantize_row", (t, _lib.fptr(x), None, 32), "'y'"),
        ("pi_dequantize_row", (t, None, _lib.fptr(x), 32), "'x'"),
        ("pi_dequantize_row", (t, _lib.vptr(q), None, 32), "'y'"),
        ("pi_row_bytes", (t, 32, None), "'bytes'"),
        ("pi_type_info", (t, None, ctypes.byref(i64)), "'block_elems'"),
        ("pi_type_info", (t, ctypes.byref(i64), None), "'block_bytes'"),
        ("pi_type_describe", (t, None), "'out'"),
    ]:
        e = _error(fn, *args)
        assert e.status == _lib.PI_ERR_NULL
        assert fn in str(e) and arg in str(e)


def test_row_bytes_overflow():
    out = ctypes.c_int64()
    for t, n in [(_lib.PI_TYPE_F32, 2**62), (_lib.PI_TYPE_Q8_0, 2**63 - 32),
                 (_lib.PI_TYPE_Q8_1, 2**63 - 32)]:
        e = _error("pi_row_bytes", t, n, ctypes.byref(out))
        assert e.status == _lib.PI_ERR_SHAPE and "overflow" in str(e)
    # the largest representable row is fine
    _lib.call("pi_row_bytes", _lib.PI_TYPE_F32, 2**61 - 1, ctypes.byref(out))
    assert out.value == 2**63 - 4


def test_success_clears_last_error():
    _error("pi_row_bytes", 5, 32, ctypes.byref(ctypes.c_int64()))
    assert _lib.lib().pi_last_error() != b""
    row_bytes(_lib.PI_TYPE_Q4_0, 32)
    assert _lib.lib().pi_last_error() == b""
