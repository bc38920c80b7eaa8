"""Token sampling through llama.cpp's own sampler chain (llama-cpp-python's low-level bindings).

pi_backend owns no sampler: `Sampler` builds a `llama_sampler_chain` in the order
llama-cpp-python's `Llama` builds it for `create_completion`

    logit_bias -> penalties -> grammar ->
        temperature < 0 : dist                    (plain softmax sampling)
        temperature == 0: greedy
        mirostat 1 / 2  : mirostat / mirostat_v2
        otherwise       : top_k -> typical -> top_p -> min_p -> temp -> dist

and applies it to our logits through a `llama_token_data_array` over a numpy structured array:
`llama_sampler_apply` per token (the penalties sampler over the tokens accepted so far only:
see Sampler), then `llama_sampler_accept` of the picked token
(penalties, grammar and mirostat keep state across the tokens of one completion). The seed goes
to llama.cpp's dist/mirostat samplers, so a given seed gives the same tokens; LLAMA_DEFAULT_SEED
asks llama.cpp for a random one.

Every argument is checked here first, with a one-line error: llama.cpp does not validate them
(a NaN temperature or a repeat penalty of 0 would give garbage, an out-of-range token would
abort the process).
"""
from __future__ import annotations

import ctypes
import math
import operator
from dataclasses import dataclass, fields
from typing import Any, Iterator, Mapping, Optional

import numpy as np

LLAMA_DEFAULT_SEED = 0xFFFFFFFF
MIROSTAT_M = 100  # mirostat v1's m, as llama-cpp-python sets it

# llama_token_data, as llama.h lays it out: {int32 id; float logit; float p}
TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)


@dataclass(frozen=True)
class SamplingParams:
    """The sampling arguments of llama-cpp-python's `create_completion` / `generate`."""
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_last_n: int = 64
    mirostat_mode: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    tfs_z: float = 1.0
    logit_bias: Optional[Mapping[int, float]] = None
    grammar: Any = None  # a llama_cpp.LlamaGrammar

    @property
    def penalized(self) -> bool:
        return self.penalty_last_n != 0 and (self.repeat_penalty != 1.0
                                             or self.frequency_penalty != 0.0
                                             or self.presence_penalty != 0.0)


# ---- validation --------------------------------------------------------------------------------
def _finite(x: float) -> bool:
    return math.isfinite(x)


def _unit(x: float) -> bool:
    return 0.0 <= x <= 1.0  # False for NaN


# float arguments: (name, accepted, what it must be)
_FLOAT_RULES = (
    ("temperature", _finite, "a finite number (0: greedy, < 0: plain softmax sampling)"),
    ("top_p", _unit, "in [0, 1] (1: off)"),
    ("min_p", _unit, "in [0, 1] (0: off)"),
    ("typical_p", _unit, "in [0, 1] (1: off)"),
    ("repeat_penalty", lambda x: _finite(x) and x > 0.0, "a finite number > 0 (1: off)"),
    ("presence_penalty", _finite, "a finite number (0: off)"),
    ("frequency_penalty", _finite, "a finite number (0: off)"),
    ("mirostat_tau", lambda x: _finite(x) and x >= 0.0, "a finite number >= 0"),
    ("mirostat_eta", lambda x: _finite(x) and x >= 0.0, "a finite number >= 0"),
    ("tfs_z", lambda x: x == 1.0, "1.0 (llama.cpp has no tail-free sampling any more)"),
)
# integer arguments: (name, accepted, what it must be)
_INT_RULES = (
    ("top_k", lambda k: k >= 0, "an integer >= 0 (0: off)"),
    ("penalty_last_n", lambda n: n >= 0, "an integer >= 0 (0: no penalties)"),
    ("mirostat_mode", lambda m: m in (0, 1, 2), "0, 1 or 2"),
)


