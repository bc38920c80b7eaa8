"""ctypes bindings for ggml_ext/pi.h: the only module that talks to ctypes.

The declarations below mirror pi.h one for one, in the same order. `lib()` loads the library
once: from $PI_BACKEND_LIB when set, else the `_pi*.so` built next to this file.
"""
from __future__ import annotations

import ctypes
import glob
import os
from ctypes import POINTER, c_char_p, c_float, c_int, c_int8, c_int32, c_int64, c_size_t, c_void_p

PI_API_VERSION = 9

# ---- status codes (pi_status) -----------------------------------------------------------
PI_OK = 0
PI_ERR_NULL = 1
PI_ERR_TYPE = 2
PI_ERR_SHAPE = 3
PI_ERR_RANGE = 4
PI_ERR_NOMEM = 5
PI_ERR_THREADS = 6
PI_ERR_ISA = 7
PI_ERR_NUMERIC = 8

# ---- tensor types (pi_type): ggml type ids ------------------------------------------------
PI_TYPE_F32 = 0
PI_TYPE_F16 = 1
PI_TYPE_Q4_0 = 2
PI_TYPE_Q4_1 = 3
PI_TYPE_Q5_0 = 6
PI_TYPE_Q5_1 = 7
PI_TYPE_Q8_0 = 8
PI_TYPE_Q8_1 = 9
PI_TYPE_Q2_K = 10
PI_TYPE_Q3_K = 11
PI_TYPE_Q4_K = 12
PI_TYPE_Q5_K = 13
PI_TYPE_Q6_K = 14
PI_TYPE_Q8_K = 15
PI_TYPE_IQ4_NL = 20
PI_TYPE_IQ4_XS = 23
PI_TYPE_BF16 = 30
PI_N_TYPE_IDS = 40

# ---- instruction sets (pi_isa) ------------------------------------------------------------
PI_ISA_SCALAR = 0
PI_ISA_AVX2 = 1
PI_ISA_AVX512 = 2
ISA_NAMES = {"scalar": PI_ISA_SCALAR, "avx2": PI_ISA_AVX2, "avx512": PI_ISA_AVX512}


# ---- model enums (pi_arch, pi_act, pi_ffn_mode) ------------------------------------------------
PI_ARCH_LLAMA = 0
PI_ARCH_QWEN2 = 1
PI_ARCH_QWEN3 = 2
PI_ARCH_GEMMA3 = 3
PI_N_ARCHS = 4
PI_ACT_SILU = 0
PI_ACT_RELU = 1
PI_ACT_GELU_TANH = 2
PI_N_ACTS = 3
PI_FFN_DENSE = 0
PI_FFN_SPARSE = 1
PI_FFN_THRESHOLD = 2
PI_REPACK_NONE = 0
PI_REPACK = 1
PI_REPACK_RELEASE = 2
PI_HEAD_DENSE = 0
PI_HEAD_SPARSE = 1


class pi_type_desc(ctypes.Structure):
    _fields_ = [
        ("name", c_char_p),
        ("block_elems", c_int64),
        ("block_bytes", c_int64),
        ("weight", c_int32),
        ("act_type", c_int32),
        ("rows8", c_int32),
    ]


class pi_pool(ctypes.Structure):
    """Opaque thread pool."""


class pi_hparams(ctypes.Structure):
    _fields_ = [
        ("arch", c_int32),
        ("ffn_act", c_int32),
        ("n_vocab", c_int32),
        ("n_embd", c_int32),
        ("n_ff", c_int32),
        ("n_layer", c_int32),
        ("n_head", c_int32),
        ("n_head_kv", c_int32),
        ("head_dim", c_int32),
        ("n_rot", c_int32),
        ("rope_neox", c_int32),
        ("rope_freq_base", c_float),
        ("rope_freq_scale", c_float),
        ("norm_eps", c_float),
        ("attn_scale", c_float),
        ("embd_scale", c_float),
        ("n_swa", c_int32),
        ("swa_period", c_int32),
        ("rope_freq_base_swa", c_float),
        ("rope_freq_scale_swa", c_float),
        ("final_softcap", c_float),
    ]


class pi_model(ctypes.Structure):
    """Opaque model (tensor table)."""


class pi_context(ctypes.Structure):
    """Opaque context (KV cache, buffers, pool)."""


class pi_stats(ctypes.Structure):
    _fields_ = [
        ("tokens", c_int64),
        ("ffn_neurons", c_int64),
        ("ffn_active", c_int64),
        ("ffn_down_active", c_int64),
        ("ffn_pass_neurons", c_int64),
        ("ffn_pass_active", c_int64),
        ("ffn_pass_down", c_int64),
        ("ffn_bytes", c_int64),
    ]


