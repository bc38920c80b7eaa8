"""Pythonic wrappers over the ggml_ext kernels: numpy in, numpy out, no copies of weights.

Weights are uint8 arrays holding rows of ggml blocks (as a GGUF memmap gives them), shaped
[n_rows, row_bytes]; activations are float32 vectors.
"""
from __future__ import annotations

import ctypes
import functools
import os

import numpy as np

from . import _lib
from ._lib import call, fptr, iptr, vptr

ISAS = _lib.ISA_NAMES


@functools.cache
def types() -> dict[str, int]:
    """{name ("q4_0"): ggml type id} of every type the library knows: its type table, read
    through pi_type_describe over the ids."""
    out = {}
    for t in range(_lib.PI_N_TYPE_IDS):
        d = _lib.pi_type_desc()
        if _lib.lib().pi_type_describe(t, ctypes.byref(d)) == _lib.PI_OK:
            out[d.name.decode().lower()] = t
    return out


def type_id(t) -> int:
    if isinstance(t, str):
        if t.lower() not in types():
            raise ValueError(f"unknown tensor type {t!r}; expected one of {', '.join(types())}")
        return types()[t.lower()]
    return int(t)


def describe(t) -> _lib.pi_type_desc:
    """The library's row of type t (a name or a ggml id): block size and bytes, whether it is a
    weight type of the kernels, its activation type, whether it has the rows8 layout."""
    d = _lib.pi_type_desc()
    call("pi_type_describe", type_id(t), ctypes.byref(d))
    return d


def activation(kind: str, x) -> np.ndarray:
    """act(x) for an FFN activation `kind` (a pi.ffn_activation name: silu, relu, gelu_tanh) as
    the engine computes it (the active instruction set's kernel): float32, x's shape."""
    from .format import ACTIVATIONS
    if kind not in ACTIVATIONS:
        raise ValueError(f"unknown activation {kind!r}; expected one of {', '.join(ACTIVATIONS)}")
    a = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty_like(a)
    call("pi_activation", getattr(_lib, f"PI_ACT_{kind.upper()}"), fptr(a), fptr(out), a.size)
    return out


def weight_types() -> list[str]:
    """The names of the types the matrix kernels take."""
    return [name for name in types() if describe(name).weight]


@functools.cache
def weight_type_ids() -> frozenset[int]:
    """The ggml ids of weight_types()."""
    return frozenset(types()[name] for name in weight_types())


def rows8_types() -> list[str]:
    """The names of the types with the rows8 layout (repack_rows8, matvec_rows8)."""
    return [name for name in types() if describe(name).rows8]


def row_bytes(t, n: int) -> int:
    out = ctypes.c_int64()
    call("pi_row_bytes", type_id(t), n, ctypes.byref(out))
    return out.value


def quantize(t, x: np.ndarray) -> np.ndarray:
    """[n_rows, n] float32 -> [n_rows, row_bytes] uint8 of ggml blocks."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    x2 = x.reshape(-1, x.shape[-1])
    rb = row_bytes(t, x2.shape[1])
    out = np.empty((x2.shape[0], rb), dtype=np.uint8)
    # rows are contiguous, so the whole matrix quantizes as one long row of blocks
    call("pi_quantize_row", type_id(t), fptr(x2), vptr(out), x2.size)
    return out.reshape(x.shape[:-1] + (rb,))


def dequantize(t, q: np.ndarray, n: int) -> np.ndarray:
    """[n_rows, row_bytes] uint8 -> [n_rows, n] float32."""
    q = np.ascontiguousarray(q)
    n_rows = q.size // row_bytes(t, n)
    out = np.empty((n_rows, n), dtype=np.float32)
    call("pi_dequantize_row", type_id(t), vptr(q), fptr(out), out.size)
    return out.reshape(q.shape[:-1] + (n,)) if q.ndim > 1 else out.reshape(n)


def default_threads() -> int:
    """The pool size the commands use when none is given: the available cores, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


class Pool:
    """A persistent worker pool of n_threads (the calling thread included)."""

    def __init__(self, n_threads: int = 1):
        self._ptr = _lib.pi_pool_p()
        call("pi_pool_create", int(n_threads), ctypes.byref(self._ptr))
        self.n_threads = int(n_threads)

    @property
    def ptr(self):
        return self._ptr

    def close(self) -> None:
        if self._ptr:
            _lib.lib().pi_pool_free(self._ptr)
            self._ptr = _lib.pi_pool_p()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _pool_ptr(pool):
    return pool.ptr if pool is not None else _lib.pi_pool_p()


