"""The FFN activations the engine computes (pi_activation, pi_backend.kernels.activation): the
same bits on every instruction set, and torch's (transformers') functions within a few f32
ulps."""
from __future__ import annotations

import numpy as np
import pytest

from pi_backend import _lib
from pi_backend import format as F
from pi_backend._lib import call
from pi_backend.kernels import activation

from kernel_util import ISA_NAMES, ISAS, restore_isa  # noqa: F401  (restore_isa: autouse)

# gates over the range a model's take, the vector tails (an odd length) and the far ends
X = np.concatenate([np.linspace(-12, 12, 4001, dtype=np.float32),
                    np.float32([-100, -30, -0.0, 0.0, 1e-30, -1e-30, 30, 100])])


def exponent(kind: str, x: np.ndarray) -> np.ndarray:
    """The exponent z of act(x) = x / (1 + exp(z)) in double (0 for ReLU)."""
    x = x.astype(np.float64)
    if kind == F.ACT_SILU:
        return -x
    if kind == F.ACT_GELU_TANH:
        return -2 * 0.7978845608028654 * x * (1 + 0.044715 * x * x)
    return np.zeros_like(x)


def definition(kind: str, x: np.ndarray) -> np.ndarray:
    """act(x) in double, in the form without cancellation (GELU's 0.5 x (1 + tanh(u)) loses
    every digit for x below about -9, even in double)."""
    if kind == F.ACT_RELU:
        return np.maximum(x.astype(np.float64), 0)
    with np.errstate(over="ignore"):
        return x.astype(np.float64) / (1 + np.exp(exponent(kind, x)))


def torch_act(kind: str, x: np.ndarray) -> np.ndarray:
    """transformers' activation of that kind, as it runs it: float32 (silu, relu,
    gelu_pytorch_tanh)."""
    import torch
    t = torch.from_numpy(x.astype(np.float32))
    fn = {F.ACT_SILU: torch.nn.functional.silu, F.ACT_RELU: torch.relu,
          F.ACT_GELU_TANH: lambda v: torch.nn.functional.gelu(v, approximate="tanh")}[kind]
    return fn(t).numpy().astype(np.float64)


@pytest.mark.parametrize("kind", F.ACTIVATIONS)
def test_every_isa_gives_the_same_bits(kind):
    """The same bits everywhere, except SiLU on the AVX-512 table: it follows llama.cpp's AVX-512
    build, whose exp rounds differently (1 + p(r), then scaled, against AVX2's one fused 2^n +
    2^n p(r)): within a few ulps of the others (the C test holds it to its own scalar twin)."""
    out = {}
    for isa in ISAS:
        call("pi_isa_set", isa)
        out[ISA_NAMES[isa]] = activation(kind, X)
    for name, y in out.items():
        if kind == F.ACT_SILU and name == "avx512":
            ulps = np.abs(y.view(np.int32).astype(np.int64) - out["scalar"].view(np.int32))
            assert ulps.max() <= 4, ulps.max()
            continue
        np.testing.assert_array_equal(y.view(np.uint32), out["scalar"].view(np.uint32),
                                      err_msg=name)


@pytest.mark.parametrize("kind", F.ACTIVATIONS)
def test_matches_the_definition(kind):
    """Within (3 |z| + 8) f32 ulps of act(x) in double: the f32 exponent z carries about 3
    roundings, which exp turns into 3 |z| eps relative; exp, the sum and the quotient add a
    few ulps. (Below 1e-37 the result is subnormal or 0: compared absolutely.)"""
    ours = activation(kind, X).astype(np.float64)
    ref = definition(kind, X)
    eps = np.finfo(np.float32).eps
    err = np.abs(ours - ref)
    tol = np.maximum(np.abs(ref) * eps * (3 * np.abs(exponent(kind, X)) + 8), 1e-37)
    assert np.all(err <= tol), (X[err > tol][:5], ours[err > tol][:5], ref[err > tol][:5])


@pytest.mark.parametrize("kind", F.ACTIVATIONS)
def test_matches_torch(kind):
    """transformers' float32 activation within the same bound, plus |x| eps for torch's
    1 + tanh(u) cancelling where GELU's tanh nears -1."""
    ours = activation(kind, X).astype(np.float64)
    ref = torch_act(kind, X)
    eps = np.finfo(np.float32).eps
    err = np.abs(ours - ref)
    tol = (np.abs(ref) * eps * (3 * np.abs(exponent(kind, X)) + 8) + 1e-37 +
           (np.abs(X) * eps if kind == F.ACT_GELU_TANH else 0))
    assert np.all(err <= tol), (X[err > tol][:5], ours[err > tol][:5], ref[err > tol][:5])


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        activation("gelu", X)
    with pytest.raises(_lib.PiError, match="unknown activation id 3"):
        y = np.zeros(4, np.float32)
        call("pi_activation", 3, _lib.fptr(y), _lib.fptr(y), 4)