pi_pool_p = POINTER(pi_pool)
pi_model_p = POINTER(pi_model)
pi_context_p = POINTER(pi_context)
f32_p = POINTER(c_float)
i32_p = POINTER(c_int32)
i64_p = POINTER(c_int64)

_PROTOTYPES = [
    # library
    ("pi_api_version", c_int, []),
    ("pi_status_str", c_char_p, [c_int]),
    ("pi_last_error", c_char_p, []),
    ("pi_isa_best", c_int, []),
    ("pi_isa_get", c_int, []),
    ("pi_isa_set", c_int, [c_int]),
    # types and blocks
    ("pi_type_info", c_int, [c_int, i64_p, i64_p]),
    ("pi_type_describe", c_int, [c_int, POINTER(pi_type_desc)]),
    ("pi_row_bytes", c_int, [c_int, c_int64, i64_p]),
    ("pi_quantize_row", c_int, [c_int, f32_p, c_void_p, c_int64]),
    ("pi_dequantize_row", c_int, [c_int, c_void_p, f32_p, c_int64]),
    # memory
    ("pi_buffer_alloc", c_int, [c_size_t, POINTER(c_void_p)]),
    ("pi_buffer_free", None, [c_void_p, c_size_t]),
    ("pi_read_bytes", c_int, [pi_pool_p, c_void_p, c_size_t, f32_p]),
    # thread pool
    ("pi_pool_create", c_int, [c_int, POINTER(pi_pool_p)]),
    ("pi_pool_free", None, [pi_pool_p]),
    ("pi_pool_n_threads", c_int, [pi_pool_p]),
    # kernels
    ("pi_matvec", c_int, [pi_pool_p, c_int, c_void_p, c_int64, c_int64, f32_p, f32_p]),
    ("pi_matmat", c_int,
     [pi_pool_p, c_int, c_void_p, c_int64, c_int64, f32_p, c_int64, f32_p, c_int64]),
    ("pi_repack_rows8", c_int, [c_int, c_void_p, c_int64, c_int64, c_void_p]),
    ("pi_matmat_rows8", c_int,
     [pi_pool_p, c_int, c_void_p, c_int64, c_int64, f32_p, c_int64, f32_p, c_int64]),
    ("pi_matvec_masked", c_int,
     [pi_pool_p, c_int, c_void_p, c_int64, c_int64, f32_p, i32_p, c_int64, f32_p]),
    ("pi_axpy_sparse", c_int,
     [pi_pool_p, c_int, c_void_p, c_int64, c_int64, f32_p, i32_p, c_int64, f32_p]),
    ("pi_matvec_cols_sparse", c_int,
     [pi_pool_p, c_int, c_void_p, c_int64, c_int64, f32_p, i32_p, c_int64, f32_p]),
    ("pi_activation", c_int, [c_int, f32_p, f32_p, c_int64]),
    # model
    ("pi_model_create", c_int, [POINTER(pi_hparams), POINTER(pi_model_p)]),
    ("pi_model_set_tensor", c_int, [pi_model_p, c_char_p, c_int, c_int64, c_int64, c_void_p]),
    ("pi_model_set_thresholds", c_int, [pi_model_p, f32_p, c_int32]),
    ("pi_model_set_repack", c_int, [pi_model_p, c_int32]),
    ("pi_model_finalize", c_int, [pi_model_p]),
    ("pi_model_repacked_bytes", c_int, [pi_model_p, i64_p]),
    ("pi_model_ffn_modes", c_int, [pi_model_p, POINTER(c_int32)]),
    ("pi_model_free", None, [pi_model_p]),
    # context
    ("pi_context_create", c_int, [pi_model_p, c_int32, c_int32, c_int32, POINTER(pi_context_p)]),
    ("pi_context_create_seqs", c_int, [pi_model_p, c_int32, c_int32, c_int32, c_int32, POINTER(pi_context_p)]),
    ("pi_context_free", None, [pi_context_p]),
    ("pi_context_set_ffn_mode", c_int, [pi_context_p, c_int]),
    ("pi_decode", c_int, [pi_context_p, i32_p, c_int32, c_int32, f32_p, c_int32]),
    ("pi_decode_seqs", c_int, [pi_context_p, i32_p, i32_p, i32_p, c_int32, POINTER(c_int8), f32_p]),
    ("pi_context_seq_len", c_int, [pi_context_p, c_int32, POINTER(c_int32)]),
    ("pi_context_set_recorder", c_int, [pi_context_p, f32_p, f32_p, f32_p, c_int32]),
    ("pi_context_stats", c_int, [pi_context_p, POINTER(pi_stats)]),
    ("pi_context_reset_stats", c_int, [pi_context_p]),
    # sparse output head
    ("pi_model_set_head", c_int, [pi_model_p, c_int32, c_float, c_float]),
    ("pi_model_head_modes", c_int, [pi_model_p, POINTER(c_int32)]),
    ("pi_context_set_head_mode", c_int, [pi_context_p, c_int]),
    ("pi_context_head_stats", c_int, [pi_context_p, i64_p, i64_p, i64_p]),
    ("pi_matvec_rows", c_int,
     [pi_pool_p, c_int, c_void_p, c_int64, c_int64, f32_p, i32_p, c_int64, f32_p]),
    # hidden states and saved state
    ("pi_decode_hidden", c_int, [pi_context_p, i32_p, c_int32, c_int32, f32_p]),
    ("pi_context_state_size", c_int, [pi_context_p, c_int32, i64_p]),
    ("pi_context_get_state", c_int, [pi_context_p, c_int32, c_void_p, c_int64]),
    ("pi_context_set_state", c_int, [pi_context_p, c_int32, c_void_p, c_int64]),
]