def _shape(W: np.ndarray, t, n_cols: int) -> int:
    rb = row_bytes(t, n_cols)
    if W.nbytes % rb:
        raise ValueError(f"weight of {W.nbytes} bytes is not a whole number of {rb}-byte rows")
    return W.nbytes // rb


def matvec(pool, t, W, n_cols, x, out=None):
    n_rows = _shape(W, t, n_cols)
    y = np.empty(n_rows, np.float32) if out is None else out
    call("pi_matvec", _pool_ptr(pool), type_id(t), vptr(W), n_rows, n_cols, fptr(x), fptr(y))
    return y


def repack_rows8(t, W, n_cols):
    """W (rows of ggml blocks) in the 8-row interleaved layout of the fast dense kernels."""
    n_rows = _shape(W, t, n_cols)
    out = np.empty_like(W)
    call("pi_repack_rows8", type_id(t), vptr(W), n_rows, n_cols, vptr(out))
    return out


def matvec_rows8(pool, t, Wp, n_cols, x, out=None):
    """matvec over a repack_rows8 matrix."""
    n_rows = _shape(Wp, t, n_cols)
    y = np.empty(n_rows, np.float32) if out is None else out
    call("pi_matmat_rows8", _pool_ptr(pool), type_id(t), vptr(Wp), n_rows, n_cols, fptr(x), 1,
         fptr(y), n_rows)
    return y


def matvec_masked(pool, t, W, n_cols, x, idx, out=None):
    n_rows = _shape(W, t, n_cols)
    y = np.empty(n_rows, np.float32) if out is None else out
    call("pi_matvec_masked", _pool_ptr(pool), type_id(t), vptr(W), n_rows, n_cols, fptr(x),
         iptr(idx), len(idx), fptr(y))
    return y


def matvec_rows(pool, t, W, n_cols, x, idx, out):
    """out[idx] = W[idx] . x; the other entries of out stay as they are."""
    n_rows = _shape(W, t, n_cols)
    call("pi_matvec_rows", _pool_ptr(pool), type_id(t), vptr(W), n_rows, n_cols, fptr(x),
         iptr(idx), len(idx), fptr(out))
    return out


def axpy_sparse(pool, t, Wt, n_cols, a, idx, out=None):
    n_rows = _shape(Wt, t, n_cols)
    y = np.empty(n_cols, np.float32) if out is None else out
    call("pi_axpy_sparse", _pool_ptr(pool), type_id(t), vptr(Wt), n_rows, n_cols, fptr(a),
         iptr(idx), len(idx), fptr(y))
    return y


def matvec_cols_sparse(pool, t, W, n_cols, a, idx, out=None):
    n_rows = _shape(W, t, n_cols)
    y = np.empty(n_rows, np.float32) if out is None else out
    call("pi_matvec_cols_sparse", _pool_ptr(pool), type_id(t), vptr(W), n_rows, n_cols, fptr(a),
         iptr(idx), len(idx), fptr(y))
    return y


def read_bytes(pool, buf: np.ndarray) -> float:
    cs = ctypes.c_float()
    call("pi_read_bytes", _pool_ptr(pool), vptr(buf), buf.nbytes, ctypes.byref(cs))
    return cs.value


class HugeBuffer:
    """A library-owned, huge-page-advised uint8 buffer, exposed as a numpy array."""

    def __init__(self, nbytes: int):
        self._p = ctypes.c_void_p()
        call("pi_buffer_alloc", nbytes, ctypes.byref(self._p))
        self.nbytes = nbytes
        self.array = np.ctypeslib.as_array(
            (ctypes.c_uint8 * nbytes).from_address(self._p.value))

    def close(self):
        if self._p:
            self.array = None
            _lib.lib().pi_buffer_free(self._p, self.nbytes)
            self._p = ctypes.c_void_p()

    def __del__(self):
        self.close()


def isa_get() -> str:
    """The name of the active instruction set (for benchmark reports)."""
    i = _lib.lib().pi_isa_get()
    return next(k for k, v in ISAS.items() if v == i)