def _as_float(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None


def check_token(token: Any, n_vocab: int, what: str = "token id") -> int:
    """`token` as an int, or a ValueError when it is not a token of an n_vocab vocabulary."""
    try:  # str keys as in the OpenAI API's logit_bias
        t = int(token) if isinstance(token, str) else _as_int(what, token)
    except ValueError:
        raise TypeError(f"{what} must be an integer, got {token!r}") from None
    if not 0 <= t < n_vocab:
        raise ValueError(f"{what} {t} is outside the vocabulary (0..{n_vocab - 1})")
    return t


def check_params(params: SamplingParams, n_vocab: int) -> SamplingParams:
    """`params` with numbers normalized (logit_bias keys as int, values as float), or a one-line
    ValueError (TypeError for a wrong type) naming the first bad argument."""
    values = {f.name: getattr(params, f.name) for f in fields(params)}
    for name, ok, must in _FLOAT_RULES:
        x = _as_float(name, values[name])
        if not ok(x):
            raise ValueError(f"{name} must be {must}, got {values[name]!r}")
        values[name] = x
    for name, ok, must in _INT_RULES:
        n = _as_int(name, values[name])
        if not ok(n):
            raise ValueError(f"{name} must be {must}, got {values[name]!r}")
        values[name] = n
    if params.logit_bias:
        bias = {}
        for tok, b in params.logit_bias.items():
            t = check_token(tok, n_vocab, "logit_bias: token id")
            x = _as_float(f"logit_bias[{t}]", b)
            if math.isnan(x) or x == math.inf:
                raise ValueError(f"logit_bias[{t}] must be a number or -inf (a ban), got {b!r}")
            bias[t] = x
        values["logit_bias"] = bias
    else:
        values["logit_bias"] = None
    g = params.grammar
    if g is not None and not (isinstance(getattr(g, "_grammar", None), str)
                              and isinstance(getattr(g, "_root", None), str)):
        raise TypeError(f"grammar must be a llama_cpp.LlamaGrammar, got {type(g).__name__}")
    return SamplingParams(**values)


def seed_u32(seed: Optional[int]) -> int:
    """llama.cpp's seed: None or negative -> LLAMA_DEFAULT_SEED (random), else its low 32 bits."""
    if seed is None or seed < 0:
        return LLAMA_DEFAULT_SEED
    return int(seed) & 0xFFFFFFFF


# ---- the chain ---------------------------------------------------------------------------------
def _bindings():
    import llama_cpp
    return llama_cpp


_GIL_HOLDING: dict = {}


def _holding_gil(lc, name: str):
    """llama-cpp-python's binding `name` (same library, argument and result types) through
    ctypes.PyDLL, which keeps the GIL during the call. The sampler calls take microseconds:
    through the bindings' CDLL each gives the GIL away and then waits for it behind the
    server's other threads (in pi-server that wait tripled a token's sampling time)."""
    f = _GIL_HOLDING.get(name)
    if f is None:
        ref = getattr(lc, name)
        lib = getattr(getattr(lc, "llama_cpp", None), "_lib", None)
        if lib is None or not hasattr(ref, "argtypes"):
            return ref                # bindings of another make: theirs as they are
        f = getattr(ctypes.PyDLL(lib._name), name)
        f.argtypes, f.restype = ref.argtypes, ref.restype
        _GIL_HOLDING[name] = f
    return f


def _logit_bias(lc, n_vocab: int, bias: Mapping[int, float]):
    arr = (lc.llama_logit_bias * len(bias))()
    for entry, (tok, b) in zip(arr, bias.items()):
        entry.token, entry.bias = tok, b
    return lc.llama_sampler_init_logit_bias(n_vocab, len(bias), arr)


def _penalties(lc, n_vocab: int, p: SamplingParams):
    args = (p.penalty_last_n, p.repeat_penalty, p.frequency_penalty, p.presence_penalty)
    if len(lc.llama_sampler_init_penalties.argtypes) == 5:  # bindings that take n_vocab first
        args = (n_vocab,) + args
    return lc.llama_sampler_init_penalties(*args)


def _grammar(lc, vocab, grammar):
    if vocab is None:
        raise ValueError("grammar needs the model's vocabulary (pass vocab= to Sampler)")
    smpl = lc.llama_sampler_init_grammar(vocab, grammar._grammar.encode("utf-8"),
                                         grammar._root.encode("utf-8"))
    if not smpl:
        raise ValueError("grammar: llama.cpp could not parse it (see its log for the line)")
    return smpl


def _stages(lc, p: SamplingParams, n_vocab: int, seed: int, vocab) -> Iterator[Any]:
    """The samplers of the chain, in llama-cpp-python's order, as (stage group, sampler):
    'bias' (logit_bias), 'penalties', 'rest' (grammar onwards)."""
    if p.logit_bias:
        yield "bias", _logit_bias(lc, n_vocab, p.logit_bias)
    if p.penalized:
        yield "penalties", _penalties(lc, n_vocab, p)
    if p.grammar is not None:
        yield "rest", _grammar(lc, vocab, p.grammar)
    if p.temperature < 0.0:
        yield "rest", lc.llama_sampler_init_dist(seed)
    elif p.temperature == 0.0:
        yield "rest", lc.llama_sampler_init_greedy()
    elif p.mirostat_mode == 1:
        yield "rest", lc.llama_sampler_init_mirostat(n_vocab, seed, p.mirostat_tau,
                                                     p.mirostat_eta, MIROSTAT_M)
    elif p.mirostat_mode == 2:
        yield "rest", lc.llama_sampler_init_mirostat_v2(seed, p.mirostat_tau, p.mirostat_eta)
    else:
        yield "rest", lc.llama_sampler_init_top_k(p.top_k)
        yield "rest", lc.llama_sampler_init_typical(p.typical_p, 1)
        yield "rest", lc.llama_sampler_init_top_p(p.top_p, 1)
        yield "rest", lc.llama_sampler_init_min_p(p.min_p, 1)
        yield "rest", lc.llama_sampler_init_temp(p.temperature)
        yield "rest", lc.llama_sampler_init_dist(seed)


class Sampler:
    """llama.cpp's sampler chain for one completion: `sample(logits)` picks the next token and
    accepts it. Not thread-safe (one per generation); `close()` frees the chain.

    The chain runs as up to three llama.cpp chains in its order: logit_bias and the rest over
    every candidate, the penalties sampler over the tokens accepted so far only. That sampler
    changes each candidate on its own, and only those in its window of accepted tokens (a
    hash lookup per candidate: three quarters of a token's sampling time over the whole
    vocabulary), so running it over a superset of its window gives the same logits."""

    def __init__(self, params: SamplingParams, n_vocab: int,
                 seed: Optional[int] = LLAMA_DEFAULT_SEED, vocab: Any = None):
        self.params = check_params(params, n_vocab)
        self.n_vocab = int(n_vocab)
        lc = _bindings()
        if ctypes.sizeof(lc.llama_token_data) != TOKEN_DATA.itemsize:
            raise RuntimeError("these llama-cpp-python bindings lay out llama_token_data "
                               f"in {ctypes.sizeof(lc.llama_token_data)} bytes, not "
                               f"{TOKEN_DATA.itemsize}: pi_backend.sampling needs updating")
        self._lc = lc
        # a grammar's apply can take milliseconds: that chain gives the GIL away meanwhile
        hold = _holding_gil if self.params.grammar is None else getattr
        self._sampler_apply = hold(lc, "llama_sampler_apply")
        self._sampler_accept = hold(lc, "llama_sampler_accept")
        self._chains: dict = {}          # stage group -> llama.cpp chain, in the chain's order
        try:
            for group, smpl in _stages(lc, self.params, self.n_vocab, seed_u32(seed), vocab):
                if group not in self._chains:
                    self._chains[group] = lc.llama_sampler_chain_init(
                        lc.llama_sampler_chain_default_params())
                lc.llama_sampler_chain_add(self._chains[group], smpl)  # the chain owns it
        except BaseException:
            self.close()
            raise
        self._chain = self._chains["rest"]
        self._ids = np.arange(self.n_vocab, dtype=np.int32)
        self._cand = np.zeros(self.n_vocab, dtype=TOKEN_DATA)  # [n_vocab] {id, logit, p}
        self._data = self._cand.ctypes.data_as(lc.llama_token_data_p)
        self._array = lc.llama_token_data_array()
        self._array_p = ctypes.byref(self._array)
        # the penalties' candidates: every token accepted so far (a superset of its window)
        self._seen: set = set()
        self._seen_ids = np.zeros(0, dtype=np.int32)
        self._sub = np.zeros(0, dtype=TOKEN_DATA)

    def _apply(self, chain, data, size: int) -> None:
        arr = self._array
        arr.data, arr.size, arr.selected, arr.sorted = data, size, -1, False
        self._sampler_apply(chain, self._array_p)

    def _penalize(self, chain) -> None:
        """The penalties sampler over the accepted tokens' candidates, written back."""
        k = len(self._seen_ids)
        if k == 0:
            return                        # nothing accepted: nothing to penalize
        if len(self._sub) < k:
            self._sub = np.zeros(max(k, 2 * len(self._sub), 64), dtype=TOKEN_DATA)
        sub = self._sub[:k]
        sub["id"] = self._seen_ids
        sub["logit"] = self._cand["logit"][self._seen_ids]
        self._apply(chain, sub.ctypes.data_as(self._lc.llama_token_data_p), k)
        if self._array.size != k:
            raise RuntimeError("llama.cpp's penalties sampler changed the candidate count")
        self._cand["logit"][sub["id"]] = sub["logit"]

    def sample(self, logits: np.ndarray) -> int:
        """The next token for `logits` ([n_vocab] floats, not modified); it is accepted into
        the chain's state (penalty window, grammar, mirostat)."""
        if self._chain is None:
            raise RuntimeError("this Sampler is closed")
        if np.shape(logits) != (self.n_vocab,):
            raise ValueError(f"logits must have shape ({self.n_vocab},), got {np.shape(logits)}")
        cand, arr = self._cand, self._array
        cand["id"] = self._ids
        cand["logit"] = logits
        bias = self._chains.get("bias")
        if bias is not None:
            self._apply(bias, self._data, self.n_vocab)
            if arr.data[0].id != 0 or arr.size != self.n_vocab:   # it edits in place
                raise RuntimeError("llama.cpp's logit_bias sampler reordered the candidates")
        pen = self._chains.get("penalties")
        if pen is not None:
            self._penalize(pen)
        self._apply(self._chain, self._data, self.n_vocab)
        if not 0 <= arr.selected < arr.size:
            raise RuntimeError("llama.cpp's sampler chain selected no token")
        picked = arr.data[arr.selected]  # samplers may point data elsewhere: read it there
        if not picked.logit > -math.inf:  # -inf or NaN: every token was excluded
            raise RuntimeError("no token is allowed (the grammar, logit_bias or "
                               "logits_processor exclude every token)")
        tok = int(picked.id)
        for chain in self._chains.values():
            self._sampler_accept(chain, tok)
        if pen is not None and tok not in self._seen:
            self._seen.add(tok)
            self._seen_ids = np.append(self._seen_ids, np.int32(tok))
        return tok

    def close(self) -> None:
        chains, self._chains = getattr(self, "_chains", {}), {}
        self._chain = None
        for chain in chains.values():
            if chain:
                self._lc.llama_sampler_free(chain)

    def __enter__(self) -> "Sampler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self.close()