class PiError(RuntimeError):
    """A status code other than PI_OK from the kernel library."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class LibraryNotFoundError(ImportError):
    pass


def _find_library() -> str:
    env = os.environ.get("PI_BACKEND_LIB")
    if env:
        if not os.path.isfile(env):
            raise LibraryNotFoundError(f"PI_BACKEND_LIB points to {env!r}, which is not a file")
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    found = sorted(glob.glob(os.path.join(here, "_pi*.so")))
    if not found:
        raise LibraryNotFoundError(
            f"the ggml_ext library is not built (no _pi*.so in {here}); run `make` or "
            "`pip install -e .`, or set PI_BACKEND_LIB")
    return found[0]


_LIB = None


def lib() -> ctypes.CDLL:
    """The loaded, version-checked library (loaded once)."""
    global _LIB
    if _LIB is None:
        path = _find_library()
        try:
            handle = ctypes.CDLL(path)
        except OSError as e:
            raise LibraryNotFoundError(f"cannot load the ggml_ext library {path}: {e}") from None
        handle.pi_api_version.restype = c_int
        version = handle.pi_api_version()
        if version != PI_API_VERSION:
            raise LibraryNotFoundError(
                f"ggml_ext library {path} has API version {version}, these bindings need "
                f"{PI_API_VERSION}; rebuild with `make`")
        for name, restype, argtypes in _PROTOTYPES:
            fn = getattr(handle, name)
            fn.restype = restype
            fn.argtypes = argtypes
        isa = _env_isa()
        if isa is not None and handle.pi_isa_set(isa) != PI_OK:
            raise ValueError(f"PI_ISA={os.environ['PI_ISA']}: "
                             f"{handle.pi_last_error().decode()}")
        _LIB = handle
    return _LIB


def _env_isa() -> int | None:
    """The instruction set $PI_ISA forces (scalar, avx2, avx512), or None when it is unset."""
    name = os.environ.get("PI_ISA", "").strip().lower()
    if not name:
        return None
    if name not in ISA_NAMES:
        raise ValueError(f"PI_ISA={name!r} is not an instruction set; expected one of "
                         f"{', '.join(ISA_NAMES)}")
    return ISA_NAMES[name]


def default_isa() -> int:
    """The instruction set the library starts with: $PI_ISA when set, else the CPU's best."""
    isa = _env_isa()
    return lib().pi_isa_best() if isa is None else isa


def check(status: int) -> None:
    """Raises PiError with the library's one-line message unless status is PI_OK."""
    if status != PI_OK:
        L = lib()
        msg = (L.pi_last_error() or b"").decode("utf-8", "replace")
        name = L.pi_status_str(status).decode()
        raise PiError(status, f"{name}: {msg}" if msg else name)


def call(name: str, *args) -> None:
    """Calls pi.h function `name` and raises PiError on a non-OK status."""
    check(getattr(lib(), name)(*args))


def trim_heap() -> None:
    """Collects garbage and gives the C heap's free memory back to the system: glibc keeps it
    after a burst of allocations (a parsed vocabulary's small objects, llama.cpp's vocab load)."""
    import gc
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to trim


# ---- zero-copy views of numpy arrays ---------------------------------------------------------
def fptr(a):
    """float* into a C-contiguous float32 array (no copy; refuses anything else)."""
    _require(a, "float32")
    return a.ctypes.data_as(f32_p)


def iptr(a):
    """int32_t* into a C-contiguous int32 array."""
    _require(a, "int32")
    return a.ctypes.data_as(i32_p)


def vptr(a):
    """void* to the bytes of a C-contiguous array or memmap (no copy)."""
    if not a.flags["C_CONTIGUOUS"]:
        raise ValueError("array must be C-contiguous")
    return c_void_p(a.ctypes.data)


def _require(a, dtype: str) -> None:
    if a.dtype != dtype:
        raise TypeError(f"expected a {dtype} array, got {a.dtype}")
    if not a.flags["C_CONTIGUOUS"]:
        raise ValueError("array must be C-contiguous")
